// The setup portal in a real browser (Debian's Chromium through
// playwright-core): a tenant admin opens a setup link (its page, then its
// button), registers a SAML IdP
// (the samlify peer) by pasting metadata, tests it with the wrong
// certificate and sees the failure explained, registers the right metadata,
// tests again successfully, activates; then a user signs in to an app
// through home-realm discovery (work email -> IdP -> app). Every portal page
// is checked with axe-core (no serious or critical violations) and a
// screenshot of each step is saved.
//
// Usage:
//   node portal-e2e.mjs --setup-url U --wrong-metadata FILE --right-metadata FILE
//     --idp-origin O --app-login U --done U --email E --username U --password P
//     --screenshots DIR [--chromium /usr/bin/chromium] [--timeout-ms 30000]
//
// Prints one JSON line: {"ok":true,"steps":[{"name","url","screenshot","violations"}...],
// "app":<the app callback's JSON>} or {"ok":false,"error":..} (exit code 1).

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const { values: args } = parseArgs({
  options: {
    'setup-url': { type: 'string' },
    'wrong-metadata': { type: 'string' },
    'right-metadata': { type: 'string' },
    'idp-origin': { type: 'string' },
    'app-login': { type: 'string' },
    done: { type: 'string' },
    email: { type: 'string' },
    username: { type: 'string' },
    password: { type: 'string' },
    screenshots: { type: 'string' },
    chromium: { type: 'string' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});
for (const required of ['setup-url', 'wrong-metadata', 'right-metadata', 'idp-origin', 'app-login', 'done', 'email', 'username', 'password', 'screenshots']) {
  if (!args[required]) {
    console.error(`portal-e2e: --${required} is required`);
    process.exit(2);
  }
}

const timeout = Number(args['timeout-ms']);
const executablePath = args.chromium ?? process.env.PORTCULLIS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const idpOrigin = new URL(args['idp-origin']).origin;
const userDataDir = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
const steps = [];
const result = {};
let browser;
let page;

/** Screenshot and accessibility check of the current page. */
async function step(name, { axe = true } = {}) {
  await page.waitForLoadState('load');
  const screenshot = join(args.screenshots, `${String(steps.length + 1).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: screenshot, fullPage: true });
  let violations = [];
  if (axe) {
    // Evaluated through the DevTools protocol, which the page's CSP does not govern.
    await page.evaluate(axeSource);
    const report = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ['violations'] }));
    violations = report.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  }
  steps.push({ name, url: page.url(), screenshot, violations, text: (await page.innerText('body')).slice(0, 3000) });
}

/** Fills in the samlify IdP's login form, then waits until the browser has left the IdP. */
async function idpLogin() {
  await page.waitForURL((u) => u.origin === idpOrigin, { waitUntil: 'load' });
  await page.fill('#username', args.username);
  await page.fill('#password', args.password);
  await page.click('#submit');
  await page.waitForURL((u) => u.origin !== idpOrigin, { waitUntil: 'load' });
}

/** Step 1 to 3: register the SAML connection with `metadataFile`. */
async function register(metadataFile, label) {
  await page.goto(new URL('/portal', args['setup-url']).href, { waitUntil: 'load' });
  await page.check('#kind-saml');
  await page.selectOption('#idp', 'generic');
  await page.click('form[action="/portal/values"] button[type="submit"]');
  await page.waitForURL((u) => u.pathname === '/portal/values', { waitUntil: 'load' });
  await step(`values-${label}`);
  await page.fill('#metadata_xml', readFileSync(metadataFile, 'utf8'));
  await page.click('form[action="/portal/connections"] button[type="submit"]');
  await page.waitForURL((u) => u.pathname.startsWith('/portal/connections/'), { waitUntil: 'load' });
  await step(`registered-${label}`);
  // The IdP learns about the gateway's SP from its published SP metadata.
  const spMetadataUrl = await page.getAttribute('a[download]', 'href');
  const sp = await page.request.get(new URL(spMetadataUrl, page.url()).href);
  if (!sp.ok()) throw new Error(`SP metadata: ${sp.status()}`);
  const registered = await page.request.post(`${idpOrigin}/_test/sp`, { data: { metadata_xml: await sp.text() } });
  if (!registered.ok()) throw new Error(`IdP refused the SP metadata: ${await registered.text()}`);
}

/** Step 4: a test sign-in; back on the portal with its result. */
async function testSignIn(label) {
  await page.click('form[action$="/test"] button[type="submit"]');
  await idpLogin();
  await page.waitForURL((u) => u.pathname.startsWith('/portal/connections/'), { waitUntil: 'load' });
  await page.waitForSelector('#test-result');
  await step(`test-${label}`);
  return page.innerText('#test-result');
}

try {
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    timeout,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = browser.pages()[0] ?? await browser.newPage();
  page.setDefaultTimeout(timeout);

  // The link's URL shows a page; only its button opens the portal (a POST),
  // so a mail scanner that fetched the URL first has spent nothing.
  await page.goto(args['setup-url'], { waitUntil: 'load' });
  await step('open-link');
  await page.click('#open-portal button[type="submit"]');
  await page.waitForURL((u) => u.pathname === '/portal', { waitUntil: 'load' });
  await step('start');

  await register(args['wrong-metadata'], 'wrong-certificate');
  result.failed_test = await testSignIn('wrong-certificate');

  await register(args['right-metadata'], 'right-certificate');
  result.passed_test = await testSignIn('right-certificate');

  await page.click('form[action$="/activate"] button[type="submit"]');
  await page.waitForLoadState('load');
  result.status_after_activation = await page.innerText('#status');
  await step('activated');

  await page.goto(new URL('/portal/failures', args['setup-url']).href, { waitUntil: 'load' });
  await step('failed-sign-ins');

  // The email domains page: the tenant's verified domain, assignable to its connections.
  await page.goto(new URL('/portal/domains', args['setup-url']).href, { waitUntil: 'load' });
  await page.waitForSelector('#add-domain');
  await step('email-domains');

  // A user of the tenant signs in to the app: no tenant in the request,
  // the work email picks it (home-realm discovery).
  const appDone = page.waitForResponse((r) => r.url().startsWith(args.done) && r.request().isNavigationRequest(), { timeout });
  appDone.catch(() => {});
  await page.goto(args['app-login'], { waitUntil: 'load' });
  await page.waitForSelector('input[name="login_hint"]');
  await step('home-realm-discovery', { axe: false });
  await page.fill('input[name="login_hint"]', args.email);
  await page.click('form button[type="submit"]');
  await idpLogin();
  const response = await appDone;
  await page.waitForLoadState('load');
  await step('signed-in-to-the-app', { axe: false });
  const text = await response.text();
  try { result.app = JSON.parse(text); } catch { result.app = text; }
  result.ok = true;
} catch (err) {
  let pageText;
  try { pageText = page ? (await page.content()).slice(0, 4000) : undefined; } catch { pageText = undefined; }
  Object.assign(result, { ok: false, error: String(err?.message ?? err), final_url: page?.url(), page: pageText });
} finally {
  await browser?.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
result.steps = steps;
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(result.ok ? 0 : 1);
