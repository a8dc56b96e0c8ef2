//! The encoder keys against the real binary on a machine without hardware encoders: what
//! `--list-encoders`, `--encoder-check` and `/state` say, and that a stream told to use a
//! device that is not there still serves video (in software). The M2M module itself runs
//! against vicodec in the VM (image-build/vm/, `m2m-check`) and on a fake device in the unit
//! tests.

use crate::common;

use common::{run_picamd, Picamd};

#[test]
fn list_encoders_says_what_each_stream_would_use_and_why() {
    let out = run_picamd(&[
        "--list-encoders",
        "--h264-encoder",
        "software",
        "--jpeg-encoder",
        "v4l2:/dev/no-such-video",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stream main: JPEG: software (TurboJPEG) (jpeg_encoder = v4l2:/dev/no-such-video): /dev/no-such-video is not a memory-to-memory encoder here"),
        "{text}"
    );
    assert!(
        text.contains(
            "stream main: H.264: software (OpenH264) (h264_encoder = software): as configured"
        ),
        "{text}"
    );
}

#[test]
fn bad_encoder_values_and_devices_are_clear_errors() {
    for (args, want) in [
        (&["--jpeg-encoder", "gpu"][..], "`jpeg_encoder`"),
        (
            &["--h264-encoder", "v4l2:video11"][..],
            "expected auto, software or v4l2:/dev/videoN",
        ),
    ] {
        let out = run_picamd(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // /dev/null is no encoder: the check says so and fails.
    let out = run_picamd(&[
        "--encoder-check",
        "/dev/null",
        "--encoder-check-frames",
        "3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/dev/null: not a V4L2 memory-to-memory encoder"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stream_told_to_use_a_missing_device_serves_in_software_and_says_why() {
    let p = Picamd::start(&[
        "--size",
        "320x240",
        "--jpeg-encoder",
        "v4l2:/dev/no-such-video",
        "--h264-encoder",
        "auto",
    ]);
    let snap = p.get("/snapshot").await;
    assert_eq!(snap.status, 200);
    assert_eq!(&snap.body[..2], &[0xFF, 0xD8]);
    let state = p.state().await;
    let jpeg = &state["encoder"];
    assert_eq!(jpeg["configured"], "v4l2:/dev/no-such-video");
    assert_eq!(jpeg["using"], "software (TurboJPEG)");
    assert_eq!(
        jpeg["why"],
        "/dev/no-such-video is not a memory-to-memory encoder here"
    );
    assert_eq!(jpeg["fallbacks"], 0);
    let h264 = &state["h264"]["encoder"];
    assert_eq!(h264["configured"], "auto");
    assert_eq!(h264["using"], "software (OpenH264)");
    assert_eq!(h264["why"], "auto found no H.264 encoder");
    let m = String::from_utf8(p.get("/metrics").await.body).unwrap();
    for line in [
        "picamd_encoder_hardware{stream=\"main\",codec=\"jpeg\"} 0",
        "picamd_encoder_fallbacks_total{stream=\"main\",codec=\"h264\"} 0",
    ] {
        assert!(m.contains(line), "{line} not in {m}");
    }
}
