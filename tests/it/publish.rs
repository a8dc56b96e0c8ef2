//! Publishing: picamd pushes a stream's H.264 to nginx with its RTMP module, ffprobe reads it
//! back from nginx; nginx killed and started again on the same port, the publisher comes back
//! by itself; after SIGTERM no ffmpeg is left.

use crate::common;

use std::time::Duration;

use common::peers::{assert_no_ffmpeg_left, ffmpeg_readers, NginxRtmp};
use common::Picamd;

/// What ffprobe says of the first video stream at `url`: codec, profile, width, height.
fn probe(url: &str) -> Result<(String, String, u64, u64), String> {
    common::peers::probe_video(url, &[])
}

/// Waits up to `within` for the first publisher of `p`'s default stream to be in `state`.
async fn wait_publisher(p: &Picamd, state: &str, within: Duration) -> serde_json::Value {
    let s = p
        .wait_state(&format!("publishing {state}"), within, |s| {
            s["publish"][0]["state"] == state
        })
        .await;
    s["publish"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_h264_to_nginx_rtmp_and_comes_back_after_a_restart() {
    let mut nginx = NginxRtmp::server();
    let url = format!("rtmp://127.0.0.1:{}/live/picamd-pub", nginx.rtmp_port);
    let mut p = Picamd::start(&["--size", "320x240", "--fps", "15", "--publish", &url]);

    wait_publisher(&p, "publishing", Duration::from_secs(30)).await;
    let probed = tokio::task::spawn_blocking({
        let url = url.clone();
        move || probe(&url)
    })
    .await
    .unwrap()
    .expect("ffprobe reads the published stream from nginx");
    assert_eq!(
        probed,
        ("h264".into(), "Constrained Baseline".into(), 320, 240)
    );
    let s = p.state().await;
    assert_eq!(s["viewers"]["publish"], 1, "{s}");
    assert_eq!(
        s["source"]["state"], "streaming",
        "a publisher runs the source: {s}"
    );
    assert!(s["h264"]["keyframes"].as_u64() >= Some(1), "{s}");

    // nginx goes away: the publisher says so and retries; nginx back on the same port: it
    // publishes again by itself.
    nginx.kill();
    let down = wait_publisher(&p, "retrying", Duration::from_secs(30)).await;
    assert!(
        down["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    nginx.restart_server();
    let back = wait_publisher(&p, "publishing", Duration::from_secs(60)).await;
    assert!(back["restarts"].as_u64() >= Some(1), "{back}");
    let probed = tokio::task::spawn_blocking({
        let url = url.clone();
        move || probe(&url)
    })
    .await
    .unwrap()
    .expect("ffprobe reads the stream again after nginx came back");
    assert_eq!(probed.0, "h264");

    assert!(
        !ffmpeg_readers("picamd-pub").is_empty(),
        "the publisher's ffmpeg runs"
    );
    let status = p.stop();
    assert!(status.success(), "picamd exited with {status}");
    assert_no_ffmpeg_left("picamd-pub", Duration::from_secs(2), "after picamd stopped");
}

#[test]
fn a_publish_url_of_another_kind_is_a_config_error() {
    let out = common::run_picamd(&["--publish", "http://example.com/x", "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`publish`") && err.contains("rtmp://"),
        "{err}"
    );
}
