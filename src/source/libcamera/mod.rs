//! The libcamera source: Raspberry Pi camera modules, and any other camera libcamera drives
//! with a YUV 4:2:0 output. Built only with the `libcamera` cargo feature.
//!
//! One [`LibcameraSource::run`] on the source thread owns libcamera: it creates the
//! `CameraManager`, finds the camera (a missing one is an error the supervisor retries), and
//! from then on acquires, configures and starts the camera only while someone watches. Frames
//! are not copied: each completed request travels to the encoders as a [`RequestPlanes`], which
//! reads the memory-mapped planes in place with the strides libcamera chose (YUV420; for NV12,
//! which libcamera's software `virtual` camera produces, only the chroma is split, by the
//! encoder thread). Dropping it (after the encode, or at once when every encoder is busy) sends
//! the request back to the source thread, which re-queues it; libcamera objects are only ever
//! touched from that thread.
//!
//! `SourceContext::wait_for_demand` blocks while nobody watches, which would leave the camera
//! running and its buffers stuck. So the context lives on a helper thread (`src-lcam-emit`) that
//! waits for demand, numbers and emits frames; the source thread hands it the newest frame
//! through a one-slot mailbox and watches whether it is blocked: once it waits and frames are
//! no longer wanted (the pipeline's linger after the last viewer has passed), the camera is
//! stopped and released, and it is started again when demand returns.
//!
//! Camera controls ([`LibcameraControls`], the shared
//! [`ControlBook`](super::controls::ControlBook)) are a handle made in [`LibcameraSource::new`]:
//! changes are attached to the next queued request, and every start re-applies all of them.
//!
//! [`list_cameras`] is what `picamd --list-cameras` prints.
//!
//! libcamera allows one `CameraManager` per process (a second one aborts it); every manager
//! made here is created under a process-wide lock, so listing cameras while the source runs
//! fails with [`LibcameraError::Busy`] instead.
//!
//! The parts, each in its own file: `negotiate` (the stream configuration and orientation),
//! `planes` (the zero-copy frame layouts), `controls`, `capture` (a camera session on the
//! source thread), `emit` (the emit thread, its gate and mailbox) and `list`
//! (`--list-cameras`). Public items are re-exported here.

mod capture;
mod controls;
mod emit;
mod list;
mod negotiate;
mod planes;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use libcamera::camera::{Camera, Orientation};
use libcamera::camera_manager::CameraManager;
use libcamera::properties;

pub use self::controls::{LibcameraControls, Support};
pub use self::list::{
    bundle_info, libcamera_version, list_cameras, BundleInfo, CameraListing, FormatListing,
    StreamListing,
};
pub use self::planes::RequestPlanes;

use self::emit::{emit_loop, Gate, Mailbox};
use self::negotiate::orientation;
use super::controls::CameraControls;
use super::{Source, SourceContext, SourceError};
use crate::frame::SourceInfo;

/// Buffers allocated when the caller does not say (enough for a few busy encoders plus two
/// queued with the camera, so capture never waits for an encode).
pub const DEFAULT_BUFFERS: u32 = 6;
/// Fewest buffers: below this the camera starves while the encoders hold frames.
pub const MIN_BUFFERS: u32 = 4;
/// Most buffers (each is a full frame of camera memory, CMA on a Pi).
pub const MAX_BUFFERS: u32 = 16;
/// No completed request for this long (or [`STALL_INTERVALS`] frame intervals, whichever is
/// longer) while requests are queued means the camera stalled.
pub const STALL_MIN: Duration = Duration::from_secs(2);
/// Intervals without a frame that count as a stall at low frame rates.
pub const STALL_INTERVALS: u32 = 5;
/// How often the source thread re-checks demand and shutdown while waiting for the camera.
const POLL: Duration = Duration::from_millis(50);
/// How long a stopping camera waits for frames still held by encoders to come back.
const RETURN_DEADLINE: Duration = Duration::from_secs(5);

/// What can go wrong with libcamera.
#[derive(Debug, thiserror::Error)]
pub enum LibcameraError {
    #[error("libcamera's camera manager did not start: {0}")]
    Manager(io::Error),
    /// Another part of this process holds libcamera's one camera manager.
    #[error("libcamera is busy in this process (only one camera manager may exist)")]
    Busy,
    /// A previous camera session could not be torn down; libcamera cannot be reused until
    /// picamd restarts.
    #[error("libcamera is wedged: frames were not returned within {0:?}; restart picamd")]
    Wedged(Duration),
    #[error("no camera found by libcamera")]
    NoCameras,
    #[error("no libcamera camera matches `{wanted}`; available: {available}")]
    NotFound { wanted: String, available: String },
    /// A libcamera call failed.
    #[error("camera {camera}: {step} failed: {error}")]
    Device {
        camera: String,
        step: &'static str,
        error: io::Error,
    },
    /// The camera cannot deliver what picamd needs.
    #[error("camera {camera}: {message}")]
    Unsupported { camera: String, message: String },
    #[error("camera {camera}: stalled: no frame for {waited:.1?}")]
    Stalled { camera: String, waited: Duration },
    #[error("camera {0}: disconnected")]
    Disconnected(String),
    #[error("invalid orientation: {0}")]
    Orientation(String),
}

impl LibcameraError {
    /// A failed libcamera call during `step`, for `map_err`.
    fn device(camera: &str, step: &'static str) -> impl FnOnce(io::Error) -> LibcameraError {
        let camera = camera.to_owned();
        move |error| LibcameraError::Device {
            camera,
            step,
            error,
        }
    }

    fn unsupported(camera: &str, message: String) -> LibcameraError {
        LibcameraError::Unsupported {
            camera: camera.to_owned(),
            message,
        }
    }
}

impl From<LibcameraError> for SourceError {
    fn from(e: LibcameraError) -> Self {
        match e {
            // Retrying cannot help; picamd must restart.
            LibcameraError::Wedged(_) => SourceError::Unavailable(e.to_string()),
            _ => SourceError::Failed(e.to_string()),
        }
    }
}

/// The process-wide camera manager lock (see the module docs).
static MANAGER_LOCK: Mutex<()> = Mutex::new(());

/// A started `CameraManager` plus the lock that makes it the only one. Fields drop in order:
/// the manager before the lock.
struct Manager {
    manager: CameraManager,
    _only_one: MutexGuard<'static, ()>,
}

impl Manager {
    fn start() -> Result<Manager, LibcameraError> {
        let guard = match MANAGER_LOCK.try_lock() {
            Ok(g) => g,
            // A panic while holding it left no manager behind.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(LibcameraError::Busy),
        };
        let manager = CameraManager::new().map_err(LibcameraError::Manager)?;
        Ok(Manager {
            manager,
            _only_one: guard,
        })
    }

    fn cameras(&self) -> Vec<Camera<'static>> {
        let list = self.manager.cameras();
        (0..list.len()).filter_map(|i| list.get(i)).collect()
    }

    /// `wanted` is an index into the camera list or a camera id; `None` is the first camera.
    fn pick(&self, wanted: Option<&str>) -> Result<Camera<'static>, LibcameraError> {
        let mut cameras = self.cameras();
        if cameras.is_empty() {
            return Err(LibcameraError::NoCameras);
        }
        let Some(wanted) = wanted else {
            return Ok(cameras.swap_remove(0));
        };
        let found = match wanted.parse::<usize>() {
            Ok(i) if i < cameras.len() => Some(i),
            _ => cameras.iter().position(|c| c.id() == wanted),
        };
        match found {
            Some(i) => Ok(cameras.swap_remove(i)),
            None => Err(LibcameraError::NotFound {
                wanted: wanted.to_owned(),
                available: cameras
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{i}: {}", label(c)))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// "model (id)" for logs and errors.
fn label(camera: &Camera<'_>) -> String {
    match model(camera) {
        Some(m) => format!("{m} ({})", camera.id()),
        None => camera.id().to_owned(),
    }
}

fn model(camera: &Camera<'_>) -> Option<String> {
    camera
        .properties()
        .get::<properties::Model>()
        .ok()
        .map(|m| m.0)
}

/// What the source asks of the camera at each start.
struct Want {
    width: u32,
    height: u32,
    fps: u32,
    buffers: u32,
    orientation: Option<Orientation>,
}

/// A libcamera camera as a picamd source.
pub struct LibcameraSource {
    camera: Option<String>,
    want: Want,
    controls: Arc<LibcameraControls>,
    /// Set when a session could not be torn down; libcamera is unusable from then on.
    wedged: bool,
}

impl LibcameraSource {
    /// `camera`: an index into libcamera's list or a camera id (`None`: the first camera).
    /// Opens nothing: a missing camera is found (and retried) by `run`.
    pub fn new(camera: Option<String>, width: u32, height: u32, fps: u32) -> Self {
        LibcameraSource {
            camera,
            want: Want {
                width,
                height,
                fps,
                buffers: DEFAULT_BUFFERS,
                orientation: None,
            },
            controls: Arc::new(LibcameraControls::default()),
            wedged: false,
        }
    }

    /// Buffers to allocate, clamped to [`MIN_BUFFERS`]..=[`MAX_BUFFERS`]. Use at least the
    /// number of encoder workers plus two.
    pub fn with_buffer_count(mut self, buffers: u32) -> Self {
        self.want.buffers = buffers.clamp(MIN_BUFFERS, MAX_BUFFERS);
        self
    }

    /// Image orientation: clockwise rotation in degrees (0, 90, 180 or 270) applied after the
    /// flips. Most Pi pipelines flip in the sensor and support only 0 and 180; an orientation
    /// the camera cannot produce is logged and the camera's nearest is used.
    pub fn with_orientation(
        mut self,
        rotation: u32,
        hflip: bool,
        vflip: bool,
    ) -> Result<Self, LibcameraError> {
        self.want.orientation = Some(orientation(rotation, hflip, vflip)?);
        Ok(self)
    }

    /// The controls handle (the same one [`Source::controls`] returns).
    pub fn controls_handle(&self) -> Arc<LibcameraControls> {
        self.controls.clone()
    }
}

impl Source for LibcameraSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "libcamera",
            name: match &self.camera {
                Some(c) => format!("libcamera camera {c}"),
                None => "libcamera (first camera)".into(),
            },
        }
    }

    fn controls(&self) -> Option<Arc<dyn CameraControls>> {
        Some(self.controls.clone())
    }

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        if self.wedged {
            return Err(LibcameraError::Wedged(RETURN_DEADLINE).into());
        }
        let manager = Manager::start()?;
        let camera = manager.pick(self.camera.as_deref())?;
        let label = label(&camera);
        tracing::info!(camera = %label, libcamera = libcamera_version(), "camera found");
        self.controls.learn(Support::of(&camera));

        let gate = Gate::new(ctx.demand());
        let mailbox = Mailbox::default();
        let this = &*self;
        let result = std::thread::scope(|s| {
            let emitter = std::thread::Builder::new()
                .name("src-lcam-emit".into())
                .spawn_scoped(s, || emit_loop(ctx, &gate, &mailbox));
            if let Err(e) = emitter {
                return Err(LibcameraError::Device {
                    camera: label.clone(),
                    step: "starting the emit thread",
                    error: e,
                });
            }
            let result = this.capture(&camera, &label, &gate, &mailbox);
            gate.close();
            mailbox.close();
            result
        });
        if matches!(result, Err(LibcameraError::Wedged(_))) {
            // Buffers may still be read by an encoder: keep libcamera alive for good.
            self.wedged = true;
            std::mem::forget(camera);
            std::mem::forget(manager);
        } else {
            drop(camera);
            drop(manager);
        }
        Ok(result?)
    }
}
