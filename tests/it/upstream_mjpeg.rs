//! `--source http://…`: another streamer's multipart MJPEG, passed through byte for byte.
//! The upstreams are real: a second picamd, ffmpeg's `-f mpjpeg` server, and a hostile
//! server written here; everything on 127.0.0.1.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peers::free_port;
use common::upstream::{
    ffmpeg_jpegs, kill_hard, next_ws_frame, peak_rss_kib, start_picamd_on, ws, Collector,
    FfmpegServer,
};
use common::{open, MjpegReader, Picamd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Downstream frames are 640x480 only when they are its own "no signal" picture: every
/// upstream here sends 320x240.
const DOWNSTREAM_SIZE: &str = "640x480";

#[tokio::test]
async fn frames_from_another_picamd_pass_through_byte_for_byte() {
    let up = Picamd::start(&["--source", "test", "--size", "320x240", "--fps", "15"]);
    let seen_upstream = Collector::start(up.addr, "/stream").await;
    let down = Picamd::start(&[
        "--source",
        &format!("http://{}/stream", up.addr),
        "--size",
        DOWNSTREAM_SIZE,
    ]);
    let mut viewer = ws(down.addr).await;
    let mut live = Vec::new();
    while live.len() < 30 {
        let f = next_ws_frame(&mut viewer, Duration::from_secs(10)).await;
        if f.no_signal {
            assert_eq!((f.width, f.height), (640, 480));
            continue;
        }
        assert_eq!((f.width, f.height), (320, 240), "the upstream's own size");
        live.push(f.jpeg);
    }
    // The upstream reader may trail the downstream by a frame or two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, jpeg) in live.iter().enumerate() {
        assert!(
            seen_upstream.contains(jpeg),
            "downstream frame {i} ({} bytes) is not a JPEG the upstream served",
            jpeg.len()
        );
    }
    let distinct: std::collections::HashSet<_> = live.iter().collect();
    assert!(
        distinct.len() >= 10,
        "only {} distinct frames",
        distinct.len()
    );

    let s = down.state().await;
    assert_eq!(s["source"]["kind"], "mjpeg-http", "{s}");
    assert_eq!(s["source"]["state"], "streaming", "{s}");
}

#[tokio::test]
async fn mjpg_streamer_style_url_and_mjpeg_viewers() {
    let up = Picamd::start(&["--source", "test", "--size", "320x240", "--fps", "15"]);
    let seen_upstream = Collector::start(up.addr, "/?action=stream").await;
    let down = Picamd::start(&[
        "--source",
        &format!("mjpeg:http://{}/?action=stream", up.addr),
        "--size",
        DOWNSTREAM_SIZE,
    ]);
    let mut viewer = MjpegReader::new(open(down.addr, "/?action=stream").await).await;
    let mut live = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while live.len() < 30 {
        assert!(
            Instant::now() < deadline,
            "{} live frames in 20 s",
            live.len()
        );
        let part = tokio::time::timeout(Duration::from_secs(10), viewer.next_part())
            .await
            .expect("a part within 10 s")
            .expect("a part");
        let (w, h, _) = common::decode(&part.jpeg);
        if (w, h) == (320, 240) {
            live.push(part.jpeg);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for jpeg in &live {
        assert!(
            seen_upstream.contains(jpeg),
            "a JPEG the upstream never sent"
        );
    }
}

#[tokio::test]
async fn ffmpeg_mpjpeg_output_is_passed_through() {
    let dir = std::env::temp_dir().join(format!("picamd-mpjpeg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = ffmpeg_jpegs(&dir, 20);
    let port = free_port();
    let server = FfmpegServer::start(&dir, port);
    let down = Picamd::start(&["--source", &server.url, "--size", DOWNSTREAM_SIZE]);
    let mut viewer = ws(down.addr).await;
    let mut matched = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut live = 0;
    while live < 25 {
        assert!(Instant::now() < deadline, "{live} live frames in 30 s");
        let f = next_ws_frame(&mut viewer, Duration::from_secs(10)).await;
        if f.no_signal {
            continue;
        }
        let i = files
            .iter()
            .position(|j| *j == f.jpeg)
            .expect("every frame is one of ffmpeg's input files, byte for byte");
        matched.insert(i);
        live += 1;
    }
    assert!(matched.len() >= 10, "only files {matched:?} came through");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the hostile upstream sends on a connection.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    WrongLength,
    Garbage,
    Truncated,
    HugeWithLength,
    HugeWithoutLength,
}

const MISBEHAVIOURS: [Misbehaviour; 5] = [
    Misbehaviour::WrongLength,
    Misbehaviour::Garbage,
    Misbehaviour::Truncated,
    Misbehaviour::HugeWithLength,
    Misbehaviour::HugeWithoutLength,
];
const HUGE_PART: usize = 100_000_000;

async fn respond_head(sock: &mut TcpStream) -> std::io::Result<()> {
    // The request head; its content does not matter here.
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    sock.write_all(
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=hostile\r\n\r\n",
    )
    .await
}

fn part_head(len: Option<usize>) -> Vec<u8> {
    let mut h = b"--hostile\r\nContent-Type: image/jpeg\r\n".to_vec();
    if let Some(len) = len {
        h.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
    }
    h.extend_from_slice(b"\r\n");
    h
}

async fn misbehave(sock: &mut TcpStream, how: Misbehaviour, jpeg: &[u8]) -> std::io::Result<()> {
    respond_head(sock).await?;
    match how {
        Misbehaviour::WrongLength => {
            sock.write_all(&part_head(Some(jpeg.len() - 100))).await?;
            sock.write_all(jpeg).await?;
            sock.write_all(b"\r\n").await?;
        }
        Misbehaviour::Garbage => {
            let junk = vec![b'x'; 256 * 1024];
            sock.write_all(&junk).await?;
        }
        Misbehaviour::Truncated => {
            sock.write_all(&part_head(Some(jpeg.len()))).await?;
            sock.write_all(&jpeg[..jpeg.len() / 2]).await?;
            // Then the connection closes mid-frame.
        }
        Misbehaviour::HugeWithLength | Misbehaviour::HugeWithoutLength => {
            let declared = matches!(how, Misbehaviour::HugeWithLength).then_some(HUGE_PART);
            sock.write_all(&part_head(declared)).await?;
            // A JPEG start that never ends: scan data without markers, generated on the fly.
            sock.write_all(&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02])
                .await?;
            let block = vec![0x5Au8; 64 * 1024];
            let mut sent = 0;
            while sent < HUGE_PART {
                sock.write_all(&block).await?;
                sent += block.len();
            }
        }
    }
    sock.flush().await
}

async fn serve_good(sock: &mut TcpStream, jpegs: &[Vec<u8>]) -> std::io::Result<()> {
    respond_head(sock).await?;
    for jpeg in jpegs.iter().cycle() {
        sock.write_all(&part_head(Some(jpeg.len()))).await?;
        sock.write_all(jpeg).await?;
        sock.write_all(b"\r\n").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_hostile_upstream_cannot_hurt_picamd() {
    let dir = std::env::temp_dir().join(format!("picamd-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jpegs = Arc::new(ffmpeg_jpegs(&dir, 5));
    let _ = std::fs::remove_dir_all(&dir);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Connections served so far; the first MISBEHAVIOURS.len() are bad, later ones good
    // once `good` is set.
    let served = Arc::new(AtomicUsize::new(0));
    let good = Arc::new(AtomicUsize::new(0));
    {
        let (served, good, jpegs) = (served.clone(), good.clone(), jpegs.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let n = served.fetch_add(1, Ordering::SeqCst);
                let jpegs = jpegs.clone();
                let is_good = good.load(Ordering::SeqCst) == 1;
                tokio::spawn(async move {
                    let _ = if is_good {
                        serve_good(&mut sock, &jpegs).await
                    } else {
                        let how = MISBEHAVIOURS[n % MISBEHAVIOURS.len()];
                        misbehave(&mut sock, how, &jpegs[0]).await
                    };
                });
            }
        });
    }

    let down = Picamd::start(&[
        "--source",
        &format!("http://{addr}/"),
        "--size",
        DOWNSTREAM_SIZE,
    ]);
    let mut viewer = ws(down.addr).await;
    let mut no_signal = 0;
    // Every misbehaviour at least once, the viewer served all along.
    let deadline = Instant::now() + Duration::from_secs(60);
    while served.load(Ordering::SeqCst) <= MISBEHAVIOURS.len() {
        assert!(Instant::now() < deadline, "the upstream was not retried");
        let f = next_ws_frame(&mut viewer, Duration::from_secs(4)).await;
        assert!(f.no_signal, "only bad data so far, yet a live frame");
        no_signal += 1;
    }
    let peak = peak_rss_kib(&down);
    eprintln!(
        "{} bad connections, {no_signal} no-signal frames, peak RSS {peak} KiB, now {} KiB",
        served.load(Ordering::SeqCst),
        down.rss_kib()
    );
    assert!(no_signal >= 3, "{no_signal} no-signal frames");
    assert_eq!(down.get("/healthz").await.status, 200);
    let s = down.state().await;
    assert!(s["source"]["restarts"].as_u64().unwrap() >= 5, "{s}");
    // The huge parts never sat in memory: far below their 100 MB.
    assert!(
        peak < 100 * 1024,
        "picamd grew to {peak} KiB while refusing a {HUGE_PART}-byte part"
    );

    // Good data again: live frames return on the same socket, exactly as sent.
    good.store(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut live = 0;
    while live < 10 {
        assert!(Instant::now() < deadline, "live frames did not return");
        let f = next_ws_frame(&mut viewer, Duration::from_secs(4)).await;
        if !f.no_signal {
            assert!(jpegs.contains(&f.jpeg), "a frame the upstream did not send");
            live += 1;
        }
    }
    let peak = peak_rss_kib(&down);
    assert!(peak < 100 * 1024, "{peak} KiB");
    assert_eq!(down.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn an_upstream_restart_resumes_the_same_viewer_connection() {
    let port = free_port();
    let upstream_args = ["--source", "test", "--size", "320x240", "--fps", "15"];
    let mut up = start_picamd_on(port, &upstream_args);
    let down = Picamd::start(&[
        "--source",
        &format!("http://127.0.0.1:{port}/stream"),
        "--size",
        "320x240",
    ]);
    let mut viewer = ws(down.addr).await;
    let wait = Duration::from_secs(4);

    let mut live = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while live < 10 {
        assert!(
            Instant::now() < deadline,
            "no live frames from the upstream"
        );
        live += usize::from(!next_ws_frame(&mut viewer, wait).await.no_signal);
    }

    kill_hard(&mut up);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut no_signal = 0;
    while no_signal < 2 {
        assert!(
            Instant::now() < deadline,
            "no 'no signal' frames after the upstream died"
        );
        no_signal += usize::from(next_ws_frame(&mut viewer, wait).await.no_signal);
    }
    let s = down.state().await;
    assert_eq!(s["source"]["state"], "error", "{s}");

    let _up = start_picamd_on(port, &upstream_args);
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut live = 0;
    while live < 10 {
        assert!(Instant::now() < deadline, "live frames did not return");
        live += usize::from(!next_ws_frame(&mut viewer, wait).await.no_signal);
    }
    assert_eq!(down.state().await["source"]["state"], "streaming");
}

#[tokio::test]
async fn wrong_kinds_of_upstream_are_named_in_the_state() {
    let up = Picamd::start(&["--source", "test", "--size", "320x240"]);
    for (path, expect) in [("/snapshot", "image/jpeg"), ("/no-such-page", "404")] {
        let down = Picamd::start(&["--source", &format!("http://{}{path}", up.addr)]);
        // A viewer makes the source connect.
        let _viewer = ws(down.addr).await;
        let error = |s: &serde_json::Value| s["source"]["error"].as_str().unwrap_or("").to_owned();
        let s = down
            .wait_state(
                &format!("naming {expect} for {path}"),
                Duration::from_secs(15),
                |s| error(s).contains(expect),
            )
            .await;
        if expect == "image/jpeg" {
            assert!(error(&s).contains("ffmpeg:"), "{s}");
        }
    }
}

#[tokio::test]
async fn the_upstream_is_read_only_while_someone_watches() {
    let up = Picamd::start(&["--source", "test", "--size", "320x240", "--fps", "15"]);
    let down = Picamd::start(&["--source", &format!("http://{}/stream", up.addr)]);
    let upstream_viewers = |s: serde_json::Value| s["viewers"]["mjpeg"].as_u64().unwrap();
    // Nobody watches the downstream: it does not connect.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(upstream_viewers(up.state().await), 0);

    let mut viewer = ws(down.addr).await;
    let mut live = 0;
    while live < 5 {
        live += usize::from(
            !next_ws_frame(&mut viewer, Duration::from_secs(10))
                .await
                .no_signal,
        );
    }
    assert_eq!(upstream_viewers(up.state().await), 1);

    // The viewer leaves: after the linger the connection upstream is dropped.
    drop(viewer);
    up.wait_state(
        "without the downstream's connection",
        Duration::from_secs(10),
        |s| upstream_viewers(s.clone()) == 0,
    )
    .await;
    // The downstream's source idles and drops the connection a moment apart.
    down.wait_state("idle", Duration::from_secs(2), |s| {
        s["source"]["state"] == "idle"
    })
    .await;

    // And comes back when someone watches again.
    let mut viewer = ws(down.addr).await;
    let mut live = 0;
    while live < 5 {
        live += usize::from(
            !next_ws_frame(&mut viewer, Duration::from_secs(10))
                .await
                .no_signal,
        );
    }
}
