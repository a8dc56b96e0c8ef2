//! Configuration: one TOML file plus a CLI flag for every key.
//!
//! The file and the flags both fill a [`ConfigLayer`] (every key optional); layers are merged
//! (flags win) and then validated into a [`Config`] in one place, so an error names the key and
//! where its value came from whether it was typed on the command line or written in the file.
//! Runtime state (what is measured while running) lives in the hub, never here.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::access::{CorsPolicy, TrustedProxies};
use crate::auth::{AuthSpec, PasswordHashString, TokenHash, User};
use crate::led::{LedConfig, LedSpec};
use crate::source::controls::Controls;
use crate::source::faults::FaultSchedule;

/// A validated, complete configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address and port the HTTP server binds.
    pub listen: SocketAddr,
    /// The streams, in the order written; the first is the default one, which also answers
    /// the root URLs (`/stream`, `/snapshot`, `/ws`, …).
    pub streams: Vec<StreamConfig>,
    /// Account to switch to after binding when started as root.
    pub user: Option<Sourced<String>>,
    /// Primary group for [`Config::user`] instead of the account's own.
    pub group: Option<Sourced<String>>,
    /// Whether running as root without [`Config::user`] is accepted.
    pub allow_root: bool,
    /// Log verbosity (`RUST_LOG` overrides it).
    pub log_level: LogLevel,
    /// The status LED (`[led]`).
    pub led: LedSpec,
    /// Authentication, CORS and the limits that keep one client from hurting the others.
    pub security: SecurityConfig,
    /// HTTPS, when `tls_listen` is set.
    pub tls: Option<TlsConfig>,
    /// Where picamd keeps files it makes itself (the self-signed certificate).
    pub state_dir: PathBuf,
}

/// HTTPS: where to serve it and with which certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Address and port the HTTPS server binds.
    pub listen: SocketAddr,
    /// The certificate chain and key files (`tls_cert`, `tls_key`); none: a self-signed
    /// certificate in [`Config::state_dir`], made on first start.
    pub files: Option<TlsFiles>,
    /// Whether plain HTTP answers `308` to the HTTPS URL (everything but `/healthz`).
    pub http_redirect: bool,
}

/// PEM files named in the configuration, with where each name came from.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// The certificate, then any intermediates (`tls_cert`).
    pub cert: Sourced<PathBuf>,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`tls_key`).
    pub key: Sourced<PathBuf>,
}

/// Default [`Config::state_dir`]; picamd.service has `StateDirectory=picamd`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/picamd";

/// Who may connect and how much each client may take.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityConfig {
    /// Accounts and tokens (`[auth]`); none: authentication is off.
    pub auth: AuthSpec,
    /// Which other sites' pages may use picamd (`cors_origins`).
    pub cors: CorsPolicy,
    /// Whether `POST /controls` may change camera settings (`controls_api`).
    pub controls_api: bool,
    /// Most concurrent stream viewers over every stream together.
    pub max_viewers_total: usize,
    /// Most concurrent stream viewers from one client address (IPv6: one /64).
    pub max_viewers_per_client: usize,
    /// Requests per second one client address may sustain (bursts of 4 s worth); 0: no limit.
    pub max_requests_per_second: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`trusted_proxies`); none:
    /// the client is always the TCP peer.
    pub trusted_proxies: TrustedProxies,
}

/// Default [`SecurityConfig::max_viewers_total`].
pub const DEFAULT_MAX_VIEWERS_TOTAL: usize = 400;
/// Default [`SecurityConfig::max_viewers_per_client`]: the player's grid holds one socket per
/// stream (up to [`MAX_STREAMS`]), plus a few for reconnects and another tab.
pub const DEFAULT_MAX_VIEWERS_PER_CLIENT: usize = 20;
/// Default [`SecurityConfig::max_requests_per_second`]: far above what a player (about 20
/// requests to load, then a few per second) or a snapshot poller needs.
pub const DEFAULT_MAX_REQUESTS_PER_SECOND: u32 = 50;

/// A setting with where it came from, for errors found after resolution (e.g. an unknown
/// user is only noticed when the account is looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: String,
}

/// How much picamd logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err("use error, warn, info, debug or trace".into()),
        }
    }
}

impl Config {
    /// The stream behind the root URLs.
    pub fn default_stream(&self) -> &StreamConfig {
        &self.streams[0]
    }
}

/// One stream: a source and how its frames are encoded and served.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// URL-safe name: the stream's URLs are `/cam/<name>/…`.
    pub name: String,
    /// Which source produces frames.
    pub source: SourceSpec,
    /// Frame size in pixels.
    pub size: Size,
    /// Frames per second the source is asked for.
    pub fps: u32,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    /// Number of JPEG encoder threads.
    pub workers: usize,
    /// Most concurrent stream viewers (MJPEG + WebSocket) before new ones get 503.
    pub max_viewers: usize,
    /// Camera controls to apply at start (`[controls]` in the file).
    pub controls: Controls,
    /// Picture orientation asked of the camera: clockwise rotation in degrees (0, 90, 180,
    /// 270) after the flips.
    pub rotation: u32,
    pub hflip: bool,
    pub vflip: bool,
    /// How network and file sources read their input.
    pub input: InputOptions,
}

/// Name of the stream when the configuration lists none.
pub const DEFAULT_STREAM_NAME: &str = "main";
/// Most streams one instance runs; each costs threads and, while watched, CPU.
pub const MAX_STREAMS: usize = 16;

/// Checks a stream name: it becomes part of URLs, so 1..=32 of `A-Z a-z 0-9 _ -`.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err(format!("{name:?} must have 1 to 32 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, `_` and `-` only"
        ));
    }
    Ok(())
}

/// Settings for network streams and files (ignored by cameras and the test pattern).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputOptions {
    /// Files: start again at the end instead of showing "no signal".
    pub looping: bool,
    /// ffmpeg inputs that already are MJPEG: copy the JPEGs through, no decode/re-encode.
    pub passthrough: bool,
    /// Largest JPEG accepted from an upstream; a bigger one is an error and a reconnect.
    pub max_frame_bytes: usize,
}

/// Default [`InputOptions::max_frame_bytes`]: far above any real frame (a 4K JPEG at
/// quality 100 is ~5 MiB), far below what would hurt a Pi.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Which source to run, read from the form of `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `test`: the embedded moving test pattern; `test:live=3,stall=2,fail=2` adds a
    /// repeating fault schedule (see [`FaultSchedule`]).
    TestPattern { faults: Option<FaultSchedule> },
    /// `libcamera` or `libcamera:ID_OR_INDEX`: a Pi camera module (or any libcamera camera).
    Libcamera { camera: Option<String> },
    /// `v4l2:/dev/videoN` (or a `/dev/v4l/by-id/…` path): a USB webcam.
    V4l2 { device: PathBuf },
    /// `http://…` (or `mjpeg:http://…`): another streamer's multipart MJPEG, its JPEGs passed
    /// through as they are.
    MjpegHttp { url: String },
    /// Anything ffmpeg reads: `rtsp://`, `rtmp://`, `srt://`, HLS (`….m3u8`), HTTP-FLV
    /// (`….flv`), a file path, or `ffmpeg:INPUT` for any other input ffmpeg accepts.
    Ffmpeg { input: String },
}

/// URL path endings that mean a container or playlist (for ffmpeg), not multipart MJPEG.
const FFMPEG_HTTP_SUFFIXES: &[&str] = &[
    ".m3u8", ".flv", ".ts", ".mp4", ".mkv", ".webm", ".mov", ".mpd", ".m4v",
];

/// Whether an `http(s)://` URL names something for ffmpeg rather than an MJPEG stream.
fn http_needs_ffmpeg(url: &str) -> bool {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    FFMPEG_HTTP_SUFFIXES.iter().any(|s| path.ends_with(s))
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::TestPattern { faults: None } => f.write_str("test"),
            SourceSpec::TestPattern { faults: Some(s) } => write!(f, "test:{s}"),
            SourceSpec::Libcamera { camera: None } => f.write_str("libcamera"),
            SourceSpec::Libcamera { camera: Some(c) } => write!(f, "libcamera:{c}"),
            SourceSpec::V4l2 { device } => write!(f, "v4l2:{}", device.display()),
            SourceSpec::MjpegHttp { url } => f.write_str(url),
            SourceSpec::Ffmpeg { input } => write!(f, "ffmpeg:{input}"),
        }
    }
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match (kind, arg) {
            ("test" | "test-pattern", None) => Ok(SourceSpec::TestPattern { faults: None }),
            ("test" | "test-pattern", Some(schedule)) => Ok(SourceSpec::TestPattern {
                faults: Some(
                    schedule
                        .parse()
                        .map_err(|e| format!("fault schedule: {e}"))?,
                ),
            }),
            ("libcamera", None) => Ok(SourceSpec::Libcamera { camera: None }),
            ("libcamera", Some("")) => {
                Err("libcamera: needs a camera id or index after the colon".into())
            }
            ("libcamera", Some(c)) => Ok(SourceSpec::Libcamera {
                camera: Some(c.to_owned()),
            }),
            ("v4l2", Some(path)) if path.starts_with('/') => Ok(SourceSpec::V4l2 {
                device: PathBuf::from(path),
            }),
            ("v4l2", _) => Err("v4l2 needs a device path, e.g. v4l2:/dev/video0".into()),
            ("mjpeg", Some(url)) => {
                crate::source::mjpeg_http::check_url(url)?;
                Ok(SourceSpec::MjpegHttp {
                    url: url.to_owned(),
                })
            }
            ("ffmpeg", Some(input)) if !input.is_empty() => Ok(SourceSpec::Ffmpeg {
                input: input.to_owned(),
            }),
            ("ffmpeg", _) => Err("ffmpeg: needs an input after the colon".into()),
            ("http", Some(_)) if !http_needs_ffmpeg(s) => {
                crate::source::mjpeg_http::check_url(s)?;
                Ok(SourceSpec::MjpegHttp { url: s.to_owned() })
            }
            // HTTPS MJPEG goes through ffmpeg too: picamd's own HTTP client speaks plain HTTP.
            (
                "http" | "https" | "rtsp" | "rtsps" | "rtmp" | "rtmps" | "srt" | "udp" | "rtp",
                Some(rest),
            ) if rest.starts_with("//") && rest.len() > 2 => Ok(SourceSpec::Ffmpeg {
                input: s.to_owned(),
            }),
            ("file", Some(path)) if !path.is_empty() => Ok(SourceSpec::Ffmpeg {
                input: path.strip_prefix("//").unwrap_or(path).to_owned(),
            }),
            _ if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") => {
                Ok(SourceSpec::Ffmpeg {
                    input: s.to_owned(),
                })
            }
            _ => Err(format!(
                "unknown source {s:?}: use test, libcamera[:ID_OR_INDEX], v4l2:/dev/videoN, \
                 an http:// MJPEG URL, an rtsp://, rtmp:// or other stream URL, or a file path"
            )),
        }
    }
}

/// Frame size in pixels, written `WxH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

/// Smallest and largest accepted frame edge, in pixels. 4:2:0 needs even edges; the upper
/// bound keeps a typo from allocating gigabytes.
const MIN_EDGE_PX: u32 = 16;
const MAX_EDGE_PX: u32 = 7680;

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (w, h) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("{s:?} is not of the form WIDTHxHEIGHT, e.g. 1280x720"))?;
        let parse = |v: &str, what: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{what} {v:?} in {s:?} is not a whole number"))
        };
        let size = Size {
            width: parse(w, "width")?,
            height: parse(h, "height")?,
        };
        for (edge, what) in [(size.width, "width"), (size.height, "height")] {
            if !(MIN_EDGE_PX..=MAX_EDGE_PX).contains(&edge) {
                return Err(format!(
                    "{what} {edge} is outside {MIN_EDGE_PX}..={MAX_EDGE_PX} pixels"
                ));
            }
            if edge % 2 != 0 {
                return Err(format!(
                    "{what} {edge} is odd; YUV 4:2:0 needs even dimensions"
                ));
            }
        }
        Ok(size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// One layer of settings, from the file, from one `[[stream]]` table of the file, or from the
/// command line. Every key is optional; values stay as written until [`ConfigLayer::resolve`]
/// checks them. The top level's stream keys are the defaults of every `[[stream]]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// `ADDR:PORT` to listen on, default `0.0.0.0:8080` (top level only).
    pub listen: Option<String>,
    /// The stream's name (in a `[[stream]]` table; at the top level it names the single
    /// stream), default `main`.
    pub name: Option<String>,
    /// `[[stream]]` tables, one per stream (top level only).
    pub stream: Option<Vec<ConfigLayer>>,
    /// Source: `test` (default).
    pub source: Option<String>,
    /// Frame size `WxH`, default `1280x720`.
    pub size: Option<String>,
    /// Frames per second, 1..=120, default 30.
    pub fps: Option<i64>,
    /// JPEG quality 1..=100, default 80.
    pub quality: Option<i64>,
    /// Encoder threads 1..=16, default: number of cores, at most 4.
    pub workers: Option<i64>,
    /// Maximum concurrent stream viewers, 1..=100000, default 200.
    pub max_viewers: Option<i64>,
    /// `[controls]`: camera settings applied at start (file only; at runtime use
    /// `POST /controls`).
    pub controls: Option<Controls>,
    /// Rotation in degrees applied by the camera: 0, 90, 180 or 270 (libcamera only).
    pub rotation: Option<i64>,
    /// Mirror left-right in the camera (libcamera only).
    pub hflip: Option<bool>,
    /// Flip upside down in the camera (libcamera only).
    pub vflip: Option<bool>,
    /// File sources: loop at the end (default false).
    #[serde(rename = "loop")]
    pub looping: Option<bool>,
    /// ffmpeg sources whose input is MJPEG: pass the JPEGs through (default false).
    pub passthrough: Option<bool>,
    /// Largest upstream JPEG in bytes, 65536..=268435456, default 16 MiB.
    pub max_frame_size: Option<i64>,
    /// Account to switch to after binding when started as root (top level only).
    pub user: Option<String>,
    /// Primary group to switch to instead of the user's own (top level only).
    pub group: Option<String>,
    /// Accept running as root with no `user` (top level only, default false).
    pub allow_root: Option<bool>,
    /// `error`, `warn`, `info` (default), `debug` or `trace` (top level only).
    pub log_level: Option<String>,
    /// `[led]`: the status LED (file only).
    pub led: Option<LedConfig>,
    /// `[auth]`: accounts and tokens (file only). Without any, authentication is off.
    pub auth: Option<AuthConfig>,
    /// Origins (`https://host[:port]`) whose pages may call picamd and open `/ws`, or
    /// `"*"` for any; default none: same origin only (top level only).
    pub cors_origins: Option<Vec<String>>,
    /// `on` (default) or `off`: whether `POST /controls` may change camera settings (top
    /// level only).
    pub controls_api: Option<String>,
    /// Most concurrent stream viewers over every stream, 1..=100000, default 400 (top level
    /// only).
    pub max_viewers_total: Option<i64>,
    /// Most concurrent stream viewers from one client address, 1..=100000, default 20 (top
    /// level only).
    pub max_viewers_per_client: Option<i64>,
    /// Requests per second one client address may sustain, 0 (no limit)..=100000, default
    /// 50 (top level only).
    pub max_requests_per_second: Option<i64>,
    /// Reverse proxies whose `X-Forwarded-For` names the client: IP addresses or CIDR
    /// networks (`127.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`); default none: the header is
    /// ignored (top level only).
    pub trusted_proxies: Option<Vec<String>>,
    /// `ADDR:PORT` to serve HTTPS on, e.g. `0.0.0.0:443`; default none: no HTTPS (top level
    /// only).
    pub tls_listen: Option<String>,
    /// PEM file with the HTTPS certificate (then any intermediates), with `tls_key`; default
    /// none: a self-signed certificate in `state_dir` (top level only).
    pub tls_cert: Option<String>,
    /// PEM file with the private key of `tls_cert` (top level only).
    pub tls_key: Option<String>,
    /// With `tls_listen`: plain HTTP answers 308 to the HTTPS URL for everything but
    /// `/healthz` (default false: plain HTTP serves as before) (top level only).
    pub http_redirect: Option<bool>,
    /// Absolute directory for files picamd makes (the self-signed certificate), default
    /// `/var/lib/picamd` (top level only).
    pub state_dir: Option<String>,
}

/// The `[auth]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accounts for HTTP Basic: `[{ name = "…", password_hash = "$argon2id$…" }]`; make the
    /// hash with `picamd --hash-password`.
    pub users: Option<Vec<UserConfig>>,
    /// Hashes of bearer / `?token=` tokens, `sha256:<64 hex digits>`; make one with
    /// `picamd --new-token`.
    pub tokens: Option<Vec<String>>,
}

/// One `[[auth.users]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name typed at the browser's prompt (no `:`).
    pub name: String,
    /// An argon2id PHC string from `picamd --hash-password`.
    pub password_hash: String,
}

impl AuthConfig {
    fn resolve(&self, origin: &str) -> Result<AuthSpec, ConfigError> {
        let mut spec = AuthSpec::default();
        for (i, u) in self.users.iter().flatten().enumerate() {
            let at = format!("{origin}, [auth] users[{i}]");
            if u.name.is_empty() || u.name.contains(':') || u.name.len() > 64 {
                return Err(invalid(
                    "name",
                    at,
                    format!("{:?}: 1 to 64 characters, no `:`", u.name),
                ));
            }
            if spec.users.iter().any(|k: &User| k.name == u.name) {
                return Err(invalid("name", at, format!("{:?} is listed twice", u.name)));
            }
            let password_hash = PasswordHashString::parse(&u.password_hash).map_err(|e| {
                invalid(
                    "password_hash",
                    format!("{at} ({:?})", u.name),
                    e.to_string(),
                )
            })?;
            spec.users.push(User {
                name: u.name.clone(),
                password_hash,
            });
        }
        for (i, t) in self.tokens.iter().flatten().enumerate() {
            let token = TokenHash::parse(t).map_err(|e| {
                invalid(
                    "tokens",
                    format!("{origin}, [auth] tokens[{i}]"),
                    e.to_string(),
                )
            })?;
            spec.tokens.push(token);
        }
        Ok(spec)
    }
}

/// A configuration error: always names the key and where the bad value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}` ({origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: String,
        message: String,
    },
    #[error("`{key}` must be set: {message}")]
    Required { key: &'static str, message: String },
}

impl ConfigLayer {
    /// Reads and parses a TOML file. Unknown keys are errors (a typo must not be ignored).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a config file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Validates the merge of `file` (lower priority) and `flags` (higher priority).
    ///
    /// Each stream takes a key from, in order: the flag, its `[[stream]]` table, the file's
    /// top level, the built-in default. Flags therefore apply to every stream; `--stream`
    /// flags replace the file's stream list.
    pub fn resolve(
        file: Option<(&Path, ConfigLayer)>,
        flags: ConfigLayer,
    ) -> Result<Config, ConfigError> {
        let (file_path, mut file) = match file {
            Some((p, l)) => (p.display().to_string(), l),
            None => ("config file".to_owned(), ConfigLayer::default()),
        };
        let file_origin = format!("in {file_path}");
        let listen = match (&flags.listen, &file.listen) {
            (Some(v), _) => Some((v.clone(), "flag --listen".to_owned())),
            (None, Some(v)) => Some((v.clone(), file_origin.clone())),
            _ => None,
        };
        let listen = parsed("listen", listen, SocketAddr::from(([0, 0, 0, 0], 8080)))?;
        let top = |flag: &Option<String>, file: &Option<String>, flag_name: &str| match (flag, file)
        {
            (Some(v), _) => Some(Sourced {
                value: v.clone(),
                origin: format!("flag --{flag_name}"),
            }),
            (None, Some(v)) => Some(Sourced {
                value: v.clone(),
                origin: file_origin.clone(),
            }),
            (None, None) => None,
        };
        let user = top(&flags.user, &file.user, "user");
        let group = top(&flags.group, &file.group, "group");
        for (key, v) in [("user", &user), ("group", &group)] {
            if let Some(v) = v {
                check_account_name(&v.value).map_err(|e| invalid(key, v.origin.clone(), e))?;
            }
        }
        if let (None, Some(g)) = (&user, &group) {
            return Err(invalid(
                "group",
                g.origin.clone(),
                "only applies together with `user`",
            ));
        }
        let allow_root = flags.allow_root.or(file.allow_root).unwrap_or(false);
        let log_level = match top(&flags.log_level, &file.log_level, "log-level") {
            None => LogLevel::default(),
            Some(v) => v
                .value
                .parse()
                .map_err(|e| invalid("log_level", v.origin, format!("{:?}: {e}", v.value)))?,
        };
        let security = resolve_security(&flags, &file, &file_origin)?;
        let state_dir = match top(&flags.state_dir, &file.state_dir, "state-dir") {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(v) if Path::new(&v.value).is_absolute() => PathBuf::from(v.value),
            Some(v) => {
                return Err(invalid(
                    "state_dir",
                    v.origin,
                    format!("{:?} is not an absolute path", v.value),
                ))
            }
        };
        let tls = resolve_tls(&flags, &file, &file_origin)?;
        let led = match &file.led {
            None => LedSpec::None,
            Some(t) => t
                .resolve()
                .map_err(|e| invalid("led", format!("{file_origin}, [led]"), e))?,
        };

        let (tables, tables_origin) = match (flags.stream.clone(), file.stream.take()) {
            (Some(t), _) => (t, "flag --stream".to_owned()),
            (None, Some(t)) => (t, file_origin.clone()),
            (None, None) => (Vec::new(), file_origin.clone()),
        };
        if tables.len() > MAX_STREAMS {
            return Err(invalid(
                "stream",
                tables_origin,
                format!("{} streams; at most {MAX_STREAMS}", tables.len()),
            ));
        }
        if tables.len() > 1 {
            if flags.source.is_some() {
                return Err(invalid(
                    "source",
                    "flag --source".into(),
                    format!(
                        "applies to a single stream, and {} are configured ({tables_origin}); \
                         set each stream's source in the file or with --stream NAME=SOURCE",
                        tables.len()
                    ),
                ));
            }
            if flags.name.is_some() {
                return Err(invalid(
                    "name",
                    "flag --name".into(),
                    "names the single stream; the configured streams have their own names",
                ));
            }
        }
        let mut streams = Vec::new();
        if tables.is_empty() {
            streams.push(resolve_stream(&flags, None, &file, &file_origin)?);
        }
        for (i, table) in tables.iter().enumerate() {
            let origin = match &table.name {
                Some(n) => format!("{tables_origin}, stream {n:?}"),
                None => format!("{tables_origin}, stream #{}", i + 1),
            };
            for (key, set) in [
                ("listen", table.listen.is_some()),
                ("stream", table.stream.is_some()),
                ("user", table.user.is_some()),
                ("group", table.group.is_some()),
                ("allow_root", table.allow_root.is_some()),
                ("log_level", table.log_level.is_some()),
                ("led", table.led.is_some()),
                ("auth", table.auth.is_some()),
                ("cors_origins", table.cors_origins.is_some()),
                ("controls_api", table.controls_api.is_some()),
                ("max_viewers_total", table.max_viewers_total.is_some()),
                (
                    "max_viewers_per_client",
                    table.max_viewers_per_client.is_some(),
                ),
                (
                    "max_requests_per_second",
                    table.max_requests_per_second.is_some(),
                ),
                ("trusted_proxies", table.trusted_proxies.is_some()),
                ("tls_listen", table.tls_listen.is_some()),
                ("tls_cert", table.tls_cert.is_some()),
                ("tls_key", table.tls_key.is_some()),
                ("http_redirect", table.http_redirect.is_some()),
                ("state_dir", table.state_dir.is_some()),
            ] {
                if set {
                    return Err(invalid(key, origin, "cannot be set per stream"));
                }
            }
            if table.name.is_none() {
                return Err(invalid("name", origin, "every [[stream]] needs a name"));
            }
            if table.source.is_none() && file.source.is_none() && flags.source.is_none() {
                return Err(invalid("source", origin, "every [[stream]] needs a source"));
            }
            let stream = resolve_stream(&flags, Some((table, &origin)), &file, &file_origin)?;
            if streams.iter().any(|s: &StreamConfig| s.name == stream.name) {
                return Err(invalid(
                    "name",
                    origin,
                    format!("{:?} names two streams", stream.name),
                ));
            }
            streams.push(stream);
        }
        Ok(Config {
            listen,
            streams,
            user,
            group,
            allow_root,
            log_level,
            led,
            security,
            tls,
            state_dir,
        })
    }
}

/// The HTTPS keys: flag, then file. The certificate files go together and need `tls_listen`,
/// and so does `http_redirect`; reading the files is [`crate::tls`]'s job.
fn resolve_tls(
    flags: &ConfigLayer,
    file: &ConfigLayer,
    file_origin: &str,
) -> Result<Option<TlsConfig>, ConfigError> {
    let top = |get: &dyn Fn(&ConfigLayer) -> Option<String>, flag_name: &str| {
        get(flags)
            .map(|v| Sourced {
                value: v,
                origin: format!("flag --{flag_name}"),
            })
            .or_else(|| {
                get(file).map(|v| Sourced {
                    value: v,
                    origin: file_origin.to_owned(),
                })
            })
    };
    let listen = top(&|l| l.tls_listen.clone(), "tls-listen");
    let cert = top(&|l| l.tls_cert.clone(), "tls-cert");
    let key = top(&|l| l.tls_key.clone(), "tls-key");
    let redirect = match (flags.http_redirect, file.http_redirect) {
        (Some(v), _) => Some((v, "flag --http-redirect".to_owned())),
        (None, Some(v)) => Some((v, file_origin.to_owned())),
        (None, None) => None,
    };
    let path = |key: &'static str, v: Sourced<String>| {
        if v.value.is_empty() {
            return Err(invalid(key, v.origin, "is empty; give a PEM file's path"));
        }
        Ok(Sourced {
            value: PathBuf::from(v.value),
            origin: v.origin,
        })
    };
    let files = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some(TlsFiles {
            cert: path("tls_cert", c)?,
            key: path("tls_key", k)?,
        }),
        (Some(c), None) => {
            return Err(invalid(
                "tls_key",
                c.origin,
                "must be set together with `tls_cert` (the certificate's private key)",
            ))
        }
        (None, Some(k)) => {
            return Err(invalid(
                "tls_cert",
                k.origin,
                "must be set together with `tls_key` (the key's certificate)",
            ))
        }
    };
    let Some(listen) = listen else {
        if let Some(f) = files {
            return Err(invalid(
                "tls_cert",
                f.cert.origin,
                "only applies together with `tls_listen`",
            ));
        }
        if let Some((true, origin)) = redirect {
            return Err(invalid(
                "http_redirect",
                origin,
                "only applies together with `tls_listen`",
            ));
        }
        return Ok(None);
    };
    let addr = listen.value.parse::<SocketAddr>().map_err(|e| {
        invalid(
            "tls_listen",
            listen.origin.clone(),
            format!("{:?}: {e}", listen.value),
        )
    })?;
    Ok(Some(TlsConfig {
        listen: addr,
        files,
        http_redirect: redirect.is_some_and(|(v, _)| v),
    }))
}

/// The top-level security keys: flag, then file, then default.
fn resolve_security(
    flags: &ConfigLayer,
    file: &ConfigLayer,
    file_origin: &str,
) -> Result<SecurityConfig, ConfigError> {
    let top_int = |get: &dyn Fn(&ConfigLayer) -> Option<i64>, flag_name: &str| {
        get(flags)
            .map(|v| (v, format!("flag --{flag_name}")))
            .or_else(|| get(file).map(|v| (v, file_origin.to_owned())))
    };
    let auth = match &file.auth {
        None => AuthSpec::default(),
        Some(a) => a.resolve(file_origin)?,
    };
    let cors = match (&flags.cors_origins, &file.cors_origins) {
        (Some(list), _) => (list, "flag --cors-origin".to_owned()),
        (None, Some(list)) => (list, file_origin.to_owned()),
        (None, None) => (&Vec::new(), String::new()),
    };
    let cors = CorsPolicy::new(cors.0).map_err(|e| invalid("cors_origins", cors.1, e))?;
    let controls_api = match (&flags.controls_api, &file.controls_api) {
        (Some(v), _) => Some((v, "flag --controls-api".to_owned())),
        (None, Some(v)) => Some((v, file_origin.to_owned())),
        (None, None) => None,
    };
    let controls_api = match controls_api {
        None => true,
        Some((v, origin)) => match v.as_str() {
            "on" => true,
            "off" => false,
            other => {
                return Err(invalid(
                    "controls_api",
                    origin,
                    format!("{other:?}: use on or off"),
                ))
            }
        },
    };
    let max_viewers_total = ranged(
        "max_viewers_total",
        top_int(&|l| l.max_viewers_total, "max-viewers-total"),
        1..=100_000,
        DEFAULT_MAX_VIEWERS_TOTAL as i64,
    )? as usize;
    let max_viewers_per_client = ranged(
        "max_viewers_per_client",
        top_int(&|l| l.max_viewers_per_client, "max-viewers-per-client"),
        1..=100_000,
        DEFAULT_MAX_VIEWERS_PER_CLIENT as i64,
    )? as usize;
    let max_requests_per_second = ranged(
        "max_requests_per_second",
        top_int(&|l| l.max_requests_per_second, "max-requests-per-second"),
        0..=100_000,
        DEFAULT_MAX_REQUESTS_PER_SECOND as i64,
    )? as u32;
    let trusted_proxies = match (&flags.trusted_proxies, &file.trusted_proxies) {
        (Some(list), _) => (list, "flag --trusted-proxy".to_owned()),
        (None, Some(list)) => (list, file_origin.to_owned()),
        (None, None) => (&Vec::new(), String::new()),
    };
    let trusted_proxies = TrustedProxies::parse(trusted_proxies.0)
        .map_err(|e| invalid("trusted_proxies", trusted_proxies.1, e))?;
    Ok(SecurityConfig {
        auth,
        cors,
        controls_api,
        max_viewers_total,
        max_viewers_per_client,
        max_requests_per_second,
        trusted_proxies,
    })
}

/// Checks a user or group name before it reaches the account database: what `useradd`
/// accepts (or a numeric id), so a stray space or path is a config error, not a failed lookup.
fn check_account_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a user or group name"))
    }
}

fn invalid(key: &'static str, origin: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin,
        message: message.into(),
    }
}

fn ranged(
    key: &'static str,
    v: Option<(i64, String)>,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
) -> Result<i64, ConfigError> {
    match v {
        None => Ok(default),
        Some((n, _)) if range.contains(&n) => Ok(n),
        Some((n, origin)) => Err(invalid(
            key,
            origin,
            format!("{n} is outside {}..={}", range.start(), range.end()),
        )),
    }
}

fn parsed<T: FromStr>(
    key: &'static str,
    v: Option<(String, String)>,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match v {
        None => Ok(default),
        Some((s, origin)) => s
            .parse::<T>()
            .map_err(|e| invalid(key, origin, format!("{s:?}: {e}"))),
    }
}

/// Resolves one stream's keys: flag, then its `[[stream]]` table (if any), then the file's
/// top level, then the default.
fn resolve_stream(
    flags: &ConfigLayer,
    table: Option<(&ConfigLayer, &String)>,
    file: &ConfigLayer,
    file_origin: &str,
) -> Result<StreamConfig, ConfigError> {
    // Picks a key's value and says where it came from, for error messages.
    let pick = |get: &dyn Fn(&ConfigLayer) -> Option<String>, flag_name: &str| {
        if let Some(v) = get(flags) {
            return Some((v, format!("flag --{flag_name}")));
        }
        if let Some((t, origin)) = table {
            if let Some(v) = get(t) {
                return Some((v, origin.clone()));
            }
        }
        get(file).map(|v| (v, file_origin.to_owned()))
    };
    let pick_int = |get: &dyn Fn(&ConfigLayer) -> Option<i64>, flag_name: &str| {
        pick(&|l| get(l).map(|n| n.to_string()), flag_name)
            .map(|(v, o)| (v.parse::<i64>().expect("formatted above"), o))
    };
    let pick_bool = |get: &dyn Fn(&ConfigLayer) -> Option<bool>| {
        get(flags)
            .or_else(|| table.and_then(|(t, _)| get(t)))
            .or_else(|| get(file))
            .unwrap_or(false)
    };

    let name = match pick(&|l| l.name.clone(), "name") {
        None => DEFAULT_STREAM_NAME.to_owned(),
        Some((n, origin)) => {
            check_stream_name(&n).map_err(|e| invalid("name", origin, e))?;
            n
        }
    };
    let source = parsed(
        "source",
        pick(&|l| l.source.clone(), "source"),
        SourceSpec::TestPattern { faults: None },
    )?;
    let size = parsed(
        "size",
        pick(&|l| l.size.clone(), "size"),
        Size {
            width: 1280,
            height: 720,
        },
    )?;
    let fps = ranged("fps", pick_int(&|l| l.fps, "fps"), 1..=120, 30)?;
    let quality = ranged("quality", pick_int(&|l| l.quality, "quality"), 1..=100, 80)?;
    let workers = ranged(
        "workers",
        pick_int(&|l| l.workers, "workers"),
        1..=16,
        default_workers() as i64,
    )?;
    let max_viewers = ranged(
        "max_viewers",
        pick_int(&|l| l.max_viewers, "max-viewers"),
        1..=100_000,
        200,
    )?;
    let rotation = match pick_int(&|l| l.rotation, "rotation") {
        None => 0,
        Some((r @ (0 | 90 | 180 | 270), _)) => r as u32,
        Some((r, origin)) => {
            return Err(invalid(
                "rotation",
                origin,
                format!("{r} is not 0, 90, 180 or 270"),
            ))
        }
    };
    let max_frame_bytes = ranged(
        "max_frame_size",
        pick_int(&|l| l.max_frame_size, "max-frame-size"),
        65_536..=268_435_456,
        DEFAULT_MAX_FRAME_BYTES as i64,
    )? as usize;
    let input = InputOptions {
        looping: pick_bool(&|l| l.looping),
        passthrough: pick_bool(&|l| l.passthrough),
        max_frame_bytes,
    };
    // Controls come from the file only; a stream's table replaces the top level's.
    let (controls, controls_origin) = match table.and_then(|(t, o)| Some((t.controls.clone()?, o)))
    {
        Some((c, origin)) => (c, origin.clone()),
        None => (
            file.controls.clone().unwrap_or_default(),
            file_origin.to_owned(),
        ),
    };
    controls
        .validate()
        .map_err(|e| invalid("controls", controls_origin, e.to_string()))?;
    // The ranges above make these conversions lossless.
    Ok(StreamConfig {
        name,
        source,
        size,
        fps: fps as u32,
        quality: quality as u8,
        workers: workers as usize,
        max_viewers: max_viewers as usize,
        controls,
        rotation,
        hflip: pick_bool(&|l| l.hflip),
        vflip: pick_bool(&|l| l.vflip),
        input,
    })
}

/// One encoder per core, at most 4: beyond that the source, not the encoder, is the limit.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

impl Default for Config {
    fn default() -> Self {
        ConfigLayer::resolve(None, ConfigLayer::default()).expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.streams.len(), 1);
        let c = config.default_stream();
        assert_eq!(c.name, "main");
        assert_eq!(c.size.to_string(), "1280x720");
        assert_eq!((c.fps, c.quality), (30, 80));
        assert!((1..=4).contains(&c.workers));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: ConfigLayer = toml::from_str("fps = 10\nquality = 50").unwrap();
        let flags = ConfigLayer {
            fps: Some(25),
            ..Default::default()
        };
        let c = ConfigLayer::resolve(Some((Path::new("x.toml"), file)), flags).unwrap();
        let c = c.default_stream();
        assert_eq!((c.fps, c.quality), (25, 50));
    }

    #[test]
    fn errors_name_the_key_and_origin() {
        let file: ConfigLayer = toml::from_str("quality = 0").unwrap();
        let e = ConfigLayer::resolve(Some((Path::new("/etc/p.toml"), file)), Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`quality`") && e.contains("/etc/p.toml"), "{e}");

        let flags = ConfigLayer {
            size: Some("641x480".into()),
            ..Default::default()
        };
        let e = ConfigLayer::resolve(None, flags).unwrap_err().to_string();
        assert!(
            e.contains("`size`") && e.contains("--size") && e.contains("odd"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = toml::from_str::<ConfigLayer>("fsp = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fsp"), "{e}");
    }

    fn resolve_file(text: &str, flags: ConfigLayer) -> Result<Config, ConfigError> {
        let file: ConfigLayer = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "s.toml".into(),
            message: e.to_string(),
        })?;
        ConfigLayer::resolve(Some((Path::new("s.toml"), file)), flags)
    }

    #[test]
    fn streams_take_the_top_level_as_defaults() {
        let c = resolve_file(
            r#"
            fps = 10
            quality = 60
            [[stream]]
            name = "printer"
            source = "test"
            [[stream]]
            name = "door"
            source = "rtsp://10.0.0.3/s1"
            fps = 5
            size = "640x480"
            loop = true
            "#,
            ConfigLayer::default(),
        )
        .unwrap();
        let [a, b] = &c.streams[..] else {
            panic!("{:?}", c.streams)
        };
        assert_eq!((a.name.as_str(), a.fps, a.quality), ("printer", 10, 60));
        assert_eq!((b.name.as_str(), b.fps, b.quality), ("door", 5, 60));
        assert_eq!(b.size.to_string(), "640x480");
        assert!(b.input.looping && !a.input.looping);
        assert_eq!(c.default_stream().name, "printer");

        // A flag applies to every stream.
        let flags = ConfigLayer {
            fps: Some(2),
            ..Default::default()
        };
        let c = resolve_file(
            "[[stream]]\nname='a'\nsource='test'\nfps=9\n[[stream]]\nname='b'\nsource='test'",
            flags,
        )
        .unwrap();
        assert!(c.streams.iter().all(|s| s.fps == 2));
    }

    #[test]
    fn stream_errors_name_the_stream() {
        let e = |text: &str, flags: ConfigLayer| resolve_file(text, flags).unwrap_err().to_string();
        let m = e(
            "[[stream]]\nname='a'\nsource='test'\n[[stream]]\nname='b'\nsource='test'\nfps=0",
            Default::default(),
        );
        assert!(m.contains("`fps`") && m.contains("stream \"b\""), "{m}");
        let m = e(
            "[[stream]]\nname='a'\nsource='test'\n[[stream]]\nname='a'\nsource='test'",
            Default::default(),
        );
        assert!(m.contains("names two streams"), "{m}");
        let m = e("[[stream]]\nname='a b'\nsource='test'", Default::default());
        assert!(m.contains("`name`") && m.contains("' '"), "{m}");
        let m = e("[[stream]]\nsource='test'", Default::default());
        assert!(m.contains("needs a name"), "{m}");
        let m = e("[[stream]]\nname='a'", Default::default());
        assert!(m.contains("needs a source"), "{m}");
        let m = e(
            "[[stream]]\nname='a'\nsource='test'\nlisten='0.0.0.0:1'",
            Default::default(),
        );
        assert!(m.contains("`listen`") && m.contains("per stream"), "{m}");
        let two = "[[stream]]\nname='a'\nsource='test'\n[[stream]]\nname='b'\nsource='test'";
        let flags = ConfigLayer {
            source: Some("test".into()),
            ..Default::default()
        };
        let m = e(two, flags);
        assert!(m.contains("--source") && m.contains("single stream"), "{m}");
    }

    #[test]
    fn source_forms() {
        let parse = |s: &str| s.parse::<SourceSpec>();
        assert!(matches!(
            parse("http://cam.local:8080/?action=stream"),
            Ok(SourceSpec::MjpegHttp { .. })
        ));
        assert!(matches!(
            parse("mjpeg:http://10.0.0.2/stream"),
            Ok(SourceSpec::MjpegHttp { .. })
        ));
        for ff in [
            "rtsp://10.0.0.3:554/stream1",
            "rtmp://127.0.0.1/live/cam",
            "http://10.0.0.4/live/cam.flv",
            "https://example.com/hls/index.m3u8?x=1",
            "https://cam.example/stream.mjpg",
            "/var/lib/picamd/loop.mp4",
            "./clip.mkv",
            "file:/tmp/a.mp4",
            "ffmpeg:anullsrc",
        ] {
            assert!(matches!(parse(ff), Ok(SourceSpec::Ffmpeg { .. })), "{ff}");
        }
        assert_eq!(
            parse("file:///tmp/a.mp4").unwrap(),
            SourceSpec::Ffmpeg {
                input: "/tmp/a.mp4".into()
            }
        );
        for bad in [
            "mjpeg:rtsp://x/",
            "ffmpeg:",
            "rtsp:",
            "rtsp://",
            "gopher://x/",
            "http:x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// Every key a table of type `T` accepts, read from serde's "expected one of" list so
    /// the list cannot fall behind the struct.
    fn keys_of<T: serde::de::DeserializeOwned + fmt::Debug>() -> Vec<String> {
        let e = toml::from_str::<T>("no_such_key_ = 1")
            .unwrap_err()
            .to_string();
        // "expected one of `a`, `b`, …", or "expected `a` or `b`" for two keys.
        let list = e
            .split("expected one of")
            .nth(1)
            .or_else(|| e.split("expected ").nth(1))
            .expect("serde lists the keys");
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_example_config_resolves_and_shows_every_key() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/picamd.toml"));
        let file = ConfigLayer::from_file(path).unwrap();
        let c = ConfigLayer::resolve(Some((path, file)), ConfigLayer::default()).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:80");
        assert_eq!(c.user.as_ref().map(|u| u.value.as_str()), Some("picamd"));
        assert!(!c.allow_root);
        assert_eq!(c.led, LedSpec::None);

        let text = std::fs::read_to_string(path).unwrap();
        let shown = |key: &str| {
            text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[{key}]"))
                    || l.starts_with(&format!("[[{key}]]"))
            })
        };
        let mut keys = keys_of::<ConfigLayer>();
        keys.extend(keys_of::<Controls>());
        keys.extend(keys_of::<LedConfig>());
        keys.extend(keys_of::<AuthConfig>());
        keys.extend(keys_of::<UserConfig>());
        assert!(keys.len() > 30, "{keys:?}");
        let missing: Vec<&String> = keys.iter().filter(|k| !shown(k)).collect();
        assert!(missing.is_empty(), "systemd/picamd.toml lacks {missing:?}");
    }

    #[test]
    fn service_keys_are_top_level_only() {
        let c = resolve_file(
            "user = 'nobody'\ngroup = 'nogroup'\nallow_root = true\nlog_level = 'debug'",
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(c.group.unwrap().value, "nogroup");
        assert!(c.allow_root);
        assert_eq!(c.log_level, LogLevel::Debug);
        let flags = ConfigLayer {
            log_level: Some("trace".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_file("log_level = 'warn'", flags).unwrap().log_level,
            LogLevel::Trace
        );
        for key in [
            "user = 'x'",
            "log_level = 'info'",
            "allow_root = true",
            "[stream.led]",
        ] {
            let text = format!("[[stream]]\nname='a'\nsource='test'\n{key}");
            let e = resolve_file(&text, ConfigLayer::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("per stream"), "{key}: {e}");
        }
        let e = resolve_file("group = 'video'", ConfigLayer::default()).unwrap_err();
        assert!(e.to_string().contains("`group`"), "{e}");
        let e = resolve_file("log_level = 'loud'", ConfigLayer::default()).unwrap_err();
        assert!(e.to_string().contains("`log_level`"), "{e}");
    }

    #[test]
    fn security_keys_resolve_and_errors_name_the_key() {
        let c = Config::default();
        assert!(!c.security.auth.enabled());
        assert!(c.security.controls_api);
        assert_eq!(c.security.cors, CorsPolicy::default());
        assert_eq!(
            (
                c.security.max_viewers_total,
                c.security.max_viewers_per_client,
                c.security.max_requests_per_second
            ),
            (400, 20, 50)
        );

        let phc = crate::auth::hash_password("pw").unwrap();
        let token = crate::auth::TokenHash::of("t").to_config_string();
        let text = format!(
            "controls_api = 'off'\ncors_origins = ['https://octopi.local']\n\
             max_viewers_per_client = 3\nmax_requests_per_second = 0\n\
             [auth]\nusers = [{{ name = 'alice', password_hash = '{phc}' }}]\ntokens = ['{token}']"
        );
        let c = resolve_file(&text, ConfigLayer::default()).unwrap();
        assert!(c.security.auth.enabled());
        assert_eq!(c.security.auth.users[0].name, "alice");
        assert_eq!(c.security.auth.tokens.len(), 1);
        assert!(!c.security.controls_api);
        assert!(c.security.cors.allows("https://octopi.local"));
        assert_eq!(c.security.max_viewers_per_client, 3);
        assert_eq!(c.security.max_requests_per_second, 0);
        assert!(c.security.trusted_proxies.is_empty());

        let c = resolve_file(
            "trusted_proxies = ['127.0.0.1', '10.0.0.0/8', '::1', 'fd00::/8']",
            ConfigLayer::default(),
        )
        .unwrap();
        let t = &c.security.trusted_proxies;
        assert_eq!(t.len(), 4);
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.contains("192.168.1.2".parse().unwrap()));
        let flags = ConfigLayer {
            trusted_proxies: Some(vec!["192.168.1.0/24".into()]),
            ..Default::default()
        };
        let c = resolve_file("trusted_proxies = ['127.0.0.1']", flags).unwrap();
        let t = &c.security.trusted_proxies;
        assert!(
            t.contains("192.168.1.2".parse().unwrap()) && !t.contains("127.0.0.1".parse().unwrap())
        );
        let flags = ConfigLayer {
            trusted_proxies: Some(vec!["proxy.lan".into()]),
            ..Default::default()
        };
        let m = resolve_file("", flags).unwrap_err().to_string();
        assert!(
            m.contains("`trusted_proxies`") && m.contains("flag --trusted-proxy"),
            "{m}"
        );

        let e = |text: &str| {
            resolve_file(text, ConfigLayer::default())
                .unwrap_err()
                .to_string()
        };
        let m = e("[auth]\nusers = [{ name = 'a', password_hash = 'plain' }]");
        assert!(
            m.contains("`password_hash`") && m.contains("argon2id"),
            "{m}"
        );
        let m = e("[auth]\ntokens = ['abc']");
        assert!(m.contains("`tokens`") && m.contains("sha256:"), "{m}");
        let m = e(&format!(
            "[auth]\nusers = [{{ name = 'a:b', password_hash = '{phc}' }}]"
        ));
        assert!(m.contains("`name`"), "{m}");
        let m = e("[auth]\npassword = 'x'");
        assert!(m.contains("password"), "{m}");
        let m = e("controls_api = 'maybe'");
        assert!(m.contains("`controls_api`"), "{m}");
        let m = e("cors_origins = ['octopi.local']");
        assert!(m.contains("`cors_origins`"), "{m}");
        let m = e("max_viewers_per_client = 0");
        assert!(m.contains("`max_viewers_per_client`"), "{m}");
        let m = e("trusted_proxies = ['127.0.0.1', '10.0.0.0/33']");
        assert!(
            m.contains("`trusted_proxies`") && m.contains("10.0.0.0/33"),
            "{m}"
        );
        let m = e("trusted_proxies = ['nginx']");
        assert!(
            m.contains("`trusted_proxies`") && m.contains("nginx"),
            "{m}"
        );
        let m = e("[[stream]]\nname='a'\nsource='test'\ntrusted_proxies=['::1']");
        assert!(m.contains("per stream"), "{m}");
        let m = e("[[stream]]\nname='a'\nsource='test'\ncontrols_api='off'");
        assert!(m.contains("per stream"), "{m}");
    }

    #[test]
    fn tls_keys_resolve_and_errors_name_the_key() {
        let c = Config::default();
        assert_eq!(c.tls, None);
        assert_eq!(c.state_dir, Path::new("/var/lib/picamd"));
        let c = resolve_file(
            "tls_listen = '0.0.0.0:443'\nhttp_redirect = true\nstate_dir = '/srv/p'",
            ConfigLayer::default(),
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.listen.to_string(), "0.0.0.0:443");
        assert!(tls.http_redirect && tls.files.is_none());
        assert_eq!(c.state_dir, Path::new("/srv/p"));
        let flags = ConfigLayer {
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            ..Default::default()
        };
        let c = resolve_file("tls_listen = '[::]:8443'", flags).unwrap();
        let files = c.tls.unwrap().files.unwrap();
        assert_eq!(files.cert.value, Path::new("/c.pem"));
        assert_eq!(files.key.origin, "flag --tls-key");

        let e = |text: &str| {
            resolve_file(text, ConfigLayer::default())
                .unwrap_err()
                .to_string()
        };
        let m = e("tls_listen = '0.0.0.0'");
        assert!(m.contains("`tls_listen`"), "{m}");
        let m = e("tls_listen = ':443'\ntls_cert = '/c.pem'");
        assert!(m.contains("`tls_key`") && m.contains("together"), "{m}");
        let m = e("tls_listen = ':443'\ntls_key = '/k.pem'");
        assert!(m.contains("`tls_cert`"), "{m}");
        let m = e("tls_cert = '/c.pem'\ntls_key = '/k.pem'");
        assert!(m.contains("`tls_cert`") && m.contains("tls_listen"), "{m}");
        let m = e("http_redirect = true");
        assert!(m.contains("`http_redirect`"), "{m}");
        let m = e("state_dir = 'var/lib'");
        assert!(m.contains("`state_dir`"), "{m}");
        let m = e("[[stream]]\nname='a'\nsource='test'\ntls_listen=':443'");
        assert!(m.contains("per stream"), "{m}");
    }

    #[test]
    fn size_parsing() {
        assert_eq!(
            "1920x1080".parse::<Size>().unwrap(),
            Size {
                width: 1920,
                height: 1080
            }
        );
        for bad in ["1920", "x", "0x0", "-2x4", "99999x2", "abcxdef"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }
}
