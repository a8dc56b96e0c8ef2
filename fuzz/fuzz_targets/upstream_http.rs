//! What an upstream MJPEG server sends before and around the frames: its response head and,
//! when it says `Transfer-Encoding: chunked`, the chunk framing. A hostile or broken upstream
//! must give an error, never a panic or unbounded buffering.
//!
//! Checks: a complete head is complete at `body_at` and incomplete one byte before, whatever
//! follows it; the chunk decoder, fed the same bytes in arbitrary pieces, produces the same
//! body and the same outcome as in one piece, never more bytes than it got, and buffers at
//! most one bounded line.
//!
//! Input: byte 0 seeds the piece sizes; the rest is the upstream's bytes. They are tried as
//! a whole response (head, then a chunked body when the head says so) and as a chunked body
//! on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picamd::fuzzing::{upstream_head, Dechunker};

/// The decoder's limit on a chunk-size or trailer line (`MAX_CHUNK_LINE`).
const MAX_LINE: usize = 1024;

fuzz_target!(|input: &[u8]| {
    let [seed, data @ ..] = input else {
        return;
    };
    let body = match upstream_head(data) {
        Ok(Some(head)) => {
            assert!(head.body_at <= data.len());
            assert!(head.boundary.as_deref().is_none_or(|b| !b.is_empty()));
            let again = upstream_head(&data[..head.body_at]).expect("the head alone parses");
            let again = again.expect("the head alone is complete");
            assert_eq!(again.body_at, head.body_at);
            assert_eq!(again.boundary, head.boundary);
            assert_eq!((again.chunked, again.length), (head.chunked, head.length));
            assert!(
                matches!(upstream_head(&data[..head.body_at - 1]), Ok(None)),
                "complete before its end"
            );
            head.chunked.then(|| &data[head.body_at..])
        }
        Ok(None) | Err(_) => None,
    };
    dechunk_both_ways(data, *seed);
    if let Some(body) = body {
        dechunk_both_ways(body, *seed);
    }
});

fn dechunk_both_ways(data: &[u8], seed: u8) {
    let mut whole = Vec::new();
    let mut one = Dechunker::default();
    let whole_result = one.feed(data, |piece| {
        whole.extend_from_slice(piece);
        Ok(())
    });
    assert!(whole.len() <= data.len());
    assert!(one.line_len() <= MAX_LINE);

    let mut pieces = Vec::new();
    let mut decoder = Dechunker::default();
    let mut state = u32::from(seed) | 0x100;
    let mut rest = data;
    let piecewise_result = loop {
        if rest.is_empty() {
            break Ok(());
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % 97).min(rest.len());
        let (piece, after) = rest.split_at(n);
        rest = after;
        let r = decoder.feed(piece, |p| {
            pieces.extend_from_slice(p);
            Ok(())
        });
        assert!(decoder.line_len() <= MAX_LINE);
        if r.is_err() {
            break r;
        }
    };
    assert_eq!(
        piecewise_result, whole_result,
        "pieces disagree with the whole"
    );
    assert_eq!(pieces, whole, "different bodies");
    assert_eq!(decoder.done(), one.done());
}
