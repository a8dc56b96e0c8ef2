// The binary header in front of every picture in a `/ws` message: the reader half of
// src/wire.rs, which documents the layout (all integers little-endian):
//
//   offset size field
//        0    1 version, currently 1
//        1    1 type: 1 = JPEG video frame, 2 = H.264 access unit (only after asking for it)
//        2    2 flags: bit 0 = "no signal" placeholder frame, bit 1 = keyframe (H.264: an
//                 IDR with SPS and PPS in front)
//        4    2 header length in bytes (32); the payload starts here
//        6    2 reserved, 0
//        8    8 seq: frame sequence number, strictly increasing
//       16    8 capture time, microseconds since the Unix epoch (UTC)
//       24    4 width in pixels
//       28    4 height in pixels
//       32    … type 1: JPEG bytes; type 2: one access unit, Annex B (00 00 00 01 + NAL …)
//
// A reader skips `header length` bytes instead of assuming 32, so a later version may append
// fields without breaking this player. Pure: no DOM, usable from Node.

/** Length of the version-1 header in bytes. */
export const HEADER_LEN = 32;
/** The header version this reader understands. */
export const VERSION = 1;
/** `type` of a JPEG video frame. */
export const TYPE_JPEG = 1;
/** `type` of an H.264 access unit (Annex B), sent to a client that asked for H.264. */
export const TYPE_H264 = 2;
/** `flags` bit: the frame is a placeholder shown while the source is down. */
export const FLAG_NO_SIGNAL = 1 << 0;
/** `flags` bit: a keyframe (H.264: a decoder can start here); JPEGs leave it clear. */
export const FLAG_KEYFRAME = 1 << 1;

/**
 * Why a message is not a frame this reader understands. `kind` is `"short"`, `"version"`
 * or `"header-len"`, matching the variants of `WireError` in src/wire.rs.
 */
export class FrameHeaderError extends Error {
  /**
   * @param {"short"|"version"|"header-len"} kind
   * @param {string} message
   */
  constructor(kind, message) {
    super(message);
    this.name = 'FrameHeaderError';
    this.kind = kind;
  }
}

/**
 * @typedef {object} FrameHeader
 * @property {number} version   header version (1)
 * @property {number} type      1 = JPEG video frame, 2 = H.264 access unit
 * @property {number} flags     raw flag bits
 * @property {boolean} noSignal flags bit 0
 * @property {boolean} keyframe flags bit 1
 * @property {number} headerLen bytes to skip to reach the payload
 * @property {number} seq       frame sequence number
 * @property {number} captureUs capture time, µs since the Unix epoch
 * @property {number} width     pixels
 * @property {number} height    pixels
 */

/** A u64 as a Number; exact below 2^53 (seq and µs timestamps stay far below that). */
function u64(view, offset) {
  return Number(view.getBigUint64(offset, true));
}

/** A DataView over an ArrayBuffer, a typed array or a DataView, honouring its offset. */
function viewOf(data) {
  if (data instanceof ArrayBuffer) return new DataView(data);
  if (ArrayBuffer.isView(data)) return new DataView(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('frame must be an ArrayBuffer or an ArrayBuffer view');
}

/**
 * Parses the header at the start of a binary `/ws` message.
 * @param {ArrayBuffer|ArrayBufferView} data the whole message
 * @returns {FrameHeader}
 * @throws {FrameHeaderError} when the message is shorter than a header, has a version other
 *   than {@link VERSION}, or a header length below 32 or beyond the message
 */
export function parseFrameHeader(data) {
  const view = viewOf(data);
  const len = view.byteLength;
  if (len < HEADER_LEN) {
    throw new FrameHeaderError('short', `message of ${len} bytes is shorter than a frame header (${HEADER_LEN})`);
  }
  const version = view.getUint8(0);
  if (version !== VERSION) {
    throw new FrameHeaderError('version', `unsupported frame header version ${version} (this player reads version ${VERSION})`);
  }
  const headerLen = view.getUint16(4, true);
  if (headerLen < HEADER_LEN || headerLen > len) {
    throw new FrameHeaderError('header-len', `header length ${headerLen} is invalid for a message of ${len} bytes`);
  }
  const flags = view.getUint16(2, true);
  return {
    version,
    type: view.getUint8(1),
    flags,
    noSignal: (flags & FLAG_NO_SIGNAL) !== 0,
    keyframe: (flags & FLAG_KEYFRAME) !== 0,
    headerLen,
    seq: u64(view, 8),
    captureUs: u64(view, 16),
    width: view.getUint32(24, true),
    height: view.getUint32(28, true),
  };
}

/**
 * Splits a binary `/ws` message into its header and payload (a view, not a copy).
 * @param {ArrayBuffer|ArrayBufferView} data
 * @returns {{header: FrameHeader, payload: Uint8Array}}
 * @throws {FrameHeaderError}
 */
export function parseFrame(data) {
  const header = parseFrameHeader(data);
  const view = viewOf(data);
  const payload = new Uint8Array(view.buffer, view.byteOffset + header.headerLen, view.byteLength - header.headerLen);
  return { header, payload };
}
