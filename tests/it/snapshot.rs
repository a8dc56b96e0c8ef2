//! `/snapshot` and its legacy URLs: a valid JPEG of the configured size, always fresh.

use crate::common;

use std::time::Duration;

use common::{decode, now_us, parse_x_timestamp, Picamd};

#[tokio::test]
async fn snapshot_is_a_jpeg_of_the_configured_size() {
    let p = Picamd::start(&["--size", "640x360", "--fps", "15"]);
    for path in ["/snapshot", "/snapshot.jpg", "/?action=snapshot"] {
        let r = p.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("image/jpeg"), "{path}");
        assert_eq!(
            r.header("content-length")
                .map(|v| v.parse::<usize>().unwrap()),
            Some(r.body.len())
        );
        assert!(r.header("cache-control").unwrap().contains("no-store"));
        let (w, h, _) = decode(&r.body);
        assert_eq!((w, h), (640, 360), "{path}");
    }
}

#[tokio::test]
async fn default_size_is_1280x720() {
    let p = Picamd::start(&[]);
    let (w, h, _) = decode(&p.get("/snapshot").await.body);
    assert_eq!((w, h), (1280, 720));
}

#[tokio::test]
async fn snapshots_a_second_apart_differ() {
    let p = Picamd::start(&["--size", "320x240"]);
    let a = p.get("/snapshot").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = p.get("/snapshot").await;
    assert_ne!(a.body, b.body);
    let (_, _, seq_a) = decode(&a.body);
    let (_, _, seq_b) = decode(&b.body);
    assert!(seq_b > seq_a, "frame numbers {seq_a} then {seq_b}");
    let (ta, tb) = (
        parse_x_timestamp(a.header("x-timestamp").unwrap()),
        parse_x_timestamp(b.header("x-timestamp").unwrap()),
    );
    assert!(tb >= ta + 900_000, "capture times {ta} then {tb}");
}

#[tokio::test]
async fn snapshot_after_idle_is_captured_after_the_request() {
    let p = Picamd::start(&["--size", "320x240", "--fps", "10"]);
    let first = p.get("/snapshot").await;
    let (_, _, first_seq) = decode(&first.body);
    // Let the pipeline go idle (the linger is 1 s; later on a loaded machine).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    p.wait_state("idle", Duration::from_secs(10), |s| {
        s["source"]["state"] == "idle"
    })
    .await;

    let asked = now_us();
    let r = p.get("/snapshot").await;
    assert_eq!(r.status, 200);
    let captured = parse_x_timestamp(r.header("x-timestamp").unwrap());
    assert!(
        captured >= asked,
        "captured {captured} before the request {asked}"
    );
    // Within a few frame intervals (10 fps → 100 ms each), with room for a busy machine.
    assert!(captured - asked < 2_000_000, "took {} µs", captured - asked);
    let (_, _, seq) = decode(&r.body);
    assert!(seq > first_seq);
}
