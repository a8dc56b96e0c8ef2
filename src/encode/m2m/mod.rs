//! Hardware encoders behind the V4L2 stateful memory-to-memory (M2M) encoder API: the
//! VideoCore's H.264 (`/dev/video11`) and JPEG (`/dev/video31`) encoders that the
//! `bcm2835-codec` driver gives a Pi Zero 2 W, 3 or 4, and any other driver of the same API
//! (the kernel's virtual `vicodec`, whose codec is FWHT, is what CI drives in a VM).
//!
//! Raw frames go in on the OUTPUT queue, coded ones come out on CAPTURE
//! (<https://docs.kernel.org/userspace-api/media/v4l/dev-encoder.html>):
//! - [`device`]: the [`M2mDevice`] seam and [`V4l2Device`], the ioctls and `mmap` on a real
//!   node (single- and multi-planar: vicodec offers both, bcm2835-codec only multi-planar);
//! - [`encoder`]: [`M2mEncoder`], the codec-independent part: format negotiation in the
//!   order the API asks (coded format first, then raw), the raw layout the driver imposes
//!   (strides, aligned heights), buffers on both queues, one frame in and its coded frame
//!   out, the drain (`V4L2_ENC_CMD_STOP` until a buffer flagged `LAST`), errors;
//! - [`h264`] and [`jpeg`]: the codec-specific controls and output handling (bitrate, IDR
//!   period, profile, level, SPS/PPS with each IDR, forced keyframes; JPEG quality);
//! - [`probe`]: finding a node that encodes a codec, for `auto`, `--list-encoders` and
//!   `/state`.
//!
//! A device error is returned, never retried here: the caller (the JPEG pool's worker, the
//! H.264 stage) falls back to its software encoder and reopens the device after a backoff,
//! so a codec that wedges costs CPU, not video.

pub mod device;
pub mod encoder;
pub mod h264;
pub mod jpeg;
pub mod probe;

#[cfg(test)]
pub(crate) mod fake;

use std::fmt;
use std::time::Duration;

pub use device::{Dequeued, Format, M2mDevice, PlaneFormat, Queue, SizeRange, V4l2Device};
pub use encoder::{Coded, M2mEncoder};
pub use probe::{choose, probe_encoders, EncoderChoice, EncoderNode, EncoderPref};

/// A V4L2 pixel format code (`v4l2_fourcc`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub u32);

impl FourCc {
    pub const fn new(code: &[u8; 4]) -> FourCc {
        FourCc(u32::from_le_bytes(*code))
    }

    pub const YUV420: FourCc = FourCc::new(b"YU12");
    pub const NV12: FourCc = FourCc::new(b"NV12");
    pub const H264: FourCc = FourCc::new(b"H264");
    pub const JPEG: FourCc = FourCc::new(b"JPEG");
    pub const MJPEG: FourCc = FourCc::new(b"MJPG");
    pub const FWHT: FourCc = FourCc::new(b"FWHT");
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_le_bytes();
        let text: String = b
            .iter()
            .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
            .collect();
        f.write_str(text.trim_end())
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FourCc({self})")
    }
}

/// What an M2M encoder makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    /// Baseline JPEG; bcm2835-codec calls its format `JPEG`, some drivers `MJPG`.
    Jpeg,
    /// vicodec's own codec: only for driving the plumbing in tests and `--encoder-check`.
    Fwht,
}

impl Codec {
    /// The coded formats that mean this codec, preferred first.
    pub fn fourccs(self) -> &'static [FourCc] {
        match self {
            Codec::H264 => &[FourCc::H264],
            Codec::Jpeg => &[FourCc::JPEG, FourCc::MJPEG],
            Codec::Fwht => &[FourCc::FWHT],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "H.264",
            Codec::Jpeg => "JPEG",
            Codec::Fwht => "FWHT",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How long one frame may take from queueing to its coded buffer before the device counts
/// as stuck. bcm2835-codec encodes a 1080p frame in ~20–30 ms; a device that takes 50× that
/// is broken, and the caller falls back to software rather than freeze the stream.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an M2M encoder could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum M2mError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {0}", path = .1)]
    Unsupported(String, String),
    #[error("{path}: no coded buffer within {0:?} of queueing a frame (the device is stuck)", path = .1)]
    Timeout(Duration, String),
    #[error("{path}: the driver flagged the coded buffer as an error", path = .0)]
    BufferError(String),
    #[error("frame {width}x{height} has planes too small for its strides")]
    BadPlanes { width: u32, height: u32 },
    #[error("frame is {got_w}x{got_h}; this encoder was set up for {width}x{height}")]
    SizeChanged {
        width: u32,
        height: u32,
        got_w: u32,
        got_h: u32,
    },
}
