// Drives a real browser (Debian's Chromium through playwright-core) through
// a federated sign-in: app -> gateway -> IdP login page -> back through the
// gateway (for SAML: a cross-site POST of the SAMLResponse to the ACS) ->
// app callback. Real cookie, SameSite and JavaScript semantics apply.
//
// Usage:
//   node saml-e2e.mjs --start <app login URL> --done <app callback URL prefix>
//     --idp-origin <origin of the IdP login page> --username U --password P
//     [--username-selector css] [--password-selector css] [--submit-selector css]
//     [--chromium /usr/bin/chromium] [--timeout-ms 30000]
//
// Prints one JSON line on stdout:
//   {"ok":true,"final_url":..,"status":..,"body":<JSON of the final page, or its text>,
//    "navigations":[{"method","url","status"}...]}
// or {"ok":false,"error":..,...} with exit code 1.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    start: { type: 'string' },
    done: { type: 'string' },
    'idp-origin': { type: 'string' },
    username: { type: 'string' },
    password: { type: 'string' },
    'username-selector': { type: 'string', default: 'input[name="username"]' },
    'password-selector': { type: 'string', default: 'input[name="password"]' },
    'submit-selector': { type: 'string', default: 'form button[type="submit"], form input[type="submit"]' },
    chromium: { type: 'string' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});

for (const required of ['start', 'done', 'idp-origin', 'username', 'password']) {
  if (!args[required]) {
    console.error(`saml-e2e: --${required} is required`);
    process.exit(2);
  }
}

const timeout = Number(args['timeout-ms']);
const executablePath = args.chromium ?? process.env.PORTCULLIS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const idpOrigin = new URL(args['idp-origin']).origin;
const userDataDir = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
const navigations = [];

let browser;
let page;
const result = {};
try {
  // A persistent context on a fresh, empty profile directory: nothing
  // carries over between runs.
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    timeout,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = browser.pages()[0] ?? await browser.newPage();
  page.setDefaultTimeout(timeout);

  page.on('request', (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      navigations.push({ method: request.method(), url: request.url(), status: null });
    }
  });
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      const entry = navigations.findLast((n) => n.url === request.url() && n.status === null);
      if (entry) entry.status = response.status();
    }
  });

  const isDone = (url) => url.startsWith(args.done);
  const doneResponse = page.waitForResponse(
    (r) => isDone(r.url()) && r.request().isNavigationRequest(),
    { timeout },
  );
  doneResponse.catch(() => {});

  await page.goto(args.start, { waitUntil: 'load' });

  if (!isDone(page.url())) {
    await page.waitForURL((u) => u.origin === idpOrigin || isDone(u.href), { waitUntil: 'load' });
  }
  if (!isDone(page.url())) {
    await page.fill(args['username-selector'], args.username);
    await page.fill(args['password-selector'], args.password);
    await page.click(args['submit-selector']);
  }

  // After the login the IdP answers with a form that JavaScript submits on
  // load (SAML HTTP-POST binding). If it is still on screen after a while
  // (no script, or a consent step), press its button like a person would.
  const deadline = Date.now() + timeout;
  let done = false;
  while (!done && Date.now() < deadline) {
    done = await Promise.race([
      doneResponse.then(() => true),
      new Promise((resolve) => { setTimeout(() => resolve(false), 3000); }),
    ]);
    if (!done && new URL(page.url()).origin === idpOrigin) {
      const button = page.locator(args['submit-selector']).first();
      if (await button.isVisible().catch(() => false)) {
        await button.click().catch(() => {});
      }
    }
  }
  if (!done) throw new Error(`never reached ${args.done}`);

  const response = await doneResponse;
  await page.waitForLoadState('load');
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  Object.assign(result, { ok: true, final_url: response.url(), status: response.status(), body });
} catch (err) {
  let pageText;
  try { pageText = page ? (await page.content()).slice(0, 4000) : undefined; } catch { pageText = undefined; }
  Object.assign(result, {
    ok: false,
    error: String(err?.message ?? err),
    final_url: page?.url(),
    page: pageText,
  });
} finally {
  await browser?.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}

result.navigations = navigations;
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(result.ok ? 0 : 1);
