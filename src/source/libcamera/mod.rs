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
//! Camera controls ([`LibcameraControls`]) are a shared handle made in [`LibcameraSource::new`]:
//! changes are attached to the next queued request, and every start re-applies all of them.
//!
//! [`list_cameras`] is what `picamd --list-cameras` prints.
//!
//! libcamera allows one `CameraManager` per process (a second one aborts it); every manager
//! made here is created under a process-wide lock, so listing cameras while the source runs
//! fails with [`LibcameraError::Busy`] instead.

use std::fmt;
use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use libcamera::camera::{ActiveCamera, Camera, CameraConfigurationStatus, Orientation};
use libcamera::camera_manager::CameraManager;
use libcamera::control::ControlList;
use libcamera::control_value::ControlValue;
use libcamera::controls::{self as lc, ControlId};
use libcamera::framebuffer::{AsFrameBuffer, FrameMetadataStatus};
use libcamera::framebuffer_allocator::{FrameBuffer, FrameBufferAllocator};
use libcamera::framebuffer_map::MemoryMappedFrameBuffer;
use libcamera::geometry::Size;
use libcamera::pixel_format::PixelFormat;
use libcamera::properties;
use libcamera::request::{Request, RequestStatus, ReuseFlag};
use libcamera::stream::{Stream, StreamRole};

use super::controls::{
    self, AfMode, AwbMode, CameraControls, ControlError, Controls, ExposureMode, HdrMode,
};
use super::i420::deinterleave_uv;
use super::{Demand, Source, SourceContext, SourceError};
use crate::frame::{CaptureTime, Frame, Payload, SourceInfo, Yuv420Buffer};

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
/// A `wait_for_demand` that took longer than this blocked (nobody watched): frames captured
/// before it returned are stale (a snapshot must be captured after its request). Well above
/// what the call costs when it does not block, even on a slow, busy machine.
const BLOCKED_WAIT: Duration = Duration::from_millis(50);

/// Planar YUV 4:2:0 (I420), by fourcc: the crate's `formats` constants are empty with
/// libcamera 0.4's headers.
const YUV420: PixelFormat = PixelFormat::new(u32::from_le_bytes(*b"YU12"), 0);
/// Y plane + interleaved CbCr.
const NV12: PixelFormat = PixelFormat::new(u32::from_le_bytes(*b"NV12"), 0);

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

// ---------------------------------------------------------------------------------------------
// Listing

/// One camera as `--list-cameras` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraListing {
    /// Position in libcamera's list: `--source libcamera:<index>`.
    pub index: usize,
    /// libcamera's id: `--source libcamera:<id>`.
    pub id: String,
    /// The `Model` property (sensor name for Pi cameras), when the camera has one.
    pub model: Option<String>,
    /// What the camera's stream configurations offer, per role.
    pub streams: Vec<StreamListing>,
}

/// Formats offered for one stream role.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamListing {
    /// `video` (processed output, what picamd uses) or `raw` (sensor modes).
    pub role: &'static str,
    pub formats: Vec<FormatListing>,
}

/// One pixel format and its sizes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FormatListing {
    /// libcamera's name, e.g. `YUV420`.
    pub pixel_format: String,
    /// Discrete sizes, `(width, height)`.
    pub sizes: Vec<(u32, u32)>,
    /// Continuous range `(min, max)` when the pipeline scales freely instead.
    pub range: Option<((u32, u32), (u32, u32))>,
}

impl FormatListing {
    /// "640x480, 1280x720" or "64x64 to 4608x2592".
    fn sizes_text(&self) -> String {
        let mut sizes: Vec<String> = self.sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect();
        if let Some(((w0, h0), (w1, h1))) = self.range {
            sizes.push(format!("{w0}x{h0} to {w1}x{h1}"));
        }
        if sizes.is_empty() {
            "no sizes listed".into()
        } else {
            sizes.join(", ")
        }
    }
}

/// One line, `model (id)`, then one line per role and set of sizes, indented to sit under
/// a `  [N] ` prefix; no trailing newline:
///
/// ```text
/// imx708 (/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a)
///       video YUV420, NV12, RGB888: 64x64 to 4608x2592
///       raw SRGGB10_CSI2P: 1536x864, 2304x1296, 4608x2592
/// ```
impl fmt::Display for CameraListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(m) => write!(f, "{m} ({})", self.id)?,
            None => write!(f, "{}", self.id)?,
        }
        for stream in &self.streams {
            // Formats offering the same sizes share a line, in the camera's order.
            let mut lines: Vec<(String, Vec<&str>)> = Vec::new();
            for format in &stream.formats {
                let sizes = format.sizes_text();
                match lines.iter_mut().find(|(s, _)| *s == sizes) {
                    Some((_, names)) => names.push(&format.pixel_format),
                    None => lines.push((sizes, vec![&format.pixel_format])),
                }
            }
            for (sizes, names) in lines {
                write!(f, "\n      {} {}: {sizes}", stream.role, names.join(", "))?;
            }
        }
        Ok(())
    }
}

/// The cameras libcamera finds, with the formats and sizes they offer. An empty list means
/// libcamera loaded but found no camera (`--list-cameras` reports that and fails). Fails with
/// [`LibcameraError::Busy`] while a libcamera source runs in this process.
pub fn list_cameras() -> Result<Vec<CameraListing>, LibcameraError> {
    let manager = Manager::start()?;
    let cameras = manager.cameras();
    let listing = cameras
        .iter()
        .enumerate()
        .map(|(index, camera)| CameraListing {
            index,
            id: camera.id().to_owned(),
            model: model(camera),
            streams: [
                ("video", StreamRole::VideoRecording),
                ("raw", StreamRole::Raw),
            ]
            .into_iter()
            .filter_map(|(role, r)| stream_listing(camera, role, r))
            .collect(),
        })
        .collect();
    // Cameras before their manager.
    drop(cameras);
    drop(manager);
    Ok(listing)
}

fn stream_listing(camera: &Camera<'_>, role: &'static str, r: StreamRole) -> Option<StreamListing> {
    let config = camera.generate_configuration(&[r])?;
    let stream = config.get(0)?;
    let offered = stream.formats();
    let formats = offered
        .pixel_formats()
        .into_iter()
        .map(|pf| {
            let sizes: Vec<(u32, u32)> = offered
                .sizes(pf)
                .into_iter()
                .map(|s| (s.width, s.height))
                .collect();
            let range = offered.range(pf);
            let range = (sizes.is_empty() && range.max.width > 0).then_some((
                (range.min.width, range.min.height),
                (range.max.width, range.max.height),
            ));
            FormatListing {
                pixel_format: pf.to_string(),
                sizes,
                range,
            }
        })
        .collect();
    Some(StreamListing { role, formats })
}

/// The libcamera version picamd runs with (from the loaded library).
pub fn libcamera_version() -> &'static str {
    libcamera::version::runtime_version()
}

// ---------------------------------------------------------------------------------------------
// Controls

/// Which picamd controls a camera has, learned from its `controls()` info map.
#[derive(Debug, Clone, Default)]
struct Support {
    names: Vec<&'static str>,
    /// Values each enum control accepts (empty: not listed, assume all).
    af_modes: Vec<i32>,
    awb_modes: Vec<i32>,
    /// The HdrMode that `"hdr": "on"` selects on this camera.
    hdr_on: Option<lc::HdrMode>,
    af_trigger: bool,
    /// `AeEnable` is listed.
    ae_enable: bool,
    /// Ids of `ExposureTimeMode` and `AnalogueGainMode` (libcamera >= 0.5, which moved
    /// automatic exposure there), found by name so the same code builds against 0.4.
    exposure_mode_ids: Vec<u32>,
    frame_duration_limits: bool,
}

impl Support {
    fn of(camera: &Camera<'_>) -> Support {
        let info = camera.controls();
        let has = |id: ControlId| info.find(id.id()).is_ok();
        let enum_values = |id: ControlId| -> Vec<i32> {
            match info.find(id.id()) {
                Ok(ci) => ci
                    .values()
                    .into_iter()
                    .filter_map(|v| i32::try_from(v).ok())
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        let hdr_values = enum_values(ControlId::HdrMode);
        let hdr_on = if !has(ControlId::HdrMode) {
            None
        } else if hdr_values.is_empty() {
            Some(lc::HdrMode::SingleExposure)
        } else {
            [lc::HdrMode::SingleExposure, lc::HdrMode::MultiExposure]
                .into_iter()
                .find(|m| hdr_values.contains(&i32::from(*m)))
        };
        let exposure_mode_ids: Vec<u32> = info
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| {
                ControlId::try_from(*id).is_ok_and(|c| {
                    matches!(c.name().as_str(), "ExposureTimeMode" | "AnalogueGainMode")
                })
            })
            .collect();
        let ae_enable = has(ControlId::AeEnable);
        let mut names = Vec::new();
        for (name, present) in [
            ("autofocus", has(ControlId::AfMode)),
            ("lens_position", has(ControlId::LensPosition)),
            ("exposure", ae_enable || !exposure_mode_ids.is_empty()),
            ("exposure_time_us", has(ControlId::ExposureTime)),
            ("analogue_gain", has(ControlId::AnalogueGain)),
            ("awb", has(ControlId::AwbMode)),
            ("brightness", has(ControlId::Brightness)),
            ("contrast", has(ControlId::Contrast)),
            ("saturation", has(ControlId::Saturation)),
            ("sharpness", has(ControlId::Sharpness)),
            ("hdr", hdr_on.is_some()),
        ] {
            if present {
                names.push(name);
            }
        }
        Support {
            names,
            af_modes: enum_values(ControlId::AfMode),
            awb_modes: enum_values(ControlId::AwbMode),
            hdr_on,
            af_trigger: has(ControlId::AfTrigger),
            ae_enable,
            exposure_mode_ids,
            frame_duration_limits: has(ControlId::FrameDurationLimits),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains(&name)
    }

    /// Refuses enum values the camera does not list (e.g. continuous focus on a camera with
    /// only manual focus).
    fn check_values(&self, c: &Controls) -> Result<(), ControlError> {
        if let Some(af) = c.autofocus {
            let v = i32::from(af_mode(af));
            if !self.af_modes.is_empty() && !self.af_modes.contains(&v) {
                return Err(ControlError::Rejected(format!(
                    "this camera has no {af:?} autofocus mode"
                )));
            }
        }
        if let Some(awb) = c.awb {
            let v = i32::from(awb_mode(awb));
            if !self.awb_modes.is_empty() && !self.awb_modes.contains(&v) {
                return Err(ControlError::Rejected(format!(
                    "this camera has no {awb:?} white balance mode"
                )));
            }
        }
        Ok(())
    }
}

fn af_mode(m: AfMode) -> lc::AfMode {
    match m {
        AfMode::Continuous => lc::AfMode::Continuous,
        AfMode::Manual => lc::AfMode::Manual,
        AfMode::Auto => lc::AfMode::Auto,
    }
}

fn awb_mode(m: AwbMode) -> lc::AwbMode {
    match m {
        AwbMode::Auto => lc::AwbMode::AwbAuto,
        AwbMode::Incandescent => lc::AwbMode::AwbIncandescent,
        AwbMode::Tungsten => lc::AwbMode::AwbTungsten,
        AwbMode::Fluorescent => lc::AwbMode::AwbFluorescent,
        AwbMode::Indoor => lc::AwbMode::AwbIndoor,
        AwbMode::Daylight => lc::AwbMode::AwbDaylight,
        AwbMode::Cloudy => lc::AwbMode::AwbCloudy,
    }
}

/// Applies `delta` on top of `base`, first dropping values a mode change makes meaningless
/// (a lens position once focus is automatic, a fixed exposure once exposure is automatic).
fn overlay(base: &mut Controls, delta: &Controls) {
    if matches!(delta.autofocus, Some(AfMode::Continuous | AfMode::Auto)) {
        base.lens_position = None;
    }
    if delta.exposure == Some(ExposureMode::Auto) {
        base.exposure_time_us = None;
        base.analogue_gain = None;
    }
    base.merge(delta);
}

/// Unsets the control called `name`.
fn clear(c: &mut Controls, name: &str) {
    match name {
        "autofocus" => c.autofocus = None,
        "lens_position" => c.lens_position = None,
        "exposure" => c.exposure = None,
        "exposure_time_us" => c.exposure_time_us = None,
        "analogue_gain" => c.analogue_gain = None,
        "awb" => c.awb = None,
        "brightness" => c.brightness = None,
        "contrast" => c.contrast = None,
        "saturation" => c.saturation = None,
        "sharpness" => c.sharpness = None,
        "hdr" => c.hdr = None,
        _ => {}
    }
}

/// Writes `c` into a libcamera control list, only what `support` lists.
fn fill(list: &mut ControlList, c: &Controls, support: &Support) {
    fn set<C: libcamera::control::Control>(list: &mut ControlList, value: C) {
        if let Err(e) = list.set(value) {
            tracing::warn!(error = %e, "cannot set a camera control");
        }
    }
    if support.has("autofocus") {
        if let Some(af) = c.autofocus {
            set(list, af_mode(af));
            if af == AfMode::Auto && support.af_trigger {
                set(list, lc::AfTrigger::Start);
            }
        }
    }
    if support.has("lens_position") {
        if let Some(p) = c.lens_position {
            // A lens position only takes effect with manual focus.
            if c.autofocus.is_none() && support.has("autofocus") {
                set(list, lc::AfMode::Manual);
            }
            set(list, lc::LensPosition(p));
        }
    }
    // A fixed exposure time or gain only takes effect with automatic exposure off.
    let auto_exposure = match c.exposure {
        Some(e) => Some(e == ExposureMode::Auto),
        None if c.exposure_time_us.is_some() || c.analogue_gain.is_some() => Some(false),
        None => None,
    };
    if let (Some(auto), true) = (auto_exposure, support.has("exposure")) {
        if support.ae_enable {
            set(list, lc::AeEnable(auto));
        }
        // ExposureTimeMode and AnalogueGainMode: 0 is Auto, 1 is Manual.
        for id in &support.exposure_mode_ids {
            if let Err(e) = list.set_raw(*id, ControlValue::from(if auto { 0i32 } else { 1 })) {
                tracing::warn!(error = %e, "cannot set the exposure mode");
            }
        }
    }
    if support.has("exposure_time_us") {
        if let Some(t) = c.exposure_time_us {
            set(list, lc::ExposureTime(i32::try_from(t).unwrap_or(i32::MAX)));
        }
    }
    if support.has("analogue_gain") {
        if let Some(g) = c.analogue_gain {
            set(list, lc::AnalogueGain(g));
        }
    }
    if support.has("awb") {
        if let Some(m) = c.awb {
            set(list, awb_mode(m));
        }
    }
    if support.has("brightness") {
        if let Some(v) = c.brightness {
            set(list, lc::Brightness(v));
        }
    }
    if support.has("contrast") {
        if let Some(v) = c.contrast {
            set(list, lc::Contrast(v));
        }
    }
    if support.has("saturation") {
        if let Some(v) = c.saturation {
            set(list, lc::Saturation(v));
        }
    }
    if support.has("sharpness") {
        if let Some(v) = c.sharpness {
            set(list, lc::Sharpness(v));
        }
    }
    if let (Some(h), Some(on)) = (c.hdr, support.hdr_on) {
        set(
            list,
            match h {
                HdrMode::Off => lc::HdrMode::Off,
                HdrMode::On => on,
            },
        );
    }
}

#[derive(Default)]
struct ControlsInner {
    /// Everything set so far; re-applied on every camera start.
    current: Controls,
    /// Set since the camera last saw it; attached to the next queued request.
    pending: Controls,
    /// Known once the camera has been opened (kept across restarts and idle spells).
    support: Option<Support>,
}

/// Runtime controls of a [`LibcameraSource`]. Valid before the camera is first seen: values
/// are then only range-checked and kept, and what the camera turns out not to support is
/// skipped (with a warning) when it starts. Once the camera has been seen, unsupported
/// controls are refused as a whole. Values within picamd's ranges are clamped by the camera
/// to its own limits.
#[derive(Default)]
pub struct LibcameraControls {
    inner: Mutex<ControlsInner>,
}

impl LibcameraControls {
    fn lock(&self) -> MutexGuard<'_, ControlsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the camera supports, dropping (with a warning) values set before it was
    /// known that it turns out not to have.
    fn learn(&self, support: Support) {
        let mut inner = self.lock();
        let missing: Vec<&str> = inner
            .current
            .names()
            .into_iter()
            .filter(|n| !support.has(n))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                controls = missing.join(", "),
                "this camera does not support these configured controls; dropped"
            );
            for name in &missing {
                clear(&mut inner.current, name);
                clear(&mut inner.pending, name);
            }
        }
        inner.support = Some(support);
    }

    /// The controls for a camera start: everything set so far (pending is then moot).
    fn for_start(&self, list: &mut ControlList) {
        let mut inner = self.lock();
        inner.pending = Controls::default();
        if let Some(support) = &inner.support {
            fill(list, &inner.current, support);
        }
    }

    /// Changes not yet sent, written into a request's control list.
    fn take_pending(&self, list: &mut ControlList) {
        let mut inner = self.lock();
        if inner.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut inner.pending);
        if let Some(support) = &inner.support {
            fill(list, &pending, support);
        }
    }
}

impl CameraControls for LibcameraControls {
    fn supported(&self) -> Vec<&'static str> {
        self.lock()
            .support
            .as_ref()
            .map(|s| s.names.clone())
            .unwrap_or_default()
    }

    fn apply(&self, c: &Controls) -> Result<(), ControlError> {
        let mut inner = self.lock();
        match &inner.support {
            Some(s) => {
                controls::check(c, &s.names)?;
                s.check_values(c)?;
            }
            None => c.validate()?,
        }
        let mut next = inner.current.clone();
        overlay(&mut next, c);
        next.validate()?;
        inner.current = next;
        overlay(&mut inner.pending, c);
        Ok(())
    }

    fn current(&self) -> Controls {
        self.lock().current.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// The two 4:2:0 layouts picamd takes from libcamera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Planar Y, U, V (libcamera's YUV420): read in place, no copy at all.
    I420,
    /// Y plane + interleaved UV (libcamera's NV12, e.g. its `virtual` camera): Y is read in
    /// place, chroma is split into U and V by the encoder thread that takes the frame.
    Nv12,
}

impl Format {
    fn pixel_format(self) -> PixelFormat {
        match self {
            Format::I420 => YUV420,
            Format::Nv12 => NV12,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::I420 => "YUV420",
            Format::Nv12 => "NV12",
        }
    }
}

/// Where the planes are in a mapped buffer and how big they must be.
#[derive(Debug, Clone, Copy)]
struct Layout {
    format: Format,
    width: usize,
    height: usize,
    /// Bytes per row of the first plane (libcamera's stride); chroma rows follow from it.
    stride: usize,
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
    fn split<'a>(&self, data: &[&'a [u8]]) -> Option<[&'a [u8]; 3]> {
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
struct ChromaPool(Arc<Mutex<Vec<Vec<u8>>>>);

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
    request: Option<Request>,
    stream: Stream,
    layout: Layout,
    returns: Sender<Event>,
    /// NV12 only: U then V, filled by the first `planes()`.
    chroma: OnceLock<Vec<u8>>,
    pool: ChromaPool,
}

type Mapped = MemoryMappedFrameBuffer<FrameBuffer>;

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

/// What reaches the source thread.
enum Event {
    /// libcamera finished (or cancelled) a request.
    Completed(Request),
    /// A frame's planes were dropped: the request may be queued again.
    Returned(Request),
    Disconnected,
}

// ---------------------------------------------------------------------------------------------
// The emit thread and what it shares with the source thread

#[derive(Default)]
struct GateState {
    /// Since when the emit thread has been in `wait_for_demand`.
    waiting_since: Option<Instant>,
    /// How many times `wait_for_demand` returned with demand.
    passes: u64,
    /// The process is shutting down.
    shutdown: bool,
    /// The source thread is done with this run.
    closed: bool,
}

/// Demand as the emit thread sees it, for the source thread.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    demand: Arc<dyn Demand>,
}

enum Wake {
    Demand,
    Stop,
}

impl Gate {
    fn new(demand: Arc<dyn Demand>) -> Gate {
        Gate {
            state: Mutex::default(),
            changed: Condvar::new(),
            demand,
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut GateState)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until the emit thread has passed `wait_for_demand` more than `seen` times.
    fn wait_demand(&self, seen: u64) -> Wake {
        let mut s = self.lock();
        loop {
            if s.shutdown || s.closed {
                return Wake::Stop;
            }
            if s.passes > seen {
                return Wake::Demand;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn passes(&self) -> u64 {
        self.lock().passes
    }

    fn should_stop(&self) -> bool {
        let s = self.lock();
        s.shutdown || s.closed
    }

    /// The emit thread waits for demand and frames are no longer wanted: release the camera.
    fn idle(&self) -> bool {
        // Not under the gate's lock: the demand signal has a lock of its own.
        let waiting = self.lock().waiting_since.is_some();
        waiting && !self.demand.wanted()
    }
}

#[derive(Default)]
struct MailboxState {
    frame: Option<Frame>,
    closed: bool,
}

/// One frame from the source thread to the emit thread; a newer one replaces (drops) it.
#[derive(Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
    filled: Condvar,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, frame: Frame) {
        let old = self.lock().frame.replace(frame);
        self.filled.notify_all();
        drop(old);
    }

    fn take(&self, timeout: Duration) -> Option<Frame> {
        let mut s = self.lock();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = s.frame.take() {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if s.closed || left.is_zero() {
                return None;
            }
            s = self
                .filled
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn clear(&self) {
        let old = self.lock().frame.take();
        drop(old);
    }

    fn close(&self) {
        let old = {
            let mut s = self.lock();
            s.closed = true;
            s.frame.take()
        };
        self.filled.notify_all();
        drop(old);
    }
}

/// The emit thread: waits for demand, numbers and emits frames from the mailbox.
fn emit_loop(ctx: &mut SourceContext, gate: &Gate, mailbox: &Mailbox) {
    let mut fresh_after = Instant::now();
    loop {
        gate.update(|s| {
            s.waiting_since.get_or_insert_with(Instant::now);
        });
        let started = Instant::now();
        let demand = ctx.wait_for_demand();
        if started.elapsed() > BLOCKED_WAIT {
            fresh_after = Instant::now();
        }
        gate.update(|s| {
            s.waiting_since = None;
            if demand {
                s.passes += 1;
            } else {
                s.shutdown = true;
            }
        });
        if !demand || gate.should_stop() {
            return;
        }
        let Some(mut frame) = mailbox.take(POLL * 2) else {
            continue;
        };
        if frame.captured.mono < fresh_after {
            continue;
        }
        frame.seq = ctx.next_seq();
        ctx.emit(frame);
    }
}

// ---------------------------------------------------------------------------------------------
// A camera session: acquired, configured, buffers mapped, started

struct Want {
    width: u32,
    height: u32,
    fps: u32,
    buffers: u32,
    orientation: Option<Orientation>,
}

/// Why a session's pump loop ended without an error.
enum Stop {
    Idle,
    Shutdown,
}

/// Everything libcamera hands out for one start of the camera. Fields drop in declaration
/// order: requests (and their mapped buffers) before the allocator, the camera last.
struct Session {
    /// Requests the source thread holds (completed, returned, or not yet queued).
    idle: Vec<Request>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    /// Owns the buffers' memory; kept until the requests are gone.
    _allocator: FrameBufferAllocator,
    camera: ActiveCamera<'static>,
    label: String,
    stream: Stream,
    layout: Layout,
    chroma_pool: ChromaPool,
    /// For cameras without `FrameDurationLimits` (libcamera's `virtual` camera completes a
    /// request as soon as it is queued): queue at most one request per frame interval.
    pace: Option<Duration>,
    next_queue: Instant,
    opened: Instant,
    /// Frames handed on since the start (for the first-frame log).
    frames: u64,
    /// Requests that came back cancelled or failed.
    bad_frames: u64,
    total: usize,
    queued: usize,
    /// Frames out with the emit thread or the encoders.
    out: usize,
    started: bool,
}

impl Session {
    fn open(
        camera: &Camera<'static>,
        label: &str,
        want: &Want,
        controls: &LibcameraControls,
    ) -> Result<Session, LibcameraError> {
        let device = |step: &'static str| {
            let camera = label.to_owned();
            move |error: io::Error| LibcameraError::Device {
                camera,
                step,
                error,
            }
        };
        let unsupported = |message: String| LibcameraError::Unsupported {
            camera: label.to_owned(),
            message,
        };
        let opened = Instant::now();
        let mut active = camera.acquire().map_err(device("acquire"))?;
        let mut config = camera
            .generate_first_supported_configuration(&[
                StreamRole::VideoRecording,
                StreamRole::ViewFinder,
            ])
            .map(|(c, _)| c)
            .ok_or_else(|| unsupported("offers no video stream configuration".into()))?;
        {
            let mut stream = config
                .get_mut(0)
                .ok_or_else(|| unsupported("generated an empty configuration".into()))?;
            stream.set_pixel_format(YUV420);
            stream.set_size(Size::new(want.width, want.height));
            stream.set_buffer_count(want.buffers);
        }
        if let Some(o) = want.orientation {
            config.set_orientation(o);
        }
        match config.validate() {
            CameraConfigurationStatus::Invalid => {
                return Err(unsupported(format!(
                    "rejects {}x{} YUV420 output",
                    want.width, want.height
                )))
            }
            CameraConfigurationStatus::Adjusted => {
                tracing::info!(camera = label, config = %config.to_string_repr(), "camera adjusted the configuration");
            }
            CameraConfigurationStatus::Valid => {}
        }
        if let Some(o) = want.orientation {
            if config.orientation() != o {
                tracing::warn!(camera = label, wanted = ?o, got = ?config.orientation(), "camera cannot produce the wanted orientation");
            }
        }
        active.configure(&mut config).map_err(device("configure"))?;

        let sc = config
            .get(0)
            .ok_or_else(|| unsupported("lost its stream configuration".into()))?;
        let pixel_format = sc.get_pixel_format();
        let format = [Format::I420, Format::Nv12]
            .into_iter()
            .find(|f| f.pixel_format() == pixel_format)
            .ok_or_else(|| {
                unsupported(format!(
                    "offers neither YUV420 nor NV12 output (it proposed {pixel_format}); for USB webcams use the v4l2 source"
                ))
            })?;
        let size = sc.get_size();
        let (w, h) = (size.width as usize, size.height as usize);
        if w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1 {
            return Err(unsupported(format!("configured an odd size {w}x{h}")));
        }
        if (size.width, size.height) != (want.width, want.height) {
            tracing::warn!(
                camera = label,
                "camera delivers {w}x{h} instead of {}x{}",
                want.width,
                want.height
            );
        }
        let stride = sc.get_stride() as usize;
        let layout = Layout {
            format,
            width: w,
            height: h,
            stride,
        };
        if stride < w {
            return Err(unsupported(format!(
                "stride {stride} is less than the width {w}"
            )));
        }
        let stream = sc
            .stream()
            .ok_or_else(|| unsupported("has no stream after configure".into()))?;

        let mut allocator = FrameBufferAllocator::new(&active);
        let buffers = allocator
            .alloc(&stream)
            .map_err(device("buffer allocation"))?;
        if buffers.len() < 2 {
            return Err(unsupported(format!(
                "allocated only {} buffers",
                buffers.len()
            )));
        }
        let mut requests = Vec::with_capacity(buffers.len());
        for (i, buffer) in buffers.into_iter().enumerate() {
            let mapped =
                map(buffer).map_err(|m| unsupported(format!("cannot map a buffer: {m}")))?;
            if layout.split(&mapped.data()).is_none() {
                let lens: Vec<usize> = mapped.data().iter().map(|p| p.len()).collect();
                return Err(unsupported(format!(
                    "buffer planes {lens:?} do not hold {w}x{h} {} at stride {stride}",
                    format.name()
                )));
            }
            let mut request = active
                .create_request(Some(i as u64))
                .ok_or_else(|| unsupported("cannot create a request".into()))?;
            request
                .add_buffer(&stream, mapped)
                .map_err(device("adding a buffer to a request"))?;
            requests.push(request);
        }

        let (events_tx, events) = mpsc::channel();
        let tx = events_tx.clone();
        active.on_request_completed(move |r| {
            let _ = tx.send(Event::Completed(r));
        });
        let tx = events_tx.clone();
        active.on_disconnected(move || {
            let _ = tx.send(Event::Disconnected);
        });

        let total = requests.len();
        let mut session = Session {
            idle: requests,
            events,
            events_tx,
            _allocator: allocator,
            camera: active,
            label: label.to_owned(),
            stream,
            layout,
            chroma_pool: ChromaPool::default(),
            pace: None,
            next_queue: Instant::now(),
            opened,
            frames: 0,
            bad_frames: 0,
            total,
            queued: 0,
            out: 0,
            started: false,
        };

        let mut start = ControlList::from_info_map(session.camera.controls()).unwrap_or_default();
        let interval_us = 1_000_000 / want.fps.max(1);
        if controls
            .lock()
            .support
            .as_ref()
            .is_some_and(|s| s.frame_duration_limits)
        {
            let us = i64::from(interval_us);
            if let Err(e) = start.set(lc::FrameDurationLimits([us, us])) {
                tracing::warn!(error = %e, "cannot set the frame rate");
            }
        } else {
            session.pace = Some(Duration::from_micros(u64::from(interval_us)));
        }
        controls.for_start(&mut start);
        session
            .camera
            .start(Some(&*start))
            .map_err(device("start"))?;
        session.started = true;
        tracing::info!(
            camera = label,
            "streaming {}x{} {}, stride {stride}, {total} buffers{}",
            size.width,
            size.height,
            format.name(),
            if session.pace.is_some() {
                ", paced by picamd"
            } else {
                ""
            }
        );
        Ok(session)
    }

    /// Queues the requests the source thread holds, each carrying pending control changes.
    /// Returns how long to wait before a paced camera may take the next one.
    fn queue_idle(&mut self, controls: &LibcameraControls) -> Result<Duration, LibcameraError> {
        while let Some(mut request) = self.idle.pop() {
            if let Some(interval) = self.pace {
                let now = Instant::now();
                if now < self.next_queue {
                    self.idle.push(request);
                    return Ok(self.next_queue - now);
                }
                // An absolute schedule, restarted instead of bursting after a gap.
                self.next_queue = if now - self.next_queue > interval {
                    now + interval
                } else {
                    self.next_queue + interval
                };
            }
            request.reuse(ReuseFlag::REUSE_BUFFERS);
            controls.take_pending(request.controls_mut());
            if let Err((request, e)) = self.camera.queue_request(request) {
                self.idle.push(request);
                return Err(LibcameraError::Device {
                    camera: self.label.clone(),
                    step: "queue request",
                    error: e,
                });
            }
            self.queued += 1;
        }
        Ok(POLL)
    }

    /// Runs until nobody watches, shutdown, or a failure.
    fn pump(
        &mut self,
        gate: &Gate,
        mailbox: &Mailbox,
        controls: &LibcameraControls,
        stall_after: Duration,
    ) -> Result<Stop, LibcameraError> {
        let mut last_progress = Instant::now();
        loop {
            if gate.should_stop() {
                return Ok(Stop::Shutdown);
            }
            if gate.idle() {
                return Ok(Stop::Idle);
            }
            if self.queued == 0 && !self.idle.is_empty() {
                last_progress = Instant::now();
            }
            let wait = self.queue_idle(controls)?;
            match self.events.recv_timeout(wait.min(POLL)) {
                Ok(Event::Completed(request)) => {
                    self.queued -= 1;
                    last_progress = Instant::now();
                    self.completed(request, mailbox);
                }
                Ok(Event::Returned(request)) => {
                    self.out -= 1;
                    self.idle.push(request);
                }
                Ok(Event::Disconnected) => {
                    return Err(LibcameraError::Disconnected(self.label.clone()))
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The session holds a sender itself.
                Err(RecvTimeoutError::Disconnected) => {}
            }
            if self.queued > 0 && last_progress.elapsed() > stall_after {
                return Err(LibcameraError::Stalled {
                    camera: self.label.clone(),
                    waited: last_progress.elapsed(),
                });
            }
        }
    }

    /// A request came back from libcamera: hand its frame on, or keep it for re-queueing.
    fn completed(&mut self, request: Request, mailbox: &Mailbox) {
        let status = request.status();
        let frame = request
            .buffer::<Mapped>(&self.stream)
            .map(|b| b.metadata().map(|m| m.status()));
        // No metadata at all is not an error: libcamera 0.4's `virtual` camera never sets it.
        let image = matches!(frame, Some(None | Some(FrameMetadataStatus::Success)));
        if status == RequestStatus::Complete && frame == Some(Some(FrameMetadataStatus::Startup)) {
            // The IPA is still converging (exposure, white balance): an unusable image.
            self.idle.push(request);
            return;
        }
        if status != RequestStatus::Complete || !image {
            self.bad_frames += 1;
            if self.bad_frames.is_power_of_two() {
                tracing::warn!(camera = %self.label, request = ?status, buffer = ?frame, count = self.bad_frames, "camera returned a frame without an image; dropped");
            }
            self.idle.push(request);
            return;
        }
        self.out += 1;
        self.frames += 1;
        if self.frames == 1 {
            tracing::info!(camera = %self.label, "first frame {:.0?} after opening the camera", self.opened.elapsed());
        }
        mailbox.put(Frame {
            seq: 0,
            captured: CaptureTime::now(),
            width: self.layout.width as u32,
            height: self.layout.height as u32,
            no_signal: false,
            payload: Payload::Yuv420(Box::new(RequestPlanes {
                request: Some(request),
                stream: self.stream,
                layout: self.layout,
                returns: self.events_tx.clone(),
                chroma: OnceLock::new(),
                pool: self.chroma_pool.clone(),
            })),
        });
    }

    /// Stops the camera and waits for every request to come home, then releases everything.
    /// Returns `false` (and leaks the session) if frames did not come back in time: freeing
    /// buffers an encoder still reads would be unsound.
    fn close(mut self) -> bool {
        if self.started {
            if let Err(e) = self.camera.stop() {
                tracing::warn!(camera = %self.label, error = %e, "stopping the camera failed");
            }
        }
        let deadline = Instant::now() + RETURN_DEADLINE;
        while self.queued + self.out > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(Event::Completed(r)) => {
                    self.queued -= 1;
                    self.idle.push(r);
                }
                Ok(Event::Returned(r)) => {
                    self.out -= 1;
                    self.idle.push(r);
                }
                Ok(Event::Disconnected) => {}
                Err(_) if Instant::now() >= deadline => {
                    tracing::error!(
                        camera = %self.label,
                        queued = self.queued,
                        out = self.out,
                        "camera buffers did not come back; leaking the camera session"
                    );
                    std::mem::forget(self);
                    return false;
                }
                Err(_) => {}
            }
        }
        if self.idle.len() != self.total {
            tracing::warn!(camera = %self.label, held = self.idle.len(), total = self.total, "request accounting is off");
        }
        true
    }
}

/// Memory-maps a buffer. The crate's mapper panics when `mmap` itself fails; that is caught
/// here and reported as an error.
fn map(buffer: FrameBuffer) -> Result<Mapped, String> {
    let buffer = std::panic::AssertUnwindSafe(buffer);
    match std::panic::catch_unwind(move || {
        let std::panic::AssertUnwindSafe(buffer) = buffer;
        MemoryMappedFrameBuffer::new(buffer)
    }) {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("mmap failed".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The source

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

    fn capture(
        &self,
        camera: &Camera<'static>,
        label: &str,
        gate: &Gate,
        mailbox: &Mailbox,
    ) -> Result<(), LibcameraError> {
        let interval = Duration::from_secs_f64(1.0 / self.want.fps.max(1) as f64);
        let stall_after = (interval * STALL_INTERVALS).max(STALL_MIN);
        let mut seen = 0;
        loop {
            match gate.wait_demand(seen) {
                Wake::Stop => return Ok(()),
                Wake::Demand => {}
            }
            let mut session = Session::open(camera, label, &self.want, &self.controls)?;
            let outcome = session.pump(gate, mailbox, &self.controls, stall_after);
            mailbox.clear();
            if !session.close() {
                return Err(LibcameraError::Wedged(RETURN_DEADLINE));
            }
            match outcome? {
                Stop::Shutdown => return Ok(()),
                Stop::Idle => {
                    tracing::info!(
                        camera = label,
                        "nobody watches; camera stopped and released"
                    );
                    seen = gate.passes();
                }
            }
        }
    }
}

/// picamd's rotation + flips as libcamera's orientation (an EXIF orientation: a rotation
/// applied after an optional horizontal mirror).
fn orientation(rotation: u32, hflip: bool, vflip: bool) -> Result<Orientation, LibcameraError> {
    if rotation % 90 != 0 || rotation >= 360 {
        return Err(LibcameraError::Orientation(format!(
            "rotation {rotation} is not 0, 90, 180 or 270"
        )));
    }
    // A vertical flip is a horizontal one followed by a half turn.
    let degrees = (rotation + if vflip { 180 } else { 0 }) % 360;
    let mirror = hflip != vflip;
    Ok(match (degrees, mirror) {
        (0, false) => Orientation::Rotate0,
        (0, true) => Orientation::Rotate0Mirror,
        (90, false) => Orientation::Rotate90,
        (90, true) => Orientation::Rotate90Mirror,
        (180, false) => Orientation::Rotate180,
        (180, true) => Orientation::Rotate180Mirror,
        (270, false) => Orientation::Rotate270,
        _ => Orientation::Rotate270Mirror,
    })
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
            gate.update(|s| s.closed = true);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Controls {
        serde_json::from_str(json).expect("test JSON")
    }

    #[test]
    fn libcamera_loads_and_lists() {
        let cameras = list_cameras().expect("libcamera's camera manager starts");
        for c in &cameras {
            print!("{c}");
        }
        // CI runs this where libcamera loads but no camera exists.
        if std::env::var_os("PICAMD_EXPECT_NO_CAMERA").is_some() {
            assert!(cameras.is_empty(), "expected no cameras, found {cameras:?}");
        }
    }

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

    #[test]
    fn listing_text() {
        let format = |pf: &str, sizes: Vec<(u32, u32)>, range| FormatListing {
            pixel_format: pf.into(),
            sizes,
            range,
        };
        let cam = CameraListing {
            index: 0,
            id: "/base/imx708@1a".into(),
            model: Some("imx708".into()),
            streams: vec![
                StreamListing {
                    role: "video",
                    formats: vec![
                        format("YUV420", vec![], Some(((64, 64), (4608, 2592)))),
                        format("NV12", vec![], Some(((64, 64), (4608, 2592)))),
                        format("RGB888", vec![(640, 480)], None),
                    ],
                },
                StreamListing {
                    role: "raw",
                    formats: vec![format(
                        "SRGGB10_CSI2P",
                        vec![(1536, 864), (4608, 2592)],
                        None,
                    )],
                },
            ],
        };
        assert_eq!(
            cam.to_string(),
            "imx708 (/base/imx708@1a)\n      video YUV420, NV12: 64x64 to 4608x2592\n      video RGB888: 640x480\n      raw SRGGB10_CSI2P: 1536x864, 4608x2592"
        );
    }

    #[test]
    fn orientations() {
        assert_eq!(orientation(0, false, false).unwrap(), Orientation::Rotate0);
        assert_eq!(
            orientation(180, false, false).unwrap(),
            Orientation::Rotate180
        );
        assert_eq!(
            orientation(0, true, false).unwrap(),
            Orientation::Rotate0Mirror
        );
        assert_eq!(
            orientation(0, false, true).unwrap(),
            Orientation::Rotate180Mirror
        );
        assert_eq!(orientation(0, true, true).unwrap(), Orientation::Rotate180);
        assert_eq!(orientation(180, true, true).unwrap(), Orientation::Rotate0);
        assert_eq!(
            orientation(90, false, false).unwrap(),
            Orientation::Rotate90
        );
        assert!(orientation(45, false, false).is_err());
        assert!(orientation(360, false, false).is_err());
    }

    fn support(names: &[&'static str]) -> Support {
        Support {
            names: names.to_vec(),
            af_modes: vec![0],
            ..Support::default()
        }
    }

    #[test]
    fn controls_before_the_camera_is_seen_are_kept() {
        let c = LibcameraControls::default();
        assert!(c.supported().is_empty());
        c.apply(&parse(r#"{"brightness": 0.5, "hdr": "on"}"#))
            .unwrap();
        assert!(c.apply(&parse(r#"{"brightness": 3}"#)).is_err());
        assert_eq!(c.current(), parse(r#"{"brightness": 0.5, "hdr": "on"}"#));
    }

    #[test]
    fn controls_after_the_camera_is_seen_are_checked() {
        let c = LibcameraControls::default();
        c.learn(support(&["brightness", "autofocus", "lens_position"]));
        assert_eq!(
            c.apply(&parse(r#"{"brightness": 0.1, "hdr": "on"}"#)),
            Err(ControlError::Unsupported(vec!["hdr"]))
        );
        // Only manual focus (0) is listed.
        assert!(matches!(
            c.apply(&parse(r#"{"autofocus": "continuous"}"#)),
            Err(ControlError::Rejected(_))
        ));
        c.apply(&parse(r#"{"autofocus": "manual", "lens_position": 2}"#))
            .unwrap();
        assert_eq!(
            c.current(),
            parse(r#"{"autofocus": "manual", "lens_position": 2}"#)
        );
    }

    #[test]
    fn controls_the_camera_lacks_are_dropped_when_it_is_seen() {
        let c = LibcameraControls::default();
        c.apply(&parse(r#"{"brightness": 0.5, "hdr": "on"}"#))
            .unwrap();
        c.learn(support(&["brightness"]));
        assert_eq!(c.current(), parse(r#"{"brightness": 0.5}"#));
        assert_eq!(c.supported(), vec!["brightness"]);
    }

    #[test]
    fn a_mode_change_drops_what_it_makes_meaningless() {
        let c = LibcameraControls::default();
        c.apply(&parse(
            r#"{"exposure": "manual", "exposure_time_us": 1000, "analogue_gain": 2}"#,
        ))
        .unwrap();
        c.apply(&parse(r#"{"exposure": "auto"}"#)).unwrap();
        assert_eq!(c.current(), parse(r#"{"exposure": "auto"}"#));
        // A fixed exposure time under automatic exposure is refused, not silently ignored.
        assert!(c.apply(&parse(r#"{"exposure_time_us": 1000}"#)).is_err());
        c.apply(&parse(r#"{"autofocus": "manual", "lens_position": 1}"#))
            .unwrap();
        c.apply(&parse(r#"{"autofocus": "continuous"}"#)).unwrap();
        assert_eq!(c.current().lens_position, None);
    }
}
