//! The values of keys that have a form of their own: the source, the frame size, the log
//! level, stream and account names. Each parses from the text a user writes and says what is
//! wrong with it; [`super::ConfigLayer::resolve`] adds the key and where the text came from.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::ffmpeg_child::redact_url;
use crate::source::faults::FaultSchedule;
use crate::source::screen::ScreenTarget;
use crate::source::v4l2::PixelFormat;

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
    /// `screen`, `screen:fb[:/dev/fbN]`, `screen:x11[:DISPLAY]`: what a display shows.
    Screen { target: ScreenTarget },
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
            SourceSpec::Screen { target } => write!(f, "{target}"),
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
            ("screen", arg) => Ok(SourceSpec::Screen {
                target: ScreenTarget::parse(arg)?,
            }),
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
                 an http:// MJPEG URL, an rtsp://, rtmp:// or other stream URL, a file path, \
                 or screen[:fb[:/dev/fbN]|:x11[:DISPLAY]]"
            )),
        }
    }
}

/// The `pixel_format` key: what a V4L2 camera is asked for. `auto` (`None`) takes the best
/// format it offers; a fourcc (`MJPG`, `YUYV`, `NV12`, `YU12`) only that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormatPref(pub Option<PixelFormat>);

impl FromStr for PixelFormatPref {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(PixelFormatPref(None));
        }
        PixelFormat::from_name(s)
            .map(|f| PixelFormatPref(Some(f)))
            .ok_or_else(|| "use auto, MJPG, YUYV, NV12 or YU12".to_string())
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

/// Checks a user or group name before it reaches the account database: what `useradd`
/// accepts (or a numeric id), so a stray space or path is a config error, not a failed lookup.
pub(super) fn check_account_name(name: &str) -> Result<(), String> {
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

/// A `publish` URL: RTMP(S) or RTSP(S), what the publisher's ffmpeg can push to.
pub fn check_publish_url(url: &str) -> Result<(), String> {
    match url.split_once("://") {
        Some(("rtmp" | "rtmps" | "rtsp" | "rtsps", rest)) if !rest.is_empty() => Ok(()),
        _ => Err(format!(
            "{:?}: publish to an rtmp://, rtmps://, rtsp:// or rtsps:// URL",
            redact_url(url)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn screen_forms() {
        let parse = |s: &str| s.parse::<SourceSpec>();
        for (text, target) in [
            ("screen", ScreenTarget::Auto),
            ("screen:fb", ScreenTarget::Framebuffer("/dev/fb0".into())),
            (
                "screen:fb:/dev/fb1",
                ScreenTarget::Framebuffer("/dev/fb1".into()),
            ),
            ("screen:x11", ScreenTarget::X11(None)),
            ("screen:x11::99", ScreenTarget::X11(Some(":99".into()))),
        ] {
            let spec = parse(text).unwrap();
            assert_eq!(spec, SourceSpec::Screen { target }, "{text}");
            // Display gives a form that parses back to the same spec.
            assert_eq!(parse(&spec.to_string()).unwrap(), spec, "{text}");
        }
        for (bad, says) in [
            ("screen:", "use screen, screen:fb"),
            ("screen:x11:99", "screen:x11::99"),
            ("screen:fb:fb0", "screen:fb:/dev/fb0"),
            ("screen:vnc:1", "use screen, screen:fb"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse("scree").unwrap_err().contains("screen[:fb"));
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

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert!(check_publish_url("rtmp://127.0.0.1/live/cam").is_ok());
        assert!(check_publish_url("rtsp://mediamtx:8554/cam").is_ok());
        let e = check_publish_url("http://x/y").unwrap_err();
        assert!(e.contains("rtmp://"), "{e}");
        assert!(check_publish_url("rtmp://").is_err());
        assert_eq!(
            redact_url("rtmp://bob:secret@live.example/app/key"),
            "rtmp://bob:***@live.example/app/key"
        );
        assert!(!check_publish_url("ftp://bob:secret@x/")
            .unwrap_err()
            .contains("secret"));
        assert_eq!(redact_url("rtmp://h/app"), "rtmp://h/app");
    }
}
