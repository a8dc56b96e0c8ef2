import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClockOffset, clockSample } from '../../src/web/clock.js';

test('one sample: offset = server − midpoint of send and receive', () => {
  // Local clock 1000 ms behind the server; 40 ms round trip, reply stamped halfway.
  const s = clockSample(10_000, (10_020 + 1000) * 1000, 10_040);
  assert.equal(s.rttMs, 40);
  assert.equal(s.offsetMs, 1000);
  assert.equal(s.at, 10_040);
});

test('asymmetric paths give an error of at most rtt/2', () => {
  // Reply stamped right at the send time: the estimate is off by exactly rtt/2.
  const s = clockSample(0, 500 * 1000, 100);
  assert.equal(s.offsetMs, 500 - 50);
});

test('impossible samples are rejected', () => {
  assert.equal(clockSample(100, 1e9, 50), null);
  assert.equal(clockSample(NaN, 1e9, 50), null);
  assert.equal(clockSample(0, undefined, 50), null);
  const c = new ClockOffset();
  assert.equal(c.add(100, 1e9, 50), null);
  assert.equal(c.offsetMs, null);
  assert.equal(c.toServerMs(5), null);
});

test('keeps the recent sample with the smallest round trip', () => {
  const c = new ClockOffset({ maxSamples: 4 });
  assert.equal(c.best(), null);
  c.add(0, 1_000_000 + 50_000, 100); // rtt 100 → offset 1000
  c.add(200, 1_000_000 + 205_000, 210); // rtt 10 → offset 1000
  c.add(300, 2_000_000, 380); // rtt 80 → offset 1660
  assert.equal(c.rttMs, 10);
  assert.equal(c.offsetMs, 1000);
  assert.equal(c.toServerMs(5000), 6000);
});

test('old samples are forgotten by count and by age', () => {
  const c = new ClockOffset({ maxSamples: 3, maxAgeMs: 10_000 });
  c.add(0, 5_000, 2); // rtt 2, offset ≈ 4, the best…
  c.add(100, 500_000, 150);
  c.add(200, 600_000, 250);
  assert.equal(c.rttMs, 2);
  c.add(300, 700_000, 350); // …until three newer samples push it out
  assert.equal(c.samples.length, 3);
  assert.equal(c.rttMs, 50);

  const d = new ClockOffset({ maxSamples: 10, maxAgeMs: 1000 });
  d.add(0, 0, 1);
  d.add(5000, 5_000_000, 5100);
  assert.equal(d.samples.length, 1);
  assert.equal(d.rttMs, 100);
});

test('follows a server clock that stepped', () => {
  const c = new ClockOffset({ maxSamples: 3 });
  for (let t = 0; t < 3; t++) c.add(t * 2000, (t * 2000 + 5) * 1000, t * 2000 + 10);
  assert.equal(c.offsetMs, 0);
  for (let t = 3; t < 6; t++) c.add(t * 2000, (t * 2000 + 5 + 3000) * 1000, t * 2000 + 10);
  assert.equal(c.offsetMs, 3000);
  c.reset();
  assert.equal(c.offsetMs, null);
});
