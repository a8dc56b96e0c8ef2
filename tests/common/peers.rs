//! Real upstream peers for the ffmpeg source tests, all on 127.0.0.1 and all from Debian
//! packages: nginx with the RTMP module (RTMP, and the HLS it writes served over HTTP) fed by
//! an ffmpeg publisher, a GStreamer RTSP server, and a live HTTP-FLV server. Scripts and
//! templates live in `tests/peers/`.
//!
//! Every peer runs in a temporary directory on free ports, is killed and reaped when its
//! guard drops, and gets SIGKILL from the kernel if the test thread that started it dies
//! (`PR_SET_PDEATHSIG`), so a crashed test leaves nothing running either.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Debian's Python with `gi`; the `python3` on `PATH` may be a build without it.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// How long a peer may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// A directory under the system temp dir, removed with its content on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "picamd-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A peer process; SIGKILL and reaped on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout discarded (stderr shows in the test log).
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    /// Kills and reaps the process now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panics if the process has exited (a peer that died at start).
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An ffmpeg publishing a live 320x240 15 fps H.264 test picture to `url` (FLV over RTMP).
fn rtmp_publisher(url: &str) -> Proc {
    Proc::spawn(
        "ffmpeg publisher",
        Command::new("ffmpeg").args([
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=15",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "15",
            "-f",
            "flv",
            url,
        ]),
    )
}

/// nginx with the RTMP module (`application live`, HLS on) and an ffmpeg publishing to
/// `live/cam`; HLS is served at `/hls/cam.m3u8` by the same nginx.
pub struct NginxRtmp {
    pub rtmp_port: u16,
    pub http_port: u16,
    // Dropped in this order: the publisher, nginx, then the directory they used.
    publisher: Option<Proc>,
    nginx: Option<Proc>,
    dir: TempDir,
}

impl NginxRtmp {
    pub fn start() -> NginxRtmp {
        let mut n = NginxRtmp::server();
        n.restart();
        n
    }

    /// nginx alone, for picamd to publish to; nothing is published yet.
    pub fn server() -> NginxRtmp {
        let dir = TempDir::new("nginx");
        let (rtmp_port, http_port) = (free_port(), free_port());
        let prefix = dir.path().to_str().expect("UTF-8 temp path").to_owned();
        let conf = std::fs::read_to_string(peers_dir().join("nginx-rtmp.conf"))
            .expect("nginx template")
            .replace("@PREFIX@", &prefix)
            .replace("@RTMP_PORT@", &rtmp_port.to_string())
            .replace("@HTTP_PORT@", &http_port.to_string());
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let mut n = NginxRtmp {
            rtmp_port,
            http_port,
            publisher: None,
            nginx: None,
            dir,
        };
        n.restart_server();
        n
    }

    pub fn rtmp_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live/cam", self.rtmp_port)
    }

    pub fn hls_url(&self) -> String {
        format!("http://127.0.0.1:{}/hls/cam.m3u8", self.http_port)
    }

    /// Kills the publisher and nginx: the upstream is gone.
    pub fn kill(&mut self) {
        self.publisher = None;
        self.nginx = None;
    }

    /// (Re)starts nginx and the publisher on the same ports, and waits until HLS segments
    /// exist (which proves the stream is being published).
    pub fn restart(&mut self) {
        self.restart_server();
        let d = self.dir.path();
        self.publisher = Some(rtmp_publisher(&self.rtmp_url()));
        let playlist = d.join("hls/cam.m3u8");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&playlist).unwrap_or_default();
            if text.matches("#EXTINF").count() >= 2 {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                panic!("nginx-rtmp wrote no HLS playlist; its log:\n{log}");
            }
            self.publisher.as_mut().expect("started").assert_running();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (Re)starts nginx alone on the same ports.
    pub fn restart_server(&mut self) {
        self.kill();
        let d = self.dir.path();
        // Stale playlists from before a kill would be served as if live.
        let _ = std::fs::remove_dir_all(d.join("hls"));
        for sub in ["hls", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("nginx dirs");
        }
        let mut nginx = Proc::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(d)
                // The compiled-in error log path (/var/log/nginx) is opened before the
                // configuration is read.
                .arg("-e")
                .arg(d.join("error.log"))
                .arg("-c")
                .arg(d.join("nginx.conf")),
        );
        wait_for_port(self.rtmp_port, "nginx (RTMP)");
        wait_for_port(self.http_port, "nginx (HTTP)");
        nginx.assert_running();
        self.nginx = Some(nginx);
    }
}

/// A peer server run by one of `tests/peers/*.py` (with Debian's Python, for `gi`) on a free
/// port, restartable on the same port.
pub struct ScriptServer {
    pub port: u16,
    what: &'static str,
    script: &'static str,
    /// The URL, with `{port}` where the port goes.
    url: &'static str,
    proc: Option<Proc>,
}

impl ScriptServer {
    /// GStreamer's RTSP server with a live H.264 test picture at `rtsp://127.0.0.1:PORT/cam`.
    pub fn rtsp() -> ScriptServer {
        ScriptServer::start(
            "the RTSP server",
            "rtsp_server.py",
            "rtsp://127.0.0.1:{port}/cam",
        )
    }

    /// A live HTTP-FLV server at `http://127.0.0.1:PORT/live.flv` (a small Python server that
    /// runs an ffmpeg encoder per client, so clients can come and go).
    pub fn http_flv() -> ScriptServer {
        ScriptServer::start(
            "the HTTP-FLV server",
            "flv_server.py",
            "http://127.0.0.1:{port}/live.flv",
        )
    }

    fn start(what: &'static str, script: &'static str, url: &'static str) -> ScriptServer {
        let mut s = ScriptServer {
            port: free_port(),
            what,
            script,
            url,
            proc: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        self.url.replace("{port}", &self.port.to_string())
    }

    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let mut proc = Proc::spawn(
            self.what,
            Command::new(SYSTEM_PYTHON)
                .arg(peers_dir().join(self.script))
                .arg(self.port.to_string()),
        );
        wait_for_port(self.port, self.what);
        proc.assert_running();
        self.proc = Some(proc);
    }
}

/// Writes an H.264 MP4 test clip of `seconds` at `size` (`WxH`) and 30 fps to `path`.
pub fn make_clip(path: &Path, seconds: u32, size: &str) {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", &format!("testsrc=size={size}:rate=30")])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ffmpeg");
    assert!(
        status.success(),
        "ffmpeg could not write the clip: {status}"
    );
}

/// Running (not zombie) ffmpeg processes of picamd's — reading for it (`-f rawvideo`, or
/// `-f mpjpeg` in pass-through) or publishing for it (`-i pipe:0`) — whose command line
/// mentions `marker`: pid and command line.
pub fn ffmpeg_readers(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ffmpeg = args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some("ffmpeg"));
        if !is_ffmpeg
            || !args
                .iter()
                .any(|a| a == "rawvideo" || a == "mpjpeg" || a == "pipe:0")
            || !args.iter().any(|a| a.contains(marker))
        {
            continue;
        }
        // A zombie has no command line, but be sure: look at its state.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim().chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            continue;
        }
        found.push((pid, args.join(" ")));
    }
    found
}

/// Waits up to `timeout` for no [`ffmpeg_readers`] of `marker` to be left; panics with
/// those still running.
pub fn assert_no_ffmpeg_left(marker: &str, timeout: Duration, when: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = ffmpeg_readers(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ffmpeg still running {when}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What ffprobe says of the first video stream at `url` (with `extra` options before it,
/// e.g. `-rtsp_transport tcp`): codec, profile, width, height; its error output otherwise.
pub fn probe_video(url: &str, extra: &[&str]) -> Result<(String, String, u64, u64), String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "10000000"])
        .args(extra)
        .args(["-select_streams", "v:0", "-show_entries"])
        .args(["stream=codec_name,profile,width,height", "-of", "json", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let s = &v["streams"][0];
    Ok((
        s["codec_name"].as_str().unwrap_or_default().to_owned(),
        s["profile"].as_str().unwrap_or_default().to_owned(),
        s["width"].as_u64().unwrap_or(0),
        s["height"].as_u64().unwrap_or(0),
    ))
}
