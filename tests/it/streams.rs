//! Several named streams in one instance: `/cam/<name>/…` per stream, the first one also at
//! the root URLs, `/streams` listing them, `/metrics` labelling each.

use crate::common;

use std::time::Duration;

use common::{decode, get, open, MjpegReader, Picamd, TempFile};
use futures_util::StreamExt;
use picamd::wire::FrameHeader;
use tokio_tungstenite::tungstenite::Message;

const TWO_STREAMS: &str = r#"
fps = 15
[[stream]]
name = "printer"
source = "test"
size = "320x240"
[[stream]]
name = "door-2"
source = "test"
size = "160x120"
fps = 10
"#;

#[tokio::test]
async fn each_stream_has_its_urls_and_the_first_is_the_default() {
    let cfg = TempFile::with(TWO_STREAMS);
    let p = Picamd::start(&["--config", cfg.as_str()]);

    for (path, size) in [
        ("/snapshot", (320, 240)),
        ("/?action=snapshot", (320, 240)),
        ("/cam/printer/snapshot", (320, 240)),
        ("/cam/door-2/snapshot.jpg", (160, 120)),
        ("/cam/door-2/?action=snapshot", (160, 120)),
    ] {
        let r = p.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        let (w, h, _) = decode(&r.body);
        assert_eq!((w, h), size, "{path}");
    }

    // MJPEG per stream.
    let mut door = MjpegReader::new(open(p.addr, "/cam/door-2/stream").await).await;
    let part = door.next_part().await.expect("a part");
    assert_eq!(decode(&part.jpeg).0, 160);

    // WebSocket per stream.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/cam/door-2/ws", p.addr))
        .await
        .expect("websocket");
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => break data,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    };
    let (h, _) = FrameHeader::parse(&frame).unwrap();
    assert_eq!((h.width, h.height), (160, 120));

    // State per stream, and the page under the stream's path.
    let s: serde_json::Value =
        serde_json::from_slice(&p.get("/cam/door-2/state").await.body).unwrap();
    assert_eq!(s["stream"], "door-2");
    assert_eq!(s["fps"]["configured"], 10);
    assert_eq!(p.state().await["stream"], "printer");
    let page = p.get("/cam/door-2/").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<canvas") || page.body.len() > 500);
    let redirect = p.get("/cam/door-2").await;
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), Some("/cam/door-2/"));

    // Unknown streams and paths are 404s.
    for path in ["/cam/nope/stream", "/cam/printer/nope", "/cam//stream"] {
        assert_eq!(p.get(path).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn streams_and_metrics_list_every_stream() {
    let cfg = TempFile::with(TWO_STREAMS);
    let p = Picamd::start(&["--config", cfg.as_str()]);
    p.get("/cam/door-2/snapshot").await;

    let r = p.get("/streams").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let list = v["streams"].as_array().expect("streams array");
    let names: Vec<&str> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["printer", "door-2"]);
    assert_eq!(list[0]["default"], true);
    assert_eq!(list[1]["default"], false);
    assert_eq!(list[1]["width"], 160);
    assert_eq!(list[1]["source"]["kind"], "test");
    assert_eq!(list[1]["urls"]["ws"], "/cam/door-2/ws");
    assert_eq!(list[1]["urls"]["page"], "/cam/door-2/");

    let text = String::from_utf8(p.get("/metrics").await.body).unwrap();
    for name in ["printer", "door-2"] {
        assert!(
            text.contains(&format!("picamd_fps_configured{{stream=\"{name}\"}}")),
            "{text}"
        );
    }
    assert!(text.contains("picamd_frames_encoded_total{stream=\"door-2\"}"));
    // One HELP line per metric, not one per stream.
    assert_eq!(text.matches("# HELP picamd_fps_configured ").count(), 1);
}

#[tokio::test]
async fn streams_from_flags_and_their_errors() {
    let p = Picamd::start(&[
        "--stream", "a=test", "--stream", "b=test", "--size", "160x120",
    ]);
    let r = get(p.addr, "/streams").await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["streams"].as_array().unwrap().len(), 2);
    assert_eq!(decode(&p.get("/cam/b/snapshot").await.body).0, 160);

    // Bad stream settings are refused at start with the key named.
    for (args, needle) in [
        (
            vec!["--stream", "a=test", "--stream", "a=test"],
            "names two streams",
        ),
        (vec!["--stream", "bad name=test"], "`name`"),
        (vec!["--stream", "noequals"], "NAME=SOURCE"),
        (
            vec![
                "--stream", "a=test", "--stream", "b=test", "--source", "test",
            ],
            "--source",
        ),
    ] {
        let out = common::run_picamd(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn the_root_urls_action_forms_honour_stream() {
    let cfg = TempFile::with(TWO_STREAMS);
    let p = Picamd::start(&["--config", cfg.as_str()]);

    // `/?stream=<name>` picks the stream for the page, and now for `?action=` too (it used
    // to serve the default stream silently, and count the viewer there).
    let r = p.get("/?stream=door-2&action=snapshot").await;
    assert_eq!(r.status, 200);
    assert_eq!(decode(&r.body).0, 160);
    let r = p.get("/?action=snapshot&stream=printer").await;
    assert_eq!(decode(&r.body).0, 320);
    let mut door = MjpegReader::new(open(p.addr, "/?stream=door-2&action=stream").await).await;
    assert_eq!(decode(&door.next_part().await.expect("a part").jpeg).0, 160);
    let viewers = |v: serde_json::Value| v["viewers"]["mjpeg"].clone();
    let door_state = serde_json::from_slice(&p.get("/cam/door-2/state").await.body).unwrap();
    assert_eq!(viewers(door_state), 1, "the viewer counts on door-2");
    assert_eq!(viewers(p.state().await), 0, "not on the default stream");

    // A stream that does not exist, or one that contradicts the path, is an error that
    // names it, never a silent choice.
    let r = p.get("/?stream=nope&action=stream").await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("\"nope\""));
    let r = p.get("/cam/printer/?stream=door-2&action=snapshot").await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("stream=\"door-2\""));
    let r = p.get("/cam/door-2/?stream=door-2&action=snapshot").await;
    assert_eq!((r.status, decode(&r.body).0), (200, 160));
    // The page itself still takes `?stream=` (the player reads it).
    assert_eq!(p.get("/?stream=door-2").await.status, 200);
}
