// Exponential backoff with jitter for reconnect attempts. Pure: the random source is
// injected, nothing reads a clock.
//
// Attempt n (0-based) has the ceiling min(cap, base · factor^n). With "equal" jitter the delay
// is uniform in [ceiling/2, ceiling), so it never collapses to zero (no hot loop against a dead
// server) yet clients that lost the server together spread out; "full" jitter is uniform in
// [0, ceiling); "none" returns the ceiling. The player calls reset() only after a frame has been
// drawn again: a socket that opens and dies at once must keep backing off.

/**
 * @typedef {object} BackoffOptions
 * @property {number} [baseMs=250]  ceiling of the first attempt
 * @property {number} [factor=2]    growth per attempt
 * @property {number} [capMs=5000]  largest ceiling
 * @property {"equal"|"full"|"none"} [jitter="equal"]
 * @property {() => number} [random=Math.random] uniform in [0, 1)
 */

/**
 * The un-jittered delay ceiling of attempt `attempt` (0-based).
 * @param {number} attempt
 * @param {{baseMs?: number, factor?: number, capMs?: number}} [opts]
 * @returns {number} milliseconds
 */
export function backoffCeiling(attempt, { baseMs = 250, factor = 2, capMs = 5000 } = {}) {
  // Clamp the exponent so huge attempt counts cannot overflow to Infinity·0 = NaN.
  const n = Math.min(Math.max(0, attempt), 64);
  return Math.min(capMs, baseMs * Math.pow(factor, n));
}

/** Exponential backoff state: next() gives the delay before the next attempt. */
export class Backoff {
  /** @param {BackoffOptions} [opts] */
  constructor(opts = {}) {
    this.baseMs = opts.baseMs ?? 250;
    this.factor = opts.factor ?? 2;
    this.capMs = opts.capMs ?? 5000;
    this.jitter = opts.jitter ?? 'equal';
    this.random = opts.random ?? Math.random;
    if (!['equal', 'full', 'none'].includes(this.jitter)) {
      throw new RangeError(`unknown jitter ${JSON.stringify(this.jitter)}; use "equal", "full" or "none"`);
    }
    /** Attempts made since the last reset(). */
    this.attempt = 0;
  }

  /** The ceiling the next call to next() draws below, without advancing. */
  peekCeiling() {
    return backoffCeiling(this.attempt, this);
  }

  /**
   * The delay before the next attempt, in ms; advances the attempt counter.
   * @returns {number}
   */
  next() {
    const ceiling = this.peekCeiling();
    this.attempt += 1;
    const r = Math.min(Math.max(this.random(), 0), 1);
    switch (this.jitter) {
      case 'full': return r * ceiling;
      case 'none': return ceiling;
      default: return ceiling / 2 + (r * ceiling) / 2;
    }
  }

  /** Back to the first attempt (call once a frame has been drawn again). */
  reset() {
    this.attempt = 0;
  }
}
