//! Sources: where frames come from, the first stage of the flow.
//!
//! Every kind (test pattern now; libcamera, V4L2, ffmpeg and upstream MJPEG later) implements
//! [`Source`] and runs on its own named thread under [`spawn`], which restarts it with backoff
//! when it fails. A source asks [`SourceContext::wait_for_demand`] before each frame, so nothing
//! is captured while nobody watches, and hands frames to [`SourceContext::emit`], which never
//! blocks: a frame the encoders cannot take right now is dropped, never queued.
//!
//! Encoding and fan-out do not belong here.

pub mod controls;
pub mod faults;
pub mod ffmpeg;
mod font;
pub mod i420;
pub mod jpeg;
#[cfg(feature = "libcamera")]
pub mod libcamera;
pub mod mjpeg_http;
pub mod multipart;
pub mod no_signal;
pub mod test_pattern;
pub mod v4l2;

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use std::sync::atomic::Ordering;

use crate::encode::{EncoderPool, JpegEncoder};
use crate::hub::{EncodedFrame, Hub, SourceState};
use crate::shutdown::Shutdown;
use no_signal::NoSignal;

/// When a frame was captured, on both clocks: monotonic for intervals and freshness checks,
/// wall clock for clients (the `X-Timestamp` header and the WebSocket header).
#[derive(Debug, Clone, Copy)]
pub struct CaptureTime {
    pub mono: Instant,
    /// Microseconds since the Unix epoch.
    pub wall_us: u64,
}

impl CaptureTime {
    pub fn now() -> Self {
        let wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        CaptureTime {
            mono: Instant::now(),
            wall_us,
        }
    }
}

/// Memory holding the three planes of a YUV 4:2:0 image, read in place by the encoder.
/// Dropping it gives the memory back to its owner (a buffer pool, a camera request).
pub trait Yuv420Buffer: Send {
    /// Y, U and V planes; each at least `stride * rows` bytes (rows halved for U and V).
    fn planes(&self) -> [&[u8]; 3];
    /// Bytes per row of each plane, which may exceed the visible width (camera padding).
    fn strides(&self) -> [usize; 3];
}

/// What a frame carries.
pub enum Payload {
    /// Raw planes for the encoder pool.
    Yuv420(Box<dyn Yuv420Buffer>),
    /// An already-encoded JPEG (USB MJPEG cameras, upstream MJPEG) that skips the encoders.
    Jpeg(Bytes),
}

/// One captured image on its way to the encoders.
pub struct Frame {
    /// Strictly increasing for the life of the process (across source restarts).
    pub seq: u64,
    pub captured: CaptureTime,
    pub width: u32,
    pub height: u32,
    /// A placeholder shown while the real source is down (flag in the wire header).
    pub no_signal: bool,
    pub payload: Payload,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("seq", &self.seq)
            .field("size", &format_args!("{}x{}", self.width, self.height))
            .finish_non_exhaustive()
    }
}

/// Static facts about a source, for `/state` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceInfo {
    /// Kind, as written in `--source` (`test`, later `libcamera`, `v4l2`, …).
    pub kind: &'static str,
    /// Human-readable name (camera model, URL, …).
    pub name: String,
}

/// Why a source stopped; the supervisor logs it and restarts the source after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device or stream failed; worth retrying.
    #[error("{0}")]
    Failed(String),
    /// This source cannot run in this build or on this machine at all.
    #[error("{0}")]
    Unavailable(String),
}

/// A producer of frames. `run` blocks on the source's own thread until the source fails or
/// [`SourceContext::wait_for_demand`] reports shutdown.
pub trait Source: Send + 'static {
    fn info(&self) -> SourceInfo;
    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError>;
    /// Runtime controls (`GET`/`POST /controls`), for sources whose device has any. The
    /// handle must stay valid across `run` restarts (controls set while the camera is away
    /// are applied when it comes back).
    fn controls(&self) -> Option<std::sync::Arc<dyn controls::CameraControls>> {
        None
    }
}

/// What a running source may do: wait for viewers, stamp frames, hand them on.
pub struct SourceContext {
    hub: Hub,
    encoders: EncoderPool,
    shutdown: Shutdown,
    /// Frames emitted by the current `run`; a run that produced frames resets the backoff.
    emitted: u64,
}

impl SourceContext {
    pub fn new(hub: Hub, encoders: EncoderPool, shutdown: Shutdown) -> Self {
        SourceContext {
            hub,
            encoders,
            shutdown,
            emitted: 0,
        }
    }

    /// Blocks while nobody watches. Returns `false` when the process is shutting down, in
    /// which case the source must return from `run`.
    pub fn wait_for_demand(&self) -> bool {
        self.hub.wait_for_demand(&self.shutdown)
    }

    /// Whether anyone still wants frames; never blocks (see [`Hub::has_demand`]).
    pub fn has_demand(&self) -> bool {
        self.hub.has_demand()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Sleeps up to `dur`, waking early on shutdown; returns `true` if shutting down.
    pub fn sleep(&self, dur: Duration) -> bool {
        self.shutdown.sleep_blocking(dur)
    }

    /// The sequence number for the next frame.
    pub fn next_seq(&mut self) -> u64 {
        self.hub.next_seq()
    }

    /// Hands a frame to the encoders without blocking; a frame they cannot take is dropped.
    pub fn emit(&mut self, frame: Frame) {
        self.emitted += 1;
        self.hub.note_captured();
        self.encoders.submit(frame);
    }

    /// Hands on a JPEG that arrived ready-made (an upstream's), at the size its own header
    /// gives, and returns that size. Something that is not a whole JPEG is refused, not sent.
    pub fn emit_jpeg(&mut self, jpeg: Bytes) -> Result<(u16, u16), jpeg::JpegError> {
        let info = jpeg::inspect(&jpeg)?;
        let seq = self.next_seq();
        self.emit(Frame {
            seq,
            captured: CaptureTime::now(),
            width: info.width.into(),
            height: info.height.into(),
            no_signal: false,
            payload: Payload::Jpeg(jpeg),
        });
        Ok((info.width, info.height))
    }

    /// Reports that the source is (re)starting its device or upstream, unless it is being
    /// retried after a failure: then the failure stays what viewers and `/state` see until a
    /// frame arrives.
    pub fn mark_starting(&self) {
        if !matches!(self.hub.source_state(), SourceState::Error(_)) {
            self.hub.set_source_state(SourceState::Starting);
        }
    }

    pub fn set_state(&self, state: SourceState) {
        self.hub.set_source_state(state);
    }
}

/// First and longest wait between restarts of a failed source.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(250);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the watchdog looks at the source.
const WATCHDOG_TICK: Duration = Duration::from_millis(200);
/// "No signal" frames go out at this interval while the source is down: enough to show the
/// time ticking and to answer snapshots, little enough to cost nothing.
const NO_SIGNAL_INTERVAL: Duration = Duration::from_secs(1);
/// A source is stalled after this many frame intervals without a frame (at least 2 s).
const STALL_INTERVALS: u32 = 5;
const STALL_MIN: Duration = Duration::from_secs(2);

/// How long a watched source at `fps` may go without a frame before it counts as stalled.
pub fn stall_window(fps: u32) -> Duration {
    let interval = Duration::from_secs_f64(1.0 / fps.max(1) as f64);
    (interval * STALL_INTERVALS).max(STALL_MIN)
}

/// The source's supervisor thread and its watchdog.
pub struct SourceThreads {
    supervisor: std::thread::JoinHandle<()>,
    watchdog: std::thread::JoinHandle<()>,
}

impl SourceThreads {
    pub fn join(self) {
        let _ = self.supervisor.join();
        let _ = self.watchdog.join();
    }
}

/// Runs `source` on a thread named `src-<kind>`, restarting it with exponential backoff until
/// shutdown, and a watchdog thread (`src-watch`) that shows viewers a "no signal" frame
/// while the source is failing or stalled.
pub fn spawn(
    mut source: Box<dyn Source>,
    mut ctx: SourceContext,
) -> std::io::Result<SourceThreads> {
    let info = source.info();
    let watchdog = {
        let (hub, shutdown) = (ctx.hub.clone(), ctx.shutdown.clone());
        std::thread::Builder::new()
            .name("src-watch".into())
            .spawn(move || watch(hub, shutdown))?
    };
    let supervisor = std::thread::Builder::new()
        .name(format!("src-{}", info.kind))
        .spawn(move || {
            let mut backoff = RESTART_BACKOFF_MIN;
            ctx.set_state(SourceState::Starting);
            loop {
                ctx.emitted = 0;
                match source.run(&mut ctx) {
                    Ok(()) => break,
                    Err(SourceError::Unavailable(why)) => {
                        tracing::error!(source = info.kind, "source unavailable: {why}");
                        ctx.set_state(SourceState::Error(why));
                        // Nothing to retry; keep serving the "no signal" frame until shutdown.
                        while !ctx.sleep(Duration::from_secs(3600)) {}
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(source = info.kind, error = %e, "source failed; restarting in {backoff:?}");
                        ctx.hub.stats().source_restarts.fetch_add(1, Ordering::Relaxed);
                        // The state stays Error (the reason viewers see) until a frame arrives.
                        ctx.set_state(SourceState::Error(e.to_string()));
                    }
                }
                // A run that delivered frames was a working camera that then failed: retry soon.
                if ctx.emitted > 0 {
                    backoff = RESTART_BACKOFF_MIN;
                }
                if ctx.sleep(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            }
            ctx.set_state(SourceState::Stopped);
            tracing::debug!(source = info.kind, "source thread finished");
        })?;
    Ok(SourceThreads {
        supervisor,
        watchdog,
    })
}

/// Watches the source while anyone watches the stream: marks it stalled when frames stop,
/// and publishes "no signal" frames (with the reason) while it is stalled or failing.
fn watch(hub: Hub, shutdown: Shutdown) {
    let info = hub.info().clone();
    let stall_after = stall_window(info.fps);
    let picture = NoSignal::new(info.width, info.height);
    let mut encoder = match JpegEncoder::new(info.quality) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "no JPEG encoder for the no-signal frame");
            return;
        }
    };
    let mut demand_since: Option<Instant> = None;
    let mut last_sent: Option<Instant> = None;
    while !shutdown.sleep_blocking(WATCHDOG_TICK) {
        if hub.total_viewers() == 0 {
            demand_since = None;
            continue;
        }
        let now = Instant::now();
        // Frames are only expected since someone started watching.
        let since = *demand_since.get_or_insert(now);
        let reference = hub.last_captured().map_or(since, |t| t.max(since));
        let reason = match hub.source_state() {
            SourceState::Error(why) | SourceState::Stalled(why) => Some(why),
            SourceState::Starting | SourceState::Streaming if now - reference > stall_after => {
                let why = match hub.last_captured() {
                    Some(_) => format!(
                        "no frame from the source for {:.0} s",
                        (now - reference).as_secs_f64()
                    ),
                    None => "waiting for the source to start".to_owned(),
                };
                tracing::warn!(source = info.source.kind, "source stalled: {why}");
                hub.set_source_state(SourceState::Stalled(why.clone()));
                Some(why)
            }
            _ => None,
        };
        let due = last_sent.is_none_or(|t| now - t >= NO_SIGNAL_INTERVAL);
        let Some(reason) = reason.filter(|_| due) else {
            continue;
        };
        let captured = CaptureTime::now();
        let frame = picture.render(&reason, captured.wall_us);
        match encoder.encode(&frame, info.width, info.height, info.quality) {
            Ok(jpeg) => {
                let seq = hub.next_seq();
                hub.publish(EncodedFrame::new(
                    seq,
                    captured,
                    info.width,
                    info.height,
                    true,
                    jpeg,
                ));
                hub.stats().no_signal_frames.fetch_add(1, Ordering::Relaxed);
                last_sent = Some(now);
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the no-signal frame"),
        }
    }
}
