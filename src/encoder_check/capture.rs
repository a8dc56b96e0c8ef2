//! A V4L2 capture device streaming YU12 into mapped buffers that it also exports as dmabufs
//! (`VIDIOC_EXPBUF`): the source side of `--encoder-check-from`, which hands those dmabufs to
//! an M2M encoder without copying them (vivid → vicodec in the VM).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use v4l::v4l2::vidioc;
use v4l::v4l_sys;

use crate::encode::m2m::device::{ioctl, zeroed, Mapping};
use crate::encode::m2m::{Format, FourCc, PlaneFormat};

const BUFFERS: u32 = 4;

/// One capture buffer: its mapping (to read what was captured) and its exported dmabuf.
struct Buffer {
    mapping: Mapping,
    dmabuf: OwnedFd,
}

pub struct ExportingCapture {
    file: File,
    buffers: Vec<Buffer>,
    pub format: Format,
}

const CAPTURE: u32 = v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;

impl ExportingCapture {
    /// Opens `path`, asks for YU12 at `width`x`height`, maps and exports its buffers and
    /// starts streaming.
    pub fn open(path: &Path, width: u32, height: u32) -> Result<ExportingCapture, String> {
        let at = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| at("opening", e))?;
        let mut f: v4l_sys::v4l2_format = zeroed();
        f.type_ = CAPTURE;
        // SAFETY: the pix member is the one a VIDEO_CAPTURE type selects; zeroed before.
        let pix = unsafe { &mut f.fmt.pix };
        pix.width = width;
        pix.height = height;
        pix.pixelformat = FourCc::YUV420.0;
        pix.field = v4l_sys::v4l2_field_V4L2_FIELD_NONE;
        ioctl(&file, vidioc::VIDIOC_S_FMT, &mut f).map_err(|e| at("setting YU12", e))?;
        // SAFETY: as above, filled by the driver.
        let pix = unsafe { f.fmt.pix };
        let format = Format {
            fourcc: FourCc(pix.pixelformat),
            width: pix.width,
            height: pix.height,
            plane: PlaneFormat {
                bytesperline: pix.bytesperline,
                sizeimage: pix.sizeimage,
            },
        };
        if (format.fourcc, format.width, format.height) != (FourCc::YUV420, width, height) {
            return Err(format!(
                "{}: asked for YU12 {width}x{height}, the driver set {} {}x{}",
                path.display(),
                format.fourcc,
                format.width,
                format.height
            ));
        }
        let mut r: v4l_sys::v4l2_requestbuffers = zeroed();
        r.count = BUFFERS;
        r.type_ = CAPTURE;
        r.memory = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;
        ioctl(&file, vidioc::VIDIOC_REQBUFS, &mut r).map_err(|e| at("REQBUFS", e))?;
        let mut capture = ExportingCapture {
            file,
            buffers: Vec::new(),
            format,
        };
        for index in 0..r.count {
            let mut b: v4l_sys::v4l2_buffer = zeroed();
            b.type_ = CAPTURE;
            b.memory = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;
            b.index = index;
            ioctl(&capture.file, vidioc::VIDIOC_QUERYBUF, &mut b).map_err(|e| at("QUERYBUF", e))?;
            // SAFETY: MMAP buffers are described by their offset (the member QUERYBUF fills).
            let offset = unsafe { b.m.offset };
            let mapping =
                Mapping::map(&capture.file, offset, b.length, false).map_err(|e| at("mmap", e))?;
            let mut x: v4l_sys::v4l2_exportbuffer = zeroed();
            x.type_ = CAPTURE;
            x.index = index;
            x.flags = (nix::libc::O_RDONLY | nix::libc::O_CLOEXEC) as u32;
            let exported = ioctl(&capture.file, vidioc::VIDIOC_EXPBUF, &mut x);
            if let Err(e) = exported {
                return Err(at("VIDIOC_EXPBUF (the driver cannot export dmabufs)", e));
            }
            // SAFETY: EXPBUF returned a new file descriptor that nothing else owns.
            let dmabuf = unsafe { OwnedFd::from_raw_fd(x.fd) };
            capture.buffers.push(Buffer { mapping, dmabuf });
            capture.requeue(index)?;
        }
        let mut t = CAPTURE as std::os::raw::c_int;
        ioctl(&capture.file, vidioc::VIDIOC_STREAMON, &mut t).map_err(|e| at("STREAMON", e))?;
        Ok(capture)
    }

    /// Gives buffer `index` back to the driver.
    pub fn requeue(&mut self, index: u32) -> Result<(), String> {
        let mut b: v4l_sys::v4l2_buffer = zeroed();
        b.type_ = CAPTURE;
        b.memory = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;
        b.index = index;
        ioctl(&self.file, vidioc::VIDIOC_QBUF, &mut b).map_err(|e| format!("QBUF: {e}"))
    }

    /// The next captured buffer's index, waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<u32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut b: v4l_sys::v4l2_buffer = zeroed();
            b.type_ = CAPTURE;
            b.memory = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;
            match ioctl(&self.file, vidioc::VIDIOC_DQBUF, &mut b) {
                Ok(()) => return Ok(b.index),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("DQBUF: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no frame captured within {timeout:?}"));
            }
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(1000) as i32)
                .unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut fds, ms);
        }
    }

    /// Buffer `index`'s dmabuf and its length.
    pub fn dmabuf(&self, index: u32) -> (BorrowedFd<'_>, u32) {
        let b = &self.buffers[index as usize];
        (b.dmabuf.as_fd(), b.mapping.bytes().len() as u32)
    }

    /// What buffer `index` holds (read through its mapping).
    pub fn data(&self, index: u32) -> &[u8] {
        self.buffers[index as usize].mapping.bytes()
    }
}

impl Drop for ExportingCapture {
    fn drop(&mut self) {
        let mut t = CAPTURE as std::os::raw::c_int;
        let _ = ioctl(&self.file, vidioc::VIDIOC_STREAMOFF, &mut t);
        // Streaming is off: the buffers' mappings can go.
        self.buffers.clear();
    }
}
