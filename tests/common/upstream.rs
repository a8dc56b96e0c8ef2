//! Upstreams for the upstream-MJPEG tests: picamd on a port of the test's choosing (so it can
//! be restarted on the same one), ffmpeg serving its own multipart output, and the frame
//! collectors that compare what went in with what came out.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use picamd::wire::{FrameHeader, FLAG_NO_SIGNAL};
use tokio_tungstenite::tungstenite::Message;

use super::{open, MjpegReader, Picamd};

/// Starts `picamd --listen 127.0.0.1:PORT <args>`, retrying while the port is still held by
/// a process that just exited.
pub fn start_picamd_on(port: u16, args: &[&str]) -> Picamd {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(p) = Picamd::try_start(&format!("127.0.0.1:{port}"), args) {
            return p;
        }
        // It exited without listening (the port was busy): try again for a while.
        assert!(Instant::now() < deadline, "picamd never listened on {port}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every JPEG read from an MJPEG stream, kept for comparison, until the task is aborted.
pub struct Collector {
    pub jpegs: Arc<Mutex<HashSet<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts reading `path` from `addr` and returns once the first JPEG has arrived.
    pub async fn start(addr: SocketAddr, path: &str) -> Collector {
        let jpegs = Arc::new(Mutex::new(HashSet::new()));
        let mut reader = MjpegReader::new(open(addr, path).await).await;
        let first = tokio::time::timeout(Duration::from_secs(10), reader.next_part())
            .await
            .expect("the upstream sends a frame within 10 s")
            .expect("a part");
        jpegs.lock().unwrap().insert(first.jpeg);
        let sink = jpegs.clone();
        let task = tokio::spawn(async move {
            while let Some(part) = reader.next_part().await {
                sink.lock().unwrap().insert(part.jpeg);
            }
        });
        Collector { jpegs, task }
    }

    pub fn contains(&self, jpeg: &[u8]) -> bool {
        self.jpegs.lock().unwrap().contains(jpeg)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws(addr: SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("websocket");
    ws
}

/// One JPEG from a WebSocket viewer.
#[derive(Debug)]
pub struct WsFrame {
    pub no_signal: bool,
    pub width: u32,
    pub height: u32,
    pub jpeg: Vec<u8>,
}

/// The next frame, failing the test if none comes within `within`: viewers must always get
/// frames (live or "no signal").
pub async fn next_ws_frame(ws: &mut Ws, within: Duration) -> WsFrame {
    loop {
        let msg = match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(other) => panic!("the socket ended: {other:?}"),
            Err(_) => panic!("no frame for {within:?}"),
        };
        let Message::Binary(data) = msg else { continue };
        let (h, jpeg) = FrameHeader::parse(&data).expect("frame header");
        return WsFrame {
            no_signal: h.flags & FLAG_NO_SIGNAL != 0,
            width: h.width,
            height: h.height,
            jpeg: jpeg.to_vec(),
        };
    }
}

/// Writes `count` 320x240 test-source JPEGs as `dir/001.jpg`… with ffmpeg and returns them.
pub fn ffmpeg_jpegs(dir: &Path, count: usize) -> Vec<Vec<u8>> {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=size=320x240:rate=10")
        .args(["-frames:v", &count.to_string()])
        .arg(dir.join("%03d.jpg"))
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg made no JPEGs");
    (1..=count)
        .map(|i| std::fs::read(dir.join(format!("{i:03}.jpg"))).expect("JPEG written"))
        .collect()
}

/// ffmpeg serving `dir/%03d.jpg` in a loop as `-f mpjpeg` over its own HTTP server (one
/// client, then it exits); killed on drop.
pub struct FfmpegServer {
    child: Child,
    pub url: String,
}

impl FfmpegServer {
    pub fn start(dir: &Path, port: u16) -> FfmpegServer {
        let url = format!("http://127.0.0.1:{port}/feed.mjpg");
        let child = Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
            ])
            .args(["-framerate", "10", "-i"])
            .arg(dir.join("%03d.jpg"))
            .args(["-c:v", "copy", "-f", "mpjpeg", "-listen", "1", &url])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ffmpeg");
        // Not probed: ffmpeg serves exactly one connection. A downstream that comes too
        // early is refused and retries with backoff.
        FfmpegServer { child, url }
    }
}

/// The most resident memory picamd ever had (`VmHWM`), in KiB: a peak no sampling can miss.
pub fn peak_rss_kib(p: &Picamd) -> u64 {
    super::procfs::status_field(&p.pid().to_string(), "VmHWM:").expect("VmHWM")
}

/// Kills picamd at once (SIGKILL): its streams end mid-frame, without a goodbye.
pub fn kill_hard(p: &mut Picamd) {
    let mut child = p.child.take().expect("running");
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for FfmpegServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
