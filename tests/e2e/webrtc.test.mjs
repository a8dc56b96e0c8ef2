// WebRTC (WHEP) in Debian's headless Chromium against the real picamd binary: a page makes
// an RTCPeerConnection (recvonly video), POSTs its offer to /whep once ICE gathering is
// complete, sets the answer, and getStats must show H.264 frames decoded. Then the same
// over ICE-TCP with picamd offering no UDP candidate (a network that blocks UDP), and
// DELETE of the session.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Picamd, freePort, launch, sleep } from './harness.mjs';

let browser;

before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** Starts picamd with `args` (WebRTC on a free UDP port) and opens a page on its origin. */
async function setup(args) {
  const server = await new Picamd(await freePort(), [
    '--size', '320x240', '--fps', '30', '--webrtc-udp-port', '0', '--rtsp-listen', '', ...args,
  ]).start();
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  // A plain page of the same origin (127.0.0.1 is a secure context).
  await page.goto(`${server.origin}/healthz`);
  return { server, context, page, errors };
}

/** In the page: offer, gather, POST to `path`, set the answer. Returns the Location. */
function connect(page, path) {
  return page.evaluate(async (path) => {
    const pc = new RTCPeerConnection({ iceServers: [] });
    const t = pc.addTransceiver('video', { direction: 'recvonly' });
    // Ask for abs-capture-time, which Chromium does not negotiate by default.
    try {
      const exts = t.getHeaderExtensionsToNegotiate();
      for (const e of exts) if (e.uri.includes('abs-capture-time')) e.direction = 'sendrecv';
      t.setHeaderExtensionsToNegotiate(exts);
    } catch (e) {
      window.__extError = String(e);
    }
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    document.body.append(video);
    pc.ontrack = (e) => {
      video.srcObject = new MediaStream([e.track]);
      video.play().catch(() => {});
      const onFrame = (now, meta) => {
        window.__frameMeta = { now, ...meta, perfOrigin: performance.timeOrigin };
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve();
      });
      setTimeout(resolve, 5000);
    });
    const r = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    const body = await r.text();
    if (r.status !== 201) throw new Error(`POST ${path}: ${r.status} ${body}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    window.__pc = pc;
    window.__receiver = t.receiver;
    return r.headers.get('Location');
  }, path);
}

/** The page's inbound video stats, the selected candidate pair's protocol, and timing. */
function inbound(page) {
  return page.evaluate(async () => {
    const stats = await window.__pc.getStats();
    let rtp = null;
    let codec = null;
    let pair = null;
    let transport = null;
    const byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') rtp = s;
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        pair = byId.get(s.selectedCandidatePairId);
        transport = s;
      }
    });
    if (rtp?.codecId) codec = byId.get(rtp.codecId)?.mimeType;
    const local = pair && byId.get(pair.localCandidateId);
    const sources = window.__receiver.getSynchronizationSources();
    return {
      framesDecoded: rtp?.framesDecoded ?? 0,
      bytesReceived: rtp?.bytesReceived ?? 0,
      codec,
      protocol: local?.protocol ?? null,
      dtls: transport && `${transport.tlsVersion} ${transport.dtlsCipher} ${transport.srtpCipher}`,
      state: window.__pc.connectionState,
      sync: sources[0] ?? null,
      frameMeta: window.__frameMeta ?? null,
      nowEpochMs: performance.timeOrigin + performance.now(),
      extError: window.__extError ?? null,
    };
  });
}

async function webrtcViewers(server) {
  const r = await fetch(`${server.origin}/state`);
  return (await r.json()).viewers.webrtc;
}

async function expectDecoding(page, since) {
  const deadline = Date.now() + 20000;
  let first;
  while (Date.now() < deadline) {
    first = await inbound(page);
    if (first.framesDecoded > 0) break;
    await sleep(50);
  }
  assert.ok(first.framesDecoded > 0, `no frame decoded: ${JSON.stringify(first)}`);
  console.log(`first frame decoded ${Date.now() - since} ms after the offer was made (cold start)`);
  await sleep(2000);
  const later = await inbound(page);
  assert.equal(later.codec, 'video/H264');
  assert.ok(later.framesDecoded >= first.framesDecoded + 20, `frames: ${first.framesDecoded} → ${later.framesDecoded}`);
  assert.ok(later.bytesReceived > first.bytesReceived, 'bytes arrive');
  return later;
}

test('Chromium receives and decodes H.264 over WHEP, and DELETE ends the session', async () => {
  const { server, context, page, errors } = await setup([]);
  try {
    const since = Date.now();
    const location = await connect(page, '/whep');
    assert.match(location, /^\/whep\/[0-9a-f]{32}$/);
    const s = await expectDecoding(page, since);
    assert.equal(s.protocol, 'udp');
    console.log(`DTLS (version, cipher, SRTP): ${s.dtls}`);
    // How a page gets capture time: abs-capture-time, negotiated above, puts the newest
    // picture's capture time (NTP milliseconds: since 1900) in the synchronization source.
    assert.equal(s.extError, null);
    assert.ok(s.sync?.captureTimestamp, `no captureTimestamp: ${JSON.stringify(s.sync)}`);
    const NTP_UNIX_MS = 2208988800000;
    const latencyMs = s.nowEpochMs - (s.sync.captureTimestamp - NTP_UNIX_MS);
    console.log('webrtc timing:', JSON.stringify({
      latencyMs, sync: s.sync, frameMeta: s.frameMeta, nowEpochMs: s.nowEpochMs,
    }));
    // Same machine, same clock: capture to the newest decoded picture's stats.
    assert.ok(latencyMs > -50 && latencyMs < 1000, `latency ${latencyMs} ms`);
    assert.equal(await webrtcViewers(server), 1);
    const status = await page.evaluate(async (loc) => (await fetch(loc, { method: 'DELETE' })).status, location);
    assert.equal(status, 204);
    const deadline = Date.now() + 5000;
    while ((await webrtcViewers(server)) !== 0 && Date.now() < deadline) await sleep(100);
    assert.equal(await webrtcViewers(server), 0);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('with no UDP candidate offered, Chromium connects over ICE-TCP and decodes', async () => {
  const { server, context, page } = await setup(['--webrtc-udp', 'off']);
  try {
    const since = Date.now();
    await connect(page, '/cam/main/whep');
    const s = await expectDecoding(page, since);
    assert.equal(s.protocol, 'tcp');
  } finally {
    await context.close();
    await server.stop();
  }
});
