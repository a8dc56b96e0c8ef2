//! The resumable JPEG walker fed in pieces must agree with one walk over the whole data.
//!
//! Input: byte 0 seeds the piece sizes; the rest is the data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picamd::source::jpeg::{segments, Progress, Walker};

fuzz_target!(|input: &[u8]| {
    let [seed, data @ ..] = input else {
        return;
    };
    let mut whole_seen = Vec::new();
    let whole = Walker::new().advance(data, |s| whole_seen.push(s));
    if let Ok(Progress::Done(end)) = whole {
        assert!(end <= data.len() && end >= 4);
        assert_eq!(&data[end - 2..end], &[0xFF, 0xD9]);
        assert_eq!(segments(&data[..end]).as_ref(), Ok(&whole_seen));
    }

    let mut walker = Walker::new();
    let mut seen = Vec::new();
    let mut state = u32::from(*seed) | 0x100;
    let mut upto = 0;
    let piecewise = loop {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        upto = (upto + 1 + state as usize % 64).min(data.len());
        match walker.advance(&data[..upto], |s| seen.push(s)) {
            Ok(Progress::NeedMore(_)) if upto < data.len() => continue,
            other => break other,
        }
    };
    assert_eq!(piecewise, whole, "pieces disagree with the whole");
    assert_eq!(seen, whole_seen);
});
