// The web player in real headless Chromium against the real picamd binary on 127.0.0.1.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Picamd, freePort, launch, openPlayer, readCanvas, stats, waitForStats, sleep, setPageHidden,
  killAndRestart,
} from './harness.mjs';

const SIZE = ['--size', '640x360', '--fps', '30'];
let browser;

before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test('frames reach the canvas and match the test pattern', async () => {
  const server = await new Picamd(await freePort(), SIZE).start();
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?source=ws`);
  try {
    const s = await waitForStats(page, (s) => s.drawn >= 30, '30 drawn frames');
    assert.equal(s.source, 'ws');
    assert.equal(s.state, 'live');
    assert.ok(s.received >= s.drawn);
    const c = await readCanvas(page);
    assert.deepEqual([c.width, c.height], [640, 360]);
    const now = await stats(page);
    assert.ok(c.seq >= 1 && c.seq <= now.lastSeq, `canvas shows frame ${c.seq}, last ${now.lastSeq}`);
    // 75 % blue is about (16, 16, 180) after JPEG; allow for compression and colour maths.
    const blueish = c.blue.filter(([r, g, b]) => b > 140 && r < 70 && g < 70);
    assert.ok(blueish.length >= 2, `blue bar pixels ${JSON.stringify(c.blue)}`);
    assert.ok(Number.isFinite(now.latencyMs) && now.latencyMs < 2000, `latency ${now.latencyMs}`);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('the page recovers by itself after the server is killed and restarted', async () => {
  const port = await freePort();
  const server = await new Picamd(port, SIZE).start();
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?source=ws`);
  try {
    const { back } = await killAndRestart(page, server);
    assert.ok(back.reconnects >= 1);
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was not reloaded');
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('a socket that stays open but sends nothing is reopened by the watchdog', async () => {
  const server = await new Picamd(await freePort(), SIZE).start();
  const { page, context } = await openPlayer(browser, `${server.origin}/?source=ws&stall=2000`);
  try {
    const live = await waitForStats(page, (s) => s.drawn >= 10 && s.state === 'live', 'live');
    // A stopped process keeps its sockets open but sends nothing.
    await server.signal('SIGSTOP');
    await waitForStats(page, (s) => s.state !== 'live', 'the stall to be noticed', 8000);
    await waitForStats(page, (s) => s.reconnects > live.reconnects, 'a reconnect attempt', 10000);
    await server.signal('SIGCONT');
    await waitForStats(page, (s) => s.state === 'live' && s.drawn >= live.drawn + 10, 'live again', 15000);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('the MJPEG fallback shows frames and recovers from a restart', async () => {
  const port = await freePort();
  let server = await new Picamd(port, SIZE).start();
  const { page, context } = await openPlayer(browser, `${server.origin}/?source=mjpeg&stall=2000`);
  try {
    const first = await waitForStats(page, (s) => s.drawn >= 10, 'MJPEG frames drawn');
    assert.equal(first.source, 'mjpeg');
    const c = await readCanvas(page);
    assert.ok(c.seq >= 1, `canvas frame number ${c.seq}`);
    await server.signal('SIGKILL');
    await sleep(3000);
    const during = await stats(page);
    server = await new Picamd(port, SIZE).start();
    await waitForStats(page, (s) => s.drawn >= during.drawn + 10, 'MJPEG frames after restart', 20000);
    assert.equal(await page.evaluate(() => window.__notReloaded), true);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('the local camera is drawn on a secure origin and explained on an insecure one', async () => {
  const server = await new Picamd(await freePort(), SIZE).start();
  const camBrowser = await launch([
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    // picamd.test resolves to 127.0.0.1 but, unlike localhost, is not a secure origin.
    '--host-resolver-rules=MAP picamd.test 127.0.0.1',
  ]);
  try {
    const secure = await openPlayer(camBrowser, `http://localhost:${server.port}/?source=camera`);
    const s = await waitForStats(secure.page, (s) => s.source === 'camera' && s.drawn >= 10, 'camera frames');
    assert.ok(s.drawn >= 10);
    await secure.context.close();

    const insecure = await openPlayer(camBrowser, `http://picamd.test:${server.port}/?source=camera`);
    assert.equal(await insecure.page.evaluate(() => window.isSecureContext), false);
    const text = await insecure.page.evaluate(() => {
      const host = document.querySelector('picam-player');
      return document.body.innerText + (host?.shadowRoot?.textContent ?? '');
    });
    assert.match(text, /HTTPS/);
    assert.match(text, /localhost/);
    await insecure.context.close();
  } finally {
    await camBrowser.close();
    await server.stop();
  }
});

test('a hidden page stops drawing, lets the socket go after the grace period, and resumes when visible', async () => {
  const server = await new Picamd(await freePort(), SIZE).start();
  const { page, context } = await openPlayer(browser, `${server.origin}/?source=ws&hiddenGrace=1000`);
  const wsViewers = async () => {
    const r = await fetch(`${server.origin}/state`);
    return (await r.json()).viewers.ws;
  };
  try {
    await waitForStats(page, (s) => s.drawn >= 10 && s.state === 'live', 'live');
    assert.equal(await wsViewers(), 1);
    await setPageHidden(page, true);
    await sleep(300);
    const hidden = await stats(page);
    await sleep(1500);
    const later = await stats(page);
    assert.ok(later.drawn - hidden.drawn <= 1, `drew ${later.drawn - hidden.drawn} frames while hidden`);
    // After the 1 s grace the socket is closed: the server counts no WebSocket viewer.
    let viewers = await wsViewers();
    for (let i = 0; i < 20 && viewers !== 0; i++) {
      await sleep(100);
      viewers = await wsViewers();
    }
    assert.equal(viewers, 0, 'the socket stayed open while hidden');
    await setPageHidden(page, false);
    await waitForStats(page, (s) => s.state === 'live' && s.drawn >= later.drawn + 10, 'live again when visible', 10000);
    assert.equal(await wsViewers(), 1);
    assert.equal(await page.evaluate(() => window.__notReloaded), true);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('a minute of streaming keeps open bitmaps bounded', async () => {
  const server = await new Picamd(await freePort(), SIZE).start();
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?source=ws`);
  try {
    await waitForStats(page, (s) => s.drawn >= 10, 'frames');
    let maxOpen = 0;
    const end = Date.now() + 60_000;
    while (Date.now() < end) {
      maxOpen = Math.max(maxOpen, (await stats(page)).openBitmaps);
      await sleep(250);
    }
    const s = await stats(page);
    assert.ok(s.drawn > 600, `only ${s.drawn} frames drawn in a minute`);
    assert.ok(maxOpen <= 4, `up to ${maxOpen} bitmaps open at once`);
    const heap = await page.evaluate(() => performance.memory?.usedJSHeapSize ?? 0);
    assert.ok(heap < 64 * 1024 * 1024, `JS heap ${heap} bytes`);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await server.stop();
  }
});
