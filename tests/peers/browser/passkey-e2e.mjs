// Passkeys in a real browser (Debian's Chromium through playwright-core,
// with a CDP virtual authenticator: CTAP2, internal transport, resident keys,
// user verification): from an app's login a person creates a local account,
// confirms it with the e-mailed code (asked of the test on stdout, answered
// on stdin), signs in with the password, registers a passkey on their
// passkeys page, signs out, signs in with the password and the passkey as
// the second factor, signs out, and signs in with the passkey alone
// (passwordless). Then the refusals, each reported with the reason code the
// page shows: a replayed answer, a wrong origin (the client data rewritten
// in flight), a disabled account, throttling, another tenant's sign-in, and after the test
// resets the user's MFA through the admin API (asked on stdout) a passkey
// whose enrolment is gone. Last, in a tenant that requires MFA, a new
// person registers a passkey instead of an authenticator app at the
// enrolment of their first sign-in, and finishes it with that passkey. Every page of ours is checked with axe-core and a
// screenshot of each step is saved.
//
// Usage:
//   node passkey-e2e.mjs --start U --start-other U --done U --email E --password P
//     --start-required U --email-required E --logout U --passkeys U --screenshots DIR
//     [--chromium PATH] [--timeout-ms 30000]
//
// Ends with one JSON line: {"ok":true,"steps":[...],"first":..,"second":..,
// "third":..,"refusals":{...}} or {"ok":false,"error":..}.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const { values: args } = parseArgs({
  options: {
    start: { type: 'string' },
    'start-other': { type: 'string' },
    'start-required': { type: 'string' },
    'email-required': { type: 'string' },
    done: { type: 'string' },
    email: { type: 'string' },
    password: { type: 'string' },
    logout: { type: 'string' },
    passkeys: { type: 'string' },
    screenshots: { type: 'string' },
    chromium: { type: 'string' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});
for (const required of ['start', 'start-other', 'start-required', 'email-required', 'done', 'email', 'password', 'logout', 'passkeys', 'screenshots']) {
  if (!args[required]) {
    console.error(`passkey-e2e: --${required} is required`);
    process.exit(2);
  }
}

const timeout = Number(args['timeout-ms']);
const executablePath = args.chromium ?? process.env.PORTCULLIS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const done = new URL(args.done);
const userDataDir = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
const steps = [];
const result = { refusals: {} };
let browser;
let page;

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the test for something and waits for its one-line answer. */
async function ask(what) {
  console.log(JSON.stringify(what));
  const next = await stdinLines.next();
  if (next.done) throw new Error(`no answer for ${JSON.stringify(what)}`);
  return next.value.trim();
}

/** Screenshot and accessibility check of the current page. */
async function step(name, { axe = true } = {}) {
  await page.waitForLoadState('load');
  const screenshot = join(args.screenshots, `${String(steps.length + 1).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: screenshot, fullPage: true });
  let violations = [];
  if (axe) {
    await page.evaluate(axeSource);
    const report = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ['violations'] }));
    violations = report.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  }
  steps.push({ name, url: page.url(), screenshot, violations, text: (await page.innerText('body')).slice(0, 3000) });
}

/** Fills `fields` and submits the form holding field `name`. */
async function submitWith(fields, name) {
  for (const [field, value] of Object.entries(fields)) {
    await page.fill(`form input[name="${field}"]`, value);
  }
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    page.locator(`form:has(input[name="${name}"]) [type=submit]`).first().click(),
  ]);
}

/** Clicks the link whose text matches and waits for the next page. */
async function follow(text) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.getByRole('link', { name: text }).first().click()]);
}

/** Presses the passkey form's button (the virtual authenticator answers) and waits for the next page. */
async function usePasskey() {
  await page.waitForSelector('form[data-passkey]');
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.locator('form[data-passkey] [type=submit]').click()]);
}

/** The app's callback JSON once the browser is there. */
async function appAnswer() {
  await page.waitForURL((u) => u.origin === done.origin && u.pathname === done.pathname, { waitUntil: 'load' });
  const text = await page.innerText('body');
  try {
    return JSON.parse(text);
  } catch {
    return { text };
  }
}

/** The reason code the page shows, if any. */
async function reasonShown() {
  const codes = await page.locator('.error code, .muted code').allInnerTexts();
  return codes.find((c) => /^[a-z_]+\.[a-z_]+$/.test(c)) ?? null;
}

async function signOut(name) {
  await page.goto(args.logout, { waitUntil: 'load' });
  if (await page.locator('form [type=submit]').count()) {
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.locator('form [type=submit]').first().click()]);
  }
  await step(name);
}

/** Opens the passwordless page of a new sign-in at `start`. */
async function passwordlessPage(start) {
  await page.goto(start, { waitUntil: 'load' });
  await page.waitForSelector('input[name="password"]');
  await follow(/Sign in with a passkey/);
  await page.waitForSelector('form[data-passkey="get"]');
}

/** Rewrites the origin in the client data of the next passkey answer posted. */
function tamperOrigin(origin) {
  return async (route) => {
    const request = route.request();
    if (request.method() !== 'POST') return route.continue();
    const form = new URLSearchParams(request.postData() ?? '');
    const credential = JSON.parse(form.get('credential'));
    const clientData = JSON.parse(Buffer.from(credential.response.clientDataJSON, 'base64url').toString('utf8'));
    clientData.origin = origin;
    credential.response.clientDataJSON = Buffer.from(JSON.stringify(clientData)).toString('base64url');
    form.set('credential', JSON.stringify(credential));
    return route.continue({ postData: form.toString() });
  };
}

try {
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  browser.setDefaultTimeout(timeout);
  page = browser.pages()[0] ?? (await browser.newPage());
  const cdp = await browser.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });

  // Sign-up, confirmation, first sign-in with the password.
  await page.goto(args.start, { waitUntil: 'load' });
  await page.waitForSelector('input[name="password"]');
  await step('sign-in-page');
  await follow(/Create account/);
  await step('sign-up');
  await submitWith({ email: args.email, password: args.password, password_confirm: args.password }, 'password');
  await page.waitForSelector('input[name="code"]');
  const code = await ask({ need: 'code', email: args.email });
  await submitWith({ code }, 'code');
  await step('confirmed');
  if (await page.locator('input[name="password"]').count()) {
    await step('sign-in');
    await submitWith({ email: args.email, password: args.password }, 'password');
  }
  result.first = await appAnswer();

  // Register a passkey on the passkeys page (signed in).
  await page.goto(args.passkeys, { waitUntil: 'load' });
  await page.waitForSelector('form[data-passkey="create"]');
  await step('passkeys-empty');
  await page.fill('input[name="name"]', 'Laptop');
  await usePasskey();
  await page.waitForSelector('#passkeys');
  await step('passkeys-registered');
  result.registered = await page.locator('#passkeys .passkey-name').allInnerTexts();
  result.credentials = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials.map((c) => ({
    isResidentCredential: c.isResidentCredential,
    rpId: c.rpId,
    signCount: c.signCount,
  }));

  // That session used no second factor: now that the account has one, it
  // changes none (neither its passkeys nor a TOTP enrolment).
  await page.goto(args.passkeys, { waitUntil: 'load' });
  await step('refused-manage-without-factor');
  result.refusals.manage_without_factor = await reasonShown();
  await page.goto(args.passkeys.replace(/passkeys$/, 'enroll'), { waitUntil: 'load' });
  await step('refused-enrol-without-factor');
  result.refusals.enrol_without_factor = await reasonShown();

  // Sign out; sign in with the password and the passkey as second factor.
  await signOut('sign-out');
  await page.goto(args.start, { waitUntil: 'load' });
  await submitWith({ email: args.email, password: args.password }, 'password');
  await page.waitForSelector('#use-passkey');
  await step('mfa-challenge');
  await follow(/Use a passkey/);
  await step('mfa-passkey');
  await usePasskey();
  result.second = await appAnswer();
  // This session used its second factor: it manages the passkeys.
  await page.goto(args.passkeys, { waitUntil: 'load' });
  await page.waitForSelector('#passkeys');
  await step('passkeys-after-second-factor');
  result.managed = await page.locator('#passkeys .passkey-name').allInnerTexts();

  // Sign out; passwordless sign-in with the passkey. The post is kept for the replay.
  await signOut('sign-out-again');
  let posted = null;
  let postedUrl = null;
  const keep = (request) => {
    if (request.method() === 'POST' && new URL(request.url()).pathname.endsWith('/passkey')) {
      posted = request.postData();
      postedUrl = request.url();
    }
  };
  page.on('request', keep);
  await passwordlessPage(args.start);
  await step('passwordless');
  await usePasskey();
  page.off('request', keep);
  result.third = await appAnswer();

  // Refusals. A replayed answer (its ceremony already used), in the same
  // browser session, on a fresh page of the same sign-in.
  const old = new URLSearchParams(posted ?? '');
  const again = new URL(postedUrl);
  again.searchParams.set('login', old.get('login'));
  await page.goto(again.toString(), { waitUntil: 'load' });
  await page.waitForSelector('form[data-passkey="get"]');
  await page.evaluate(
    ([ceremony, credential]) => {
      const form = document.querySelector('form[data-passkey]');
      form.querySelector('input[name=ceremony]').value = ceremony;
      form.querySelector('input[name=credential]').value = credential;
      HTMLFormElement.prototype.submit.call(form);
    },
    [old.get('ceremony'), old.get('credential')],
  );
  await page.waitForLoadState('load');
  await page.waitForSelector('form[data-passkey="get"]');
  await step('refused-replay');
  result.refusals.replay = await reasonShown();
  await signOut('sign-out-third');

  // The admin disables the local account: its passkey no longer signs in.
  await ask({ need: 'disable' });
  await passwordlessPage(args.start);
  await usePasskey();
  await step('refused-disabled');
  result.refusals.disabled = await reasonShown();
  await ask({ need: 'enable' });

  // A wrong origin: the client data says another origin (rewritten in flight).
  const pattern = '**/local/*/*/passkey';
  await page.route(pattern, tamperOrigin('http://evil.localhost:1'));
  await usePasskey();
  await step('refused-origin');
  result.refusals.origin = await reasonShown();
  // Throttling: four more wrong answers, then a right one is refused too.
  for (let i = 0; i < 4; i += 1) {
    await usePasskey();
  }
  await page.unroute(pattern);
  await usePasskey();
  await step('refused-throttled');
  result.refusals.throttled = await reasonShown();

  // Another tenant's sign-in: the same authenticator's acme passkey is unknown there.
  await passwordlessPage(args['start-other']);
  await usePasskey();
  await step('refused-other-tenant');
  result.refusals.other_tenant = await reasonShown();

  // The admin resets the user's MFA: the passkey's enrolment is gone.
  await ask({ need: 'reset' });
  await passwordlessPage(args.start);
  await usePasskey();
  await step('refused-removed');
  result.refusals.removed = await reasonShown();

  // A tenant requiring MFA: the first sign-in's enrolment offers a passkey.
  await page.goto(args['start-required'], { waitUntil: 'load' });
  await page.waitForSelector('input[name="password"]');
  await follow(/Create account/);
  await submitWith({ email: args['email-required'], password: args.password, password_confirm: args.password }, 'password');
  await page.waitForSelector('input[name="code"]');
  const code2 = await ask({ need: 'code', email: args['email-required'] });
  await submitWith({ code: code2 }, 'code');
  if (await page.locator('input[name="password"]').count()) {
    await submitWith({ email: args['email-required'], password: args.password }, 'password');
  }
  await page.waitForSelector('#add-passkey');
  await step('enrol-offers-passkey');
  await follow(/add a passkey instead/);
  await page.waitForSelector('form[data-passkey="create"]');
  await step('enrol-passkey');
  await page.fill('input[name="name"]', 'Phone');
  await usePasskey();
  await page.waitForSelector('form[data-passkey="get"]');
  await step('enrol-passkey-use');
  await usePasskey();
  result.fourth = await appAnswer();

  console.log(JSON.stringify({ ok: true, steps, ...result }));
} catch (e) {
  let url = null;
  let text = null;
  try {
    url = page?.url();
    text = (await page?.innerText('body'))?.slice(0, 3000);
    await page?.screenshot({ path: join(args.screenshots, 'failure.png'), fullPage: true });
  } catch {
    // The failure itself is what matters.
  }
  console.log(JSON.stringify({ ok: false, error: String(e?.stack ?? e), url, text, steps, ...result }));
  process.exitCode = 1;
} finally {
  await browser?.close();
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(process.exitCode ?? 0);
}
