import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatKbps, formatState, formatMetrics } from '../../src/web/ui.js';

test('state texts', () => {
  assert.equal(formatState({ state: 'connecting' }, 0), 'Connecting…');
  assert.equal(formatState({ state: 'live' }, 0), 'Live');
  assert.equal(formatState({ state: 'live', noSignal: true }, 0), 'Live · no signal');
  assert.equal(formatState({ state: 'stalled' }, 0), 'Stalled · reopening');
  assert.equal(formatState({ state: 'reconnecting', nextAttemptAt: 3200 }, 0), 'Reconnecting in 4 s');
  assert.equal(formatState({ state: 'reconnecting', nextAttemptAt: 100 }, 0), 'Reconnecting in 1 s');
  assert.equal(formatState({ state: 'reconnecting', nextAttemptAt: null }, 0), 'Reconnecting…');
  assert.equal(formatState({ state: 'fallback', source: 'mjpeg' }, 0), 'MJPEG fallback');
  assert.equal(formatState({ state: 'fallback', source: 'ws', noSignal: true }, 0), 'WebSocket fallback · no signal');
  assert.equal(formatState({ state: 'paused' }, 0), 'Paused');
});

test('metrics', () => {
  assert.deepEqual(formatMetrics({ fpsReceived: 29.97, fpsDrawn: 4.44, latencyMs: 41.6 }), { received: '30', drawn: '4.4', latency: '42', rate: '–' });
  assert.deepEqual(formatMetrics({ fpsReceived: 0, fpsDrawn: 0, latencyMs: null }), { received: '0', drawn: '0', latency: '–', rate: '–' });
});

test('bit rates read as kbit/s below 1 Mbit/s', () => {
  assert.equal(formatKbps(null), '–');
  assert.equal(formatKbps(228.4), '228 kbit/s');
  assert.equal(formatKbps(2048), '2.0 Mbit/s');
  assert.equal(formatKbps(9954), '10.0 Mbit/s');
  assert.equal(formatKbps(12_400), '12 Mbit/s');
});
