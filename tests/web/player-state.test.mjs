// The player's state machine with a made-up clock.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LADDER, ladderFrom, PlayerStateMachine, State } from '../../src/web/player-state.js';

/** A machine with deterministic backoff (no jitter: 250, 500, 1000, … ms). */
function machine(opts = {}) {
  return new PlayerStateMachine({ backoff: { jitter: 'none' }, ...opts });
}

const types = (effects) => effects.map((e) => (e.type === 'open' || e.type === 'probe' ? `${e.type}:${e.source}` : e.type === 'render' ? `render:${e.on}` : e.type));

/** Starts a WebSocket player and draws one frame at t=100. */
function live(opts) {
  const m = machine(opts);
  m.dispatch('start', 0);
  m.dispatch('open', 10);
  m.dispatch('frame-drawn', 100);
  return m;
}

test('start opens the chosen source; the first drawn frame makes it live', () => {
  const m = machine();
  assert.deepEqual(types(m.dispatch('start', 0)), ['render:true', 'open:ws']);
  assert.equal(m.state, State.CONNECTING);
  assert.deepEqual(m.dispatch('open', 5), []);
  assert.equal(m.state, State.CONNECTING);
  m.dispatch('frame-drawn', 40);
  assert.equal(m.state, State.LIVE);
  assert.equal(m.lastFrameAt, 40);
  assert.equal(m.reconnects, 0);
  assert.deepEqual(m.dispatch('start', 50), [], 'start is once');
});

test('a close schedules a reconnect with growing backoff; retry reconnects', () => {
  const m = live();
  assert.deepEqual(types(m.dispatch('close', 1000)), ['close']);
  assert.equal(m.state, State.RECONNECTING);
  assert.equal(m.nextAttemptAt, 1250);
  assert.equal(m.nextDeadline(), 1250);
  assert.deepEqual(m.tick(1249), []);
  assert.deepEqual(types(m.tick(1250)), ['open:ws']);
  assert.equal(m.state, State.CONNECTING);
  assert.equal(m.nextAttemptAt, null);
  assert.equal(m.reconnects, 1);
  m.dispatch('close', 1300);
  assert.equal(m.nextAttemptAt, 1300 + 500);
  assert.equal(m.failures, 2);
});

test('backoff resets only once a frame is drawn again', () => {
  const m = live({ failuresBeforeFallback: 100 });
  m.dispatch('close', 1000); // 250
  m.tick(2000);
  m.dispatch('open', 2001); // open alone does not reset
  m.dispatch('close', 2002);
  assert.equal(m.nextAttemptAt, 2002 + 500);
  m.tick(3000);
  m.dispatch('frame-drawn', 3100);
  assert.equal(m.state, State.LIVE);
  assert.equal(m.failures, 0);
  m.dispatch('close', 4000);
  assert.equal(m.nextAttemptAt, 4250);
});

test('the stall watchdog closes and reopens a silent source, measured from the last drawn frame', () => {
  const m = live({ stallMs: 2000 });
  assert.equal(m.stallAt, 2100);
  m.dispatch('frame-drawn', 1000);
  assert.equal(m.stallAt, 3000);
  assert.deepEqual(m.tick(2999), []);
  assert.deepEqual(types(m.tick(3000)), ['close', 'open:ws']);
  assert.equal(m.state, State.STALLED);
  assert.equal(m.failures, 1);
  assert.equal(m.reconnects, 1);
  assert.equal(m.stallAt, 5000, 'the new connection gets a full stall period');
  m.dispatch('frame-drawn', 3500);
  assert.equal(m.state, State.LIVE);
});

test('a connection that never delivers a frame also times out', () => {
  const m = machine({ stallMs: 2000 });
  m.dispatch('start', 0);
  m.dispatch('open', 50);
  assert.deepEqual(types(m.tick(2000)), ['close', 'open:ws']);
  assert.equal(m.state, State.STALLED);
});

test('the stall timeout can change (e.g. from the hello fps)', () => {
  const m = live({ stallMs: 2000 });
  m.stallMs = 5000;
  assert.deepEqual(m.tick(2100), []);
  assert.equal(m.stallAt, 5100);
});

test('three consecutive WebSocket failures fall back to MJPEG', () => {
  const m = live();
  m.dispatch('close', 1000);
  m.tick(1250);
  m.dispatch('close', 1260);
  m.tick(1760);
  assert.equal(m.failures, 2);
  assert.deepEqual(types(m.dispatch('close', 1800)), ['close', 'open:mjpeg']);
  assert.equal(m.state, State.FALLBACK);
  assert.equal(m.active, 'mjpeg');
  assert.equal(m.preferred, 'ws');
  assert.equal(m.fallback, true);
  assert.equal(m.failures, 0);
  m.dispatch('frame-drawn', 1900);
  assert.equal(m.state, State.FALLBACK, 'live on the fallback still says fallback');
});

test('stalls count as failures towards the fallback', () => {
  const m = live({ stallMs: 2000 });
  m.tick(2100); // stall 1
  m.tick(4100); // stall 2
  assert.equal(m.failures, 2);
  assert.deepEqual(types(m.tick(6100)), ['close', 'open:mjpeg']);
  assert.equal(m.state, State.FALLBACK);
});

test('on the fallback the WebSocket is probed; a successful probe returns to it', () => {
  const m = live({ probeIntervalMs: 10_000, stallMs: 1e9 });
  m.dispatch('fallback', 1000);
  assert.equal(m.state, State.FALLBACK);
  assert.equal(m.probeAt, 11_000);
  assert.deepEqual(m.tick(10_999), []);
  assert.deepEqual(types(m.tick(11_000)), ['probe:ws']);
  m.dispatch('probe-failure', 11_100);
  assert.equal(m.state, State.FALLBACK);
  assert.equal(m.probeAt, 21_000);
  assert.deepEqual(types(m.tick(21_000)), ['probe:ws']);
  assert.deepEqual(types(m.dispatch('probe-success', 21_200)), ['stop-probe', 'close', 'open:ws']);
  assert.equal(m.active, 'ws');
  assert.equal(m.fallback, false);
  assert.equal(m.probeAt, null);
  assert.equal(m.state, State.CONNECTING);
  m.dispatch('frame-drawn', 21_300);
  assert.equal(m.state, State.LIVE);
});

test('no probing while hidden or paused; a late probe answer is ignored', () => {
  const m = live({ probeIntervalMs: 10_000, stallMs: 1e9 });
  m.dispatch('fallback', 1000);
  assert.deepEqual(types(m.dispatch('hidden', 2000)), ['render:false', 'stop-probe']);
  assert.equal(m.probeAt, null);
  assert.deepEqual(types(m.dispatch('probe-success', 2100)), ['stop-probe']);
  assert.equal(m.fallback, true);
  m.dispatch('visible', 3000);
  assert.equal(m.probeAt, 13_000);
  m.dispatch('pause', 4000);
  assert.equal(m.probeAt, null);
  assert.deepEqual(m.tick(50_000), []);
});

test('the fallback regaining a picture probes the WebSocket at once', () => {
  const m = live();
  m.dispatch('fallback', 1000);
  m.dispatch('close', 1100); // MJPEG failed too (server down)
  assert.equal(m.state, State.RECONNECTING);
  m.tick(1350); // retry MJPEG
  m.dispatch('frame-drawn', 1500); // server back
  assert.equal(m.probeAt, 1500);
  assert.deepEqual(types(m.tick(1500)), ['probe:ws']);
});

test('MJPEG failures back off but never fall back further', () => {
  const m = machine({ source: 'mjpeg' });
  m.dispatch('start', 0);
  for (let i = 0; i < 6; i++) {
    m.dispatch('close', i * 10_000);
    assert.equal(m.state, State.RECONNECTING);
    m.tick(i * 10_000 + 5000);
  }
  assert.equal(m.active, 'mjpeg');
  assert.equal(m.fallback, false);
  assert.equal(m.probeAt, null);
});

test('hidden: stop drawing, close after the grace period; visible: reconnect at once', () => {
  const m = live({ hiddenGraceMs: 10_000 });
  assert.deepEqual(types(m.dispatch('hidden', 1000)), ['render:false']);
  assert.equal(m.state, State.HIDDEN);
  assert.equal(m.stallAt, null, 'no watchdog while hidden');
  assert.deepEqual(m.tick(10_999), []);
  assert.deepEqual(types(m.tick(11_000)), ['close']);
  assert.deepEqual(m.tick(60_000), [], 'nothing while hidden');
  assert.deepEqual(types(m.dispatch('visible', 60_000)), ['render:true', 'open:ws']);
  assert.equal(m.state, State.CONNECTING);
});

test('a short hide keeps the connection and gives it a fresh stall window', () => {
  const m = live({ hiddenGraceMs: 10_000, stallMs: 2000 });
  m.dispatch('hidden', 1000);
  assert.deepEqual(types(m.dispatch('visible', 5000)), ['render:true']);
  assert.equal(m.state, State.LIVE);
  assert.equal(m.stallAt, 7000);
  assert.equal(m.graceAt, null);
});

test('a close while hidden waits for visible, then reconnects at once', () => {
  const m = live();
  m.dispatch('hidden', 1000);
  assert.deepEqual(types(m.dispatch('close', 2000)), ['close']);
  assert.equal(m.state, State.HIDDEN);
  assert.equal(m.nextDeadline(), null);
  assert.deepEqual(types(m.dispatch('visible', 30_000)), ['render:true', 'open:ws']);
});

test('a pending reconnect is cancelled while hidden and done at once on visible', () => {
  const m = live();
  m.dispatch('close', 1000);
  m.dispatch('hidden', 1100);
  assert.deepEqual(m.tick(50_000), []);
  assert.deepEqual(types(m.dispatch('visible', 50_000)), ['render:true', 'open:ws']);
});

test('online reconnects at once while waiting, and leaves a live player alone', () => {
  const m = live();
  assert.deepEqual(m.dispatch('online', 500), []);
  m.dispatch('close', 1000);
  m.dispatch('close', 1000); // a duplicate close changes nothing
  assert.equal(m.failures, 1);
  assert.deepEqual(types(m.dispatch('online', 1050)), ['open:ws']);
  assert.equal(m.state, State.CONNECTING);
});

test('pageshow from the back/forward cache reconnects at once', () => {
  const m = live();
  assert.deepEqual(types(m.dispatch('pageshow', 5000)), ['render:true', 'close', 'open:ws']);
  assert.equal(m.state, State.CONNECTING);
  m.dispatch('hidden', 6000);
  m.dispatch('grace-expired', 16_000);
  assert.deepEqual(types(m.dispatch('pageshow', 20_000)), ['render:true', 'open:ws']);
  assert.equal(m.hidden, false);
});

test('pause closes the source and stops everything; resume opens it again', () => {
  const m = live();
  assert.deepEqual(types(m.dispatch('pause', 1000)), ['render:false', 'stop-probe', 'close']);
  assert.equal(m.state, State.PAUSED);
  assert.equal(m.nextDeadline(), null);
  assert.deepEqual(m.dispatch('hidden', 2000), []);
  assert.deepEqual(m.dispatch('visible', 3000), []);
  assert.equal(m.state, State.PAUSED);
  assert.deepEqual(m.dispatch('close', 3100), [], 'a late close of the old source is ignored');
  assert.deepEqual(types(m.dispatch('resume', 4000)), ['render:true', 'open:ws']);
  assert.equal(m.state, State.CONNECTING);
  assert.equal(m.reconnects, 0, 'a resume is not a reconnect');
});

test('a fatal error stops until the user picks a source', () => {
  const m = machine({ source: 'camera' });
  m.dispatch('start', 0);
  assert.deepEqual(types(m.dispatch('fatal', 10, { message: 'no camera' })), ['stop-probe', 'close']);
  assert.equal(m.state, State.ERROR);
  assert.equal(m.error, 'no camera');
  assert.deepEqual(m.dispatch('online', 20), []);
  assert.deepEqual(m.dispatch('pageshow', 20), []);
  assert.deepEqual(m.dispatch('resume', 20), []);
  assert.deepEqual(m.tick(100_000), []);
  assert.deepEqual(types(m.dispatch('select-source', 30, { source: 'ws' })), ['stop-probe', 'render:true', 'open:ws']);
  assert.equal(m.state, State.CONNECTING);
  assert.equal(m.error, null);
});

test('choosing a source leaves the fallback and resets failures', () => {
  const m = live();
  m.dispatch('fallback', 1000);
  m.dispatch('select-source', 2000, { source: 'mjpeg' });
  assert.equal(m.fallback, false);
  assert.equal(m.preferred, 'mjpeg');
  assert.equal(m.state, State.CONNECTING);
  assert.equal(m.probeAt, null);
  assert.throws(() => m.dispatch('select-source', 0, { source: 'rtsp' }), RangeError);
});

test('unknown events and sources are errors', () => {
  assert.throws(() => machine().dispatch('explode', 0), RangeError);
  assert.throws(() => machine({ source: 'hls' }), RangeError);
});

test('the ladder starts at the chosen source and keeps the lower rungs the browser can use', () => {
  assert.deepEqual(ladderFrom('webcodecs'), LADDER);
  assert.deepEqual(ladderFrom('webrtc', ['webrtc', 'ws', 'mjpeg']), ['webrtc', 'ws', 'mjpeg']);
  assert.deepEqual(ladderFrom('ws', ['webcodecs', 'webrtc', 'ws', 'mjpeg']), ['ws', 'mjpeg']);
  // Asked for explicitly, a source stays on top even if the browser seems unable: it says so.
  assert.deepEqual(ladderFrom('webcodecs', ['ws', 'mjpeg']), ['webcodecs', 'ws', 'mjpeg']);
  assert.deepEqual(ladderFrom('camera'), ['camera']);
  assert.deepEqual(ladderFrom('mjpeg'), ['mjpeg']);
  assert.throws(() => ladderFrom('hls'), RangeError);
});

/** Fails the active source `n` times in a row (close, then the retry that reopens it). */
function failTimes(m, n, t0) {
  let t = t0;
  for (let i = 0; i < n; i++) {
    m.dispatch('close', t);
    t += 10_000;
    m.tick(t);
  }
  return t;
}

test('WebRTC falls to the JPEG WebSocket, then to MJPEG, and probes WebRTC from both', () => {
  const m = live({ source: 'webrtc', probeIntervalMs: 60_000, stallMs: 1e9 });
  assert.equal(m.active, 'webrtc');
  const t = failTimes(m, 3, 1000);
  assert.equal(m.active, 'ws');
  assert.equal(m.state, State.FALLBACK);
  assert.equal(m.preferred, 'webrtc');
  m.dispatch('frame-drawn', t + 10);
  assert.deepEqual(types(m.tick(t + 10)), ['probe:webrtc'], 'the fallback drawing probes the top at once');
  m.dispatch('probe-failure', t + 20);
  const t2 = failTimes(m, 3, t + 100);
  assert.equal(m.active, 'mjpeg');
  m.dispatch('frame-drawn', t2 + 10);
  assert.deepEqual(types(m.tick(t2 + 10)), ['probe:webrtc']);
  assert.deepEqual(types(m.dispatch('probe-success', t2 + 50)), ['stop-probe', 'close', 'open:webrtc']);
  assert.equal(m.fallback, false);
  assert.equal(m.probeAt, null);
});

test('an unsupported rung is dropped at once, without counting failures or probing it again', () => {
  const m = machine({ source: 'webcodecs', probeIntervalMs: 10_000 });
  m.dispatch('start', 0);
  assert.deepEqual(types(m.dispatch('unsupported', 50, { message: 'no H.264' })), ['stop-probe', 'close', 'open:webrtc']);
  assert.deepEqual(m.ladder, ['webrtc', 'ws', 'mjpeg']);
  assert.equal(m.preferred, 'webrtc');
  assert.equal(m.fallback, false);
  assert.equal(m.probeAt, null);
  assert.equal(m.state, State.CONNECTING);
  m.dispatch('unsupported', 60);
  assert.equal(m.active, 'ws');
  assert.equal(m.reconnects, 0, 'stepping past unsupported rungs is not a reconnect');
  m.dispatch('frame-drawn', 100);
  assert.equal(m.state, State.LIVE, 'the best rung left is not a fallback');
  assert.equal(m.nextDeadline(), m.stallAt, 'nothing to probe');
});

test('the last rung unsupported is an error; a probe answering unsupported stops the probing', () => {
  const m = machine({ source: 'mjpeg' });
  m.dispatch('start', 0);
  m.dispatch('unsupported', 10, { message: 'nope' });
  assert.equal(m.state, State.ERROR);
  assert.equal(m.error, 'nope');

  const f = live({ source: 'webrtc', probeIntervalMs: 10_000, stallMs: 1e9 });
  f.dispatch('fallback', 1000);
  assert.equal(f.active, 'ws');
  f.dispatch('frame-drawn', 1100);
  f.dispatch('probe-failure', 1110);
  assert.deepEqual(types(f.tick(11_110)), ['probe:webrtc']);
  f.dispatch('probe-unsupported', 11_100);
  assert.deepEqual(f.ladder, ['ws', 'mjpeg']);
  assert.equal(f.fallback, false);
  assert.equal(f.state, State.LIVE);
  assert.equal(f.probeAt, null);
});

test('choosing a source rebuilds the ladder from it', () => {
  const m = live({ source: 'webrtc', available: ['webrtc', 'ws', 'mjpeg'] });
  m.dispatch('select-source', 2000, { source: 'ws' });
  assert.deepEqual(m.ladder, ['ws', 'mjpeg']);
  m.dispatch('select-source', 3000, { source: 'webcodecs' });
  assert.deepEqual(m.ladder, ['webcodecs', 'webrtc', 'ws', 'mjpeg']);
  m.dispatch('select-source', 4000, { source: 'camera' });
  assert.deepEqual(m.ladder, ['camera']);
  assert.throws(() => m.dispatch('select-source', 5000, { source: 'x' }), RangeError);
});
