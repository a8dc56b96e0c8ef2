//! picamd: a network camera appliance in one binary.
//!
//! Data flows one way, and no module imports against it (`.ci/flow-check`):
//!
//! - [`frame`] (bottom): `Frame`, `Payload`, `Yuv420Buffer`, `CaptureTime`, `EncodedFrame`,
//!   `SourceInfo`; [`wire`], the WebSocket header those frames are sent with.
//! - [`source`]: one module per kind; a source sees a frame sink and a demand signal.
//! - [`pipeline`]: one stream's life (source from its spec, supervisor, watchdog, no-signal
//!   frames, demand and linger, the state machine, the clock); wires source → encode → hub.
//! - [`encode`]: the JPEG worker pool, out to an `EncodeSink`.
//! - [`hub`]: the newest encoded frame (latest wins), viewers, counters, the posted state.
//! - [`http`]: the outputs (MJPEG, snapshot, WebSocket, state, controls) and their guard.
//! - [`rtsp`]: the RTSP server, each stream's H.264 over RTP.
//! - [`webrtc`]: WebRTC (WHEP) sessions, each stream's H.264 to browsers; its HTTP
//!   routes are `http/whep.rs`.
//! - Appliance parts: [`config`], [`led`], [`service`], [`shutdown`], [`auth`], [`tls`],
//!   [`privileges`], [`logging`], [`atomic_file`] (state files that survive a power cut),
//!   [`boot_status`] (which persisted files the image's boot scripts used, for `/state`).
//!
//! [`run`] wires the stages for one configuration; `main` only parses the command line,
//! installs signal handlers and calls it, so tests and tools can embed the same pipeline.

pub mod access;
pub mod atomic_file;
pub mod auth;
pub mod boot_status;
pub mod config;
pub mod encode;
pub mod encoder_check;
pub mod ffmpeg_child;
pub mod frame;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod led;
pub mod logging;
pub mod pipeline;
pub mod privileges;
pub mod publish;
pub mod rtsp;
pub mod service;
pub mod shutdown;
pub mod source;
pub mod tls;
pub mod webrtc;
pub mod wire;

use crate::boot_status::PersistedFile;
use crate::config::{Config, StreamConfig};
use crate::hub::Hub;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;

/// One stream's running pipeline and what its outputs are given.
struct Running {
    state: http::AppState,
    pipeline: Pipeline,
    /// One thread per `publish` URL.
    publishers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts one stream's pipeline.
fn start_stream(
    config: &StreamConfig,
    policy: &std::sync::Arc<http::guard::Policy>,
    rtsp_port: Option<u16>,
    persist: &std::sync::Arc<[PersistedFile]>,
    shutdown: &Shutdown,
) -> std::io::Result<Running> {
    let pipeline = Pipeline::start(config, shutdown)?;
    let publishers = publish::start(
        &pipeline.hub,
        &config.publish,
        config.fps,
        tokio::runtime::Handle::current(),
        shutdown,
    )?;
    Ok(Running {
        publishers,
        state: http::AppState {
            hub: pipeline.hub.clone(),
            shutdown: shutdown.clone(),
            controls: pipeline.controls.clone(),
            policy: policy.clone(),
            rtsp_port,
            webrtc: None,
            persist: persist.clone(),
        },
        pipeline,
    })
}

/// HTTP's server-wide viewer limits, lent to the RTSP server (which does not import `http`).
struct HttpSlots(std::sync::Arc<http::limits::ViewerSlots>);

impl rtsp::SharedSlots for HttpSlots {
    fn take(&self, ip: std::net::IpAddr) -> Result<Box<dyn Send + Sync>, String> {
        self.0
            .take(ip)
            .map(|slot| Box::new(slot) as Box<dyn Send + Sync>)
            .map_err(|e| e.to_string())
    }
}

/// Runs every stream's pipeline, the status LED, the HTTP(S) server on `listeners`, the
/// RTSP server on `rtsp` and WebRTC on `webrtc` until `shutdown` fires, then stops every
/// stage and waits for its threads. `persist` is what `/state` lists as the persisted files
/// read at start-up ([`boot_status`], the TLS pair). Under systemd it also reports
/// readiness, status and watchdog pings (see [`service`]).
pub async fn run(
    config: Config,
    listeners: http::Listeners,
    rtsp: Option<tokio::net::TcpListener>,
    webrtc: Option<webrtc::Sockets>,
    persist: Vec<PersistedFile>,
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
    let rtsp_port = rtsp
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let persist: std::sync::Arc<[PersistedFile]> = persist.into();
    let mut pipelines = Vec::with_capacity(config.streams.len());
    for stream in &config.streams {
        match start_stream(stream, &policy, rtsp_port, &persist, &shutdown) {
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
    let service = tokio::spawn(service::supervise(hubs.clone(), shutdown.clone()));
    let rtsp = rtsp.map(|listener| {
        let server = rtsp::Server::new(
            hubs.clone(),
            policy.auth.clone(),
            Some(std::sync::Arc::new(HttpSlots(policy.viewers.clone()))),
            rtsp::ConnectionLimits::for_viewers(
                config.security.max_viewers_total,
                config.security.max_viewers_per_client,
            ),
            shutdown.clone(),
        );
        tokio::spawn(rtsp::serve(listener, server))
    });
    let webrtc = match (webrtc, &config.webrtc) {
        (Some(sockets), Some(c)) => {
            match webrtc::WebRtc::new(hubs.clone(), c.clone(), sockets, shutdown.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("no WebRTC: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let webrtc_task = webrtc.clone().map(|w| tokio::spawn(w.serve()));
    let states = pipelines
        .iter()
        .map(|p| http::AppState {
            webrtc: webrtc.clone(),
            ..p.state.clone()
        })
        .collect();
    http::serve(listeners, states, shutdown.clone()).await;

    // The servers return only on shutdown; then every pipeline's threads end.
    shutdown.trigger();
    if let Some(r) = rtsp {
        let _ = r.await;
    }
    if let Some(w) = webrtc_task {
        let _ = w.await;
    }
    let _ = service.await;
    join_pipelines(pipelines, led).await
}

async fn join_pipelines(
    pipelines: Vec<Running>,
    led: Option<led::LedThread>,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        for p in pipelines {
            for t in p.publishers {
                let _ = t.join();
            }
            p.pipeline.join();
        }
        // Last, so the LED shows "stopping" until everything else has.
        if let Some(led) = led {
            led.join();
        }
    })
    .await
    .map_err(std::io::Error::other)
}
