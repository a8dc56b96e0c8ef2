// The WebCodecs path (H.264 over /ws, decoded by VideoDecoder) in real headless Chromium
// against the real picamd binary on 127.0.0.1, a secure context, where Chromium offers
// WebCodecs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Picamd, freePort, launch, openPlayer, stats, waitForStats, sleep, readCanvas,
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

/** The WebCodecs source's own counters (units, bytes, decoded, dropped, queue). */
const sourceStats = (page) => page.evaluate(() => {
  const src = window.picamd.player.source;
  return src?.kind === 'webcodecs' ? { ...src.stats, bytes: src.bytes } : null;
});

const viewers = async (server) => (await (await fetch(`${server.origin}/state`)).json()).viewers;

/**
 * Bytes per second the page's source receives, over `ms`: from the source's byte count
 * (every binary message, headers included), as the overlay's bit rate counts them.
 */
async function bytesPerSecond(page, ms) {
  const bytes = () => page.evaluate(() => window.picamd.player.source?.bytes ?? 0);
  const t0 = Date.now();
  const b0 = await bytes();
  await sleep(ms);
  return ((await bytes()) - b0) / ((Date.now() - t0) / 1000);
}

test('H.264 is decoded and drawn, every VideoFrame closed, at a fraction of the JPEG bytes', async () => {
  const server = await new Picamd(await freePort(), SIZE).start();
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?source=webcodecs`);
  try {
    const s = await waitForStats(page, (s) => s.drawn >= 30, '30 drawn frames');
    assert.equal(s.source, 'webcodecs');
    assert.equal(s.state, 'live');
    const v = await viewers(server);
    assert.deepEqual([v.ws_h264, v.ws], [1, 0], 'counted as an H.264 viewer, not a JPEG one');
    const a = await readCanvas(page);
    assert.deepEqual([a.width, a.height], [640, 360]);
    const blueish = a.blue.filter(([r, g, b]) => b > 140 && r < 70 && g < 70);
    assert.ok(blueish.length >= 2, `blue bar pixels ${JSON.stringify(a.blue)}`);
    await sleep(500);
    const b = await readCanvas(page);
    assert.ok(a.seq >= 1 && b.seq > a.seq, `frame numbers on the canvas: ${a.seq} then ${b.seq}`);
    const now = await stats(page);
    assert.ok(b.seq <= now.lastSeq, `canvas shows frame ${b.seq}, last ${now.lastSeq}`);
    assert.ok(Number.isFinite(now.latencyMs) && now.latencyMs < 2000, `latency ${now.latencyMs}`);

    // ~30 s of streaming: the frames held stay bounded (renderer: pending + on screen).
    let maxOpen = 0;
    const start = await stats(page);
    const end = Date.now() + 30_000;
    while (Date.now() < end) {
      const t = await stats(page);
      maxOpen = Math.max(maxOpen, t.openBitmaps);
      await sleep(250);
    }
    const later = await stats(page);
    const src = await sourceStats(page);
    console.log(`# webcodecs 30 s: drawn ${later.drawn - start.drawn}, decoded ${src.decoded}, dropped ${src.dropped}, `
      + `units ${src.units}, max open frames ${maxOpen}, decode queue now ${src.queue}`);
    assert.ok(later.drawn - start.drawn > 600, `only ${later.drawn - start.drawn} frames drawn in 30 s`);
    assert.ok(maxOpen <= 4, `up to ${maxOpen} VideoFrames open at once`);
    assert.ok(src.decoded >= later.drawn - 5, 'every drawn frame was decoded here');
    assert.equal(later.state, 'live');

    // Bytes per second against the JPEG WebSocket at the same size and rate, same server.
    const h264Bps = await bytesPerSecond(page, 5000);
    const jpeg = await openPlayer(browser, `${server.origin}/?source=ws`);
    try {
      await waitForStats(jpeg.page, (s) => s.source === 'ws' && s.drawn >= 30, 'JPEG frames');
      const jpegBps = await bytesPerSecond(jpeg.page, 5000);
      const ratio = jpegBps / h264Bps;
      console.log(`# 640x360 at 30 fps: JPEG WebSocket ${(jpegBps / 1000).toFixed(1)} kB/s, `
        + `H.264 WebSocket ${(h264Bps / 1000).toFixed(1)} kB/s, ${ratio.toFixed(1)}x fewer bytes`);
      assert.ok(ratio >= 4, `H.264 only ${ratio.toFixed(1)}x below JPEG`);
    } finally {
      await jpeg.context.close();
    }
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('the WebCodecs player recovers by itself after kill -9 and a restart', async () => {
  const port = await freePort();
  const server = await new Picamd(port, SIZE).start();
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?source=webcodecs`);
  try {
    const { back } = await killAndRestart(page, server, 20000);
    assert.equal(back.source, 'webcodecs', 'still on H.264');
    assert.ok(back.reconnects >= 1);
    const c = await readCanvas(page);
    assert.ok(c.seq >= 1, `canvas frame number ${c.seq}`);
    assert.ok(back.openBitmaps <= 4, `${back.openBitmaps} frames open`);
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was not reloaded');
    assert.deepEqual(errors, []);
    await context.close();
    // The page went away: so did its H.264 consumer.
    let v = await viewers(server);
    for (let i = 0; i < 30 && v.ws_h264 !== 0; i++) {
      await sleep(100);
      v = await viewers(server);
    }
    assert.equal(v.ws_h264, 0);
  } finally {
    await context.close().catch(() => {});
    await server.stop();
  }
});

test('a page on an origin without WebCodecs takes the next rung', async () => {
  const server = await new Picamd(await freePort(), SIZE).start();
  // picamd.test resolves to 127.0.0.1 but, unlike 127.0.0.1 and localhost, is not a secure
  // origin: no VideoDecoder there.
  const insecure = await launch(['--host-resolver-rules=MAP picamd.test 127.0.0.1']);
  try {
    const { page, context } = await openPlayer(insecure, `http://picamd.test:${server.port}/?source=webcodecs`);
    assert.equal(await page.evaluate(() => 'VideoDecoder' in window), false);
    const s = await waitForStats(page, (s) => s.drawn >= 10, 'frames from a lower rung');
    assert.notEqual(s.source, 'webcodecs');
    await context.close();
  } finally {
    await insecure.close();
    await server.stop();
  }
});
