// Several streams in real headless Chromium against the real picamd binary: the stream picker,
// /cam/<name>/ pages, and the grid of all streams. The two streams have different sizes, so
// the frame headers tell which one a drawn frame came from.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Picamd, freePort, launch, openPlayer, startWithConfig, stats, waitForStats, sleep, setPageHidden,
} from './harness.mjs';

const CONFIG = `
fps = 15
rtsp_listen = "127.0.0.1:0"

[[stream]]
name = "a"
source = "test"
size = "320x240"

[[stream]]
name = "b"
source = "test"
size = "160x120"
`;

let browser;
let server;

before(async () => {
  browser = await launch();
  server = await startWithConfig(CONFIG);
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/**
 * WebSocket viewers of one stream, as the server counts them: JPEG (`ws`) and H.264
 * (`ws_h264`, where the tiles' ladder starts on 127.0.0.1, a secure context with WebCodecs).
 */
async function wsViewers(name) {
  const r = await fetch(`${server.origin}/cam/${name}/state`);
  const { viewers } = await r.json();
  return viewers.ws + (viewers.ws_h264 ?? 0);
}

async function waitFor(what, fn, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}; last ${JSON.stringify(last)}`);
}

/** Polls the server until a stream has `n` WebSocket viewers. */
const waitViewers = (name, n) =>
  waitFor(`${n} WebSocket viewer(s) of ${name}`, async () => ((await wsViewers(name)) === n ? true : null));

/**
 * Records, on every animation frame, which stream the single view shows and the size of the
 * frame it drew last. The renderer draws at most once per animation frame, so no drawn frame
 * escapes the log.
 */
const recordDraws = (page) => page.evaluate(() => {
  window.__draws = [];
  let lastDrawn = -1;
  let lastStream;
  const sample = () => {
    const s = window.picamd.stats;
    if (s.drawn !== lastDrawn || s.stream !== lastStream) {
      lastDrawn = s.drawn;
      lastStream = s.stream;
      if (s.drawn > 0) window.__draws.push({ stream: s.stream, width: s.width, height: s.height, seq: s.lastSeq });
    }
    requestAnimationFrame(sample);
  };
  requestAnimationFrame(sample);
});

const tiles = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.picamd.tiles)));

async function waitTiles(page, pred, what, timeoutMs = 15000) {
  return waitFor(what, async () => {
    const t = await tiles(page);
    return pred(t) ? t : null;
  }, timeoutMs);
}

test('the picker lists both streams and switches to b without a reload', async () => {
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?source=ws&theme=dark`);
  try {
    const a = await waitForStats(page, (s) => s.drawn >= 5 && s.state === 'live', 'stream a live');
    assert.deepEqual([a.width, a.height], [320, 240], 'the root page shows the default stream a');
    const picker = page.locator('select[data-role="stream"]');
    await picker.waitFor({ state: 'visible', timeout: 5000 });
    assert.deepEqual(await picker.locator('option').evaluateAll((os) => os.map((o) => o.value)), ['a', 'b']);
    assert.equal(await picker.inputValue(), 'a');
    assert.equal(await page.locator('[data-action="grid"]').isVisible(), true);
    await waitViewers('a', 1);

    await recordDraws(page);
    // With the keyboard, as a user without a mouse would.
    await picker.focus();
    await page.keyboard.press('ArrowDown');
    const b = await waitForStats(page, (s) => s.stream === 'b' && s.drawn >= 10, 'frames of b');
    assert.deepEqual([b.width, b.height], [160, 120]);
    assert.ok(b.reconnects === 0 && b.failures === 0, `fresh counters: ${JSON.stringify(b)}`);

    const draws = await page.evaluate(() => window.__draws);
    const afterSwitch = draws.filter((d) => d.stream === 'b');
    assert.ok(afterSwitch.length >= 5, `${afterSwitch.length} draws logged after the switch`);
    const wrong = afterSwitch.filter((d) => d.width !== 160 || d.height !== 120);
    assert.deepEqual(wrong, [], 'a frame of the old stream was drawn after the switch');
    assert.ok(draws.some((d) => d.stream === null && d.width === 320), 'the log saw stream a before');

    const canvas = await page.evaluate(() => {
      const c = document.querySelector('.pp-canvas');
      return [c.width, c.height];
    });
    assert.deepEqual(canvas, [160, 120]);
    const loc = await page.evaluate(() => ({ path: location.pathname, search: location.search }));
    assert.equal(loc.path, '/cam/b/');
    assert.match(loc.search, /source=ws/);
    assert.match(loc.search, /theme=dark/);
    assert.equal(await picker.inputValue(), 'b');
    assert.equal(await page.locator('a[data-stream-url="snapshot"]').getAttribute('href'), '/cam/b/snapshot');
    // The RTSP link is the one /streams gives for b (the port is the server's, host the page's).
    const listed = (await (await fetch(`${server.origin}/streams`)).json()).streams;
    const rtspB = listed.find((s) => s.name === 'b').urls.rtsp;
    assert.match(rtspB, /^rtsp:\/\/127\.0\.0\.1:\d+\/b$/);
    const rtspLink = page.locator('a[data-rtsp-url]');
    assert.equal(await rtspLink.getAttribute('href'), rtspB);
    assert.equal(await rtspLink.isVisible(), true);
    // The old socket was closed, not left behind.
    await waitViewers('a', 0);
    assert.equal(await wsViewers('b'), 1);
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was reloaded');

    // And back again with the mouse.
    await picker.selectOption('a');
    const back = await waitForStats(page, (s) => s.stream === 'a' && s.drawn >= 5, 'frames of a again');
    assert.deepEqual([back.width, back.height], [320, 240]);
    assert.equal(await page.evaluate(() => location.pathname), '/cam/a/');
    await waitViewers('b', 0);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test('/cam/b/ and /?stream=b open stream b', async () => {
  for (const url of ['/cam/b/', '/?stream=b', '/cam/b']) {
    const { page, context, errors } = await openPlayer(browser, `${server.origin}${url}`);
    try {
      const s = await waitForStats(page, (s) => s.drawn >= 5 && s.state === 'live', `frames at ${url}`);
      assert.equal(s.stream, 'b', url);
      assert.deepEqual([s.width, s.height], [160, 120], url);
      const picker = page.locator('select[data-role="stream"]');
      await picker.waitFor({ state: 'visible', timeout: 5000 });
      assert.equal(await picker.inputValue(), 'b', url);
      assert.equal(await wsViewers('a'), 0, `${url} opened a socket to a`);
      assert.deepEqual(errors, []);
    } finally {
      await context.close();
    }
  }
});

test('the grid shows every stream drawing, and a tile opens its stream', async () => {
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?grid=1&source=ws`);
  try {
    const first = await waitTiles(page, (t) => t.a?.drawn >= 3 && t.b?.drawn >= 3, 'both tiles drawing');
    await sleep(1000);
    const later = await tiles(page);
    for (const name of ['a', 'b']) {
      assert.ok(later[name].drawn > first[name].drawn, `tile ${name} stopped drawing: ${JSON.stringify(later[name])}`);
      assert.ok(later[name].lastSeq > first[name].lastSeq, `tile ${name} seq did not advance`);
      assert.equal(later[name].badge, 'live');
    }
    assert.deepEqual([later.a.width, later.a.height], [320, 240]);
    assert.deepEqual([later.b.width, later.b.height], [160, 120]);
    assert.equal(await page.evaluate(() => window.picamd.view), 'grid');
    assert.equal(await page.locator('.pp-tile').count(), 2);
    assert.deepEqual(await page.locator('.pp-tile .pp-tile-name').allTextContents(), ['a', 'b']);
    assert.equal(await page.locator('.pp-stage').isVisible(), false);
    // One socket per tile, none for the hidden single view.
    assert.equal(await wsViewers('a'), 1);
    assert.equal(await wsViewers('b'), 1);
    // Tiles keep the stream's shape.
    const box = await page.locator('.pp-tile[data-stream="b"]').boundingBox();
    assert.ok(Math.abs(box.width / box.height - 4 / 3) < 0.05, `tile b is ${box.width}×${box.height}`);

    await page.locator('.pp-tile[data-stream="b"]').click();
    const s = await waitForStats(page, (s) => s.stream === 'b' && s.drawn >= 5, 'b in the single view');
    assert.deepEqual([s.width, s.height], [160, 120]);
    assert.equal(await page.evaluate(() => window.picamd.view), 'single');
    assert.deepEqual(await tiles(page), {});
    const loc = await page.evaluate(() => location.pathname + location.search);
    assert.equal(loc, '/cam/b/?source=ws');
    await waitViewers('a', 0);
    assert.equal(await wsViewers('b'), 1);

    // Back to the grid with its button, then Enter on a tile.
    await page.locator('[data-action="grid"]').click();
    await waitTiles(page, (t) => t.a?.drawn >= 2 && t.b?.drawn >= 2, 'the grid again');
    assert.equal(await page.evaluate(() => location.pathname + location.search), '/?grid=1&source=ws');
    assert.equal((await stats(page)).state, 'paused', 'the single view still claims to play');
    await page.locator('.pp-tile[data-stream="a"]').focus();
    await page.keyboard.press('Enter');
    const a = await waitForStats(page, (s) => s.stream === 'a' && s.drawn >= 5, 'a after Enter');
    assert.deepEqual([a.width, a.height], [320, 240]);
    assert.equal(await page.evaluate(() => location.pathname), '/cam/a/');
    assert.equal(await page.evaluate(() => window.__notReloaded), true);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test('a hidden grid stops drawing and lets every socket go after the grace period', async () => {
  const { page, context } = await openPlayer(browser, `${server.origin}/?grid&hiddenGrace=1000`);
  try {
    await waitTiles(page, (t) => t.a?.drawn >= 3 && t.b?.drawn >= 3, 'both tiles drawing');
    await setPageHidden(page, true);
    await sleep(300);
    const hidden = await tiles(page);
    await waitViewers('a', 0);
    await waitViewers('b', 0);
    const later = await tiles(page);
    for (const name of ['a', 'b']) {
      assert.ok(later[name].drawn - hidden[name].drawn <= 1, `tile ${name} drew while hidden`);
    }
    await setPageHidden(page, false);
    await waitTiles(page, (t) => t.a.drawn >= later.a.drawn + 5 && t.b.drawn >= later.b.drawn + 5, 'drawing again');
    assert.equal(await wsViewers('a'), 1);
    assert.equal(await wsViewers('b'), 1);
  } finally {
    await context.close();
  }
});

test('with one stream there is no picker and no grid button', async () => {
  const single = await new Picamd(await freePort(), ['--size', '320x240', '--fps', '15']).start();
  const { page, context, errors } = await openPlayer(browser, `${single.origin}/`);
  try {
    await waitForStats(page, (s) => s.drawn >= 5 && s.state === 'live', 'live');
    await page.waitForFunction(() => window.picamd.streams.length === 1, null, { timeout: 5000 });
    assert.equal(await page.locator('select[data-role="stream"]').isVisible(), false);
    assert.equal(await page.locator('[data-action="grid"]').isVisible(), false);
    const s = await stats(page);
    assert.equal(s.stream, null, 'the root URLs are used');
    assert.equal(await page.evaluate(() => location.pathname + location.search), '/');
    // G does nothing without a choice of streams.
    await page.keyboard.press('g');
    await sleep(200);
    assert.equal(await page.evaluate(() => window.picamd.view), 'single');
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await single.stop();
  }
});
