// An upstream SAML 2.0 IdP for end-to-end tests, built on `samlify` (an
// independent SAML implementation): HTTP-Redirect and HTTP-POST bindings
// for AuthnRequests, a plain HTML login form, and a signed Response (the
// Assertion signed, as the gateway's SP metadata asks) delivered with the
// HTTP-POST binding through a form that JavaScript submits on load.
//
// Usage: node samlify-idp.mjs [--port N] [--host 127.0.0.1] [--public-host localhost]
//                             [--accounts '{"alice":{...}}']
// Prints `READY <base url>`. Its metadata is at `<base>/metadata` (entity ID
// is that URL). Register a service provider (the gateway's SP metadata)
// with `POST /_test/sp` and a JSON body `{"metadata_xml": "..."}` or
// `{"metadata_url": "..."}`. `GET /_test/stats` returns counters.
//
// The host name defaults to `localhost` while the gateway runs on
// `127.0.0.1`: the POST back to the ACS is cross-site, as in production.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { inflateRawSync } from 'node:zlib';

import * as samlify from 'samlify';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    'public-host': { type: 'string' },
    accounts: { type: 'string' },
  },
});
const port = Number(args.port ?? process.env.PORT ?? 0);
const bindHost = args.host ?? process.env.IDP_HOST ?? '127.0.0.1';
const publicHost = args['public-host'] ?? process.env.IDP_PUBLIC_HOST ?? 'localhost';

/** Same population as the OIDC IdP peer; password `test-password`. */
const DEFAULT_ACCOUNTS = {
  alice: { email: 'alice@acme.test', name: 'Alice Liddell', given_name: 'Alice', family_name: 'Liddell', groups: ['engineering', 'admins'] },
  bob: { email: 'bob@acme.test', name: 'Bob Builder', given_name: 'Bob', family_name: 'Builder', groups: ['sales'] },
  carol: { email: 'carol@globex.test', name: 'Carol Danvers', given_name: 'Carol', family_name: 'Danvers', groups: ['pilots'] },
};
const accountsJson = args.accounts ?? process.env.IDP_ACCOUNTS;
const accounts = accountsJson ? JSON.parse(accountsJson) : DEFAULT_ACCOUNTS;

// The IdP is not under test: the gateway validates what it receives. The
// XML of incoming AuthnRequests is still parsed by samlify (XXE-safe).
samlify.setSchemaValidator({ validate: async () => 'skipped' });

const REDIRECT = 'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect';
const POST = 'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST';
const EMAIL_FORMAT = 'urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress';

/** A throwaway signing key and self-signed certificate (openssl CLI). */
function signingKeyPair() {
  const dir = mkdtempSync(join(tmpdir(), 'samlify-idp-'));
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=portcullis-test-saml-idp',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ], { stdio: 'ignore' });
    return { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert: readFileSync(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

const stats = { authn_requests: 0, logins: 0, failed_logins: 0, responses: 0 };
/** Service providers by entity ID. */
const sps = new Map();
/** AuthnRequests waiting for a login, by a random handle. */
const pending = new Map();

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1024 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function loginPage(handle, error) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SAML IdP sign-in</title></head>
<body>
<h1>Sign in to the SAML IdP</h1>
${error ? `<p id="error" role="alert">${esc(error)}</p>` : ''}
<form id="login" method="post" action="/login">
  <input type="hidden" name="request" value="${esc(handle)}">
  <label>Username <input type="text" name="username" id="username"></label>
  <label>Password <input type="password" name="password" id="password"></label>
  <button type="submit" id="submit">Sign in</button>
</form>
</body></html>`;
}

function postForm(acs, samlResponse, relayState) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Continue</title></head>
<body onload="document.forms[0].submit()">
<form id="saml-post" method="post" action="${esc(acs)}">
  <input type="hidden" name="SAMLResponse" value="${esc(samlResponse)}">
  ${relayState === undefined ? '' : `<input type="hidden" name="RelayState" value="${esc(relayState)}">`}
  <noscript><button type="submit">Continue</button></noscript>
</form>
</body></html>`;
}

function attributeStatement(a) {
  const attr = (name, values) => `<saml:Attribute Name="${esc(name)}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic">${
    values.map((v) => `<saml:AttributeValue xsi:type="xs:string">${esc(v)}</saml:AttributeValue>`).join('')
  }</saml:Attribute>`;
  return `<saml:AttributeStatement>${[
    attr('email', [a.email]),
    attr('displayName', [a.name]),
    attr('givenName', [a.given_name]),
    attr('surname', [a.family_name]),
    attr('groups', a.groups ?? []),
  ].join('')}</saml:AttributeStatement>`;
}

const server = createServer();
server.listen(port, bindHost, () => {
  const base = `http://${publicHost}:${server.address().port}`;
  const { key, cert } = signingKeyPair();
  const idp = samlify.IdentityProvider({
    entityID: `${base}/metadata`,
    privateKey: key,
    signingCert: cert,
    nameIDFormat: [EMAIL_FORMAT],
    wantAuthnRequestsSigned: false,
    requestSignatureAlgorithm: 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',
    singleLogoutService: [{ Binding: REDIRECT, Location: `${base}/slo` }],
    singleSignOnService: [
      { Binding: REDIRECT, Location: `${base}/sso` },
      { Binding: POST, Location: `${base}/sso` },
    ],
  });

  async function startLogin(res, binding, request, rawRequest) {
    stats.authn_requests += 1;
    const xml = inflateOrDecode(binding, rawRequest);
    const issuer = xml.match(/<(?:\w+:)?Issuer[^>]*>([^<]+)<\/(?:\w+:)?Issuer>/)?.[1]?.trim();
    const sp = issuer && sps.get(issuer);
    if (!sp) {
      send(res, 400, 'text/plain', `unknown service provider ${issuer}`);
      return;
    }
    const info = await idp.parseLoginRequest(sp, binding, request);
    const handle = randomBytes(16).toString('hex');
    pending.set(handle, { sp, info, relayState: (request.query ?? request.body).RelayState });
    send(res, 200, 'text/html; charset=utf-8', loginPage(handle));
  }

  async function finishLogin(res, form) {
    const tx = pending.get(form.get('request') ?? '');
    if (!tx) {
      send(res, 400, 'text/plain', 'no such login request');
      return;
    }
    const username = form.get('username') ?? '';
    const account = Object.hasOwn(accounts, username) ? accounts[username] : undefined;
    if (!account || form.get('password') !== (account.password ?? 'test-password')) {
      stats.failed_logins += 1;
      send(res, 401, 'text/html; charset=utf-8', loginPage(form.get('request'), 'Invalid username or password'));
      return;
    }
    pending.delete(form.get('request'));
    stats.logins += 1;

    const spMeta = tx.sp.entityMeta;
    const acsList = [spMeta.getAssertionConsumerService('post')].flat().filter(Boolean);
    const request = tx.info.extract?.request ?? {};
    const requested = request.assertionConsumerServiceUrl ?? request.assertionConsumerServiceURL;
    // Like a real IdP: only an ACS URL from the SP's metadata.
    if (acsList.length === 0 || (requested && !acsList.includes(requested))) {
      send(res, 400, 'text/plain', `AssertionConsumerServiceURL ${requested} is not in the SP metadata`);
      return;
    }
    const acs = requested ?? acsList[0];
    const now = new Date();
    const later = new Date(now.getTime() + 5 * 60 * 1000).toISOString();
    const sessionIndex = `_${randomBytes(12).toString('hex')}`;
    const tvalue = {
      ID: `_${randomBytes(16).toString('hex')}`,
      AssertionID: `_${randomBytes(16).toString('hex')}`,
      Destination: acs,
      Audience: spMeta.getEntityID(),
      SubjectRecipient: acs,
      Issuer: idp.entityMeta.getEntityID(),
      IssueInstant: now.toISOString(),
      StatusCode: 'urn:oasis:names:tc:SAML:2.0:status:Success',
      ConditionsNotBefore: now.toISOString(),
      ConditionsNotOnOrAfter: later,
      SubjectConfirmationDataNotOnOrAfter: later,
      NameIDFormat: EMAIL_FORMAT,
      NameID: esc(account.email),
      InResponseTo: tx.info.extract?.request?.id ?? '',
      AuthnStatement: `<saml:AuthnStatement AuthnInstant="${now.toISOString()}" SessionIndex="${sessionIndex}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>`,
      AttributeStatement: attributeStatement(account),
    };
    const { context } = await idp.createLoginResponse(tx.sp, tx.info, 'post', { email: account.email }, {
      relayState: tx.relayState,
      customTagReplacement: (template) => ({
        id: tvalue.ID,
        context: template.replace(/\{(\w+)\}/g, (m, k) => (Object.hasOwn(tvalue, k) ? tvalue[k] : m)),
      }),
    });
    stats.responses += 1;
    send(res, 200, 'text/html; charset=utf-8', postForm(acs, context, tx.relayState));
  }

  server.on('request', async (req, res) => {
    const url = new URL(req.url, base);
    try {
      switch (`${req.method} ${url.pathname}`) {
        case 'GET /metadata':
          send(res, 200, 'application/samlmetadata+xml', idp.getMetadata());
          return;
        case 'GET /_test/stats':
          send(res, 200, 'application/json', JSON.stringify(stats));
          return;
        case 'POST /_test/sp': {
          const body = JSON.parse(await readBody(req));
          const xml = body.metadata_xml ?? await (await fetch(body.metadata_url)).text();
          const sp = samlify.ServiceProvider({ metadata: xml });
          sps.set(sp.entityMeta.getEntityID(), sp);
          send(res, 200, 'application/json', JSON.stringify({ entity_id: sp.entityMeta.getEntityID() }));
          return;
        }
        case 'GET /sso': {
          const query = Object.fromEntries(url.searchParams);
          // The signed octet string is the query as sent, in binding order.
          const octetString = url.search.slice(1).split('&')
            .filter((p) => /^(SAMLRequest|RelayState|SigAlg)=/.test(p)).join('&');
          await startLogin(res, 'redirect', { query, octetString }, query.SAMLRequest);
          return;
        }
        case 'POST /sso': {
          const body = Object.fromEntries(new URLSearchParams(await readBody(req)));
          await startLogin(res, 'post', { body }, body.SAMLRequest);
          return;
        }
        case 'POST /login':
          await finishLogin(res, new URLSearchParams(await readBody(req)));
          return;
        default:
          send(res, 404, 'text/plain', 'not found');
      }
    } catch (err) {
      console.error('samlify-idp:', err);
      if (!res.headersSent) send(res, 400, 'text/plain', `error: ${err.message ?? err}`);
    }
  });

  process.stdout.write(`READY ${base}\n`);
});

function inflateOrDecode(binding, raw) {
  const bytes = Buffer.from(String(raw ?? ''), 'base64');
  return binding === 'redirect' ? inflateRawSync(bytes).toString('utf8') : bytes.toString('utf8');
}

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
// Under the test harness stdin is a pipe from the test process: when it
// closes (the test ended or was killed), the peer goes too.
if (process.env.PORTCULLIS_PEER_LIFELINE === 'stdin') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
