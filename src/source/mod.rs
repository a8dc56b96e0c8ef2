//! Sources: where frames come from, the first stage of the flow.
//!
//! Every kind (test pattern, libcamera, V4L2, upstream MJPEG, ffmpeg, screen) implements
//! [`Source`].
//! The pipeline (`crate::pipeline`) runs it on its own thread, restarts it with backoff and
//! watches it; a source sees only its [`SourceContext`]: a [`FrameSink`] that takes frames
//! (never blocking: a frame the encoders cannot take is dropped, never queued) and news of
//! the source, and a [`Demand`] signal, asked before each frame so nothing is captured while
//! nobody watches. A source that passes its input's H.264 through (the ffmpeg source with
//! `passthrough = true`) hands its access units to the same sink, and says per run whether
//! it does ([`SourceContext::supply_h264`]), so the pipeline runs its own encoder only when
//! it must.
//!
//! Encoding, fan-out and the stream's state machine do not belong here: no file under
//! `source/` imports the pipeline, the encoders, the hub or the outputs.

pub mod annexb;
pub mod controls;
pub mod faults;
pub mod ffmpeg;
pub(crate) mod font;
pub mod i420;
pub mod jpeg;
#[cfg(feature = "libcamera")]
pub mod libcamera;
pub mod mjpeg_http;
pub mod multipart;
pub mod screen;
pub mod test_pattern;
pub mod v4l2;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::frame::{AccessUnit, CaptureTime, Frame, H264Supply, Payload, SourceInfo};
use crate::shutdown::Shutdown;

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
    /// Whether this source may hand over its input's own H.264 access units. If so, the
    /// pipeline starts its H.264 encoder only once a run says it is needed
    /// ([`SourceContext::supply_h264`]); otherwise it has one from the start.
    fn may_supply_h264(&self) -> bool {
        false
    }
}

/// What a source tells the pipeline besides its frames (a frame itself means "live").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceNews {
    /// It is (re)opening its device or upstream.
    Starting,
    /// It runs but has nothing to show, for this reason (a file that ended): viewers see
    /// "no signal" with it until the next frame.
    Down(String),
    /// What it delivers now that the device is open (`/state`'s source name), e.g.
    /// "vivid (/dev/video0): NV12 640x480 @ 30 fps" instead of the configured path.
    Described(String),
}

/// Where a running source's frames and news go. The pipeline implements it; tests use
/// [`testing::TestLink`].
pub trait FrameSink: Send + Sync {
    /// The sequence number for the next frame (strictly increasing for the process's life).
    fn next_seq(&self) -> u64;
    /// Takes a frame without blocking; one that cannot be encoded right now is dropped.
    fn frame(&self, frame: Frame);
    fn news(&self, news: SourceNews);
    /// Who makes the stream's H.264 during this run (sources that
    /// [`Source::may_supply_h264`] only, before their first frame or unit).
    fn supply_h264(&self, supply: H264Supply);
    /// Takes one of the input's own H.264 access units without blocking (after
    /// [`H264Supply::Source`]).
    fn access_unit(&self, unit: AccessUnit);
}

/// Whether anyone wants frames. The pipeline implements it (viewers, and one linger after
/// the last leaves, for every kind of source).
pub trait Demand: Send + Sync {
    /// Blocks while nobody watches; `false` once the process is shutting down.
    fn wait(&self, shutdown: &Shutdown) -> bool;
    /// Whether capture should go on right now; never blocks.
    fn wanted(&self) -> bool;
}

/// What a running source may do: wait for viewers, stamp frames, hand them on.
pub struct SourceContext {
    sink: Arc<dyn FrameSink>,
    demand: Arc<dyn Demand>,
    shutdown: Shutdown,
}

impl SourceContext {
    pub fn new(sink: Arc<dyn FrameSink>, demand: Arc<dyn Demand>, shutdown: Shutdown) -> Self {
        SourceContext {
            sink,
            demand,
            shutdown,
        }
    }

    /// Blocks while nobody watches. Returns `false` when the process is shutting down, in
    /// which case the source must return from `run`.
    pub fn wait_for_demand(&self) -> bool {
        self.demand.wait(&self.shutdown)
    }

    /// Whether anyone still wants frames; never blocks.
    pub fn has_demand(&self) -> bool {
        self.demand.wanted()
    }

    /// The demand signal, for a source's helper thread: a camera is released when its
    /// capture thread waits and frames are no longer wanted, i.e. once the pipeline's one
    /// linger after the last viewer has passed.
    pub fn demand(&self) -> Arc<dyn Demand> {
        self.demand.clone()
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
        self.sink.next_seq()
    }

    /// Hands a frame on without blocking; a frame the encoders cannot take is dropped.
    pub fn emit(&mut self, frame: Frame) {
        self.sink.frame(frame);
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

    /// Says who makes the stream's H.264 during this run: the pipeline's encoder, or this
    /// source through [`Self::emit_h264`].
    pub fn supply_h264(&self, supply: H264Supply) {
        self.sink.supply_h264(supply);
    }

    /// Hands on one of the input's own H.264 access units, without blocking.
    pub fn emit_h264(&self, unit: AccessUnit) {
        self.sink.access_unit(unit);
    }

    /// Reports that the source is (re)starting its device or upstream. After a failure the
    /// failure stays what viewers and `/state` see until a frame arrives.
    pub fn mark_starting(&self) {
        self.sink.news(SourceNews::Starting);
    }

    /// Reports that the source runs but has nothing to show, and why.
    pub fn mark_down(&self, why: String) {
        self.sink.news(SourceNews::Down(why));
    }

    /// Reports what the source delivers now (after opening its device): `/state` shows it
    /// as the source's name.
    pub fn describe(&self, what: String) {
        self.sink.news(SourceNews::Described(what));
    }
}

/// A [`FrameSink`] and [`Demand`] for unit tests of sources: demand is a switch; frames and
/// news are dropped (no test reads them).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[derive(Default)]
    pub struct TestLink {
        pub watched: AtomicBool,
        seq: AtomicU64,
    }

    impl TestLink {
        /// A context over a new link, with nobody watching.
        pub fn context(shutdown: &Shutdown) -> (SourceContext, Arc<TestLink>) {
            let link = Arc::new(TestLink::default());
            let ctx = SourceContext::new(link.clone(), link.clone(), shutdown.clone());
            (ctx, link)
        }
    }

    impl FrameSink for TestLink {
        fn next_seq(&self) -> u64 {
            self.seq.fetch_add(1, Ordering::Relaxed) + 1
        }
        fn frame(&self, _frame: Frame) {}
        fn news(&self, _news: SourceNews) {}
        fn supply_h264(&self, _supply: H264Supply) {}
        fn access_unit(&self, _unit: AccessUnit) {}
    }

    impl Demand for TestLink {
        fn wait(&self, shutdown: &Shutdown) -> bool {
            while !self.watched.load(Ordering::Relaxed) {
                if shutdown.sleep_blocking(Duration::from_millis(10)) {
                    return false;
                }
            }
            !shutdown.is_cancelled()
        }
        fn wanted(&self) -> bool {
            self.watched.load(Ordering::Relaxed)
        }
    }
}
