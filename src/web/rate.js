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

/**
 * A rate from a running total (bytes received so far): the growth over the last `windowMs`,
 * per second. Fed whenever the total is read (every player tick), so a source that reports
 * its total only now and then (WebRTC's getStats, once a second) still reads steadily.
 */
export class ByteRateMeter {
  /** @param {number} [windowMs=3000] */
  constructor(windowMs = 3000) {
    this.windowMs = windowMs;
    /** @type {{t: number, total: number}[]} readings, oldest first */
    this.samples = [];
  }

  /** Records the total at `now` (ms). A total lower than the last one starts afresh. */
  add(now, total) {
    const last = this.samples[this.samples.length - 1];
    if (last && total < last.total) this.samples = [];
    this.samples.push({ t: now, total });
    // Keep one reading at or before the window's start as the base.
    const cut = now - this.windowMs;
    while (this.samples.length > 1 && this.samples[1].t <= cut) this.samples.shift();
  }

  /**
   * Bytes per second between the oldest and newest readings, or null while they are less
   * than 500 ms apart (too little to say). A stopped stream reads 0 once its last growth has
   * left the window.
   * @returns {number|null}
   */
  rate() {
    const s = this.samples;
    if (s.length < 2) return null;
    const first = s[0];
    const last = s[s.length - 1];
    const span = last.t - first.t;
    if (span < 500) return null;
    return ((last.total - first.total) * 1000) / span;
  }

  /** Forget every reading (a new connection counts from zero). */
  reset() {
    this.samples = [];
  }
}
