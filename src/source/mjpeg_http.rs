//! Upstream MJPEG over HTTP: another streamer's `multipart/x-mixed-replace` stream, its JPEGs
//! passed through without re-encoding.
//!
//! A small blocking HTTP/1.1 client on the source's own thread: one `GET` with
//! `Connection: close`, the response head parsed by `httparse`, the body (chunked or not)
//! split by [`Splitter`]. Reads time out after [`READ_TICK`] so the loop notices
//! shutdown and the end of demand promptly; with nobody watching, the connection is dropped
//! and the source waits for demand like a camera would. Anything wrong with the upstream
//! (refused, a bad answer, a broken stream, silence) is a [`SourceError::Failed`]: the
//! supervisor reconnects with backoff and viewers see "no signal" meanwhile.
//!
//! The response must be `200` with a `multipart/…` type. A body labelled
//! `application/octet-stream` or not labelled at all (ffmpeg's `-listen 1` server, some
//! cameras) is accepted if it starts like MJPEG (a `--` delimiter or a JPEG); anything else is
//! refused with a pointer to `ffmpeg:URL`. The upstream's JPEGs keep their own size, whatever
//! `--size` says; a "no signal" picture the upstream itself sends is, to us, a live frame.
//! Credentials in the URL (`http://user:password@host/…`) become Basic auth and are masked
//! in `/state` and logs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::multipart::{SplitLimits, Splitter};
use super::{Source, SourceContext, SourceError};
use crate::frame::SourceInfo;

/// Settings for [`MjpegHttpSource`].
#[derive(Debug, Clone, Copy)]
pub struct MjpegHttpOptions {
    /// Largest JPEG accepted from the upstream; a larger part is an error (and a reconnect).
    pub max_frame_bytes: usize,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a read blocks: how often the loop looks at shutdown and demand.
const READ_TICK: Duration = Duration::from_millis(500);
/// Silence from the upstream this long is a failure (it may have hung, or a proxy did).
const NO_DATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Data but no usable frame for this long is a failure too.
const NO_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response head (status line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (hex size plus extensions).
const MAX_CHUNK_LINE: usize = 1024;
const READ_BUF: usize = 64 * 1024;

/// An `http://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    host: String,
    port: u16,
    /// `user:password` as given (percent-decoded), for Basic auth.
    userinfo: Option<String>,
    /// Path and query, as sent in the request line.
    target: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("{url:?} is not a usable http:// URL: {why}");
        let rest = url
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &url[7..])
            .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
        if rest.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("it contains spaces or control characters"));
        }
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (
                Some(percent_decode(u).ok_or_else(|| bad("bad %-escape"))?),
                h,
            ),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 address"));
            }
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:%".contains(&b))
        {
            return Err(bad("bad host name"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        Ok(Url {
            host: host.to_owned(),
            port,
            userinfo,
            target,
        })
    }

    /// The `Host` header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The URL as shown in logs and `/state`: without the password.
    fn display(&self) -> String {
        let user = match &self.userinfo {
            Some(u) => format!("{}:***@", u.split(':').next().unwrap_or("")),
            None => String::new(),
        };
        format!("http://{user}{}{}", self.host_header(), self.target)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Standard base64 with padding, for the `Authorization` header.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Checks that `url` is an upstream this source can read (`http://host[:port]/path`).
pub fn check_url(url: &str) -> Result<(), String> {
    Url::parse(url).map(|_| ())
}

pub struct MjpegHttpSource {
    url: Url,
    options: MjpegHttpOptions,
    /// The boundary mismatch was reported (once per source, not per reconnect).
    mismatch_noted: bool,
    size_noted: bool,
}

impl MjpegHttpSource {
    pub fn new(url: &str, options: MjpegHttpOptions) -> Result<Self, String> {
        Ok(MjpegHttpSource {
            url: Url::parse(url)?,
            options,
            mismatch_noted: false,
            size_noted: false,
        })
    }
}

/// Why a connection ended without an error.
enum Ended {
    NoDemand,
    Shutdown,
}

impl Source for MjpegHttpSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "mjpeg-http",
            name: self.url.display(),
        }
    }

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        loop {
            if !ctx.wait_for_demand() {
                return Ok(());
            }
            match self.stream(ctx)? {
                Ended::Shutdown => return Ok(()),
                Ended::NoDemand => {
                    tracing::debug!(url = %self.url.display(), "nobody watches; disconnected");
                }
            }
        }
    }
}

impl MjpegHttpSource {
    fn fail(&self, why: impl std::fmt::Display) -> SourceError {
        SourceError::Failed(format!("{}: {why}", self.url.display()))
    }

    fn connect(&self) -> Result<TcpStream, SourceError> {
        let addrs: Vec<SocketAddr> = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| self.fail(format_args!("cannot resolve {}: {e}", self.url.host)))?
            .collect();
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => self.fail(format_args!("cannot connect: {e}")),
            None => self.fail(format_args!("{} has no address", self.url.host)),
        })
    }

    fn request(&self) -> String {
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: picamd/{}\r\n\
             Accept: multipart/x-mixed-replace, */*;q=0.1\r\nConnection: close\r\n",
            self.url.target,
            self.url.host_header(),
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(userinfo) = &self.url.userinfo {
            req.push_str(&format!(
                "Authorization: Basic {}\r\n",
                base64(userinfo.as_bytes())
            ));
        }
        req.push_str("\r\n");
        req
    }

    /// One connection: request, response head, then frames until something ends it.
    fn stream(&mut self, ctx: &mut SourceContext) -> Result<Ended, SourceError> {
        let mut sock = self.connect()?;
        let io = |e: std::io::Error| self.fail(e);
        sock.set_read_timeout(Some(READ_TICK)).map_err(io)?;
        sock.set_write_timeout(Some(CONNECT_TIMEOUT)).map_err(io)?;
        sock.write_all(self.request().as_bytes())
            .map_err(|e| self.fail(format_args!("cannot send the request: {e}")))?;

        let mut buf = vec![0u8; READ_BUF];
        let mut head = Vec::new();
        let mut last_data = Instant::now();
        // The response head; whatever follows it in the same read is the body's start.
        let body = loop {
            if ctx.is_shutting_down() {
                return Ok(Ended::Shutdown);
            }
            match read(&mut sock, &mut buf) {
                Ok(0) => {
                    return Err(self.fail("the upstream closed the connection before answering"))
                }
                Ok(n) => {
                    last_data = Instant::now();
                    head.extend_from_slice(&buf[..n]);
                    if let Some(parsed) = self.parse_head(&head)? {
                        break parsed;
                    }
                    if head.len() > MAX_HEAD_BYTES {
                        return Err(self.fail("response head too long"));
                    }
                }
                Err(e) if is_timeout(&e) => {
                    if last_data.elapsed() > NO_DATA_TIMEOUT {
                        return Err(self.fail(format_args!(
                            "no answer from upstream for {} s",
                            NO_DATA_TIMEOUT.as_secs()
                        )));
                    }
                }
                Err(e) => return Err(self.fail(e)),
            }
        };
        let ResponseHead {
            boundary,
            chunked,
            length,
            body_at,
            mut unverified,
        } = body;
        tracing::info!(url = %self.url.display(), chunked, "connected to the upstream");
        let limits = SplitLimits {
            max_frame_bytes: self.options.max_frame_bytes,
        };
        let mut splitter = Splitter::new(boundary.as_deref(), limits);
        let mut dechunk = chunked.then(Dechunker::default);
        let mut remaining = length;
        let mut frames: Vec<Bytes> = Vec::new();
        let mut last_frame = Instant::now();
        let mut first = true;
        let mut last_bad: Option<String> = None;
        let mut pending: Vec<u8> = head.split_off(body_at);
        drop(head);

        loop {
            if !pending.is_empty() {
                let mut data = &pending[..];
                if let Some(r) = &mut remaining {
                    let n = (*r).min(data.len());
                    data = &data[..n];
                    *r -= n;
                }
                let mut body = |piece: &[u8]| {
                    if let Some(ct) = &unverified {
                        match sniff(piece) {
                            None => {}
                            Some(true) => unverified = None,
                            Some(false) => return Err(self.not_mjpeg(ct)),
                        }
                    }
                    splitter
                        .feed(piece, |f| frames.push(f))
                        .map_err(|e| format!("bad stream: {e}"))
                };
                let fed = match &mut dechunk {
                    Some(d) => d.feed(data, body),
                    None => body(data),
                };
                pending.clear();
                if let Err(e) = fed {
                    return Err(self.fail(e));
                }
                self.note_mismatch(&splitter);
                for jpeg in frames.drain(..) {
                    match ctx.emit_jpeg(jpeg) {
                        Ok((width, height)) => {
                            last_frame = Instant::now();
                            if first {
                                first = false;
                                tracing::debug!(url = %self.url.display(), "first frame");
                            }
                            self.note_size(width, height);
                        }
                        Err(e) => {
                            tracing::debug!(url = %self.url.display(), "frame dropped: {e}");
                            last_bad = Some(e.to_string());
                        }
                    }
                }
                let body_done = remaining == Some(0)
                    || dechunk.as_ref().is_some_and(|d| d.done())
                    || splitter.closed();
                if body_done {
                    return Err(self.end_of_stream(&splitter));
                }
            }
            if ctx.is_shutting_down() {
                return Ok(Ended::Shutdown);
            }
            if !ctx.has_demand() {
                return Ok(Ended::NoDemand);
            }
            if last_frame.elapsed() > NO_FRAME_TIMEOUT {
                let why = last_bad.map_or_else(String::new, |e| format!(" (last: {e})"));
                return Err(self.fail(format_args!(
                    "no usable frame from upstream for {} s{why}",
                    NO_FRAME_TIMEOUT.as_secs()
                )));
            }
            match read(&mut sock, &mut buf) {
                Ok(0) => return Err(self.end_of_stream(&splitter)),
                Ok(n) => {
                    last_data = Instant::now();
                    pending.extend_from_slice(&buf[..n]);
                }
                Err(e) if is_timeout(&e) => {
                    if last_data.elapsed() > NO_DATA_TIMEOUT {
                        return Err(self.fail(format_args!(
                            "no data from upstream for {} s",
                            NO_DATA_TIMEOUT.as_secs()
                        )));
                    }
                }
                Err(e) => return Err(self.fail(format_args!("reading the stream: {e}"))),
            }
        }
    }

    fn end_of_stream(&self, splitter: &Splitter) -> SourceError {
        if splitter.in_part() {
            self.fail("the upstream ended the stream in the middle of a frame")
        } else {
            self.fail("the upstream ended the stream")
        }
    }

    fn note_mismatch(&mut self, splitter: &Splitter) {
        if let (false, Some((declared, actual))) =
            (self.mismatch_noted, splitter.boundary_mismatch())
        {
            self.mismatch_noted = true;
            tracing::warn!(
                url = %self.url.display(),
                "the upstream declares boundary {declared:?} but uses {actual:?}; using its own"
            );
        }
    }

    fn note_size(&mut self, width: u16, height: u16) {
        if !self.size_noted {
            self.size_noted = true;
            tracing::info!(url = %self.url.display(), "upstream frames are {width}x{height}");
        }
    }

    /// Parses the response head once it is complete: `None` while more is needed.
    fn parse_head(&self, data: &[u8]) -> Result<Option<ResponseHead>, SourceError> {
        parse_response_head(data).map_err(|e| match e {
            HeadError::NotMjpeg(content_type) => self.fail(self.not_mjpeg(&content_type)),
            HeadError::Refused(why) => self.fail(why),
        })
    }

    fn not_mjpeg(&self, content_type: &str) -> String {
        format!(
            "the upstream sends {}, not a multipart MJPEG stream; \
             for other streams use --source ffmpeg:{}",
            if content_type.is_empty() {
                "no Content-Type".to_owned()
            } else {
                format!("{content_type:?}")
            },
            self.url.display()
        )
    }
}

/// Whether a body starts like MJPEG (a multipart delimiter or a JPEG); `None` while it has
/// only shown whitespace.
fn sniff(piece: &[u8]) -> Option<bool> {
    let start = piece.iter().position(|b| !b.is_ascii_whitespace())?;
    Some(match &piece[start..] {
        [b'-'] | [0xFF] => true,
        rest => rest.starts_with(b"--") || rest.starts_with(&[0xFF, 0xD8]),
    })
}

pub(crate) struct ResponseHead {
    pub boundary: Option<String>,
    pub chunked: bool,
    /// A `Content-Length` on the whole stream (unusual): where the body ends.
    pub length: Option<usize>,
    /// Where the body starts in the data parsed.
    pub body_at: usize,
    /// The Content-Type when it did not say multipart; the body must show it is.
    pub unverified: Option<String>,
}

/// Why a response head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP, or not a 200 answer: the message says what came instead.
    Refused(String),
    /// A 200 answer with this Content-Type, which is not a multipart stream.
    NotMjpeg(String),
}

/// Parses an upstream's response head once it is complete: `None` while more is needed.
pub(crate) fn parse_response_head(data: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Refused(format!("bad HTTP response: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    if code != 200 {
        let status = format!(
            "HTTP/1.{} {code} {}",
            resp.version.unwrap_or(1),
            resp.reason.unwrap_or("")
        );
        let hint = match code {
            401 | 403 => " (credentials go in the URL: http://user:password@host/…)",
            301 | 302 | 303 | 307 | 308 => " (redirects are not followed; use the new URL)",
            _ => "",
        };
        let location = header("location")
            .map(|l| format!(", Location: {l}"))
            .unwrap_or_default();
        return Err(HeadError::Refused(format!(
            "the upstream answered \"{}\"{location}{hint}",
            status.trim_end()
        )));
    }
    let content_type = header("content-type").unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    // ffmpeg's own HTTP server (`-f mpjpeg -listen 1`) and some cameras label the stream
    // as generic bytes: let the body's first bytes decide.
    let generic = mime.is_empty() || mime.eq_ignore_ascii_case("application/octet-stream");
    if !generic && !mime.to_ascii_lowercase().starts_with("multipart/") {
        return Err(HeadError::NotMjpeg(content_type));
    }
    let chunked =
        header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let length = if chunked {
        None
    } else {
        header("content-length").and_then(|l| l.parse::<usize>().ok())
    };
    Ok(Some(ResponseHead {
        boundary: boundary_param(&content_type),
        chunked,
        length,
        body_at,
        unverified: generic.then_some(content_type),
    }))
}

/// The `boundary` parameter of a `Content-Type`, unquoted.
fn boundary_param(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

fn read(sock: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match sock.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Undoes `Transfer-Encoding: chunked` on bytes as they arrive (picamd answers HTTP/1.1
/// MJPEG clients chunked). Chunk sizes may be anything; only the size line is buffered, and
/// it is bounded.
#[derive(Debug, Default)]
pub(crate) struct Dechunker {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, up to a blank line.
    Trailer,
    Done,
}

impl Dechunker {
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Bytes of an unfinished line held back (bounded by `MAX_CHUNK_LINE`).
    #[cfg(fuzzing)]
    pub(crate) fn line_len(&self) -> usize {
        self.line.len()
    }

    /// Hands the decoded data in `data` to `out`, piece by piece.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        mut out: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        while !data.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(()),
                ChunkState::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    out(&data[..n])?;
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(eol) = data.iter().position(|&b| b == b'\n') else {
                        self.take_line_part(data)?;
                        return Ok(());
                    };
                    self.take_line_part(&data[..eol])?;
                    data = &data[eol + 1..];
                    let line = std::mem::take(&mut self.line);
                    let line = std::str::from_utf8(&line)
                        .map_err(|_| "chunk size line is not text".to_owned())?
                        .trim();
                    self.state = match self.state {
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => {
                            return Err(format!("chunk not followed by a line end: {line:?}"))
                        }
                        ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                        ChunkState::Trailer => ChunkState::Trailer,
                        _ => {
                            let hex = line.split(';').next().unwrap_or("").trim();
                            let size = u64::from_str_radix(hex, 16)
                                .map_err(|_| format!("bad chunk size {line:?}"))?;
                            if size == 0 {
                                ChunkState::Trailer
                            } else {
                                ChunkState::Data(size)
                            }
                        }
                    };
                }
            }
        }
        Ok(())
    }

    fn take_line_part(&mut self, part: &[u8]) -> Result<(), String> {
        if self.line.len() + part.len() > MAX_CHUNK_LINE {
            return Err("chunk size line too long".into());
        }
        self.line.extend_from_slice(part);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://cam.local:8080/?action=stream").unwrap();
        assert_eq!(
            u,
            Url {
                host: "cam.local".into(),
                port: 8080,
                userinfo: None,
                target: "/?action=stream".into()
            }
        );
        assert_eq!(u.host_header(), "cam.local:8080");
        let u = Url::parse("HTTP://admin:p%40ss:w@10.0.0.2?x=1#frag").unwrap();
        assert_eq!(u.host, "10.0.0.2");
        assert_eq!(u.port, 80);
        assert_eq!(u.userinfo.as_deref(), Some("admin:p@ss:w"));
        assert_eq!(u.target, "/?x=1");
        assert_eq!(u.display(), "http://admin:***@10.0.0.2/?x=1");
        let u = Url::parse("http://[::1]:81/s").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        assert_eq!(u.host_header(), "[::1]:81");
        assert_eq!(Url::parse("http://h").unwrap().target, "/");
        for bad in [
            "http:x",
            "http://",
            "http:///path",
            "http://host:0/",
            "http://host:65536/",
            "http://host:port/",
            "http://a b/",
            "http://host/a b",
            "http://[::1/",
            "http://[nothex]/",
            "http://u%zz@h/",
            "https://host/",
            "rtsp://x/",
            "http://ho\"st/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn boundary_params() {
        for (ct, b) in [
            (
                "multipart/x-mixed-replace;boundary=picamdframe",
                Some("picamdframe"),
            ),
            (
                "multipart/x-mixed-replace; Boundary=\"--my b\"",
                Some("--my b"),
            ),
            (
                "multipart/x-mixed-replace; charset=x; boundary=ffmpeg",
                Some("ffmpeg"),
            ),
            ("multipart/x-mixed-replace", None),
            ("multipart/x-mixed-replace; boundary=", None),
        ] {
            assert_eq!(boundary_param(ct).as_deref(), b, "{ct}");
        }
    }

    fn dechunk_all(data: &[u8], piece: usize) -> Result<(Vec<u8>, bool), String> {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            d.feed(p, |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
        }
        Ok((out, d.done()))
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
        for piece in 1..body.len() {
            let (out, done) = dechunk_all(body, piece).unwrap();
            assert_eq!(out, b"hello 0123456789");
            assert!(done);
        }
        // Bare LF line ends, and a stream cut before the last chunk.
        let (out, done) = dechunk_all(b"3\nabc\n2\nde", 4).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abcde"[..], false));
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"FFFFFFFFFFFFFFFFFFFF\r\n",
        ] {
            assert!(dechunk_all(bad, 100).is_err());
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(dechunk_all(&long, 7).is_err());
    }
}
