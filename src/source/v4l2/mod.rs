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
//! device reports; see [`V4l2Controls`] for the mapping. They are the shared
//! [`ControlBook`](super::controls::ControlBook): requests made before the device was ever
//! opened are kept and written when it opens.
//!
//! The parts, each in its own file: `negotiate` (what a device offers and the pick),
//! `convert` (YUYV, NV12 and YU12 to I420), `controls` (V4L2 controls and their mapping),
//! `capture` (opening, streaming, the idle watcher) and `list` (`--list-cameras`). Every
//! public item is re-exported here.

mod capture;
mod controls;
mod convert;
mod list;
mod negotiate;

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use self::controls::{control_writes, CtrlRange, DeviceControls, ExposureModes, V4l2Controls};
pub use self::convert::{nv12_to_i420, yu12_to_i420, yuyv_to_i420, ConvertError};
pub use self::list::{describe_devices, list_devices, DeviceListing, FormatListing, SizeListing};
pub use self::negotiate::{
    negotiate, negotiate_format, stepwise_intervals, stepwise_sizes, Choice, FormatOffer, Interval,
    PixelFormat, SizeOffer,
};

use self::capture::{close_session, IdleWatch, Session, StopOnDrop};
use super::controls::{CameraControls, Controls, InvalidControl};
use super::{Source, SourceContext, SourceError};
use crate::frame::SourceInfo;

/// A V4L2 capture device as a [`Source`].
pub struct V4l2Source {
    device: PathBuf,
    width: u32,
    height: u32,
    fps: u32,
    /// The `pixel_format` key: one format only, or `None` for the best offered.
    format: Option<PixelFormat>,
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
            format: None,
            controls: Arc::new(controls::new_controls()),
            name: Arc::new(Mutex::new(name)),
        }
    }

    /// Controls to set whenever the camera is opened (e.g. from the config file), replacing
    /// any requested before; those the camera turns out not to support are dropped with a
    /// warning when it is first opened.
    pub fn with_controls(self, controls: Controls) -> Result<Self, InvalidControl> {
        self.controls.preset(&controls)?;
        Ok(self)
    }

    /// Asks the device for this pixel format only (the `pixel_format` key); `None`, the
    /// default, takes the best it offers (MJPEG, else YUYV, NV12, YU12).
    pub fn with_pixel_format(mut self, format: Option<PixelFormat>) -> Self {
        self.format = format;
        self
    }

    pub fn device(&self) -> &Path {
        &self.device
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
    use std::time::{Duration, Instant};

    use super::*;

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
        // Controls survive the failed run. Before a device was seen, a request is validated
        // and kept for the opening (it used to be refused until the camera was open).
        let controls = source.controls().unwrap();
        let brightness: Controls = serde_json::from_str(r#"{"brightness": 0.2}"#).unwrap();
        assert_eq!(controls.apply(&brightness), Ok(()));
        assert_eq!(controls.current(), brightness);
        assert!(controls.supported().is_empty());
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
