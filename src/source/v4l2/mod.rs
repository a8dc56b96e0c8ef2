//! The V4L2 source: USB webcams (UVC) and anything else with a Video4Linux capture node.
//!
//! The device is opened by [`Source::run`], never by [`V4l2Source::new`], so a camera that is
//! missing at start (or unplugged later) is a failure the supervisor retries with backoff.
//! Each run opens the device, negotiates a format ([`negotiate`]: MJPEG first, passed through
//! as JPEG; else YUYV, NV12 or YU12, converted to I420 in pooled buffers), streams through
//! four memory-mapped buffers and fails with a reason on any device error: `ENODEV` when the
//! camera is unplugged, "stalled" when no usable frame arrives for max(5 frame intervals, 2 s).
//!
//! While nobody watches, [`SourceContext::wait_for_demand`] blocks the source thread; a small
//! watcher thread then closes the camera (its LED goes off, the USB bandwidth is freed) as
//! soon as frames are no longer wanted (the pipeline's linger after the last viewer has
//! passed), and the source reopens it when demand returns.
//! Frames that sat in the driver's queue during a shorter wait are discarded, so a frame
//! handed on is never older than the demand it answers.
//!
//! Camera controls ([`V4l2Controls`]) map onto the standard V4L2 user and camera controls the
//! device reports; see [`V4l2Controls`] for the mapping.

use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use v4l::buffer::{Flags as BufferFlags, Type as BufferType};
use v4l::capability::Flags as CapFlags;
use v4l::control::{Control, Value as ControlValue};
use v4l::format::{Format, FourCC};
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::prelude::{Device, MmapStream};
use v4l::v4l_sys;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::Fraction;

use super::controls::{
    check, AfMode, AwbMode, CameraControls, ControlError, Controls, ExposureMode, InvalidControl,
    ALL_CONTROLS,
};
use super::i420::{deinterleave_uv, BufferPool};
use super::jpeg;
use super::{Demand, Source, SourceContext, SourceError};
use crate::frame::{CaptureTime, Frame, Payload, SourceInfo};

/// Memory-mapped buffers shared with the driver.
const STREAM_BUFFERS: u32 = 4;
/// No usable frame for this many frame intervals (but at least [`STALL_MIN`]) is a stall.
const STALL_INTERVALS: u32 = 5;
const STALL_MIN: Duration = Duration::from_secs(2);
/// How often the watcher looks at a blocked source thread.
const IDLE_POLL: Duration = Duration::from_millis(150);
/// A frame dequeued faster than this right after a wait was already waiting in the queue.
const STALE_READY: Duration = Duration::from_millis(2);
/// How long [`V4l2Controls::apply`] waits for the source thread to write new values.
const APPLY_WAIT: Duration = Duration::from_secs(1);

const ENODEV: i32 = 19;

// ---------------------------------------------------------------------------------------------
// Format negotiation
// ---------------------------------------------------------------------------------------------

/// The pixel formats picamd takes from a device, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PixelFormat {
    /// `MJPG` (or `JPEG`): passed through without re-encoding.
    Mjpeg,
    /// `YUYV`: packed 4:2:2, converted to I420.
    Yuyv,
    /// `NV12`: Y plane, then interleaved U/V at half resolution.
    Nv12,
    /// `YU12`: I420 itself (possibly with padded rows).
    I420,
}

impl PixelFormat {
    pub fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        match &fourcc {
            b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
            b"YUYV" => Some(PixelFormat::Yuyv),
            b"NV12" => Some(PixelFormat::Nv12),
            b"YU12" => Some(PixelFormat::I420),
            _ => None,
        }
    }

    /// Raw formats are converted to I420 and need even dimensions.
    pub fn is_raw(self) -> bool {
        self != PixelFormat::Mjpeg
    }
}

/// A frame interval in seconds per frame, as V4L2 gives it (`num / den`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub num: u32,
    pub den: u32,
}

impl Interval {
    pub fn from_fps(fps: u32) -> Self {
        Interval {
            num: 1,
            den: fps.max(1),
        }
    }

    pub fn fps(self) -> f64 {
        if self.num == 0 {
            0.0
        } else {
            f64::from(self.den) / f64::from(self.num)
        }
    }

    pub fn duration(self) -> Option<Duration> {
        (self.num > 0 && self.den > 0)
            .then(|| Duration::from_secs_f64(f64::from(self.num) / f64::from(self.den)))
    }

    /// `self <= other`, compared exactly.
    fn not_longer_than(self, other: Interval) -> bool {
        u64::from(self.num) * u64::from(other.den) <= u64::from(other.num) * u64::from(self.den)
    }
}

/// One frame size a device offers for a format, with the frame intervals it offers there.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeOffer {
    pub width: u32,
    pub height: u32,
    /// Empty when the device does not enumerate intervals.
    pub intervals: Vec<Interval>,
}

/// One pixel format a device offers.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatOffer {
    pub fourcc: [u8; 4],
    pub description: String,
    /// Empty when the device does not enumerate sizes (then `S_FMT` picks one).
    pub sizes: Vec<SizeOffer>,
    /// The device gave a stepwise (or continuous) range; `sizes` holds samples of it.
    pub stepwise: bool,
}

/// What [`negotiate`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub fourcc: [u8; 4],
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// `None` when the device listed no intervals for the size.
    pub interval: Option<Interval>,
}

/// Picks a format, size and frame interval from what a device offers.
///
/// Format: MJPEG if offered, else YUYV, NV12, YU12 (the first offered of the best kind).
/// Size: the requested one if offered, else the smallest (by area) at least as large in both
/// dimensions, else the largest; raw formats only consider even sizes. Interval: the one
/// whose rate is closest to `fps`, the faster one on a tie. `None` if nothing is usable.
pub fn negotiate(offers: &[FormatOffer], width: u32, height: u32, fps: u32) -> Option<Choice> {
    let (format, offer) = offers
        .iter()
        .filter_map(|o| PixelFormat::from_fourcc(o.fourcc).map(|f| (f, o)))
        .filter(|(f, o)| o.sizes.is_empty() || o.sizes.iter().any(|s| size_usable(*f, s)))
        .min_by_key(|(f, _)| *f)?;
    if offer.sizes.is_empty() {
        return Some(Choice {
            fourcc: offer.fourcc,
            format,
            width,
            height,
            interval: None,
        });
    }
    let usable: Vec<&SizeOffer> = offer
        .sizes
        .iter()
        .filter(|s| size_usable(format, s))
        .collect();
    let size = pick_size(&usable, width, height)?;
    Some(Choice {
        fourcc: offer.fourcc,
        format,
        width: size.width,
        height: size.height,
        interval: pick_interval(&size.intervals, fps),
    })
}

fn size_usable(format: PixelFormat, s: &SizeOffer) -> bool {
    s.width > 0 && s.height > 0 && (!format.is_raw() || (s.width % 2 == 0 && s.height % 2 == 0))
}

fn pick_size<'a>(sizes: &[&'a SizeOffer], width: u32, height: u32) -> Option<&'a SizeOffer> {
    if let Some(exact) = sizes
        .iter()
        .find(|s| s.width == width && s.height == height)
    {
        return Some(exact);
    }
    let key = |s: &&&SizeOffer| (u64::from(s.width) * u64::from(s.height), s.width);
    sizes
        .iter()
        .filter(|s| s.width >= width && s.height >= height)
        .min_by_key(key)
        .or_else(|| sizes.iter().max_by_key(key))
        .copied()
}

fn pick_interval(intervals: &[Interval], fps: u32) -> Option<Interval> {
    let want = f64::from(fps);
    intervals
        .iter()
        .filter(|i| i.num > 0 && i.den > 0)
        .min_by(|a, b| {
            let (da, db) = ((a.fps() - want).abs(), (b.fps() - want).abs());
            da.total_cmp(&db).then(b.fps().total_cmp(&a.fps()))
        })
        .copied()
}

/// Sample sizes of a stepwise (or continuous) size range: the requested size fitted into the
/// range and onto its steps, and the range's smallest and largest sizes.
pub fn stepwise_sizes(
    min: (u32, u32),
    max: (u32, u32),
    step: (u32, u32),
    want: Option<(u32, u32)>,
) -> Vec<(u32, u32)> {
    let (min, max) = ((min.0.min(max.0), min.1.min(max.1)), max);
    let mut out = vec![min, max];
    if let Some((w, h)) = want {
        let fitted = (
            fit_step(w, min.0, max.0, step.0),
            fit_step(h, min.1, max.1, step.1),
        );
        out.insert(0, fitted);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `v` clamped into `min..=max` and moved to the nearest `min + k * step` within the range.
fn fit_step(v: u32, min: u32, max: u32, step: u32) -> u32 {
    let step = step.max(1);
    let v = v.clamp(min, max.max(min));
    let below = min + (v - min) / step * step;
    let above = below.saturating_add(step);
    if above <= max && above - v < v - below {
        above
    } else {
        below
    }
}

/// Sample intervals of a stepwise interval range: its ends and `1 / fps` when inside.
pub fn stepwise_intervals(min: Interval, max: Interval, fps: Option<u32>) -> Vec<Interval> {
    let mut out = vec![min, max];
    if let Some(fps) = fps {
        let want = Interval::from_fps(fps);
        if min.not_longer_than(want) && want.not_longer_than(max) {
            out.push(want);
        }
    }
    out.retain(|i| i.num > 0 && i.den > 0);
    out.dedup();
    out
}

// ---------------------------------------------------------------------------------------------
// Conversion to I420
// ---------------------------------------------------------------------------------------------

/// Why a raw frame could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{width}x{height}: dimensions must be even and non-zero")]
    BadSize { width: usize, height: usize },
    #[error("row stride {stride} is too small for {width} pixels")]
    Stride { stride: usize, width: usize },
    #[error("frame has {have} bytes, {need} needed (truncated)")]
    ShortSource { have: usize, need: usize },
    #[error("destination planes are too small")]
    ShortDestination,
}

fn check_geometry(
    width: usize,
    height: usize,
    stride: usize,
    min_stride: usize,
    dst: &[&mut [u8]; 3],
) -> Result<(), ConvertError> {
    if width == 0 || height == 0 || width % 2 != 0 || height % 2 != 0 {
        return Err(ConvertError::BadSize { width, height });
    }
    if stride < min_stride {
        return Err(ConvertError::Stride { stride, width });
    }
    let chroma = (width / 2) * (height / 2);
    if dst[0].len() < width * height || dst[1].len() < chroma || dst[2].len() < chroma {
        return Err(ConvertError::ShortDestination);
    }
    Ok(())
}

fn ensure_len(src: &[u8], need: usize) -> Result<(), ConvertError> {
    if src.len() < need {
        Err(ConvertError::ShortSource {
            have: src.len(),
            need,
        })
    } else {
        Ok(())
    }
}

fn avg(a: u8, b: u8) -> u8 {
    ((u16::from(a) + u16::from(b) + 1) >> 1) as u8
}

/// Packed YUYV 4:2:2 (`Y0 U Y1 V` per pixel pair, rows `stride` bytes apart) to the three
/// planes of a contiguous I420 frame (strides `width`, `width / 2`, `width / 2`). Chroma is
/// the average of each pair of rows.
pub fn yuyv_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    check_geometry(width, height, stride, 2 * width, &dst)?;
    ensure_len(src, stride * (height - 1) + 2 * width)?;
    let [y, u, v] = dst;
    let cw = width / 2;
    for row in 0..height / 2 {
        let top = &src[2 * row * stride..][..2 * width];
        let bottom = &src[(2 * row + 1) * stride..][..2 * width];
        let (y_top, y_bottom) = y[2 * row * width..][..2 * width].split_at_mut(width);
        let u_row = &mut u[row * cw..][..cw];
        let v_row = &mut v[row * cw..][..cw];
        let pairs = top
            .chunks_exact(4)
            .zip(bottom.chunks_exact(4))
            .zip(y_top.chunks_exact_mut(2).zip(y_bottom.chunks_exact_mut(2)))
            .zip(u_row.iter_mut().zip(v_row.iter_mut()));
        for (((t, b), (yt, yb)), (uo, vo)) in pairs {
            yt[0] = t[0];
            yt[1] = t[2];
            yb[0] = b[0];
            yb[1] = b[2];
            *uo = avg(t[1], b[1]);
            *vo = avg(t[3], b[3]);
        }
    }
    Ok(())
}

/// Single-plane NV12 (a Y plane of `height` rows `stride` bytes apart, then the interleaved
/// U/V plane with the same stride) to contiguous I420 planes.
pub fn nv12_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    check_geometry(width, height, stride, width, &dst)?;
    let uv_at = stride * height;
    ensure_len(src, uv_at + stride * (height / 2 - 1) + width)?;
    let [y, u, v] = dst;
    copy_plane(src, stride, y, width, height);
    deinterleave_uv(&src[uv_at..], stride, (width / 2, height / 2), u, v);
    Ok(())
}

/// Single-plane YU12 (I420 with rows `stride` bytes apart for Y and `stride / 2` for U and V,
/// as V4L2 lays it out) to contiguous I420 planes.
pub fn yu12_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    check_geometry(width, height, stride, width, &dst)?;
    let cs = stride / 2;
    let (cw, ch) = (width / 2, height / 2);
    let u_at = stride * height;
    let v_at = u_at + cs * ch;
    ensure_len(src, v_at + cs * (ch - 1) + cw)?;
    let [y, u, v] = dst;
    copy_plane(src, stride, y, width, height);
    copy_plane(&src[u_at..], cs, u, cw, ch);
    copy_plane(&src[v_at..], cs, v, cw, ch);
    Ok(())
}

/// Copies `rows` rows of `width` bytes from `src` (rows `stride` apart) into packed `dst`.
/// The caller has checked the lengths.
fn copy_plane(src: &[u8], stride: usize, dst: &mut [u8], width: usize, rows: usize) {
    if stride == width {
        dst[..width * rows].copy_from_slice(&src[..width * rows]);
        return;
    }
    for (row, out) in dst[..width * rows].chunks_exact_mut(width).enumerate() {
        out.copy_from_slice(&src[row * stride..][..width]);
    }
}

fn convert(
    format: PixelFormat,
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    match format {
        PixelFormat::Yuyv => yuyv_to_i420(src, stride, width, height, dst),
        PixelFormat::Nv12 => nv12_to_i420(src, stride, width, height, dst),
        PixelFormat::I420 => yu12_to_i420(src, stride, width, height, dst),
        PixelFormat::Mjpeg => Err(ConvertError::BadSize { width, height }),
    }
}

// ---------------------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------------------

const CID_BRIGHTNESS: u32 = v4l_sys::V4L2_CID_BRIGHTNESS;
const CID_CONTRAST: u32 = v4l_sys::V4L2_CID_CONTRAST;
const CID_SATURATION: u32 = v4l_sys::V4L2_CID_SATURATION;
const CID_SHARPNESS: u32 = v4l_sys::V4L2_CID_SHARPNESS;
const CID_AUTO_WHITE_BALANCE: u32 = v4l_sys::V4L2_CID_AUTO_WHITE_BALANCE;
const CID_EXPOSURE_AUTO: u32 = v4l_sys::V4L2_CID_EXPOSURE_AUTO;
const CID_EXPOSURE_ABSOLUTE: u32 = v4l_sys::V4L2_CID_EXPOSURE_ABSOLUTE;
const CID_FOCUS_AUTO: u32 = v4l_sys::V4L2_CID_FOCUS_AUTO;
const CID_FOCUS_ABSOLUTE: u32 = v4l_sys::V4L2_CID_FOCUS_ABSOLUTE;

/// Menu values of `V4L2_CID_EXPOSURE_AUTO`.
const EXPOSURE_AUTO: i64 = v4l_sys::v4l2_exposure_auto_type_V4L2_EXPOSURE_AUTO as i64;
const EXPOSURE_MANUAL: i64 = v4l_sys::v4l2_exposure_auto_type_V4L2_EXPOSURE_MANUAL as i64;
const EXPOSURE_APERTURE_PRIORITY: i64 =
    v4l_sys::v4l2_exposure_auto_type_V4L2_EXPOSURE_APERTURE_PRIORITY as i64;

/// An integer control's range as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlRange {
    pub min: i64,
    pub max: i64,
    pub step: i64,
    pub default: i64,
}

impl CtrlRange {
    /// `v` rounded onto the control's steps within `min..=max`.
    pub fn snap(self, v: f64) -> i64 {
        let (min, max) = (self.min, self.max.max(self.min));
        let step = self.step.max(1);
        let v = if v.is_finite() {
            v.clamp(min as f64, max as f64)
        } else {
            self.default as f64
        };
        let k = ((v - min as f64) / step as f64).round().max(0.0);
        let mut out = min.saturating_add((k as i64).saturating_mul(step));
        while out > max {
            out -= step;
        }
        out.clamp(min, max)
    }

    /// Maps a picamd value with a neutral point onto the device: `low` → minimum,
    /// `neutral` → the device default, `high` (and above) → maximum, linear on each side.
    pub fn map_around_default(self, value: f32, low: f32, neutral: f32, high: f32) -> i64 {
        let (v, low, neutral, high) = (
            f64::from(value),
            f64::from(low),
            f64::from(neutral),
            f64::from(high),
        );
        let (min, max, def) = (self.min as f64, self.max as f64, self.default as f64);
        let target = if v >= neutral {
            def + ((v - neutral) / (high - neutral)).min(1.0) * (max - def)
        } else {
            def - ((neutral - v) / (neutral - low)).min(1.0) * (def - min)
        };
        self.snap(target)
    }

    /// Maps `low..=high` linearly onto `min..=max`.
    pub fn map_linear(self, value: f32, low: f32, high: f32) -> i64 {
        let t = ((f64::from(value) - f64::from(low)) / f64::from(high - low)).clamp(0.0, 1.0);
        self.snap(self.min as f64 + t * (self.max - self.min) as f64)
    }
}

/// Values of `V4L2_CID_EXPOSURE_AUTO` for picamd's two exposure modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExposureModes {
    /// `V4L2_EXPOSURE_AUTO`, or `V4L2_EXPOSURE_APERTURE_PRIORITY` (what UVC webcams call auto).
    pub auto: i64,
    pub manual: i64,
}

/// The standard controls a device reported when it was last opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceControls {
    pub brightness: Option<CtrlRange>,
    pub contrast: Option<CtrlRange>,
    pub saturation: Option<CtrlRange>,
    pub sharpness: Option<CtrlRange>,
    pub exposure_modes: Option<ExposureModes>,
    pub exposure_absolute: Option<CtrlRange>,
    pub focus_auto: Option<CtrlRange>,
    pub focus_absolute: Option<CtrlRange>,
    pub white_balance_auto: Option<CtrlRange>,
}

impl DeviceControls {
    /// picamd control names this device supports, in the order of [`ALL_CONTROLS`].
    pub fn names(&self) -> Vec<&'static str> {
        let has = |name: &str| match name {
            "autofocus" => self.focus_auto.is_some(),
            "lens_position" => self.focus_absolute.is_some(),
            "exposure" => self.exposure_modes.is_some(),
            "exposure_time_us" => self.exposure_absolute.is_some(),
            "awb" => self.white_balance_auto.is_some(),
            "brightness" => self.brightness.is_some(),
            "contrast" => self.contrast.is_some(),
            "saturation" => self.saturation.is_some(),
            "sharpness" => self.sharpness.is_some(),
            _ => false,
        };
        ALL_CONTROLS.iter().copied().filter(|n| has(n)).collect()
    }

    /// Reads the controls of an open device.
    fn query(dev: &Device) -> Self {
        let fd = dev.handle().fd();
        let exposure_modes = query_ctrl(fd, CID_EXPOSURE_AUTO).and_then(|r| {
            let has = |v: i64| (r.min..=r.max).contains(&v) && menu_has(fd, CID_EXPOSURE_AUTO, v);
            let auto = [EXPOSURE_APERTURE_PRIORITY, EXPOSURE_AUTO]
                .into_iter()
                .find(|v| has(*v))?;
            has(EXPOSURE_MANUAL).then_some(ExposureModes {
                auto,
                manual: EXPOSURE_MANUAL,
            })
        });
        DeviceControls {
            brightness: query_ctrl(fd, CID_BRIGHTNESS),
            contrast: query_ctrl(fd, CID_CONTRAST),
            saturation: query_ctrl(fd, CID_SATURATION),
            sharpness: query_ctrl(fd, CID_SHARPNESS),
            exposure_modes,
            exposure_absolute: query_ctrl(fd, CID_EXPOSURE_ABSOLUTE),
            focus_auto: query_ctrl(fd, CID_FOCUS_AUTO),
            focus_absolute: query_ctrl(fd, CID_FOCUS_ABSOLUTE),
            white_balance_auto: query_ctrl(fd, CID_AUTO_WHITE_BALANCE),
        }
    }
}

/// `VIDIOC_QUERYCTRL` for one control: its range if the device has it and it is writable.
/// (v4l's own `query_controls` enumerates every control and panics on types it does not
/// know, such as the rectangle controls of newer UVC cameras; one known ID at a time is safe.)
fn query_ctrl(fd: std::os::raw::c_int, id: u32) -> Option<CtrlRange> {
    // SAFETY: v4l2_queryctrl is plain data for which all-zero bytes are valid.
    let mut q: v4l_sys::v4l2_queryctrl = unsafe { std::mem::zeroed() };
    q.id = id;
    // SAFETY: `q` is a properly sized, writable v4l2_queryctrl that outlives the call, as
    // VIDIOC_QUERYCTRL requires.
    let res = unsafe {
        v4l::v4l2::ioctl(
            fd,
            v4l::v4l2::vidioc::VIDIOC_QUERYCTRL,
            &mut q as *mut _ as *mut std::os::raw::c_void,
        )
    };
    let unusable = v4l_sys::V4L2_CTRL_FLAG_DISABLED | v4l_sys::V4L2_CTRL_FLAG_READ_ONLY;
    if res.is_err() || q.id != id || q.flags & unusable != 0 {
        return None;
    }
    Some(CtrlRange {
        min: i64::from(q.minimum),
        max: i64::from(q.maximum),
        step: i64::from(q.step),
        default: i64::from(q.default_value),
    })
}

/// `VIDIOC_QUERYMENU`: whether menu control `id` has an entry at `index`.
fn menu_has(fd: std::os::raw::c_int, id: u32, index: i64) -> bool {
    let Ok(index) = u32::try_from(index) else {
        return false;
    };
    // SAFETY: v4l2_querymenu is plain data for which all-zero bytes are valid.
    let mut q: v4l_sys::v4l2_querymenu = unsafe { std::mem::zeroed() };
    q.id = id;
    q.index = index;
    // SAFETY: `q` is a properly sized, writable v4l2_querymenu that outlives the call.
    unsafe {
        v4l::v4l2::ioctl(
            fd,
            v4l::v4l2::vidioc::VIDIOC_QUERYMENU,
            &mut q as *mut _ as *mut std::os::raw::c_void,
        )
    }
    .is_ok()
}

/// The V4L2 writes (name, control ID, value) that realize `want` on a device, in a safe
/// order: modes before the values they unlock.
pub fn control_writes(caps: &DeviceControls, want: &Controls) -> Vec<(&'static str, u32, i64)> {
    let mut out = Vec::new();
    if let (Some(mode), Some(m)) = (want.exposure, caps.exposure_modes) {
        let v = match mode {
            ExposureMode::Auto => m.auto,
            ExposureMode::Manual => m.manual,
        };
        out.push(("exposure", CID_EXPOSURE_AUTO, v));
    }
    if want.exposure != Some(ExposureMode::Auto) {
        if let (Some(us), Some(r)) = (want.exposure_time_us, caps.exposure_absolute) {
            // V4L2 exposure is in units of 100 µs.
            out.push((
                "exposure_time_us",
                CID_EXPOSURE_ABSOLUTE,
                r.snap(f64::from(us) / 100.0).max(r.min),
            ));
        }
    }
    if let (Some(af), Some(_)) = (want.autofocus, caps.focus_auto) {
        match af {
            AfMode::Continuous => out.push(("autofocus", CID_FOCUS_AUTO, 1)),
            AfMode::Manual => out.push(("autofocus", CID_FOCUS_AUTO, 0)),
            AfMode::Auto => {}
        }
    }
    if want.autofocus != Some(AfMode::Continuous) {
        if let (Some(lp), Some(r)) = (want.lens_position, caps.focus_absolute) {
            out.push((
                "lens_position",
                CID_FOCUS_ABSOLUTE,
                r.map_linear(lp, 0.0, 32.0),
            ));
        }
    }
    if let (Some(AwbMode::Auto), Some(_)) = (want.awb, caps.white_balance_auto) {
        out.push(("awb", CID_AUTO_WHITE_BALANCE, 1));
    }
    let levels = [
        (
            "brightness",
            CID_BRIGHTNESS,
            want.brightness,
            caps.brightness,
            -1.0,
        ),
        ("contrast", CID_CONTRAST, want.contrast, caps.contrast, 0.0),
        (
            "saturation",
            CID_SATURATION,
            want.saturation,
            caps.saturation,
            0.0,
        ),
        (
            "sharpness",
            CID_SHARPNESS,
            want.sharpness,
            caps.sharpness,
            0.0,
        ),
    ];
    for (name, id, value, range, low) in levels {
        if let (Some(v), Some(r)) = (value, range) {
            // Brightness: -1 → min, 0 → default, 1 → max. The others: 0 → min, 1 (neutral)
            // → default, 2 and above → max.
            let neutral = low + 1.0;
            out.push((
                name,
                id,
                r.map_around_default(v, low, neutral, neutral + 1.0),
            ));
        }
    }
    out
}

/// Values of requested controls this camera can realize, with the reason for each it cannot.
fn unrealizable(c: &Controls, supported: &[&'static str]) -> Vec<String> {
    let mut out: Vec<String> = c
        .names()
        .into_iter()
        .filter(|n| !supported.contains(n))
        .map(|n| format!("{n} (not supported by this camera)"))
        .collect();
    if c.autofocus == Some(AfMode::Auto) {
        out.push("autofocus \"auto\" (one-shot focus is not available over V4L2; use \"continuous\" or \"manual\")".into());
    }
    if c.awb.is_some_and(|m| m != AwbMode::Auto) {
        out.push(
            "awb other than \"auto\" (V4L2 cameras offer automatic white balance only)".into(),
        );
    }
    out
}

/// Removes from `c` what this camera cannot realize.
fn retain_realizable(c: &mut Controls, supported: &[&'static str]) {
    c.retain(|n| supported.contains(&n));
    if c.autofocus == Some(AfMode::Auto) {
        c.autofocus = None;
    }
    if c.awb.is_some_and(|m| m != AwbMode::Auto) {
        c.awb = None;
    }
}

/// The controls of a [`V4l2Source`]: created with the source, valid across restarts and
/// replugs. Values are kept and written again every time the device is opened.
///
/// Mapping onto the standard V4L2 controls, where the device reports them (`VIDIOC_QUERYCTRL`):
/// `brightness` −1‥1 onto min‥default‥max; `contrast`, `saturation`, `sharpness` 0 → min,
/// 1 → default, 2 and above → max (linear in between); `exposure` auto/manual →
/// `EXPOSURE_AUTO` (aperture priority, or auto) / manual; `exposure_time_us` →
/// `EXPOSURE_ABSOLUTE` in 100 µs units; `autofocus` continuous/manual → `FOCUS_AUTO` 1/0;
/// `lens_position` 0‥32 dioptres linearly onto `FOCUS_ABSOLUTE` min‥max (the unit is
/// device-defined; larger is closer); `awb` auto → `AUTO_WHITE_BALANCE`. Analogue gain, HDR,
/// white-balance presets and one-shot autofocus are not supported.
pub struct V4l2Controls {
    state: Mutex<ControlState>,
    changed: Condvar,
}

struct ControlState {
    /// Everything requested so far (merged).
    requested: Controls,
    /// Bumped by each accepted request; `applied` catches up when the source writes.
    generation: u64,
    applied: u64,
    /// Outcome of writing generation `applied`.
    result: Result<(), String>,
    /// The device's controls as of its last opening; `None` until it was opened once.
    device: Option<DeviceControls>,
    /// The device is open now, so requests are written by the source thread.
    open: bool,
}

impl V4l2Controls {
    fn new(initial: Controls) -> Self {
        V4l2Controls {
            state: Mutex::new(ControlState {
                requested: initial,
                generation: 0,
                applied: 0,
                result: Ok(()),
                device: None,
                open: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// The device was opened: remember its controls and write every requested value.
    fn opened(&self, caps: DeviceControls, set: impl FnMut(u32, i64) -> io::Result<()>) {
        let mut st = lock(&self.state);
        let supported = caps.names();
        let dropped = unrealizable(&st.requested, &supported);
        if !dropped.is_empty() {
            tracing::warn!(
                "camera controls not applied on this camera: {}",
                dropped.join(", ")
            );
            retain_realizable(&mut st.requested, &supported);
        }
        tracing::debug!(supported = ?supported, "camera controls");
        let result = write_all(&caps, &st.requested, set);
        if let Err(e) = &result {
            tracing::warn!("camera refused some controls: {e}");
        }
        st.device = Some(caps);
        st.open = true;
        st.applied = st.generation;
        st.result = result;
        self.changed.notify_all();
    }

    /// The device was closed; requests are kept for the next opening.
    fn closed(&self) {
        lock(&self.state).open = false;
        self.changed.notify_all();
    }

    /// Writes requests made since the last write (source thread, between frames).
    fn write_pending(&self, set: impl FnMut(u32, i64) -> io::Result<()>) {
        let mut st = lock(&self.state);
        if st.applied == st.generation {
            return;
        }
        let Some(caps) = st.device.clone() else {
            return;
        };
        let result = write_all(&caps, &st.requested, set);
        if let Err(e) = &result {
            tracing::warn!("camera refused controls: {e}");
        }
        st.applied = st.generation;
        st.result = result;
        self.changed.notify_all();
    }
}

fn write_all(
    caps: &DeviceControls,
    want: &Controls,
    mut set: impl FnMut(u32, i64) -> io::Result<()>,
) -> Result<(), String> {
    let errors: Vec<String> = control_writes(caps, want)
        .into_iter()
        .filter_map(|(name, id, value)| {
            set(id, value)
                .err()
                .map(|e| format!("{name} (V4L2 value {value}): {}", describe_io(&e)))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

impl CameraControls for V4l2Controls {
    /// Empty until the device has been opened once.
    fn supported(&self) -> Vec<&'static str> {
        lock(&self.state)
            .device
            .as_ref()
            .map(DeviceControls::names)
            .unwrap_or_default()
    }

    /// Validates and records `controls`. While the camera streams, waits (up to a second)
    /// for the source thread to write them and reports what the device refused; while it is
    /// closed for lack of viewers, they are written when it opens again. Before the device
    /// was ever opened the supported set is unknown: [`ControlError::NotRunning`].
    fn apply(&self, controls: &Controls) -> Result<(), ControlError> {
        let mut st = lock(&self.state);
        let Some(caps) = &st.device else {
            return Err(ControlError::NotRunning);
        };
        let supported = caps.names();
        check(controls, &supported)?;
        let problems = unrealizable(controls, &supported);
        if !problems.is_empty() {
            return Err(ControlError::Rejected(problems.join(", ")));
        }
        if controls.is_empty() {
            return Ok(());
        }
        let before = st.requested.clone();
        st.requested.merge(controls);
        st.generation += 1;
        let generation = st.generation;
        let deadline = Instant::now() + APPLY_WAIT;
        while st.open && st.applied < generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Still queued (the source is between frames of a slow camera); it will be
                // written with the next frame.
                return Ok(());
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if st.applied >= generation {
            if let Err(e) = &st.result {
                let e = e.clone();
                if st.generation == generation {
                    // Forget the refused request and have the previous values written back.
                    st.requested = before;
                    st.generation += 1;
                }
                return Err(ControlError::Rejected(e));
            }
        }
        Ok(())
    }

    fn current(&self) -> Controls {
        lock(&self.state).requested.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------

/// A V4L2 capture device as a [`Source`].
pub struct V4l2Source {
    device: PathBuf,
    width: u32,
    height: u32,
    fps: u32,
    controls: Arc<V4l2Controls>,
    /// For [`SourceInfo::name`]: the path until the device was opened, then what it delivers.
    name: Arc<Mutex<String>>,
}

impl V4l2Source {
    /// Does not touch the device; [`Source::run`] opens it.
    pub fn new(device: PathBuf, width: u32, height: u32, fps: u32) -> Self {
        let name = device.display().to_string();
        V4l2Source {
            device,
            width,
            height,
            fps: fps.max(1),
            controls: Arc::new(V4l2Controls::new(Controls::default())),
            name: Arc::new(Mutex::new(name)),
        }
    }

    /// Controls to set whenever the camera is opened (e.g. from the config file); those the
    /// camera turns out not to support are dropped with a warning when it is first opened.
    pub fn with_controls(self, controls: Controls) -> Result<Self, InvalidControl> {
        controls.validate()?;
        lock(&self.controls.state).requested = controls;
        Ok(self)
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    fn stall_timeout(interval: Duration) -> Duration {
        (interval * STALL_INTERVALS).max(STALL_MIN)
    }

    /// Opens, negotiates, writes the controls and maps the buffers (streaming starts with
    /// the first dequeue).
    fn open(&self) -> Result<Session, SourceError> {
        let path = self.device.as_path();
        let fail = |what: &str, e: &io::Error| {
            SourceError::Failed(format!("{}: {what}: {}", path.display(), describe_io(e)))
        };
        let dev = Device::with_path(path).map_err(|e| fail("cannot open", &e))?;
        let caps = dev
            .query_caps()
            .map_err(|e| fail("not a V4L2 device", &e))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
            return Err(SourceError::Failed(format!(
                "{}: {} is not a video capture node{}",
                path.display(),
                caps.card,
                if caps.capabilities.contains(CapFlags::META_CAPTURE) {
                    " (it is a metadata node; the camera's video node is usually the one numbered just before it)"
                } else {
                    ""
                }
            )));
        }
        if !caps.capabilities.contains(CapFlags::STREAMING) {
            return Err(SourceError::Failed(format!(
                "{}: {} does not support streaming I/O",
                path.display(),
                caps.card
            )));
        }
        let offers = enumerate_formats(&dev, Some((self.width, self.height, self.fps)));
        let choice = negotiate(&offers, self.width, self.height, self.fps).ok_or_else(|| {
            let offered: Vec<String> = offers.iter().map(|o| fourcc_str(o.fourcc)).collect();
            SourceError::Failed(format!(
                "{}: {} offers no format picamd can use (offered: {}; usable: MJPG, YUYV, NV12, YU12)",
                path.display(),
                caps.card,
                if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
            ))
        })?;
        let got = dev
            .set_format(&Format::new(
                choice.width,
                choice.height,
                FourCC::new(&choice.fourcc),
            ))
            .map_err(|e| fail("cannot set the format", &e))?;
        let format = PixelFormat::from_fourcc(got.fourcc.repr).ok_or_else(|| {
            SourceError::Failed(format!(
                "{}: asked for {} but the driver chose {}, which picamd cannot use",
                path.display(),
                fourcc_str(choice.fourcc),
                fourcc_str(got.fourcc.repr)
            ))
        })?;
        if got.width == 0
            || got.height == 0
            || (format.is_raw() && (got.width % 2 != 0 || got.height % 2 != 0))
        {
            return Err(SourceError::Failed(format!(
                "{}: the driver set an unusable size {}x{} for {}",
                path.display(),
                got.width,
                got.height,
                fourcc_str(got.fourcc.repr)
            )));
        }
        let want = choice.interval.unwrap_or(Interval::from_fps(self.fps));
        let interval = match dev.set_params(&Parameters::new(Fraction::new(want.num, want.den))) {
            Ok(p) if p.interval.numerator > 0 && p.interval.denominator > 0 => Interval {
                num: p.interval.numerator,
                den: p.interval.denominator,
            },
            Ok(_) => want,
            Err(e) => {
                tracing::debug!(device = %path.display(), error = %e, "cannot set the frame rate; using the driver's");
                want
            }
        };
        let frame_time = interval
            .duration()
            .unwrap_or(Duration::from_secs(1) / self.fps);
        let stall = Self::stall_timeout(frame_time);

        self.controls.opened(DeviceControls::query(&dev), |id, v| {
            set_control(&dev, id, v)
        });

        let mut stream = MmapStream::with_buffers(&dev, BufferType::VideoCapture, STREAM_BUFFERS)
            .map_err(|e| fail("cannot map buffers", &e))?;
        stream.set_timeout(stall);

        let summary = format!(
            "{} {}x{} @ {} fps",
            fourcc_str(got.fourcc.repr),
            got.width,
            got.height,
            format_fps(interval.fps())
        );
        let message = format!(
            "V4L2 camera opened: {summary} (asked for {}x{} @ {} fps; picked {} {}x{}{}; {} from {})",
            self.width,
            self.height,
            self.fps,
            fourcc_str(choice.fourcc),
            choice.width,
            choice.height,
            choice
                .interval
                .map(|i| format!(" @ {} fps", format_fps(i.fps())))
                .unwrap_or_default(),
            caps.card,
            caps.driver,
        );
        let name = format!("{} ({}): {summary}", caps.card, path.display());
        // Said once; reopening the same camera after an idle spell is routine.
        if std::mem::replace(&mut *lock(&self.name), name.clone()) != name {
            tracing::info!(device = %path.display(), "{message}");
        } else {
            tracing::debug!(device = %path.display(), "{message}");
        }

        let now = Instant::now();
        Ok(Session {
            stream,
            dev,
            format,
            width: got.width,
            height: got.height,
            // Drivers may leave bytesperline 0; then rows are packed.
            stride: match (got.stride as usize, format) {
                (0, PixelFormat::Yuyv) => 2 * got.width as usize,
                (0, _) => got.width as usize,
                (stride, _) => stride,
            },
            pool: BufferPool::new(got.width as usize, got.height as usize),
            frame_time,
            stall,
            last_good: now,
            skip_stale: 0,
            frames: 0,
            bad_frames: 0,
            size_noted: false,
        })
    }

    /// [`Self::open`], with any panic inside the v4l crate (it has `expect`s on device data)
    /// turned into a failure.
    fn open_guarded(&self) -> Result<Session, SourceError> {
        match catch_unwind(AssertUnwindSafe(|| self.open())) {
            Ok(r) => r,
            Err(panic) => Err(SourceError::Failed(format!(
                "{}: V4L2 error while opening: {}",
                self.device.display(),
                panic_message(&*panic)
            ))),
        }
    }

    fn capture_loop(
        &self,
        ctx: &mut SourceContext,
        slot: &Mutex<Option<Session>>,
        idle: &IdleWatch,
    ) -> Result<(), SourceError> {
        loop {
            let began = Instant::now();
            idle.set_waiting(Some(began));
            let demand = ctx.wait_for_demand();
            idle.set_waiting(None);
            if !demand {
                return Ok(());
            }
            let waited = began.elapsed();
            let mut guard = lock(slot);
            let session = match guard.take() {
                Some(mut s) => {
                    if waited >= s.frame_time {
                        // The wait blocked: what the driver queued meanwhile is old.
                        s.skip_stale = STREAM_BUFFERS;
                        s.last_good = Instant::now();
                    }
                    guard.insert(s)
                }
                None => guard.insert(self.open_guarded()?),
            };
            self.controls
                .write_pending(|id, v| set_control(&session.dev, id, v));
            session.capture(ctx, &self.device)?;
        }
    }
}

impl Source for V4l2Source {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "v4l2",
            name: lock(&self.name).clone(),
        }
    }

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        let slot: Mutex<Option<Session>> = Mutex::new(None);
        let idle = IdleWatch::new(ctx.demand());
        let this = &*self;
        let result = std::thread::scope(|scope| {
            // Stops the watcher however this closure ends, so the scope can join it.
            let _stop = StopOnDrop(&idle);
            let watcher = std::thread::Builder::new()
                .name("src-v4l2-idle".into())
                .spawn_scoped(scope, || idle.watch(&slot, &this.controls, &this.device));
            if let Err(e) = watcher {
                return Err(SourceError::Failed(format!(
                    "cannot start the idle watcher thread: {e}"
                )));
            }
            match catch_unwind(AssertUnwindSafe(|| this.capture_loop(ctx, &slot, &idle))) {
                Ok(r) => r,
                Err(panic) => Err(SourceError::Failed(format!(
                    "{}: V4L2 error: {}",
                    this.device.display(),
                    panic_message(&*panic)
                ))),
            }
        });
        let session = slot.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = session {
            close_session(s, &self.device);
        }
        self.controls.closed();
        result
    }

    fn controls(&self) -> Option<Arc<dyn CameraControls>> {
        Some(self.controls.clone())
    }
}

/// An open, negotiated device.
struct Session {
    // Dropped first: stops streaming and unmaps before the device closes.
    stream: MmapStream<'static>,
    dev: Device,
    format: PixelFormat,
    /// As set by the driver (`S_FMT`); MJPEG frames report their own size.
    width: u32,
    height: u32,
    /// Bytes per row of the first plane (`bytesperline`).
    stride: usize,
    pool: BufferPool,
    frame_time: Duration,
    stall: Duration,
    last_good: Instant,
    /// Frames still to check for having waited in the queue during a blocked wait.
    skip_stale: u32,
    frames: u64,
    bad_frames: u64,
    size_noted: bool,
}

impl Session {
    /// Dequeues one frame and hands it on (or drops it if it is bad or stale).
    fn capture(&mut self, ctx: &mut SourceContext, path: &Path) -> Result<(), SourceError> {
        let asked = Instant::now();
        let (buf, meta) = self
            .stream
            .next()
            .map_err(|e| dequeue_failure(path, &e, self.stall))?;
        let captured = CaptureTime::now();
        if self.skip_stale > 0 {
            self.skip_stale -= 1;
            if asked.elapsed() < STALE_READY {
                tracing::trace!("dropped a frame queued before the wait ended");
                return Ok(());
            }
            self.skip_stale = 0;
        }
        let data = &buf[..(meta.bytesused as usize).min(buf.len())];
        let made = if meta.flags.contains(BufferFlags::ERROR) {
            Err("the driver marked the frame as corrupt".to_string())
        } else if self.format == PixelFormat::Mjpeg {
            jpeg::copy_with_huffman_tables(data)
                .map(|(bytes, info)| {
                    (
                        Payload::Jpeg(bytes),
                        u32::from(info.width),
                        u32::from(info.height),
                    )
                })
                .map_err(|e| format!("bad JPEG: {e}"))
        } else {
            let mut out = self.pool.take();
            let (w, h) = (self.width as usize, self.height as usize);
            convert(self.format, data, self.stride, w, h, out.planes_mut())
                .map(|()| (Payload::Yuv420(Box::new(out)), self.width, self.height))
                .map_err(|e| e.to_string())
        };
        match made {
            Ok((payload, width, height)) => {
                if (width, height) != (self.width, self.height) && !self.size_noted {
                    self.size_noted = true;
                    tracing::warn!(
                        device = %path.display(),
                        "the camera sends {width}x{height} JPEGs although it was set to {}x{}",
                        self.width,
                        self.height
                    );
                }
                self.last_good = Instant::now();
                self.frames += 1;
                if self.frames == 1 {
                    tracing::debug!(device = %path.display(), "first frame");
                }
                let seq = ctx.next_seq();
                ctx.emit(Frame {
                    seq,
                    captured,
                    width,
                    height,
                    no_signal: false,
                    payload,
                });
            }
            Err(reason) => {
                self.bad_frames += 1;
                tracing::debug!(
                    device = %path.display(),
                    dropped = self.bad_frames,
                    "frame dropped: {reason}"
                );
                if self.last_good.elapsed() > self.stall {
                    return Err(SourceError::Failed(format!(
                        "{}: stalled: no usable frame for {:.1} s ({} dropped; last: {reason})",
                        path.display(),
                        self.stall.as_secs_f64(),
                        self.bad_frames
                    )));
                }
            }
        }
        Ok(())
    }
}

fn dequeue_failure(path: &Path, e: &io::Error, stall: Duration) -> SourceError {
    if e.kind() == io::ErrorKind::TimedOut {
        SourceError::Failed(format!(
            "{}: stalled: no frame for {:.1} s",
            path.display(),
            stall.as_secs_f64()
        ))
    } else {
        SourceError::Failed(format!(
            "{}: capture failed: {}",
            path.display(),
            describe_io(e)
        ))
    }
}

fn set_control(dev: &Device, id: u32, value: i64) -> io::Result<()> {
    dev.set_control(Control {
        id,
        value: ControlValue::Integer(value),
    })
}

/// Stops streaming and closes the device, logging rather than panicking on errors.
fn close_session(mut s: Session, path: &Path) {
    let closed = catch_unwind(AssertUnwindSafe(move || {
        if let Err(e) = s.stream.stop() {
            if e.raw_os_error() != Some(ENODEV) {
                tracing::debug!(device = %path.display(), error = %e, "stopping the stream failed");
            }
        }
        drop(s);
    }));
    if let Err(panic) = closed {
        tracing::warn!(device = %path.display(), "error while closing the camera: {}", panic_message(&*panic));
    }
}

/// Tells the watcher thread whether the source thread is waiting for demand.
struct IdleWatch {
    state: Mutex<IdleState>,
    cv: Condvar,
    demand: Arc<dyn Demand>,
}

#[derive(Default)]
struct IdleState {
    waiting_since: Option<Instant>,
    stop: bool,
}

impl IdleWatch {
    fn new(demand: Arc<dyn Demand>) -> IdleWatch {
        IdleWatch {
            state: Mutex::default(),
            cv: Condvar::new(),
            demand,
        }
    }

    fn set_waiting(&self, since: Option<Instant>) {
        lock(&self.state).waiting_since = since;
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_all();
    }

    /// The watcher thread: closes the session once the source thread waits in
    /// `wait_for_demand` and frames are no longer wanted. Holding the state lock while
    /// closing makes a source thread that wakes meanwhile wait, then find no session and
    /// reopen.
    fn watch(&self, slot: &Mutex<Option<Session>>, controls: &V4l2Controls, path: &Path) {
        let mut st = lock(&self.state);
        while !st.stop {
            if st.waiting_since.is_some() && !self.demand.wanted() {
                let session = match slot.try_lock() {
                    Ok(mut g) => g.take(),
                    Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
                    Err(TryLockError::WouldBlock) => None,
                };
                if let Some(s) = session {
                    tracing::debug!(device = %path.display(), "no viewers: camera closed");
                    close_session(s, path);
                    controls.closed();
                }
            }
            st = self
                .cv
                .wait_timeout(st, IDLE_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

struct StopOnDrop<'a>(&'a IdleWatch);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Enumeration and `--list-cameras`
// ---------------------------------------------------------------------------------------------

fn fourcc_str(fourcc: [u8; 4]) -> String {
    fourcc
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect::<String>()
}

/// What a device offers: every capture format with its sizes (stepwise ranges sampled, see
/// [`stepwise_sizes`]) and the intervals at each size. Enumeration errors leave lists empty.
fn enumerate_formats(dev: &Device, want: Option<(u32, u32, u32)>) -> Vec<FormatOffer> {
    let Ok(formats) = dev.enum_formats() else {
        return Vec::new();
    };
    formats
        .into_iter()
        .map(|desc| {
            let mut stepwise = false;
            let mut dims: Vec<(u32, u32)> = Vec::new();
            for fs in dev.enum_framesizes(desc.fourcc).unwrap_or_default() {
                match fs.size {
                    FrameSizeEnum::Discrete(d) => dims.push((d.width, d.height)),
                    FrameSizeEnum::Stepwise(s) => {
                        stepwise = true;
                        dims.extend(stepwise_sizes(
                            (s.min_width, s.min_height),
                            (s.max_width, s.max_height),
                            (s.step_width, s.step_height),
                            want.map(|(w, h, _)| (w, h)),
                        ));
                    }
                }
            }
            let sizes = dims
                .into_iter()
                .map(|(width, height)| SizeOffer {
                    width,
                    height,
                    intervals: enumerate_intervals(
                        dev,
                        desc.fourcc,
                        width,
                        height,
                        want.map(|w| w.2),
                    ),
                })
                .collect();
            FormatOffer {
                fourcc: desc.fourcc.repr,
                description: desc.description,
                sizes,
                stepwise,
            }
        })
        .collect()
}

fn enumerate_intervals(
    dev: &Device,
    fourcc: FourCC,
    width: u32,
    height: u32,
    fps: Option<u32>,
) -> Vec<Interval> {
    let frac = |f: Fraction| Interval {
        num: f.numerator,
        den: f.denominator,
    };
    let mut out = Vec::new();
    for fi in dev
        .enum_frameintervals(fourcc, width, height)
        .unwrap_or_default()
    {
        match fi.interval {
            FrameIntervalEnum::Discrete(f) => out.push(frac(f)),
            FrameIntervalEnum::Stepwise(s) => {
                out.extend(stepwise_intervals(frac(s.min), frac(s.max), fps))
            }
        }
    }
    out
}

/// One `/dev/video*` node, for `--list-cameras`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceListing {
    pub path: PathBuf,
    /// `/dev/v4l/by-id/…` links to this node: names that survive replugging and reboots.
    pub by_id: Vec<PathBuf>,
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// A video capture node (not a metadata or output node).
    pub capture: bool,
    pub formats: Vec<FormatListing>,
    /// Why the node could not be opened or queried.
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FormatListing {
    pub fourcc: String,
    pub description: String,
    /// picamd can capture this format.
    pub usable: bool,
    /// The sizes are samples of a stepwise range (its smallest and largest).
    pub stepwise: bool,
    pub sizes: Vec<SizeListing>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeListing {
    pub width: u32,
    pub height: u32,
    /// Frame rates offered at this size, fastest first; empty if not enumerated.
    pub fps: Vec<f64>,
}

/// Every `/dev/video*` node with its driver, card name and (for capture nodes) formats,
/// sizes and frame rates, in node order. Nodes that are not video capture (e.g. UVC metadata
/// nodes) are listed with `capture: false`. Empty when there are none.
pub fn list_devices() -> Vec<DeviceListing> {
    list_devices_in(Path::new("/dev"), Path::new("/dev/v4l/by-id"))
}

fn list_devices_in(dev_dir: &Path, by_id_dir: &Path) -> Vec<DeviceListing> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    let n = name.to_str()?.strip_prefix("video")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    let links: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(by_id_dir)
        .map(|entries| {
            let mut links: Vec<(PathBuf, PathBuf)> = entries
                .flatten()
                .filter_map(|e| Some((e.path(), std::fs::canonicalize(e.path()).ok()?)))
                .collect();
            links.sort();
            links
        })
        .unwrap_or_default();
    nodes
        .into_iter()
        .map(|(_, path)| {
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let by_id = links
                .iter()
                .filter(|(_, target)| *target == real)
                .map(|(link, _)| link.clone())
                .collect();
            probe(path, by_id)
        })
        .collect()
}

fn probe(path: PathBuf, by_id: Vec<PathBuf>) -> DeviceListing {
    let mut listing = DeviceListing {
        path,
        by_id,
        driver: String::new(),
        card: String::new(),
        bus: String::new(),
        capture: false,
        formats: Vec::new(),
        error: None,
    };
    let path = listing.path.clone();
    let probed = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let dev =
            Device::with_path(&path).map_err(|e| format!("cannot open: {}", describe_io(&e)))?;
        let caps = dev
            .query_caps()
            .map_err(|e| format!("not a V4L2 device: {}", describe_io(&e)))?;
        listing.driver = caps.driver;
        listing.card = caps.card;
        listing.bus = caps.bus;
        listing.capture = caps.capabilities.contains(CapFlags::VIDEO_CAPTURE);
        if listing.capture {
            listing.formats = enumerate_formats(&dev, None)
                .into_iter()
                .map(|o| {
                    let mut sizes: Vec<SizeListing> = o
                        .sizes
                        .iter()
                        .map(|s| {
                            let mut fps: Vec<f64> = s.intervals.iter().map(|i| i.fps()).collect();
                            fps.sort_by(|a, b| b.total_cmp(a));
                            fps.dedup();
                            SizeListing {
                                width: s.width,
                                height: s.height,
                                fps,
                            }
                        })
                        .collect();
                    sizes.sort_by_key(|s| {
                        std::cmp::Reverse((u64::from(s.width) * u64::from(s.height), s.width))
                    });
                    FormatListing {
                        fourcc: fourcc_str(o.fourcc),
                        description: o.description,
                        usable: PixelFormat::from_fourcc(o.fourcc).is_some(),
                        stepwise: o.stepwise,
                        sizes,
                    }
                })
                .collect();
        }
        Ok(())
    }));
    match probed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => listing.error = Some(e),
        Err(panic) => listing.error = Some(format!("V4L2 error: {}", panic_message(&*panic))),
    }
    listing
}

fn format_fps(fps: f64) -> String {
    if (fps - fps.round()).abs() < 0.005 {
        format!("{}", fps.round() as i64)
    } else {
        format!("{fps:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

impl fmt::Display for DeviceListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(e) = &self.error {
            return writeln!(f, ": {e}");
        }
        write!(f, ": {} ({}", self.card, self.driver)?;
        if !self.bus.is_empty() {
            write!(f, ", {}", self.bus)?;
        }
        write!(f, ")")?;
        if !self.capture {
            return writeln!(
                f,
                " — not a video capture node (metadata or output); not usable"
            );
        }
        writeln!(f)?;
        for link in &self.by_id {
            writeln!(f, "  also {}", link.display())?;
        }
        let source = self.by_id.first().unwrap_or(&self.path);
        if self.formats.iter().any(|fmt| fmt.usable) {
            writeln!(f, "  use: --source v4l2:{}", source.display())?;
        } else {
            writeln!(
                f,
                "  no format picamd can use (it needs MJPG, YUYV, NV12 or YU12)"
            )?;
        }
        for format in &self.formats {
            write!(f, "  {} ({})", format.fourcc, format.description)?;
            if !format.usable {
                write!(f, " — not usable by picamd")?;
            }
            if format.stepwise {
                write!(
                    f,
                    " — any size in steps between the smallest and largest below"
                )?;
            }
            writeln!(f)?;
            for size in &format.sizes {
                write!(f, "    {}x{}", size.width, size.height)?;
                if !size.fps.is_empty() {
                    let rates: Vec<String> = size.fps.iter().map(|r| format_fps(*r)).collect();
                    write!(f, "  {} fps", rates.join(", "))?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// The text of `--list-cameras`: every listing, or a line saying there is none.
pub fn describe_devices(list: &[DeviceListing]) -> String {
    if list.is_empty() {
        return "no V4L2 devices found (no /dev/video* nodes)\n".into();
    }
    list.iter().map(|d| d.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An I/O error with a hint for the errors cameras commonly give.
fn describe_io(e: &io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(19) | Some(6) => " — camera unplugged or disconnected (ENODEV)",
        Some(2) => " — no such device; is the camera plugged in?",
        Some(13) | Some(1) => " — permission denied; add the user to the `video` group",
        Some(16) => " — busy: another program is using the camera",
        Some(28) => {
            " — not enough USB bandwidth: use MJPEG, a lower resolution or frame rate, or another USB port"
        }
        Some(71) | Some(5) => " — USB I/O error",
        _ => "",
    };
    format!("{e}{hint}")
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic in the v4l crate".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u32, height: u32, fps: &[u32]) -> SizeOffer {
        SizeOffer {
            width,
            height,
            intervals: fps.iter().map(|&f| Interval::from_fps(f)).collect(),
        }
    }

    fn offer(fourcc: &[u8; 4], sizes: Vec<SizeOffer>) -> FormatOffer {
        FormatOffer {
            fourcc: *fourcc,
            description: String::new(),
            sizes,
            stepwise: false,
        }
    }

    fn webcam() -> Vec<FormatOffer> {
        vec![
            offer(
                b"YUYV",
                vec![
                    size(640, 480, &[30, 15]),
                    size(1280, 720, &[10, 5]),
                    size(1920, 1080, &[5]),
                ],
            ),
            offer(
                b"MJPG",
                vec![
                    size(640, 480, &[30, 15]),
                    size(1280, 720, &[60, 30, 15]),
                    size(1280, 960, &[30]),
                    size(1920, 1080, &[30, 24, 15]),
                ],
            ),
            offer(b"H264", vec![size(1920, 1080, &[30])]),
        ]
    }

    #[test]
    fn mjpeg_wins_and_the_exact_size_is_taken() {
        let c = negotiate(&webcam(), 1280, 720, 30).unwrap();
        assert_eq!(c.format, PixelFormat::Mjpeg);
        assert_eq!(&c.fourcc, b"MJPG");
        assert_eq!((c.width, c.height), (1280, 720));
        assert_eq!(c.interval, Some(Interval::from_fps(30)));
    }

    #[test]
    fn sizes_smallest_larger_else_largest() {
        // 1024x768 is not offered: the smallest covering it is 1280x960 (not 1920x1080).
        let c = negotiate(&webcam(), 1024, 768, 30).unwrap();
        assert_eq!((c.width, c.height), (1280, 960));
        // 800x600: 1280x720 is the smallest size at least as large in both dimensions.
        let c = negotiate(&webcam(), 800, 600, 30).unwrap();
        assert_eq!((c.width, c.height), (1280, 720));
        // Larger than anything: the largest.
        let c = negotiate(&webcam(), 3840, 2160, 30).unwrap();
        assert_eq!((c.width, c.height), (1920, 1080));
        // Smaller than anything: the smallest covering it.
        let c = negotiate(&webcam(), 320, 240, 30).unwrap();
        assert_eq!((c.width, c.height), (640, 480));
    }

    #[test]
    fn the_closest_frame_rate_is_picked() {
        let c = negotiate(&webcam(), 1280, 720, 50).unwrap();
        assert_eq!(c.interval, Some(Interval::from_fps(60)));
        let c = negotiate(&webcam(), 1280, 720, 20).unwrap();
        assert_eq!(c.interval, Some(Interval::from_fps(15)));
        // A tie goes to the faster rate.
        let i = pick_interval(&[Interval::from_fps(15), Interval::from_fps(25)], 20);
        assert_eq!(i, Some(Interval::from_fps(25)));
        // Fractional rates: 1001/30000 is 29.97 fps.
        let ntsc = Interval {
            num: 1001,
            den: 30000,
        };
        assert_eq!(
            pick_interval(&[Interval::from_fps(25), ntsc], 30),
            Some(ntsc)
        );
        assert_eq!(pick_interval(&[], 30), None);
        assert_eq!(pick_interval(&[Interval { num: 0, den: 0 }], 30), None);
    }

    #[test]
    fn raw_formats_in_order_and_only_even_sizes() {
        let offers = vec![
            offer(b"YU12", vec![size(640, 480, &[30])]),
            offer(b"NV12", vec![size(640, 480, &[30])]),
            offer(b"YUYV", vec![size(641, 480, &[30]), size(320, 240, &[30])]),
        ];
        let c = negotiate(&offers, 640, 480, 30).unwrap();
        assert_eq!(c.format, PixelFormat::Yuyv);
        assert_eq!((c.width, c.height), (320, 240), "the odd width is skipped");
        let c = negotiate(&offers[..2], 640, 480, 30).unwrap();
        assert_eq!(c.format, PixelFormat::Nv12);
        let c = negotiate(&offers[..1], 640, 480, 30).unwrap();
        assert_eq!(c.format, PixelFormat::I420);
        // A raw format with only odd sizes is passed over.
        let odd = vec![
            offer(b"YUYV", vec![size(641, 481, &[30])]),
            offer(b"NV12", vec![size(640, 480, &[30])]),
        ];
        assert_eq!(
            negotiate(&odd, 640, 480, 30).unwrap().format,
            PixelFormat::Nv12
        );
        // JPEG counts as MJPEG; odd sizes are fine for it.
        let jpeg = vec![offer(b"JPEG", vec![size(641, 481, &[30])])];
        let c = negotiate(&jpeg, 640, 480, 30).unwrap();
        assert_eq!((c.format, c.width), (PixelFormat::Mjpeg, 641));
    }

    #[test]
    fn nothing_usable_and_unlisted_sizes() {
        assert_eq!(negotiate(&[], 640, 480, 30), None);
        let h264 = vec![offer(b"H264", vec![size(1920, 1080, &[30])])];
        assert_eq!(negotiate(&h264, 640, 480, 30), None);
        // A format without size enumeration: ask for the requested size; S_FMT adjusts.
        let c = negotiate(&[offer(b"YUYV", vec![])], 800, 600, 25).unwrap();
        assert_eq!((c.width, c.height, c.interval), (800, 600, None));
        // Sizes without intervals.
        let c = negotiate(&[offer(b"MJPG", vec![size(640, 480, &[])])], 640, 480, 30).unwrap();
        assert_eq!(c.interval, None);
    }

    #[test]
    fn stepwise_ranges_are_sampled() {
        let s = stepwise_sizes((16, 16), (1920, 1080), (8, 2), Some((1000, 601)));
        assert_eq!(s, vec![(16, 16), (1000, 600), (1920, 1080)]);
        // Clamped into the range.
        let s = stepwise_sizes((16, 16), (640, 480), (16, 16), Some((4000, 3000)));
        assert_eq!(s, vec![(16, 16), (640, 480)]);
        // A step of zero (continuous ranges report 1, broken drivers 0) does not divide by 0.
        let s = stepwise_sizes((2, 2), (100, 100), (0, 0), Some((33, 33)));
        assert!(s.contains(&(33, 33)));
        assert_eq!(fit_step(17, 16, 1920, 8), 16);
        assert_eq!(fit_step(21, 16, 1920, 8), 24);
        assert_eq!(fit_step(1919, 16, 1919, 8), 1912);

        let (fast, slow) = (Interval::from_fps(60), Interval::from_fps(1));
        let i = stepwise_intervals(fast, slow, Some(25));
        assert_eq!(i, vec![fast, slow, Interval::from_fps(25)]);
        let i = stepwise_intervals(fast, slow, Some(120));
        assert_eq!(i, vec![fast, slow]);
        // Negotiating over the samples picks the requested rate.
        let offers = vec![FormatOffer {
            fourcc: *b"YUYV",
            description: String::new(),
            sizes: vec![SizeOffer {
                width: 640,
                height: 480,
                intervals: stepwise_intervals(fast, slow, Some(25)),
            }],
            stepwise: true,
        }];
        let c = negotiate(&offers, 640, 480, 25).unwrap();
        assert_eq!(c.interval, Some(Interval::from_fps(25)));
    }

    type Conv = fn(&[u8], usize, usize, usize, [&mut [u8]; 3]) -> Result<(), ConvertError>;
    type Planes = (Vec<u8>, Vec<u8>, Vec<u8>);

    /// Runs a conversion into fresh planes.
    fn run_convert(
        f: Conv,
        src: &[u8],
        stride: usize,
        w: usize,
        h: usize,
    ) -> Result<Planes, ConvertError> {
        let (mut y, mut u, mut v) = (
            vec![0xEE; w * h],
            vec![0xEE; w * h / 4],
            vec![0xEE; w * h / 4],
        );
        f(src, stride, w, h, [&mut y, &mut u, &mut v])?;
        Ok((y, u, v))
    }

    #[test]
    fn yuyv_to_i420_with_and_without_padding() {
        // 4x2: row 0 = Y 10 11 12 13, U 100/102, V 200/202; row 1 = Y 20..23, U 110/112,
        // V 210/213.
        let row0 = [10, 100, 11, 200, 12, 102, 13, 202];
        let row1 = [20, 110, 21, 210, 22, 112, 23, 213];
        let want_y = vec![10, 11, 12, 13, 20, 21, 22, 23];
        let want_u = vec![105, 107];
        let want_v = vec![205, 208]; // (202 + 213 + 1) / 2 rounds up

        let packed: Vec<u8> = row0.iter().chain(&row1).copied().collect();
        let (y, u, v) = run_convert(yuyv_to_i420, &packed, 8, 4, 2).unwrap();
        assert_eq!((y, u, v), (want_y.clone(), want_u.clone(), want_v.clone()));

        // Rows padded to 12 bytes, and the last row's padding missing (allowed).
        let mut padded = row0.to_vec();
        padded.extend_from_slice(&[0xAA; 4]);
        padded.extend_from_slice(&row1);
        let (y, u, v) = run_convert(yuyv_to_i420, &padded, 12, 4, 2).unwrap();
        assert_eq!((y, u, v), (want_y, want_u, want_v));

        // 2x4: two chroma rows.
        let src = [
            1, 50, 2, 60, //
            3, 52, 4, 62, //
            5, 70, 6, 80, //
            7, 72, 8, 82,
        ];
        let (y, u, v) = run_convert(yuyv_to_i420, &src, 4, 2, 4).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(u, vec![51, 71]);
        assert_eq!(v, vec![61, 81]);
    }

    #[test]
    fn nv12_to_i420_with_and_without_padding() {
        // 4x2: Y rows, then one UV row (U0 V0 U1 V1).
        let y_rows = [[1, 2, 3, 4], [5, 6, 7, 8]];
        let uv = [100, 200, 101, 201];
        let packed: Vec<u8> = y_rows.iter().flatten().chain(&uv).copied().collect();
        let (y, u, v) = run_convert(nv12_to_i420, &packed, 4, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));

        // Stride 8: every row, the UV row too, is padded; the UV plane starts at 8 * 2.
        let mut padded = Vec::new();
        for row in y_rows {
            padded.extend_from_slice(&row);
            padded.extend_from_slice(&[0xAA; 4]);
        }
        padded.extend_from_slice(&uv);
        padded.extend_from_slice(&[0xBB; 4]);
        let (y, u, v) = run_convert(nv12_to_i420, &padded, 8, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));
    }

    #[test]
    fn yu12_to_i420_with_padding() {
        // 4x2 with stride 6: Y rows of 6, then U and V rows of 3 (stride / 2).
        let mut src = Vec::new();
        src.extend_from_slice(&[1, 2, 3, 4, 0xAA, 0xAA, 5, 6, 7, 8, 0xAA, 0xAA]);
        src.extend_from_slice(&[100, 101, 0xAA]);
        src.extend_from_slice(&[200, 201]);
        let (y, u, v) = run_convert(yu12_to_i420, &src, 6, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));
        // Unpadded: a straight copy.
        let src = [1, 2, 3, 4, 5, 6, 7, 8, 100, 101, 200, 201];
        let (y, u, v) = run_convert(yu12_to_i420, &src, 4, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));
    }

    #[test]
    fn conversions_refuse_bad_input_without_panicking() {
        for f in [yuyv_to_i420 as Conv, nv12_to_i420, yu12_to_i420] {
            // Truncated frames.
            for len in [0, 1, 7, 11] {
                assert!(matches!(
                    run_convert(f, &vec![0; len], 8, 4, 2),
                    Err(ConvertError::ShortSource { .. })
                ));
            }
            // Odd or zero dimensions, strides narrower than a row.
            assert!(matches!(
                run_convert(f, &[0; 64], 8, 3, 2),
                Err(ConvertError::BadSize { .. })
            ));
            assert!(matches!(
                run_convert(f, &[0; 64], 8, 4, 0),
                Err(ConvertError::BadSize { .. })
            ));
            assert!(matches!(
                run_convert(f, &[0; 64], 2, 4, 2),
                Err(ConvertError::Stride { .. })
            ));
            // Destination planes too small.
            let (mut y, mut u, mut v) = (vec![0; 7], vec![0; 2], vec![0; 2]);
            assert_eq!(
                f(&[0; 64], 8, 4, 2, [&mut y, &mut u, &mut v]),
                Err(ConvertError::ShortDestination)
            );
        }
    }

    #[test]
    fn conversion_into_pooled_buffers() {
        let pool = BufferPool::new(4, 2);
        let mut buf = pool.take();
        let src = [
            10, 100, 11, 200, 12, 102, 13, 202, 20, 110, 21, 210, 22, 112, 23, 213,
        ];
        convert(PixelFormat::Yuyv, &src, 8, 4, 2, buf.planes_mut()).unwrap();
        use crate::frame::Yuv420Buffer;
        let [y, u, v] = buf.planes();
        assert_eq!(y, &[10, 11, 12, 13, 20, 21, 22, 23]);
        assert_eq!((u, v), (&[105u8, 107][..], &[205u8, 208][..]));
    }

    fn range(min: i64, max: i64, step: i64, default: i64) -> CtrlRange {
        CtrlRange {
            min,
            max,
            step,
            default,
        }
    }

    #[test]
    fn control_values_map_onto_device_ranges() {
        let r = range(0, 255, 1, 128);
        assert_eq!(r.map_around_default(-1.0, -1.0, 0.0, 1.0), 0);
        assert_eq!(r.map_around_default(0.0, -1.0, 0.0, 1.0), 128);
        assert_eq!(r.map_around_default(1.0, -1.0, 0.0, 1.0), 255);
        assert_eq!(r.map_around_default(0.5, -1.0, 0.0, 1.0), 192);
        // Contrast-like: 0 → min, 1 → default, 2 and beyond → max.
        let r = range(0, 64, 1, 32);
        assert_eq!(r.map_around_default(0.0, 0.0, 1.0, 2.0), 0);
        assert_eq!(r.map_around_default(1.0, 0.0, 1.0, 2.0), 32);
        assert_eq!(r.map_around_default(1.5, 0.0, 1.0, 2.0), 48);
        assert_eq!(r.map_around_default(32.0, 0.0, 1.0, 2.0), 64);
        // Steps and offsets: 1..=7 step 2 (1, 3, 5, 7), default 3.
        let r = range(1, 7, 2, 3);
        assert_eq!(r.map_around_default(2.0, 0.0, 1.0, 2.0), 7);
        assert_eq!(r.map_around_default(0.0, 0.0, 1.0, 2.0), 1);
        assert_eq!(r.snap(4.2), 5);
        assert_eq!(r.snap(100.0), 7);
        assert_eq!(r.snap(-100.0), 1);
        assert_eq!(r.snap(f64::NAN), 3);
        // A range whose max is off the step grid never rounds past it.
        assert_eq!(range(0, 10, 4, 0).snap(10.0), 8);
        // Linear (lens position): 0 → min, 32 → max.
        let r = range(0, 250, 5, 0);
        assert_eq!(r.map_linear(0.0, 0.0, 32.0), 0);
        assert_eq!(r.map_linear(32.0, 0.0, 32.0), 250);
        assert_eq!(r.map_linear(16.0, 0.0, 32.0), 125);
        // Degenerate ranges do not panic.
        let r = range(5, 5, 0, 5);
        assert_eq!(r.map_around_default(2.0, 0.0, 1.0, 2.0), 5);
        assert_eq!(range(10, 0, 1, 3).snap(7.0), 10);
    }

    fn full_camera() -> DeviceControls {
        DeviceControls {
            brightness: Some(range(-64, 64, 1, 0)),
            contrast: Some(range(0, 100, 1, 50)),
            saturation: Some(range(0, 128, 1, 64)),
            sharpness: Some(range(0, 6, 1, 3)),
            exposure_modes: Some(ExposureModes {
                auto: EXPOSURE_APERTURE_PRIORITY,
                manual: EXPOSURE_MANUAL,
            }),
            exposure_absolute: Some(range(3, 2047, 1, 250)),
            focus_auto: Some(range(0, 1, 1, 1)),
            focus_absolute: Some(range(0, 250, 5, 0)),
            white_balance_auto: Some(range(0, 1, 1, 1)),
        }
    }

    fn parse(json: &str) -> Controls {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn supported_names_follow_the_device() {
        assert_eq!(
            full_camera().names(),
            vec![
                "autofocus",
                "lens_position",
                "exposure",
                "exposure_time_us",
                "awb",
                "brightness",
                "contrast",
                "saturation",
                "sharpness"
            ]
        );
        let basic = DeviceControls {
            brightness: Some(range(0, 255, 1, 128)),
            ..DeviceControls::default()
        };
        assert_eq!(basic.names(), vec!["brightness"]);
        assert!(DeviceControls::default().names().is_empty());
    }

    #[test]
    fn writes_put_modes_first_and_convert_units() {
        let w = control_writes(
            &full_camera(),
            &parse(
                r#"{"brightness": 0.5, "exposure": "manual", "exposure_time_us": 10000,
                    "autofocus": "manual", "lens_position": 16, "awb": "auto"}"#,
            ),
        );
        assert_eq!(
            w,
            vec![
                ("exposure", CID_EXPOSURE_AUTO, EXPOSURE_MANUAL),
                ("exposure_time_us", CID_EXPOSURE_ABSOLUTE, 100),
                ("autofocus", CID_FOCUS_AUTO, 0),
                ("lens_position", CID_FOCUS_ABSOLUTE, 125),
                ("awb", CID_AUTO_WHITE_BALANCE, 1),
                ("brightness", CID_BRIGHTNESS, 32),
            ]
        );
        // Auto modes do not write the manual values kept from earlier requests.
        let w = control_writes(
            &full_camera(),
            &parse(
                r#"{"exposure": "auto", "exposure_time_us": 10000,
                    "autofocus": "continuous", "lens_position": 8}"#,
            ),
        );
        assert_eq!(
            w,
            vec![
                ("exposure", CID_EXPOSURE_AUTO, EXPOSURE_APERTURE_PRIORITY),
                ("autofocus", CID_FOCUS_AUTO, 1),
            ]
        );
        // Short exposures clamp to the device minimum.
        let w = control_writes(&full_camera(), &parse(r#"{"exposure_time_us": 1}"#));
        assert_eq!(w, vec![("exposure_time_us", CID_EXPOSURE_ABSOLUTE, 3)]);
        // Nothing the device lacks is written.
        let w = control_writes(&DeviceControls::default(), &parse(r#"{"brightness": 0.5}"#));
        assert!(w.is_empty());
    }

    #[test]
    fn controls_before_and_after_the_device_was_seen() {
        let c = V4l2Controls::new(Controls::default());
        assert!(c.supported().is_empty());
        assert_eq!(
            c.apply(&parse(r#"{"brightness": 0.2}"#)),
            Err(ControlError::NotRunning)
        );

        // Opened once: the device's controls are known and the writes happen.
        let mut written = Vec::new();
        c.opened(full_camera(), |id, v| {
            written.push((id, v));
            Ok(())
        });
        assert!(written.is_empty(), "nothing requested yet");
        assert!(c.supported().contains(&"brightness"));
        c.closed();

        // Closed (idle): requests are validated, kept and reported, not written yet.
        assert_eq!(c.apply(&parse(r#"{"brightness": 0.5}"#)), Ok(()));
        assert_eq!(c.current(), parse(r#"{"brightness": 0.5}"#));
        assert_eq!(
            c.apply(&parse(r#"{"hdr": "on", "analogue_gain": 2}"#)),
            Err(ControlError::Unsupported(vec!["analogue_gain", "hdr"]))
        );
        assert!(matches!(
            c.apply(&parse(r#"{"brightness": 3}"#)),
            Err(ControlError::Invalid(_))
        ));
        assert!(matches!(
            c.apply(&parse(r#"{"autofocus": "auto"}"#)),
            Err(ControlError::Rejected(_))
        ));
        assert!(matches!(
            c.apply(&parse(r#"{"awb": "daylight"}"#)),
            Err(ControlError::Rejected(_))
        ));
        assert_eq!(c.current(), parse(r#"{"brightness": 0.5}"#));

        // Reopened (a restart, a replug): the kept values are written again.
        let mut written = Vec::new();
        c.opened(full_camera(), |id, v| {
            written.push((id, v));
            Ok(())
        });
        assert_eq!(written, vec![(CID_BRIGHTNESS, 32)]);
    }

    #[test]
    fn requests_while_streaming_are_written_by_the_source_thread() {
        let c = Arc::new(V4l2Controls::new(Controls::default()));
        c.opened(full_camera(), |_, _| Ok(()));
        let source = {
            let c = c.clone();
            std::thread::spawn(move || {
                // The source loop: write pending requests between frames; the device refuses
                // the contrast value.
                let mut written = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(5);
                while written.len() < 2 && Instant::now() < deadline {
                    c.write_pending(|id, v| {
                        written.push((id, v));
                        if id == CID_CONTRAST {
                            Err(io::Error::from_raw_os_error(34))
                        } else {
                            Ok(())
                        }
                    });
                    std::thread::sleep(Duration::from_millis(5));
                }
                written
            })
        };
        assert_eq!(c.apply(&parse(r#"{"saturation": 0}"#)), Ok(()));
        let refused = c.apply(&parse(r#"{"contrast": 2}"#));
        assert!(
            matches!(&refused, Err(ControlError::Rejected(m)) if m.contains("contrast")),
            "{refused:?}"
        );
        // The refused value is forgotten; the accepted one stays.
        assert_eq!(c.current(), parse(r#"{"saturation": 0}"#));
        let written = source.join().unwrap();
        // All requested values are written each time, in the order of `control_writes`.
        assert_eq!(
            written,
            vec![
                (CID_SATURATION, 0),
                (CID_CONTRAST, 100),
                (CID_SATURATION, 0)
            ]
        );
    }

    #[test]
    fn initial_controls_the_camera_lacks_are_dropped_on_open() {
        let source = V4l2Source::new(PathBuf::from("/dev/video99"), 640, 480, 30)
            .with_controls(parse(r#"{"brightness": -1, "hdr": "on", "awb": "cloudy"}"#))
            .unwrap();
        let c = source.controls.clone();
        assert!(c.supported().is_empty());
        let mut written = Vec::new();
        c.opened(full_camera(), |id, v| {
            written.push((id, v));
            Ok(())
        });
        assert_eq!(written, vec![(CID_BRIGHTNESS, -64)]);
        assert_eq!(c.current(), parse(r#"{"brightness": -1}"#));
        assert!(V4l2Source::new(PathBuf::from("/dev/video99"), 640, 480, 30)
            .with_controls(parse(r#"{"contrast": 40}"#))
            .is_err());
    }

    #[test]
    fn new_does_not_open_the_device() {
        let s = V4l2Source::new(PathBuf::from("/nonexistent/video7"), 1280, 720, 30);
        let info = s.info();
        assert_eq!(info.kind, "v4l2");
        assert_eq!(info.name, "/nonexistent/video7");
        assert!(s.controls().is_some());
        assert!(s.controls().unwrap().supported().is_empty());
    }

    #[test]
    fn stall_timeout_is_five_intervals_but_at_least_two_seconds() {
        assert_eq!(
            V4l2Source::stall_timeout(Duration::from_millis(33)),
            Duration::from_secs(2)
        );
        assert_eq!(
            V4l2Source::stall_timeout(Duration::from_secs(1)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn listing_without_devices_is_empty_and_does_not_panic() {
        // On this machine there may or may not be cameras; either way, no panic.
        let real = list_devices();
        let _ = describe_devices(&real);

        let dir = std::env::temp_dir().join(format!(
            "picamd-v4l2-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (dev, by_id) = (dir.join("dev"), dir.join("by-id"));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(&by_id).unwrap();
        assert!(list_devices_in(&dev, &by_id).is_empty());
        assert!(list_devices_in(&dir.join("missing"), &dir.join("missing")).is_empty());
        assert!(describe_devices(&[]).contains("no V4L2 devices"));

        // Regular files named like nodes: listed in numeric order with an error each, and the
        // by-id link is matched to its node.
        for name in ["video10", "video2", "videoX", "vbi0"] {
            std::fs::write(dev.join(name), b"").unwrap();
        }
        std::os::unix::fs::symlink(dev.join("video2"), by_id.join("usb-Fake_Cam-video-index0"))
            .unwrap();
        let list = list_devices_in(&dev, &by_id);
        std::fs::remove_dir_all(&dir).unwrap();
        let paths: Vec<String> = list.iter().map(|d| d.path.display().to_string()).collect();
        assert_eq!(paths.len(), 2);
        assert!(paths[0].ends_with("video2") && paths[1].ends_with("video10"));
        assert_eq!(list[0].by_id.len(), 1);
        assert!(list.iter().all(|d| d.error.is_some() && !d.capture));
        let text = describe_devices(&list);
        assert!(text.contains("video2: "), "{text}");
    }

    #[test]
    fn listing_text() {
        let d = DeviceListing {
            path: PathBuf::from("/dev/video0"),
            by_id: vec![PathBuf::from("/dev/v4l/by-id/usb-Cam-video-index0")],
            driver: "uvcvideo".into(),
            card: "HD Webcam".into(),
            bus: "usb-0000:00:14.0-1".into(),
            capture: true,
            formats: vec![
                FormatListing {
                    fourcc: "MJPG".into(),
                    description: "Motion-JPEG".into(),
                    usable: true,
                    stepwise: false,
                    sizes: vec![SizeListing {
                        width: 1280,
                        height: 720,
                        fps: vec![30.0, 7.5, 29.97002997],
                    }],
                },
                FormatListing {
                    fourcc: "H264".into(),
                    description: "H.264".into(),
                    usable: false,
                    stepwise: false,
                    sizes: vec![],
                },
            ],
            error: None,
        };
        let text = d.to_string();
        assert!(text.starts_with("/dev/video0: HD Webcam (uvcvideo, usb-0000:00:14.0-1)\n"));
        assert!(text.contains("  also /dev/v4l/by-id/usb-Cam-video-index0\n"));
        assert!(text.contains("--source v4l2:/dev/v4l/by-id/usb-Cam-video-index0"));
        assert!(
            text.contains("    1280x720  30, 7.5, 29.97 fps\n"),
            "{text}"
        );
        assert!(text.contains("H264 (H.264) — not usable by picamd"));
        let meta = DeviceListing {
            capture: false,
            formats: vec![],
            by_id: vec![],
            path: PathBuf::from("/dev/video1"),
            ..d
        };
        assert!(meta.to_string().contains("not a video capture node"));
    }

    #[test]
    fn a_missing_device_fails_with_its_path_once_someone_watches() {
        let shutdown = crate::shutdown::Shutdown::new();
        let (mut ctx, link) = crate::source::testing::TestLink::context(&shutdown);
        link.watched
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut source = V4l2Source::new(PathBuf::from("/nonexistent/video7"), 64, 48, 30);
        let err = source.run(&mut ctx).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/video7") && msg.contains("cannot open"),
            "{msg}"
        );
        // Controls survive the failed run and still refuse until a device was seen.
        assert_eq!(
            source.controls().unwrap().apply(&Controls::default()),
            Err(ControlError::NotRunning)
        );
    }

    #[test]
    fn without_viewers_nothing_is_opened_and_shutdown_returns_ok() {
        let shutdown = crate::shutdown::Shutdown::new();
        let (mut ctx, _link) = crate::source::testing::TestLink::context(&shutdown);
        let trigger = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                shutdown.trigger();
            })
        };
        let mut source = V4l2Source::new(PathBuf::from("/nonexistent/video7"), 64, 48, 30);
        let started = Instant::now();
        assert!(source.run(&mut ctx).is_ok());
        assert!(started.elapsed() >= Duration::from_millis(350));
        trigger.join().unwrap();
    }
}
