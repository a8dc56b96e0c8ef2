// The local camera source: getUserMedia into a <video>, each new video frame copied with
// createImageBitmap(video) (video-frames.js) and handed to the same renderer as the server's
// frames.
// Implements the Source interface documented in player.js.
//
// Browsers expose the camera only in a secure context: HTTPS, or http://localhost /
// 127.0.0.1. A picamd on the LAN is usually opened as http://<pi>:8080, where
// navigator.mediaDevices is simply missing, so the source reports a plain explanation as a
// fatal error instead of failing silently.

import { hiddenVideo, removeVideo, VideoFramePump } from './video-frames.js';

/** Shown when the page is not a secure context. */
export const INSECURE_CAMERA_MESSAGE =
  'The browser allows the camera only on HTTPS or on http://localhost. ' +
  'This page was opened over plain HTTP from another address, so the local camera is not available here. ' +
  'Open this page via https://… or http://localhost to use a camera attached to this device.';

/** Shown when the browser has no camera API at all. */
export const UNSUPPORTED_CAMERA_MESSAGE = 'This browser does not support camera access (navigator.mediaDevices.getUserMedia is missing).';

/**
 * Whether a local camera can be used on this page.
 * @param {{isSecureContext?: boolean, navigator?: Navigator}} [win]
 * @returns {{ok: true} | {ok: false, reason: "insecure"|"unsupported", message: string}}
 */
export function cameraAvailability(win = globalThis) {
  if (win.isSecureContext === false) return { ok: false, reason: 'insecure', message: INSECURE_CAMERA_MESSAGE };
  if (!win.navigator?.mediaDevices?.getUserMedia) {
    return { ok: false, reason: 'unsupported', message: UNSUPPORTED_CAMERA_MESSAGE };
  }
  return { ok: true };
}

/**
 * The video inputs. Labels are empty until the user has granted camera access once.
 * @param {MediaDevices} [mediaDevices]
 * @returns {Promise<{deviceId: string, label: string}[]>}
 */
export async function listCameras(mediaDevices = globalThis.navigator?.mediaDevices) {
  if (!mediaDevices?.enumerateDevices) return [];
  const devices = await mediaDevices.enumerateDevices();
  return devices
    .filter((d) => d.kind === 'videoinput')
    .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `Camera ${i + 1}` }));
}

/** A user-facing sentence for a getUserMedia failure. */
export function cameraErrorMessage(error) {
  switch (error?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera access was denied. Allow the camera for this site in the browser settings, then choose Camera again.';
    case 'NotFoundError':
      return 'No camera was found on this device.';
    case 'OverconstrainedError':
      return 'The chosen camera is not available any more. Pick another one.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The camera could not be started; another application may be using it.';
    default:
      return `The camera could not be opened: ${error?.message || error}`;
  }
}

export class CameraSource {
  /**
   * @param {object} [opts]
   * @param {string|null} [opts.deviceId] camera to open; default: the browser's choice
   * @param {HTMLElement} [opts.parent] where the (invisible) <video> lives; default document.body
   */
  constructor(opts = {}) {
    this.kind = 'camera';
    this.deviceId = opts.deviceId ?? null;
    this.parent = opts.parent ?? null;
    this.onframe = () => {};
    this.onstate = () => {};
    this.stream = null;
    this.video = null;
    this.seq = 0;
    this.stopped = false;
    /** @type {VideoFramePump|null} */
    this.pump = null;
    /** Frame rate the camera reports, once open. */
    this.fps = null;
  }

  start() {
    if (this.stream || this.stopped) return;
    const avail = cameraAvailability(globalThis);
    if (!avail.ok) {
      queueMicrotask(() => this.#emit({ type: 'fatal', message: avail.message, reason: avail.reason }));
      return;
    }
    this.#open().catch((error) => {
      if (this.stopped) return;
      this.#teardown();
      this.#emit({ type: 'fatal', message: cameraErrorMessage(error), reason: error?.name ?? 'error' });
    });
  }

  /** Releases the camera; no callback runs afterwards. */
  stop() {
    this.stopped = true;
    this.#teardown();
  }

  /** Same as stop(). */
  close() {
    this.stop();
  }

  async #open() {
    const video = this.deviceId ? { deviceId: { exact: this.deviceId } } : true;
    const stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
    if (this.stopped) {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    this.stream = stream;
    const track = stream.getVideoTracks()[0];
    const settings = track?.getSettings?.() ?? {};
    this.deviceId = settings.deviceId ?? this.deviceId;
    this.fps = settings.frameRate ?? null;
    track?.addEventListener('ended', () => {
      if (this.stopped) return;
      this.#teardown();
      this.#emit({ type: 'close', reason: 'the camera was disconnected' });
    });
    const el = hiddenVideo(stream, this.parent);
    this.video = el;
    await el.play();
    if (this.stopped) return;
    this.#emit({ type: 'open' });
    this.#emit({ type: 'info', camera: { deviceId: this.deviceId, label: track?.label ?? '', fps: this.fps } });
    this.pump = new VideoFramePump(el, (bitmap) => {
      const seq = ++this.seq;
      this.onframe({ bitmap, seq, captureUs: null, width: bitmap.width, height: bitmap.height, noSignal: false });
    });
    this.pump.start();
  }

  #emit(event) {
    if (!this.stopped) this.onstate(event);
  }

  #teardown() {
    this.pump?.stop();
    this.pump = null;
    const v = this.video;
    this.video = null;
    if (v) removeVideo(v);
    const s = this.stream;
    this.stream = null;
    if (s) for (const t of s.getTracks()) t.stop();
  }
}
