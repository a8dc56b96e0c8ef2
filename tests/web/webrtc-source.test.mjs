// The WebRTC source's pure parts: RFC 9725 Link headers, getStats byte counts, and the
// latency the player computes from either kind of capture time.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { iceServersFromLinks, inboundVideoBytes } from '../../src/web/webrtc-source.js';
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
