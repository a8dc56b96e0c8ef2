import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteRateMeter, RateMeter } from '../../src/web/rate.js';

test('a steady stream reads its rate', () => {
  const r = new RateMeter(2000);
  for (let t = 0; t <= 3000; t += 40) r.add(t);
  assert.ok(Math.abs(r.rate(3000) - 25) < 0.01);
});

test('the rate falls when events stop, and is 0 after the window', () => {
  const r = new RateMeter(2000);
  for (let t = 0; t <= 1000; t += 100) r.add(t);
  assert.ok(Math.abs(r.rate(1000) - 10) < 0.01);
  assert.ok(r.rate(1500) < 10);
  assert.equal(r.rate(5000), 0);
});

test('fewer than two events read 0; reset forgets', () => {
  const r = new RateMeter();
  assert.equal(r.rate(0), 0);
  r.add(0);
  assert.equal(r.rate(10), 0);
  r.add(100);
  assert.ok(r.rate(100) > 0);
  r.reset();
  assert.equal(r.rate(100), 0);
});

test('a byte rate from a running total, read every tick and updated once a second', () => {
  const m = new ByteRateMeter(3000);
  assert.equal(m.rate(), null);
  // 125 kB/s (1 Mbit/s), the total updated once a second, read every 200 ms.
  for (let t = 0; t <= 10_000; t += 200) m.add(t, Math.floor(t / 1000) * 125_000);
  const r = m.rate();
  assert.ok(Math.abs(r - 125_000) < 125_000 * 0.1, `read ${r}`);
  // Stopped: once the last growth leaves the window the rate is 0.
  for (let t = 10_200; t <= 15_000; t += 200) m.add(t, 10 * 125_000);
  assert.equal(m.rate(), 0);
  // A new connection's smaller total starts afresh.
  m.add(15_200, 1000);
  assert.equal(m.rate(), null);
  m.add(15_800, 2000);
  assert.ok(Math.abs(m.rate() - 1000 / 0.6) < 1);
  m.reset();
  assert.equal(m.rate(), null);
});
