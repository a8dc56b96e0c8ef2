// The MJPEG fallback source: an <img> showing `/stream` (multipart/x-mixed-replace), for
// networks where the WebSocket does not get through. Implements the Source interface
// documented in player.js.
//
// An <img> tells nothing about the frames of a multipart stream: no event per frame, and a
// connection that dies quietly (proxy timeout, Wi-Fi roaming) fires no `error` either; the
// picture just freezes. So the source watches the picture itself. On every animation frame it
// draws the <img> scaled down to a 64×36 canvas and hashes those pixels (FNV-1a over the
// RGBA bytes): a different hash is a new frame, which is copied out with
// createImageBitmap(img) and handed to the renderer like any other. A moving scene, and the
// sensor noise of any real camera, change the hash every frame; the player's stall watchdog
// (measured from the last drawn frame) then closes and reopens a stream whose picture stopped
// changing, with a fresh cache-busting URL so no cache or proxy hands back the dead response.
// A truly frozen picture (e.g. a static placeholder) costs one reconnect per stall period,
// which also re-checks that the server is still there. Why not the alternatives:
// img.decode() resolves once for the first part only, `load` events per part are not fired
// consistently across browsers, and comparing naturalWidth/complete says nothing about content.
//
// `error` does fire when the request itself fails (server down, 503 at the viewer limit): that
// is reported as a close, and the player backs off.

const PROBE_W = 64;
const PROBE_H = 36;

/** FNV-1a over bytes, 32 bits. */
export function hashBytes(bytes) {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A URL that no cache has seen: `/stream?t=<time><random>`. */
export function cacheBustedUrl(url) {
  const sep = url.includes('?') ? '&' : '?';
  return `${url}${sep}t=${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;
}

export class MjpegSource {
  /**
   * @param {object} [opts]
   * @param {string} [opts.url='/stream']
   * @param {HTMLElement} [opts.parent] where the (invisible) <img> lives; default document.body
   */
  constructor(opts = {}) {
    this.kind = 'mjpeg';
    this.url = opts.url ?? '/stream';
    this.parent = opts.parent ?? null;
    this.onframe = () => {};
    this.onstate = () => {};
    this.img = null;
    this.probe = null;
    this.probeCtx = null;
    this.rafId = 0;
    this.lastHash = null;
    this.seq = 0;
    this.opened = false;
    this.grabbing = false;
    this.stopped = false;
  }

  start() {
    if (this.img || this.stopped) return;
    const img = document.createElement('img');
    img.alt = '';
    img.setAttribute('aria-hidden', 'true');
    img.className = 'pp-offscreen';
    img.decoding = 'async';
    img.onerror = () => {
      if (this.stopped) return;
      this.#teardown();
      this.onstate({ type: 'close', reason: 'the MJPEG stream failed to load' });
    };
    img.src = cacheBustedUrl(this.url);
    (this.parent ?? document.body).appendChild(img);
    this.img = img;
    this.probe = document.createElement('canvas');
    this.probe.width = PROBE_W;
    this.probe.height = PROBE_H;
    this.probeCtx = this.probe.getContext('2d', { willReadFrequently: true });
    this.rafId = requestAnimationFrame(() => this.#poll());
  }

  /** Ends the request and removes the <img>; no callback runs afterwards. */
  stop() {
    this.stopped = true;
    this.#teardown();
  }

  /** Same as stop(). */
  close() {
    this.stop();
  }

  #teardown() {
    if (this.rafId) cancelAnimationFrame(this.rafId);
    this.rafId = 0;
    const img = this.img;
    this.img = null;
    if (img) {
      img.onerror = null;
      // Dropping the src aborts the multipart request, so the server sees the viewer leave.
      img.removeAttribute('src');
      img.remove();
    }
  }

  #poll() {
    this.rafId = 0;
    const img = this.img;
    if (!img || this.stopped) return;
    try {
      if (img.naturalWidth > 0 && !this.grabbing) this.#check(img);
    } catch {
      // A part that is broken or being replaced cannot be drawn this time; the next poll
      // looks again, and the stall watchdog covers a picture that stays unreadable.
    } finally {
      if (this.img === img) this.rafId = requestAnimationFrame(() => this.#poll());
    }
  }

  #check(img) {
    if (!this.opened) {
      this.opened = true;
      this.onstate({ type: 'open' });
    }
    const ctx = this.probeCtx;
    ctx.drawImage(img, 0, 0, PROBE_W, PROBE_H);
    const hash = hashBytes(ctx.getImageData(0, 0, PROBE_W, PROBE_H).data);
    if (hash === this.lastHash) return;
    this.lastHash = hash;
    const seq = ++this.seq;
    this.grabbing = true;
    createImageBitmap(img).then(
      (bitmap) => {
        this.grabbing = false;
        if (this.stopped) {
          bitmap.close();
          return;
        }
        this.onframe({ bitmap, seq, captureUs: null, width: bitmap.width, height: bitmap.height, noSignal: false });
      },
      () => {
        // The part was being replaced while it was copied; the next poll tries again.
        this.grabbing = false;
        this.lastHash = null;
      },
    );
  }
}
