//! The RTSP server's request path: bytes as a client sends them (requests, interleaved data,
//! junk), cut into reads anywhere, parsed, authenticated and dispatched by one connection
//! over a stream whose track has a keyframe. No panic; everything written back is whole
//! replies (`RTSP/1.0 NNN …`, headers without stray line breaks, a body of exactly its
//! `Content-Length`) or whole interleaved frames (`$`, channel, length, packet); and nothing
//! is written after a reply that closes the connection.
//!
//! Input: the first byte's low bit turns authentication on (user `alice`/`pw` with a Digest
//! HA1, token `tok`), the rest of it sets the read size (1..=128 bytes); the remaining
//! bytes are what the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let (out, _closed) =
        picamd::fuzzing::rtsp_exchange(input, (first >> 1) as usize + 1, first & 1 == 1);
    let mut rest = &out[..];
    while !rest.is_empty() {
        if rest[0] == b'$' {
            assert!(rest.len() >= 4, "a cut interleaved header");
            let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
            assert!(rest.len() >= 4 + len, "a cut interleaved packet");
            assert_eq!(rest[4] >> 6, 2, "RTP/RTCP version 2");
            rest = &rest[4 + len..];
            continue;
        }
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a reply head ends with an empty line");
        let head = std::str::from_utf8(&rest[..end]).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let code = status_line
            .strip_prefix("RTSP/1.0 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!((200..600).contains(&code), "{code}");
        let mut len = 0;
        for l in lines {
            let (name, value) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("bad header {l:?}"));
            assert!(!name.is_empty() && !l.contains('\r') && !l.contains('\n'));
            if name == "CSeq" {
                value.parse::<u32>().expect("a numeric CSeq");
            }
            if name == "Content-Length" {
                len = value.parse::<usize>().expect("a numeric length");
            }
        }
        let body_at = end + 4;
        assert!(
            rest.len() >= body_at + len,
            "a body shorter than its Content-Length"
        );
        rest = &rest[body_at + len..];
    }
});
