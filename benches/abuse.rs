//! Load and abuse benchmark: starts the real `picamd` binary on 127.0.0.1 with the test
//! pattern and puts it through one of three scenarios, printing what a viewer and the
//! server's process went through. It asserts nothing about speed; it exits non-zero only when
//! something is plainly broken (the server died or did not exit cleanly, the viewer got
//! nothing, or descriptors leaked).
//!
//! ```sh
//! cargo bench --bench abuse -- idle-flood [--secs 60] [--idle 1000]
//! cargo bench --bench abuse -- churn [--secs 600] [--viewers 200]
//! cargo bench --bench abuse -- soak [--secs 3600]
//! ```
//!
//! - `idle-flood`: one MJPEG viewer alone (the baseline), then the same viewer while `--idle`
//!   connections that send nothing are held open (each re-opened as soon as the server closes
//!   it) and a slowloris client sends a never-ending request head a byte a second. Prints the
//!   viewer's fps per 1-s window (median, min) in both runs, how long the server kept the idle
//!   and slowloris connections, and the server's RSS and descriptors at start, peak and end.
//! - `churn`: `--viewers` clients connect and disconnect in a loop for `--secs`: MJPEG
//!   streams, snapshots and WebSockets, read for a few frames and then closed (abruptly or
//!   politely). Samples RSS and descriptors every 10 s; at the end, once every client is gone,
//!   the descriptor count must be back to the one measured before the churn (+10).
//! - `soak`: 10 MJPEG viewers, 5 WebSocket viewers and a snapshot a second for `--secs`;
//!   RSS and descriptors sampled every 30 s, with their slope per hour.
//!
//! `--size WxH` and `--fps N` change the test pattern (defaults: 1280x720 @ 30, and 640x480
//! @ 30 for `churn`). Every loop here is bounded by a deadline, and every socket operation by
//! a timeout, so a run always ends by itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

// The same way the integration tests start and stop the real binary.
#[path = "../tests/common/mod.rs"]
mod common;
use common::Picamd;

const USAGE: &str = "usage: cargo bench --bench abuse -- <idle-flood|churn|soak> \
[--secs N] [--idle N] [--viewers N] [--size WxH] [--fps N]";

/// Longest wait for any one socket operation (connect, a read, a handshake).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a whole churn operation (one connection's life) may take.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response head accepted from the server.
const MAX_HEAD: usize = 16 * 1024;
const GONE: &str = "the server process is gone";
/// The descriptor growth, after churn, taken as a leak.
const FD_LEAK_MARGIN: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    IdleFlood,
    Churn,
    Soak,
}

struct Options {
    scenario: Scenario,
    secs: u64,
    idle: usize,
    viewers: usize,
    size: String,
    fps: u32,
}

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let fd_limit = common::raise_fd_limit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut args = vec![
        "--size".to_owned(),
        opts.size.clone(),
        "--fps".to_owned(),
        opts.fps.to_string(),
    ];
    if opts.scenario == Scenario::Churn {
        // Every client comes from 127.0.0.1: lift the per-address limits, or the churn would
        // measure 429s. The other scenarios run with the defaults.
        for (flag, value) in [
            ("--max-viewers", "5000"),
            ("--max-viewers-total", "5000"),
            ("--max-viewers-per-client", "5000"),
            ("--max-requests-per-second", "0"),
        ] {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Picamd::start(&args_ref);
    let mut server_flags = args.join(" ");
    if opts.scenario != Scenario::Churn {
        server_flags.push_str(" (default limits)");
    }
    println!("# picamd abuse benchmark: {:?}", opts.scenario);
    println!();
    println!(
        "picamd (pid {}) on {}: test pattern, {server_flags}.",
        server.pid(),
        server.addr
    );
    println!(
        "Machine: {cores} core(s) shared by the server and the load generator; load average \
         at start {}; open-file limit {fd_limit}.",
        load_average()
    );
    println!();

    let pid = server.pid();
    let addr = server.addr;
    let result = match opts.scenario {
        Scenario::IdleFlood => runtime.block_on(idle_flood(addr, pid, &opts)),
        Scenario::Churn => runtime.block_on(churn(addr, pid, &opts)),
        Scenario::Soak => runtime.block_on(soak(addr, pid, &opts)),
    };
    drop(runtime);

    println!();
    println!("Load average at the end: {}.", load_average());
    let mut failed = result.is_err();
    if let Err(why) = &result {
        println!("BROKEN: {why}");
    }
    if usage(pid).is_some() {
        failed |= !server.stop_and_report();
    } else {
        // Already gone: keep the helper's drop from asserting on it.
        std::mem::forget(server);
    }
    if failed {
        std::process::exit(1);
    }
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut scenario = None;
    let (mut secs, mut idle, mut viewers, mut size, mut fps) = (None, 1000, 200, None, 30);
    let mut args = args;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .map(|v| v.trim().to_owned())
        };
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name}: {v:?} is not a positive number"))
        };
        match arg.as_str() {
            // cargo bench passes this to every bench binary.
            "--bench" => {}
            "--secs" => secs = Some(number("--secs", value("--secs")?)?),
            "--idle" => idle = number("--idle", value("--idle")?)? as usize,
            "--viewers" => viewers = number("--viewers", value("--viewers")?)? as usize,
            "--fps" => fps = number("--fps", value("--fps")?)? as u32,
            "--size" => size = Some(value("--size")?),
            "idle-flood" => scenario = Some(Scenario::IdleFlood),
            "churn" => scenario = Some(Scenario::Churn),
            "soak" => scenario = Some(Scenario::Soak),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let scenario = scenario.ok_or("which scenario?")?;
    let (default_secs, default_size) = match scenario {
        Scenario::IdleFlood => (60, "1280x720"),
        Scenario::Churn => (600, "640x480"),
        Scenario::Soak => (3600, "1280x720"),
    };
    Ok(Options {
        scenario,
        secs: secs.unwrap_or(default_secs),
        idle,
        viewers,
        size: size.unwrap_or_else(|| default_size.to_owned()),
        fps,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------
// The server's process

/// What `/proc` says about the server at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_kib: u64,
    /// Peak RSS since the process started (`VmHWM`).
    hwm_kib: u64,
    fds: usize,
    threads: u64,
}

impl Usage {
    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    fn hwm_mib(&self) -> f64 {
        self.hwm_kib as f64 / 1024.0
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB (VmHWM {:.1} MiB), {} fds, {} threads",
            self.rss_mib(),
            self.hwm_mib(),
            self.fds,
            self.threads
        )
    }
}

/// `None` once the process is gone (or a zombie, which has no `VmRSS`).
fn usage(pid: u32) -> Option<Usage> {
    use common::procfs::{fd_count, status_field};
    let pid = pid.to_string();
    let rss_kib = status_field(&pid, "VmRSS:")?;
    Some(Usage {
        rss_kib,
        hwm_kib: status_field(&pid, "VmHWM:").unwrap_or(0),
        fds: fd_count(&pid)?,
        threads: status_field(&pid, "Threads:").unwrap_or(0),
    })
}

/// Samples [`usage`] every `every` until `stop`; cancels `stop` itself if the server dies.
/// Each sample is (seconds since the start, usage); `progress` prints each one as it comes.
async fn sample(
    pid: u32,
    every: Duration,
    stop: CancellationToken,
    mut progress: impl FnMut(f64, &Usage),
) -> (Vec<(f64, Usage)>, bool) {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return (samples, false),
            _ = tick.tick() => {}
        }
        let Some(u) = usage(pid) else {
            stop.cancel();
            return (samples, true);
        };
        let t = start.elapsed().as_secs_f64();
        progress(t, &u);
        samples.push((t, u));
    }
}

/// Cancels `stop` just before `deadline`, so the last sample shows the load, not the clients
/// leaving.
fn stop_sampling_at(deadline: Instant, stop: CancellationToken) {
    tokio::spawn(async move {
        let at = deadline
            .checked_sub(Duration::from_millis(500))
            .unwrap_or(deadline);
        tokio::time::sleep_until(at.into()).await;
        stop.cancel();
    });
}

/// Waits up to `max` for the descriptor count to come down to `target`, at least `min`;
/// returns the last usage seen.
async fn settle(pid: u32, target: usize, min: Duration, max: Duration) -> Option<(Usage, f64)> {
    let start = Instant::now();
    tokio::time::sleep(min).await;
    loop {
        let u = usage(pid)?;
        if u.fds <= target || start.elapsed() >= max {
            return Some((u, start.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Clients. Each returns a `Fail` instead of panicking: the scenarios count failures.

#[derive(Debug)]
enum Fail {
    Connect(std::io::Error),
    Io(std::io::Error),
    Timeout(&'static str),
    Status(u16),
    Closed,
    Protocol(String),
}

impl Fail {
    /// A short label to count failures by.
    fn label(&self) -> String {
        match self {
            Fail::Connect(e) => format!("connect: {:?}", e.kind()),
            Fail::Io(e) => format!("io: {:?}", e.kind()),
            Fail::Timeout(what) => format!("timeout: {what}"),
            Fail::Status(s) => format!("status {s}"),
            Fail::Closed => "closed by the server".into(),
            Fail::Protocol(p) => format!("protocol: {p}"),
        }
    }
}

async fn timed<T>(
    what: &'static str,
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Fail> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Fail::Timeout(what))
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Fail> {
    timed("connect", IO_TIMEOUT, TcpStream::connect(addr))
        .await?
        .map_err(Fail::Connect)
}

/// Sends `GET path HTTP/1.0` (a close-delimited body) and reads the response head; returns
/// the status and whatever body bytes came with the head.
async fn request(addr: SocketAddr, path: &str) -> Result<(TcpStream, u16, BytesMut), Fail> {
    let mut stream = connect(addr).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    timed("send", IO_TIMEOUT, stream.write_all(req.as_bytes()))
        .await?
        .map_err(Fail::Io)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(Fail::Protocol("response head over 16 KiB".into()));
        }
        let n = timed("response head", IO_TIMEOUT, stream.read_buf(&mut buf))
            .await?
            .map_err(Fail::Io)?;
        if n == 0 {
            return Err(Fail::Closed);
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 4);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Fail::Protocol(format!("status line {head:?}")))?;
    Ok((stream, status, buf))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads `/stream` until `deadline` or `max_frames` complete JPEG parts, calling `frame`
/// with the arrival time of each; returns the frame count. Parts are framed by their
/// `Content-Length`, as a client must.
async fn mjpeg(
    addr: SocketAddr,
    deadline: Instant,
    max_frames: u64,
    mut frame: impl FnMut(Instant),
) -> Result<u64, Fail> {
    let (mut stream, status, mut buf) = request(addr, "/stream").await?;
    if status != 200 {
        return Err(Fail::Status(status));
    }
    let mut frames = 0;
    // JPEG bytes still to skip; `None` while reading a part's boundary and headers.
    let mut in_jpeg: Option<usize> = None;
    while frames < max_frames {
        loop {
            match in_jpeg {
                None => {
                    let Some(end) = find(&buf, b"\r\n\r\n") else {
                        if buf.len() > 4096 {
                            return Err(Fail::Protocol("part headers over 4 KiB".into()));
                        }
                        break;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.advance(end + 4);
                    let len = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .ok_or_else(|| Fail::Protocol("part without Content-Length".into()))?;
                    in_jpeg = Some(len);
                }
                Some(remaining) => {
                    let take = remaining.min(buf.len());
                    buf.advance(take);
                    if take < remaining {
                        in_jpeg = Some(remaining - take);
                        break;
                    }
                    in_jpeg = None;
                    frames += 1;
                    frame(Instant::now());
                    if frames >= max_frames {
                        return Ok(frames);
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(frames);
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let limit = IO_TIMEOUT.min(deadline - now);
        match tokio::time::timeout(limit, stream.read_buf(&mut buf)).await {
            Err(_) if Instant::now() >= deadline => return Ok(frames),
            Err(_) => return Err(Fail::Timeout("MJPEG part")),
            Ok(Err(e)) => return Err(Fail::Io(e)),
            Ok(Ok(0)) => return Err(Fail::Closed),
            Ok(Ok(_)) => {}
        }
    }
    Ok(frames)
}

/// One `/snapshot`; returns the JPEG's size.
async fn snapshot(addr: SocketAddr) -> Result<usize, Fail> {
    let (mut stream, status, mut buf) = request(addr, "/snapshot").await?;
    if status != 200 {
        return Err(Fail::Status(status));
    }
    loop {
        let n = timed("snapshot body", IO_TIMEOUT, stream.read_buf(&mut buf))
            .await?
            .map_err(Fail::Io)?;
        if n == 0 {
            break;
        }
        if buf.len() > 64 * 1024 * 1024 {
            return Err(Fail::Protocol("snapshot over 64 MiB".into()));
        }
    }
    if !buf.starts_with(&[0xFF, 0xD8]) || !buf.ends_with(&[0xFF, 0xD9]) {
        return Err(Fail::Protocol("snapshot is not a whole JPEG".into()));
    }
    Ok(buf.len())
}

/// Reads `/ws` until `deadline` or `max_frames` binary frames, calling `frame` for each;
/// ends with a close handshake if `polite`, else by dropping the socket.
async fn websocket(
    addr: SocketAddr,
    deadline: Instant,
    max_frames: u64,
    polite: bool,
    mut frame: impl FnMut(Instant),
) -> Result<u64, Fail> {
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) = timed(
        "ws handshake",
        IO_TIMEOUT,
        tokio_tungstenite::connect_async(url),
    )
    .await?
    .map_err(|e| match e {
        tungstenite::Error::Http(r) => Fail::Status(r.status().as_u16()),
        tungstenite::Error::Io(e) => Fail::Io(e),
        e => Fail::Protocol(e.to_string()),
    })?;
    let mut frames = 0;
    while frames < max_frames {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match tokio::time::timeout(IO_TIMEOUT.min(deadline - now), ws.next()).await {
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => return Err(Fail::Timeout("ws message")),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Err(Fail::Closed),
            Ok(Some(Err(e))) => return Err(Fail::Protocol(e.to_string())),
            Ok(Some(Ok(Message::Binary(_)))) => {
                frames += 1;
                frame(Instant::now());
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    if polite {
        let _ = timed("ws close", Duration::from_secs(2), ws.close(None)).await;
        // Wait for the server's close frame, briefly.
        let _ = timed("ws close", Duration::from_secs(2), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    Ok(frames)
}

/// Failure counts by label.
#[derive(Default)]
struct Failures(Mutex<BTreeMap<String, u64>>);

impl Failures {
    fn add(&self, f: &Fail) {
        *self
            .0
            .lock()
            .expect("not poisoned")
            .entry(f.label())
            .or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.0.lock().expect("not poisoned").values().sum()
    }

    fn describe(&self) -> String {
        let map = self.0.lock().expect("not poisoned");
        if map.is_empty() {
            return "none".into();
        }
        map.iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// Figures

/// [`common::procfs::percentile`], NaN for no values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    common::procfs::percentile(sorted, p)
}

fn sorted(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Frames per 1-s window from `start`, over `secs` whole windows.
fn fps_windows(frames: &[Instant], start: Instant, secs: u64) -> Vec<f64> {
    let mut counts = vec![0u32; secs as usize];
    for &at in frames {
        if let Some(d) = at.checked_duration_since(start) {
            if let Some(c) = counts.get_mut(d.as_secs() as usize) {
                *c += 1;
            }
        }
    }
    counts.into_iter().map(f64::from).collect()
}

/// Least-squares slope of `(seconds, value)` points, per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return f64::NAN;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, v) in points {
        num += (t - mean_t) * (v - mean_v);
        den += (t - mean_t) * (t - mean_t);
    }
    if den == 0.0 {
        f64::NAN
    } else {
        num / den * 3600.0
    }
}

/// "first a, median b, max c, last d" of a series.
fn series_summary(values: &[f64], unit: &str, decimals: usize) -> String {
    let (Some(first), Some(last)) = (values.first(), values.last()) else {
        return "no samples".into();
    };
    let s = sorted(values.iter().copied());
    format!(
        "first {first:.decimals$}, median {:.decimals$}, max {:.decimals$}, last \
         {last:.decimals$} {unit}",
        percentile(&s, 50.0),
        s[s.len() - 1],
    )
}

fn print_series(samples: &[(f64, Usage)], extra: impl Fn(usize) -> String) {
    println!(
        "|   t s | RSS MiB | VmHWM MiB | fds | threads |{}",
        extra(usize::MAX)
    );
    println!("|------:|--------:|----------:|----:|--------:|---:|");
    for (i, (t, u)) in samples.iter().enumerate() {
        println!(
            "| {t:5.0} | {:7.1} | {:9.1} | {:3} | {:7} |{}",
            u.rss_mib(),
            u.hwm_mib(),
            u.fds,
            u.threads,
            extra(i)
        );
    }
}

// ---------------------------------------------------------------------------------------
// idle-flood

/// What the idle connections went through.
#[derive(Default)]
struct IdleStats {
    open: AtomicUsize,
    opened: AtomicU64,
    connect_failures: AtomicU64,
    closed_by_server: AtomicU64,
    /// Connections the server answered (e.g. `408`) before closing.
    answered: AtomicU64,
    /// How long the server kept each connection it closed, seconds.
    held: Mutex<Vec<f64>>,
}

/// Holds one connection that sends nothing, re-opening it whenever the server closes it,
/// until `stop`.
async fn idle_holder(addr: SocketAddr, stats: Arc<IdleStats>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect(addr) => r,
        };
        let Ok(mut stream) = stream else {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        };
        let opened = Instant::now();
        stats.opened.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 512];
        let mut answered = false;
        loop {
            let r = tokio::select! {
                _ = stop.cancelled() => None,
                r = stream.read(&mut buf) => Some(r),
            };
            match r {
                None => {
                    stats.open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(n)) if n > 0 => answered = true,
                Some(_) => break,
            }
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
        stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
        if answered {
            stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .held
            .lock()
            .expect("not poisoned")
            .push(opened.elapsed().as_secs_f64());
    }
}

/// One slowloris attempt's end.
struct SlowEnd {
    held_s: f64,
    bytes_sent: usize,
    how: String,
}

/// Sends a request head a byte a second, never finishing it; starts again when the server
/// cuts it off, until `stop`.
async fn slowloris(addr: SocketAddr, stop: CancellationToken) -> Vec<SlowEnd> {
    let mut ends = Vec::new();
    let prefix = format!("GET /stream HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    while !stop.is_cancelled() {
        let Ok(mut s) = connect(addr).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let t = Instant::now();
        let mut sent = 0usize;
        let how = loop {
            // The header value never ends: after the prefix, `a` forever.
            let byte = prefix.as_bytes().get(sent).copied().unwrap_or(b'a');
            if let Err(e) = s.write_all(&[byte]).await {
                break format!("write failed ({:?})", e.kind());
            }
            sent += 1;
            let mut buf = [0u8; 512];
            let r = tokio::select! {
                _ = stop.cancelled() => break "still open at the end".into(),
                r = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)) => r,
            };
            match r {
                Err(_) => {}
                Ok(Ok(0)) => break "closed (EOF)".into(),
                Ok(Ok(n)) => {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    break format!("answered {:?}", line.lines().next().unwrap_or("").trim());
                }
                Ok(Err(e)) => break format!("reset ({:?})", e.kind()),
            }
        };
        ends.push(SlowEnd {
            held_s: t.elapsed().as_secs_f64(),
            bytes_sent: sent,
            how,
        });
    }
    ends
}

/// One viewer reading `/stream` for `secs`; the arrival time of every frame.
async fn viewer(addr: SocketAddr, secs: u64) -> (Instant, Vec<Instant>, Option<Fail>) {
    let start = Instant::now();
    let mut frames = Vec::with_capacity(secs as usize * 64);
    let r = mjpeg(addr, start + Duration::from_secs(secs), u64::MAX, |at| {
        frames.push(at)
    })
    .await;
    (start, frames, r.err())
}

fn fps_line(label: &str, start: Instant, frames: &[Instant], secs: u64) -> (f64, String) {
    let w = sorted(fps_windows(frames, start, secs));
    let median = percentile(&w, 50.0);
    let line = format!(
        "{label}: {} frames in {secs} s = {:.1} fps on average; per 1-s window median {:.0}, \
         min {:.0}, max {:.0}",
        frames.len(),
        frames.len() as f64 / secs as f64,
        median,
        w.first().copied().unwrap_or(f64::NAN),
        w.last().copied().unwrap_or(f64::NAN),
    );
    (median, line)
}

async fn idle_flood(addr: SocketAddr, pid: u32, opts: &Options) -> Result<(), String> {
    let secs = opts.secs;
    let stop_sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample(
        pid,
        Duration::from_secs(1),
        stop_sampling.clone(),
        |_, _| {},
    ));
    let at_start = usage(pid).ok_or(GONE)?;
    println!("Server at start: {at_start}.");

    println!("Baseline: one MJPEG viewer alone for {secs} s …");
    let (b_start, b_frames, b_err) = viewer(addr, secs).await;
    let (b_median, b_line) = fps_line("baseline", b_start, &b_frames, secs);
    println!("{b_line}");
    if let Some(e) = &b_err {
        println!("  the baseline viewer failed: {}", e.label());
    }
    let before_flood = usage(pid).ok_or(GONE)?;
    println!("Server after the baseline: {before_flood}.");

    // The flood: idle connections and the slowloris client, until the viewer is done.
    let stats = Arc::new(IdleStats::default());
    let stop = CancellationToken::new();
    let holders: Vec<_> = (0..opts.idle)
        .map(|_| tokio::spawn(idle_holder(addr, stats.clone(), stop.clone())))
        .collect();
    let slow = tokio::spawn(slowloris(addr, stop.clone()));
    let ramp = Instant::now();
    while stats.open.load(Ordering::Relaxed) < opts.idle && ramp.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "Flood: {} of {} idle connections open after {:.1} s, plus one slowloris client; \
         viewer for {secs} s …",
        stats.open.load(Ordering::Relaxed),
        opts.idle,
        ramp.elapsed().as_secs_f64()
    );
    // How many idle connections are open, each second while the viewer runs.
    let open_counts = {
        let (stats, stop) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut counts = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(secs + 30);
            while !stop.is_cancelled() && Instant::now() < deadline {
                counts.push(stats.open.load(Ordering::Relaxed) as f64);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            counts
        })
    };
    let (f_start, f_frames, f_err) = viewer(addr, secs).await;
    let (f_median, f_line) = fps_line("under the flood", f_start, &f_frames, secs);
    // Other requests, still during the flood.
    let t = Instant::now();
    let snap = timed("snapshot", OP_TIMEOUT, snapshot(addr)).await;
    let snap_ms = t.elapsed().as_secs_f64() * 1000.0;
    let during = usage(pid);
    stop.cancel();
    for h in holders {
        let _ = h.await;
    }
    let slow_ends = slow.await.unwrap_or_default();
    let open_counts = sorted(open_counts.await.unwrap_or_default());

    // The server sees the idle sockets close at once; give it a few seconds all the same.
    let end = settle(
        pid,
        before_flood.fds,
        Duration::from_secs(3),
        Duration::from_secs(15),
    )
    .await;
    stop_sampling.cancel();
    let (samples, died) = sampler.await.unwrap_or_default();

    println!("{f_line}");
    if let Some(e) = &f_err {
        println!("  the viewer under the flood failed: {}", e.label());
    }
    println!(
        "viewer fps under the flood / baseline (median of 1-s windows): {:.2}",
        f_median / b_median
    );
    println!(
        "idle connections open each second during the viewer's run: min {:.0}, median {:.0}, \
         max {:.0} (of {})",
        open_counts.first().copied().unwrap_or(f64::NAN),
        percentile(&open_counts, 50.0),
        open_counts.last().copied().unwrap_or(f64::NAN),
        opts.idle
    );
    let held = sorted(stats.held.lock().expect("not poisoned").iter().copied());
    println!(
        "idle connections: {} opened, {} closed by the server ({} with a response first), {} \
         failed connects; held by the server for min {:.1} s, median {:.1} s, max {:.1} s",
        stats.opened.load(Ordering::Relaxed),
        stats.closed_by_server.load(Ordering::Relaxed),
        stats.answered.load(Ordering::Relaxed),
        stats.connect_failures.load(Ordering::Relaxed),
        held.first().copied().unwrap_or(f64::NAN),
        percentile(&held, 50.0),
        held.last().copied().unwrap_or(f64::NAN),
    );
    println!("slowloris client: {} attempt(s)", slow_ends.len());
    for (i, e) in slow_ends.iter().enumerate() {
        println!(
            "  #{}: {} after {:.1} s and {} bytes of request head",
            i + 1,
            e.how,
            e.held_s,
            e.bytes_sent
        );
    }
    match snap {
        Ok(Ok(n)) => println!("/snapshot during the flood: 200, {n} bytes in {snap_ms:.0} ms"),
        Ok(Err(e)) => println!("/snapshot during the flood: FAILED ({})", e.label()),
        Err(e) => println!("/snapshot during the flood: FAILED ({})", e.label()),
    }
    // The 1-s samples and the reading at the end of the flood.
    let seen: Vec<Usage> = samples.iter().map(|s| s.1).chain(during).collect();
    let peak_rss = seen.iter().map(|u| u.rss_kib).max().unwrap_or(0);
    let peak_fds = seen.iter().map(|u| u.fds).max().unwrap_or(0);
    let peak_hwm = seen.iter().map(|u| u.hwm_kib).max().unwrap_or(0);
    println!();
    println!("| server | RSS MiB | VmHWM MiB | fds | threads |");
    println!("|---|---:|---:|---:|---:|");
    let row = |label: &str, u: &Usage| {
        println!(
            "| {label} | {:.1} | {:.1} | {} | {} |",
            u.rss_mib(),
            u.hwm_mib(),
            u.fds,
            u.threads
        )
    };
    row("start", &at_start);
    row("after the baseline", &before_flood);
    if let Some(u) = &during {
        row("end of the flood", u);
    }
    println!(
        "| peak | {:.1} | {:.1} | {peak_fds} | |",
        peak_rss as f64 / 1024.0,
        peak_hwm as f64 / 1024.0
    );
    if let Some((u, waited)) = &end {
        row(&format!("{waited:.0} s after the flood"), u);
    }

    if died || end.is_none() {
        return Err("the server died during the flood".into());
    }
    if f_frames.is_empty() || b_frames.is_empty() {
        return Err("a viewer received no frames".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// churn

#[derive(Clone, Copy)]
enum Kind {
    Mjpeg,
    Snapshot,
    Ws,
}

#[derive(Default)]
struct KindStats {
    ok: AtomicU64,
    frames: AtomicU64,
    failures: Failures,
}

#[derive(Default)]
struct ChurnStats {
    mjpeg: KindStats,
    snapshot: KindStats,
    ws: KindStats,
}

impl ChurnStats {
    fn of(&self, kind: Kind) -> &KindStats {
        match kind {
            Kind::Mjpeg => &self.mjpeg,
            Kind::Snapshot => &self.snapshot,
            Kind::Ws => &self.ws,
        }
    }

    fn connections(&self) -> u64 {
        [&self.mjpeg, &self.snapshot, &self.ws]
            .iter()
            .map(|k| k.ok.load(Ordering::Relaxed) + k.failures.total())
            .sum()
    }
}

/// One churning client: connect, read a little, go, again, until `deadline`. The mix and
/// the timings vary with `id` and the iteration, deterministically.
async fn churner(addr: SocketAddr, id: usize, deadline: Instant, stats: Arc<ChurnStats>) {
    let mut i = 0usize;
    while Instant::now() < deadline {
        let kind = [Kind::Mjpeg, Kind::Snapshot, Kind::Ws][(id + i) % 3];
        // 0 frames: the response head (or handshake) only, then gone.
        let frames = ((id * 7 + i * 13) % 31) as u64;
        let op_deadline = deadline.min(Instant::now() + OP_TIMEOUT);
        let r = match kind {
            Kind::Mjpeg => mjpeg(addr, op_deadline, frames, |_| {}).await,
            Kind::Snapshot => snapshot(addr).await.map(|_| 1),
            Kind::Ws => websocket(addr, op_deadline, frames, i % 2 == 0, |_| {}).await,
        };
        let s = stats.of(kind);
        match r {
            Ok(n) => {
                s.ok.fetch_add(1, Ordering::Relaxed);
                s.frames.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => s.failures.add(&e),
        }
        i += 1;
        // 50–500 ms between connections: about 150 connections a second from 200 clients.
        let pause = Duration::from_millis(50 + ((id * 31 + i * 17) % 450) as u64);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

async fn churn(addr: SocketAddr, pid: u32, opts: &Options) -> Result<(), String> {
    let at_start = usage(pid).ok_or(GONE)?;
    println!("Server at start: {at_start}.");
    // One of each kind first, so whatever is created once (capture, encoder, …) exists
    // before the baseline.
    let far = Instant::now() + OP_TIMEOUT;
    let warm = [
        mjpeg(addr, far, 5, |_| {}).await.err(),
        snapshot(addr).await.err(),
        websocket(addr, far, 5, true, |_| {}).await.err(),
    ];
    for e in warm.iter().flatten() {
        println!("warm-up request failed: {}", e.label());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = usage(pid).ok_or(GONE)?;
    println!("Baseline after a warm-up of each kind and 3 s: {baseline}.");
    println!(
        "Churn: {} clients for {} s (MJPEG, snapshot, WebSocket in turn; 0–30 frames each; \
         50–500 ms between connections); samples every 10 s:",
        opts.viewers, opts.secs
    );

    let stats = Arc::new(ChurnStats::default());
    let deadline = Instant::now() + Duration::from_secs(opts.secs);
    let clients: Vec<_> = (0..opts.viewers)
        .map(|id| tokio::spawn(churner(addr, id, deadline, stats.clone())))
        .collect();
    let stop = CancellationToken::new();
    stop_sampling_at(deadline, stop.clone());
    let connections_at = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stats, connections_at) = (stats.clone(), connections_at.clone());
        tokio::spawn(sample(
            pid,
            Duration::from_secs(10),
            stop.clone(),
            move |t, u| {
                let c = stats.connections();
                connections_at.lock().expect("not poisoned").push(c);
                println!("  t={t:4.0} s  {u}; {c} connections so far");
            },
        ))
    };
    // Everything ends by the deadline plus one operation's timeout; wait a little more.
    let all_done = deadline + OP_TIMEOUT + Duration::from_secs(10);
    for c in clients {
        let left = all_done.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, c).await.is_err() {
            println!("a client was still running after its deadline");
        }
    }
    stop.cancel();
    let (samples, died) = sampler.await.unwrap_or_default();
    let ended = Instant::now();
    let end = settle(
        pid,
        baseline.fds,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .await;

    println!();
    let connections = connections_at.lock().expect("not poisoned").clone();
    print_series(&samples, |i| match i {
        usize::MAX => " connections |".into(),
        i => format!(" {} |", connections.get(i).copied().unwrap_or(0)),
    });
    println!();
    let rss: Vec<f64> = samples.iter().map(|s| s.1.rss_mib()).collect();
    let fds: Vec<f64> = samples.iter().map(|s| s.1.fds as f64).collect();
    println!("RSS: {}", series_summary(&rss, "MiB", 1));
    println!("fds: {}", series_summary(&fds, "", 0));
    println!(
        "connections made: {} in {} s",
        stats.connections(),
        opts.secs
    );
    for (name, k) in [
        ("MJPEG", &stats.mjpeg),
        ("snapshot", &stats.snapshot),
        ("WebSocket", &stats.ws),
    ] {
        println!(
            "  {name}: {} ok ({} frames), failures: {}",
            k.ok.load(Ordering::Relaxed),
            k.frames.load(Ordering::Relaxed),
            k.failures.describe()
        );
    }
    let Some((end, waited)) = end else {
        return Err("the server died after the churn".into());
    };
    println!(
        "fds before the churn: {} (at start {}); {:.0} s after the last client: {} \
         (RSS {:.1} MiB, VmHWM {:.1} MiB, {} threads)",
        baseline.fds,
        at_start.fds,
        (Instant::now() - ended).as_secs_f64().max(waited),
        end.fds,
        end.rss_mib(),
        end.hwm_mib(),
        end.threads
    );
    if died {
        return Err("the server died during the churn".into());
    }
    if end.fds > baseline.fds + FD_LEAK_MARGIN {
        return Err(format!(
            "descriptor leak: {} fds after the churn, {} before",
            end.fds, baseline.fds
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// soak

const SOAK_MJPEG: usize = 10;
const SOAK_WS: usize = 5;
const SOAK_SAMPLE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct SoakStats {
    frames: AtomicU64,
    /// Viewer connections beyond the first of each viewer.
    reconnects: AtomicU64,
    failures: Failures,
    snapshots: AtomicU64,
    snapshot_failures: Failures,
    /// Slowest snapshot, µs.
    snapshot_max_us: AtomicU64,
}

/// A long-lived viewer; reconnects (after a second) if its stream ends early.
async fn soak_viewer(addr: SocketAddr, ws: bool, deadline: Instant, stats: Arc<SoakStats>) {
    let mut first = true;
    while Instant::now() < deadline {
        if !first {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let count = |_: Instant| {
            stats.frames.fetch_add(1, Ordering::Relaxed);
        };
        let r = if ws {
            websocket(addr, deadline, u64::MAX, true, count).await
        } else {
            mjpeg(addr, deadline, u64::MAX, count).await
        };
        if let Err(e) = r {
            stats.failures.add(&e);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn soak_snapshots(addr: SocketAddr, deadline: Instant, stats: Arc<SoakStats>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        tick.tick().await;
        let t = Instant::now();
        match timed("snapshot", OP_TIMEOUT, snapshot(addr)).await {
            Ok(Ok(_)) => {
                stats.snapshots.fetch_add(1, Ordering::Relaxed);
                stats
                    .snapshot_max_us
                    .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) | Err(e) => stats.snapshot_failures.add(&e),
        }
    }
}

async fn soak(addr: SocketAddr, pid: u32, opts: &Options) -> Result<(), String> {
    let at_start = usage(pid).ok_or(GONE)?;
    println!("Server at start: {at_start}.");
    println!(
        "Soak: {SOAK_MJPEG} MJPEG viewers, {SOAK_WS} WebSocket viewers and a snapshot a \
         second for {} s; samples every {} s:",
        opts.secs,
        SOAK_SAMPLE.as_secs()
    );
    let stats = Arc::new(SoakStats::default());
    let deadline = Instant::now() + Duration::from_secs(opts.secs);
    let mut tasks: Vec<_> = (0..SOAK_MJPEG + SOAK_WS)
        .map(|i| tokio::spawn(soak_viewer(addr, i >= SOAK_MJPEG, deadline, stats.clone())))
        .collect();
    tasks.push(tokio::spawn(soak_snapshots(addr, deadline, stats.clone())));

    let stop = CancellationToken::new();
    stop_sampling_at(deadline, stop.clone());
    let per_viewer_fps = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stats, per_viewer_fps) = (stats.clone(), per_viewer_fps.clone());
        let mut last = (Instant::now(), 0u64);
        tokio::spawn(sample(pid, SOAK_SAMPLE, stop.clone(), move |t, u| {
            let frames = stats.frames.load(Ordering::Relaxed);
            let secs = last.0.elapsed().as_secs_f64();
            let fps = if secs > 0.5 {
                (frames - last.1) as f64 / secs / (SOAK_MJPEG + SOAK_WS) as f64
            } else {
                f64::NAN
            };
            last = (Instant::now(), frames);
            per_viewer_fps.lock().expect("not poisoned").push(fps);
            println!(
                "  t={t:5.0} s  {u}; {fps:.1} fps per viewer; {} snapshots",
                stats.snapshots.load(Ordering::Relaxed)
            );
        }))
    };
    let all_done = deadline + OP_TIMEOUT + Duration::from_secs(10);
    for t in tasks {
        let left = all_done.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            println!("a client was still running after its deadline");
        }
    }
    stop.cancel();
    let (samples, died) = sampler.await.unwrap_or_default();
    let end = settle(
        pid,
        at_start.fds,
        Duration::from_secs(3),
        Duration::from_secs(15),
    )
    .await;

    println!();
    let fps = per_viewer_fps.lock().expect("not poisoned").clone();
    print_series(&samples, |i| match i {
        usize::MAX => " fps/viewer |".into(),
        i => format!(" {:.1} |", fps.get(i).copied().unwrap_or(f64::NAN)),
    });
    println!();
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.1.rss_mib())).collect();
    let fds: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.1.fds as f64)).collect();
    let summary = |points: &[(f64, f64)], unit: &str, decimals: usize| {
        let values: Vec<f64> = points.iter().map(|p| p.1).collect();
        // The first sample is taken while the viewers connect: leave it out of the slope.
        let steady = points.get(1..).unwrap_or_default();
        format!(
            "{}; slope {:+.decimals$} {unit}/h over the {} samples after the first",
            series_summary(&values, unit, decimals),
            slope_per_hour(steady),
            steady.len()
        )
    };
    println!("RSS: {}", summary(&rss, "MiB", 2));
    println!("fds: {}", summary(&fds, "fds", 1));
    if let Some(u) = samples.last() {
        println!("VmHWM at the last sample: {:.1} MiB", u.1.hwm_mib());
    }
    println!(
        "frames: {} in all; viewer reconnects: {}; viewer failures: {}",
        stats.frames.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed),
        stats.failures.describe()
    );
    println!(
        "snapshots: {} ok (slowest {:.0} ms), failures: {}",
        stats.snapshots.load(Ordering::Relaxed),
        stats.snapshot_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        stats.snapshot_failures.describe()
    );
    match &end {
        Some((u, waited)) => println!(
            "fds at start {}, {waited:.0} s after the last client {} (RSS {:.1} MiB)",
            at_start.fds,
            u.fds,
            u.rss_mib()
        ),
        None => return Err("the server died after the soak".into()),
    }
    if died {
        return Err("the server died during the soak".into());
    }
    if stats.frames.load(Ordering::Relaxed) == 0 {
        return Err("no viewer received a frame".into());
    }
    Ok(())
}
