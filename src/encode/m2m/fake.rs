//! A fake M2M encoder node for the unit tests: it keeps buffers in memory, "encodes" a raw
//! frame by running a script (frame number → the coded buffers the driver would hand out),
//! imposes a driver's layout rules (stride and height alignment) and logs what it was asked,
//! so the codec layers' controls, parameter-set handling and keyframe forcing are checked
//! without a Pi. The plumbing against a real driver is checked with vicodec in the VM.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use v4l::v4l_sys;

use super::device::{Dequeued, DeviceInfo, Format, M2mDevice, PlaneFormat, Queue};
use super::FourCc;
use crate::frame::Yuv420Buffer;

/// What the fake was asked.
#[derive(Debug, Default)]
pub struct Log {
    /// Every control set, in order.
    pub controls: Vec<(u32, i32)>,
    pub frame_rate: Option<u32>,
    /// "control ID", "queue raw", "stop", … in order.
    pub events: Vec<String>,
    /// The bytes of each raw frame queued.
    pub raw_frames: Vec<Vec<u8>>,
}

type Script = Box<dyn FnMut(u64) -> Vec<Vec<u8>> + Send>;

pub struct FakeDevice {
    info: DeviceInfo,
    coded_fourcc: FourCc,
    pub raw_formats: Vec<FourCc>,
    /// Bytes per line are rounded up to this, heights to `height_align` (bcm2835-codec: 32
    /// and 16).
    pub stride_align: u32,
    pub height_align: u32,
    script: Script,
    /// Frames whose coded buffer the fake flags `V4L2_BUF_FLAG_ERROR`, as a driver does when
    /// the hardware failed on them.
    pub failing: std::ops::Range<u64>,
    log: Arc<Mutex<Log>>,
    refused: Vec<u32>,
    raw: Vec<Vec<u8>>,
    coded: Vec<Vec<u8>>,
    raw_done: VecDeque<u32>,
    coded_free: VecDeque<u32>,
    coded_ready: VecDeque<Dequeued>,
    pending: VecDeque<(Vec<u8>, u64, u32)>,
    frames: u64,
    raw_size: usize,
    coded_size: usize,
}

impl FakeDevice {
    /// An encoder of `coded` taking YU12 and NV12, whose frame `n` gives `script(n)`.
    pub fn encoder(
        coded: FourCc,
        script: impl FnMut(u64) -> Vec<Vec<u8>> + Send + 'static,
    ) -> FakeDevice {
        FakeDevice {
            info: DeviceInfo {
                path: "/dev/fake".into(),
                driver: "fake".into(),
                card: "fake encoder".into(),
                mplane: true,
            },
            coded_fourcc: coded,
            raw_formats: vec![FourCc::YUV420, FourCc::NV12],
            stride_align: 1,
            height_align: 1,
            script: Box::new(script),
            failing: 0..0,
            log: Arc::new(Mutex::new(Log::default())),
            refused: Vec::new(),
            raw: Vec::new(),
            coded: Vec::new(),
            raw_done: VecDeque::new(),
            coded_free: VecDeque::new(),
            coded_ready: VecDeque::new(),
            pending: VecDeque::new(),
            frames: 0,
            raw_size: 0,
            coded_size: 0,
        }
    }

    pub fn log(&self) -> Arc<Mutex<Log>> {
        self.log.clone()
    }

    /// The control is refused with EINVAL, as a driver that lacks it does.
    pub fn refuse_control(&mut self, id: u32) {
        self.refused.push(id);
    }

    fn event(&self, e: String) {
        self.log.lock().unwrap().events.push(e);
    }

    /// Moves coded output into free coded buffers.
    fn pump(&mut self) {
        while !self.pending.is_empty() && !self.coded_free.is_empty() {
            let (data, stamp, flags) = self.pending.pop_front().unwrap();
            let index = self.coded_free.pop_front().unwrap();
            let buf = &mut self.coded[index as usize];
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            self.coded_ready.push_back(Dequeued {
                index,
                bytesused: n as u32,
                data_offset: 0,
                flags,
                timestamp_us: stamp,
            });
        }
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EINVAL)
}

impl M2mDevice for FakeDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn formats(&mut self, queue: Queue) -> io::Result<Vec<FourCc>> {
        Ok(match queue {
            Queue::Raw => self.raw_formats.clone(),
            Queue::Coded => vec![self.coded_fourcc],
        })
    }

    fn set_format(&mut self, queue: Queue, want: &Format) -> io::Result<Format> {
        self.event(format!("format {queue:?} {}", want.fourcc));
        match queue {
            Queue::Coded => {
                if want.fourcc != self.coded_fourcc {
                    return Err(einval());
                }
                self.coded_size = (want.width * want.height) as usize;
                Ok(Format {
                    plane: PlaneFormat {
                        bytesperline: 0,
                        sizeimage: self.coded_size as u32,
                    },
                    ..want.clone()
                })
            }
            Queue::Raw => {
                let fourcc = if self.raw_formats.contains(&want.fourcc) {
                    want.fourcc
                } else {
                    self.raw_formats[0]
                };
                // A stride asked for is kept if the alignment allows it, as drivers do.
                let stride = want.plane.bytesperline.max(want.width);
                let stride = stride.div_ceil(self.stride_align) * self.stride_align;
                let rows = want.height.div_ceil(self.height_align) * self.height_align;
                self.raw_size = (stride * rows + stride * rows.div_ceil(2)) as usize;
                Ok(Format {
                    fourcc,
                    width: want.width,
                    height: want.height,
                    plane: PlaneFormat {
                        bytesperline: stride,
                        sizeimage: self.raw_size as u32,
                    },
                })
            }
        }
    }

    fn set_frame_rate(&mut self, fps: u32) -> io::Result<()> {
        self.log.lock().unwrap().frame_rate = Some(fps);
        Ok(())
    }

    fn set_control(&mut self, id: u32, value: i32) -> io::Result<()> {
        if self.refused.contains(&id) {
            return Err(einval());
        }
        self.event(format!("control {id}"));
        self.log.lock().unwrap().controls.push((id, value));
        Ok(())
    }

    fn allocate(&mut self, queue: Queue, count: u32) -> io::Result<u32> {
        let (bufs, size) = match queue {
            Queue::Raw => (&mut self.raw, self.raw_size),
            Queue::Coded => (&mut self.coded, self.coded_size.max(64)),
        };
        *bufs = (0..count).map(|_| vec![0; size]).collect();
        Ok(count)
    }

    fn allocate_imported(&mut self, count: u32) -> io::Result<u32> {
        self.event("import raw".into());
        self.raw = (0..count).map(|_| Vec::new()).collect();
        Ok(count)
    }

    /// Reads the frame from the file behind `fd` (the tests pass a file, standing in for a
    /// dmabuf), then goes on as [`Self::queue`].
    fn queue_imported(
        &mut self,
        index: u32,
        fd: std::os::fd::RawFd,
        _length: u32,
        bytesused: u32,
        timestamp_us: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller's descriptor stays open for this call; borrowed, not owned.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut frame = vec![0; bytesused as usize];
        nix::sys::uio::pread(fd, &mut frame, 0)?;
        self.raw[index as usize] = frame;
        self.queue(Queue::Raw, index, bytesused, timestamp_us)
    }

    fn buffer(&self, queue: Queue, index: u32) -> &[u8] {
        match queue {
            Queue::Raw => &self.raw[index as usize],
            Queue::Coded => &self.coded[index as usize],
        }
    }

    fn buffer_mut(&mut self, queue: Queue, index: u32) -> &mut [u8] {
        match queue {
            Queue::Raw => &mut self.raw[index as usize],
            Queue::Coded => &mut self.coded[index as usize],
        }
    }

    fn queue(
        &mut self,
        queue: Queue,
        index: u32,
        bytesused: u32,
        timestamp_us: u64,
    ) -> io::Result<()> {
        match queue {
            Queue::Raw => {
                self.event("queue raw".into());
                let frame = self.raw[index as usize][..bytesused as usize].to_vec();
                self.log.lock().unwrap().raw_frames.push(frame);
                let out = (self.script)(self.frames);
                let flags = if self.failing.contains(&self.frames) {
                    v4l_sys::V4L2_BUF_FLAG_ERROR
                } else {
                    0
                };
                self.frames += 1;
                for data in out {
                    self.pending.push_back((data, timestamp_us, flags));
                }
                self.raw_done.push_back(index);
            }
            Queue::Coded => self.coded_free.push_back(index),
        }
        self.pump();
        Ok(())
    }

    fn dequeue(&mut self, queue: Queue) -> io::Result<Option<Dequeued>> {
        Ok(match queue {
            Queue::Raw => self.raw_done.pop_front().map(|index| Dequeued {
                index,
                bytesused: 0,
                data_offset: 0,
                flags: 0,
                timestamp_us: 0,
            }),
            Queue::Coded => self.coded_ready.pop_front(),
        })
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.raw_done.is_empty() && self.coded_ready.is_empty() {
            std::thread::sleep(timeout);
            return Ok(false);
        }
        Ok(true)
    }

    fn stream(&mut self, queue: Queue, on: bool) -> io::Result<()> {
        self.event(format!("stream {queue:?} {on}"));
        Ok(())
    }

    fn stop(&mut self) -> io::Result<()> {
        self.event("stop".into());
        self.pending
            .push_back((Vec::new(), 0, v4l_sys::V4L2_BUF_FLAG_LAST));
        self.pump();
        Ok(())
    }
}

/// I420 planes of one value each, or a luma ramp, at a stride wider than the picture.
pub struct Planes {
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    stride: usize,
}

impl Planes {
    pub fn grey(width: usize, height: usize) -> Planes {
        Planes::filled(width, height, |_, _| 128, 128, 128)
    }

    /// Luma `f(column, row)`, chroma `u` and `v`; stride = width + 16.
    pub fn filled(
        width: usize,
        height: usize,
        f: impl Fn(usize, usize) -> u8,
        u: u8,
        v: u8,
    ) -> Planes {
        let stride = width + 16;
        let mut y = vec![0; stride * height];
        for r in 0..height {
            for c in 0..width {
                y[r * stride + c] = f(c, r);
            }
        }
        let chroma = stride / 2 * height.div_ceil(2);
        Planes {
            y,
            u: vec![u; chroma],
            v: vec![v; chroma],
            stride,
        }
    }
}

impl Yuv420Buffer for Planes {
    fn planes(&self) -> [&[u8]; 3] {
        [&self.y, &self.u, &self.v]
    }
    fn strides(&self) -> [usize; 3] {
        [self.stride, self.stride / 2, self.stride / 2]
    }
}
