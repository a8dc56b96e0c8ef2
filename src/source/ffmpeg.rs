//! Anything ffmpeg can read (RTSP, RTMP, HTTP-FLV, HLS, files, an X11 screen) through a
//! supervised `ffmpeg` child process.
//!
//! ffmpeg decodes the input, scales it into the configured frame size (letterboxed, aspect
//! kept), caps the frame rate and writes raw I420 frames to its stdout; this source reads
//! them into pooled buffers for the encoder pool. The child runs only while someone watches.
//!
//! With `passthrough = true` the input is probed first (ffprobe, with the same network
//! options; once, and again after a failure) and what it carries decides:
//! - MJPEG: ffmpeg copies the JPEGs (`-c:v copy -f mpjpeg`) and they are passed on untouched;
//! - H.264: the same ffmpeg has two outputs, the decoded frames on stdout as without
//!   pass-through (for the JPEG viewers), and the input's own access units copied to its fd 3
//!   (Annex B, a delimiter in front of each unit and SPS/PPS in front of each keyframe; split
//!   by [`super::annexb`]). Those go to the stream's H.264 track as they are, and the
//!   pipeline runs no H.264 encoder for the stream: the decode still runs while the source
//!   runs, the encode (the expensive part) does not;
//! - anything else: decoded and encoded like without pass-through, with a warning.
//!
//! The child is supervised by [`FfmpegChild`] (its own process group, SIGKILL when picamd
//! dies, killed and reaped on drop); its outputs are read with `poll(2)` timeouts, so demand,
//! shutdown and stalls are noticed even when ffmpeg writes nothing.
//!
//! Failures (ffmpeg exiting, no frames, an H.264 output that is not what was asked for) are
//! returned as [`SourceError::Failed`] with the reason and ffmpeg's last message; the
//! supervisor restarts the source with backoff and its watchdog shows viewers "no signal"
//! meanwhile.
//!
//! A file that is not looped plays once per viewing session: at its end viewers see "no
//! signal" with the reason ("end of file …"), and the next session (after everyone left)
//! plays it again from the start.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ChildStdout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use bytes::Bytes;

use super::annexb::AuSplitter;
use super::i420::{i420_len, BufferPool, PooledI420};
use super::multipart::{SplitLimits, Splitter};
use super::{Source, SourceContext, SourceError};
use crate::ffmpeg_child::{
    ffmpeg_program, ffprobe_program, redact_url, url_password, Feed, FfmpegChild, FFMPEG_ENV,
};
use crate::frame::{AccessUnit, CaptureTime, Frame, H264Supply, Payload, SourceInfo};

/// Settings for [`FfmpegSource`].
#[derive(Debug, Clone, Copy)]
pub struct FfmpegOptions {
    /// Frame size delivered to the encoders (the input is scaled to fit).
    pub width: u32,
    pub height: u32,
    /// Most frames per second taken from the input.
    pub fps: u32,
    /// Files only: start again at the end.
    pub looping: bool,
    /// Copy the input's video instead of encoding it again when it is MJPEG (its JPEGs) or
    /// H.264 (its access units, beside the decoded frames).
    pub passthrough: bool,
    /// Largest JPEG accepted in pass-through mode.
    pub max_frame_bytes: usize,
}

/// Network I/O timeout handed to ffmpeg. picamd restarts ffmpeg itself, so ffmpeg should give
/// up on a dead peer rather than wait or reconnect on its own.
const NETWORK_TIMEOUT_US: u64 = 10_000_000;
/// How long ffmpeg probes a live input before starting (µs).
const ANALYZE_US: &str = "1000000";
/// Longest wait for the first frame: RTSP negotiation and HLS playlists are slow to start.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(20);
/// After the first frame, a stall is this many frame intervals without a frame, at least
/// [`STALL_MIN`].
const STALL_INTERVALS: u32 = 5;
const STALL_MIN: Duration = Duration::from_secs(5);
/// Bytes read from ffmpeg at a time in MJPEG pass-through.
const MJPEG_READ_CHUNK: usize = 64 * 1024;
/// Longest single `poll(2)`: bounds how late demand loss and shutdown are noticed.
const POLL_SLICE: Duration = Duration::from_millis(200);
/// Time ffmpeg gets to exit by itself after closing its stdout.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How often an X11 screen's server is checked (a socket connect, microseconds): how late
/// "no signal" comes after the X server dies.
const X11_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How ffmpeg should treat an input, from its form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputKind {
    Rtsp,
    Hls,
    /// Any other `scheme://` input (RTMP, HTTP-FLV, SRT, UDP, …).
    Network,
    /// A local file (or anything without a URL scheme).
    File,
    /// An X11 display (`:0`, `host:1.0`), grabbed with `-f x11grab`; never guessed from
    /// the input's form, only made by [`FfmpegSource::x11`].
    X11,
}

fn input_kind(input: &str) -> InputKind {
    let Some((scheme, rest)) = input.split_once("://") else {
        return InputKind::File;
    };
    let scheme = scheme.to_ascii_lowercase();
    if !scheme
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '+')
        || scheme.is_empty()
    {
        return InputKind::File;
    }
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    match scheme.as_str() {
        "rtsp" | "rtsps" => InputKind::Rtsp,
        "file" => InputKind::File,
        "http" | "https" if path.to_ascii_lowercase().ends_with(".m3u8") => InputKind::Hls,
        _ => InputKind::Network,
    }
}

/// What ffmpeg writes for picamd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// The input decoded, scaled and rate-capped: raw I420 frames on stdout.
    Raw,
    /// Pass-through of an MJPEG input: its JPEGs copied, as multipart, on stdout.
    CopyMjpeg,
    /// Pass-through of an H.264 input: raw frames on stdout as [`Output::Raw`] (for the JPEG
    /// viewers), and the input's own access units copied, Annex B, on fd 3.
    RawAndH264,
}

/// The bitstream filters for the H.264 copy, in this order (checked with Debian's ffmpeg
/// 5.1): `h264_mp4toannexb` turns length-prefixed input (MP4, FLV/RTMP, MKV) into Annex B
/// and leaves Annex B input (RTSP, MPEG-TS) alone; it must come first, because the raw H.264
/// muxer would otherwise insert it last, after `dump_extra` had put the length-prefixed
/// (avcC) parameter sets in front of keyframes. `dump_extra` puts the stream's SPS and PPS
/// (its extradata, e.g. RTSP's sprop-parameter-sets) in front of every keyframe, for
/// cameras that send them only once. `h264_metadata` comes last so that its delimiter is
/// the first NAL unit of each access unit, in front of those parameter sets.
const H264_BSF: &str = "h264_mp4toannexb,dump_extra=freq=keyframe,h264_metadata=aud=insert";

/// The options ffmpeg (or, with `probe`, ffprobe) reads `input` of `kind` with, up to and
/// including `-i INPUT`. ffprobe gets the same network options but does not play files in
/// real time or loop them.
fn input_args(input: &str, kind: InputKind, o: &FfmpegOptions, probe: bool) -> Vec<String> {
    let mut args = Vec::new();
    let timeout = NETWORK_TIMEOUT_US.to_string();
    if matches!(kind, InputKind::Rtsp | InputKind::Hls | InputKind::Network) {
        // Live streams often announce an audio track that never comes (nginx-rtmp's HLS
        // always does); ffmpeg would wait its default 5 s for it before starting.
        args.extend(["-analyzeduration", ANALYZE_US].map(String::from));
    }
    match kind {
        InputKind::Rtsp => {
            // TCP: no UDP ports to open, no packet loss on busy Wi-Fi. RTSP's own `timeout`
            // (socket I/O, µs) rather than `rw_timeout`, which the RTSP demuxer ignores.
            args.extend(["-rtsp_transport", "tcp", "-timeout", &timeout].map(String::from));
        }
        InputKind::Hls => {
            // Start at the newest segment, not three back: less delay behind live.
            args.extend(["-rw_timeout", &timeout, "-live_start_index", "-1"].map(String::from));
        }
        InputKind::Network => {
            args.extend(["-rw_timeout", &timeout].map(String::from));
        }
        InputKind::File if probe => {}
        InputKind::File => {
            // A file would otherwise be decoded as fast as possible; `-re` plays it in real
            // time, like a camera.
            args.push("-re".into());
            if o.looping {
                args.extend(["-stream_loop", "-1"].map(String::from));
            }
        }
        InputKind::X11 => {
            // Grab at the configured rate (x11grab paces itself), without the mouse pointer:
            // a screen shown as a camera is watched, not operated, and a pointer would
            // otherwise sit wherever it was left.
            let fps = o.fps.max(1).to_string();
            args.extend(
                ["-f", "x11grab", "-framerate", &fps, "-draw_mouse", "0"].map(String::from),
            );
        }
    }
    args.extend(["-i".to_owned(), input.to_owned()]);
    args
}

/// The whole ffmpeg command line (without the program) for `input` of `kind`, writing
/// `output`.
fn ffmpeg_args(input: &str, kind: InputKind, o: &FfmpegOptions, output: Output) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
    ]
    .map(String::from)
    .to_vec();
    // ffmpeg 5.1 flushes a stream copy's bitstream filters at every `-stream_loop` turn and
    // then refuses every later packet ("A non-NULL packet sent after an EOF"): the H.264 copy
    // would stop after the first pass. Such a file is looped by starting ffmpeg again.
    let o = &FfmpegOptions {
        looping: o.looping && !loops_by_restart(kind, o, output),
        ..*o
    };
    args.extend(input_args(input, kind, o, false));
    let raw = [
        "-vf".to_owned(),
        video_filter(o.width, o.height, o.fps),
        // Without this, rawvideo output is constant-rate: ffmpeg would duplicate the frames
        // the filter dropped, and fill stream gaps with bursts of copies.
        "-fps_mode".to_owned(),
        "passthrough".to_owned(),
        "-pix_fmt".to_owned(),
        "yuv420p".to_owned(),
        "-f".to_owned(),
        "rawvideo".to_owned(),
        "pipe:1".to_owned(),
    ];
    match output {
        Output::Raw => {
            args.extend(["-an", "-sn", "-dn"].map(String::from));
            args.extend(raw);
        }
        Output::CopyMjpeg => {
            args.extend(["-an", "-sn", "-dn"].map(String::from));
            args.extend(["-c:v", "copy", "-f", "mpjpeg", "pipe:1"].map(String::from));
        }
        Output::RawAndH264 => {
            // Both outputs take the first video stream, the one ffprobe looked at (without
            // `-map` each output would pick the "best" stream by itself).
            args.extend(["-map", "0:v:0"].map(String::from));
            args.extend(raw);
            args.extend(
                [
                    "-map",
                    "0:v:0",
                    "-c:v",
                    "copy",
                    "-bsf:v",
                    H264_BSF,
                    // Each access unit is written out as soon as it is muxed, not when
                    // ffmpeg's 32 KiB output buffer fills.
                    "-flush_packets",
                    "1",
                    "-f",
                    "h264",
                    "pipe:3",
                ]
                .map(String::from),
            );
        }
    }
    args
}

/// Whether a looped file is played again by a new ffmpeg rather than `-stream_loop`.
fn loops_by_restart(kind: InputKind, o: &FfmpegOptions, output: Output) -> bool {
    kind == InputKind::File && o.looping && output == Output::RawAndH264
}

/// ffprobe's command line (without the program): the codec and size of `input`'s first
/// video stream, one `key=value` per line.
fn ffprobe_args(input: &str, kind: InputKind, o: &FfmpegOptions) -> Vec<String> {
    let mut args: Vec<String> = ["-hide_banner", "-loglevel", "error"]
        .map(String::from)
        .to_vec();
    args.extend(input_args(input, kind, o, true));
    args.extend(
        [
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "default=noprint_wrappers=1",
        ]
        .map(String::from),
    );
    args
}

/// What ffprobe found in the input's first video stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    /// ffmpeg's codec name: `h264`, `mjpeg`, `hevc`, …
    codec: String,
    width: u32,
    height: u32,
}

/// Reads ffprobe's `key=value` lines; no `codec_name` means the input has no video.
fn parse_probe(text: &str) -> Result<Probe, String> {
    let mut probe = Probe {
        codec: String::new(),
        width: 0,
        height: 0,
    };
    for line in text.lines() {
        match line.trim().split_once('=') {
            Some(("codec_name", v)) => v.clone_into(&mut probe.codec),
            Some(("width", v)) => probe.width = v.parse().unwrap_or(0),
            Some(("height", v)) => probe.height = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    if probe.codec.is_empty() {
        return Err("ffprobe found no video stream in the input".into());
    }
    Ok(probe)
}

/// What ffmpeg writes, and who makes the stream's H.264, for an input whose first video
/// stream ffprobe found to be `codec` (only probed with pass-through asked for).
fn output_for(passthrough: bool, codec: Option<&str>) -> (Output, H264Supply) {
    match (passthrough, codec) {
        (true, Some("h264")) => (Output::RawAndH264, H264Supply::Source),
        (true, Some("mjpeg")) => (Output::CopyMjpeg, H264Supply::Encoder),
        (true, Some(other)) => (
            Output::Raw,
            H264Supply::EncoderInstead(format!(
                "the input is {other}, which cannot be passed through (only H.264 and MJPEG \
                 can): it is decoded and encoded again"
            )),
        ),
        _ => (Output::Raw, H264Supply::Encoder),
    }
}

/// Caps the rate, then scales into `width`×`height` keeping the aspect ratio (black bars).
///
/// The cap keeps the first frame of each 1/`fps` time slot and drops the rest, so a slower
/// input passes unchanged (the `fps` filter would duplicate frames up to the rate), and a
/// timestamp jump (a restarted stream) starts a new slot instead of freezing the output.
/// Frames without timestamps compare unequal (NaN) and all pass. Dropping before scaling
/// saves the scaling of frames that would be thrown away.
fn video_filter(width: u32, height: u32, fps: u32) -> String {
    let fps = fps.max(1);
    format!(
        "select='not(eq(floor(t*{fps}),floor(prev_selected_t*{fps})))',\
         scale={width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2\
         :flags=bilinear,\
         pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1"
    )
}

pub struct FfmpegSource {
    input: String,
    kind: InputKind,
    options: FfmpegOptions,
    pool: BufferPool,
    /// With pass-through: what ffprobe found, kept across viewing sessions and dropped
    /// after a failure (the camera may have been set to another codec).
    probed: Option<Probe>,
    /// Sequence numbers of passed-through access units, for the source's life.
    units: AtomicU64,
}

/// The most bytes one passed-through access unit may have. 4 MiB is the hub's whole GOP
/// cache (a unit larger than that could not be kept with its GOP) and 10 times a big real
/// keyframe (1080p at 4 Mbit/s: 100-300 KB; 4K at 20 Mbit/s: 1-2 MB); the splitter's buffer
/// never holds more than this plus one read.
const MAX_ACCESS_UNIT: usize = 4 << 20;
/// Bytes read from ffmpeg's H.264 output at a time.
const H264_READ_CHUNK: usize = 64 * 1024;
/// Most bytes of ffprobe's answer read (it is a few lines).
const PROBE_OUTPUT_MAX: usize = 64 * 1024;

impl FfmpegSource {
    pub fn new(input: String, options: FfmpegOptions) -> Self {
        let kind = input_kind(&input);
        Self::with_kind(input, kind, options)
    }

    /// The X11 display `display` (`:0`, `host:1.0`), grabbed whole and scaled into the frame
    /// like any input; `passthrough` and `looping` do not apply.
    pub fn x11(display: String, options: FfmpegOptions) -> Self {
        let options = FfmpegOptions {
            passthrough: false,
            looping: false,
            ..options
        };
        Self::with_kind(display, InputKind::X11, options)
    }

    fn with_kind(input: String, kind: InputKind, options: FfmpegOptions) -> Self {
        let pool = BufferPool::new(options.width as usize, options.height as usize);
        FfmpegSource {
            input,
            kind,
            options,
            pool,
            probed: None,
            units: AtomicU64::new(0),
        }
    }

    fn redactions(&self) -> Vec<String> {
        url_password(&self.input)
            .into_iter()
            .map(Into::into)
            .collect()
    }

    fn start(&self, output: Output) -> Result<FfmpegChild, SourceError> {
        let program = ffmpeg_program();
        let args = ffmpeg_args(&self.input, self.kind, &self.options, output);
        tracing::debug!(
            program = %program.to_string_lossy(),
            args = %redact_url(&args.join(" ")),
            "starting ffmpeg"
        );
        let feed = match output {
            Output::RawAndH264 => Feed::ReadsTwo,
            Output::Raw | Output::CopyMjpeg => Feed::Reads,
        };
        FfmpegChild::spawn_with(&program, &args, self.redactions(), feed)
            .map_err(|e| not_started(e, &program))
    }

    /// Asks ffprobe what the input's first video stream is. `Ok(None)`: stopped waiting for
    /// it (shutdown, or nobody watches any more).
    fn probe(&self, ctx: &SourceContext) -> Result<Option<Probe>, SourceError> {
        let program = ffprobe_program();
        let args = ffprobe_args(&self.input, self.kind, &self.options);
        tracing::debug!(
            program = %program.to_string_lossy(),
            args = %redact_url(&args.join(" ")),
            "probing the input"
        );
        let mut child = FfmpegChild::spawn(&program, &args, self.redactions())
            .map_err(|e| not_started(e, &program))?;
        let mut stdout = child.take_stdout();
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        loop {
            match wait_readable(ctx, &[stdout.as_fd()], POLL_SLICE)? {
                Readiness::Readable(_) => {}
                Readiness::Shutdown | Readiness::NoDemand => {
                    child.hush();
                    return Ok(None);
                }
                Readiness::Timeout if started.elapsed() <= FIRST_FRAME_TIMEOUT => continue,
                Readiness::Timeout => {
                    child.hush();
                    return Err(SourceError::Failed(with_last_line(
                        format!(
                            "ffprobe found nothing within {} s",
                            FIRST_FRAME_TIMEOUT.as_secs()
                        ),
                        &child.last_stderr_line(),
                    )));
                }
            }
            let Some(n) = read_output(&mut stdout, &mut buf)? else {
                continue;
            };
            if n == 0 {
                break;
            }
            if text.len() + n > PROBE_OUTPUT_MAX {
                child.hush();
                return Err(SourceError::Failed(format!(
                    "ffprobe wrote more than {PROBE_OUTPUT_MAX} bytes"
                )));
            }
            text.extend_from_slice(&buf[..n]);
        }
        drop(stdout);
        let status = child.wait_exit(EXIT_GRACE);
        if !status.is_some_and(|s| s.success()) {
            let what = status.map_or("did not exit".into(), |s| format!("exited ({s})"));
            return Err(SourceError::Failed(with_last_line(
                format!("ffprobe {what}"),
                &child.last_stderr_line(),
            )));
        }
        parse_probe(&String::from_utf8_lossy(&text))
            .map(Some)
            .map_err(SourceError::Failed)
    }

    /// What ffmpeg is to write this run. With pass-through, probes the input first (once
    /// per failure-free stretch) and tells the pipeline who makes the H.264. `Ok(None)`:
    /// the probe was given up (shutdown, no demand).
    fn choose_output(&mut self, ctx: &SourceContext) -> Result<Option<Output>, SourceError> {
        if !self.may_supply_h264() {
            return Ok(Some(Output::Raw));
        }
        if self.probed.is_none() {
            let Some(probe) = self.probe(ctx)? else {
                return Ok(None);
            };
            tracing::info!(
                input = %redact_url(&self.input),
                codec = %probe.codec,
                size = %format_args!("{}x{}", probe.width, probe.height),
                "probed the pass-through input"
            );
            if let (_, H264Supply::EncoderInstead(why)) = output_for(true, Some(&probe.codec)) {
                tracing::warn!(input = %redact_url(&self.input), "passthrough: {why}");
            }
            self.probed = Some(probe);
        }
        let codec = self.probed.as_ref().map(|p| p.codec.as_str());
        let (output, supply) = output_for(true, codec);
        ctx.supply_h264(supply);
        Ok(Some(output))
    }

    /// Reads raw frames from `child` and emits them until demand ends, shutdown, the end of
    /// a file, or a failure; with `h264` (ffmpeg's fd 3), emits its access units too.
    fn stream_raw(
        &self,
        ctx: &mut SourceContext,
        child: &mut FfmpegChild,
        mut h264: Option<H264Pipe>,
    ) -> Result<Ended, SourceError> {
        let frame_len = i420_len(self.options.width as usize, self.options.height as usize);
        let mut stdout = child.take_stdout();
        let mut pending: Option<(PooledI420, usize)> = None;
        let mut frames = 0u64;
        let mut last_frame = Instant::now();
        let mut x11_checked = Instant::now();
        loop {
            if self.kind == InputKind::X11 && x11_checked.elapsed() >= X11_CHECK_EVERY {
                x11_checked = Instant::now();
                if let Some(Err(e)) = super::screen::x11_server_answers(&self.input) {
                    child.hush();
                    return Err(SourceError::Failed(format!(
                        "the X display {} went away ({e})",
                        self.input
                    )));
                }
            }
            if let Some(pipe) = &h264 {
                if let Err(why) = pipe.check_stall(self.stall_limit()) {
                    child.hush();
                    return Err(SourceError::Failed(with_last_line(
                        why,
                        &child.last_stderr_line(),
                    )));
                }
            }
            let open_h264 = h264.as_ref().filter(|p| p.open);
            let ready = {
                let mut fds = vec![stdout.as_fd()];
                fds.extend(open_h264.map(|p| p.file.as_fd()));
                match self.wait_output(ctx, child, &fds, frames, last_frame)? {
                    Step::Stop(ended) => return Ok(ended),
                    Step::Wait => continue,
                    Step::Read(ready) => ready,
                }
            };
            if ready[1] {
                if let Some(pipe) = h264.as_mut() {
                    if let Err(e) = pipe.read(ctx, &self.units) {
                        child.hush();
                        return Err(e);
                    }
                }
            }
            if !ready[0] {
                continue;
            }
            let (buf, filled) = pending.get_or_insert_with(|| (self.pool.take(), 0));
            let Some(n) = read_output(&mut stdout, &mut buf.as_mut_slice()[*filled..frame_len])?
            else {
                continue;
            };
            if n == 0 {
                // ffmpeg closed its output: it is exiting (or exited). A partial frame is
                // dropped.
                drop(stdout);
                return self.ended(child, h264.is_some());
            }
            *filled += n;
            if *filled < frame_len {
                continue;
            }
            let (buf, _) = pending.take().expect("just filled");
            frames += 1;
            last_frame = Instant::now();
            if frames == 1 {
                tracing::debug!(input = %redact_url(&self.input), "first frame from ffmpeg");
            }
            let captured = CaptureTime::now();
            let seq = ctx.next_seq();
            ctx.emit(Frame {
                seq,
                captured,
                width: self.options.width,
                height: self.options.height,
                no_signal: false,
                payload: Payload::Yuv420(std::sync::Arc::new(buf)),
            });
        }
    }

    /// After the first frame, how long without one is a stall.
    fn stall_limit(&self) -> Duration {
        let interval = Duration::from_secs_f64(1.0 / self.options.fps.max(1) as f64);
        (interval * STALL_INTERVALS).max(STALL_MIN)
    }

    /// Waits a little for ffmpeg's output on `fds` (stdout first), and turns shutdown, the
    /// end of demand and a silent ffmpeg into the end of streaming (the first two) or a
    /// failure (the third).
    fn wait_output(
        &self,
        ctx: &SourceContext,
        child: &FfmpegChild,
        fds: &[BorrowedFd<'_>],
        frames: u64,
        last_frame: Instant,
    ) -> Result<Step, SourceError> {
        match wait_readable(ctx, fds, POLL_SLICE)? {
            Readiness::Readable(ready) => Ok(Step::Read(ready)),
            Readiness::Shutdown => {
                child.hush();
                Ok(Step::Stop(Ended::Shutdown))
            }
            Readiness::NoDemand => {
                child.hush();
                Ok(Step::Stop(Ended::NoDemand))
            }
            Readiness::Timeout => {
                let (limit, what) = if frames == 0 {
                    (FIRST_FRAME_TIMEOUT, "of starting it")
                } else {
                    (self.stall_limit(), "of the previous one")
                };
                if last_frame.elapsed() <= limit {
                    return Ok(Step::Wait);
                }
                child.hush();
                Err(SourceError::Failed(with_last_line(
                    format!("no frame from ffmpeg within {} s {what}", limit.as_secs()),
                    &child.last_stderr_line(),
                )))
            }
        }
    }

    /// Pass-through: reads ffmpeg's multipart MJPEG (`-c:v copy -f mpjpeg`) and emits its
    /// JPEGs as they are, with the same stop and stall rules as [`Self::stream_raw`].
    fn stream_mjpeg(
        &self,
        ctx: &mut SourceContext,
        child: &mut FfmpegChild,
    ) -> Result<Ended, SourceError> {
        let mut stdout = child.take_stdout();
        let mut splitter = Splitter::new(
            None,
            SplitLimits {
                max_frame_bytes: self.options.max_frame_bytes,
            },
        );
        let mut buf = vec![0u8; MJPEG_READ_CHUNK];
        let mut jpegs: Vec<Bytes> = Vec::new();
        let mut frames = 0u64;
        let mut last_frame = Instant::now();
        loop {
            match self.wait_output(ctx, child, &[stdout.as_fd()], frames, last_frame)? {
                Step::Stop(ended) => return Ok(ended),
                Step::Wait => continue,
                Step::Read(_) => {}
            }
            let Some(n) = read_output(&mut stdout, &mut buf)? else {
                continue;
            };
            if n == 0 {
                drop(stdout);
                return self.ended(child, false);
            }
            let fed = splitter.feed(&buf[..n], |jpeg| jpegs.push(jpeg));
            for jpeg in jpegs.drain(..) {
                if let Err(e) = ctx.emit_jpeg(jpeg) {
                    // The container held something that is not a whole JPEG: skip it, the
                    // stall rule catches an input that never has one.
                    tracing::debug!(error = %e, "ffmpeg pass-through: not a JPEG; skipped");
                    continue;
                }
                frames += 1;
                last_frame = Instant::now();
            }
            if let Err(e) = fed {
                child.hush();
                return Err(SourceError::Failed(format!(
                    "ffmpeg pass-through output: {e} (is the input MJPEG? set passthrough = false)"
                )));
            }
        }
    }

    /// What ffmpeg closing its output means, once it has exited (`h264`: it was copying
    /// H.264 too).
    fn ended(&self, child: &mut FfmpegChild, h264: bool) -> Result<Ended, SourceError> {
        let status = child.wait_exit(EXIT_GRACE);
        let last = child.last_stderr_line();
        let output = if h264 {
            Output::RawAndH264
        } else {
            Output::Raw
        };
        match status {
            Some(s) if s.success() => {
                if loops_by_restart(self.kind, &self.options, output) {
                    Ok(Ended::PlayAgain)
                } else if self.kind == InputKind::File && !self.options.looping {
                    Ok(Ended::EndOfFile)
                } else {
                    Err(SourceError::Failed(with_last_line(
                        "the stream ended (ffmpeg exited)".into(),
                        &last,
                    )))
                }
            }
            Some(s) => Err(SourceError::Failed(with_last_line(
                format!("ffmpeg exited ({s})"),
                &last,
            ))),
            None => Err(SourceError::Failed(with_last_line(
                "ffmpeg closed its output but did not exit".into(),
                &last,
            ))),
        }
    }

    /// One ffmpeg run after another while someone watches, until a failure or shutdown.
    fn run_sessions(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        let mut playing_on = false;
        loop {
            if !ctx.wait_for_demand() {
                return Ok(());
            }
            // A looped file started again is the same playback: viewers and `/state` need not
            // hear of it.
            if !std::mem::take(&mut playing_on) {
                ctx.mark_starting();
            }
            let Some(output) = self.choose_output(ctx)? else {
                if ctx.is_shutting_down() {
                    return Ok(());
                }
                continue;
            };
            // Dropping the child (any return below, or the end of this iteration) stops it.
            let mut child = self.start(output)?;
            let streamed = match output {
                Output::Raw => self.stream_raw(ctx, &mut child, None)?,
                Output::CopyMjpeg => self.stream_mjpeg(ctx, &mut child)?,
                Output::RawAndH264 => {
                    let size = self.probed.as_ref().map_or((0, 0), |p| (p.width, p.height));
                    let pipe = H264Pipe::new(child.take_fd3(), size);
                    self.stream_raw(ctx, &mut child, Some(pipe))?
                }
            };
            match streamed {
                Ended::Shutdown => return Ok(()),
                Ended::NoDemand => {
                    tracing::debug!("nobody watches: stopping ffmpeg");
                }
                Ended::PlayAgain => {
                    tracing::debug!("end of the looped file: playing it again");
                    playing_on = true;
                }
                Ended::EndOfFile => {
                    drop(child);
                    // The watchdog shows this to viewers as "no signal"; a new viewing
                    // session plays the file again.
                    ctx.mark_down(
                        "end of file; set loop = true (or --loop) to play it continuously".into(),
                    );
                    while ctx.has_demand() {
                        if ctx.sleep(POLL_SLICE) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// The error for a child that could not be started.
fn not_started(e: io::Error, program: &OsString) -> SourceError {
    let name = program.to_string_lossy();
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            SourceError::Unavailable(format!(
                "{name} not found or not executable ({e}); install the ffmpeg package \
                 (or set {FFMPEG_ENV} to its path)"
            ))
        }
        _ => SourceError::Failed(format!("cannot start {name}: {e}")),
    }
}

/// ffmpeg's H.264 output (fd 3 in the child) and the splitter that turns it into access
/// units.
struct H264Pipe {
    file: File,
    splitter: AuSplitter,
    buf: Vec<u8>,
    /// Until ffmpeg closes it (a closed pipe is polled no more: it would always be ready).
    open: bool,
    opened: Instant,
    last_unit: Option<Instant>,
}

impl H264Pipe {
    fn new(file: File, size: (u32, u32)) -> H264Pipe {
        H264Pipe {
            file,
            splitter: AuSplitter::new(MAX_ACCESS_UNIT, size),
            buf: vec![0; H264_READ_CHUNK],
            open: true,
            opened: Instant::now(),
            last_unit: None,
        }
    }

    /// One read; emits the units it completes.
    fn read(&mut self, ctx: &SourceContext, seq: &AtomicU64) -> Result<(), SourceError> {
        let n = match self.file.read(&mut self.buf) {
            Ok(0) => {
                self.open = false;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => {
                return Err(SourceError::Failed(format!(
                    "reading ffmpeg's H.264 output: {e}"
                )))
            }
        };
        let mut emitted = false;
        self.splitter
            .feed(&self.buf[..n], |u| {
                emitted = true;
                ctx.emit_h264(AccessUnit {
                    seq: seq.fetch_add(1, Ordering::Relaxed) + 1,
                    captured: CaptureTime::now(),
                    width: u.width,
                    height: u.height,
                    keyframe: u.keyframe,
                    data: u.data,
                    nals: u.nals,
                });
            })
            .map_err(|e| SourceError::Failed(format!("ffmpeg's H.264 output: {e}")))?;
        if emitted {
            self.last_unit = Some(Instant::now());
        }
        Ok(())
    }

    /// An error when ffmpeg has written no access unit for too long while the pipe is open
    /// (the decoded frames may still flow, so their own stall rule would not notice).
    fn check_stall(&self, limit: Duration) -> Result<(), String> {
        if !self.open {
            return Ok(());
        }
        let (since, limit, what) = match self.last_unit {
            None => (self.opened, FIRST_FRAME_TIMEOUT, "of starting it"),
            Some(t) => (t, limit, "of the previous one"),
        };
        if since.elapsed() <= limit {
            return Ok(());
        }
        Err(format!(
            "no H.264 access unit from ffmpeg within {} s {what}",
            limit.as_secs()
        ))
    }
}

/// One read of ffmpeg's output after `poll` said it is ready: `None` when a signal
/// interrupted it, `Some(0)` at the end.
fn read_output(stdout: &mut ChildStdout, buf: &mut [u8]) -> Result<Option<usize>, SourceError> {
    match stdout.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(SourceError::Failed(format!("reading ffmpeg's output: {e}"))),
    }
}

fn with_last_line(reason: String, last: &str) -> String {
    if last.is_empty() {
        reason
    } else {
        format!("{reason}: {last}")
    }
}

/// What to do after waiting for ffmpeg's output.
enum Step {
    /// Which of the polled descriptors are ready.
    Read([bool; 2]),
    Wait,
    Stop(Ended),
}

/// Why streaming from one ffmpeg child stopped without an error.
enum Ended {
    Shutdown,
    NoDemand,
    EndOfFile,
    /// A looped file ended that ffmpeg does not loop itself ([`loops_by_restart`]).
    PlayAgain,
}

enum Readiness {
    /// Which of (at most two) descriptors are readable, hung up or in error.
    Readable([bool; 2]),
    Timeout,
    NoDemand,
    Shutdown,
}

/// Waits up to `slice` for any of `fds` (at most two) to be readable (or hung up), checking
/// shutdown and demand first. Shared by every reader, whatever ffmpeg writes.
fn wait_readable(
    ctx: &SourceContext,
    fds: &[BorrowedFd<'_>],
    slice: Duration,
) -> Result<Readiness, SourceError> {
    if ctx.is_shutting_down() {
        return Ok(Readiness::Shutdown);
    }
    if !ctx.has_demand() {
        return Ok(Readiness::NoDemand);
    }
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .take(2)
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = PollTimeout::try_from(slice).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut polled, timeout) {
        Ok(0) | Err(Errno::EINTR) => Ok(Readiness::Timeout),
        // Readable, hung up or in error: the read that follows tells which.
        Ok(_) => {
            let mut ready = [false; 2];
            for (r, p) in ready.iter_mut().zip(&polled) {
                *r = p.revents().is_some_and(|e| !e.is_empty());
            }
            Ok(Readiness::Readable(ready))
        }
        Err(e) => Err(SourceError::Failed(format!(
            "waiting for ffmpeg's output: {e}"
        ))),
    }
}

impl Source for FfmpegSource {
    fn info(&self) -> SourceInfo {
        match self.kind {
            InputKind::X11 => SourceInfo {
                kind: "screen",
                name: format!("X11 display {}", self.input),
            },
            _ => SourceInfo {
                kind: "ffmpeg",
                name: redact_url(&self.input),
            },
        }
    }

    /// With `passthrough`: H.264 inputs are passed through (decided per run, by probing).
    fn may_supply_h264(&self) -> bool {
        self.options.passthrough && self.kind != InputKind::X11
    }

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        let result = self.run_sessions(ctx);
        if result.is_err() {
            // Probe again before the next run: a failure may mean the input changed.
            self.probed = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(looping: bool, passthrough: bool) -> FfmpegOptions {
        FfmpegOptions {
            width: 640,
            height: 360,
            fps: 15,
            looping,
            passthrough,
            max_frame_bytes: 1 << 20,
        }
    }

    const HEAD: &str = "-hide_banner -nostdin -nostats -loglevel warning";
    const VF: &str = "select='not(eq(floor(t*15),floor(prev_selected_t*15)))',\
        scale=640:360:force_original_aspect_ratio=decrease:force_divisible_by=2:flags=bilinear,\
        pad=640:360:(ow-iw)/2:(oh-ih)/2,setsar=1";
    const RAW_OUT: &str = "-fps_mode passthrough -pix_fmt yuv420p -f rawvideo pipe:1";

    /// The command line for what `o` alone decides (pass-through: as for an MJPEG input).
    fn line(input: &str, o: FfmpegOptions) -> String {
        let codec = o.passthrough.then_some("mjpeg");
        let (output, _) = output_for(o.passthrough, codec);
        ffmpeg_args(input, input_kind(input), &o, output).join(" ")
    }

    #[test]
    fn argument_lists_per_input_kind() {
        let rtsp = "rtsp://10.0.0.3:554/stream1";
        assert_eq!(
            line(rtsp, opts(false, false)),
            format!(
                "{HEAD} -analyzeduration 1000000 -rtsp_transport tcp -timeout 10000000 -i {rtsp} -an -sn -dn \
                 -vf {VF} {RAW_OUT}"
            )
        );
        for net in [
            "rtmp://127.0.0.1/live/cam",
            "http://h/live.flv",
            "srt://h:9000",
        ] {
            assert_eq!(
                line(net, opts(true, false)),
                format!("{HEAD} -analyzeduration 1000000 -rw_timeout 10000000 -i {net} -an -sn -dn -vf {VF} {RAW_OUT}"),
                "looping is for files only"
            );
        }
        let hls = "https://h/hls/index.M3U8?token=1";
        assert_eq!(
            line(hls, opts(false, false)),
            format!(
                "{HEAD} -analyzeduration 1000000 -rw_timeout 10000000 -live_start_index -1 -i {hls} -an -sn -dn \
                 -vf {VF} {RAW_OUT}"
            )
        );
        for file in ["/var/lib/picamd/a.mp4", "./clip.mkv", "anullsrc"] {
            assert_eq!(
                line(file, opts(false, false)),
                format!("{HEAD} -re -i {file} -an -sn -dn -vf {VF} {RAW_OUT}")
            );
            assert_eq!(
                line(file, opts(true, false)),
                format!("{HEAD} -re -stream_loop -1 -i {file} -an -sn -dn -vf {VF} {RAW_OUT}")
            );
        }
        // The filter is one argument, whatever the shell would make of it.
        let args = ffmpeg_args(rtsp, InputKind::Rtsp, &opts(false, false), Output::Raw);
        let vf = args.iter().position(|a| a == "-vf").unwrap();
        assert_eq!(args[vf + 1], VF);
    }

    #[test]
    fn passthrough_copies_mjpeg_as_multipart() {
        assert_eq!(
            line("http://cam/video.mjpg.ts", opts(false, true)),
            format!(
                "{HEAD} -analyzeduration 1000000 -rw_timeout 10000000 -i http://cam/video.mjpg.ts -an -sn -dn \
                 -c:v copy -f mpjpeg pipe:1"
            )
        );
    }

    #[test]
    fn passthrough_of_h264_decodes_for_jpeg_and_copies_the_units_to_fd_3() {
        const COPY: &str = "-map 0:v:0 -c:v copy \
            -bsf:v h264_mp4toannexb,dump_extra=freq=keyframe,h264_metadata=aud=insert \
            -flush_packets 1 -f h264 pipe:3";
        let (output, supply) = output_for(true, Some("h264"));
        assert_eq!((output, supply), (Output::RawAndH264, H264Supply::Source));
        let rtsp = "rtsp://u:pw@10.0.0.3:554/stream1";
        assert_eq!(
            ffmpeg_args(rtsp, InputKind::Rtsp, &opts(false, true), output).join(" "),
            format!(
                "{HEAD} -analyzeduration 1000000 -rtsp_transport tcp -timeout 10000000 -i {rtsp} \
                 -map 0:v:0 -vf {VF} {RAW_OUT} {COPY}"
            )
        );
        // A looped file is not looped by ffmpeg here (see `loops_by_restart`).
        let file = "/var/lib/picamd/cam.mp4";
        assert_eq!(
            ffmpeg_args(file, InputKind::File, &opts(true, true), output).join(" "),
            format!("{HEAD} -re -i {file} -map 0:v:0 -vf {VF} {RAW_OUT} {COPY}")
        );
        assert!(loops_by_restart(InputKind::File, &opts(true, true), output));
        assert!(!loops_by_restart(
            InputKind::File,
            &opts(true, true),
            Output::CopyMjpeg
        ));
        assert!(!loops_by_restart(
            InputKind::File,
            &opts(true, true),
            Output::Raw
        ));
        // The filter chain is one argument.
        let args = ffmpeg_args(file, InputKind::File, &opts(true, true), output);
        let bsf = args.iter().position(|a| a == "-bsf:v").unwrap();
        assert_eq!(args[bsf + 1], H264_BSF);
    }

    #[test]
    fn what_is_passed_through_depends_on_the_probed_codec() {
        assert_eq!(
            output_for(true, Some("mjpeg")),
            (Output::CopyMjpeg, H264Supply::Encoder)
        );
        let (output, supply) = output_for(true, Some("hevc"));
        assert_eq!(output, Output::Raw);
        assert!(
            matches!(&supply, H264Supply::EncoderInstead(why) if why.contains("hevc")),
            "{supply:?}"
        );
        for codec in [None, Some("h264"), Some("mjpeg")] {
            assert_eq!(
                output_for(false, codec),
                (Output::Raw, H264Supply::Encoder),
                "without pass-through nothing is copied"
            );
        }
    }

    #[test]
    fn the_probe_asks_for_the_first_video_stream_with_the_same_network_options() {
        let probe = |input: &str, looping| {
            ffprobe_args(input, input_kind(input), &opts(looping, true)).join(" ")
        };
        const SHOW: &str = "-select_streams v:0 -show_entries stream=codec_name,width,height \
            -of default=noprint_wrappers=1";
        let rtsp = "rtsp://10.0.0.3/s";
        assert_eq!(
            probe(rtsp, false),
            format!(
                "-hide_banner -loglevel error -analyzeduration 1000000 -rtsp_transport tcp \
                 -timeout 10000000 -i {rtsp} {SHOW}"
            )
        );
        let hls = "http://h/a.m3u8";
        assert_eq!(
            probe(hls, false),
            format!(
                "-hide_banner -loglevel error -analyzeduration 1000000 -rw_timeout 10000000 \
                 -live_start_index -1 -i {hls} {SHOW}"
            )
        );
        // A file is probed as it is: not in real time, not looped.
        assert_eq!(
            probe("/a.mp4", true),
            format!("-hide_banner -loglevel error -i /a.mp4 {SHOW}")
        );
    }

    #[test]
    fn probe_answers() {
        assert_eq!(
            parse_probe("codec_name=h264\nwidth=1920\nheight=1080\n"),
            Ok(Probe {
                codec: "h264".into(),
                width: 1920,
                height: 1080
            })
        );
        // Order and extra lines do not matter; an unreadable size is 0 (the SPS gives it).
        assert_eq!(
            parse_probe("height=N/A\r\ncodec_name=mjpeg\r\nprofile=x\n")
                .map(|p| (p.codec, p.height)),
            Ok(("mjpeg".into(), 0))
        );
        assert!(parse_probe("").is_err(), "no video stream");
    }

    #[test]
    fn an_x11_display_is_grabbed_at_the_frame_rate_without_the_pointer() {
        let src = FfmpegSource::x11(":99".into(), opts(true, true));
        assert_eq!(
            ffmpeg_args(&src.input, src.kind, &src.options, Output::Raw).join(" "),
            format!(
                "{HEAD} -f x11grab -framerate 15 -draw_mouse 0 -i :99 -an -sn -dn -vf {VF} {RAW_OUT}"
            ),
            "scaled like any input; loop and pass-through do not apply"
        );
        let info = src.info();
        assert_eq!(
            (info.kind, info.name.as_str()),
            ("screen", "X11 display :99")
        );
        assert!(!src.may_supply_h264());
        // A display is never guessed from a bare input.
        assert_eq!(input_kind(":99"), InputKind::File);
    }

    #[test]
    fn input_kinds() {
        assert_eq!(input_kind("RTSP://h/x"), InputKind::Rtsp);
        assert_eq!(input_kind("rtsps://h/x"), InputKind::Rtsp);
        assert_eq!(input_kind("http://h/a.m3u8#x"), InputKind::Hls);
        assert_eq!(input_kind("http://h/a.m3u8.flv"), InputKind::Network);
        assert_eq!(input_kind("udp://0.0.0.0:5000"), InputKind::Network);
        assert_eq!(input_kind("/tmp/x://y.mp4"), InputKind::File);
        assert_eq!(input_kind("file:///tmp/a.mp4"), InputKind::File);
        assert_eq!(input_kind("clip.mp4"), InputKind::File);
    }

    #[test]
    fn a_slow_cap_is_at_least_one_fps() {
        assert!(video_filter(320, 240, 0).contains("floor(t*1)"));
    }
}
