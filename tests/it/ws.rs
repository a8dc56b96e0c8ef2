//! `/ws`: binary frame header + JPEG, JSON hello and ping/pong.

use crate::common;

use std::time::Duration;

use common::{decode, now_us, Picamd};
use futures_util::{SinkExt, StreamExt};
use picamd::wire::{FrameHeader, FLAG_NO_SIGNAL, HEADER_LEN, TYPE_JPEG, VERSION};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

async fn connect(
    p: &Picamd,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.addr))
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test]
async fn frames_have_a_correct_header_and_decodable_payload() {
    let p = Picamd::start(&["--size", "640x360", "--fps", "20"]);
    let mut ws = connect(&p).await;

    let hello = ws.next().await.unwrap().unwrap();
    let hello: serde_json::Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["header_len"], HEADER_LEN);
    assert_eq!(hello["stream"], "main");
    assert_eq!(
        (hello["width"].as_u64(), hello["height"].as_u64()),
        (Some(640), Some(360))
    );

    let mut last_seq = 0;
    let mut frames = 0;
    while frames < 20 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .unwrap()
            .unwrap();
        let Message::Binary(data) = msg else { continue };
        let received = now_us();
        let (h, jpeg) = FrameHeader::parse(&data).expect("valid header");
        assert_eq!((h.version, h.kind), (VERSION, TYPE_JPEG));
        assert_eq!(h.flags & FLAG_NO_SIGNAL, 0);
        assert_eq!((h.width, h.height), (640, 360));
        assert!(h.seq > last_seq, "seq goes up: {last_seq} then {}", h.seq);
        assert!(h.capture_us <= received && received - h.capture_us < 5_000_000);
        let (w, hgt, drawn_seq) = decode(jpeg);
        assert_eq!((w, hgt), (640, 360));
        // The test pattern draws the frame number: header and picture agree.
        assert_eq!(drawn_seq as u64, h.seq);
        last_seq = h.seq;
        frames += 1;
    }
    assert_eq!(p.state().await["viewers"]["ws"], 1);
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_junk_with_an_error() {
    let p = Picamd::start(&["--size", "320x240", "--fps", "5"]);
    let mut ws = connect(&p).await;
    ws.send(Message::text(r#"{"type":"ping","id":42,"t":1234.5}"#))
        .await
        .unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    let mut pong = None;
    let mut error = None;
    while pong.is_none() || error.is_none() {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("replies within 5 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str() {
                Some("pong") => pong = Some(v),
                Some("error") => error = Some(v),
                _ => {}
            }
        }
    }
    let pong = pong.unwrap();
    assert_eq!(pong["id"], 42);
    assert_eq!(pong["t"], 1234.5);
    assert!(pong["server_us"].as_u64().unwrap().abs_diff(now_us()) < 5_000_000);
    assert!(error.unwrap()["message"].as_str().unwrap().contains("JSON"));
}

#[tokio::test]
async fn cross_origin_handshakes_are_refused() {
    let p = Picamd::start(&["--size", "320x240"]);
    let mut req = format!("ws://{}/ws", p.addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("http://evil.example"));
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}

/// The status line of a raw WebSocket handshake with these `Host` and `Origin` headers.
async fn handshake_status(p: &Picamd, host: &str, origin: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    line.trim_end().to_owned()
}

#[tokio::test]
async fn default_ports_in_host_and_origin_are_the_same_origin() {
    let p = Picamd::start(&["--size", "320x240"]);
    // A reverse proxy that writes the default port into Host (browsers leave it out of
    // Origin): the same origin. This used to be refused with 403.
    for (host, origin) in [
        ("cam.example:80", "http://cam.example"),
        ("cam.example:443", "https://cam.example"),
        ("cam.example", "http://cam.example:80"),
    ] {
        let status = handshake_status(&p, host, origin).await;
        assert!(status.contains(" 101 "), "{host} / {origin}: {status}");
    }
    // Other ports, or the other scheme's default, are other origins.
    for (host, origin) in [
        ("cam.example:8080", "http://cam.example"),
        ("cam.example:443", "http://cam.example"),
    ] {
        let status = handshake_status(&p, host, origin).await;
        assert!(status.contains(" 403 "), "{host} / {origin}: {status}");
    }
}
