//! `/ws`: frames as binary messages, control as JSON text messages.
//!
//! Binary message = the 32-byte header documented in [`crate::wire`] + the JPEG. The encoder
//! already built that buffer, so every client is sent the same `Bytes`. Like the MJPEG output,
//! a client that reads slowly skips frames: while one send is in flight, newer frames only
//! replace each other in the hub, and the next frame is picked once the kernel has (nearly)
//! sent the previous one ([`super::backlog`]).
//!
//! A client may ask for H.264 instead (the player's WebCodecs path): it then gets the hub's
//! H.264 track ([`crate::hub::h264`]), one access unit per message (header type 2, Annex B,
//! keyframe flag), and no JPEG. It starts at a keyframe (asked of the encoder, as an RTSP
//! client's PLAY does), and the same one-frame send rule holds: the next unit is taken only
//! once the kernel has (nearly) sent the previous one, so a client that reads slowly falls
//! behind in the track, which moves it on to the next keyframe (at most
//! [`crate::hub::h264::MAX_LAG_UNITS`] behind) instead of queueing anything. Such a client is
//! counted as [`Output::WebSocketH264`], not as a JPEG viewer, so while only H.264 clients
//! watch no JPEG is encoded. While the source is down they get the "no signal" picture
//! encoded as H.264 with the no-signal flag set (the pipeline sends it to the H.264 encoder
//! when nobody takes JPEG); a source that passes its own H.264 through has no encoder for
//! it, so they get nothing until it is back (like RTSP clients).
//!
//! Text messages (JSON):
//! - server → client on connect: `{"type":"hello","version":1,"header_len":32,"width":…,
//!   "height":…,"fps":…,"source":"test","stream":"main","types":["jpeg","h264"],
//!   "h264_codec":"avc1.42C01F"}`: `types` lists the frame types the client may ask for;
//!   `h264_codec` is the codec string of the H.264 stream (from its SPS once one was made,
//!   else the one picamd's encoder will make at the configured size and rate), for
//!   `VideoDecoder.isConfigSupported`.
//! - client → server `{"type":"video","codec":"h264"}` (or `"jpeg"`, the default) → the
//!   server switches and confirms with `{"type":"video","codec":"h264"}`; H.264 units follow
//!   from the next keyframe on.
//! - client → server `{"type":"keyframe"}` while on H.264: the client's decoder dropped
//!   units (it fell behind), so the server skips to a keyframe made for it (no reply; at
//!   most one forced keyframe per 0.5 s for all clients) instead of sending P-frames it
//!   cannot use until the next regular one.
//! - client → server `{"type":"ping","id":…,"t":…}` → server replies
//!   `{"type":"pong","id":…,"t":…,"server_us":…}` (`id` and `t` echoed as sent; `server_us` is
//!   the server's clock in µs since the Unix epoch), for the player's clock-offset estimate.
//! - anything the server cannot use → `{"type":"error","message":"…"}`; the socket stays open.
//!
//! Client messages are limited to [`MAX_CLIENT_MESSAGE`] bytes: a bigger one closes the socket
//! with code 1009 ("message too big"; beyond [`MAX_CLIENT_FRAME`] the protocol layer drops the
//! connection without reading it). A cross-site page is refused (the `Origin` host must match
//! `Host`, or the origin be listed in `cors_origins`), since the stream is as private as the
//! camera. Authentication happens before the upgrade, in the guard (`guard.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::backlog::WriteProgress;
use super::limits::{ClientIp, ViewerSlot};
use super::{AppState, HttpError, WRITE_STALL_TIMEOUT};
use crate::access::normalise_origin;
use crate::encode::h264::expected_codec;
use crate::frame::AccessUnit;
use crate::hub::h264::H264Consumer;
use crate::hub::{Activity, Hub, Output, ViewerGuard};
use crate::wire::{self, FrameHeader};

/// Largest message a client may send, in bytes (control messages are tiny).
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// Largest message the protocol layer reads at all, in bytes; between this and
/// [`MAX_CLIENT_MESSAGE`] the client gets a 1009 close.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Close code 1009: the message was too big.
const CLOSE_TOO_BIG: u16 = 1009;
/// A WebSocket ping goes out when nothing else was sent for this long.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Close code 1001: the server is going away.
const CLOSE_GOING_AWAY: u16 = 1001;

pub async fn upgrade(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    progress: Option<Extension<WriteProgress>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let listed = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| state.policy.cors.allows(o));
    if !same_origin(&headers) && !listed {
        return (
            StatusCode::FORBIDDEN,
            "cross-origin WebSocket connections are not allowed\n",
        )
            .into_response();
    }
    let slot = match state.policy.viewers.take(ip) {
        Ok(s) => s,
        Err(e) => return HttpError::from(e).into_response(),
    };
    let guard = match state.hub.add_viewer(Output::WebSocket) {
        Ok(g) => g,
        Err(e) => return HttpError::from(e).into_response(),
    };
    ws.max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            let progress = progress.map(|Extension(p)| p);
            if let Err(e) = run(socket, state, progress, (guard, slot)).await {
                tracing::debug!(error = %e, "websocket client ended with an error");
            }
        })
}

/// Browsers always send `Origin` on WebSocket handshakes; other clients usually do not.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    // An Origin that is not visible ASCII is no origin picamd serves (the fuzz target found
    // it being taken for a missing one).
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    // Host has no scheme of its own: it is the Origin's, with `ws`/`wss` counting as the
    // page's `http`/`https`. Both sides are then normalised the way `cors_origins` entries
    // are (lower case, the scheme's default port dropped), so a proxy that writes `:80` into
    // Host, or a browser that leaves the port out of Origin, still matches.
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return false,
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin = normalise_origin(&format!("{scheme}://{authority}"));
    let host = normalise_origin(&format!("{scheme}://{host}"));
    matches!((origin, host), (Ok(o), Ok(h)) if o == h)
}

async fn run(
    socket: WebSocket,
    state: AppState,
    progress: Option<WriteProgress>,
    (mut viewer, _slot): (ViewerGuard, ViewerSlot),
) -> Result<(), axum::Error> {
    let hub = &state.hub;
    let (mut sink, mut incoming) = socket.split();
    sink.send(text(hello(hub))).await?;

    let mut frames = hub.subscribe();
    frames.mark_unchanged();
    if let Some(f) = hub.latest_if_fresh() {
        sink.send(Message::Binary(f.wire())).await?;
    }
    // Set while the client takes H.264: its place in the track.
    let mut h264: Option<H264Consumer> = None;
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    loop {
        // What to send next, if anything: a JPEG from the hub's watch, or the next unit.
        let out = tokio::select! {
            _ = state.shutdown.cancelled() => {
                let close = CloseFrame { code: CLOSE_GOING_AWAY, reason: Utf8Bytes::from_static("shutting down") };
                let _ = sink.send(Message::Close(Some(close))).await;
                return Ok(());
            }
            changed = frames.changed(), if h264.is_none() => {
                if changed.is_err() {
                    return Ok(());
                }
                let frame = frames.borrow_and_update().clone();
                frame.map(|f| f.wire())
            }
            unit = next_unit(&mut h264) => match unit {
                Some(u) => Some(h264_message(&u, matches!(hub.activity(), Activity::Down { .. }))),
                // The track closed: shutting down.
                None => return Ok(()),
            },
            msg = incoming.next() => match msg {
                Some(Ok(Message::Text(_) | Message::Binary(_))) if message_len(&msg) > MAX_CLIENT_MESSAGE => {
                    let close = CloseFrame {
                        code: CLOSE_TOO_BIG,
                        reason: Utf8Bytes::from(format!("messages are limited to {MAX_CLIENT_MESSAGE} bytes")),
                    };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    return Ok(());
                }
                Some(Ok(Message::Text(t))) => {
                    let reply = match request(t.as_str()) {
                        Request::Reply(v) => Some(v),
                        Request::Keyframe => match &mut h264 {
                            Some(c) => {
                                c.restart();
                                None
                            }
                            None => Some(error("keyframes are for H.264; ask for it first")),
                        },
                        Request::Video(codec) => {
                            switch_video(hub, codec, &mut viewer, &mut h264);
                            if codec == Codec::Jpeg {
                                // Current from the next publish on, not the one seen before.
                                frames.mark_unchanged();
                            }
                            Some(json!({ "type": "video", "codec": codec.as_str() }))
                        }
                    };
                    if let Some(reply) = reply {
                        sink.send(text(reply)).await?;
                    }
                    None
                }
                Some(Ok(Message::Binary(_))) => {
                    sink.send(text(error("binary messages from clients are not used"))).await?;
                    None
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                // Pings are answered by the protocol layer; pongs need nothing.
                Some(Ok(_)) => None,
                Some(Err(e)) => return Err(e),
            },
            _ = keepalive.tick() => {
                sink.send(Message::Ping(Default::default())).await?;
                None
            }
        };
        if let Some(bytes) = out {
            // `send` returns once the message is written; then wait until the kernel has
            // (nearly) sent it, so the next frame or unit picked is current.
            sink.send(Message::Binary(bytes)).await?;
            if let Some(p) = &progress {
                tokio::select! {
                    // The loop's shutdown arm says goodbye.
                    _ = state.shutdown.cancelled() => {}
                    r = p.drained(WRITE_STALL_TIMEOUT) => r.map_err(axum::Error::new)?,
                }
            }
            keepalive.reset();
        }
    }
}

/// The `hello` a client gets on connect.
fn hello(hub: &Hub) -> Value {
    let info = hub.info();
    let h264_codec = hub
        .h264()
        .parameter_sets()
        .and_then(|(sps, _)| wire::avc1_codec(&sps))
        .unwrap_or_else(|| expected_codec(info.width, info.height, info.fps));
    json!({
        "type": "hello",
        "version": wire::VERSION,
        "header_len": wire::HEADER_LEN,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "source": info.source.kind,
        "stream": info.name,
        "types": [Codec::Jpeg.as_str(), Codec::H264.as_str()],
        "h264_codec": h264_codec,
    })
}

/// Moves a client to `codec`: H.264 makes it a consumer of the track (which asks the encoder
/// for a keyframe, and makes the encoder run) and counts it as an H.264 viewer; JPEG ends
/// that. Asking for what it already gets changes nothing.
fn switch_video(
    hub: &Hub,
    codec: Codec,
    viewer: &mut ViewerGuard,
    h264: &mut Option<H264Consumer>,
) {
    match codec {
        Codec::H264 => {
            viewer.switch(Output::WebSocketH264);
            if h264.is_none() {
                *h264 = Some(hub.h264().consume(None));
            }
        }
        Codec::Jpeg => {
            // Counted as a JPEG viewer before the consumer goes, so the encoders never see
            // a moment with neither (that would idle the source for nothing).
            viewer.switch(Output::WebSocket);
            *h264 = None;
        }
    }
}

/// The next unit of the track, or never while the client takes JPEG.
async fn next_unit(h264: &mut Option<H264Consumer>) -> Option<Arc<AccessUnit>> {
    match h264 {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// One access unit as a `/ws` message: the header (type 2) and the Annex B bytes. Built per
/// client (a copy of the unit, ~1 KB for a 720p P-frame of a still scene, ~50-100 KB for a
/// keyframe), since units carry no header of their own.
fn h264_message(unit: &AccessUnit, no_signal: bool) -> Bytes {
    let mut flags = 0;
    if unit.keyframe {
        flags |= wire::FLAG_KEYFRAME;
    }
    if no_signal {
        flags |= wire::FLAG_NO_SIGNAL;
    }
    let header = FrameHeader {
        version: wire::VERSION,
        kind: wire::TYPE_H264,
        flags,
        seq: unit.seq,
        capture_us: unit.captured.wall_us,
        width: unit.width,
        height: unit.height,
    };
    let mut head = [0u8; wire::HEADER_LEN];
    header.write(&mut head);
    let mut out = BytesMut::with_capacity(wire::HEADER_LEN + unit.data.len());
    out.put_slice(&head);
    out.put_slice(&unit.data);
    out.freeze()
}

/// The picture codecs a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Jpeg,
    H264,
}

impl Codec {
    fn as_str(self) -> &'static str {
        match self {
            Codec::Jpeg => "jpeg",
            Codec::H264 => "h264",
        }
    }
}

/// What one client text message asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Request {
    /// Answer with this and change nothing.
    Reply(Value),
    /// Switch the pictures to this codec (and confirm).
    Video(Codec),
    /// Skip to a keyframe made for this client (H.264 only).
    Keyframe,
}

/// Reads one client text message.
pub(crate) fn request(msg: &str) -> Request {
    let parsed: Value = match serde_json::from_str(msg) {
        Ok(v) => v,
        Err(e) => return Request::Reply(error(&format!("invalid JSON: {e}"))),
    };
    match parsed.get("type").and_then(Value::as_str) {
        Some("video") => {}
        Some("keyframe") => return Request::Keyframe,
        _ => return Request::Reply(reply_to_parsed(&parsed)),
    }
    match parsed.get("codec").and_then(Value::as_str) {
        Some("h264") => Request::Video(Codec::H264),
        Some("jpeg") => Request::Video(Codec::Jpeg),
        Some(other) => Request::Reply(error(&format!(
            "unknown codec {}: this stream offers \"jpeg\" and \"h264\"",
            shorten(other)
        ))),
        None => Request::Reply(error(
            "a video request needs \"codec\": \"jpeg\" or \"h264\"",
        )),
    }
}

fn message_len(msg: &Option<Result<Message, axum::Error>>) -> usize {
    match msg {
        Some(Ok(Message::Text(t))) => t.len(),
        Some(Ok(Message::Binary(b))) => b.len(),
        _ => 0,
    }
}

/// The answer to one client text message, video requests confirmed as if granted (for the
/// tests and the fuzz target; the socket's loop acts on [`request`] itself).
#[cfg(any(test, fuzzing))]
pub(crate) fn reply_to(msg: &str) -> Value {
    match request(msg) {
        Request::Reply(v) => v,
        Request::Video(c) => json!({ "type": "video", "codec": c.as_str() }),
        Request::Keyframe => Value::Null,
    }
}

fn reply_to_parsed(parsed: &Value) -> Value {
    match parsed.get("type").and_then(Value::as_str) {
        Some("ping") => json!({
            "type": "pong",
            "id": parsed.get("id").cloned().unwrap_or(Value::Null),
            "t": parsed.get("t").cloned().unwrap_or(Value::Null),
            "server_us": now_us(),
        }),
        Some(other) => error(&format!("unknown message type {}", shorten(other))),
        None => error("message has no \"type\""),
    }
}

/// A client's string for an error message: at most 32 characters of it, quoted. Escaping
/// could make a long one several times longer than the message (the fuzz target's find),
/// and a reply must not be.
fn shorten(s: &str) -> String {
    let mut shown: String = s.chars().take(32).collect();
    if shown.len() < s.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

fn error(message: &str) -> Value {
    json!({ "type": "error", "message": message })
}

fn text(v: Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn ping_gets_pong_with_echo() {
        let r = reply_to(r#"{"type":"ping","id":7,"t":123.5}"#);
        assert_eq!(r["type"], "pong");
        assert_eq!(r["id"], 7);
        assert_eq!(r["t"], 123.5);
        assert!(r["server_us"].as_u64().unwrap() > 1_600_000_000_000_000);
    }

    #[test]
    fn replies_are_not_larger_than_messages() {
        // 1000 DEL characters would be 1000 × `\u{7f}` in a Debug string (7 kB with JSON's
        // escaping); the reply names 32 and stays a few hundred bytes.
        let message = format!(r#"{{"type":"{}"}}"#, "\u{7f}".repeat(1000));
        let reply = reply_to(&message).to_string();
        assert!(reply.len() < 400, "{} bytes: {reply}", reply.len());
        assert!(reply.contains('…'));
    }

    #[test]
    fn bad_messages_get_errors() {
        assert_eq!(reply_to("{")["type"], "error");
        assert_eq!(reply_to("[1,2]")["type"], "error");
        assert!(reply_to(r#"{"type":"reboot"}"#)["message"]
            .as_str()
            .unwrap()
            .contains("reboot"));
    }

    #[test]
    fn video_requests_switch_codecs_and_bad_ones_get_errors() {
        assert_eq!(
            request(r#"{"type":"video","codec":"h264"}"#),
            Request::Video(Codec::H264)
        );
        assert_eq!(
            request(r#"{"type":"video","codec":"jpeg"}"#),
            Request::Video(Codec::Jpeg)
        );
        assert_eq!(request(r#"{"type":"keyframe"}"#), Request::Keyframe);
        for bad in [
            r#"{"type":"video","codec":"vp9"}"#,
            r#"{"type":"video","codec":7}"#,
            r#"{"type":"video"}"#,
        ] {
            let Request::Reply(r) = request(bad) else {
                panic!("{bad} was granted");
            };
            assert_eq!(r["type"], "error", "{bad}");
        }
        let long = format!(r#"{{"type":"video","codec":"{}"}}"#, "x".repeat(5000));
        let reply = reply_to(&long).to_string();
        assert!(reply.len() < 400, "{} bytes", reply.len());
    }

    #[test]
    fn an_h264_message_is_the_header_and_the_unit() {
        let unit = AccessUnit {
            seq: 42,
            captured: crate::frame::CaptureTime::now(),
            width: 640,
            height: 360,
            keyframe: true,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1E]),
            nals: crate::frame::split_annex_b(&[0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1E]),
        };
        let msg = h264_message(&unit, false);
        let (h, payload) = FrameHeader::parse(&msg).unwrap();
        assert_eq!((h.kind, h.flags), (wire::TYPE_H264, wire::FLAG_KEYFRAME));
        assert_eq!((h.seq, h.width, h.height), (42, 640, 360));
        assert_eq!(h.capture_us, unit.captured.wall_us);
        assert_eq!(payload, &unit.data[..]);
        let unit = AccessUnit {
            keyframe: false,
            ..unit
        };
        let (h, _) = FrameHeader::parse(&h264_message(&unit, true)).unwrap();
        assert_eq!(h.flags, wire::FLAG_NO_SIGNAL);
    }

    #[test]
    fn hello_offers_both_types_and_a_codec_string() {
        let hub = Hub::for_tests(4);
        // 16x16 at 30 fps, before any SPS: level 2.1 as the encoder would pick.
        let h = hello(&hub);
        assert_eq!(h["types"], json!(["jpeg", "h264"]));
        assert_eq!(h["h264_codec"], "avc1.42C015");
        // Once the track has an SPS (a camera passed through, say), that one.
        let data = Bytes::from_static(&[0, 0, 0, 1, 0x67, 0x64, 0x00, 0x28, 0, 0, 0, 1, 0x68, 1]);
        hub.h264().publish(AccessUnit {
            seq: 1,
            captured: crate::frame::CaptureTime::now(),
            width: 16,
            height: 16,
            keyframe: true,
            nals: crate::frame::split_annex_b(&data),
            data,
        });
        assert_eq!(hello(&hub)["h264_codec"], "avc1.640028");
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h));
        h.insert(header::HOST, HeaderValue::from_static("pi.local:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://pi.local:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        // Not text: not the same origin (it used to count as no Origin at all).
        h.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"http://pi.local:8080\xff").unwrap(),
        );
        assert!(!same_origin(&h));
    }

    fn check(host: &'static str, origin: &'static str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        same_origin(&h)
    }

    #[test]
    fn default_ports_compare_equal() {
        // Proxies that write the port into Host, browsers that leave it out of Origin.
        assert!(check("cam.example:80", "http://cam.example"));
        assert!(check("cam.example", "http://cam.example:80"));
        assert!(check("cam.example:443", "https://cam.example"));
        assert!(check("CAM.example:443", "https://cam.EXAMPLE:443"));
        assert!(check("[::1]:80", "http://[::1]"));
        assert!(check("[fe80::1]:8080", "http://[FE80::1]:8080"));
        // The default port of the other scheme is a different origin.
        assert!(!check("cam.example:443", "http://cam.example"));
        assert!(!check("cam.example:80", "https://cam.example"));
        assert!(!check("cam.example", "http://cam.example:8080"));
        assert!(!check("cam.example:8080", "http://cam.example:8081"));
        // Not authorities.
        assert!(!check("cam.example:", "http://cam.example"));
        assert!(!check("cam.example:x80", "http://cam.example"));
        assert!(!check(":80", "http://"));
        assert!(!check("cam.example", "ftp://cam.example"));
        assert!(!check("cam.example", "cam.example"));
    }
}
