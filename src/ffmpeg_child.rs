//! A supervised ffmpeg child process, for the ffmpeg source (ffmpeg reads an input and writes
//! raw frames to picamd) and the publishers (picamd writes H.264 to ffmpeg, which sends it
//! to a server).
//!
//! So that no ffmpeg is ever left behind:
//! - the child is in its own process group (a terminal's Ctrl-C reaches picamd only, which
//!   then stops the child in order) and gets SIGKILL from the kernel if the thread that
//!   spawned it dies (`PR_SET_PDEATHSIG`), which covers picamd itself being SIGKILLed;
//! - [`FfmpegChild`] always kills (SIGTERM, a short grace, SIGKILL) and reaps it on drop;
//! - its stderr is logged (target `ffmpeg`, at most 20 lines per 10 s) by a thread that keeps
//!   the last line for error messages, passwords redacted.
//!
//! A reader may take a second output besides stdout ([`Feed::ReadsTwo`]): a pipe that is the
//! child's file descriptor 3, which ffmpeg writes as `pipe:3`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Time ffmpeg gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(1);
/// Longest stderr line kept or logged; ffmpeg can print very long lines (SDP, metadata).
const STDERR_LINE_MAX: usize = 500;
/// At most this many stderr lines are logged per [`STDERR_LOG_WINDOW`]; a decoder warning on
/// every frame would otherwise flood the journal.
const STDERR_LOG_BURST: u32 = 20;
const STDERR_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Overrides the `ffmpeg` found on `PATH`.
pub const FFMPEG_ENV: &str = "PICAMD_FFMPEG";

/// The ffmpeg to run: [`FFMPEG_ENV`] when set, else `ffmpeg` on `PATH`.
pub fn ffmpeg_program() -> OsString {
    std::env::var_os(FFMPEG_ENV)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "ffmpeg".into())
}

/// The ffprobe to run: the one beside [`FFMPEG_ENV`]'s ffmpeg when that is set and its file
/// name starts with `ffmpeg` (`/opt/ff/bin/ffmpeg-6` → `/opt/ff/bin/ffprobe-6`), else
/// `ffprobe` on `PATH`.
pub fn ffprobe_program() -> OsString {
    let Some(ffmpeg) = std::env::var_os(FFMPEG_ENV).filter(|p| !p.is_empty()) else {
        return "ffprobe".into();
    };
    ffprobe_beside(Path::new(&ffmpeg)).unwrap_or_else(|| "ffprobe".into())
}

fn ffprobe_beside(ffmpeg: &Path) -> Option<OsString> {
    let name = ffmpeg.file_name()?.to_str()?;
    let rest = name.strip_prefix("ffmpeg")?;
    Some(
        ffmpeg
            .with_file_name(format!("ffprobe{rest}"))
            .into_os_string(),
    )
}

/// `input` with the password of a `scheme://user:password@host` URL replaced by `***`, for
/// logs and `/state`.
pub fn redact_url(input: &str) -> String {
    match url_password(input) {
        Some(pw) => input.replacen(&format!(":{pw}@"), ":***@", 1),
        None => input.to_owned(),
    }
}

/// The password in a URL's user info, if any (also what ffmpeg's log lines must not show).
pub fn url_password(input: &str) -> Option<&str> {
    let (_, rest) = input.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, pw) = userinfo.split_once(':')?;
    (!pw.is_empty()).then_some(pw)
}

/// Which of ffmpeg's standard streams picamd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// picamd reads its stdout (stdin closed).
    Reads,
    /// picamd writes its stdin (stdout discarded).
    Writes,
    /// picamd reads its stdout and a second output, the child's file descriptor 3
    /// ([`FfmpegChild::take_fd3`]); stdin closed.
    ReadsTwo,
}

/// The file descriptor of the second output in the child ([`Feed::ReadsTwo`]).
pub const SECOND_OUTPUT_FD: i32 = 3;

/// A running ffmpeg; dropping it stops (SIGTERM, then SIGKILL) and reaps the process.
pub struct FfmpegChild {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    /// Our end of the second output ([`Feed::ReadsTwo`]).
    fd3: Option<File>,
    stderr: Arc<StderrTail>,
    reaped: bool,
}

impl FfmpegChild {
    /// Starts `program args…` with stdin closed, stdout piped for the reader and stderr
    /// logged by a thread. `redactions` are strings (passwords) never to be logged.
    pub fn spawn(program: &OsString, args: &[String], redactions: Vec<String>) -> io::Result<Self> {
        Self::spawn_with(program, args, redactions, Feed::Reads)
    }

    /// As [`FfmpegChild::spawn`], with the pipes `feed` says.
    pub fn spawn_with(
        program: &OsString,
        args: &[String],
        redactions: Vec<String>,
        feed: Feed,
    ) -> io::Result<Self> {
        let (stdin, stdout) = match feed {
            Feed::Reads | Feed::ReadsTwo => (Stdio::null(), Stdio::piped()),
            Feed::Writes => (Stdio::piped(), Stdio::null()),
        };
        // Close-on-exec, both ends: the child gets only the copy made at fd 3 below, and no
        // other child started meanwhile (another stream's ffmpeg) inherits either end, which
        // would keep the pipe open after this child exits.
        let second = match feed {
            Feed::ReadsTwo => Some(nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?),
            _ => None,
        };
        let fd3_writer = second.as_ref().map(|(_, w)| w.as_raw_fd());
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .process_group(0);
        let parent = nix::unistd::getpid();
        // SAFETY: runs between fork and exec, so only async-signal-safe calls: prctl,
        // getppid and building an io::Error from an errno (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                // picamd died before the line above took effect: do not run orphaned.
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::from(Errno::ESRCH));
                }
                if let Some(w) = fd3_writer {
                    if w == SECOND_OUTPUT_FD {
                        // dup2 onto itself would keep close-on-exec: clear it instead.
                        fcntl(w, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
                    } else {
                        // The copy does not inherit close-on-exec.
                        nix::unistd::dup2(w, SECOND_OUTPUT_FD).map_err(io::Error::from)?;
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // Our copy of the write end closes here, so the reader sees the end when ffmpeg
        // closes its own.
        let fd3 = second.map(|(r, _w): (OwnedFd, OwnedFd)| File::from(r));
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let stderr = Arc::new(StderrTail::default());
        if let Some(pipe) = child.stderr.take() {
            let tail = stderr.clone();
            let spawned = std::thread::Builder::new()
                .name("ffmpeg-log".into())
                .spawn(move || pump_stderr(pipe, &tail, &redactions));
            if let Err(e) = spawned {
                // The pipe went with the closure: ffmpeg may get SIGPIPE on its next
                // message, which ends in a restart. Not worth failing the start for.
                tracing::warn!(error = %e, "cannot start the ffmpeg log thread");
                stderr.finish();
            }
        }
        tracing::info!(pid = child.id(), "ffmpeg started");
        Ok(FfmpegChild {
            child,
            stdin,
            stdout,
            fd3,
            stderr,
            reaped: false,
        })
    }

    /// Stops logging ffmpeg's messages (the last line is still kept): it is about to be
    /// stopped on purpose, and its complaints about the closed pipe or the signal are
    /// expected, not worth a warning.
    pub fn hush(&self) {
        self.stderr.quiet.store(true, Ordering::Relaxed);
    }

    /// ffmpeg's standard input, for a writer ([`Feed::Writes`]). Panics if taken twice.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin is taken once")
    }

    /// The process id, for logs.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// ffmpeg's standard output, for the frame reader. Panics if taken twice.
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.stdout.take().expect("stdout is taken once")
    }

    /// The read end of the second output ([`Feed::ReadsTwo`]). Panics if taken twice.
    pub fn take_fd3(&mut self) -> File {
        self.fd3.take().expect("the second output is taken once")
    }

    /// The last line ffmpeg wrote to stderr, once the log thread has read everything it
    /// wrote (or after a short wait).
    pub fn last_stderr_line(&self) -> String {
        if self.reaped {
            self.stderr.wait_finished(Duration::from_millis(500));
        }
        self.stderr.last_line()
    }

    /// Waits up to `grace` for ffmpeg to exit by itself; `None` if it did not.
    pub fn wait_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Stops and reaps ffmpeg, whatever state it is in.
    pub fn stop(&mut self) {
        if self.reaped {
            return;
        }
        // The child leads its own group; signal the group so anything it started goes too.
        // Only before the child is reaped: after that its pid may belong to someone else.
        let group = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = killpg(group, Signal::SIGTERM);
            if self.wait_exit(TERM_GRACE).is_none() {
                tracing::warn!(pid = self.child.id(), "ffmpeg ignored SIGTERM; killing it");
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        if !self.reaped {
            if let Err(e) = self.child.wait() {
                tracing::error!(pid = self.child.id(), error = %e, "cannot reap ffmpeg");
            }
            self.reaped = true;
        }
        tracing::info!(pid = self.child.id(), "ffmpeg stopped");
    }
}

impl Drop for FfmpegChild {
    fn drop(&mut self) {
        self.hush();
        // Our ends of its pipes close first, so a child blocked writing a frame gets EPIPE
        // and one reading its input sees the end, rather than hanging on a pipe.
        self.stdout = None;
        self.fd3 = None;
        self.stdin = None;
        self.stop();
    }
}

/// What the stderr thread shares: the last line, and whether the pipe has ended.
#[derive(Default)]
struct StderrTail {
    state: Mutex<(String, bool)>,
    cv: std::sync::Condvar,
    /// See [`FfmpegChild::hush`].
    quiet: AtomicBool,
}

impl StderrTail {
    fn set_last(&self, line: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        line.clone_into(&mut s.0);
    }

    fn finish(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.cv.notify_all();
    }

    fn last_line(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    fn wait_finished(&self, timeout: Duration) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cv.wait_timeout_while(s, timeout, |s| !s.1);
    }
}

/// Logs ffmpeg's stderr line by line (target `ffmpeg`) until the pipe ends, keeping the last
/// line for error messages.
fn pump_stderr(mut pipe: impl Read, tail: &StderrTail, redactions: &[String]) {
    let mut lines = LineSplitter::new(STDERR_LINE_MAX);
    let mut limiter = LogLimiter::new(STDERR_LOG_BURST, STDERR_LOG_WINDOW);
    let mut buf = [0u8; 4096];
    let mut on_line = |raw: &str| {
        let mut line = raw.to_owned();
        for secret in redactions {
            line = line.replace(secret.as_str(), "***");
        }
        // ffmpeg's repeat counter says nothing on its own; the line before it is the news.
        if !line.starts_with("Last message repeated") {
            tail.set_last(&line);
        }
        if tail.quiet.load(Ordering::Relaxed) {
            return;
        }
        match limiter.admit(Instant::now()) {
            Admit::Log { suppressed: 0 } => tracing::warn!(target: "ffmpeg", "{line}"),
            Admit::Log { suppressed } => {
                tracing::warn!(target: "ffmpeg", "({suppressed} lines not logged) {line}")
            }
            Admit::Drop => {}
        }
    };
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => lines.push(&buf[..n], &mut on_line),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    lines.flush(&mut on_line);
    tail.finish();
}

/// Splits a byte stream into lines at `\n` or `\r` (ffmpeg rewrites progress lines with
/// `\r`), skipping empty ones and truncating long ones to `max` bytes (plus `…`).
struct LineSplitter {
    line: Vec<u8>,
    max: usize,
    truncated: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        LineSplitter {
            line: Vec::new(),
            max,
            truncated: false,
        }
    }

    fn push(&mut self, bytes: &[u8], on_line: &mut impl FnMut(&str)) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                self.flush(on_line);
            } else if self.line.len() < self.max {
                self.line.push(b);
            } else {
                self.truncated = true;
            }
        }
    }

    fn flush(&mut self, on_line: &mut impl FnMut(&str)) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim();
        if !text.is_empty() {
            if self.truncated {
                on_line(&format!("{text}…"));
            } else {
                on_line(text);
            }
        }
        self.line.clear();
        self.truncated = false;
    }
}

/// Lets `burst` lines through per `window`, counting the rest.
struct LogLimiter {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log this line; `suppressed` lines were dropped since the last one logged.
    Log {
        suppressed: u64,
    },
    Drop,
}

impl LogLimiter {
    fn new(burst: u32, window: Duration) -> Self {
        LogLimiter {
            burst,
            window,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        if self
            .window_start
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            Admit::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_split_on_cr_and_lf_and_are_bounded() {
        let mut got = Vec::new();
        let mut s = LineSplitter::new(8);
        let mut on = |l: &str| got.push(l.to_owned());
        s.push(b"abc\r\nde", &mut on);
        s.push(b"f\n\n  \r0123456789xyz\nlast", &mut on);
        s.flush(&mut on);
        assert_eq!(got, ["abc", "def", "01234567…", "last"]);
    }

    #[test]
    fn log_limiter_lets_bursts_through_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(2, Duration::from_secs(10));
        assert_eq!(l.admit(t0), Admit::Log { suppressed: 0 });
        assert_eq!(l.admit(t0), Admit::Log { suppressed: 0 });
        assert_eq!(l.admit(t0), Admit::Drop);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Admit::Drop);
        assert_eq!(
            l.admit(t0 + Duration::from_secs(10)),
            Admit::Log { suppressed: 2 }
        );
    }

    #[test]
    fn the_child_is_killed_and_reaped_on_drop() {
        // `sleep` stands in for an ffmpeg that never writes and ignores nothing.
        let mut child =
            FfmpegChild::spawn(&"sleep".into(), &["30".into()], Vec::new()).expect("spawn sleep");
        let pid = child.child.id();
        let _stdout = child.take_stdout();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(child);
        // Reaped: not even a zombie is left.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn stderr_is_kept_for_error_messages() {
        let mut child = FfmpegChild::spawn(
            &"sh".into(),
            &[
                "-c".into(),
                "echo one >&2; echo 'two pw' >&2; exit 3".into(),
            ],
            vec!["pw".into()],
        )
        .expect("spawn sh");
        let status = child.wait_exit(Duration::from_secs(5)).expect("exited");
        assert_eq!(status.code(), Some(3));
        assert_eq!(child.last_stderr_line(), "two ***");
    }

    #[test]
    fn a_second_output_reaches_fd_3_and_ends_with_the_child() {
        let mut child = FfmpegChild::spawn_with(
            &"sh".into(),
            &["-c".into(), "echo one; echo two >&3".into()],
            Vec::new(),
            Feed::ReadsTwo,
        )
        .expect("spawn sh");
        let (mut out, mut fd3) = (String::new(), String::new());
        child.take_stdout().read_to_string(&mut out).unwrap();
        // The end comes: neither picamd nor anything else keeps a write end open.
        child.take_fd3().read_to_string(&mut fd3).unwrap();
        assert_eq!((out.as_str(), fd3.as_str()), ("one\n", "two\n"));
        assert!(child.wait_exit(Duration::from_secs(5)).unwrap().success());
    }

    #[test]
    fn ffprobe_is_found_beside_ffmpeg() {
        assert_eq!(
            ffprobe_beside(Path::new("/opt/ff/bin/ffmpeg-6")),
            Some("/opt/ff/bin/ffprobe-6".into())
        );
        assert_eq!(ffprobe_beside(Path::new("ffmpeg")), Some("ffprobe".into()));
        assert_eq!(ffprobe_beside(Path::new("/usr/bin/avconv")), None);
    }

    #[test]
    fn a_missing_program_is_not_found() {
        let err = FfmpegChild::spawn(&"/nonexistent/ffmpeg".into(), &[], Vec::new())
            .err()
            .expect("no such program");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("rtsp://admin:s3cr@t@10.0.0.3/live"),
            "rtsp://admin:***@10.0.0.3/live"
        );
        assert_eq!(url_password("rtsp://admin:pw@h/x?a=b:c@d"), Some("pw"));
        assert_eq!(redact_url("rtsp://admin@h/x"), "rtsp://admin@h/x");
        assert_eq!(redact_url("/tmp/a:b@c.mp4"), "/tmp/a:b@c.mp4");
        assert_eq!(redact_url("rtmp://h/live/cam"), "rtmp://h/live/cam");
    }
}
