// The player's WebRTC source in real headless Chromium against the real picamd: the picture,
// the bytes against the JPEG WebSocket, recovery from a killed or frozen server, and, in a
// network namespace of the test's own, a LAN address over plain http with UDP blocked or
// WebRTC's port blocked altogether.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Netns, Picamd, freePort, launch, openPlayer, readCanvas, stats, waitForStats, sleep,
} from './harness.mjs';

const SIZE = ['--size', '640x360', '--fps', '30'];
let browser;

before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** picamd with its own WebRTC port (UDP, and ICE-TCP on the same number). */
async function startServer(extra = [], opts = {}) {
  const udp = await freePort();
  const server = new Picamd(await freePort(), [...SIZE, '--webrtc-udp-port', String(udp), ...extra], opts);
  server.udpPort = udp;
  return server.start();
}

/** Bytes the page's source received over `ms`, per second. */
async function bytesPerSecond(page, ms) {
  const read = () => page.evaluate(() => window.picamd.player.source?.bytes ?? null);
  // WebRTC's count comes from getStats once a second: wait for the first reading.
  const deadline = Date.now() + 5000;
  let a = await read();
  while (a === null && Date.now() < deadline) {
    await sleep(200);
    a = await read();
  }
  const t0 = Date.now();
  await sleep(ms);
  const b = await read();
  return ((b - a) * 1000) / (Date.now() - t0);
}

/** The selected ICE candidate pair's transport ("udp" / "tcp"), from getStats. */
const transport = (page) => page.evaluate(async () => {
  const pc = window.picamd.player.source?.pc;
  if (!pc) return null;
  const report = [...(await pc.getStats()).values()];
  const t = report.find((s) => s.type === 'transport');
  const pair = report.find((s) => s.type === 'candidate-pair' && s.id === t?.selectedCandidatePairId);
  const local = report.find((s) => s.id === pair?.localCandidateId);
  return local?.protocol ?? null;
});

test('WebRTC draws the test pattern with at least 4x fewer bytes than the JPEG WebSocket', async () => {
  const server = await startServer();
  try {
    const rtc = await openPlayer(browser, `${server.origin}/?source=webrtc`);
    let rtcRate;
    try {
      await waitForStats(rtc.page, (s) => s.source === 'webrtc' && s.state === 'live' && s.drawn >= 30, 'WebRTC frames', 20000);
      const a = await readCanvas(rtc.page);
      await sleep(1000);
      const b = await readCanvas(rtc.page);
      assert.equal(a.width, 640);
      assert.equal(a.height, 360);
      assert.ok(b.seq > a.seq && b.seq - a.seq < 120, `frame numbers read back increase: ${a.seq} → ${b.seq}`);
      for (const [r, g, bl] of b.blue) assert.ok(bl > 120 && r < 90 && g < 90, `blue bar, got ${r},${g},${bl}`);
      rtcRate = await bytesPerSecond(rtc.page, 5000);
      const s = await stats(rtc.page);
      assert.ok(s.kbps > 0, `the overlay shows a bit rate (${s.kbps} kbit/s)`);
      // abs-capture-time: picamd's capture clock is this machine's, so the figure is real.
      assert.ok(Number.isFinite(s.latencyMs) && s.latencyMs > 0 && s.latencyMs < 1000, `the overlay shows the latency (${s.latencyMs} ms)`);
      assert.equal(s.fallback, false);
      assert.deepEqual(rtc.errors, []);
    } finally {
      await rtc.context.close();
    }
    const ws = await openPlayer(browser, `${server.origin}/?source=ws`);
    try {
      await waitForStats(ws.page, (s) => s.source === 'ws' && s.drawn >= 30, 'WebSocket frames');
      const wsRate = await bytesPerSecond(ws.page, 5000);
      console.log(`# WebRTC ${(rtcRate / 1000).toFixed(1)} kB/s, JPEG WebSocket ${(wsRate / 1000).toFixed(1)} kB/s: ${(wsRate / rtcRate).toFixed(1)}x`);
      assert.ok(rtcRate > 0 && wsRate >= 4 * rtcRate, `WebRTC ${rtcRate} B/s vs WebSocket ${wsRate} B/s`);
    } finally {
      await ws.context.close();
    }
  } finally {
    await server.stop();
  }
});

test('WebRTC recovers by itself from kill -9 and a restart, and its watchdog notices SIGSTOP', async () => {
  const server = await startServer();
  const { page, context, errors } = await openPlayer(browser, `${server.origin}/?source=webrtc&stall=2000&probe=2000`);
  try {
    const first = await waitForStats(page, (s) => s.source === 'webrtc' && s.state === 'live' && s.drawn >= 10, 'WebRTC live', 20000);
    await server.signal('SIGKILL');
    await waitForStats(page, (s) => s.state !== 'live', 'the player noticing the dead server');
    await sleep(1500);
    await server.start();
    const back = await waitForStats(page, (s) => s.source === 'webrtc' && s.state === 'live' && s.drawn > first.drawn + 10, 'WebRTC live again', 40000);
    assert.ok(back.reconnects >= 1);
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'recovered without a reload');

    await server.signal('SIGSTOP');
    const stalled = await waitForStats(page, (s) => s.state === 'stalled' || s.state === 'reconnecting' || s.state === 'fallback', 'the watchdog noticing the frozen server', 15000);
    assert.ok(stalled.reconnects > back.reconnects, 'the watchdog reopened the source');
    await server.signal('SIGCONT');
    await waitForStats(page, (s) => s.source === 'webrtc' && s.state === 'live', 'WebRTC live after SIGCONT', 40000);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

const why = Netns.why();
test('on a LAN address over plain http: WebRTC first, ICE-TCP without UDP, the JPEG WebSocket while WebRTC is blocked, then WebRTC again', { skip: why && !process.env.PICAMD_REQUIRE_NETNS ? why : false }, async () => {
  const ns = await new Netns().create();
  let nsBrowser;
  let server;
  try {
    server = await startServer([], { host: Netns.ADDR, netns: ns });
    nsBrowser = await ns.launch();
    const { page, context, errors } = await openPlayer(nsBrowser, `${server.origin}/?stall=2000&probe=3000`);
    try {
      // Not a secure context: no WebCodecs, so the default ladder starts at WebRTC.
      const s0 = await waitForStats(page, (s) => s.source === 'webrtc' && s.state === 'live' && s.drawn >= 10, 'WebRTC live by default', 20000);
      assert.deepEqual(s0.ladder, ['webrtc', 'ws', 'mjpeg']);
      assert.equal(await transport(page), 'udp');

      // UDP blocked: the session dies, a new one connects over ICE-TCP.
      const udp = await ns.block({ udp: true });
      await waitForStats(page, (s) => s.source === 'webrtc' && s.state === 'live' && s.reconnects > s0.reconnects, 'WebRTC again without UDP', 40000);
      assert.equal(await transport(page), 'tcp');

      // WebRTC's TCP port blocked too: the player steps down to the JPEG WebSocket by itself.
      const tcp = await ns.block({ tcpPort: server.udpPort });
      const fb = await waitForStats(page, (s) => s.source === 'ws' && s.state === 'fallback' && s.drawn > 0, 'the JPEG WebSocket fallback', 60000);
      assert.equal(fb.preferredSource, 'webrtc');

      // Unblocked: the probe finds WebRTC working and the player returns to it.
      await ns.unblock(tcp);
      await ns.unblock(udp);
      const back = await waitForStats(page, (s) => s.source === 'webrtc' && s.state === 'live' && !s.fallback, 'back on WebRTC', 40000);
      assert.equal(back.preferredSource, 'webrtc');
      assert.equal(await page.evaluate(() => window.__notReloaded), true);
      assert.deepEqual(errors, []);
    } finally {
      await context.close();
    }
  } finally {
    await nsBrowser?.close();
    await server?.stop();
    await ns.destroy();
  }
});
