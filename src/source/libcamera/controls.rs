//! libcamera camera controls: which of picamd's controls a camera has (from its control info
//! map, including the enum values it lists) and how values become libcamera controls on the
//! start's control list and on queued requests. The state itself is the shared
//! [`ControlBook`].

use libcamera::camera::Camera;
use libcamera::control::ControlList;
use libcamera::control_value::ControlValue;
use libcamera::controls::{self as lc, ControlId};

use crate::source::controls::{
    AfMode, AwbMode, ControlBook, Controls, DeviceSupport, ExposureMode, HdrMode,
};

/// Which picamd controls a camera has, learned from its `controls()` info map.
#[derive(Debug, Clone, Default)]
pub struct Support {
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
    pub(super) frame_duration_limits: bool,
}

impl Support {
    pub(super) fn of(camera: &Camera<'_>) -> Support {
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
}

impl DeviceSupport for Support {
    fn names(&self) -> Vec<&'static str> {
        self.names.clone()
    }

    /// Enum values the camera does not list (e.g. continuous focus on a camera with only
    /// manual focus); an empty list means the camera did not say, and every value is tried.
    fn refusals(&self, c: &Controls) -> Vec<(&'static str, String)> {
        let unlisted = |modes: &[i32], v: i32| !modes.is_empty() && !modes.contains(&v);
        let mut out = Vec::new();
        if let Some(af) = c.autofocus {
            if unlisted(&self.af_modes, af_mode(af).into()) {
                out.push((
                    "autofocus",
                    format!("this camera has no {af:?} autofocus mode"),
                ));
            }
        }
        if let Some(awb) = c.awb {
            if unlisted(&self.awb_modes, awb_mode(awb).into()) {
                out.push((
                    "awb",
                    format!("this camera has no {awb:?} white balance mode"),
                ));
            }
        }
        out
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
    if support.has("awb") {
        if let Some(m) = c.awb {
            set(list, awb_mode(m));
        }
    }
    // Controls that take picamd's value as it is.
    macro_rules! as_is {
        ($($field:ident => $control:ident),*) => {$(
            if let (true, Some(v)) = (support.has(stringify!($field)), c.$field) {
                set(list, lc::$control(v));
            }
        )*};
    }
    as_is!(
        analogue_gain => AnalogueGain,
        brightness => Brightness,
        contrast => Contrast,
        saturation => Saturation,
        sharpness => Sharpness
    );
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

/// Runtime controls of a [`LibcameraSource`](super::LibcameraSource): the shared
/// [`ControlBook`] over what the camera's control info map lists. Valid before the camera is
/// first seen: values are then only validated and kept, and what the camera turns out not to
/// support is dropped (with a warning) when it is found. Once the camera has been seen,
/// unsupported controls are refused as a whole. Values within picamd's ranges are clamped by
/// the camera to its own limits; libcamera answers no write, so a request does not wait.
pub type LibcameraControls = ControlBook<Support>;

impl ControlBook<Support> {
    /// The controls for a camera start: everything set so far.
    pub(super) fn for_start(&self, list: &mut ControlList) {
        self.opened(|support, c| {
            fill(list, c.requested, support);
            Ok(())
        });
    }

    /// Changes not yet sent, written into a request's control list.
    pub(super) fn take_pending(&self, list: &mut ControlList) {
        self.write_pending(|support, c| {
            fill(list, c.changed, support);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::controls::{CameraControls, ControlError};

    fn parse(json: &str) -> Controls {
        serde_json::from_str(json).expect("test JSON")
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
