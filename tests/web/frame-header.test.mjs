// frame-header.js against hand-built buffers in the layout of src/wire.rs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseFrameHeader, parseFrame, FrameHeaderError, HEADER_LEN, VERSION, TYPE_JPEG, TYPE_H264,
  FLAG_NO_SIGNAL, FLAG_KEYFRAME,
} from '../../src/web/frame-header.js';

/** A message: header fields written one by one with DataView, then `payload`. */
function message({
  version = 1, type = 1, flags = 0, headerLen = 32, reserved = 0, seq = 0n, captureUs = 0n,
  width = 0, height = 0, payload = [0xff, 0xd8, 0xff, 0xd9],
} = {}) {
  const buf = new ArrayBuffer(headerLen + payload.length);
  const v = new DataView(buf);
  v.setUint8(0, version);
  v.setUint8(1, type);
  v.setUint16(2, flags, true);
  v.setUint16(4, headerLen, true);
  v.setUint16(6, reserved, true);
  v.setBigUint64(8, seq, true);
  v.setBigUint64(16, captureUs, true);
  v.setUint32(24, width, true);
  v.setUint32(28, height, true);
  new Uint8Array(buf, headerLen).set(payload);
  return buf;
}

test('constants match src/wire.rs', () => {
  assert.equal(HEADER_LEN, 32);
  assert.equal(VERSION, 1);
  assert.equal(TYPE_JPEG, 1);
  assert.equal(FLAG_NO_SIGNAL, 1);
  assert.equal(TYPE_H264, 2);
  assert.equal(FLAG_KEYFRAME, 2);
});

test('parses the exact byte layout of the Rust round-trip test', () => {
  // Same values as src/wire.rs round_trip_and_exact_bytes, bytes spelled out by hand.
  const bytes = new Uint8Array(34);
  bytes.set([1, 1, 1, 0, 32, 0, 0, 0], 0); // version, type, flags=1, header len=32, reserved
  bytes.set([8, 7, 6, 5, 4, 3, 2, 1], 8); // seq 0x0102030405060708
  new DataView(bytes.buffer).setBigUint64(16, 1_700_000_000_000_001n, true);
  bytes.set([0x00, 0x05, 0, 0], 24); // width 1280
  bytes.set([0xd0, 0x02, 0, 0], 28); // height 720
  bytes.set([0xff, 0xd8], 32);
  const h = parseFrameHeader(bytes.buffer);
  assert.deepEqual(h, {
    version: 1,
    type: 1,
    flags: 1,
    noSignal: true,
    keyframe: false,
    headerLen: 32,
    seq: 0x0102030405060708,
    captureUs: 1_700_000_000_000_001,
    width: 1280,
    height: 720,
  });
  const { payload } = parseFrame(bytes.buffer);
  assert.deepEqual([...payload], [0xff, 0xd8]);
});

test('parses the exact byte layout of the Rust H.264 test', () => {
  // Same values as src/wire.rs an_h264_header_has_its_type_and_keyframe_bit.
  const bytes = new Uint8Array(37);
  bytes.set([1, 2, 2, 0, 32, 0, 0, 0], 0); // version, type 2, flags=keyframe, header len=32
  bytes.set([9, 0, 0, 0, 0, 0, 0, 0], 8); // seq 9
  new DataView(bytes.buffer).setBigUint64(16, 1_700_000_000_000_000n, true);
  bytes.set([0x80, 0x02, 0, 0], 24); // width 640
  bytes.set([0x68, 0x01, 0, 0], 28); // height 360
  bytes.set([0, 0, 0, 1, 0x67], 32);
  const { header, payload } = parseFrame(bytes.buffer);
  assert.deepEqual(header, {
    version: 1,
    type: TYPE_H264,
    flags: 2,
    noSignal: false,
    keyframe: true,
    headerLen: 32,
    seq: 9,
    captureUs: 1_700_000_000_000_000,
    width: 640,
    height: 360,
  });
  assert.deepEqual([...payload], [0, 0, 0, 1, 0x67]);
});

test('the keyframe flag is bit 1 only', () => {
  assert.equal(parseFrameHeader(message({ type: 2, flags: 0 })).keyframe, false);
  assert.equal(parseFrameHeader(message({ type: 2, flags: 0b01 })).keyframe, false);
  assert.equal(parseFrameHeader(message({ type: 2, flags: 0b10 })).keyframe, true);
  assert.equal(parseFrameHeader(message({ type: 2, flags: 0b11 })).noSignal, true);
});

test('u64 fields are read as little-endian and converted to Number', () => {
  const h = parseFrameHeader(message({ seq: 42n, captureUs: 1_732_000_000_123_456n }));
  assert.equal(h.seq, 42);
  assert.equal(typeof h.seq, 'number');
  assert.equal(h.captureUs, 1_732_000_000_123_456);
  assert.equal(typeof h.captureUs, 'number');
});

test('the no-signal flag is bit 0 only', () => {
  assert.equal(parseFrameHeader(message({ flags: 0 })).noSignal, false);
  assert.equal(parseFrameHeader(message({ flags: 0b10 })).noSignal, false);
  assert.equal(parseFrameHeader(message({ flags: 0b11 })).noSignal, true);
});

test('the payload starts at the header length, not at 32', () => {
  const buf = message({ headerLen: 40, payload: [0xff, 0xd8, 0xaa] });
  const { header, payload } = parseFrame(buf);
  assert.equal(header.headerLen, 40);
  assert.deepEqual([...payload], [0xff, 0xd8, 0xaa]);
});

test('accepts typed-array views with an offset, without copying', () => {
  const inner = new Uint8Array(message({ seq: 7n, payload: [1, 2, 3] }));
  const outer = new Uint8Array(inner.length + 5);
  outer.set(inner, 5);
  const view = outer.subarray(5);
  const { header, payload } = parseFrame(view);
  assert.equal(header.seq, 7);
  assert.deepEqual([...payload], [1, 2, 3]);
  assert.equal(payload.buffer, outer.buffer);
});

test('rejects short messages', () => {
  for (const n of [0, 5, 31]) {
    assert.throws(() => parseFrameHeader(new ArrayBuffer(n)), (e) => {
      assert.ok(e instanceof FrameHeaderError);
      assert.equal(e.kind, 'short');
      assert.match(e.message, new RegExp(`${n} bytes`));
      return true;
    });
  }
});

test('rejects unknown versions', () => {
  for (const version of [0, 2, 9, 255]) {
    assert.throws(() => parseFrameHeader(message({ version })), (e) => {
      assert.equal(e.kind, 'version');
      assert.match(e.message, new RegExp(`version ${version}`));
      return true;
    });
  }
});

test('rejects header lengths below 32 or beyond the message', () => {
  const small = new Uint8Array(message());
  new DataView(small.buffer).setUint16(4, 31, true);
  assert.throws(() => parseFrameHeader(small), { kind: 'header-len' });
  const big = new Uint8Array(message({ payload: [] }));
  new DataView(big.buffer).setUint16(4, 200, true);
  assert.throws(() => parseFrameHeader(big), { kind: 'header-len' });
  // Exactly the message length: a header with an empty payload is fine.
  new DataView(big.buffer).setUint16(4, 32, true);
  assert.equal(parseFrame(big).payload.length, 0);
});

test('other frame types parse (the reader decides to skip them)', () => {
  assert.equal(parseFrameHeader(message({ type: 7 })).type, 7);
});

test('rejects things that are not binary', () => {
  assert.throws(() => parseFrameHeader('hello'), TypeError);
});
