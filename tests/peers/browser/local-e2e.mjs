// Local accounts with TOTP in a real browser (Debian's Chromium through
// playwright-core): from an app's login, a person creates an account on the
// local sign-in page ("Create account"), confirms it with the code e-mailed
// to them (asked of the test on stdout, answered on stdin), signs in, enrols
// an authenticator (the TOTP code is computed here, with node's own HMAC,
// from the secret the page shows as text), reaches the app, signs out at the
// gateway (the confirmation form), and signs in again with a TOTP code of a
// later time step. Every page is checked with axe-core (no serious or
// critical violations) and a screenshot of each step is saved.
//
// Usage:
//   node local-e2e.mjs --start U --done U --email E --password P --logout U
//     --screenshots DIR [--chromium /usr/bin/chromium] [--timeout-ms 30000]
//
// Asks for the e-mailed code by printing {"need":"code","email":E} and reading
// one line (the code) from stdin. Ends with one JSON line: {"ok":true,"steps":[...],
// "first":<app callback JSON>,"second":<app callback JSON>} or {"ok":false,"error":..}.

import { createHmac } from 'node:crypto';
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
    done: { type: 'string' },
    email: { type: 'string' },
    password: { type: 'string' },
    logout: { type: 'string' },
    screenshots: { type: 'string' },
    chromium: { type: 'string' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});
for (const required of ['start', 'done', 'email', 'password', 'logout', 'screenshots']) {
  if (!args[required]) {
    console.error(`local-e2e: --${required} is required`);
    process.exit(2);
  }
}

const timeout = Number(args['timeout-ms']);
const executablePath = args.chromium ?? process.env.PORTCULLIS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const done = new URL(args.done);
const userDataDir = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
const steps = [];
const result = {};
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

/** RFC 4648 base32 (no padding, spaces ignored). */
function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/[\s=]/g, '').toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

/** RFC 6238 TOTP: HMAC-SHA-1, 30 s, 6 digits, for time step `step`. */
function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const binary = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(binary % 1_000_000).padStart(6, '0');
}

const currentStep = () => Math.floor(Date.now() / 1000 / 30);

/** Screenshot and accessibility check of the current page (`axe: false`
 * for the test app's JSON answer, which is not a page of ours). */
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

/** Submits the page's form whose field `name` is there, and waits for the next page. */
async function submitWith(fields, name) {
  for (const [field, value] of Object.entries(fields)) {
    await page.fill(`form input[name="${field}"]`, value);
  }
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    page.locator(`form:has(input[name="${name}"]) [type=submit]`).first().click(),
  ]);
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

/** Signs in on the local sign-in page (the browser is on it). */
async function signIn(name) {
  await page.waitForSelector('input[name="password"]');
  await step(name);
  await submitWith({ email: args.email, password: args.password }, 'password');
}

try {
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  browser.setDefaultTimeout(timeout);
  page = browser.pages()[0] ?? (await browser.newPage());

  // Sign-up from the local sign-in page.
  await page.goto(args.start, { waitUntil: 'load' });
  await page.waitForSelector('input[name="password"]');
  await step('sign-in-page');
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    page.getByRole('link', { name: /Create account/ }).or(page.getByRole('button', { name: /Create account/ })).first().click(),
  ]);
  await step('sign-up');
  await submitWith({ email: args.email, password: args.password, password_confirm: args.password }, 'password');

  // Confirm with the e-mailed code.
  await page.waitForSelector('input[name="code"]');
  await step('confirm');
  const code = await ask({ need: 'code', email: args.email });
  await submitWith({ code }, 'code');
  await step('confirmed');

  // Sign in (the confirmation may have led back to the sign-in page, or on).
  if (await page.locator('input[name="password"]').count()) {
    await signIn('sign-in');
  }

  // TOTP enrolment: the secret shown as text, a code computed here.
  await page.waitForSelector('#secret');
  await step('mfa-enrol');
  const secret = (await page.innerText('#secret')).replace(/\s/g, '');
  const enrolStep = currentStep();
  await submitWith({ code: totp(secret, enrolStep) }, 'code');
  await page.waitForSelector('#recovery-codes');
  await step('mfa-recovery-codes');
  result.recovery_codes = (await page.locator('#recovery-codes code').allInnerTexts()).length;
  await Promise.all([page.waitForURL((u) => u.origin === done.origin, { waitUntil: 'load' }), page.locator('form [type=submit]').first().click()]);
  result.first = await appAnswer();
  await step('app-after-enrolment', { axe: false });

  // Sign out at the gateway (no ID token hint: it asks, and the form confirms).
  await page.goto(args.logout, { waitUntil: 'load' });
  await step('sign-out');
  if (await page.locator('form [type=submit]').count()) {
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.locator('form [type=submit]').first().click()]);
  }
  await step('signed-out');

  // Sign in again: password, then a TOTP code of a later time step (the
  // enrolment's code is never accepted twice).
  await page.goto(args.start, { waitUntil: 'load' });
  await signIn('sign-in-again');
  await page.waitForSelector('input[name="code"]');
  await step('mfa-challenge');
  while (currentStep() <= enrolStep) {
    await new Promise((r) => setTimeout(r, 500));
  }
  await submitWith({ code: totp(secret, currentStep()) }, 'code');
  result.second = await appAnswer();
  await step('app-after-totp', { axe: false });

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
