//! [`M2mEncoder`]: the codec-independent part of a V4L2 stateful encoder session.
//!
//! Set-up follows the kernel's encoder interface
//! (<https://docs.kernel.org/userspace-api/media/v4l/dev-encoder.html>): the coded format
//! on CAPTURE first (it decides what the raw side may be), then the raw format on OUTPUT, the
//! frame rate, the controls, then buffers on both queues, every coded buffer queued, and
//! streaming on both.
//!
//! Frames go one at a time: [`M2mEncoder::encode`] copies a frame into a free raw buffer,
//! queues it and waits for its coded buffer. Both encoders picamd targets give one coded
//! buffer per frame with no reordering (Constrained Baseline has no B-frames), so waiting is
//! the whole frame's latency and nothing queues up; the codec layer says when a coded buffer
//! is not a whole frame yet (a driver that hands over H.264's SPS/PPS in a buffer of their
//! own), and the pieces are joined.
//!
//! The raw frame is copied into the driver's buffer at the driver's stride: 1.4 MB per 720p
//! frame, ~0.3 ms on a Pi 4's memory bus against the ~10 ms the hardware takes to encode it.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::device::{Format, M2mDevice, PlaneFormat, Queue};
use super::{Codec, FourCc, M2mError, FRAME_TIMEOUT};
use crate::frame::{planes_hold, Yuv420Buffer};

/// Raw buffers: one being filled while the driver reads the other.
const RAW_BUFFERS: u32 = 2;
/// Coded buffers: always some queued for the driver to write into.
const CODED_BUFFERS: u32 = 4;

/// One codec control to set before streaming.
#[derive(Debug, Clone, Copy)]
pub struct Control {
    pub id: u32,
    pub value: i32,
    /// For `/state` and the logs.
    pub name: &'static str,
    /// Whether the encoder is unusable without it (else: noted, and the driver's default
    /// stands).
    pub required: bool,
}

/// What a session is set up for.
#[derive(Debug, Clone)]
pub struct Spec {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub controls: Vec<Control>,
    /// Raw frames come as dmabufs with rows this many bytes apart (imported, not copied:
    /// [`M2mEncoder::encode_imported`]); `None`: copied into mapped buffers.
    pub import_stride: Option<u32>,
}

/// One coded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coded {
    pub data: Bytes,
    /// The driver's `V4L2_BUF_FLAG_*` of the (last) buffer.
    pub flags: u32,
}

/// Where a raw frame's planes go in the driver's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLayout {
    pub fourcc: FourCc,
    pub y_stride: usize,
    /// Rows the driver gives the luma plane: the height, or more (bcm2835-codec pads heights
    /// to 16: 1080 → 1088, and says so only through `sizeimage`).
    pub rows: usize,
    pub c_stride: usize,
    /// YU12: U, then V; NV12: the interleaved plane (`v_offset` unused).
    pub u_offset: usize,
    pub v_offset: usize,
    /// Payload bytes of one frame.
    pub bytes: usize,
}

impl RawLayout {
    /// The layout of a raw format as the driver set it, for a picture of `height` rows;
    /// `None` when the format's numbers cannot hold it.
    pub fn of(f: &Format, height: u32) -> Option<RawLayout> {
        let nv12 = f.fourcc == FourCc::NV12;
        if !(nv12 || f.fourcc == FourCc::YUV420) {
            return None;
        }
        let stride = match f.plane.bytesperline as usize {
            0 => f.width as usize,
            s => s,
        };
        let h = height as usize;
        let size = f.plane.sizeimage as usize;
        let frame = |rows: usize| stride * rows + stride * rows.div_ceil(2);
        // The luma rows: the height, or the height aligned as the driver aligned it, when
        // sizeimage is exactly a frame of that many rows.
        let rows = [1, 2, 16, 32, 64]
            .iter()
            .map(|a| h.div_ceil(*a) * a)
            .find(|&rows| frame(rows) == size)
            .unwrap_or(h);
        if stride < f.width as usize || (size != 0 && size < frame(rows)) {
            return None;
        }
        let chroma_rows = rows.div_ceil(2);
        let u_offset = stride * rows;
        let (c_stride, v_offset, bytes) = if nv12 {
            (stride, u_offset, u_offset + stride * chroma_rows)
        } else {
            let c = stride / 2;
            (
                c,
                u_offset + c * chroma_rows,
                u_offset + 2 * c * chroma_rows,
            )
        };
        Some(RawLayout {
            fourcc: f.fourcc,
            y_stride: stride,
            rows,
            c_stride,
            u_offset,
            v_offset,
            bytes,
        })
    }

    /// Copies a `width`x`height` picture into `dst` (at least [`Self::bytes`] long).
    pub fn fill(&self, dst: &mut [u8], src: &dyn Yuv420Buffer, width: usize, height: usize) {
        let [y, u, v] = src.planes();
        let [ys, us, vs] = src.strides();
        for r in 0..height {
            let d = r * self.y_stride;
            dst[d..d + width].copy_from_slice(&y[r * ys..r * ys + width]);
        }
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        for r in 0..ch {
            let (su, sv) = (&u[r * us..r * us + cw], &v[r * vs..r * vs + cw]);
            if self.fourcc == FourCc::NV12 {
                let d = self.u_offset + r * self.c_stride;
                for (i, pair) in dst[d..d + 2 * cw].chunks_exact_mut(2).enumerate() {
                    pair[0] = su[i];
                    pair[1] = sv[i];
                }
            } else {
                let du = self.u_offset + r * self.c_stride;
                let dv = self.v_offset + r * self.c_stride;
                dst[du..du + cw].copy_from_slice(su);
                dst[dv..dv + cw].copy_from_slice(sv);
            }
        }
    }
}

/// A streaming encoder session on one device.
pub struct M2mEncoder<D: M2mDevice> {
    dev: D,
    spec: Spec,
    coded_format: Format,
    layout: RawLayout,
    free_raw: Vec<u32>,
    /// The next raw buffer's timestamp: a frame counter, so a coded buffer names its frame.
    next_stamp: u64,
    /// The controls the driver refused (optional ones), for `/state`.
    refused: Vec<String>,
    /// After [`Self::drain`]: nothing more can be encoded.
    drained: bool,
}

impl<D: M2mDevice> M2mEncoder<D> {
    /// Negotiates formats, sets the controls, maps buffers and starts streaming.
    pub fn open(mut dev: D, spec: Spec) -> Result<M2mEncoder<D>, M2mError> {
        let path = dev.info().path.clone();
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| M2mError::Io { path, what, source }
        };
        let unsupported = |msg: String| M2mError::Unsupported(msg, path.clone());
        let (w, h) = (spec.width, spec.height);
        if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 {
            return Err(unsupported(format!("{w}x{h}: sizes must be even")));
        }

        // 1. The coded format.
        let coded_offered = dev
            .formats(Queue::Coded)
            .map_err(io("listing coded formats"))?;
        let Some(&fourcc) = spec
            .codec
            .fourccs()
            .iter()
            .find(|f| coded_offered.contains(f))
        else {
            return Err(unsupported(format!(
                "does not encode {} (its coded formats: {})",
                spec.codec,
                list(&coded_offered)
            )));
        };
        let want = Format {
            fourcc,
            width: w,
            height: h,
            // 0: the driver picks a coded buffer size for the picture.
            plane: PlaneFormat::default(),
        };
        let coded_format = dev
            .set_format(Queue::Coded, &want)
            .map_err(io("setting the coded format"))?;
        if coded_format.fourcc != fourcc {
            return Err(unsupported(format!(
                "asked for {fourcc} coded, the driver set {}",
                coded_format.fourcc
            )));
        }

        // 2. The raw format: I420 as the sources make it, else NV12 (interleaved on copy).
        let raw_offered = dev.formats(Queue::Raw).map_err(io("listing raw formats"))?;
        let Some(&raw) = [FourCc::YUV420, FourCc::NV12]
            .iter()
            .find(|f| raw_offered.contains(f))
        else {
            return Err(unsupported(format!(
                "takes no YU12 or NV12 frames (its raw formats: {})",
                list(&raw_offered)
            )));
        };
        let raw_format = dev
            .set_format(
                Queue::Raw,
                &Format {
                    fourcc: raw,
                    width: w,
                    height: h,
                    plane: PlaneFormat {
                        bytesperline: spec.import_stride.unwrap_or(0),
                        sizeimage: 0,
                    },
                },
            )
            .map_err(io("setting the raw format"))?;
        if (raw_format.fourcc, raw_format.width, raw_format.height) != (raw, w, h) {
            return Err(unsupported(format!(
                "asked for {raw} {w}x{h} raw frames, the driver set {} {}x{}",
                raw_format.fourcc, raw_format.width, raw_format.height
            )));
        }
        if let Some(stride) = spec.import_stride {
            if raw_format.plane.bytesperline != stride {
                return Err(unsupported(format!(
                    "imported frames have {stride} bytes a row; the driver wants {}",
                    raw_format.plane.bytesperline
                )));
            }
        }
        let layout = RawLayout::of(&raw_format, h).ok_or_else(|| {
            unsupported(format!(
                "its raw layout cannot hold {w}x{h}: {} bytes per line, {} bytes",
                raw_format.plane.bytesperline, raw_format.plane.sizeimage
            ))
        })?;

        // 3. Rate and controls, before buffers: some drivers fix them at allocation.
        let mut refused = Vec::new();
        if let Err(e) = dev.set_frame_rate(spec.fps) {
            refused.push(format!("frame rate {}: {e}", spec.fps));
        }
        for c in &spec.controls {
            if let Err(e) = dev.set_control(c.id, c.value) {
                if c.required {
                    return Err(M2mError::Io {
                        path: path.clone(),
                        what: c.name,
                        source: e,
                    });
                }
                refused.push(format!("{} {}: {e}", c.name, c.value));
            }
        }

        // 4. Buffers and streaming.
        let raw_count = match spec.import_stride {
            Some(_) => dev
                .allocate_imported(RAW_BUFFERS)
                .map_err(io("setting up dmabuf import on the raw queue"))?,
            None => dev
                .allocate(Queue::Raw, RAW_BUFFERS)
                .map_err(io("allocating raw buffers"))?,
        };
        if raw_count == 0
            || (spec.import_stride.is_none() && dev.buffer(Queue::Raw, 0).len() < layout.bytes)
        {
            return Err(unsupported(format!(
                "raw buffers too small: {} buffers for {} bytes a frame",
                raw_count, layout.bytes
            )));
        }
        let coded_count = dev
            .allocate(Queue::Coded, CODED_BUFFERS)
            .map_err(io("allocating coded buffers"))?;
        if coded_count == 0 {
            return Err(unsupported("the driver gave no coded buffers".into()));
        }
        for i in 0..coded_count {
            dev.queue(Queue::Coded, i, 0, 0)
                .map_err(io("queueing a coded buffer"))?;
        }
        dev.stream(Queue::Coded, true)
            .map_err(io("starting the coded queue"))?;
        dev.stream(Queue::Raw, true)
            .map_err(io("starting the raw queue"))?;
        for r in &refused {
            tracing::debug!(device = %path, "M2M encoder: not applied: {r}");
        }
        Ok(M2mEncoder {
            dev,
            spec,
            coded_format,
            layout,
            free_raw: (0..raw_count).rev().collect(),
            next_stamp: 1,
            refused,
            drained: false,
        })
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn raw_layout(&self) -> RawLayout {
        self.layout
    }

    pub fn coded_format(&self) -> &Format {
        &self.coded_format
    }

    /// Optional settings the driver refused, in words.
    pub fn refused(&self) -> &[String] {
        &self.refused
    }

    fn path(&self) -> String {
        self.dev.info().path.clone()
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> M2mError {
        let path = self.path();
        move |source| M2mError::Io { path, what, source }
    }

    /// Sets a control while streaming (a forced keyframe, a new quality).
    pub fn set_control(&mut self, id: u32, value: i32, what: &'static str) -> Result<(), M2mError> {
        let err = self.io(what);
        self.dev.set_control(id, value).map_err(err)
    }

    /// Takes back the raw buffers the driver is done with.
    fn reclaim_raw(&mut self) -> Result<(), M2mError> {
        while let Some(d) = self
            .dev
            .dequeue(Queue::Raw)
            .map_err(self.io("dequeueing a raw buffer"))?
        {
            self.free_raw.push(d.index);
        }
        Ok(())
    }

    /// Encodes one frame; `complete` says whether the coded bytes so far are a whole frame
    /// (else the next coded buffer is awaited and joined on).
    pub fn encode(
        &mut self,
        planes: &dyn Yuv420Buffer,
        width: u32,
        height: u32,
        complete: impl Fn(&[u8]) -> bool,
    ) -> Result<Coded, M2mError> {
        if self.drained {
            return Err(M2mError::Unsupported(
                "the encoder was drained".into(),
                self.path(),
            ));
        }
        if (width, height) != (self.spec.width, self.spec.height) {
            return Err(M2mError::SizeChanged {
                width: self.spec.width,
                height: self.spec.height,
                got_w: width,
                got_h: height,
            });
        }
        if !planes_hold(planes, width, height) {
            return Err(M2mError::BadPlanes { width, height });
        }
        let deadline = Instant::now() + FRAME_TIMEOUT;
        let index = self.free_raw_buffer(deadline)?;
        let layout = self.layout;
        let dst = self.dev.buffer_mut(Queue::Raw, index);
        layout.fill(dst, planes, width as usize, height as usize);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.dev
            .queue(Queue::Raw, index, layout.bytes as u32, stamp)
            .map_err(self.io("queueing a raw frame"))?;
        self.coded_frame(deadline, complete)
    }

    /// A raw buffer the driver is done with, waiting for one until `deadline`.
    fn free_raw_buffer(&mut self, deadline: Instant) -> Result<u32, M2mError> {
        self.reclaim_raw()?;
        loop {
            if let Some(i) = self.free_raw.pop() {
                return Ok(i);
            }
            self.wait_until(deadline)?;
            self.reclaim_raw()?;
        }
    }

    /// The coded buffers of the frame just queued, joined until `complete` says they are
    /// the whole frame.
    fn coded_frame(
        &mut self,
        deadline: Instant,
        complete: impl Fn(&[u8]) -> bool,
    ) -> Result<Coded, M2mError> {
        let mut joined = BytesMut::new();
        loop {
            if let Some((data, flags)) = self.next_coded(deadline)? {
                joined.extend_from_slice(&data);
                if complete(&joined) {
                    return Ok(Coded {
                        data: joined.freeze(),
                        flags,
                    });
                }
            }
        }
    }

    /// Encodes one frame that is in a dmabuf (`fd`, `length` bytes, laid out as
    /// [`Self::raw_layout`] says: the session was opened with `import_stride`), without
    /// copying it. Returns once the driver has given the buffer back as well as the coded
    /// frame, so the caller may reuse the dmabuf (a capture buffer goes back to its camera).
    pub fn encode_imported(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        length: u32,
        complete: impl Fn(&[u8]) -> bool,
    ) -> Result<Coded, M2mError> {
        use std::os::fd::AsRawFd;
        if self.drained || self.spec.import_stride.is_none() {
            return Err(M2mError::Unsupported(
                "this session does not import dmabufs".into(),
                self.path(),
            ));
        }
        if (length as usize) < self.layout.bytes {
            return Err(M2mError::BadPlanes {
                width: self.spec.width,
                height: self.spec.height,
            });
        }
        let deadline = Instant::now() + FRAME_TIMEOUT;
        let index = self.free_raw_buffer(deadline)?;
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.dev
            .queue_imported(
                index,
                fd.as_raw_fd(),
                length,
                self.layout.bytes as u32,
                stamp,
            )
            .map_err(self.io("queueing an imported frame"))?;
        let coded = self.coded_frame(deadline, complete)?;
        while !self.free_raw.contains(&index) {
            self.wait_until(deadline)?;
            self.reclaim_raw()?;
        }
        Ok(coded)
    }

    /// The next coded buffer's bytes and flags, its buffer queued again; `None` for an empty
    /// buffer. Fails past `deadline`.
    fn next_coded(&mut self, deadline: Instant) -> Result<Option<(Bytes, u32)>, M2mError> {
        loop {
            self.reclaim_raw()?;
            if let Some(d) = self
                .dev
                .dequeue(Queue::Coded)
                .map_err(self.io("dequeueing a coded buffer"))?
            {
                let buf = self.dev.buffer(Queue::Coded, d.index);
                let start = d.data_offset as usize;
                let end = start + d.bytesused as usize;
                let data = buf
                    .get(start..end)
                    .map(Bytes::copy_from_slice)
                    .unwrap_or_default();
                self.dev
                    .queue(Queue::Coded, d.index, 0, 0)
                    .map_err(self.io("queueing a coded buffer"))?;
                if d.flags & v4l::v4l_sys::V4L2_BUF_FLAG_ERROR != 0 {
                    return Err(M2mError::BufferError(self.path()));
                }
                return Ok((!data.is_empty()).then_some((data, d.flags)));
            }
            self.wait_until(deadline)?;
        }
    }

    fn wait_until(&mut self, deadline: Instant) -> Result<(), M2mError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(M2mError::Timeout(FRAME_TIMEOUT, self.path()));
        }
        self.dev
            .wait(left.min(Duration::from_millis(100)))
            .map_err(self.io("waiting for the device"))?;
        Ok(())
    }

    /// Ends the session the API's way: `V4L2_ENC_CMD_STOP`, then the coded buffers until
    /// one flagged `LAST`; the coded frames that were still inside come back. Streaming is
    /// off afterwards.
    pub fn drain(&mut self) -> Result<Vec<Coded>, M2mError> {
        if self.drained {
            return Ok(Vec::new());
        }
        self.drained = true;
        self.dev.stop().map_err(self.io("V4L2_ENC_CMD_STOP"))?;
        let deadline = Instant::now() + FRAME_TIMEOUT;
        let mut out = Vec::new();
        loop {
            self.reclaim_raw()?;
            match self
                .dev
                .dequeue(Queue::Coded)
                .map_err(self.io("dequeueing a coded buffer"))?
            {
                Some(d) => {
                    let buf = self.dev.buffer(Queue::Coded, d.index);
                    let start = d.data_offset as usize;
                    let data = buf
                        .get(start..start + d.bytesused as usize)
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default();
                    if !data.is_empty() {
                        out.push(Coded {
                            data,
                            flags: d.flags,
                        });
                    }
                    if d.flags & v4l::v4l_sys::V4L2_BUF_FLAG_LAST != 0 {
                        break;
                    }
                    self.dev
                        .queue(Queue::Coded, d.index, 0, 0)
                        .map_err(self.io("queueing a coded buffer"))?;
                }
                None => self.wait_until(deadline)?,
            }
        }
        self.dev
            .stream(Queue::Raw, false)
            .map_err(self.io("stopping the raw queue"))?;
        self.dev
            .stream(Queue::Coded, false)
            .map_err(self.io("stopping the coded queue"))?;
        Ok(out)
    }
}

fn list(formats: &[FourCc]) -> String {
    if formats.is_empty() {
        return "none".into();
    }
    formats
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::m2m::fake::{FakeDevice, Planes};

    fn spec(codec: Codec, width: u32, height: u32) -> Spec {
        Spec {
            codec,
            width,
            height,
            fps: 30,
            controls: Vec::new(),
            import_stride: None,
        }
    }

    fn format(fourcc: FourCc, width: u32, height: u32, bpl: u32, size: u32) -> Format {
        Format {
            fourcc,
            width,
            height,
            plane: PlaneFormat {
                bytesperline: bpl,
                sizeimage: size,
            },
        }
    }

    #[test]
    fn raw_layouts_follow_the_drivers_stride_and_padded_height() {
        // vicodec: exact.
        let l = RawLayout::of(&format(FourCc::YUV420, 640, 480, 640, 460_800), 480).unwrap();
        assert_eq!((l.y_stride, l.rows, l.c_stride), (640, 480, 320));
        assert_eq!(
            (l.u_offset, l.v_offset, l.bytes),
            (307_200, 384_000, 460_800)
        );
        // bcm2835-codec at 1080p: 1088 rows, said only by sizeimage (1920 * 1088 * 1.5).
        let l = RawLayout::of(&format(FourCc::YUV420, 1920, 1080, 1920, 3_133_440), 1080).unwrap();
        assert_eq!((l.rows, l.u_offset), (1088, 1920 * 1088));
        assert_eq!(l.v_offset, 1920 * 1088 + 960 * 544);
        // A wider stride; NV12's interleaved chroma.
        let l = RawLayout::of(&format(FourCc::NV12, 1280, 720, 1312, 0), 720).unwrap();
        assert_eq!(
            (l.y_stride, l.c_stride, l.u_offset),
            (1312, 1312, 1312 * 720)
        );
        assert_eq!(l.bytes, 1312 * 720 * 3 / 2);
        // Numbers that cannot hold the picture, and formats picamd does not fill.
        assert!(RawLayout::of(&format(FourCc::YUV420, 640, 480, 600, 0), 480).is_none());
        assert!(RawLayout::of(&format(FourCc::YUV420, 640, 480, 640, 1000), 480).is_none());
        assert!(RawLayout::of(&format(FourCc::new(b"YUYV"), 640, 480, 1280, 0), 480).is_none());
    }

    #[test]
    fn frames_are_copied_at_the_drivers_layout_in_both_raw_formats() {
        let planes = Planes::filled(64, 48, |c, r| (c + 2 * r) as u8, 90, 200);
        for (raw, stride_align, height_align) in [(FourCc::YUV420, 32, 16), (FourCc::NV12, 128, 1)]
        {
            let mut dev = FakeDevice::encoder(FourCc::FWHT, |_| vec![vec![1, 2, 3]]);
            dev.raw_formats = vec![raw];
            (dev.stride_align, dev.height_align) = (stride_align, height_align);
            let log = dev.log();
            let mut enc = M2mEncoder::open(dev, spec(Codec::Fwht, 64, 48)).unwrap();
            let l = enc.raw_layout();
            assert_eq!(l.fourcc, raw);
            let coded = enc.encode(&planes, 64, 48, |_| true).unwrap();
            assert_eq!(coded.data[..], [1, 2, 3]);
            let log = log.lock().unwrap();
            let f = &log.raw_frames[0];
            assert_eq!(f.len(), l.bytes);
            for (c, r) in [(0, 0), (63, 0), (5, 47), (63, 47)] {
                assert_eq!(
                    f[r * l.y_stride + c],
                    (c + 2 * r) as u8,
                    "luma {c},{r} in {raw}"
                );
            }
            let (u, v) = if raw == FourCc::NV12 {
                let at = l.u_offset + 23 * l.c_stride + 2 * 31;
                (f[at], f[at + 1])
            } else {
                (
                    f[l.u_offset + 23 * l.c_stride + 31],
                    f[l.v_offset + 23 * l.c_stride + 31],
                )
            };
            assert_eq!((u, v), (90, 200), "chroma in {raw}");
        }
    }

    #[test]
    fn set_up_goes_coded_format_raw_format_controls_buffers_then_streaming() {
        let dev = FakeDevice::encoder(FourCc::FWHT, |_| vec![vec![1]]);
        let log = dev.log();
        let mut s = spec(Codec::Fwht, 64, 48);
        s.controls.push(Control {
            id: 42,
            value: 7,
            name: "gop",
            required: true,
        });
        let _enc = M2mEncoder::open(dev, s).unwrap();
        let events = log.lock().unwrap().events.clone();
        assert_eq!(
            events,
            [
                "format Coded FWHT",
                "format Raw YU12",
                "control 42",
                "stream Coded true",
                "stream Raw true"
            ]
        );
        // A required control the driver refuses fails the set-up.
        let mut dev = FakeDevice::encoder(FourCc::FWHT, |_| vec![vec![1]]);
        dev.refuse_control(42);
        let mut s = spec(Codec::Fwht, 64, 48);
        s.controls.push(Control {
            id: 42,
            value: 7,
            name: "gop",
            required: true,
        });
        let e = M2mEncoder::open(dev, s).err().unwrap();
        assert!(e.to_string().starts_with("/dev/fake: gop: "), "{e}");
    }

    #[test]
    fn the_drain_stops_and_reads_until_the_last_buffer() {
        let dev = FakeDevice::encoder(FourCc::FWHT, |_| vec![vec![9; 10]]);
        let log = dev.log();
        let mut enc = M2mEncoder::open(dev, spec(Codec::Fwht, 64, 48)).unwrap();
        let planes = Planes::grey(64, 48);
        for _ in 0..6 {
            assert_eq!(
                enc.encode(&planes, 64, 48, |_| true).unwrap().data.len(),
                10
            );
        }
        assert_eq!(enc.drain().unwrap(), Vec::<Coded>::new());
        let events = log.lock().unwrap().events.clone();
        assert_eq!(
            events[events.len() - 3..],
            ["stop", "stream Raw false", "stream Coded false"]
        );
        let e = enc.encode(&planes, 64, 48, |_| true).unwrap_err();
        assert!(e.to_string().contains("drained"), "{e}");
    }

    #[test]
    fn bad_frames_and_a_silent_device_are_errors() {
        let dev = FakeDevice::encoder(FourCc::FWHT, |_| Vec::new());
        let mut enc = M2mEncoder::open(dev, spec(Codec::Fwht, 64, 48)).unwrap();
        let e = enc
            .encode(&Planes::grey(64, 48), 32, 48, |_| true)
            .unwrap_err();
        assert!(matches!(e, M2mError::SizeChanged { .. }), "{e}");
        let e = enc
            .encode(&Planes::grey(32, 48), 64, 48, |_| true)
            .unwrap_err();
        assert!(matches!(e, M2mError::BadPlanes { .. }), "{e}");
        // The script gives nothing: no coded buffer within the frame timeout.
        let e = enc
            .encode(&Planes::grey(64, 48), 64, 48, |_| true)
            .unwrap_err();
        assert!(matches!(e, M2mError::Timeout(..)), "{e}");
        // Odd sizes are refused before the device is touched.
        let dev = FakeDevice::encoder(FourCc::FWHT, |_| Vec::new());
        assert!(M2mEncoder::open(dev, spec(Codec::Fwht, 63, 48)).is_err());
    }

    #[test]
    fn imported_frames_are_read_from_the_dmabuf_at_the_callers_stride() {
        use std::io::Write as _;
        use std::os::fd::AsFd;
        // 64x48 I420 at a 96-byte stride, as a camera's buffer would hold it.
        let (w, h, stride) = (64usize, 48usize, 96usize);
        let mut frame = vec![0u8; stride * h * 3 / 2];
        for r in 0..h {
            for c in 0..w {
                frame[r * stride + c] = (c + r) as u8;
            }
        }
        let path = std::env::temp_dir().join(format!("picamd-dmabuf-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&frame)
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);

        let dev = FakeDevice::encoder(FourCc::FWHT, |_| vec![vec![7; 5]]);
        let log = dev.log();
        let mut s = spec(Codec::Fwht, 64, 48);
        s.import_stride = Some(stride as u32);
        let mut enc = M2mEncoder::open(dev, s).unwrap();
        assert_eq!(enc.raw_layout().y_stride, stride);
        for _ in 0..3 {
            let coded = enc
                .encode_imported(file.as_fd(), frame.len() as u32, |_| true)
                .unwrap();
            assert_eq!(coded.data[..], [7; 5]);
        }
        let log = log.lock().unwrap();
        assert!(log.events.contains(&"import raw".to_string()));
        assert_eq!(log.raw_frames.len(), 3);
        assert_eq!(
            log.raw_frames[0], frame,
            "the driver read the caller's bytes"
        );
        // A mapped session refuses dmabufs, and a dmabuf too small for the layout is an error.
        let dev = FakeDevice::encoder(FourCc::FWHT, |_| vec![vec![7; 5]]);
        let mut mapped = M2mEncoder::open(dev, spec(Codec::Fwht, 64, 48)).unwrap();
        assert!(mapped
            .encode_imported(file.as_fd(), frame.len() as u32, |_| true)
            .is_err());
        assert!(matches!(
            enc.encode_imported(file.as_fd(), 100, |_| true),
            Err(M2mError::BadPlanes { .. })
        ));
    }

    #[test]
    fn a_driver_wanting_another_stride_than_the_imported_frames_is_refused() {
        let mut dev = FakeDevice::encoder(FourCc::FWHT, |_| Vec::new());
        dev.stride_align = 128;
        let mut s = spec(Codec::Fwht, 64, 48);
        s.import_stride = Some(64);
        let e = M2mEncoder::open(dev, s).err().unwrap();
        assert!(
            e.to_string()
                .contains("imported frames have 64 bytes a row; the driver wants 128"),
            "{e}"
        );
    }
}
