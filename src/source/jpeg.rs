//! JPEG helpers for sources that receive JPEGs ready-made (USB MJPEG cameras): a marker walker
//! that checks a frame is complete, and the standard Huffman tables for frames that leave them
//! out.
//!
//! Many webcams send "AVI1" Motion-JPEG: every frame is a baseline JPEG without its DHT
//! segments, the decoder being expected to use the example tables of the JPEG standard
//! (ITU-T T.81, Annex K.3, tables K.3 to K.6). libjpeg-turbo fills them in by itself, but other
//! decoders (Safari's, many embedded and hardware ones) refuse such frames.
//! [`with_huffman_tables`] inserts the standard tables into such a frame and passes every
//! other frame through untouched.
//!
//! Everything here parses bytes straight from a USB device: nothing trusts a length, and bad
//! input is an error, never a panic.

use bytes::{Bytes, BytesMut};

/// Marker bytes (the byte after `0xFF`).
const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DHT: u8 = 0xC4;
const DAC: u8 = 0xCC;
const JPG: u8 = 0xC8;
const TEM: u8 = 0x01;

/// Why bytes are not a usable JPEG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("does not start with a JPEG SOI marker")]
    NoSoi,
    #[error("truncated: {0}")]
    Truncated(&'static str),
    #[error("expected a marker at byte {offset}, found 0x{byte:02X}")]
    NotAMarker { offset: usize, byte: u8 },
    #[error("bad segment 0x{marker:02X} at byte {offset}")]
    BadSegment { marker: u8, offset: usize },
    #[error("no frame header (SOF) before the first scan")]
    NoFrameHeader,
}

/// One marker found by [`segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The marker code (the byte after `0xFF`), e.g. `0xC4` for DHT.
    pub marker: u8,
    /// Offset of the marker's `0xFF` in the data.
    pub offset: usize,
    /// Bytes from `offset` to the end of the segment: 2 for markers without a length
    /// (SOI, EOI, RSTn), otherwise 2 + the length field. For SOS the entropy-coded data
    /// that follows is not included.
    pub len: usize,
}

/// What [`inspect`] learned about a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    pub width: u16,
    pub height: u16,
    /// The SOF marker code (`0xC0` baseline, `0xC1` extended, `0xC2` progressive, …).
    pub sof: u8,
    /// A DHT segment comes before the first scan.
    pub has_huffman_tables: bool,
    /// Offset of the first SOS marker.
    pub first_sos: usize,
    /// Offset just past the EOI marker; anything after it is padding.
    pub end: usize,
}

impl JpegInfo {
    /// Huffman-coded (not arithmetic, not lossless) and without tables of its own: the
    /// standard tables must be added for strict decoders.
    pub fn needs_standard_tables(&self) -> bool {
        !self.has_huffman_tables && matches!(self.sof, 0xC0..=0xC2)
    }
}

/// Walks the markers of a whole JPEG, from SOI to EOI, and returns them in order.
///
/// Segments are skipped by their length field, so JPEGs embedded in APPn segments (EXIF
/// thumbnails) are never mistaken for markers of the outer image; entropy-coded data after
/// each SOS is skipped up to the next marker that is not a restart marker or a stuffed
/// `0xFF 0x00`. Fails on anything that does not end in EOI.
pub fn segments(data: &[u8]) -> Result<Vec<Segment>, JpegError> {
    let mut out = Vec::with_capacity(16);
    walk(data, |s| out.push(s))?;
    Ok(out)
}

/// Checks the structure of a JPEG and reports its size and tables.
pub fn inspect(data: &[u8]) -> Result<JpegInfo, JpegError> {
    let mut sof: Option<(u8, u16, u16)> = None;
    let mut has_dht = false;
    let mut first_sos = None;
    let mut bad_sof = None;
    let end = walk(data, |s| {
        if first_sos.is_some() {
            return;
        }
        match s.marker {
            DHT => has_dht = true,
            SOS => first_sos = Some(s.offset),
            m if is_sof(m) && sof.is_none() => {
                // SOFn: length(2) P(1) Y(2) X(2) Nf(1) …
                let body = &data[s.offset + 4..s.offset + s.len];
                if body.len() < 6 {
                    bad_sof = Some(s);
                } else {
                    let h = u16::from_be_bytes([body[1], body[2]]);
                    let w = u16::from_be_bytes([body[3], body[4]]);
                    sof = Some((m, w, h));
                }
            }
            _ => {}
        }
    })?;
    if let Some(s) = bad_sof {
        return Err(JpegError::BadSegment {
            marker: s.marker,
            offset: s.offset,
        });
    }
    let first_sos = first_sos.ok_or(JpegError::Truncated("no scan (SOS)"))?;
    let (sof, width, height) = sof.ok_or(JpegError::NoFrameHeader)?;
    if width == 0 || height == 0 {
        // Height 0 means "defined later by a DNL marker", which no camera uses.
        return Err(JpegError::NoFrameHeader);
    }
    Ok(JpegInfo {
        width,
        height,
        sof,
        has_huffman_tables: has_dht,
        first_sos,
        end,
    })
}

/// Returns `jpeg` with the standard Huffman tables inserted before its first scan if it has
/// none, cut after its EOI marker. A JPEG that has its tables is returned as it came (the same
/// memory, no copy). Errors on a JPEG that is truncated or malformed.
pub fn with_huffman_tables(jpeg: Bytes) -> Result<Bytes, JpegError> {
    let info = inspect(&jpeg)?;
    if info.needs_standard_tables() {
        Ok(insert_tables(&jpeg, &info))
    } else if info.end == jpeg.len() {
        Ok(jpeg)
    } else {
        Ok(jpeg.slice(..info.end))
    }
}

/// Copies a JPEG out of a borrowed buffer (a camera's mapped memory) in one pass, inserting the
/// standard Huffman tables if it has none and dropping any padding after EOI.
pub fn copy_with_huffman_tables(data: &[u8]) -> Result<(Bytes, JpegInfo), JpegError> {
    let info = inspect(data)?;
    let bytes = if info.needs_standard_tables() {
        insert_tables(data, &info)
    } else {
        Bytes::copy_from_slice(&data[..info.end])
    };
    Ok((bytes, info))
}

fn insert_tables(data: &[u8], info: &JpegInfo) -> Bytes {
    let mut out = BytesMut::with_capacity(info.end + STANDARD_DHT.len());
    out.extend_from_slice(&data[..info.first_sos]);
    out.extend_from_slice(&STANDARD_DHT);
    out.extend_from_slice(&data[info.first_sos..info.end]);
    out.freeze()
}

fn is_sof(m: u8) -> bool {
    (0xC0..=0xCF).contains(&m) && m != DHT && m != JPG && m != DAC
}

/// Calls `seen` for every marker from SOI to EOI; returns the offset just past EOI.
fn walk(data: &[u8], seen: impl FnMut(Segment)) -> Result<usize, JpegError> {
    // The incremental walker accepts a lone `FF` as the start of a SOI still to come; a
    // whole frame that short is simply not a JPEG.
    if data.len() < 2 {
        return Err(JpegError::NoSoi);
    }
    match Walker::new().advance(data, seen)? {
        Progress::Done(end) => Ok(end),
        Progress::NeedMore(why) => Err(JpegError::Truncated(why)),
    }
}

/// How far [`Walker::advance`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The JPEG ends (just past its EOI marker) at this offset.
    Done(usize),
    /// The data so far is a valid beginning; more is needed, for the reason given.
    NeedMore(&'static str),
}

/// Where the walker is in the JPEG's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkState {
    /// Before the SOI marker.
    Start,
    /// At a marker (or fill bytes before one).
    Marker,
    /// Inside a scan's entropy-coded data.
    Scan,
}

/// Finds the end of a JPEG that arrives in pieces, by its structure: segments are skipped by
/// their length field (so an EXIF thumbnail's EOI inside APP1 is not the end), scan data up
/// to the first marker that is neither a stuffed `FF 00` nor a restart marker.
///
/// [`Walker::advance`] is called with the data received so far, each time with the same
/// prefix plus whatever came since; it resumes where it stopped, so a frame that arrives in
/// many pieces is still walked once. Nothing is allocated and no length is trusted.
#[derive(Debug, Clone)]
pub struct Walker {
    state: WalkState,
    /// Where to resume: always at a byte not yet understood.
    pos: usize,
}

impl Default for Walker {
    fn default() -> Self {
        Self::new()
    }
}

impl Walker {
    pub fn new() -> Self {
        Walker {
            state: WalkState::Start,
            pos: 0,
        }
    }

    /// Walks on through `data` (which must begin with the bytes given before), calling `seen`
    /// once for every complete marker segment.
    pub fn advance(
        &mut self,
        data: &[u8],
        mut seen: impl FnMut(Segment),
    ) -> Result<Progress, JpegError> {
        loop {
            match self.state {
                WalkState::Start => {
                    match data {
                        [0xFF, SOI, ..] => {}
                        [] | [0xFF] => return Ok(Progress::NeedMore("no SOI marker")),
                        _ => return Err(JpegError::NoSoi),
                    }
                    seen(Segment {
                        marker: SOI,
                        offset: 0,
                        len: 2,
                    });
                    self.pos = 2;
                    self.state = WalkState::Marker;
                }
                WalkState::Marker => {
                    if let Some(end) = self.marker(data, &mut seen)? {
                        return Ok(end);
                    }
                }
                WalkState::Scan => match skip_entropy_coded(data, self.pos) {
                    Ok(at) => {
                        self.pos = at;
                        self.state = WalkState::Marker;
                    }
                    Err(stopped_at) => {
                        // Resume at the last byte that may start a marker, not at the start
                        // of the scan: long scans arrive in many pieces.
                        self.pos = stopped_at;
                        return Ok(Progress::NeedMore("scan data without an end marker"));
                    }
                },
            }
        }
    }

    /// Handles the marker at `self.pos`: returns `Some` to stop (done or short of data),
    /// `None` to go on in the (possibly new) state.
    fn marker(
        &mut self,
        data: &[u8],
        seen: &mut impl FnMut(Segment),
    ) -> Result<Option<Progress>, JpegError> {
        let pos = self.pos;
        match data.get(pos) {
            None => return Ok(Some(Progress::NeedMore("no EOI marker"))),
            Some(0xFF) => {}
            Some(&byte) => return Err(JpegError::NotAMarker { offset: pos, byte }),
        }
        // Fill bytes: any number of 0xFF before the code.
        let mut code_at = pos + 1;
        while data.get(code_at) == Some(&0xFF) {
            code_at += 1;
        }
        let offset = code_at - 1;
        let Some(&marker) = data.get(code_at) else {
            // Only the last 0xFF matters; resuming there keeps a long run of fill bytes from
            // being scanned again on every call.
            self.pos = offset;
            return Ok(Some(Progress::NeedMore("no EOI marker")));
        };
        match marker {
            0x00 | SOI => Err(JpegError::NotAMarker {
                offset: code_at,
                byte: marker,
            }),
            EOI => {
                seen(Segment {
                    marker,
                    offset,
                    len: 2,
                });
                self.pos = code_at + 1;
                Ok(Some(Progress::Done(code_at + 1)))
            }
            TEM | 0xD0..=0xD7 => {
                seen(Segment {
                    marker,
                    offset,
                    len: 2,
                });
                self.pos = code_at + 1;
                Ok(None)
            }
            _ => {
                let len_at = code_at + 1;
                let Some(field) = data.get(len_at..len_at + 2) else {
                    self.pos = offset;
                    return Ok(Some(Progress::NeedMore("segment length")));
                };
                let seg_len = u16::from_be_bytes([field[0], field[1]]) as usize;
                if seg_len < 2 {
                    return Err(JpegError::BadSegment { marker, offset });
                }
                let seg_end = len_at + seg_len;
                if seg_end > data.len() {
                    // Segments are at most 64 KiB: waiting for the whole one costs little
                    // and lets `seen` read it.
                    self.pos = offset;
                    return Ok(Some(Progress::NeedMore("segment runs past the end")));
                }
                seen(Segment {
                    marker,
                    offset,
                    len: seg_end - offset,
                });
                self.pos = seg_end;
                if marker == SOS {
                    self.state = WalkState::Scan;
                }
                Ok(None)
            }
        }
    }
}

/// From a position inside a scan's entropy-coded data, the offset of the marker that ends
/// it; or, if the data ends first, `Err` with the offset to resume from.
fn skip_entropy_coded(data: &[u8], mut pos: usize) -> Result<usize, usize> {
    loop {
        let Some(ff) = data
            .get(pos..)
            .and_then(|d| d.iter().position(|&b| b == 0xFF))
        else {
            return Err(pos.max(data.len()));
        };
        pos += ff;
        match data.get(pos + 1) {
            None => return Err(pos),
            // Stuffed zero and restart markers belong to the scan.
            Some(0x00) | Some(0xD0..=0xD7) => pos += 2,
            // Fill byte: look again from the next 0xFF.
            Some(0xFF) => pos += 1,
            Some(_) => return Ok(pos),
        }
    }
}

// The example Huffman tables of ITU-T T.81 Annex K.3. Each is given as in a DHT segment: the
// number of codes of each length 1..=16 (BITS), then the symbols in order of code length
// (HUFFVAL). A DC symbol is a magnitude category; an AC symbol is run (high nibble) and size
// (low nibble), with 0x00 for end-of-block and 0xF0 for a run of sixteen zeros.

/// Table K.3: luminance DC differences.
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
/// Table K.4: chrominance DC differences.
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
/// Tables K.3 and K.4 list categories 0 to 11 in order.
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

/// Table K.5: luminance AC coefficients.
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125];
#[rustfmt::skip]
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
    0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52,
    0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25,
    0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45,
    0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83,
    0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6,
    0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3,
    0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8,
    0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];

/// Table K.6: chrominance AC coefficients.
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119];
#[rustfmt::skip]
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
    0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33,
    0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18,
    0x19, 0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44,
    0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63,
    0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A,
    0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
    0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4,
    0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA,
    0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7,
    0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];

/// The four tables as DHT segments (class/destination 0x00, 0x10, 0x01, 0x11), each in its
/// own segment, in the order libjpeg writes them.
const STANDARD_TABLES: [(u8, &[u8; 16], &[u8]); 4] = [
    (0x00, &DC_LUMA_BITS, &DC_VALUES),
    (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES),
    (0x01, &DC_CHROMA_BITS, &DC_VALUES),
    (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES),
];

/// Marker, length, class/destination and BITS of one DHT segment.
const DHT_OVERHEAD: usize = 2 + 2 + 1 + 16;
const STANDARD_DHT_LEN: usize = 4 * DHT_OVERHEAD + 2 * DC_VALUES.len() + 2 * 162;

/// The DHT segments inserted into frames without tables.
pub const STANDARD_DHT: [u8; STANDARD_DHT_LEN] = build_standard_dht();

const fn build_standard_dht() -> [u8; STANDARD_DHT_LEN] {
    let mut out = [0u8; STANDARD_DHT_LEN];
    let mut pos = 0;
    let mut t = 0;
    while t < STANDARD_TABLES.len() {
        let (class_id, bits, values) = STANDARD_TABLES[t];
        let len = 2 + 1 + 16 + values.len();
        out[pos] = 0xFF;
        out[pos + 1] = DHT;
        out[pos + 2] = (len >> 8) as u8;
        out[pos + 3] = len as u8;
        out[pos + 4] = class_id;
        pos += 5;
        let mut i = 0;
        while i < 16 {
            out[pos + i] = bits[i];
            i += 1;
        }
        pos += 16;
        let mut i = 0;
        while i < values.len() {
            out[pos + i] = values[i];
            i += 1;
        }
        pos += values.len();
        t += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use turbojpeg::{Image, PixelFormat, Subsamp};

    /// A small RGB picture with edges and gradients, so every table gets used.
    fn rgb_image(w: usize, h: usize) -> Vec<u8> {
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let r = (x * 255 / w.max(1)) as u8;
                let g = (y * 255 / h.max(1)) as u8;
                let b = if (x / 4 + y / 4) % 2 == 0 { 230 } else { 20 };
                px.extend_from_slice(&[r, g, b]);
            }
        }
        px
    }

    fn compress(w: usize, h: usize, quality: i32, subsamp: Subsamp) -> Vec<u8> {
        let pixels = rgb_image(w, h);
        let image = Image {
            pixels: pixels.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: PixelFormat::RGB,
        };
        turbojpeg::compress(image, quality, subsamp)
            .expect("compress")
            .to_vec()
    }

    fn decode(jpeg: &[u8]) -> turbojpeg::Result<Image<Vec<u8>>> {
        turbojpeg::decompress(jpeg, PixelFormat::RGB)
    }

    /// `jpeg` without its DHT segments, as an "AVI1" camera would send it.
    fn strip_tables(jpeg: &[u8]) -> Vec<u8> {
        let segs = segments(jpeg).expect("valid JPEG");
        let mut out = jpeg.to_vec();
        for s in segs.iter().rev().filter(|s| s.marker == DHT) {
            out.drain(s.offset..s.offset + s.len);
        }
        out
    }

    fn dht_bytes(jpeg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in segments(jpeg).unwrap().iter().filter(|s| s.marker == DHT) {
            out.extend_from_slice(&jpeg[s.offset..s.offset + s.len]);
        }
        out
    }

    #[test]
    fn standard_tables_are_well_formed() {
        for (_, bits, values) in STANDARD_TABLES {
            let count: usize = bits.iter().map(|&b| b as usize).sum();
            assert_eq!(count, values.len());
        }
        // Each AC table codes every run/size symbol exactly once: EOB, ZRL and
        // run 0..=15 × size 1..=10.
        let mut expected: Vec<u8> = vec![0x00, 0xF0];
        for run in 0..16u8 {
            for size in 1..=10u8 {
                expected.push(run << 4 | size);
            }
        }
        expected.sort_unstable();
        for values in [AC_LUMA_VALUES, AC_CHROMA_VALUES] {
            let mut v = values.to_vec();
            v.sort_unstable();
            assert_eq!(v, expected);
        }
        // The segments parse as JPEG segments.
        let mut jpeg = vec![0xFF, SOI];
        jpeg.extend_from_slice(&STANDARD_DHT);
        jpeg.extend_from_slice(&[0xFF, EOI]);
        let segs = segments(&jpeg).unwrap();
        let dht: Vec<usize> = segs
            .iter()
            .filter(|s| s.marker == DHT)
            .map(|s| s.len)
            .collect();
        assert_eq!(dht, vec![33, 183, 33, 183]);
    }

    #[test]
    fn turbojpeg_writes_exactly_the_standard_tables() {
        // Baseline, not optimized: libjpeg-turbo writes the Annex K tables, one DHT segment
        // each, luminance DC/AC then chrominance DC/AC, so a restored frame is byte-identical.
        for quality in [50, 80, 95] {
            for subsamp in [Subsamp::Sub2x2, Subsamp::Sub2x1, Subsamp::None] {
                let jpeg = compress(48, 32, quality, subsamp);
                assert_eq!(dht_bytes(&jpeg), STANDARD_DHT.to_vec(), "q{quality}");
            }
        }
    }

    #[test]
    fn missing_tables_are_restored() {
        let original = compress(64, 48, 85, Subsamp::Sub2x2);
        let stripped = strip_tables(&original);
        assert!(stripped.len() < original.len());
        let info = inspect(&stripped).unwrap();
        assert!(!info.has_huffman_tables);
        assert!(info.needs_standard_tables());
        assert_eq!((info.width, info.height), (64, 48));

        let fixed = with_huffman_tables(Bytes::from(stripped.clone())).unwrap();
        assert!(inspect(&fixed).unwrap().has_huffman_tables);
        // Inserted before the SOS, where libjpeg puts them: the original, byte for byte.
        assert_eq!(fixed.as_ref(), original.as_slice());

        let want = decode(&original).unwrap();
        let got = decode(&fixed).unwrap();
        assert_eq!((got.width, got.height), (64, 48));
        assert_eq!(got.pixels, want.pixels);

        // libjpeg-turbo itself copes without tables (it falls back to these very tables for
        // Motion-JPEG), which is why the fix matters for other decoders, not for ours; if it
        // decodes, it decodes to the same picture.
        if let Ok(lenient) = decode(&stripped) {
            assert_eq!(lenient.pixels, want.pixels);
        }

        let (copied, info) = copy_with_huffman_tables(&stripped).unwrap();
        assert_eq!(copied.as_ref(), original.as_slice());
        assert!(!info.has_huffman_tables);
    }

    #[test]
    fn frames_with_tables_pass_through_without_a_copy() {
        let original = Bytes::from(compress(32, 32, 75, Subsamp::Sub2x2));
        let out = with_huffman_tables(original.clone()).unwrap();
        assert_eq!(out.as_ptr(), original.as_ptr());
        assert_eq!(out.len(), original.len());

        // Padding after EOI (cameras send whole buffers) is cut off, still without a copy.
        let mut padded = original.to_vec();
        padded.extend_from_slice(&[0; 100]);
        let padded = Bytes::from(padded);
        let out = with_huffman_tables(padded.clone()).unwrap();
        assert_eq!(out.as_ptr(), padded.as_ptr());
        assert_eq!(out.len(), original.len());
        let (copied, info) = copy_with_huffman_tables(&padded).unwrap();
        assert_eq!(copied, original);
        assert_eq!(info.end, original.len());
    }

    /// An APP1 "Exif" segment carrying a whole JPEG thumbnail (with its own SOI, DHT, SOS and
    /// EOI markers).
    fn exif_app1(thumbnail: &[u8]) -> Vec<u8> {
        let mut body = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
        body.extend_from_slice(thumbnail);
        let len = (body.len() + 2) as u16;
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&len.to_be_bytes());
        seg.extend_from_slice(&body);
        seg
    }

    #[test]
    fn a_thumbnail_inside_app1_does_not_confuse_the_walker() {
        let thumb = compress(16, 16, 70, Subsamp::Sub2x2);
        let original = compress(64, 32, 85, Subsamp::Sub2x2);
        let stripped = strip_tables(&original);
        let mut with_exif = stripped[..2].to_vec();
        with_exif.extend_from_slice(&exif_app1(&thumb));
        with_exif.extend_from_slice(&stripped[2..]);

        let segs = segments(&with_exif).unwrap();
        assert_eq!(segs[1].marker, 0xE1);
        assert_eq!(segs.iter().filter(|s| s.marker == SOI).count(), 1);
        assert_eq!(segs.iter().filter(|s| s.marker == EOI).count(), 1);
        assert_eq!(segs.last().unwrap().offset, with_exif.len() - 2);

        // The thumbnail's tables and size are not the image's.
        let info = inspect(&with_exif).unwrap();
        assert_eq!((info.width, info.height), (64, 32));
        assert!(!info.has_huffman_tables);
        assert_eq!(info.end, with_exif.len());

        let fixed = with_huffman_tables(Bytes::from(with_exif)).unwrap();
        let got = decode(&fixed).unwrap();
        assert_eq!(got.pixels, decode(&original).unwrap().pixels);
    }

    #[test]
    fn scan_data_with_stuffing_and_restart_markers() {
        // SOI, a minimal SOF0, SOS, scan data with a stuffed FF00, a restart marker and fill
        // bytes, then EOI.
        let mut j = vec![0xFF, SOI];
        j.extend_from_slice(&[0xFF, 0xC0, 0, 11, 8, 0, 16, 0, 16, 1, 1, 0x11, 0]);
        j.extend_from_slice(&[0xFF, SOS, 0, 8, 1, 1, 0, 0, 63, 0]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD9]);
        let info = inspect(&j).unwrap();
        assert_eq!((info.width, info.height), (16, 16));
        assert_eq!(info.end, j.len());
        let segs = segments(&j).unwrap();
        assert_eq!(segs.last().unwrap().marker, EOI);
        assert_eq!(segs.iter().find(|s| s.marker == SOS).unwrap().len, 10);
    }

    #[test]
    fn truncated_frames_are_errors() {
        let jpeg = compress(32, 24, 80, Subsamp::Sub2x2);
        // Every proper prefix is incomplete: no EOI.
        for cut in 0..jpeg.len() {
            assert!(inspect(&jpeg[..cut]).is_err(), "prefix of {cut} bytes");
            assert!(with_huffman_tables(Bytes::copy_from_slice(&jpeg[..cut])).is_err());
        }
        assert_eq!(
            inspect(&jpeg[..jpeg.len() - 2]),
            Err(JpegError::Truncated("scan data without an end marker"))
        );
        let stripped = strip_tables(&jpeg);
        assert!(copy_with_huffman_tables(&stripped[..stripped.len() / 2]).is_err());
    }

    #[test]
    fn the_walker_resumes_across_pieces() {
        let thumb = compress(16, 16, 70, Subsamp::Sub2x2);
        let mut jpeg = compress(48, 32, 85, Subsamp::Sub2x2);
        let app1 = exif_app1(&thumb);
        jpeg.splice(2..2, app1);
        // Fill bytes before a marker, as some encoders pad.
        let eoi = jpeg.len() - 2;
        jpeg.splice(eoi..eoi, [0xFF; 5]);
        let whole = segments(&jpeg).unwrap();
        for cut in 0..jpeg.len() {
            let mut w = Walker::new();
            let mut seen = Vec::new();
            let first = w.advance(&jpeg[..cut], |s| seen.push(s)).unwrap();
            assert!(
                matches!(first, Progress::NeedMore(_)),
                "cut {cut}: {first:?}"
            );
            let end = w.advance(&jpeg, |s| seen.push(s)).unwrap();
            assert_eq!(end, Progress::Done(jpeg.len()), "cut {cut}");
            assert_eq!(seen, whole, "cut {cut}");
        }
        // One byte at a time, and bytes after the EOI are not part of the frame.
        let mut w = Walker::new();
        let mut padded = jpeg.clone();
        padded.extend_from_slice(b"\r\n--next");
        let done = (1..=padded.len())
            .map(|n| w.advance(&padded[..n], |_| {}).unwrap())
            .find(|p| matches!(p, Progress::Done(_)));
        assert_eq!(done, Some(Progress::Done(jpeg.len())));
        assert_eq!(
            Walker::new().advance(b"GIF89a", |_| {}),
            Err(JpegError::NoSoi)
        );
    }

    /// A tiny deterministic generator, so the garbage is the same on every run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 56) as u8
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert_eq!(inspect(&[]), Err(JpegError::NoSoi));
        assert_eq!(inspect(&[0xFF]), Err(JpegError::NoSoi));
        assert_eq!(inspect(b"\x89PNG\r\n\x1a\n"), Err(JpegError::NoSoi));
        // Segment lengths that are too short or run past the end.
        assert!(inspect(&[0xFF, SOI, 0xFF, 0xE0, 0, 1]).is_err());
        assert!(inspect(&[0xFF, SOI, 0xFF, 0xE0, 0xFF, 0xFF, 1, 2]).is_err());
        assert!(inspect(&[0xFF, SOI, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(inspect(&[0xFF, SOI, 0x00, 0xFF, EOI]).is_err());
        // A SOF too short for its dimensions, and an image without SOF.
        assert!(inspect(&[0xFF, SOI, 0xFF, 0xC0, 0, 4, 8, 0, 0xFF, SOS, 0, 2, 0xFF, EOI]).is_err());
        assert_eq!(
            inspect(&[0xFF, SOI, 0xFF, SOS, 0, 2, 0xFF, EOI]),
            Err(JpegError::NoFrameHeader)
        );

        let mut rng = Lcg(7);
        for len in [0, 1, 2, 3, 5, 17, 100, 1000, 5000] {
            for _ in 0..50 {
                let mut data: Vec<u8> = (0..len).map(|_| rng.next()).collect();
                let _ = inspect(&data);
                if data.len() >= 2 {
                    data[0] = 0xFF;
                    data[1] = SOI;
                }
                let _ = inspect(&data);
                let _ = segments(&data);
                let _ = copy_with_huffman_tables(&data);
            }
        }
        // Real frames with bytes flipped anywhere, tables or not.
        let jpeg = compress(24, 16, 80, Subsamp::Sub2x2);
        let stripped = strip_tables(&jpeg);
        for base in [&jpeg, &stripped] {
            for _ in 0..2000 {
                let mut data = base.clone();
                for _ in 0..3 {
                    let at = (rng.next() as usize * 256 + rng.next() as usize) % data.len();
                    data[at] = rng.next();
                }
                if let Ok(fixed) = with_huffman_tables(Bytes::from(data)) {
                    assert!(inspect(&fixed).is_ok());
                }
            }
        }
    }
}
