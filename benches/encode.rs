//! Encode benchmark: how fast one TurboJPEG compressor turns test-pattern frames into JPEGs,
//! how that compares with libjpeg-turbo's own `tjbench` on the same picture, how the
//! encoder pool scales from one worker to two, and what the software H.264 encoder
//! (OpenH264) costs per frame and in bytes beside JPEG, on the same frames in the same run.
//!
//! Run with `cargo bench --bench encode`. It prints figures only; nothing is asserted.
//! Optional positional argument: seconds per timed phase (default 3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picamd::encode::h264::{default_bitrate, H264Encoder, H264Settings};
use picamd::encode::{EncodeEvent, EncodeSink, EncoderPool, JpegEncoder};
use picamd::frame::{CaptureTime, EncodedFrame, Frame, Payload, SourceInfo, Yuv420Buffer};

// The percentile every test and bench prints (tests/common/procfs.rs).
#[path = "../tests/common/procfs.rs"]
#[allow(dead_code)]
mod procfs;
use picamd::hub::{Hub, PipelineInfo};
use picamd::source::i420::PooledI420;
use picamd::source::test_pattern::TestPattern;
use procfs::percentile;

const SIZES: [(u32, u32); 2] = [(1280, 720), (1920, 1080)];
const QUALITY: u8 = 80;
/// Distinct frames rendered up front and encoded in turn.
const FRAMES: u64 = 30;
const WARMUP: Duration = Duration::from_millis(500);
const TJBENCH: &str = "/usr/bin/tjbench";
/// tjbench runs per size, each between two runs of ours.
const TJ_ROUNDS: usize = 2;

fn main() {
    let phase = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .find_map(|a| a.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(3));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# picamd encode benchmark");
    println!();
    println!(
        "Test pattern, JPEG quality {QUALITY}, 4:2:0, {FRAMES} distinct pre-rendered frames, \
         {:.1} s per timed phase, each after {:.1} s warm-up.",
        phase.as_secs_f64(),
        WARMUP.as_secs_f64()
    );
    println!("This machine has {cores} core(s) (std::thread::available_parallelism).");
    println!(
        "Compare figures within one run: on a shared or virtual machine the CPU speed can \
         change between phases, so tjbench runs alternate with runs of ours, and the pool \
         runs 1 and 2 workers in alternating rounds (1, 2, 2, 1)."
    );

    let tmp = TempDir::new();
    let mut single = Vec::new();
    for &(w, h) in &SIZES {
        println!();
        println!("## {w}x{h}");
        let frames = render_frames(w, h);
        let ours = bench_single(&frames, w, h, phase);
        ours.print(&format!("{FRAMES} distinct frames"));
        let tj = if Path::new(TJBENCH).exists() {
            // tjbench compresses one image over and over (it stays in the CPU caches). Time
            // ours the same way, alternating with tjbench runs: ours, tj, ours, tj, ours.
            let mut same = Vec::new();
            let mut tj = Vec::new();
            for round in 0..TJ_ROUNDS {
                let r = bench_single(&frames[..1], w, h, phase / 2);
                r.print("same frame repeated");
                same.push(r.mean_ms);
                match tjbench(&tmp.0, &frames[0], w, h, phase, round == 0) {
                    Some(t) => tj.push(t.comp_ms),
                    None => break,
                }
            }
            if tj.len() == TJ_ROUNDS {
                let r = bench_single(&frames[..1], w, h, phase / 2);
                r.print("same frame repeated");
                same.push(r.mean_ms);
                Some(Comparison::new(&ours, same, tj))
            } else {
                None
            }
        } else {
            println!(
                "  tjbench baseline skipped: {TJBENCH} not found. Install it with \
                 `apt-get install -y libjpeg-turbo-progs` (Debian/Ubuntu) and run again."
            );
            None
        };
        let h264 = bench_h264(&frames, w, h, phase);
        h264.print_as("OpenH264 H264Encoder", "in order, GOP 2 s, default bitrate");
        single.push((w, h, ours, tj, h264));
    }

    println!();
    println!("## Encoder pool (EncoderPool::start + submit, counting hub encoded frames)");
    println!(
        "One submitting thread offers a frame, and when every worker is busy (the frame is \
         dropped) sleeps 50 us before the next offer. {cores} core(s) shared by the workers \
         and the submitter. Rounds of {:.1} s in the order 1, 2, 2, 1 workers.",
        (phase / 2).as_secs_f64()
    );
    let mut pool_rows = Vec::new();
    for &(w, h) in &SIZES {
        let shared = shared_frames(&render_frames(w, h), w, h);
        let mut one = PoolResult::default();
        let mut two = PoolResult::default();
        for workers in [1, 2, 2, 1] {
            let r = bench_pool(&shared, w, h, workers, phase / 2);
            let total = if workers == 1 { &mut one } else { &mut two };
            total.add(&r);
        }
        println!(
            "  {w}x{h} totals: 1 worker {:.1} frames/s, 2 workers {:.1} frames/s, ratio {:.2}",
            one.fps(),
            two.fps(),
            two.fps() / one.fps()
        );
        pool_rows.push((w, h, one, two));
    }

    println!();
    println!("## Summary");
    println!();
    println!(
        "Ours: {FRAMES} distinct frames, one thread. tjbench: system libjpeg-turbo, compress \
         from YUV planes, one image repeated (mean of {TJ_ROUNDS} runs). \"Same-frame\": ours \
         timed the same way, alternating with tjbench (mean of {} runs; \"best\" = fastest \
         run of each).",
        TJ_ROUNDS + 1
    );
    println!();
    println!(
        "| size | median ms | p10 ms | p90 ms | mean ms | fps (1 thread) | mean JPEG KiB \
         | tjbench ms | ours/tjbench | same-frame ms | same-frame/tjbench | best/best |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (w, h, ours, cmp, _) in &single {
        let tj_cols = match cmp {
            Some(c) => format!(
                "{:.3} | {:.2} | {:.3} | {:.2} | {:.2}",
                c.tj_ms,
                ours.mean_ms / c.tj_ms,
                c.same_ms,
                c.same_ms / c.tj_ms,
                c.same_best_ms / c.tj_best_ms
            ),
            None => "n/a | n/a | n/a | n/a | n/a".into(),
        };
        println!(
            "| {w}x{h} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {tj_cols} |",
            ours.median_ms,
            ours.p10_ms,
            ours.p90_ms,
            ours.mean_ms,
            ours.fps,
            ours.mean_bytes / 1024.0
        );
    }
    println!();
    println!(
        "H.264 (OpenH264, Constrained Baseline, 1 thread, default bitrate for the size at 30 \
         fps, GOP 60) beside JPEG quality {QUALITY} on the same frames, same run. The test \
         pattern is mostly still, so H.264's bytes here are a lower bound."
    );
    println!();
    println!(
        "| size | JPEG median ms | H.264 median ms | H.264/JPEG time | H.264 p90 ms \
         | JPEG KiB/frame | H.264 KiB/frame | JPEG/H.264 bytes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, h, ours, _, h264) in &single {
        println!(
            "| {w}x{h} | {:.3} | {:.3} | {:.2} | {:.3} | {:.1} | {:.1} | {:.1} |",
            ours.median_ms,
            h264.median_ms,
            h264.median_ms / ours.median_ms,
            h264.p90_ms,
            ours.mean_bytes / 1024.0,
            h264.mean_bytes / 1024.0,
            ours.mean_bytes / h264.mean_bytes.max(1.0)
        );
    }
    println!();
    println!("| size | pool fps, 1 worker | pool fps, 2 workers | 2/1 | cores |");
    println!("|---|---:|---:|---:|---:|");
    for (w, h, one, two) in &pool_rows {
        println!(
            "| {w}x{h} | {:.1} | {:.1} | {:.2} | {cores} |",
            one.fps(),
            two.fps(),
            two.fps() / one.fps()
        );
    }
}

/// tjbench next to our encoder.
struct Comparison {
    /// tjbench compress-from-YUV, ms/frame: mean and best of its runs.
    tj_ms: f64,
    tj_best_ms: f64,
    /// Ours on the same frame repeated, ms/frame: mean and best of the runs around tjbench.
    same_ms: f64,
    same_best_ms: f64,
}

impl Comparison {
    fn new(ours: &Single, same: Vec<f64>, tj: Vec<f64>) -> Self {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let c = Comparison {
            tj_ms: mean(&tj),
            tj_best_ms: best(&tj),
            same_ms: mean(&same),
            same_best_ms: best(&same),
        };
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  tjbench runs: {} ms/frame; ours same-frame runs: {} ms/frame",
            list(&tj),
            list(&same)
        );
        println!(
            "  means: tjbench {:.3}, ours same-frame {:.3} (ratio {:.2}), ours {FRAMES} frames \
             {:.3} (ratio {:.2}); best runs: tjbench {:.3}, ours same-frame {:.3} (ratio {:.2})",
            c.tj_ms,
            c.same_ms,
            c.same_ms / c.tj_ms,
            ours.mean_ms,
            ours.mean_ms / c.tj_ms,
            c.tj_best_ms,
            c.same_best_ms,
            c.same_best_ms / c.tj_best_ms
        );
        let spread = worst(&same) / best(&same) - 1.0;
        if spread > 0.10 {
            println!(
                "  NOTE: our same-frame runs differ by up to {:.0} %: the machine's speed varied \
                 during the comparison, so the mean ratios are uncertain by about that much; \
                 the best-run ratio compares both at their fastest.",
                spread * 100.0
            );
        }
        c
    }
}

fn render_frames(w: u32, h: u32) -> Vec<PooledI420> {
    let tp = TestPattern::new(w, h, 30);
    (1..=FRAMES)
        .map(|seq| tp.render(seq, CaptureTime::now()))
        .collect()
}

/// Timings of one compressor encoding frames one after another.
struct Single {
    frames: usize,
    median_ms: f64,
    p10_ms: f64,
    p90_ms: f64,
    mean_ms: f64,
    fps: f64,
    mean_bytes: f64,
}

impl Single {
    /// The figures of per-frame times and the bytes made in them.
    fn of(mut times: Vec<Duration>, bytes: u64) -> Single {
        let total: Duration = times.iter().sum();
        let count = times.len();
        times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Single {
            frames: count,
            median_ms: ms(percentile(&times, 50.0)),
            p10_ms: ms(percentile(&times, 10.0)),
            p90_ms: ms(percentile(&times, 90.0)),
            mean_ms: ms(total) / count as f64,
            fps: count as f64 / total.as_secs_f64(),
            mean_bytes: bytes as f64 / count as f64,
        }
    }

    fn print(&self, what: &str) {
        self.print_as("JpegEncoder", what);
    }

    fn print_as(&self, encoder: &str, what: &str) {
        println!(
            "  picamd {encoder}, 1 thread, {what}: {} frames timed; median {:.3} ms, p10 {:.3} ms, \
             p90 {:.3} ms, mean {:.3} ms per frame = {:.1} frames/s; mean {:.0} bytes per frame",
            self.frames,
            self.median_ms,
            self.p10_ms,
            self.p90_ms,
            self.mean_ms,
            self.fps,
            self.mean_bytes
        );
    }
}

fn bench_single(frames: &[PooledI420], w: u32, h: u32, phase: Duration) -> Single {
    let mut enc = JpegEncoder::new(QUALITY).expect("JPEG compressor");
    let warm_until = Instant::now() + WARMUP;
    let mut i = 0usize;
    while Instant::now() < warm_until {
        enc.encode(&frames[i % frames.len()], w, h, QUALITY)
            .expect("encode");
        i += 1;
    }
    let mut times = Vec::new();
    let mut bytes = 0u64;
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let planes = &frames[times.len() % frames.len()];
        let start = Instant::now();
        let n = enc.encode(planes, w, h, QUALITY).expect("encode").len();
        times.push(start.elapsed());
        bytes += n as u64;
    }
    Single::of(times, bytes)
}

/// One H.264 encoder on the frames in order (as video: each P-frame predicts from the
/// previous), at the default bitrate for the size at 30 fps.
fn bench_h264(frames: &[PooledI420], w: u32, h: u32, phase: Duration) -> Single {
    let settings = H264Settings {
        width: w,
        height: h,
        fps: 30,
        bitrate: default_bitrate(w, h, 30),
        gop: 60,
    };
    let mut enc = H264Encoder::new(settings).expect("H.264 encoder");
    let mut seq = 0u64;
    let mut encode = |enc: &mut H264Encoder| {
        let planes = &frames[seq as usize % frames.len()];
        seq += 1;
        enc.encode(planes, seq, CaptureTime::now(), Instant::now())
            .expect("encode")
            .map_or(0, |u| u.data.len())
    };
    let warm_until = Instant::now() + WARMUP;
    while Instant::now() < warm_until {
        encode(&mut enc);
    }
    let mut times = Vec::new();
    let mut bytes = 0u64;
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let start = Instant::now();
        let n = encode(&mut enc);
        times.push(start.elapsed());
        bytes += n as u64;
    }
    Single::of(times, bytes)
}

// ---------------------------------------------------------------------------------------
// tjbench baseline

struct TjResult {
    comp_ms: f64,
}

/// Runs `tjbench` on frame `planes` written as a PPM and reports its compress-from-YUV time.
fn tjbench(
    dir: &Path,
    planes: &PooledI420,
    w: u32,
    h: u32,
    phase: Duration,
    first: bool,
) -> Option<TjResult> {
    let ppm = dir.join(format!("pattern-{w}x{h}.ppm"));
    if first {
        write_ppm(&ppm, planes, w as usize, h as usize).expect("write PPM");
    }
    let bench_secs = format!("{}", phase.as_secs_f64());
    let quality = QUALITY.to_string();
    let args = [
        ppm.to_str().expect("UTF-8 temp path"),
        &quality,
        "-subsamp",
        "420",
        "-yuv",
        "-benchtime",
        &bench_secs,
        "-warmup",
        "1",
        "-nowrite",
        "-componly",
    ];
    println!("  running: {TJBENCH} {}", args.join(" "));
    let out = match Command::new(TJBENCH).args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) => {
            println!("  tjbench baseline skipped: cannot run {TJBENCH}: {e}");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        println!("  tjbench failed ({}); its output:", out.status);
        for l in stdout
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("    | {l}");
        }
        return None;
    }
    let parsed = parse_tjbench(&stdout);
    println!("  tjbench lines used:");
    for l in &parsed.raw {
        println!("    | {l}");
    }
    let Some(comp_fps) = parsed.comp_fps else {
        println!("  could not find the \"Comp from YUV\" frame rate in tjbench's output:");
        for l in stdout.lines() {
            println!("    | {l}");
        }
        return None;
    };
    let comp_ms = 1000.0 / comp_fps;
    print!("  tjbench (system libjpeg-turbo, 1 thread): compress from YUV {comp_ms:.3} ms/frame ({comp_fps:.1} fps)");
    if let Some(b) = parsed.comp_bytes {
        print!(", JPEG {b} bytes");
    }
    if let Some(enc_fps) = parsed.yuv_fps {
        print!(
            "; its RGB->YUV step (not comparable, excluded) {:.3} ms",
            1000.0 / enc_fps
        );
    }
    println!();
    Some(TjResult { comp_ms })
}

#[derive(Default)]
struct TjParsed {
    yuv_fps: Option<f64>,
    comp_fps: Option<f64>,
    comp_bytes: Option<u64>,
    raw: Vec<String>,
}

/// Picks the figures out of tjbench's verbose report:
///
/// ```text
/// Encode YUV    --> Frame rate:         2070.499600 fps
///                   Output image size:  1382400 bytes
/// Comp from YUV --> Frame rate:         341.721151 fps
///                   Output image size:  495417 bytes
/// ```
fn parse_tjbench(stdout: &str) -> TjParsed {
    let number_after = |line: &str, key: &str| -> Option<f64> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut p = TjParsed::default();
    let mut section = "";
    for line in stdout.lines() {
        let t = line.trim();
        if t.starts_with("Image size:") {
            p.raw.push(line.to_owned());
        }
        if let Some((label, _)) = line.split_once("-->") {
            section = match label.trim() {
                "Encode YUV" => "yuv",
                "Comp from YUV" => "comp",
                _ => "",
            };
        }
        if t.contains("Frame rate:") {
            let fps = number_after(line, "Frame rate:");
            match section {
                "yuv" => p.yuv_fps = fps,
                "comp" => p.comp_fps = fps,
                _ => {}
            }
            if !section.is_empty() {
                p.raw.push(line.to_owned());
            }
        } else if t.starts_with("Output image size:") && section == "comp" {
            p.comp_bytes = number_after(line, "Output image size:").map(|v| v as u64);
            p.raw.push(line.to_owned());
        }
    }
    p
}

/// Writes the frame as a binary PPM, converting BT.601 limited-range YUV to full-range RGB.
fn write_ppm(path: &Path, planes: &PooledI420, w: usize, h: usize) -> std::io::Result<()> {
    let [yp, up, vp] = planes.planes();
    let [ys, us, vs] = planes.strides();
    let mut out = format!("P6\n{w} {h}\n255\n").into_bytes();
    out.reserve(w * h * 3);
    // Fixed point, 16 fractional bits: 1.164, 1.596, 0.392, 0.813, 2.017.
    let clamp = |v: i32| ((v + 32768) >> 16).clamp(0, 255) as u8;
    for row in 0..h {
        for col in 0..w {
            let y = (yp[row * ys + col] as i32 - 16) * 76284;
            let u = up[(row / 2) * us + col / 2] as i32 - 128;
            let v = vp[(row / 2) * vs + col / 2] as i32 - 128;
            out.push(clamp(y + 104595 * v));
            out.push(clamp(y - 25690 * u - 53281 * v));
            out.push(clamp(y + 132186 * u));
        }
    }
    std::fs::write(path, out)
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "picamd-encode-bench-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Encoder pool throughput

/// A pre-rendered I420 frame shared by reference count, so submitting costs no render or copy.
struct SharedPlanes {
    buf: Arc<Vec<u8>>,
    width: usize,
    height: usize,
}

impl Yuv420Buffer for SharedPlanes {
    fn planes(&self) -> [&[u8]; 3] {
        let ysz = self.width * self.height;
        let csz = (self.width / 2) * (self.height / 2);
        let (y, rest) = self.buf.split_at(ysz);
        let (u, v) = rest.split_at(csz);
        [y, u, v]
    }

    fn strides(&self) -> [usize; 3] {
        [self.width, self.width / 2, self.width / 2]
    }
}

fn shared_frames(frames: &[PooledI420], w: u32, h: u32) -> Vec<Arc<Vec<u8>>> {
    let (w, h) = (w as usize, h as usize);
    frames
        .iter()
        .map(|f| {
            let [y, u, v] = f.planes();
            let mut buf = Vec::with_capacity(w * h * 3 / 2);
            buf.extend_from_slice(&y[..w * h]);
            buf.extend_from_slice(&u[..(w / 2) * (h / 2)]);
            buf.extend_from_slice(&v[..(w / 2) * (h / 2)]);
            Arc::new(buf)
        })
        .collect()
}

#[derive(Default)]
struct PoolResult {
    frames: u64,
    secs: f64,
}

impl PoolResult {
    fn add(&mut self, other: &PoolResult) {
        self.frames += other.frames;
        self.secs += other.secs;
    }

    fn fps(&self) -> f64 {
        self.frames as f64 / self.secs
    }
}

/// The pool's output in the bench: frames go to a hub as in picamd, counted here.
struct PoolCounts {
    hub: Hub,
    encoded: AtomicU64,
    dropped_busy: AtomicU64,
    encode_us_total: AtomicU64,
}

impl EncodeSink for PoolCounts {
    fn publish(&self, frame: EncodedFrame) {
        self.hub.publish(frame);
    }

    fn count(&self, event: EncodeEvent) {
        match event {
            EncodeEvent::Encoded(took) => {
                self.encoded.fetch_add(1, Ordering::Relaxed);
                self.encode_us_total
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
            }
            EncodeEvent::Busy => {
                self.dropped_busy.fetch_add(1, Ordering::Relaxed);
            }
            EncodeEvent::Failed => {}
        }
    }
}

fn bench_pool(
    frames: &[Arc<Vec<u8>>],
    w: u32,
    h: u32,
    workers: usize,
    phase: Duration,
) -> PoolResult {
    let hub = Hub::new(PipelineInfo {
        name: "main".into(),
        source: SourceInfo {
            kind: "bench",
            name: "pre-rendered test pattern".into(),
        },
        width: w,
        height: h,
        fps: 30,
        workers,
        quality: QUALITY,
        max_viewers: 1,
        h264_bitrate: 0,
        h264_gop_s: 2,
    });
    let stats = Arc::new(PoolCounts {
        hub,
        encoded: AtomicU64::new(0),
        dropped_busy: AtomicU64::new(0),
        encode_us_total: AtomicU64::new(0),
    });
    let (pool, threads) =
        EncoderPool::start(workers, QUALITY, stats.clone(), None).expect("start pool");
    let mut seq = 0u64;
    let mut submit_until = |deadline: Instant| {
        while Instant::now() < deadline {
            seq += 1;
            let before = stats.dropped_busy.load(Ordering::Relaxed);
            pool.submit(Frame {
                seq,
                captured: CaptureTime::now(),
                width: w,
                height: h,
                no_signal: false,
                payload: Payload::Yuv420(std::sync::Arc::new(SharedPlanes {
                    buf: frames[seq as usize % frames.len()].clone(),
                    width: w as usize,
                    height: h as usize,
                })),
            });
            if stats.dropped_busy.load(Ordering::Relaxed) != before {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    };
    submit_until(Instant::now() + WARMUP);
    let (enc0, busy0, us0) = (
        stats.encoded.load(Ordering::Relaxed),
        stats.dropped_busy.load(Ordering::Relaxed),
        stats.encode_us_total.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    submit_until(start + phase);
    let elapsed = start.elapsed().as_secs_f64();
    let encoded = stats.encoded.load(Ordering::Relaxed) - enc0;
    let offers_refused = stats.dropped_busy.load(Ordering::Relaxed) - busy0;
    let busy_us = stats.encode_us_total.load(Ordering::Relaxed) - us0;
    drop(pool);
    threads.join();
    let fps = encoded as f64 / elapsed;
    println!(
        "  {w}x{h}, {workers} worker(s): {encoded} frames in {elapsed:.2} s = {fps:.1} frames/s; \
         mean encode {:.3} ms/frame inside the workers; {offers_refused} offers refused (all busy)",
        busy_us as f64 / 1000.0 / encoded.max(1) as f64
    );
    PoolResult {
        frames: encoded,
        secs: elapsed,
    }
}
