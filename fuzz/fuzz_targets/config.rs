//! The config file: TOML text → [`ConfigLayer`] → a validated [`Config`]. Whatever the text,
//! the answer is a config or an error that names the file or a key; an accepted config holds
//! only what picamd can run (valid, distinct stream names; sizes, rates and workers in range;
//! valid controls), and resolving the same text twice gives the same config.
//!
//! Input: the file's text. `fuzz/dicts/config.dict` gives libFuzzer the keys and values.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use picamd::config::{check_stream_name, ConfigError, ConfigLayer, MAX_STREAMS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let resolve = || -> Result<_, ConfigError> {
        let layer = ConfigLayer::parse(text, path)?;
        ConfigLayer::resolve(Some((path, layer)), ConfigLayer::default())
    };
    match resolve() {
        Ok(config) => {
            assert!(!config.streams.is_empty() && config.streams.len() <= MAX_STREAMS);
            let mut names = HashSet::new();
            for s in &config.streams {
                check_stream_name(&s.name).expect("an accepted stream name");
                assert!(names.insert(s.name.clone()), "stream {:?} twice", s.name);
                assert!(s.size.width > 0 && s.size.height > 0 && s.fps > 0);
                assert!(s.workers > 0 && s.max_viewers > 0);
                assert!((1..=100).contains(&s.quality));
                assert!(matches!(s.rotation, 0 | 90 | 180 | 270));
                s.controls.validate().expect("accepted controls are valid");
            }
            assert_eq!(resolve().expect("the same text again"), config);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("fuzz.toml") || message.contains('`'),
                "error names neither the file nor a key: {message}"
            );
        }
    }
});
