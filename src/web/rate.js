// Events per second over a sliding window, for the received and drawn fps. Pure (time is
// passed in).

/** Counts events and reports their rate over the last `windowMs`. */
export class RateMeter {
  /** @param {number} [windowMs=2000] */
  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
    /** @type {number[]} event times, oldest first */
    this.times = [];
  }

  /** Records one event at `now` (ms). */
  add(now) {
    this.times.push(now);
    this.#trim(now);
  }

  /**
   * Events per second over the window ending at `now`: the intervals between the events in
   * the window, so a steady 30 fps reads 30 without waiting for a whole window.
   * @param {number} now
   * @returns {number}
   */
  rate(now) {
    this.#trim(now);
    const t = this.times;
    if (t.length < 2) return 0;
    // If the newest event is older than two of its own intervals, the stream has slowed or
    // stopped: count from the window start instead so the figure falls towards 0.
    const span = now - t[0];
    const interval = (t[t.length - 1] - t[0]) / (t.length - 1);
    if (now - t[t.length - 1] > 2 * interval) return ((t.length - 1) * 1000) / Math.max(span, 1);
    return 1000 / Math.max(interval, 1e-3);
  }

  /** Forget every event. */
  reset() {
    this.times = [];
  }

  #trim(now) {
    const cut = now - this.windowMs;
    let i = 0;
    while (i < this.times.length && this.times[i] < cut) i++;
    if (i) this.times.splice(0, i);
  }
}
