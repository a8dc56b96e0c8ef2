//! `/state` (JSON), `/metrics` (Prometheus text) and `/healthz`.
//!
//! Both `/state` and `/metrics` render the same [`Snapshot`] of the hub, so they never
//! disagree. The Prometheus text format is written by hand: it is a few lines of `name value`
//! per metric, and a metrics crate would keep a second registry of the counters the hub
//! already has.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::{no_cache_headers, AppState, Streams};
use crate::boot_status::{PersistedFile, Used};
use crate::frame::H264Supply;
use crate::hub::{EncoderState, Hub, Output};

/// The body of `/state`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The stream's name (its URLs are `/cam/<name>/…`).
    pub stream: String,
    pub source: SourceState,
    pub resolution: Resolution,
    pub fps: Fps,
    pub viewers: Viewers,
    pub encoder: Encoder,
    pub frames: Frames,
    pub h264: H264,
    /// The publishers pushing this stream to servers (`publish`).
    pub publish: Vec<Publish>,
    /// The stream's RTSP URL with the host this request named; absent when RTSP is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtsp: Option<String>,
    /// Persisted files read at start-up and which copy of each was used: the SD image's boot
    /// status file (`boot_status`), and the self-signed TLS pair when it fell back to its
    /// previous copy. The same for every stream; empty when nothing is known.
    pub persist: Vec<PersistedFile>,
    pub uptime_s: f64,
}

/// One publisher.
#[derive(Debug, Serialize)]
pub struct Publish {
    /// The URL, password hidden.
    pub url: String,
    /// `connecting`, `publishing`, `retrying` or `stopped`.
    pub state: &'static str,
    /// Why it last failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub restarts: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct SourceState {
    pub kind: &'static str,
    pub name: String,
    /// `starting`, `idle` (nobody watching), `streaming`, `stalled`, `error`, `stopped`.
    pub state: &'static str,
    /// Why the source is stalled or failing (what the "no signal" frame shows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Times the source failed and was restarted.
    pub restarts: u64,
}

#[derive(Debug, Serialize)]
pub struct Resolution {
    /// What the newest frame has (a camera may deliver another size than asked), else the
    /// configured size.
    pub width: u32,
    pub height: u32,
    /// The size asked for in the configuration.
    pub configured: String,
}

#[derive(Debug, Serialize)]
pub struct Fps {
    pub configured: u32,
    /// Frames published per second over the last two seconds; 0 while idle.
    pub measured: f64,
}

#[derive(Debug, Serialize)]
pub struct Viewers {
    pub mjpeg: usize,
    pub ws: usize,
    /// Snapshot requests waiting for a frame right now.
    pub snapshot: usize,
    /// Publishers (not counted against `max`).
    pub publish: usize,
    /// RTSP sessions (from SETUP to TEARDOWN or timeout).
    pub rtsp: usize,
    /// WebSocket clients that asked for H.264 (WebCodecs); not in `ws`.
    pub ws_h264: usize,
    /// WebRTC sessions (from the WHEP answer to DELETE, silence or shutdown).
    pub webrtc: usize,
    pub max: usize,
    pub refused: u64,
}

#[derive(Debug, Serialize)]
pub struct Encoder {
    /// What encodes the JPEGs (`jpeg_encoder`): as configured, what runs, why, and how
    /// often a hardware encoder failed over to software.
    #[serde(flatten)]
    pub state: EncoderState,
    pub workers: usize,
    pub quality: u8,
    /// Mean encode time per frame since start, in milliseconds.
    pub mean_ms: f64,
    pub errors: u64,
}

/// The H.264 track: encoded only while it has consumers, or passed through from the source.
#[derive(Debug, Serialize)]
pub struct H264 {
    /// `encoded` (picamd's encoder makes it from the frames) or `passthrough` (the source's
    /// own H.264, copied: `passthrough = true` and an H.264 input).
    pub mode: &'static str,
    /// Why pass-through was asked for but the stream is encoded (the input's codec).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough_refused: Option<String>,
    /// The picture size of the newest unit (with pass-through: the input's own size, not
    /// the configured one); 0 before the first.
    pub width: u32,
    pub height: u32,
    /// Clients and publishers taking H.264 now.
    pub consumers: usize,
    /// The encoder's target bits per second.
    pub bitrate: u32,
    /// Seconds from one keyframe to the next.
    pub gop_s: u32,
    /// Frames encoded, keyframes among them, and bytes, since start.
    pub encoded: u64,
    pub keyframes: u64,
    pub bytes: u64,
    /// Mean encode time per frame since start, in milliseconds.
    pub mean_ms: f64,
    pub errors: u64,
    /// Frames not encoded because the encoder was still busy.
    pub skipped_busy: u64,
    /// What encodes it (`h264_encoder`), as for JPEG under `encoder`.
    pub encoder: EncoderState,
}

#[derive(Debug, Serialize)]
pub struct Frames {
    pub captured: u64,
    pub encoded: u64,
    pub published: u64,
    /// Frames dropped because every encoder was busy.
    pub dropped_busy: u64,
    /// Encoded frames dropped because a newer frame was already out.
    pub dropped_late: u64,
    /// Sequence number of the newest frame, 0 before the first.
    pub latest_seq: u64,
    /// Bytes of the newest JPEG.
    pub latest_bytes: usize,
    /// "No signal" frames sent while the source was down or stalled.
    pub no_signal: u64,
}

impl Snapshot {
    pub fn of(hub: &Hub) -> Snapshot {
        let info = hub.info();
        let s = hub.stats();
        let state = hub.source_state();
        let encoded = s.encoded.load(Ordering::Relaxed);
        let latest = hub.latest();
        Snapshot {
            stream: info.name.clone(),
            source: SourceState {
                kind: info.source.kind,
                name: hub.source_name(),
                state: state.as_str(),
                error: match state {
                    crate::hub::SourceState::Error(e) | crate::hub::SourceState::Stalled(e) => {
                        Some(e)
                    }
                    _ => None,
                },
                restarts: s.source_restarts.load(Ordering::Relaxed),
            },
            resolution: {
                let (width, height) = latest
                    .as_ref()
                    .filter(|f| !f.no_signal)
                    .map_or((info.width, info.height), |f| (f.width, f.height));
                Resolution {
                    width,
                    height,
                    configured: format!("{}x{}", info.width, info.height),
                }
            },
            fps: Fps {
                configured: info.fps,
                measured: (hub.measured_fps() * 100.0).round() / 100.0,
            },
            viewers: Viewers {
                mjpeg: hub.viewers(Output::Mjpeg),
                ws: hub.viewers(Output::WebSocket),
                snapshot: hub.viewers(Output::Snapshot),
                publish: hub.viewers(Output::Publish),
                rtsp: hub.viewers(Output::Rtsp),
                ws_h264: hub.viewers(Output::WebSocketH264),
                webrtc: hub.viewers(Output::WebRtc),
                max: info.max_viewers,
                refused: s.viewers_refused.load(Ordering::Relaxed),
            },
            encoder: Encoder {
                state: hub.jpeg_encoder(),
                workers: info.workers,
                quality: info.quality,
                mean_ms: mean_ms(s.encode_us_total.load(Ordering::Relaxed), encoded),
                errors: s.encode_errors.load(Ordering::Relaxed),
            },
            frames: Frames {
                captured: s.captured.load(Ordering::Relaxed),
                encoded,
                published: s.published.load(Ordering::Relaxed),
                dropped_busy: s.dropped_busy.load(Ordering::Relaxed),
                dropped_late: s.dropped_late.load(Ordering::Relaxed),
                latest_seq: latest.as_ref().map_or(0, |f| f.seq),
                latest_bytes: latest.as_ref().map_or(0, |f| f.jpeg().len()),
                no_signal: s.no_signal_frames.load(Ordering::Relaxed),
            },
            h264: {
                let track = hub.h264();
                let t = track.stats();
                let (keyframes, bytes) = track.totals();
                let encoded = t.encoded.load(Ordering::Relaxed);
                let supply = track.supply();
                let (width, height) = track.size().unwrap_or((0, 0));
                H264 {
                    mode: match supply {
                        H264Supply::Source => "passthrough",
                        H264Supply::Encoder | H264Supply::EncoderInstead(_) => "encoded",
                    },
                    passthrough_refused: match supply {
                        H264Supply::EncoderInstead(why) => Some(why),
                        _ => None,
                    },
                    width,
                    height,
                    consumers: track.consumers(),
                    bitrate: info.h264_bitrate,
                    gop_s: info.h264_gop_s,
                    encoded,
                    keyframes,
                    bytes,
                    mean_ms: mean_ms(t.encode_us_total.load(Ordering::Relaxed), encoded),
                    errors: t.errors.load(Ordering::Relaxed),
                    skipped_busy: t.skipped_busy.load(Ordering::Relaxed),
                    encoder: track.encoder(),
                }
            },
            publish: hub
                .publishers()
                .into_iter()
                .map(|p| Publish {
                    url: p.url,
                    state: p.state.as_str(),
                    error: p.error,
                    restarts: p.restarts,
                    bytes: p.bytes,
                })
                .collect(),
            rtsp: None,
            persist: Vec::new(),
            uptime_s: (hub.uptime().as_secs_f64() * 10.0).round() / 10.0,
        }
    }

    /// Prometheus text exposition format 0.0.4, every stream's samples labelled with its
    /// name, then the samples of picamd as a whole (`persist`), without a label.
    pub fn to_prometheus(snapshots: &[Snapshot], persist: &[PersistedFile]) -> String {
        let mut out = String::with_capacity(2048 * snapshots.len().max(1));
        // One HELP/TYPE block per metric, then one sample per stream (and per extra label).
        let mut metric =
            |name: &str,
             kind: &str,
             help: &str,
             samples: &dyn Fn(&Snapshot) -> Vec<(&'static str, f64)>| {
                let _ = writeln!(out, "# HELP picamd_{name} {help}");
                let _ = writeln!(out, "# TYPE picamd_{name} {kind}");
                for snap in snapshots {
                    for (label, v) in samples(snap) {
                        let sep = if label.is_empty() { "" } else { "," };
                        let _ = writeln!(
                            out,
                            "picamd_{name}{{stream=\"{}\"{sep}{label}}} {v}",
                            snap.stream
                        );
                    }
                }
            };
        metric(
            "frames_captured_total",
            "counter",
            "Frames produced by the source.",
            &|s| vec![("", s.frames.captured as f64)],
        );
        metric(
            "frames_encoded_total",
            "counter",
            "Frames encoded to JPEG.",
            &|s| vec![("", s.frames.encoded as f64)],
        );
        metric(
            "frames_published_total",
            "counter",
            "Frames delivered to the hub.",
            &|s| vec![("", s.frames.published as f64)],
        );
        metric(
            "frames_dropped_total",
            "counter",
            "Frames dropped, by reason.",
            &|s| {
                vec![
                    ("reason=\"encoders_busy\"", s.frames.dropped_busy as f64),
                    ("reason=\"late\"", s.frames.dropped_late as f64),
                ]
            },
        );
        metric(
            "encode_errors_total",
            "counter",
            "Frames the encoder failed on.",
            &|s| vec![("", s.encoder.errors as f64)],
        );
        metric(
            "encode_mean_seconds",
            "gauge",
            "Mean JPEG encode time per frame.",
            &|s| vec![("", s.encoder.mean_ms / 1000.0)],
        );
        metric(
            "fps_configured",
            "gauge",
            "Frame rate asked of the source.",
            &|s| vec![("", s.fps.configured as f64)],
        );
        metric(
            "fps_measured",
            "gauge",
            "Frames published per second, last 2 s.",
            &|s| vec![("", s.fps.measured)],
        );
        metric(
            "viewers",
            "gauge",
            "Clients receiving frames, by output.",
            &|s| {
                vec![
                    ("output=\"mjpeg\"", s.viewers.mjpeg as f64),
                    ("output=\"ws\"", s.viewers.ws as f64),
                    ("output=\"snapshot\"", s.viewers.snapshot as f64),
                    ("output=\"publish\"", s.viewers.publish as f64),
                    ("output=\"rtsp\"", s.viewers.rtsp as f64),
                    ("output=\"ws_h264\"", s.viewers.ws_h264 as f64),
                    ("output=\"webrtc\"", s.viewers.webrtc as f64),
                ]
            },
        );
        metric(
            "viewers_refused_total",
            "counter",
            "Viewers refused at the limit.",
            &|s| vec![("", s.viewers.refused as f64)],
        );
        metric(
            "latest_frame_bytes",
            "gauge",
            "Size of the newest JPEG.",
            &|s| vec![("", s.frames.latest_bytes as f64)],
        );
        metric(
            "no_signal_frames_total",
            "counter",
            "No-signal frames sent while the source was down or stalled.",
            &|s| vec![("", s.frames.no_signal as f64)],
        );
        metric(
            "source_restarts_total",
            "counter",
            "Times the source failed and was restarted.",
            &|s| vec![("", s.source.restarts as f64)],
        );
        metric(
            "source_down",
            "gauge",
            "1 while the source is failing or stalled (viewers see no signal).",
            &|s| {
                let down = matches!(s.source.state, "stalled" | "error");
                vec![("", if down { 1.0 } else { 0.0 })]
            },
        );
        metric(
            "source_streaming",
            "gauge",
            "1 while the source produces frames.",
            &|s| {
                vec![(
                    "",
                    if s.source.state == "streaming" {
                        1.0
                    } else {
                        0.0
                    },
                )]
            },
        );
        metric(
            "encoder_hardware",
            "gauge",
            "1 while a hardware (V4L2 M2M) encoder makes the codec, 0 while software does.",
            &|s| {
                let hw = |e: &EncoderState| f64::from(u8::from(e.using.starts_with("v4l2:")));
                vec![
                    ("codec=\"jpeg\"", hw(&s.encoder.state)),
                    ("codec=\"h264\"", hw(&s.h264.encoder)),
                ]
            },
        );
        metric(
            "encoder_fallbacks_total",
            "counter",
            "Times a hardware encoder failed and software took over.",
            &|s| {
                vec![
                    ("codec=\"jpeg\"", s.encoder.state.fallbacks as f64),
                    ("codec=\"h264\"", s.h264.encoder.fallbacks as f64),
                ]
            },
        );
        metric(
            "h264_consumers",
            "gauge",
            "Clients and publishers taking the H.264 track.",
            &|s| vec![("", s.h264.consumers as f64)],
        );
        metric(
            "h264_passthrough",
            "gauge",
            "1 while the stream's H.264 is the source's own, copied (no encoder runs).",
            &|s| vec![("", f64::from(u8::from(s.h264.mode == "passthrough")))],
        );
        metric(
            "h264_bitrate_target_bits",
            "gauge",
            "The H.264 encoder's target bits per second.",
            &|s| vec![("", s.h264.bitrate as f64)],
        );
        metric(
            "h264_frames_encoded_total",
            "counter",
            "Frames encoded to H.264.",
            &|s| vec![("", s.h264.encoded as f64)],
        );
        metric(
            "h264_keyframes_total",
            "counter",
            "H.264 keyframes (IDR) encoded.",
            &|s| vec![("", s.h264.keyframes as f64)],
        );
        metric(
            "h264_bytes_total",
            "counter",
            "H.264 bytes encoded.",
            &|s| vec![("", s.h264.bytes as f64)],
        );
        metric(
            "h264_encode_errors_total",
            "counter",
            "Frames the H.264 encoder failed on.",
            &|s| vec![("", s.h264.errors as f64)],
        );
        metric(
            "h264_encode_mean_seconds",
            "gauge",
            "Mean H.264 encode time per frame.",
            &|s| vec![("", s.h264.mean_ms / 1000.0)],
        );
        metric(
            "publishers_publishing",
            "gauge",
            "Publishers sending the stream to their server now.",
            &|s| {
                let n = s.publish.iter().filter(|p| p.state == "publishing").count();
                vec![("", n as f64)]
            },
        );
        metric(
            "publisher_restarts_total",
            "counter",
            "Times a publisher failed and started again.",
            &|s| vec![("", s.publish.iter().map(|p| p.restarts).sum::<u64>() as f64)],
        );
        metric("uptime_seconds", "gauge", "Seconds since start.", &|s| {
            vec![("", s.uptime_s)]
        });
        // Not per stream: one sample for the whole of picamd, so no `stream` label.
        let fallbacks = persist.iter().filter(|p| p.used != Used::Current).count();
        let _ = writeln!(
            out,
            "# HELP picamd_persist_fallbacks Persisted files not used as written at start \
             (previous copy, missing or defaults; /state's persist says which and why)."
        );
        let _ = writeln!(out, "# TYPE picamd_persist_fallbacks gauge");
        let _ = writeln!(out, "picamd_persist_fallbacks {fallbacks}");
        out
    }
}

/// Mean milliseconds per frame from a microsecond total, to 0.01 ms; 0 before the first.
fn mean_ms(total_us: u64, frames: u64) -> f64 {
    if frames == 0 {
        return 0.0;
    }
    (total_us as f64 / frames as f64 / 10.0).round() / 100.0
}

pub async fn state(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut snapshot = Snapshot::of(&state.hub);
    snapshot.rtsp = rtsp_url(&headers, state.rtsp_port, &snapshot.stream);
    snapshot.persist = state.persist.to_vec();
    let mut resp = Json(snapshot).into_response();
    resp.headers_mut().extend(no_cache_headers());
    resp
}

pub async fn metrics(State(streams): State<Streams>) -> Response {
    let snapshots: Vec<Snapshot> = streams.iter().map(|s| Snapshot::of(&s.hub)).collect();
    let mut resp = Snapshot::to_prometheus(&snapshots, &streams[0].persist).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// A stream's RTSP URL as the client that asked reaches this server: the host of its `Host`
/// header (an IPv6 literal keeps its brackets) and the RTSP port. None when RTSP is off or
/// the request named no usable host. Behind a reverse proxy this names the proxy, which
/// rarely forwards RTSP: such setups publish their own URL.
pub fn rtsp_url(headers: &HeaderMap, port: Option<u16>, stream: &str) -> Option<String> {
    let port = port?;
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let authority: axum::http::uri::Authority = host.parse().ok()?;
    Some(format!("rtsp://{}:{port}/{stream}", authority.host()))
}

/// Liveness: the process serves HTTP. Whether frames flow is in `/state`.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// One line of `/streams`.
#[derive(Debug, Serialize)]
struct StreamEntry {
    name: String,
    /// Whether the root URLs (`/stream`, `/ws`, …) serve this stream.
    default: bool,
    source: SourceSummary,
    width: u32,
    height: u32,
    fps: u32,
    h264: StreamH264,
    urls: StreamUrls,
}

#[derive(Debug, Serialize)]
struct SourceSummary {
    kind: &'static str,
    name: String,
    state: &'static str,
}

/// A stream's H.264 track in `/streams` (the counters are in its `/state`).
#[derive(Debug, Serialize)]
struct StreamH264 {
    bitrate: u32,
    gop_s: u32,
    consumers: usize,
}

#[derive(Debug, Serialize)]
struct StreamUrls {
    page: String,
    stream: String,
    snapshot: String,
    ws: String,
    state: String,
    /// `rtsp://host:port/<name>` (H.264), absent when RTSP is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    rtsp: Option<String>,
    /// The WHEP endpoint (`POST` an SDP offer), absent when WebRTC is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    whep: Option<String>,
}

/// WebRTC in `/streams`: what a client passes to `RTCPeerConnection`.
#[derive(Debug, Serialize)]
struct WebRtcInfo {
    /// `RTCIceServer` entries (`urls`, `username`, `credential`) of `webrtc_ice_servers`.
    ice_servers: Vec<crate::config::IceServer>,
    /// The UDP port of the media (ICE-TCP has the same number).
    port: u16,
}

/// `/streams`: every stream, its source's state and its URLs, in configuration order.
pub async fn streams(State(streams): State<Streams>, headers: HeaderMap) -> Response {
    let list: Vec<StreamEntry> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let info = s.hub.info();
            let base = format!("/cam/{}", info.name);
            StreamEntry {
                name: info.name.clone(),
                default: i == 0,
                source: SourceSummary {
                    kind: info.source.kind,
                    name: info.source.name.clone(),
                    state: s.hub.source_state().as_str(),
                },
                width: info.width,
                height: info.height,
                fps: info.fps,
                urls: StreamUrls {
                    page: format!("{base}/"),
                    stream: format!("{base}/stream"),
                    snapshot: format!("{base}/snapshot"),
                    ws: format!("{base}/ws"),
                    state: format!("{base}/state"),
                    rtsp: rtsp_url(&headers, s.rtsp_port, &info.name),
                    whep: s.webrtc.as_ref().map(|_| format!("{base}/whep")),
                },
                h264: StreamH264 {
                    bitrate: info.h264_bitrate,
                    gop_s: info.h264_gop_s,
                    consumers: s.hub.h264().consumers(),
                },
            }
        })
        .collect();
    let webrtc = streams[0].webrtc.as_ref().map(|w| WebRtcInfo {
        ice_servers: w.ice_servers().to_vec(),
        port: w.port(),
    });
    let mut resp = Json(serde_json::json!({ "streams": list, "webrtc": webrtc })).into_response();
    resp.headers_mut().extend(no_cache_headers());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn the_rtsp_url_takes_the_requests_host_and_the_rtsp_port() {
        let cases = [
            (
                "192.168.1.20:8080",
                Some(8554),
                Some("rtsp://192.168.1.20:8554/main"),
            ),
            (
                "picam.local",
                Some(8554),
                Some("rtsp://picam.local:8554/main"),
            ),
            ("[fe80::1]:80", Some(554), Some("rtsp://[fe80::1]:554/main")),
            ("picam.local", None, None),
            ("not a host/", Some(8554), None),
        ];
        for (h, port, want) in cases {
            assert_eq!(rtsp_url(&host(h), port, "main").as_deref(), want, "{h}");
        }
        assert_eq!(rtsp_url(&HeaderMap::new(), Some(8554), "main"), None);
    }
}
