//! `POST /controls` bodies: JSON into [`Controls`], then validation. Accepted controls are
//! in range and finite, survive a JSON round trip exactly, and merging or filtering them keeps
//! what they say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picamd::source::controls::Controls;

fuzz_target!(|data: &[u8]| {
    let Ok(controls) = serde_json::from_slice::<Controls>(data) else {
        return;
    };
    let names = controls.names();
    match controls.validate() {
        Ok(()) => {
            for (value, lo, hi) in [
                (controls.lens_position, 0.0, 32.0),
                (controls.analogue_gain, 1.0, 64.0),
                (controls.brightness, -1.0, 1.0),
                (controls.contrast, 0.0, 32.0),
                (controls.saturation, 0.0, 32.0),
                (controls.sharpness, 0.0, 16.0),
            ] {
                if let Some(v) = value {
                    assert!(v.is_finite() && (lo..=hi).contains(&v), "{v} accepted");
                }
            }
            if let Some(t) = controls.exposure_time_us {
                assert!((1..=10_000_000).contains(&t));
            }
            let json = serde_json::to_vec(&controls).expect("controls serialize");
            let back: Controls = serde_json::from_slice(&json).expect("own JSON reads back");
            assert_eq!(
                back,
                controls,
                "round trip through {}",
                String::from_utf8_lossy(&json)
            );
        }
        Err(e) => {
            assert!(
                names.contains(&e.key),
                "error names {:?}, which the body did not set",
                e.key
            );
        }
    }
    let mut merged = Controls::default();
    merged.merge(&controls);
    assert_eq!(merged, controls);
    let mut kept = controls.clone();
    kept.retain(|_| true);
    assert_eq!(kept, controls);
    kept.retain(|_| false);
    assert!(kept.is_empty());
});
