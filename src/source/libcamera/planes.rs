//! Frames from libcamera without a copy: where the YUV 4:2:0 planes are in a request's
//! memory-mapped buffer ([`Layout`]: I420 read in place; NV12, which libcamera's `virtual`
//! camera produces, with its chroma split into U and V once, by the encoder thread that reads
//! it, into a recycled buffer) and [`RequestPlanes`], which lends a completed request to the
//! encoders and sends it back to the source thread for re-queueing when dropped.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};

use libcamera::framebuffer_allocator::FrameBuffer;
use libcamera::framebuffer_map::MemoryMappedFrameBuffer;
use libcamera::pixel_format::PixelFormat;
use libcamera::request::Request;
use libcamera::stream::Stream;

use super::capture::Event;
use super::MAX_BUFFERS;
use crate::frame::Yuv420Buffer;
use crate::source::i420::deinterleave_uv;

/// Planar YUV 4:2:0 (I420), by fourcc: the crate's `formats` constants are empty with
/// libcamera 0.4's headers.
pub(super) const YUV420: PixelFormat = PixelFormat::new(u32::from_le_bytes(*b"YU12"), 0);
/// Y plane + interleaved CbCr.
const NV12: PixelFormat = PixelFormat::new(u32::from_le_bytes(*b"NV12"), 0);

/// The two 4:2:0 layouts picamd takes from libcamera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Planar Y, U, V (libcamera's YUV420): read in place, no copy at all.
    I420,
    /// Y plane + interleaved UV (libcamera's NV12, e.g. its `virtual` camera): Y is read in
    /// place, chroma is split into U and V by the encoder thread that takes the frame.
    Nv12,
}

impl Format {
    pub(super) fn pixel_format(self) -> PixelFormat {
        match self {
            Format::I420 => YUV420,
            Format::Nv12 => NV12,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Format::I420 => "YUV420",
            Format::Nv12 => "NV12",
        }
    }
}

/// Where the planes are in a mapped buffer and how big they must be.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) format: Format,
    pub(super) width: usize,
    pub(super) height: usize,
    /// Bytes per row of the first plane (libcamera's stride); chroma rows follow from it.
    pub(super) stride: usize,
}

impl Layout {
    /// Bytes each plane needs: Y, then U and V (I420) or UV (NV12, third is 0).
    fn plane_lens(&self) -> [usize; 3] {
        let rows = self.height / 2;
        match self.format {
            Format::I420 => [
                self.stride * self.height,
                self.stride / 2 * rows,
                self.stride / 2 * rows,
            ],
            Format::Nv12 => [self.stride * self.height, self.stride * rows, 0],
        }
    }

    fn planes(&self) -> usize {
        match self.format {
            Format::I420 => 3,
            Format::Nv12 => 2,
        }
    }

    /// The planes in `data` (one slice per plane, or all in one slice back to back), or `None`
    /// if they are too small.
    pub(super) fn split<'a>(&self, data: &[&'a [u8]]) -> Option<[&'a [u8]; 3]> {
        let lens = self.plane_lens();
        let n = self.planes();
        // Some pipelines describe NV12 with an empty third plane (libcamera 0.4's `virtual`).
        let mut data = data;
        while let [rest @ .., last] = data {
            if data.len() <= n || !last.is_empty() {
                break;
            }
            data = rest;
        }
        let mut out: [&[u8]; 3] = [&[], &[], &[]];
        if data.len() == n {
            for i in 0..n {
                out[i] = data[i].get(..lens[i])?;
            }
        } else if data.len() == 1 {
            let mut at = 0;
            for i in 0..n {
                out[i] = data[0].get(at..at + lens[i])?;
                at += lens[i];
            }
        } else {
            return None;
        }
        Some(out)
    }

    /// Chroma plane width and height.
    fn chroma(&self) -> (usize, usize) {
        (self.width / 2, self.height / 2)
    }

    /// What the encoder sees: I420 strides (after the split for NV12).
    fn strides(&self) -> [usize; 3] {
        match self.format {
            Format::I420 => [self.stride, self.stride / 2, self.stride / 2],
            Format::Nv12 => [self.stride, self.width / 2, self.width / 2],
        }
    }
}

/// Splits interleaved UV rows into a U plane followed by a V plane in `out`.
fn deinterleave(uv: &[u8], uv_stride: usize, (cw, ch): (usize, usize), out: &mut [u8]) {
    let (u, v) = out.split_at_mut((cw * ch).min(out.len()));
    deinterleave_uv(uv, uv_stride, (cw, ch), u, v);
}

/// Recycled U+V buffers for NV12 frames, so steady state allocates nothing.
#[derive(Clone, Default)]
pub(super) struct ChromaPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl ChromaPool {
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(b) if b.len() == len => b,
            _ => vec![0; len],
        }
    }

    fn put(&self, buf: Vec<u8>) {
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < MAX_BUFFERS as usize {
            free.push(buf);
        }
    }
}

/// A completed request's YUV 4:2:0 planes, read in place from the camera's memory (NV12
/// chroma is split once, on first use). Dropping it hands the request back to the source
/// thread for re-queueing.
pub struct RequestPlanes {
    pub(super) request: Option<Request>,
    pub(super) stream: Stream,
    pub(super) layout: Layout,
    pub(super) returns: Sender<Event>,
    /// NV12 only: U then V, filled by the first `planes()`.
    pub(super) chroma: OnceLock<Vec<u8>>,
    pub(super) pool: ChromaPool,
}

pub(super) type Mapped = MemoryMappedFrameBuffer<FrameBuffer>;

// SAFETY: the JPEG and H.264 encoders read one frame's planes from two threads at once, so
// `Yuv420Buffer` needs `Sync`. `Request` and `Stream` are `Send` but not `Sync` only because
// they hold raw pointers; through `&self` this type does nothing but read: `Request::buffer`
// is a lookup in the request's own `HashMap` (no interior mutability), the mapping's `data()`
// builds slices of memory the camera no longer writes (the request has completed, and it is
// queued again only after `Drop`, which has `&mut self`), `chroma` is a `OnceLock` and `pool`
// a mutex. The C request (`ptr`) is never touched through `&self`.
unsafe impl Sync for RequestPlanes {}

impl Yuv420Buffer for RequestPlanes {
    fn planes(&self) -> [&[u8]; 3] {
        // Checked when the buffers were mapped; should it ever fail, the encoder reports the
        // empty planes as an error.
        const NONE: [&[u8]; 3] = [&[], &[], &[]];
        let Some(mapped) = self
            .request
            .as_ref()
            .and_then(|r| r.buffer::<Mapped>(&self.stream))
        else {
            return NONE;
        };
        let Some(planes) = self.layout.split(&mapped.data()) else {
            return NONE;
        };
        match self.layout.format {
            Format::I420 => planes,
            Format::Nv12 => {
                let (cw, ch) = self.layout.chroma();
                let uv = self.chroma.get_or_init(|| {
                    let mut buf = self.pool.take(2 * cw * ch);
                    deinterleave(planes[1], self.layout.stride, (cw, ch), &mut buf);
                    buf
                });
                let (u, v) = uv.split_at(cw * ch);
                [planes[0], u, v]
            }
        }
    }

    fn strides(&self) -> [usize; 3] {
        self.layout.strides()
    }
}

impl Drop for RequestPlanes {
    fn drop(&mut self) {
        if let Some(buf) = self.chroma.take() {
            self.pool.put(buf);
        }
        if let Some(request) = self.request.take() {
            // Fails only if the session is gone; the request is then freed here.
            let _ = self.returns.send(Event::Returned(request));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i420_planes_are_found_per_plane_or_back_to_back() {
        let layout = Layout {
            format: Format::I420,
            width: 4,
            height: 2,
            stride: 8,
        };
        assert_eq!(layout.plane_lens(), [16, 4, 4]);
        assert_eq!(layout.strides(), [8, 4, 4]);
        let all: Vec<u8> = (0..30).collect();
        let p = layout.split(&[&all]).unwrap();
        assert_eq!((p[0].len(), p[1][0], p[2][0]), (16, 16, 20));
        let (y, u, v) = (vec![1; 16], vec![2; 5], vec![3; 4]);
        let p = layout.split(&[&y, &u, &v]).unwrap();
        assert_eq!((p[1].len(), p[2][0]), (4, 3));
        assert!(layout.split(&[&y, &u, &v[..3]]).is_none());
        assert!(layout.split(&[&all[..20]]).is_none());
        assert!(layout.split(&[&y, &u]).is_none());
    }

    #[test]
    fn nv12_chroma_is_split_with_its_stride() {
        let layout = Layout {
            format: Format::Nv12,
            width: 4,
            height: 4,
            stride: 6,
        };
        assert_eq!(layout.plane_lens(), [24, 12, 0]);
        let (y, uv) = (vec![1; 24], vec![2; 12]);
        assert!(layout.split(&[&y, &uv]).is_some());
        assert!(layout.split(&[&y, &uv, &[]]).is_some());
        assert!(layout.split(&[&y, &uv, &[0]]).is_none());
        assert_eq!(layout.strides(), [6, 2, 2]);
        // Two chroma rows of 6 bytes: U V U V, then padding.
        let uv = [10, 20, 11, 21, 99, 99, 12, 22, 13, 23, 99, 99];
        let mut out = vec![0; 8];
        deinterleave(&uv, layout.stride, layout.chroma(), &mut out);
        assert_eq!(out, [10, 11, 12, 13, 20, 21, 22, 23]);
        // Short input leaves the rest alone instead of panicking.
        let mut out = vec![0; 8];
        deinterleave(&uv[..6], layout.stride, layout.chroma(), &mut out);
        assert_eq!(out, [10, 11, 0, 0, 20, 21, 0, 0]);
    }
}
