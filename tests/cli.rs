//! Command line, config file, status endpoints and shutdown.

mod common;

use std::io::Write;
use std::process::Command;

use common::{run_picamd, Picamd, TempFile};

fn config_file(text: &str) -> TempFile {
    TempFile::with(text)
}

#[test]
fn help_lists_the_flags() {
    let out = run_picamd(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--size",
        "--fps",
        "--quality",
        "--workers",
        "--source",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn invalid_flags_name_the_key_and_exit_non_zero() {
    for (args, key) in [
        (&["--fps", "0"][..], "`fps`"),
        (&["--quality", "101"][..], "`quality`"),
        (&["--size", "1280"][..], "`size`"),
        (&["--listen", "nowhere"][..], "`listen`"),
        (&["--source", "webcam9"][..], "`source`"),
        (&["--rotation", "45"][..], "`rotation`"),
    ] {
        let out = run_picamd(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

#[test]
fn invalid_config_files_are_clear_errors() {
    let bad_value = config_file("fps = 30\nquality = 0\n");
    let out = run_picamd(&["--config", bad_value.as_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`quality`") && err.contains(bad_value.as_str()),
        "{err}"
    );

    let unknown_key = config_file("fsp = 30\n");
    let out = run_picamd(&["--config", unknown_key.as_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("fsp"), "{err}");

    let wrong_type = config_file("fps = \"fast\"\n");
    let out = run_picamd(&["--config", wrong_type.as_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fps"));

    let out = run_picamd(&["--config", "/nonexistent/picamd.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/picamd.toml"));
}

#[tokio::test]
async fn config_file_values_apply_and_flags_override_them() {
    let file = config_file("size = \"320x240\"\nfps = 12\nquality = 60\nworkers = 1\n");
    let p = Picamd::start(&["--config", file.as_str(), "--fps", "15"]);
    let s = p.state().await;
    assert_eq!(s["resolution"]["width"], 320);
    assert_eq!(s["fps"]["configured"], 15);
    assert_eq!(s["encoder"]["quality"], 60);
    assert_eq!(s["encoder"]["workers"], 1);
}

#[tokio::test]
async fn status_endpoints() {
    let p = Picamd::start(&["--size", "320x240"]);
    let h = p.get("/healthz").await;
    assert_eq!((h.status, h.body.as_slice()), (200, &b"ok\n"[..]));

    p.get("/snapshot").await;
    let m = p.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(m.body).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(value("picamd_frames_encoded_total{stream=\"main\"}") >= 1.0);
    assert_eq!(value("picamd_fps_configured{stream=\"main\"}"), 30.0);
    assert!(text.contains("picamd_viewers{stream=\"main\",output=\"mjpeg\"} 0"));

    let s = p.state().await;
    for key in [
        "source",
        "resolution",
        "fps",
        "viewers",
        "encoder",
        "frames",
    ] {
        assert!(s.get(key).is_some(), "/state lacks {key}: {s}");
    }

    assert_eq!(p.get("/nope").await.status, 404);
    assert_eq!(p.get("/?action=explode").await.status, 400);
    let page = p.get("/").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("/stream"));
}

#[tokio::test]
async fn viewer_limit_answers_503() {
    let p = Picamd::start(&["--size", "320x240", "--max-viewers", "1"]);
    let first = common::open(p.addr, "/stream").await;
    assert_eq!(first.status, 200);
    let second = p.get("/stream").await;
    assert_eq!(second.status, 503);
    assert!(second.header("retry-after").is_some());
    drop(first);
}

#[tokio::test]
async fn sigterm_with_open_streams_exits_cleanly() {
    let mut p = Picamd::start(&["--size", "320x240"]);
    let mut r = common::MjpegReader::new(common::open(p.addr, "/stream").await).await;
    r.next_part().await.unwrap();
    let status = p.stop();
    assert!(status.success(), "exit status {status}");
    // The stream ends rather than hanging.
    while r.next_part().await.is_some() {}
    let _ = std::io::stdout().flush();
}

/// A service whose log reader went away (a closed stderr pipe) must still log without
/// dying and shut down on SIGTERM.
#[test]
fn sigterm_with_stdout_and_stderr_closed_exits_cleanly() {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_picamd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allow-root",
            "--size",
            "160x120",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no address line");
    }
    drop(out);
    drop(child.stderr.take());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("picamd did not exit after SIGTERM with its output pipes closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn list_cameras_without_cameras_says_so_and_fails() {
    let has_video = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("video"))
        })
        .unwrap_or(false);
    let out = run_picamd(&["--list-cameras"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("V4L2"), "{text}");
    if !has_video {
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no cameras found"));
    }
}

#[test]
fn check_config_reports_and_exits_without_serving() {
    let good = config_file("allow_root = true\nsource = \"test\"\nsize = \"640x480\"\nfps = 12\nlisten = \"127.0.0.1:1\"\n");
    let out = run_picamd(&["--check-config", "--config", good.as_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("config ok: listen 127.0.0.1:1\n"),
        "{text}"
    );
    assert!(
        text.contains("stream main: source test @ 640x480 12 fps"),
        "{text}"
    );

    let bad = config_file("allow_root = true\nfps = 0\n");
    let out = run_picamd(&["--check-config", "--config", bad.as_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`fps`") && out.stdout.is_empty(), "{err}");
}
