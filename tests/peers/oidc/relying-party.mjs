// A downstream application for end-to-end tests: a relying party built on
// `openid-client` (an independent OpenID Connect implementation) that signs
// in through the gateway. Two instances are two apps.
//
// Usage:
//   node relying-party.mjs --issuer http://127.0.0.1:PORT [--port N] [--host 127.0.0.1]
//                          [--public-host 127.0.0.1] [--client-id ID --client-secret SECRET]
//                          [--auth-method basic|post|none] [--scope "openid email profile"]
// Environment fallbacks: PORT, RP_HOST, RP_PUBLIC_HOST, RP_ISSUER, RP_CLIENT_ID,
// RP_CLIENT_SECRET, RP_AUTH_METHOD, RP_SCOPE.
//
// Prints `READY <base url>` on stdout. The redirect URI is `<base url>/callback`;
// since the port is only known once listening, the client credentials may be
// given afterwards with `POST /configure` (JSON: client_id, client_secret,
// auth_method, scope).
//
// Routes (all answers JSON except /login's redirect):
//   GET  /config                  issuer, client_id, redirect_uri
//   GET  /login?<params>          302 to the issuer's authorization endpoint with
//                                 PKCE S256, state and nonce; every query
//                                 parameter (tenant, connection, login_hint,
//                                 prompt, max_age, scope, ...) is passed on
//   GET  /callback                code exchange; openid-client validates the ID
//                                 token (JWKS signature, iss, aud, nonce, exp,
//                                 auth_time against max_age, state, iss param)
//   POST /refresh     {refresh_token}
//   POST /userinfo    {access_token, sub?}
//   POST /revoke      {token, token_type_hint?}
//   POST /introspect  {token, token_type_hint?}
//   GET  /logout?id_token_hint=...&post_logout_redirect_uri=...  302 to end_session
// Errors: `{"error": <OAuth error or openid-client code>, "error_description", "status"}`
// with HTTP 400 (or 502 when the issuer could not be reached).

import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import * as client from 'openid-client';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    'public-host': { type: 'string' },
    issuer: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'auth-method': { type: 'string' },
    scope: { type: 'string' },
  },
});

const port = Number(args.port ?? process.env.PORT ?? 0);
const bindHost = args.host ?? process.env.RP_HOST ?? '127.0.0.1';
const publicHost = args['public-host'] ?? process.env.RP_PUBLIC_HOST ?? '127.0.0.1';
const issuer = args.issuer ?? process.env.RP_ISSUER;
if (!issuer) {
  console.error('relying-party: --issuer is required');
  process.exit(2);
}

let settings = {
  client_id: args['client-id'] ?? process.env.RP_CLIENT_ID,
  client_secret: args['client-secret'] ?? process.env.RP_CLIENT_SECRET,
  auth_method: args['auth-method'] ?? process.env.RP_AUTH_METHOD ?? 'basic',
  scope: args.scope ?? process.env.RP_SCOPE ?? 'openid email profile',
};

/** The discovered configuration, rebuilt whenever the settings change. */
let configPromise;
function configuration() {
  if (!settings.client_id) throw Object.assign(new Error('client not configured'), { code: 'rp.not_configured' });
  if (!configPromise) {
    const auth = {
      basic: () => client.ClientSecretBasic(settings.client_secret),
      post: () => client.ClientSecretPost(settings.client_secret),
      none: () => client.None(),
    }[settings.auth_method];
    if (!auth) throw Object.assign(new Error(`unknown auth method ${settings.auth_method}`), { code: 'rp.bad_auth_method' });
    configPromise = client.discovery(new URL(issuer), settings.client_id, undefined, auth(), {
      execute: [client.allowInsecureRequests],
      timeout: 10,
    });
    configPromise.catch(() => { configPromise = undefined; });
  }
  return configPromise;
}

/** Authorization requests in flight, keyed by `state`. */
const pending = new Map();

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

function sendError(res, err) {
  // ResponseBodyError carries the server's OAuth error; others carry a code.
  const status = err.code === 'OAUTH_RESPONSE_BODY_ERROR' || err.code === 'rp.not_configured' ? 400
    : err.cause?.code === 'ECONNREFUSED' ? 502 : 400;
  sendJson(res, status, {
    error: err.error ?? err.code ?? err.name,
    error_description: err.error_description ?? err.message,
    status: err.status,
  });
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function tokenBody(tokens) {
  let claims;
  try { claims = tokens.claims(); } catch { claims = undefined; }
  return {
    id_token_claims: claims,
    id_token: tokens.id_token,
    access_token: tokens.access_token,
    refresh_token: tokens.refresh_token,
    token_type: tokens.token_type,
    expires_in: tokens.expires_in,
    scope: tokens.scope,
  };
}

const server = createServer();
server.listen(port, bindHost, () => {
  const base = `http://${publicHost}:${server.address().port}`;
  const redirectUri = `${base}/callback`;

  server.on('request', async (req, res) => {
    const url = new URL(req.url, base);
    try {
      switch (`${req.method} ${url.pathname}`) {
        case 'GET /config':
          sendJson(res, 200, { issuer, client_id: settings.client_id, redirect_uri: redirectUri });
          return;
        case 'POST /configure': {
          const body = await readJson(req);
          settings = { ...settings, ...body };
          configPromise = undefined;
          sendJson(res, 200, { issuer, client_id: settings.client_id, redirect_uri: redirectUri });
          return;
        }
        case 'GET /login': {
          const config = await configuration();
          const codeVerifier = client.randomPKCECodeVerifier();
          const state = client.randomState();
          const nonce = client.randomNonce();
          const params = {
            scope: settings.scope,
            ...Object.fromEntries(url.searchParams),
            redirect_uri: redirectUri,
            response_type: 'code',
            state,
            nonce,
            code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
            code_challenge_method: 'S256',
          };
          pending.set(state, {
            codeVerifier,
            nonce,
            maxAge: url.searchParams.has('max_age') ? Number(url.searchParams.get('max_age')) : undefined,
          });
          res.writeHead(302, { location: client.buildAuthorizationUrl(config, params).href });
          res.end();
          return;
        }
        case 'GET /callback': {
          const state = url.searchParams.get('state');
          const tx = state ? pending.get(state) : undefined;
          if (!tx) {
            sendJson(res, 400, { error: 'rp.unknown_state', error_description: 'no authorization request with this state' });
            return;
          }
          pending.delete(state);
          if (url.searchParams.has('error')) {
            sendJson(res, 400, {
              error: url.searchParams.get('error'),
              error_description: url.searchParams.get('error_description'),
              from: 'authorization_response',
            });
            return;
          }
          const config = await configuration();
          const tokens = await client.authorizationCodeGrant(config, url, {
            pkceCodeVerifier: tx.codeVerifier,
            expectedState: state,
            expectedNonce: tx.nonce,
            idTokenExpected: true,
            maxAge: tx.maxAge,
          });
          sendJson(res, 200, tokenBody(tokens));
          return;
        }
        case 'POST /refresh': {
          const body = await readJson(req);
          const tokens = await client.refreshTokenGrant(await configuration(), body.refresh_token);
          sendJson(res, 200, tokenBody(tokens));
          return;
        }
        case 'POST /userinfo': {
          const body = await readJson(req);
          const info = await client.fetchUserInfo(
            await configuration(),
            body.access_token,
            body.sub ?? client.skipSubjectCheck,
          );
          sendJson(res, 200, info);
          return;
        }
        case 'POST /revoke': {
          const body = await readJson(req);
          const extra = body.token_type_hint ? { token_type_hint: body.token_type_hint } : undefined;
          await client.tokenRevocation(await configuration(), body.token, extra);
          sendJson(res, 200, { revoked: true });
          return;
        }
        case 'POST /introspect': {
          const body = await readJson(req);
          const extra = body.token_type_hint ? { token_type_hint: body.token_type_hint } : undefined;
          sendJson(res, 200, await client.tokenIntrospection(await configuration(), body.token, extra));
          return;
        }
        case 'GET /logout': {
          const endSession = client.buildEndSessionUrl(await configuration(), Object.fromEntries(url.searchParams));
          res.writeHead(302, { location: endSession.href });
          res.end();
          return;
        }
        default:
          sendJson(res, 404, { error: 'rp.not_found' });
      }
    } catch (err) {
      console.error('relying-party:', err.code ?? err.name, err.message);
      if (!res.headersSent) sendError(res, err);
    }
  });

  process.stdout.write(`READY ${base}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
// Under the test harness stdin is a pipe from the test process: when it
// closes (the test ended or was killed), the peer goes too.
if (process.env.PORTCULLIS_PEER_LIFELINE === 'stdin') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
