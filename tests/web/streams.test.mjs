// Which stream a page address names, the URLs that follow from it, the address bar after a
// switch, the /streams answer and the tiles' badges (src/web/streams.js).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  isStreamName, wantsGrid, streamFromLocation, streamUrls, pageAddress, parseStreamList,
  resolveStream, tileBadge,
} from '../../src/web/streams.js';

test('stream names are what the server accepts', () => {
  for (const ok of ['a', 'printer', 'Cam_2', 'x-y', 'a'.repeat(32)]) assert.equal(isStreamName(ok), true, ok);
  for (const bad of ['', 'a'.repeat(33), 'a b', 'a/b', '..', 'é', 'a?b', null, undefined, 3]) {
    assert.equal(isStreamName(bad), false, String(bad));
  }
});

test('the stream comes from /cam/<name>/, else ?stream= on /, else the default', () => {
  assert.equal(streamFromLocation({ pathname: '/cam/printer/', search: '' }), 'printer');
  assert.equal(streamFromLocation({ pathname: '/cam/printer', search: '' }), 'printer');
  assert.equal(streamFromLocation({ pathname: '/cam/b/', search: '?stream=a' }), 'b', 'the path wins');
  assert.equal(streamFromLocation({ pathname: '/', search: '?stream=b&source=ws' }), 'b');
  assert.equal(streamFromLocation({ pathname: '/', search: '' }), null);
  assert.equal(streamFromLocation({ pathname: '/', search: '?stream=' }), null);
  assert.equal(streamFromLocation({ pathname: '/', search: '?stream=no%20way' }), null);
  assert.equal(streamFromLocation({ pathname: '/cam/', search: '' }), null);
  assert.equal(streamFromLocation({ pathname: '/cam/a%2Fb/', search: '' }), null);
  assert.equal(streamFromLocation({ pathname: '/other', search: '?stream=b' }), null);
});

test('?grid turns the grid on, ?grid=0 does not', () => {
  assert.equal(wantsGrid('?grid'), true);
  assert.equal(wantsGrid('?grid=1'), true);
  assert.equal(wantsGrid('?source=ws&grid=true'), true);
  assert.equal(wantsGrid('?grid=0'), false);
  assert.equal(wantsGrid('?grid=false'), false);
  assert.equal(wantsGrid(''), false);
  assert.equal(wantsGrid('?gridx=1'), false);
});

test('every URL of a stream is under its base; the default stream keeps the root URLs', () => {
  assert.deepEqual(streamUrls(null), {
    base: '', page: '/', ws: '/ws', whep: '/whep', stream: '/stream', snapshot: '/snapshot', state: '/state', controls: '/controls',
  });
  assert.deepEqual(streamUrls('b'), {
    base: '/cam/b',
    page: '/cam/b/',
    ws: '/cam/b/ws',
    whep: '/cam/b/whep',
    stream: '/cam/b/stream',
    snapshot: '/cam/b/snapshot',
    state: '/cam/b/state',
    controls: '/cam/b/controls',
  });
  assert.throws(() => streamUrls('../x'), RangeError);
});

test('the address bar shows /cam/<name>/ or /?grid=1 and keeps the other parameters', () => {
  assert.equal(pageAddress({ stream: 'b' }), '/cam/b/');
  assert.equal(pageAddress({ stream: 'b', search: '?stream=a&source=ws&stall=2000' }), '/cam/b/?source=ws&stall=2000');
  assert.equal(pageAddress({ stream: 'b', search: '?grid=1&theme=dark', hash: '#x' }), '/cam/b/?theme=dark#x');
  assert.equal(pageAddress({ grid: true, search: '?stream=a&theme=dark' }), '/?grid=1&theme=dark');
  assert.equal(pageAddress({ grid: true, search: '?grid' }), '/?grid=1');
  assert.equal(pageAddress({ stream: null, search: '?stream=a' }), '/');
});

test('the /streams answer is read defensively', () => {
  const json = {
    streams: [
      { name: 'a', default: true, width: 320, height: 240, fps: 15, source: { kind: 'test', state: 'idle' } },
      {
        name: 'b', default: false, width: 160, height: 120, fps: 15, source: { kind: 'test', state: 'streaming' },
        urls: { rtsp: 'rtsp://10.0.0.5:8554/b' },
      },
      { name: 'c', urls: { rtsp: 'javascript:alert(1)' } },
      { name: 'd', urls: { rtsp: 'rtsp://h/d" onclick="x' } },
      { name: 'bad name', default: false },
      { name: 'b', default: false },
      null,
    ],
  };
  const list = parseStreamList(json);
  assert.deepEqual(list.map((s) => s.name), ['a', 'b', 'c', 'd']);
  assert.deepEqual(list[1], {
    name: 'b', isDefault: false, width: 160, height: 120, fps: 15, state: 'streaming', rtsp: 'rtsp://10.0.0.5:8554/b',
  });
  assert.equal(list[0].rtsp, null, 'RTSP off: no URL');
  assert.equal(list[2].rtsp, null, 'only rtsp:// URLs are linked');
  assert.equal(list[3].rtsp, null, 'no quotes or spaces');
  assert.deepEqual(parseStreamList(null), []);
  assert.deepEqual(parseStreamList({ streams: 'x' }), []);
  // No default named: the first one is (the server's rule); two named: the first of them.
  assert.deepEqual(parseStreamList({ streams: [{ name: 'x' }, { name: 'y' }] }).map((s) => s.isDefault), [true, false]);
  assert.deepEqual(
    parseStreamList({ streams: [{ name: 'x' }, { name: 'y', default: true }, { name: 'z', default: true }] }).map((s) => s.isDefault),
    [false, true, false]);
  assert.equal(parseStreamList({ streams: [{ name: 'x', width: -3, height: 'big' }] })[0].width, null);
});

test('the stream shown: the one asked for if it exists, the default for none', () => {
  const list = parseStreamList({ streams: [{ name: 'a', default: true }, { name: 'b' }] });
  assert.equal(resolveStream(list, null), 'a');
  assert.equal(resolveStream(list, 'b'), 'b');
  assert.equal(resolveStream(list, 'zzz'), null);
  assert.equal(resolveStream([], null), null);
});

test('a tile badge says live, no signal or reconnecting', () => {
  assert.equal(tileBadge({ state: 'live', noSignal: false }).kind, 'live');
  assert.equal(tileBadge({ state: 'live', noSignal: true }).kind, 'no-signal');
  assert.equal(tileBadge({ state: 'live', noSignal: true }).label, 'No signal');
  assert.equal(tileBadge({ state: 'fallback', noSignal: false }).kind, 'live');
  assert.equal(tileBadge({ state: 'reconnecting' }).kind, 'reconnecting');
  assert.equal(tileBadge({ state: 'stalled' }).kind, 'reconnecting');
  assert.equal(tileBadge({ state: 'connecting' }).kind, 'connecting');
  assert.equal(tileBadge({ state: 'hidden' }).kind, 'paused');
  assert.equal(tileBadge({ state: 'error' }).kind, 'error');
});
