//! `passthrough = true` with H.264 inputs: the input's own access units reach the H.264
//! consumers (a publisher to nginx-rtmp, and picamd's RTSP server, read back with ffprobe and
//! decoded by ffmpeg), picamd's encoder never runs, and MJPEG viewers still get frames at the configured size. Inputs: an MP4 file made
//! by ffmpeg/libx264 in High profile (picamd's encoder makes only Constrained Baseline, so
//! High read back from nginx proves the units were copied), GStreamer's RTSP server (SPS and
//! PPS in band, Annex B from the start), and an MPEG-4 Part 2 file, which cannot be passed
//! through and is encoded instead.
//!
//! Needs Debian's ffmpeg (with ffprobe and libx264), nginx + libnginx-mod-rtmp and the
//! GStreamer RTSP server (`.ci/setup test` installs them).

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::peers::{assert_no_ffmpeg_left, NginxRtmp, ScriptServer, TempDir};
use common::{decode, Picamd};

/// What ffprobe says of the first video stream at `url`: codec, profile, width, height.
fn probe(url: &str) -> Result<(String, String, u64, u64), String> {
    common::peers::probe_video(url, &[])
}

/// Writes a `seconds` long 640x360 25 fps clip of `testsrc2` to `path`, encoded with the
/// `codec` options.
fn make_clip(path: &Path, seconds: u32, codec: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"])
        .args(["-t", &seconds.to_string()])
        .args(codec)
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not write {path:?}");
}

/// Waits up to `within` for `/state` to satisfy `ok`; returns it.
/// picamd passing the clip at `clip` through in a loop (320x240 frames at 25 fps for the
/// JPEG side) and publishing it to `url`.
fn start_looped_passed_through(clip: &str, url: &str) -> Picamd {
    Picamd::start(&[
        "--source",
        clip,
        "--loop",
        "--passthrough",
        "--size",
        "320x240",
        "--fps",
        "25",
        "--publish",
        url,
    ])
}

async fn probe_published(url: &str) -> (String, String, u64, u64) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || probe(&url))
        .await
        .unwrap()
        .expect("ffprobe reads the published stream from nginx")
}

/// Whether picamd (`pid`) has a thread named `name` now.
fn has_thread(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("picamd's threads")
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

/// A snapshot: a JPEG at the configured size.
async fn assert_snapshot(p: &Picamd, size: (usize, usize)) {
    let r = p.get("/snapshot").await;
    assert_eq!(r.status, 200);
    let (w, h, _) = decode(&r.body);
    assert_eq!((w, h), size, "the snapshot has the configured size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_file_is_published_as_it_is_and_snapshots_still_work() {
    let dir = TempDir::new("pt-h264");
    let clip = dir.path().join("pt-high.mp4");
    // 4 s, two GOPs: the test runs past its end, so the loop is crossed.
    make_clip(
        &clip,
        4,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
            "-g",
            "50",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let clip = clip.to_str().unwrap().to_owned();
    assert_eq!(
        probe(&clip).unwrap(),
        ("h264".into(), "High".into(), 640, 360),
        "the clip itself"
    );
    let nginx = NginxRtmp::server();
    let url = format!("rtmp://127.0.0.1:{}/live/pt-h264", nginx.rtmp_port);
    let p = start_looped_passed_through(&clip, &url);
    // The publisher alone (an H.264 consumer holding a viewer slot) wakes the source.
    let s = p
        .wait_state("publishing", Duration::from_secs(40), |s| {
            s["publish"][0]["state"] == "publishing"
        })
        .await;
    assert_eq!(s["viewers"]["mjpeg"], 0, "{s}");
    assert_eq!(
        s["frames"]["encoded"], 0,
        "no JPEG is encoded while only H.264 consumers watch: {s}"
    );
    assert_eq!(
        probe_published(&url).await,
        ("h264".into(), "High".into(), 640, 360),
        "the camera's own profile and size, not picamd's Constrained Baseline at 320x240"
    );
    let s = p.state().await;
    let h = &s["h264"];
    assert_eq!(h["mode"], "passthrough", "{s}");
    assert_eq!(
        (h["width"].as_u64(), h["height"].as_u64()),
        (Some(640), Some(360)),
        "{s}"
    );
    assert_eq!(h["encoded"], 0, "picamd's H.264 encoder never ran: {s}");
    assert!(
        !has_thread(p.pid(), "h264-enc"),
        "no H.264 stage was started"
    );
    assert!(h["keyframes"].as_u64() >= Some(1), "{s}");
    assert!(h.get("passthrough_refused").is_none(), "{s}");
    assert_eq!(s["source"]["state"], "streaming", "{s}");
    // MJPEG viewers get the decoded frames, at the configured size.
    assert_snapshot(&p, (320, 240)).await;
    let metrics = String::from_utf8(p.get("/metrics").await.body).unwrap();
    assert!(
        metrics.contains("picamd_h264_passthrough{stream=\"main\"} 1"),
        "{metrics}"
    );
    // picamd's own RTSP server serves the same units; a client joining mid-GOP starts with
    // the GOP the hub kept and decodes without an error.
    let line = p.stdout_line("rtsp on ").expect("an `rtsp on` line");
    let rtsp = format!("rtsp://{}/main", line["rtsp on ".len()..].trim());
    let (probed, decoded) = tokio::task::spawn_blocking(move || {
        let probed = common::peers::probe_video(&rtsp, &["-rtsp_transport", "tcp"]);
        let decoded = Command::new("timeout")
            .args(["60", "ffmpeg", "-hide_banner", "-nostdin", "-v", "error"])
            .args(["-rtsp_transport", "tcp", "-i", &rtsp])
            .args(["-frames:v", "60", "-f", "null", "-"])
            .stdin(Stdio::null())
            .output()
            .expect("run ffmpeg");
        (probed, decoded)
    })
    .await
    .unwrap();
    assert_eq!(
        probed.expect("ffprobe reads picamd's RTSP"),
        ("h264".into(), "High".into(), 640, 360)
    );
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "ffmpeg decodes 60 frames from RTSP cleanly: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    // Still no encoder after the JPEG and RTSP viewers came and went.
    assert_eq!(p.state().await["h264"]["encoded"], 0);
    // Past the end of the file (two keyframes a pass): the units go on, without a failure.
    let s = p
        .wait_state("past the loop", Duration::from_secs(20), |s| {
            s["h264"]["keyframes"].as_u64() >= Some(5)
        })
        .await;
    assert_eq!(s["source"]["restarts"], 0, "{s}");
    assert_eq!(s["source"]["state"], "streaming", "{s}");
    assert_eq!(s["publish"][0]["state"], "publishing", "{s}");
    drop(p);
    assert_no_ffmpeg_left(
        "pt-high.mp4",
        Duration::from_secs(2),
        "after picamd stopped",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_camera_with_parameter_sets_in_band_is_passed_through() {
    let rtsp = ScriptServer::rtsp();
    let nginx = NginxRtmp::server();
    let url = format!("rtmp://127.0.0.1:{}/live/pt-rtsp", nginx.rtmp_port);
    let p = Picamd::start(&[
        "--source",
        &rtsp.url(),
        "--passthrough",
        "--size",
        "160x120",
        "--fps",
        "15",
        "--publish",
        &url,
    ]);
    p.wait_state("publishing", Duration::from_secs(40), |s| {
        s["publish"][0]["state"] == "publishing"
    })
    .await;
    let (codec, _, w, h) = probe_published(&url).await;
    assert_eq!(
        (codec.as_str(), w, h),
        ("h264", 320, 240),
        "the camera's size"
    );
    let s = p.state().await;
    assert_eq!(s["h264"]["mode"], "passthrough", "{s}");
    assert_eq!(s["h264"]["encoded"], 0, "{s}");
    assert_snapshot(&p, (160, 120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_codec_is_encoded_instead_and_says_why() {
    let dir = TempDir::new("pt-mpeg4");
    let clip = dir.path().join("pt-mpeg4.mkv");
    make_clip(&clip, 10, &["-c:v", "mpeg4", "-q:v", "5"]);
    let clip = clip.to_str().unwrap().to_owned();
    let nginx = NginxRtmp::server();
    let url = format!("rtmp://127.0.0.1:{}/live/pt-mpeg4", nginx.rtmp_port);
    let p = start_looped_passed_through(&clip, &url);
    p.wait_state("publishing", Duration::from_secs(40), |s| {
        s["publish"][0]["state"] == "publishing"
    })
    .await;
    assert_eq!(
        probe_published(&url).await,
        ("h264".into(), "Constrained Baseline".into(), 320, 240),
        "picamd's own encoder, started when the probe found MPEG-4"
    );
    let s = p.state().await;
    let h = &s["h264"];
    assert_eq!(h["mode"], "encoded", "{s}");
    assert!(
        h["passthrough_refused"]
            .as_str()
            .is_some_and(|w| w.contains("mpeg4")),
        "{s}"
    );
    assert!(h["encoded"].as_u64() >= Some(1), "{s}");
    assert!(
        has_thread(p.pid(), "h264-enc"),
        "the H.264 stage, started late"
    );
    assert_snapshot(&p, (320, 240)).await;
}

/// A stand-in for ffmpeg (`PICAMD_FFMPEG`) and the ffprobe beside it: ffprobe says H.264,
/// "ffmpeg" writes what the shell command `h264` prints to fd 3 and nothing on stdout (so no
/// frame clears the failure in `/state` before the test reads it).
fn fake_ffmpeg(dir: &Path, h264: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let write = |name: &str, body: String| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    write(
        "ffprobe",
        "#!/bin/sh\nprintf 'codec_name=h264\\nwidth=320\\nheight=240\\n'\n".into(),
    );
    write("ffmpeg", format!("#!/bin/sh\n{h264} >&3\nsleep 60\n"))
}

/// What ffmpeg writes on fd 3 is checked, not trusted: garbage, or a unit without end, fails
/// the source with the reason (viewers see "no signal"), it is restarted, nothing panics and
/// memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_an_endless_unit_on_the_h264_output_fails_the_source_with_the_reason() {
    let cases = [
        (
            "printf 'RIFF, not H.264'",
            "does not start with an access unit delimiter",
        ),
        // A delimiter, a slice header, then 8 MiB without a start code.
        (
            "{ printf '\\000\\000\\000\\001\\011\\360\\000\\000\\001\\145'; \
             head -c 8388608 /dev/zero | tr '\\000' '\\377'; }",
            "access unit of more than 4194304 bytes",
        ),
    ];
    for (script, reason) in cases {
        let dir = TempDir::new("pt-fake");
        let ffmpeg = fake_ffmpeg(dir.path(), script);
        let p = Picamd::try_start_with_env(
            "127.0.0.1:0",
            &[
                "--source",
                "rtsp://127.0.0.1:9/cam",
                "--passthrough",
                "--size",
                "320x240",
            ],
            &[("PICAMD_FFMPEG", &ffmpeg)],
        )
        .expect("picamd starts");
        // A viewer wakes the source.
        let viewer = tokio::spawn({
            let addr = p.addr;
            async move {
                let mut body = common::open(addr, "/stream").await;
                let mut buf = vec![0; 65536];
                while body.read(&mut buf).await > 0 {}
            }
        });
        let s = p
            .wait_state("failed with the reason", Duration::from_secs(30), |s| {
                s["source"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(reason))
            })
            .await;
        assert!(s["source"]["restarts"].as_u64() >= Some(1), "{s}");
        assert!(
            p.rss_kib() < 200 * 1024,
            "memory stays bounded: {} KiB",
            p.rss_kib()
        );
        viewer.abort();
        drop(p);
    }
}
