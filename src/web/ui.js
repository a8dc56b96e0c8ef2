// The player's UI: the stage (canvas, state and figures overlay, messages), the grid of all
// streams (filled by grid.js) and the toolbar (stream picker, source switch, camera picker,
// pause, rotate, mirror, snapshot, grid, theme, fullscreen).
// formatState() and formatMetrics() are pure; everything else touches the DOM only when
// called.

const THEME_KEY = 'picamd.theme';

// Icons: 24×24, stroked with the current colour.
const svg = (body, extra = '') =>
  `<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"${extra}>${body}</svg>`;
const ICONS = {
  pause: svg('<path d="M8.5 5v14M15.5 5v14" stroke-width="2.6"/>'),
  play: svg('<path d="M8 5.5v13l10.5-6.5z" fill="currentColor"/>'),
  rotate: svg('<path d="M19.5 12a7.5 7.5 0 1 1-2.2-5.3"/><path d="M19.5 4.5v4.2h-4.2"/>'),
  mirror: svg('<path d="M12 3.5v17" stroke-dasharray="2 2.5"/><path d="M9 7.5 4 17h5z"/><path d="M15 7.5 20 17h-5z" fill="currentColor"/>'),
  snapshot: svg('<path d="M4 8.5h3.2L9 6h6l1.8 2.5H20v10H4z"/><circle cx="12" cy="13.3" r="3.2"/>'),
  fullscreen: svg('<path d="M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5"/>'),
  exitFullscreen: svg('<path d="M9 4v5H4M15 4v5h5M9 20v-5H4M15 20v-5h5"/>'),
  moon: svg('<path d="M19.5 14.2A7.8 7.8 0 0 1 9.8 4.5a7.8 7.8 0 1 0 9.7 9.7z"/>'),
  grid: svg('<rect x="4" y="4" width="6.5" height="6.5" rx="1.2"/><rect x="13.5" y="4" width="6.5" height="6.5" rx="1.2"/><rect x="4" y="13.5" width="6.5" height="6.5" rx="1.2"/><rect x="13.5" y="13.5" width="6.5" height="6.5" rx="1.2"/>'),
  sun: svg('<circle cx="12" cy="12" r="4"/><path d="M12 2.5v2M12 19.5v2M2.5 12h2M19.5 12h2M5.3 5.3l1.4 1.4M17.3 17.3l1.4 1.4M5.3 18.7l1.4-1.4M17.3 6.7l1.4-1.4"/>'),
};

const SOURCE_NAMES = { webcodecs: 'H.264', webrtc: 'WebRTC', ws: 'WebSocket', mjpeg: 'MJPEG', camera: 'Camera' };

/**
 * The state line of the overlay, e.g. "Live", "Reconnecting in 3 s", "MJPEG fallback".
 * @param {{state: string, nextAttemptAt?: number|null, noSignal?: boolean}} stats
 * @param {number} now ms, same clock as stats.nextAttemptAt
 * @returns {string}
 */
export function formatState(stats, now) {
  switch (stats.state) {
    case 'connecting': return 'Connecting…';
    case 'live': return stats.noSignal ? 'Live · no signal' : 'Live';
    case 'stalled': return 'Stalled · reopening';
    case 'reconnecting': {
      if (stats.nextAttemptAt === null || stats.nextAttemptAt === undefined) return 'Reconnecting…';
      const s = Math.max(1, Math.ceil((stats.nextAttemptAt - now) / 1000));
      return `Reconnecting in ${s} s`;
    }
    case 'fallback': {
      const name = `${SOURCE_NAMES[stats.source] ?? stats.source} fallback`;
      return stats.noSignal ? `${name} · no signal` : name;
    }
    case 'paused': return 'Paused';
    case 'hidden': return 'Hidden';
    case 'error': return 'Error';
    default: return String(stats.state);
  }
}

/**
 * The figures of the overlay.
 * @param {{fpsReceived: number, fpsDrawn: number, latencyMs: number|null, kbps?: number|null}} stats
 * @returns {{received: string, drawn: string, latency: string, rate: string}}
 */
export function formatMetrics(stats) {
  const fps = (x) => (x > 0 ? (x >= 10 ? x.toFixed(0) : x.toFixed(1)) : '0');
  return {
    received: fps(stats.fpsReceived),
    drawn: fps(stats.fpsDrawn),
    latency: stats.latencyMs === null || stats.latencyMs === undefined ? '–' : String(Math.max(0, Math.round(stats.latencyMs))),
    rate: formatKbps(stats.kbps),
  };
}

/** A bit rate for the overlay: `850 kbit/s`, `9.9 Mbit/s`, or `–` when unknown. */
export function formatKbps(kbps) {
  if (typeof kbps !== 'number' || !Number.isFinite(kbps)) return '–';
  if (kbps >= 1000) return `${(kbps / 1000).toFixed(kbps >= 10_000 ? 0 : 1)} Mbit/s`;
  return `${Math.max(0, Math.round(kbps))} kbit/s`;
}

/** The theme in effect: the stored/forced one, else the system's. */
export function currentTheme() {
  const forced = document.documentElement.dataset.theme;
  if (forced === 'dark' || forced === 'light') return forced;
  return matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark';
}

/** Applies `theme` ("dark", "light", or null = follow the system). */
export function applyTheme(theme) {
  const root = document.documentElement;
  if (theme === 'dark' || theme === 'light') root.dataset.theme = theme;
  else delete root.dataset.theme;
  const meta = document.querySelector('meta[name="theme-color"]');
  if (meta) meta.content = currentTheme() === 'light' ? '#f3f4f7' : '#0d0f13';
}

/** Switches between dark and light and remembers the choice. */
export function toggleTheme() {
  const next = currentTheme() === 'dark' ? 'light' : 'dark';
  try {
    localStorage.setItem(THEME_KEY, next);
  } catch {
    // not stored; applies to this visit
  }
  applyTheme(next);
  return next;
}

function storedTheme() {
  try {
    return localStorage.getItem(THEME_KEY);
  } catch {
    return null;
  }
}

const TEMPLATE = `
<div class="pp-stage">
  <canvas class="pp-canvas" role="img" aria-label="Live camera picture"></canvas>
  <div class="pp-placeholder" aria-hidden="true"><span class="pp-spinner"></span><span class="pp-placeholder-text">Connecting…</span></div>
  <div class="pp-hud">
    <div class="pp-pill pp-state" data-state="connecting" role="status" aria-live="polite">
      <span class="pp-dot"></span><span class="pp-state-text">Connecting…</span><span class="pp-source-tag"></span>
    </div>
    <div class="pp-pill pp-metrics" title="Frames per second received and drawn; capture-to-screen latency; received bit rate">
      <span><b data-metric="received">–</b> fps in</span>
      <span><b data-metric="drawn">–</b> drawn</span>
      <span><b data-metric="latency">–</b> ms</span>
      <span><b data-metric="rate">–</b></span>
    </div>
  </div>
  <div class="pp-toast" role="status" aria-live="polite" hidden></div>
  <div class="pp-message" role="alert" hidden>
    <div class="pp-message-card">
      <h2 class="pp-message-title"></h2>
      <p class="pp-message-text"></p>
      <div class="pp-message-actions">
        <button type="button" class="pp-btn pp-btn-primary" data-action="use-server">Use the server stream</button>
        <button type="button" class="pp-btn" data-action="retry">Try again</button>
      </div>
    </div>
  </div>
</div>
<div class="pp-grid" role="group" aria-label="All streams" hidden></div>
<div class="pp-bar">
  <label class="pp-stream-pick" hidden>
    <span class="pp-sr">Stream</span>
    <select class="pp-select" data-role="stream" title="Stream"></select>
  </label>
  <span class="pp-grid-title"></span>
  <div class="pp-seg" role="radiogroup" aria-label="Source">
    <button type="button" role="radio" data-source="webcodecs" title="The server's H.264 stream over the WebSocket, decoded by the browser (WebCodecs: https or localhost only)">H.264</button>
    <button type="button" role="radio" data-source="webrtc" title="The server's H.264 stream over WebRTC (a fraction of the bandwidth)">WebRTC</button>
    <button type="button" role="radio" data-source="ws" title="The server's stream as JPEGs over a WebSocket">WebSocket</button>
    <button type="button" role="radio" data-source="mjpeg" title="The server's stream as MJPEG (works through any HTTP proxy)">MJPEG</button>
    <button type="button" role="radio" data-source="camera" title="A camera attached to this device">Camera</button>
  </div>
  <label class="pp-camera-pick" hidden>
    <span class="pp-sr">Camera</span>
    <select class="pp-select" data-role="camera"><option value="">Default camera</option></select>
  </label>
  <div class="pp-tools">
    <button type="button" class="pp-icon" data-action="pause" title="Pause (Space)" aria-label="Pause">${ICONS.pause}</button>
    <button type="button" class="pp-icon" data-action="rotate" title="Rotate 90° (R)" aria-label="Rotate 90 degrees">${ICONS.rotate}</button>
    <button type="button" class="pp-icon" data-action="mirror" title="Mirror (M)" aria-label="Mirror" aria-pressed="false">${ICONS.mirror}</button>
    <button type="button" class="pp-icon" data-action="snapshot" title="Download a snapshot (S)" aria-label="Download a snapshot">${ICONS.snapshot}</button>
    <button type="button" class="pp-icon" data-action="grid" title="All streams (G)" aria-label="All streams" aria-pressed="false" hidden>${ICONS.grid}</button>
    <button type="button" class="pp-icon" data-action="theme" title="Dark or light theme" aria-label="Switch theme">${ICONS.moon}</button>
    <button type="button" class="pp-icon" data-action="fullscreen" title="Full screen (F)" aria-label="Full screen">${ICONS.fullscreen}</button>
  </div>
</div>`;

/**
 * Builds the UI inside `root` and returns its handle.
 * @param {HTMLElement} root the <picam-player> element
 * @param {import('./options.js').PlayerOptions} options
 * @returns {{canvas: HTMLCanvasElement, stage: HTMLElement, grid: HTMLElement,
 *   bind(player: import('./player.js').Player): void, render(stats: import('./player.js').PlayerStats): void,
 *   setStreams(list: import('./streams.js').StreamInfo[], current: string|null): void,
 *   setCurrentStream(name: string|null): void, setView(view: "single"|"grid"): void,
 *   showToast(text: string): void, onstream: (name: string) => void, ongrid: () => void, destroy(): void}}
 */
export function createUi(root, options) {
  applyTheme(options.theme ?? storedTheme());
  root.classList.add('pp-root');
  root.innerHTML = TEMPLATE;
  const $ = (sel) => root.querySelector(sel);
  const stage = $('.pp-stage');
  const canvas = $('.pp-canvas');
  const statePill = $('.pp-state');
  const stateText = $('.pp-state-text');
  const sourceTag = $('.pp-source-tag');
  const placeholderText = $('.pp-placeholder-text');
  const metric = {
    received: $('[data-metric="received"]'),
    drawn: $('[data-metric="drawn"]'),
    latency: $('[data-metric="latency"]'),
    rate: $('[data-metric="rate"]'),
  };
  const message = $('.pp-message');
  const messageTitle = $('.pp-message-title');
  const messageText = $('.pp-message-text');
  const toast = $('.pp-toast');
  const cameraPick = $('.pp-camera-pick');
  const cameraSelect = $('[data-role="camera"]');
  const streamPick = $('.pp-stream-pick');
  const streamSelect = $('[data-role="stream"]');
  const grid = $('.pp-grid');
  const gridTitle = $('.pp-grid-title');
  const btn = (action) => root.querySelector(`.pp-tools [data-action="${action}"]`);
  const segButtons = [...root.querySelectorAll('.pp-seg [data-source]')];
  if (!options.hud) $('.pp-hud').hidden = true;

  const cleanups = [];
  const on = (target, type, fn, opts) => {
    target.addEventListener(type, fn, opts);
    cleanups.push(() => target.removeEventListener(type, fn, opts));
  };
  const setText = (el, text) => {
    if (el.textContent !== text) el.textContent = text;
  };

  let player = null;
  let toastTimer = 0;
  let lastState = null;
  let cameraListFor = null;
  let view = 'single';
  const hooks = { stream: () => {}, grid: () => {} };

  function showToast(text) {
    toast.textContent = text;
    toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { toast.hidden = true; }, 2500);
  }

  function fullscreenElement() {
    return document.fullscreenElement ?? document.webkitFullscreenElement ?? null;
  }

  function toggleFullscreen() {
    if (fullscreenElement()) {
      (document.exitFullscreen ?? document.webkitExitFullscreen)?.call(document);
      return;
    }
    const request = root.requestFullscreen ?? root.webkitRequestFullscreen;
    if (request && (document.fullscreenEnabled ?? document.webkitFullscreenEnabled)) {
      Promise.resolve(request.call(root)).catch(() => root.classList.toggle('pp-maximized'));
    } else {
      // iPhone Safari has no element full screen: fill the window instead.
      root.classList.toggle('pp-maximized');
      updateFullscreenButton();
    }
  }

  function updateFullscreenButton() {
    const full = !!fullscreenElement() || root.classList.contains('pp-maximized');
    const b = btn('fullscreen');
    b.innerHTML = full ? ICONS.exitFullscreen : ICONS.fullscreen;
    b.setAttribute('aria-label', full ? 'Leave full screen' : 'Full screen');
    b.title = full ? 'Leave full screen (F)' : 'Full screen (F)';
  }

  function updateThemeButton() {
    const dark = currentTheme() === 'dark';
    const b = btn('theme');
    b.innerHTML = dark ? ICONS.sun : ICONS.moon;
    b.title = dark ? 'Light theme' : 'Dark theme';
    b.setAttribute('aria-label', b.title);
  }

  async function snapshot() {
    if (!player) return;
    const b = btn('snapshot');
    b.disabled = true;
    try {
      const blob = await player.snapshot();
      const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = player.stream ? `picamd-${player.stream}-${stamp}.jpg` : `picamd-${stamp}.jpg`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      showToast('Snapshot saved');
    } catch (e) {
      showToast(`No snapshot: ${e.message}`);
    } finally {
      b.disabled = false;
    }
  }

  async function refreshCameras(selected) {
    if (!player) return;
    let list = [];
    try {
      list = await player.cameras();
    } catch {
      list = [];
    }
    const keep = selected ?? player.stats.cameraId ?? '';
    cameraSelect.replaceChildren();
    const def = new Option('Default camera', '');
    cameraSelect.append(def);
    for (const c of list) cameraSelect.append(new Option(c.label, c.deviceId));
    cameraSelect.value = list.some((c) => c.deviceId === keep) ? keep : '';
  }

  /** Actions that make sense in the grid view; the others act on the single view. */
  const GRID_ACTIONS = new Set(['grid', 'theme', 'fullscreen']);

  function act(action) {
    if (!player) return;
    if (view === 'grid' && !GRID_ACTIONS.has(action)) return;
    switch (action) {
      case 'grid': hooks.grid(); break;
      case 'pause': player.togglePause(); break;
      case 'rotate': player.rotate(); break;
      case 'mirror': player.toggleMirror(); break;
      case 'snapshot': snapshot(); break;
      case 'theme': toggleTheme(); updateThemeButton(); break;
      case 'fullscreen': toggleFullscreen(); break;
      case 'use-server': player.selectSource('ws'); break;
      case 'retry': player.selectSource(player.stats.preferredSource); break;
      default: break;
    }
  }

  /** Shows the player's stats. */
  function render(s) {
    const now = performance.timeOrigin + performance.now();
    const text = formatState(s, now);
    if (root.dataset.state !== s.state) root.dataset.state = s.state;
    if (statePill.dataset.state !== s.state) statePill.dataset.state = s.state;
    setText(stateText, text);
    const tag = s.state === 'live' || s.state === 'connecting' ? SOURCE_NAMES[s.source] : '';
    setText(sourceTag, tag);
    const m = formatMetrics(s);
    setText(metric.received, m.received);
    setText(metric.drawn, m.drawn);
    setText(metric.latency, m.latency);
    setText(metric.rate, m.rate);
    const hasPicture = s.drawn > 0;
    if (stage.classList.contains('pp-has-picture') !== hasPicture) stage.classList.toggle('pp-has-picture', hasPicture);
    setText(placeholderText, s.state === 'connecting' || s.state === 'live' ? 'Connecting…' : text);

    const paused = s.state === 'paused';
    const pb = btn('pause');
    if (pb.dataset.paused !== String(paused)) {
      pb.dataset.paused = String(paused);
      pb.innerHTML = paused ? ICONS.play : ICONS.pause;
      pb.setAttribute('aria-label', paused ? 'Play' : 'Pause');
      pb.title = paused ? 'Play (Space)' : 'Pause (Space)';
    }
    btn('mirror').setAttribute('aria-pressed', String(s.mirror));
    btn('rotate').dataset.rotation = String(s.rotation);

    for (const b of segButtons) {
      // A path this browser cannot take (WebCodecs on a plain-http LAN address, …) is not
      // offered; the camera explains itself when chosen.
      const offered = b.dataset.source === 'camera' || !s.usable || s.usable.includes(b.dataset.source);
      if (b.hidden === offered) b.hidden = !offered;
      const sel = b.dataset.source === s.preferredSource;
      if (b.getAttribute('aria-checked') !== String(sel)) b.setAttribute('aria-checked', String(sel));
    }
    const camera = s.preferredSource === 'camera';
    if (cameraPick.hidden === camera) cameraPick.hidden = !camera;
    if (camera && s.state !== lastState && (s.state === 'live' || cameraListFor === null)) {
      // Labels become readable once access is granted: refresh when the camera goes live.
      cameraListFor = s.state;
      refreshCameras(s.cameraId);
    }
    if (!camera) cameraListFor = null;

    const error = s.state === 'error';
    if (message.hidden === error) message.hidden = !error;
    if (error) {
      setText(messageTitle, s.preferredSource === 'camera' ? 'Camera not available' : 'Playback stopped');
      setText(messageText, s.error ?? '');
      $('[data-action="use-server"]').hidden = s.preferredSource !== 'camera';
    }
    lastState = s.state;
  }

  /**
   * Lists the server's streams in the picker, which shows only when there is a choice.
   * @param {import('./streams.js').StreamInfo[]} list
   * @param {string|null} current
   */
  function setStreams(list, current) {
    streamSelect.replaceChildren();
    for (const s of list) {
      const size = s.width && s.height ? ` · ${s.width}×${s.height}` : '';
      const o = new Option(`${s.name}${size}`, s.name);
      streamSelect.append(o);
    }
    const several = list.length > 1;
    setText(gridTitle, list.length === 1 ? '1 stream' : `${list.length} streams`);
    streamPick.hidden = !several;
    btn('grid').hidden = !several;
    setCurrentStream(current);
  }

  function setCurrentStream(name) {
    if (name !== null && streamSelect.value !== name) streamSelect.value = name;
  }

  /** @param {"single"|"grid"} v */
  function setView(v) {
    view = v;
    root.dataset.view = v;
    const isGrid = v === 'grid';
    stage.hidden = isGrid;
    grid.hidden = !isGrid;
    const b = btn('grid');
    b.setAttribute('aria-pressed', String(isGrid));
    b.title = isGrid ? 'One stream (G)' : 'All streams (G)';
    b.setAttribute('aria-label', isGrid ? 'One stream' : 'All streams');
  }

  return {
    canvas,
    stage,
    grid,
    render,
    setStreams,
    setCurrentStream,
    setView,
    showToast,
    /** @param {(name: string) => void} fn called when the user picks a stream */
    set onstream(fn) {
      hooks.stream = fn;
    },
    /** @param {() => void} fn called when the user toggles the grid */
    set ongrid(fn) {
      hooks.grid = fn;
    },
    /** Connects the controls to `p` and shows its stats from now on. */
    bind(p) {
      player = p;
      p.onupdate = render;
      on(root, 'click', (e) => {
        const t = e.target.closest('[data-action], [data-source]');
        if (!t || !root.contains(t)) return;
        if (t.dataset.source) player.selectSource(t.dataset.source);
        else act(t.dataset.action);
      });
      on(cameraSelect, 'change', () => player.selectSource('camera', { cameraId: cameraSelect.value || null }));
      on(streamSelect, 'change', () => hooks.stream(streamSelect.value));
      const md = navigator.mediaDevices;
      if (md?.addEventListener) {
        on(md, 'devicechange', () => {
          if (player.stats.preferredSource === 'camera') refreshCameras();
        });
      }
      on(document, 'fullscreenchange', updateFullscreenButton);
      on(document, 'webkitfullscreenchange', updateFullscreenButton);
      on(matchMedia('(prefers-color-scheme: light)'), 'change', updateThemeButton);
      on(document, 'keydown', (e) => {
        if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
        if (e.target.closest?.('input, select, textarea, [contenteditable]')) return;
        const keys = { ' ': 'pause', k: 'pause', r: 'rotate', m: 'mirror', f: 'fullscreen', s: 'snapshot', g: 'grid' };
        const action = keys[e.key.toLowerCase()];
        if (!action) return;
        if (action === 'grid' && btn('grid').hidden) return;
        if (view === 'grid' && !GRID_ACTIONS.has(action)) return;
        if (e.key === ' ' && e.target.closest?.('button')) return; // space activates the button
        e.preventDefault();
        act(action);
      });
      updateThemeButton();
      updateFullscreenButton();
      render(p.stats);
    },
    destroy() {
      for (const off of cleanups) off();
      clearTimeout(toastTimer);
    },
  };
}
