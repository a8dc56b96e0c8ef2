//! picamd under a service manager, as systemd runs it: readiness, status and watchdog
//! notifications on a real `NOTIFY_SOCKET`, socket activation, privilege dropping and
//! configuration errors — all through the real binary and real sockets.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_picamd, Picamd, TempFile};

/// A notification socket like systemd's: records every datagram with its arrival time.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "notify-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let now = Instant::now();
                let mut sink = sink.lock().unwrap();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    sink.push((now, line.to_owned()));
                }
            }
        });
        NotifySocket { path, received }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a message equal to `line`; returns when it arrived.
    fn wait_for(&self, line: &str, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some((t, _)) = self.messages().iter().find(|(_, m)| m == line) {
                return Some(*t);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn ready_only_once_serving_then_status_and_stopping_on_sigterm() {
    let notify = NotifySocket::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_picamd"))
        .args(["--listen", &listen, "--allow-root", "--size", "160x120"])
        .env("NOTIFY_SOCKET", notify.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ready = notify.wait_for("READY=1", Duration::from_secs(20));
    // The moment READY=1 is in, the port must answer, with nothing retried.
    let connected = TcpStream::connect(("127.0.0.1", port));
    assert!(ready.is_some(), "no READY=1: {:?}", notify.messages());
    assert!(
        connected.is_ok(),
        "READY=1 before the port accepts connections"
    );
    let mut s = connected.unwrap();
    use std::io::Write;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // STATUS= is refreshed while running (every 2 s).
    std::thread::sleep(Duration::from_millis(4500));
    let statuses: Vec<String> = notify
        .messages()
        .into_iter()
        .filter_map(|(_, m)| m.strip_prefix("STATUS=").map(str::to_owned))
        .collect();
    assert!(statuses.len() >= 2, "{statuses:?}");
    assert!(
        statuses.iter().any(|s| s.contains("idle")),
        "nobody watches, the status should say idle: {statuses:?}"
    );
    // No WATCHDOG_USEC, no pings.
    assert!(!notify.messages().iter().any(|(_, m)| m == "WATCHDOG=1"));

    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let stopping = notify.wait_for("STOPPING=1", Duration::from_secs(2));
    assert!(stopping.is_some(), "no STOPPING=1: {:?}", notify.messages());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            term.elapsed() < Duration::from_secs(5),
            "picamd still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// `WATCHDOG_PID` naming another process means the watchdog belongs to that one.
#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let notify = NotifySocket::new();
    let _p = Picamd::try_start_with_env(
        "127.0.0.1:0",
        &["--size", "160x120"],
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "300000"),
            ("WATCHDOG_PID", "1"),
        ],
    )
    .expect("picamd starts");
    assert!(notify
        .wait_for("READY=1", Duration::from_secs(20))
        .is_some());
    std::thread::sleep(Duration::from_millis(1500));
    let msgs = notify.messages();
    assert!(!msgs.iter().any(|(_, m)| m == "WATCHDOG=1"), "{msgs:?}");
}

/// Runs of the same `/state` source state: (state, from, to).
fn runs(samples: &[(Instant, String)]) -> Vec<(String, Instant, Instant)> {
    let mut out: Vec<(String, Instant, Instant)> = Vec::new();
    for (t, s) in samples {
        match out.last_mut() {
            Some((state, _, to)) if state == s => *to = *t,
            _ => out.push((s.clone(), *t, *t)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn watchdog_pings_while_frames_flow_and_stops_while_stalled() {
    let notify = NotifySocket::new();
    // Live 4 s, then 6 s that deliver nothing without an error (a wedged camera), repeated.
    let p = Picamd::try_start_with_env(
        "127.0.0.1:0",
        &[
            "--size",
            "160x120",
            "--fps",
            "10",
            "--source",
            "test:live=4,stall=6",
        ],
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "600000"),
        ],
    )
    .expect("picamd starts");
    // A viewer keeps frames flowing (and makes a stall visible at all).
    let mut viewer = common::open(p.addr, "/stream").await;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while viewer.read(&mut buf).await > 0 {}
    });
    // 15 s covers live, stalled and live again.
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let s = p.state().await;
        let state = s["source"]["state"].as_str().unwrap_or("?").to_owned();
        samples.push((Instant::now(), state));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.abort();
    let pings: Vec<Instant> = notify
        .messages()
        .into_iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| t)
        .collect();
    let runs = runs(&samples);
    let summary: Vec<String> = runs
        .iter()
        .map(|(s, a, b)| {
            let n = pings.iter().filter(|t| **t >= *a && **t <= *b).count();
            format!("{s} {:.1}s ({n} pings)", (*b - *a).as_secs_f64())
        })
        .collect();
    let long = |min: f64| move |r: &&(String, Instant, Instant)| (r.2 - r.1).as_secs_f64() >= min;
    // The check runs every WatchdogSec/3 = 200 ms: allow a few ticks and a poll on each edge (a busy machine delays both).
    let grace = Duration::from_millis(1000);
    let stalls: Vec<_> = runs
        .iter()
        .filter(|r| r.0 == "stalled")
        .filter(long(2.0))
        .collect();
    assert!(!stalls.is_empty(), "no stall observed: {summary:?}");
    for (_, from, to) in &stalls {
        let during = pings
            .iter()
            .filter(|t| **t > *from + grace && **t < *to)
            .count();
        assert_eq!(during, 0, "pinged while stalled: {summary:?}");
    }
    let live: Vec<_> = runs
        .iter()
        .filter(|r| r.0 == "streaming")
        .filter(long(2.0))
        .collect();
    assert!(live.len() >= 2, "live, stalled, live again: {summary:?}");
    for (_, from, to) in &live {
        let during = pings.iter().filter(|t| **t >= *from && **t <= *to).count();
        // About 10 per 2 s; a third of that is plenty to tell pinging from not.
        assert!(during >= 3, "too few pings while live: {summary:?}");
    }
    // STATUS= says what is wrong while it is.
    let statuses: Vec<String> = notify
        .messages()
        .into_iter()
        .filter_map(|(_, m)| m.strip_prefix("STATUS=").map(str::to_owned))
        .collect();
    assert!(
        statuses
            .iter()
            .any(|s| s.contains("stalled") && s.contains("watchdog withheld")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.starts_with("live")),
        "{statuses:?}"
    );
}

#[test]
fn socket_activation_serves_on_the_passed_socket_not_on_listen() {
    let activated = TcpListener::bind("127.0.0.1:0").unwrap();
    let activated_addr = activated.local_addr().unwrap();
    // `listen` names a port this test holds: binding it would fail and end picamd.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap().to_string();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&activated);
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        // `exec` keeps the shell's pid, which is what LISTEN_PID must name.
        r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_picamd"),
        "--listen",
        &held_addr,
        "--allow-root",
        "--size",
        "160x120",
    ])
    .env("RUST_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if fd != 3 {
                nix::unistd::dup2(fd, 3)?;
            }
            // Inherited without close-on-exec, as systemd passes it.
            nix::fcntl::fcntl(
                3,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(activated);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let mut banner = None;
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(addr) = line.split("listening on ").nth(1) {
            banner = Some(addr.trim().parse::<SocketAddr>().unwrap());
            break;
        }
    }
    let serving = banner.map(|addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        use std::io::Write;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert_eq!(banner, Some(activated_addr), "{log}");
    assert!(serving.unwrap().starts_with("HTTP/1.1 200"));
    assert!(log.contains("socket passed by systemd"), "{log}");
    assert!(status.success(), "{status}: {log}");
    drop(held);
}

#[test]
fn bad_config_files_exit_2_and_name_the_key() {
    for (text, needle) in [
        ("fps = = 3\n", "fps"),
        ("fsp = 3\n", "fsp"),
        ("quality = 0\n", "`quality`"),
        ("log_level = \"loud\"\n", "`log_level`"),
        ("allow_root = \"yes\"\n", "allow_root"),
        ("[led]\ncolour = \"red\"\n", "colour"),
        ("[led]\npin = 300\n", "pin"),
        ("[led]\nbackend = \"blink\"\n", "led"),
        ("[led]\nbackend = \"gpio\"\n", "led.pin"),
        ("[led]\nbackend = \"sysfs\"\nname = \"../x\"\n", "led.name"),
        ("user = \"no-such-user-picamd\"\n", "`user`"),
        ("user = \"has space\"\n", "`user`"),
        (
            "user = \"nobody\"\ngroup = \"no-such-group-picamd\"\n",
            "`group`",
        ),
        ("group = \"nogroup\"\n", "`group`"),
        (
            "[[stream]]\nname = \"a\"\nsource = \"test\"\nuser = \"nobody\"\n",
            "`user`",
        ),
    ] {
        let file = TempFile::with(text);
        let out = run_picamd(&["--config", file.as_str(), "--listen", "127.0.0.1:0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

/// A user other than the one running picamd can only be switched to by root.
#[test]
fn user_is_an_error_when_not_root() {
    let file = TempFile::with("user = \"root\"\n");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_picamd"));
    cmd.args(["--config", file.as_str(), "--listen", "127.0.0.1:0"]);
    if is_root() {
        // Run it as nobody instead.
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`user`") && err.contains("not as root"),
        "{err}"
    );
}

#[test]
fn root_without_user_or_allow_root_refuses_to_start() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let out = run_picamd(&["--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`user`") && err.contains("allow_root") && err.contains("root"),
        "{err}"
    );
}

fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn as_root_it_binds_a_privileged_port_then_runs_as_the_user() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // A port below 1024, which only root can bind: proof the bind came before the switch.
    let p = (900..1000)
        .find_map(|port| {
            Picamd::try_start(
                &format!("127.0.0.1:{port}"),
                &["--user", "nobody", "--size", "160x120"],
            )
        })
        .expect("picamd starts on a privileged port");
    assert!(p.addr.port() < 1024);
    let pid = p.pid();
    assert_eq!(status_ids(pid, "Uid:"), vec![nobody.uid.as_raw(); 4]);
    assert_eq!(status_ids(pid, "Gid:"), vec![nobody.gid.as_raw(); 4]);
    let groups = status_ids(pid, "Groups:");
    assert!(!groups.contains(&0), "still in group root: {groups:?}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    assert_eq!(
        u64::from_str_radix(caps, 16).unwrap(),
        0,
        "capabilities left"
    );
    // Every thread, not only the main one.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        assert!(
            s.lines()
                .any(|l| l.starts_with("Uid:") && !l.split_whitespace().skip(1).any(|v| v == "0")),
            "thread {tid} still has uid 0"
        );
    }
    // And it still works.
    let r = p.get("/snapshot").await;
    assert_eq!(r.status, 200);
}
