//! `--list-encoders` and `--encoder-check DEVICE`: what a user (and CI, in the VM with
//! vicodec) runs to see whether a hardware encoder works before pointing a stream at it.
//!
//! The check opens the node for the codec it offers (H.264, else JPEG, else FWHT), encodes
//! frames of the test pattern at the configured size and rate through the M2M module, checks
//! each coded frame (H.264: decoded back with OpenH264 at the right size, starting with an
//! IDR that carries SPS/PPS; JPEG: its header's size; FWHT: vicodec's frame header, magic and
//! size), drains the encoder, and prints per-frame times. `--encoder-check-out PREFIX`
//! writes the coded stream to `PREFIX.coded` and the raw I420 frames fed in to `PREFIX.yuv`,
//! so the stream can be decoded by another tool and compared. `--encoder-check-from
//! /dev/videoN` takes the frames from a V4L2 camera instead, exported as dmabufs
//! (`VIDIOC_EXPBUF`) and imported by the encoder (DMABUF memory): the zero-copy path.

mod capture;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::encode::h264::H264Settings;
use crate::encode::m2m::device::{M2mDevice, V4l2Device};
use crate::encode::m2m::encoder::{M2mEncoder, RawLayout, Spec};
use crate::encode::m2m::h264::has_picture;
use crate::encode::m2m::h264::M2mH264;
use crate::encode::m2m::jpeg::M2mJpeg;
use crate::encode::m2m::{probe_encoders, Codec, EncoderNode};
use crate::frame::{CaptureTime, Yuv420Buffer};
use crate::source::test_pattern::TestPattern;

/// The lines of `--list-encoders`.
pub fn list_encoders() -> Vec<String> {
    let nodes = probe_encoders();
    if nodes.is_empty() {
        return vec![
            "  none: no V4L2 memory-to-memory encoder (software: TurboJPEG, OpenH264)".into(),
        ];
    }
    nodes.iter().map(|n| format!("  {n}")).collect()
}

/// What the check found.
#[derive(Debug)]
pub struct CheckReport {
    pub lines: Vec<String>,
}

/// vicodec's frame header (`struct fwht_cframe_hdr`): magic1, magic2, version, width,
/// height, … in big-endian 32-bit words.
fn fwht_size(data: &[u8]) -> Option<(u32, u32)> {
    let word = |i: usize| {
        data.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    (word(0)? == 0x4f4f_4f4f && word(1)? == 0xffff_ffff).then_some(())?;
    Some((word(3)?, word(4)?))
}

fn raw_bytes(p: &dyn Yuv420Buffer, width: usize, height: usize) -> Vec<u8> {
    let [y, u, v] = p.planes();
    let [ys, us, vs] = p.strides();
    let mut out = Vec::with_capacity(width * height * 3 / 2);
    for r in 0..height {
        out.extend_from_slice(&y[r * ys..r * ys + width]);
    }
    for (plane, stride) in [(u, us), (v, vs)] {
        for r in 0..height.div_ceil(2) {
            out.extend_from_slice(&plane[r * stride..r * stride + width.div_ceil(2)]);
        }
    }
    out
}

/// Where the check's frames come from.
pub enum Frames<'a> {
    /// The test pattern, copied into the encoder's buffers.
    Pattern,
    /// A V4L2 capture device's YU12 frames, handed to the encoder as dmabufs.
    Imported(&'a Path),
}

/// Runs the check on `path`.
#[allow(clippy::too_many_arguments)]
pub fn check(
    path: &Path,
    width: u32,
    height: u32,
    fps: u32,
    frames: u32,
    from: Frames<'_>,
    out: Option<&Path>,
) -> Result<CheckReport, String> {
    let node = EncoderNode::read(path).ok_or_else(|| {
        format!(
            "{}: not a V4L2 memory-to-memory encoder of YU12/NV12 frames (see --list-encoders)",
            path.display()
        )
    })?;
    let codec = [Codec::H264, Codec::Jpeg, Codec::Fwht]
        .into_iter()
        .find(|c| node.codecs.contains(c))
        .expect("a node that encodes something");
    let mut lines = vec![format!("{node}")];
    let pattern = TestPattern::new(width, height, fps);
    let mut files = match out {
        Some(prefix) => {
            let open = |ext: &str| {
                let p = prefix.with_extension(ext);
                std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))
            };
            Some((open("coded")?, open("yuv")?))
        }
        None => None,
    };
    let mut capture = match from {
        Frames::Pattern => None,
        Frames::Imported(device) => Some(capture::ExportingCapture::open(device, width, height)?),
    };
    let mut encoder = match &capture {
        None => Encoder::open(path, codec, width, height, fps)?,
        Some(c) => Encoder::Imported(plain_session(
            path,
            codec,
            (width, height, fps),
            Some(c.format.plane.bytesperline),
        )?),
    };
    lines.push(encoder.describe());
    if let (Some(c), Frames::Imported(device)) = (&capture, &from) {
        lines.push(format!(
            "frames from {} (YU12, {} bytes a line), exported with VIDIOC_EXPBUF and queued to the encoder as dmabufs: not copied",
            device.display(),
            c.format.plane.bytesperline
        ));
    }
    let mut times = Vec::new();
    let mut bytes = 0usize;
    let mut h264_decoder = match codec {
        Codec::H264 => {
            Some(openh264::decoder::Decoder::new().map_err(|e| format!("openh264: {e}"))?)
        }
        _ => None,
    };
    for seq in 0..frames as u64 {
        let (coded, raw) = match &mut capture {
            None => {
                let picture = pattern.render(seq, CaptureTime::now());
                let started = Instant::now();
                let coded = encoder.encode(&picture, seq)?;
                times.push(started.elapsed());
                (coded, raw_bytes(&picture, width as usize, height as usize))
            }
            Some(c) => {
                let index = c.next(Duration::from_secs(2))?;
                let (fd, len) = c.dmabuf(index);
                let started = Instant::now();
                let Encoder::Imported(e) = &mut encoder else {
                    unreachable!("an importing session for captured frames")
                };
                let coded = e
                    .encode_imported(fd, len, |d| codec != Codec::H264 || has_picture(d))
                    .map_err(|e| e.to_string())?;
                times.push(started.elapsed());
                let layout = RawLayout::of(&c.format, height)
                    .ok_or("the capture's YU12 layout cannot hold the picture")?;
                let raw = tight_i420(c.data(index), &layout, width as usize, height as usize);
                c.requeue(index)?;
                (coded.data, raw)
            }
        };
        bytes += coded.len();
        check_coded(codec, &coded, width, height, seq, h264_decoder.as_mut())?;
        if let Some((c, y)) = &mut files {
            c.write_all(&coded).map_err(|e| e.to_string())?;
            y.write_all(&raw).map_err(|e| e.to_string())?;
        }
    }
    let drained = encoder.drain()?;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let p90 = times.get(times.len() * 9 / 10).copied().unwrap_or_default();
    lines.push(format!(
        "{frames} frames of {width}x{height} encoded to {codec}, each checked: {:.2} ms median, {:.2} ms p90, {:.2} ms max a frame; {bytes} bytes ({} a frame)",
        ms(median),
        ms(p90),
        ms(times.last().copied().unwrap_or_default()),
        bytes / frames.max(1) as usize
    ));
    lines.push(format!(
        "drained: V4L2_ENC_CMD_STOP, {drained} coded buffers after it, the last one flagged LAST"
    ));
    Ok(CheckReport { lines })
}

/// Checks one coded frame: its header's size (JPEG, FWHT), or that it decodes to a picture
/// of the right size (H.264; the first unit must).
fn check_coded(
    codec: Codec,
    coded: &[u8],
    width: u32,
    height: u32,
    seq: u64,
    h264: Option<&mut openh264::decoder::Decoder>,
) -> Result<(), String> {
    let what = format!("frame {seq}");
    match codec {
        Codec::Fwht => match fwht_size(coded) {
            Some(size) if size == (width, height) => Ok(()),
            other => Err(format!(
                "{what}: not an FWHT frame of {width}x{height}: {other:?}"
            )),
        },
        Codec::Jpeg => {
            let h = turbojpeg::read_header(coded).map_err(|e| format!("{what}: {e}"))?;
            if (h.width, h.height) != (width as usize, height as usize) {
                return Err(format!("{what}: a JPEG of {}x{}", h.width, h.height));
            }
            Ok(())
        }
        Codec::H264 => {
            use openh264::formats::YUVSource;
            let d = h264.expect("a decoder for H.264");
            let picture = d.decode(coded).map_err(|e| format!("{what}: {e}"))?;
            if seq == 0 && picture.is_none() {
                return Err(format!(
                    "{what}: the first unit does not decode to a picture"
                ));
            }
            match picture {
                Some(p) if p.dimensions() != (width as usize, height as usize) => {
                    Err(format!("{what}: decodes to {:?}", p.dimensions()))
                }
                _ => Ok(()),
            }
        }
    }
}

/// A YU12 buffer at the driver's layout as tightly packed I420.
fn tight_i420(buf: &[u8], layout: &RawLayout, width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(width * height * 3 / 2);
    for r in 0..height {
        let at = r * layout.y_stride;
        out.extend_from_slice(&buf[at..at + width]);
    }
    for offset in [layout.u_offset, layout.v_offset] {
        for r in 0..height.div_ceil(2) {
            let at = offset + r * layout.c_stride;
            out.extend_from_slice(&buf[at..at + width.div_ceil(2)]);
        }
    }
    out
}

/// A session without codec controls (FWHT, or any codec fed dmabufs) on `path`, for
/// `(width, height, fps)`; importing frames `import_stride` bytes a row when given.
fn plain_session(
    path: &Path,
    codec: Codec,
    (width, height, fps): (u32, u32, u32),
    import_stride: Option<u32>,
) -> Result<M2mEncoder<V4l2Device>, String> {
    let dev = V4l2Device::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec = Spec {
        codec,
        width,
        height,
        fps,
        controls: Vec::new(),
        import_stride,
    };
    M2mEncoder::open(dev, spec).map_err(|e| e.to_string())
}

/// The codec-specific session the check drives.
enum Encoder {
    H264(M2mH264),
    Jpeg(M2mJpeg),
    Plain(M2mEncoder<V4l2Device>),
    /// A session importing dmabufs (`--encoder-check-from`).
    Imported(M2mEncoder<V4l2Device>),
}

impl Encoder {
    fn open(path: &Path, codec: Codec, width: u32, height: u32, fps: u32) -> Result<Self, String> {
        let err = |e: crate::encode::m2m::M2mError| e.to_string();
        Ok(match codec {
            Codec::H264 => Encoder::H264(
                M2mH264::open(
                    path,
                    H264Settings {
                        width,
                        height,
                        fps,
                        bitrate: crate::encode::h264::default_bitrate(width, height, fps),
                        gop: fps * 2,
                    },
                )
                .map_err(err)?,
            ),
            Codec::Jpeg => Encoder::Jpeg(M2mJpeg::open(path, width, height, fps, 80).map_err(err)?),
            Codec::Fwht => Encoder::Plain(plain_session(path, codec, (width, height, fps), None)?),
        })
    }

    fn describe(&self) -> String {
        let (enc_info, raw, coded, refused) = match self {
            Encoder::H264(e) => info(e.encoder()),
            Encoder::Jpeg(e) => info(e.encoder()),
            Encoder::Plain(e) | Encoder::Imported(e) => info(e),
        };
        format!(
            "{enc_info}: raw {} at {} bytes a line, {} rows, {} bytes a frame; coded {} in buffers of {} bytes{}",
            raw.fourcc,
            raw.y_stride,
            raw.rows,
            raw.bytes,
            coded.fourcc,
            coded.plane.sizeimage,
            if refused.is_empty() {
                String::new()
            } else {
                format!("; refused: {}", refused.join("; "))
            }
        )
    }

    fn encode(&mut self, picture: &dyn Yuv420Buffer, seq: u64) -> Result<bytes::Bytes, String> {
        match self {
            Encoder::H264(e) => e
                .encode(picture, seq, CaptureTime::now(), Instant::now())
                .map_err(|e| e.to_string())?
                .map(|u| u.data)
                .ok_or_else(|| format!("frame {seq}: no H.264 unit")),
            Encoder::Jpeg(e) => {
                let (w, h) = e.size();
                e.encode(picture, w, h, 80).map_err(|e| e.to_string())
            }
            Encoder::Plain(e) => {
                let (w, h) = (e.spec().width, e.spec().height);
                e.encode(picture, w, h, |_| true)
                    .map(|c| c.data)
                    .map_err(|e| e.to_string())
            }
            Encoder::Imported(_) => Err("an importing session takes dmabufs".into()),
        }
    }

    fn drain(&mut self) -> Result<usize, String> {
        let r = match self {
            Encoder::H264(e) => e.drain(),
            Encoder::Jpeg(e) => e.drain(),
            Encoder::Plain(e) | Encoder::Imported(e) => e.drain(),
        };
        r.map(|v| v.len()).map_err(|e| e.to_string())
    }
}

fn info<D: M2mDevice>(
    e: &M2mEncoder<D>,
) -> (
    String,
    crate::encode::m2m::encoder::RawLayout,
    crate::encode::m2m::Format,
    Vec<String>,
) {
    let i = e.device().info();
    (
        format!(
            "{} ({}, {})",
            i.path,
            i.driver,
            if i.mplane {
                "multi-planar"
            } else {
                "single-planar"
            }
        ),
        e.raw_layout(),
        e.coded_format().clone(),
        e.refused().to_vec(),
    )
}
