// Offset between the server's clock and the browser's, from `/ws` ping/pong. Pure.
//
// A ping carries the local send time t_send (ms); the pong echoes it with the server clock
// server_us. Assuming the reply was stamped halfway through the round trip,
//   offset = server_us / 1000 − (t_send + t_recv) / 2      (server = local + offset)
// and the error of that sample is at most rtt / 2. So among the recent samples the one with
// the smallest round trip is the best estimate; older ones are forgotten so a drifting or
// stepped clock is followed within a few pings.

/**
 * @typedef {object} ClockSample
 * @property {number} offsetMs server clock − local clock, ms
 * @property {number} rttMs    round trip of the ping, ms
 * @property {number} at       local receive time, ms
 */

/**
 * One offset sample from a ping sent at `tSendMs`, answered with `serverUs` and received at
 * `tRecvMs` (both local times on the same clock, ms since the epoch).
 * @returns {ClockSample|null} null for impossible input (negative round trip, non-numbers)
 */
export function clockSample(tSendMs, serverUs, tRecvMs) {
  if (![tSendMs, serverUs, tRecvMs].every(Number.isFinite)) return null;
  const rttMs = tRecvMs - tSendMs;
  if (rttMs < 0) return null;
  return { offsetMs: serverUs / 1000 - (tSendMs + tRecvMs) / 2, rttMs, at: tRecvMs };
}

/** Keeps recent samples and answers with the one of smallest round trip. */
export class ClockOffset {
  /**
   * @param {{maxSamples?: number, maxAgeMs?: number}} [opts] how many of the newest samples
   *   count (default 8), and how much older than the newest one a sample may be (default 60 s)
   */
  constructor({ maxSamples = 8, maxAgeMs = 60_000 } = {}) {
    this.maxSamples = maxSamples;
    this.maxAgeMs = maxAgeMs;
    /** @type {ClockSample[]} oldest first */
    this.samples = [];
  }

  /**
   * Adds the sample of one pong.
   * @param {number} tSendMs
   * @param {number} serverUs
   * @param {number} tRecvMs
   * @returns {ClockSample|null} the sample, or null if it was rejected
   */
  add(tSendMs, serverUs, tRecvMs) {
    const s = clockSample(tSendMs, serverUs, tRecvMs);
    if (!s) return null;
    this.samples.push(s);
    const newest = s.at;
    this.samples = this.samples.filter((x) => newest - x.at <= this.maxAgeMs).slice(-this.maxSamples);
    return s;
  }

  /** The recent sample with the smallest round trip, or null before the first pong. */
  best() {
    let best = null;
    for (const s of this.samples) if (!best || s.rttMs < best.rttMs) best = s;
    return best;
  }

  /** server − local in ms, or null when unknown. */
  get offsetMs() {
    const b = this.best();
    return b ? b.offsetMs : null;
  }

  /** Round trip of the best sample in ms, or null. */
  get rttMs() {
    const b = this.best();
    return b ? b.rttMs : null;
  }

  /**
   * A local time (ms) expressed on the server's clock, or null when the offset is unknown.
   * @param {number} localMs
   */
  toServerMs(localMs) {
    const o = this.offsetMs;
    return o === null ? null : localMs + o;
  }

  /** Forget every sample. */
  reset() {
    this.samples = [];
  }
}
