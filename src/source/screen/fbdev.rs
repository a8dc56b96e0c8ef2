//! The Linux framebuffer (`/dev/fbN`) as a source: geometry and pixel format from the
//! device (`FBIOGET_VSCREENINFO`, `FBIOGET_FSCREENINFO`), its memory mapped read-only, each
//! frame converted to I420 at the configured size and rate.
//!
//! Raspberry Pi OS drives the display with KMS and keeps the kernel's fbdev emulation, so
//! `/dev/fb0` shows what is on the screen (the console, or a desktop that draws through
//! fbdev); Debian's kernels do the same for bochs-drm (QEMU's standard VGA). The device is
//! opened only while someone watches, like every camera.
//!
//! The geometry is read again before every frame (two ioctls, microseconds), so a mode
//! change (HDMI replugged into another monitor, `fbset`) is followed at the next frame: the
//! memory is mapped again and the converter rebuilt. A device that goes away fails the
//! run with the reason; the supervisor shows "no signal" and retries.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use super::convert::{FormatError, PixelLayout, ScreenConverter, ScreenShape, ShortPicture};
use crate::frame::{CaptureTime, Frame, Payload, SourceInfo};
use crate::source::i420::BufferPool;
use crate::source::{Source, SourceContext, SourceError};

/// `struct fb_bitfield` from `<linux/fb.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// `struct fb_var_screeninfo` from `<linux/fb.h>` (160 bytes on every architecture).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

/// `struct fb_fix_screeninfo` from `<linux/fb.h>` (80 bytes on 64-bit, 68 on 32-bit: the
/// two addresses are `unsigned long`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: nix::libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: nix::libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

const _: () = assert!(std::mem::size_of::<FbVarScreeninfo>() == 160);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<FbFixScreeninfo>() == 80);

impl Default for FbFixScreeninfo {
    fn default() -> Self {
        // SAFETY: a plain C struct of integers; all zeroes is a valid value.
        unsafe { std::mem::zeroed() }
    }
}

/// `FB_TYPE_PACKED_PIXELS`: one pixel after another (the others are planar layouts).
const FB_TYPE_PACKED_PIXELS: u32 = 0;
/// `FB_VISUAL_TRUECOLOR`: pixel bits are the colour (no palette).
const FB_VISUAL_TRUECOLOR: u32 = 2;
/// Largest framebuffer memory mapped: 8K × 8K × 4 bytes is 256 MiB; more is a bogus report.
const MAX_MAP_BYTES: usize = 256 << 20;

nix::ioctl_read_bad!(fbioget_vscreeninfo, 0x4600, FbVarScreeninfo);
nix::ioctl_read_bad!(fbioget_fscreeninfo, 0x4602, FbFixScreeninfo);

/// Why the framebuffer cannot be read; the text is what viewers see in "no signal".
#[derive(Debug, thiserror::Error)]
pub enum FbError {
    #[error("no framebuffer at {0} (no display driver with fbdev emulation? on a Pi, KMS provides /dev/fb0)")]
    Missing(PathBuf),
    #[error("permission denied opening {0}: picamd's user must be in the `video` group (framebuffers are root:video, mode 0660)")]
    Permission(PathBuf),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a framebuffer device ({1})")]
    NotFramebuffer(PathBuf, Errno),
    #[error("the framebuffer {0} went away ({1})")]
    Gone(PathBuf, Errno),
    #[error("{0}: {1}")]
    Format(PathBuf, FormatError),
    #[error("{path}: cannot map {len} bytes of its memory: {errno}")]
    Map {
        path: PathBuf,
        len: usize,
        errno: Errno,
    },
    #[error("{0}: {1}")]
    Short(PathBuf, ShortPicture),
}

impl From<FbError> for SourceError {
    fn from(e: FbError) -> Self {
        SourceError::Failed(e.to_string())
    }
}

/// What a framebuffer shows and where, as read from its two ioctls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// The driver's name for it (`fix.id`), e.g. `bochs-drmdrmfb`, `vc4drmfb`.
    pub id: String,
    pub shape: ScreenShape,
    /// Byte offset of the visible picture's first pixel (panning: `yoffset`, `xoffset`).
    pub offset: usize,
    /// Bytes of framebuffer memory (`smem_len`), and where it is (a change means the driver
    /// reallocated it: map again).
    pub mem_len: usize,
    pub mem_start: u64,
}

impl std::fmt::Display for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.shape;
        write!(
            f,
            "{}x{} {}, {} bytes a row ({})",
            s.width, s.height, s.layout, s.stride, self.id
        )
    }
}

/// Checks what the device reports and turns it into a [`Geometry`]; anything picamd cannot
/// read is an error naming it.
fn geometry(var: &FbVarScreeninfo, fix: &FbFixScreeninfo) -> Result<Geometry, FormatError> {
    let id_len = fix.id.iter().position(|&b| b == 0).unwrap_or(fix.id.len());
    let id = String::from_utf8_lossy(&fix.id[..id_len]).into_owned();
    if fix.type_ != FB_TYPE_PACKED_PIXELS {
        return Err(FormatError(format!(
            "framebuffer type {} (not packed pixels: planar or interleaved)",
            fix.type_
        )));
    }
    if var.grayscale == 1 {
        return Err(FormatError("greyscale".into()));
    }
    if var.grayscale > 1 {
        // Since Linux 4.x, a FOURCC here means the format is not given by bitfields.
        let fourcc = var.grayscale.to_le_bytes();
        return Err(FormatError(format!(
            "FOURCC format {:?}",
            String::from_utf8_lossy(&fourcc)
        )));
    }
    if fix.visual != FB_VISUAL_TRUECOLOR {
        let what = match fix.visual {
            0 | 1 => "monochrome",
            3 => "pseudocolour (palette)",
            4 => "directcolour (colour map)",
            _ => "unknown",
        };
        return Err(FormatError(format!(
            "{} bits per pixel, {what} visual {}",
            var.bits_per_pixel, fix.visual
        )));
    }
    if var.nonstd != 0 {
        return Err(FormatError(format!("non-standard format {}", var.nonstd)));
    }
    let bf = |b: &FbBitfield| (b.offset, b.length);
    let layout = PixelLayout::new(
        var.bits_per_pixel,
        bf(&var.red),
        bf(&var.green),
        bf(&var.blue),
    );
    if var.red.msb_right | var.green.msb_right | var.blue.msb_right != 0 {
        return Err(FormatError(format!("{layout} with bit-reversed channels")));
    }
    layout.check()?;
    let shape = ScreenShape {
        width: var.xres as usize,
        height: var.yres as usize,
        stride: fix.line_length as usize,
        layout,
    };
    if shape.width == 0 || shape.height == 0 {
        return Err(FormatError(format!(
            "a {}x{} screen",
            shape.width, shape.height
        )));
    }
    let offset =
        var.yoffset as usize * shape.stride + var.xoffset as usize * layout.bytes_per_pixel();
    let mem_len = fix.smem_len as usize;
    let end = offset.saturating_add(shape.span());
    if end > mem_len || mem_len > MAX_MAP_BYTES {
        return Err(FormatError(format!(
            "a {}x{} picture at offset {offset} with {} bytes a row does not fit the {mem_len} bytes of memory reported",
            shape.width, shape.height, shape.stride
        )));
    }
    Ok(Geometry {
        id,
        shape,
        offset,
        mem_len,
        // `unsigned long`: u32 on 32-bit Pis, where the cast widens.
        #[allow(clippy::unnecessary_cast)]
        mem_start: fix.smem_start as u64,
    })
}

/// The framebuffer memory, mapped read-only; unmapped on drop.
struct Mapping {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing else unmaps it.
unsafe impl Send for Mapping {}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until drop. The display (another process
        // or the kernel) writes them while we read: a frame may show half of an update,
        // which is what a screen grab is, and u8 reads cannot be torn.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `FbDevice::map` with this length; no slice outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// An open framebuffer device.
pub struct FbDevice {
    path: PathBuf,
    file: File,
    map: Option<(Geometry, Mapping)>,
}

impl FbDevice {
    /// Opens `path` read-only (nothing is ever written to the screen).
    pub fn open(path: &Path) -> Result<FbDevice, FbError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FbError::Missing(path.to_owned()),
            io::ErrorKind::PermissionDenied => FbError::Permission(path.to_owned()),
            _ => FbError::Open {
                path: path.to_owned(),
                source: e,
            },
        })?;
        Ok(FbDevice {
            path: path.to_owned(),
            file,
            map: None,
        })
    }

    /// Reads the current geometry from the device.
    pub fn geometry(&self) -> Result<Geometry, FbError> {
        let fd = self.file.as_raw_fd();
        let (mut var, mut fix) = (FbVarScreeninfo::default(), FbFixScreeninfo::default());
        // SAFETY: both ioctls write exactly one struct of the type passed, which lives
        // for the call.
        let r = unsafe { fbioget_vscreeninfo(fd, &mut var) }
            .and_then(|_| unsafe { fbioget_fscreeninfo(fd, &mut fix) });
        match r {
            Ok(_) => {}
            Err(e @ (Errno::ENOTTY | Errno::EINVAL)) => {
                return Err(FbError::NotFramebuffer(self.path.clone(), e))
            }
            Err(e) => return Err(FbError::Gone(self.path.clone(), e)),
        }
        geometry(&var, &fix).map_err(|e| FbError::Format(self.path.clone(), e))
    }

    /// The visible picture for `g`, mapping (again) when `g` differs from the mapped one.
    pub fn picture(&mut self, g: &Geometry) -> Result<&[u8], FbError> {
        let current = matches!(&self.map, Some((mapped, _)) if mapped.mem_len == g.mem_len && mapped.mem_start == g.mem_start);
        if !current {
            self.map = None;
            let len = NonZeroUsize::new(g.mem_len).ok_or_else(|| {
                FbError::Format(self.path.clone(), FormatError("no memory".into()))
            })?;
            // SAFETY: a new read-only shared mapping of the device; the kernel checks the
            // length against the framebuffer's memory.
            let ptr = unsafe {
                mmap(
                    None,
                    len,
                    ProtFlags::PROT_READ,
                    MapFlags::MAP_SHARED,
                    &self.file,
                    0,
                )
            }
            .map_err(|errno| FbError::Map {
                path: self.path.clone(),
                len: g.mem_len,
                errno,
            })?;
            self.map = Some((
                g.clone(),
                Mapping {
                    ptr,
                    len: g.mem_len,
                },
            ));
        }
        let (_, map) = self.map.as_ref().expect("mapped above");
        let bytes = map.bytes();
        Ok(&bytes[g.offset.min(bytes.len())..])
    }
}

/// `/dev/fbN` devices present, in number order.
pub fn list_framebuffers() -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("fb")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// One line about a framebuffer: its geometry and format, or why it cannot be read.
pub fn describe(path: &Path) -> String {
    match FbDevice::open(path).and_then(|d| d.geometry()) {
        Ok(g) => format!("{}: {g}", path.display()),
        Err(e) => format!("{}: {e}", path.display()),
    }
}

/// The framebuffer source.
pub struct FramebufferSource {
    path: PathBuf,
    width: usize,
    height: usize,
    interval: Duration,
    pool: BufferPool,
}

impl FramebufferSource {
    pub fn new(path: PathBuf, width: u32, height: u32, fps: u32) -> Self {
        let (width, height) = (width as usize, height as usize);
        FramebufferSource {
            path,
            width,
            height,
            interval: Duration::from_secs_f64(1.0 / fps.max(1) as f64),
            pool: BufferPool::new(width, height),
        }
    }

    /// Grabs frames from `dev` at the configured rate while someone watches.
    fn capture(&self, ctx: &mut SourceContext, dev: &mut FbDevice) -> Result<(), FbError> {
        let mut converter: Option<(Geometry, ScreenConverter)> = None;
        let mut next = Instant::now();
        while ctx.has_demand() {
            // The same absolute schedule as the test pattern: no drift with grab time, and
            // no burst to catch up after a slow frame.
            let now = Instant::now();
            if now < next {
                if ctx.sleep(next - now) {
                    return Ok(());
                }
            } else if now - next > self.interval {
                next = now;
            }
            next += self.interval;
            let g = dev.geometry()?;
            if converter.as_ref().map(|(cg, _)| cg) != Some(&g) {
                let conv = ScreenConverter::new(g.shape, self.width, self.height)
                    .map_err(|e| FbError::Format(self.path.clone(), e))?;
                let fit = conv.fit();
                tracing::info!(
                    "screen {}: {g}; frames {}x{} (the picture {}x{} at {},{})",
                    self.path.display(),
                    self.width,
                    self.height,
                    fit.w,
                    fit.h,
                    fit.x,
                    fit.y
                );
                converter = Some((g.clone(), conv));
            }
            let (_, conv) = converter.as_mut().expect("made above");
            let captured = CaptureTime::now();
            let mut frame = self.pool.take();
            conv.convert(dev.picture(&g)?, frame.planes_mut())
                .map_err(|e| FbError::Short(self.path.clone(), e))?;
            let seq = ctx.next_seq();
            ctx.emit(Frame {
                seq,
                captured,
                width: self.width as u32,
                height: self.height as u32,
                no_signal: false,
                payload: Payload::Yuv420(std::sync::Arc::new(frame)),
            });
        }
        Ok(())
    }
}

impl Source for FramebufferSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "screen",
            name: format!("framebuffer {}", self.path.display()),
        }
    }

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        loop {
            if !ctx.wait_for_demand() {
                return Ok(());
            }
            ctx.mark_starting();
            let mut dev = FbDevice::open(&self.path)?;
            self.capture(ctx, &mut dev)?;
            if ctx.is_shutting_down() {
                return Ok(());
            }
            // Nobody watches: the device closes here and opens again for the next viewer.
            tracing::debug!(device = %self.path.display(), "nobody watches: framebuffer closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::Shutdown;
    use crate::source::testing::TestLink;

    fn bochs_like() -> (FbVarScreeninfo, FbFixScreeninfo) {
        let bf = |offset, length| FbBitfield {
            offset,
            length,
            msb_right: 0,
        };
        let var = FbVarScreeninfo {
            xres: 1280,
            yres: 800,
            xres_virtual: 1280,
            yres_virtual: 800,
            bits_per_pixel: 32,
            red: bf(16, 8),
            green: bf(8, 8),
            blue: bf(0, 8),
            ..Default::default()
        };
        let mut fix = FbFixScreeninfo {
            smem_len: 1280 * 800 * 4,
            line_length: 1280 * 4,
            visual: FB_VISUAL_TRUECOLOR,
            ..Default::default()
        };
        fix.id[..14].copy_from_slice(b"bochs-drmdrmfb");
        (var, fix)
    }

    #[test]
    fn a_kms_framebuffer_is_read_as_xrgb8888() {
        let (var, fix) = bochs_like();
        let g = geometry(&var, &fix).unwrap();
        assert_eq!(
            g.to_string(),
            "1280x800 XRGB8888, 5120 bytes a row (bochs-drmdrmfb)"
        );
        assert_eq!(g.offset, 0);
        // Double-buffered (virtual 1280x1600), showing the lower half, 4 pixels in.
        let fix2 = FbFixScreeninfo {
            smem_len: 2 * fix.smem_len,
            ..fix
        };
        let panned = FbVarScreeninfo {
            yres_virtual: 1600,
            yoffset: 800,
            xoffset: 4,
            xres: 1276,
            ..var
        };
        assert_eq!(geometry(&panned, &fix2).unwrap().offset, 800 * 5120 + 16);
        // The same panning past the end of the memory is refused, not read out of bounds.
        let e = geometry(
            &FbVarScreeninfo {
                yoffset: 801,
                ..panned
            },
            &fix2,
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    #[test]
    fn unreadable_formats_are_named() {
        let (var, fix) = bochs_like();
        let err = |var: FbVarScreeninfo, fix: FbFixScreeninfo| {
            geometry(&var, &fix).unwrap_err().to_string()
        };
        let palette = FbFixScreeninfo { visual: 3, ..fix };
        let e = err(
            FbVarScreeninfo {
                bits_per_pixel: 8,
                ..var
            },
            palette,
        );
        assert!(
            e.contains("8 bits per pixel, pseudocolour (palette)"),
            "{e}"
        );
        assert!(e.contains("RGB565"), "the message says what is read: {e}");
        let e = err(
            FbVarScreeninfo {
                grayscale: 1,
                ..var
            },
            fix,
        );
        assert!(e.contains("greyscale"), "{e}");
        let e = err(
            FbVarScreeninfo {
                grayscale: u32::from_le_bytes(*b"NV12"),
                ..var
            },
            fix,
        );
        assert!(e.contains("FOURCC format \"NV12\""), "{e}");
        let e = err(var, FbFixScreeninfo { type_: 1, ..fix });
        assert!(e.contains("not packed pixels"), "{e}");
        let e = err(
            var,
            FbFixScreeninfo {
                smem_len: 4096,
                ..fix
            },
        );
        assert!(e.contains("does not fit the 4096 bytes"), "{e}");
        let e = err(FbVarScreeninfo { xres: 0, ..var }, fix);
        assert!(e.contains("0x800"), "{e}");
    }

    #[test]
    fn open_errors_say_what_to_do() {
        let e = FbDevice::open(Path::new("/nonexistent/fb7")).err().unwrap();
        assert!(
            e.to_string()
                .starts_with("no framebuffer at /nonexistent/fb7"),
            "{e}"
        );
        let e = FbError::Permission("/dev/fb0".into()).to_string();
        assert!(e.contains("`video` group"), "{e}");
        // Something that opens but is not a framebuffer.
        let dev = FbDevice::open(Path::new("/dev/null")).unwrap();
        let e = dev.geometry().unwrap_err().to_string();
        assert!(
            e.starts_with("/dev/null is not a framebuffer device"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_device_fails_the_run_with_the_reason_once_watched() {
        let shutdown = Shutdown::new();
        let (mut ctx, link) = TestLink::context(&shutdown);
        let mut src = FramebufferSource::new("/nonexistent/fb0".into(), 64, 48, 10);
        assert_eq!(src.info().kind, "screen");
        link.watched
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match src.run(&mut ctx) {
            Err(SourceError::Failed(why)) => assert!(why.contains("no framebuffer"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
