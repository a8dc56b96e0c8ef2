// Decodes frames and draws the newest one on a canvas, once per animation frame.
//
// - JPEG bytes are decoded off the main thread with createImageBitmap(Blob). At most
//   `maxInFlight` decodes run at once; a frame arriving beyond that is dropped (the next one
//   is newer anyway), so a slow device skips frames instead of building a queue.
// - Only the newest decoded bitmap is kept. A decode finishing after a newer frame's (seq not
//   above the newest decoded) is dropped, so the picture never steps back in time.
// - Every ImageBitmap the renderer owns is close()d when dropped or replaced: bitmaps hold
//   decoded pixels outside the JS heap, and the garbage collector does not see that memory.
//   `stats.openBitmaps` counts the ones it holds (created or adopted, minus closed).
// - A decoded VideoFrame (WebCodecs source) is adopted and drawn like a bitmap, at its
//   display size, and closed the same way; a decoder that is not given its frames back stalls
//   (it has a small pool of them). `openBitmaps` counts these too, `openVideoFrames` only
//   these.
// - Rotation (0/90/180/270) and mirroring are canvas transforms; mirroring is applied in
//   screen space, so "mirror" always flips left and right as the user sees them.
// - While paused (hidden page, paused player) nothing is drawn and JPEGs are not even decoded:
//   the newest one is kept raw and decoded on resume.

/**
 * @typedef {object} Frame
 * @property {Uint8Array|Blob} [jpeg]   JPEG bytes (WebSocket source)
 * @property {ImageBitmap} [bitmap]     a decoded picture; the renderer takes ownership
 * @property {VideoFrame} [videoFrame]  a decoded H.264 picture; the renderer takes ownership
 * @property {number} seq               increasing within one source connection
 * @property {number|null} captureUs    capture time, µs since the epoch (server clock)
 * @property {number} width
 * @property {number} height
 * @property {boolean} noSignal
 */

export class CanvasRenderer {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} [opts]
   * @param {(frame: Frame) => void} [opts.onDrawn] called after a new frame was drawn
   * @param {number} [opts.maxInFlight=2] concurrent decodes
   * @param {(blob: Blob) => Promise<ImageBitmap>} [opts.createBitmap]
   * @param {(cb: FrameRequestCallback) => number} [opts.requestFrame]
   * @param {(id: number) => void} [opts.cancelFrame]
   */
  constructor(canvas, opts = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false });
    this.onDrawn = opts.onDrawn ?? (() => {});
    this.maxInFlight = opts.maxInFlight ?? 2;
    this.createBitmap = opts.createBitmap ?? ((blob) => createImageBitmap(blob));
    this.requestFrame = opts.requestFrame ?? ((cb) => requestAnimationFrame(cb));
    this.cancelFrame = opts.cancelFrame ?? ((id) => cancelAnimationFrame(id));
    this.rotation = 0;
    this.mirror = false;
    this.active = true;
    this.destroyed = false;
    /** Bumped per source connection; decodes of an older generation are dropped. */
    this.generation = 0;
    this.newestSeq = -Infinity;
    this.inFlight = 0;
    /** @type {{bitmap: ImageBitmap, frame: Frame}|null} decoded, waiting to be drawn */
    this.pending = null;
    /** @type {{bitmap: ImageBitmap, frame: Frame}|null} on screen */
    this.current = null;
    /** @type {Frame|null} newest JPEG received while paused, not decoded yet */
    this.pendingRaw = null;
    this.rafId = 0;
    this.counts = { openBitmaps: 0, openVideoFrames: 0, decoded: 0, drawn: 0, dropped: 0, decodeErrors: 0 };
  }

  /** Counters: openBitmaps, openVideoFrames, decoded, drawn, dropped, decodeErrors, inFlight. */
  get stats() {
    return { ...this.counts, inFlight: this.inFlight };
  }

  /**
   * Hands a frame over: JPEG bytes are decoded, a bitmap is adopted (and closed by the
   * renderer from now on).
   * @param {Frame} frame
   */
  submit(frame) {
    if (this.destroyed) {
      frame.bitmap?.close();
      frame.videoFrame?.close();
      return;
    }
    const picture = frame.bitmap ?? frame.videoFrame;
    if (picture) {
      this.counts.openBitmaps += 1;
      if (frame.videoFrame) this.counts.openVideoFrames += 1;
      this.#accept(picture, frame, this.generation);
      return;
    }
    if (!this.active) {
      if (this.pendingRaw) this.counts.dropped += 1;
      this.pendingRaw = frame;
      return;
    }
    if (this.inFlight >= this.maxInFlight) {
      this.counts.dropped += 1;
      return;
    }
    const gen = this.generation;
    const blob = frame.jpeg instanceof Blob ? frame.jpeg : new Blob([frame.jpeg], { type: 'image/jpeg' });
    this.inFlight += 1;
    this.createBitmap(blob).then(
      (bitmap) => {
        this.inFlight -= 1;
        this.counts.openBitmaps += 1;
        this.counts.decoded += 1;
        this.#accept(bitmap, frame, gen);
      },
      () => {
        this.inFlight -= 1;
        this.counts.dropped += 1;
        this.counts.decodeErrors += 1;
      },
    );
  }

  /** Starts a new source connection: its seq numbers start afresh. */
  newGeneration() {
    this.generation += 1;
    this.newestSeq = -Infinity;
    if (this.pendingRaw) {
      this.pendingRaw = null;
      this.counts.dropped += 1;
    }
  }

  /** Stops drawing (and decoding); the last picture stays on the canvas. */
  pause() {
    this.active = false;
    if (this.rafId) this.cancelFrame(this.rafId);
    this.rafId = 0;
  }

  /** Draws again, starting with the newest frame that arrived meanwhile. */
  resume() {
    if (this.active || this.destroyed) return;
    this.active = true;
    const raw = this.pendingRaw;
    this.pendingRaw = null;
    if (raw) this.submit(raw);
    this.#schedule();
  }

  /** @param {number} degrees 0, 90, 180 or 270 */
  setRotation(degrees) {
    const d = ((Math.round(degrees / 90) * 90) % 360 + 360) % 360;
    this.rotation = d;
    this.redraw();
  }

  /** @param {boolean} on */
  setMirror(on) {
    this.mirror = !!on;
    this.redraw();
  }

  /** Draws the current picture again (after a rotation or mirror change). */
  redraw() {
    if (this.current) this.#paint(this.current.bitmap);
  }

  /** Width and height of the picture as drawn (rotation applied), or null before a frame. */
  get size() {
    return this.current ? { width: this.canvas.width, height: this.canvas.height } : null;
  }

  /**
   * The canvas as an image file (rotation and mirroring included).
   * @param {string} [type='image/jpeg']
   * @param {number} [quality=0.92]
   * @returns {Promise<Blob>}
   */
  toBlob(type = 'image/jpeg', quality = 0.92) {
    return new Promise((resolve, reject) => {
      if (!this.current) {
        reject(new Error('nothing has been drawn yet'));
        return;
      }
      this.canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('the canvas could not be encoded'))), type, quality);
    });
  }

  /** Releases every bitmap and stops; the renderer cannot be used afterwards. */
  destroy() {
    this.pause();
    this.destroyed = true;
    this.#drop(this.pending, false);
    this.#drop(this.current, false);
    this.pending = null;
    this.current = null;
    this.pendingRaw = null;
  }

  // ---- internals ------------------------------------------------------------------------

  #close(bitmap) {
    bitmap.close();
    this.counts.openBitmaps -= 1;
    if (isVideoFrame(bitmap)) this.counts.openVideoFrames -= 1;
  }

  #drop(entry, count = true) {
    if (!entry) return;
    this.#close(entry.bitmap);
    if (count) this.counts.dropped += 1;
  }

  #accept(bitmap, frame, gen) {
    if (this.destroyed || gen !== this.generation || !(frame.seq > this.newestSeq)) {
      // Out of order or from a closed connection.
      this.#close(bitmap);
      this.counts.dropped += 1;
      return;
    }
    this.newestSeq = frame.seq;
    this.#drop(this.pending);
    this.pending = { bitmap, frame };
    this.#schedule();
  }

  #schedule() {
    if (!this.active || this.rafId || !this.pending) return;
    this.rafId = this.requestFrame(() => {
      this.rafId = 0;
      this.#drawPending();
    });
  }

  #drawPending() {
    const next = this.pending;
    if (!next || !this.active) return;
    this.pending = null;
    this.#paint(next.bitmap);
    if (this.current) this.#close(this.current.bitmap);
    this.current = next;
    this.counts.drawn += 1;
    this.onDrawn(next.frame);
  }

  #paint(bitmap) {
    // A VideoFrame's coded size may be padded (1080 → 1088 rows); draw its display size.
    const w = isVideoFrame(bitmap) ? bitmap.displayWidth : bitmap.width;
    const h = isVideoFrame(bitmap) ? bitmap.displayHeight : bitmap.height;
    const quarter = this.rotation === 90 || this.rotation === 270;
    const cw = quarter ? h : w;
    const ch = quarter ? w : h;
    if (this.canvas.width !== cw) this.canvas.width = cw;
    if (this.canvas.height !== ch) this.canvas.height = ch;
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    // Read right to left: rotate the picture about its centre, mirror in screen space, then
    // move the centre to the middle of the canvas.
    ctx.translate(cw / 2, ch / 2);
    if (this.mirror) ctx.scale(-1, 1);
    ctx.rotate((this.rotation * Math.PI) / 180);
    ctx.drawImage(bitmap, -w / 2, -h / 2, w, h);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
  }
}

/** A WebCodecs VideoFrame (or a stand-in with its shape), as opposed to an ImageBitmap. */
function isVideoFrame(picture) {
  return typeof picture.displayWidth === 'number';
}
