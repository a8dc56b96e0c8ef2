// The player: a source feeds frames to the canvas renderer, and the state machine
// (player-state.js) decides when to reconnect, fall back or stop. One Player shows one stream;
// the <picam-player> element (app.js) puts the UI (ui.js) around one, and the grid (grid.js)
// runs one per tile.
//
// ## The Source interface
//
// webcodecs-source.js, webrtc-source.js, ws-source.js, mjpeg-source.js and camera-source.js
// implement the same small interface, so the player treats them alike (SOURCE_FACTORIES
// below makes them):
//
//   source.kind                  "webcodecs" | "webrtc" | "ws" | "mjpeg" | "camera"
//   source.start()               begin connecting; never calls back synchronously
//   source.stop()                close everything and release resources; after stop() no
//                                callback runs (close() is an alias)
//   source.onframe = (frame) => …
//        frame = { jpeg?: Uint8Array | Blob,   JPEG bytes to decode (WebSocket)
//                  bitmap?: ImageBitmap,       or a decoded picture (MJPEG, camera); whoever
//                                              receives it owns it and must close() it
//                  videoFrame?: VideoFrame,    or a decoded H.264 picture (WebCodecs); the
//                                              same: the receiver must close() it, or the
//                                              decoder runs out of frames and stalls
//                  seq: number,                increasing within one connection
//                  captureUs: number | null,   capture time, µs since the epoch, server clock
//                  captureLocalMs?: number,    or capture time already in this page's clock,
//                                              ms since the epoch (WebRTC: the browser maps
//                                              the RTCP sender reports itself)
//                  width, height: number,
//                  noSignal: boolean }         the server's "no signal" placeholder
//   source.onstate = (event) => …
//        { type: "open" }                      connected (a frame may still be on its way)
//        { type: "close", reason, code? }      ended or failed; the player decides what next
//        { type: "fatal", message, reason }    cannot work at all (e.g. camera denied): the
//                                              player shows `message` and waits for the user
//        { type: "info", hello? , camera? }    the server's hello, or the opened camera
//        { type: "unsupported", message }      this kind cannot work for this page at all (no
//                                              WebRTC on the server, no H.264 decoder, …):
//                                              the player drops it from its ladder
//   source.bytes                 bytes received so far, or null when unknown (MJPEG, camera)
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
// - The ladder (player-state.js): WebCodecs → WebRTC → JPEG WebSocket → MJPEG, starting at
//   the best this browser can use (options.js browserSources) or at ?source=. 3 consecutive
//   failures step one rung down; an unsupported rung is dropped at once. On a lower rung the
//   best one is probed every 10 s (?probe=) and at once when the lower rung regains a
//   picture; the first probe that receives a frame switches back.

import { CanvasRenderer } from './canvas-renderer.js';
import { ClockOffset } from './clock.js';
import { CameraSource, listCameras } from './camera-source.js';
import { MjpegSource } from './mjpeg-source.js';
import { browserSources, parseOptions, stallTimeout, startSource } from './options.js';
import { PlayerStateMachine } from './player-state.js';
import { ByteRateMeter, RateMeter } from './rate.js';
import { streamUrls } from './streams.js';
import { WebCodecsSource } from './webcodecs-source.js';
import { WebRtcSource } from './webrtc-source.js';
import { WsSource, wsUrl } from './ws-source.js';

/**
 * How each kind of source is made. A kind missing here is dropped from the ladder as
 * unsupported. `ctx`: {urls, clock, host, cameraId}.
 */
export const SOURCE_FACTORIES = Object.freeze({
  webcodecs: (ctx) => new WebCodecsSource({ url: wsUrl(ctx.urls.ws), clock: ctx.clock, now: epochNow }),
  webrtc: (ctx) => new WebRtcSource({ url: ctx.urls.whep, parent: ctx.host }),
  ws: (ctx) => new WsSource({ url: wsUrl(ctx.urls.ws), clock: ctx.clock, now: epochNow }),
  mjpeg: (ctx) => new MjpegSource({ url: ctx.urls.stream, parent: ctx.host }),
  camera: (ctx) => new CameraSource({ deviceId: ctx.cameraId, parent: ctx.host }),
});

/** The kinds this browser can use and this build can make, best first. */
function availableSources() {
  return browserSources(globalThis).filter((k) => k in SOURCE_FACTORIES);
}

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
 * @property {string} source          the source in use (see SOURCE_FACTORIES)
 * @property {string} preferredSource  the best one left on the ladder (the user's choice,
 *                                     unless it turned out unsupported)
 * @property {string[]} ladder         the rungs left, best first
 * @property {string[]} usable         the server paths this browser can take, best first
 * @property {boolean} fallback        on a lower rung than preferredSource
 * @property {number} received         frames received from sources
 * @property {number} drawn            frames drawn
 * @property {number} dropped          frames not drawn (superseded, out of order, undecodable)
 * @property {number} reconnects       connections opened to recover
 * @property {number} failures         consecutive failures since the last drawn frame
 * @property {number} openBitmaps      ImageBitmaps held by the renderer
 * @property {number} fpsReceived
 * @property {number} fpsDrawn
 * @property {number|null} latencyMs   capture → draw, server clock corrected by the offset
 * @property {number|null} kbps        received bit rate, kbit/s (null when the source cannot tell)
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

/** Closes what a frame holds that its receiver must release (a bitmap, a VideoFrame). */
function releaseFrame(frame) {
  frame.bitmap?.close();
  frame.videoFrame?.close();
}

/**
 * Capture → drawn, ms: from the page-clock capture time when the source has one (WebRTC),
 * else from the server-clock capture time corrected by the ping offset (WebSocket sources).
 * @param {{captureUs?: number|null, captureLocalMs?: number|null}} frame
 * @param {number} now ms since the epoch, this page's clock
 * @param {number|null} offsetMs server clock − page clock
 * @returns {number|null}
 */
export function latencyOf(frame, now, offsetMs) {
  const round = (x) => Math.round(x * 10) / 10;
  if (typeof frame.captureLocalMs === 'number') return round(now - frame.captureLocalMs);
  if (typeof frame.captureUs === 'number' && offsetMs !== null) return round(now + offsetMs - frame.captureUs / 1000);
  return null;
}

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
    this.available = availableSources();
    this.#newSession(startSource(this.options.source, this.available));
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
      available: this.available,
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
    this.byteMeter = new ByteRateMeter();
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
      ladder: [...this.machine.ladder],
      usable: [...this.available],
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
      kbps: null,
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
    const preferred = this.machine.preferred === 'camera' ? startSource('auto', this.available) : this.machine.preferred;
    this.#newSession(preferred);
    if (wasRunning) this.start();
    else this.#refresh();
  }

  /**
   * Switches to another source.
   * @param {string} kind see SOURCE_FACTORIES
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
        case 'probe': this.#startProbe(e.source); break;
        case 'stop-probe': this.#stopProbe(); break;
        default: break;
      }
    }
  }

  /** A new source of `kind`, or null when this build cannot make one. */
  #makeSource(kind) {
    const make = SOURCE_FACTORIES[kind];
    return make ? make({ urls: this.urls, clock: this.clock, host: this.host, cameraId: this.cameraId }) : null;
  }

  #openSource(kind) {
    this.#closeSource();
    this.renderer.newGeneration();
    this.byteMeter.reset();
    const src = this.#makeSource(kind);
    if (!src) {
      queueMicrotask(() => this.#dispatch('unsupported', { message: `no ${kind} source in this player` }));
      return;
    }
    this.source = src;
    src.onframe = (frame) => {
      if (this.source !== src) {
        releaseFrame(frame);
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
    // Every WebSocket source (JPEG or WebCodecs) counts unreadable messages; others have none.
    this.badFramesClosed += src.badFrames ?? 0;
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
      case 'unsupported':
        this.#dispatch('unsupported', { message: event.message });
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

  /** Tries `kind` in the background (not drawn); the first frame it receives is success. */
  #startProbe(kind) {
    if (this.probe) return;
    const probe = this.#makeSource(kind);
    if (!probe) {
      queueMicrotask(() => this.#dispatch('probe-unsupported'));
      return;
    }
    this.probe = probe;
    const fail = () => {
      if (this.probe !== probe) return;
      this.#stopProbe();
      this.#dispatch('probe-failure');
    };
    probe.onframe = (frame) => {
      releaseFrame(frame);
      if (this.probe !== probe) return;
      this.#stopProbe();
      this.#dispatch('probe-success');
    };
    probe.onstate = (event) => {
      if (this.probe !== probe) return;
      if (event.type === 'unsupported') {
        this.#stopProbe();
        this.#dispatch('probe-unsupported');
      } else if (event.type === 'close' || event.type === 'fatal') fail();
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
    s.latencyMs = latencyOf(frame, now, this.clock.offsetMs);
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
    s.ladder = [...m.ladder];
    s.fallback = m.fallback;
    s.reconnects = m.reconnects;
    s.failures = m.failures;
    s.nextAttemptAt = m.nextAttemptAt;
    s.stallMs = m.stallMs;
    s.error = m.error;
    s.fpsReceived = Math.round(this.rxMeter.rate(now) * 10) / 10;
    s.fpsDrawn = Math.round(this.drawMeter.rate(now) * 10) / 10;
    const bytes = this.source?.bytes;
    if (typeof bytes === 'number') this.byteMeter.add(now, bytes);
    const bps = this.byteMeter.rate();
    s.kbps = bps === null ? null : Math.round((bps * 8) / 100) / 10;
    s.clockOffsetMs = this.clock.offsetMs === null ? null : Math.round(this.clock.offsetMs * 10) / 10;
    s.rttMs = this.clock.rttMs === null ? null : Math.round(this.clock.rttMs * 10) / 10;
    s.badFrames = this.badFramesClosed + (this.source?.badFrames ?? 0);
    s.rotation = this.renderer.rotation;
    s.mirror = this.renderer.mirror;
    s.cameraId = this.cameraId;
    if (s.lastDrawnAt !== null && now - s.lastDrawnAt > 2000) s.latencyMs = null;
    this.onupdate(s);
  }
}
