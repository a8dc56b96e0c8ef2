//! A viewer's WebSocket text messages: whatever arrives gets one JSON reply, `pong` to a
//! well-formed ping, `video` to a video request naming `jpeg` or `h264`, none (`null` here)
//! to a keyframe request, and `error` to everything else; a reply is never much larger than
//! the message (a client must not be able to make the server send more than it receives).
//!
//! Input: the message, as UTF-8 (tungstenite refuses text frames that are not).
#![no_main]

use libfuzzer_sys::fuzz_target;
use picamd::fuzzing::ws_reply;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = std::str::from_utf8(data) else {
        return;
    };
    let reply = ws_reply(message);
    let kind = reply.get("type").and_then(Value::as_str);
    let parsed: Option<Value> = serde_json::from_str(message).ok();
    let asked_type = parsed
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    let codec = parsed
        .as_ref()
        .and_then(|v| v.get("codec"))
        .and_then(Value::as_str);
    if asked_type == Some("keyframe") {
        assert!(reply.is_null(), "a keyframe request got {reply}");
        return;
    }
    if asked_type == Some("video") && matches!(codec, Some("jpeg" | "h264")) {
        assert_eq!(kind, Some("video"), "a video request got {reply}");
        assert_eq!(reply.get("codec").and_then(Value::as_str), codec);
    } else if asked_type == Some("ping") {
        assert_eq!(kind, Some("pong"), "a ping got {reply}");
        let asked = parsed.as_ref().unwrap();
        // The client's own fields come back untouched, absent ones as null.
        for field in ["id", "t"] {
            assert_eq!(
                reply.get(field),
                Some(asked.get(field).unwrap_or(&Value::Null)),
                "{field} not echoed"
            );
        }
        assert!(reply.get("server_us").is_some_and(Value::is_u64));
    } else {
        assert_eq!(kind, Some("error"), "a non-ping got {reply}");
        assert!(reply.get("message").is_some_and(Value::is_string));
    }
    let sent = reply.to_string();
    assert!(
        sent.len() <= 2 * message.len() + 256,
        "reply of {} bytes to a message of {}",
        sent.len(),
        message.len()
    );
});
