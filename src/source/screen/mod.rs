//! Screens as sources (`--source screen…`): what a display shows, streamed like a camera.
//!
//! - `screen:fb[:/dev/fbN]`: the Linux framebuffer, read by picamd itself ([`fbdev`]) and
//!   converted to I420 with its own scaler ([`convert`]).
//! - `screen:x11[:DISPLAY]`: an X display, grabbed by the supervised ffmpeg child
//!   (`-f x11grab`; see `super::ffmpeg`).
//! - `screen`: whichever is present, a framebuffer first.
//!
//! This module parses those forms and picks the screen; the pipeline builds the source.

pub mod convert;
pub mod fbdev;

use std::fmt;
use std::path::{Path, PathBuf};

/// The framebuffer `screen` and `screen:fb` mean.
pub const DEFAULT_FRAMEBUFFER: &str = "/dev/fb0";

/// Which screen `--source screen…` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScreenTarget {
    /// `screen`: `/dev/fb0` if present, else the X display in `$DISPLAY`.
    Auto,
    /// `screen:fb` (`/dev/fb0`) or `screen:fb:/dev/fbN`.
    Framebuffer(PathBuf),
    /// `screen:x11` (the display in `$DISPLAY`) or `screen:x11:DISPLAY`, e.g. `screen:x11::0`.
    X11(Option<String>),
}

/// The accepted forms, for error messages.
const FORMS: &str =
    "screen, screen:fb, screen:fb:/dev/fbN, screen:x11 or screen:x11:DISPLAY (e.g. screen:x11::0)";

impl ScreenTarget {
    /// Parses what follows `screen` in `--source` (`None` for `screen` alone).
    pub fn parse(arg: Option<&str>) -> Result<ScreenTarget, String> {
        let Some(arg) = arg else {
            return Ok(ScreenTarget::Auto);
        };
        let (kind, rest) = match arg.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (arg, None),
        };
        match (kind, rest) {
            ("fb", None) => Ok(ScreenTarget::Framebuffer(DEFAULT_FRAMEBUFFER.into())),
            ("fb", Some(path)) if path.starts_with('/') => {
                Ok(ScreenTarget::Framebuffer(path.into()))
            }
            ("fb", Some(path)) => Err(format!(
                "screen:fb wants a device path after the colon, e.g. screen:fb:/dev/fb0, not {path:?}"
            )),
            ("x11", None) => Ok(ScreenTarget::X11(None)),
            ("x11", Some(display)) => check_display(display).map(|()| {
                ScreenTarget::X11(Some(display.to_owned()))
            }),
            _ => Err(format!("unknown screen {arg:?}: use {FORMS}")),
        }
    }
}

/// An X display name is `[host]:number[.screen]`.
fn check_display(d: &str) -> Result<(), String> {
    let number = d.rsplit_once(':').map(|(_, n)| n);
    match number {
        Some(n) if n.starts_with(|c: char| c.is_ascii_digit()) => Ok(()),
        Some(_) => Err(format!(
            "X display {d:?} has no display number after its colon, e.g. :0 (screen:x11::0)"
        )),
        None if !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()) => {
            Err(format!("X display {d:?} needs its colon: screen:x11::{d}"))
        }
        None => Err(format!(
            "{d:?} is not an X display name ([host]:number, e.g. :0): use {FORMS}"
        )),
    }
}

impl fmt::Display for ScreenTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScreenTarget::Auto => f.write_str("screen"),
            ScreenTarget::Framebuffer(p) => write!(f, "screen:fb:{}", p.display()),
            ScreenTarget::X11(None) => f.write_str("screen:x11"),
            ScreenTarget::X11(Some(d)) => write!(f, "screen:x11:{d}"),
        }
    }
}

/// The screen to capture, once chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    Framebuffer(PathBuf),
    X11(String),
}

/// Picks the screen `target` names, looking at `/dev/fb0` and `$DISPLAY` when it leaves
/// the choice open, and logs the choice. `Err` when `screen:x11` has no display to use.
pub fn resolve(target: &ScreenTarget) -> Result<Screen, String> {
    let display = std::env::var("DISPLAY").ok().filter(|d| !d.is_empty());
    let fb_present = Path::new(DEFAULT_FRAMEBUFFER).exists();
    let (screen, why) = choose(target, fb_present, display)?;
    match &screen {
        Screen::Framebuffer(p) if !fb_present && *target == ScreenTarget::Auto => {
            tracing::warn!("screen: {why}; trying {} until it appears", p.display())
        }
        _ => tracing::info!("screen: {why}"),
    }
    Ok(screen)
}

/// The choice itself, and why, from what is present.
fn choose(
    target: &ScreenTarget,
    fb_present: bool,
    display: Option<String>,
) -> Result<(Screen, String), String> {
    let fb = || PathBuf::from(DEFAULT_FRAMEBUFFER);
    Ok(match (target, display) {
        (ScreenTarget::Framebuffer(p), _) => (
            Screen::Framebuffer(p.clone()),
            format!("capturing the framebuffer {}", p.display()),
        ),
        (ScreenTarget::X11(Some(d)), _) => {
            (Screen::X11(d.clone()), format!("capturing X display {d}"))
        }
        (ScreenTarget::X11(None), Some(d)) => (
            Screen::X11(d.clone()),
            format!("capturing X display {d} (from $DISPLAY)"),
        ),
        (ScreenTarget::X11(None), None) => {
            return Err(
                "screen:x11 needs a display: DISPLAY is not set; name one, e.g. screen:x11::0"
                    .into(),
            )
        }
        (ScreenTarget::Auto, _) if fb_present => (
            Screen::Framebuffer(fb()),
            format!("{DEFAULT_FRAMEBUFFER} is present: capturing the framebuffer"),
        ),
        (ScreenTarget::Auto, Some(d)) => (
            Screen::X11(d.clone()),
            format!("no {DEFAULT_FRAMEBUFFER}: capturing X display {d} (from $DISPLAY)"),
        ),
        (ScreenTarget::Auto, None) => (
            Screen::Framebuffer(fb()),
            format!("no {DEFAULT_FRAMEBUFFER} and DISPLAY is not set"),
        ),
    })
}

/// Whether the local X server of `display` (`:N`, `unix:N`, with or without `.screen`)
/// accepts connections on its socket, the file `/tmp/.X11-unix/XN` or the abstract socket
/// of the same name (Linux servers listen on both; containers often have only the
/// latter). `None` for a display over TCP, which is not checked.
///
/// This is how the X11 screen notices that its server died: ffmpeg 5.1's x11grab does not
/// (with shared memory, a lost connection is no error to it, and it goes on sending the last
/// picture it grabbed, seen here at 10 fps for as long as it ran).
pub fn x11_server_answers(display: &str) -> Option<std::io::Result<()>> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let (host, rest) = display.rsplit_once(':')?;
    if !(host.is_empty() || host == "unix") {
        return None;
    }
    let number = rest.split('.').next().unwrap_or(rest);
    let path = format!("/tmp/.X11-unix/X{number}");
    Some(match UnixStream::connect(&path) {
        Ok(_) => Ok(()),
        Err(file_err) => SocketAddr::from_abstract_name(path.as_bytes())
            .and_then(|addr| UnixStream::connect_addr(&addr))
            .map(drop)
            .map_err(|_| std::io::Error::new(file_err.kind(), format!("{path}: {file_err}"))),
    })
}

/// Lines for `--list-cameras`: each framebuffer with its geometry and format, and the X
/// display in `$DISPLAY` with whether its local socket answers.
pub fn describe_screens() -> Vec<String> {
    let mut lines: Vec<String> = fbdev::list_framebuffers()
        .iter()
        .map(|p| format!("  {}", fbdev::describe(p)))
        .collect();
    if lines.is_empty() {
        lines.push("  no framebuffer (/dev/fb*)".into());
    }
    lines.push(format!(
        "  {}",
        describe_display(std::env::var("DISPLAY").ok().as_deref())
    ));
    lines
}

/// One line about the X display `display` (`$DISPLAY`).
fn describe_display(display: Option<&str>) -> String {
    let Some(d) = display.filter(|d| !d.is_empty()) else {
        return "X11: DISPLAY is not set; to capture an X server use --source screen:x11:DISPLAY, \
                e.g. screen:x11::0 (picamd's user needs its X authority: XAUTHORITY or xhost)"
            .into();
    };
    let Some((host, rest)) = d.rsplit_once(':') else {
        return format!("X11 display {d:?}: not a display name ([host]:number)");
    };
    let number = rest.split('.').next().unwrap_or(rest);
    if !(host.is_empty() || host == "unix") {
        return format!("X11 display {d} (over TCP; not checked): use --source screen:x11:{d}");
    }
    // Answering says the server runs, not that picamd's user may use it (that is the X
    // authority's call).
    match x11_server_answers(d) {
        Some(Ok(())) => format!(
            "X11 display {d} (its socket /tmp/.X11-unix/X{number} answers): use --source screen:x11:{d}"
        ),
        Some(Err(e)) => format!("X11 display {d}: not reachable ({e})"),
        None => format!("X11 display {d}: not checked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse_and_print_back() {
        for (arg, want, shown) in [
            (None, ScreenTarget::Auto, "screen"),
            (
                Some("fb"),
                ScreenTarget::Framebuffer("/dev/fb0".into()),
                "screen:fb:/dev/fb0",
            ),
            (
                Some("fb:/dev/fb1"),
                ScreenTarget::Framebuffer("/dev/fb1".into()),
                "screen:fb:/dev/fb1",
            ),
            (Some("x11"), ScreenTarget::X11(None), "screen:x11"),
            (
                Some("x11::99"),
                ScreenTarget::X11(Some(":99".into())),
                "screen:x11::99",
            ),
            (
                Some("x11:host:0.1"),
                ScreenTarget::X11(Some("host:0.1".into())),
                "screen:x11:host:0.1",
            ),
        ] {
            let t = ScreenTarget::parse(arg).unwrap();
            assert_eq!(t, want, "{arg:?}");
            assert_eq!(t.to_string(), shown);
        }
    }

    #[test]
    fn bad_forms_say_what_is_accepted() {
        for (arg, says) in [
            ("fb:dev/fb0", "e.g. screen:fb:/dev/fb0"),
            ("x11:99", "screen:x11::99"),
            ("x11:", "not an X display name"),
            ("x11:host:", "no display number"),
            ("vnc", "use screen, screen:fb"),
            ("", "use screen, screen:fb"),
        ] {
            let e = ScreenTarget::parse(Some(arg)).unwrap_err();
            assert!(e.contains(says), "{arg:?}: {e}");
        }
    }

    #[test]
    fn screen_alone_prefers_the_framebuffer_then_display() {
        let auto = ScreenTarget::Auto;
        let d = || Some(":5".to_owned());
        let fb0 = Screen::Framebuffer("/dev/fb0".into());
        assert_eq!(choose(&auto, true, d()).unwrap().0, fb0);
        assert_eq!(
            choose(&auto, false, d()).unwrap().0,
            Screen::X11(":5".into())
        );
        // Nothing present: the framebuffer, retried until it appears.
        let (s, why) = choose(&auto, false, None).unwrap();
        assert_eq!(
            (s, why.as_str()),
            (fb0, "no /dev/fb0 and DISPLAY is not set")
        );
        // Named targets are taken as they are.
        assert_eq!(
            choose(&ScreenTarget::X11(None), true, d()).unwrap().0,
            Screen::X11(":5".into())
        );
        assert!(choose(&ScreenTarget::X11(None), true, None)
            .unwrap_err()
            .contains("DISPLAY is not set"));
    }

    #[test]
    fn displays_are_described_without_connecting_over_tcp() {
        assert!(describe_display(None).contains("screen:x11::0"));
        assert!(describe_display(Some("otherhost:0")).contains("not checked"));
        // No X server has this number here.
        let d = describe_display(Some(":987654"));
        assert!(d.contains("not reachable (/tmp/.X11-unix/X987654"), "{d}");
        assert!(x11_server_answers(":987654.0").unwrap().is_err());
        assert!(x11_server_answers("unix:987654").unwrap().is_err());
        assert!(x11_server_answers("host:0").is_none());
    }
}
