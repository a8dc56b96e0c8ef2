//! Command line, config file, status endpoints and shutdown.

use crate::common;

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
        (&["--trusted-proxy", "proxy.lan"][..], "`trusted_proxies`"),
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

/// `picamd --hash-password` with `input` piped to it: exit code, stdout, stderr.
fn hash_password_piped(input: &[u8]) -> (Option<i32>, String, String) {
    let out = common::run_picamd_with_stdin(&["--hash-password"], input);
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn verifies(phc: &str, password: &str) -> bool {
    picamd::auth::PasswordHashString::parse(phc)
        .unwrap_or_else(|e| panic!("{phc:?}: {e}"))
        .verify(password.as_bytes())
}

#[test]
fn hash_password_from_a_pipe_reads_one_line_without_prompts() {
    for empty in [&b""[..], b"\n", b"\r\n"] {
        let (code, out, err) = hash_password_piped(empty);
        assert_eq!(code, Some(2), "{empty:?}: {err}");
        assert!(out.is_empty(), "{empty:?}: {out}");
        assert!(err.contains("the password is empty"), "{empty:?}: {err}");
    }
    // One line, no confirmation: a second line is not read.
    let (code, out, err) = hash_password_piped(b"pipe pass\nsomething else\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "no prompt on a pipe: {err}");
    let phc = out.strip_suffix('\n').unwrap();
    assert!(
        phc.starts_with("$argon2id$v=19$") && !phc.contains('\n'),
        "{out}"
    );
    assert!(verifies(phc, "pipe pass"));
    // Without a line end, and with a CRLF one.
    for (input, password) in [(&b"no newline"[..], "no newline"), (b"crlf\r\n", "crlf")] {
        let (code, out, err) = hash_password_piped(input);
        assert_eq!(code, Some(0), "{err}");
        assert!(verifies(out.trim_end(), password), "{input:?}");
    }
}

/// Runs `shell` (a `/bin/sh` command line) on a pseudo-terminal with util-linux `script`,
/// typing each `(wait_for, keys)`'s keys once the terminal shows `wait_for`; returns all
/// the terminal showed (echoed input included) once the command has ended.
fn on_a_terminal(shell: &str, typing: &[(&str, &str)]) -> String {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let mut command = Command::new("script");
    command
        .args(["-q", "-e", "-c", shell, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A test run started in the background by a non-interactive shell (`cargo test &`, as a
    // CI script may) has SIGINT and SIGQUIT ignored, and ignored signals stay ignored across
    // exec: script, sh and picamd would all ignore the Ctrl-C typed below. The terminal
    // tests are about a user's interactive shell, where they are not ignored.
    // SAFETY: only sigaction (async-signal-safe) runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            use nix::sys::signal::{signal, SigHandler, Signal};
            for s in [Signal::SIGINT, Signal::SIGQUIT] {
                signal(s, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .expect("util-linux `script` (Debian: bsdutils) runs the terminal tests");
    let shown = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text =
        |shown: &Mutex<Vec<u8>>| String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = 0;
    for (wait_for, keys) in typing {
        // Each prompt after the previous one: "again: " must not match an earlier text.
        loop {
            let t = text(&shown);
            if let Some(at) = t[seen..].find(wait_for) {
                seen += at + wait_for.len();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no {wait_for:?} on the terminal:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stdin.write_all(keys.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    // stdin stays open until the command ends: at EOF, script would end the session.
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not end:\n{}", text(&shown));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    reader.join().unwrap();
    text(&shown)
}

/// After `picamd --hash-password` on a terminal: its exit code, and whether `stty -a`
/// shows echo on.
const THEN_STATUS_AND_ECHO: &str =
    r#"echo "exit=$?"; stty -a | tr ' ;' '\n\n' | grep -x -e echo -e -echo"#;

fn picamd_quoted() -> String {
    format!("'{}'", env!("CARGO_BIN_EXE_picamd"))
}

#[test]
fn hash_password_on_a_terminal_hides_the_password_and_asks_twice() {
    let shell = format!(
        "{} --hash-password; {THEN_STATUS_AND_ECHO}",
        picamd_quoted()
    );
    let typed = "tty s3cret pass";
    let line = format!("{typed}\n");
    let shown = on_a_terminal(&shell, &[("password", &line), ("again: ", &line)]);
    assert!(!shown.contains(typed), "the password was echoed:\n{shown}");
    assert!(shown.contains("exit=0"), "{shown}");
    let phc = shown
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with("$argon2id$v=19$"))
        .unwrap_or_else(|| panic!("no hash:\n{shown}"));
    assert!(verifies(phc, typed));
    // The prompts are on lines of their own (a line end after each hidden entry), and
    // echo is back on afterwards.
    assert!(shown.contains("again: \r\n$argon2id$"), "{shown:?}");
    assert!(shown.lines().any(|l| l.trim_end() == "echo"), "{shown}");

    // Two different entries: nothing hashed, exit 1, echo back on.
    let shown = on_a_terminal(
        &shell,
        &[("password", "first try\n"), ("again: ", "second try\n")],
    );
    assert!(
        shown.contains("differ") && shown.contains("exit=1"),
        "{shown}"
    );
    assert!(
        !shown.contains("$argon2id$") && !shown.contains(" try"),
        "{shown}"
    );
    assert!(shown.lines().any(|l| l.trim_end() == "echo"), "{shown}");

    // An empty entry is refused at once, without asking again.
    let shown = on_a_terminal(&shell, &[("password", "\n")]);
    assert!(
        shown.contains("the password is empty") && shown.contains("exit=2"),
        "{shown}"
    );
    assert!(!shown.contains("again"), "{shown}");
}

#[test]
fn hash_password_interrupted_on_a_terminal_restores_echo() {
    // sh runs its trap once picamd is gone, then the rest; picamd dies of the SIGINT.
    let shell = format!(
        "trap 'echo interrupted' INT; {} --hash-password; {THEN_STATUS_AND_ECHO}",
        picamd_quoted()
    );
    let shown = on_a_terminal(&shell, &[("password", "half typed"), ("", "\x03")]);
    assert!(!shown.contains("half typed"), "{shown}");
    assert!(shown.contains("exit=130"), "{shown}");
    assert!(
        shown.lines().any(|l| l.trim_end() == "echo"),
        "echo still off after Ctrl-C:\n{shown}"
    );
}
