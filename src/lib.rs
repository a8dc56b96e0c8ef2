//! picamd: a network camera appliance in one binary.
//!
//! Data flows one way: [`source`] → [`encode`] → [`hub`] → [`http`] outputs. [`run`] wires
//! the stages for one configuration; `main` only parses the command line, installs signal
//! handlers and calls it, so tests and tools can embed the same pipeline.

pub mod auth;
pub mod config;
pub mod encode;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod led;
pub mod logging;
pub mod privileges;
pub mod service;
pub mod shutdown;
pub mod source;
pub mod tls;
pub mod wire;

use crate::config::{Config, SourceSpec, StreamConfig};
use crate::encode::EncoderPool;
use crate::hub::{Hub, PipelineInfo};
use crate::shutdown::Shutdown;
use crate::source::test_pattern::TestPattern;
use crate::source::{Source, SourceContext, SourceError};

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
        SourceSpec::V4l2 { device } => Ok(Box::new(source::v4l2::V4l2Source::new(
            device.clone(),
            w,
            h,
            fps,
        ))),
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
            source::ffmpeg::FfmpegOptions {
                width: w,
                height: h,
                fps,
                looping: config.input.looping,
                passthrough: config.input.passthrough,
                max_frame_bytes: config.input.max_frame_bytes,
            },
        ))),
    }
}

/// One stream's running stages.
struct Pipeline {
    state: http::AppState,
    source_threads: source::SourceThreads,
    encoder_threads: encode::EncoderThreads,
}

/// Starts one stream: its source, encoder pool and hub.
fn start_pipeline(
    config: &StreamConfig,
    policy: &std::sync::Arc<http::guard::Policy>,
    shutdown: &Shutdown,
) -> std::io::Result<Pipeline> {
    let source = make_source(config)
        .map_err(|e| std::io::Error::other(format!("stream {:?}: {e}", config.name)))?;
    let hub = Hub::new(PipelineInfo {
        name: config.name.clone(),
        source: source.info(),
        width: config.size.width,
        height: config.size.height,
        fps: config.fps,
        workers: config.workers,
        quality: config.quality,
        max_viewers: config.max_viewers,
    });
    let (encoders, encoder_threads) =
        EncoderPool::start(config.workers, config.quality, hub.clone())?;
    let controls = source.controls();
    if let (Some(handle), false) = (&controls, config.controls.is_empty()) {
        // Validated with the rest of the config; support depends on the camera.
        if let Err(e) = handle.apply(&config.controls) {
            tracing::warn!(stream = %config.name, error = %e, "controls from the config file were not applied");
        }
    }
    let ctx = SourceContext::new(hub.clone(), encoders, shutdown.clone());
    let source_threads = source::spawn(source, ctx)?;
    Ok(Pipeline {
        state: http::AppState {
            hub,
            shutdown: shutdown.clone(),
            controls,
            policy: policy.clone(),
        },
        source_threads,
        encoder_threads,
    })
}

/// Runs every stream's pipeline, the status LED and the HTTP(S) server on `listeners` until
/// `shutdown` fires, then stops every stage and waits for its threads. Under systemd it also
/// reports readiness, status and watchdog pings (see [`service`]).
pub async fn run(
    config: Config,
    listeners: http::Listeners,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let policy = http::guard::Policy::new(&config.security)
        .map_err(|e| std::io::Error::other(format!("authentication: {e}")))?;
    if policy.auth.enabled() {
        tracing::info!(
            users = config.security.auth.users.len(),
            tokens = config.security.auth.tokens.len(),
            "authentication on: every URL but /healthz needs credentials"
        );
    }
    let mut pipelines = Vec::with_capacity(config.streams.len());
    for stream in &config.streams {
        match start_pipeline(stream, &policy, &shutdown) {
            Ok(p) => pipelines.push(p),
            Err(e) => {
                // Stop what already started before reporting.
                shutdown.trigger();
                join_pipelines(pipelines, None).await?;
                return Err(e);
            }
        }
    }
    let hubs: Vec<Hub> = pipelines.iter().map(|p| p.state.hub.clone()).collect();
    let led = match led::spawn(config.led.clone(), hubs.clone(), shutdown.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            shutdown.trigger();
            join_pipelines(pipelines, None).await?;
            return Err(std::io::Error::other(format!("status LED: {e}")));
        }
    };
    // Ready means every pipeline is set up and the (already bound) listener is served.
    let service = tokio::spawn(service::supervise(hubs, shutdown.clone()));
    let states = pipelines.iter().map(|p| p.state.clone()).collect();
    http::serve(listeners, states, shutdown.clone()).await;

    // The server returns only on shutdown. Each source thread drops the last encoder handle
    // when it exits, which ends its encoder threads.
    shutdown.trigger();
    let _ = service.await;
    join_pipelines(pipelines, led).await
}

async fn join_pipelines(
    pipelines: Vec<Pipeline>,
    led: Option<led::LedThread>,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        for p in pipelines {
            p.source_threads.join();
            p.encoder_threads.join();
        }
        // Last, so the LED shows "stopping" until everything else has.
        if let Some(led) = led {
            led.join();
        }
    })
    .await
    .map_err(std::io::Error::other)
}
