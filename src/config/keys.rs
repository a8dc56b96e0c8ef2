//! The configuration keys, stated once.
//!
//! [`config_keys!`] below is the only list of keys. From it come the two serde structs the
//! file is parsed into ([`ConfigLayer`] for the top level, [`StreamLayer`] for a `[[stream]]`
//! table, so a top-level-only key in a stream table is a parse error), the table [`KEYS`]
//! that the command line's flags ([`super::flags`]), `--help`, the range checks, the
//! built-in defaults, the check of `systemd/picamd.toml` and the key reference in
//! `docs/configuration.md` are all made from, and one constant per key in [`key`] for the
//! resolution code to name it by.

use std::fmt::Write as _;

use serde::Deserialize;

use super::AuthConfig;
use crate::led::LedConfig;
use crate::source::controls::Controls;

/// Where a key may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The file's top level (and the flag) only: it applies to the whole of picamd.
    Global,
    /// A `[[stream]]` table too; at the top level it is every stream's default.
    Stream,
}

/// Which whole numbers a key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Valid {
    /// Any in `min..=max`.
    Range(i64, i64),
    /// One of these.
    OneOf(&'static [i64]),
}

/// What a key's value is; it decides the flag's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string; the flag takes one value, shown as the given name.
    Str(&'static str),
    /// A whole number.
    Int(&'static str, Valid),
    /// `true` or `false`; the flag can only switch it on.
    Switch,
    /// A list of strings; the flag is repeated, one item each, and replaces the file's list.
    List(&'static str),
    /// A table of its own (`[controls]`, `[led]`, `[auth]`): file only, no flag.
    Table,
    /// The `[[stream]]` tables; the flag `--stream NAME=SOURCE` is repeated, one stream each.
    Streams,
}

/// A key's built-in default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// This TOML value: the resolution uses it, the documentation shows it.
    Value(&'static str),
    /// Worked out at start (said in words, e.g. "the number of cores, at most 4").
    Computed(&'static str),
    /// None; what leaving the key out means, in words.
    Unset(&'static str),
}

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key as written in the file.
    pub name: &'static str,
    pub scope: Scope,
    pub kind: Kind,
    /// The flag's long name when it is not `name` with `-` for `_` (lists are named by one
    /// item: `cors_origins` is `--cors-origin`).
    pub flag: Option<&'static str>,
    pub default: Builtin,
    /// What it does, for `--help` and the documentation. Ranges and defaults are added from
    /// [`Key::kind`] and [`Key::default`], so the text does not repeat them.
    pub help: &'static str,
}

impl Key {
    const fn new(kind: Kind, default: Builtin, help: &'static str) -> Key {
        Key {
            name: "",
            scope: Scope::Global,
            kind,
            flag: None,
            default,
            help,
        }
    }

    const fn flag(self, flag: &'static str) -> Key {
        Key {
            flag: Some(flag),
            ..self
        }
    }

    /// The flag's long name (without `--`), or `None` for a key that is set in the file only.
    pub fn flag_name(&self) -> Option<String> {
        match (self.kind, self.flag) {
            (Kind::Table, _) => None,
            (_, Some(f)) => Some(f.to_owned()),
            (_, None) => Some(self.name.replace('_', "-")),
        }
    }

    /// The default as a TOML value, for keys whose default is [`Builtin::Value`].
    pub fn default_value(&self) -> Option<toml::Value> {
        let Builtin::Value(text) = self.default else {
            return None;
        };
        let table: toml::Table = toml::from_str(&format!("v = {text}"))
            .unwrap_or_else(|e| panic!("default of `{}` is not TOML: {e}", self.name));
        table.get("v").cloned()
    }

    /// The valid values and the default in words, as `--help` and the documentation add them
    /// to [`Key::help`].
    pub fn facts(&self) -> String {
        let mut out = String::new();
        match self.kind {
            Kind::Int(_, Valid::Range(min, max)) => {
                let _ = write!(out, "{min}..={max}");
            }
            Kind::Int(_, Valid::OneOf(values)) => {
                let list: Vec<String> = values.iter().map(i64::to_string).collect();
                out.push_str(&list.join(" | "));
            }
            _ => {}
        }
        let default = match self.default {
            Builtin::Value(v) => format!("default: {v}"),
            Builtin::Computed(words) => format!("default: {words}"),
            Builtin::Unset(words) => format!("default: {words}"),
        };
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&default);
        out
    }
}

/// Declares the keys: per scope, `field "name": Type = Key::…;`. The field is the name in
/// Rust (`loop` is a keyword, so its field is `looping`); every field is optional in a layer.
macro_rules! config_keys {
    (
        stream { $( $sf:ident $sname:literal : $sty:ty = $skey:expr; )* }
        global { $( $gf:ident $gname:literal : $gty:ty = $gkey:expr; )* }
    ) => {
        /// One layer of settings: the file's top level, or the command line's flags. Every
        /// key is optional; values stay as written until [`ConfigLayer::resolve`] checks
        /// them. The top level's stream keys are the defaults of every `[[stream]]`.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ConfigLayer {
            $( #[serde(rename = $sname)] pub $sf: Option<$sty>, )*
            $( #[serde(rename = $gname)] pub $gf: Option<$gty>, )*
        }

        /// One `[[stream]]` table, or a layer's stream keys: only the keys that may be set
        /// per stream, so any other is a parse error.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct StreamLayer {
            $( #[serde(rename = $sname)] pub $sf: Option<$sty>, )*
        }

        impl ConfigLayer {
            /// This layer's stream keys (the defaults of every stream, at the top level).
            pub fn stream_keys(&self) -> StreamLayer {
                StreamLayer { $( $sf: self.$sf.clone(), )* }
            }
        }

        /// One constant per key, named like its field, for the resolution code.
        #[allow(non_upper_case_globals)]
        pub mod key {
            use super::*;
            $( pub const $sf: Key = Key { name: $sname, scope: Scope::Stream, ..$skey }; )*
            $( pub const $gf: Key = Key { name: $gname, scope: Scope::Global, ..$gkey }; )*
        }

        /// Every key, stream keys first, in the order `--help` and the documentation list them.
        pub const KEYS: &[Key] = &[ $( key::$sf, )* $( key::$gf, )* ];
    };
}

use Builtin::{Computed, Unset, Value};
use Kind::{Int, List, Str, Streams, Switch, Table};

const VIEWERS: Valid = Valid::Range(1, 100_000);

config_keys! {
    stream {
        source "source": String = Key::new(Str("SOURCE"), Value("\"test\""),
            "Video source: `test`, `libcamera[:ID_OR_INDEX]`, `v4l2:/dev/videoN`, an `http://` \
             MJPEG URL, `rtsp://…`, `rtmp://…`, an HLS or FLV URL, a file, `ffmpeg:INPUT`, or a \
             screen: `screen`, `screen:fb[:/dev/fbN]`, `screen:x11[:DISPLAY]` (see docs/sources.md).");
        name "name": String = Key::new(Str("NAME"), Value("\"main\""),
            "The stream's name, used in its `/cam/<name>/` URLs: 1 to 32 of `A-Z a-z 0-9 _ -`. \
             At the top level it names the single stream.");
        size "size": String = Key::new(Str("WxH"), Value("\"1280x720\""),
            "Frame size in pixels, WIDTHxHEIGHT, each even and 16..=7680.");
        fps "fps": i64 = Key::new(Int("N", Valid::Range(1, 120)), Value("30"),
            "Frames per second asked of the source.");
        pixel_format "pixel_format": String = Key::new(Str("FOURCC"), Value("\"auto\""),
            "V4L2 cameras: the pixel format to ask for: `auto` (MJPG if offered, else YUYV, \
             NV12, YU12), or only one of `MJPG`, `YUYV`, `NV12`, `YU12`.");
        quality "quality": i64 = Key::new(Int("Q", Valid::Range(1, 100)), Value("80"),
            "JPEG quality.");
        workers "workers": i64 = Key::new(Int("N", Valid::Range(1, 16)),
            Computed("the number of cores, at most 4"),
            "JPEG encoder threads.");
        max_viewers "max_viewers": i64 = Key::new(Int("N", VIEWERS), Value("200"),
            "Most concurrent MJPEG + WebSocket viewers of the stream; more get 503.");
        controls "controls": Controls = Key::new(Table, Unset("the camera's own settings"),
            "`[controls]`: camera settings applied at start (at runtime: `POST /controls`).");
        rotation "rotation": i64 = Key::new(Int("DEG", Valid::OneOf(&[0, 90, 180, 270])),
            Value("0"),
            "Clockwise rotation in degrees the camera applies, after the flips (libcamera).");
        hflip "hflip": bool = Key::new(Switch, Value("false"),
            "Mirror the picture left-right in the camera (libcamera).");
        vflip "vflip": bool = Key::new(Switch, Value("false"),
            "Flip the picture upside down in the camera (libcamera).");
        looping "loop": bool = Key::new(Switch, Value("false"),
            "Files: start again at the end instead of showing \"no signal\".");
        passthrough "passthrough": bool = Key::new(Switch, Value("false"),
            "ffmpeg inputs that already are MJPEG or H.264: pass the JPEGs, or the H.264 access \
             units, through without re-encoding (H.264 is still decoded for JPEG viewers).");
        // 16 MiB: far above any real frame (a 4K JPEG at quality 100 is ~5 MiB), far below
        // what would hurt a Pi.
        max_frame_size "max_frame_size": i64 = Key::new(
            Int("BYTES", Valid::Range(65_536, 268_435_456)), Value("16777216"),
            "Largest JPEG accepted from an upstream, in bytes.");
        h264_bitrate "h264_bitrate": i64 = Key::new(
            Int("BITS", Valid::Range(100_000, 50_000_000)),
            Computed("2000000 at 1280x720 and 30 fps, scaled with the pixel rate to the power 0.75"),
            "Target bits per second of the stream's H.264 (RTSP), held by the encoder's rate \
             control.");
        h264_gop "h264_gop": i64 = Key::new(Int("SECONDS", Valid::Range(1, 60)), Value("2"),
            "Seconds from one H.264 keyframe to the next (a new viewer gets a keyframe at once \
             anyway).");
        jpeg_encoder "jpeg_encoder": String = Key::new(Str("ENCODER"), Value("\"auto\""),
            "What encodes the stream's JPEGs: `auto` (a V4L2 memory-to-memory JPEG encoder if \
             there is one, as on a Pi 0-4, else software), `software` (TurboJPEG), or \
             `v4l2:/dev/videoN`. A device that fails hands over to software and is retried \
             (docs/encoders.md).");
        h264_encoder "h264_encoder": String = Key::new(Str("ENCODER"), Value("\"auto\""),
            "What encodes the stream's H.264: `auto` (a V4L2 memory-to-memory H.264 encoder if \
             there is one, as on a Pi 0-4, else software), `software` (OpenH264), or \
             `v4l2:/dev/videoN`. A device that fails hands over to software and is retried \
             (docs/encoders.md).");
        publish "publish": Vec<String> = Key::new(List("URL"), Unset("none"),
            "Servers to push the stream's H.264 to: rtmp://, rtmps://, rtsp:// or rtsps:// \
             URLs (nginx-rtmp, MediaMTX, a streaming platform); each reconnects by itself.");
    }
    global {
        stream "stream": Vec<StreamLayer> = Key::new(Streams,
            Unset("one stream, made of the top-level keys"),
            "Several streams: `[[stream]]` tables, each with a `name` and a `source` (the \
             top-level stream keys are their defaults); the flag adds one stream NAME=SOURCE, \
             the flags replace the file's list, and every other flag applies to all streams.");
        listen "listen": String = Key::new(Str("ADDR:PORT"), Value("\"0.0.0.0:8080\""),
            "Address and port to serve HTTP on.");
        rtsp_listen "rtsp_listen": String = Key::new(Str("ADDR:PORT"),
            Computed("port 8554 on `listen`'s address (an ephemeral port when `listen`'s is 0)"),
            "Address and port to serve RTSP on (rtsp://HOST:PORT/<name>, docs/rtsp.md); \
             empty: no RTSP.");
        webrtc "webrtc": String = Key::new(Str("on|off"), Value("\"on\""),
            "WebRTC: each stream's H.264 to browsers by WHEP (POST /whep, docs/webrtc.md), \
             media over `webrtc_udp_port`.");
        // 8555: next to RTSP's 8554, as MediaMTX and go2rtc number their WebRTC ports (8189,
        // 8555) apart from RTSP; one port for every session, so one firewall rule or one
        // port forward covers WebRTC.
        webrtc_udp_port "webrtc_udp_port": i64 = Key::new(Int("PORT", Valid::Range(0, 65_535)),
            Computed("8555 (an ephemeral port when `listen`'s port is 0)"),
            "UDP port (on `listen`'s address) every WebRTC session's media uses; 0: any free \
             port. ICE-TCP listens on the same port number.");
        webrtc_udp "webrtc_udp": String = Key::new(Str("on|off"), Value("\"on\""),
            "off: offer no UDP candidate, only ICE-TCP (to try what a network that blocks UDP \
             sees).");
        webrtc_public_ip "webrtc_public_ip": String = Key::new(Str("ADDR"), Unset("none"),
            "The public address a port forward (NAT 1:1) reaches picamd at: offered to clients \
             as one more candidate, with `webrtc_udp_port` forwarded to this host.");
        webrtc_ice_servers "webrtc_ice_servers": Vec<String> = Key::new(List("URL"),
            Unset("none, host candidates only"),
            "STUN and TURN servers for WebRTC clients (`stun:HOST:PORT`, \
             `turn:USER:PASSWORD@HOST:PORT?transport=udp`), told them in the WHEP answer's \
             `Link` headers and in /streams.")
            .flag("webrtc-ice-server");
        // 10 s: a browser sends a STUN consent check every ~5 s (RFC 7675) and RTCP receiver
        // reports about every second, so this is two missed consent checks.
        webrtc_peer_timeout "webrtc_peer_timeout": i64 = Key::new(
            Int("SECONDS", Valid::Range(2, 300)), Value("10"),
            "A WebRTC session whose client sends nothing (no STUN, no RTCP) for this long ends.");
        tls_listen "tls_listen": String = Key::new(Str("ADDR:PORT"), Unset("no HTTPS"),
            "Address and port to serve HTTPS on, e.g. 0.0.0.0:443.");
        tls_cert "tls_cert": String = Key::new(Str("PATH"),
            Unset("a self-signed certificate in `state_dir`, made on first start"),
            "PEM certificate (then any intermediates) for HTTPS, with `tls_key`.");
        tls_key "tls_key": String = Key::new(Str("PATH"), Unset("none"),
            "PEM private key of `tls_cert` (PKCS#8, RSA or EC).");
        http_redirect "http_redirect": bool = Key::new(Switch, Value("false"),
            "With `tls_listen`: plain HTTP answers 308 to the HTTPS URL (all but /healthz).");
        // picamd.service has StateDirectory=picamd, which makes this one.
        state_dir "state_dir": String = Key::new(Str("DIR"), Value("\"/var/lib/picamd\""),
            "Absolute directory for files picamd makes itself (the self-signed certificate).");
        // /run: the image's boot scripts write it anew at every boot, before picamd starts.
        boot_status "boot_status": String = Key::new(Str("PATH"),
            Value("\"/run/picamd/boot-status.tsv\""),
            "A file the SD image's boot scripts write: which persisted settings files were \
             used, or fell back to their previous copy, and why; shown in /state as `persist` \
             (docs/read-only-root.md). Absolute, or empty: none is read.");
        user "user": String = Key::new(Str("NAME"), Unset("none"),
            "Account to switch to after binding when started as root.");
        group "group": String = Key::new(Str("NAME"), Unset("the user's own group"),
            "Primary group to switch to, instead of the user's own (with `user`).");
        allow_root "allow_root": bool = Key::new(Switch, Value("false"),
            "Accept running as root without `user`.");
        log_level "log_level": String = Key::new(Str("LEVEL"), Value("\"info\""),
            "error, warn, info, debug or trace; RUST_LOG, when set, overrides it.");
        led "led": LedConfig = Key::new(Table, Unset("no LED"),
            "`[led]`: the status LED (docs/service.md).");
        auth "auth": AuthConfig = Key::new(Table, Unset("authentication is off"),
            "`[auth]`: accounts and tokens (docs/security.md).");
        cors_origins "cors_origins": Vec<String> = Key::new(List("ORIGIN"),
            Unset("none, same origin only"),
            "Origins (`https://host[:port]`, or `*`) whose pages may use picamd and open `/ws`.")
            .flag("cors-origin");
        controls_api "controls_api": String = Key::new(Str("on|off"), Value("\"on\""),
            "Whether `POST /controls` may change camera settings.");
        max_viewers_total "max_viewers_total": i64 = Key::new(Int("N", VIEWERS), Value("400"),
            "Most concurrent stream viewers over every stream together; more get 503.");
        // 20: the player's grid holds one socket per stream (up to MAX_STREAMS, 16), plus a
        // few for reconnects and another tab.
        max_viewers_per_client "max_viewers_per_client": i64 = Key::new(Int("N", VIEWERS),
            Value("20"),
            "Most concurrent stream viewers from one client address (IPv6: one /64); more \
             get 429.");
        // 50: far above what a player (about 20 requests to load, then a few per second) or a
        // snapshot poller needs.
        max_requests_per_second "max_requests_per_second": i64 = Key::new(
            Int("N", Valid::Range(0, 100_000)), Value("50"),
            "Requests per second one client address may sustain, bursts of 4 s worth; 0: no \
             limit.");
        trusted_proxies "trusted_proxies": Vec<String> = Key::new(List("ADDR"),
            Unset("none, the header is ignored"),
            "Reverse proxies (IP addresses or CIDR networks) whose X-Forwarded-For names the \
             client.")
            .flag("trusted-proxy");
    }
}

/// Looks a key up by its name in the file.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The key reference of `docs/configuration.md`, made from [`KEYS`] (a test checks that the
/// page holds exactly this between its markers).
pub fn markdown_reference() -> String {
    let mut out = String::from(
        "| key | flag | where | what it does | values and default |\n|---|---|---|---|---|\n",
    );
    for k in KEYS {
        let flag = match (k.flag_name(), k.kind) {
            (None, _) => "file only".to_owned(),
            (Some(f), Kind::Switch) => format!("`--{f}`"),
            (Some(f), Kind::Str(v) | Kind::Int(v, _) | Kind::List(v)) => format!("`--{f} {v}`"),
            (Some(f), Kind::Streams) => format!("`--{f} NAME=SOURCE`"),
            (Some(_), Kind::Table) => unreachable!("tables have no flag"),
        };
        let key = match k.kind {
            Kind::Table => format!("`[{}]`", k.name),
            Kind::Streams => format!("`[[{}]]`", k.name),
            _ => format!("`{}`", k.name),
        };
        let scope = match k.scope {
            Scope::Global => "top level",
            Scope::Stream => "stream",
        };
        let help = k.help.replace('|', "\\|");
        let facts = k.facts().replace('|', "\\|");
        let _ = writeln!(out, "| {key} | {flag} | {scope} | {help} | {facts} |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/configuration.md` holds [`markdown_reference`] between its markers;
    /// `PICAMD_BLESS=1` rewrites the page instead of failing.
    #[test]
    fn config_reference_in_the_docs_is_the_key_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let page = std::fs::read_to_string(path).unwrap();
        let begin = page.find("<!-- keys:begin").expect("begin marker");
        let begin = begin + page[begin..].find("-->\n").expect("marker ends") + 4;
        let end = page.find("<!-- keys:end -->").expect("end marker");
        let want = markdown_reference();
        if page[begin..end] == want {
            return;
        }
        if std::env::var_os("PICAMD_BLESS").is_some() {
            std::fs::write(path, format!("{}{want}{}", &page[..begin], &page[end..])).unwrap();
            return;
        }
        panic!(
            "docs/configuration.md's key reference differs from src/config/keys.rs; \
             rewrite it with PICAMD_BLESS=1 cargo test --lib config_reference"
        );
    }

    #[test]
    fn every_default_value_is_toml_and_ranges_hold_their_defaults() {
        for k in KEYS {
            if let Builtin::Value(_) = k.default {
                let v = k.default_value().unwrap();
                if let (Kind::Int(_, valid), Some(n)) = (k.kind, v.as_integer()) {
                    let ok = match valid {
                        Valid::Range(min, max) => (min..=max).contains(&n),
                        Valid::OneOf(values) => values.contains(&n),
                    };
                    assert!(ok, "default of {} is not valid", k.name);
                }
            }
            assert!(!k.help.is_empty() && find(k.name) == Some(k));
        }
    }
}
