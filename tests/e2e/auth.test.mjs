// The player in headless Chromium against a picamd with authentication on: the page, its
// modules and its WebSocket all need credentials. Checks what Chromium does with HTTP Basic:
// once the page was let in, it sends the same credentials on the same-origin WebSocket
// upgrade by itself, so the player streams over `/ws` (not the MJPEG fallback). And that a
// page opened as `/?token=…` needs nothing else: picamd answers it with an HttpOnly cookie
// that carries the token to the page's modules, `/state` and `/ws`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  PICAMD_BIN, launch, startWithConfig, stats, waitForStats,
} from './harness.mjs';

const USER = 'alice';
const PASSWORD = 'open sesame';

let browser;
let server;
/** A token from `picamd --new-token`, also in the config. */
let token;

before(async () => {
  const hash = execFileSync(PICAMD_BIN, ['--hash-password'], { input: `${PASSWORD}\n` }).toString().trim();
  const newToken = execFileSync(PICAMD_BIN, ['--new-token']).toString();
  token = newToken.match(/^token: (\S+)$/m)[1];
  const tokenLine = newToken.match(/^for \[auth\] tokens: (\S+)$/m)[1];
  browser = await launch();
  server = await startWithConfig(`size = "320x240"\nfps = 15\n[auth]\nusers = [{ name = "${USER}", password_hash = "${hash}" }]\ntokens = [${tokenLine}]\n`);
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Opens the player; `httpCredentials` answer the Basic prompt as a user would. */
async function open(url, httpCredentials) {
  const context = await browser.newContext({ httpCredentials });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  const resp = await page.goto(url);
  return { context, page, resp, errors };
}

test('without credentials the page is refused with a Basic challenge', async () => {
  const r = await fetch(`${server.origin}/`);
  assert.equal(r.status, 401);
  assert.equal(r.headers.get('www-authenticate'), 'Basic realm="picamd", charset="UTF-8"');
  // Headless Chromium has no prompt to show: the navigation fails instead.
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await assert.rejects(page.goto(`${server.origin}/`), /ERR_INVALID_AUTH_CREDENTIALS/);
  } finally {
    await context.close();
  }
});

test('after the Basic prompt the player streams over the WebSocket', async () => {
  const { context, page, resp, errors } = await open(`${server.origin}/?source=ws`, { username: USER, password: PASSWORD });
  try {
    assert.equal(resp.status(), 200);
    await page.waitForFunction(() => window.picamd?.stats, null, { timeout: 10000 });
    const s = await waitForStats(page, (st) => st.drawn >= 20 && st.state === 'live', '20 frames drawn');
    assert.equal(s.source, 'ws', 'the same-origin WebSocket carried the credentials');
    assert.equal((await stats(page)).reconnects, 0);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test('credentials in the page URL work too', async () => {
  const origin = server.origin.replace('http://', `http://${USER}:${encodeURIComponent(PASSWORD)}@`);
  const { context, page, resp } = await open(`${origin}/?source=ws`);
  try {
    assert.equal(resp.status(), 200);
    await page.waitForFunction(() => window.picamd?.stats, null, { timeout: 10000 });
    const s = await waitForStats(page, (st) => st.drawn >= 20, '20 frames drawn');
    assert.equal(s.source, 'ws');
  } finally {
    await context.close();
  }
});

test('a ?token= in the page URL is enough: the cookie it sets carries the rest', async () => {
  // No httpCredentials: only the token in the address.
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const errors = [];
    const refused = [];
    page.on('pageerror', (e) => errors.push(e));
    page.on('response', (r) => {
      if (r.status() >= 400) refused.push(`${r.status()} ${new URL(r.url()).pathname}`);
    });
    const resp = await page.goto(`${server.origin}/?token=${token}&source=ws`);
    assert.equal(resp.status(), 200);
    await page.waitForFunction(() => window.picamd?.stats, null, { timeout: 10000 });
    const s = await waitForStats(page, (st) => st.drawn >= 20 && st.state === 'live', '20 frames drawn');
    assert.equal(s.source, 'ws', 'the WebSocket upgrade carried the cookie');
    assert.equal((await stats(page)).reconnects, 0);
    assert.deepEqual(errors, []);
    assert.deepEqual(refused, [], 'no request of the page was refused');
    const cookies = await context.cookies(server.origin);
    assert.deepEqual(
      cookies.map((c) => [c.name, c.httpOnly, c.sameSite, c.secure, c.expires, c.path]),
      [['picamd_token', true, 'Strict', false, -1, '/']],
    );
    // HttpOnly: the page's scripts cannot read it.
    assert.equal(await page.evaluate(() => document.cookie), '');
    // The page's own fetches need nothing in their URL either.
    assert.equal(await page.evaluate(async () => (await fetch('/state')).status), 200);
  } finally {
    await context.close();
  }
});

test('a cookie with a revoked token is refused and cleared', async () => {
  const context = await browser.newContext();
  try {
    const url = new URL(server.origin);
    await context.addCookies([{
      name: 'picamd_token', value: `${token}x`, domain: url.hostname, path: '/', httpOnly: true, sameSite: 'Strict',
    }]);
    const page = await context.newPage();
    await assert.rejects(page.goto(`${server.origin}/`), /ERR_INVALID_AUTH_CREDENTIALS/);
    assert.deepEqual(await context.cookies(server.origin), [], 'the 401 cleared it');
    // Opening the page with the right token again sets it anew (in a new tab: the first
    // one is still on its error page).
    const resp = await (await context.newPage()).goto(`${server.origin}/?token=${token}`);
    assert.equal(resp.status(), 200);
    assert.deepEqual((await context.cookies(server.origin)).map((c) => c.value), [token]);
  } finally {
    await context.close();
  }
});
