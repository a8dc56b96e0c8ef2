//! Capture from an open V4L2 device: opening and negotiating it ([`V4l2Source::open`]), the
//! loop that waits for demand and dequeues frames from four memory-mapped buffers, and the
//! idle watcher that closes the camera once nobody wants frames.
//!
//! A dequeued frame is handed on as JPEG (MJPEG, with the standard Huffman tables added
//! where the camera leaves them out) or converted to I420 in a pooled buffer. No usable frame
//! for max(5 frame intervals, 2 s) is a stall; an unplugged camera fails with `ENODEV`. Frames
//! that waited in the driver's queue while the source thread was blocked (at least one frame
//! interval) are dropped: one dequeued in under 2 ms was already there.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::{Duration, Instant};

use v4l::buffer::{Flags as BufferFlags, Type as BufferType};
use v4l::capability::Flags as CapFlags;
use v4l::format::{Format, FourCC};
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::prelude::{Device, MmapStream};
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::Fraction;

use super::controls::{open_device, set_control, write_device, DeviceControls, V4l2Controls};
use super::convert::convert;
use super::list::c_string;
use super::negotiate::{enumerate_formats, format_fps, fourcc_str, negotiate_format};
use super::{describe_io, lock, panic_message, Interval, PixelFormat, V4l2Source};
use crate::frame::{CaptureTime, Frame, Payload};
use crate::source::i420::BufferPool;
use crate::source::jpeg;
use crate::source::{Demand, SourceContext, SourceError};

/// Memory-mapped buffers shared with the driver.
const STREAM_BUFFERS: u32 = 4;
/// No usable frame for this many frame intervals (but at least [`STALL_MIN`]) is a stall.
const STALL_INTERVALS: u32 = 5;
const STALL_MIN: Duration = Duration::from_secs(2);
/// How often the watcher looks at a blocked source thread.
const IDLE_POLL: Duration = Duration::from_millis(150);
/// A frame dequeued faster than this right after a wait was already waiting in the queue.
const STALE_READY: Duration = Duration::from_millis(2);
const ENODEV: i32 = 19;

impl V4l2Source {
    pub(super) fn stall_timeout(interval: Duration) -> Duration {
        (interval * STALL_INTERVALS).max(STALL_MIN)
    }

    /// Opens, negotiates, writes the controls and maps the buffers (streaming starts with
    /// the first dequeue).
    fn open(&self) -> Result<Session, SourceError> {
        let path = self.device.as_path();
        let fail = |what: &str, e: &io::Error| {
            SourceError::Failed(format!("{}: {what}: {}", path.display(), describe_io(e)))
        };
        let dev = Device::with_path(path).map_err(|e| fail("cannot open", &e))?;
        let mut caps = dev
            .query_caps()
            .map_err(|e| fail("not a V4L2 device", &e))?;
        caps.card = c_string(&caps.card);
        caps.driver = c_string(&caps.driver);
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
            return Err(SourceError::Failed(format!(
                "{}: {} is not a video capture node{}",
                path.display(),
                caps.card,
                if caps.capabilities.contains(CapFlags::META_CAPTURE) {
                    " (it is a metadata node; the camera's video node is usually the one numbered just before it)"
                } else if caps
                    .capabilities
                    .intersects(CapFlags::VIDEO_M2M | CapFlags::VIDEO_M2M_MPLANE)
                {
                    " (it is a memory-to-memory codec or converter, not a camera)"
                } else {
                    ""
                }
            )));
        }
        if !caps.capabilities.contains(CapFlags::STREAMING) {
            return Err(SourceError::Failed(format!(
                "{}: {} does not support streaming I/O",
                path.display(),
                caps.card
            )));
        }
        let offers = enumerate_formats(&dev, Some((self.width, self.height, self.fps)));
        let choice = negotiate_format(&offers, self.format, self.width, self.height, self.fps)
            .ok_or_else(|| {
                let offered: Vec<String> = offers.iter().map(|o| fourcc_str(o.fourcc)).collect();
                let offered = if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                };
                SourceError::Failed(match self.format {
                    Some(f) => format!(
                        "{}: {} does not offer {} (pixel_format; offered: {offered})",
                        path.display(),
                        caps.card,
                        f.name()
                    ),
                    None => format!(
                        "{}: {} offers no format picamd can use (offered: {offered}; usable: MJPG, YUYV, NV12, YU12)",
                        path.display(),
                        caps.card
                    ),
                })
            })?;
        let got = dev
            .set_format(&Format::new(
                choice.width,
                choice.height,
                FourCC::new(&choice.fourcc),
            ))
            .map_err(|e| fail("cannot set the format", &e))?;
        let format = PixelFormat::from_fourcc(got.fourcc.repr).ok_or_else(|| {
            SourceError::Failed(format!(
                "{}: asked for {} but the driver chose {}, which picamd cannot use",
                path.display(),
                fourcc_str(choice.fourcc),
                fourcc_str(got.fourcc.repr)
            ))
        })?;
        if got.width == 0
            || got.height == 0
            || (format.is_raw() && (got.width % 2 != 0 || got.height % 2 != 0))
        {
            return Err(SourceError::Failed(format!(
                "{}: the driver set an unusable size {}x{} for {}",
                path.display(),
                got.width,
                got.height,
                fourcc_str(got.fourcc.repr)
            )));
        }
        let want = choice.interval.unwrap_or(Interval::from_fps(self.fps));
        let interval = match dev.set_params(&Parameters::new(Fraction::new(want.num, want.den))) {
            Ok(p) if p.interval.numerator > 0 && p.interval.denominator > 0 => Interval {
                num: p.interval.numerator,
                den: p.interval.denominator,
            },
            Ok(_) => want,
            Err(e) => {
                tracing::debug!(device = %path.display(), error = %e, "cannot set the frame rate; using the driver's");
                want
            }
        };
        let frame_time = interval
            .duration()
            .unwrap_or(Duration::from_secs(1) / self.fps);
        let stall = Self::stall_timeout(frame_time);

        open_device(&self.controls, DeviceControls::query(&dev), |id, v| {
            set_control(&dev, id, v)
        });

        let mut stream = MmapStream::with_buffers(&dev, BufferType::VideoCapture, STREAM_BUFFERS)
            .map_err(|e| fail("cannot map buffers", &e))?;
        stream.set_timeout(stall);

        let summary = format!(
            "{} {}x{} @ {} fps",
            fourcc_str(got.fourcc.repr),
            got.width,
            got.height,
            format_fps(interval.fps())
        );
        let message = format!(
            "V4L2 camera opened: {summary} (asked for {}x{} @ {} fps; picked {} {}x{}{}; {} from {})",
            self.width,
            self.height,
            self.fps,
            fourcc_str(choice.fourcc),
            choice.width,
            choice.height,
            choice
                .interval
                .map(|i| format!(" @ {} fps", format_fps(i.fps())))
                .unwrap_or_default(),
            caps.card,
            caps.driver,
        );
        let name = format!("{} ({}): {summary}", caps.card, path.display());
        // Said once; reopening the same camera after an idle spell is routine.
        if std::mem::replace(&mut *lock(&self.name), name.clone()) != name {
            tracing::info!(device = %path.display(), "{message}");
        } else {
            tracing::debug!(device = %path.display(), "{message}");
        }

        let now = Instant::now();
        Ok(Session {
            stream,
            dev,
            format,
            width: got.width,
            height: got.height,
            // Drivers may leave bytesperline 0; then rows are packed.
            stride: match (got.stride as usize, format) {
                (0, PixelFormat::Yuyv) => 2 * got.width as usize,
                (0, _) => got.width as usize,
                (stride, _) => stride,
            },
            pool: BufferPool::new(got.width as usize, got.height as usize),
            frame_time,
            stall,
            last_good: now,
            skip_stale: 0,
            frames: 0,
            bad_frames: 0,
            size_noted: false,
        })
    }

    /// [`Self::open`], with any panic inside the v4l crate (it has `expect`s on device data)
    /// turned into a failure.
    pub(super) fn open_guarded(&self) -> Result<Session, SourceError> {
        match catch_unwind(AssertUnwindSafe(|| self.open())) {
            Ok(r) => r,
            Err(panic) => Err(SourceError::Failed(format!(
                "{}: V4L2 error while opening: {}",
                self.device.display(),
                panic_message(&*panic)
            ))),
        }
    }

    pub(super) fn capture_loop(
        &self,
        ctx: &mut SourceContext,
        slot: &Mutex<Option<Session>>,
        idle: &IdleWatch,
    ) -> Result<(), SourceError> {
        loop {
            let began = Instant::now();
            idle.set_waiting(true);
            let demand = ctx.wait_for_demand();
            idle.set_waiting(false);
            if !demand {
                return Ok(());
            }
            let waited = began.elapsed();
            let mut guard = lock(slot);
            let session = match guard.take() {
                Some(mut s) => {
                    if waited >= s.frame_time {
                        // The wait blocked: what the driver queued meanwhile is old.
                        s.skip_stale = STREAM_BUFFERS;
                        s.last_good = Instant::now();
                    }
                    guard.insert(s)
                }
                None => {
                    let session = guard.insert(self.open_guarded()?);
                    ctx.describe(lock(&self.name).clone());
                    session
                }
            };
            write_device(&self.controls, |id, v| set_control(&session.dev, id, v));
            session.capture(ctx, &self.device)?;
        }
    }
}

/// An open, negotiated device.
pub(super) struct Session {
    // Dropped first: stops streaming and unmaps before the device closes.
    stream: MmapStream<'static>,
    dev: Device,
    format: PixelFormat,
    /// As set by the driver (`S_FMT`); MJPEG frames report their own size.
    width: u32,
    height: u32,
    /// Bytes per row of the first plane (`bytesperline`).
    stride: usize,
    pool: BufferPool,
    frame_time: Duration,
    stall: Duration,
    last_good: Instant,
    /// Frames still to check for having waited in the queue during a blocked wait.
    skip_stale: u32,
    frames: u64,
    bad_frames: u64,
    size_noted: bool,
}

impl Session {
    /// Dequeues one frame and hands it on (or drops it if it is bad or stale).
    fn capture(&mut self, ctx: &mut SourceContext, path: &Path) -> Result<(), SourceError> {
        let asked = Instant::now();
        let (buf, meta) = self
            .stream
            .next()
            .map_err(|e| dequeue_failure(path, &e, self.stall))?;
        let captured = CaptureTime::now();
        if self.skip_stale > 0 {
            self.skip_stale -= 1;
            if asked.elapsed() < STALE_READY {
                tracing::trace!("dropped a frame queued before the wait ended");
                return Ok(());
            }
            self.skip_stale = 0;
        }
        let data = &buf[..(meta.bytesused as usize).min(buf.len())];
        let made = if meta.flags.contains(BufferFlags::ERROR) {
            Err("the driver marked the frame as corrupt".to_string())
        } else if self.format == PixelFormat::Mjpeg {
            jpeg::copy_with_huffman_tables(data)
                .map(|(bytes, info)| {
                    (
                        Payload::Jpeg(bytes),
                        u32::from(info.width),
                        u32::from(info.height),
                    )
                })
                .map_err(|e| format!("bad JPEG: {e}"))
        } else {
            let mut out = self.pool.take();
            let (w, h) = (self.width as usize, self.height as usize);
            convert(self.format, data, self.stride, w, h, out.planes_mut())
                .map(|()| {
                    (
                        Payload::Yuv420(std::sync::Arc::new(out)),
                        self.width,
                        self.height,
                    )
                })
                .map_err(|e| e.to_string())
        };
        match made {
            Ok((payload, width, height)) => {
                if (width, height) != (self.width, self.height) && !self.size_noted {
                    self.size_noted = true;
                    tracing::warn!(
                        device = %path.display(),
                        "the camera sends {width}x{height} JPEGs although it was set to {}x{}",
                        self.width,
                        self.height
                    );
                }
                self.last_good = Instant::now();
                self.frames += 1;
                if self.frames == 1 {
                    tracing::debug!(device = %path.display(), "first frame");
                }
                let seq = ctx.next_seq();
                ctx.emit(Frame {
                    seq,
                    captured,
                    width,
                    height,
                    no_signal: false,
                    payload,
                });
            }
            Err(reason) => {
                self.bad_frames += 1;
                tracing::debug!(
                    device = %path.display(),
                    dropped = self.bad_frames,
                    "frame dropped: {reason}"
                );
                if self.last_good.elapsed() > self.stall {
                    return Err(SourceError::Failed(format!(
                        "{}: stalled: no usable frame for {:.1} s ({} dropped; last: {reason})",
                        path.display(),
                        self.stall.as_secs_f64(),
                        self.bad_frames
                    )));
                }
            }
        }
        Ok(())
    }
}

fn dequeue_failure(path: &Path, e: &io::Error, stall: Duration) -> SourceError {
    if e.kind() == io::ErrorKind::TimedOut {
        SourceError::Failed(format!(
            "{}: stalled: no frame for {:.1} s",
            path.display(),
            stall.as_secs_f64()
        ))
    } else {
        SourceError::Failed(format!(
            "{}: capture failed: {}",
            path.display(),
            describe_io(e)
        ))
    }
}

/// Stops streaming and closes the device, logging rather than panicking on errors.
pub(super) fn close_session(mut s: Session, path: &Path) {
    let closed = catch_unwind(AssertUnwindSafe(move || {
        if let Err(e) = s.stream.stop() {
            if e.raw_os_error() != Some(ENODEV) {
                tracing::debug!(device = %path.display(), error = %e, "stopping the stream failed");
            }
        }
        drop(s);
    }));
    if let Err(panic) = closed {
        tracing::warn!(device = %path.display(), "error while closing the camera: {}", panic_message(&*panic));
    }
}

/// Tells the watcher thread whether the source thread is waiting for demand.
pub(super) struct IdleWatch {
    state: Mutex<IdleState>,
    cv: Condvar,
    demand: Arc<dyn Demand>,
}

#[derive(Default)]
struct IdleState {
    /// The source thread is in `wait_for_demand`.
    waiting: bool,
    stop: bool,
}

impl IdleWatch {
    pub(super) fn new(demand: Arc<dyn Demand>) -> IdleWatch {
        IdleWatch {
            state: Mutex::default(),
            cv: Condvar::new(),
            demand,
        }
    }

    fn set_waiting(&self, waiting: bool) {
        lock(&self.state).waiting = waiting;
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_all();
    }

    /// The watcher thread: closes the session once the source thread waits in
    /// `wait_for_demand` and frames are no longer wanted. Holding the state lock while
    /// closing makes a source thread that wakes meanwhile wait, then find no session and
    /// reopen.
    pub(super) fn watch(
        &self,
        slot: &Mutex<Option<Session>>,
        controls: &V4l2Controls,
        path: &Path,
    ) {
        let mut st = lock(&self.state);
        while !st.stop {
            if st.waiting && !self.demand.wanted() {
                let session = match slot.try_lock() {
                    Ok(mut g) => g.take(),
                    Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
                    Err(TryLockError::WouldBlock) => None,
                };
                if let Some(s) = session {
                    tracing::debug!(device = %path.display(), "no viewers: camera closed");
                    close_session(s, path);
                    controls.closed();
                }
            }
            st = self
                .cv
                .wait_timeout(st, IDLE_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Stops the watcher when dropped, however the capture loop ends.
pub(super) struct StopOnDrop<'a>(pub(super) &'a IdleWatch);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}
