//! V4L2 camera controls: the standard user and camera controls a device reports
//! (`VIDIOC_QUERYCTRL`), picamd's values mapped onto their ranges, and the V4L2 side of the
//! shared [`ControlBook`]: which controls a device has ([`DeviceControls`]) and how requested
//! values become `VIDIOC_S_CTRL` writes ([`control_writes`]). Nine of picamd's eleven controls
//! map onto V4L2 (not `analogue_gain` or `hdr`); see [`V4l2Controls`] for the mapping.

use std::io;
use std::time::Duration;

use v4l::control::{Control, Value as ControlValue};
use v4l::prelude::Device;
use v4l::v4l_sys;

use super::describe_io;
use crate::source::controls::{
    AfMode, AwbMode, ControlBook, Controls, DeviceSupport, ExposureMode, ALL_CONTROLS,
};

/// How long a request waits for the source thread to write it while the camera streams
/// (the source writes between frames: one frame interval, 33 ms at 30 fps, is the usual wait).
const APPLY_WAIT: Duration = Duration::from_secs(1);

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
    pub(super) fn query(dev: &Device) -> Self {
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

impl DeviceSupport for DeviceControls {
    fn names(&self) -> Vec<&'static str> {
        DeviceControls::names(self)
    }

    /// What V4L2 has no control for, whatever the device.
    fn refusals(&self, c: &Controls) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if c.autofocus == Some(AfMode::Auto) {
            out.push(("autofocus", "autofocus \"auto\" (one-shot focus is not available over V4L2; use \"continuous\" or \"manual\")".into()));
        }
        if c.awb.is_some_and(|m| m != AwbMode::Auto) {
            out.push((
                "awb",
                "awb other than \"auto\" (V4L2 cameras offer automatic white balance only)".into(),
            ));
        }
        out
    }
}

/// The controls of a [`V4l2Source`](super::V4l2Source): the shared [`ControlBook`] over the
/// controls the device reports. Made with the source, valid across restarts and replugs;
/// requests made before the device was opened are kept and written when it opens, and every
/// opening writes all requested values again. While the device streams, a request waits
/// (up to a second) for the source thread to write it between frames and reports what the
/// device refused (the request is then rolled back).
///
/// Mapping onto the standard V4L2 controls, where the device reports them (`VIDIOC_QUERYCTRL`):
/// `brightness` −1‥1 onto min‥default‥max; `contrast`, `saturation`, `sharpness` 0 → min,
/// 1 → default, 2 and above → max (linear in between); `exposure` auto/manual →
/// `EXPOSURE_AUTO` (aperture priority, or auto) / manual; `exposure_time_us` →
/// `EXPOSURE_ABSOLUTE` in 100 µs units; `autofocus` continuous/manual → `FOCUS_AUTO` 1/0;
/// `lens_position` 0‥32 dioptres linearly onto `FOCUS_ABSOLUTE` min‥max (the unit is
/// device-defined; larger is closer); `awb` auto → `AUTO_WHITE_BALANCE`. Analogue gain, HDR,
/// white-balance presets and one-shot autofocus are not supported.
pub type V4l2Controls = ControlBook<DeviceControls>;

/// The controls of a new source, which nothing has been requested of yet.
pub(super) fn new_controls() -> V4l2Controls {
    ControlBook::confirmed_within(APPLY_WAIT)
}

/// The device was opened: learn its controls and write every requested value through `set`.
pub(super) fn open_device(
    controls: &V4l2Controls,
    caps: DeviceControls,
    set: impl FnMut(u32, i64) -> io::Result<()>,
) {
    controls.learn(caps);
    controls.opened(|caps, c| write_all(caps, c.requested, set));
}

/// Writes all requested values if any changed since the last write (source thread, between
/// frames). Every value, not only the changed ones, in the order of [`control_writes`] (modes
/// before the values they unlock): the device then holds what `GET /controls` reports, also
/// after it refused part of an earlier write.
pub(super) fn write_device(controls: &V4l2Controls, set: impl FnMut(u32, i64) -> io::Result<()>) {
    controls.write_pending(|caps, c| write_all(caps, c.requested, set));
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

/// `VIDIOC_S_CTRL` for one integer control.
pub(super) fn set_control(dev: &Device, id: u32, value: i64) -> io::Result<()> {
    dev.set_control(Control {
        id,
        value: ControlValue::Integer(value),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::V4l2Source;
    use super::*;
    use crate::source::controls::{CameraControls, ControlError};

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

    /// Opens `c` on [`full_camera`], which takes every write; returns the writes.
    fn open_full_camera(c: &V4l2Controls) -> Vec<(u32, i64)> {
        let mut written = Vec::new();
        open_device(c, full_camera(), |id, v| {
            written.push((id, v));
            Ok(())
        });
        written
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
        let c = new_controls();
        assert!(c.supported().is_empty());
        // Before the device was ever opened, requests are validated and kept (they used to be
        // refused until the camera was open).
        assert_eq!(c.apply(&parse(r#"{"brightness": 0.2}"#)), Ok(()));
        assert_eq!(c.current(), parse(r#"{"brightness": 0.2}"#));

        // Opened once: the device's controls are known and the kept values are written.
        assert_eq!(open_full_camera(&c), vec![(CID_BRIGHTNESS, 13)]);
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
        assert_eq!(open_full_camera(&c), vec![(CID_BRIGHTNESS, 32)]);
    }

    #[test]
    fn requests_while_streaming_are_written_by_the_source_thread() {
        let c = Arc::new(new_controls());
        open_device(&c, full_camera(), |_, _| Ok(()));
        let source = {
            let c = c.clone();
            std::thread::spawn(move || {
                // The source loop: write pending requests between frames; the device refuses
                // the contrast value.
                let mut written = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(5);
                while written.len() < 2 && Instant::now() < deadline {
                    write_device(&c, |id, v| {
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
        assert_eq!(open_full_camera(&c), vec![(CID_BRIGHTNESS, -64)]);
        assert_eq!(c.current(), parse(r#"{"brightness": -1}"#));
        assert!(V4l2Source::new(PathBuf::from("/dev/video99"), 640, 480, 30)
            .with_controls(parse(r#"{"contrast": 40}"#))
            .is_err());
    }
}
