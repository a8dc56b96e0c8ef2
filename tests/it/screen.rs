//! The screen source on an X display: Debian's Xvfb on a free display number, a picture
//! drawn on its root window with xsetroot (a 2x2 checkerboard of red and blue from an XBM
//! bitmap, then solid colours), and picamd with `--source screen:x11::N`. The snapshot must
//! show the checkerboard the right way round, a change on the display must reach an open
//! MJPEG stream within a second, killing Xvfb must turn the stream into "no signal" with
//! the reason in /state, and a restarted Xvfb must bring live frames back on the same
//! connection.
//!
//! Needs xvfb and x11-xserver-utils (and ffmpeg): `.ci/setup test` installs them.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::peers::{assert_no_ffmpeg_left, Proc, TempDir};
use common::{open, MjpegReader, Picamd};

/// The X screen, larger than the frames, so ffmpeg scales it (640x480 → 320x240).
const SCREEN: (usize, usize) = (640, 480);
const FRAME: (usize, usize) = (320, 240);

/// What picamd's limited-range YUV decodes to through a (full-range) JPEG decoder: 0 → 16,
/// 255 → 235 in each channel (see docs/sources.md, "Screens").
const RED: [u8; 3] = [235, 16, 16];
const BLUE: [u8; 3] = [16, 16, 235];
const GREEN: [u8; 3] = [16, 235, 16];
/// The "no signal" picture's top third (dark grey, luma 40).
const NO_SIGNAL_GREY: [u8; 3] = [40, 40, 40];
/// JPEG at picamd's default quality, chroma subsampled: flat areas land within this.
const TOLERANCE: u8 = 30;

/// An Xvfb on display `:number` that can be killed and started again on the same number.
struct Xvfb {
    number: u32,
    proc: Option<Proc>,
}

impl Xvfb {
    /// Starts Xvfb on the first display number with neither a lock file nor a socket, from
    /// one that depends on the process id and a counter (tests in parallel, in this process
    /// or another, do not meet).
    fn start() -> Xvfb {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let taken = NEXT.fetch_add(8, std::sync::atomic::Ordering::Relaxed);
        let base = 150 + (std::process::id() % 8) * 8 + taken % 64;
        let number = (base..base + 64)
            .find(|n| !lock_file(*n).exists() && !socket(*n).exists())
            .expect("a free X display number");
        let mut x = Xvfb { number, proc: None };
        x.restart();
        x
    }

    fn display(&self) -> String {
        format!(":{}", self.number)
    }

    /// (Re)starts the server and waits until it accepts connections.
    fn restart(&mut self) {
        let (w, h) = SCREEN;
        self.proc = Some(Proc::spawn(
            "Xvfb",
            Command::new("Xvfb").args([
                &self.display(),
                "-screen",
                "0",
                &format!("{w}x{h}x24"),
                "-nolisten",
                "tcp",
                // Without this the server resets when its last client leaves, and the root
                // window's picture that xsetroot set is lost with it.
                "-noreset",
            ]),
        ));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(socket(self.number)).is_err() {
            self.proc.as_mut().expect("started").assert_running();
            assert!(Instant::now() < deadline, "Xvfb did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // A server that found the number taken exits at once; the socket that answered was
        // another's.
        std::thread::sleep(Duration::from_millis(100));
        self.proc.as_mut().expect("started").assert_running();
    }

    /// Kills the server (SIGKILL: like a crash, nothing cleaned up).
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Runs xsetroot on this display with `args`.
    fn xsetroot(&self, args: &[&str]) {
        let status = Command::new("xsetroot")
            .args(args)
            .env("DISPLAY", self.display())
            .status()
            .expect("run xsetroot (x11-xserver-utils)");
        assert!(status.success(), "xsetroot {args:?}: {status}");
    }

    fn solid(&self, colour: &str) {
        self.xsetroot(&["-solid", colour]);
    }

    /// The checkerboard: red top-left and bottom-right, blue elsewhere.
    fn checkerboard(&self, dir: &Path) {
        let xbm = write_checker_xbm(dir);
        self.xsetroot(&[
            "-bitmap",
            xbm.to_str().unwrap(),
            "-fg",
            "#ff0000",
            "-bg",
            "#0000ff",
        ]);
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(lock_file(self.number));
        let _ = std::fs::remove_file(socket(self.number));
    }
}

fn lock_file(n: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X{n}-lock"))
}

fn socket(n: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X11-unix/X{n}"))
}

/// An XBM bitmap the size of the screen, set (foreground) where x is in the left half XOR y
/// is in the lower half. XBM: rows of bytes, least significant bit first; xsetroot's reader
/// wants the data on lines of their own.
fn write_checker_xbm(dir: &Path) -> PathBuf {
    let (w, h) = SCREEN;
    let mut bytes = Vec::new();
    for y in 0..h {
        for xb in (0..w).step_by(8) {
            let mut b = 0u8;
            for i in 0..8 {
                if ((xb + i) < w / 2) != (y >= h / 2) {
                    b |= 1 << i;
                }
            }
            bytes.push(format!("0x{b:02x}"));
        }
    }
    let body: Vec<String> = bytes.chunks(12).map(|c| c.join(",")).collect();
    let text = format!(
        "#define checker_width {w}\n#define checker_height {h}\n\
         static unsigned char checker_bits[] = {{\n{}}};\n",
        body.join(",\n")
    );
    let path = dir.join("checker.xbm");
    std::fs::write(&path, text).expect("write the bitmap");
    path
}

/// A decoded frame: RGB, `w` × `h`.
struct Picture {
    rgb: Vec<u8>,
    w: usize,
    h: usize,
}

impl Picture {
    fn decode(jpeg: &[u8]) -> Picture {
        let img = turbojpeg::decompress(jpeg, turbojpeg::PixelFormat::RGB).expect("JPEG decodes");
        assert_eq!((img.width, img.height), FRAME);
        assert_eq!(img.pitch, img.width * 3);
        Picture {
            rgb: img.pixels,
            w: img.width,
            h: img.height,
        }
    }

    /// The mean colour of a 9x9 patch centred at (`fx`, `fy`) × the frame size.
    fn at(&self, fx: f64, fy: f64) -> [u8; 3] {
        let (cx, cy) = ((fx * self.w as f64) as usize, (fy * self.h as f64) as usize);
        let mut sum = [0u32; 3];
        for y in cy - 4..=cy + 4 {
            for x in cx - 4..=cx + 4 {
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += self.rgb[(y * self.w + x) * 3 + c] as u32;
                }
            }
        }
        sum.map(|s| (s / 81) as u8)
    }

    /// The colours at the centres of the four quadrants: top-left, top-right, bottom-left,
    /// bottom-right.
    fn quadrants(&self) -> [[u8; 3]; 4] {
        [
            self.at(0.25, 0.25),
            self.at(0.75, 0.25),
            self.at(0.25, 0.75),
            self.at(0.75, 0.75),
        ]
    }

    fn is(&self, want: [[u8; 3]; 4]) -> bool {
        self.quadrants()
            .iter()
            .zip(want)
            .all(|(got, want)| close(*got, want))
    }

    fn all(&self, colour: [u8; 3]) -> bool {
        self.is([colour; 4])
    }

    /// The "no signal" picture: dark grey above its red band.
    fn is_no_signal(&self) -> bool {
        close(self.at(0.1, 0.1), NO_SIGNAL_GREY) && close(self.at(0.9, 0.1), NO_SIGNAL_GREY)
    }
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(a, b)| a.abs_diff(b) <= TOLERANCE)
}

const CHECKER: [[u8; 3]; 4] = [RED, BLUE, BLUE, RED];

/// Reads parts until one satisfies `pred`; panics after `timeout` with what was seen.
async fn next_matching<S: tokio::io::AsyncRead + Unpin>(
    r: &mut MjpegReader<S>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Picture) -> bool,
) -> Picture {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let part = match tokio::time::timeout(left, r.next_part()).await {
            Ok(Some(part)) => part,
            Ok(None) => panic!("the MJPEG stream ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {timeout:?}; quadrants seen: {seen:?}"),
        };
        let pic = Picture::decode(&part.jpeg);
        if pred(&pic) {
            return pic;
        }
        seen.push(pic.quadrants());
        if seen.len() > 8 {
            seen.remove(0);
        }
    }
}

#[tokio::test]
async fn an_x_display_streams_follows_changes_and_survives_its_server() {
    let dir = TempDir::new("screen");
    let mut x = Xvfb::start();
    x.checkerboard(dir.path());
    let source = format!("screen:x11:{}", x.display());
    let p = Picamd::start(&["--source", &source, "--size", "320x240", "--fps", "10"]);

    // The snapshot wakes the on-demand source; the first answers may be "no signal" while
    // ffmpeg starts.
    let mut stream = MjpegReader::new(open(p.addr, "/stream").await).await;
    let pic = next_matching(
        &mut stream,
        "the checkerboard",
        Duration::from_secs(20),
        |p| p.is(CHECKER),
    )
    .await;
    drop(pic);
    let snap = p.get("/snapshot").await;
    assert_eq!(snap.status, 200);
    let pic = Picture::decode(&snap.body);
    assert!(
        pic.is(CHECKER),
        "the snapshot shows {:?}, want red | blue / blue | red",
        pic.quadrants()
    );
    let s = p.state().await;
    assert_eq!(s["source"]["kind"], "screen", "{s}");
    assert_eq!(
        s["source"]["name"],
        format!("X11 display {}", x.display()),
        "{s}"
    );
    assert_eq!(s["source"]["state"], "streaming", "{s}");

    // A change on the display reaches the open stream within a second.
    x.solid("#00ff00");
    let changed = Instant::now();
    next_matching(
        &mut stream,
        "the green screen",
        Duration::from_secs(5),
        |p| p.all(GREEN),
    )
    .await;
    let took = changed.elapsed();
    println!("the green screen reached the MJPEG stream {took:?} after xsetroot returned");
    assert!(
        took <= Duration::from_secs(1),
        "the change took {took:?} to reach the stream"
    );

    // The X server dies: ffmpeg exits, /state says why, and the stream goes on with
    // "no signal" pictures.
    x.kill();
    let s = p
        .wait_state("error", Duration::from_secs(10), |s| {
            s["source"]["state"] == "error"
        })
        .await;
    let why = s["source"]["error"].as_str().unwrap_or_default().to_owned();
    // "the X display :N went away (…)" from picamd's own check, or, once retried, ffmpeg's
    // "Cannot open display :N".
    assert!(
        why.contains(&x.display()),
        "the reason names the display: {s}"
    );
    for n in 0..2 {
        next_matching(
            &mut stream,
            &format!("no-signal picture #{n}"),
            Duration::from_secs(10),
            Picture::is_no_signal,
        )
        .await;
    }

    // The server comes back: live frames return on the same connection.
    x.restart();
    x.solid("#0000ff");
    next_matching(
        &mut stream,
        "the blue screen after the restart",
        Duration::from_secs(30),
        |p| p.all(BLUE),
    )
    .await;
    let s = p
        .wait_state("streaming", Duration::from_secs(5), |s| {
            s["source"]["state"] == "streaming"
        })
        .await;
    assert!(s["source"]["restarts"].as_u64().unwrap_or(0) >= 1, "{s}");
    assert!(s["frames"]["no_signal"].as_u64().unwrap_or(0) >= 2, "{s}");
    drop(stream);
    drop(p);
    assert_no_ffmpeg_left(&x.display(), Duration::from_secs(5), "after picamd stopped");
}

#[tokio::test]
async fn screen_alone_takes_the_display_from_the_environment_without_a_framebuffer() {
    if Path::new("/dev/fb0").exists() {
        // Then `screen` rightly takes the framebuffer; this is the other branch.
        eprintln!("skipped: this machine has /dev/fb0");
        return;
    }
    let dir = TempDir::new("screen-auto");
    let x = Xvfb::start();
    x.checkerboard(dir.path());
    let display = x.display();
    let p = Picamd::try_start_with_env(
        "127.0.0.1:0",
        &["--source", "screen", "--size", "320x240", "--fps", "10"],
        &[("DISPLAY", &display)],
    )
    .expect("picamd starts");
    let mut stream = MjpegReader::new(open(p.addr, "/stream").await).await;
    next_matching(
        &mut stream,
        "the checkerboard",
        Duration::from_secs(20),
        |p| p.is(CHECKER),
    )
    .await;
    let s = p.state().await;
    assert_eq!(s["source"]["name"], format!("X11 display {display}"), "{s}");
}
