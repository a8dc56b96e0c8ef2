// Frames out of a <video>: each new video frame copied with createImageBitmap(video) for the
// canvas renderer. The local camera (camera-source.js) and WebRTC (webrtc-source.js) both
// play into a hidden <video>, and both hand the renderer bitmaps like the other sources, so
// one renderer draws everything (rotation, mirroring, snapshots, no-signal handling).
//
// requestVideoFrameCallback (Chrome 83+, Safari 15.4+, Firefox 132+) fires once per new frame
// and brings its metadata: for WebRTC, `captureTime` (the sender's capture time, mapped to
// this page's clock from the RTCP sender reports) and `receiveTime`. Without it a
// requestAnimationFrame loop watches `currentTime` and no metadata is known.

/**
 * @typedef {object} VideoFrameInfo  what requestVideoFrameCallback said about a frame
 * @property {number|undefined} captureTime   performance.now() timebase, ms (WebRTC, camera)
 * @property {number|undefined} receiveTime   performance.now() timebase, ms (WebRTC)
 * @property {number|undefined} rtpTimestamp  (WebRTC)
 */

/**
 * A muted, inline, invisible `<video>` playing `stream`, appended to `parent`: muted inline
 * video may autoplay everywhere, which is what lets WebRTC start without a click.
 * @param {MediaStream} stream
 * @param {HTMLElement|null} parent default document.body
 * @returns {HTMLVideoElement}
 */
export function hiddenVideo(stream, parent) {
  const el = document.createElement('video');
  el.className = 'pp-offscreen';
  el.muted = true;
  el.playsInline = true;
  el.autoplay = true;
  el.setAttribute('aria-hidden', 'true');
  el.srcObject = stream;
  (parent ?? document.body).appendChild(el);
  return el;
}

/** Stops a video made by hiddenVideo and takes it out of the page. */
export function removeVideo(el) {
  el.pause();
  el.srcObject = null;
  el.remove();
}

export class VideoFramePump {
  /**
   * @param {HTMLVideoElement} video playing
   * @param {(bitmap: ImageBitmap, info: VideoFrameInfo|null) => void} onbitmap the receiver
   *   owns the bitmap and must close() it
   */
  constructor(video, onbitmap) {
    this.video = video;
    this.onbitmap = onbitmap;
    this.grabbing = false;
    this.stopped = false;
    this.callbackId = 0;
    this.rafId = 0;
  }

  start() {
    this.#next();
  }

  /** No callback runs after this. */
  stop() {
    this.stopped = true;
    const v = this.video;
    if (this.callbackId && typeof v.cancelVideoFrameCallback === 'function') v.cancelVideoFrameCallback(this.callbackId);
    if (this.rafId) cancelAnimationFrame(this.rafId);
    this.callbackId = 0;
    this.rafId = 0;
  }

  /** Waits for the next video frame: requestVideoFrameCallback where available. */
  #next() {
    const v = this.video;
    if (this.stopped) return;
    if (typeof v.requestVideoFrameCallback === 'function') {
      this.callbackId = v.requestVideoFrameCallback((_now, meta) => this.#grab(meta));
    } else {
      let last = v.currentTime;
      const poll = () => {
        if (this.stopped) return;
        if (v.currentTime !== last) this.#grab(null);
        else this.rafId = requestAnimationFrame(poll);
        last = v.currentTime;
      };
      this.rafId = requestAnimationFrame(poll);
    }
  }

  #grab(meta) {
    const v = this.video;
    if (this.stopped) return;
    // One copy in flight at a time: a frame that arrives meanwhile is skipped (the next one
    // supersedes it anyway), so a slow GPU never builds a queue.
    if (this.grabbing || v.videoWidth === 0) {
      this.#next();
      return;
    }
    this.grabbing = true;
    const info = meta ? { captureTime: meta.captureTime, receiveTime: meta.receiveTime, rtpTimestamp: meta.rtpTimestamp } : null;
    createImageBitmap(v).then(
      (bitmap) => {
        this.grabbing = false;
        if (this.stopped) bitmap.close();
        else this.onbitmap(bitmap, info);
      },
      () => {
        this.grabbing = false;
      },
    );
    this.#next();
  }
}
