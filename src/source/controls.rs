//! Camera controls: what users may adjust, validated in one place before any camera sees it.
//!
//! The same [`Controls`] value comes from the config file (`[controls]`) and from
//! `POST /controls` (JSON). Every field is optional; a request changes only what it names.
//! [`Controls::validate`] checks ranges and combinations; a source then reports, per control,
//! whether its camera supports it. A request naming an unsupported control is refused as a
//! whole with the list of what is unsupported: nothing is silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Autofocus modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfMode {
    /// Focus continuously.
    Continuous,
    /// Fixed focus at `lens_position`.
    Manual,
    /// One focus sweep when set, then hold.
    Auto,
}

/// Exposure modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExposureMode {
    Auto,
    /// Fixed `exposure_time_us` and `analogue_gain`.
    Manual,
}

/// White balance modes (libcamera's AwbMode names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AwbMode {
    Auto,
    Incandescent,
    Tungsten,
    Fluorescent,
    Indoor,
    Daylight,
    Cloudy,
}

/// HDR modes (libcamera's HdrMode, where the sensor or pipeline has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HdrMode {
    Off,
    /// Sensor HDR (e.g. the Camera Module 3) or the pipeline's single-exposure HDR.
    On,
}

/// Adjustable camera settings; `None` means "leave as it is".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controls {
    /// `continuous`, `manual` (with `lens_position`) or `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autofocus: Option<AfMode>,
    /// Lens position in dioptres (1 / metres), 0.0 (infinity) ..= 32.0; manual focus only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lens_position: Option<f32>,
    /// `auto` or `manual` (with `exposure_time_us` and/or `analogue_gain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure: Option<ExposureMode>,
    /// Exposure time in microseconds, 1 ..= 10 000 000; manual exposure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure_time_us: Option<u32>,
    /// Analogue gain, 1.0 ..= 64.0; manual exposure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analogue_gain: Option<f32>,
    /// White balance mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awb: Option<AwbMode>,
    /// -1.0 ..= 1.0, 0 is neutral.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brightness: Option<f32>,
    /// 0.0 ..= 32.0, 1 is neutral.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contrast: Option<f32>,
    /// 0.0 ..= 32.0, 1 is neutral, 0 is greyscale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturation: Option<f32>,
    /// 0.0 ..= 16.0, 1 is neutral.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharpness: Option<f32>,
    /// `off` or `on`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hdr: Option<HdrMode>,
}

/// A control value that is out of range or contradicts another one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid control `{key}`: {message}")]
pub struct InvalidControl {
    pub key: &'static str,
    pub message: String,
}

/// Why a set of controls was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Invalid(#[from] InvalidControl),
    #[error("not supported by this camera: {}", .0.join(", "))]
    Unsupported(Vec<&'static str>),
    #[error("the camera is not running; try again when it is")]
    NotRunning,
    #[error("the camera refused the controls: {0}")]
    Rejected(String),
}

fn range_f32(key: &'static str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), InvalidControl> {
    match v {
        Some(x) if !x.is_finite() || x < lo || x > hi => Err(InvalidControl {
            key,
            message: format!("{x} is outside {lo} ..= {hi}"),
        }),
        _ => Ok(()),
    }
}

impl Controls {
    /// Names of the controls this value sets, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        let set = [
            ("autofocus", self.autofocus.is_some()),
            ("lens_position", self.lens_position.is_some()),
            ("exposure", self.exposure.is_some()),
            ("exposure_time_us", self.exposure_time_us.is_some()),
            ("analogue_gain", self.analogue_gain.is_some()),
            ("awb", self.awb.is_some()),
            ("brightness", self.brightness.is_some()),
            ("contrast", self.contrast.is_some()),
            ("saturation", self.saturation.is_some()),
            ("sharpness", self.sharpness.is_some()),
            ("hdr", self.hdr.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.names().is_empty()
    }

    /// Checks ranges and combinations (e.g. a lens position needs manual focus).
    pub fn validate(&self) -> Result<(), InvalidControl> {
        range_f32("lens_position", self.lens_position, 0.0, 32.0)?;
        range_f32("analogue_gain", self.analogue_gain, 1.0, 64.0)?;
        range_f32("brightness", self.brightness, -1.0, 1.0)?;
        range_f32("contrast", self.contrast, 0.0, 32.0)?;
        range_f32("saturation", self.saturation, 0.0, 32.0)?;
        range_f32("sharpness", self.sharpness, 0.0, 16.0)?;
        if let Some(t) = self.exposure_time_us {
            if !(1..=10_000_000).contains(&t) {
                return Err(InvalidControl {
                    key: "exposure_time_us",
                    message: format!("{t} is outside 1 ..= 10000000"),
                });
            }
        }
        if self.lens_position.is_some()
            && matches!(self.autofocus, Some(AfMode::Continuous | AfMode::Auto))
        {
            return Err(InvalidControl {
                key: "lens_position",
                message: "a lens position needs \"autofocus\": \"manual\"".into(),
            });
        }
        if (self.exposure_time_us.is_some() || self.analogue_gain.is_some())
            && self.exposure == Some(ExposureMode::Auto)
        {
            return Err(InvalidControl {
                key: "exposure",
                message: "exposure_time_us and analogue_gain need \"exposure\": \"manual\"".into(),
            });
        }
        Ok(())
    }

    /// Applies `other` on top of `self` (fields `other` sets win).
    pub fn merge(&mut self, other: &Controls) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            autofocus,
            lens_position,
            exposure,
            exposure_time_us,
            analogue_gain,
            awb,
            brightness,
            contrast,
            saturation,
            sharpness,
            hdr
        );
    }

    /// Clears every control whose name `keep` rejects.
    pub fn retain(&mut self, keep: impl Fn(&'static str) -> bool) {
        macro_rules! clear {
            ($($f:ident),*) => { $( if !keep(stringify!($f)) { self.$f = None; } )* };
        }
        clear!(
            autofocus,
            lens_position,
            exposure,
            exposure_time_us,
            analogue_gain,
            awb,
            brightness,
            contrast,
            saturation,
            sharpness,
            hdr
        );
    }
}

/// What a camera offers, for `GET /controls`: each control's support and current value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlsReport {
    /// Control name → supported by this camera.
    pub supported: BTreeMap<&'static str, bool>,
    /// Values set so far (from the config file and requests).
    pub current: Controls,
}

/// Runtime access to a running source's controls. Implemented by sources whose device has
/// adjustable settings; `apply` must validate support before changing anything.
pub trait CameraControls: Send + Sync {
    /// Names of the controls this camera supports.
    fn supported(&self) -> Vec<&'static str>;
    /// Applies validated controls, or refuses them all.
    fn apply(&self, controls: &Controls) -> Result<(), ControlError>;
    /// The values applied so far.
    fn current(&self) -> Controls;

    fn report(&self) -> ControlsReport {
        let supported = self.supported();
        let mut map = BTreeMap::new();
        for name in ALL_CONTROLS {
            map.insert(*name, supported.contains(name));
        }
        ControlsReport {
            supported: map,
            current: self.current(),
        }
    }
}

/// Every control name, in the order of [`Controls`].
pub const ALL_CONTROLS: &[&str] = &[
    "autofocus",
    "lens_position",
    "exposure",
    "exposure_time_us",
    "analogue_gain",
    "awb",
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "hdr",
];

/// Validates `controls` and checks each against `supported`; the common first half of every
/// [`CameraControls::apply`].
pub fn check(controls: &Controls, supported: &[&'static str]) -> Result<(), ControlError> {
    controls.validate()?;
    let missing: Vec<&'static str> = controls
        .names()
        .into_iter()
        .filter(|n| !supported.contains(n))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ControlError::Unsupported(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Controls {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ranges_are_checked_and_name_the_key() {
        for (json, key) in [
            (r#"{"brightness": 1.5}"#, "brightness"),
            (r#"{"contrast": -1}"#, "contrast"),
            (r#"{"lens_position": 40}"#, "lens_position"),
            (r#"{"exposure_time_us": 0}"#, "exposure_time_us"),
            (r#"{"analogue_gain": 0.5}"#, "analogue_gain"),
            (r#"{"sharpness": 17}"#, "sharpness"),
        ] {
            assert_eq!(parse(json).validate().unwrap_err().key, key, "{json}");
        }
        assert!(
            parse(r#"{"brightness": -1, "contrast": 32, "saturation": 0}"#)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn combinations_are_checked() {
        let e = parse(r#"{"autofocus": "continuous", "lens_position": 2}"#).validate();
        assert_eq!(e.unwrap_err().key, "lens_position");
        let e = parse(r#"{"exposure": "auto", "exposure_time_us": 10000}"#).validate();
        assert_eq!(e.unwrap_err().key, "exposure");
        assert!(parse(r#"{"autofocus": "manual", "lens_position": 0.5}"#)
            .validate()
            .is_ok());
        assert!(
            parse(r#"{"exposure": "manual", "exposure_time_us": 10000, "analogue_gain": 2}"#)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn unknown_names_and_values_are_parse_errors() {
        assert!(serde_json::from_str::<Controls>(r#"{"brightnes": 0}"#).is_err());
        assert!(serde_json::from_str::<Controls>(r#"{"awb": "sunny"}"#).is_err());
        assert!(serde_json::from_str::<Controls>(r#"{"brightness": "high"}"#).is_err());
    }

    #[test]
    fn unsupported_controls_are_listed() {
        let c = parse(r#"{"brightness": 0.2, "hdr": "on", "autofocus": "auto"}"#);
        assert_eq!(
            check(&c, &["brightness"]),
            Err(ControlError::Unsupported(vec!["autofocus", "hdr"]))
        );
        assert_eq!(check(&c, ALL_CONTROLS), Ok(()));
    }

    #[test]
    fn merge_keeps_what_is_not_named() {
        let mut a = parse(r#"{"brightness": 0.2, "contrast": 1.5}"#);
        a.merge(&parse(r#"{"contrast": 2}"#));
        assert_eq!(a, parse(r#"{"brightness": 0.2, "contrast": 2}"#));
        assert_eq!(a.names(), vec!["brightness", "contrast"]);
        a.retain(|n| n != "contrast");
        assert_eq!(a.names(), vec!["brightness"]);
    }
}
