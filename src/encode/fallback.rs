//! Hardware encoders with a software fallback: what the JPEG pool's worker
//! ([`JpegBackend`]) and the H.264 stage ([`H264Backend`]) encode with.
//!
//! With a hardware encoder chosen (`jpeg_encoder` / `h264_encoder`, see
//! [`super::m2m::probe`]) a session is opened at the first frame for that frame's size, and
//! reopened when the size or the H.264 settings change. When the device fails to open or
//! fails a frame, that frame and the ones after it are encoded in software, so viewers see
//! no gap, and the device is tried again after 1 s, doubling to 60 s. Every switch is
//! reported (`/state` shows what runs and why, and counts the fallbacks) and logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::h264::{H264Encoder, H264Error, H264Settings};
use super::m2m::device::open_boxed;
use super::m2m::h264::M2mH264;
use super::m2m::jpeg::M2mJpeg;
use super::m2m::{M2mDevice, M2mError};
use super::{EncodeError, JpegEncoder};
use crate::frame::{AccessUnit, CaptureTime, Yuv420Buffer};

/// First wait before a failed device is tried again; it doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// A session that encoded this many frames has proved the device: the wait starts again
/// from [`FIRST_RETRY`]. (A device that opens but fails its first frames would otherwise be
/// reopened every second forever.)
const PROVEN_FRAMES: u64 = 100;

/// A change of encoder, for `/state` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderNews {
    pub using: String,
    pub why: String,
    /// The hardware encoder failed and software took over.
    pub fell_back: bool,
}

/// Where [`EncoderNews`] goes.
pub type Report = Arc<dyn Fn(EncoderNews) + Send + Sync>;

/// When a failed device may be tried again.
#[derive(Debug)]
struct Backoff {
    wait: Duration,
    next: Option<Instant>,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            wait: FIRST_RETRY,
            next: None,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// Failed at `now`: the time until the next try.
    fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.wait;
        self.next = Some(now + wait);
        self.wait = (self.wait * 2).min(MAX_RETRY);
        wait
    }

    fn proven(&mut self) {
        self.wait = FIRST_RETRY;
    }
}

type HwJpeg = M2mJpeg<Box<dyn M2mDevice>>;
type HwH264 = M2mH264<Box<dyn M2mDevice>>;

/// Opens the device (a real node, or the tests' fake).
pub type Opener = Box<dyn FnMut() -> std::io::Result<Box<dyn M2mDevice>> + Send>;

/// The hardware side of a backend: the device, its session and its retry schedule.
struct Hardware<S> {
    path: PathBuf,
    open: Opener,
    session: Option<S>,
    backoff: Backoff,
    frames: u64,
}

impl<S> Hardware<S> {
    fn new(path: PathBuf) -> Self {
        let node = path.clone();
        Hardware::with_opener(path, Box::new(move || open_boxed(&node)))
    }

    fn with_opener(path: PathBuf, open: Opener) -> Self {
        Hardware {
            path,
            open,
            session: None,
            backoff: Backoff::new(),
            frames: 0,
        }
    }

    /// Opens the device; an error says which.
    fn device(&mut self) -> Result<Box<dyn M2mDevice>, M2mError> {
        (self.open)().map_err(|source| M2mError::Io {
            path: self.path.display().to_string(),
            what: "opening",
            source,
        })
    }

    /// The session failed to open or to encode: software until the next try.
    fn failed(&mut self, now: Instant, e: &M2mError, software: &str, report: &Report) {
        self.session = None;
        let wait = self.backoff.failed(now);
        tracing::warn!(device = %self.path.display(), error = %e, "hardware encoder failed; {software} until it is tried again in {wait:?}");
        report(EncoderNews {
            using: format!("software ({software})"),
            why: format!("{e}; tried again in {wait:?}"),
            fell_back: true,
        });
    }

    fn opened(&mut self, card: &str, what: String, report: &Report) {
        self.frames = 0;
        tracing::info!(device = %self.path.display(), card, "hardware encoder: {what}");
        report(EncoderNews {
            using: format!("v4l2:{} ({card})", self.path.display()),
            why: what,
            fell_back: false,
        });
    }

    fn encoded(&mut self) {
        self.frames += 1;
        if self.frames == PROVEN_FRAMES {
            self.backoff.proven();
        }
    }
}

fn card<D: M2mDevice>(dev: &D) -> String {
    dev.info().card.clone()
}

/// One JPEG pool worker's encoder: TurboJPEG, or a hardware JPEG encoder with TurboJPEG as
/// the fallback.
pub struct JpegBackend {
    software: JpegEncoder,
    /// The device's session, and the stream's frame rate to open it with.
    hardware: Option<(Hardware<HwJpeg>, u32)>,
    /// The newest hardware JPEG, which [`Self::encode`] lends out like TurboJPEG's buffer.
    coded: Bytes,
    report: Report,
}

impl JpegBackend {
    /// TurboJPEG at `quality`; with `hardware` (the node, and the stream's frame rate) that
    /// node first.
    pub fn new(
        quality: u8,
        hardware: Option<(PathBuf, u32)>,
        report: Report,
    ) -> Result<JpegBackend, EncodeError> {
        Ok(JpegBackend {
            software: JpegEncoder::new(quality)?,
            hardware: hardware.map(|(path, fps)| (Hardware::new(path), fps)),
            coded: Bytes::new(),
            report,
        })
    }

    /// As [`Self::new`] with a device from `open` (the tests' fake) named `path`.
    #[cfg(test)]
    pub(crate) fn with_opener(
        quality: u8,
        path: PathBuf,
        fps: u32,
        open: Opener,
        report: Report,
    ) -> Result<JpegBackend, EncodeError> {
        Ok(JpegBackend {
            software: JpegEncoder::new(quality)?,
            hardware: Some((Hardware::with_opener(path, open), fps)),
            coded: Bytes::new(),
            report,
        })
    }

    /// Compresses 4:2:0 planes; the returned slice is valid until the next call.
    pub fn encode(
        &mut self,
        planes: &dyn Yuv420Buffer,
        width: u32,
        height: u32,
        quality: u8,
    ) -> Result<&[u8], EncodeError> {
        if let Some((hw, fps)) = &mut self.hardware {
            let now = Instant::now();
            if hw
                .session
                .as_ref()
                .is_some_and(|s| s.size() != (width, height))
            {
                hw.session = None;
            }
            if hw.session.is_none() && hw.backoff.ready(now) {
                let opened = hw
                    .device()
                    .and_then(|d| M2mJpeg::with_device(d, width, height, *fps, quality));
                match opened {
                    Ok(s) => {
                        let what = format!("JPEG at {width}x{height}");
                        hw.opened(&card(s.encoder().device()), what, &self.report);
                        hw.session = Some(s);
                    }
                    Err(e) => hw.failed(now, &e, "TurboJPEG", &self.report),
                }
            }
            if let Some(s) = &mut hw.session {
                match s.encode(planes, width, height, quality) {
                    Ok(jpeg) => {
                        hw.encoded();
                        self.coded = jpeg;
                        return Ok(&self.coded);
                    }
                    // The frame's fault, not the device's.
                    Err(M2mError::BadPlanes { width, height }) => {
                        return Err(EncodeError::BadPlanes { width, height })
                    }
                    Err(e) => hw.failed(now, &e, "TurboJPEG", &self.report),
                }
            }
        }
        self.software.encode(planes, width, height, quality)
    }
}

/// The H.264 stage's encoder: OpenH264, or a hardware H.264 encoder with OpenH264 as the
/// fallback. Holds no encoder until the first frame, and none after [`Self::release`].
pub struct H264Backend {
    software: Option<H264Encoder>,
    hardware: Option<Hardware<HwH264>>,
    report: Report,
}

impl H264Backend {
    pub fn new(hardware: Option<PathBuf>, report: Report) -> H264Backend {
        H264Backend {
            software: None,
            hardware: hardware.map(Hardware::new),
            report,
        }
    }

    /// As [`Self::new`] with a device from `open` (the tests' fake) named `path`.
    #[cfg(test)]
    pub(crate) fn with_opener(path: PathBuf, open: Opener, report: Report) -> H264Backend {
        H264Backend {
            software: None,
            hardware: Some(Hardware::with_opener(path, open)),
            report,
        }
    }

    /// Whether an encoder is held.
    pub fn holds_encoder(&self) -> bool {
        self.software.is_some() || self.hardware.as_ref().is_some_and(|h| h.session.is_some())
    }

    /// Gives the encoders back (nobody consumes H.264 any more).
    pub fn release(&mut self) {
        self.software = None;
        if let Some(hw) = &mut self.hardware {
            hw.session = None;
        }
    }

    /// Encodes one frame with `settings` (the encoder is remade when they change), as an
    /// IDR when `keyframe` (rate-limited by the encoder).
    pub fn encode(
        &mut self,
        settings: H264Settings,
        keyframe: bool,
        planes: &dyn Yuv420Buffer,
        seq: u64,
        captured: CaptureTime,
    ) -> Result<Option<AccessUnit>, H264Error> {
        let now = Instant::now();
        if let Some(hw) = &mut self.hardware {
            if hw
                .session
                .as_ref()
                .is_some_and(|s| s.settings() != settings)
            {
                hw.session = None;
            }
            if hw.session.is_none() && hw.backoff.ready(now) {
                let opened = hw.device().and_then(|d| M2mH264::with_device(d, settings));
                match opened {
                    Ok(s) => {
                        let what = format!(
                            "H.264 at {}x{}, {} bit/s, IDR every {} frames{}",
                            settings.width,
                            settings.height,
                            settings.bitrate,
                            settings.gop,
                            refused(s.encoder().refused())
                        );
                        hw.opened(&card(s.encoder().device()), what, &self.report);
                        hw.session = Some(s);
                        // Its memory back: a new software encoder starts with an IDR anyway.
                        self.software = None;
                    }
                    Err(e) => hw.failed(now, &e, "OpenH264", &self.report),
                }
            }
            if let Some(s) = &mut hw.session {
                if keyframe {
                    s.request_keyframe();
                }
                match s.encode(planes, seq, captured, now) {
                    Ok(unit) => {
                        hw.encoded();
                        return Ok(unit);
                    }
                    Err(M2mError::BadPlanes { width, height }) => {
                        return Err(H264Error::BadPlanes { width, height })
                    }
                    Err(e) => hw.failed(now, &e, "OpenH264", &self.report),
                }
            }
        }
        if self.software.as_ref().map(|e| e.settings()) != Some(settings) {
            // A new encoder's first frame is an IDR, so consumers that were mid-GOP on the
            // hardware encoder's stream can go on.
            self.software = Some(H264Encoder::new(settings)?);
        }
        let enc = self.software.as_mut().expect("made above");
        if keyframe {
            enc.request_keyframe();
        }
        enc.encode(planes, seq, captured, now)
    }
}

fn refused(list: &[String]) -> String {
    if list.is_empty() {
        String::new()
    } else {
        format!(" (the driver refused: {})", list.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_retry_wait_doubles_to_a_minute_and_resets_once_proven() {
        let mut b = Backoff::new();
        let t = Instant::now();
        assert!(b.ready(t));
        let waits: Vec<u64> = (0..8).map(|_| b.failed(t).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert!(!b.ready(t + Duration::from_secs(59)));
        assert!(b.ready(t + Duration::from_secs(60)));
        b.proven();
        assert_eq!(b.failed(t), FIRST_RETRY);
    }

    fn recorder() -> (Report, Arc<Mutex<Vec<EncoderNews>>>) {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        (Arc::new(move |n| h.lock().unwrap().push(n)), heard)
    }

    #[test]
    fn a_missing_device_falls_back_to_software_says_why_and_waits_before_retrying() {
        let planes = super::super::m2m::fake::Planes::grey(64, 48);
        let (report, heard) = recorder();
        let missing = PathBuf::from("/dev/no-such-encoder");
        let mut jpeg = JpegBackend::new(80, Some((missing.clone(), 30)), report.clone()).unwrap();
        for _ in 0..3 {
            let out = jpeg.encode(&planes, 64, 48, 80).unwrap();
            assert_eq!(out[..2], [0xFF, 0xD8], "TurboJPEG's JPEG");
        }
        let news = heard.lock().unwrap().clone();
        assert_eq!(news.len(), 1, "tried once, then waits: {news:?}");
        assert_eq!(news[0].using, "software (TurboJPEG)");
        assert!(news[0].fell_back);
        assert!(
            news[0].why.starts_with("/dev/no-such-encoder: opening: ")
                && news[0].why.ends_with("tried again in 1s"),
            "{}",
            news[0].why
        );

        let mut h264 = H264Backend::new(Some(missing), report);
        let settings = H264Settings {
            width: 64,
            height: 48,
            fps: 30,
            bitrate: 200_000,
            gop: 30,
        };
        let unit = h264
            .encode(settings, false, &planes, 1, CaptureTime::now())
            .unwrap()
            .expect("OpenH264's first unit");
        assert!(unit.keyframe);
        assert!(h264.holds_encoder());
        h264.release();
        assert!(!h264.holds_encoder());
        assert_eq!(heard.lock().unwrap()[1].using, "software (OpenH264)");
    }

    /// A fake device that fails frames `failing` on its first opening, then works.
    fn flaky(
        coded: super::super::m2m::FourCc,
        script: fn(u64) -> Vec<Vec<u8>>,
        failing: std::ops::Range<u64>,
    ) -> (Opener, Arc<std::sync::atomic::AtomicU32>) {
        use super::super::m2m::fake::FakeDevice;
        use std::sync::atomic::{AtomicU32, Ordering};
        let opens = Arc::new(AtomicU32::new(0));
        let counter = opens.clone();
        let open: Opener = Box::new(move || {
            let mut dev = FakeDevice::encoder(coded, script);
            if counter.fetch_add(1, Ordering::Relaxed) == 0 {
                dev.failing = failing.clone();
            }
            Ok(Box::new(dev) as Box<dyn M2mDevice>)
        });
        (open, opens)
    }

    #[test]
    fn a_jpeg_device_failing_mid_stream_hands_over_to_turbojpeg_and_comes_back() {
        use super::super::m2m::FourCc;
        use std::sync::atomic::Ordering;
        const HW_JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xD9];
        let planes = super::super::m2m::fake::Planes::grey(64, 48);
        let (report, heard) = recorder();
        let (open, opens) = flaky(FourCc::JPEG, |_| vec![HW_JPEG.to_vec()], 2..3);
        let mut jpeg = JpegBackend::with_opener(80, "/dev/fake".into(), 30, open, report).unwrap();
        let mut hardware = Vec::new();
        for _ in 0..4 {
            hardware.push(jpeg.encode(&planes, 64, 48, 80).unwrap() == HW_JPEG);
        }
        // Frames 0 and 1 on the device; frame 2 failed there and was made by TurboJPEG
        // (no gap), as is frame 3 while the device waits for its retry.
        assert_eq!(hardware, [true, true, false, false]);
        let news = heard.lock().unwrap().clone();
        assert_eq!(news.len(), 2, "{news:?}");
        assert_eq!(news[0].using, "v4l2:/dev/fake (fake encoder)");
        assert!(!news[0].fell_back);
        assert_eq!(news[1].using, "software (TurboJPEG)");
        assert!(news[1].fell_back);
        assert!(
            news[1].why.contains("flagged the coded buffer as an error")
                && news[1].why.ends_with("tried again in 1s"),
            "{}",
            news[1].why
        );
        // After the wait the device is opened again, and works.
        std::thread::sleep(FIRST_RETRY);
        assert_eq!(jpeg.encode(&planes, 64, 48, 80).unwrap(), HW_JPEG);
        assert_eq!(opens.load(Ordering::Relaxed), 2);
        assert_eq!(heard.lock().unwrap().len(), 3);
        // A new size is a new session, not a failure.
        assert_eq!(
            jpeg.encode(&super::super::m2m::fake::Planes::grey(32, 32), 32, 32, 80)
                .unwrap(),
            HW_JPEG
        );
        assert_eq!(opens.load(Ordering::Relaxed), 3);
        assert!(heard.lock().unwrap().iter().filter(|n| n.fell_back).count() == 1);
    }

    #[test]
    fn an_h264_device_failing_mid_gop_hands_over_to_openh264_with_an_idr() {
        use super::super::m2m::FourCc;
        fn script(n: u64) -> Vec<Vec<u8>> {
            let nal: &[u8] = if n == 0 {
                &[0x67, 0x42, 0, 0, 0, 1, 0x68, 0xCE, 0, 0, 0, 1, 0x65, 0x88]
            } else {
                &[0x41, 0x9A]
            };
            vec![[&[0, 0, 0, 1][..], nal].concat()]
        }
        let planes = super::super::m2m::fake::Planes::grey(64, 48);
        let (report, heard) = recorder();
        let (open, _) = flaky(FourCc::H264, script, 2..3);
        let mut h264 = H264Backend::with_opener("/dev/fake".into(), open, report);
        let settings = H264Settings {
            width: 64,
            height: 48,
            fps: 30,
            bitrate: 200_000,
            gop: 300,
        };
        let mut units = Vec::new();
        for seq in 0..4 {
            let u = h264
                .encode(settings, false, &planes, seq, CaptureTime::now())
                .unwrap()
                .expect("a unit a frame");
            units.push((u.keyframe, u.data.len() > 8));
        }
        // 0: the device's IDR, 1: its P-frame; 2: the device failed, OpenH264's first unit
        // is an IDR with SPS/PPS, so consumers in the middle of the device's GOP go on.
        assert!(units[0].0 && !units[1].0);
        assert_eq!(units[2], (true, true));
        assert!(!units[3].0);
        let news = heard.lock().unwrap().clone();
        assert_eq!(
            news.iter().map(|n| n.fell_back).collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(news[1].using, "software (OpenH264)");
    }
}
