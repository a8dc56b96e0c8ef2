//! Fan-out load generator: starts the real `picamd` binary and opens N concurrent MJPEG
//! clients against it — and, with `--rtsp`, N RTSP clients too, in phases of their own on
//! the same server — then reports per-client frame rates, capture-to-receive latency, bytes
//! per client and the server's CPU and memory.
//!
//! Run with `cargo bench --bench fanout`, or `cargo bench --bench fanout -- 100 --rtsp` for
//! MJPEG and RTSP side by side. Client counts come from the first positional argument or
//! `PICAMD_FANOUT_N` (comma separated, default `10,100,500`); `--rtsp` or
//! `PICAMD_FANOUT_RTSP=1` adds the RTSP phases; the measurement window comes from
//! `PICAMD_FANOUT_SECS` (default 10) after a 2 s warm-up. Each N of each protocol is
//! preceded by a one-client baseline on the same server. Prints figures only; nothing is
//! asserted about speed.
//!
//! RTSP lives here rather than in a bench of its own so both protocols go through one
//! `measure` — the same warm-up, window, CPU and RSS sampling and table — and their rows
//! compare by construction.
//!
//! The RTSP client is minimal on purpose (like the MJPEG one, it sees the bytes on the
//! wire): SETUP `…/trackID=0` with `Transport: RTP/AVP/TCP;unicast;interleaved=0-1`, PLAY
//! with the session, then `$`-framed packets, one picture counted per RTP marker bit. Its
//! latency is capture to receive like MJPEG's: the RTCP sender reports pair an RTP
//! timestamp with the capture wall clock, so a picture's capture time is the report's plus
//! the timestamp difference (the pictures before the first report have none). Each RTSP
//! client connects from an address of its own (127.1.0.1, 127.1.0.2, …: all loopback), as
//! viewers on different hosts would: picamd admits at most
//! `max_viewers_per_client` + [`picamd::rtsp::EXTRA_CONNECTIONS_PER_CLIENT`] RTSP connections
//! from one address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

const SIZE: &str = "1280x720";
const FPS: u32 = 30;
const WARMUP: Duration = Duration::from_secs(2);
/// How long all clients may take to connect and receive their response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_BUF: usize = 128 * 1024;
/// Between phases: the source idles 1 s after its last viewer, and the H.264 encoder stops
/// with its last consumer, so the next phase starts from the same state.
const PHASE_GAP: Duration = Duration::from_secs(2);
/// The first RTSP client's source address; client `i` uses this plus `i`.
const RTSP_FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
/// H.264's RTP clock (RFC 6184).
const RTP_CLOCK: i64 = 90_000;
/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
const BOUNDARY_LINE: &[u8] = b"--picamdframe\r\n";
const PART_END: &[u8] = b"\r\n--picamdframe\r\n";

fn main() {
    let counts = client_counts();
    let rtsp = std::env::args().any(|a| a == "--rtsp")
        || std::env::var("PICAMD_FANOUT_RTSP").is_ok_and(|v| !v.is_empty() && v != "0");
    let protos: &[Proto] = if rtsp {
        &[Proto::Mjpeg, Proto::Rtsp]
    } else {
        &[Proto::Mjpeg]
    };
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
        // A port of its own: another picamd may hold 8554.
        "--rtsp-listen",
        "127.0.0.1:0",
    ]);
    let rtsp_addr: SocketAddr = {
        let line = server.stdout_line("rtsp on ").expect("an `rtsp on` line");
        line["rtsp on ".len()..]
            .trim()
            .parse()
            .expect("an RTSP address")
    };
    let targets = Targets {
        http: server.addr,
        rtsp: rtsp_addr,
    };
    println!("# picamd fan-out benchmark");
    println!();
    println!(
        "picamd (pid {}) on {}: test pattern {SIZE} @ {FPS} fps, default quality and workers.",
        server.pid(),
        server.addr
    );
    println!(
        "MJPEG clients: `GET /stream HTTP/1.0` (close-delimited multipart body), all from \
         127.0.0.1."
    );
    if rtsp {
        println!(
            "RTSP clients (rtsp on {rtsp_addr}): SETUP trackID=0, RTP/AVP/TCP interleaved, \
             PLAY; pictures counted by the RTP marker bit; each from its own loopback address \
             from {RTSP_FIRST_CLIENT} on. picamd serves as many RTSP connections as its \
             viewer limits allow ({:?} at the defaults): clients beyond that get 503.",
            picamd::rtsp::ConnectionLimits::default()
        );
    }
    println!(
        "{:.0} s warm-up, {:.1} s measured; each N of each protocol preceded by a 1-client \
         baseline; {:.0} s pause between phases.",
        WARMUP.as_secs_f64(),
        window.as_secs_f64(),
        PHASE_GAP.as_secs_f64()
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
        for &proto in protos {
            let phase = |clients| {
                let row = runtime.block_on(async {
                    let row = measure(&server, targets, proto, clients, window, ticks).await;
                    tokio::time::sleep(PHASE_GAP).await;
                    row
                });
                row.print_progress();
                row
            };
            let baseline = phase(1);
            let row = phase(n);
            rows.push((baseline, row));
        }
    }
    drop(runtime);

    println!();
    println!(
        "\"playing\": clients that received a picture in the window; fps over all clients \
         (refused ones count 0); kB/s per client: bytes received per playing client per \
         second; \"vs 1\": against the 1-client baseline of the same protocol just before. \
         Latency: capture to receive, every picture in the window (RTSP: from its sender \
         reports)."
    );
    println!();
    println!(
        "| proto | clients | playing | median fps | p10 fps | min fps | fps vs 1 | p50 ms \
         | p90 ms | p99 ms | max ms | pictures | server CPU % | CPU vs 1 | server RSS MiB \
         | loadgen CPU % | kB/s per client | Mbit/s | errors |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:\
         |---:|---:|"
    );
    for (baseline, row) in &rows {
        baseline.print_row(None);
        row.print_row(Some(baseline));
    }
    if rtsp {
        println!();
        println!("RTSP against MJPEG at the same N (same server, same run):");
        println!();
        println!(
            "| clients | RTSP/MJPEG server CPU | RTSP/MJPEG bytes per client | RTSP/MJPEG \
             median fps | RTSP playing |"
        );
        println!("|---:|---:|---:|---:|---:|");
        for pair in rows.chunks(2) {
            let [(mb, m), (rb, r)] = pair else { continue };
            for (m, r) in [(mb, rb), (m, r)] {
                println!(
                    "| {} | {:.2} | {:.3} | {:.2} | {}/{} |",
                    m.clients,
                    r.server_cpu / m.server_cpu,
                    r.kbytes_per_client / m.kbytes_per_client,
                    r.median_fps / m.median_fps,
                    r.playing,
                    r.clients
                );
            }
        }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Mjpeg,
    Rtsp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Mjpeg => "MJPEG",
            Proto::Rtsp => "RTSP",
        }
    }
}

/// Where the clients connect.
#[derive(Clone, Copy)]
struct Targets {
    http: SocketAddr,
    rtsp: SocketAddr,
}

struct Row {
    proto: Proto,
    clients: usize,
    /// Clients that received at least one picture in the window.
    playing: usize,
    median_fps: f64,
    p10_fps: f64,
    min_fps: f64,
    /// Latency percentiles over every frame in the window, ms: p50, p90, p99, max.
    latency_ms: [f64; 4],
    frames: usize,
    server_cpu: f64,
    server_rss_mib: f64,
    loadgen_cpu: f64,
    mbit_s: f64,
    /// Bytes received per playing client per second, in kB (1000 bytes).
    kbytes_per_client: f64,
    errors: usize,
    first_error: Option<String>,
}

impl Row {
    fn print_progress(&self) {
        println!(
            "{:<5} N={:<4} playing {}, median {:.1} fps, p10 {:.1}, min {:.1} fps, p50 {:.1} ms, \
             p99 {:.1} ms, server CPU {:.0} %, RSS {:.1} MiB, loadgen CPU {:.0} %, \
             {:.0} kB/s per client{}",
            self.proto.name(),
            self.clients,
            self.playing,
            self.median_fps,
            self.p10_fps,
            self.min_fps,
            self.latency_ms[0],
            self.latency_ms[2],
            self.server_cpu,
            self.server_rss_mib,
            self.loadgen_cpu,
            self.kbytes_per_client,
            match &self.first_error {
                Some(e) => format!(", {} client error(s), first: {e}", self.errors),
                None => String::new(),
            }
        );
    }

    fn print_row(&self, baseline: Option<&Row>) {
        let (fps_ratio, cpu_ratio) = match baseline {
            Some(b) => (
                format!("{:.2}", self.median_fps / b.median_fps),
                format!("{:.1}", self.server_cpu / b.server_cpu),
            ),
            None => ("(baseline)".into(), "(baseline)".into()),
        };
        let [p50, p90, p99, max] = self.latency_ms;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {fps_ratio} | {p50:.1} | {p90:.1} \
             | {p99:.1} | {max:.1} | {} | {:.0} | {cpu_ratio} | {:.1} | {:.0} | {:.0} | {:.1} \
             | {} |",
            self.proto.name(),
            self.clients,
            self.playing,
            self.median_fps,
            self.p10_fps,
            self.min_fps,
            self.frames,
            self.server_cpu,
            self.server_rss_mib,
            self.loadgen_cpu,
            self.kbytes_per_client,
            self.mbit_s,
            self.errors
        );
    }
}

/// What one client saw: the receive instant and latency (µs) of every complete picture
/// (RTSP's before the first sender report have no latency).
#[derive(Default)]
struct ClientLog {
    frames: Vec<(Instant, Option<i64>)>,
    bytes_in_window: u64,
    error: Option<String>,
}

async fn measure(
    server: &Picamd,
    targets: Targets,
    proto: Proto,
    n: usize,
    window: Duration,
    ticks: f64,
) -> Row {
    let ready = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (window_tx, window_rx) = watch::channel(None::<(Instant, Instant)>);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (ready, stop, win) = (ready.clone(), stop_rx.clone(), window_rx.clone());
            tokio::spawn(client(targets, proto, i, ready, stop, win))
        })
        .collect();

    // Everyone playing or failed, then warm up, then measure.
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while ready.load(Ordering::Relaxed) + tasks.iter().filter(|t| t.is_finished()).count() < n
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
    let (mut bytes, mut frames, mut playing) = (0u64, 0usize, 0usize);
    for log in &logs {
        let mut count = 0usize;
        for &(at, lat) in &log.frames {
            if at >= start && at <= end {
                count += 1;
                latencies.extend(lat);
            }
        }
        fps.push(count as f64 / secs);
        bytes += log.bytes_in_window;
        frames += count;
        playing += usize::from(count > 0);
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
        proto,
        clients: n,
        playing,
        median_fps: percentile(&fps, 50.0),
        p10_fps: percentile(&fps, 10.0),
        min_fps: fps[0],
        latency_ms: [ms(50.0), ms(90.0), ms(99.0), ms(100.0)],
        frames,
        server_cpu: cpu(server0, server1),
        server_rss_mib: rss as f64 / 1024.0,
        loadgen_cpu: cpu(self0, self1),
        mbit_s: bytes as f64 * 8.0 / secs / 1e6,
        kbytes_per_client: bytes as f64 / playing.max(1) as f64 / secs / 1000.0,
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
    targets: Targets,
    proto: Proto,
    index: usize,
    ready: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
    window: watch::Receiver<Option<(Instant, Instant)>>,
) -> ClientLog {
    let mut log = ClientLog {
        frames: Vec::with_capacity(1024),
        ..ClientLog::default()
    };
    let result = match proto {
        Proto::Mjpeg => run_client(targets.http, &ready, &mut stop, &window, &mut log).await,
        Proto::Rtsp => {
            let from = Ipv4Addr::from(u32::from(RTSP_FIRST_CLIENT) + index as u32);
            let to = targets.rtsp;
            run_rtsp_client(to, from.into(), &ready, &mut stop, &window, &mut log).await
        }
    };
    if let Err(e) = result {
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
                    log.frames.push((recv_at, Some(recv_us - *captured_us)));
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

// ---------------------------------------------------------------------------------------
// One RTSP client

/// What the server sent next on an RTSP connection.
enum Item {
    /// A reply: its status and the `Session` id (without `;timeout=`), if any.
    Reply {
        status: u16,
        session: Option<String>,
    },
    /// An RTP packet (channel 0): the marker bit ends a picture.
    Rtp { marker: bool, timestamp: u32 },
    /// An RTCP sender report (channel 1): capture wall clock (µs since 1970) and the RTP
    /// timestamp of the same picture.
    SenderReport { wall_us: i64, timestamp: u32 },
    /// Anything else in the interleaved stream.
    Other,
}

async fn run_rtsp_client(
    addr: SocketAddr,
    from: IpAddr,
    ready: &AtomicUsize,
    stop: &mut watch::Receiver<bool>,
    window: &watch::Receiver<Option<(Instant, Instant)>>,
    log: &mut ClientLog,
) -> Result<(), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let mut stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let url = format!("rtsp://{addr}/");
    let setup = format!(
        "SETUP {url}trackID=0 RTSP/1.0\r\nCSeq: 1\r\n\
         Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    );
    stream
        .write_all(setup.as_bytes())
        .await
        .map_err(|e| format!("send SETUP: {e}"))?;

    let mut buf = BytesMut::with_capacity(READ_BUF);
    let (mut set_up, mut playing) = (false, false);
    // The newest sender report: (RTP timestamp, capture wall clock in µs).
    let mut clock: Option<(u32, i64)> = None;
    loop {
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            buf.reserve(READ_BUF);
        }
        let n = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            r = stream.read_buf(&mut buf) => r.map_err(|e| if set_up {
                format!("read: {e}")
            } else {
                // picamd answers a connection over its limits with 503 and closes it; with
                // SETUP unread in its socket the kernel may send a reset that overtakes the 503.
                format!("reset before SETUP was answered (refused): {e}")
            })?,
        };
        if n == 0 {
            return Err(match (set_up, playing) {
                (false, _) => "server closed the connection before answering SETUP (refused)",
                (true, false) => "server closed the connection before answering PLAY",
                (true, true) => "server closed the stream",
            }
            .into());
        }
        let recv_us = now_us();
        let recv_at = Instant::now();
        if let Some((start, end)) = *window.borrow() {
            if recv_at >= start && recv_at <= end {
                log.bytes_in_window += n as u64;
            }
        }
        while let Some(item) = next_item(&mut buf)? {
            match item {
                Item::Reply { status, session } => {
                    let step = if set_up { "PLAY" } else { "SETUP" };
                    if status != 200 {
                        return Err(format!("{step} answered {status}"));
                    }
                    if set_up {
                        playing = true;
                        ready.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let id = session.ok_or("SETUP answered without a Session")?;
                    let play = format!("PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {id}\r\n\r\n");
                    stream
                        .write_all(play.as_bytes())
                        .await
                        .map_err(|e| format!("send PLAY: {e}"))?;
                    set_up = true;
                }
                Item::Rtp { marker, timestamp } => {
                    if marker {
                        let latency = clock.map(|(sr_ts, sr_us)| {
                            // Wrapping difference: RTP timestamps wrap every 13 hours.
                            let ticks = timestamp.wrapping_sub(sr_ts) as i32 as i64;
                            recv_us - (sr_us + ticks * 1_000_000 / RTP_CLOCK)
                        });
                        log.frames.push((recv_at, latency));
                    }
                }
                Item::SenderReport { wall_us, timestamp } => clock = Some((timestamp, wall_us)),
                Item::Other => {}
            }
        }
        if buf.is_empty() {
            buf.clear();
        }
    }
}

/// Takes the next whole item off `buf`: an interleaved packet (`$`, channel, 16-bit length)
/// or a reply (head and Content-Length body). `None` until one is complete.
fn next_item(buf: &mut BytesMut) -> Result<Option<Item>, String> {
    match buf.first() {
        None => Ok(None),
        Some(b'$') => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                return Ok(None);
            }
            let (channel, p) = (buf[1], &buf[4..4 + len]);
            let item = match channel {
                0 if p.len() >= 12 => Item::Rtp {
                    marker: p[1] & 0x80 != 0,
                    timestamp: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                },
                // A compound packet that starts with a sender report (type 200).
                1 if p.len() >= 20 && p[1] == 200 => {
                    let ntp = u64::from_be_bytes(p[8..16].try_into().expect("8 bytes"));
                    let secs = (ntp >> 32).saturating_sub(NTP_UNIX_OFFSET) as i64;
                    let micros = ((ntp & 0xFFFF_FFFF) * 1_000_000) >> 32;
                    Item::SenderReport {
                        wall_us: secs * 1_000_000 + micros as i64,
                        timestamp: u32::from_be_bytes([p[16], p[17], p[18], p[19]]),
                    }
                }
                _ => Item::Other,
            };
            buf.advance(4 + len);
            Ok(Some(item))
        }
        Some(b'R') => {
            let Some(end) = find(buf, b"\r\n\r\n") else {
                if buf.len() > 8192 {
                    return Err("reply head longer than 8 KiB".into());
                }
                return Ok(None);
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let header = |name: &str| {
                head.split("\r\n").find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
                })
            };
            let body = header("content-length").map_or(0, |v| v.parse().unwrap_or(0));
            if buf.len() < end + 4 + body {
                return Ok(None);
            }
            let status = head
                .strip_prefix("RTSP/1.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an RTSP reply: {head:?}"))?;
            let session = header("session").map(|v| v.split(';').next().unwrap_or(v).to_owned());
            buf.advance(end + 4 + body);
            Ok(Some(Item::Reply { status, session }))
        }
        Some(&b) => Err(format!("unexpected byte {b:#04x} in the RTSP stream")),
    }
}
