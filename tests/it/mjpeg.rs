//! The multipart MJPEG stream: framing, content, rate, and isolation from slow clients.

use crate::common;

use std::time::{Duration, Instant};

use common::{decode, header, open, parse_x_timestamp, MjpegReader, Picamd};
use tokio::net::TcpSocket;

/// Reads parts for `dur` and returns how many arrived, checking each one fully.
async fn count_parts(
    reader: &mut MjpegReader<tokio::net::TcpStream>,
    dur: Duration,
    size: (usize, usize),
) -> usize {
    let end = Instant::now() + dur;
    let mut n = 0;
    let mut last_seq = 0;
    while Instant::now() < end {
        let part = reader.next_part().await.expect("stream ended early");
        assert_eq!(header(&part.headers, "content-type"), Some("image/jpeg"));
        assert!(header(&part.headers, "x-timestamp").is_some());
        let (w, h, seq) = decode(&part.jpeg);
        assert_eq!((w, h), size);
        assert!(seq > last_seq, "frames go forward: {last_seq} then {seq}");
        last_seq = seq;
        n += 1;
    }
    n
}

#[tokio::test]
async fn stream_parts_are_framed_valid_jpegs_at_the_configured_rate() {
    let p = Picamd::start(&["--size", "640x360", "--fps", "20"]);
    let mut r = MjpegReader::new(open(p.addr, "/stream").await).await;
    // Warm up: the source starts when the first viewer arrives.
    r.next_part().await.expect("first part");
    let n = count_parts(&mut r, Duration::from_secs(3), (640, 360)).await;
    // 20 fps for 3 s is 60 frames; allow a loaded machine to fall well short, but a stream
    // that repeats or invents frames would overshoot.
    assert!((30..=66).contains(&n), "{n} parts in 3 s at 20 fps");
    let state = p.state().await;
    assert_eq!(state["viewers"]["mjpeg"], 1);
}

#[tokio::test]
async fn legacy_urls_answer_the_same() {
    let p = Picamd::start(&["--size", "320x240", "--fps", "30"]);
    for path in ["/?action=stream", "/stream.mjpg"] {
        let mut r = MjpegReader::new(open(p.addr, path).await).await;
        let part = r.next_part().await.expect("a part");
        let ts = parse_x_timestamp(header(&part.headers, "x-timestamp").unwrap());
        assert!(ts > 1_600_000_000_000_000);
        assert_eq!(decode(&part.jpeg).0, 320, "{path}");
    }
}

#[tokio::test]
async fn a_client_that_never_reads_slows_nobody_and_costs_bounded_memory() {
    let fps = 30;
    let p = Picamd::start(&["--size", "1280x720", "--fps", "30", "--quality", "95"]);
    let mut good = MjpegReader::new(open(p.addr, "/stream").await).await;
    good.next_part().await.expect("first part");
    count_parts(&mut good, Duration::from_secs(1), (1280, 720)).await;
    let rss_before = p.rss_kib();

    // Five clients with tiny receive windows send a request and never read again.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(p.addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        s.write_all(format!("GET /stream HTTP/1.1\r\nHost: {}\r\n\r\n", p.addr).as_bytes())
            .await
            .unwrap();
        stalled.push(s);
    }
    // Give them time to fill every buffer between the server and them.
    count_parts(&mut good, Duration::from_secs(2), (1280, 720)).await;
    let n = count_parts(&mut good, Duration::from_secs(4), (1280, 720)).await;
    let rss_after = p.rss_kib();
    let state = p.state().await;
    assert_eq!(
        state["viewers"]["mjpeg"], 6,
        "stalled clients are still connected"
    );
    // The stalled clients have had ~6 s × 30 fps of ~60 KB frames offered to them (~10 MB
    // each, ~50 MB in all); a server that queued them would show it here.
    let grown_kib = rss_after.saturating_sub(rss_before);
    assert!(
        grown_kib < 24 * 1024,
        "RSS grew by {grown_kib} KiB with stalled clients"
    );
    // The reading client keeps receiving at (most of) the configured rate.
    assert!(
        n >= (4 * fps) / 2,
        "only {n} frames in 4 s next to stalled clients"
    );
    drop(stalled);
}

#[tokio::test]
async fn a_client_disconnecting_mid_frame_is_harmless() {
    let p = Picamd::start(&["--size", "640x360"]);
    for _ in 0..5 {
        let mut r = open(p.addr, "/stream").await;
        let mut buf = [0u8; 1000];
        r.read_exact(&mut buf).await;
        drop(r);
    }
    let mut r = MjpegReader::new(open(p.addr, "/stream").await).await;
    assert!(r.next_part().await.is_some());
    assert_eq!(p.get("/healthz").await.status, 200);
}
