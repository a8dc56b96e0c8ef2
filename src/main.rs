//! The `picamd` command: command line, logging, the listening socket and privileges, then
//! signals and [`picamd::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use picamd::config::flags::KeyFlags;
use picamd::config::{key, Config, ConfigLayer};
use picamd::shutdown::Shutdown;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Network camera appliance: MJPEG, snapshots and WebSocket video over HTTP.
///
/// Every flag but the first few is also a key of the TOML config file (`--max-viewers` is
/// `max_viewers`); flags win over the file.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML config file.
    #[arg(long, value_name = "PATH", env = "PICAMD_CONFIG")]
    config: Option<PathBuf>,
    /// The configuration keys, one flag each (made from `picamd::config::KEYS`).
    #[command(flatten)]
    keys: KeyFlags,
    /// Read a password from stdin (on a terminal: twice, not shown; from a pipe: one line),
    /// print its argon2id hash for `[auth]`'s `password_hash`, then exit.
    #[arg(long)]
    hash_password: bool,
    /// With `--hash-password`: also print the user's `rtsp_digest` (MD5 of
    /// NAME:picamd:PASSWORD), for RTSP clients that only do Digest. It is
    /// password-equivalent for RTSP.
    #[arg(long, value_name = "NAME", requires = "hash_password")]
    digest_user: Option<String>,
    /// Print a new random token and the `sha256:` hash to list in `[auth]`'s `tokens`, then
    /// exit.
    #[arg(long)]
    new_token: bool,
    /// List the cameras this machine has (V4L2 devices, and libcamera cameras when built with
    /// the `libcamera` feature) and its screens (framebuffers, the X display), then exit;
    /// non-zero when there is no camera.
    #[arg(long)]
    list_cameras: bool,
    /// List the V4L2 memory-to-memory encoders this machine has (a Pi 0-4's H.264 and JPEG
    /// encoders) and what each stream's `jpeg_encoder` / `h264_encoder` would use, then exit.
    #[arg(long)]
    list_encoders: bool,
    /// Encode frames of the test pattern (at `--size` and `--fps`) with the M2M encoder at
    /// DEVICE, check every coded frame, print the times, then exit: 0 when it works.
    #[arg(long, value_name = "DEVICE")]
    encoder_check: Option<PathBuf>,
    /// With `--encoder-check`: how many frames.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 60,
        requires = "encoder_check"
    )]
    encoder_check_frames: u32,
    /// With `--encoder-check`: take the frames from this V4L2 camera (YU12 at `--size`),
    /// exported as dmabufs and imported by the encoder without a copy.
    #[arg(long, value_name = "DEVICE", requires = "encoder_check")]
    encoder_check_from: Option<PathBuf>,
    /// With `--encoder-check`: write the coded stream to PREFIX.coded and the raw I420 frames
    /// fed in to PREFIX.yuv.
    #[arg(long, value_name = "PREFIX", requires = "encoder_check")]
    encoder_check_out: Option<PathBuf>,
    /// Check the configuration (file and flags) and the account to run as, print what it
    /// resolves to, then exit: 0 when it is valid, 2 with the offending key when not. The
    /// SD image checks a `picamd.toml` from the boot partition this way before using it.
    #[arg(long)]
    check_config: bool,
}

impl Cli {
    fn config(self) -> Result<Config, picamd::config::ConfigError> {
        let file = match &self.config {
            Some(path) => Some((path.as_path(), ConfigLayer::from_file(path)?)),
            None => None,
        };
        ConfigLayer::resolve(file, self.keys.into_layer()?)
    }
}

/// After the first signal, shutdown may take this long before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let check_only = cli.check_config;
    if cli.hash_password {
        return hash_password(cli.digest_user.as_deref());
    }
    if cli.new_token {
        return new_token();
    }
    if cli.list_cameras {
        let level = (cli.keys.get(&key::log_level)).and_then(|l| l.as_str()?.parse().ok());
        picamd::logging::init(level.unwrap_or_default());
        return list_cameras();
    }
    let (list_encoders, encoder_check) = (cli.list_encoders, cli.encoder_check.clone());
    let (check_frames, check_out) = (cli.encoder_check_frames, cli.encoder_check_out.clone());
    let check_from = cli.encoder_check_from.clone();
    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    picamd::logging::init(config.log_level);
    if list_encoders {
        return print_encoders(&config);
    }
    if let Some(device) = encoder_check {
        let s = &config.streams[0];
        return match picamd::encoder_check::check(
            &device,
            s.size.width,
            s.size.height,
            s.fps,
            check_frames,
            match &check_from {
                Some(device) => picamd::encoder_check::Frames::Imported(device),
                None => picamd::encoder_check::Frames::Pattern,
            },
            check_out.as_deref(),
        ) {
            Ok(report) => {
                for line in report.lines {
                    println!("encoder-check: {line}");
                }
                println!("encoder-check: PASS");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("picamd: encoder check: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let plan = match picamd::privileges::plan(&config) {
        Ok(p) => p,
        Err(e) => return config_error(&e),
    };
    if check_only {
        return print_checked(&config);
    }
    // Before binding and before dropping privileges: a key file may be readable by root only,
    // and a bad file is a configuration error like any other.
    let tls = match &config.tls {
        None => None,
        Some(t) => match picamd::tls::load(t, &config.state_dir) {
            Ok(m) => Some(m),
            Err(picamd::tls::TlsError::Config(e)) => return config_error(&e),
            Err(e) => {
                eprintln!("picamd: HTTPS: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let persist = persisted_files(&config, tls.as_ref());
    match run(config, plan, tls, persist) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picamd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `/state` lists under `persist`: the boot scripts' report (`boot_status`, read once
/// here, each file not used as written logged), then picamd's own TLS pair when it fell back
/// to its previous copy (`tls::load` logged that already).
fn persisted_files(
    config: &Config,
    tls: Option<&picamd::tls::TlsMaterial>,
) -> Vec<picamd::boot_status::PersistedFile> {
    let mut files = (config.boot_status.as_deref())
        .map(picamd::boot_status::load)
        .unwrap_or_default();
    files.extend(tls.and_then(|m| m.origin.fallback()));
    files
}

/// `--hash-password`: a password from stdin → its PHC string on stdout.
///
/// When stdin is a terminal, the prompts go to stderr, the password is read twice with echo
/// off ([`EchoOff`]: the terminal's settings come back on every path, Ctrl-C and the other
/// signals that end the process included), and two different entries exit with 1. Otherwise
/// (a pipe, a file) one line is read, without prompt or confirmation. An empty password is
/// refused with exit status 2, as before. With `digest_user`, a second line gives that
/// user's `rtsp_digest` for the same password.
fn hash_password(digest_user: Option<&str>) -> ExitCode {
    use std::io::{IsTerminal, Write};
    let password = if std::io::stdin().is_terminal() {
        match read_hidden_twice() {
            Ok(Some(p)) => p,
            Ok(None) => {
                eprintln!("picamd: the two passwords differ; nothing hashed");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("picamd: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        match read_password_line() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("picamd: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    if password.is_empty() {
        eprintln!("picamd: the password is empty; nothing hashed");
        return ExitCode::from(2);
    }
    match picamd::auth::hash_password(&password) {
        Ok(phc) => {
            let mut text = format!("{phc}\n");
            if let Some(user) = digest_user {
                let ha1 = picamd::auth::DigestHa1::of(user, &password);
                text.push_str(&format!("{}\n", ha1.to_config_string()));
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("picamd: password: {e}");
            ExitCode::from(2)
        }
    }
}

/// One line from stdin, without its line end.
fn read_password_line() -> std::io::Result<String> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(password.to_owned())
}

/// Prompts on stderr and reads the password from the terminal on stdin with echo off, then
/// once more: `None` when the two differ. An empty first entry is returned at once (the
/// caller refuses it) instead of being asked for again.
fn read_hidden_twice() -> std::io::Result<Option<String>> {
    let _echo_off = EchoOff::new().map_err(std::io::Error::from)?;
    let hidden = |prompt: &str| {
        eprint!("{prompt}");
        let line = read_password_line();
        // The Enter typed was not echoed either.
        eprintln!();
        line
    };
    let first = hidden("password (not shown): ")?;
    if first.is_empty() {
        return Ok(Some(first));
    }
    let again = hidden("again: ")?;
    Ok((first == again).then_some(first))
}

/// The terminal settings of stdin before [`EchoOff`] changed them, and the ones it set: for
/// its signal handlers, which may not allocate or lock.
static TERMINAL: std::sync::OnceLock<(nix::libc::termios, nix::libc::termios)> =
    std::sync::OnceLock::new();

/// Signals whose default action ends the process (Ctrl-C, Ctrl-\, a closed terminal, `kill`):
/// the terminal is restored first.
const ENDING_SIGNALS: [nix::sys::signal::Signal; 4] = [
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGTERM,
];

/// Echo off on the terminal that is stdin, until dropped; the settings before are restored
/// then, whatever the path out (`?`, panic unwinding). While it lives, the signals that end
/// the process ([`ENDING_SIGNALS`]) restore them too before the process dies of the signal,
/// and Ctrl-Z (`SIGTSTP`) restores them while stopped and turns echo off again on `fg`.
/// Not covered: `SIGKILL`, which nothing can catch (`stty sane` repairs the terminal then).
struct EchoOff {
    saved: nix::sys::termios::Termios,
    /// The signal actions replaced, put back on drop.
    previous: Vec<(nix::sys::signal::Signal, nix::sys::signal::SigAction)>,
}

impl EchoOff {
    fn new() -> nix::Result<EchoOff> {
        use nix::libc;
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        use nix::sys::termios::{tcgetattr, tcsetattr, SetArg, Termios};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let before: libc::termios = saved.clone().into();
        let mut quiet = before;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
        // `--hash-password` makes one EchoOff per process: the first settings are the ones.
        let (before, quiet) = *TERMINAL.get_or_init(|| (before, quiet));
        let mut guard = EchoOff {
            saved: Termios::from(before),
            previous: Vec::new(),
        };
        let handlers = ENDING_SIGNALS
            .iter()
            .map(|&s| {
                (
                    s,
                    SigHandler::Handler(restore_and_die),
                    SaFlags::SA_RESETHAND,
                )
            })
            .chain([(
                Signal::SIGTSTP,
                SigHandler::Handler(restore_while_stopped),
                SaFlags::SA_RESTART,
            )]);
        for (signal, handler, flags) in handlers {
            let action = SigAction::new(handler, flags, SigSet::empty());
            // SAFETY: both handlers only read TERMINAL (initialized above, before any
            // handler is installed) and call async-signal-safe functions.
            let previous = unsafe { sigaction(signal, &action) }?;
            if previous.handler() == SigHandler::SigIgn {
                // Ignored on purpose (`nohup`, a shell without job control): stays ignored.
                // SAFETY: puts back the action that was there.
                unsafe { sigaction(signal, &previous) }?;
                continue;
            }
            guard.previous.push((signal, previous));
        }
        // TCSANOW, not TCSAFLUSH: what was typed ahead of the prompt is kept.
        tcsetattr(&stdin, SetArg::TCSANOW, &Termios::from(quiet))?;
        Ok(guard)
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        // The terminal first: a signal arriving in between finds it restored already.
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
        for (signal, action) in self.previous.drain(..).rev() {
            // SAFETY: puts back the action that was there before EchoOff::new.
            let _ = unsafe { nix::sys::signal::sigaction(signal, &action) };
        }
    }
}

/// Signal handler: the terminal as it was, a line end, then the signal's default action
/// (SA_RESETHAND put it back), so the process ends the way it would have without picamd's
/// handler. Only async-signal-safe calls.
extern "C" fn restore_and_die(signal: nix::libc::c_int) {
    use nix::libc;
    if let Some((before, _)) = TERMINAL.get() {
        // SAFETY: tcsetattr, write and raise are async-signal-safe; `before` is a valid
        // termios that is never written again.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, before);
            libc::write(libc::STDERR_FILENO, b"\n".as_ptr().cast(), 1);
        }
    }
    // SAFETY: as above.
    unsafe { libc::raise(signal) };
}

/// `SIGTSTP` handler (Ctrl-Z): the terminal as it was while stopped, echo off again once
/// continued.
extern "C" fn restore_while_stopped(_: nix::libc::c_int) {
    use nix::libc;
    if let Some((before, quiet)) = TERMINAL.get() {
        // SAFETY: tcsetattr and raise are async-signal-safe; both termios are valid and
        // never written again.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, before);
            libc::raise(libc::SIGSTOP);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, quiet);
        }
    }
}

/// `--new-token`: a random token (for URLs and `Authorization: Bearer`) and its hash line.
fn new_token() -> ExitCode {
    use std::io::Write;
    match picamd::auth::new_token() {
        Ok((token, hash)) => {
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "token: {token}\nfor [auth] tokens: \"{}\"\n",
                hash.to_config_string()
            )
            .and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("picamd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: one line per stream and the listening address, on stdout.
fn print_checked(config: &Config) -> ExitCode {
    use std::io::Write;
    let mut text = format!("config ok: listen {}\n", config.listen);
    let auth = &config.security.auth;
    if auth.enabled() {
        text.push_str(&format!(
            "auth: on ({} users, {} tokens)\n",
            auth.users.len(),
            auth.tokens.len()
        ));
    } else {
        text.push_str("auth: off\n");
    }
    if let Some(tls) = &config.tls {
        let cert = match &tls.files {
            Some(files) => match picamd::tls::check_files(files) {
                Ok(fp) => format!("{} (SHA-256 {fp})", files.cert.value.display()),
                Err(picamd::tls::TlsError::Config(e)) => return config_error(&e),
                Err(e) => {
                    eprintln!("picamd: HTTPS: {e}");
                    return ExitCode::from(2);
                }
            },
            None => format!(
                "self-signed, {}",
                config
                    .state_dir
                    .join(picamd::tls::SELF_SIGNED_CERT)
                    .display()
            ),
        };
        text.push_str(&format!(
            "https: listen {}, certificate {cert}, plain http {}\n",
            tls.listen,
            if tls.http_redirect {
                "redirects"
            } else {
                "serves too"
            }
        ));
    }
    match &config.rtsp {
        Some(r) => text.push_str(&format!("rtsp: listen {}\n", r.listen)),
        None => text.push_str("rtsp: off\n"),
    }
    match &config.webrtc {
        Some(w) => text.push_str(&format!("webrtc: udp {}\n", w.udp)),
        None => text.push_str("webrtc: off\n"),
    }
    for s in &config.streams {
        text.push_str(&format!(
            "stream {}: source {} @ {} {} fps\n",
            s.name, s.source, s.size, s.fps
        ));
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    ExitCode::SUCCESS
}

/// Configuration errors exit with 2, like a usage error, so a service manager's logs and a
/// shell both tell them from a runtime failure.
fn config_error(e: &picamd::config::ConfigError) -> ExitCode {
    eprintln!("picamd: {e}");
    ExitCode::from(2)
}

/// The socket systemd passed, else `listen` bound here.
fn listener(config: &Config) -> anyhow::Result<std::net::TcpListener> {
    if let Some((listener, fd)) = picamd::service::take_activated_listener()? {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        tracing::info!(
            "serving on the socket passed by systemd (fd {fd}, {addr}); `listen` is not used"
        );
        return Ok(listener);
    }
    bind(config.listen)
}

/// Binds `addr` with a listen backlog of 1024.
fn bind(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    // std listens with a backlog of 128; a burst of viewers reconnecting after a network
    // hiccup deserves the 1024 tokio would have used. Listening again only resizes the queue.
    let backlog = nix::sys::socket::Backlog::new(1024).expect("valid backlog");
    if let Err(e) = nix::sys::socket::listen(&listener, backlog) {
        tracing::debug!(error = %e, "cannot enlarge the listen backlog");
    }
    Ok(listener)
}

fn run(
    config: Config,
    plan: picamd::privileges::Plan,
    tls: Option<picamd::tls::TlsMaterial>,
    persist: Vec<picamd::boot_status::PersistedFile>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    // Ports 80 and 443 need root (or a capability) to bind; nothing else does. So: bind,
    // switch user, and only then start threads — the runtime's workers included.
    let listener = listener(&config)?;
    let tls_listener = match &config.tls {
        Some(t) => Some(bind(t.listen)?),
        None => None,
    };
    // RTSP's default port may be another server's (MediaMTX, go2rtc): then picamd runs
    // without RTSP; a configured address must bind.
    let rtsp_listener = match &config.rtsp {
        Some(r) => match bind(r.listen) {
            Ok(l) => Some(l),
            Err(e) if !r.explicit => {
                tracing::warn!("no RTSP: {e:#} (set rtsp_listen to choose another address)");
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    // WebRTC's default port may be taken too: then picamd runs without WebRTC.
    let webrtc_sockets = match &config.webrtc {
        Some(w) => match picamd::webrtc::Sockets::bind(w.udp) {
            Ok(s) => Some(s),
            Err(e) if !w.explicit => {
                tracing::warn!(
                    "no WebRTC: cannot bind UDP {}: {e} (set webrtc_udp_port to choose another port)",
                    w.udp
                );
                None
            }
            Err(e) => return Err(e).with_context(|| format!("cannot bind WebRTC's UDP {}", w.udp)),
        },
        None => None,
    };
    picamd::privileges::switch(&plan).context("dropping privileges")?;
    for l in std::iter::once(&listener)
        .chain(&tls_listener)
        .chain(&rtsp_listener)
    {
        l.set_nonblocking(true)
            .context("making the listener non-blocking")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).context("registering the listener")?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let https = match (tls_listener, &tls) {
            (Some(l), Some(m)) => {
                let l = tokio::net::TcpListener::from_std(l)
                    .context("registering the HTTPS listener")?;
                Some((l, m.server_config.clone()))
            }
            _ => None,
        };
        let https_bound = match &https {
            Some((l, _)) => Some(l.local_addr().context("reading the bound address")?),
            None => None,
        };
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let streams: Vec<String> = config
            .streams
            .iter()
            .map(|s| format!("{} source {} @ {} fps", s.source, s.size, s.fps))
            .collect();
        let streams = match &streams[..] {
            [one] => one.clone(),
            many => {
                let named: Vec<String> = config
                    .streams
                    .iter()
                    .zip(many)
                    .map(|(s, line)| format!("{}: {line}", s.name))
                    .collect();
                format!("{} streams ({})", many.len(), named.join("; "))
            }
        };
        // Not `println!`: it panics when stdout is a closed pipe, and a service must keep
        // running when whoever read its banner has gone.
        let mut banner = format!(
            "picamd {}: {streams}, listening on {bound}\n",
            env!("CARGO_PKG_VERSION"),
        );
        if let (Some(addr), Some(m)) = (https_bound, &tls) {
            // The fingerprint is what a browser's certificate warning lets one compare.
            banner.push_str(&format!(
                "https on {addr}, certificate SHA-256 {} ({})\n",
                m.fingerprint, m.origin
            ));
            for url in picamd::http::urls_for("https", addr) {
                banner.push_str(&format!("open {url}\n"));
            }
        }
        let rtsp = match rtsp_listener {
            Some(l) => Some(
                tokio::net::TcpListener::from_std(l).context("registering the RTSP listener")?,
            ),
            None => None,
        };
        if let Some(addr) = rtsp.as_ref().and_then(|l| l.local_addr().ok()) {
            banner.push_str(&format!("rtsp on {addr}\n"));
            for url in picamd::http::urls_for("rtsp", addr) {
                let name = &config.default_stream().name;
                banner.push_str(&format!("open {url}{name}\n"));
            }
        }
        if let Some(addr) = webrtc_sockets.as_ref().and_then(|s| s.local_addr().ok()) {
            banner.push_str(&format!("webrtc on udp {addr}\n"));
        }
        let redirect = config.tls.as_ref().is_some_and(|t| t.http_redirect);
        if redirect {
            banner.push_str("plain http redirects to https (but /healthz)\n");
        } else {
            for url in picamd::http::urls_for("http", bound) {
                banner.push_str(&format!("open {url}\n"));
            }
        }
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
        }
        let shutdown = Shutdown::new();
        tokio::spawn(handle_signals(shutdown.clone(), int, term));
        if let Some(m) = &tls {
            tracing::info!(fingerprint = %m.fingerprint, origin = %m.origin, "HTTPS certificate");
        }
        let listeners = picamd::http::Listeners {
            http: listener,
            https,
            redirect,
        };
        picamd::run(config, listeners, rtsp, webrtc_sockets, persist, shutdown)
            .await
            .context("pipeline")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// `--list-encoders`: the M2M encoders, and each stream's choice.
fn print_encoders(config: &Config) -> ExitCode {
    println!("V4L2 memory-to-memory encoders:");
    for line in picamd::encoder_check::list_encoders() {
        println!("{line}");
    }
    for s in &config.streams {
        let plan = picamd::pipeline::EncoderPlan::for_config(s);
        for (codec, p) in [("JPEG", &plan.jpeg), ("H.264", &plan.h264)] {
            let state = p.initial_state();
            println!(
                "stream {}: {codec}: {} ({} = {}): {}",
                s.name,
                state.using,
                if codec == "JPEG" {
                    "jpeg_encoder"
                } else {
                    "h264_encoder"
                },
                state.configured,
                p.why
            );
        }
    }
    ExitCode::SUCCESS
}

/// `--list-cameras`: what each camera stack sees. Exit status 1 when no camera was found.
fn list_cameras() -> ExitCode {
    let mut found = 0;
    let v4l2 = picamd::source::v4l2::list_devices();
    found += v4l2.len();
    println!("V4L2 (USB webcams; use --source v4l2:PATH):");
    println!("{}", picamd::source::v4l2::describe_devices(&v4l2));
    #[cfg(feature = "libcamera")]
    {
        use picamd::source::libcamera;
        println!(
            "libcamera {} (Pi camera modules; use --source libcamera[:ID_OR_INDEX]):",
            libcamera::libcamera_version()
        );
        // The pipeline handlers compiled in (rpi/pisp: Raspberry Pi 5; rpi/vc4: Pi 0-4), as
        // the bundle's build recorded them: libcamera's API does not list them.
        match libcamera::bundle_info() {
            Some(b) if b.recorded => {
                println!("  library: {}", b.library);
                println!("  pipeline handlers: {}", b.pipelines.join(", "));
                let pisp = b
                    .libpisp
                    .map(|v| format!("; libpisp {v}"))
                    .unwrap_or_default();
                println!("  IPA modules: {}{pisp}", b.ipas.join(", "));
            }
            Some(b) => println!(
                "  library: {} (not picamd's bundle: pipeline handlers not recorded)",
                b.library
            ),
            None => println!("  library: not found in /proc/self/maps"),
        }
        match libcamera::list_cameras() {
            Ok(cams) if cams.is_empty() => println!("  no libcamera cameras found"),
            Ok(cams) => {
                found += cams.len();
                for (i, cam) in cams.iter().enumerate() {
                    println!("  [{i}] {cam}");
                }
            }
            Err(e) => println!("  libcamera failed: {e}"),
        }
    }
    #[cfg(not(feature = "libcamera"))]
    println!("libcamera: not in this build (build with --features libcamera)");
    // Listed, but not counted: the exit status still says whether there is a camera.
    println!("Screens (use --source screen:fb:PATH or screen:x11:DISPLAY; `screen` picks one):");
    for line in picamd::source::screen::describe_screens() {
        println!("{line}");
    }
    if found == 0 {
        eprintln!("picamd: no cameras found");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// First SIGINT/SIGTERM: graceful shutdown. A second one, or the deadline: exit at once.
/// The handlers are registered before this is spawned, so a signal sent as soon as the
/// address is printed is never missed.
async fn handle_signals(shutdown: Shutdown, mut int: Signal, mut term: Signal) {
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.trigger();
    tokio::select! {
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = tokio::time::sleep(SHUTDOWN_DEADLINE) => tracing::warn!("shutdown took over {SHUTDOWN_DEADLINE:?}; exiting"),
    }
    std::process::exit(1);
}

/// Each viewer is a socket; lift the soft descriptor limit to the hard one so hundreds of
/// viewers do not hit the usual default of 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
}
