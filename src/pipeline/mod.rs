//! One stream's life: the source made from its spec, its supervisor (restarts with
//! backoff), the stall watchdog and its "no signal" frames, on-demand capture (one linger
//! for every kind of source), and the state machine that decides all of it
//! ([`state::Machine`], a pure function). The pipeline wires source → encoders → hub:
//!
//! ```text
//! Source ──Frame──▶ FrameSink (here: counts, state) ──Frame──▶ EncoderPool ──EncodedFrame──▶ Hub
//!        ◀─Demand── viewers counted by the hub, linger decided here
//! ```
//!
//! A source sees only [`SourceContext`] (a frame sink and a demand signal); the encoders see
//! only an [`EncodeSink`]; the hub sees only encoded frames and the state posted to it.
//! Time comes from one [`Clock`], so the timings are testable without sleeping.

pub mod clock;
pub mod encoders;
pub mod h264_stage;
pub mod no_signal;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use crate::config::{SourceSpec, StreamConfig};
use crate::encode::fallback::EncoderNews;
use crate::encode::{EncodeEvent, EncodeSink, EncoderPool, EncoderThreads};
use crate::frame::{AccessUnit, CaptureTime, EncodedFrame, Frame, H264Supply, Payload};
use crate::hub::{Hub, Output, PipelineInfo};
use crate::shutdown::Shutdown;
use crate::source::controls::CameraControls;
use crate::source::screen::Screen;
use crate::source::test_pattern::TestPattern;
use crate::source::{self, Demand, FrameSink, Source, SourceContext, SourceError, SourceNews};
use clock::{Clock, SystemClock};
pub use encoders::EncoderPlan;
use h264_stage::{H264Stage, Job, Picture, StageSettings};
use no_signal::NoSignal;
use state::{Action, Event, Machine, Timing};

/// How often the watchdog looks at the source.
const WATCHDOG_TICK: Duration = Duration::from_millis(200);
/// How often a source waiting for demand looks again (the linger's end, shutdown).
const DEMAND_POLL: Duration = Duration::from_millis(100);

/// Builds the source a configuration asks for. Devices are opened by the source's `run`,
/// not here, so a camera missing at start is a recoverable state, not a startup error.
pub fn make_source(config: &StreamConfig) -> Result<Box<dyn Source>, SourceError> {
    let (w, h, fps) = (config.size.width, config.size.height, config.fps);
    let oriented = config.rotation != 0 || config.hflip || config.vflip;
    if oriented && !matches!(config.source, SourceSpec::Libcamera { .. }) {
        // Said once and loudly rather than ignored: only libcamera cameras can do this.
        tracing::warn!(
            "rotation/hflip/vflip apply to libcamera cameras only; the {} source ignores them \
             (the web player can rotate and mirror the view)",
            config.source
        );
    }
    match &config.source {
        SourceSpec::TestPattern { faults } => Ok(Box::new(
            TestPattern::new(w, h, fps).with_faults(faults.clone()),
        )),
        #[cfg(feature = "libcamera")]
        SourceSpec::Libcamera { camera } => Ok(Box::new(
            source::libcamera::LibcameraSource::new(camera.clone(), w, h, fps)
                // Enough buffers that every encoder can hold one while two stay queued.
                .with_buffer_count(config.workers as u32 + 2)
                .with_orientation(config.rotation, config.hflip, config.vflip)
                .map_err(|e| SourceError::Unavailable(e.to_string()))?,
        )),
        #[cfg(not(feature = "libcamera"))]
        SourceSpec::Libcamera { .. } => Err(SourceError::Unavailable(
            "this build has no libcamera support".into(),
        )),
        SourceSpec::V4l2 { device } => Ok(Box::new(
            source::v4l2::V4l2Source::new(device.clone(), w, h, fps)
                .with_pixel_format(config.pixel_format),
        )),
        SourceSpec::MjpegHttp { url } => Ok(Box::new(
            source::mjpeg_http::MjpegHttpSource::new(
                url,
                source::mjpeg_http::MjpegHttpOptions {
                    max_frame_bytes: config.input.max_frame_bytes,
                },
            )
            .map_err(SourceError::Unavailable)?,
        )),
        SourceSpec::Ffmpeg { input } => Ok(Box::new(source::ffmpeg::FfmpegSource::new(
            input.clone(),
            ffmpeg_options(config),
        ))),
        SourceSpec::Screen { target } => {
            match source::screen::resolve(target).map_err(SourceError::Unavailable)? {
                Screen::Framebuffer(path) => Ok(Box::new(
                    source::screen::fbdev::FramebufferSource::new(path, w, h, fps),
                )),
                Screen::X11(display) => Ok(Box::new(source::ffmpeg::FfmpegSource::x11(
                    display,
                    ffmpeg_options(config),
                ))),
            }
        }
    }
}

fn ffmpeg_options(config: &StreamConfig) -> source::ffmpeg::FfmpegOptions {
    source::ffmpeg::FfmpegOptions {
        width: config.size.width,
        height: config.size.height,
        fps: config.fps,
        looping: config.input.looping,
        passthrough: config.input.passthrough,
        max_frame_bytes: config.input.max_frame_bytes,
    }
}

/// A running stream: what the outputs use, and the threads to join at the end.
pub struct Pipeline {
    pub hub: Hub,
    /// The source's runtime controls, if it has any.
    pub controls: Option<Arc<dyn CameraControls>>,
    supervisor: std::thread::JoinHandle<()>,
    watchdog: std::thread::JoinHandle<()>,
    encoders: EncoderThreads,
}

impl Pipeline {
    /// Starts one stream as configured: its source, encoder pool and hub.
    pub fn start(config: &StreamConfig, shutdown: &Shutdown) -> std::io::Result<Pipeline> {
        let source = make_source(config)
            .map_err(|e| std::io::Error::other(format!("stream {:?}: {e}", config.name)))?;
        let encoders = EncoderPlan::for_config(config);
        let info = PipelineInfo {
            name: config.name.clone(),
            source: source.info(),
            width: config.size.width,
            height: config.size.height,
            fps: config.fps,
            // One worker feeds a hardware JPEG encoder (see crate::encode).
            workers: if encoders.jpeg.device.is_some() {
                1
            } else {
                config.workers
            },
            quality: config.quality,
            max_viewers: config.max_viewers,
            h264_bitrate: config.h264.bitrate.unwrap_or_else(|| {
                crate::encode::h264::default_bitrate(
                    config.size.width,
                    config.size.height,
                    config.fps,
                )
            }),
            h264_gop_s: config.h264.gop_seconds,
        };
        let controls = source.controls();
        if let (Some(handle), false) = (&controls, config.controls.is_empty()) {
            // Validated with the rest of the config; support depends on the camera.
            if let Err(e) = handle.apply(&config.controls) {
                tracing::warn!(stream = %config.name, error = %e, "controls from the config file were not applied");
            }
        }
        let h264 = StageSettings {
            fps: config.fps,
            // The configured rate, else the default for the size each frame has.
            bitrate: config.h264.bitrate,
            gop_seconds: config.h264.gop_seconds as f64,
        };
        Pipeline::start_with(
            source,
            info,
            h264,
            encoders,
            Arc::new(SystemClock),
            shutdown,
        )
    }

    /// Starts `source` with a hub described by `info`, on `clock`.
    pub fn start_with(
        source: Box<dyn Source>,
        info: PipelineInfo,
        h264: StageSettings,
        plan: EncoderPlan,
        clock: Arc<dyn Clock>,
        shutdown: &Shutdown,
    ) -> std::io::Result<Pipeline> {
        let timing = Timing::for_fps(info.fps);
        let (workers, quality, fps) = (info.workers, info.quality, info.fps);
        let hub = Hub::new(info);
        hub.set_jpeg_encoder(|s| *s = plan.jpeg.initial_state());
        hub.h264().set_encoder(|s| *s = plan.h264.initial_state());
        let jpeg_hardware = plan.jpeg.device.clone().map(|p| (p, fps));
        let (encoders, encoder_threads) = EncoderPool::start(
            workers,
            quality,
            Arc::new(HubSink(hub.clone())),
            jpeg_hardware,
        )?;
        let h264_hardware = plan.h264.device.clone();
        let stage = OnceLock::new();
        if !source.may_supply_h264() {
            // A source that may pass its own H.264 through gets an encoder only when a run
            // says it needs one (`FrameSink::supply_h264`).
            let _ = stage.set(H264Stage::start(
                hub.h264().clone(),
                h264,
                h264_hardware.clone(),
            )?);
        }
        let life = Arc::new(Life {
            machine: Mutex::new(Machine::new(timing)),
            demand_changed: Condvar::new(),
            hub: hub.clone(),
            encoders,
            h264: stage,
            h264_settings: h264,
            h264_hardware,
            passthrough: AtomicBool::new(false),
            clock,
        });
        let listener = Arc::downgrade(&life);
        if hub
            .on_viewers(Box::new(move |n| viewers_changed(&listener, n)))
            .is_err()
        {
            unreachable!("a new hub has no listener");
        }
        let controls = source.controls();
        let watchdog = {
            let (life, shutdown) = (life.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("src-watch".into())
                .spawn(move || watch(&life, &shutdown))?
        };
        let kind = source.info().kind;
        let supervisor = {
            let shutdown = shutdown.clone();
            let ctx = SourceContext::new(life.clone(), life.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(format!("src-{kind}"))
                .spawn(move || supervise(source, ctx, &life, &shutdown))?
        };
        Ok(Pipeline {
            hub,
            controls,
            supervisor,
            watchdog,
            encoders: encoder_threads,
        })
    }

    /// Waits for the stream's threads after shutdown: the source's first, whose end drops
    /// the last encoder handle, which ends the encoders.
    pub fn join(self) {
        let _ = self.supervisor.join();
        let _ = self.watchdog.join();
        self.encoders.join();
    }
}

/// One stream's life, shared by its threads: the state machine and what its actions need.
/// The hub's viewer listener holds it weakly, so it ends with the threads.
struct Life {
    machine: Mutex<Machine>,
    /// Woken when the viewers change, for a source waiting for demand.
    demand_changed: Condvar,
    hub: Hub,
    encoders: EncoderPool,
    /// Runs while the hub's H.264 track has consumers; never started for a source that
    /// passes its own H.264 through (until a run of it needs the encoder after all).
    h264: OnceLock<H264Stage>,
    h264_settings: StageSettings,
    /// The hardware H.264 encoder planned, for a stage started late.
    h264_hardware: Option<std::path::PathBuf>,
    /// The source's own access units feed the H.264 track this run; frames do not.
    passthrough: AtomicBool,
    clock: Arc<dyn Clock>,
}

impl Life {
    fn machine(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Steps the machine and posts its state to the hub.
    fn apply(&self, event: Event) -> Vec<Action> {
        let mut m = self.machine();
        let actions = m.step(self.clock.now(), event);
        self.post(&m);
        actions
    }

    fn post(&self, m: &Machine) {
        if self.hub.source_state() != *m.state() {
            self.hub.set_source_state(m.state().clone());
        }
    }

    /// Hands a frame to the encoders that have someone to serve: the H.264 stage while the
    /// track has consumers (and the source does not pass its own H.264 through), the JPEG
    /// pool unless H.264 consumers are the only viewers (then nobody would see the JPEGs).
    /// `false` when the JPEG pool dropped it (all busy).
    fn encode(&self, frame: Frame) -> bool {
        let stage = self
            .h264
            .get()
            .filter(|_| !self.passthrough.load(Ordering::Relaxed));
        let h264 = match stage {
            Some(stage) => stage.wanted(),
            None => self.hub.h264().consumers() > 0,
        };
        if let (true, Some(stage)) = (h264, stage) {
            let picture = match &frame.payload {
                Payload::Yuv420(planes) => Picture::Planes(planes.clone()),
                Payload::Jpeg(jpeg) => Picture::Jpeg(jpeg.clone()),
            };
            stage.offer(Job {
                seq: frame.seq,
                captured: frame.captured,
                width: frame.width,
                height: frame.height,
                picture,
            });
        }
        let jpeg_viewers = [Output::Mjpeg, Output::WebSocket, Output::Snapshot]
            .iter()
            .map(|&o| self.hub.viewers(o))
            .sum::<usize>();
        if h264 && jpeg_viewers == 0 {
            return true;
        }
        self.encoders.submit(frame)
    }
}

fn viewers_changed(life: &Weak<Life>, n: usize) {
    if let Some(life) = life.upgrade() {
        life.apply(Event::Viewers(n));
        life.demand_changed.notify_all();
    }
}

impl FrameSink for Life {
    fn next_seq(&self) -> u64 {
        self.hub.next_seq()
    }

    fn frame(&self, frame: Frame) {
        self.hub.note_captured();
        self.apply(Event::Frame);
        self.encode(frame);
    }

    fn news(&self, news: SourceNews) {
        self.apply(match news {
            SourceNews::Starting => Event::Starting { new_run: false },
            SourceNews::Down(why) => Event::Down(why),
            SourceNews::Described(what) => {
                self.hub.set_source_name(what);
                return;
            }
        });
    }

    fn supply_h264(&self, supply: H264Supply) {
        let passthrough = supply == H264Supply::Source;
        match self.h264.get() {
            // Only the source thread calls this, so the stage is started once. A stage
            // started late asks for a keyframe itself.
            None if !passthrough => {
                match H264Stage::start(
                    self.hub.h264().clone(),
                    self.h264_settings,
                    self.h264_hardware.clone(),
                ) {
                    Ok(stage) => {
                        let _ = self.h264.set(stage);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start the H.264 encoder"),
                }
            }
            // Back from the camera's units: consumers are in the middle of its GOP, and the
            // encoder's next P-frame would refer to pictures they never had. (The other way
            // needs nothing: ffmpeg's copy starts at a keyframe.)
            Some(stage) if !passthrough && self.passthrough.load(Ordering::Relaxed) => {
                stage.request_keyframe();
            }
            _ => {}
        }
        if self.hub.h264().supply() != supply {
            match &supply {
                H264Supply::Source => tracing::info!(
                    stream = %self.hub.info().name,
                    "H.264 passed through from the source; the H.264 encoder does not run"
                ),
                _ => tracing::debug!(stream = %self.hub.info().name, "H.264 from the encoder"),
            }
        }
        self.passthrough.store(passthrough, Ordering::Relaxed);
        self.hub.h264().set_supply(supply);
    }

    fn access_unit(&self, unit: AccessUnit) {
        if self.passthrough.load(Ordering::Relaxed) {
            self.hub.h264().publish(unit);
        }
    }
}

impl Drop for Life {
    fn drop(&mut self) {
        // Ends the consumers' waits; the stage does the same when it stops, but a stream
        // passing its own H.264 through may have none.
        self.hub.h264().close();
    }
}

impl Demand for Life {
    fn wait(&self, shutdown: &Shutdown) -> bool {
        let mut m = self.machine();
        let mut parked = false;
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            let now = self.clock.now();
            if m.wants_frames(now) {
                if parked {
                    m.step(now, Event::Resumed);
                    self.post(&m);
                }
                return true;
            }
            if !parked {
                m.step(now, Event::Parked);
                self.post(&m);
                parked = true;
            }
            m = self
                .demand_changed
                .wait_timeout(m, DEMAND_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wanted(&self) -> bool {
        self.machine().wants_frames(self.clock.now())
    }
}

/// The encoders' output: the hub, and its counters.
struct HubSink(Hub);

impl EncodeSink for HubSink {
    fn publish(&self, frame: EncodedFrame) {
        self.0.publish(frame);
    }

    fn count(&self, event: EncodeEvent) {
        let stats = self.0.stats();
        match event {
            EncodeEvent::Encoded(took) => {
                stats.encoded.fetch_add(1, Ordering::Relaxed);
                stats
                    .encode_us_total
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
            }
            EncodeEvent::Failed => {
                stats.encode_errors.fetch_add(1, Ordering::Relaxed);
            }
            EncodeEvent::Busy => {
                stats.dropped_busy.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn encoder_news(&self, news: EncoderNews) {
        self.0.set_jpeg_encoder(|s| encoders::apply(s, news));
    }
}

/// Runs the source until shutdown, restarting it after the backoff the machine gives.
fn supervise(
    mut source: Box<dyn Source>,
    mut ctx: SourceContext,
    life: &Life,
    shutdown: &Shutdown,
) {
    let kind = source.info().kind;
    loop {
        life.apply(Event::Starting { new_run: true });
        let wait = match source.run(&mut ctx) {
            Ok(()) => break,
            Err(SourceError::Unavailable(why)) => {
                tracing::error!(source = kind, "source unavailable: {why}");
                life.apply(Event::Unavailable(why));
                // Nothing to retry; the watchdog keeps serving "no signal" until shutdown.
                while !life.clock.sleep(Duration::from_secs(3600), shutdown) {}
                break;
            }
            Err(e) => {
                life.hub
                    .stats()
                    .source_restarts
                    .fetch_add(1, Ordering::Relaxed);
                // The state stays Error (the reason viewers see) until a frame arrives.
                let wait = restart_wait(&life.apply(Event::Failed(e.to_string())));
                tracing::warn!(source = kind, error = %e, "source failed; restarting in {wait:?}");
                wait
            }
        };
        if life.clock.sleep(wait, shutdown) {
            break;
        }
    }
    life.apply(Event::Shutdown);
    tracing::debug!(source = kind, "source thread finished");
}

fn restart_wait(actions: &[Action]) -> Duration {
    actions
        .iter()
        .find_map(|a| match a {
            Action::RestartIn(d) => Some(*d),
            _ => None,
        })
        .unwrap_or_default()
}

/// Ticks the machine; carries out what it says: warn of a stall, show "no signal".
fn watch(life: &Life, shutdown: &Shutdown) {
    let info = life.hub.info().clone();
    let picture = NoSignal::new(info.width, info.height);
    while !life.clock.sleep(WATCHDOG_TICK, shutdown) {
        for action in life.apply(Event::Tick) {
            match action {
                Action::Stalled(why) => {
                    tracing::warn!(source = info.source.kind, "source stalled: {why}")
                }
                Action::NoSignal(why) => {
                    // Encoded by the pool like any frame: the source is down, its workers idle.
                    let captured = CaptureTime::now();
                    let frame = Frame {
                        seq: life.hub.next_seq(),
                        captured,
                        width: info.width,
                        height: info.height,
                        no_signal: true,
                        payload: Payload::Yuv420(std::sync::Arc::new(
                            picture.render(&why, captured.wall_us),
                        )),
                    };
                    if life.encode(frame) {
                        life.hub
                            .stats()
                            .no_signal_frames
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Action::RestartIn(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::SourceInfo;
    use crate::hub::{Output, SourceState};
    use clock::SimClock;

    /// Fails `fails` times without a frame, then delivers `frames` frames and fails again.
    struct Flaky {
        runs: Arc<Mutex<u32>>,
        fails: u32,
    }

    impl Source for Flaky {
        fn info(&self) -> SourceInfo {
            SourceInfo {
                kind: "flaky",
                name: "unit".into(),
            }
        }

        fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
            let mut runs = self.runs.lock().unwrap();
            *runs += 1;
            if !ctx.wait_for_demand() {
                return Ok(());
            }
            if *runs > self.fails {
                let seq = ctx.next_seq();
                ctx.emit(Frame {
                    seq,
                    captured: CaptureTime::now(),
                    width: 16,
                    height: 16,
                    no_signal: false,
                    payload: Payload::Yuv420(std::sync::Arc::new(Grey)),
                });
            }
            Err(SourceError::Failed(format!("run {runs} failed")))
        }
    }

    /// A 16x16 mid-grey picture.
    struct Grey;

    impl crate::frame::Yuv420Buffer for Grey {
        fn planes(&self) -> [&[u8]; 3] {
            static Y: [u8; 256] = [128; 256];
            static C: [u8; 64] = [128; 64];
            [&Y, &C, &C]
        }
        fn strides(&self) -> [usize; 3] {
            [16, 8, 8]
        }
    }

    #[test]
    fn the_supervisor_backs_off_on_a_simulated_clock_and_resets_after_frames() {
        let clock = Arc::new(SimClock::new());
        let shutdown = Shutdown::new();
        let runs = Arc::new(Mutex::new(0));
        let source = Flaky {
            runs: runs.clone(),
            fails: 4,
        };
        let p = Pipeline::start_with(
            Box::new(source),
            PipelineInfo::for_tests(10),
            StageSettings::for_tests(),
            EncoderPlan::software(),
            clock.clone(),
            &shutdown,
        )
        .unwrap();
        let _viewer = p.hub.add_viewer(Output::Mjpeg).unwrap();
        // Five failed runs without frames, then runs that deliver one frame each: the
        // waits double from 250 ms, then drop back to 250 ms after a run with frames.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while *runs.lock().unwrap() < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "runs: {}",
                runs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        shutdown.trigger();
        let restarts: Vec<u128> = clock
            .sleeps()
            .iter()
            .filter(|d| **d != WATCHDOG_TICK)
            .map(Duration::as_millis)
            .take(6)
            .collect();
        assert_eq!(restarts, [250, 500, 1000, 2000, 250, 250]);
        let hub = p.hub.clone();
        p.join();
        assert_eq!(hub.source_state(), SourceState::Stopped);
        assert!(hub.stats().source_restarts.load(Ordering::Relaxed) >= 7);
        assert!(hub.latest().is_some(), "the frames reached the hub");
    }

    #[test]
    fn h264_consumers_get_decodable_units_starting_at_a_keyframe() {
        use openh264::formats::YUVSource;
        let shutdown = Shutdown::new();
        let mut info = PipelineInfo::for_tests(10);
        (info.width, info.height) = (320, 240);
        let source = TestPattern::new(320, 240, 30);
        let p = Pipeline::start_with(
            Box::new(source),
            info,
            StageSettings::for_tests(),
            EncoderPlan::software(),
            Arc::new(SystemClock),
            &shutdown,
        )
        .unwrap();
        assert_eq!(p.hub.h264().consumers(), 0);
        // The viewer wakes the source; the consumer makes the stage encode.
        let guard = p.hub.add_viewer(Output::Mjpeg).unwrap();
        let mut consumer = p.hub.h264().consume(Some(guard));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let units: Vec<_> = rt.block_on(async {
            let mut units = Vec::new();
            while units.len() < 10 {
                let next = tokio::time::timeout(Duration::from_secs(10), consumer.next());
                units.push(next.await.expect("a unit within 10 s").expect("open"));
            }
            units
        });
        assert!(units[0].keyframe, "a new consumer starts at a keyframe");
        assert!(units.windows(2).all(|w| w[0].seq < w[1].seq));
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut pictures = 0;
        for u in &units {
            if let Some(yuv) = decoder.decode(&u.data).unwrap() {
                assert_eq!(yuv.dimensions(), (320, 240));
                pictures += 1;
            }
        }
        assert!(pictures >= 9, "{pictures} of 10 units decoded to pictures");
        assert!(p.hub.h264().parameter_sets().is_some());
        drop(consumer);
        shutdown.trigger();
        p.join();
    }
}
