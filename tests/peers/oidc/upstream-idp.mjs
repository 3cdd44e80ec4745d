// An upstream OpenID Provider for end-to-end tests: a real `oidc-provider`
// instance (not a mock) that the gateway federates to.
//
// Usage:
//   node upstream-idp.mjs [--port N] [--host 127.0.0.1] [--public-host localhost]
//                         --client '{"client_id":"gw","client_secret":"s","redirect_uris":["http://..."]}'
//                         [--client ...] [--accounts '{"alice":{...}}']
// Environment fallbacks: PORT, IDP_HOST, IDP_PUBLIC_HOST, IDP_CLIENTS (JSON array),
// IDP_ACCOUNTS (JSON object).
//
// Prints `READY <issuer>` on stdout once it accepts connections.
//
// The issuer uses a different host name (`localhost`) than the gateway
// (`127.0.0.1`) by default, so that cookie jars and SameSite rules treat the
// two as different sites, as they are in production.
//
// Sign-in is a plain HTML form (no JavaScript) at /interaction/<uid>, so a
// scripted HTTP client can complete it: GET the page, POST `username` and
// `password` to the form action. Consent is granted automatically.
// `GET /_test/stats` returns counters (authorization requests, logins, token
// requests, refresh grants) so tests can prove that a flow did or did not
// reach the IdP.
// `POST /_test/remove-account?id=<account>` removes a user (as an admin
// would at Okta or Entra): its refresh tokens stop working (invalid_grant).
// `POST /_test/fail-token?status=<code>` makes the next token request fail
// with that status (a transient outage).
//
// Like Okta and Entra, `offline_access` is honoured without the user
// interacting again: the peer adds `prompt=consent`, which oidc-provider
// requires for it, and grants consent automatically.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    'public-host': { type: 'string' },
    client: { type: 'string', multiple: true },
    accounts: { type: 'string' },
    // Behave like an IdP that ignores `prompt=login` and `max_age` (it
    // reuses its session and reports the old auth_time).
    'ignore-reauth': { type: 'boolean' },
    // Behave like an IdP that never says when the user authenticated.
    'no-auth-time': { type: 'boolean' },
    // Honour `acr_values`: a login asked for one of them is a multi-factor
    // login (`acr` the first value asked for, `amr` pwd + otp). Without
    // this flag the peer ignores `acr_values`, like an IdP that cannot do MFA.
    'honour-mfa': { type: 'boolean' },
  },
});
const ignoreReauth = args['ignore-reauth'] ?? false;
const noAuthTime = args['no-auth-time'] ?? false;
const honourMfa = args['honour-mfa'] ?? false;
/** The `acr` values this peer can satisfy (multi-factor), with --honour-mfa. */
const MFA_ACR_VALUES = [
  'http://schemas.microsoft.com/claims/multipleauthn',
  'http://schemas.openid.net/pape/policies/2007/06/multi-factor',
  'urn:example:mfa',
];

const port = Number(args.port ?? process.env.PORT ?? 0);
const bindHost = args.host ?? process.env.IDP_HOST ?? '127.0.0.1';
const publicHost = args['public-host'] ?? process.env.IDP_PUBLIC_HOST ?? 'localhost';

const clientSpecs = [
  ...(args.client ?? []).map((c) => JSON.parse(c)),
  ...(process.env.IDP_CLIENTS ? JSON.parse(process.env.IDP_CLIENTS) : []),
];
if (clientSpecs.length === 0) {
  console.error('upstream-idp: at least one --client is required');
  process.exit(2);
}

/** The default test population: every account signs in with `test-password`. */
const DEFAULT_ACCOUNTS = {
  alice: {
    email: 'alice@acme.test',
    name: 'Alice Liddell',
    given_name: 'Alice',
    family_name: 'Liddell',
    groups: ['engineering', 'admins'],
  },
  bob: {
    email: 'bob@acme.test',
    name: 'Bob Builder',
    given_name: 'Bob',
    family_name: 'Builder',
    groups: ['sales'],
  },
  carol: {
    email: 'carol@globex.test',
    name: 'Carol Danvers',
    given_name: 'Carol',
    family_name: 'Danvers',
    groups: ['pilots'],
  },
};
const accounts = args.accounts ?? process.env.IDP_ACCOUNTS
  ? JSON.parse(args.accounts ?? process.env.IDP_ACCOUNTS)
  : DEFAULT_ACCOUNTS;
const passwordOf = (account) => account.password ?? 'test-password';

const stats = { authorize: 0, logins: 0, failed_logins: 0, token: 0, userinfo: 0, refresh: 0 };
let failNextToken = 0;

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function loginPage(uid, { loginHint, error } = {}) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Upstream IdP sign-in</title></head>
<body>
<h1>Sign in to the upstream IdP</h1>
${error ? `<p id="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${escapeHtml(uid)}/login">
  <input type="hidden" name="interaction" value="${escapeHtml(uid)}">
  <label>Username <input type="text" name="username" id="username" value="${escapeHtml(loginHint ?? '')}"></label>
  <label>Password <input type="password" name="password" id="password"></label>
  <button type="submit" id="submit">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${escapeHtml(uid)}/abort">
  <button type="submit">Cancel</button>
</form>
</body></html>`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

// The server listens first so the issuer can carry the real (possibly
// ephemeral) port.
const server = createServer();
server.listen(port, bindHost, () => {
  const issuer = `http://${publicHost}:${server.address().port}`;
  const provider = buildProvider(issuer);
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    const url = new URL(req.url, issuer);
    try {
      if (url.pathname === '/_test/stats') {
        send(res, 200, 'application/json', JSON.stringify(stats));
        return;
      }
      const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login|\/abort)?$/);
      if (m) {
        await interaction(provider, req, res, m[1], m[2]);
        return;
      }
      if (url.pathname === '/_test/remove-account' && req.method === 'POST') {
        delete accounts[url.searchParams.get('id')];
        send(res, 204, 'text/plain', '');
        return;
      }
      if (url.pathname === '/_test/fail-token' && req.method === 'POST') {
        failNextToken = Number(url.searchParams.get('status') ?? 503);
        send(res, 204, 'text/plain', '');
        return;
      }
      if (url.pathname === '/auth') {
        stats.authorize += 1;
        const params = url.searchParams;
        if (ignoreReauth) {
          params.delete('max_age');
          if (params.get('prompt') === 'login') params.delete('prompt');
        }
        const scopes = (params.get('scope') ?? '').split(' ');
        if (scopes.includes('offline_access')) {
          const prompts = (params.get('prompt') ?? '').split(' ').filter(Boolean);
          if (!prompts.includes('consent')) params.set('prompt', [...prompts, 'consent'].join(' '));
        }
        req.url = `${url.pathname}?${params}`;
      }
      if (url.pathname === '/token') {
        stats.token += 1;
        if (failNextToken) {
          const status = failNextToken;
          failNextToken = 0;
          send(res, status, 'application/json', JSON.stringify({ error: 'temporarily_unavailable' }));
          return;
        }
      }
      if (url.pathname === '/me') stats.userinfo += 1;
      callback(req, res);
    } catch (err) {
      console.error('upstream-idp: request failed:', err);
      if (!res.headersSent) send(res, 400, 'text/plain', `error: ${err.message}`);
    }
  });

  process.stdout.write(`READY ${issuer}\n`);
});

async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction uid mismatch');

  if (action === '/abort' && req.method === 'POST') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (action === '/login' && req.method === 'POST') {
    const form = await readForm(req);
    const username = form.get('username') ?? '';
    const account = Object.hasOwn(accounts, username) ? accounts[username] : undefined;
    if (!account || form.get('password') !== passwordOf(account)) {
      stats.failed_logins += 1;
      send(res, 401, 'text/html; charset=utf-8', loginPage(uid, { loginHint: username, error: 'Invalid username or password' }));
      return;
    }
    stats.logins += 1;
    const asked = (details.params.acr_values ?? '').split(' ').filter((v) => MFA_ACR_VALUES.includes(v));
    const login = honourMfa && asked.length > 0
      ? { accountId: username, amr: ['pwd', 'otp'], acr: asked[0] }
      : { accountId: username, amr: ['pwd'] };
    await provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
    return;
  }

  if (req.method !== 'GET' || action) {
    send(res, 405, 'text/plain', 'method not allowed');
    return;
  }

  if (details.prompt.name === 'login') {
    send(res, 200, 'text/html; charset=utf-8', loginPage(uid, { loginHint: details.params.login_hint }));
    return;
  }

  // Any other prompt (consent): grant what was asked. The gateway is a
  // first-party client of this IdP in every test.
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  const missing = details.prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

function buildProvider(issuer) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };

  const provider = new Provider(issuer, {
    clients: clientSpecs.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: c.redirect_uris,
      post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    })),
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: {
      // amr and auth_time in every ID token, as most enterprise IdPs do.
      openid: noAuthTime ? ['sub', 'amr'] : ['sub', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    // Advertised and issued only with --honour-mfa.
    acrValues: honourMfa ? MFA_ACR_VALUES : [],
    // Put the scope claims in the ID token too: a gateway may read them from
    // either the ID token or userinfo.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    clientBasedCORS: () => false,
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    interactions: { url: (_ctx, i) => `/interaction/${i.uid}` },
    async findAccount(_ctx, id) {
      if (!Object.hasOwn(accounts, id)) return undefined;
      const a = accounts[id];
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: a.email,
            email_verified: a.email_verified ?? true,
            name: a.name,
            given_name: a.given_name,
            family_name: a.family_name,
            groups: a.groups ?? [],
          };
        },
      };
    },
    // Skip the consent screen: the gateway is a first-party client here.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid offline_access email profile groups');
      await grant.save();
      return grant;
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 3600,
      Session: 86400,
      Grant: 86400,
      RefreshToken: 86400,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><html><body><h1>IdP error</h1><pre id="error">${escapeHtml(JSON.stringify(out))}</pre></body></html>`;
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('upstream-idp: server_error', err));
  provider.on('grant.success', (ctx) => {
    if (ctx.oidc.params?.grant_type === 'refresh_token') stats.refresh += 1;
  });
  return provider;
}

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
// Under the test harness stdin is a pipe from the test process: when it
// closes (the test ended or was killed), the peer goes too.
if (process.env.PORTCULLIS_PEER_LIFELINE === 'stdin') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
