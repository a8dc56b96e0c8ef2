// webcodecs-source.js: its pure parts (Annex B, codec strings, support checks, the queue
// gate) and the source itself against a fake WebSocket and a fake VideoDecoder.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  nalUnits, codecFromSps, codecOfUnit, unsupportedReason, ChunkGate, WebCodecsSource, MAX_DECODE_QUEUE,
} from '../../src/web/webcodecs-source.js';
import { CanvasRenderer } from '../../src/web/canvas-renderer.js';

// A keyframe as picamd's encoder sends it at 720p: SPS (Constrained Baseline 3.1), PPS, IDR.
const SPS = [0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40];
const PPS = [0x68, 0xce, 0x3c, 0x80];
const KEY = new Uint8Array([0, 0, 0, 1, ...SPS, 0, 0, 0, 1, ...PPS, 0, 0, 1, 0x65, 0x88, 0x84, 0x00]);
const DELTA = new Uint8Array([0, 0, 0, 1, 0x41, 0x9a, 0x02]);

test('Annex B units are split at both start code lengths', () => {
  const nals = nalUnits(KEY).map((n) => [...n]);
  assert.deepEqual(nals, [SPS, PPS, [0x65, 0x88, 0x84, 0x00]]);
  assert.deepEqual(nalUnits(DELTA).map((n) => [...n]), [[0x41, 0x9a, 0x02]]);
  assert.deepEqual(nalUnits(new Uint8Array([1, 2, 3])), []);
  assert.deepEqual(nalUnits(new Uint8Array([0, 0, 1])), []);
});

test('codec strings come from the SPS, as src/wire.rs makes them', () => {
  assert.equal(codecFromSps(new Uint8Array(SPS)), 'avc1.42C01F');
  assert.equal(codecFromSps(new Uint8Array([0x27, 0x64, 0x00, 0x28])), 'avc1.640028');
  assert.equal(codecFromSps(new Uint8Array(PPS)), null);
  assert.equal(codecFromSps(new Uint8Array([0x67, 0x42])), null);
  assert.equal(codecOfUnit(KEY), 'avc1.42C01F');
  assert.equal(codecOfUnit(DELTA), null);
});

test('the support check names the first thing missing', () => {
  const hello = { types: ['jpeg', 'h264'], h264_codec: 'avc1.42C01F' };
  assert.equal(unsupportedReason({ hello, hasDecoder: true, secure: true }), null);
  assert.match(unsupportedReason({ hello, hasDecoder: true, secure: false }), /secure context/);
  assert.match(unsupportedReason({ hello, hasDecoder: false, secure: true }), /VideoDecoder/);
  assert.match(unsupportedReason({ hello: { types: ['jpeg'] }, hasDecoder: true, secure: true }), /H\.264/);
  assert.match(unsupportedReason({ hello: { types: ['h264'], h264_codec: 'vp8' }, hasDecoder: true, secure: true }), /codec/);
  assert.match(unsupportedReason({ hello: null, hasDecoder: true, secure: true }), /H\.264/);
});

test('the gate waits for a keyframe, and drops to the next one when the queue is long', () => {
  const g = new ChunkGate(3);
  assert.equal(g.offer(false, 0), 'drop', 'nothing before the first keyframe');
  assert.equal(g.offer(true, 0), 'decode');
  assert.equal(g.offer(false, 3), 'decode', 'a queue of 3 is fine');
  assert.equal(g.offer(false, 4), 'drop', 'beyond 3: behind');
  assert.equal(g.offer(false, 0), 'drop', 'the rest of the GOP goes too');
  assert.equal(g.offer(true, 5), 'drop', 'not even a keyframe onto a long queue');
  assert.equal(g.offer(true, 1), 'decode');
  assert.equal(g.offer(false, 1), 'decode');
  assert.equal(g.dropped, 4);
  g.reset();
  assert.equal(g.offer(false, 0), 'drop');
  assert.equal(MAX_DECODE_QUEUE, 3);
});

// ---- the source, with fakes ---------------------------------------------------------------

class FakeWs {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWs.last = this;
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  text(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
}

class FakeFrame {
  static open = 0;
  constructor(timestamp, w = 1280, h = 720) {
    this.timestamp = timestamp;
    this.displayWidth = w;
    this.displayHeight = h;
    this.closed = false;
    FakeFrame.open += 1;
  }
  close() {
    assert.equal(this.closed, false, 'closed twice');
    this.closed = true;
    FakeFrame.open -= 1;
  }
}

class FakeChunk {
  constructor(init) {
    Object.assign(this, init);
  }
}

/** A decoder that queues chunks until the test calls `finish(n)`. */
function fakeDecoderClass({ supported = true } = {}) {
  class FakeDecoder {
    static last = null;
    static asked = [];
    static async isConfigSupported(config) {
      FakeDecoder.asked.push(config);
      return { supported, config };
    }
    constructor({ output, error }) {
      this.output = output;
      this.error = error;
      this.state = 'unconfigured';
      this.configs = [];
      this.queue = [];
      this.decodedChunks = [];
      FakeDecoder.last = this;
    }
    get decodeQueueSize() {
      return this.queue.length;
    }
    configure(c) {
      this.configs.push(c);
      this.state = 'configured';
    }
    decode(chunk) {
      assert.equal(this.state, 'configured');
      this.queue.push(chunk);
      this.decodedChunks.push(chunk);
    }
    finish(n = Infinity) {
      for (const chunk of this.queue.splice(0, n)) this.output(new FakeFrame(chunk.timestamp));
    }
    close() {
      this.state = 'closed';
    }
  }
  return FakeDecoder;
}

function unit(seq, keyframe, { noSignal = false, w = 1280, h = 720 } = {}) {
  const payload = keyframe ? KEY : DELTA;
  const buf = new ArrayBuffer(32 + payload.length);
  const v = new DataView(buf);
  v.setUint8(0, 1);
  v.setUint8(1, 2);
  v.setUint16(2, (keyframe ? 2 : 0) | (noSignal ? 1 : 0), true);
  v.setUint16(4, 32, true);
  v.setBigUint64(8, BigInt(seq), true);
  v.setBigUint64(16, BigInt(1_700_000_000_000_000 + seq * 33_333), true);
  v.setUint32(24, w, true);
  v.setUint32(28, h, true);
  new Uint8Array(buf, 32).set(payload);
  return buf;
}

const HELLO = { type: 'hello', version: 1, fps: 30, types: ['jpeg', 'h264'], h264_codec: 'avc1.42C01F' };
const tick = () => new Promise((r) => setImmediate(r));

async function started(opts = {}) {
  const Dec = fakeDecoderClass(opts);
  const src = new WebCodecsSource({
    url: 'ws://x/ws', WebSocketImpl: FakeWs, VideoDecoderImpl: Dec, EncodedVideoChunkImpl: FakeChunk,
    secure: opts.secure ?? true, pingIntervalMs: 1e9,
  });
  const frames = [];
  const events = [];
  src.onframe = (f) => frames.push(f);
  src.onstate = (e) => events.push(e);
  src.start();
  const ws = FakeWs.last;
  ws.open();
  ws.text(opts.hello ?? HELLO);
  await tick();
  return { src, ws, Dec, frames, events };
}

test('after the hello it checks the codec, asks for H.264 and decodes from a keyframe', async () => {
  const { src, ws, Dec, frames, events } = await started();
  assert.equal(src.kind, 'webcodecs');
  assert.deepEqual(Dec.asked, [{ codec: 'avc1.42C01F', optimizeForLatency: true }]);
  assert.deepEqual(ws.sent.filter((m) => m.type === 'video'), [{ type: 'video', codec: 'h264' }]);
  assert.ok(ws.sent.some((m) => m.type === 'ping'), 'pings as ws-source.js does');
  ws.text({ type: 'video', codec: 'h264' });
  // A JPEG sent before the server switched, then a P-frame before any keyframe: skipped.
  const jpeg = new ArrayBuffer(36);
  new Uint8Array(jpeg).set([1, 1, 0, 0, 32, 0, 0, 0]);
  ws.onmessage({ data: jpeg });
  ws.onmessage({ data: unit(9, false) });
  assert.equal(Dec.last, null, 'no decoder before a keyframe');
  ws.onmessage({ data: unit(10, true) });
  ws.onmessage({ data: unit(11, false, { noSignal: true }) });
  const dec = Dec.last;
  assert.deepEqual(dec.configs, [{ codec: 'avc1.42C01F', codedWidth: 1280, codedHeight: 720, optimizeForLatency: true }]);
  assert.deepEqual(dec.decodedChunks.map((c) => c.type), ['key', 'delta']);
  dec.finish();
  assert.equal(frames.length, 2);
  assert.deepEqual(frames.map((f) => [f.seq, f.noSignal, f.width, f.height]), [[10, false, 1280, 720], [11, true, 1280, 720]]);
  // The capture time travels with the chunk's timestamp.
  assert.equal(frames[0].captureUs, 1_700_000_000_000_000 + 10 * 33_333);
  assert.equal(frames[0].videoFrame.timestamp, frames[0].captureUs);
  assert.equal(src.pending.size, 0);
  for (const f of frames) f.videoFrame.close();
  const s = src.stats;
  assert.deepEqual([s.units, s.decoded, s.jpegSkipped, s.dropped], [3, 2, 1, 1]);
  assert.deepEqual(events.map((e) => e.type), ['open', 'info']);
  src.stop();
  assert.equal(dec.state, 'closed');
});

test('a long decode queue drops units up to the next keyframe', async () => {
  const { src, ws, Dec, frames } = await started();
  ws.onmessage({ data: unit(1, true) });
  for (let seq = 2; seq <= 8; seq++) ws.onmessage({ data: unit(seq, false) });
  const dec = Dec.last;
  // 1-4 queued (a queue of 3 still takes one more), then 5-8 dropped.
  assert.deepEqual(dec.decodedChunks.map((c) => c.timestamp % 1000), [1, 2, 3, 4].map((s) => (1_700_000_000_000_000 + s * 33_333) % 1000));
  // Falling behind asked the server for a keyframe, once.
  assert.deepEqual(ws.sent.filter((m) => m.type === 'keyframe'), [{ type: 'keyframe' }]);
  dec.finish();
  ws.onmessage({ data: unit(9, false) });
  assert.equal(dec.decodedChunks.length, 4, 'still waiting for a keyframe');
  assert.equal(ws.sent.filter((m) => m.type === 'keyframe').length, 1);
  ws.onmessage({ data: unit(10, true) });
  dec.finish();
  assert.deepEqual(frames.map((f) => f.seq), [1, 2, 3, 4, 10]);
  for (const f of frames) f.videoFrame.close();
  src.stop();
});

test('a new SPS or size reconfigures the decoder at its keyframe', async () => {
  const { src, ws, Dec } = await started();
  ws.onmessage({ data: unit(1, true) });
  ws.onmessage({ data: unit(2, true) });
  ws.onmessage({ data: unit(3, true, { w: 640, h: 360 }) });
  assert.deepEqual(Dec.last.configs.map((c) => c.codedWidth), [1280, 640]);
  src.stop();
});

test('a decoder error closes the source with the reason', async () => {
  const { ws, Dec, events } = await started();
  ws.onmessage({ data: unit(1, true) });
  Dec.last.error(new Error('corrupt slice'));
  const close = events.at(-1);
  assert.equal(close.type, 'close');
  assert.match(close.reason, /decoder error: corrupt slice/);
  assert.equal(Dec.last.state, 'closed');
  assert.equal(ws.readyState, 3);
  assert.equal(ws.onmessage, null, 'no more messages');
});

test('no WebCodecs, an insecure page or a refused codec is reported as unsupported', async () => {
  for (const opts of [{ secure: false }, { supported: false }, { hello: { ...HELLO, types: ['jpeg'] } }]) {
    const { ws, events } = await started(opts);
    const last = events.at(-1);
    assert.equal(last.type, 'unsupported', JSON.stringify(opts));
    assert.equal(last.reason, 'webcodecs-unsupported');
    assert.ok(last.message.length > 10);
    assert.equal(ws.sent.filter((m) => m.type === 'video').length, 0);
    assert.equal(ws.readyState, 3);
  }
});

test('frames decoded after stop() are closed, never handed out', async () => {
  FakeFrame.open = 0;
  const { src, ws, Dec, frames } = await started();
  ws.onmessage({ data: unit(1, true) });
  const dec = Dec.last;
  src.stop();
  dec.finish();
  assert.equal(frames.length, 0);
  assert.equal(FakeFrame.open, 0);
});

test('the renderer draws VideoFrames at their display size and closes them', () => {
  const calls = [];
  const ctx = new Proxy({}, { get: (_, name) => (...args) => calls.push([name, ...args]) });
  const canvas = { width: 300, height: 150, getContext: () => ctx };
  const rafs = [];
  const r = new CanvasRenderer(canvas, { requestFrame: (cb) => rafs.push(cb), cancelFrame: () => {} });
  FakeFrame.open = 0;
  const a = new FakeFrame(1, 1920, 1080);
  const b = new FakeFrame(2, 1920, 1080);
  const c = new FakeFrame(3, 1920, 1080);
  r.submit({ videoFrame: a, seq: 1, captureUs: 1, width: 1920, height: 1080, noSignal: false });
  r.submit({ videoFrame: b, seq: 2, captureUs: 2, width: 1920, height: 1080, noSignal: false });
  assert.equal(a.closed, true, 'replaced before it was drawn');
  assert.equal(r.stats.openVideoFrames, 1);
  rafs.splice(0).forEach((cb) => cb(0));
  assert.deepEqual([canvas.width, canvas.height], [1920, 1080]);
  const draw = calls.find((call) => call[0] === 'drawImage');
  assert.deepEqual(draw.slice(1), [b, -960, -540, 1920, 1080]);
  r.submit({ videoFrame: c, seq: 3, captureUs: 3, width: 1920, height: 1080, noSignal: false });
  rafs.splice(0).forEach((cb) => cb(0));
  assert.equal(b.closed, true);
  r.destroy();
  assert.equal(c.closed, true);
  assert.equal(FakeFrame.open, 0);
  assert.deepEqual([r.stats.openBitmaps, r.stats.openVideoFrames], [0, 0]);
  // Handed to a destroyed renderer: closed at once.
  const d = new FakeFrame(4);
  r.submit({ videoFrame: d, seq: 4, captureUs: 4, width: 1280, height: 720, noSignal: false });
  assert.equal(d.closed, true);
});
