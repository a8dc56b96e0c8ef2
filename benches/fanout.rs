//! Fan-out load generator: starts the real `picamd` binary and opens N concurrent MJPEG
//! clients against it, then reports per-client frame rates, capture-to-receive latency and
//! the server's CPU and memory.
//!
//! Run with `cargo bench --bench fanout`. Client counts come from the first positional
//! argument or `PICAMD_FANOUT_N` (comma separated, default `10,100,500`); the measurement
//! window from `PICAMD_FANOUT_SECS` (default 10) after a 2 s warm-up. Each N is preceded by a
//! one-client baseline on the same server. Prints figures only; nothing is asserted about speed.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};

// The same way the integration tests start and stop the real binary.
#[path = "../tests/common/mod.rs"]
mod common;
use common::procfs::{cpu_ticks, percentile};
use common::Picamd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const SIZE: &str = "1280x720";
const FPS: u32 = 30;
const WARMUP: Duration = Duration::from_secs(2);
/// How long all clients may take to connect and receive their response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_BUF: usize = 128 * 1024;
const BOUNDARY_LINE: &[u8] = b"--picamdframe\r\n";
const PART_END: &[u8] = b"\r\n--picamdframe\r\n";

fn main() {
    let counts = client_counts();
    let window = std::env::var("PICAMD_FANOUT_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(10));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fd_limit = common::raise_fd_limit();
    let ticks = clock_ticks();

    let mut server = Picamd::start(&[
        "--size",
        SIZE,
        "--fps",
        &FPS.to_string(),
        "--max-viewers",
        "2000",
        // Every client comes from 127.0.0.1: lift the per-client and overall limits.
        "--max-viewers-total",
        "2000",
        "--max-viewers-per-client",
        "2000",
        "--max-requests-per-second",
        "0",
    ]);
    println!("# picamd fan-out benchmark");
    println!();
    println!(
        "picamd (pid {}) on {}: test pattern {SIZE} @ {FPS} fps, default quality and workers.",
        server.pid(),
        server.addr
    );
    println!(
        "Clients: `GET /stream HTTP/1.0` (close-delimited multipart body), {:.0} s warm-up, \
         {:.1} s measured; each N preceded by a 1-client baseline.",
        WARMUP.as_secs_f64(),
        window.as_secs_f64()
    );
    println!(
        "Machine: {cores} core(s), shared by the server and the load generator \
         ({cores} tokio worker threads). Open-file limit: {fd_limit}. Clock ticks/s: {ticks}."
    );
    println!("CPU % is of one core (100 % = one core fully busy).");
    println!();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    for &n in &counts {
        let baseline = runtime.block_on(measure(&server, 1, window, ticks));
        baseline.print_progress();
        let row = runtime.block_on(measure(&server, n, window, ticks));
        row.print_progress();
        rows.push((baseline, row));
    }
    drop(runtime);

    println!();
    println!(
        "| clients | median fps | min fps | fps vs 1 | p50 ms | p90 ms | p99 ms | max ms | p50 vs 1 \
         | frames | server CPU % | server RSS MiB | loadgen CPU % | Mbit/s | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (baseline, row) in &rows {
        baseline.print_row(None);
        row.print_row(Some(baseline));
    }

    println!();
    if !server.stop_and_report() {
        std::process::exit(1);
    }
}

fn client_counts() -> Vec<usize> {
    let arg = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--") && !a.is_empty());
    let spec = arg
        .or_else(|| std::env::var("PICAMD_FANOUT_N").ok())
        .unwrap_or_else(|| "10,100,500".into());
    let counts: Vec<usize> = spec
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("client count {s:?} is not a number"))
        })
        .filter(|&n| n > 0)
        .collect();
    assert!(!counts.is_empty(), "no client counts in {spec:?}");
    counts
}

/// `sysconf(_SC_CLK_TCK)` through `getconf`, or the usual 100.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

// ---------------------------------------------------------------------------------------
// One measurement

struct Row {
    clients: usize,
    median_fps: f64,
    min_fps: f64,
    /// Latency percentiles over every frame in the window, ms: p50, p90, p99, max.
    latency_ms: [f64; 4],
    frames: usize,
    server_cpu: f64,
    server_rss_mib: f64,
    loadgen_cpu: f64,
    mbit_s: f64,
    errors: usize,
    first_error: Option<String>,
}

impl Row {
    fn print_progress(&self) {
        println!(
            "N={:<4} median {:.1} fps, min {:.1} fps, p50 {:.1} ms, p99 {:.1} ms, \
             server CPU {:.0} %, RSS {:.1} MiB, loadgen CPU {:.0} %{}",
            self.clients,
            self.median_fps,
            self.min_fps,
            self.latency_ms[0],
            self.latency_ms[2],
            self.server_cpu,
            self.server_rss_mib,
            self.loadgen_cpu,
            match &self.first_error {
                Some(e) => format!(", {} client error(s), first: {e}", self.errors),
                None => String::new(),
            }
        );
    }

    fn print_row(&self, baseline: Option<&Row>) {
        let (fps_ratio, p50_ratio) = match baseline {
            Some(b) => (
                format!("{:.2}", self.median_fps / b.median_fps),
                format!("{:.2}", self.latency_ms[0] / b.latency_ms[0]),
            ),
            None => ("(baseline)".into(), "(baseline)".into()),
        };
        let [p50, p90, p99, max] = self.latency_ms;
        println!(
            "| {} | {:.1} | {:.1} | {fps_ratio} | {p50:.1} | {p90:.1} | {p99:.1} | {max:.1} \
             | {p50_ratio} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {} |",
            self.clients,
            self.median_fps,
            self.min_fps,
            self.frames,
            self.server_cpu,
            self.server_rss_mib,
            self.loadgen_cpu,
            self.mbit_s,
            self.errors
        );
    }
}

/// What one client saw: the receive instant and latency (µs) of every complete frame.
#[derive(Default)]
struct ClientLog {
    frames: Vec<(Instant, i64)>,
    bytes_in_window: u64,
    error: Option<String>,
}

async fn measure(server: &Picamd, n: usize, window: Duration, ticks: f64) -> Row {
    let ready = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (window_tx, window_rx) = watch::channel(None::<(Instant, Instant)>);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (ready, stop, win) = (ready.clone(), stop_rx.clone(), window_rx.clone());
            tokio::spawn(client(server.addr, ready, stop, win))
        })
        .collect();

    // Everyone connected (or failed), then warm up, then measure.
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while ready.load(Ordering::Relaxed) < n
        && !tasks.iter().any(|t| t.is_finished())
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(WARMUP).await;

    let pid = server.pid().to_string();
    let (server0, self0) = (cpu_ticks(&pid), cpu_ticks("self"));
    let start = Instant::now();
    let _ = window_tx.send(Some((start, start + window)));
    tokio::time::sleep(window).await;
    let end = Instant::now();
    let (server1, self1) = (cpu_ticks(&pid), cpu_ticks("self"));
    let rss = server.rss_kib();
    let _ = stop_tx.send(true);

    let mut logs = Vec::with_capacity(n);
    for t in tasks {
        logs.push(t.await.unwrap_or_else(|e| ClientLog {
            error: Some(format!("task panicked: {e}")),
            ..ClientLog::default()
        }));
    }
    let secs = (end - start).as_secs_f64();
    let cpu = |t0: u64, t1: u64| (t1.saturating_sub(t0)) as f64 / ticks / secs * 100.0;

    let mut fps = Vec::with_capacity(n);
    let mut latencies = Vec::new();
    let mut bytes = 0u64;
    for log in &logs {
        let mut count = 0usize;
        for &(at, lat) in &log.frames {
            if at >= start && at <= end {
                count += 1;
                latencies.push(lat);
            }
        }
        fps.push(count as f64 / secs);
        bytes += log.bytes_in_window;
    }
    fps.sort_by(f64::total_cmp);
    latencies.sort_unstable();
    let ms = |p: f64| {
        if latencies.is_empty() {
            f64::NAN
        } else {
            percentile(&latencies, p) as f64 / 1000.0
        }
    };
    let errors: Vec<&String> = logs.iter().filter_map(|l| l.error.as_ref()).collect();
    Row {
        clients: n,
        median_fps: percentile(&fps, 50.0),
        min_fps: fps[0],
        latency_ms: [ms(50.0), ms(90.0), ms(99.0), ms(100.0)],
        frames: latencies.len(),
        server_cpu: cpu(server0, server1),
        server_rss_mib: rss as f64 / 1024.0,
        loadgen_cpu: cpu(self0, self1),
        mbit_s: bytes as f64 * 8.0 / secs / 1e6,
        errors: errors.len(),
        first_error: errors.first().map(|e| e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// One MJPEG client

/// Where the parser is in the response.
enum State {
    /// HTTP status line and headers.
    Response,
    /// The boundary line that opens the first part.
    Opening,
    /// A part's headers.
    PartHeaders,
    /// JPEG bytes still to skip, and the part's capture time (µs since the epoch).
    Jpeg { remaining: usize, captured_us: i64 },
    /// The CRLF and boundary line that must follow the JPEG at once.
    PartEnd,
}

async fn client(
    addr: SocketAddr,
    ready: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
    window: watch::Receiver<Option<(Instant, Instant)>>,
) -> ClientLog {
    let mut log = ClientLog {
        frames: Vec::with_capacity(1024),
        ..ClientLog::default()
    };
    if let Err(e) = run_client(addr, &ready, &mut stop, &window, &mut log).await {
        log.error = Some(e);
    }
    log
}

async fn run_client(
    addr: SocketAddr,
    ready: &AtomicUsize,
    stop: &mut watch::Receiver<bool>,
    window: &watch::Receiver<Option<(Instant, Instant)>>,
    log: &mut ClientLog,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let req = format!("GET /stream HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;

    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut state = State::Response;
    loop {
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            buf.reserve(READ_BUF);
        }
        let n = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            r = stream.read_buf(&mut buf) => r.map_err(|e| format!("read: {e}"))?,
        };
        if n == 0 {
            return Err("server closed the stream".into());
        }
        let recv_us = now_us();
        let recv_at = Instant::now();
        if let Some((start, end)) = *window.borrow() {
            if recv_at >= start && recv_at <= end {
                log.bytes_in_window += n as u64;
            }
        }
        // Consume everything parseable in the buffer.
        loop {
            match &mut state {
                State::Response => {
                    let Some(end) = find(&buf, b"\r\n\r\n") else {
                        break;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.advance(end + 4);
                    check_response(&head)?;
                    ready.fetch_add(1, Ordering::Relaxed);
                    state = State::Opening;
                }
                State::Opening => {
                    if buf.len() < BOUNDARY_LINE.len() {
                        break;
                    }
                    if &buf[..BOUNDARY_LINE.len()] != BOUNDARY_LINE {
                        return Err("body does not open with --picamdframe".into());
                    }
                    buf.advance(BOUNDARY_LINE.len());
                    state = State::PartHeaders;
                }
                State::PartHeaders => {
                    let Some(end) = find(&buf, b"\r\n\r\n") else {
                        if buf.len() > 4096 {
                            return Err("part headers longer than 4 KiB".into());
                        }
                        break;
                    };
                    let (len, captured_us) = part_headers(&buf[..end])?;
                    buf.advance(end + 4);
                    state = State::Jpeg {
                        remaining: len,
                        captured_us,
                    };
                }
                State::Jpeg {
                    remaining,
                    captured_us,
                } => {
                    let take = (*remaining).min(buf.len());
                    buf.advance(take);
                    *remaining -= take;
                    if *remaining > 0 {
                        break;
                    }
                    log.frames.push((recv_at, recv_us - *captured_us));
                    state = State::PartEnd;
                }
                State::PartEnd => {
                    if buf.len() < PART_END.len() {
                        break;
                    }
                    if &buf[..PART_END.len()] != PART_END {
                        return Err("JPEG not followed by CRLF --picamdframe".into());
                    }
                    buf.advance(PART_END.len());
                    state = State::PartHeaders;
                }
            }
        }
        if buf.is_empty() {
            // Lets the next reserve reuse the whole allocation.
            buf.clear();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks the status and framing of the stream response.
fn check_response(head: &str) -> Result<(), String> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status {status:?}"));
    }
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-type") && !v.contains("boundary=picamdframe") {
            return Err(format!("unexpected content-type {v:?}"));
        }
        if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "expected a close-delimited body, got transfer-encoding {v:?}"
            ));
        }
    }
    Ok(())
}

/// Content-Length and X-Timestamp (as µs since the epoch) of one part.
fn part_headers(head: &[u8]) -> Result<(usize, i64), String> {
    let head = std::str::from_utf8(head).map_err(|_| "part headers are not UTF-8".to_string())?;
    let (mut len, mut ts) = (None, None);
    for line in head.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("x-timestamp") {
            ts = v.split_once('.').and_then(|(s, us)| {
                Some(s.parse::<i64>().ok()? * 1_000_000 + us.parse::<i64>().ok()?)
            });
        }
    }
    match (len, ts) {
        (Some(l), Some(t)) => Ok((l, t)),
        _ => Err(format!(
            "part headers lack Content-Length or X-Timestamp: {head:?}"
        )),
    }
}
