import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RateMeter } from '../../src/web/rate.js';

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
