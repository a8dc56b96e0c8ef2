//! On-demand capture: nothing is captured or encoded while nobody watches.

use crate::common;

use std::time::Duration;

use common::{open, MjpegReader, Picamd};

fn frames(state: &serde_json::Value, key: &str) -> u64 {
    state["frames"][key].as_u64().unwrap()
}

#[tokio::test]
async fn idle_without_viewers_and_back_when_one_arrives() {
    let p = Picamd::start(&["--size", "320x240", "--fps", "30"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = p.state().await;
    assert_eq!(
        frames(&s, "captured"),
        0,
        "nothing captured before a viewer: {s}"
    );
    assert_eq!(frames(&s, "encoded"), 0);
    assert_eq!(s["source"]["state"], "idle");

    {
        let mut r = MjpegReader::new(open(p.addr, "/stream").await).await;
        for _ in 0..10 {
            r.next_part()
                .await
                .expect("frames flow once a viewer arrives");
        }
        assert_eq!(p.state().await["source"]["state"], "streaming");
    }
    // The viewer left; after the 1 s linger the source idles again. Waited for rather than
    // read once after 2 s: on a loaded machine the linger's end can come late.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let s1 = p
        .wait_state("idle after the linger", Duration::from_secs(10), |s| {
            s["source"]["state"] == "idle"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s2 = p.state().await;
    assert!(frames(&s1, "encoded") >= 10);
    assert_eq!(
        frames(&s1, "encoded"),
        frames(&s2, "encoded"),
        "encoding while idle"
    );
    assert_eq!(
        frames(&s1, "captured"),
        frames(&s2, "captured"),
        "capturing while idle"
    );
    assert_eq!(s2["source"]["state"], "idle");
    assert_eq!(s2["viewers"]["mjpeg"], 0);
    assert_eq!(s2["fps"]["measured"], 0.0);

    // A new viewer brings frames back.
    let mut r = MjpegReader::new(open(p.addr, "/stream").await).await;
    r.next_part().await.expect("frames flow again");
    assert!(frames(&p.state().await, "encoded") > frames(&s2, "encoded"));
}
