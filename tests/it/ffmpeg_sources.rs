//! The ffmpeg source against real peers on 127.0.0.1: RTMP and HLS from nginx-rtmp, RTSP
//! from GStreamer's RTSP server, HTTP-FLV, and MP4 files. Each live kind must stream at the
//! configured size, show "no signal" on the same WebSocket when the upstream dies, and come
//! back live when it returns; no ffmpeg may outlive picamd, whether it is stopped or killed.
//!
//! Needs Debian's ffmpeg, nginx + libnginx-mod-rtmp, python3-gi, gir1.2-gst-rtsp-server-1.0
//! and the GStreamer base/good/ugly plugins (`.ci/setup test` installs them).

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::{
    assert_no_ffmpeg_left, ffmpeg_readers, make_clip, NginxRtmp, ScriptServer, TempDir,
};
use common::{decode, open, MjpegReader, Picamd};
use futures_util::StreamExt;
use picamd::wire::{FrameHeader, FLAG_NO_SIGNAL};
use tokio_tungstenite::tungstenite::Message;

const SIZE: (usize, usize) = (320, 240);

fn start(input: &str, extra: &[&str]) -> Picamd {
    let mut args = vec!["--source", input, "--size", "320x240", "--fps", "15"];
    args.extend_from_slice(extra);
    Picamd::start(&args)
}

/// One frame a WebSocket viewer received.
#[derive(Debug, Clone, Copy)]
struct Seen {
    no_signal: bool,
}

/// A WebSocket viewer that records every frame in the background, checking each one
/// (a whole JPEG of the configured size, sequence numbers increasing).
struct WsWatch {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Why the reader stopped, if it did.
    ended: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsWatch {
    async fn connect(p: &Picamd, name: &str) -> WsWatch {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.addr))
            .await
            .expect("websocket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (seen2, ended2) = (seen.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let mut last_seq = 0;
            let why = loop {
                let data = match ws.next().await {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(_)) => continue,
                    other => break format!("the socket ended: {other:?}"),
                };
                let Ok((h, jpeg)) = FrameHeader::parse(&data) else {
                    break "a frame with a bad header".to_owned();
                };
                if h.seq <= last_seq {
                    break format!("seq {} after {last_seq}", h.seq);
                }
                last_seq = h.seq;
                let (w, hgt, _) = decode(jpeg);
                if (w, hgt) != SIZE {
                    break format!("a {w}x{hgt} frame");
                }
                seen2.lock().unwrap().push(Seen {
                    no_signal: h.flags & FLAG_NO_SIGNAL != 0,
                });
            };
            *ended2.lock().unwrap() = Some(why);
        });
        WsWatch {
            name: name.to_owned(),
            seen,
            ended,
            task,
        }
    }

    fn frames(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the frames seen since index `from`; returns the number
    /// of frames seen by then.
    async fn wait_for(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&[Seen]) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if pred(&seen[from.min(seen.len())..]) {
                    return seen.len();
                }
            }
            if let Some(why) = self.ended.lock().unwrap().clone() {
                panic!("{}: viewer stopped before {what}: {why}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {timeout:?}; frames since: {}",
                self.name,
                summary(&self.frames()[from..])
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for `n` live frames after index `from`.
    async fn live(&self, from: usize, n: usize, timeout: Duration) -> usize {
        self.wait_for(&format!("{n} live frames"), from, timeout, |s| {
            s.iter().filter(|f| !f.no_signal).count() >= n
        })
        .await
    }

    async fn no_signal(&self, from: usize, timeout: Duration) -> usize {
        self.wait_for("no-signal frame", from, timeout, |s| {
            s.iter().any(|f| f.no_signal)
        })
        .await
    }
}

impl Drop for WsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Frames as runs: `12 live, 3 no-signal, …`.
fn summary(frames: &[Seen]) -> String {
    let mut runs: Vec<(bool, usize)> = Vec::new();
    for f in frames {
        match runs.last_mut() {
            Some((ns, n)) if *ns == f.no_signal => *n += 1,
            _ => runs.push((f.no_signal, 1)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|(ns, n)| format!("{n} {}", if *ns { "no-signal" } else { "live" }))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// A few MJPEG parts from `/stream`, whole JPEGs of the configured size.
async fn check_mjpeg(p: &Picamd) {
    let mut r = MjpegReader::new(open(p.addr, "/stream").await).await;
    for _ in 0..3 {
        let part = tokio::time::timeout(Duration::from_secs(30), r.next_part())
            .await
            .expect("an MJPEG part within 30 s")
            .expect("the stream goes on");
        let (w, h, _) = decode(&part.jpeg);
        assert_eq!((w, h), SIZE);
    }
}

/// Time for live frames to arrive: ffmpeg's start-up, plus the restart backoff after an
/// outage (it grows while the upstream is down).
const LIVE_TIMEOUT: Duration = Duration::from_secs(30);
const NO_SIGNAL_TIMEOUT: Duration = Duration::from_secs(15);

/// A live peer that can be killed and started again on the same port.
trait Upstream {
    fn kill(&mut self);
    fn restart(&mut self);
}

macro_rules! upstream {
    ($($t:ty),*) => {$(
        impl Upstream for $t {
            fn kill(&mut self) {
                <$t>::kill(self)
            }
            fn restart(&mut self) {
                <$t>::restart(self)
            }
        }
    )*};
}
upstream!(NginxRtmp, ScriptServer);

/// The live-kind checks for viewers of one upstream: live frames, then (upstream killed)
/// no signal, then (upstream restarted) live frames again, each viewer on one socket.
async fn outage_and_recovery(viewers: &[&WsWatch], upstream: &mut impl Upstream) {
    let mut marks = Vec::new();
    for w in viewers {
        marks.push(w.live(0, 10, LIVE_TIMEOUT).await);
    }
    upstream.kill();
    for (w, mark) in viewers.iter().zip(&mut marks) {
        *mark = w.no_signal(*mark, NO_SIGNAL_TIMEOUT).await;
    }
    upstream.restart();
    for (w, mark) in viewers.iter().zip(&marks) {
        w.live(*mark, 10, LIVE_TIMEOUT).await;
    }
}

/// Stops picamd with SIGTERM: it must exit cleanly and take its ffmpeg along.
fn stop_and_check(mut p: Picamd, marker: &str) {
    assert!(
        !ffmpeg_readers(marker).is_empty(),
        "an ffmpeg reads {marker} while someone watches"
    );
    let status = p.stop();
    assert!(status.success(), "picamd exited with {status}");
    assert_no_ffmpeg_left(marker, Duration::from_secs(2), "after picamd stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_and_hls_from_nginx_survive_an_upstream_restart() {
    let mut nginx = NginxRtmp::start();
    let (rtmp, hls) = (nginx.rtmp_url(), nginx.hls_url());
    let p_rtmp = start(&rtmp, &[]);
    let p_hls = start(&hls, &[]);
    check_mjpeg(&p_rtmp).await;
    check_mjpeg(&p_hls).await;
    let w_rtmp = WsWatch::connect(&p_rtmp, "rtmp").await;
    let w_hls = WsWatch::connect(&p_hls, "hls").await;
    // Both viewers see the same outage, which keeps this test short.
    outage_and_recovery(&[&w_rtmp, &w_hls], &mut nginx).await;
    // The publisher's URL is the RTMP reader's too; only readers write rawvideo.
    stop_and_check(p_rtmp, &rtmp);
    stop_and_check(p_hls, &hls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_from_gstreamer_survives_an_upstream_restart() {
    let mut server = ScriptServer::rtsp();
    let url = server.url();
    let p = start(&url, &[]);
    check_mjpeg(&p).await;
    let w = WsWatch::connect(&p, "rtsp").await;
    outage_and_recovery(&[&w], &mut server).await;
    stop_and_check(p, &url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flv_survives_an_upstream_restart() {
    let mut server = ScriptServer::http_flv();
    let url = server.url();
    let p = start(&url, &[]);
    check_mjpeg(&p).await;
    let w = WsWatch::connect(&p, "http-flv").await;
    outage_and_recovery(&[&w], &mut server).await;
    stop_and_check(p, &url);
}

/// Seconds in the test clip.
const CLIP_S: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_plays_once_per_session_or_loops() {
    let dir = TempDir::new("clip");
    // 16:9 and 30 fps: scaled into 320x240 with bars, and capped at 15 fps.
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, CLIP_S, "640x360");
    let clip = clip.to_str().unwrap();
    let once = start(clip, &[]);
    let looped = start(&format!("file:{clip}"), &["--loop"]);
    let w_once = WsWatch::connect(&once, "once").await;
    let w_loop = WsWatch::connect(&looped, "loop").await;

    // Not looped: the clip plays, then viewers see why it stopped.
    let mark = w_once.live(0, 10, LIVE_TIMEOUT).await;
    w_once.no_signal(mark, NO_SIGNAL_TIMEOUT).await;
    let s = once.state().await;
    assert_eq!(s["source"]["state"], "error", "{s}");
    assert!(
        s["source"]["error"]
            .as_str()
            .unwrap()
            .contains("end of file"),
        "{s}"
    );
    let played = w_once.frames().iter().filter(|f| !f.no_signal).count();
    // 2 s at most 15 fps (30 fps in the file): the rate cap works, nothing is duplicated.
    assert!(
        (10..=(CLIP_S as usize * 15 + 2)).contains(&played),
        "{played} frames from a {CLIP_S} s clip capped at 15 fps"
    );

    // Looped: frames go on well past the end of the clip, with no "no signal" in between.
    let first_live = w_loop.live(0, 1, LIVE_TIMEOUT).await;
    let enough = (CLIP_S as usize * 15) * 2 + 10;
    w_loop.live(first_live, enough, LIVE_TIMEOUT).await;
    let after_start = &w_loop.frames()[first_live..];
    assert!(
        after_start.iter().all(|f| !f.no_signal),
        "no signal while looping: {}",
        summary(after_start)
    );

    // The next viewing session of the unlooped file plays it again.
    drop(w_once);
    once.wait_state("idle", Duration::from_secs(10), |s| {
        s["source"]["state"] == "idle"
    })
    .await;
    let again = WsWatch::connect(&once, "once again").await;
    again.live(0, 10, LIVE_TIMEOUT).await;
    drop(again);
    drop(w_loop);
    let mut once = once;
    assert!(once.stop().success());
    let mut looped = looped;
    assert!(looped.stop().success());
    assert_no_ffmpeg_left(clip, Duration::from_secs(2), "after picamd stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_runs_only_while_watched() {
    let dir = TempDir::new("ondemand");
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, CLIP_S, "320x240");
    let clip = clip.to_str().unwrap();
    let p = start(clip, &["--loop"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ffmpeg_readers(clip).is_empty(),
        "ffmpeg runs with no viewer"
    );

    check_mjpeg(&p).await;
    assert_eq!(ffmpeg_readers(clip).len(), 1, "one ffmpeg for a viewer");
    // The viewer left: after the 1 s linger, ffmpeg is stopped.
    assert_no_ffmpeg_left(clip, Duration::from_secs(5), "after the last viewer left");
    // The source reports idle once it has reaped ffmpeg and waits for demand again.
    p.wait_state("idle", Duration::from_secs(5), |s| {
        s["source"]["state"] == "idle"
    })
    .await;

    // A new viewer starts it again.
    let w = WsWatch::connect(&p, "viewer").await;
    w.live(0, 5, LIVE_TIMEOUT).await;
    stop_and_check(p, clip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_picamd_takes_its_ffmpeg_along() {
    // An upstream that accepts and then says nothing: ffmpeg blocks reading it and writes
    // nothing, so only the kernel's parent-death signal can end it in time (a writing
    // ffmpeg would also die of the broken pipe).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/silent.flv", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let mut p = start(&url, &[]);
    let _viewer = WsWatch::connect(&p, "viewer").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ffmpeg_readers(&url).is_empty() {
        assert!(Instant::now() < deadline, "no ffmpeg started for a viewer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = p.stop();
    assert!(!status.success(), "picamd was killed: {status}");
    // Well within ffmpeg's own 10 s network timeout.
    assert_no_ffmpeg_left(&url, Duration::from_secs(3), "after picamd was SIGKILLed");
    holder.abort();
}

/// `passthrough`: an MJPEG input's JPEGs reach viewers exactly as they are in the file, not
/// decoded and encoded again.
#[tokio::test]
async fn an_mjpeg_file_passes_through_byte_for_byte() {
    let dir = TempDir::new("passthrough");
    let originals = common::upstream::ffmpeg_jpegs(dir.path(), 20);
    let clip = dir.path().join("mjpeg-clip.avi");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-framerate", "10", "-i"])
        .arg(dir.path().join("%03d.jpg"))
        .args(["-c:v", "copy"])
        .arg(&clip)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not write the MJPEG clip");
    let clip = clip.to_str().unwrap().to_owned();

    let p = start(&clip, &["--passthrough", "--loop"]);
    let mut r = MjpegReader::new(open(p.addr, "/stream").await).await;
    // More than the clip holds, so the loop is crossed too.
    for i in 0..30 {
        let part = tokio::time::timeout(LIVE_TIMEOUT, r.next_part())
            .await
            .expect("an MJPEG part")
            .expect("the stream goes on");
        assert!(
            originals.iter().any(|o| o[..] == part.jpeg[..]),
            "part {i} ({} bytes) is not one of the file's JPEGs",
            part.jpeg.len()
        );
    }
    drop(r);
    stop_and_check(p, "mjpeg-clip.avi");
}
