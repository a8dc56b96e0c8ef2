//! The H.264 stage of one stream: one thread that encodes frames into the hub's H.264 track
//! while the track has consumers, and holds no encoder while it has none.
//!
//! Frames are offered through a one-frame slot (latest wins, like the JPEG pool's idle-worker
//! rule): the source never waits for the encoder, and an encoder slower than the source skips
//! frames rather than queueing them (each skipped frame is a gap the next P-frame covers).
//! The planes are shared with the JPEG encoders, not copied. Frames that arrive as JPEG (USB
//! MJPEG cameras, upstream MJPEG) are decoded here with TurboJPEG, which only happens while
//! someone consumes H.264.
//!
//! The track's keyframe requests (a consumer joined, or fell behind) reach the encoder with
//! the next frame, which it turns into an IDR unless it forced one less than 0.5 s ago, or a
//! keyframe at or after the unit the request was made from has been published meanwhile.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::encode::fallback::H264Backend;
use crate::encode::h264::H264Settings;
use crate::frame::{CaptureTime, SharedPlanes, Yuv420Buffer};
use crate::hub::h264::{H264Track, TrackNews};

/// What the stage encodes: shared planes, or a JPEG to decode first.
pub enum Picture {
    Planes(SharedPlanes),
    Jpeg(Bytes),
}

/// One frame offered to the stage.
pub struct Job {
    pub seq: u64,
    pub captured: CaptureTime,
    pub width: u32,
    pub height: u32,
    pub picture: Picture,
}

/// How the stage's encoders are set up, apart from the frame size (taken from each frame).
#[derive(Debug, Clone, Copy)]
pub struct StageSettings {
    pub fps: u32,
    /// Bits per second; `None`: [`crate::encode::h264::default_bitrate`] for the frame size.
    pub bitrate: Option<u32>,
    /// Seconds from one IDR to the next.
    pub gop_seconds: f64,
}

#[cfg(test)]
impl StageSettings {
    pub(crate) fn for_tests() -> StageSettings {
        StageSettings {
            fps: 30,
            bitrate: None,
            gop_seconds: 2.0,
        }
    }
}

#[derive(Default)]
struct Slot {
    job: Option<Job>,
    consumers: usize,
    /// A keyframe is wanted at this unit index or later (the earliest asked for).
    keyframe_from: Option<u64>,
    stop: bool,
}

impl Slot {
    fn want_keyframe_from(&mut self, from: u64) {
        self.keyframe_from = Some(self.keyframe_from.map_or(from, |f| f.min(from)));
    }
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    /// The track's counters, which the stage keeps.
    track: H264Track,
}

/// Handle to the stage: offer frames, stop it.
pub struct H264Stage {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl H264Stage {
    /// Starts the stage's thread and registers it as `track`'s listener; with `hardware`, an
    /// M2M H.264 encoder node it uses (OpenH264 when it fails).
    pub fn start(
        track: H264Track,
        settings: StageSettings,
        hardware: Option<std::path::PathBuf>,
    ) -> std::io::Result<H264Stage> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            wake: Condvar::new(),
            track: track.clone(),
        });
        let weak = Arc::downgrade(&shared);
        let listener = Box::new(move |news: TrackNews| {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut slot = lock(&shared.slot);
            match news {
                TrackNews::Consumers(n) => slot.consumers = n,
                TrackNews::KeyframeWanted(from) => slot.want_keyframe_from(from),
            }
            drop(slot);
            shared.wake.notify_one();
        });
        if track.on_change(listener).is_err() {
            return Err(std::io::Error::other("the H.264 track already has a stage"));
        }
        {
            // A stage started late (a source that passes H.264 through fell back to the
            // encoder) has consumers already, who wait for a keyframe.
            let mut slot = lock(&shared.slot);
            slot.consumers = track.consumers();
            if slot.consumers > 0 {
                slot.want_keyframe_from(track.end());
            }
        }
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("h264-enc".into())
                .spawn(move || run(&shared, &track, settings, hardware))?
        };
        Ok(H264Stage {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether anyone consumes H.264 now (else frames need not be offered).
    pub fn wanted(&self) -> bool {
        lock(&self.shared.slot).consumers > 0
    }

    /// Makes the next frame a keyframe (the units before it were not this encoder's).
    pub fn request_keyframe(&self) {
        let from = self.shared.track.end();
        lock(&self.shared.slot).want_keyframe_from(from);
    }

    /// Offers a frame; a frame still waiting is replaced (it was never started).
    pub fn offer(&self, job: Job) {
        let mut slot = lock(&self.shared.slot);
        if slot.consumers == 0 {
            return;
        }
        if slot.job.replace(job).is_some() {
            let stats = self.shared.track.stats();
            stats.skipped_busy.fetch_add(1, Ordering::Relaxed);
        }
        drop(slot);
        self.shared.wake.notify_one();
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        lock(&self.shared.slot).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for H264Stage {
    fn drop(&mut self) {
        self.halt();
    }
}

/// An encoder is dropped after this long without consumers: a client that reconnects at once
/// (a player reloading) keeps it, an unwatched stream gives its memory back.
const IDLE_ENCODER: Duration = Duration::from_secs(5);

fn run(
    shared: &Shared,
    track: &H264Track,
    settings: StageSettings,
    hardware: Option<std::path::PathBuf>,
) {
    let report = {
        let track = track.clone();
        Arc::new(move |news| track.set_encoder(|s| crate::pipeline::encoders::apply(s, news)))
    };
    let mut encoder = H264Backend::new(hardware, report);
    let mut idle_since: Option<Instant> = None;
    let mut decoder: Option<turbojpeg::Decompressor> = None;
    loop {
        let (job, keyframe) = {
            let mut slot = lock(&shared.slot);
            loop {
                if slot.stop {
                    track.close();
                    return;
                }
                if slot.consumers == 0 {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if encoder.holds_encoder() && since.elapsed() >= IDLE_ENCODER {
                        encoder.release();
                        decoder = None;
                        tracing::debug!("no H.264 consumers; encoder released");
                    }
                } else {
                    idle_since = None;
                }
                if let Some(job) = slot.job.take() {
                    break (job, slot.keyframe_from.take());
                }
                slot = shared
                    .wake
                    .wait_timeout(slot, Duration::from_millis(500))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        // Served already: the keyframe this encoder was making when the request came (the
        // request was made before that keyframe was published, so it asked from its index).
        let keyframe = keyframe.is_some_and(|from| !track.has_keyframe_from(from));
        let start = Instant::now();
        match encode(&mut encoder, &mut decoder, job, keyframe, settings) {
            Ok(Some(unit)) => {
                let stats = track.stats();
                stats.encoded.fetch_add(1, Ordering::Relaxed);
                stats
                    .encode_us_total
                    .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                track.publish(unit);
            }
            Ok(None) => {}
            Err(e) => {
                track.stats().errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "H.264 encode failed; frame dropped");
            }
        }
    }
}

/// Encodes one job (the backend makes, or remakes when the frame size changed, its encoder).
fn encode(
    encoder: &mut H264Backend,
    decoder: &mut Option<turbojpeg::Decompressor>,
    job: Job,
    keyframe: bool,
    settings: StageSettings,
) -> Result<Option<crate::frame::AccessUnit>, String> {
    let (width, height) = (job.width, job.height);
    let wanted = H264Settings {
        width,
        height,
        fps: settings.fps,
        bitrate: settings
            .bitrate
            .unwrap_or_else(|| crate::encode::h264::default_bitrate(width, height, settings.fps)),
        gop: ((settings.gop_seconds * settings.fps as f64).round() as u32).max(1),
    };
    let decoded;
    let planes: &dyn Yuv420Buffer = match &job.picture {
        Picture::Planes(p) => p.as_ref(),
        Picture::Jpeg(jpeg) => {
            if decoder.is_none() {
                *decoder = Some(turbojpeg::Decompressor::new().map_err(|e| e.to_string())?);
            }
            decoded = DecodedPlanes::decode(decoder.as_mut().expect("made above"), jpeg)?;
            if (decoded.width, decoded.height) != (width as usize, height as usize) {
                return Err(format!(
                    "JPEG is {}x{}, the frame says {width}x{height}",
                    decoded.width, decoded.height
                ));
            }
            &decoded
        }
    };
    encoder
        .encode(wanted, keyframe, planes, job.seq, job.captured)
        .map_err(|e| e.to_string())
}

/// A JPEG decoded to I420 planes (4:2:0 JPEGs decode without conversion; others are
/// converted by TurboJPEG).
struct DecodedPlanes {
    buf: Vec<u8>,
    width: usize,
    height: usize,
}

impl DecodedPlanes {
    fn decode(d: &mut turbojpeg::Decompressor, jpeg: &[u8]) -> Result<DecodedPlanes, String> {
        let header = d.read_header(jpeg).map_err(|e| e.to_string())?;
        let (width, height) = (header.width, header.height);
        if width % 2 != 0 || height % 2 != 0 {
            return Err(format!("JPEG {width}x{height} has odd dimensions"));
        }
        let mut buf = vec![0u8; width * height * 3 / 2];
        let image = turbojpeg::YuvImage {
            pixels: buf.as_mut_slice(),
            width,
            align: 1,
            height,
            subsamp: turbojpeg::Subsamp::Sub2x2,
        };
        d.decompress_to_yuv(jpeg, image)
            .map_err(|e| e.to_string())?;
        Ok(DecodedPlanes { buf, width, height })
    }
}

impl Yuv420Buffer for DecodedPlanes {
    fn planes(&self) -> [&[u8]; 3] {
        let y = self.width * self.height;
        let c = y / 4;
        let (luma, chroma) = self.buf.split_at(y);
        let (u, v) = chroma.split_at(c);
        [luma, u, v]
    }

    fn strides(&self) -> [usize; 3] {
        [self.width, self.width / 2, self.width / 2]
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat grey 64×64 picture.
    struct Grey;

    impl Yuv420Buffer for Grey {
        fn planes(&self) -> [&[u8]; 3] {
            static Y: [u8; 64 * 64] = [128; 64 * 64];
            static C: [u8; 32 * 32] = [128; 32 * 32];
            [&Y, &C, &C]
        }
        fn strides(&self) -> [usize; 3] {
            [64, 32, 32]
        }
    }

    fn job(seq: u64) -> Job {
        Job {
            seq,
            captured: CaptureTime::now(),
            width: 64,
            height: 64,
            picture: Picture::Planes(Arc::new(Grey)),
        }
    }

    /// Offers frame `seq` and waits until it is published; whether it is a keyframe.
    fn encode(stage: &H264Stage, track: &H264Track, seq: u64) -> bool {
        let end = track.end();
        stage.offer(job(seq));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !track.has_unit(end) {
            assert!(Instant::now() < deadline, "frame {seq} not encoded");
            std::thread::sleep(Duration::from_millis(2));
        }
        track.has_keyframe_from(end)
    }

    #[test]
    fn a_request_served_by_the_keyframe_being_made_makes_no_second_one() {
        let settings = StageSettings {
            gop_seconds: 600.0,
            ..StageSettings::for_tests()
        };
        let track = H264Track::new();
        let stage = H264Stage::start(track.clone(), settings, None).unwrap();
        let _consumer = track.consume(None);
        assert!(encode(&stage, &track, 0));
        // A request from unit 0 that reached the stage only after unit 0 (an IDR) was
        // published: a client that joined while the encoder made that IDR starts at it.
        track.tell(TrackNews::KeyframeWanted(0));
        // Frames over 0.6 s, past the 0.5 s between forced IDRs: all P-frames.
        let mut flags = Vec::new();
        for seq in 1..13 {
            flags.push(encode(&stage, &track, seq));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(flags.iter().all(|k| !k), "{flags:?}");
        // A request for a unit not yet made is served (the 0.5 s gap has passed).
        track.tell(TrackNews::KeyframeWanted(track.end()));
        assert!(encode(&stage, &track, 13));
        stage.stop();
    }
}
