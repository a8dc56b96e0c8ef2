// The WebRTC source's pure parts: RFC 9725 Link headers, getStats byte counts, and the
// latency the player computes from either kind of capture time.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { captureTimeOf, iceServersFromLinks, inboundVideoBytes } from '../../src/web/webrtc-source.js';
import { latencyOf } from '../../src/web/player.js';

test('ICE servers from Link headers (RFC 9725 section 4.6)', () => {
  assert.deepEqual(iceServersFromLinks(null), []);
  assert.deepEqual(
    iceServersFromLinks('<stun:stun.example.net>; rel="ice-server", <turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; credential="p,a;s\\"s"; credential-type="password"'),
    [
      { urls: 'stun:stun.example.net' },
      { urls: 'turn:turn.example.net?transport=udp', username: 'user', credential: 'p,a;s"s' },
    ],
  );
  // Other relations and non-ICE URLs are not ICE servers.
  assert.deepEqual(iceServersFromLinks('</whep/abc>; rel="urn:ietf:params:whep:ext:core:server-sent-events", <https://x/>; rel=ice-server'), []);
  assert.deepEqual(iceServersFromLinks('garbage, <stun:a:3478>;rel=ice-server'), [{ urls: 'stun:a:3478' }]);
});

test('received video bytes from a stats report', () => {
  assert.equal(inboundVideoBytes([]), null);
  assert.equal(inboundVideoBytes([{ type: 'inbound-rtp', kind: 'audio', bytesReceived: 9 }]), null);
  assert.equal(
    inboundVideoBytes([
      { type: 'transport', bytesReceived: 1e9 },
      { type: 'inbound-rtp', kind: 'video', bytesReceived: 1000, headerBytesReceived: 120 },
      { type: 'inbound-rtp', mediaType: 'video', bytesReceived: 5 },
    ]),
    1125,
  );
});

test('latency from a page-clock capture time, or a server-clock one corrected by the offset', () => {
  assert.equal(latencyOf({ captureLocalMs: 1000 }, 1042.26, null), 42.3);
  assert.equal(latencyOf({ captureUs: 2_000_000, captureLocalMs: null }, 1990, 20), 10);
  assert.equal(latencyOf({ captureUs: 2_000_000 }, 1990, null), null, 'no clock offset yet');
  assert.equal(latencyOf({ captureUs: null }, 1990, 5), null);
});

test('a drawn picture\'s capture time from abs-capture-time and the RTP timestamps', () => {
  const ntp = (unixMs) => unixMs + 2_208_988_800_000;
  assert.equal(captureTimeOf(undefined, 0), null);
  assert.equal(captureTimeOf({ captureTimestamp: 0, rtpTimestamp: 5 }, 5), null);
  // The newest packet is 3 frames (at 30 fps: 9000 ticks, 100 ms) ahead of the drawn picture.
  assert.equal(captureTimeOf({ captureTimestamp: ntp(1_000_100), rtpTimestamp: 99_000 }, 90_000), 1_000_000);
  // Across the 32-bit wrap.
  assert.equal(captureTimeOf({ captureTimestamp: ntp(1_000_100), rtpTimestamp: 4_000 }, 2 ** 32 - 5_000), 1_000_000);
  // Without the picture's RTP time, the packet's capture time.
  assert.equal(captureTimeOf({ captureTimestamp: ntp(1_000_100), rtpTimestamp: 4_000 }, undefined), 1_000_100);
  // Implausibly far apart: the packet's time as is.
  assert.equal(captureTimeOf({ captureTimestamp: ntp(5000), rtpTimestamp: 2_000_000 }, 0), 5000);
});

test('ICE servers picamd advertises are used by the connections made after, invalid ones dropped', async () => {
  const { rememberIceServers, iceServersFor } = await import('../../src/web/webrtc-source.js');
  assert.deepEqual(iceServersFor(undefined), [], 'none on a LAN');
  rememberIceServers([
    { urls: 'stun:stun.example.net:3478' },
    { urls: ['turn:turn.example.net?transport=udp', 'http://not-ice'], username: 'u', credential: 'p' },
    { urls: 'https://nope' },
    null,
    'stun:bare-string',
  ]);
  assert.deepEqual(iceServersFor(undefined), [
    { urls: 'stun:stun.example.net:3478' },
    { urls: 'turn:turn.example.net?transport=udp', username: 'u', credential: 'p' },
  ]);
  assert.deepEqual(iceServersFor([{ urls: 'stun:given' }]), [{ urls: 'stun:given' }], 'given ones win');
  rememberIceServers('garbage');
  assert.equal(iceServersFor(undefined).length, 2, 'a malformed list changes nothing');
  rememberIceServers([]);
  assert.deepEqual(iceServersFor(undefined), []);
});
