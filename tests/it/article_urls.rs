//! The URLs of the article picamd grew out of: `/mjpgstreamer/<name>` and
//! `/mjpgsnapshot/<name>` answer what `/cam/<name>/stream` and `/cam/<name>/snapshot` answer,
//! and the article's own client (read 1024 bytes at a time, cut JPEGs at FFD8 … FFD9) gets
//! whole pictures from them.

use crate::common;

use std::process::Command;

use common::{decode, open, MjpegReader, Picamd, TempFile};

/// The article's two videos, as stream names.
const ARTICLE_STREAMS: &str = r#"
fps = 15
[[stream]]
name = "picamera"
source = "test"
size = "320x240"
[[stream]]
name = "screen"
source = "test"
size = "160x120"
"#;

/// Headers whose values change from one response to the next.
const VARYING: &[&str] = &["date", "content-length", "x-timestamp"];

fn stable(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| !VARYING.contains(&k.as_str()))
        .collect();
    h.sort();
    h
}

#[tokio::test]
async fn article_urls_answer_what_their_cam_twins_answer() {
    let cfg = TempFile::with(ARTICLE_STREAMS);
    let p = Picamd::start(&["--config", cfg.as_str()]);

    for (name, size) in [("picamera", (320, 240)), ("screen", (160, 120))] {
        let alias = p.get(&format!("/mjpgsnapshot/{name}")).await;
        let twin = p.get(&format!("/cam/{name}/snapshot")).await;
        assert_eq!((alias.status, twin.status), (200, 200), "{name}");
        assert_eq!(stable(&alias.headers), stable(&twin.headers), "{name}");
        let (w, h, _) = decode(&alias.body);
        assert_eq!((w, h), size, "{name}");

        let alias = open(p.addr, &format!("/mjpgstreamer/{name}")).await;
        let twin = open(p.addr, &format!("/cam/{name}/stream")).await;
        assert_eq!((alias.status, twin.status), (200, 200), "{name}");
        assert_eq!(stable(&alias.headers), stable(&twin.headers), "{name}");
        let (alias, twin) = (
            &mut MjpegReader::new(alias).await,
            &mut MjpegReader::new(twin).await,
        );
        for _ in 0..3 {
            let (a, t) = (alias.next_part().await, twin.next_part().await);
            let (a, t) = (a.expect("alias part"), t.expect("twin part"));
            assert_eq!(stable(&a.headers), stable(&t.headers), "{name}");
            let (w, h, _) = decode(&a.jpeg);
            assert_eq!((w, h), size, "{name}");
        }
        // Both count as viewers of the stream, as the same handler on the same stream.
        let state = p.get(&format!("/cam/{name}/state")).await;
        let state: serde_json::Value = serde_json::from_slice(&state.body).unwrap();
        assert_eq!(state["viewers"]["mjpeg"], 2, "{name}: {state}");
    }

    // A name that is no stream says so.
    let r = p.get("/mjpgstreamer/webcam").await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("webcam"));
    assert_eq!(p.get("/mjpgsnapshot/").await.status, 404);
}

/// The article's client, as it was written: Python, `urllib`, 1024-byte reads, JPEGs cut at
/// the first FFD8 and the next FFD9. It writes what it cut to files, checked here.
const ARTICLE_CLIENT: &str = r#"
import sys, urllib.request
url, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
stream = urllib.request.urlopen(url, timeout=10)
data = b''
n = 0
while n < count:
    data += stream.read(1024)
    a = data.find(b'\xff\xd8')
    b = data.find(b'\xff\xd9')
    if a != -1 and b != -1:
        jpg = data[a:b + 2]
        data = data[b + 2:]
        if b > a:
            open('%s/%d.jpg' % (out, n), 'wb').write(jpg)
            n += 1
"#;

#[tokio::test]
async fn the_articles_client_cuts_whole_jpegs_from_mjpgstreamer() {
    let cfg = TempFile::with(ARTICLE_STREAMS);
    let p = Picamd::start(&["--config", cfg.as_str()]);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("article-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("http://{}/mjpgstreamer/screen", p.addr);
    let out = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            Command::new("python3")
                .args(["-c", ARTICLE_CLIENT, &url, dir.to_str().unwrap(), "10"])
                .output()
                .expect("python3")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..10 {
        let jpeg = std::fs::read(dir.join(format!("{i}.jpg"))).unwrap();
        // A cut in the wrong place (an FFD9 inside the picture) would not decode whole.
        assert_eq!(decode(&jpeg).0, 160, "picture {i}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
