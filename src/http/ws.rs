//! `/ws`: frames as binary messages, control as JSON text messages.
//!
//! Binary message = the 32-byte header documented in [`crate::wire`] + the JPEG. The encoder
//! already built that buffer, so every client is sent the same `Bytes`. Like the MJPEG output,
//! a client that reads slowly skips frames: while one send is in flight, newer frames only
//! replace each other in the hub, and the next frame is picked once the kernel has (nearly)
//! sent the previous one ([`super::backlog`]).
//!
//! Text messages (JSON):
//! - server → client on connect: `{"type":"hello","version":1,"header_len":32,"width":…,
//!   "height":…,"fps":…,"source":"test","stream":"main"}`
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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::backlog::WriteProgress;
use super::limits::{ClientIp, ViewerSlot};
use super::{AppState, HttpError, WRITE_STALL_TIMEOUT};
use crate::access::normalise_origin;
use crate::hub::{Output, ViewerGuard};
use crate::wire;

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
    _guards: (ViewerGuard, ViewerSlot),
) -> Result<(), axum::Error> {
    let hub = &state.hub;
    let (mut sink, mut incoming) = socket.split();
    let info = hub.info();
    let hello = json!({
        "type": "hello",
        "version": wire::VERSION,
        "header_len": wire::HEADER_LEN,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "source": info.source.kind,
        "stream": info.name,
    });
    sink.send(text(hello)).await?;

    let mut frames = hub.subscribe();
    frames.mark_unchanged();
    if let Some(f) = hub.latest_if_fresh() {
        sink.send(Message::Binary(f.wire())).await?;
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                let close = CloseFrame { code: CLOSE_GOING_AWAY, reason: Utf8Bytes::from_static("shutting down") };
                let _ = sink.send(Message::Close(Some(close))).await;
                return Ok(());
            }
            changed = frames.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let frame = frames.borrow_and_update().clone();
                if let Some(f) = frame {
                    // `send` returns once the message is written; then wait until the kernel
                    // has (nearly) sent it, so the next frame picked is current.
                    sink.send(Message::Binary(f.wire())).await?;
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
                    sink.send(text(reply_to(t.as_str()))).await?;
                }
                Some(Ok(Message::Binary(_))) => {
                    sink.send(text(error("binary messages from clients are not used"))).await?;
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                // Pings are answered by the protocol layer; pongs need nothing.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            },
            _ = keepalive.tick() => {
                sink.send(Message::Ping(Default::default())).await?;
            }
        }
    }
}

fn message_len(msg: &Option<Result<Message, axum::Error>>) -> usize {
    match msg {
        Some(Ok(Message::Text(t))) => t.len(),
        Some(Ok(Message::Binary(b))) => b.len(),
        _ => 0,
    }
}

/// The answer to one client text message.
pub(crate) fn reply_to(msg: &str) -> Value {
    let parsed: Value = match serde_json::from_str(msg) {
        Ok(v) => v,
        Err(e) => return error(&format!("invalid JSON: {e}")),
    };
    match parsed.get("type").and_then(Value::as_str) {
        Some("ping") => json!({
            "type": "pong",
            "id": parsed.get("id").cloned().unwrap_or(Value::Null),
            "t": parsed.get("t").cloned().unwrap_or(Value::Null),
            "server_us": now_us(),
        }),
        Some(other) => {
            // At most 32 characters of it: escaping could make a long one several times
            // longer than the message (the fuzz target's find), and a reply must not be.
            let mut shown: String = other.chars().take(32).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            error(&format!("unknown message type {shown:?}"))
        }
        None => error("message has no \"type\""),
    }
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
