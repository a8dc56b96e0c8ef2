//! Browser latency benchmark (issue 20): capture → drawn in Debian's Chromium for each way the
//! player receives video, with bytes per second. The measuring is done by
//! `benches/browser-latency.mjs` (playwright-core, the same harness as the browser tests);
//! this runs it against the binary `cargo bench` built, passing its arguments on:
//!
//! ```text
//! cargo bench --bench browser_latency                       # 60 s per path at 1280x720, 30 fps
//! cargo bench --bench browser_latency -- --seconds 20 --sources ws,webrtc
//! ```

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/browser-latency.mjs");
    // cargo passes `--bench` to harness-less benches; the script takes its own flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let status = Command::new("node")
        .arg(script)
        .args(&args)
        .env("PICAMD_BIN", env!("CARGO_BIN_EXE_picamd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("browser-latency.mjs: {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot run node: {e}");
            ExitCode::FAILURE
        }
    }
}
