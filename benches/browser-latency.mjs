// End-to-end latency, capture → drawn on the player's canvas in Debian's Chromium, for each
// way the player receives video (JPEG over /ws, WebRTC, WebCodecs), one after another against
// one picamd on 127.0.0.1, with the bytes per second each path carries. Run by
// `cargo bench --bench browser_latency` (benches/browser_latency.rs), which passes the
// release binary; or `node benches/browser-latency.mjs [--seconds 60] [--size 1280x720]
// [--fps 30] [--sources ws,webrtc,webcodecs]` with PICAMD_BIN set.
//
// How latency is measured, the same way for every path: the test pattern spells each frame's
// number in cells along its top edge. A hook on the renderer reads those cells back from the
// canvas right after each draw and notes the time; a separate /ws connection in the page
// collects every frame's capture time by number from the frame headers. picamd and Chromium
// run on the same machine, so both times are on one clock (CLOCK_REALTIME) and
// drawn − captured needs no offset estimate. "Drawn" is when drawImage has returned; the
// compositor puts it on screen at the next vsync (≤ 16.7 ms later at 60 Hz) for every path
// alike. The overlay's own figure (stats.latencyMs: header capture time + ping clock offset
// for the WebSocket paths, requestVideoFrameCallback's captureTime for WebRTC) is printed
// beside it, to show how far the overlay can be trusted.

import { launch, openPlayer, Picamd, freePort, sleep, stats, waitForStats } from '../tests/e2e/harness.mjs';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const SECONDS = Number(arg('seconds', '60'));
const SIZE = arg('size', '1280x720');
const FPS = Number(arg('fps', '30'));
const SOURCES = arg('sources', 'ws,webrtc,webcodecs').split(',');

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** Installed in the page: the draw hook and the capture-time collector. */
function instrument() {
  const player = window.picamd.player;
  const renderer = player.renderer;
  const canvas = renderer.canvas ?? document.querySelector('picam-player')?.shadowRoot?.querySelector('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const bench = { draws: [], captures: new Map(), overlay: [], readErrors: 0 };
  window.__bench = bench;
  const readSeq = () => {
    const { width } = canvas;
    // The renderer's canvas is the frame's size (rotation 0): cells are width/64 wide.
    const cell = Math.max(2, Math.floor(width / 64)) & ~1;
    const row = ctx.getImageData(0, Math.floor(cell / 2), 32 * cell, 1).data;
    let seq = 0;
    for (let bit = 0; bit < 32; bit++) {
      const x = bit * cell + cell / 2;
      const i = Math.floor(x) * 4;
      seq = seq * 2 + ((row[i] + row[i + 1] + row[i + 2]) / 3 > 128 ? 1 : 0);
    }
    return seq;
  };
  const orig = renderer.onDrawn;
  renderer.onDrawn = (frame) => {
    const at = performance.timeOrigin + performance.now();
    orig(frame);
    try {
      bench.draws.push([readSeq(), at]);
    } catch {
      bench.readErrors += 1;
    }
    const l = player.stats.latencyMs;
    if (typeof l === 'number') bench.overlay.push(l);
  };
  // Capture times by frame number, from the JPEG frame headers (seq = the pattern's number).
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = (ev) => {
    if (typeof ev.data === 'string') return;
    const v = new DataView(ev.data);
    const seq = Number(v.getBigUint64(8, true));
    const captureUs = Number(v.getBigUint64(16, true));
    bench.captures.set(seq, captureUs / 1000);
  };
  bench.ws = ws;
}

async function measure(browser, server, source) {
  const { page, context } = await openPlayer(browser, `${server.origin}/?source=${source}&hud=0`);
  try {
    try {
      await waitForStats(page, (s) => s.drawn >= 30 && s.state === 'live' && s.source === source, `${source} live`, 20000);
    } catch (e) {
      const s = await stats(page);
      return { source, error: `not live on ${source} (state ${s.state}, source ${s.source}, error ${s.error})` };
    }
    await page.evaluate(instrument);
    await sleep(1000);
    // The window starts now: draws before it (the capture map filling up) do not count.
    const startBytes = await page.evaluate(() => {
      window.__bench.draws = [];
      window.__bench.overlay = [];
      return window.picamd.player.source?.bytes ?? null;
    });
    const t0 = Date.now();
    await sleep(SECONDS * 1000);
    const endBytes = await page.evaluate(() => window.picamd.player.source?.bytes ?? null);
    const elapsed = (Date.now() - t0) / 1000;
    const result = await page.evaluate(() => {
      const b = window.__bench;
      b.ws.close();
      const lat = [];
      let unmatched = 0;
      for (const [seq, at] of b.draws) {
        const c = b.captures.get(seq);
        if (c === undefined) unmatched += 1;
        else lat.push(at - c);
      }
      return { lat, unmatched, draws: b.draws.length, overlay: b.overlay, readErrors: b.readErrors };
    });
    const s = await stats(page);
    const lat = result.lat.sort((a, b) => a - b);
    const overlay = result.overlay.sort((a, b) => a - b);
    return {
      source,
      frames: lat.length,
      unmatched: result.unmatched,
      fps: result.draws / elapsed,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      max: lat[lat.length - 1],
      overlayP50: percentile(overlay, 50),
      kBps: startBytes !== null && endBytes !== null ? (endBytes - startBytes) / elapsed / 1000 : null,
      reconnects: s.reconnects,
    };
  } finally {
    await context.close();
  }
}

const bin = process.env.PICAMD_BIN;
if (!bin) {
  console.error('set PICAMD_BIN (cargo bench --bench browser_latency does)');
  process.exit(2);
}
const server = await new Picamd(await freePort(), ['--size', SIZE, '--fps', String(FPS)]).start();
const browser = await launch();
console.log(`browser latency: ${SIZE} at ${FPS} fps, ${SECONDS} s per path, picamd ${bin}`);
console.log('path       frames  fps    p50 ms  p99 ms  max ms  overlay p50  kB/s     reconnects');
const rows = [];
try {
  for (const source of SOURCES) {
    const r = await measure(browser, server, source);
    rows.push(r);
    if (r.error) {
      console.log(`${source.padEnd(10)} ${r.error}`);
      continue;
    }
    const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '–');
    console.log(
      `${source.padEnd(10)} ${String(r.frames).padStart(6)}  ${f(r.fps).padStart(5)}  ${f(r.p50).padStart(6)}  ${f(r.p99).padStart(6)}  ${f(r.max).padStart(6)}  ${f(r.overlayP50).padStart(11)}  ${(r.kBps === null ? '–' : r.kBps.toFixed(0)).padStart(7)}  ${r.reconnects}` +
        (r.unmatched ? `  (${r.unmatched} draws without a capture time)` : ''),
    );
  }
  const base = rows.find((r) => r.source === 'ws' && !r.error);
  if (base?.kBps) {
    for (const r of rows) {
      if (r.error || r === base || !r.kBps) continue;
      console.log(`${r.source}: ${(base.kBps / r.kBps).toFixed(1)}× fewer bytes than JPEG over /ws; p50 ${(r.p50 - base.p50).toFixed(1)} ms vs JPEG`);
    }
  }
} finally {
  await browser.close();
  await server.stop();
}
