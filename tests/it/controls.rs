//! `/controls` against the test pattern, whose brightness and contrast are adjustable.

use crate::common;

use common::{post_json, Picamd};

/// Mean luma of a patch of the grey ramp in a snapshot (away from the moving parts).
async fn ramp_luma(p: &Picamd) -> f64 {
    let jpeg = p.get("/snapshot").await.body;
    let img = turbojpeg::decompress_to_yuv(&jpeg).unwrap();
    let stride = img.width.div_ceil(img.align) * img.align;
    let (y0, x0) = (img.height * 3 / 4, img.width / 2);
    let mut sum = 0u64;
    for y in y0..y0 + 8 {
        for x in x0..x0 + 8 {
            sum += img.pixels[y * stride + x] as u64;
        }
    }
    sum as f64 / 64.0
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[tokio::test]
async fn controls_are_reported_applied_and_refused_clearly() {
    let p = Picamd::start(&["--size", "320x240"]);
    let r = p.get("/controls").await;
    assert_eq!(r.status, 200);
    let report = json(&r.body);
    assert_eq!(report["supported"]["brightness"], true);
    assert_eq!(report["supported"]["autofocus"], false);

    let before = ramp_luma(&p).await;
    let r = post_json(p.addr, "/controls", r#"{"brightness": 0.6}"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r.body)["current"]["brightness"], 0.6);
    let after = ramp_luma(&p).await;
    assert!(after > before + 30.0, "luma {before} → {after}");

    // Unsupported: refused as a whole, named, nothing applied.
    let r = post_json(
        p.addr,
        "/controls",
        r#"{"contrast": 2, "autofocus": "continuous"}"#,
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        json(&r.body)["unsupported"],
        serde_json::json!(["autofocus"])
    );
    assert!(json(&p.get("/controls").await.body)["current"]
        .get("contrast")
        .is_none());

    // Out of range, unknown name, malformed: 400 naming the problem.
    for (body, needle) in [
        (r#"{"brightness": 3}"#, "brightness"),
        (r#"{"brightnes": 0.1}"#, "brightnes"),
        ("{", "invalid"),
        ("{}", "no controls"),
    ] {
        let r = post_json(p.addr, "/controls", body).await;
        assert_eq!(r.status, 400, "{body}");
        let msg = json(&r.body)["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
}

#[tokio::test]
async fn controls_from_the_config_file_apply_at_start() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("controls-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "size = \"320x240\"\n[controls]\nbrightness = -0.5\ncontrast = 1.5\n",
    )
    .unwrap();
    let p = Picamd::start(&["--config", path.to_str().unwrap()]);
    let current = &json(&p.get("/controls").await.body)["current"];
    assert_eq!(
        (current["brightness"].as_f64(), current["contrast"].as_f64()),
        (Some(-0.5), Some(1.5))
    );
    drop(p);

    std::fs::write(&path, "[controls]\nsaturation = 99\n").unwrap();
    let out = common::run_picamd(&["--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("saturation"), "{err}");
}
