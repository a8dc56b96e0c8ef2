//! Camera controls: what users may adjust, validated in one place before any camera sees it.
//!
//! The same [`Controls`] value comes from the config file (`[controls]`) and from
//! `POST /controls` (JSON). Every field is optional; a request changes only what it names.
//! [`Controls::validate`] checks ranges and combinations; a source then reports, per control,
//! whether its camera supports it. A request naming an unsupported control is refused as a
//! whole with the list of what is unsupported: nothing is silently ignored.
//!
//! [`ControlBook`] is the state both camera backends (V4L2 and libcamera) keep behind their
//! [`CameraControls`] handle: what was requested (kept across closes and restarts, and before
//! the device was ever opened), what changed since the device last saw it, and what the device
//! supports once it has been opened. A backend supplies only the device side: its
//! [`DeviceSupport`] and how values are written.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

    /// Applies `delta` on top of `self` like [`Controls::merge`], first dropping values a mode
    /// change makes meaningless (a lens position once focus is automatic, a fixed exposure
    /// once exposure is automatic), so what is kept stays valid as a whole.
    pub fn overlay(&mut self, delta: &Controls) {
        if matches!(delta.autofocus, Some(AfMode::Continuous | AfMode::Auto)) {
            self.lens_position = None;
        }
        if delta.exposure == Some(ExposureMode::Auto) {
            self.exposure_time_us = None;
            self.analogue_gain = None;
        }
        self.merge(delta);
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

// ---------------------------------------------------------------------------------------------
// The controls state of a camera backend

/// What an opened device tells its backend about controls. V4L2 learns it with
/// `VIDIOC_QUERYCTRL`, libcamera from the camera's control info map.
pub trait DeviceSupport: Clone + Send + 'static {
    /// picamd control names the device has, in the order of [`ALL_CONTROLS`].
    fn names(&self) -> Vec<&'static str>;

    /// Values of controls the device has but cannot take (a mode it does not offer), each with
    /// the control's name and a reason that names it. None by default.
    fn refusals(&self, _controls: &Controls) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// What a backend is handed to write: [`ControlBook::opened`] gives everything in both
/// fields, [`ControlBook::write_pending`] the changes since the last write in `changed`.
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    /// Everything requested so far, for a backend that rewrites every value (V4L2: one
    /// `VIDIOC_S_CTRL` each, modes before the values they unlock).
    pub requested: &'a Controls,
    /// What changed since the device last saw the controls, for a backend that sends only
    /// changes (libcamera attaches them to the next request).
    pub changed: &'a Controls,
}

/// A request recorded by [`ControlBook::request`], to be settled with [`ControlBook::settle`].
#[must_use = "settle the ticket to learn whether the device took the values"]
#[derive(Debug)]
pub struct Ticket {
    /// The generation the request made; `None` when it named nothing.
    generation: Option<u64>,
    /// What was requested before, restored if the device refuses the request.
    before: Controls,
}

struct Book<S> {
    /// Everything requested so far (merged); written again on every opening.
    requested: Controls,
    /// Changes since the device last saw the controls.
    pending: Controls,
    /// What the device offers: `None` until it has been opened once, then kept across closes
    /// (the same device usually comes back) and renewed on each opening.
    supported: Option<S>,
    /// The device is open, so requests are written by its capture thread.
    open: bool,
    /// Bumped by each accepted request and each roll-back; `written` catches up on a write.
    generation: u64,
    written: u64,
    /// What the device said to the write of generation `written`.
    outcome: Result<(), String>,
}

/// The controls state of a camera backend, behind its [`CameraControls`] handle: made with the
/// source, valid across restarts, idle closes and replugs.
///
/// - A request is validated ([`Controls::validate`], also the result merged with what was
///   requested before), then checked against what the device supports, once that is known: a
///   request naming an unsupported control is refused as a whole with the list
///   ([`ControlError::Unsupported`]), one with a value the device cannot take as a whole with
///   the reasons ([`ControlError::Rejected`]). Before the device was ever opened only the
///   validation applies; the values are kept.
/// - When the device becomes known ([`Self::learn`]), what was requested and it cannot take is
///   dropped with a warning (nothing is written that the device lacks).
/// - Each opening ([`Self::opened`]) writes everything requested; while the device is open its
///   capture thread writes the changes between frames ([`Self::write_pending`]).
/// - A backend whose device answers each write (V4L2) sets a confirmation wait: a request
///   made while the device is open then waits that long for the write, and if the device
///   refuses it, the request is rolled back (what was requested before is restored and
///   written again) and the refusal is reported ([`ControlError::Rejected`]).
pub struct ControlBook<S> {
    book: Mutex<Book<S>>,
    changed: Condvar,
    /// How long a request waits for an open device's answer; `None`: the device gives none.
    confirm: Option<Duration>,
}

impl<S: DeviceSupport> Default for ControlBook<S> {
    fn default() -> Self {
        ControlBook {
            book: Mutex::new(Book {
                requested: Controls::default(),
                pending: Controls::default(),
                supported: None,
                open: false,
                generation: 0,
                written: 0,
                outcome: Ok(()),
            }),
            changed: Condvar::new(),
            confirm: None,
        }
    }
}

impl<S: DeviceSupport> ControlBook<S> {
    /// A book whose requests, while the device is open, wait up to `wait` for the capture
    /// thread to write them and report what the device refused.
    pub fn confirmed_within(wait: Duration) -> Self {
        ControlBook {
            confirm: Some(wait),
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book<S>> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything requested with `controls` (e.g. from the config file), without a
    /// support check: what the device lacks is dropped when it becomes known.
    pub fn preset(&self, controls: &Controls) -> Result<(), InvalidControl> {
        controls.validate()?;
        let mut book = self.lock();
        book.requested = controls.clone();
        book.pending = controls.clone();
        book.generation += 1;
        Ok(())
    }

    /// Checks `controls` and records them; see the type's docs for the checks. The device
    /// sees them at its next write; [`Self::settle`] waits for that where the device answers.
    pub fn request(&self, controls: &Controls) -> Result<Ticket, ControlError> {
        let mut book = self.lock();
        match &book.supported {
            Some(s) => {
                check(controls, &s.names())?;
                let refused = s.refusals(controls);
                if !refused.is_empty() {
                    let reasons: Vec<String> = refused.into_iter().map(|(_, r)| r).collect();
                    return Err(ControlError::Rejected(reasons.join(", ")));
                }
            }
            None => controls.validate()?,
        }
        let before = book.requested.clone();
        if controls.is_empty() {
            return Ok(Ticket {
                generation: None,
                before,
            });
        }
        let mut next = before.clone();
        next.overlay(controls);
        next.validate()?;
        book.requested = next;
        book.pending.overlay(controls);
        book.generation += 1;
        Ok(Ticket {
            generation: Some(book.generation),
            before,
        })
    }

    /// Waits (up to the confirmation wait, while the device is open) for the request to be
    /// written. On a refusal it is rolled back, unless a later request came meanwhile (that
    /// one carries the values on), and the refusal is returned. A request still queued when
    /// the wait ends (a slow camera between frames) is written with the next frame: `Ok`.
    pub fn settle(&self, ticket: Ticket) -> Result<(), ControlError> {
        let (Some(generation), Some(wait)) = (ticket.generation, self.confirm) else {
            return Ok(());
        };
        let mut book = self.lock();
        let deadline = Instant::now() + wait;
        while book.open && book.written < generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            book = self
                .changed
                .wait_timeout(book, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if book.written < generation {
            // Closed meanwhile: written at the next opening.
            return Ok(());
        }
        let Err(refusal) = book.outcome.clone() else {
            return Ok(());
        };
        if book.generation == generation {
            // Restore and have the previous values written again; for a backend sending only
            // changes, those are the previous values of every control the request changed.
            let mut restore = ticket.before.clone();
            let refused = book.requested.clone();
            restore.retain(|name| only(&ticket.before, name) != only(&refused, name));
            book.pending.merge(&restore);
            book.requested = ticket.before;
            book.generation += 1;
        }
        Err(ControlError::Rejected(refusal))
    }

    /// The device became known (opened, or found): remember what it supports and drop, with
    /// one warning, what was requested that it cannot take.
    pub fn learn(&self, supported: S) {
        let mut book = self.lock();
        let names = supported.names();
        let mut dropped: Vec<(&'static str, String)> = book
            .requested
            .names()
            .into_iter()
            .filter(|n| !names.contains(n))
            .map(|n| (n, format!("{n} (not supported by this camera)")))
            .collect();
        dropped.extend(supported.refusals(&book.requested));
        if !dropped.is_empty() {
            let reasons: Vec<&str> = dropped.iter().map(|(_, r)| r.as_str()).collect();
            tracing::warn!(
                "camera controls not applied on this camera: {}",
                reasons.join(", ")
            );
            let keep = |name: &'static str| !dropped.iter().any(|(n, _)| *n == name);
            book.requested.retain(keep);
            book.pending.retain(keep);
        }
        tracing::debug!(supported = ?names, "camera controls");
        book.supported = Some(supported);
    }

    /// The device was opened: `write` gets everything requested (nothing when the device is
    /// not known yet, see [`Self::learn`]); its answer settles every request so far.
    pub fn opened(&self, write: impl FnOnce(&S, Changes<'_>) -> Result<(), String>) {
        let mut book = self.lock();
        book.open = true;
        book.write(true, write);
        self.changed.notify_all();
    }

    /// Between frames, on the capture thread: `write` gets the changes made since the last
    /// write, if any.
    pub fn write_pending(&self, write: impl FnOnce(&S, Changes<'_>) -> Result<(), String>) {
        let mut book = self.lock();
        if book.written < book.generation {
            book.write(false, write);
            self.changed.notify_all();
        }
    }

    /// The device was closed; requests are kept (and not waited for) until it opens again.
    pub fn closed(&self) {
        self.lock().open = false;
        self.changed.notify_all();
    }

    /// What the device reported when it was last opened; `None` before that.
    pub fn support(&self) -> Option<S> {
        self.lock().supported.clone()
    }
}

impl<S: DeviceSupport> Book<S> {
    /// Hands the device everything requested (`everything`) or the changes since the last
    /// write, and records its answer as the outcome of every request so far. Nothing while
    /// the device is not known.
    fn write(
        &mut self,
        everything: bool,
        write: impl FnOnce(&S, Changes<'_>) -> Result<(), String>,
    ) {
        let Some(supported) = &self.supported else {
            return;
        };
        let changed = if everything {
            &self.requested
        } else {
            &self.pending
        };
        let outcome = write(
            supported,
            Changes {
                requested: &self.requested,
                changed,
            },
        );
        if let Err(e) = &outcome {
            tracing::warn!("camera refused controls: {e}");
        }
        self.outcome = outcome;
        self.pending = Controls::default();
        self.written = self.generation;
    }
}

/// `c` with only the control called `name` kept.
fn only(c: &Controls, name: &str) -> Controls {
    let mut one = c.clone();
    one.retain(|n| n == name);
    one
}

impl<S: DeviceSupport> CameraControls for ControlBook<S> {
    /// Empty until the device has been opened once.
    fn supported(&self) -> Vec<&'static str> {
        self.lock()
            .supported
            .as_ref()
            .map(S::names)
            .unwrap_or_default()
    }

    fn apply(&self, controls: &Controls) -> Result<(), ControlError> {
        let ticket = self.request(controls)?;
        self.settle(ticket)
    }

    fn current(&self) -> Controls {
        self.lock().requested.clone()
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

    /// A device for the shared state's tests: the controls it has, and white balance presets
    /// refused by value (as V4L2 cameras do).
    #[derive(Clone)]
    struct Device(Vec<&'static str>);

    impl DeviceSupport for Device {
        fn names(&self) -> Vec<&'static str> {
            self.0.clone()
        }

        fn refusals(&self, c: &Controls) -> Vec<(&'static str, String)> {
            match c.awb {
                Some(m) if m != AwbMode::Auto => vec![("awb", "awb presets (auto only)".into())],
                _ => Vec::new(),
            }
        }
    }

    /// What a step expects from the book.
    #[derive(Debug)]
    enum Want {
        Ok,
        /// Invalid, naming this key.
        Invalid(&'static str),
        Unsupported(&'static [&'static str]),
        /// Rejected, with this in the message.
        Rejected(&'static str),
    }

    /// One step of a case; controls are JSON.
    enum Step {
        /// `apply` (request and settle at once, as `POST /controls` does); only while the
        /// device is closed or the request is refused, else it would wait for a write.
        Apply(&'static str, Want),
        /// `request` only; the ticket is settled by a later `Settle`.
        Request(&'static str),
        Settle(Want),
        /// The device becomes known with these controls.
        Learn(&'static [&'static str]),
        /// The device opens, is handed everything requested (this), and takes it.
        Open(&'static str),
        /// Between frames: the backend is handed (requested, changed), or nothing.
        Write {
            refuse: &'static [&'static str],
            writes: Option<(&'static str, &'static str)>,
        },
        Close,
        Current(&'static str),
    }

    /// The device's answer to a write: refused if it names any of `refuse`.
    fn answer(written: &Controls, refuse: &[&str]) -> Result<(), String> {
        let refused: Vec<&str> = written
            .names()
            .into_iter()
            .filter(|n| refuse.contains(n))
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: out of range", refused.join(", ")))
        }
    }

    fn expect(at: &str, got: Result<(), ControlError>, want: Want) {
        match (&got, &want) {
            (Ok(()), Want::Ok) => {}
            (Err(ControlError::Invalid(e)), Want::Invalid(key)) if e.key == *key => {}
            (Err(ControlError::Unsupported(names)), Want::Unsupported(list)) if names == list => {}
            (Err(ControlError::Rejected(m)), Want::Rejected(part)) if m.contains(part) => {}
            _ => panic!("{at}: got {got:?}, wanted {want:?}"),
        }
    }

    fn run(name: &str, steps: Vec<Step>) {
        // A settle that had to wait this long means the case forgot a write.
        let book: ControlBook<Device> = ControlBook::confirmed_within(Duration::from_secs(2));
        let mut tickets = std::collections::VecDeque::new();
        for (i, step) in steps.into_iter().enumerate() {
            let at = format!("{name}, step {i}");
            match step {
                Step::Apply(json, want) => expect(&at, book.apply(&parse(json)), want),
                Step::Request(json) => tickets.push_back(book.request(&parse(json)).expect(&at)),
                Step::Settle(want) => {
                    let ticket = tickets.pop_front().expect(&at);
                    expect(&at, book.settle(ticket), want);
                }
                Step::Learn(names) => book.learn(Device(names.to_vec())),
                Step::Open(writes) => {
                    let mut seen = None;
                    book.opened(|_, c| {
                        seen = Some((c.requested.clone(), c.changed.clone()));
                        Ok(())
                    });
                    assert_eq!(seen, Some((parse(writes), parse(writes))), "{at}");
                }
                Step::Write { refuse, writes } => {
                    let mut seen = None;
                    book.write_pending(|_, c| {
                        seen = Some((c.requested.clone(), c.changed.clone()));
                        answer(c.changed, refuse)
                    });
                    let writes = writes.map(|(all, changed)| (parse(all), parse(changed)));
                    assert_eq!(seen, writes, "{at}");
                }
                Step::Close => book.closed(),
                Step::Current(json) => assert_eq!(book.current(), parse(json), "{at}"),
            }
        }
    }

    /// Between frames the device takes everything; the backend is handed (requested, changed).
    fn written(requested: &'static str, changed: &'static str) -> Step {
        Step::Write {
            refuse: &[],
            writes: Some((requested, changed)),
        }
    }

    fn nothing_written() -> Step {
        Step::Write {
            refuse: &[],
            writes: None,
        }
    }

    /// The controls state both camera backends keep, tested once for both.
    #[test]
    fn the_shared_controls_state() {
        use Step::*;
        let cases = vec![
            (
                "a request before the device opens is kept and written at the opening",
                vec![
                    Apply(r#"{"brightness": 0.5}"#, Want::Ok),
                    Apply(r#"{"brightness": 3}"#, Want::Invalid("brightness")),
                    Current(r#"{"brightness": 0.5}"#),
                    Learn(&["brightness", "contrast"]),
                    Open(r#"{"brightness": 0.5}"#),
                    nothing_written(),
                    Current(r#"{"brightness": 0.5}"#),
                ],
            ),
            (
                "what the device turns out to lack is dropped when it becomes known",
                vec![
                    Apply(
                        r#"{"brightness": 0.5, "hdr": "on", "awb": "daylight"}"#,
                        Want::Ok,
                    ),
                    Learn(&["brightness", "awb"]),
                    Current(r#"{"brightness": 0.5}"#),
                    Open(r#"{"brightness": 0.5}"#),
                ],
            ),
            (
                "once the device is known, unsupported controls are refused as a whole",
                vec![
                    Learn(&["brightness", "awb"]),
                    Apply(
                        r#"{"brightness": 0.1, "hdr": "on", "contrast": 1}"#,
                        Want::Unsupported(&["contrast", "hdr"]),
                    ),
                    Apply(
                        r#"{"brightness": 0.1, "awb": "cloudy"}"#,
                        Want::Rejected("awb presets"),
                    ),
                    Current("{}"),
                ],
            ),
            (
                "a refusal by the device rolls the request back",
                vec![
                    Learn(&["brightness", "contrast", "saturation"]),
                    Open("{}"),
                    Request(r#"{"contrast": 1.5}"#),
                    written(r#"{"contrast": 1.5}"#, r#"{"contrast": 1.5}"#),
                    Settle(Want::Ok),
                    Request(r#"{"contrast": 2, "saturation": 0}"#),
                    Write {
                        refuse: &["contrast"],
                        writes: Some((
                            r#"{"contrast": 2, "saturation": 0}"#,
                            r#"{"contrast": 2, "saturation": 0}"#,
                        )),
                    },
                    Settle(Want::Rejected("contrast: out of range")),
                    Current(r#"{"contrast": 1.5}"#),
                    // The previous value goes back to the device; saturation had none.
                    written(r#"{"contrast": 1.5}"#, r#"{"contrast": 1.5}"#),
                    nothing_written(),
                ],
            ),
            (
                "a reopening writes everything requested again",
                vec![
                    Learn(&["brightness", "contrast"]),
                    Open("{}"),
                    Request(r#"{"brightness": 0.2}"#),
                    written(r#"{"brightness": 0.2}"#, r#"{"brightness": 0.2}"#),
                    Settle(Want::Ok),
                    Close,
                    // Closed (nobody watches): kept, not waited for.
                    Apply(r#"{"contrast": 2}"#, Want::Ok),
                    Open(r#"{"brightness": 0.2, "contrast": 2}"#),
                    nothing_written(),
                ],
            ),
            (
                "a partial request changes only what it names",
                vec![
                    Learn(&["brightness", "contrast", "exposure", "exposure_time_us"]),
                    Open("{}"),
                    Request(r#"{"brightness": 0.2, "contrast": 1.5}"#),
                    written(
                        r#"{"brightness": 0.2, "contrast": 1.5}"#,
                        r#"{"brightness": 0.2, "contrast": 1.5}"#,
                    ),
                    Settle(Want::Ok),
                    Request(r#"{"contrast": 2}"#),
                    written(
                        r#"{"brightness": 0.2, "contrast": 2}"#,
                        r#"{"contrast": 2}"#,
                    ),
                    Settle(Want::Ok),
                    // A mode change drops the values it makes meaningless...
                    Request(r#"{"exposure": "manual", "exposure_time_us": 1000}"#),
                    Request(r#"{"exposure": "auto"}"#),
                    written(
                        r#"{"brightness": 0.2, "contrast": 2, "exposure": "auto"}"#,
                        r#"{"exposure": "auto"}"#,
                    ),
                    Settle(Want::Ok),
                    Settle(Want::Ok),
                    // ...and a value that contradicts what is kept is refused, not ignored.
                    Apply(r#"{"exposure_time_us": 1000}"#, Want::Invalid("exposure")),
                    Current(r#"{"brightness": 0.2, "contrast": 2, "exposure": "auto"}"#),
                ],
            ),
        ];
        for (name, steps) in cases {
            run(name, steps);
        }
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
