// Player options from the page's query string. Pure: pass `location.search`.
//
//   ?source=webcodecs|webrtc|ws|mjpeg|camera
//                             start with this source (default auto: the best this browser
//                             can use, see browserSources; lower rungs stay as fallbacks)
//   ?stall=<ms>               stall timeout (default max(4 frame intervals, 2 s))
//   ?hiddenGrace=<ms>         how long a hidden page keeps its source open (default 10 s)
//   ?probe=<ms>               how often a fallback tries the best source again (default 10 s)
//   ?camera=<deviceId>        local camera to open with source=camera
//   ?rotate=0|90|180|270      rotation (else the stored one)
//   ?mirror=0|1               mirror (else the stored one)
//   ?theme=dark|light         theme for this visit (else the stored one, else the system's)
//   ?hud=0                    hide the state/fps overlay

/**
 * @typedef {object} PlayerOptions
 * @property {"auto"|"webcodecs"|"webrtc"|"ws"|"mjpeg"|"camera"} source
 * @property {number|null} stallMs
 * @property {number} hiddenGraceMs
 * @property {number} probeIntervalMs
 * @property {string|null} cameraId
 * @property {number|null} rotation
 * @property {boolean|null} mirror
 * @property {"dark"|"light"|null} theme
 * @property {boolean} hud
 */

/** What `?source=` accepts. */
const PICKABLE = Object.freeze(['webcodecs', 'webrtc', 'ws', 'mjpeg', 'camera']);

/**
 * The server's paths this browser can use, best first (player-state.js LADDER):
 * - webcodecs: VideoDecoder exists only in a secure context (https, http://localhost or
 *   127.0.0.1); the source still checks that the stream offers H.264 and the decoder takes it;
 * - webrtc: RTCPeerConnection, in every current browser, on plain http too;
 * - ws and mjpeg: always.
 * @param {{isSecureContext?: boolean, VideoDecoder?: unknown, RTCPeerConnection?: unknown}} [win]
 * @returns {string[]}
 */
export function browserSources(win = globalThis) {
  const out = [];
  if (win.isSecureContext === true && typeof win.VideoDecoder === 'function') out.push('webcodecs');
  if (typeof win.RTCPeerConnection === 'function') out.push('webrtc');
  out.push('ws', 'mjpeg');
  return out;
}

/**
 * The source to start with: the one asked for, or for `auto` the best the browser can use.
 * @param {PlayerOptions["source"]} source
 * @param {readonly string[]} available from browserSources
 */
export function startSource(source, available) {
  return source === 'auto' ? available[0] : source;
}

/** Defaults of the options that have one. */
export const DEFAULT_OPTIONS = Object.freeze({
  source: 'auto',
  stallMs: null,
  hiddenGraceMs: 10_000,
  probeIntervalMs: 10_000,
  cameraId: null,
  rotation: null,
  mirror: null,
  theme: null,
  hud: true,
});

function ms(value, min, max) {
  if (value === null || value.trim() === '') return null;
  const n = Number(value);
  if (!Number.isFinite(n)) return null;
  return Math.min(Math.max(Math.round(n), min), max);
}

/**
 * Reads the options from a query string; unknown or invalid values fall back to defaults.
 * @param {string} search e.g. `location.search`
 * @returns {PlayerOptions}
 */
export function parseOptions(search) {
  const q = new URLSearchParams(search);
  const o = { ...DEFAULT_OPTIONS };
  const source = q.get('source');
  if (PICKABLE.includes(source)) o.source = source;
  o.stallMs = ms(q.get('stall'), 100, 600_000);
  o.hiddenGraceMs = ms(q.get('hiddenGrace'), 0, 3_600_000) ?? DEFAULT_OPTIONS.hiddenGraceMs;
  o.probeIntervalMs = ms(q.get('probe'), 100, 3_600_000) ?? DEFAULT_OPTIONS.probeIntervalMs;
  o.cameraId = q.get('camera') || null;
  const rotate = Number(q.get('rotate'));
  if (q.has('rotate') && [0, 90, 180, 270].includes(rotate)) o.rotation = rotate;
  const mirror = q.get('mirror');
  if (mirror === '1' || mirror === 'true') o.mirror = true;
  if (mirror === '0' || mirror === 'false') o.mirror = false;
  const theme = q.get('theme');
  if (theme === 'dark' || theme === 'light') o.theme = theme;
  o.hud = q.get('hud') !== '0';
  return o;
}

/**
 * The stall timeout: the `?stall=` override, else max(4 frame intervals, 2 s).
 * @param {number|null} override ms
 * @param {number|null|undefined} fps frames per second of the source, if known
 * @returns {number} ms
 */
export function stallTimeout(override, fps) {
  if (override !== null && override !== undefined) return override;
  const interval = fps > 0 ? 1000 / fps : 0;
  return Math.max(4 * interval, 2000);
}
