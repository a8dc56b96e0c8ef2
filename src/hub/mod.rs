//! The hub: the newest encoded frame, who is watching, and the counters behind `/state`.
//! It knows no source and no codec: encoded units with their capture time come in, outputs
//! take them, and the stream's pipeline posts the state it computed ([`SourceState`]) here
//! for the outputs to read.
//!
//! Encoders [`Hub::publish`] into a `tokio::sync::watch` that holds only the newest frame
//! (latest wins): an output that is busy writing simply sees a later frame next time, so a
//! slow client skips frames and never queues them. Sending one frame to a thousand clients is
//! a thousand refcount bumps on the same `Bytes`. This is the JPEG track. A second kind of
//! unit per stream (H.264 access units, where a new consumer starts at the newest keyframe
//! and a slow one skips to the next keyframe) belongs beside it as a track of its own with
//! its own subscribe call, so outputs that use only JPEG do not change: that is
//! [`h264::H264Track`], [`Hub::h264`].
//!
//! Outputs hold a [`ViewerGuard`] while they need frames. The count drives on-demand
//! capture: the pipeline registers one listener ([`Hub::on_viewers`]) and decides from the
//! counts when the source runs.

pub mod h264;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::frame::{EncodedFrame, SourceInfo};

/// Which output a viewer uses; counted separately for `/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Mjpeg = 0,
    WebSocket = 1,
    Snapshot = 2,
    /// A publisher pushing the stream to a server (not counted against `max_viewers`).
    Publish = 3,
    /// An RTSP session (counted against `max_viewers` like MJPEG and WebSocket viewers).
    Rtsp = 4,
    /// A WebSocket client that asked for H.264 (the player's WebCodecs path): counted against
    /// `max_viewers`, but not a JPEG viewer, so with only these and RTSP watching no JPEG is
    /// encoded.
    WebSocketH264 = 5,
    /// A WebRTC session (WHEP), counted like an RTSP session.
    WebRtc = 6,
}

const OUTPUTS: usize = 7;

/// What a publisher is doing, for `/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishState {
    Connecting,
    Publishing,
    /// Failed; waiting to try again.
    Retrying,
    Stopped,
}

impl PublishState {
    pub fn as_str(&self) -> &'static str {
        match self {
            PublishState::Connecting => "connecting",
            PublishState::Publishing => "publishing",
            PublishState::Retrying => "retrying",
            PublishState::Stopped => "stopped",
        }
    }
}

/// One publisher's status, as `/state` shows it.
#[derive(Debug, Clone)]
pub struct PublisherStatus {
    /// The URL, password hidden.
    pub url: String,
    pub state: PublishState,
    /// Why it last failed.
    pub error: Option<String>,
    /// Times it failed and started again.
    pub restarts: u64,
    /// Bytes handed to the muxer.
    pub bytes: u64,
}

/// A publisher's handle to its status in the hub.
#[derive(Clone)]
pub struct Publisher(Arc<Mutex<PublisherStatus>>);

impl Publisher {
    pub fn set(&self, state: PublishState, error: Option<String>) {
        let mut s = lock(&self.0);
        s.state = state;
        if error.is_some() {
            s.error = error;
        }
    }

    /// It failed for `why` and will try again.
    pub fn failed(&self, why: &str) {
        let mut s = lock(&self.0);
        s.state = PublishState::Retrying;
        s.error = Some(why.to_owned());
        s.restarts += 1;
    }

    pub fn sent(&self, bytes: usize) {
        lock(&self.0).bytes += bytes as u64;
    }
}

/// What the source is doing, as reported in `/state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    Starting,
    /// Waiting for a viewer; nothing is captured.
    Idle,
    Streaming,
    /// Running, but no frame for longer than the stall timeout; viewers see "no signal".
    Stalled(String),
    /// Failed; the supervisor will retry. Viewers see "no signal" with this reason.
    Error(String),
    Stopped,
}

impl SourceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Idle => "idle",
            SourceState::Streaming => "streaming",
            SourceState::Stalled(_) => "stalled",
            SourceState::Error(_) => "error",
            SourceState::Stopped => "stopped",
        }
    }
}

/// What a stream is doing, in the few words the service manager and the status LED need.
/// Derived from the same state `/state` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// The source is starting.
    Starting,
    /// Frames flow to this many viewers.
    Live { viewers: usize },
    /// Nobody watches; nothing is captured.
    Idle,
    /// Viewers see "no signal": the source failed (its supervisor retries it) or, when
    /// `stalled`, it runs but delivers nothing (a wedged device or upstream).
    Down { stalled: bool },
    /// Shutting down.
    Stopped,
}

impl Activity {
    /// One word for logs and status lines.
    pub fn as_str(&self) -> &'static str {
        match self {
            Activity::Starting => "starting",
            Activity::Live { .. } => "live",
            Activity::Idle => "idle",
            Activity::Down { stalled: true } => "stalled",
            Activity::Down { stalled: false } => "down",
            Activity::Stopped => "stopped",
        }
    }

    /// The activity of several streams as one: the worst wins (stopped, then down, then
    /// starting), else live (viewers summed) if any stream is, else idle.
    pub fn combine(all: impl IntoIterator<Item = Activity>) -> Activity {
        let mut out = Activity::Idle;
        for a in all {
            out = match (out, a) {
                (Activity::Stopped, _) | (_, Activity::Stopped) => Activity::Stopped,
                (Activity::Down { stalled: x }, Activity::Down { stalled: y }) => {
                    Activity::Down { stalled: x || y }
                }
                (d @ Activity::Down { .. }, _) | (_, d @ Activity::Down { .. }) => d,
                (Activity::Starting, _) | (_, Activity::Starting) => Activity::Starting,
                (Activity::Live { viewers: x }, Activity::Live { viewers: y }) => {
                    Activity::Live { viewers: x + y }
                }
                (l @ Activity::Live { .. }, _) | (_, l @ Activity::Live { .. }) => l,
                _ => Activity::Idle,
            };
        }
        out
    }
}

/// Monotonic counters, exported by `/state` and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames the source produced.
    pub captured: AtomicU64,
    /// Frames the encoders finished.
    pub encoded: AtomicU64,
    /// Frames that became the newest frame in the hub.
    pub published: AtomicU64,
    /// Frames dropped because every encoder was busy.
    pub dropped_busy: AtomicU64,
    /// Encoded frames dropped because a newer one was already published.
    pub dropped_late: AtomicU64,
    /// Frames the encoder failed on.
    pub encode_errors: AtomicU64,
    /// Total encode time in microseconds (divide by `encoded` for the mean).
    pub encode_us_total: AtomicU64,
    /// Viewers refused because `max_viewers` was reached.
    pub viewers_refused: AtomicU64,
    /// "No signal" frames published while the source was down or stalled.
    pub no_signal_frames: AtomicU64,
    /// Times the source failed and was restarted.
    pub source_restarts: AtomicU64,
}

/// Configured facts shown beside the measurements.
#[derive(Debug, Clone)]
pub struct PipelineInfo {
    /// The stream's name (its URLs are `/cam/<name>/…`).
    pub name: String,
    pub source: SourceInfo,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub workers: usize,
    pub quality: u8,
    pub max_viewers: usize,
    /// The H.264 encoder's target bits per second (configured, or the default for the size).
    pub h264_bitrate: u32,
    /// Seconds from one H.264 keyframe to the next.
    pub h264_gop_s: u32,
}

/// Publish times kept for the measured frame rate (enough for 2 s at 120 fps).
const FPS_WINDOW_FRAMES: usize = 256;
/// Frames older than this do not count toward the measured rate.
const FPS_WINDOW: Duration = Duration::from_secs(2);

/// Told the number of viewers (all outputs) each time it changes.
pub type ViewerListener = Box<dyn Fn(usize) + Send + Sync>;

struct Shared {
    latest: watch::Sender<Option<Arc<EncodedFrame>>>,
    /// The H.264 access units, for the outputs that send H.264.
    h264: h264::H264Track,
    publishers: Mutex<Vec<Publisher>>,
    /// Viewers of every output; changed and reported under this lock, so the listener sees
    /// the counts in order.
    viewers_total: Mutex<usize>,
    listener: OnceLock<ViewerListener>,
    viewers: [AtomicUsize; OUTPUTS],
    stats: Stats,
    publish_times: Mutex<VecDeque<Instant>>,
    source_state: Mutex<SourceState>,
    /// What the source said it delivers ([`Hub::set_source_name`]); `None`: the configured
    /// name in `info`.
    source_name: Mutex<Option<String>>,
    /// When the source last produced a frame.
    last_captured: Mutex<Option<Instant>>,
    /// Sequence numbers for every frame, real or "no signal", so they interleave in order.
    next_seq: AtomicU64,
    info: PipelineInfo,
    /// The JPEG encoder in use ([`Hub::set_jpeg_encoder`]).
    jpeg_encoder: Mutex<EncoderState>,
    started: Instant,
}

/// Which encoder makes one of the stream's codecs, for `/state`: the configured choice
/// (`auto`, `software`, `v4l2:/dev/videoN`), what runs, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EncoderState {
    pub configured: String,
    /// `software (TurboJPEG)`, `software (OpenH264)` or `v4l2:/dev/videoN (card)`.
    pub using: String,
    pub why: String,
    /// Times a hardware encoder failed and software took over.
    pub fallbacks: u64,
}

/// Cheap-to-clone handle to the shared hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[cfg(test)]
impl PipelineInfo {
    /// A 16x16, 30 fps stream of the `test` kind, one worker, for unit tests.
    pub(crate) fn for_tests(max_viewers: usize) -> PipelineInfo {
        PipelineInfo {
            name: "main".into(),
            source: SourceInfo {
                kind: "test",
                name: "unit".into(),
            },
            width: 16,
            height: 16,
            fps: 30,
            workers: 1,
            quality: 80,
            max_viewers,
            h264_bitrate: 100_000,
            h264_gop_s: 2,
        }
    }
}

/// Too many viewers already; the output answers 503.
#[derive(Debug, thiserror::Error)]
#[error("viewer limit of {0} reached")]
pub struct ViewerLimit(pub usize);

impl Hub {
    pub fn new(info: PipelineInfo) -> Self {
        let (latest, _) = watch::channel(None);
        Hub {
            shared: Arc::new(Shared {
                latest,
                h264: h264::H264Track::new(),
                publishers: Mutex::new(Vec::new()),
                viewers_total: Mutex::new(0),
                listener: OnceLock::new(),
                viewers: Default::default(),
                stats: Stats::default(),
                publish_times: Mutex::new(VecDeque::with_capacity(FPS_WINDOW_FRAMES)),
                source_state: Mutex::new(SourceState::Starting),
                source_name: Mutex::new(None),
                last_captured: Mutex::new(None),
                next_seq: AtomicU64::new(1),
                info,
                jpeg_encoder: Mutex::new(EncoderState::default()),
                started: Instant::now(),
            }),
        }
    }

    /// A 16x16, 30 fps hub for unit tests anywhere in the crate.
    #[cfg(test)]
    pub(crate) fn for_tests(max_viewers: usize) -> Hub {
        Hub::new(PipelineInfo::for_tests(max_viewers))
    }

    pub fn info(&self) -> &PipelineInfo {
        &self.shared.info
    }

    /// Changes what `/state` says of the JPEG encoder.
    pub fn set_jpeg_encoder(&self, change: impl FnOnce(&mut EncoderState)) {
        change(&mut lock(&self.shared.jpeg_encoder));
    }

    pub fn jpeg_encoder(&self) -> EncoderState {
        lock(&self.shared.jpeg_encoder).clone()
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The next frame sequence number (strictly increasing for the life of the process).
    pub fn next_seq(&self) -> u64 {
        self.shared.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that the source produced a frame.
    pub fn note_captured(&self) {
        self.shared.stats.captured.fetch_add(1, Ordering::Relaxed);
        *lock(&self.shared.last_captured) = Some(Instant::now());
    }

    /// Registers the one listener told the number of viewers whenever it changes (the
    /// pipeline, for on-demand capture). A second registration is refused.
    pub fn on_viewers(&self, listener: ViewerListener) -> Result<(), ViewerListener> {
        self.shared.listener.set(listener)
    }

    /// When the source last produced a frame, if ever.
    pub fn last_captured(&self) -> Option<Instant> {
        *lock(&self.shared.last_captured)
    }

    /// Stream and snapshot viewers right now.
    pub fn total_viewers(&self) -> usize {
        *lock(&self.shared.viewers_total)
    }

    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Makes `frame` the newest one unless a newer frame is already there (encoders finish out
    /// of order; a late frame is dropped, never shown after its successor).
    pub fn publish(&self, frame: EncodedFrame) {
        let mut frame = Some(frame);
        let published = self.shared.latest.send_if_modified(|cur| match cur {
            Some(c) if c.seq >= frame.as_ref().expect("set above").seq => false,
            _ => {
                *cur = frame.take().map(Arc::new);
                true
            }
        });
        let stats = &self.shared.stats;
        if published {
            stats.published.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let mut times = lock(&self.shared.publish_times);
            if times.len() == FPS_WINDOW_FRAMES {
                times.pop_front();
            }
            times.push_back(now);
        } else {
            stats.dropped_late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The H.264 track (see [`h264`]).
    pub fn h264(&self) -> &h264::H264Track {
        &self.shared.h264
    }

    /// Registers a publisher to `url` (password hidden) and returns its status handle.
    pub fn add_publisher(&self, url: String) -> Publisher {
        let p = Publisher(Arc::new(Mutex::new(PublisherStatus {
            url,
            state: PublishState::Connecting,
            error: None,
            restarts: 0,
            bytes: 0,
        })));
        lock(&self.shared.publishers).push(p.clone());
        p
    }

    /// Every publisher's status now.
    pub fn publishers(&self) -> Vec<PublisherStatus> {
        lock(&self.shared.publishers)
            .iter()
            .map(|p| lock(&p.0).clone())
            .collect()
    }

    /// The newest frame, if any was ever published.
    pub fn latest(&self) -> Option<Arc<EncodedFrame>> {
        self.shared.latest.borrow().clone()
    }

    /// The newest frame if it was captured within two frame intervals: what a client that
    /// just connected may be shown at once. After an idle spell the newest frame may be
    /// minutes old, and the source is already waking up to make a fresh one.
    pub fn latest_if_fresh(&self) -> Option<Arc<EncodedFrame>> {
        let max_age = Duration::from_secs_f64(2.0 / self.shared.info.fps.max(1) as f64);
        self.latest()
            .filter(|f| f.captured.mono.elapsed() <= max_age)
    }

    /// A receiver that wakes on every publish; `borrow_and_update` gives the newest frame.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<EncodedFrame>>> {
        self.shared.latest.subscribe()
    }

    /// Registers a viewer of `output`, waking the source if it idles.
    pub fn add_viewer(&self, output: Output) -> Result<ViewerGuard, ViewerLimit> {
        let max = self.shared.info.max_viewers;
        let counted = !matches!(output, Output::Snapshot | Output::Publish);
        {
            let mut total = lock(&self.shared.viewers_total);
            if counted && self.stream_viewers() >= max {
                self.shared
                    .stats
                    .viewers_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ViewerLimit(max));
            }
            *total += 1;
            self.shared.viewers[output as usize].fetch_add(1, Ordering::Relaxed);
            self.report_viewers(*total);
        }
        Ok(ViewerGuard {
            hub: self.clone(),
            output,
        })
    }

    /// Viewers of one output right now.
    pub fn viewers(&self, output: Output) -> usize {
        self.shared.viewers[output as usize].load(Ordering::Relaxed)
    }

    fn stream_viewers(&self) -> usize {
        self.viewers(Output::Mjpeg)
            + self.viewers(Output::WebSocket)
            + self.viewers(Output::Rtsp)
            + self.viewers(Output::WebSocketH264)
            + self.viewers(Output::WebRtc)
    }

    /// Tells the listener, if any; called with the count's lock held.
    fn report_viewers(&self, total: usize) {
        if let Some(listener) = self.shared.listener.get() {
            listener(total);
        }
    }

    /// Posts the stream's state (the pipeline's state machine is its only writer).
    /// What the source delivers now, in place of its configured name (`/state`).
    pub fn set_source_name(&self, name: String) {
        *lock(&self.shared.source_name) = Some(name);
    }

    /// The source's name as it last described itself, else the configured one.
    pub fn source_name(&self) -> String {
        lock(&self.shared.source_name)
            .clone()
            .unwrap_or_else(|| self.shared.info.source.name.clone())
    }

    pub fn set_source_state(&self, state: SourceState) {
        *lock(&self.shared.source_state) = state;
    }

    pub fn source_state(&self) -> SourceState {
        lock(&self.shared.source_state).clone()
    }

    /// What the stream is doing now (see [`Activity`]).
    pub fn activity(&self) -> Activity {
        match &*lock(&self.shared.source_state) {
            SourceState::Starting => Activity::Starting,
            SourceState::Idle => Activity::Idle,
            SourceState::Streaming => match self.total_viewers() {
                // The linger after the last viewer left.
                0 => Activity::Idle,
                viewers => Activity::Live { viewers },
            },
            SourceState::Stalled(_) => Activity::Down { stalled: true },
            SourceState::Error(_) => Activity::Down { stalled: false },
            SourceState::Stopped => Activity::Stopped,
        }
    }

    /// Frames published per second over the last couple of seconds; 0 when idle.
    pub fn measured_fps(&self) -> f64 {
        let times = lock(&self.shared.publish_times);
        let now = Instant::now();
        let recent: Vec<&Instant> = times
            .iter()
            .filter(|t| now.duration_since(**t) <= FPS_WINDOW)
            .collect();
        match (recent.first(), recent.last()) {
            (Some(first), Some(last)) if recent.len() >= 2 => {
                // Idle for longer than a few configured intervals: the rate is zero, not stale.
                let interval = Duration::from_secs_f64(1.0 / self.shared.info.fps as f64);
                if now.duration_since(**last) > (interval * 4).max(Duration::from_millis(500)) {
                    return 0.0;
                }
                let span = last.duration_since(**first).as_secs_f64();
                if span > 0.0 {
                    (recent.len() - 1) as f64 / span
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

/// Keeps a viewer counted; dropping it (the client went away) uncounts it.
pub struct ViewerGuard {
    hub: Hub,
    output: Output,
}

impl ViewerGuard {
    /// Counts this viewer under another output from now on (a WebSocket client switching
    /// between JPEG and H.264). The total does not change, so no limit is checked and the
    /// listener hears nothing: the viewer keeps the slot it has.
    pub fn switch(&mut self, output: Output) {
        if output == self.output {
            return;
        }
        let shared = &self.hub.shared;
        let _total = lock(&shared.viewers_total);
        shared.viewers[self.output as usize].fetch_sub(1, Ordering::Relaxed);
        shared.viewers[output as usize].fetch_add(1, Ordering::Relaxed);
        self.output = output;
    }

    /// The output this viewer is counted under.
    pub fn output(&self) -> Output {
        self.output
    }
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        let shared = &self.hub.shared;
        let mut total = lock(&shared.viewers_total);
        *total -= 1;
        shared.viewers[self.output as usize].fetch_sub(1, Ordering::Relaxed);
        self.hub.report_viewers(*total);
    }
}

/// Locks a std mutex, ignoring poisoning: every critical section here leaves the data valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activities_combine_worst_first() {
        use Activity::*;
        let c = |v: &[Activity]| Activity::combine(v.iter().copied());
        assert_eq!(c(&[]), Idle);
        assert_eq!(
            c(&[Idle, Live { viewers: 2 }, Live { viewers: 3 }]),
            Live { viewers: 5 }
        );
        assert_eq!(c(&[Live { viewers: 1 }, Starting]), Starting);
        assert_eq!(
            c(&[Starting, Down { stalled: false }, Live { viewers: 1 }]),
            Down { stalled: false }
        );
        assert_eq!(
            c(&[Down { stalled: false }, Down { stalled: true }]),
            Down { stalled: true }
        );
        assert_eq!(c(&[Down { stalled: true }, Stopped]), Stopped);
    }

    fn hub(max_viewers: usize) -> Hub {
        Hub::for_tests(max_viewers)
    }

    fn frame(seq: u64) -> EncodedFrame {
        use crate::frame::CaptureTime;
        EncodedFrame::new(
            seq,
            CaptureTime::now(),
            16,
            16,
            false,
            &[0xFF, 0xD8, 0xFF, 0xD9],
        )
    }

    #[test]
    fn late_frames_are_dropped_not_reordered() {
        let h = hub(10);
        h.publish(frame(2));
        h.publish(frame(1));
        h.publish(frame(2));
        assert_eq!(h.latest().unwrap().seq, 2);
        assert_eq!(h.stats().dropped_late.load(Ordering::Relaxed), 2);
        h.publish(frame(3));
        assert_eq!(h.latest().unwrap().seq, 3);
        assert_eq!(
            h.latest().unwrap().jpeg(),
            bytes::Bytes::from_static(&[0xFF, 0xD8, 0xFF, 0xD9])
        );
    }

    #[test]
    fn the_source_name_is_the_configured_one_until_the_source_describes_itself() {
        let h = hub(1);
        assert_eq!(h.source_name(), "unit");
        h.set_source_name("vivid (/dev/video0): NV12 640x480 @ 30 fps".into());
        assert_eq!(
            h.source_name(),
            "vivid (/dev/video0): NV12 640x480 @ 30 fps"
        );
        assert_eq!(h.info().source.name, "unit");
    }

    #[test]
    fn viewer_limit_and_counts() {
        let h = hub(1);
        let g = h.add_viewer(Output::Mjpeg).unwrap();
        assert!(h.add_viewer(Output::WebSocket).is_err());
        // Snapshots do not count toward the stream limit.
        let s = h.add_viewer(Output::Snapshot).unwrap();
        assert_eq!(h.viewers(Output::Mjpeg), 1);
        assert_eq!(h.viewers(Output::Snapshot), 1);
        drop((g, s));
        assert_eq!(h.viewers(Output::Mjpeg), 0);
        assert!(h.add_viewer(Output::WebSocket).is_ok());
    }

    #[test]
    fn a_viewer_switching_outputs_keeps_its_slot() {
        let h = hub(2);
        let mut g = h.add_viewer(Output::WebSocket).unwrap();
        let _other = h.add_viewer(Output::Mjpeg).unwrap();
        // At the limit: switching must not need a free slot, nor leave one behind.
        g.switch(Output::WebSocketH264);
        assert_eq!(g.output(), Output::WebSocketH264);
        assert_eq!(
            (
                h.viewers(Output::WebSocket),
                h.viewers(Output::WebSocketH264)
            ),
            (0, 1)
        );
        assert_eq!(h.total_viewers(), 2);
        assert!(h.add_viewer(Output::WebSocketH264).is_err(), "still full");
        g.switch(Output::WebSocket);
        g.switch(Output::WebSocket);
        assert_eq!(h.viewers(Output::WebSocket), 1);
        g.switch(Output::WebSocketH264);
        drop(g);
        assert_eq!(h.viewers(Output::WebSocketH264), 0);
        assert_eq!(h.total_viewers(), 1);
    }

    #[test]
    fn the_listener_hears_every_count_in_order() {
        let h = hub(10);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let seen = heard.clone();
        assert!(h
            .on_viewers(Box::new(move |n| seen.lock().unwrap().push(n)))
            .is_ok());
        assert!(h.on_viewers(Box::new(|_| {})).is_err(), "one listener");
        let a = h.add_viewer(Output::Mjpeg).unwrap();
        let b = h.add_viewer(Output::Snapshot).unwrap();
        drop(a);
        drop(b);
        assert_eq!(*heard.lock().unwrap(), [1, 2, 1, 0]);
        assert_eq!(h.total_viewers(), 0);
    }
}
