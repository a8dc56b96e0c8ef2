//! RTP for H.264: packets per RFC 3550 with the payload format of RFC 6184 (single NAL unit
//! packets and FU-A fragments, packetization-mode 1), and RTCP sender reports.
//!
//! Written here rather than taken from a crate: the `rtp` crate of webrtc-rs has an
//! `H264Payloader`, but it brings webrtc-util (tokio with its own feature set, nix 0.26 beside
//! picamd's 0.29, thiserror 1, rand 0.9), searches the Annex B start codes again although
//! every [`AccessUnit`] already lists its NAL units, and always folds SPS and PPS into a
//! STAP-A (dropped silently when that exceeds the MTU). The whole format needed here is the
//! sixty lines of [`RtpSender::packetize`].
//!
//! Timestamps come from the unit's capture time on the monotonic clock, 90 kHz from a random
//! base ([`RtpSender::timestamp`]), so gaps (skipped frames, a pause) show as gaps and the
//! decoder paces frames as they were captured. Sender reports pair the capture *wall* clock
//! (NTP) with the same unit's RTP timestamp, which is what lets a client (an NVR recording
//! several cameras) place frames on real time.

use std::time::Instant;

use crate::frame::AccessUnit;

/// The dynamic payload type the SDP maps to H.264.
pub const PAYLOAD_TYPE: u8 = 96;
/// H.264's RTP clock (RFC 6184, section 8.2.1).
pub const CLOCK_RATE: u64 = 90_000;
/// Largest RTP payload. 1400 + 12 (RTP) + 8 (UDP) + 40 (IPv6) = 1460 bytes: under Ethernet's
/// 1500 with 40 to spare for a tunnel on the way (PPPoE takes 8).
pub const MAX_PAYLOAD: usize = 1400;
/// RTP header bytes: no CSRCs, no extension.
pub const HEADER_LEN: usize = 12;
/// FU-A type (RFC 6184, section 5.8).
const FU_A: u8 = 28;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One RTP stream's state: the identifiers a client sees and what has been sent.
#[derive(Debug, Clone)]
pub struct RtpSender {
    pub ssrc: u32,
    /// The next packet's sequence number.
    seq: u16,
    /// The RTP timestamp of `epoch`.
    base: u32,
    epoch: Instant,
    /// Packets and payload bytes sent, for sender reports (wrapping, as RFC 3550 says).
    packets: u32,
    octets: u32,
    /// The newest unit sent: its RTP timestamp and capture wall clock (µs since 1970).
    last: Option<(u32, u64)>,
    /// Reused for each packet.
    scratch: Vec<u8>,
}

impl RtpSender {
    /// A stream with these random identifiers, timestamps counted from `epoch`.
    pub fn new(ssrc: u32, first_seq: u16, base: u32, epoch: Instant) -> RtpSender {
        RtpSender {
            ssrc,
            seq: first_seq,
            base,
            epoch,
            packets: 0,
            octets: 0,
            last: None,
            scratch: Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD),
        }
    }

    /// The sequence number of the next packet (PLAY's `RTP-Info`).
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// The RTP timestamp of monotonic instant `at`: 90 kHz since `epoch`, from `base`,
    /// wrapping at 2^32 (about 13 hours) as RTP timestamps do. Instants before `epoch`
    /// (a unit captured just before PLAY) count backwards.
    pub fn timestamp(&self, at: Instant) -> u32 {
        let ticks =
            |d: std::time::Duration| (d.as_nanos() * CLOCK_RATE as u128 / 1_000_000_000) as u32;
        match at.checked_duration_since(self.epoch) {
            Some(d) => self.base.wrapping_add(ticks(d)),
            None => self.base.wrapping_sub(ticks(self.epoch - at)),
        }
    }

    /// Packets and payload octets sent so far.
    pub fn counts(&self) -> (u32, u32) {
        (self.packets, self.octets)
    }

    /// Cuts `unit` into RTP packets, handing each (header included) to `emit`: a NAL unit
    /// that fits in [`MAX_PAYLOAD`] goes alone, a larger one in FU-A fragments of at most
    /// that size. The last packet of the unit has the marker bit.
    pub fn packetize(&mut self, unit: &AccessUnit, mut emit: impl FnMut(&[u8])) {
        let ts = self.timestamp(unit.captured.mono);
        let nals: Vec<&[u8]> = unit
            .nals
            .iter()
            .filter_map(|r| unit.data.get(r.clone()))
            .filter(|n| !n.is_empty())
            .collect();
        for (i, nal) in nals.iter().enumerate() {
            let last_nal = i + 1 == nals.len();
            if nal.len() <= MAX_PAYLOAD {
                self.packet(ts, last_nal, &[], nal, &mut emit);
                continue;
            }
            // FU indicator: the NAL header's F and NRI bits with type 28; FU header: start
            // and end bits with the NAL's own type. The NAL header byte itself is not sent.
            let indicator = (nal[0] & 0xE0) | FU_A;
            let kind = nal[0] & 0x1F;
            let body = &nal[1..];
            let mut chunks = body.chunks(MAX_PAYLOAD - 2).peekable();
            let mut first = true;
            while let Some(chunk) = chunks.next() {
                let end = chunks.peek().is_none();
                let fu_header = kind | if first { 0x80 } else { 0 } | if end { 0x40 } else { 0 };
                self.packet(
                    ts,
                    last_nal && end,
                    &[indicator, fu_header],
                    chunk,
                    &mut emit,
                );
                first = false;
            }
        }
        self.last = Some((ts, unit.captured.wall_us));
    }

    fn packet(
        &mut self,
        ts: u32,
        marker: bool,
        prefix: &[u8],
        payload: &[u8],
        emit: &mut impl FnMut(&[u8]),
    ) {
        let b = &mut self.scratch;
        b.clear();
        // V=2, no padding, no extension, no CSRC.
        b.push(0x80);
        b.push(PAYLOAD_TYPE | if marker { 0x80 } else { 0 });
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&self.ssrc.to_be_bytes());
        b.extend_from_slice(prefix);
        b.extend_from_slice(payload);
        emit(b);
        let len = (prefix.len() + payload.len()) as u32;
        self.seq = self.seq.wrapping_add(1);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(len);
    }

    /// An RTCP compound packet (RFC 3550, section 6.1): a sender report with the newest
    /// unit's capture wall clock as NTP time and its RTP timestamp, then an SDES with the
    /// CNAME. `None` before the first unit was sent.
    pub fn sender_report(&self) -> Option<Vec<u8>> {
        let (ts, wall_us) = self.last?;
        let mut p = Vec::with_capacity(28 + 20);
        // SR: V=2, no reception report blocks; length 6 (7 words, minus one).
        p.extend_from_slice(&[0x80, 200, 0, 6]);
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(&ntp_time(wall_us).to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&self.packets.to_be_bytes());
        p.extend_from_slice(&self.octets.to_be_bytes());
        // SDES: one chunk, CNAME "picamd", END, padded to 32 bits.
        let cname = b"picamd";
        let mut chunk = Vec::with_capacity(16);
        chunk.extend_from_slice(&self.ssrc.to_be_bytes());
        chunk.push(1);
        chunk.push(cname.len() as u8);
        chunk.extend_from_slice(cname);
        chunk.push(0);
        while chunk.len() % 4 != 0 {
            chunk.push(0);
        }
        let words = (4 + chunk.len()) / 4 - 1;
        p.extend_from_slice(&[0x81, 202]);
        p.extend_from_slice(&(words as u16).to_be_bytes());
        p.extend_from_slice(&chunk);
        Some(p)
    }
}

/// The 64-bit NTP timestamp of a Unix time in microseconds: seconds since 1900 in the high
/// half, the fraction of a second in 1/2^32 units in the low half.
pub fn ntp_time(unix_us: u64) -> u64 {
    let secs = unix_us / 1_000_000 + NTP_UNIX_OFFSET;
    let frac = ((unix_us % 1_000_000) << 32) / 1_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{split_annex_b, CaptureTime};
    use bytes::Bytes;
    use std::time::Duration;

    fn unit(nals: &[&[u8]], mono: Instant) -> AccessUnit {
        let mut data = Vec::new();
        for n in nals {
            data.extend_from_slice(&[0, 0, 0, 1]);
            data.extend_from_slice(n);
        }
        let ranges = split_annex_b(&data);
        AccessUnit {
            seq: 1,
            captured: CaptureTime {
                mono,
                wall_us: 1_700_000_000_500_000,
            },
            width: 16,
            height: 16,
            keyframe: nals.first().is_some_and(|n| n[0] & 0x1f == 7),
            data: Bytes::from(data),
            nals: ranges,
        }
    }

    fn packets(s: &mut RtpSender, u: &AccessUnit) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        s.packetize(u, |p| out.push(p.to_vec()));
        out
    }

    /// Reassembles NAL units from RTP payloads the way a receiver does (RFC 6184).
    fn depacketize(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in pkts {
            let payload = &p[HEADER_LEN..];
            match payload[0] & 0x1f {
                FU_A => {
                    let (ind, hdr) = (payload[0], payload[1]);
                    if hdr & 0x80 != 0 {
                        assert!(fu.is_none(), "start inside a fragment");
                        fu = Some(vec![(ind & 0xE0) | (hdr & 0x1f)]);
                    }
                    let buf = fu.as_mut().expect("a fragment after a start");
                    buf.extend_from_slice(&payload[2..]);
                    if hdr & 0x40 != 0 {
                        nals.push(fu.take().unwrap());
                    }
                }
                _ => nals.push(payload.to_vec()),
            }
        }
        assert!(fu.is_none(), "unfinished fragment");
        nals
    }

    #[test]
    fn small_nals_go_alone_and_big_ones_in_fu_a_fragments() {
        let t0 = Instant::now();
        let mut s = RtpSender::new(0xDEADBEEF, 65_534, 1000, t0);
        let sps = [0x67, 0x42, 0xC0, 0x1F, 1, 2, 3];
        let pps = [0x68, 0xCE, 0x3C, 0x80];
        // An IDR slice of 3 full fragments plus a bit: 1 + 3 * 1398 + 5 bytes.
        let mut idr = vec![0x65];
        idr.extend((0..3 * (MAX_PAYLOAD - 2) + 5).map(|i| (i % 251) as u8 + 1));
        let u = unit(&[&sps, &pps, &idr], t0 + Duration::from_millis(100));
        let pkts = packets(&mut s, &u);
        assert_eq!(pkts.len(), 2 + 4);
        assert!(pkts.iter().all(|p| p.len() <= HEADER_LEN + MAX_PAYLOAD));
        // Header: version 2, PT 96, consecutive sequence numbers across the wrap, one
        // timestamp (100 ms = 9000 ticks after the base), the SSRC.
        for (i, p) in pkts.iter().enumerate() {
            assert_eq!(p[0], 0x80);
            assert_eq!(p[1] & 0x7f, PAYLOAD_TYPE);
            let seq = u16::from_be_bytes([p[2], p[3]]);
            assert_eq!(seq, 65_534u16.wrapping_add(i as u16));
            assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 1000 + 9000);
            assert_eq!(&p[8..12], &0xDEADBEEFu32.to_be_bytes());
            let marker = p[1] & 0x80 != 0;
            assert_eq!(
                marker,
                i == pkts.len() - 1,
                "marker on the last packet only"
            );
        }
        // FU-A: indicator keeps NRI (3) with type 28; S on the first, E on the last.
        assert_eq!(pkts[2][HEADER_LEN], 0x60 | 28);
        assert_eq!(pkts[2][HEADER_LEN + 1], 0x80 | 5);
        assert_eq!(pkts[3][HEADER_LEN + 1], 5);
        assert_eq!(pkts[5][HEADER_LEN + 1], 0x40 | 5);
        assert_eq!(depacketize(&pkts), [sps.to_vec(), pps.to_vec(), idr]);
        assert_eq!(s.next_seq(), 65_534u16.wrapping_add(6));
        let payload: usize = pkts.iter().map(|p| p.len() - HEADER_LEN).sum();
        assert_eq!(s.counts(), (6, payload as u32));
    }

    #[test]
    fn a_nal_of_exactly_the_limit_is_not_fragmented_and_one_byte_more_is() {
        let t0 = Instant::now();
        let mut s = RtpSender::new(1, 0, 0, t0);
        for (len, want) in [(MAX_PAYLOAD, 1), (MAX_PAYLOAD + 1, 2)] {
            let mut nal = vec![0x41];
            nal.resize(len, 7);
            let pkts = packets(&mut s, &unit(&[&nal], t0));
            assert_eq!(pkts.len(), want, "{len}");
            assert_eq!(depacketize(&pkts), [nal]);
        }
    }

    #[test]
    fn timestamps_follow_capture_time_at_90_khz_and_wrap() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let s = RtpSender::new(1, 0, u32::MAX - 89, t0);
        assert_eq!(s.timestamp(t0), u32::MAX - 89);
        // 1 ms = 90 ticks: past the wrap.
        assert_eq!(s.timestamp(t0 + Duration::from_millis(1)), 0);
        assert_eq!(s.timestamp(t0 + Duration::from_secs(1)), 90_000 - 90);
        // Captured before the epoch: earlier timestamps, not a panic.
        assert_eq!(
            s.timestamp(t0 - Duration::from_millis(2)),
            u32::MAX - 89 - 180
        );
    }

    #[test]
    fn sender_reports_pair_the_capture_wall_clock_with_the_rtp_time() {
        let t0 = Instant::now();
        let mut s = RtpSender::new(0x01020304, 0, 5000, t0);
        assert!(s.sender_report().is_none(), "nothing sent yet");
        let u = unit(&[&[0x41, 1, 2, 3]], t0 + Duration::from_millis(20));
        let _ = packets(&mut s, &u);
        let sr = s.sender_report().unwrap();
        assert_eq!(sr.len() % 4, 0);
        assert_eq!(&sr[..4], &[0x80, 200, 0, 6]);
        assert_eq!(&sr[4..8], &[1, 2, 3, 4]);
        let ntp = u64::from_be_bytes(sr[8..16].try_into().unwrap());
        // 1_700_000_000.5 s after 1970: the fraction is one half.
        assert_eq!(ntp >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        assert_eq!(ntp & 0xFFFF_FFFF, 1 << 31);
        assert_eq!(
            u32::from_be_bytes(sr[16..20].try_into().unwrap()),
            5000 + 1800
        );
        assert_eq!(u32::from_be_bytes(sr[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_be_bytes(sr[24..28].try_into().unwrap()), 4);
        // SDES follows with a length that matches.
        assert_eq!(sr[29], 202);
        let words = u16::from_be_bytes([sr[30], sr[31]]) as usize;
        assert_eq!(sr.len() - 28, (words + 1) * 4);
        assert_eq!(&sr[36..38], &[1, 6]);
        assert_eq!(&sr[38..44], b"picamd");
    }
}
