// The WebSocket source: `/ws` binary messages are a frame header (frame-header.js) + JPEG;
// text messages are JSON control (hello, pong, error). Implements the Source interface
// documented in player.js. webcodecs-source.js extends it (same socket, pings and clock;
// H.264 instead of JPEG) through handleFrame, handleControl, send and fail.
//
// Pings go out on open and every `pingIntervalMs` (plus two quick ones right after open, so
// the clock offset, hence the latency figure, is known within a fraction of a second); each
// pong becomes a ClockOffset sample.

import { parseFrame, TYPE_JPEG } from './frame-header.js';

/** `ws:` or `wss:` URL of a path on the page's own server. */
export function wsUrl(path = '/ws', loc = globalThis.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}${path}`;
}

export class WsSource {
  /**
   * @param {object} [opts]
   * @param {string} [opts.url] defaults to `/ws` on the page's server
   * @param {import('./clock.js').ClockOffset} [opts.clock] receives the ping samples
   * @param {() => number} [opts.now] local clock, ms since the epoch (same as the player's)
   * @param {number} [opts.pingIntervalMs=2000]
   * @param {typeof WebSocket} [opts.WebSocketImpl]
   */
  constructor(opts = {}) {
    this.kind = 'ws';
    this.url = opts.url ?? wsUrl();
    this.clock = opts.clock ?? null;
    this.now = opts.now ?? (() => Date.now());
    this.pingIntervalMs = opts.pingIntervalMs ?? 2000;
    this.WebSocketImpl = opts.WebSocketImpl ?? globalThis.WebSocket;
    /** @type {(frame: import('./canvas-renderer.js').Frame) => void} */
    this.onframe = () => {};
    /** @type {(event: {type: string, [k: string]: any}) => void} */
    this.onstate = () => {};
    /** The server's hello message, once received. */
    this.hello = null;
    /** Binary messages that were not frames this player reads. */
    this.badFrames = 0;
    /** Bytes of binary messages received (frames), for the player's bit rate. */
    this.bytes = 0;
    this.ws = null;
    this.timers = [];
    this.pingId = 0;
    this.stopped = false;
    this.warned = false;
  }

  /** Opens the socket. Callbacks never run synchronously inside start(). */
  start() {
    if (this.ws || this.stopped) return;
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch (error) {
      queueMicrotask(() => this.#emit({ type: 'close', reason: String(error), error }));
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      this.#emit({ type: 'open' });
      this.#ping();
      this.timers.push(setTimeout(() => this.#ping(), 250), setTimeout(() => this.#ping(), 600));
      this.timers.push(setInterval(() => this.#ping(), this.pingIntervalMs));
    };
    ws.onmessage = (ev) => this.#message(ev.data);
    // `error` is always followed by `close`, which carries the code: report that one only.
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      this.#clearTimers();
      this.ws = null;
      this.#emit({ type: 'close', code: ev.code, reason: ev.reason || `closed (${ev.code})` });
    };
  }

  /** Closes the socket; no callback runs afterwards. */
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.#clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {};
    if (ws.readyState === 0) {
      // Closing a socket that is still connecting makes Chrome log an error; let it open first.
      ws.onopen = () => ws.close(1000);
    } else {
      ws.onopen = null;
      if (ws.readyState === 1) ws.close(1000);
    }
  }

  /** Same as stop(). */
  close() {
    this.stop();
  }

  #emit(event) {
    if (!this.stopped) this.onstate(event);
  }

  #clearTimers() {
    for (const t of this.timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this.timers = [];
  }

  #ping() {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return;
    this.pingId += 1;
    ws.send(JSON.stringify({ type: 'ping', id: this.pingId, t: this.now() }));
  }

  /**
   * Sends a JSON control message; false when the socket is not open.
   * @param {object} msg
   */
  send(msg) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  /**
   * Ends the connection from this side and reports `event` (a `close` with the reason, or a
   * `fatal`): the socket is closed without another callback, as after stop().
   * @param {{type: string, [k: string]: any}} event
   */
  fail(event) {
    if (this.stopped) return;
    this.#clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = () => {};
      ws.onopen = ws.readyState === 0 ? () => ws.close(1000) : null;
      if (ws.readyState === 1) ws.close(1000);
    }
    this.#emit(event);
  }

  #message(data) {
    if (this.stopped) return;
    if (typeof data === 'string') {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      this.handleControl(msg);
      return;
    }
    this.bytes += data.byteLength;
    let parsed;
    try {
      parsed = parseFrame(data);
    } catch (error) {
      this.badFrames += 1;
      if (!this.warned) {
        this.warned = true;
        console.warn(`picamd: ignoring a WebSocket message: ${error.message}`);
      }
      return;
    }
    this.handleFrame(parsed.header, parsed.payload);
  }

  /**
   * One binary message, its header parsed: a JPEG goes to onframe; other types are ignored
   * (kinds of message a later server may add).
   * @param {import('./frame-header.js').FrameHeader} header
   * @param {Uint8Array} payload
   */
  handleFrame(header, payload) {
    if (header.type !== TYPE_JPEG) return;
    this.onframe({
      jpeg: payload,
      seq: header.seq,
      captureUs: header.captureUs,
      width: header.width,
      height: header.height,
      noSignal: header.noSignal,
    });
  }

  /**
   * One JSON control message from the server.
   * @param {any} msg
   */
  handleControl(msg) {
    if (msg?.type === 'hello') {
      this.hello = msg;
      this.#emit({ type: 'info', hello: msg });
    } else if (msg?.type === 'pong') {
      if (this.clock && typeof msg.t === 'number' && typeof msg.server_us === 'number') {
        this.clock.add(msg.t, msg.server_us, this.now());
      }
    } else if (msg?.type === 'error') {
      console.warn(`picamd: server says: ${msg.message}`);
    }
  }

  /** Emits an event unless stopped (for subclasses: private #emit is not inherited). */
  emit(event) {
    this.#emit(event);
  }
}
