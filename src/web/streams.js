// Which stream the page shows and where its URLs are. Pure: no DOM, no fetch, so the rules
// can be tested in Node.
//
// A server runs one or more named streams. The default one answers the root URLs (`/ws`,
// `/stream`, …) and every one answers under `/cam/<name>/`. The page picks its stream from
//   /cam/<name>/             the path (the page is served there too)
//   /?stream=<name>          a query on the root page
//   /                        else the default stream, through the root URLs, so a server with
//                            one stream is used exactly as before streams had names
// and shows every stream as a grid with `?grid` (`?grid=1`; `?grid=0` is off).

/** Names the server accepts: they are part of URLs. */
const NAME_RE = /^[A-Za-z0-9_-]{1,32}$/;
const PATH_RE = /^\/cam\/([A-Za-z0-9_-]{1,32})(?:\/|$)/;

/** Whether `name` is a valid stream name. */
export function isStreamName(name) {
  return typeof name === 'string' && NAME_RE.test(name);
}

/** Whether a query string asks for the grid: `?grid`, `?grid=1|true|yes|on`. */
export function wantsGrid(search) {
  const q = new URLSearchParams(search);
  if (!q.has('grid')) return false;
  const v = q.get('grid').toLowerCase();
  return v === '' || v === '1' || v === 'true' || v === 'yes' || v === 'on';
}

/**
 * The stream a page address names.
 * @param {{pathname: string, search?: string}} loc e.g. `location`
 * @returns {string|null} the name, or null for the default stream (root URLs)
 */
export function streamFromLocation(loc) {
  const m = PATH_RE.exec(loc.pathname ?? '');
  if (m) return m[1];
  if (loc.pathname === '/' || loc.pathname === '') {
    const name = new URLSearchParams(loc.search ?? '').get('stream');
    if (isStreamName(name)) return name;
  }
  return null;
}

/**
 * The URLs of one stream, as paths on the page's server.
 * @param {string|null} name null: the default stream's root URLs
 * @returns {{base: string, page: string, ws: string, stream: string, snapshot: string, state: string, controls: string}}
 */
export function streamUrls(name) {
  if (name !== null && name !== undefined && !isStreamName(name)) {
    throw new RangeError(`invalid stream name ${JSON.stringify(name)}`);
  }
  const base = name ? `/cam/${name}` : '';
  return {
    base,
    page: `${base}/`,
    ws: `${base}/ws`,
    whep: `${base}/whep`,
    stream: `${base}/stream`,
    snapshot: `${base}/snapshot`,
    state: `${base}/state`,
    controls: `${base}/controls`,
  };
}

/**
 * The address for the address bar: `/cam/<name>/` for one stream, `/?grid=1` for the grid,
 * keeping every other query parameter (source, stall, theme, …) and the hash.
 * @param {{stream?: string|null, grid?: boolean, search?: string, hash?: string}} view
 * @returns {string}
 */
export function pageAddress({ stream = null, grid = false, search = '', hash = '' }) {
  const q = new URLSearchParams(search);
  q.delete('stream');
  q.delete('grid');
  if (grid) {
    // First, so the address reads as what it is.
    const rest = q.toString();
    return `/?grid=1${rest ? `&${rest}` : ''}${hash}`;
  }
  const path = stream ? streamUrls(stream).page : '/';
  const rest = q.toString();
  return `${path}${rest ? `?${rest}` : ''}${hash}`;
}

/**
 * @typedef {object} StreamInfo
 * @property {string} name
 * @property {boolean} isDefault
 * @property {number|null} width
 * @property {number|null} height
 * @property {number|null} fps
 * @property {string|null} state   the source's state: streaming, idle, error, stalled, starting
 * @property {string|null} rtsp    the stream's `rtsp://` URL (H.264), null when RTSP is off
 */

/** An `rtsp://` URL the server gave, or null for anything else (no other scheme is linked). */
function rtspUrl(x) {
  return typeof x === 'string' && /^rtsp:\/\/[^\s"<>]+$/.test(x) ? x : null;
}

/**
 * Reads the answer of `GET /streams`, skipping entries it cannot use. The first stream is the
 * default when none says so.
 * @param {unknown} json
 * @returns {StreamInfo[]}
 */
export function parseStreamList(json) {
  const raw = Array.isArray(json?.streams) ? json.streams : [];
  const num = (x) => (typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : null);
  const seen = new Set();
  const list = [];
  for (const s of raw) {
    if (!isStreamName(s?.name) || seen.has(s.name)) continue;
    seen.add(s.name);
    list.push({
      name: s.name,
      isDefault: s.default === true,
      width: num(s.width),
      height: num(s.height),
      fps: num(s.fps),
      state: typeof s.source?.state === 'string' ? s.source.state : null,
      rtsp: rtspUrl(s.urls?.rtsp),
    });
  }
  if (list.length && !list.some((s) => s.isDefault)) list[0].isDefault = true;
  // Exactly one default, even if a server said otherwise.
  let found = false;
  for (const s of list) {
    if (s.isDefault && found) s.isDefault = false;
    if (s.isDefault) found = true;
  }
  return list;
}

/**
 * The name of the stream shown: `requested`, or the default one for null. Null when the list
 * does not know it (an old server without `/streams`, or a name that does not exist).
 * @param {StreamInfo[]} list
 * @param {string|null} requested
 */
export function resolveStream(list, requested) {
  if (requested === null || requested === undefined) return list.find((s) => s.isDefault)?.name ?? null;
  return list.some((s) => s.name === requested) ? requested : null;
}

/**
 * A tile's badge from its player's stats: what a glance at the grid needs.
 * @param {{state: string, noSignal?: boolean}} stats see player.js
 * @returns {{kind: "live"|"no-signal"|"connecting"|"reconnecting"|"paused"|"error", label: string}}
 */
export function tileBadge(stats) {
  switch (stats.state) {
    case 'live':
    case 'fallback':
      return stats.noSignal ? { kind: 'no-signal', label: 'No signal' } : { kind: 'live', label: 'Live' };
    case 'connecting':
      return { kind: 'connecting', label: 'Connecting' };
    case 'reconnecting':
    case 'stalled':
      return { kind: 'reconnecting', label: 'Reconnecting' };
    case 'paused':
    case 'hidden':
      return { kind: 'paused', label: 'Paused' };
    default:
      return { kind: 'error', label: 'Error' };
  }
}
