// The player's recovery logic as a pure state machine: events and the current time go in,
// the new state and a list of effects for the player to carry out come out. No timers, no
// DOM, so every rule can be tested in Node with a made-up clock.
//
// States (PlayerStateMachine#state):
//   connecting      a source was opened and no frame has been drawn from it yet
//   live            frames are being drawn
//   stalled         no frame drawn for the stall timeout; the source was closed and reopened
//   reconnecting    the source failed; the next attempt is at `nextAttemptAt`
//   fallback        connecting or live on a lower rung of the ladder (below) after repeated
//                   failures of the one above; the top rung is probed every
//                   `probeIntervalMs`, and at once whenever the fallback (re)gains a picture,
//                   to go back to it
//   paused          the user paused; the source is closed, the last picture stays
//   hidden          the page is hidden; nothing is drawn, the source closes after a grace period
//   error           the source cannot work at all (e.g. no camera permission); needs the user
//
// The ladder: the server's stream reaches the page by one of four paths, best first
// (LADDER): WebCodecs (H.264 over /ws, decoded by VideoDecoder), WebRTC (WHEP), JPEG over
// /ws, MJPEG. The player starts on the best one the browser can use (options.js
// `?source=` picks another top) and keeps the rungs below it that the browser can use too.
// `failuresBeforeFallback` consecutive failures (closes or stalls without a drawn frame) step
// one rung down; a rung the server or browser cannot do at all (`unsupported`: no H.264
// offered, WebRTC switched off, no VideoDecoder) is dropped from the ladder at once. The
// local camera is a ladder of its own, with nothing below it.
//
// Effects (objects with a `type`):
//   {type:'open', source}   close whatever source is open, then open a new one of this kind
//   {type:'close'}          close the open source
//   {type:'render', on}     start / stop drawing
//   {type:'probe', source}  try the top rung in the background (answer with probe-success,
//                           probe-failure or probe-unsupported)
//   {type:'stop-probe'}     abandon a background attempt
//
// Events (dispatch(type, now, data)):
//   start, open, frame-drawn, stall-timeout, close (alias error), fatal {message}, hidden,
//   visible, grace-expired, online, pageshow, pause, resume, select-source {source}, retry,
//   fallback, unsupported, probe-due, probe-success, probe-failure, probe-unsupported.
// The time-driven ones (stall-timeout, retry, grace-expired, probe-due) are produced by
// tick(now) once their deadline has passed; tests may also dispatch them directly.
//
// Stall timing is measured from the last drawn frame (or from when the source was opened, or
// the page became visible again, whichever is later).

import { Backoff } from './backoff.js';

/** The states, as they appear in `stats.state`. */
export const State = Object.freeze({
  CONNECTING: 'connecting',
  LIVE: 'live',
  STALLED: 'stalled',
  RECONNECTING: 'reconnecting',
  FALLBACK: 'fallback',
  PAUSED: 'paused',
  HIDDEN: 'hidden',
  ERROR: 'error',
});

/** Source kinds. */
export const SOURCES = Object.freeze(['webcodecs', 'webrtc', 'ws', 'mjpeg', 'camera']);

/** The server's paths to the page, best first: each falls back to the next. */
export const LADDER = Object.freeze(['webcodecs', 'webrtc', 'ws', 'mjpeg']);

/**
 * The rungs from `source` down: `source` itself (the user asked for it; if it cannot work
 * it says so and is dropped), then the lower ones among `available`.
 * @param {string} source
 * @param {readonly string[]} [available] the kinds this browser can use
 * @returns {string[]}
 */
export function ladderFrom(source, available = LADDER) {
  if (!SOURCES.includes(source)) throw new RangeError(`unknown source ${JSON.stringify(source)}`);
  if (source === 'camera') return ['camera'];
  return LADDER.slice(LADDER.indexOf(source)).filter((k, i) => i === 0 || available.includes(k));
}

/**
 * @typedef {object} MachineOptions
 * @property {string} [source="ws"]            the top of the ladder (see SOURCES)
 * @property {readonly string[]} [available]   the kinds this browser can use (default all)
 * @property {number} [stallMs=2000]           no drawn frame for this long = stalled
 * @property {number} [hiddenGraceMs=10000]    hidden for this long = close the source
 * @property {number} [probeIntervalMs=10000]  top-rung probe period while on a fallback
 * @property {number} [failuresBeforeFallback=3] consecutive failures before the next rung
 * @property {boolean} [allowFallback=true]
 * @property {Backoff|import('./backoff.js').BackoffOptions} [backoff]
 */

/** @typedef {{type: string, source?: string, on?: boolean}} Effect */

/** The player state machine. See the comment at the top of this file. */
export class PlayerStateMachine {
  /** @param {MachineOptions} [opts] */
  constructor(opts = {}) {
    const source = opts.source ?? 'ws';
    this.available = opts.available ?? LADDER;
    this.stallMs = opts.stallMs ?? 2000;
    this.hiddenGraceMs = opts.hiddenGraceMs ?? 10_000;
    this.probeIntervalMs = opts.probeIntervalMs ?? 10_000;
    this.failuresBeforeFallback = opts.failuresBeforeFallback ?? 3;
    this.allowFallback = opts.allowFallback ?? true;
    this.backoff = opts.backoff instanceof Backoff ? opts.backoff : new Backoff(opts.backoff);

    /** The rungs still to try, best first (see the top of this file). */
    this.ladder = ladderFrom(source, this.available);
    /** The source in use: a lower rung than `preferred` while on a fallback. */
    this.active = source;
    /** connecting | live | stalled | reconnecting | error: the connection, whatever the page. */
    this.phase = State.CONNECTING;
    this.paused = false;
    this.hidden = false;
    /** A source object is open (as far as the machine knows). */
    this.sourceOpen = false;
    /** Consecutive failures of the active source since a frame was last drawn. */
    this.failures = 0;
    /** Connections opened other than at start, on a user's source choice or resume. */
    this.reconnects = 0;
    /** Message of the error state. */
    this.error = null;
    /** Time (ms) the stall deadline counts from. */
    this.progressAt = 0;
    /** Time (ms) of the last drawn frame, or null. */
    this.lastFrameAt = null;
    /** Deadlines (ms) or null. */
    this.retryAt = null;
    this.graceAt = null;
    this.probeAt = null;
    this.started = false;
  }

  /** The best rung left: the source the user chose, unless it turned out unsupported. */
  get preferred() {
    return this.ladder[0];
  }

  /** On a lower rung than the best, probing the best. */
  get fallback() {
    return this.active !== this.ladder[0];
  }

  /** The state shown to the user; see the top of this file. */
  get state() {
    if (this.phase === State.ERROR) return State.ERROR;
    if (this.paused) return State.PAUSED;
    if (this.hidden) return State.HIDDEN;
    if (this.fallback && (this.phase === State.CONNECTING || this.phase === State.LIVE)) return State.FALLBACK;
    return this.phase;
  }

  /** When the next reconnect attempt is due (ms), while reconnecting; else null. */
  get nextAttemptAt() {
    return this.state === State.RECONNECTING ? this.retryAt : null;
  }

  /** Whether the stall watchdog is armed. */
  get watching() {
    return this.sourceOpen && !this.hidden && !this.paused &&
      (this.phase === State.CONNECTING || this.phase === State.LIVE || this.phase === State.STALLED);
  }

  /** When the stall watchdog fires (ms), or null when it is not armed. */
  get stallAt() {
    return this.watching ? this.progressAt + this.stallMs : null;
  }

  /** The earliest pending deadline (ms), or null: when tick() next has something to do. */
  nextDeadline() {
    const d = [this.stallAt, this.retryAt, this.graceAt, this.probeAt].filter((x) => x !== null);
    return d.length ? Math.min(...d) : null;
  }

  /**
   * Fires every deadline that has passed: stall-timeout, retry, grace-expired, probe-due.
   * @param {number} now ms
   * @returns {Effect[]}
   */
  tick(now) {
    const out = [];
    const stallAt = this.stallAt;
    if (stallAt !== null && now >= stallAt) out.push(...this.dispatch('stall-timeout', now));
    if (this.retryAt !== null && now >= this.retryAt) out.push(...this.dispatch('retry', now));
    if (this.graceAt !== null && now >= this.graceAt) out.push(...this.dispatch('grace-expired', now));
    if (this.probeAt !== null && now >= this.probeAt) out.push(...this.dispatch('probe-due', now));
    return out;
  }

  /**
   * Feeds one event.
   * @param {string} type see the top of this file
   * @param {number} now ms, monotonic
   * @param {object} [data] `{message}` for fatal and unsupported, `{source}` for select-source
   * @returns {Effect[]} what the player must do, in order
   */
  dispatch(type, now, data = {}) {
    switch (type) {
      case 'start': return this.#start(now);
      case 'open': return [];
      case 'frame-drawn': return this.#frameDrawn(now);
      case 'stall-timeout': return this.#stall(now);
      case 'close':
      case 'error': return this.#close(now);
      case 'fatal': return this.#fatal(data.message ?? 'the source failed');
      case 'hidden': return this.#hidden(now);
      case 'visible': return this.#visible(now);
      case 'grace-expired': return this.#graceExpired();
      case 'online': return this.#online(now);
      case 'pageshow': return this.#pageshow(now);
      case 'pause': return this.#pause();
      case 'resume': return this.#resume(now);
      case 'select-source': return this.#select(data.source, now);
      case 'retry': return this.#retry(now);
      case 'fallback': return this.#goFallback(now);
      case 'unsupported': return this.#unsupported(now, data.message);
      case 'probe-due': return this.#probeDue(now);
      case 'probe-success': return this.#probeSuccess(now);
      case 'probe-failure': return [];
      case 'probe-unsupported': return this.#probeUnsupported();
      default: throw new RangeError(`unknown player event ${JSON.stringify(type)}`);
    }
  }

  // ---- helpers -------------------------------------------------------------------------

  /** Opens the active source now. */
  #open(now, { counts = true } = {}) {
    const out = [];
    if (this.sourceOpen) out.push({ type: 'close' });
    out.push({ type: 'open', source: this.active });
    this.sourceOpen = true;
    this.phase = State.CONNECTING;
    this.progressAt = now;
    this.retryAt = null;
    if (counts) this.reconnects += 1;
    return out;
  }

  /** Reconnect at once, if the page is visible and not paused. */
  #reconnectNow(now) {
    if (this.fallback && this.probeAt === null) this.probeAt = now + this.probeIntervalMs;
    return this.#open(now);
  }

  /** The rung below the active one, or null at the bottom. */
  #below() {
    const i = this.ladder.indexOf(this.active);
    return i >= 0 && i + 1 < this.ladder.length ? this.ladder[i + 1] : null;
  }

  #shouldFallback() {
    return this.allowFallback && this.#below() !== null && this.failures >= this.failuresBeforeFallback;
  }

  /** One failure of the active source: fall back, or schedule the next attempt. */
  #failed(now) {
    this.failures += 1;
    if (this.#shouldFallback()) return this.#goFallback(now);
    const out = [];
    if (this.sourceOpen) out.push({ type: 'close' });
    this.sourceOpen = false;
    this.phase = State.RECONNECTING;
    this.retryAt = now + this.backoff.next();
    return out;
  }

  #blocked() {
    return this.phase === State.ERROR || this.paused || this.hidden;
  }

  // ---- events --------------------------------------------------------------------------

  #start(now) {
    if (this.started) return [];
    this.started = true;
    return [{ type: 'render', on: !this.hidden }, ...this.#open(now, { counts: false })];
  }

  #frameDrawn(now) {
    this.lastFrameAt = now;
    this.progressAt = now;
    this.failures = 0;
    this.backoff.reset();
    if (this.sourceOpen && (this.phase === State.CONNECTING || this.phase === State.STALLED)) {
      this.phase = State.LIVE;
      // The fallback just (re)connected: if the server was merely restarting, the WebSocket
      // works again too, so probe it now rather than in probeIntervalMs.
      if (this.fallback && !this.hidden && !this.paused) this.probeAt = now;
    }
    return [];
  }

  #stall(now) {
    if (!this.watching) return [];
    this.failures += 1;
    if (this.#shouldFallback()) return this.#goFallback(now);
    // Close the silent source and open a new one at once; the stall timeout itself limits
    // how often this happens.
    const out = this.#open(now);
    this.phase = State.STALLED;
    return out;
  }

  #close(now) {
    if (!this.sourceOpen) return [];
    if (this.hidden || this.paused || this.phase === State.ERROR) {
      // Nobody is looking: reconnect when the page is visible again.
      this.sourceOpen = false;
      this.graceAt = null;
      return [{ type: 'close' }];
    }
    return this.#failed(now);
  }

  #fatal(message) {
    const out = [{ type: 'stop-probe' }];
    if (this.sourceOpen) out.push({ type: 'close' });
    this.sourceOpen = false;
    this.phase = State.ERROR;
    this.error = String(message);
    this.retryAt = null;
    this.graceAt = null;
    this.probeAt = null;
    return out;
  }

  #hidden(now) {
    if (this.hidden) return [];
    this.hidden = true;
    if (this.paused || this.phase === State.ERROR) return [];
    const out = [{ type: 'render', on: false }];
    if (this.fallback) {
      out.push({ type: 'stop-probe' });
      this.probeAt = null;
    }
    // A pending reconnect waits for the page to come back; an open source gets a grace
    // period so a quick tab switch does not cost a reconnect.
    this.retryAt = null;
    this.graceAt = this.sourceOpen ? now + this.hiddenGraceMs : null;
    return out;
  }

  #graceExpired() {
    this.graceAt = null;
    if (!this.hidden || !this.sourceOpen) return [];
    this.sourceOpen = false;
    return [{ type: 'close' }];
  }

  #visible(now) {
    if (!this.hidden) return [];
    this.hidden = false;
    this.graceAt = null;
    if (this.paused || this.phase === State.ERROR) return [];
    const out = [{ type: 'render', on: true }];
    if (this.fallback) this.probeAt = now + this.probeIntervalMs;
    if (this.sourceOpen && this.phase !== State.RECONNECTING) {
      // Still connected: nothing was drawn while hidden, so give it a fresh stall window.
      this.progressAt = now;
      return out;
    }
    return [...out, ...this.#reconnectNow(now)];
  }

  #online(now) {
    if (this.#blocked()) return [];
    if (this.fallback) this.probeAt = now;
    if (this.phase === State.RECONNECTING || this.phase === State.STALLED) return this.#reconnectNow(now);
    return [];
  }

  #pageshow(now) {
    // Back from the back/forward cache: the page's sockets were closed while it was frozen.
    if (this.phase === State.ERROR || this.paused) return [];
    const out = [];
    if (this.hidden) {
      this.hidden = false;
      this.graceAt = null;
    }
    out.push({ type: 'render', on: true });
    return [...out, ...this.#reconnectNow(now)];
  }

  #pause() {
    if (this.paused || this.phase === State.ERROR) return [];
    this.paused = true;
    const out = [{ type: 'render', on: false }, { type: 'stop-probe' }];
    if (this.sourceOpen) out.push({ type: 'close' });
    this.sourceOpen = false;
    this.retryAt = null;
    this.graceAt = null;
    this.probeAt = null;
    return out;
  }

  #resume(now) {
    if (!this.paused) return [];
    this.paused = false;
    this.failures = 0;
    if (this.hidden) return []; // "visible" reconnects
    if (this.fallback) this.probeAt = now + this.probeIntervalMs;
    return [{ type: 'render', on: true }, ...this.#open(now, { counts: false })];
  }

  #select(source, now) {
    this.ladder = ladderFrom(source, this.available);
    this.active = source;
    this.failures = 0;
    this.backoff.reset();
    this.error = null;
    this.paused = false;
    this.probeAt = null;
    this.graceAt = null;
    this.retryAt = null;
    if (this.phase === State.ERROR) this.phase = State.CONNECTING;
    const out = [{ type: 'stop-probe' }];
    if (this.hidden) {
      // Opened when the page is visible again.
      if (this.sourceOpen) out.push({ type: 'close' });
      this.sourceOpen = false;
      this.phase = State.RECONNECTING;
      return out;
    }
    out.push({ type: 'render', on: true }, ...this.#open(now, { counts: false }));
    return out;
  }

  #retry(now) {
    this.retryAt = null;
    if (this.#blocked() || this.phase !== State.RECONNECTING) return [];
    return this.#open(now);
  }

  #goFallback(now) {
    const below = this.#below();
    if (!this.allowFallback || below === null || this.phase === State.ERROR) return [];
    this.active = below;
    return this.#stepTo(now);
  }

  /**
   * Opens the (new) active rung after a step down; probes the top one from now on.
   * @param {number} now
   * @param {boolean} [counts=true] whether it counts as a reconnect (a step past an
   *   unsupported rung does not: nothing failed)
   */
  #stepTo(now, counts = true) {
    this.failures = 0;
    this.backoff.reset();
    this.probeAt = this.fallback ? now + this.probeIntervalMs : null;
    if (this.paused || this.hidden) {
      const out = this.sourceOpen ? [{ type: 'close' }] : [];
      this.sourceOpen = false;
      this.phase = State.RECONNECTING;
      this.probeAt = null;
      return out;
    }
    return this.#open(now, { counts });
  }

  /** The active source cannot work here at all: drop its rung and go on with the next. */
  #unsupported(now, message) {
    if (!this.sourceOpen || this.phase === State.ERROR) return [];
    const i = this.ladder.indexOf(this.active);
    const next = i >= 0 ? this.ladder[i + 1] : undefined;
    if (next === undefined || !this.allowFallback) {
      return this.#fatal(message ?? `${this.active} is not available`);
    }
    this.ladder = this.ladder.filter((k) => k !== this.active);
    this.active = next;
    const out = [{ type: 'stop-probe' }, { type: 'close' }];
    this.sourceOpen = false;
    return [...out, ...this.#stepTo(now, false)];
  }

  #probeDue(now) {
    if (!this.fallback || this.#blocked()) {
      this.probeAt = null;
      return [];
    }
    this.probeAt = now + this.probeIntervalMs;
    return [{ type: 'probe', source: this.ladder[0] }];
  }

  #probeUnsupported() {
    if (!this.fallback) return [{ type: 'stop-probe' }];
    this.ladder = this.ladder.slice(1);
    // The active rung may be the best one left now.
    if (!this.fallback) this.probeAt = null;
    return [{ type: 'stop-probe' }];
  }

  #probeSuccess(now) {
    // A probe answering after a pause or while hidden is stale (both stop probing).
    if (!this.fallback || this.#blocked()) return [{ type: 'stop-probe' }];
    this.active = this.preferred;
    this.failures = 0;
    this.backoff.reset();
    this.probeAt = null;
    return [{ type: 'stop-probe' }, ...this.#open(now)];
  }
}
