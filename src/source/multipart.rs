//! Splitting a `multipart/x-mixed-replace` MJPEG byte stream into JPEG frames.
//!
//! The core is [`Splitter`], push-style: bytes go in, in pieces of any size, and complete
//! JPEGs come out as soon as their last byte arrives (never only when the next part starts:
//! picamd and others send a part's closing boundary only with the next frame).
//! [`MultipartReader`] wraps it for a blocking [`Read`].
//!
//! # Framing
//!
//! A part's body is delimited by its `Content-Length` when it has one; the body must then be
//! exactly one JPEG (SOI first, EOI last; CR, LF, space, tab or NUL padding after the EOI is
//! tolerated and cut off). A length that cuts the JPEG short or covers more than one is an
//! error: the stream is out of step and cannot be trusted.
//!
//! Without a `Content-Length` the body ends where the JPEG's own structure says it does
//! ([`Walker`]): segment lengths, then scan data up to the EOI. Searching for the first
//! `FF D9` instead would cut frames whose APP1 segment carries an EXIF thumbnail.
//!
//! The boundary itself is never searched for inside a body, so it only has to be recognised
//! between parts, where streamers vary a lot: CRLF or bare LF line ends, header names in any
//! case, blank lines and whitespace before a delimiter, a boundary declared with its leading
//! `--` (`boundary=--myboundary`, as several IP cameras do), a part with no headers at all,
//! or no delimiters at all (JPEGs back to back).
//!
//! # When the declared boundary does not match the stream
//!
//! The first delimiter line in the stream (a line starting with `--`) wins: if it differs from
//! the boundary in the `Content-Type`, the stream's boundary is used from then on and
//! [`Splitter::boundary_mismatch`] reports both (the source logs it once). Framing does not
//! depend on the boundary, so refusing such streams would only reject cameras that work
//! everywhere else. Later delimiter lines must match the boundary in use: one that does not is
//! skipped like any other garbage between parts, and so are the header lines after it, up to
//! the next delimiter or the next line that starts a JPEG (which is taken, as a part without
//! headers would be).
//!
//! # Bounds
//!
//! Nothing grows without limit: a part larger than [`SplitLimits::max_frame_bytes`] is an
//! error as soon as its `Content-Length` says so or as soon as that many bytes have arrived;
//! more than [`MAX_GARBAGE_BYTES`] of anything else between parts, a part header block over
//! [`MAX_HEADER_BYTES`] and a stream ending inside a part are errors too. The buffer never
//! holds more than `max_frame_bytes +` [`BUFFER_SLACK`] bytes.

use std::collections::VecDeque;
use std::io::Read;

use bytes::{Buf, Bytes, BytesMut};

use super::jpeg::{JpegError, Progress, Walker};

/// Bounds that keep a hostile or broken upstream from using unbounded memory.
#[derive(Debug, Clone, Copy)]
pub struct SplitLimits {
    /// Largest JPEG accepted; a larger part is an error.
    pub max_frame_bytes: usize,
}

/// Most bytes of part headers (from after the delimiter line to the blank line).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most bytes between the end of one part and the start of the next (whitespace, junk,
/// delimiter lines, preamble).
pub const MAX_GARBAGE_BYTES: usize = 64 * 1024;
/// Longest delimiter line; RFC 2046 boundaries have at most 70 characters.
const MAX_DELIMITER_LINE: usize = 256;
/// How far the buffer may exceed [`SplitLimits::max_frame_bytes`]: a header block, at most.
pub const BUFFER_SLACK: usize = MAX_HEADER_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("a part of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("part header block longer than {MAX_HEADER_BYTES} bytes")]
    HeaderTooLong,
    #[error("bad part header: {0}")]
    BadHeader(String),
    #[error("more than {MAX_GARBAGE_BYTES} bytes between parts that are not a part")]
    Garbage,
    #[error("part with Content-Length {declared} is not one JPEG: {detail}")]
    WrongLength { declared: usize, detail: String },
    #[error("not a JPEG: {0}")]
    NotJpeg(#[from] JpegError),
    #[error("part of type {0:?} (expected image/jpeg) without a Content-Length to skip it by")]
    UnsupportedPart(String),
    #[error("the stream ended in the middle of a part")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where the splitter is in the stream.
#[derive(Debug)]
enum State {
    /// Between parts: expecting a delimiter line (or a bare JPEG).
    Between,
    /// After a delimiter line: reading the part's header lines.
    Headers {
        seen: usize,
        /// Bytes of the current line already known to hold no line end: a line trickling
        /// in byte by byte is not scanned again from its start each time.
        scanned: usize,
        part: PartHead,
    },
    /// In a body of known length.
    Sized { len: usize, keep: bool },
    /// After the headers of a part without a length: expecting its JPEG.
    AwaitJpeg,
    /// In a JPEG body that ends where its structure says.
    Unsized(Walker),
    /// After the closing delimiter; anything more is ignored.
    Closed,
}

#[derive(Debug, Default)]
struct PartHead {
    length: Option<usize>,
    content_type: Option<String>,
}

/// Push-style multipart MJPEG splitter; see the module documentation.
#[derive(Debug)]
pub struct Splitter {
    limits: SplitLimits,
    /// The boundary without its leading `--`, as declared or as learnt from the stream.
    boundary: Option<Vec<u8>>,
    /// A delimiter has been seen, so `boundary` is the stream's own.
    boundary_confirmed: bool,
    mismatch: Option<(String, String)>,
    buf: BytesMut,
    state: State,
    /// Bytes dropped since the last part ended.
    garbage: usize,
}

impl Splitter {
    /// `boundary` as given in the response's `Content-Type`, if it had one.
    pub fn new(boundary: Option<&str>, limits: SplitLimits) -> Self {
        let boundary = boundary
            .map(|b| trim_dashes(b.trim().as_bytes()).to_vec())
            .filter(|b| !b.is_empty());
        Splitter {
            limits,
            boundary,
            boundary_confirmed: false,
            mismatch: None,
            buf: BytesMut::new(),
            state: State::Between,
            garbage: 0,
        }
    }

    /// Most bytes ever buffered.
    pub fn capacity_limit(&self) -> usize {
        self.limits.max_frame_bytes.saturating_add(BUFFER_SLACK)
    }

    /// Bytes held right now (for tests and fuzzing: never above [`Self::capacity_limit`]).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The declared and the actual boundary, if the stream's first delimiter did not match
    /// its `Content-Type`.
    pub fn boundary_mismatch(&self) -> Option<(&str, &str)> {
        self.mismatch
            .as_ref()
            .map(|(a, b)| (a.as_str(), b.as_str()))
    }

    /// Takes `data` and hands every JPEG it completes to `frame`, in order. After an error
    /// the stream is out of step; the splitter must not be used further.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut frame: impl FnMut(Bytes),
    ) -> Result<(), SplitError> {
        while !data.is_empty() {
            let room = self.capacity_limit() - self.buf.len();
            if room == 0 {
                // Every state errors or consumes before its own bound, which is below this.
                return Err(SplitError::TooLarge {
                    size: self.buf.len(),
                    limit: self.limits.max_frame_bytes,
                });
            }
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            while let Some(f) = self.step()? {
                if let Some(f) = f {
                    frame(f);
                }
            }
        }
        Ok(())
    }

    /// The end of the stream: an error if it came in the middle of a part.
    pub fn finish(&mut self) -> Result<(), SplitError> {
        if self.in_part() {
            Err(SplitError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Whether the closing delimiter (`--boundary--`) has been seen: the stream is over.
    pub fn closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the stream is in the middle of a part (for logging what a close cut off).
    pub fn in_part(&self) -> bool {
        match self.state {
            State::Between | State::Closed => false,
            // A delimiter with nothing after it: streamers that end each part with the next
            // delimiter (picamd) stop there.
            State::Headers { seen: 0, .. } => !self.buf.iter().all(u8::is_ascii_whitespace),
            _ => true,
        }
    }

    /// One step of parsing: `None` when more data is needed, `Some(frame or nothing)` after
    /// progress.
    fn step(&mut self) -> Result<Option<Option<Bytes>>, SplitError> {
        match &mut self.state {
            State::Closed => {
                self.buf.clear();
                Ok(None)
            }
            State::Between => self.between(),
            State::AwaitJpeg => {
                let ws = self
                    .buf
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                    .unwrap_or(self.buf.len());
                if ws > 0 {
                    // Stray blank lines after the headers.
                    self.drop_garbage(ws)?;
                    return Ok(Some(None));
                }
                match &self.buf[..] {
                    [] | [0xFF] => Ok(None),
                    [0xFF, 0xD8, ..] => {
                        self.state = State::Unsized(Walker::new());
                        Ok(Some(None))
                    }
                    _ => Err(JpegError::NoSoi.into()),
                }
            }
            State::Headers { .. } => self.headers(),
            State::Sized { len, keep } => {
                let (len, keep) = (*len, *keep);
                if self.buf.len() < len {
                    return Ok(None);
                }
                let body = self.buf.split_to(len).freeze();
                self.state = State::Between;
                self.garbage = 0;
                // An empty part carries nothing to show; some servers send them as keepalives.
                if !keep || len == 0 {
                    return Ok(Some(None));
                }
                check_sized(body, len).map(|f| Some(Some(f)))
            }
            State::Unsized(walker) => match walker.advance(&self.buf, |_| {})? {
                Progress::Done(end) if end > self.limits.max_frame_bytes => {
                    Err(SplitError::TooLarge {
                        size: end,
                        limit: self.limits.max_frame_bytes,
                    })
                }
                Progress::Done(end) => {
                    let f = self.buf.split_to(end).freeze();
                    self.state = State::Between;
                    self.garbage = 0;
                    Ok(Some(Some(f)))
                }
                Progress::NeedMore(_) if self.buf.len() > self.limits.max_frame_bytes => {
                    Err(SplitError::TooLarge {
                        size: self.buf.len(),
                        limit: self.limits.max_frame_bytes,
                    })
                }
                Progress::NeedMore(_) => Ok(None),
            },
        }
    }

    fn drop_garbage(&mut self, n: usize) -> Result<(), SplitError> {
        self.buf.advance(n);
        self.garbage += n;
        if self.garbage > MAX_GARBAGE_BYTES {
            return Err(SplitError::Garbage);
        }
        Ok(())
    }

    fn between(&mut self) -> Result<Option<Option<Bytes>>, SplitError> {
        let ws = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        if ws > 0 {
            self.drop_garbage(ws)?;
            return Ok(Some(None));
        }
        match &self.buf[..] {
            [] | [b'-'] | [0xFF] => Ok(None),
            [0xFF, 0xD8, ..] => {
                // A JPEG where a part was expected: a stream without delimiters or headers.
                self.state = State::Unsized(Walker::new());
                Ok(Some(None))
            }
            [b'-', b'-', ..] => {
                let Some(eol) = find_eol(&self.buf, MAX_DELIMITER_LINE) else {
                    if self.buf.len() > MAX_DELIMITER_LINE {
                        self.skip_line()?;
                        return Ok(Some(None));
                    }
                    return Ok(None);
                };
                let line = trim_ascii_end(&self.buf[..eol]).to_vec();
                match self.delimiter(&line) {
                    Some(closing) => {
                        let taken = eol + 1;
                        self.drop_garbage(taken)?;
                        self.state = if closing {
                            State::Closed
                        } else {
                            State::Headers {
                                seen: 0,
                                scanned: 0,
                                part: PartHead::default(),
                            }
                        };
                    }
                    None => self.skip_line()?,
                }
                Ok(Some(None))
            }
            _ => {
                self.skip_line()?;
                Ok(Some(None))
            }
        }
    }

    /// Drops bytes up to and including the next LF (or everything buffered).
    fn skip_line(&mut self) -> Result<(), SplitError> {
        let n = self
            .buf
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.buf.len(), |i| i + 1);
        self.drop_garbage(n)
    }

    /// Whether `line` (starting with `--`) is a delimiter: `Some(true)` for the closing one.
    fn delimiter(&mut self, line: &[u8]) -> Option<bool> {
        let name = &line[2..];
        let (name, closing) = match (name.strip_suffix(b"--"), self.boundary.as_deref()) {
            // `--b--` closes, unless the boundary itself ends in dashes.
            (Some(open), Some(b)) if trim_dashes(open) == b => (open, true),
            (Some(open), None) if !open.is_empty() => (open, true),
            _ => (name, false),
        };
        let name = trim_dashes(name);
        if name.is_empty() {
            return None;
        }
        match self.boundary.as_deref() {
            Some(b) if b == name => {}
            Some(b) if !self.boundary_confirmed => {
                self.mismatch = Some((
                    String::from_utf8_lossy(b).into_owned(),
                    String::from_utf8_lossy(name).into_owned(),
                ));
                self.boundary = Some(name.to_vec());
            }
            Some(_) => return None,
            None => self.boundary = Some(name.to_vec()),
        }
        self.boundary_confirmed = true;
        Some(closing)
    }

    fn headers(&mut self) -> Result<Option<Option<Bytes>>, SplitError> {
        let State::Headers {
            seen,
            scanned,
            part,
        } = &mut self.state
        else {
            unreachable!("called in the headers state only");
        };
        if self.buf.starts_with(&[0xFF, 0xD8]) {
            // The JPEG without the blank line that should end the headers (or without any
            // headers at all).
            let part = std::mem::take(part);
            self.start_body(part)?;
            if matches!(self.state, State::AwaitJpeg) {
                self.state = State::Unsized(Walker::new());
            }
            return Ok(Some(None));
        }
        let window = (MAX_HEADER_BYTES - *seen).min(self.buf.len());
        let from = (*scanned).min(window);
        let Some(eol) = find_eol(&self.buf[from..window], window - from).map(|i| i + from) else {
            if *seen + self.buf.len() > MAX_HEADER_BYTES {
                return Err(SplitError::HeaderTooLong);
            }
            *scanned = window;
            return Ok(None);
        };
        *scanned = 0;
        *seen += eol + 1;
        if *seen > MAX_HEADER_BYTES {
            return Err(SplitError::HeaderTooLong);
        }
        let line = trim_ascii_end(&self.buf[..eol]);
        if line.is_empty() {
            let part = std::mem::take(part);
            self.buf.advance(eol + 1);
            self.start_body(part)?;
            return Ok(Some(None));
        }
        if let Some((name, value)) = split_header(line) {
            if name.eq_ignore_ascii_case("content-length") {
                let len = value
                    .parse::<usize>()
                    .map_err(|_| SplitError::BadHeader(format!("Content-Length {value:?}")))?;
                if part.length.is_some_and(|l| l != len) {
                    return Err(SplitError::BadHeader(
                        "two different Content-Lengths".into(),
                    ));
                }
                part.length = Some(len);
            } else if name.eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.to_owned());
            }
        }
        // Lines that are not headers are ignored: the header block's size bound still holds.
        self.buf.advance(eol + 1);
        Ok(Some(None))
    }

    fn start_body(&mut self, part: PartHead) -> Result<(), SplitError> {
        let jpeg = part.content_type.as_deref().is_none_or(is_jpeg_type);
        self.state = match (part.length, jpeg) {
            (Some(len), _) if len > self.limits.max_frame_bytes => {
                return Err(SplitError::TooLarge {
                    size: len,
                    limit: self.limits.max_frame_bytes,
                })
            }
            (Some(len), keep) => {
                self.buf.reserve(len.saturating_sub(self.buf.len()));
                State::Sized { len, keep }
            }
            (None, true) => State::AwaitJpeg,
            (None, false) => {
                return Err(SplitError::UnsupportedPart(
                    part.content_type.unwrap_or_default(),
                ))
            }
        };
        Ok(())
    }
}

/// Checks that a body framed by Content-Length is exactly one JPEG; returns it without any
/// padding after the EOI.
fn check_sized(body: Bytes, declared: usize) -> Result<Bytes, SplitError> {
    let wrong = |detail: String| SplitError::WrongLength { declared, detail };
    if !body.starts_with(&[0xFF, 0xD8]) {
        return Err(wrong("it does not start with a JPEG SOI marker".into()));
    }
    match Walker::new().advance(&body, |_| {}) {
        Ok(Progress::Done(end)) => {
            if body[end..]
                .iter()
                .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
            {
                Ok(body.slice(..end))
            } else {
                Err(wrong(format!(
                    "the JPEG ends after {end} bytes, followed by other data"
                )))
            }
        }
        Ok(Progress::NeedMore(why)) => Err(wrong(format!("the JPEG is cut short ({why})"))),
        Err(e) => Err(wrong(e.to_string())),
    }
}

fn is_jpeg_type(ct: &str) -> bool {
    let mime = ct.split(';').next().unwrap_or("").trim();
    ["image/jpeg", "image/jpg", "image/pjpeg"]
        .iter()
        .any(|t| mime.eq_ignore_ascii_case(t))
}

/// `Name: value`, both trimmed; `None` for a line without a colon or with a bad name.
fn split_header(line: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let (name, value) = line.split_once(':')?;
    let name = name.trim();
    (!name.is_empty() && !name.contains(' ')).then_some((name, value.trim()))
}

/// Offset of the first LF within the first `max` bytes.
fn find_eol(buf: &[u8], max: usize) -> Option<usize> {
    buf.iter().take(max).position(|&b| b == b'\n')
}

fn trim_ascii_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

fn trim_dashes(mut s: &[u8]) -> &[u8] {
    while let [b'-', rest @ ..] = s {
        s = rest;
    }
    s
}

/// Reads JPEG frames from a multipart body.
pub struct MultipartReader<R: Read> {
    reader: R,
    splitter: Splitter,
    buf: Box<[u8]>,
    frames: VecDeque<Bytes>,
    ended: bool,
}

/// Bytes asked of the reader at a time.
const READ_CHUNK: usize = 64 * 1024;

impl<R: Read> MultipartReader<R> {
    /// `boundary` as given in the response's `Content-Type`, if it had one.
    pub fn new(reader: R, boundary: Option<&str>, limits: SplitLimits) -> Self {
        MultipartReader {
            reader,
            splitter: Splitter::new(boundary, limits),
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            frames: VecDeque::new(),
            ended: false,
        }
    }

    /// The next complete JPEG, or `None` at a clean end of the stream.
    ///
    /// An I/O error (a read timeout, say) leaves the reader as it was, so the call may be
    /// repeated; any other error means the stream is out of step.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, SplitError> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Ok(Some(f));
            }
            if self.ended {
                return Ok(None);
            }
            let n = match self.reader.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                self.ended = true;
                self.splitter.finish()?;
                continue;
            }
            let frames = &mut self.frames;
            self.splitter
                .feed(&self.buf[..n], |f| frames.push_back(f))?;
        }
    }

    /// The splitter, for [`Splitter::boundary_mismatch`].
    pub fn splitter(&self) -> &Splitter {
        &self.splitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turbojpeg::{Image, PixelFormat, Subsamp};

    const LIMITS: SplitLimits = SplitLimits {
        max_frame_bytes: 1 << 20,
    };

    /// A real JPEG whose bytes depend on `seed`.
    fn jpeg(w: usize, h: usize, seed: u8) -> Vec<u8> {
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let v = ((x * 7 + y * 3) as u8).wrapping_add(seed);
                px.extend_from_slice(&[v, v.wrapping_mul(3), 255 - v]);
            }
        }
        let image = Image {
            pixels: px.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: PixelFormat::RGB,
        };
        turbojpeg::compress(image, 80, Subsamp::Sub2x2)
            .unwrap()
            .to_vec()
    }

    /// `outer` with an APP1 EXIF segment carrying `thumb` (with its own SOI…EOI) after SOI.
    fn with_exif(outer: &[u8], thumb: &[u8]) -> Vec<u8> {
        let mut body = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
        body.extend_from_slice(thumb);
        let mut out = outer[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&outer[2..]);
        out
    }

    /// A progressive-style JPEG made by hand: two scans, stuffed bytes, restart markers and
    /// fill bytes, and an `FF D9` pair inside a comment.
    fn multi_scan() -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        j.extend_from_slice(&[0xFF, 0xFE, 0, 6, b'x', 0xFF, 0xD9, b'y']);
        j.extend_from_slice(&[0xFF, 0xC2, 0, 11, 8, 0, 16, 0, 16, 1, 1, 0x11, 0]);
        j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0, 0]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD1, 0x01]);
        j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 1, 63, 0]);
        j.extend_from_slice(&[0xAB, 0xFF, 0x00, 0xFF, 0xFF, 0xD9]);
        j
    }

    /// A part as mjpg-streamer writes it: delimiter and headers before the JPEG.
    fn part(boundary: &str, jpeg: &[u8], nl: &str, length: bool) -> Vec<u8> {
        let mut p = format!("--{boundary}{nl}Content-Type: image/jpeg{nl}").into_bytes();
        if length {
            p.extend_from_slice(format!("Content-Length: {}{nl}", jpeg.len()).as_bytes());
        }
        p.extend_from_slice(format!("X-Timestamp: 1.5{nl}{nl}").as_bytes());
        p.extend_from_slice(jpeg);
        p.extend_from_slice(nl.as_bytes());
        p
    }

    fn split_with(
        stream: &[u8],
        boundary: Option<&str>,
        limits: SplitLimits,
        chunk: usize,
    ) -> Result<Vec<Bytes>, SplitError> {
        let mut s = Splitter::new(boundary, limits);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            s.feed(piece, |f| out.push(f))?;
            assert!(s.buffered() <= s.capacity_limit());
        }
        s.finish()?;
        Ok(out)
    }

    fn split(stream: &[u8], boundary: Option<&str>) -> Result<Vec<Bytes>, SplitError> {
        split_with(stream, boundary, LIMITS, 4096)
    }

    fn frames() -> Vec<Vec<u8>> {
        vec![
            jpeg(32, 24, 1),
            with_exif(&jpeg(48, 32, 2), &jpeg(16, 16, 3)),
            multi_scan(),
        ]
    }

    fn assert_frames(got: &[Bytes], want: &[Vec<u8>]) {
        assert_eq!(got.len(), want.len(), "frame count");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.as_ref(), w.as_slice());
        }
    }

    #[test]
    fn well_formed_streams_in_every_style() {
        let want = frames();
        for nl in ["\r\n", "\n"] {
            for length in [true, false] {
                let mut s = Vec::new();
                for f in &want {
                    s.extend(part("myboundary", f, nl, length));
                }
                s.extend_from_slice(format!("--myboundary--{nl}").as_bytes());
                for declared in [Some("myboundary"), Some("--myboundary"), None] {
                    let got = split(&s, declared).unwrap();
                    assert_frames(&got, &want);
                }
            }
        }
    }

    #[test]
    fn picamd_style_boundary_after_the_jpeg() {
        // The boundary that ends a part is sent with the JPEG; the next part's headers come
        // with the next frame, so each frame must come out before them.
        let want = frames();
        let mut s = Splitter::new(Some("picamdframe"), LIMITS);
        let mut got = Vec::new();
        s.feed(b"--picamdframe\r\n", |f| got.push(f)).unwrap();
        for (i, f) in want.iter().enumerate() {
            let head = format!(
                "content-type: IMAGE/JPEG\r\nCONTENT-LENGTH:{}\r\nX-Timestamp: 1.0\r\n\r\n",
                f.len()
            );
            s.feed(head.as_bytes(), |f| got.push(f)).unwrap();
            s.feed(f, |f| got.push(f)).unwrap();
            assert_eq!(got.len(), i + 1, "frame {i} is out without waiting");
            s.feed(b"\r\n--picamdframe\r\n", |f| got.push(f)).unwrap();
        }
        assert_frames(&got, &want);
        // Cut after a delimiter: the part has not begun, so that is a clean end.
        s.finish().unwrap();
    }

    #[test]
    fn every_chunking_gives_the_same_frames() {
        let want = [jpeg(16, 16, 9), with_exif(&jpeg(16, 8, 4), &jpeg(8, 8, 5))];
        for length in [true, false] {
            let mut s = b"\r\n".to_vec();
            for f in &want {
                s.extend(part("b", f, "\r\n", length));
            }
            for at in 0..=s.len() {
                let mut sp = Splitter::new(Some("b"), LIMITS);
                let mut got = Vec::new();
                sp.feed(&s[..at], |f| got.push(f)).unwrap();
                sp.feed(&s[at..], |f| got.push(f)).unwrap();
                sp.finish().unwrap();
                assert_frames(&got, &want);
            }
            assert_frames(&split_with(&s, Some("b"), LIMITS, 1).unwrap(), &want);
            assert_frames(&split_with(&s, Some("b"), LIMITS, 7).unwrap(), &want);
        }
    }

    #[test]
    fn an_exif_thumbnail_does_not_end_the_frame() {
        let thumb = jpeg(16, 16, 7);
        let full = with_exif(&jpeg(64, 48, 8), &thumb);
        // The thumbnail's EOI comes long before the real one.
        let first_eoi = full.windows(2).position(|w| w == [0xFF, 0xD9]).unwrap();
        assert!(first_eoi + 2 < full.len());
        for length in [true, false] {
            let got = split(&part("x", &full, "\r\n", length), Some("x")).unwrap();
            assert_frames(&got, std::slice::from_ref(&full));
        }
        let got = split(&[full.clone(), full.clone()].concat(), None).unwrap();
        assert_frames(&got, &[full.clone(), full]);
    }

    #[test]
    fn tolerated_variations() {
        let f = jpeg(16, 16, 1);
        let g = jpeg(16, 16, 2);
        // Preamble, blank lines and whitespace before delimiters, padding after the JPEG
        // inside its length, trailing blanks on the delimiter line, a part with no headers.
        let mut s = b"preamble text\r\n\r\n  \r\n--frame  \r\ncontent-length: ".to_vec();
        s.extend_from_slice(format!("{}\r\n\r\n", f.len() + 2).as_bytes());
        s.extend_from_slice(&f);
        s.extend_from_slice(b"\r\n\r\n\r\n\t--frame\r\n");
        s.extend_from_slice(&g);
        s.extend_from_slice(b"\r\n--frame\r\nContent-Type: image/jpeg\r\n");
        // Headers straight into the JPEG, no blank line.
        s.extend_from_slice(&f);
        // A non-JPEG part with a length is skipped.
        s.extend_from_slice(b"\n--frame\nContent-Type: text/plain\nContent-Length: 5\n\nhello\n");
        // An empty part, then stray blank lines before a length-less JPEG.
        s.extend_from_slice(b"--frame\r\nContent-Length: 0\r\n\r\n\r\n--frame\r\n\r\n\r\n");
        s.extend_from_slice(&g);
        let got = split(&s, Some("frame")).unwrap();
        assert_frames(&got, &[f.clone(), g.clone(), f, g]);
    }

    #[test]
    fn jpegs_back_to_back_without_multipart() {
        let want = frames();
        let got = split(&want.concat(), None).unwrap();
        assert_frames(&got, &want);
    }

    #[test]
    fn a_mismatched_boundary_is_learnt_from_the_stream() {
        let want = [jpeg(16, 16, 1), jpeg(16, 16, 2)];
        let mut s = Vec::new();
        for f in &want {
            s.extend(part("actual", f, "\r\n", true));
        }
        let mut sp = Splitter::new(Some("declared"), LIMITS);
        let mut got = Vec::new();
        sp.feed(&s, |f| got.push(f)).unwrap();
        assert_frames(&got, &want);
        assert_eq!(sp.boundary_mismatch(), Some(("declared", "actual")));
        // From then on another boundary is garbage with its headers; its JPEG is still taken
        // (as a part without headers), and the stream goes on.
        let mut other = b"--declared\r\nContent-Length: 1\r\n\r\n".to_vec();
        other.extend_from_slice(&want[0]);
        other.extend(part("actual", &want[1], "\r\n", true));
        got.clear();
        sp.feed(&other, |f| got.push(f)).unwrap();
        assert_frames(&got, &want);
    }

    #[test]
    fn the_closing_delimiter_ends_the_stream() {
        let f = jpeg(16, 16, 1);
        let mut s = part("b", &f, "\r\n", true);
        s.extend_from_slice(b"--b--\r\n");
        s.extend(part("b", &f, "\r\n", true));
        assert_frames(&split(&s, Some("b")).unwrap(), std::slice::from_ref(&f));
        let mut sp = Splitter::new(Some("b"), LIMITS);
        sp.feed(&s, |_| {}).unwrap();
        assert!(sp.closed());
    }

    #[test]
    fn a_wrong_content_length_is_an_error() {
        let f = jpeg(32, 32, 1);
        let g = jpeg(32, 32, 2);
        for (declared, what) in [
            (f.len() - 1, "cut short"),
            (f.len() - 300, "cut short"),
            (f.len() + 2 + g.len(), "followed by other data"),
        ] {
            let mut s = format!("--b\r\nContent-Length: {declared}\r\n\r\n").into_bytes();
            s.extend_from_slice(&f);
            s.extend(part("b", &g, "\r\n", true));
            s.extend_from_slice(&[b'\n'; 400]);
            let e = split(&s, Some("b")).unwrap_err();
            assert!(
                matches!(e, SplitError::WrongLength { .. }) && e.to_string().contains(what),
                "{declared}: {e}"
            );
        }
        let mut s = b"--b\r\nContent-Length: 12\r\n\r\nnot a jpeg!!".to_vec();
        s.extend_from_slice(b"\r\n");
        assert!(matches!(
            split(&s, Some("b")),
            Err(SplitError::WrongLength { .. })
        ));
        for bad in ["-1", "12x", "", "99999999999999999999999"] {
            let s = format!("--b\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(
                    split(s.as_bytes(), Some("b")),
                    Err(SplitError::BadHeader(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_between_parts_is_bounded() {
        let f = jpeg(16, 16, 1);
        let mut s = part("b", &f, "\r\n", true);
        s.extend_from_slice(&[b'z'; 1000]);
        s.extend_from_slice(b"\r\n");
        s.extend(part("b", &f, "\r\n", true));
        assert_eq!(split(&s, Some("b")).unwrap().len(), 2);

        for filler in [b'z', b'\n', b' ', 0xFF] {
            let mut s = part("b", &f, "\r\n", true);
            s.extend(std::iter::repeat_n(filler, MAX_GARBAGE_BYTES + 10));
            s.extend(part("b", &f, "\r\n", true));
            let e = split(&s, Some("b")).unwrap_err();
            assert!(
                matches!(e, SplitError::Garbage | SplitError::NotJpeg(_)),
                "{filler}: {e}"
            );
        }
        // A length-less part whose body is not a JPEG.
        let s = b"--b\r\n\r\nhello\r\n--b\r\n";
        assert!(matches!(
            split(s, Some("b")),
            Err(SplitError::NotJpeg(JpegError::NoSoi))
        ));
    }

    #[test]
    fn a_stream_ending_mid_part_is_truncated() {
        let f = jpeg(24, 24, 1);
        for length in [true, false] {
            let s = part("b", &f, "\r\n", length);
            let jpeg_at = s.len() - 2 - f.len();
            for cut in [
                6,
                20,
                jpeg_at,
                jpeg_at + 1,
                jpeg_at + f.len() / 2,
                s.len() - 3,
            ] {
                let e = split(&s[..cut], Some("b")).unwrap_err();
                assert!(matches!(e, SplitError::Truncated), "cut at {cut}: {e}");
            }
            // Cut anywhere outside a part (before it, or after the JPEG): a clean end.
            assert_eq!(split(&s[..3], Some("b")).unwrap().len(), 0);
            assert_eq!(split(&s[..s.len() - 2], Some("b")).unwrap().len(), 1);
        }
        let whole = part("b", &f, "\r\n", true);
        let mut r = MultipartReader::new(&whole[..40], Some("b"), LIMITS);
        assert!(matches!(r.next_frame(), Err(SplitError::Truncated)));
    }

    #[test]
    fn parts_over_the_limit_are_refused_early() {
        let limits = SplitLimits {
            max_frame_bytes: 10_000,
        };
        // Declared too large: refused on the headers alone, before any body byte.
        let s = b"--b\r\nContent-Length: 100000000\r\n\r\n";
        let mut sp = Splitter::new(Some("b"), limits);
        let e = sp.feed(s, |_| {}).unwrap_err();
        assert!(
            matches!(
                e,
                SplitError::TooLarge {
                    size: 100_000_000,
                    ..
                }
            ),
            "{e}"
        );

        // Without a length: refused once the buffer passes the limit, never holding more.
        let mut sp = Splitter::new(Some("b"), limits);
        let mut huge = b"--b\r\n\r\n\xFF\xD8\xFF\xDA\x00\x02".to_vec();
        huge.resize(50_000, 0x11);
        let mut err = None;
        for piece in huge.chunks(999) {
            if let Err(e) = sp.feed(piece, |_| panic!("no frame")) {
                err = Some(e);
                break;
            }
            assert!(sp.buffered() <= limits.max_frame_bytes + BUFFER_SLACK);
        }
        assert!(matches!(err, Some(SplitError::TooLarge { .. })), "{err:?}");

        // A JPEG just over the limit, complete in one feed, is refused too.
        let f = jpeg(64, 64, 1);
        let small = SplitLimits {
            max_frame_bytes: f.len() - 1,
        };
        for length in [true, false] {
            let e = split_with(&part("b", &f, "\r\n", length), Some("b"), small, 1 << 20);
            assert!(matches!(e, Err(SplitError::TooLarge { .. })), "{e:?}");
        }
        let exact = SplitLimits {
            max_frame_bytes: f.len(),
        };
        for length in [true, false] {
            let got = split_with(&part("b", &f, "\r\n", length), Some("b"), exact, 1 << 20);
            assert_eq!(got.unwrap().len(), 1);
        }
    }

    #[test]
    fn an_overlong_header_block_is_an_error() {
        let mut s = b"--b\r\n".to_vec();
        for i in 0..1000 {
            s.extend_from_slice(format!("X-Junk-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        assert!(matches!(
            split(&s, Some("b")),
            Err(SplitError::HeaderTooLong)
        ));
        let mut s = b"--b\r\nX: ".to_vec();
        s.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 1));
        assert!(matches!(
            split(&s, Some("b")),
            Err(SplitError::HeaderTooLong)
        ));
        let s = b"--b\r\nContent-Type: text/html\r\n\r\n<html>";
        assert!(matches!(
            split(s, Some("b")),
            Err(SplitError::UnsupportedPart(_))
        ));
    }

    /// A tiny deterministic generator, so the garbage is the same on every run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    #[test]
    fn mangled_streams_never_panic() {
        let limits = SplitLimits {
            max_frame_bytes: 4096,
        };
        let mut base = Vec::new();
        for f in frames() {
            base.extend(part("b", &f, "\r\n", true));
        }
        let mut rng = Lcg(11);
        for round in 0..3000 {
            let mut s = base.clone();
            for _ in 0..1 + round % 5 {
                let at = rng.next() as usize % s.len();
                match rng.next() % 3 {
                    0 => s[at] = rng.next() as u8,
                    1 => {
                        s.remove(at);
                    }
                    _ => s.insert(at, [0xFF, 0xD8, 0xD9, b'\n', b'-'][rng.next() as usize % 5]),
                }
            }
            let chunk = 1 + rng.next() as usize % 300;
            if let Ok(got) = split_with(&s, Some("b"), limits, chunk) {
                for f in got {
                    assert!(f.starts_with(&[0xFF, 0xD8]) && f.ends_with(&[0xFF, 0xD9]));
                    assert!(f.len() <= limits.max_frame_bytes);
                }
            }
        }
    }

    /// Reads in fixed pieces, failing with a timeout every few reads, as a socket with a
    /// read timeout does.
    struct Flaky<'a> {
        data: &'a [u8],
        calls: usize,
    }
    impl Read for Flaky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls % 3 == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.data.len()).min(100);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_reader_survives_timeouts() {
        let want = frames();
        let mut s = Vec::new();
        for f in &want {
            s.extend(part("b", f, "\r\n", false));
        }
        let mut r = MultipartReader::new(Flaky { data: &s, calls: 0 }, Some("b"), LIMITS);
        let mut got = Vec::new();
        let mut timeouts = 0;
        loop {
            match r.next_frame() {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(SplitError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    timeouts += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(timeouts > 0);
        assert_frames(&got, &want);
        assert!(r.next_frame().unwrap().is_none());
    }
}
