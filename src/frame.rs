//! Frame types, at the bottom of the flow: what a source captures ([`Frame`], its
//! [`Payload`] and [`CaptureTime`]), what an encoder makes of it ([`EncodedFrame`],
//! [`AccessUnit`]), who makes a stream's H.264 ([`H264Supply`]), and the static facts about a
//! source ([`SourceInfo`]). Every stage imports these; this module
//! imports none of the stages (only [`crate::wire`], the byte layout an encoded frame is
//! sent in).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::wire::{self, FrameHeader};

/// When a frame was captured, on both clocks: monotonic for intervals and freshness checks,
/// wall clock for clients (the `X-Timestamp` header and the WebSocket header).
#[derive(Debug, Clone, Copy)]
pub struct CaptureTime {
    pub mono: Instant,
    /// Microseconds since the Unix epoch.
    pub wall_us: u64,
}

impl CaptureTime {
    pub fn now() -> Self {
        let wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        CaptureTime {
            mono: Instant::now(),
            wall_us,
        }
    }
}

/// Memory holding the three planes of a YUV 4:2:0 image, read in place by the encoders
/// (the JPEG and the H.264 one read the same planes at once, hence `Sync`). Dropping the
/// last reference gives the memory back to its owner (a buffer pool, a camera request).
pub trait Yuv420Buffer: Send + Sync {
    /// Y, U and V planes; each at least `stride * rows` bytes (rows halved for U and V).
    fn planes(&self) -> [&[u8]; 3];
    /// Bytes per row of each plane, which may exceed the visible width (camera padding).
    fn strides(&self) -> [usize; 3];
}

/// Whether `buffer`'s planes hold a `width`x`height` picture at their strides: encoders
/// read `stride * (rows - 1) + cols` bytes per plane, so a source's claim is checked rather
/// than trusted. A picture with no rows holds nothing.
pub fn planes_hold(buffer: &dyn Yuv420Buffer, width: u32, height: u32) -> bool {
    let [y, u, v] = buffer.planes();
    let [ys, us, vs] = buffer.strides();
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let fits = |plane: &[u8], stride: usize, cols: usize, rows: usize| {
        rows > 0 && stride >= cols && plane.len() >= stride * (rows - 1) + cols
    };
    fits(y, ys, w, h) && fits(u, us, cw, ch) && fits(v, vs, cw, ch)
}

/// Planes shared by the encoders that read them.
pub type SharedPlanes = Arc<dyn Yuv420Buffer>;

/// What a frame carries.
pub enum Payload {
    /// Raw planes for the encoders.
    Yuv420(SharedPlanes),
    /// An already-encoded JPEG (USB MJPEG cameras, upstream MJPEG) that skips the encoders.
    Jpeg(Bytes),
}

/// One captured image on its way to the encoders.
pub struct Frame {
    /// Strictly increasing for the life of the process (across source restarts).
    pub seq: u64,
    pub captured: CaptureTime,
    pub width: u32,
    pub height: u32,
    /// A placeholder shown while the real source is down (flag in the wire header).
    pub no_signal: bool,
    pub payload: Payload,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("seq", &self.seq)
            .field("size", &format_args!("{}x{}", self.width, self.height))
            .finish_non_exhaustive()
    }
}

/// Static facts about a source, for `/state` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceInfo {
    /// Kind, as written in `--source` (`test`, `libcamera`, `v4l2`, `mjpeg-http`, `ffmpeg`).
    pub kind: &'static str,
    /// Human-readable name (camera model, URL, …).
    pub name: String,
}

/// A JPEG ready to send, with the WebSocket header in front of it in the same buffer.
#[derive(Debug)]
pub struct EncodedFrame {
    pub seq: u64,
    pub captured: CaptureTime,
    pub width: u32,
    pub height: u32,
    pub no_signal: bool,
    /// `wire` header + JPEG, exactly what a `/ws` binary message carries.
    wire: Bytes,
}

impl EncodedFrame {
    /// Builds the frame by copying `jpeg` once behind a freshly written wire header.
    pub fn new(
        seq: u64,
        captured: CaptureTime,
        width: u32,
        height: u32,
        no_signal: bool,
        jpeg: &[u8],
    ) -> Self {
        let header = FrameHeader {
            version: wire::VERSION,
            kind: wire::TYPE_JPEG,
            flags: if no_signal { wire::FLAG_NO_SIGNAL } else { 0 },
            seq,
            capture_us: captured.wall_us,
            width,
            height,
        };
        let mut buf = Vec::with_capacity(wire::HEADER_LEN + jpeg.len());
        let mut head = [0u8; wire::HEADER_LEN];
        header.write(&mut head);
        buf.extend_from_slice(&head);
        buf.extend_from_slice(jpeg);
        EncodedFrame {
            seq,
            captured,
            width,
            height,
            no_signal,
            wire: Bytes::from(buf),
        }
    }

    /// The encoded form of `frame`, whose JPEG is `jpeg`.
    pub fn for_frame(frame: &Frame, jpeg: &[u8]) -> Self {
        Self::new(
            frame.seq,
            frame.captured,
            frame.width,
            frame.height,
            frame.no_signal,
            jpeg,
        )
    }

    /// The JPEG alone (shares memory with [`Self::wire`]).
    pub fn jpeg(&self) -> Bytes {
        self.wire.slice(wire::HEADER_LEN..)
    }

    /// Header + JPEG, for WebSocket clients.
    pub fn wire(&self) -> Bytes {
        self.wire.clone()
    }
}

/// Who makes a stream's H.264 access units. A source that may pass its input's own H.264
/// through says which for each run, before its first frame; for every other source it is
/// [`H264Supply::Encoder`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum H264Supply {
    /// The pipeline's encoder, from the source's frames.
    #[default]
    Encoder,
    /// The encoder, because pass-through was asked for but cannot be done (the reason: the
    /// input is neither H.264 nor MJPEG).
    EncoderInstead(String),
    /// The source itself: its input's access units, copied, not encoded again.
    Source,
}

/// One encoded picture: its NAL units in Annex B form (each behind a 4-byte start code),
/// SPS and PPS first when it is a keyframe.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    /// The source frame's sequence number (a passed-through unit: the source's own count,
    /// increasing for the source's life).
    pub seq: u64,
    pub captured: CaptureTime,
    pub width: u32,
    pub height: u32,
    /// An IDR: a decoder can start here.
    pub keyframe: bool,
    /// Annex B bytes: `00 00 00 01` + NAL, for each NAL unit.
    pub data: Bytes,
    /// Where each NAL unit lies in `data`, start codes excluded.
    pub nals: Vec<Range<usize>>,
}

impl AccessUnit {
    /// The NAL units without start codes, sharing memory with [`Self::data`].
    pub fn nal_units(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.nals.iter().map(|r| self.data.slice(r.clone()))
    }

    /// The NAL unit of a type (7: SPS, 8: PPS), if the unit has one.
    pub fn nal_of_type(&self, kind: u8) -> Option<Bytes> {
        self.nal_units()
            .find(|n| n.first().map(|b| b & 0x1f) == Some(kind))
    }
}

/// NAL unit type of an SPS and a PPS (H.264 Table 7-1).
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;

/// The NAL units of an Annex B byte stream: the ranges between start codes (`00 00 01` or
/// `00 00 00 01`), start codes excluded. Empty units are skipped.
pub fn split_annex_b(data: &[u8]) -> Vec<Range<usize>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &(_, begin)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&(code, _)| code);
        // A 4-byte start code's leading zero belongs to the code, not to this unit.
        while end > begin && data[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        if end > begin {
            nals.push(begin..end);
        }
    }
    nals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_splits_on_both_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0, 5,
        ];
        let nals = split_annex_b(&data);
        let units: Vec<&[u8]> = nals.iter().map(|r| &data[r.clone()]).collect();
        assert_eq!(
            units,
            [&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 0, 5][..]]
        );
        assert!(split_annex_b(&[1, 2, 3]).is_empty());
    }
}
