//! Splitting an H.264 Annex B byte stream into access units, for inputs passed through
//! without re-encoding (the ffmpeg source with `passthrough = true`).
//!
//! The stream must carry an access unit delimiter (AUD, NAL type 9) in front of every access
//! unit: ffmpeg's `h264_metadata=aud=insert` writes them. A unit ends where the next one's
//! delimiter starts, so a unit is handed on one unit late (one frame interval: 40 ms at 25
//! fps); finding the end of a picture any other way would need every slice header parsed,
//! and a picture made of several slices still could not be told complete before the next
//! one starts.
//!
//! What comes out is what the hub's H.264 track expects ([`crate::frame::AccessUnit`]):
//! each NAL unit behind a 4-byte start code, the delimiter itself dropped (it has done its
//! job), SPS and PPS repeated verbatim in one unit dropped (ffmpeg's `h264_mp4toannexb` and
//! `dump_extra` may both put them in front of the same keyframe), and a keyframe (a unit with
//! an IDR slice, NAL type 5) always carrying SPS and PPS: the newest ones seen are put in
//! front of it when it came without. The picture size is read from the SPS.
//!
//! Bounded: one unit may hold at most [`AuSplitter::new`]'s `max_unit` bytes, and the buffer
//! never holds more than that plus one read. Anything that is not such a stream (no
//! delimiter at the start, a NAL unit with its forbidden bit set, a unit over the limit) is
//! an [`AnnexBError`]: the source fails and is restarted, nothing panics.

use std::ops::Range;

use bytes::Bytes;

use crate::frame::{split_annex_b, NAL_PPS, NAL_SPS};

/// NAL unit types (H.264 Table 7-1) the splitter looks at.
const NAL_SLICE: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_AUD: u8 = 9;

/// Why a byte stream is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnexBError {
    #[error("the H.264 stream does not start with an access unit delimiter (first bytes {0})")]
    NoDelimiter(String),
    #[error("an H.264 access unit of more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("an H.264 NAL unit with its forbidden bit set (header byte {0:#04x}): not H.264")]
    ForbiddenBit(u8),
}

/// One access unit split off the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitUnit {
    /// Annex B: `00 00 00 01` + NAL, for each NAL unit.
    pub data: Bytes,
    /// Where each NAL unit lies in `data`, start codes excluded.
    pub nals: Vec<Range<usize>>,
    /// Has an IDR slice.
    pub keyframe: bool,
    /// From the newest SPS, else the size the splitter was made with.
    pub width: u32,
    pub height: u32,
}

/// Push-style splitter: bytes in, in pieces of any size; whole units out.
pub struct AuSplitter {
    /// The unit being gathered, from its delimiter's start code on.
    buf: Vec<u8>,
    /// Where the search for the next delimiter goes on (bytes before were searched).
    scanned: usize,
    /// Whether the stream's first delimiter was seen.
    started: bool,
    max_unit: usize,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    size: (u32, u32),
    /// Units without a picture (only delimiter, parameter sets or SEI), dropped.
    pub skipped: u64,
}

impl AuSplitter {
    /// A splitter refusing units over `max_unit` bytes; `size` is the picture size until an
    /// SPS says otherwise.
    pub fn new(max_unit: usize, size: (u32, u32)) -> AuSplitter {
        AuSplitter {
            buf: Vec::new(),
            scanned: 0,
            started: false,
            max_unit,
            sps: None,
            pps: None,
            size,
            skipped: 0,
        }
    }

    /// Takes the next bytes of the stream; `out` gets every unit they complete.
    pub fn feed(&mut self, data: &[u8], mut out: impl FnMut(SplitUnit)) -> Result<(), AnnexBError> {
        self.buf.extend_from_slice(data);
        if !self.started {
            // ffmpeg writes nothing before the first delimiter: anything else means the
            // output is not what was asked for.
            let head = &self.buf[..self.buf.len().min(5)];
            let ok = [&[0u8, 0, 0, 1, NAL_AUD][..], &[0, 0, 1, NAL_AUD][..]]
                .iter()
                .any(|want| want.starts_with(head) || head.starts_with(want));
            if !ok {
                return Err(AnnexBError::NoDelimiter(hex(head)));
            }
            if self.buf.len() < 5 && !self.buf.starts_with(&[0, 0, 1, NAL_AUD]) {
                return Ok(());
            }
            self.started = true;
            // Past the first delimiter, whose 3-byte pattern starts at 0 or 1.
            self.scanned = 2;
        }
        // Each delimiter after the first ends the unit before it. `00 00 01` cannot occur
        // inside a NAL unit (emulation prevention), and a delimiter's header byte is exactly
        // 0x09 (nal_ref_idc 0), so the pattern finds delimiters and nothing else.
        loop {
            let from = self.scanned;
            let Some(at) = find(&self.buf[from..], &[0, 0, 1, NAL_AUD]).map(|i| from + i) else {
                // The last 3 bytes may begin a delimiter whose rest has not arrived.
                self.scanned = self.buf.len().saturating_sub(3).max(self.scanned);
                break;
            };
            let unit: Vec<u8> = self.buf.drain(..at).collect();
            // The buffer now starts with this delimiter's `00 00 01 09`.
            self.scanned = 1;
            self.finish_unit(&unit, &mut out)?;
        }
        if self.buf.len() > self.max_unit {
            return Err(AnnexBError::TooLarge {
                limit: self.max_unit,
            });
        }
        Ok(())
    }

    /// Turns the bytes of one unit (delimiter first) into a [`SplitUnit`].
    fn finish_unit(
        &mut self,
        raw: &[u8],
        out: &mut impl FnMut(SplitUnit),
    ) -> Result<(), AnnexBError> {
        if raw.len() > self.max_unit {
            return Err(AnnexBError::TooLarge {
                limit: self.max_unit,
            });
        }
        // Zeros before the next start code are its 4th byte or trailing_zero_8bits; a NAL
        // unit never ends in 0x00 (its RBSP ends with a stop bit; cabac_zero_words end 03).
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let raw = &raw[..end];
        let mut nals: Vec<&[u8]> = Vec::new();
        for range in split_annex_b(raw) {
            let nal = &raw[range];
            let header = nal[0];
            if header & 0x80 != 0 {
                return Err(AnnexBError::ForbiddenBit(header));
            }
            let kind = header & 0x1f;
            if kind == NAL_AUD {
                continue;
            }
            if (kind == NAL_SPS || kind == NAL_PPS) && nals.contains(&nal) {
                continue;
            }
            nals.push(nal);
        }
        let kind_of = |n: &[u8]| n[0] & 0x1f;
        if !nals
            .iter()
            .any(|n| (NAL_SLICE..=NAL_IDR).contains(&kind_of(n)))
        {
            self.skipped += 1;
            return Ok(());
        }
        for n in &nals {
            match kind_of(n) {
                NAL_SPS => {
                    if let Some(size) = sps_size(n) {
                        self.size = size;
                    }
                    self.sps = Some(Bytes::copy_from_slice(n));
                }
                NAL_PPS => self.pps = Some(Bytes::copy_from_slice(n)),
                _ => {}
            }
        }
        let keyframe = nals.iter().any(|n| kind_of(n) == NAL_IDR);
        let mut front: Vec<Bytes> = Vec::new();
        if keyframe {
            let has = |k: u8| nals.iter().any(|n| kind_of(n) == k);
            // A decoder can start only at a keyframe with parameter sets in front.
            if !has(NAL_SPS) {
                front.extend(self.sps.clone());
            }
            if !has(NAL_PPS) {
                front.extend(self.pps.clone());
            }
        }
        let total: usize = front.iter().map(|n| n.len() + 4).sum::<usize>()
            + nals.iter().map(|n| n.len() + 4).sum::<usize>();
        let mut data = Vec::with_capacity(total);
        let mut ranges = Vec::with_capacity(front.len() + nals.len());
        for nal in front.iter().map(|b| &b[..]).chain(nals.iter().copied()) {
            data.extend_from_slice(&[0, 0, 0, 1]);
            ranges.push(data.len()..data.len() + nal.len());
            data.extend_from_slice(nal);
        }
        out(SplitUnit {
            data: Bytes::from(data),
            nals: ranges,
            keyframe,
            width: self.size.0,
            height: self.size.1,
        });
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The picture size an SPS (NAL unit, header byte first, emulation prevention in place)
/// gives, after cropping; `None` if it cannot be read. Parsed by `h264-reader` (the SPS
/// syntax has profile-dependent branches, scaling lists and VUI: a kept parser, not ours).
pub fn sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    use h264_reader::nal::{sps::SeqParameterSet, Nal, RefNal};
    if nal.len() < 2 {
        return None;
    }
    let nal = RefNal::new(nal, &[], true);
    SeqParameterSet::from_bits(nal.rbsp_bits())
        .ok()?
        .pixel_dimensions()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS written by libx264 (ffmpeg 5.1, `testsrc2`) for 640x360 High: 360 is not a
    /// multiple of 16, so it is coded as 368 lines cropped by 8.
    const SPS_640X360_HIGH: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03,
        0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2d, 0x96,
    ];
    /// 320x240 Constrained Baseline (no chroma fields in the SPS).
    const SPS_320X240_BASELINE: [u8; 24] = [
        0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0xa4, 0x80,
    ];
    /// 1920x1080 High: 1088 lines cropped by 8.
    const SPS_1920X1080_HIGH: [u8; 27] = [
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xc8, 0x3c, 0x60, 0xc6, 0x58,
    ];
    /// 650x362 High 4:2:2: the crop unit is 2 columns but 1 line.
    const SPS_650X362_HIGH422: [u8; 27] = [
        0x67, 0x7a, 0x00, 0x1e, 0xbc, 0xd9, 0x40, 0xa4, 0x2f, 0xe4, 0x9f, 0x01, 0x10, 0x00, 0x00,
        0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x62, 0xd9, 0x60,
    ];
    /// 176x144 High 4:4:4 Predictive (profile_idc 244).
    const SPS_176X144_HIGH444: [u8; 25] = [
        0x67, 0xf4, 0x00, 0x0b, 0x91, 0x9b, 0x28, 0x58, 0x9d, 0x80, 0x88, 0x00, 0x00, 0x03, 0x00,
        0x08, 0x00, 0x00, 0x03, 0x01, 0x90, 0x78, 0xa1, 0x4c, 0xb0,
    ];
    /// 720x576 interlaced (frame_mbs_only_flag 0: height counted in field macroblock pairs).
    const SPS_720X576_INTERLACED: [u8; 24] = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xb4, 0x24, 0xd8, 0x08, 0x80, 0x00, 0x00, 0x03,
        0x00, 0x80, 0x00, 0x00, 0x19, 0x0f, 0x8a, 0x14, 0xcb,
    ];

    fn aud() -> Vec<u8> {
        vec![0, 0, 0, 1, 0x09, 0xf0]
    }

    fn nal(code4: bool, bytes: &[u8]) -> Vec<u8> {
        let mut v = if code4 {
            vec![0, 0, 0, 1]
        } else {
            vec![0, 0, 1]
        };
        v.extend_from_slice(bytes);
        v
    }

    /// A stream of units: keyframe (AUD, SPS, PPS, SEI, SPS again, PPS again, IDR), then
    /// `p` P-frames.
    fn stream(p: usize) -> Vec<u8> {
        let mut s = aud();
        s.extend(nal(true, &SPS_640X360_HIGH));
        s.extend(nal(true, &[0x68, 0xeb, 0xe3, 0xcb]));
        s.extend(nal(false, &[0x06, 0x05, 0x01, 0x80]));
        s.extend(nal(true, &SPS_640X360_HIGH));
        s.extend(nal(true, &[0x68, 0xeb, 0xe3, 0xcb]));
        s.extend(nal(
            false,
            &[0x65, 0x88, 0x84, 0x00, 0x00, 0x03, 0x01, 0x77],
        ));
        for i in 0..p {
            s.extend(aud());
            s.extend(nal(true, &[0x41, 0x9a, i as u8 + 1, 0x22]));
            // trailing_zero_8bits after a unit are allowed in a byte stream.
            s.extend([0, 0]);
        }
        s
    }

    fn split_all(s: &[u8], piece: usize) -> (Vec<SplitUnit>, Result<(), AnnexBError>) {
        let mut sp = AuSplitter::new(1 << 20, (1, 1));
        let mut units = Vec::new();
        for chunk in s.chunks(piece) {
            if let Err(e) = sp.feed(chunk, |u| units.push(u)) {
                return (units, Err(e));
            }
        }
        (units, Ok(()))
    }

    fn kinds(u: &SplitUnit) -> Vec<u8> {
        u.nals.iter().map(|r| u.data[r.start] & 0x1f).collect()
    }

    #[test]
    fn units_split_at_delimiters_whatever_the_read_sizes() {
        let s = stream(3);
        let mut sp = AuSplitter::new(1 << 20, (1, 1));
        sp.feed(&s, |_| {}).unwrap();
        assert_eq!(
            sp.skipped, 0,
            "no empty unit in front of the first delimiter"
        );
        for piece in [1, 2, 3, 5, 7, 64, s.len()] {
            let (units, r) = split_all(&s, piece);
            r.unwrap();
            // The last unit waits for the next delimiter.
            assert_eq!(units.len(), 3, "piece {piece}");
            assert!(units[0].keyframe && !units[1].keyframe && !units[2].keyframe);
            assert_eq!(kinds(&units[0]), [7, 8, 6, 5], "AUD and repeats dropped");
            assert_eq!(kinds(&units[1]), [1]);
            assert_eq!(&units[2].data[..], &[0, 0, 0, 1, 0x41, 0x9a, 2, 0x22]);
            // Every NAL unit behind a 4-byte start code, ranges exact.
            for u in &units {
                for r in &u.nals {
                    assert_eq!(&u.data[r.start - 4..r.start], &[0, 0, 0, 1]);
                }
                assert_eq!(u.nals.last().unwrap().end, u.data.len());
                assert_eq!((u.width, u.height), (640, 360), "size from the SPS");
            }
            // Emulation prevention bytes inside a NAL unit stay.
            let idr = &units[0].data[units[0].nals[3].clone()];
            assert_eq!(idr, &[0x65, 0x88, 0x84, 0x00, 0x00, 0x03, 0x01, 0x77]);
        }
    }

    #[test]
    fn a_keyframe_without_parameter_sets_gets_the_newest_ones() {
        let mut s = stream(1);
        s.extend(aud());
        s.extend(nal(true, &[0x65, 0x88, 0x11]));
        s.extend(aud());
        let (units, r) = split_all(&s, 4);
        r.unwrap();
        assert_eq!(units.len(), 3);
        assert!(units[2].keyframe);
        assert_eq!(kinds(&units[2]), [7, 8, 5]);
        assert_eq!(&units[2].data[units[2].nals[0].clone()], &SPS_640X360_HIGH);
    }

    #[test]
    fn units_without_a_picture_are_skipped() {
        let mut s = aud();
        s.extend(nal(true, &[0x06, 0x05, 0x01, 0x80]));
        s.extend(stream(1));
        let mut sp = AuSplitter::new(1 << 20, (320, 240));
        let mut units = Vec::new();
        sp.feed(&s, |u| units.push(u)).unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(sp.skipped, 1);
    }

    #[test]
    fn garbage_is_refused() {
        // No delimiter first: not what ffmpeg was asked to write.
        for bad in [
            &b"RIFF...."[..],
            &[0, 0, 0, 1, 0x67][..],
            &[0, 0, 1, 0x65][..],
        ] {
            let mut sp = AuSplitter::new(1 << 20, (1, 1));
            assert!(
                matches!(sp.feed(bad, |_| {}), Err(AnnexBError::NoDelimiter(_))),
                "{bad:?}"
            );
        }
        // A prefix of a delimiter is fine until more arrives.
        let mut sp = AuSplitter::new(1 << 20, (1, 1));
        sp.feed(&[0, 0], |_| {}).unwrap();
        sp.feed(&[0], |_| {}).unwrap();
        sp.feed(&[1, 9, 0xf0], |_| {}).unwrap();
        // The forbidden bit: random bytes after a delimiter.
        let mut s = aud();
        s.extend(nal(true, &[0xe5, 1, 2, 3]));
        s.extend(aud());
        let (_, r) = split_all(&s, 3);
        assert_eq!(r, Err(AnnexBError::ForbiddenBit(0xe5)));
    }

    #[test]
    fn an_oversized_unit_is_refused_before_the_buffer_grows_past_the_limit() {
        let mut sp = AuSplitter::new(1000, (1, 1));
        let mut s = aud();
        s.extend(nal(true, &[0x65, 0x88]));
        sp.feed(&s, |_| {}).unwrap();
        let body = [0x55u8; 100];
        let mut fed = s.len();
        let err = loop {
            match sp.feed(&body, |_| {}) {
                Ok(()) => fed += body.len(),
                Err(e) => break e,
            }
            assert!(fed <= 1000, "accepted {fed} bytes");
        };
        assert_eq!(err, AnnexBError::TooLarge { limit: 1000 });
        assert!(sp.buf.len() <= 1000 + body.len());
        // Garbage without any start code is caught the same way.
        let mut sp = AuSplitter::new(1000, (1, 1));
        sp.feed(&aud(), |_| {}).unwrap();
        let r = (0..20).try_for_each(|_| sp.feed(&[0xff; 100], |_| {}));
        assert_eq!(r, Err(AnnexBError::TooLarge { limit: 1000 }));
    }

    /// Writes bits MSB first, with Exp-Golomb codes, for SPS the encoders at hand do not make.
    #[derive(Default)]
    struct BitWriter {
        bits: Vec<bool>,
    }

    impl BitWriter {
        fn u(&mut self, n: u32, v: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push(v >> i & 1 == 1);
            }
            self
        }
        fn ue(&mut self, v: u32) -> &mut Self {
            let code = v as u64 + 1;
            let len = 64 - code.leading_zeros();
            self.bits
                .extend(std::iter::repeat_n(false, len as usize - 1));
            for i in (0..len).rev() {
                self.bits.push(code >> i & 1 == 1);
            }
            self
        }
        fn se(&mut self, v: i32) -> &mut Self {
            self.ue(if v > 0 {
                2 * v as u32 - 1
            } else {
                (-2 * v) as u32
            })
        }
        /// The NAL unit: the stop bit, byte alignment, emulation prevention.
        fn nal(&mut self) -> Vec<u8> {
            self.bits.push(true);
            while self.bits.len() % 8 != 0 {
                self.bits.push(false);
            }
            let rbsp: Vec<u8> = self
                .bits
                .chunks(8)
                .map(|c| c.iter().fold(0, |a, &b| a << 1 | b as u8))
                .collect();
            let mut out = vec![0x67];
            let mut zeros = 0;
            for b in rbsp {
                if zeros == 2 && b <= 3 {
                    out.push(3);
                    zeros = 0;
                }
                zeros = if b == 0 { zeros + 1 } else { 0 };
                out.push(b);
            }
            out
        }
    }

    #[test]
    fn an_sps_with_scaling_lists_and_poc_type_1() {
        let mut w = BitWriter::default();
        w.u(8, 100).u(8, 0).u(8, 30).ue(0); // High, level 3.0, id 0
        w.ue(1).ue(0).ue(0).u(1, 0); // 4:2:0, 8 bits
        w.u(1, 1); // seq_scaling_matrix_present_flag
        for i in 0..8 {
            match i {
                // A 4x4 list: 16 deltas.
                0 => {
                    w.u(1, 1);
                    for _ in 0..16 {
                        w.se(1);
                    }
                }
                // An 8x8 list that stops at once (nextScale 0: use the default list).
                6 => {
                    w.u(1, 1).se(-8);
                }
                // A 4x4 list with wrapping deltas.
                3 => {
                    w.u(1, 1);
                    for _ in 0..16 {
                        w.se(-100);
                    }
                }
                _ => {
                    w.u(1, 0);
                }
            }
        }
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(1).u(1, 0).se(-2).se(3).ue(2).se(1).se(-1); // pic_order_cnt_type 1
        w.ue(1).u(1, 0); // refs, no gaps
        w.ue(39).ue(29).u(1, 1).u(1, 1); // 40x30 MBs, frames only, direct 8x8
        w.u(1, 1).ue(0).ue(2).ue(0).ue(1); // crop 4 columns right, 2 lines bottom
        w.u(1, 0); // no VUI
        assert_eq!(sps_size(&w.nal()), Some((636, 478)));
    }

    #[test]
    fn sps_sizes() {
        assert_eq!(sps_size(&SPS_640X360_HIGH), Some((640, 360)));
        assert_eq!(sps_size(&SPS_320X240_BASELINE), Some((320, 240)));
        assert_eq!(sps_size(&SPS_1920X1080_HIGH), Some((1920, 1080)));
        assert_eq!(sps_size(&SPS_650X362_HIGH422), Some((650, 362)));
        assert_eq!(sps_size(&SPS_176X144_HIGH444), Some((176, 144)));
        assert_eq!(sps_size(&SPS_720X576_INTERLACED), Some((720, 576)));
        assert_eq!(sps_size(&[0x67]), None);
        assert_eq!(sps_size(&SPS_640X360_HIGH[..6]), None, "cut short");
        assert_eq!(sps_size(&[0x67, 0x42, 0, 0x1e, 0, 0, 0, 0, 0, 0]), None);
    }
}
