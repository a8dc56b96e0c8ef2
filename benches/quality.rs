//! Quality benchmark (issue 19): bytes per viewer and picture quality of picamd's two codecs
//! at their defaults, on the same 10 s of 1280x720 at 30 fps.
//!
//! - MJPEG: every frame through picamd's [`JpegEncoder`] at the `quality` key's default.
//! - H.264: every frame through picamd's [`H264Encoder`] at [`default_bitrate`] for the size
//!   and the `h264_gop` key's default, set up as `pipeline/h264_stage.rs` sets it up.
//!
//! Both are the library's own encoders, the code the server runs; the defaults are read from
//! the key table (`config/keys.rs`), so the bench follows them when they change. Inputs:
//!
//! - picamd's test pattern, rendered by [`TestPattern`] as the source does (mostly still:
//!   a moving bar and box, a clock and a frame counter);
//! - Debian's ffmpeg's `mandelbrot` source: a continuous zoom into the fractal, so every
//!   pixel moves every frame (zoom is the motion H.264's translational prediction handles
//!   worst), with smooth areas next to detail at every scale along the set's edge — the
//!   hard case, like a camera zooming or panning over texture. `testsrc2` and `gradients`
//!   are as easy as the test pattern (flat areas, a few edges); `life` and `cellauto` are
//!   1-pixel black/white cells, nothing like a camera's picture;
//! - the same zoom with grain added to its luma (ffmpeg's `noise` filter, strength 6, new
//!   every frame: σ ≈ 3 levels, PSNR 38 dB against the clean zoom), like a small camera
//!   sensor indoors. Grain cannot be predicted from the previous frame, so it costs H.264
//!   more than any other content; JPEG pays for it too.
//!
//! Each encoded stream is written under the target directory (`tmp/picamd-quality/`), decoded
//! by Debian's ffmpeg and compared with the raw source by ffmpeg's `ssim` and `psnr` filters.
//! A frame H.264's rate control skips (it sends nothing) leaves the previous picture on the
//! viewer's screen, and is measured as that picture. When H.264 at its default does not make
//! at least [`GOAL`]× fewer bytes than MJPEG at equal or better SSIM, a short bitrate sweep
//! finds the H.264 bitrate that reaches MJPEG's SSIM.
//!
//! Run with `cargo bench --bench quality`. It prints figures only; nothing is asserted.
//! Optional positional argument: seconds of video (default 10).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use picamd::config::key;
use picamd::config::keys::{Builtin, Key};
use picamd::encode::h264::{default_bitrate, H264Encoder, H264Settings};
use picamd::encode::JpegEncoder;
use picamd::ffmpeg_child::ffmpeg_program;
use picamd::frame::{CaptureTime, Yuv420Buffer};
use picamd::source::test_pattern::TestPattern;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
/// Bytes of one tightly packed I420 frame: 1.38 MB at 720p, so 10 s of raw video is 415 MB.
const FRAME_LEN: usize = (WIDTH * HEIGHT * 3 / 2) as usize;
/// [`WIDTH`]x[`HEIGHT`] and [`FPS`] as ffmpeg's raw-input options spell them.
const RAW_SIZE: &str = "1280x720";
const RAW_RATE: &str = "30";
const _: () = assert!(
    WIDTH == 1280 && HEIGHT == 720 && FPS == 30,
    "update RAW_SIZE, RAW_RATE"
);
/// The issue's goal: H.264 needs at least this many times fewer bytes per viewer than MJPEG
/// at equal or better SSIM.
const GOAL: f64 = 4.0;
/// Most H.264 encodes per input in the sweep (the default's included). Each costs 5–12 s here
/// (encode and measure 300 frames; more at higher bitrates): five keep the whole run under
/// 2 minutes on 2 shared cores (86 s measured with four).
const SWEEP_POINTS: usize = 5;
/// Stop refining when the bitrates either side of MJPEG's SSIM are this close (ratio).
const SWEEP_CLOSE: f64 = 1.25;
/// `h264_bitrate`'s range (`config/keys.rs`): a sweep beyond it could not be configured.
const BITRATE_RANGE: (u32, u32) = (100_000, 50_000_000);
/// The test pattern's clock starts here (2026-01-01 00:00:00 UTC) so every run draws the
/// same pictures.
const PATTERN_EPOCH_US: u64 = 1_767_225_600_000_000;

/// One source clip.
struct Input {
    name: &'static str,
    what: &'static str,
    make: Make,
}

/// How a clip's raw frames are made.
enum Make {
    /// [`TestPattern::render`].
    Pattern,
    /// An ffmpeg lavfi source graph.
    Lavfi(&'static str),
    /// An ffmpeg video filter over an earlier input's raw frames (cheaper than rendering the
    /// fractal again: it takes ~10 s here).
    Filter {
        of: &'static str,
        filter: &'static str,
    },
}

const INPUTS: &[Input] = &[
    Input {
        name: "pattern",
        what: "picamd's test pattern (TestPattern::render)",
        make: Make::Pattern,
    },
    Input {
        name: "mandelbrot",
        what: "ffmpeg lavfi mandelbrot (a continuous zoom)",
        make: Make::Lavfi("mandelbrot=size=1280x720:rate=30"),
    },
    Input {
        name: "mandelbrot+grain",
        what: "the same zoom with temporal grain in luma (a camera sensor indoors)",
        make: Make::Filter {
            of: "mandelbrot",
            filter: "noise=c0s=6:c0f=t",
        },
    },
];

fn main() {
    let seconds = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .find_map(|a| a.parse::<u32>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(10);
    let frames = (seconds * FPS) as usize;
    let quality = builtin_int(&key::quality) as u8;
    let gop_s = builtin_int(&key::h264_gop) as u32;
    let bitrate = default_bitrate(WIDTH, HEIGHT, FPS);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("picamd-quality");
    std::fs::create_dir_all(&dir).expect("create the output directory");
    let ffmpeg = ffmpeg_program();
    if Command::new(&ffmpeg)
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!(
            "ffmpeg ({}) cannot be run: install it (`apt-get install -y ffmpeg`) or name one \
             in PICAMD_FFMPEG",
            ffmpeg.to_string_lossy()
        );
        std::process::exit(1);
    }
    let run_start = Instant::now();

    println!("# picamd quality benchmark: bytes per viewer and SSIM/PSNR, MJPEG vs H.264");
    println!();
    println!(
        "{WIDTH}x{HEIGHT} @ {FPS} fps, {frames} frames ({seconds} s) per input. MJPEG: \
         picamd's JpegEncoder at quality {quality} (the `quality` default), 4:2:0. H.264: \
         picamd's H264Encoder (OpenH264, Constrained Baseline, 1 thread) at {} kbit/s (the \
         default for the size) and a keyframe every {gop_s} s (the `h264_gop` default).",
        bitrate / 1000
    );
    println!(
        "kbit/s = encoded bytes x 8 / {seconds} s: what each viewer receives (MJPEG sends \
         every JPEG to every viewer that keeps up; RTSP adds 16 bytes of RTP and interleaving \
         headers per packet of at most 1400 bytes, MJPEG ~100 bytes of part headers per frame). Quality: Debian's ffmpeg decodes each stream and \
         its ssim and psnr filters compare it with the raw source; a frame H.264 skipped is \
         measured as the previous picture, which is what a viewer sees."
    );
    println!("Outputs and raw sources are in {}.", dir.display());
    let raw_in = shell_words(&raw_input_args());
    println!(
        "Measured as: ffmpeg -f mjpeg|h264 -i OUTPUT -fps_mode passthrough -f rawvideo \
         -pix_fmt yuvj420p|yuv420p - | (skipped frames repeated) | ffmpeg {raw_in} -i pipe:0 \
         {raw_in} -i SOURCE.yuv -lavfi '{METER_GRAPH}' -f null -"
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut verdicts = Vec::new();
    for input in INPUTS {
        println!();
        println!("## {} — {}", input.name, input.what);
        let raw = raw_path(&dir, input.name);
        let t = Instant::now();
        match input.make {
            Make::Pattern => write_pattern(&raw, frames),
            Make::Lavfi(graph) => {
                generate_clip(&ffmpeg, &["-f", "lavfi", "-i", graph], &raw, frames)
            }
            Make::Filter { of, filter } => {
                let from = raw_path(&dir, of);
                let from = from.to_str().expect("a UTF-8 target directory");
                let mut args = raw_input_args();
                args.extend(["-i", from, "-vf", filter]);
                generate_clip(&ffmpeg, &args, &raw, frames)
            }
        }
        println!(
            "  raw source: {} ({} frames) made in {:.1} s",
            raw.display(),
            frames,
            t.elapsed().as_secs_f64()
        );
        let clip = Clip {
            name: input.name,
            raw,
            frames,
            seconds,
        };

        let jpeg = clip.encode_jpeg(&dir, quality);
        let jpeg_q = measure(&ffmpeg, &clip, &jpeg);
        let jpeg_row = Row::new(&clip, format!("MJPEG q{quality}"), &jpeg, jpeg_q);
        jpeg_row.print_progress();

        let h264 = clip.encode_h264(&dir, bitrate, gop_s);
        let h264_q = measure(&ffmpeg, &clip, &h264);
        let h264_row = Row::new(&clip, format!("H.264 {}k", bitrate / 1000), &h264, h264_q);
        h264_row.print_progress();

        let ratio = jpeg_row.kbps / h264_row.kbps;
        let holds = ratio >= GOAL && h264_row.quality.ssim_all >= jpeg_row.quality.ssim_all;
        let mut sweep = Vec::new();
        if !holds {
            println!(
                "  the goal does not hold at the defaults (ratio {ratio:.1}x, SSIM {:.4} vs \
                 MJPEG {:.4}): sweeping the H.264 bitrate",
                h264_row.quality.ssim_all, jpeg_row.quality.ssim_all
            );
            sweep = sweep_bitrate(&ffmpeg, &clip, &dir, gop_s, &jpeg_row, &h264_row, bitrate);
        }
        verdicts.push(Verdict::new(
            input.name, &jpeg_row, &h264_row, bitrate, &sweep,
        ));
        rows.push(jpeg_row);
        rows.push(h264_row);
        rows.extend(sweep.into_iter().filter(|r| r.target_bps != Some(bitrate)));
    }

    println!();
    println!("## Summary");
    println!();
    println!(
        "{WIDTH}x{HEIGHT} @ {FPS} fps, {seconds} s per input; run took {:.0} s. \"coded\": \
         frames that produced output (H.264's rate control may skip some). \"MJPEG/this\": \
         MJPEG's bytes over this row's, same input. PSNR: Y and the average of all planes \
         (ffmpeg's `average`, weighted by plane size). SSIM: ffmpeg's All (weighted Y, U, V) \
         and Y.",
        run_start.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| input | codec | coded | kbit/s | KiB/frame | MJPEG/this | PSNR Y dB | PSNR avg dB \
         | SSIM All | SSIM Y |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let jpeg_kbps = rows
            .iter()
            .find(|j| j.input == r.input && j.target_bps.is_none())
            .map_or(f64::NAN, |j| j.kbps);
        r.print_row(jpeg_kbps);
    }
    println!();
    println!("Goal: at least {GOAL}x fewer bytes than MJPEG at equal or better SSIM (All).");
    println!();
    for v in &verdicts {
        println!("- {v}");
    }
}

/// A key's built-in whole-number default, from the key table.
fn builtin_int(k: &Key) -> i64 {
    match k.default {
        Builtin::Value(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{}'s default {v:?} is not a number", k.name)),
        other => panic!("{} has no fixed default: {other:?}", k.name),
    }
}

fn file_stem(name: &str) -> String {
    name.replace('+', "-")
}

/// `args` as a shell would need them, for the commands printed.
fn shell_words(args: &[&str]) -> String {
    let quote = |a: &&str| {
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:=/+".contains(c))
        {
            a.to_string()
        } else {
            format!("'{a}'")
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn raw_path(dir: &Path, input: &str) -> PathBuf {
    dir.join(format!("{}.yuv", file_stem(input)))
}

/// ffmpeg's options to read one of the raw I420 files (they carry no header).
fn raw_input_args() -> Vec<&'static str> {
    vec![
        "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", RAW_SIZE, "-r", RAW_RATE,
    ]
}

// ---------------------------------------------------------------------------------------
// Sources

/// Renders the test pattern's frames `1..=frames` into a raw I420 file, each captured one
/// frame interval after the last (the clock drawn in the picture advances as it does live).
fn write_pattern(path: &Path, frames: usize) {
    let pattern = TestPattern::new(WIDTH, HEIGHT, FPS);
    let mono = Instant::now();
    let interval_us = 1_000_000 / FPS as u64;
    let mut out = BufWriter::new(File::create(path).expect("create the pattern file"));
    for i in 0..frames as u64 {
        let captured = CaptureTime {
            mono: mono + Duration::from_micros(i * interval_us),
            wall_us: PATTERN_EPOCH_US + i * interval_us,
        };
        let frame = pattern.render(i + 1, captured);
        // PooledI420's planes are tightly packed (strides = width, width / 2).
        for plane in frame.planes() {
            out.write_all(plane).expect("write the pattern file");
        }
    }
    out.flush().expect("write the pattern file");
}

/// Has ffmpeg write `frames` frames of the input `input` names as raw I420 (BT.601, limited
/// range: what cameras deliver and what picamd's encoders take).
fn generate_clip(ffmpeg: &std::ffi::OsStr, input: &[&str], path: &Path, frames: usize) {
    let frames_arg = frames.to_string();
    let mut args = vec!["-hide_banner", "-nostdin", "-v", "error"];
    args.extend(input);
    args.extend([
        "-frames:v",
        &frames_arg,
        "-pix_fmt",
        "yuv420p",
        "-f",
        "rawvideo",
        "-y",
    ]);
    println!(
        "  running: ffmpeg {} {}",
        shell_words(&args),
        path.display()
    );
    let out = Command::new(ffmpeg)
        .args(args)
        .arg(path)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let len = std::fs::metadata(path).expect("the clip file").len();
    assert_eq!(
        len,
        (frames * FRAME_LEN) as u64,
        "ffmpeg wrote {len} bytes, not {frames} frames"
    );
}

/// One tightly packed I420 frame read from a raw file.
struct Packed(Vec<u8>);

impl Yuv420Buffer for Packed {
    fn planes(&self) -> [&[u8]; 3] {
        let luma = (WIDTH * HEIGHT) as usize;
        let (y, chroma) = self.0.split_at(luma);
        let (u, v) = chroma.split_at(luma / 4);
        [y, u, v]
    }

    fn strides(&self) -> [usize; 3] {
        let w = WIDTH as usize;
        [w, w / 2, w / 2]
    }
}

/// A raw clip on disk.
struct Clip {
    name: &'static str,
    raw: PathBuf,
    frames: usize,
    seconds: u32,
}

/// What one encode made.
struct Encoded {
    path: PathBuf,
    /// ffmpeg's demuxer for it.
    format: &'static str,
    bytes: u64,
    /// Per source frame: whether it gave output (H.264 skips some; JPEG none).
    coded: Vec<bool>,
    /// The H.264 target, bits per second; `None` for MJPEG.
    target_bps: Option<u32>,
    encode_ms: f64,
}

impl Clip {
    /// Calls `each` with every frame of the clip in order.
    fn for_each_frame(&self, mut each: impl FnMut(usize, &Packed)) {
        let mut reader = BufReader::with_capacity(
            4 * FRAME_LEN,
            File::open(&self.raw).expect("open the raw clip"),
        );
        let mut frame = Packed(vec![0; FRAME_LEN]);
        for i in 0..self.frames {
            reader.read_exact(&mut frame.0).expect("read a raw frame");
            each(i, &frame);
        }
    }

    fn encode_jpeg(&self, dir: &Path, quality: u8) -> Encoded {
        let path = dir.join(format!("{}-q{quality}.mjpeg", file_stem(self.name)));
        let mut out = BufWriter::new(File::create(&path).expect("create the MJPEG file"));
        let mut enc = JpegEncoder::new(quality).expect("a JPEG compressor");
        let (mut bytes, mut busy) = (0u64, Duration::ZERO);
        self.for_each_frame(|_, frame| {
            let t = Instant::now();
            let jpeg = enc
                .encode(frame, WIDTH, HEIGHT, quality)
                .expect("JPEG encode");
            busy += t.elapsed();
            bytes += jpeg.len() as u64;
            // Concatenated JPEGs: ffmpeg's `mjpeg` demuxer reads them back one by one.
            out.write_all(jpeg).expect("write the MJPEG file");
        });
        out.flush().expect("write the MJPEG file");
        Encoded {
            path,
            format: "mjpeg",
            bytes,
            coded: vec![true; self.frames],
            target_bps: None,
            encode_ms: busy.as_secs_f64() * 1000.0 / self.frames as f64,
        }
    }

    fn encode_h264(&self, dir: &Path, bitrate: u32, gop_s: u32) -> Encoded {
        let path = dir.join(format!("{}-{}k.h264", file_stem(self.name), bitrate / 1000));
        let mut out = BufWriter::new(File::create(&path).expect("create the H.264 file"));
        // As pipeline/h264_stage.rs builds the settings from the configuration.
        let mut enc = H264Encoder::new(H264Settings {
            width: WIDTH,
            height: HEIGHT,
            fps: FPS,
            bitrate,
            gop: gop_s * FPS,
        })
        .expect("an H.264 encoder");
        let mono = Instant::now();
        let interval = Duration::from_secs(1) / FPS;
        let (mut bytes, mut busy) = (0u64, Duration::ZERO);
        let mut coded = Vec::with_capacity(self.frames);
        self.for_each_frame(|i, frame| {
            let captured = CaptureTime {
                mono: mono + interval * i as u32,
                wall_us: PATTERN_EPOCH_US + (i as u64) * 1_000_000 / FPS as u64,
            };
            let t = Instant::now();
            let unit = enc
                .encode(frame, i as u64, captured, captured.mono)
                .expect("H.264 encode");
            busy += t.elapsed();
            coded.push(unit.is_some());
            if let Some(unit) = unit {
                bytes += unit.data.len() as u64;
                // Annex B access units back to back: an H.264 elementary stream.
                out.write_all(&unit.data).expect("write the H.264 file");
            }
        });
        out.flush().expect("write the H.264 file");
        Encoded {
            path,
            format: "h264",
            bytes,
            coded,
            target_bps: Some(bitrate),
            encode_ms: busy.as_secs_f64() * 1000.0 / self.frames as f64,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measuring

/// ffmpeg's verdict on one decoded stream against its source.
#[derive(Debug, Clone, Copy)]
struct Quality {
    ssim_all: f64,
    ssim_y: f64,
    psnr_y: f64,
    psnr_avg: f64,
}

/// The comparison: ssim and psnr of the decoded pictures (input 0) against the source (1).
const METER_GRAPH: &str = "[0:v][1:v]ssim;[0:v][1:v]psnr";

/// Decodes `enc` with ffmpeg, lines its pictures up with the source's frames (a skipped frame
/// repeats the previous picture) and has a second ffmpeg compare them with the raw source.
fn measure(ffmpeg: &std::ffi::OsStr, clip: &Clip, enc: &Encoded) -> Quality {
    // JPEGs decode as `yuvj420p` (full range). picamd puts the camera's limited-range planes
    // into the JPEG unchanged, so the decoded bytes are comparable with the source as they
    // are: asking for `yuv420p` would make ffmpeg squeeze them into 16..235 a second time.
    let decoded_fmt = if enc.format == "mjpeg" {
        "yuvj420p"
    } else {
        "yuv420p"
    };
    let mut decoder = Command::new(ffmpeg)
        .args(["-hide_banner", "-nostdin", "-v", "error", "-f", enc.format])
        .arg("-i")
        .arg(&enc.path)
        // One picture out per access unit or JPEG, none duplicated or dropped.
        .args(["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt"])
        .args([decoded_fmt, "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffmpeg to decode");
    let mut meter = Command::new(ffmpeg)
        .args(["-hide_banner", "-nostats"])
        .args(raw_input_args())
        .args(["-i", "pipe:0"])
        .args(raw_input_args())
        .arg("-i")
        .arg(&clip.raw)
        .args(["-lavfi", METER_GRAPH, "-f", "null", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffmpeg to measure");

    // Both ffmpegs' stderr is drained by threads so neither can block on a full pipe.
    let drain = |r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(r).read_to_string(&mut s);
            s
        })
    };
    let dec_err = drain(Box::new(decoder.stderr.take().expect("piped")));
    let meter_err = drain(Box::new(meter.stderr.take().expect("piped")));
    let mut pictures = decoder.stdout.take().expect("piped");
    let mut to_meter = meter.stdin.take().expect("piped");
    let mut current = vec![0u8; FRAME_LEN];
    let mut decoded = 0usize;
    for (i, &coded) in enc.coded.iter().enumerate() {
        if coded {
            if let Err(e) = pictures.read_exact(&mut current) {
                panic!(
                    "{}: ffmpeg gave {decoded} pictures, frame {i} needs one more ({e}): {}",
                    enc.path.display(),
                    dec_err.join().unwrap_or_default()
                );
            }
            decoded += 1;
        }
        to_meter
            .write_all(&current)
            .expect("feed the measuring ffmpeg");
    }
    drop(to_meter);
    let mut rest = Vec::new();
    let _ = pictures.read_to_end(&mut rest);
    let dec_status = decoder.wait().expect("wait for the decoder");
    let dec_err = dec_err.join().unwrap_or_default();
    assert!(
        dec_status.success() && rest.is_empty(),
        "{}: decoding failed ({dec_status}) or gave {} extra bytes: {dec_err}",
        enc.path.display(),
        rest.len()
    );
    let meter_status = meter.wait().expect("wait for the measuring ffmpeg");
    let report = meter_err.join().unwrap_or_default();
    assert!(meter_status.success(), "measuring failed: {report}");
    parse_quality(&report).unwrap_or_else(|| panic!("no SSIM/PSNR summary in: {report}"))
}

/// The summary lines ffmpeg's filters print when they end:
///
/// ```text
/// [Parsed_ssim_0 @ 0x…] SSIM Y:0.986763 (18.782244) U:0.840853 (7.98) V:0.833365 (7.78) All:0.936879 (11.998242)
/// [Parsed_psnr_1 @ 0x…] PSNR y:28.676533 u:27.388473 v:26.909543 average:28.102814 min:28.09 max:28.11
/// ```
fn parse_quality(report: &str) -> Option<Quality> {
    let value = |line: &str, key: &str| -> Option<f64> {
        let rest = line.split(key).nth(1)?;
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(rest.len());
        // `inf` when identical: keep it, it reads as such.
        if rest.starts_with("inf") {
            return Some(f64::INFINITY);
        }
        rest[..end].parse().ok()
    };
    let ssim = report.lines().find(|l| l.contains("] SSIM "))?;
    let psnr = report.lines().find(|l| l.contains("] PSNR "))?;
    Some(Quality {
        ssim_all: value(ssim, "All:")?,
        ssim_y: value(ssim, " Y:")?,
        psnr_y: value(psnr, " y:")?,
        psnr_avg: value(psnr, "average:")?,
    })
}

// ---------------------------------------------------------------------------------------
// Rows, sweep and verdict

struct Row {
    input: &'static str,
    codec: String,
    target_bps: Option<u32>,
    coded: usize,
    frames: usize,
    kbps: f64,
    quality: Quality,
}

impl Row {
    fn new(clip: &Clip, codec: String, enc: &Encoded, quality: Quality) -> Row {
        Row {
            input: clip.name,
            codec,
            target_bps: enc.target_bps,
            coded: enc.coded.iter().filter(|&&c| c).count(),
            frames: clip.frames,
            kbps: enc.bytes as f64 * 8.0 / clip.seconds as f64 / 1000.0,
            quality,
        }
        .announce(enc)
    }

    fn announce(self, enc: &Encoded) -> Row {
        println!(
            "  {}: {} ({} bytes, {:.2} ms/frame to encode)",
            self.codec,
            enc.path.display(),
            enc.bytes,
            enc.encode_ms
        );
        self
    }

    fn print_progress(&self) {
        let q = &self.quality;
        println!(
            "    {:.0} kbit/s, {}/{} frames coded, PSNR Y {:.2} dB (avg {:.2}), SSIM All {:.4} \
             (Y {:.4})",
            self.kbps, self.coded, self.frames, q.psnr_y, q.psnr_avg, q.ssim_all, q.ssim_y
        );
    }

    fn print_row(&self, jpeg_kbps: f64) {
        let q = &self.quality;
        let kib_per_frame = self.kbps * 1000.0 / 8.0 / FPS as f64 / 1024.0;
        let ratio = if self.target_bps.is_none() {
            "1".to_string()
        } else {
            format!("{:.1}", jpeg_kbps / self.kbps)
        };
        println!(
            "| {} | {} | {}/{} | {:.0} | {:.1} | {ratio} | {:.2} | {:.2} | {:.4} | {:.4} |",
            self.input,
            self.codec,
            self.coded,
            self.frames,
            self.kbps,
            kib_per_frame,
            q.psnr_y,
            q.psnr_avg,
            q.ssim_all,
            q.ssim_y
        );
    }
}

/// Encodes and measures H.264 at more bitrates until two bracket MJPEG's SSIM closely (or the
/// budget of [`SWEEP_POINTS`] is spent). The first new point is the bitrate of the goal,
/// MJPEG's ÷ [`GOAL`]: whether H.264 reaches MJPEG's SSIM there decides whether any default
/// could meet the goal. Returns every point, the default's included, by bitrate.
fn sweep_bitrate(
    ffmpeg: &std::ffi::OsStr,
    clip: &Clip,
    dir: &Path,
    gop_s: u32,
    jpeg: &Row,
    default: &Row,
    default_bps: u32,
) -> Vec<Row> {
    let target = jpeg.quality.ssim_all;
    let clamp = |bps: f64| (bps.round() as u32).clamp(BITRATE_RANGE.0, BITRATE_RANGE.1);
    let goal_bps = clamp(jpeg.kbps * 1000.0 / GOAL);
    let mut points = vec![Row {
        codec: default.codec.clone(),
        ..*default
    }];
    let mut next = Some(goal_bps).filter(|&b| b != default_bps);
    while let Some(bps) = next {
        if points.len() >= SWEEP_POINTS || points.iter().any(|p| p.target_bps == Some(bps)) {
            break;
        }
        let enc = clip.encode_h264(dir, bps, gop_s);
        let q = measure(ffmpeg, clip, &enc);
        let row = Row::new(clip, format!("H.264 {}k", bps / 1000), &enc, q);
        row.print_progress();
        points.push(row);
        points.sort_by_key(|p| p.target_bps);
        let below = points.iter().rev().find(|p| p.quality.ssim_all < target);
        let above = points.iter().find(|p| p.quality.ssim_all >= target);
        let bps_of = |p: &Row| p.target_bps.expect("H.264 rows have a target") as f64;
        next = match (below, above) {
            (Some(lo), Some(hi))
                if bps_of(hi) / bps_of(lo) > SWEEP_CLOSE && bps_of(hi) > bps_of(lo) =>
            {
                Some(clamp((bps_of(lo) * bps_of(hi)).sqrt()))
            }
            (Some(lo), None) if bps_of(lo) < BITRATE_RANGE.1 as f64 => {
                Some(clamp(bps_of(lo) * 2.0))
            }
            (None, Some(hi)) if bps_of(hi) > BITRATE_RANGE.0 as f64 => {
                Some(clamp(bps_of(hi) / 2.0))
            }
            _ => None,
        };
    }
    points
}

/// What one input says about the goal.
struct Verdict {
    text: String,
}

impl Verdict {
    fn new(input: &str, jpeg: &Row, h264: &Row, default_bps: u32, sweep: &[Row]) -> Verdict {
        let target = jpeg.quality.ssim_all;
        let ratio = jpeg.kbps / h264.kbps;
        let mut text = format!(
            "{input}: at the defaults MJPEG {:.0} kbit/s, SSIM {:.4}; H.264 {:.0} kbit/s \
             (target {} k), SSIM {:.4}: {ratio:.1}x fewer bytes, SSIM {} MJPEG's. ",
            jpeg.kbps,
            target,
            h264.kbps,
            default_bps / 1000,
            h264.quality.ssim_all,
            if h264.quality.ssim_all >= target {
                "equal or better than"
            } else {
                "below"
            }
        );
        if ratio >= GOAL && h264.quality.ssim_all >= target {
            text += "The goal holds.";
            return Verdict { text };
        }
        text += "The goal does NOT hold at the defaults. ";
        let below = sweep.iter().rev().find(|p| p.quality.ssim_all < target);
        let above = sweep.iter().find(|p| p.quality.ssim_all >= target);
        match (below, above) {
            (_, Some(hi)) => {
                // Interpolated on log(bitrate): SSIM grows about linearly with it here.
                let reach = match below {
                    Some(lo) if lo.kbps < hi.kbps => {
                        let f = (target - lo.quality.ssim_all)
                            / (hi.quality.ssim_all - lo.quality.ssim_all);
                        (lo.kbps.ln() + f * (hi.kbps.ln() - lo.kbps.ln())).exp()
                    }
                    _ => hi.kbps,
                };
                text += &format!(
                    "H.264 reaches MJPEG's SSIM at about {reach:.0} kbit/s (interpolated; \
                     measured: {} at {:.0} kbit/s, SSIM {:.4}), {:.1}x fewer bytes than MJPEG: \
                     the goal {} with a higher bitrate.",
                    hi.codec,
                    hi.kbps,
                    hi.quality.ssim_all,
                    jpeg.kbps / reach,
                    if jpeg.kbps / reach >= GOAL {
                        "could be met"
                    } else {
                        "cannot be met even"
                    }
                );
            }
            (Some(lo), None) => {
                text += &format!(
                    "H.264 does not reach MJPEG's SSIM in the sweep: {} gave {:.0} kbit/s, \
                     SSIM {:.4}.",
                    lo.codec, lo.kbps, lo.quality.ssim_all
                );
            }
            (None, None) => text += "No sweep was run.",
        }
        Verdict { text }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
