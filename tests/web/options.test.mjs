import { test } from 'node:test';
import assert from 'node:assert/strict';
import { browserSources, parseOptions, startSource, stallTimeout, DEFAULT_OPTIONS } from '../../src/web/options.js';

test('defaults', () => {
  assert.deepEqual(parseOptions(''), { ...DEFAULT_OPTIONS });
  assert.equal(parseOptions('').source, 'auto');
});

test('reads source, stall, hiddenGrace and probe', () => {
  const o = parseOptions('?source=mjpeg&stall=1500&hiddenGrace=0&probe=3000');
  assert.equal(o.source, 'mjpeg');
  assert.equal(o.stallMs, 1500);
  assert.equal(o.hiddenGraceMs, 0);
  assert.equal(o.probeIntervalMs, 3000);
  assert.equal(parseOptions('?source=camera&camera=abc').cameraId, 'abc');
});

test('invalid values fall back to defaults', () => {
  const o = parseOptions('?source=rtsp&stall=soon&hiddenGrace=&rotate=45&mirror=maybe&theme=blue');
  assert.equal(o.source, 'auto');
  assert.equal(o.stallMs, null);
  assert.equal(o.hiddenGraceMs, 10_000);
  assert.equal(o.rotation, null);
  assert.equal(o.mirror, null);
  assert.equal(o.theme, null);
  assert.equal(parseOptions('?stall=1').stallMs, 100, 'clamped');
});

test('rotate, mirror, theme, hud', () => {
  const o = parseOptions('?rotate=270&mirror=1&theme=light&hud=0');
  assert.equal(o.rotation, 270);
  assert.equal(o.mirror, true);
  assert.equal(o.theme, 'light');
  assert.equal(o.hud, false);
  assert.equal(parseOptions('?rotate=0&mirror=0').rotation, 0);
  assert.equal(parseOptions('?mirror=0').mirror, false);
});

test('stall timeout is max(4 frame intervals, 2 s) unless overridden', () => {
  assert.equal(stallTimeout(null, 30), 2000);
  assert.equal(stallTimeout(null, 1), 4000);
  assert.equal(stallTimeout(null, null), 2000);
  assert.equal(stallTimeout(700, 1), 700);
});

test('the sources a browser can use, and the one auto starts with', () => {
  function Fn() {}
  const chrome = { isSecureContext: true, VideoDecoder: Fn, RTCPeerConnection: Fn };
  assert.deepEqual(browserSources(chrome), ['webcodecs', 'webrtc', 'ws', 'mjpeg']);
  // A LAN address over plain http: no VideoDecoder there (and none without a secure context).
  assert.deepEqual(browserSources({ ...chrome, isSecureContext: false }), ['webrtc', 'ws', 'mjpeg']);
  assert.deepEqual(browserSources({ isSecureContext: false, RTCPeerConnection: Fn }), ['webrtc', 'ws', 'mjpeg']);
  assert.deepEqual(browserSources({}), ['ws', 'mjpeg']);
  assert.equal(startSource('auto', ['webrtc', 'ws', 'mjpeg']), 'webrtc');
  assert.equal(startSource('mjpeg', ['webrtc', 'ws', 'mjpeg']), 'mjpeg');
  for (const s of ['webcodecs', 'webrtc', 'ws', 'mjpeg', 'camera']) assert.equal(parseOptions(`?source=${s}`).source, s);
});
