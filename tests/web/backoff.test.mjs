import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, backoffCeiling } from '../../src/web/backoff.js';

test('ceilings grow by the factor up to the cap', () => {
  const ceilings = [0, 1, 2, 3, 4, 5, 6, 10, 1000].map((n) => backoffCeiling(n));
  assert.deepEqual(ceilings, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000, 5000]);
  assert.equal(backoffCeiling(3, { baseMs: 100, factor: 3, capMs: 10_000 }), 2700);
});

test('no jitter returns the ceilings', () => {
  const b = new Backoff({ jitter: 'none' });
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map(() => b.next()), [250, 500, 1000, 2000, 4000, 5000, 5000]);
  assert.equal(b.attempt, 7);
});

test('equal jitter stays within [ceiling/2, ceiling]', () => {
  const lo = new Backoff({ random: () => 0 });
  const hi = new Backoff({ random: () => 0.999999 });
  const mid = new Backoff({ random: () => 0.5 });
  for (let i = 0; i < 8; i++) {
    const c = backoffCeiling(i);
    assert.equal(lo.next(), c / 2);
    const h = hi.next();
    assert.ok(h < c && h > c * 0.999, `attempt ${i}: ${h}`);
    assert.equal(mid.next(), c * 0.75);
  }
});

test('full jitter stays within [0, ceiling)', () => {
  const values = [0, 0.25, 0.999];
  let i = 0;
  const b = new Backoff({ jitter: 'full', random: () => values[i++ % values.length] });
  assert.equal(b.next(), 0);
  assert.equal(b.next(), 125);
  assert.ok(Math.abs(b.next() - 999) < 1e-9);
});

test('random draws over many attempts never leave the range or exceed the cap', () => {
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const b = new Backoff({ random });
  for (let i = 0; i < 200; i++) {
    const c = backoffCeiling(i);
    const d = b.next();
    assert.ok(d >= c / 2 && d <= c && d <= 5000, `attempt ${i}: ${d}`);
  }
});

test('reset starts over', () => {
  const b = new Backoff({ jitter: 'none' });
  b.next();
  b.next();
  b.next();
  assert.equal(b.peekCeiling(), 2000);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 250);
});

test('out-of-range random values are clamped', () => {
  assert.equal(new Backoff({ random: () => 5 }).next(), 250);
  assert.equal(new Backoff({ random: () => -1 }).next(), 125);
});

test('unknown jitter is an error', () => {
  assert.throws(() => new Backoff({ jitter: 'some' }), RangeError);
});
