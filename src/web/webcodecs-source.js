// The WebCodecs source: the same `/ws` as ws-source.js (which it extends: socket, pings,
// clock offset, hello), but after the hello it asks for H.264 (`{"type":"video","codec":
// "h264"}`) and decodes the access units (frame header type 2, Annex B, SPS and PPS in front
// of every keyframe) with a VideoDecoder. Implements the Source interface documented in
// player.js, with kind "webcodecs"; its frames carry `videoFrame` instead of `jpeg`/`bitmap`.
//
// - Before asking, it checks that this browser can decode the stream: VideoDecoder exists,
//   the page is a secure context (browsers offer WebCodecs only there: https, localhost,
//   127.0.0.1), the hello offers "h264", and VideoDecoder.isConfigSupported() accepts the
//   hello's codec string. If not, it reports `{type: "unsupported", reason:
//   "webcodecs-unsupported", message}` and closes: reconnecting cannot help, so the player
//   drops this rung of its ladder and takes the next kind of source.
// - The decoder is configured from the first keyframe's own SPS (the codec string the hello
//   named is only a promise: a camera passed through may differ) and again whenever a
//   keyframe brings another SPS or size. Nothing is decoded before the first keyframe.
// - Bounded: a VideoDecoder queues chunks without limit. When more than
//   `maxDecodeQueue` (3, ~0.1 s at 30 fps) wait in it, a slow device is falling behind, so
//   chunks are dropped until the next keyframe (the server's own rule for a slow socket),
//   and the server is asked for one (`{"type":"keyframe"}`), so the picture does not wait
//   up to a GOP (2 s) for the next regular keyframe.
// - Every VideoFrame goes to onframe, whose receiver must close() it; frames the decoder
//   hands out after stop() are closed here. Each chunk's timestamp is its capture time (µs),
//   so the decoded frame is matched back to its seq and capture time (latency overlay).
// - A decoder error closes the source with the reason; the player reconnects.

import { FLAG_NO_SIGNAL, TYPE_H264 } from './frame-header.js';
import { WsSource } from './ws-source.js';

/** Chunks waiting in the decoder beyond which the rest of the GOP is dropped. */
export const MAX_DECODE_QUEUE = 3;
/** Frames whose metadata is kept while decoding: far above the queue bound, a safety net. */
const MAX_PENDING = 64;

/**
 * The NAL units of an Annex B access unit (start codes `00 00 01` / `00 00 00 01` removed).
 * @param {Uint8Array} au
 * @returns {Uint8Array[]}
 */
export function nalUnits(au) {
  const starts = [];
  for (let i = 0; i + 2 < au.length; i++) {
    if (au[i] === 0 && au[i + 1] === 0 && au[i + 2] === 1) {
      starts.push(i + 3);
      i += 2;
    }
  }
  return starts.map((s, k) => {
    let end = k + 1 < starts.length ? starts[k + 1] - 3 : au.length;
    // A four-byte start code leaves a zero behind the previous unit.
    while (k + 1 < starts.length && end > s && au[end - 1] === 0) end -= 1;
    return au.subarray(s, end);
  }).filter((n) => n.length > 0);
}

/**
 * The codec string (`avc1.PPCCLL`) of an SPS NAL unit: profile_idc, constraint flags and
 * level_idc in hex, as src/wire.rs's avc1_codec makes it. null if it is not an SPS.
 * @param {Uint8Array} sps
 * @returns {string|null}
 */
export function codecFromSps(sps) {
  if (sps.length < 4 || (sps[0] & 0x1f) !== 7) return null;
  const hex = (b) => b.toString(16).toUpperCase().padStart(2, '0');
  return `avc1.${hex(sps[1])}${hex(sps[2])}${hex(sps[3])}`;
}

/**
 * The codec string of the SPS inside an access unit, or null when it carries none.
 * @param {Uint8Array} au Annex B
 */
export function codecOfUnit(au) {
  for (const nal of nalUnits(au)) {
    const codec = codecFromSps(nal);
    if (codec) return codec;
  }
  return null;
}

/**
 * Why this browser cannot take the WebCodecs path, or null if it may (the decoder's own
 * answer, isConfigSupported, is asked afterwards).
 * @param {{hello: any, hasDecoder: boolean, secure: boolean}} env
 * @returns {string|null}
 */
export function unsupportedReason({ hello, hasDecoder, secure }) {
  if (!secure) return 'WebCodecs needs a secure context (HTTPS, or http://localhost)';
  if (!hasDecoder) return 'this browser has no WebCodecs VideoDecoder';
  if (!Array.isArray(hello?.types) || !hello.types.includes('h264')) {
    return 'the server does not offer H.264 on its WebSocket';
  }
  if (typeof hello.h264_codec !== 'string' || !/^avc1\.[0-9A-Fa-f]{6}$/.test(hello.h264_codec)) {
    return 'the server named no H.264 codec string';
  }
  return null;
}

/**
 * Which H.264 units go to the decoder: nothing before a keyframe, and when the decoder's
 * queue is longer than `maxQueue`, nothing until the next keyframe. Pure: feed it each unit
 * with the decoder's queue size; it says "decode" or "drop".
 */
export class ChunkGate {
  /** @param {number} [maxQueue] */
  constructor(maxQueue = MAX_DECODE_QUEUE) {
    this.maxQueue = maxQueue;
    this.waitingForKey = true;
    this.dropped = 0;
  }

  /**
   * @param {boolean} keyframe
   * @param {number} queueSize the decoder's decodeQueueSize now
   * @returns {"decode"|"drop"}
   */
  offer(keyframe, queueSize) {
    if (queueSize > this.maxQueue) {
      // Decoding this or anything after it until a keyframe would only make the queue longer.
      this.waitingForKey = true;
      this.dropped += 1;
      return 'drop';
    }
    if (keyframe) this.waitingForKey = false;
    if (this.waitingForKey) {
      this.dropped += 1;
      return 'drop';
    }
    return 'decode';
  }

  /** Start over: wait for a keyframe (after a decoder reset or reconfiguration failure). */
  reset() {
    this.waitingForKey = true;
  }
}

export class WebCodecsSource extends WsSource {
  /**
   * @param {object} [opts] those of WsSource, and:
   * @param {typeof VideoDecoder} [opts.VideoDecoderImpl] defaults to the browser's
   * @param {typeof EncodedVideoChunk} [opts.EncodedVideoChunkImpl] defaults to the browser's
   * @param {boolean} [opts.secure] defaults to globalThis.isSecureContext
   * @param {number} [opts.maxDecodeQueue=3]
   */
  constructor(opts = {}) {
    super(opts);
    this.kind = 'webcodecs';
    this.VideoDecoderImpl = opts.VideoDecoderImpl ?? globalThis.VideoDecoder;
    this.EncodedVideoChunkImpl = opts.EncodedVideoChunkImpl ?? globalThis.EncodedVideoChunk;
    this.secure = opts.secure ?? globalThis.isSecureContext === true;
    this.gate = new ChunkGate(opts.maxDecodeQueue ?? MAX_DECODE_QUEUE);
    /** @type {VideoDecoder|null} */
    this.decoder = null;
    /** The codec and size the decoder is configured for, as one key. */
    this.configured = null;
    /** Capture time (chunk timestamp, µs) → the header fields of that unit. */
    this.pending = new Map();
    /** "hello" → "checking" → "requested" → "h264"; "unsupported" when it cannot work. */
    this.phase = 'hello';
    this.counts = { units: 0, bytes: 0, decoded: 0, dropped: 0, jpegSkipped: 0, keyframeRequests: 0 };
  }

  /** Counters: units and bytes received, frames decoded, units or frames dropped. */
  get stats() {
    return { ...this.counts, dropped: this.counts.dropped + this.gate.dropped, queue: this.decoder?.decodeQueueSize ?? 0 };
  }

  stop() {
    super.stop();
    this.#closeDecoder();
  }

  handleControl(msg) {
    super.handleControl(msg);
    if (msg?.type === 'hello' && this.phase === 'hello') {
      this.phase = 'checking';
      this.#check(msg);
    } else if (msg?.type === 'video' && msg.codec === 'h264' && this.phase === 'requested') {
      this.phase = 'h264';
    }
  }

  async #check(hello) {
    const hasDecoder = typeof this.VideoDecoderImpl === 'function';
    const why = unsupportedReason({ hello, hasDecoder, secure: this.secure });
    if (why) {
      this.#unsupported(why);
      return;
    }
    let support;
    try {
      support = await this.VideoDecoderImpl.isConfigSupported({ codec: hello.h264_codec, optimizeForLatency: true });
    } catch (error) {
      support = { supported: false, error };
    }
    if (this.stopped || !this.ws) return;
    if (!support?.supported) {
      this.#unsupported(`this browser cannot decode ${hello.h264_codec}`);
      return;
    }
    this.phase = 'requested';
    this.send({ type: 'video', codec: 'h264' });
  }

  #unsupported(message) {
    this.phase = 'unsupported';
    this.fail({ type: 'unsupported', reason: 'webcodecs-unsupported', message });
  }

  handleFrame(header, payload) {
    if (header.type !== TYPE_H264) {
      // JPEGs sent before the server read the request (or a later server's other types).
      this.counts.jpegSkipped += 1;
      return;
    }
    this.counts.units += 1;
    this.counts.bytes += payload.byteLength;
    if (header.keyframe && !this.#configure(header, payload)) return;
    if (!this.decoder) {
      // Nothing can be decoded before the first keyframe.
      this.counts.dropped += 1;
      return;
    }
    const wasDecoding = !this.gate.waitingForKey;
    if (this.gate.offer(header.keyframe, this.decoder.decodeQueueSize) === 'drop') {
      if (wasDecoding) {
        this.counts.keyframeRequests += 1;
        this.send({ type: 'keyframe' });
      }
      return;
    }
    const timestamp = header.captureUs;
    if (this.pending.size >= MAX_PENDING) this.pending.clear();
    this.pending.set(timestamp, {
      seq: header.seq,
      captureUs: header.captureUs,
      noSignal: (header.flags & FLAG_NO_SIGNAL) !== 0,
    });
    try {
      // The payload is a view into the message; the chunk copies it.
      this.decoder.decode(new this.EncodedVideoChunkImpl({ type: header.keyframe ? 'key' : 'delta', timestamp, data: payload }));
    } catch (error) {
      this.#decoderFailed(error);
    }
  }

  /** Makes the decoder fit this keyframe (codec from its SPS, and size); false on failure. */
  #configure(header, payload) {
    const codec = codecOfUnit(payload) ?? this.hello?.h264_codec;
    const key = `${codec} ${header.width}x${header.height}`;
    if (this.decoder && this.configured === key) return true;
    try {
      if (!this.decoder) {
        this.decoder = new this.VideoDecoderImpl({
          output: (frame) => this.#output(frame),
          error: (error) => this.#decoderFailed(error),
        });
      }
      // No `description`: Annex B with SPS and PPS in band.
      this.decoder.configure({ codec, codedWidth: header.width, codedHeight: header.height, optimizeForLatency: true });
      this.configured = key;
      return true;
    } catch (error) {
      this.#decoderFailed(error);
      return false;
    }
  }

  #output(frame) {
    const meta = this.pending.get(frame.timestamp);
    if (this.stopped || !meta) {
      frame.close();
      this.counts.dropped += 1;
      return;
    }
    // Frames come out in order: whatever was queued before this one is not coming.
    for (const t of this.pending.keys()) {
      this.pending.delete(t);
      if (t === frame.timestamp) break;
    }
    this.counts.decoded += 1;
    this.onframe({
      videoFrame: frame,
      seq: meta.seq,
      captureUs: meta.captureUs,
      width: frame.displayWidth,
      height: frame.displayHeight,
      noSignal: meta.noSignal,
    });
  }

  #decoderFailed(error) {
    if (this.stopped) return;
    this.#closeDecoder();
    this.fail({ type: 'close', reason: `H.264 decoder error: ${error?.message ?? error}` });
  }

  #closeDecoder() {
    const d = this.decoder;
    this.decoder = null;
    this.configured = null;
    this.pending.clear();
    this.gate.reset();
    if (d && d.state !== 'closed') {
      try {
        d.close();
      } catch {
        // Already closed by an error.
      }
    }
  }
}
