//! The binary frame header that precedes every picture in a `/ws` message: a JPEG, or an
//! H.264 access unit for a client that asked for H.264 (WebCodecs in the player).
//!
//! The encoder writes this header in front of each JPEG in the same allocation, so every
//! WebSocket client is sent the same `Bytes` (a refcount bump, no per-client copy) and the
//! MJPEG and snapshot outputs use the JPEG part of it. H.264 units get theirs when they are
//! sent (`http/ws.rs`). `src/web/frame-header.js` mirrors it.
//!
//! Layout (all integers little-endian, 32 bytes):
//!
//! | offset | size | field                                                    |
//! |-------:|-----:|----------------------------------------------------------|
//! |      0 |    1 | version, currently 1                                     |
//! |      1 |    1 | type: 1 = JPEG video frame, 2 = H.264 access unit        |
//! |      2 |    2 | flags: bit 0 = "no signal" placeholder frame,            |
//! |        |      | bit 1 = keyframe (H.264: an IDR, SPS and PPS in front)   |
//! |      4 |    2 | header length in bytes (32); the payload starts here     |
//! |      6 |    2 | reserved, 0                                              |
//! |      8 |    8 | seq: frame sequence number, strictly increasing          |
//! |     16 |    8 | capture time, microseconds since the Unix epoch (UTC)   |
//! |     24 |    4 | width in pixels                                          |
//! |     28 |    4 | height in pixels                                         |
//! |     32 |    … | type 1: JPEG bytes (`FF D8` … `FF D9`)                   |
//! |        |      | type 2: one access unit, Annex B (`00 00 00 01` + NAL …) |
//!
//! A reader must skip `header length` bytes rather than assume 32, so later versions can
//! append fields without breaking old players.
//!
//! H.264 units are sent as Annex B, the form the encoder and the track already hold (no
//! per-unit rewrite), and the form WebCodecs decodes without a `description` when, as here,
//! every keyframe carries its SPS and PPS in band. A unit's seq and capture time are those of
//! the source frame it was encoded from, so they match the JPEG of the same frame.

/// Length of the version-1 header in bytes.
pub const HEADER_LEN: usize = 32;
/// Current header version.
pub const VERSION: u8 = 1;
/// `type` of a JPEG video frame.
pub const TYPE_JPEG: u8 = 1;
/// `type` of an H.264 access unit (Annex B), sent only to a client that asked for H.264.
pub const TYPE_H264: u8 = 2;
/// `flags` bit: the frame is a placeholder shown while the source is down.
pub const FLAG_NO_SIGNAL: u16 = 1 << 0;
/// `flags` bit: the unit is a keyframe (an IDR with SPS and PPS in front): a decoder can
/// start here. JPEGs leave it clear: each one stands alone anyway.
pub const FLAG_KEYFRAME: u16 = 1 << 1;

/// The WebCodecs / RFC 6381 codec string of an H.264 stream, `avc1.PPCCLL`, from its SPS
/// (the NAL unit without start code: header byte, then profile_idc, the constraint flags and
/// level_idc); `None` for an SPS too short to hold them or one that is not an SPS.
pub fn avc1_codec(sps: &[u8]) -> Option<String> {
    if sps.first().map(|b| b & 0x1f) != Some(7) {
        return None;
    }
    let b = sps.get(1..4)?;
    Some(format!("avc1.{:02X}{:02X}{:02X}", b[0], b[1], b[2]))
}

/// The decoded header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub kind: u8,
    pub flags: u16,
    pub seq: u64,
    pub capture_us: u64,
    pub width: u32,
    pub height: u32,
}

/// Why a message is not a frame this reader understands.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {0} bytes is shorter than a frame header")]
    Short(usize),
    #[error("unsupported frame header version {0}")]
    Version(u8),
    #[error("header length {0} is invalid")]
    HeaderLen(u16),
}

impl FrameHeader {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = self.version;
        out[1] = self.kind;
        out[2..4].copy_from_slice(&self.flags.to_le_bytes());
        out[4..6].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        out[6..8].fill(0);
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.capture_us.to_le_bytes());
        out[24..28].copy_from_slice(&self.width.to_le_bytes());
        out[28..32].copy_from_slice(&self.height.to_le_bytes());
    }

    /// Splits a message into its header and payload.
    pub fn parse(msg: &[u8]) -> Result<(FrameHeader, &[u8]), WireError> {
        if msg.len() < HEADER_LEN {
            return Err(WireError::Short(msg.len()));
        }
        let u16_at = |i: usize| u16::from_le_bytes([msg[i], msg[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(msg[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(msg[i..i + 8].try_into().expect("8 bytes"));
        let version = msg[0];
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let header_len = u16_at(4);
        if (header_len as usize) < HEADER_LEN || header_len as usize > msg.len() {
            return Err(WireError::HeaderLen(header_len));
        }
        let header = FrameHeader {
            version,
            kind: msg[1],
            flags: u16_at(2),
            seq: u64_at(8),
            capture_us: u64_at(16),
            width: u32_at(24),
            height: u32_at(28),
        };
        Ok((header, &msg[header_len as usize..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_bytes() {
        let h = FrameHeader {
            version: VERSION,
            kind: TYPE_JPEG,
            flags: FLAG_NO_SIGNAL,
            seq: 0x0102_0304_0506_0708,
            capture_us: 1_700_000_000_000_001,
            width: 1280,
            height: 720,
        };
        let mut buf = [0u8; HEADER_LEN + 2];
        h.write((&mut buf[..HEADER_LEN]).try_into().unwrap());
        buf[HEADER_LEN..].copy_from_slice(&[0xFF, 0xD8]);
        assert_eq!(&buf[..8], &[1, 1, 1, 0, 32, 0, 0, 0]);
        assert_eq!(&buf[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&buf[24..28], &1280u32.to_le_bytes());
        let (back, payload) = FrameHeader::parse(&buf).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, &[0xFF, 0xD8]);
    }

    #[test]
    fn an_h264_header_has_its_type_and_keyframe_bit() {
        let h = FrameHeader {
            version: VERSION,
            kind: TYPE_H264,
            flags: FLAG_KEYFRAME,
            seq: 9,
            capture_us: 1_700_000_000_000_000,
            width: 640,
            height: 360,
        };
        let mut buf = [0u8; HEADER_LEN + 5];
        h.write((&mut buf[..HEADER_LEN]).try_into().unwrap());
        buf[HEADER_LEN..].copy_from_slice(&[0, 0, 0, 1, 0x67]);
        assert_eq!(&buf[..8], &[1, 2, 2, 0, 32, 0, 0, 0]);
        let (back, payload) = FrameHeader::parse(&buf).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.flags & FLAG_NO_SIGNAL, 0);
        assert_eq!(payload, &[0, 0, 0, 1, 0x67]);
    }

    #[test]
    fn codec_strings_come_from_the_sps() {
        // Constrained Baseline (66, constraint_set0+1), level 3.1: OpenH264 at 720p30.
        assert_eq!(
            avc1_codec(&[0x67, 0x42, 0xC0, 0x1F, 0x8C]).as_deref(),
            Some("avc1.42C01F")
        );
        // High profile 4.0, as a camera passed through might send; nal_ref_idc bits ignored.
        assert_eq!(
            avc1_codec(&[0x27, 0x64, 0x00, 0x28]).as_deref(),
            Some("avc1.640028")
        );
        assert_eq!(avc1_codec(&[0x67, 0x42]), None);
        assert_eq!(avc1_codec(&[0x68, 0x42, 0xC0, 0x1F]), None, "a PPS");
        assert_eq!(avc1_codec(&[]), None);
    }

    #[test]
    fn rejects_short_and_foreign_messages() {
        assert_eq!(FrameHeader::parse(&[1; 5]), Err(WireError::Short(5)));
        let mut buf = [0u8; HEADER_LEN];
        buf[0] = 9;
        assert_eq!(FrameHeader::parse(&buf), Err(WireError::Version(9)));
        buf[0] = VERSION;
        buf[4] = 200;
        assert_eq!(FrameHeader::parse(&buf), Err(WireError::HeaderLen(200)));
    }
}
