//! Shared helpers: start the real `picamd` binary on a free port and talk HTTP to it over
//! real sockets. The HTTP client is deliberately minimal so the tests see the bytes on the
//! wire (chunked or close-delimited bodies, multipart parts) rather than a library's view.
#![allow(dead_code)]

pub mod peers;
pub mod procfs;
pub mod slow_link;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader,
};
use tokio::net::TcpStream;

/// Runs `picamd <args>` to its end (for start-up errors and one-shot commands).
pub fn run_picamd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_picamd"))
        .args(args)
        .output()
        .expect("run picamd")
}

/// Runs `picamd <args>` to its end with `input` piped to its stdin (`--hash-password`).
pub fn run_picamd_with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_picamd"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run picamd");
    // A write error means picamd exited early; its output says why.
    let _ = child.stdin.take().expect("piped stdin").write_all(input);
    child.wait_with_output().expect("wait for picamd")
}

/// A running `picamd`; SIGTERM on drop, and the exit must be clean.
pub struct Picamd {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Every line picamd has written to stdout so far (the banner).
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Picamd {
    /// Starts `picamd --listen 127.0.0.1:0 <args>` and waits until it listens.
    pub fn start(args: &[&str]) -> Picamd {
        Picamd::try_start("127.0.0.1:0", args).expect("picamd did not report its address")
    }

    /// Starts `picamd --listen <listen> --allow-root <args>`; `None` (the process killed and reaped) if it
    /// does not report a listening address within 20 s, e.g. because the port is taken.
    pub fn try_start(listen: &str, args: &[&str]) -> Option<Picamd> {
        Picamd::try_start_with_env(listen, args, &[])
    }

    /// [`Picamd::try_start`] with extra environment variables (systemd's, for the service
    /// tests).
    pub fn try_start_with_env(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Picamd> {
        Picamd::spawn(
            Command::new(env!("CARGO_BIN_EXE_picamd")),
            listen,
            args,
            env,
        )
    }

    /// [`Picamd::start`] inside network namespace `ns` (`ip netns exec`, which execs picamd,
    /// so the child is picamd itself), listening on `listen`.
    pub fn start_in_netns(ns: &str, listen: &str, args: &[&str]) -> Picamd {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_picamd")]);
        Picamd::spawn(cmd, listen, args, &[]).expect("picamd did not report its address")
    }

    fn spawn(
        mut cmd: Command,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Option<Picamd> {
        let mut child = cmd
            .envs(env.iter().copied())
            .args(["--listen", listen])
            // CI runs as root, which picamd refuses unless told (tests/it/service.rs covers that).
            .arg("--allow-root")
            .args(args)
            // Info logs would drown the test output; warnings and errors still show.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn picamd");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().expect("address"));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Some(Picamd {
                child: Some(child),
                addr,
                stdout: lines,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// The first stdout line starting with `prefix`, waiting up to 5 s for it.
    pub fn stdout_line(&self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned();
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The HTTPS address from the banner's `https on ADDR, certificate SHA-256 FP (…)`
    /// line, and the fingerprint (with `--tls-listen`).
    pub fn https(&self) -> (SocketAddr, String) {
        let line = self.stdout_line("https on ").expect("an `https on` line");
        let rest = line.strip_prefix("https on ").unwrap();
        let (addr, rest) = rest
            .split_once(", certificate SHA-256 ")
            .expect("fingerprint");
        let fp = rest.split_whitespace().next().expect("fingerprint");
        (addr.parse().expect("address"), fp.to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        procfs::status_field(&self.pid().to_string(), "VmRSS:").expect("VmRSS")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("picamd did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Picamd::stop`], then a line for a bench's report; whether the exit was clean.
    pub fn stop_and_report(&mut self) -> bool {
        let status = self.stop();
        let clean = status.success();
        let verdict = if clean {
            " (clean exit)"
        } else {
            " — NOT a clean exit"
        };
        println!("picamd stopped with SIGTERM: {status}{verdict}");
        clean
    }

    pub async fn get(&self, path: &str) -> Response {
        get(self.addr, path).await
    }

    pub async fn state(&self) -> serde_json::Value {
        let r = self.get("/state").await;
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).expect("state is JSON")
    }

    /// Polls `/state` every 50 ms until `ok` holds, and returns that state; fails the test
    /// with the last state seen if it does not hold `within`. Figures that change together
    /// (a viewer and its consumer, say) go in one `ok`: they are counted a moment apart.
    pub async fn wait_state(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.state().await;
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "/state not {what} within {within:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Picamd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            if !std::thread::panicking() {
                assert!(status.success(), "picamd exited with {status}");
            }
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `GET path` with `Connection: close`, whole body read.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    let mut r = open(addr, path).await;
    let body = r.read_to_end().await;
    Response {
        status: r.status,
        headers: r.headers,
        body,
    }
}

/// `POST path` with a JSON body, whole response read.
pub async fn post_json(addr: SocketAddr, path: &str, json: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    let mut r = read_response_head(stream).await;
    let body = r.read_to_end().await;
    Response {
        status: r.status,
        headers: r.headers,
        body,
    }
}

/// Sends a raw request and returns the reader positioned at the body.
pub async fn open(addr: SocketAddr, path: &str) -> BodyReader<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    send_request(stream, addr, path).await
}

pub async fn send_request<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
) -> BodyReader<S> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    read_response_head(stream).await
}

/// Reads a response's status line and headers; the reader is left at the body.
async fn read_response_head<S: AsyncRead + Unpin>(stream: S) -> BodyReader<S> {
    let mut reader = TokioBufReader::new(stream);
    let status_line = read_line(&mut reader).await.expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = read_headers(&mut reader).await;
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header(&headers, "content-length").and_then(|v| v.parse().ok());
    BodyReader {
        reader,
        status,
        headers,
        chunked,
        remaining_in_chunk: 0,
        length,
        done: false,
    }
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut TokioBufReader<R>) -> Option<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).await.ok()?;
    (n > 0).then(|| line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn read_headers<R: AsyncRead + Unpin>(r: &mut TokioBufReader<R>) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r).await.expect("header line");
        if line.is_empty() {
            return headers;
        }
        let (k, v) = line.split_once(':').expect("header has a colon");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

/// Reads an HTTP body, undoing chunked transfer encoding when the server used it.
pub struct BodyReader<S> {
    reader: TokioBufReader<S>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunked: bool,
    remaining_in_chunk: usize,
    length: Option<usize>,
    done: bool,
}

impl<S: AsyncRead + Unpin> BodyReader<S> {
    /// Reads up to `buf.len()` body bytes; 0 at the end of the body.
    pub async fn read(&mut self, buf: &mut [u8]) -> usize {
        if self.done {
            return 0;
        }
        if !self.chunked {
            let want = match self.length {
                Some(0) => return 0,
                Some(n) => buf.len().min(n),
                None => buf.len(),
            };
            let n = self.reader.read(&mut buf[..want]).await.unwrap_or(0);
            if let Some(l) = &mut self.length {
                *l -= n;
            }
            return n;
        }
        if self.remaining_in_chunk == 0 {
            let Some(size_line) = read_line(&mut self.reader).await else {
                self.done = true;
                return 0;
            };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
            if size == 0 {
                self.done = true;
                return 0;
            }
            self.remaining_in_chunk = size;
        }
        let want = buf.len().min(self.remaining_in_chunk);
        let n = self.reader.read(&mut buf[..want]).await.unwrap_or(0);
        if n == 0 {
            self.done = true;
            return 0;
        }
        self.remaining_in_chunk -= n;
        if self.remaining_in_chunk == 0 {
            let mut crlf = [0u8; 2];
            let _ = self.reader.read_exact(&mut crlf).await;
        }
        n
    }

    pub async fn read_exact(&mut self, mut buf: &mut [u8]) -> bool {
        while !buf.is_empty() {
            let n = self.read(buf).await;
            if n == 0 {
                return false;
            }
            buf = &mut buf[n..];
        }
        true
    }

    /// One line of the body without its CRLF.
    pub async fn read_body_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            if self.read(&mut b).await == 0 {
                return None;
            }
            if b[0] == b'\n' {
                let s = String::from_utf8(line).expect("utf-8 line");
                return Some(s.trim_end_matches('\r').to_owned());
            }
            line.push(b[0]);
            assert!(line.len() < 4096, "runaway line in body");
        }
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.read(&mut buf).await;
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
}

/// One part of a multipart MJPEG stream.
#[derive(Debug)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub jpeg: Vec<u8>,
}

/// Reads MJPEG parts, framing each one by its `Content-Length` and checking that the
/// boundary line follows the JPEG bytes at once.
pub struct MjpegReader<S> {
    body: BodyReader<S>,
    boundary: String,
}

impl<S: AsyncRead + Unpin> MjpegReader<S> {
    pub async fn new(mut body: BodyReader<S>) -> Self {
        assert_eq!(body.status, 200);
        let ct = header(&body.headers, "content-type")
            .expect("content-type")
            .to_owned();
        assert!(ct.starts_with("multipart/x-mixed-replace"), "{ct}");
        let boundary = ct
            .split("boundary=")
            .nth(1)
            .expect("boundary")
            .trim()
            .to_owned();
        let first = body.read_body_line().await.expect("opening boundary");
        assert_eq!(first, format!("--{boundary}"));
        MjpegReader { body, boundary }
    }

    pub async fn next_part(&mut self) -> Option<Part> {
        let mut headers = Vec::new();
        loop {
            let line = self.body.read_body_line().await?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("part header");
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let len: usize = header(&headers, "content-length")
            .expect("every part has Content-Length")
            .parse()
            .expect("numeric length");
        let mut jpeg = vec![0u8; len];
        if !self.body.read_exact(&mut jpeg).await {
            return None;
        }
        // The boundary must come right after the JPEG, so browsers can paint the part.
        let blank = self.body.read_body_line().await?;
        assert_eq!(blank, "", "CRLF after the JPEG");
        let boundary = self.body.read_body_line().await?;
        assert_eq!(boundary, format!("--{}", self.boundary));
        Some(Part { headers, jpeg })
    }
}

/// Decodes a JPEG fully; returns width, height and the frame number the test pattern drew.
pub fn decode(jpeg: &[u8]) -> (usize, usize, u32) {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG starts with SOI");
    assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9], "JPEG ends with EOI");
    let img = turbojpeg::decompress_to_yuv(jpeg).expect("JPEG decodes");
    let stride = img.width.div_ceil(img.align) * img.align;
    let seq = picamd::source::test_pattern::read_seq_cells(&img.pixels, stride, img.width);
    (img.width, img.height, seq)
}

/// Microseconds since the Unix epoch now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Parses an `X-Timestamp` (`seconds.micros`) into microseconds.
pub fn parse_x_timestamp(v: &str) -> u64 {
    let (s, us) = v.split_once('.').expect("seconds.micros");
    s.parse::<u64>().unwrap() * 1_000_000 + us.parse::<u64>().unwrap()
}

/// A file under the target directory, removed on drop (config files for tests).
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn with(text: &str) -> TempFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!(
            "picamd-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write the test file");
        TempFile(path)
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Lifts the soft open-file limit to the hard one (a server started afterwards inherits it),
/// for benchmarks that open thousands of sockets; returns the resulting soft limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                eprintln!("cannot raise the open-file limit from {soft}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}
