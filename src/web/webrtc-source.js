// The WebRTC source: WHEP (RFC 9725) against picamd's `/whep`, the H.264 track played into a
// hidden <video> and each new frame copied to the canvas (video-frames.js), so the same
// renderer, controls and recovery apply as for every other source. Implements the Source
// interface documented in player.js.
//
// The handshake is one POST: the offer goes out once ICE gathering is complete (host
// candidates gather in a few ms; `gatherTimeoutMs` bounds it when a STUN server is slow), the
// answer carries all of picamd's candidates, so no trickle (PATCH) is needed. stop() DELETEs
// the session so picamd frees it at once instead of waiting for ICE consent to expire.
//
// Why a source fails, and what the player makes of it:
//   no RTCPeerConnection, 404/405/501 (WebRTC not served), 400/406/415/422 (the offer was
//   refused, e.g. no H.264)                     -> {type:'unsupported'}: the rung is dropped
//   503 (too many sessions), a network error, ICE failed, the track ended
//                                               -> {type:'close'}: back off, retry, and after
//                                                  repeated failures step down a rung

import { hiddenVideo, removeVideo, VideoFramePump } from './video-frames.js';

/** The RTP header extension that carries each picture's capture time (picamd sends it). */
export const ABS_CAPTURE_TIME = 'http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time';

/** NTP's epoch (1900) is this many ms before the Unix epoch. */
const NTP_UNIX_OFFSET_MS = 2_208_988_800_000;

/**
 * A drawn picture's capture time, ms since the Unix epoch: the newest received packet's
 * capture time (abs-capture-time, via getSynchronizationSources) moved back by the RTP time
 * between that packet and the drawn picture (requestVideoFrameCallback's rtpTimestamp; 90 kHz,
 * and picamd stamps RTP time from capture time, so the two are in step).
 * @param {{captureTimestamp?: number, rtpTimestamp?: number}|undefined} ssrc a synchronization source
 * @param {number|undefined} frameRtp the drawn picture's RTP timestamp
 * @returns {number|null}
 */
export function captureTimeOf(ssrc, frameRtp) {
  if (typeof ssrc?.captureTimestamp !== 'number' || ssrc.captureTimestamp <= 0) return null;
  let ahead = 0;
  if (typeof ssrc.rtpTimestamp === 'number' && typeof frameRtp === 'number') {
    // RTP timestamps are 32-bit and wrap: take the difference modulo 2^32, signed.
    ahead = (ssrc.rtpTimestamp - frameRtp) >>> 0;
    if (ahead >= 2 ** 31) ahead -= 2 ** 32;
    // More than 10 s apart: not the same stream's pictures; use the packet's time as is.
    if (Math.abs(ahead) > 900_000) ahead = 0;
  }
  return ssrc.captureTimestamp - NTP_UNIX_OFFSET_MS - ahead / 90;
}

/** Statuses that mean "this server does not do WebRTC for this page, don't retry". */
const UNSUPPORTED_STATUS = new Set([400, 404, 405, 406, 415, 422, 501]);

/** ICE servers picamd told this page (`/streams`' `webrtc.ice_servers`, or the Link headers of
 * a WHEP answer): connections made after pass them to RTCPeerConnection. A LAN needs none; a
 * viewer reaching the Pi through NAT needs the STUN/TURN servers `webrtc_ice_servers` names.
 * @type {RTCIceServer[]} */
let knownIceServers = [];

/**
 * Remembers the ICE servers picamd advertises, for the connections made after. Entries
 * without a stun:/turn: URL are dropped.
 * @param {unknown} list `RTCIceServer`-shaped objects ({urls, username?, credential?})
 */
export function rememberIceServers(list) {
  if (!Array.isArray(list)) return;
  const ok = (u) => typeof u === 'string' && /^(stun|stuns|turn|turns):/i.test(u);
  knownIceServers = list.flatMap((s) => {
    if (!s || typeof s !== 'object') return [];
    const urls = Array.isArray(s.urls) ? s.urls.filter(ok) : ok(s.urls) ? [s.urls] : [];
    if (!urls.length) return [];
    const out = { urls: urls.length === 1 ? urls[0] : urls };
    if (typeof s.username === 'string') out.username = s.username;
    if (typeof s.credential === 'string') out.credential = s.credential;
    return [out];
  });
}

/** The ICE servers a connection uses: those it was given, else the ones picamd advertised. */
export function iceServersFor(explicit) {
  return explicit ?? knownIceServers;
}

/**
 * ICE servers from RFC 9725 `Link` headers: `<stun:host:3478>; rel="ice-server"`, with
 * `username` and `credential` parameters for TURN.
 * @param {string|null} header the Link header's value (several links comma-separated)
 * @returns {RTCIceServer[]}
 */
export function iceServersFromLinks(header) {
  if (!header) return [];
  const out = [];
  // Commas also appear inside quoted parameters; split only before a `<`.
  for (const link of header.split(/,\s*(?=<)/)) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(link);
    if (!m) continue;
    const params = {};
    // `; name=value` or `; name="quoted; value"`: a regex over the whole rest, so quoted
    // values may hold `;` and `,`.
    for (const kv of m[2].matchAll(/;\s*([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;,]*))/g)) {
      params[kv[1].toLowerCase()] = kv[2] !== undefined ? kv[2].replace(/\\(.)/g, '$1') : kv[3];
    }
    if (params.rel !== 'ice-server' || !/^(stun|stuns|turn|turns):/i.test(m[1])) continue;
    const server = { urls: m[1] };
    if (params.username !== undefined) server.username = params.username;
    if (params.credential !== undefined) server.credential = params.credential;
    out.push(server);
  }
  return out;
}

/**
 * Received video bytes from an RTCStatsReport: the inbound video RTP stream's
 * `bytesReceived` (payload) + `headerBytesReceived`, summed over video streams.
 * @param {Iterable<any>} report `pc.getStats()` values
 * @returns {number|null} null when there is no inbound video stream yet
 */
export function inboundVideoBytes(report) {
  let total = null;
  for (const s of report) {
    if (s.type !== 'inbound-rtp' || (s.kind ?? s.mediaType) !== 'video') continue;
    total = (total ?? 0) + (s.bytesReceived ?? 0) + (s.headerBytesReceived ?? 0);
  }
  return total;
}

export class WebRtcSource {
  /**
   * @param {object} opts
   * @param {string} opts.url the WHEP endpoint (`/whep`, `/cam/<name>/whep`)
   * @param {HTMLElement} [opts.parent] where the hidden <video> lives; default document.body
   * @param {RTCIceServer[]} [opts.iceServers] STUN/TURN for a Pi behind NAT; default: what
   *   picamd advertised (rememberIceServers), none on a LAN
   * @param {number} [opts.gatherTimeoutMs=2000]
   * @param {number} [opts.statsIntervalMs=1000] how often `bytes` is read from getStats
   */
  constructor(opts) {
    this.kind = 'webrtc';
    this.url = opts.url;
    this.parent = opts.parent ?? null;
    this.iceServers = opts.iceServers ?? null;
    this.gatherTimeoutMs = opts.gatherTimeoutMs ?? 2000;
    this.statsIntervalMs = opts.statsIntervalMs ?? 1000;
    this.onframe = () => {};
    this.onstate = () => {};
    /** Video bytes received so far (RTP, from getStats), or null before the first reading. */
    this.bytes = null;
    /** The session's URL (the POST's Location), to DELETE on stop. */
    this.session = null;
    /** ICE servers picamd advertised in this session's Link headers (remembered for the next). */
    this.advertisedIceServers = [];
    this.pc = null;
    /** @type {RTCRtpReceiver|null} */
    this.receiver = null;
    this.video = null;
    this.pump = null;
    this.abort = new AbortController();
    this.statsTimer = 0;
    this.seq = 0;
    this.stopped = false;
  }

  start() {
    if (this.pc || this.stopped) return;
    if (typeof globalThis.RTCPeerConnection !== 'function') {
      queueMicrotask(() => this.#emit({ type: 'unsupported', message: 'This browser has no WebRTC (RTCPeerConnection).' }));
      return;
    }
    this.#open().catch((error) => {
      if (this.stopped) return;
      this.#teardown();
      this.#emit({ type: 'close', reason: `WebRTC: ${error?.message ?? error}` });
    });
  }

  /** Ends the session (DELETE) and releases everything; no callback runs afterwards. */
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.abort.abort();
    const session = this.session;
    this.session = null;
    if (session) {
      // keepalive: the DELETE still goes out when stop() runs as the page unloads.
      fetch(session, { method: 'DELETE', keepalive: true }).catch(() => {});
    }
    this.#teardown();
  }

  /** Same as stop(). */
  close() {
    this.stop();
  }

  async #open() {
    const pc = new RTCPeerConnection({ iceServers: iceServersFor(this.iceServers), bundlePolicy: 'max-bundle' });
    this.pc = pc;
    const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
    // Ask for abs-capture-time, which Chromium does not offer by default: it is how the page
    // learns each picture's capture time (requestVideoFrameCallback gives no captureTime for
    // WebRTC here). Browsers without the API just show no latency figure.
    if (typeof transceiver.setHeaderExtensionsToNegotiate === 'function') {
      try {
        transceiver.setHeaderExtensionsToNegotiate(transceiver.getHeaderExtensionsToNegotiate()
          .map((e) => (e.uri === ABS_CAPTURE_TIME ? { ...e, direction: 'sendrecv' } : e)));
      } catch {
        // An implementation that refuses the change: no latency figure.
      }
    }
    this.receiver = transceiver.receiver;
    pc.ontrack = (e) => this.#attach(e.streams[0] ?? new MediaStream([e.track]));
    pc.onconnectionstatechange = () => {
      if (this.stopped || this.pc !== pc) return;
      // 'disconnected' may heal by itself (a Wi-Fi hiccup); the player's stall watchdog
      // decides when it has lasted too long. 'failed' does not heal without an ICE restart.
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        this.#teardown();
        this.#emit({ type: 'close', reason: `WebRTC connection ${pc.connectionState}` });
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await this.#gathered(pc);
    if (this.stopped) return;
    const resp = await fetch(this.url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
      signal: this.abort.signal,
      cache: 'no-store',
    });
    const body = await resp.text();
    if (this.stopped) return;
    if (resp.status !== 201) {
      this.#teardown();
      const why = `${resp.status} ${body.trim().slice(0, 200)}`.trim();
      if (UNSUPPORTED_STATUS.has(resp.status)) this.#emit({ type: 'unsupported', message: `WebRTC is not available here (${why})` });
      else this.#emit({ type: 'close', reason: `WHEP: ${why}` });
      return;
    }
    const location = resp.headers.get('Location');
    if (location) this.session = new URL(location, new URL(this.url, globalThis.location?.href)).href;
    this.advertisedIceServers = iceServersFromLinks(resp.headers.get('Link'));
    if (this.advertisedIceServers.length) rememberIceServers(this.advertisedIceServers);
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    if (this.stopped) return;
    this.#emit({ type: 'open' });
    this.statsTimer = setInterval(() => this.#readStats(), this.statsIntervalMs);
  }

  /** Resolves once ICE gathering is complete, or after gatherTimeoutMs. */
  #gathered(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === 'complete') done();
      };
      const timer = setTimeout(done, this.gatherTimeoutMs);
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  #attach(stream) {
    if (this.stopped || this.video) return;
    const el = hiddenVideo(stream, this.parent);
    this.video = el;
    for (const track of stream.getVideoTracks()) {
      track.addEventListener('ended', () => {
        if (this.stopped || this.video !== el) return;
        this.#teardown();
        this.#emit({ type: 'close', reason: 'the WebRTC track ended' });
      });
    }
    el.play().catch(() => {
      // Muted inline video may always autoplay; a refusal shows up as a stall.
    });
    this.pump = new VideoFramePump(el, (bitmap, info) => {
      // The capture time in picamd's clock (abs-capture-time), taken as this page's: exact on
      // one machine, as good as the two clocks' agreement (NTP) between two. A browser that
      // reports a captureTime of its own (mapped to this page's clock) is believed first.
      let captureLocalMs = null;
      if (typeof info?.captureTime === 'number' && info.captureTime > 0) {
        captureLocalMs = performance.timeOrigin + info.captureTime;
      } else {
        captureLocalMs = captureTimeOf(this.receiver?.getSynchronizationSources?.()[0], info?.rtpTimestamp);
      }
      this.onframe({
        bitmap,
        seq: ++this.seq,
        captureUs: null,
        captureLocalMs,
        width: bitmap.width,
        height: bitmap.height,
        noSignal: false,
      });
    });
    this.pump.start();
  }

  async #readStats() {
    const pc = this.pc;
    if (!pc || this.stopped) return;
    try {
      const report = await pc.getStats();
      const bytes = inboundVideoBytes(report.values());
      if (bytes !== null && this.pc === pc) this.bytes = bytes;
    } catch {
      // A closing connection; the next reading or the close event tells.
    }
  }

  #emit(event) {
    if (!this.stopped) this.onstate(event);
  }

  #teardown() {
    clearInterval(this.statsTimer);
    this.statsTimer = 0;
    this.pump?.stop();
    this.pump = null;
    const v = this.video;
    this.video = null;
    if (v) removeVideo(v);
    const pc = this.pc;
    this.pc = null;
    this.receiver = null;
    pc?.close();
  }
}
