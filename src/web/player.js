// The player: a source feeds frames to the canvas renderer, and the state machine
// (player-state.js) decides when to reconnect, fall back or stop. One Player shows one stream;
// the <picam-player> element (app.js) puts the UI (ui.js) around one, and the grid (grid.js)
// runs one per tile.
//
// ## The Source interface
//
// ws-source.js, mjpeg-source.js and camera-source.js implement the same small interface, so
// the player treats them alike:
//
//   source.kind                  "ws" | "mjpeg" | "camera"
//   source.start()               begin connecting; never calls back synchronously
//   source.stop()                close everything and release resources; after stop() no
//                                callback runs (close() is an alias)
//   source.onframe = (frame) => …
//        frame = { jpeg?: Uint8Array | Blob,   JPEG bytes to decode (WebSocket)
//                  bitmap?: ImageBitmap,       or a decoded picture (MJPEG, camera); whoever
//                                              receives it owns it and must close() it
//                  seq: number,                increasing within one connection
//                  captureUs: number | null,   capture time, µs since the epoch, server clock
//                  width, height: number,
//                  noSignal: boolean }         the server's "no signal" placeholder
//   source.onstate = (event) => …
//        { type: "open" }                      connected (a frame may still be on its way)
//        { type: "close", reason, code? }      ended or failed; the player decides what next
//        { type: "fatal", message, reason }    cannot work at all (e.g. camera denied): the
//                                              player shows `message` and waits for the user
//        { type: "info", hello? , camera? }    the server's hello, or the opened camera
//
// ## Recovery rules (all timing measured from the last drawn frame)
//
// - Between reconnects: exponential backoff with jitter (backoff.js), reset once a frame has
//   been drawn again.
// - Stall watchdog: a source that draws nothing for max(4 frame intervals, 2 s) (or ?stall=)
//   is closed and reopened.
// - Page hidden: stop drawing at once, close the source after a grace period (?hiddenGrace=,
//   10 s); visible again: draw at once, reconnect at once if it was closed.
// - `online`, and `pageshow` from the back/forward cache: reconnect at once.
// - 3 consecutive WebSocket failures: fall back to MJPEG and probe the WebSocket every 10 s
//   (?probe=); the first probe that receives a frame switches back.

import { CanvasRenderer } from './canvas-renderer.js';
import { ClockOffset } from './clock.js';
import { CameraSource, listCameras } from './camera-source.js';
import { MjpegSource } from './mjpeg-source.js';
import { parseOptions, stallTimeout } from './options.js';
import { PlayerStateMachine } from './player-state.js';
import { RateMeter } from './rate.js';
import { streamUrls } from './streams.js';
import { WsSource, wsUrl } from './ws-source.js';

/** How often deadlines are checked and the overlay refreshed, ms. */
const TICK_MS = 200;
const STORE_ROTATION = 'picamd.rotation';
const STORE_MIRROR = 'picamd.mirror';

/** Wall-clock milliseconds that never step back: the page's time origin + a monotonic clock. */
export function epochNow() {
  return performance.timeOrigin + performance.now();
}

function storageGet(key) {
  try {
    return globalThis.localStorage?.getItem(key) ?? null;
  } catch {
    return null;
  }
}

function storageSet(key, value) {
  try {
    globalThis.localStorage?.setItem(key, value);
  } catch {
    // Private mode or storage disabled: the setting lasts for this visit only.
  }
}

/**
 * @typedef {object} PlayerStats  read by the overlay and by tests (window.picamd.stats)
 * @property {string|null} stream      the stream shown (null: the default one, root URLs)
 * @property {string} state            see player-state.js
 * @property {"ws"|"mjpeg"|"camera"} source      the source in use
 * @property {"ws"|"mjpeg"|"camera"} preferredSource   the one the user chose
 * @property {boolean} fallback        on the MJPEG fallback
 * @property {number} received         frames received from sources
 * @property {number} drawn            frames drawn
 * @property {number} dropped          frames not drawn (superseded, out of order, undecodable)
 * @property {number} reconnects       connections opened to recover
 * @property {number} failures         consecutive failures since the last drawn frame
 * @property {number} openBitmaps      ImageBitmaps held by the renderer
 * @property {number} fpsReceived
 * @property {number} fpsDrawn
 * @property {number|null} latencyMs   capture → draw, server clock corrected by the offset
 * @property {number|null} clockOffsetMs  server clock − browser clock
 * @property {number|null} rttMs       ping round trip of the best clock sample
 * @property {number|null} lastSeq     seq of the last drawn frame
 * @property {number|null} lastDrawnAt ms since the epoch
 * @property {number|null} nextAttemptAt  ms since the epoch, while reconnecting
 * @property {number} stallMs          current stall timeout
 * @property {number|null} width       of the last drawn frame
 * @property {number|null} height
 * @property {boolean} noSignal        the last drawn frame is the "no signal" placeholder
 * @property {number} badFrames        WebSocket messages that were not readable frames
 * @property {number} decodeErrors
 * @property {number} rotation
 * @property {boolean} mirror
 * @property {string|null} error       message of the error state
 * @property {string|null} cameraId    the camera in use or chosen
 */

/** The player logic; the DOM around it belongs to the caller (see PicamPlayer). */
export class Player {
  /**
   * @param {object} opts
   * @param {HTMLCanvasElement} opts.canvas
   * @param {HTMLElement} [opts.host] element that holds the sources' invisible <img>/<video>
   * @param {import('./options.js').PlayerOptions} [opts.options]
   * @param {string|null} [opts.stream] the stream to show; null: the default one at the root URLs
   */
  constructor({ canvas, host, options, stream = null }) {
    this.options = options ?? parseOptions('');
    this.host = host ?? document.body;
    this.canvas = canvas;
    this.stream = stream;
    this.urls = streamUrls(stream);
    this.cameraId = this.options.cameraId;
    this.renderer = null;
    this.timer = 0;
    this.listeners = [];
    /** Called after the state or the figures changed (at most every TICK_MS for figures). */
    this.onupdate = () => {};
    this.#newSession(this.options.source);
  }

  /**
   * Everything that belongs to one stream: state machine, renderer, clock, counters, stats.
   * Made afresh on a stream switch so nothing measured on the old stream shows on the new.
   */
  #newSession(source) {
    const old = this.renderer;
    this.clock = new ClockOffset();
    this.serverFps = null;
    this.machine = new PlayerStateMachine({
      source,
      stallMs: stallTimeout(this.options.stallMs, null),
      hiddenGraceMs: this.options.hiddenGraceMs,
      probeIntervalMs: this.options.probeIntervalMs,
    });
    const renderer = new CanvasRenderer(this.canvas, { onDrawn: (f) => this.#drawn(f) });
    if (old) {
      // The view's orientation is the user's, not the stream's.
      renderer.setRotation(old.rotation);
      renderer.setMirror(old.mirror);
      old.destroy();
      // The old picture must not stand in for the new stream while it connects.
      renderer.ctx?.clearRect(0, 0, this.canvas.width, this.canvas.height);
    } else {
      const storedRotation = Number(storageGet(STORE_ROTATION));
      renderer.setRotation(this.options.rotation ?? ([0, 90, 180, 270].includes(storedRotation) ? storedRotation : 0));
      renderer.setMirror(this.options.mirror ?? storageGet(STORE_MIRROR) === '1');
    }
    this.renderer = renderer;
    this.rxMeter = new RateMeter();
    this.drawMeter = new RateMeter();
    this.source = null;
    this.probe = null;
    this.probeTimer = 0;
    this.received = 0;
    this.badFramesClosed = 0;
    /** @type {PlayerStats} */
    this.stats = {
      stream: this.stream,
      state: this.machine.state,
      source: this.machine.active,
      preferredSource: this.machine.preferred,
      fallback: false,
      received: 0,
      drawn: 0,
      dropped: 0,
      reconnects: 0,
      failures: 0,
      openBitmaps: 0,
      fpsReceived: 0,
      fpsDrawn: 0,
      latencyMs: null,
      clockOffsetMs: null,
      rttMs: null,
      lastSeq: null,
      lastDrawnAt: null,
      nextAttemptAt: null,
      stallMs: this.machine.stallMs,
      width: null,
      height: null,
      noSignal: false,
      badFrames: 0,
      decodeErrors: 0,
      rotation: renderer.rotation,
      mirror: renderer.mirror,
      error: null,
      cameraId: this.cameraId,
    };
  }

  /** Whether start() was called and stop() was not. */
  get running() {
    return this.timer !== 0;
  }

  /** Starts playing and listening to page visibility and network events. */
  start() {
    if (this.timer) return;
    // A machine that already ran belongs to the connection stop() ended.
    if (this.machine.started) this.#newSession(this.machine.preferred);
    const on = (target, type, fn) => {
      target.addEventListener(type, fn);
      this.listeners.push(() => target.removeEventListener(type, fn));
    };
    on(document, 'visibilitychange', () => this.#dispatch(document.hidden ? 'hidden' : 'visible'));
    on(window, 'online', () => this.#dispatch('online'));
    on(window, 'pageshow', (e) => {
      if (e.persisted) this.#dispatch('pageshow');
    });
    this.timer = setInterval(() => this.#tick(), TICK_MS);
    this.#fetchServerFps();
    this.#dispatch('start');
    if (document.hidden) this.#dispatch('hidden');
  }

  /** Closes the connection and stops listening; the last picture stays. start() again to resume. */
  stop() {
    // As far as stats tell, a stopped player is a paused one (not a frozen "live").
    if (this.timer && !this.machine.paused) this.#apply(this.machine.dispatch('pause', epochNow()));
    clearInterval(this.timer);
    this.timer = 0;
    for (const off of this.listeners) off();
    this.listeners = [];
    this.#stopProbe();
    this.#closeSource();
    this.#refresh();
  }

  /** Stops everything and releases the canvas' bitmaps. */
  destroy() {
    this.stop();
    this.renderer.destroy();
  }

  /**
   * Shows another stream, without reloading the page: the old connection is closed, and
   * state, counters and picture start afresh. A local camera gives way to the server's stream
   * (choosing a stream means wanting to see it).
   * @param {string|null} stream null: the default stream at the root URLs
   */
  setStream(stream) {
    const urls = streamUrls(stream);
    const wasRunning = this.running;
    this.stop();
    this.stream = stream;
    this.urls = urls;
    const preferred = this.machine.preferred === 'camera' ? 'ws' : this.machine.preferred;
    this.#newSession(preferred);
    if (wasRunning) this.start();
    else this.#refresh();
  }

  /**
   * Switches to another source.
   * @param {"ws"|"mjpeg"|"camera"} kind
   * @param {{cameraId?: string|null}} [opts] for "camera": which one
   */
  selectSource(kind, opts = {}) {
    if (kind === 'camera' && opts.cameraId !== undefined) this.cameraId = opts.cameraId;
    this.#dispatch('select-source', { source: kind });
  }

  pause() {
    this.#dispatch('pause');
  }

  resume() {
    this.#dispatch('resume');
  }

  togglePause() {
    this.#dispatch(this.machine.paused ? 'resume' : 'pause');
  }

  get paused() {
    return this.machine.paused;
  }

  /** @param {number} degrees 0, 90, 180, 270 */
  setRotation(degrees) {
    this.renderer.setRotation(degrees);
    storageSet(STORE_ROTATION, String(this.renderer.rotation));
    this.#refresh();
  }

  /** Rotates a quarter turn clockwise. */
  rotate() {
    this.setRotation(this.renderer.rotation + 90);
  }

  /** @param {boolean} on */
  setMirror(on) {
    this.renderer.setMirror(on);
    storageSet(STORE_MIRROR, this.renderer.mirror ? '1' : '0');
    this.#refresh();
  }

  toggleMirror() {
    this.setMirror(!this.renderer.mirror);
  }

  /**
   * A still picture. The server's `/snapshot` (a fresh, full-quality JPEG) when it shows the
   * same as the screen; the canvas (what is on screen, rotation and mirroring included) for
   * the local camera, a rotated or mirrored view, or when the request fails.
   * @returns {Promise<Blob>}
   */
  async snapshot() {
    const r = this.renderer;
    if (this.machine.active !== 'camera' && r.rotation === 0 && !r.mirror) {
      try {
        const resp = await fetch(this.urls.snapshot, { cache: 'no-store' });
        if (resp.ok) return await resp.blob();
      } catch {
        // fall through to the canvas
      }
    }
    return r.toBlob('image/jpeg', 0.92);
  }

  /** The local cameras (labels appear once camera access was granted). */
  cameras() {
    return listCameras();
  }

  // ---- internals ------------------------------------------------------------------------

  #dispatch(type, data) {
    const effects = this.machine.dispatch(type, epochNow(), data);
    this.#apply(effects);
    this.#refresh();
  }

  #tick() {
    const effects = this.machine.tick(epochNow());
    if (effects.length) this.#apply(effects);
    this.#refresh();
  }

  #apply(effects) {
    for (const e of effects) {
      switch (e.type) {
        case 'open': this.#openSource(e.source); break;
        case 'close': this.#closeSource(); break;
        case 'render': if (e.on) this.renderer.resume(); else this.renderer.pause(); break;
        case 'probe': this.#startProbe(); break;
        case 'stop-probe': this.#stopProbe(); break;
        default: break;
      }
    }
  }

  #openSource(kind) {
    this.#closeSource();
    this.renderer.newGeneration();
    let src;
    if (kind === 'ws') src = new WsSource({ url: wsUrl(this.urls.ws), clock: this.clock, now: epochNow });
    else if (kind === 'mjpeg') src = new MjpegSource({ url: this.urls.stream, parent: this.host });
    else src = new CameraSource({ deviceId: this.cameraId, parent: this.host });
    this.source = src;
    src.onframe = (frame) => {
      if (this.source !== src) {
        frame.bitmap?.close();
        return;
      }
      this.received += 1;
      this.rxMeter.add(epochNow());
      this.renderer.submit(frame);
    };
    src.onstate = (event) => {
      if (this.source !== src) return;
      this.#sourceEvent(src, event);
    };
    this.#setStall(kind === 'camera' ? null : this.serverFps);
    src.start();
  }

  #closeSource() {
    const src = this.source;
    this.source = null;
    if (!src) return;
    if (src.kind === 'ws') this.badFramesClosed += src.badFrames;
    src.stop();
  }

  #sourceEvent(src, event) {
    switch (event.type) {
      case 'open':
        this.#dispatch('open');
        break;
      case 'close':
        this.#dispatch('close');
        break;
      case 'fatal':
        this.#dispatch('fatal', { message: event.message });
        break;
      case 'info':
        if (event.hello) {
          this.serverFps = event.hello.fps ?? this.serverFps;
          this.#setStall(this.serverFps);
        }
        if (event.camera) {
          this.cameraId = event.camera.deviceId ?? this.cameraId;
          this.#setStall(event.camera.fps);
        }
        this.#refresh();
        break;
      default:
        break;
    }
  }

  #setStall(fps) {
    this.machine.stallMs = stallTimeout(this.options.stallMs, fps);
  }

  /** The configured frame rate from `/state`, for the stall timeout of the MJPEG source. */
  #fetchServerFps() {
    const machine = this.machine;
    fetch(this.urls.state, { cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : null))
      .then((s) => {
        const fps = s?.fps?.configured;
        // An answer about the stream shown before a switch is not about this one.
        if (this.machine !== machine) return;
        if (typeof fps === 'number' && fps > 0 && this.serverFps === null) {
          this.serverFps = fps;
          if (this.machine.active !== 'camera') this.#setStall(fps);
        }
      })
      .catch(() => {});
  }

  #startProbe() {
    if (this.probe) return;
    const probe = new WsSource({ url: wsUrl(this.urls.ws), clock: this.clock, now: epochNow });
    this.probe = probe;
    const fail = () => {
      if (this.probe !== probe) return;
      this.#stopProbe();
      this.#dispatch('probe-ws-failure');
    };
    probe.onframe = () => {
      if (this.probe !== probe) return;
      this.#stopProbe();
      this.#dispatch('probe-ws-success');
    };
    probe.onstate = (event) => {
      if (event.type === 'close' || event.type === 'fatal') fail();
    };
    // A probe that opens but never delivers a frame has failed too.
    this.probeTimer = setTimeout(fail, Math.max(this.machine.stallMs, 2000) + 1000);
    probe.start();
  }

  #stopProbe() {
    clearTimeout(this.probeTimer);
    this.probeTimer = 0;
    const p = this.probe;
    this.probe = null;
    p?.stop();
  }

  #drawn(frame) {
    const now = epochNow();
    this.drawMeter.add(now);
    const s = this.stats;
    s.lastSeq = frame.seq;
    s.lastDrawnAt = now;
    s.width = frame.width;
    s.height = frame.height;
    s.noSignal = !!frame.noSignal;
    const offset = this.clock.offsetMs;
    s.latencyMs = frame.captureUs !== null && frame.captureUs !== undefined && offset !== null
      ? Math.round((now + offset - frame.captureUs / 1000) * 10) / 10
      : null;
    const before = this.machine.state;
    this.machine.dispatch('frame-drawn', now);
    if (this.machine.state !== before) this.#refresh();
    else this.#counters();
  }

  /** Copies the counters into `stats` (cheap; done on every drawn frame). */
  #counters() {
    const s = this.stats;
    const r = this.renderer.stats;
    s.received = this.received;
    s.drawn = r.drawn;
    s.dropped = r.dropped;
    s.openBitmaps = r.openBitmaps;
    s.decodeErrors = r.decodeErrors;
  }

  /** Updates every stats field and tells the UI. */
  #refresh() {
    this.#counters();
    const now = epochNow();
    const m = this.machine;
    const s = this.stats;
    s.state = m.state;
    s.source = m.active;
    s.preferredSource = m.preferred;
    s.fallback = m.fallback;
    s.reconnects = m.reconnects;
    s.failures = m.failures;
    s.nextAttemptAt = m.nextAttemptAt;
    s.stallMs = m.stallMs;
    s.error = m.error;
    s.fpsReceived = Math.round(this.rxMeter.rate(now) * 10) / 10;
    s.fpsDrawn = Math.round(this.drawMeter.rate(now) * 10) / 10;
    s.clockOffsetMs = this.clock.offsetMs === null ? null : Math.round(this.clock.offsetMs * 10) / 10;
    s.rttMs = this.clock.rttMs === null ? null : Math.round(this.clock.rttMs * 10) / 10;
    s.badFrames = this.badFramesClosed + (this.source?.kind === 'ws' ? this.source.badFrames : 0);
    s.rotation = this.renderer.rotation;
    s.mirror = this.renderer.mirror;
    s.cameraId = this.cameraId;
    if (s.lastDrawnAt !== null && now - s.lastDrawnAt > 2000) s.latencyMs = null;
    this.onupdate(s);
  }
}
