// The page: the <picam-player> element. It builds the UI (ui.js), plays one stream in the
// single view (player.js) or every stream in the grid (grid.js), and switches between streams
// and views without reloading, keeping the address bar in step (streams.js says which address
// shows what).
//
// The page works before it knows the server's streams: it starts playing the stream its
// address names (the root URLs by default) at once, and asks `/streams` meanwhile for the
// picker and the grid. A server that lists one stream (or none, an older one) gets neither,
// and the page behaves as it did before streams had names.

import { StreamGrid } from './grid.js';
import { parseOptions } from './options.js';
import { Player } from './player.js';
import {
  pageAddress, parseStreamList, resolveStream, streamFromLocation, streamUrls, wantsGrid,
} from './streams.js';
import { createUi } from './ui.js';
import { rememberIceServers } from './webrtc-source.js';

/**
 * Defines the `<picam-player>` element (once). It builds its UI inside itself (no shadow DOM,
 * so page CSS and tests reach every part), takes its options from the query string, and
 * publishes `window.picamd`:
 *   player    the single view's Player
 *   stats     its figures (see PlayerStats in player.js)
 *   tiles     the grid's figures per stream name (see TileStats in grid.js); {} outside it
 *   streams   the server's streams, once known
 *   view      "single" | "grid"
 * @param {string} [name='picam-player']
 */
export function definePlayerElement(name = 'picam-player') {
  if (customElements.get(name)) return;
  class PicamPlayer extends HTMLElement {
    connectedCallback() {
      if (this.player) return;
      const options = parseOptions(location.search);
      const requested = streamFromLocation(location);
      const gridWanted = wantsGrid(location.search);
      const ui = createUi(this, options);
      const player = new Player({ canvas: ui.canvas, host: ui.stage, options, stream: requested });
      const grid = new StreamGrid(ui.grid, options);
      this.player = player;
      this.ui = ui;
      this.grid = grid;
      /** @type {import('./streams.js').StreamInfo[]} */
      this.streams = [];
      this.view = gridWanted ? 'grid' : 'single';
      /** Where the grid toggle returns to. */
      this.lastStream = requested;
      ui.bind(player);
      ui.onstream = (n) => this.showStream(n);
      ui.ongrid = () => (this.view === 'grid' ? this.showStream(this.lastStream) : this.showGrid());
      grid.onopen = (n) => this.showStream(n);
      const self = this;
      window.picamd = {
        player,
        get stats() {
          return player.stats;
        },
        get tiles() {
          return self.view === 'grid' ? self.grid.stats() : {};
        },
        get streams() {
          return self.streams.map((s) => ({ ...s }));
        },
        get view() {
          return self.view;
        },
      };
      this.#links(requested);
      ui.setView(this.view);
      if (!gridWanted) player.start();
      this.#loadStreams();
    }

    disconnectedCallback() {
      this.grid?.destroy();
      this.player?.destroy();
      this.ui?.destroy();
      this.grid = null;
      this.player = null;
      this.ui = null;
    }

    /**
     * Shows one stream in the single view, leaving the grid if it is on.
     * @param {string|null} name
     */
    showStream(name) {
      if (!this.player) return;
      const leavingGrid = this.view === 'grid';
      if (leavingGrid) {
        // The tiles' sockets go before the single view opens its own.
        this.grid.hide();
        this.view = 'single';
        this.ui.setView('single');
      }
      const shown = name ?? resolveStream(this.streams, null);
      this.lastStream = shown;
      this.ui.setCurrentStream(shown);
      if (this.player.stream !== shown || leavingGrid || !this.player.running) {
        this.player.setStream(shown);
        if (!this.player.running) this.player.start();
      }
      if (shown !== null) this.#address(pageAddress({ stream: shown, search: location.search, hash: location.hash }));
      document.title = shown ? `${shown} · picamd` : 'picamd';
      this.#links(shown);
    }

    /** Shows every stream as a tile; the single view's connection closes meanwhile. */
    showGrid() {
      if (!this.player || !this.streams.length) return;
      if (this.view !== 'grid') this.lastStream = resolveStream(this.streams, this.player.stream) ?? this.lastStream;
      this.view = 'grid';
      this.player.stop();
      this.ui.setView('grid');
      this.#address(pageAddress({ grid: true, search: location.search, hash: location.hash }));
      document.title = 'All streams · picamd';
      this.grid.show(this.streams, location.search);
    }

    #loadStreams() {
      fetch('/streams', { cache: 'no-store' })
        .then((r) => (r.ok ? r.json() : null))
        .catch(() => null)
        .then((json) => {
          if (!this.player) return;
          // STUN/TURN for WebRTC connections made from now on (a LAN needs none).
          rememberIceServers(json?.webrtc?.ice_servers);
          const list = parseStreamList(json);
          this.streams = list;
          const requested = this.player.stream;
          let current = resolveStream(list, requested);
          if (list.length && current === null && requested !== null) {
            this.ui.showToast(`No stream named “${requested}”; showing ${resolveStream(list, null)}`);
            current = resolveStream(list, null);
            if (this.view === 'single') this.showStream(current);
          }
          if (this.lastStream === null || !list.some((s) => s.name === this.lastStream)) this.lastStream = current;
          this.ui.setStreams(list, current);
          this.#links(this.player.stream);
          if (this.view === 'grid') {
            if (list.length) this.showGrid();
            else this.showStream(requested); // no list to make a grid of
          }
        });
    }

    #address(url) {
      const here = location.pathname + location.search + location.hash;
      if (url !== here) history.replaceState(history.state, '', url);
    }

    /** Points the page's plain links (footer) at the stream shown. */
    #links(stream) {
      const urls = streamUrls(stream);
      for (const a of document.querySelectorAll('a[data-stream-url]')) {
        const url = urls[a.dataset.streamUrl];
        if (url && a.getAttribute('href') !== url) a.setAttribute('href', url);
      }
      // The RTSP link is absolute (another scheme and port), and only there when RTSP is on.
      const shown = resolveStream(this.streams, stream);
      const rtsp = this.streams.find((s) => s.name === shown)?.rtsp ?? null;
      for (const a of document.querySelectorAll('a[data-rtsp-url]')) {
        a.hidden = rtsp === null;
        if (rtsp !== null && a.getAttribute('href') !== rtsp) a.setAttribute('href', rtsp);
      }
    }
  }
  customElements.define(name, PicamPlayer);
}
