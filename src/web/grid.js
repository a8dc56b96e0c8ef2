// The grid view: every stream at once, one tile each. A tile is a whole Player (player.js)
// on its own canvas and its own `/cam/<name>/ws`, so every rule of the single view holds per
// tile without a second implementation: backoff and stall watchdog, MJPEG fallback, a hidden
// page that stops drawing and lets the sockets go after the grace period.
//
// Tiles are links to the stream's page: Enter and click open it in the single view (the
// caller decides how, see `onopen`); a middle click or Ctrl+click still opens a new tab.

import { Player } from './player.js';
import { pageAddress, tileBadge } from './streams.js';

/**
 * @typedef {object} TileStats  one tile's figures (window.picamd.tiles[name])
 * @property {string} stream
 * @property {string} state        the tile player's state (see player-state.js)
 * @property {string} badge        live | no-signal | connecting | reconnecting | paused | error
 * @property {number} drawn
 * @property {number} received
 * @property {number|null} lastSeq
 * @property {number|null} width
 * @property {number|null} height
 * @property {boolean} noSignal
 * @property {number} reconnects
 * @property {number} fpsDrawn
 */

export class StreamGrid {
  /**
   * @param {HTMLElement} container the grid element (ui.js makes it)
   * @param {import('./options.js').PlayerOptions} options the page's; tiles climb the same
   *   ladder as the single player (WebCodecs/WebRTC → JPEG WebSocket → MJPEG, or from
   *   ?source= down), never the local camera
   */
  constructor(container, options) {
    this.container = container;
    this.options = { ...options, source: options.source === 'camera' ? 'auto' : options.source };
    /** @type {Map<string, {el: HTMLElement, player: Player, badge: HTMLElement, shownBadge: string|null}>} */
    this.tiles = new Map();
    /** Called with a stream name when a tile is activated. */
    this.onopen = () => {};
    this.clickHandler = (e) => this.#click(e);
    container.addEventListener('click', this.clickHandler);
  }

  /**
   * Shows these streams (and only these), each playing.
   * @param {import('./streams.js').StreamInfo[]} list
   * @param {string} search the page's query string, kept in the tiles' links
   */
  show(list, search = '') {
    this.hide();
    for (const info of list) this.#add(info, search);
    this.container.dataset.count = String(list.length);
  }

  /** Closes every tile's connection and removes the tiles. */
  hide() {
    for (const t of this.tiles.values()) {
      t.player.destroy();
      t.el.remove();
    }
    this.tiles.clear();
  }

  destroy() {
    this.hide();
    this.container.removeEventListener('click', this.clickHandler);
  }

  /** @returns {Record<string, TileStats>} */
  stats() {
    const out = {};
    for (const [name, t] of this.tiles) {
      const s = t.player.stats;
      out[name] = {
        stream: name,
        state: s.state,
        badge: tileBadge(s).kind,
        drawn: s.drawn,
        received: s.received,
        lastSeq: s.lastSeq,
        width: s.width,
        height: s.height,
        noSignal: s.noSignal,
        reconnects: s.reconnects,
        fpsDrawn: s.fpsDrawn,
      };
    }
    return out;
  }

  #add(info, search) {
    const el = document.createElement('a');
    el.className = 'pp-tile';
    el.href = pageAddress({ stream: info.name, search });
    el.dataset.stream = info.name;
    if (info.width && info.height) el.style.setProperty('--pp-ar', `${info.width} / ${info.height}`);
    el.innerHTML = `
      <canvas class="pp-tile-canvas"></canvas>
      <span class="pp-tile-wait" aria-hidden="true"><span class="pp-spinner"></span></span>
      <span class="pp-tile-label">
        <span class="pp-tile-name"></span>
        <span class="pp-tile-badge" data-badge="connecting"><span class="pp-dot"></span><span class="pp-tile-badge-text">Connecting</span></span>
      </span>`;
    el.querySelector('.pp-tile-name').textContent = info.name;
    const badge = el.querySelector('.pp-tile-badge');
    this.container.append(el);
    const canvas = el.querySelector('canvas');
    const player = new Player({ canvas, host: el, options: this.options, stream: info.name });
    const tile = { el, player, badge, shownBadge: null };
    this.tiles.set(info.name, tile);
    player.onupdate = (s) => this.#render(tile, s);
    player.start();
    this.#render(tile, player.stats);
  }

  #render(tile, s) {
    const { kind, label } = tileBadge(s);
    const picture = s.drawn > 0;
    if (tile.el.classList.contains('pp-has-picture') !== picture) tile.el.classList.toggle('pp-has-picture', picture);
    if (tile.shownBadge === kind) return;
    tile.shownBadge = kind;
    tile.badge.dataset.badge = kind;
    tile.badge.querySelector('.pp-tile-badge-text').textContent = label;
    tile.el.setAttribute('aria-label', `${tile.el.dataset.stream}: ${label}. Open this stream`);
  }

  #click(e) {
    const el = e.target.closest?.('.pp-tile');
    if (!el || !this.container.contains(el)) return;
    // Let the browser open a new tab or window as asked.
    if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    this.onopen(el.dataset.stream);
  }
}
