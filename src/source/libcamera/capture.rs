//! A libcamera camera session on the source thread: acquired, configured, buffers allocated
//! and mapped, started with every requested control, then requests queued and completed
//! until nobody watches (released), shutdown, a disconnect or a stall (no completed request
//! for max(5 frame intervals, 2 s) while requests are queued). A stop waits up to 5 s for the
//! frames the encoders still hold; past that the session is leaked, never freed under them.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libcamera::camera::{ActiveCamera, Camera};
use libcamera::control::ControlList;
use libcamera::controls as lc;
use libcamera::framebuffer::{AsFrameBuffer, FrameMetadataStatus};
use libcamera::framebuffer_allocator::{FrameBuffer, FrameBufferAllocator};
use libcamera::framebuffer_map::MemoryMappedFrameBuffer;
use libcamera::request::{Request, RequestStatus, ReuseFlag};
use libcamera::stream::Stream;

use super::controls::LibcameraControls;
use super::emit::{Gate, Mailbox, Wake};
use super::negotiate::configure;
use super::planes::{ChromaPool, Layout, Mapped, RequestPlanes};
use super::{
    LibcameraError, LibcameraSource, Want, POLL, RETURN_DEADLINE, STALL_INTERVALS, STALL_MIN,
};
use crate::frame::{CaptureTime, Frame, Payload};

/// What reaches the source thread.
pub(super) enum Event {
    /// libcamera finished (or cancelled) a request.
    Completed(Request),
    /// A frame's planes were dropped: the request may be queued again.
    Returned(Request),
    Disconnected,
}

/// Why a session's pump loop ended without an error.
enum Stop {
    Idle,
    Shutdown,
}

/// Everything libcamera hands out for one start of the camera. Fields drop in declaration
/// order: requests (and their mapped buffers) before the allocator, the camera last.
struct Session {
    /// Requests the source thread holds (completed, returned, or not yet queued).
    idle: Vec<Request>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    /// Owns the buffers' memory; kept until the requests are gone.
    _allocator: FrameBufferAllocator,
    camera: ActiveCamera<'static>,
    label: String,
    stream: Stream,
    layout: Layout,
    chroma_pool: ChromaPool,
    /// For cameras without `FrameDurationLimits` (libcamera's `virtual` camera completes a
    /// request as soon as it is queued): queue at most one request per frame interval.
    pace: Option<Duration>,
    next_queue: Instant,
    opened: Instant,
    /// Frames handed on since the start (for the first-frame log).
    frames: u64,
    /// Requests that came back cancelled or failed.
    bad_frames: u64,
    total: usize,
    queued: usize,
    /// Frames out with the emit thread or the encoders.
    out: usize,
    started: bool,
}

impl Session {
    fn open(
        camera: &Camera<'static>,
        label: &str,
        want: &Want,
        controls: &LibcameraControls,
    ) -> Result<Session, LibcameraError> {
        let device = |step| LibcameraError::device(label, step);
        let unsupported = |message: String| LibcameraError::unsupported(label, message);
        let opened = Instant::now();
        let mut active = camera.acquire().map_err(device("acquire"))?;
        // Held until the camera has started; libcamera's examples keep it at least that long.
        let (_config, layout, stream) = configure(camera, &mut active, label, want)?;
        let (w, h, stride) = (layout.width, layout.height, layout.stride);

        let mut allocator = FrameBufferAllocator::new(&active);
        let buffers = allocator
            .alloc(&stream)
            .map_err(device("buffer allocation"))?;
        if buffers.len() < 2 {
            return Err(unsupported(format!(
                "allocated only {} buffers",
                buffers.len()
            )));
        }
        let mut requests = Vec::with_capacity(buffers.len());
        for (i, buffer) in buffers.into_iter().enumerate() {
            let mapped =
                map(buffer).map_err(|m| unsupported(format!("cannot map a buffer: {m}")))?;
            if layout.split(&mapped.data()).is_none() {
                let lens: Vec<usize> = mapped.data().iter().map(|p| p.len()).collect();
                return Err(unsupported(format!(
                    "buffer planes {lens:?} do not hold {w}x{h} {} at stride {stride}",
                    layout.format.name()
                )));
            }
            let mut request = active
                .create_request(Some(i as u64))
                .ok_or_else(|| unsupported("cannot create a request".into()))?;
            request
                .add_buffer(&stream, mapped)
                .map_err(device("adding a buffer to a request"))?;
            requests.push(request);
        }

        let (events_tx, events) = mpsc::channel();
        let tx = events_tx.clone();
        active.on_request_completed(move |r| {
            let _ = tx.send(Event::Completed(r));
        });
        let tx = events_tx.clone();
        active.on_disconnected(move || {
            let _ = tx.send(Event::Disconnected);
        });

        let total = requests.len();
        let mut session = Session {
            idle: requests,
            events,
            events_tx,
            _allocator: allocator,
            camera: active,
            label: label.to_owned(),
            stream,
            layout,
            chroma_pool: ChromaPool::default(),
            pace: None,
            next_queue: Instant::now(),
            opened,
            frames: 0,
            bad_frames: 0,
            total,
            queued: 0,
            out: 0,
            started: false,
        };

        let mut start = ControlList::from_info_map(session.camera.controls()).unwrap_or_default();
        let interval_us = 1_000_000 / want.fps.max(1);
        if controls.support().is_some_and(|s| s.frame_duration_limits) {
            let us = i64::from(interval_us);
            if let Err(e) = start.set(lc::FrameDurationLimits([us, us])) {
                tracing::warn!(error = %e, "cannot set the frame rate");
            }
        } else {
            session.pace = Some(Duration::from_micros(u64::from(interval_us)));
        }
        controls.for_start(&mut start);
        session
            .camera
            .start(Some(&*start))
            .map_err(device("start"))?;
        session.started = true;
        tracing::info!(
            camera = label,
            "streaming {w}x{h} {}, stride {stride}, {total} buffers{}",
            layout.format.name(),
            if session.pace.is_some() {
                ", paced by picamd"
            } else {
                ""
            }
        );
        Ok(session)
    }

    /// Queues the requests the source thread holds, each carrying pending control changes.
    /// Returns how long to wait before a paced camera may take the next one.
    fn queue_idle(&mut self, controls: &LibcameraControls) -> Result<Duration, LibcameraError> {
        while let Some(mut request) = self.idle.pop() {
            if let Some(interval) = self.pace {
                let now = Instant::now();
                if now < self.next_queue {
                    self.idle.push(request);
                    return Ok(self.next_queue - now);
                }
                // An absolute schedule, restarted instead of bursting after a gap.
                self.next_queue = if now - self.next_queue > interval {
                    now + interval
                } else {
                    self.next_queue + interval
                };
            }
            request.reuse(ReuseFlag::REUSE_BUFFERS);
            controls.take_pending(request.controls_mut());
            if let Err((request, e)) = self.camera.queue_request(request) {
                self.idle.push(request);
                return Err(LibcameraError::Device {
                    camera: self.label.clone(),
                    step: "queue request",
                    error: e,
                });
            }
            self.queued += 1;
        }
        Ok(POLL)
    }

    /// Runs until nobody watches, shutdown, or a failure.
    fn pump(
        &mut self,
        gate: &Gate,
        mailbox: &Mailbox,
        controls: &LibcameraControls,
        stall_after: Duration,
    ) -> Result<Stop, LibcameraError> {
        let mut last_progress = Instant::now();
        loop {
            if gate.should_stop() {
                return Ok(Stop::Shutdown);
            }
            if gate.idle() {
                return Ok(Stop::Idle);
            }
            if self.queued == 0 && !self.idle.is_empty() {
                last_progress = Instant::now();
            }
            let wait = self.queue_idle(controls)?;
            match self.events.recv_timeout(wait.min(POLL)) {
                Ok(Event::Completed(request)) => {
                    self.queued -= 1;
                    last_progress = Instant::now();
                    self.completed(request, mailbox);
                }
                Ok(Event::Returned(request)) => {
                    self.out -= 1;
                    self.idle.push(request);
                }
                Ok(Event::Disconnected) => {
                    return Err(LibcameraError::Disconnected(self.label.clone()))
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The session holds a sender itself.
                Err(RecvTimeoutError::Disconnected) => {}
            }
            if self.queued > 0 && last_progress.elapsed() > stall_after {
                return Err(LibcameraError::Stalled {
                    camera: self.label.clone(),
                    waited: last_progress.elapsed(),
                });
            }
        }
    }

    /// A request came back from libcamera: hand its frame on, or keep it for re-queueing.
    fn completed(&mut self, request: Request, mailbox: &Mailbox) {
        let status = request.status();
        let frame = request
            .buffer::<Mapped>(&self.stream)
            .map(|b| b.metadata().map(|m| m.status()));
        // No metadata at all is not an error: libcamera 0.4's `virtual` camera never sets it.
        let image = matches!(frame, Some(None | Some(FrameMetadataStatus::Success)));
        if status == RequestStatus::Complete && frame == Some(Some(FrameMetadataStatus::Startup)) {
            // The IPA is still converging (exposure, white balance): an unusable image.
            self.idle.push(request);
            return;
        }
        if status != RequestStatus::Complete || !image {
            self.bad_frames += 1;
            if self.bad_frames.is_power_of_two() {
                tracing::warn!(camera = %self.label, request = ?status, buffer = ?frame, count = self.bad_frames, "camera returned a frame without an image; dropped");
            }
            self.idle.push(request);
            return;
        }
        self.out += 1;
        self.frames += 1;
        if self.frames == 1 {
            tracing::info!(camera = %self.label, "first frame {:.0?} after opening the camera", self.opened.elapsed());
        }
        mailbox.put(Frame {
            seq: 0,
            captured: CaptureTime::now(),
            width: self.layout.width as u32,
            height: self.layout.height as u32,
            no_signal: false,
            payload: Payload::Yuv420(std::sync::Arc::new(RequestPlanes {
                request: Some(request),
                stream: self.stream,
                layout: self.layout,
                returns: self.events_tx.clone(),
                chroma: OnceLock::new(),
                pool: self.chroma_pool.clone(),
            })),
        });
    }

    /// Stops the camera and waits for every request to come home, then releases everything.
    /// Returns `false` (and leaks the session) if frames did not come back in time: freeing
    /// buffers an encoder still reads would be unsound.
    fn close(mut self) -> bool {
        if self.started {
            if let Err(e) = self.camera.stop() {
                tracing::warn!(camera = %self.label, error = %e, "stopping the camera failed");
            }
        }
        let deadline = Instant::now() + RETURN_DEADLINE;
        while self.queued + self.out > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(Event::Completed(r)) => {
                    self.queued -= 1;
                    self.idle.push(r);
                }
                Ok(Event::Returned(r)) => {
                    self.out -= 1;
                    self.idle.push(r);
                }
                Ok(Event::Disconnected) => {}
                Err(_) if Instant::now() >= deadline => {
                    tracing::error!(
                        camera = %self.label,
                        queued = self.queued,
                        out = self.out,
                        "camera buffers did not come back; leaking the camera session"
                    );
                    std::mem::forget(self);
                    return false;
                }
                Err(_) => {}
            }
        }
        if self.idle.len() != self.total {
            tracing::warn!(camera = %self.label, held = self.idle.len(), total = self.total, "request accounting is off");
        }
        true
    }
}

/// Memory-maps a buffer. The crate's mapper panics when `mmap` itself fails; that is caught
/// here and reported as an error.
fn map(buffer: FrameBuffer) -> Result<Mapped, String> {
    let buffer = std::panic::AssertUnwindSafe(buffer);
    match std::panic::catch_unwind(move || {
        let std::panic::AssertUnwindSafe(buffer) = buffer;
        MemoryMappedFrameBuffer::new(buffer)
    }) {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("mmap failed".into()),
    }
}

impl LibcameraSource {
    /// The source thread for one run: starts the camera whenever the emit thread passes
    /// `wait_for_demand`, pumps it until nobody watches, shutdown or a failure, then stops and
    /// releases it.
    pub(super) fn capture(
        &self,
        camera: &Camera<'static>,
        label: &str,
        gate: &Gate,
        mailbox: &Mailbox,
    ) -> Result<(), LibcameraError> {
        let interval = Duration::from_secs_f64(1.0 / self.want.fps.max(1) as f64);
        let stall_after = (interval * STALL_INTERVALS).max(STALL_MIN);
        let mut seen = 0;
        loop {
            match gate.wait_demand(seen) {
                Wake::Stop => return Ok(()),
                Wake::Demand => {}
            }
            let mut session = Session::open(camera, label, &self.want, &self.controls)?;
            let outcome = session.pump(gate, mailbox, &self.controls, stall_after);
            mailbox.clear();
            let closed = session.close();
            self.controls.closed();
            if !closed {
                return Err(LibcameraError::Wedged(RETURN_DEADLINE));
            }
            match outcome? {
                Stop::Shutdown => return Ok(()),
                Stop::Idle => {
                    tracing::info!(
                        camera = label,
                        "nobody watches; camera stopped and released"
                    );
                    seen = gate.passes();
                }
            }
        }
    }
}
