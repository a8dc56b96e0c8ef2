//! Arbitrary bytes, cut into arbitrary pieces, through the push-style multipart splitter.
//!
//! Input: byte 0 picks the frame limit, byte 1 the declared boundary and the largest piece,
//! bytes 2..4 seed the piece sizes; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picamd::source::jpeg::{Progress, Walker};
use picamd::source::multipart::{SplitLimits, Splitter, BUFFER_SLACK};

fuzz_target!(|input: &[u8]| {
    let [limit, shape, s0, s1, stream @ ..] = input else {
        return;
    };
    // Small limits, so the size checks are reached often.
    let max_frame_bytes = 16 + usize::from(*limit) * 64;
    let boundary = match shape & 3 {
        0 => None,
        1 => Some("b"),
        2 => Some("--b"),
        _ => Some("picamdframe"),
    };
    let largest_piece = 1 + usize::from(shape >> 2) * 37;
    let mut seed = u32::from(*s0) << 8 | u32::from(*s1) | 1;

    let mut splitter = Splitter::new(boundary, SplitLimits { max_frame_bytes });
    assert_eq!(splitter.capacity_limit(), max_frame_bytes + BUFFER_SLACK);
    let mut rest = stream;
    let mut frames = 0usize;
    while !rest.is_empty() {
        // xorshift32: piece sizes from the input, reproducible.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (1 + seed as usize % largest_piece).min(rest.len());
        let (piece, after) = rest.split_at(n);
        rest = after;
        let fed = splitter.feed(piece, |frame| {
            frames += 1;
            assert!(frame.len() <= max_frame_bytes, "frame over the limit");
            assert!(frame.starts_with(&[0xFF, 0xD8]), "frame without SOI");
            assert!(frame.ends_with(&[0xFF, 0xD9]), "frame without EOI");
            // A frame is exactly one JPEG: its structure ends at its last byte.
            let end = Walker::new().advance(&frame, |_| {});
            assert_eq!(end, Ok(Progress::Done(frame.len())), "not one whole JPEG");
        });
        assert!(
            splitter.buffered() <= max_frame_bytes + BUFFER_SLACK,
            "buffer {} over {} + slack",
            splitter.buffered(),
            max_frame_bytes
        );
        if fed.is_err() {
            return;
        }
    }
    let _ = splitter.finish();
    let _ = frames;
});
