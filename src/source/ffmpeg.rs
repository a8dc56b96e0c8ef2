//! Anything ffmpeg can read (RTSP, RTMP, HTTP-FLV, HLS, files, an X11 screen) through a
//! supervised `ffmpeg` child process.
//!
//! ffmpeg decodes the input, scales it into the configured frame size (letterboxed, aspect
//! kept), caps the frame rate and writes raw I420 frames to its stdout; this source reads
//! them into pooled buffers for the encoder pool. The child runs only while someone watches.
//!
//! The child is supervised by [`FfmpegChild`] (its own process group, SIGKILL when picamd
//! dies, killed and reaped on drop); its stdout is read with `poll(2)` timeouts, so demand,
//! shutdown and stalls are noticed even when ffmpeg writes nothing.
//!
//! Failures (ffmpeg exiting, no frames) are returned as [`SourceError::Failed`] with the
//! reason and ffmpeg's last message; the supervisor restarts the source with backoff and
//! its watchdog shows viewers "no signal" meanwhile.
//!
//! A file that is not looped plays once per viewing session: at its end viewers see "no
//! signal" with the reason ("end of file …"), and the next session (after everyone left)
//! plays it again from the start.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ChildStdout;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use bytes::Bytes;

use super::i420::{i420_len, BufferPool, PooledI420};
use super::multipart::{SplitLimits, Splitter};
use super::{Source, SourceContext, SourceError};
use crate::ffmpeg_child::{ffmpeg_program, redact_url, url_password, FfmpegChild, FFMPEG_ENV};
use crate::frame::{CaptureTime, Frame, Payload, SourceInfo};

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
    /// The input is MJPEG: copy its JPEGs through instead of decoding and re-encoding.
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
/// Bytes read from ffmpeg at a time in pass-through mode.
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

/// The whole ffmpeg command line (without the program) for `input` of `kind`.
fn ffmpeg_args(input: &str, kind: InputKind, o: &FfmpegOptions) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
    ]
    .map(String::from)
    .to_vec();
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
    args.extend(["-an", "-sn", "-dn"].map(String::from));
    if o.passthrough {
        args.extend(["-c:v", "copy", "-f", "mpjpeg", "pipe:1"].map(String::from));
        return args;
    }
    args.extend([
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
    ]);
    args
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
}

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
        }
    }

    fn start(&self) -> Result<FfmpegChild, SourceError> {
        let program = ffmpeg_program();
        let args = ffmpeg_args(&self.input, self.kind, &self.options);
        tracing::debug!(
            program = %program.to_string_lossy(),
            args = %redact_url(&args.join(" ")),
            "starting ffmpeg"
        );
        let redactions: Vec<String> = url_password(&self.input)
            .into_iter()
            .map(Into::into)
            .collect();
        FfmpegChild::spawn(&program, &args, redactions).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                SourceError::Unavailable(format!(
                    "ffmpeg not found or not executable ({}: {e}); install the ffmpeg package \
                     (or set {FFMPEG_ENV} to its path)",
                    program.to_string_lossy()
                ))
            }
            _ => SourceError::Failed(format!("cannot start ffmpeg: {e}")),
        })
    }

    /// Reads raw frames from `child` and emits them until demand ends, shutdown, the end of
    /// a file, or a failure.
    fn stream_raw(
        &self,
        ctx: &mut SourceContext,
        child: &mut FfmpegChild,
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
            match self.wait_output(ctx, child, stdout.as_fd(), frames, last_frame)? {
                Step::Stop(ended) => return Ok(ended),
                Step::Wait => continue,
                Step::Read => {}
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
                return self.ended(child);
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

    /// Waits a little for ffmpeg's output, and turns shutdown, the end of demand and a silent
    /// ffmpeg into the end of streaming (the first two) or a failure (the third).
    fn wait_output(
        &self,
        ctx: &SourceContext,
        child: &FfmpegChild,
        fd: BorrowedFd<'_>,
        frames: u64,
        last_frame: Instant,
    ) -> Result<Step, SourceError> {
        match wait_readable(ctx, fd, POLL_SLICE)? {
            Readiness::Readable => Ok(Step::Read),
            Readiness::Shutdown => {
                child.hush();
                Ok(Step::Stop(Ended::Shutdown))
            }
            Readiness::NoDemand => {
                child.hush();
                Ok(Step::Stop(Ended::NoDemand))
            }
            Readiness::Timeout => {
                let interval = Duration::from_secs_f64(1.0 / self.options.fps.max(1) as f64);
                let (limit, what) = if frames == 0 {
                    (FIRST_FRAME_TIMEOUT, "of starting it")
                } else {
                    (
                        (interval * STALL_INTERVALS).max(STALL_MIN),
                        "of the previous one",
                    )
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
            match self.wait_output(ctx, child, stdout.as_fd(), frames, last_frame)? {
                Step::Stop(ended) => return Ok(ended),
                Step::Wait => continue,
                Step::Read => {}
            }
            let Some(n) = read_output(&mut stdout, &mut buf)? else {
                continue;
            };
            if n == 0 {
                drop(stdout);
                return self.ended(child);
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

    /// What ffmpeg closing its output means, once it has exited.
    fn ended(&self, child: &mut FfmpegChild) -> Result<Ended, SourceError> {
        let status = child.wait_exit(EXIT_GRACE);
        let last = child.last_stderr_line();
        match status {
            Some(s) if s.success() => {
                if self.kind == InputKind::File && !self.options.looping {
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
    Read,
    Wait,
    Stop(Ended),
}

/// Why streaming from one ffmpeg child stopped without an error.
enum Ended {
    Shutdown,
    NoDemand,
    EndOfFile,
}

enum Readiness {
    Readable,
    Timeout,
    NoDemand,
    Shutdown,
}

/// Waits up to `slice` for `fd` to be readable (or hung up), checking shutdown and demand
/// first. Shared by every stdout reader, whatever ffmpeg writes.
fn wait_readable(
    ctx: &SourceContext,
    fd: BorrowedFd<'_>,
    slice: Duration,
) -> Result<Readiness, SourceError> {
    if ctx.is_shutting_down() {
        return Ok(Readiness::Shutdown);
    }
    if !ctx.has_demand() {
        return Ok(Readiness::NoDemand);
    }
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(slice).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut fds, timeout) {
        Ok(0) | Err(Errno::EINTR) => Ok(Readiness::Timeout),
        // Readable, hung up or in error: the read that follows tells which.
        Ok(_) => Ok(Readiness::Readable),
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

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        loop {
            if !ctx.wait_for_demand() {
                return Ok(());
            }
            ctx.mark_starting();
            // Dropping the child (any return below, or the end of this iteration) stops it.
            let mut child = self.start()?;
            let streamed = if self.options.passthrough {
                self.stream_mjpeg(ctx, &mut child)?
            } else {
                self.stream_raw(ctx, &mut child)?
            };
            match streamed {
                Ended::Shutdown => return Ok(()),
                Ended::NoDemand => {
                    tracing::debug!("nobody watches: stopping ffmpeg");
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

    fn line(input: &str, o: FfmpegOptions) -> String {
        ffmpeg_args(input, input_kind(input), &o).join(" ")
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
        let args = ffmpeg_args(rtsp, InputKind::Rtsp, &opts(false, false));
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
    fn an_x11_display_is_grabbed_at_the_frame_rate_without_the_pointer() {
        let src = FfmpegSource::x11(":99".into(), opts(true, true));
        assert_eq!(
            ffmpeg_args(&src.input, src.kind, &src.options).join(" "),
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
