// CanvasRenderer and WsSource with fake browser objects.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CanvasRenderer } from '../../src/web/canvas-renderer.js';
import { WsSource } from '../../src/web/ws-source.js';
import { ClockOffset } from '../../src/web/clock.js';

function fakeCanvas() {
  const calls = [];
  const ctx = new Proxy({}, { get: (_, name) => (...args) => calls.push([name, ...args]) });
  return { width: 300, height: 150, calls, getContext: () => ctx };
}

class FakeBitmap {
  constructor(w = 640, h = 360) {
    this.width = w;
    this.height = h;
    this.closed = false;
  }
  close() {
    assert.equal(this.closed, false, 'closed twice');
    this.closed = true;
  }
}

/** A renderer whose decodes resolve when the test says so, and whose rAF runs on demand. */
function harness() {
  const decodes = [];
  const frames = [];
  const drawn = [];
  const canvas = fakeCanvas();
  const r = new CanvasRenderer(canvas, {
    onDrawn: (f) => drawn.push(f.seq),
    createBitmap: () => new Promise((resolve, reject) => decodes.push({ resolve, reject })),
    requestFrame: (cb) => frames.push(cb),
    cancelFrame: () => {},
  });
  const raf = () => frames.splice(0).forEach((cb) => cb(0));
  const flush = () => new Promise((res) => setImmediate(res));
  return { r, canvas, decodes, drawn, raf, flush };
}

const jpeg = (seq) => ({ jpeg: new Uint8Array([0xff, 0xd8]), seq, captureUs: 0, width: 640, height: 360, noSignal: false });

test('draws the newest frame and closes the one it replaces', async () => {
  const { r, decodes, drawn, raf, flush } = harness();
  r.submit(jpeg(1));
  const b1 = new FakeBitmap();
  decodes[0].resolve(b1);
  await flush();
  raf();
  assert.deepEqual(drawn, [1]);
  r.submit(jpeg(2));
  const b2 = new FakeBitmap();
  decodes[1].resolve(b2);
  await flush();
  raf();
  assert.deepEqual(drawn, [1, 2]);
  assert.equal(b1.closed, true);
  assert.equal(b2.closed, false);
  assert.equal(r.stats.openBitmaps, 1);
  r.destroy();
  assert.equal(b2.closed, true);
  assert.equal(r.stats.openBitmaps, 0);
});

test('a decode finishing after a newer one is dropped and closed', async () => {
  const { r, decodes, drawn, raf, flush } = harness();
  r.submit(jpeg(1));
  r.submit(jpeg(2));
  const late = new FakeBitmap();
  const newer = new FakeBitmap();
  decodes[1].resolve(newer);
  await flush();
  decodes[0].resolve(late);
  await flush();
  assert.equal(late.closed, true);
  raf();
  assert.deepEqual(drawn, [2]);
  assert.equal(r.stats.dropped, 1);
  assert.equal(r.stats.openBitmaps, 1);
});

test('decoded but undrawn frames are replaced (closed) by newer ones', async () => {
  const { r, decodes, drawn, raf, flush } = harness();
  const bitmaps = [new FakeBitmap(), new FakeBitmap(), new FakeBitmap()];
  for (let i = 0; i < 3; i++) {
    r.submit(jpeg(i + 1));
    decodes[i].resolve(bitmaps[i]);
    await flush();
  }
  raf();
  assert.deepEqual(drawn, [3]);
  assert.deepEqual(bitmaps.map((b) => b.closed), [true, true, false]);
  assert.equal(r.stats.dropped, 2);
});

test('too many decodes in flight drop the newcomer; decode errors are counted', async () => {
  const { r, decodes, flush } = harness();
  r.submit(jpeg(1));
  r.submit(jpeg(2));
  r.submit(jpeg(3));
  assert.equal(decodes.length, 2);
  assert.equal(r.stats.dropped, 1);
  decodes[0].reject(new Error('bad jpeg'));
  await flush();
  assert.equal(r.stats.decodeErrors, 1);
  assert.equal(r.stats.inFlight, 1);
});

test('paused: nothing is decoded or drawn; resume decodes only the newest', async () => {
  const { r, decodes, drawn, raf, flush } = harness();
  r.pause();
  r.submit(jpeg(1));
  r.submit(jpeg(2));
  assert.equal(decodes.length, 0);
  r.resume();
  assert.equal(decodes.length, 1);
  decodes[0].resolve(new FakeBitmap());
  await flush();
  raf();
  assert.deepEqual(drawn, [2]);
});

test('a new generation accepts restarting seq numbers and drops stale decodes', async () => {
  const { r, decodes, drawn, raf, flush } = harness();
  r.submit(jpeg(100));
  decodes[0].resolve(new FakeBitmap());
  await flush();
  raf();
  r.submit(jpeg(101)); // in flight across the reconnect
  r.newGeneration();
  r.submit(jpeg(1));
  const stale = new FakeBitmap();
  decodes[1].resolve(stale);
  decodes[2].resolve(new FakeBitmap());
  await flush();
  raf();
  assert.equal(stale.closed, true);
  assert.deepEqual(drawn, [100, 1]);
});

test('rotation swaps the canvas size; adopted bitmaps are counted', async () => {
  const { r, canvas, raf } = harness();
  r.setRotation(90);
  r.submit({ bitmap: new FakeBitmap(640, 360), seq: 1, captureUs: null, width: 640, height: 360 });
  raf();
  assert.deepEqual([canvas.width, canvas.height], [360, 640]);
  r.setRotation(450);
  assert.equal(r.rotation, 90);
  r.setRotation(180);
  assert.deepEqual([canvas.width, canvas.height], [640, 360]);
  r.setMirror(true);
  assert.ok(canvas.calls.some(([n, x, y]) => n === 'scale' && x === -1 && y === 1));
  assert.equal(r.stats.openBitmaps, 1);
});

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
}

function frameMessage(seq, extraHeader = 0) {
  const len = 32 + extraHeader;
  const buf = new ArrayBuffer(len + 2);
  const v = new DataView(buf);
  v.setUint8(0, 1);
  v.setUint8(1, 1);
  v.setUint16(4, len, true);
  v.setBigUint64(8, BigInt(seq), true);
  v.setBigUint64(16, 1_700_000_000_000_000n, true);
  v.setUint32(24, 640, true);
  v.setUint32(28, 360, true);
  new Uint8Array(buf, len).set([0xff, 0xd8]);
  return buf;
}

test('WsSource: frames, hello, pings feed the clock, stop silences callbacks', async () => {
  let now = 1000;
  const clock = new ClockOffset();
  const src = new WsSource({ url: 'ws://x/ws', clock, now: () => now, WebSocketImpl: FakeWs, pingIntervalMs: 1e9 });
  const frames = [];
  const events = [];
  src.onframe = (f) => frames.push(f);
  src.onstate = (e) => events.push(e.type);
  src.start();
  const ws = FakeWs.last;
  assert.equal(ws.binaryType, 'arraybuffer');
  ws.open();
  assert.deepEqual(events, ['open']);
  assert.equal(ws.sent[0].type, 'ping');
  assert.equal(ws.sent[0].t, 1000);
  now = 1010;
  ws.onmessage({ data: JSON.stringify({ type: 'pong', id: ws.sent[0].id, t: 1000, server_us: 2_000_005_000 }) });
  assert.equal(clock.offsetMs, 2_000_005 - 1005);
  ws.onmessage({ data: JSON.stringify({ type: 'hello', version: 1, fps: 30 }) });
  assert.equal(src.hello.fps, 30);
  ws.onmessage({ data: frameMessage(5, 8) });
  assert.equal(frames.length, 1);
  assert.equal(frames[0].seq, 5);
  assert.deepEqual([...frames[0].jpeg], [0xff, 0xd8]);
  const warn = console.warn;
  console.warn = () => {};
  ws.onmessage({ data: new ArrayBuffer(3) });
  console.warn = warn;
  assert.equal(src.badFrames, 1);
  src.stop();
  assert.equal(ws.readyState, 3);
  ws.onclose?.({ code: 1006 });
  assert.deepEqual(events, ['open', 'info']);
});

test('WsSource: a close is reported once with its code', () => {
  const src = new WsSource({ url: 'ws://x/ws', WebSocketImpl: FakeWs });
  const events = [];
  src.onstate = (e) => events.push(e);
  src.start();
  FakeWs.last.onclose({ code: 1006, reason: '' });
  assert.equal(events.length, 1);
  assert.equal(events[0].type, 'close');
  assert.equal(events[0].code, 1006);
});
