//! Configuration: one TOML file plus a CLI flag for every key.
//!
//! Every key is stated once, in [`keys`]' table: the file's structs, the flags
//! ([`flags`]), `--help`, ranges, defaults and the documentation's key reference are made
//! from it. The file and the flags both fill a [`ConfigLayer`] (every key optional); layers
//! are merged (flags win, in [`Layers::pick`]) and then validated into a [`Config`] in one
//! place, so an error names the key and where its value came from whether it was typed on the
//! command line or written in the file. Runtime state (what is measured while running) lives
//! in the hub, never here.

pub mod flags;
pub mod keys;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::access::{CorsPolicy, TrustedProxies};
use crate::auth::{AuthSpec, DigestHa1, PasswordHashString, TokenHash, User};
pub use crate::encode::m2m::EncoderPref;
use crate::led::LedSpec;
use crate::source::controls::Controls;
use crate::source::v4l2::PixelFormat;

pub use keys::{key, ConfigLayer, StreamLayer, KEYS};
use keys::{Key, Kind, Scope, Valid};
use values::check_account_name;
pub use values::{
    check_publish_url, check_stream_name, LogLevel, PixelFormatPref, Size, SourceSpec,
};

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
    /// The boot scripts' report of which persisted files they used (`boot_status`); `None`:
    /// none is read.
    pub boot_status: Option<PathBuf>,
    /// The RTSP server, unless `rtsp_listen` is empty.
    pub rtsp: Option<RtspConfig>,
    /// WebRTC (WHEP), unless `webrtc = "off"`.
    pub webrtc: Option<WebRtcConfig>,
}

/// WebRTC: where its media socket is and what clients are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcConfig {
    /// The UDP socket every session shares (and the ICE-TCP listener's port number).
    pub udp: SocketAddr,
    /// Set by the user (a failure to bind it is fatal), or the default (a failure costs
    /// WebRTC only).
    pub explicit: bool,
    /// Whether UDP candidates are offered (`webrtc_udp`).
    pub udp_candidates: bool,
    /// A public address reaching this host through a port forward (`webrtc_public_ip`).
    pub public_ip: Option<std::net::IpAddr>,
    /// STUN/TURN servers clients are told about (`webrtc_ice_servers`).
    pub ice_servers: Vec<IceServer>,
    /// A session whose client sends nothing for this long ends (`webrtc_peer_timeout`).
    pub peer_timeout: std::time::Duration,
}

/// The WebRTC port when `webrtc_udp_port` is not set.
pub const DEFAULT_WEBRTC_PORT: u16 = 8555;

/// One STUN or TURN server, as a browser's `RTCIceServer` wants it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, … (credentials taken out).
    pub urls: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl IceServer {
    /// Reads `stun:HOST[:PORT]`, `stuns:…`, `turn:[USER:PASSWORD@]HOST[:PORT][?transport=…]`
    /// or `turns:…`. The credentials (TURN only) are split off the URL, which RFC 7065
    /// gives no place for them.
    pub fn parse(text: &str) -> Result<IceServer, String> {
        let (scheme, rest) = text.split_once(':').ok_or_else(|| {
            format!("{text:?}: use stun:HOST:PORT or turn:USER:PASSWORD@HOST:PORT")
        })?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "stun" | "stuns" | "turn" | "turns") {
            return Err(format!(
                "{text:?}: the scheme must be stun, stuns, turn or turns"
            ));
        }
        let (creds, host) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let host_part = host.split('?').next().unwrap_or("");
        let ok_host = !host_part.is_empty()
            && host_part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
        if !ok_host || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{text:?}: no usable host"));
        }
        let (username, credential) = match creds {
            None => (None, None),
            Some(_) if scheme.starts_with("stun") => {
                return Err(format!("{text:?}: STUN servers take no credentials"))
            }
            Some(c) => match c.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => {
                    (Some(u.to_owned()), Some(p.to_owned()))
                }
                _ => return Err(format!("{text:?}: credentials are USER:PASSWORD@")),
            },
        };
        if scheme.starts_with("turn") && username.is_none() {
            return Err(format!(
                "{text:?}: a TURN server needs credentials, turn:USER:PASSWORD@HOST:PORT"
            ));
        }
        Ok(IceServer {
            urls: format!("{scheme}:{host}"),
            username,
            credential,
        })
    }
}

/// Where the RTSP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspConfig {
    pub listen: SocketAddr,
    /// Set by the user (a failure to bind it is fatal), or the default next to `listen`
    /// (a failure only costs RTSP: port 8554 may be another server's).
    pub explicit: bool,
}

/// The RTSP port when `rtsp_listen` is not set.
pub const DEFAULT_RTSP_PORT: u16 = 8554;

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

/// A setting with where it came from, for errors found after resolution (e.g. an unknown
/// user is only noticed when the account is looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: String,
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
    /// V4L2 cameras: the one pixel format to ask for, or `None` for the best offered.
    pub pixel_format: Option<PixelFormat>,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    /// What encodes the JPEGs.
    pub jpeg_encoder: EncoderPref,
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
    /// How the stream's H.264 is encoded (while someone consumes it).
    pub h264: H264Options,
    /// Servers the stream's H.264 is pushed to.
    pub publish: Vec<String>,
}

/// The stream's H.264 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Options {
    /// Target bits per second; `None`: scaled to the frame size and rate.
    pub bitrate: Option<u32>,
    /// Seconds from one keyframe to the next.
    pub gop_seconds: u32,
    /// What encodes it.
    pub encoder: EncoderPref,
}

/// Most streams one instance runs; each costs threads and, while watched, CPU.
pub const MAX_STREAMS: usize = 16;

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
    /// RTSP Digest's HA1, `md5:<32 hex>` from `picamd --hash-password --digest-user NAME`;
    /// password-equivalent for RTSP (not for HTTP).
    pub rtsp_digest: Option<String>,
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
            let rtsp_digest = match &u.rtsp_digest {
                None => None,
                Some(d) => Some(DigestHa1::parse(d).map_err(|e| {
                    invalid("rtsp_digest", format!("{at} ({:?})", u.name), e.to_string())
                })?),
            };
            spec.users.push(User {
                name: u.name.clone(),
                password_hash,
                rtsp_digest,
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

/// Where a layer came from, to name in errors.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    /// The command line: each key names its own flag.
    Flags,
    /// The file, or one of its `[[stream]]` tables (e.g. `in /etc/p.toml, stream "door"`).
    At(&'a str),
}

impl Origin<'_> {
    fn of(self, key: &Key) -> String {
        match self {
            Origin::Flags => format!("flag --{}", key.flag_name().unwrap_or_default()),
            Origin::At(text) => text.to_owned(),
        }
    }
}

/// The layers that may set a key, highest priority first.
struct Layers<'a, L>(Vec<(&'a L, Origin<'a>)>);

impl<L> Layers<'_, L> {
    /// "Flag beats file", stated once: the first layer that sets the key, with its origin.
    fn pick<T: Clone>(&self, key: &Key, get: impl Fn(&L) -> &Option<T>) -> Option<Sourced<T>> {
        self.0.iter().find_map(|(layer, origin)| {
            get(layer).clone().map(|value| Sourced {
                value,
                origin: origin.of(key),
            })
        })
    }
}

/// `pick!(layers, fps)`: the key `fps` from the first layer that sets its field.
macro_rules! pick {
    ($layers:expr, $field:ident) => {
        $layers.pick(&key::$field, |l| &l.$field)
    };
}

/// The table's built-in default of a key whose default is a value.
fn builtin<T: serde::de::DeserializeOwned>(key: &Key) -> T {
    key.default_value()
        .and_then(|v| v.try_into().ok())
        .unwrap_or_else(|| panic!("the key table gives `{}` no default of its type", key.name))
}

/// A whole-number key: its value (or `default`) checked against the table's valid values.
fn int_or(key: &Key, v: Option<Sourced<i64>>, default: i64) -> Result<i64, ConfigError> {
    let Some(Sourced { value: n, origin }) = v else {
        return Ok(default);
    };
    let message = match key.kind {
        Kind::Int(_, Valid::Range(min, max)) if !(min..=max).contains(&n) => {
            format!("{n} is outside {min}..={max}")
        }
        Kind::Int(_, Valid::OneOf(values)) if !values.contains(&n) => {
            let list: Vec<String> = values.iter().map(i64::to_string).collect();
            let (last, rest) = list.split_last().expect("a key lists its values");
            format!("{n} is not {} or {last}", rest.join(", "))
        }
        _ => return Ok(n),
    };
    Err(invalid(key.name, origin, message))
}

/// A whole-number key with the table's default.
fn int(key: &Key, v: Option<Sourced<i64>>) -> Result<i64, ConfigError> {
    int_or(key, v, builtin(key))
}

/// A key whose text has a form of its own (`T: FromStr`), with the table's default.
fn parsed<T: FromStr>(key: &Key, v: Option<Sourced<String>>) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    let (text, origin) = match v {
        Some(s) => (s.value, s.origin),
        None => (builtin::<String>(key), "default".to_owned()),
    };
    text.parse::<T>()
        .map_err(|e| invalid(key.name, origin, format!("{text:?}: {e}")))
}

/// A path key that must be absolute, with the table's default; `or` ends the error message
/// with what else the key takes.
fn absolute_path(key: &Key, v: Option<Sourced<String>>, or: &str) -> Result<PathBuf, ConfigError> {
    match v {
        None => Ok(builtin::<String>(key).into()),
        Some(v) if Path::new(&v.value).is_absolute() => Ok(v.value.into()),
        Some(v) => Err(invalid(
            key.name,
            v.origin,
            format!("{:?} is not an absolute path{or}", v.value),
        )),
    }
}

/// A switch: its value, else the table's default.
fn switch(key: &Key, v: Option<Sourced<bool>>) -> bool {
    v.map_or_else(|| builtin(key), |s| s.value)
}

fn invalid(key: &'static str, origin: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin,
        message: message.into(),
    }
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
        toml::from_str(text).map_err(|e| {
            misplaced(text, path, &e).unwrap_or_else(|| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })
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
        let (file_path, file) = match file {
            Some((p, l)) => (p.display().to_string(), l),
            None => ("config file".to_owned(), ConfigLayer::default()),
        };
        let file_origin = format!("in {file_path}");
        let top = Layers(vec![
            (&flags, Origin::Flags),
            (&file, Origin::At(&file_origin)),
        ]);
        let listen = parsed(&key::listen, pick!(top, listen))?;
        let user = pick!(top, user);
        let group = pick!(top, group);
        for (key, v) in [(&key::user, &user), (&key::group, &group)] {
            if let Some(v) = v {
                check_account_name(&v.value).map_err(|e| invalid(key.name, v.origin.clone(), e))?;
            }
        }
        if let (None, Some(g)) = (&user, &group) {
            return Err(invalid(
                key::group.name,
                g.origin.clone(),
                "only applies together with `user`",
            ));
        }
        let allow_root = switch(&key::allow_root, pick!(top, allow_root));
        let log_level = parsed(&key::log_level, pick!(top, log_level))?;
        let security = resolve_security(&top)?;
        let state_dir = absolute_path(&key::state_dir, pick!(top, state_dir), "")?;
        let boot_status = match pick!(top, boot_status) {
            Some(v) if v.value.is_empty() => None,
            v => Some(absolute_path(&key::boot_status, v, " (or empty: none)")?),
        };
        let tls = resolve_tls(&top)?;
        let rtsp = resolve_rtsp(&top, listen)?;
        let webrtc = resolve_webrtc(&top, listen)?;
        let led = match pick!(top, led) {
            None => LedSpec::None,
            Some(t) => t
                .value
                .resolve()
                .map_err(|e| invalid(key::led.name, format!("{}, [led]", t.origin), e))?,
        };

        let (tables, tables_origin) = match pick!(top, stream) {
            Some(t) => (t.value, t.origin),
            None => (Vec::new(), file_origin.clone()),
        };
        if tables.len() > MAX_STREAMS {
            return Err(invalid(
                key::stream.name,
                tables_origin,
                format!("{} streams; at most {MAX_STREAMS}", tables.len()),
            ));
        }
        if tables.len() > 1 {
            if flags.source.is_some() {
                return Err(invalid(
                    key::source.name,
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
                    key::name.name,
                    "flag --name".into(),
                    "names the single stream; the configured streams have their own names",
                ));
            }
        }
        let (flag_keys, file_keys) = (flags.stream_keys(), file.stream_keys());
        let mut streams = Vec::new();
        if tables.is_empty() {
            let layers = Layers(vec![
                (&flag_keys, Origin::Flags),
                (&file_keys, Origin::At(&file_origin)),
            ]);
            streams.push(resolve_stream(&layers)?);
        }
        for (i, table) in tables.iter().enumerate() {
            let origin = match &table.name {
                Some(n) => format!("{tables_origin}, stream {n:?}"),
                None => format!("{tables_origin}, stream #{}", i + 1),
            };
            if table.name.is_none() {
                return Err(invalid(
                    key::name.name,
                    origin,
                    "every [[stream]] needs a name",
                ));
            }
            let layers = Layers(vec![
                (&flag_keys, Origin::Flags),
                (table, Origin::At(&origin)),
                (&file_keys, Origin::At(&file_origin)),
            ]);
            if pick!(layers, source).is_none() {
                return Err(invalid(
                    key::source.name,
                    origin,
                    "every [[stream]] needs a source",
                ));
            }
            let stream = resolve_stream(&layers)?;
            if streams.iter().any(|s: &StreamConfig| s.name == stream.name) {
                return Err(invalid(
                    key::name.name,
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
            boot_status,
            rtsp,
            webrtc,
        })
    }
}

/// An `on|off` key.
fn on_off(key: &Key, v: Option<Sourced<String>>) -> Result<bool, ConfigError> {
    match v {
        None => Ok(builtin::<String>(key) == "on"),
        Some(v) => match v.value.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(invalid(
                key.name,
                v.origin,
                format!("{other:?}: use on or off"),
            )),
        },
    }
}

/// The WebRTC keys: off, or its socket and what clients are told.
fn resolve_webrtc(
    top: &Layers<ConfigLayer>,
    listen: SocketAddr,
) -> Result<Option<WebRtcConfig>, ConfigError> {
    if !on_off(&key::webrtc, pick!(top, webrtc))? {
        return Ok(None);
    }
    let port = pick!(top, webrtc_udp_port);
    let explicit = port.is_some();
    let port = match port {
        Some(p) => int_or(&key::webrtc_udp_port, Some(p), 0)? as u16,
        None if listen.port() == 0 => 0,
        None => DEFAULT_WEBRTC_PORT,
    };
    let public_ip = match pick!(top, webrtc_public_ip) {
        None => None,
        Some(v) => Some(v.value.trim().parse().map_err(|_| {
            invalid(
                key::webrtc_public_ip.name,
                v.origin.clone(),
                format!("{:?} is not an IP address", v.value),
            )
        })?),
    };
    let mut ice_servers = Vec::new();
    if let Some(list) = pick!(top, webrtc_ice_servers) {
        for url in &list.value {
            ice_servers.push(
                IceServer::parse(url)
                    .map_err(|e| invalid(key::webrtc_ice_servers.name, list.origin.clone(), e))?,
            );
        }
    }
    Ok(Some(WebRtcConfig {
        udp: SocketAddr::new(listen.ip(), port),
        explicit,
        udp_candidates: on_off(&key::webrtc_udp, pick!(top, webrtc_udp))?,
        public_ip,
        ice_servers,
        peer_timeout: std::time::Duration::from_secs(int(
            &key::webrtc_peer_timeout,
            pick!(top, webrtc_peer_timeout),
        )? as u64),
    }))
}

/// `rtsp_listen`: an address, empty for no RTSP, or by default [`DEFAULT_RTSP_PORT`] on
/// `listen`'s address — or an ephemeral port when `listen`'s is 0 (tests, tools), so two
/// such instances never fight over 8554.
fn resolve_rtsp(
    top: &Layers<ConfigLayer>,
    listen: SocketAddr,
) -> Result<Option<RtspConfig>, ConfigError> {
    match pick!(top, rtsp_listen) {
        None => {
            let port = if listen.port() == 0 {
                0
            } else {
                DEFAULT_RTSP_PORT
            };
            Ok(Some(RtspConfig {
                listen: SocketAddr::new(listen.ip(), port),
                explicit: false,
            }))
        }
        Some(v) if v.value.trim().is_empty() => Ok(None),
        Some(v) => Ok(Some(RtspConfig {
            listen: parsed(&key::rtsp_listen, Some(v))?,
            explicit: true,
        })),
    }
}

/// A top-level key written in a `[[stream]]` table is an unknown field to the parser, whose
/// message would list the stream keys; say instead that the key cannot be set per stream.
fn misplaced(text: &str, path: &Path, e: &toml::de::Error) -> Option<ConfigError> {
    let name = e
        .message()
        .strip_prefix("unknown field `")?
        .split('`')
        .next()?;
    let key = keys::find(name).filter(|k| k.scope == Scope::Global)?;
    let at = e.span()?.start;
    let (before, after) = (text.get(..at)?, text.get(at..)?);
    let line_end = after.find('\n').map_or(text.len(), |i| at + i);
    // The table the key sits in: the last header at or before its line.
    let header = text[..line_end]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))?;
    let table = header.trim_matches(['[', ']']).trim();
    (table == "stream" || table == format!("stream.{name}")).then(|| {
        let line = before.matches('\n').count() + 1;
        invalid(
            key.name,
            format!("in {}, line {line}", path.display()),
            "cannot be set per stream",
        )
    })
}

/// The HTTPS keys. The certificate files go together and need `tls_listen`, and so does
/// `http_redirect`; reading the files is [`crate::tls`]'s job.
fn resolve_tls(top: &Layers<ConfigLayer>) -> Result<Option<TlsConfig>, ConfigError> {
    let redirect = pick!(top, http_redirect);
    let path = |key: &Key, v: Sourced<String>| {
        if v.value.is_empty() {
            return Err(invalid(
                key.name,
                v.origin,
                "is empty; give a PEM file's path",
            ));
        }
        Ok(Sourced {
            value: PathBuf::from(v.value),
            origin: v.origin,
        })
    };
    let files = match (pick!(top, tls_cert), pick!(top, tls_key)) {
        (None, None) => None,
        (Some(c), Some(k)) => Some(TlsFiles {
            cert: path(&key::tls_cert, c)?,
            key: path(&key::tls_key, k)?,
        }),
        (Some(c), None) => {
            return Err(invalid(
                key::tls_key.name,
                c.origin,
                "must be set together with `tls_cert` (the certificate's private key)",
            ))
        }
        (None, Some(k)) => {
            return Err(invalid(
                key::tls_cert.name,
                k.origin,
                "must be set together with `tls_key` (the key's certificate)",
            ))
        }
    };
    let Some(listen) = pick!(top, tls_listen) else {
        if let Some(f) = files {
            return Err(invalid(
                key::tls_cert.name,
                f.cert.origin,
                "only applies together with `tls_listen`",
            ));
        }
        if let Some(Sourced {
            value: true,
            origin,
        }) = redirect
        {
            return Err(invalid(
                key::http_redirect.name,
                origin,
                "only applies together with `tls_listen`",
            ));
        }
        return Ok(None);
    };
    Ok(Some(TlsConfig {
        listen: parsed(&key::tls_listen, Some(listen))?,
        files,
        http_redirect: switch(&key::http_redirect, redirect),
    }))
}

/// The top-level security keys.
fn resolve_security(top: &Layers<ConfigLayer>) -> Result<SecurityConfig, ConfigError> {
    let auth = match pick!(top, auth) {
        None => AuthSpec::default(),
        Some(a) => a.value.resolve(&a.origin)?,
    };
    let list = |v: Option<Sourced<Vec<String>>>| v.map(|s| (s.value, s.origin)).unwrap_or_default();
    let (origins, origin) = list(pick!(top, cors_origins));
    let cors = CorsPolicy::new(&origins).map_err(|e| invalid(key::cors_origins.name, origin, e))?;
    let controls_api = match pick!(top, controls_api) {
        None => builtin::<String>(&key::controls_api) == "on",
        Some(v) => match v.value.as_str() {
            "on" => true,
            "off" => false,
            other => {
                return Err(invalid(
                    key::controls_api.name,
                    v.origin,
                    format!("{other:?}: use on or off"),
                ))
            }
        },
    };
    let (proxies, origin) = list(pick!(top, trusted_proxies));
    let trusted_proxies = TrustedProxies::parse(&proxies)
        .map_err(|e| invalid(key::trusted_proxies.name, origin, e))?;
    // The table's ranges make these conversions lossless.
    Ok(SecurityConfig {
        auth,
        cors,
        controls_api,
        max_viewers_total: int(&key::max_viewers_total, pick!(top, max_viewers_total))? as usize,
        max_viewers_per_client: int(
            &key::max_viewers_per_client,
            pick!(top, max_viewers_per_client),
        )? as usize,
        max_requests_per_second: int(
            &key::max_requests_per_second,
            pick!(top, max_requests_per_second),
        )? as u32,
        trusted_proxies,
    })
}

/// Resolves one stream's keys from its layers: flag, its `[[stream]]` table (if any), the
/// file's top level, then the default.
fn resolve_stream(layers: &Layers<StreamLayer>) -> Result<StreamConfig, ConfigError> {
    let name = match pick!(layers, name) {
        None => builtin(&key::name),
        Some(n) => {
            check_stream_name(&n.value).map_err(|e| invalid(key::name.name, n.origin, e))?;
            n.value
        }
    };
    // Controls come from the file only; a stream's table replaces the top level's.
    let controls = match pick!(layers, controls) {
        None => Controls::default(),
        Some(c) => {
            c.value
                .validate()
                .map_err(|e| invalid(key::controls.name, c.origin, e.to_string()))?;
            c.value
        }
    };
    // The table's ranges make these conversions lossless.
    Ok(StreamConfig {
        name,
        source: parsed(&key::source, pick!(layers, source))?,
        size: parsed(&key::size, pick!(layers, size))?,
        fps: int(&key::fps, pick!(layers, fps))? as u32,
        pixel_format: parsed::<PixelFormatPref>(&key::pixel_format, pick!(layers, pixel_format))?.0,
        quality: int(&key::quality, pick!(layers, quality))? as u8,
        jpeg_encoder: parsed(&key::jpeg_encoder, pick!(layers, jpeg_encoder))?,
        workers: int_or(&key::workers, pick!(layers, workers), default_workers())? as usize,
        max_viewers: int(&key::max_viewers, pick!(layers, max_viewers))? as usize,
        controls,
        rotation: int(&key::rotation, pick!(layers, rotation))? as u32,
        hflip: switch(&key::hflip, pick!(layers, hflip)),
        vflip: switch(&key::vflip, pick!(layers, vflip)),
        input: InputOptions {
            looping: switch(&key::looping, pick!(layers, looping)),
            passthrough: switch(&key::passthrough, pick!(layers, passthrough)),
            max_frame_bytes: int(&key::max_frame_size, pick!(layers, max_frame_size))? as usize,
        },
        h264: H264Options {
            bitrate: match pick!(layers, h264_bitrate) {
                None => None,
                v => Some(int_or(&key::h264_bitrate, v, 0)? as u32),
            },
            gop_seconds: int(&key::h264_gop, pick!(layers, h264_gop))? as u32,
            encoder: parsed(&key::h264_encoder, pick!(layers, h264_encoder))?,
        },
        publish: match pick!(layers, publish) {
            None => Vec::new(),
            Some(list) => {
                for url in &list.value {
                    check_publish_url(url)
                        .map_err(|e| invalid(key::publish.name, list.origin.clone(), e))?;
                }
                list.value
            }
        },
    })
}

/// One encoder per core, at most 4: beyond that the source, not the encoder, is the limit.
fn default_workers() -> i64 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4) as i64
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
        let file = ConfigLayer::parse(text, Path::new("s.toml"))?;
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
        let mut keys: Vec<String> = KEYS.iter().map(|k| k.name.to_owned()).collect();
        keys.extend(keys_of::<Controls>());
        keys.extend(keys_of::<crate::led::LedConfig>());
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
    fn webrtc_keys_resolve_and_errors_name_the_key() {
        let c = Config::default();
        let w = c.webrtc.unwrap();
        assert_eq!(w.udp.to_string(), "0.0.0.0:8555");
        assert!(!w.explicit && w.udp_candidates && w.public_ip.is_none());
        assert_eq!(w.peer_timeout, std::time::Duration::from_secs(10));
        let c = resolve_file(
            "listen = '127.0.0.1:0'\nwebrtc_udp = 'off'\nwebrtc_public_ip = '203.0.113.7'\n\
             webrtc_ice_servers = ['stun:s.example:3478', 'turn:u:p@t.example:3478?transport=udp']",
            ConfigLayer::default(),
        )
        .unwrap();
        let w = c.webrtc.unwrap();
        assert_eq!(
            w.udp.to_string(),
            "127.0.0.1:0",
            "ephemeral beside an ephemeral listen"
        );
        assert!(!w.udp_candidates);
        assert_eq!(w.public_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(w.ice_servers[1].urls, "turn:t.example:3478?transport=udp");
        assert_eq!(w.ice_servers[1].username.as_deref(), Some("u"));
        assert_eq!(w.ice_servers[1].credential.as_deref(), Some("p"));
        let c = resolve_file("webrtc = 'off'", ConfigLayer::default()).unwrap();
        assert!(c.webrtc.is_none());
        let c = resolve_file("webrtc_udp_port = 9000", ConfigLayer::default()).unwrap();
        assert!(c.webrtc.unwrap().explicit);
        let e = |text: &str| {
            resolve_file(text, ConfigLayer::default())
                .unwrap_err()
                .to_string()
        };
        for (text, key) in [
            ("webrtc = 'maybe'", "`webrtc`"),
            ("webrtc_udp_port = 70000", "`webrtc_udp_port`"),
            ("webrtc_public_ip = 'example.net'", "`webrtc_public_ip`"),
            ("webrtc_ice_servers = ['http://x']", "`webrtc_ice_servers`"),
            (
                "webrtc_ice_servers = ['turn:t.example:3478']",
                "`webrtc_ice_servers`",
            ),
            (
                "webrtc_ice_servers = ['stun:u:p@s.example']",
                "`webrtc_ice_servers`",
            ),
            ("webrtc_peer_timeout = 1", "`webrtc_peer_timeout`"),
        ] {
            let m = e(text);
            assert!(m.contains(key), "{text}: {m}");
        }
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
    fn boot_status_is_a_path_or_empty_for_none() {
        let c = Config::default();
        assert_eq!(
            c.boot_status.as_deref(),
            Some(Path::new("/run/picamd/boot-status.tsv"))
        );
        let c = resolve_file("boot_status = ''", ConfigLayer::default()).unwrap();
        assert_eq!(c.boot_status, None);
        let flags = ConfigLayer {
            boot_status: Some("/tmp/b.tsv".into()),
            ..Default::default()
        };
        let c = resolve_file("boot_status = ''", flags).unwrap();
        assert_eq!(c.boot_status.as_deref(), Some(Path::new("/tmp/b.tsv")));
        let m = resolve_file("boot_status = 'run/b.tsv'", ConfigLayer::default())
            .unwrap_err()
            .to_string();
        assert!(m.contains("`boot_status`"), "{m}");
        let m = resolve_file(
            "[[stream]]\nname='a'\nsource='test'\nboot_status='/b'",
            ConfigLayer::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(m.contains("per stream"), "{m}");
    }
}
