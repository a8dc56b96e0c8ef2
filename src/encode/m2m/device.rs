//! The device seam of the M2M encoder: [`M2mDevice`], what [`super::M2mEncoder`] asks of a
//! node, and [`V4l2Device`], its implementation on a real `/dev/videoN` through the V4L2
//! ioctls and `mmap` (the unit tests use a fake with the same trait).
//!
//! One implementation serves both V4L2 APIs: a single-planar node (`VIDEO_M2M`: vicodec by
//! default) and a multi-planar one (`VIDEO_M2M_MPLANE`: bcm2835-codec, vicodec with
//! `multiplanar=1`). The formats picamd uses are one-plane formats either way (YU12 or NV12
//! in one buffer, one coded buffer), so a multi-planar buffer here is one `v4l2_plane`.
//!
//! The node is opened non-blocking: DQBUF returns at once (`EAGAIN`: nothing ready) and
//! [`M2mDevice::wait`] polls, so a stuck driver costs a timeout, never a hung thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

use v4l::v4l2::vidioc;
use v4l::v4l_sys;

use super::FourCc;

/// The two queues of an M2M encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// V4L2's OUTPUT queue: raw frames to the encoder.
    Raw,
    /// V4L2's CAPTURE queue: coded frames from it.
    Coded,
}

/// One plane's layout as the driver sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaneFormat {
    pub bytesperline: u32,
    pub sizeimage: u32,
}

/// A queue's format: what was asked, or what the driver made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    /// One entry: picamd's formats are single-buffer ones.
    pub plane: PlaneFormat,
}

/// A buffer the driver gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dequeued {
    pub index: u32,
    /// Bytes of payload, from `data_offset`.
    pub bytesused: u32,
    pub data_offset: u32,
    /// `V4L2_BUF_FLAG_*`.
    pub flags: u32,
    /// Copied from the raw buffer the coded one was made from (`TIMESTAMP_COPY`).
    pub timestamp_us: u64,
}

/// The picture sizes a driver takes: `min` to `max`, width and height each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min: (u32, u32),
    pub max: (u32, u32),
}

impl SizeRange {
    pub fn holds(&self, width: u32, height: u32) -> bool {
        (self.min.0..=self.max.0).contains(&width) && (self.min.1..=self.max.1).contains(&height)
    }
}

/// What the node is, from `VIDIOC_QUERYCAP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub path: String,
    pub driver: String,
    pub card: String,
    /// The multi-planar API (`V4L2_CAP_VIDEO_M2M_MPLANE`).
    pub mplane: bool,
}

/// What the encoder needs of an M2M node. Errors are `io::Error`s with the driver's errno;
/// the encoder adds which step failed.
pub trait M2mDevice: Send {
    fn info(&self) -> &DeviceInfo;
    /// The formats a queue offers (`VIDIOC_ENUM_FMT`).
    fn formats(&mut self, queue: Queue) -> io::Result<Vec<FourCc>>;
    /// The smallest and largest picture the driver takes for a coded format
    /// (`VIDIOC_ENUM_FRAMESIZES`, stepwise or continuous); `None` when it does not say.
    fn size_range(&mut self, _fourcc: FourCc) -> Option<SizeRange> {
        None
    }
    /// Sets a queue's format (`VIDIOC_S_FMT`); what the driver made of it.
    fn set_format(&mut self, queue: Queue, want: &Format) -> io::Result<Format>;
    /// Frames per second on the raw queue (`VIDIOC_S_PARM`), which rate control works from.
    fn set_frame_rate(&mut self, fps: u32) -> io::Result<()>;
    /// `VIDIOC_S_CTRL`.
    fn set_control(&mut self, id: u32, value: i32) -> io::Result<()>;
    /// `VIDIOC_REQBUFS` with MMAP, then maps each buffer; how many the driver gave (0 frees).
    fn allocate(&mut self, queue: Queue, count: u32) -> io::Result<u32>;
    /// `VIDIOC_REQBUFS` with DMABUF on the raw queue: buffers that import the caller's
    /// dmabufs instead of being mapped (zero-copy from a source that exports its buffers).
    fn allocate_imported(&mut self, _count: u32) -> io::Result<u32> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// `VIDIOC_QBUF` of an imported raw buffer: the dmabuf `fd`, `length` bytes, of which
    /// `bytesused` are the frame.
    fn queue_imported(
        &mut self,
        _index: u32,
        _fd: std::os::fd::RawFd,
        _length: u32,
        _bytesused: u32,
        _timestamp_us: u64,
    ) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// A mapped buffer.
    fn buffer(&self, queue: Queue, index: u32) -> &[u8];
    fn buffer_mut(&mut self, queue: Queue, index: u32) -> &mut [u8];
    /// `VIDIOC_QBUF`: `bytesused` of payload (0 on the coded queue: the driver fills it).
    fn queue(
        &mut self,
        queue: Queue,
        index: u32,
        bytesused: u32,
        timestamp_us: u64,
    ) -> io::Result<()>;
    /// `VIDIOC_DQBUF`; `None` when nothing is ready.
    fn dequeue(&mut self, queue: Queue) -> io::Result<Option<Dequeued>>;
    /// Waits up to `timeout` for a buffer to be ready on either queue (`poll`); `false` on
    /// timeout.
    fn wait(&mut self, timeout: Duration) -> io::Result<bool>;
    /// `VIDIOC_STREAMON` / `VIDIOC_STREAMOFF`.
    fn stream(&mut self, queue: Queue, on: bool) -> io::Result<()>;
    /// `VIDIOC_ENCODER_CMD` with `V4L2_ENC_CMD_STOP`: finish what was queued, then flag the
    /// last coded buffer `LAST`.
    fn stop(&mut self) -> io::Result<()>;
}

/// A boxed device is a device (the fallback's openers hand out real or fake ones).
impl M2mDevice for Box<dyn M2mDevice> {
    fn info(&self) -> &DeviceInfo {
        (**self).info()
    }
    fn formats(&mut self, queue: Queue) -> io::Result<Vec<FourCc>> {
        (**self).formats(queue)
    }
    fn size_range(&mut self, fourcc: FourCc) -> Option<SizeRange> {
        (**self).size_range(fourcc)
    }
    fn set_format(&mut self, queue: Queue, want: &Format) -> io::Result<Format> {
        (**self).set_format(queue, want)
    }
    fn set_frame_rate(&mut self, fps: u32) -> io::Result<()> {
        (**self).set_frame_rate(fps)
    }
    fn set_control(&mut self, id: u32, value: i32) -> io::Result<()> {
        (**self).set_control(id, value)
    }
    fn allocate(&mut self, queue: Queue, count: u32) -> io::Result<u32> {
        (**self).allocate(queue, count)
    }
    fn allocate_imported(&mut self, count: u32) -> io::Result<u32> {
        (**self).allocate_imported(count)
    }
    fn queue_imported(
        &mut self,
        index: u32,
        fd: std::os::fd::RawFd,
        length: u32,
        bytesused: u32,
        timestamp_us: u64,
    ) -> io::Result<()> {
        (**self).queue_imported(index, fd, length, bytesused, timestamp_us)
    }
    fn buffer(&self, queue: Queue, index: u32) -> &[u8] {
        (**self).buffer(queue, index)
    }
    fn buffer_mut(&mut self, queue: Queue, index: u32) -> &mut [u8] {
        (**self).buffer_mut(queue, index)
    }
    fn queue(
        &mut self,
        queue: Queue,
        index: u32,
        bytesused: u32,
        timestamp_us: u64,
    ) -> io::Result<()> {
        (**self).queue(queue, index, bytesused, timestamp_us)
    }
    fn dequeue(&mut self, queue: Queue) -> io::Result<Option<Dequeued>> {
        (**self).dequeue(queue)
    }
    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        (**self).wait(timeout)
    }
    fn stream(&mut self, queue: Queue, on: bool) -> io::Result<()> {
        (**self).stream(queue, on)
    }
    fn stop(&mut self) -> io::Result<()> {
        (**self).stop()
    }
}

/// Opens a node as a boxed device.
pub fn open_boxed(path: &Path) -> io::Result<Box<dyn M2mDevice>> {
    Ok(Box::new(V4l2Device::open(path)?))
}

/// A memory mapping of one V4L2 buffer, unmapped on drop (also the encoder check's
/// capture buffers).
pub(crate) struct Mapping {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through &/&mut self.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the `len` bytes at `offset` that QUERYBUF reported for one of `file`'s buffers,
    /// readable, and writable too when `writable`.
    pub(crate) fn map(file: &File, offset: u32, len: u32, writable: bool) -> io::Result<Mapping> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len = std::num::NonZeroUsize::new(len as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the driver gave a 0-byte buffer",
            )
        })?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: mapping a buffer of this device at the offset and length it reported; the
        // Mapping owns it and unmaps it on drop.
        let ptr = unsafe {
            mmap(
                None,
                len,
                prot,
                MapFlags::MAP_SHARED,
                file.as_fd(),
                offset as nix::libc::off_t,
            )
        }
        .map_err(io::Error::from)?;
        Ok(Mapping {
            ptr,
            len: len.get(),
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, mapped writable, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows them now.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// A real M2M node.
pub struct V4l2Device {
    file: File,
    info: DeviceInfo,
    raw: Vec<Mapping>,
    coded: Vec<Mapping>,
    /// The raw queue imports dmabufs ([`M2mDevice::allocate_imported`]).
    raw_imported: bool,
}

/// Plain-data V4L2 structs, zeroed.
pub(crate) fn zeroed<T>() -> T {
    // SAFETY: only used for the bindgen'd V4L2 structs below: integers, arrays and unions of
    // them (and pointers, for which null is valid), where all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl V4l2Device {
    /// Opens `path` and checks that it is an M2M node with streaming I/O.
    pub fn open(path: &Path) -> io::Result<V4l2Device> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)?;
        let mut caps: v4l_sys::v4l2_capability = zeroed();
        ioctl(&file, vidioc::VIDIOC_QUERYCAP, &mut caps)?;
        let device_caps = if caps.capabilities & v4l_sys::V4L2_CAP_DEVICE_CAPS != 0 {
            caps.device_caps
        } else {
            caps.capabilities
        };
        let text = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let mplane = device_caps & v4l_sys::V4L2_CAP_VIDEO_M2M_MPLANE != 0;
        let single = device_caps & v4l_sys::V4L2_CAP_VIDEO_M2M != 0;
        if !(mplane || single) || device_caps & v4l_sys::V4L2_CAP_STREAMING == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a memory-to-memory device with streaming I/O",
            ));
        }
        Ok(V4l2Device {
            file,
            info: DeviceInfo {
                path: path.display().to_string(),
                driver: text(&caps.driver),
                card: text(&caps.card),
                // A node offering both (vicodec with multiplanar=1 offers only MPLANE; none
                // known offers both) is driven single-planar, the simpler API.
                mplane: mplane && !single,
            },
            raw: Vec::new(),
            coded: Vec::new(),
            raw_imported: false,
        })
    }

    /// The node's path as given.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.info.path)
    }

    fn buf_type(&self, queue: Queue) -> u32 {
        match (queue, self.info.mplane) {
            (Queue::Raw, false) => v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT,
            (Queue::Raw, true) => v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE,
            (Queue::Coded, false) => v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE,
            (Queue::Coded, true) => v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
        }
    }

    fn maps(&mut self, queue: Queue) -> &mut Vec<Mapping> {
        match queue {
            Queue::Raw => &mut self.raw,
            Queue::Coded => &mut self.coded,
        }
    }

    /// A `v4l2_buffer` for `queue`/`index`, its plane array pointed at `plane`.
    fn v4l2_buffer(
        &self,
        queue: Queue,
        index: u32,
        plane: &mut v4l_sys::v4l2_plane,
    ) -> v4l_sys::v4l2_buffer {
        let mut b: v4l_sys::v4l2_buffer = zeroed();
        b.type_ = self.buf_type(queue);
        b.memory = if queue == Queue::Raw && self.raw_imported {
            v4l_sys::v4l2_memory_V4L2_MEMORY_DMABUF
        } else {
            v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP
        };
        b.index = index;
        if self.info.mplane {
            b.m.planes = plane;
            b.length = 1;
        }
        b
    }

    /// `VIDIOC_REQBUFS`: `count` buffers of `memory` on `queue`; how many the driver gave.
    fn request_buffers(&self, queue: Queue, count: u32, memory: u32) -> io::Result<u32> {
        let mut r: v4l_sys::v4l2_requestbuffers = zeroed();
        r.count = count;
        r.type_ = self.buf_type(queue);
        r.memory = memory;
        ioctl(&self.file, vidioc::VIDIOC_REQBUFS, &mut r)?;
        Ok(r.count)
    }

    /// `VIDIOC_QBUF` of a filled-in buffer, stamped with `timestamp_us` (a frame counter the
    /// driver copies to the coded buffer).
    fn queue_buffer(&self, b: &mut v4l_sys::v4l2_buffer, timestamp_us: u64) -> io::Result<()> {
        b.field = v4l_sys::v4l2_field_V4L2_FIELD_NONE;
        b.timestamp.tv_sec = (timestamp_us / 1_000_000) as _;
        b.timestamp.tv_usec = (timestamp_us % 1_000_000) as _;
        ioctl(&self.file, vidioc::VIDIOC_QBUF, b)
    }
}

/// One ioctl on `file` with `arg`.
pub(crate) fn ioctl<T>(file: &File, request: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the struct type its request code is defined with, by
    // exclusive reference, so the kernel reads and writes only memory `arg` owns.
    unsafe {
        v4l::v4l2::ioctl(
            file.as_raw_fd(),
            request,
            (arg as *mut T).cast::<std::os::raw::c_void>(),
        )
    }
}

impl M2mDevice for V4l2Device {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn formats(&mut self, queue: Queue) -> io::Result<Vec<FourCc>> {
        let mut out = Vec::new();
        // Bounded: a driver lists a handful; 64 guards against one that never says EINVAL.
        for index in 0..64 {
            let mut d: v4l_sys::v4l2_fmtdesc = zeroed();
            d.index = index;
            d.type_ = self.buf_type(queue);
            match ioctl(&self.file, vidioc::VIDIOC_ENUM_FMT, &mut d) {
                Ok(()) => out.push(FourCc(d.pixelformat)),
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn size_range(&mut self, fourcc: FourCc) -> Option<SizeRange> {
        let mut e: v4l_sys::v4l2_frmsizeenum = zeroed();
        e.pixel_format = fourcc.0;
        ioctl(&self.file, vidioc::VIDIOC_ENUM_FRAMESIZES, &mut e).ok()?;
        let stepwise = [
            v4l_sys::v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_STEPWISE,
            v4l_sys::v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_CONTINUOUS,
        ];
        if !stepwise.contains(&e.type_) {
            // Discrete sizes from an encoder: not seen; say nothing rather than guess.
            return None;
        }
        // SAFETY: the stepwise member is the one these types select.
        let s = unsafe { e.__bindgen_anon_1.stepwise };
        Some(SizeRange {
            min: (s.min_width, s.min_height),
            max: (s.max_width, s.max_height),
        })
    }

    fn set_format(&mut self, queue: Queue, want: &Format) -> io::Result<Format> {
        let mut f: v4l_sys::v4l2_format = zeroed();
        f.type_ = self.buf_type(queue);
        let field = v4l_sys::v4l2_field_V4L2_FIELD_NONE;
        // SAFETY (both arms): writing and reading the union member that `type_` selects, as
        // the kernel does; the struct was zeroed, so every other byte is defined.
        if self.info.mplane {
            let p = unsafe { &mut f.fmt.pix_mp };
            p.width = want.width;
            p.height = want.height;
            p.pixelformat = want.fourcc.0;
            p.field = field;
            p.num_planes = 1;
            p.plane_fmt[0].bytesperline = want.plane.bytesperline;
            p.plane_fmt[0].sizeimage = want.plane.sizeimage;
        } else {
            let p = unsafe { &mut f.fmt.pix };
            p.width = want.width;
            p.height = want.height;
            p.pixelformat = want.fourcc.0;
            p.field = field;
            p.bytesperline = want.plane.bytesperline;
            p.sizeimage = want.plane.sizeimage;
        }
        ioctl(&self.file, vidioc::VIDIOC_S_FMT, &mut f)?;
        Ok(if self.info.mplane {
            let p = unsafe { &f.fmt.pix_mp };
            if p.num_planes != 1 {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the driver wants {} planes for {}",
                        p.num_planes, want.fourcc
                    ),
                ));
            }
            Format {
                fourcc: FourCc(p.pixelformat),
                width: p.width,
                height: p.height,
                plane: PlaneFormat {
                    bytesperline: p.plane_fmt[0].bytesperline,
                    sizeimage: p.plane_fmt[0].sizeimage,
                },
            }
        } else {
            let p = unsafe { &f.fmt.pix };
            Format {
                fourcc: FourCc(p.pixelformat),
                width: p.width,
                height: p.height,
                plane: PlaneFormat {
                    bytesperline: p.bytesperline,
                    sizeimage: p.sizeimage,
                },
            }
        })
    }

    fn set_frame_rate(&mut self, fps: u32) -> io::Result<()> {
        let mut p: v4l_sys::v4l2_streamparm = zeroed();
        p.type_ = self.buf_type(Queue::Raw);
        // SAFETY: the output member is the one an OUTPUT type selects; zeroed before.
        let out = unsafe { &mut p.parm.output };
        out.timeperframe.numerator = 1;
        out.timeperframe.denominator = fps.max(1);
        ioctl(&self.file, vidioc::VIDIOC_S_PARM, &mut p)
    }

    fn set_control(&mut self, id: u32, value: i32) -> io::Result<()> {
        let mut c: v4l_sys::v4l2_control = zeroed();
        c.id = id;
        c.value = value;
        ioctl(&self.file, vidioc::VIDIOC_S_CTRL, &mut c)
    }

    fn allocate(&mut self, queue: Queue, count: u32) -> io::Result<u32> {
        self.maps(queue).clear();
        let count = self.request_buffers(queue, count, v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP)?;
        for index in 0..count {
            let mut plane: v4l_sys::v4l2_plane = zeroed();
            let mut b = self.v4l2_buffer(queue, index, &mut plane);
            ioctl(&self.file, vidioc::VIDIOC_QUERYBUF, &mut b)?;
            // SAFETY: QUERYBUF filled the member its memory type selects (MMAP: offsets).
            let (len, offset) = if self.info.mplane {
                (plane.length, unsafe { plane.m.mem_offset })
            } else {
                (b.length, unsafe { b.m.offset })
            };
            let mapping = Mapping::map(&self.file, offset, len, true)?;
            self.maps(queue).push(mapping);
        }
        Ok(count)
    }

    fn allocate_imported(&mut self, count: u32) -> io::Result<u32> {
        self.raw.clear();
        let count =
            self.request_buffers(Queue::Raw, count, v4l_sys::v4l2_memory_V4L2_MEMORY_DMABUF)?;
        self.raw_imported = true;
        Ok(count)
    }

    fn queue_imported(
        &mut self,
        index: u32,
        fd: std::os::fd::RawFd,
        length: u32,
        bytesused: u32,
        timestamp_us: u64,
    ) -> io::Result<()> {
        // As in `queue`: the plane is complete before the buffer points at it.
        let mut plane: v4l_sys::v4l2_plane = zeroed();
        plane.bytesused = bytesused;
        plane.length = length;
        plane.m.fd = fd;
        let mut b = self.v4l2_buffer(Queue::Raw, index, &mut plane);
        if !self.info.mplane {
            b.m.fd = fd;
            b.length = length;
            b.bytesused = bytesused;
        }
        self.queue_buffer(&mut b, timestamp_us)
    }

    fn buffer(&self, queue: Queue, index: u32) -> &[u8] {
        let maps = match queue {
            Queue::Raw => &self.raw,
            Queue::Coded => &self.coded,
        };
        maps[index as usize].bytes()
    }

    fn buffer_mut(&mut self, queue: Queue, index: u32) -> &mut [u8] {
        self.maps(queue)[index as usize].bytes_mut()
    }

    fn queue(
        &mut self,
        queue: Queue,
        index: u32,
        bytesused: u32,
        timestamp_us: u64,
    ) -> io::Result<()> {
        // The plane is filled before the buffer points at it: nothing touches it directly
        // while the kernel may read it through that pointer.
        let mut plane: v4l_sys::v4l2_plane = zeroed();
        plane.bytesused = bytesused;
        plane.length = self.buffer(queue, index).len() as u32;
        let mut b = self.v4l2_buffer(queue, index, &mut plane);
        if !self.info.mplane {
            b.bytesused = bytesused;
        }
        self.queue_buffer(&mut b, timestamp_us)
    }

    fn dequeue(&mut self, queue: Queue) -> io::Result<Option<Dequeued>> {
        let mut plane: v4l_sys::v4l2_plane = zeroed();
        let mut b = self.v4l2_buffer(queue, 0, &mut plane);
        match ioctl(&self.file, vidioc::VIDIOC_DQBUF, &mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        let (bytesused, data_offset) = if self.info.mplane {
            (plane.bytesused, plane.data_offset)
        } else {
            (b.bytesused, 0)
        };
        let timestamp_us = b.timestamp.tv_sec as u64 * 1_000_000 + b.timestamp.tv_usec as u64;
        Ok(Some(Dequeued {
            index: b.index,
            bytesused: bytesused.saturating_sub(data_offset),
            data_offset,
            flags: b.flags,
            timestamp_us,
        }))
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let flags = PollFlags::POLLIN | PollFlags::POLLOUT | PollFlags::POLLPRI;
        let mut fds = [PollFd::new(self.file.as_fd(), flags)];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let ms = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(n) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.contains(PollFlags::POLLERR) && !revents.intersects(flags) {
                    return Err(io::Error::other("poll: error on the device"));
                }
                Ok(n > 0)
            }
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn stream(&mut self, queue: Queue, on: bool) -> io::Result<()> {
        let mut t = self.buf_type(queue) as std::os::raw::c_int;
        let req = if on {
            vidioc::VIDIOC_STREAMON
        } else {
            vidioc::VIDIOC_STREAMOFF
        };
        ioctl(&self.file, req, &mut t)
    }

    fn stop(&mut self) -> io::Result<()> {
        let mut c: v4l_sys::v4l2_encoder_cmd = zeroed();
        c.cmd = v4l_sys::V4L2_ENC_CMD_STOP;
        ioctl(&self.file, vidioc::VIDIOC_ENCODER_CMD, &mut c)
    }
}

impl Drop for V4l2Device {
    fn drop(&mut self) {
        // Off before unmapping, so the driver holds no buffer we unmap; the file closes last.
        let _ = self.stream(Queue::Raw, false);
        let _ = self.stream(Queue::Coded, false);
        self.raw.clear();
        self.coded.clear();
    }
}
