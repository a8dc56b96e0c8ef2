//! What a client's SDP offer must hold before picamd answers it: a video section that
//! receives, with H.264 in packetization mode 1 (FU-A; mode 0 cannot carry a keyframe larger
//! than one packet) in a profile the stream's pictures belong to.
//!
//! Checked on the text, before str0m sees the offer, so a client hears *why* it was refused
//! (str0m would answer such an offer with the video section rejected and no error). Pure
//! functions, tested below.

/// H.264 `profile_idc` values (ITU-T H.264, A.2).
const BASELINE: u8 = 66;
const MAIN: u8 = 77;
const HIGH: u8 = 100;

/// The profile of the pictures picamd sends, from their SPS (`profile_idc`, the constraint
/// flags byte, `level_idc`): the three bytes of an SDP `profile-level-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileLevel {
    pub profile_idc: u8,
    pub constraints: u8,
    pub level_idc: u8,
}

impl ProfileLevel {
    /// What picamd's encoder makes (Constrained Baseline, level 3.1) when the stream has no
    /// SPS yet; the real level follows the size (4.0 for 1080p30), and decoders in browsers
    /// take any level, so only the profile matters for the choice.
    pub const ENCODER: ProfileLevel = ProfileLevel {
        profile_idc: BASELINE,
        constraints: 0xE0,
        level_idc: 0x1F,
    };

    /// From an SPS NAL unit (its header byte first); `None` if too short.
    pub fn from_sps(sps: &[u8]) -> Option<ProfileLevel> {
        match sps {
            [_, p, c, l, ..] => Some(ProfileLevel {
                profile_idc: *p,
                constraints: *c,
                level_idc: *l,
            }),
            _ => None,
        }
    }

    /// From an SDP `profile-level-id` (six hex digits).
    pub fn parse(hex: &str) -> Option<ProfileLevel> {
        let v = u32::from_str_radix(hex.trim(), 16)
            .ok()
            .filter(|_| hex.trim().len() == 6)?;
        Some(ProfileLevel {
            profile_idc: (v >> 16) as u8,
            constraints: (v >> 8) as u8,
            level_idc: v as u8,
        })
    }

    /// As an SDP `profile-level-id` number.
    pub fn as_u32(&self) -> u32 {
        (u32::from(self.profile_idc) << 16)
            | (u32::from(self.constraints) << 8)
            | u32::from(self.level_idc)
    }

    /// Constrained Baseline: Baseline with `constraint_set1` (the pictures are also Main
    /// ones), as RFC 6184's table and WebRTC's profile parser read it.
    fn constrained_baseline(&self) -> bool {
        self.profile_idc == BASELINE && self.constraints & 0x40 != 0
    }

    /// The profiles whose decoders take pictures of this profile: Constrained Baseline
    /// pictures decode as Baseline, Main and High; Main ones as Main and High; High as High.
    /// Others (a camera's High 4:2:2, …) only as themselves.
    pub fn decodable_as(&self) -> Vec<ProfileLevel> {
        let with = |profile_idc, constraints| ProfileLevel {
            profile_idc,
            constraints,
            level_idc: self.level_idc,
        };
        if self.constrained_baseline() {
            vec![
                with(BASELINE, 0xE0),
                with(BASELINE, 0x00),
                with(MAIN, 0x00),
                with(HIGH, 0x00),
            ]
        } else {
            match self.profile_idc {
                BASELINE => vec![with(BASELINE, 0x00)],
                MAIN => vec![with(MAIN, 0x00), with(HIGH, 0x00)],
                _ => vec![with(self.profile_idc, 0x00)],
            }
        }
    }

    /// Whether a decoder of `offered`'s profile takes these pictures (levels aside).
    fn accepted_by(&self, offered: &ProfileLevel) -> bool {
        self.decodable_as().iter().any(|p| {
            p.profile_idc == offered.profile_idc
                && (p.profile_idc != BASELINE
                    || offered.constrained_baseline() == p.constrained_baseline())
        })
    }
}

/// Why an offer cannot be answered; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferProblem {
    #[error("not an SDP offer: {0}")]
    Malformed(String),
    #[error(
        "the offer has no video section that receives (m=video with a port, recvonly or \
         sendrecv); picamd sends one H.264 video track"
    )]
    NoVideo,
    #[error(
        "the offer's video has no H.264 picamd can send: it needs H264/90000 with \
         packetization-mode=1 and a profile-level-id of a profile that decodes {wanted} \
         (offered: {offered})"
    )]
    NoH264 { wanted: String, offered: String },
}

/// One codec the offer's video section lists.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Offered {
    pt: u8,
    codec: String,
    fmtp: String,
}

/// Checks `sdp` (an offer) against the pictures of profile `sending`.
pub fn check(sdp: &str, sending: ProfileLevel) -> Result<(), OfferProblem> {
    if !sdp.trim_start().starts_with("v=0") {
        return Err(OfferProblem::Malformed(
            "an SDP body starts with the line v=0".into(),
        ));
    }
    let mut sections = Vec::new();
    let mut current: Option<Section> = None;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            sections.extend(current.take());
            current = Some(Section::new(m));
        } else if let Some(s) = current.as_mut() {
            s.attribute(line);
        }
    }
    sections.extend(current);
    let videos: Vec<&Section> = sections.iter().filter(|s| s.receives_video()).collect();
    if videos.is_empty() {
        return Err(OfferProblem::NoVideo);
    }
    let mut offered = Vec::new();
    for v in &videos {
        for c in v.codecs() {
            if c.codec.eq_ignore_ascii_case("H264/90000") {
                let params = fmtp_params(&c.fmtp);
                let mode = params.iter().find(|(k, _)| k == "packetization-mode");
                // RFC 6184: no profile-level-id means 42000A (Baseline, level 1).
                let profile = params
                    .iter()
                    .find(|(k, _)| k == "profile-level-id")
                    .map_or(ProfileLevel::parse("42000a"), |(_, v)| {
                        ProfileLevel::parse(v)
                    });
                if mode.is_some_and(|(_, m)| m == "1")
                    && profile.is_some_and(|p| sending.accepted_by(&p))
                {
                    return Ok(());
                }
            }
            offered.push(format!("{} {} {}", c.pt, c.codec, c.fmtp).trim().to_owned());
        }
    }
    let wanted = format!("{:06x}", sending.as_u32());
    let offered = if offered.is_empty() {
        "nothing".to_owned()
    } else {
        offered.join("; ")
    };
    Err(OfferProblem::NoH264 { wanted, offered })
}

/// The `a=mid` of the first video section of `sdp` whose port is not 0.
pub fn video_mid(sdp: &str) -> Option<String> {
    let mut in_video = false;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            in_video = Section::new(m).kind == "video" && Section::new(m).port != Some(0);
        } else if let Some(mid) = line.strip_prefix("a=mid:").filter(|_| in_video) {
            return Some(mid.trim().to_owned());
        }
    }
    None
}

/// One `m=` section: its kind, port and payload types, and the attributes that matter.
struct Section {
    kind: String,
    port: Option<u32>,
    pts: Vec<u8>,
    direction: &'static str,
    rtpmap: Vec<(u8, String)>,
    fmtp: Vec<(u8, String)>,
}

impl Section {
    fn new(m: &str) -> Section {
        let mut words = m.split_whitespace();
        let kind = words.next().unwrap_or("").to_owned();
        let port = words
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok());
        let _proto = words.next();
        let pts = words.filter_map(|w| w.parse().ok()).collect();
        Section {
            kind,
            port,
            pts,
            direction: "sendrecv",
            rtpmap: Vec::new(),
            fmtp: Vec::new(),
        }
    }

    fn attribute(&mut self, line: &str) {
        let Some(a) = line.strip_prefix("a=") else {
            return;
        };
        match a {
            "sendrecv" => self.direction = "sendrecv",
            "recvonly" => self.direction = "recvonly",
            "sendonly" => self.direction = "sendonly",
            "inactive" => self.direction = "inactive",
            _ => {}
        }
        let pt_and = |rest: &str| {
            let (pt, value) = rest.split_once(' ')?;
            Some((pt.trim().parse::<u8>().ok()?, value.trim().to_owned()))
        };
        if let Some(rest) = a.strip_prefix("rtpmap:") {
            self.rtpmap.extend(pt_and(rest));
        } else if let Some(rest) = a.strip_prefix("fmtp:") {
            self.fmtp.extend(pt_and(rest));
        }
    }

    /// A video section the client receives on: a port other than 0 (0 is a rejected or
    /// stopped section) and a direction that includes receiving.
    fn receives_video(&self) -> bool {
        self.kind == "video"
            && self.port.is_some_and(|p| p != 0)
            && matches!(self.direction, "sendrecv" | "recvonly")
    }

    fn codecs(&self) -> Vec<Offered> {
        self.pts
            .iter()
            .map(|&pt| Offered {
                pt,
                codec: self
                    .rtpmap
                    .iter()
                    .find(|(p, _)| *p == pt)
                    .map_or_else(String::new, |(_, c)| c.clone()),
                fmtp: self
                    .fmtp
                    .iter()
                    .find(|(p, _)| *p == pt)
                    .map_or_else(String::new, |(_, f)| f.clone()),
            })
            .filter(|o| !o.codec.to_ascii_lowercase().starts_with("rtx/"))
            .collect()
    }
}

/// `key=value;key=value` of an `a=fmtp` line, keys in lower case.
fn fmtp_params(fmtp: &str) -> Vec<(String, String)> {
    fmtp.split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The video section of a Chromium offer (recvonly transceiver), shortened.
    fn chromium(video_attrs: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 108 109 35\r\nc=IN IP4 0.0.0.0\r\n\
             a=mid:0\r\na=recvonly\r\n{video_attrs}"
        )
    }

    const CHROMIUM_CODECS: &str = "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
        a=fmtp:97 apt=96\r\na=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
        a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\na=rtpmap:108 H264/90000\r\n\
        a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:109 rtx/90000\r\na=rtpmap:35 H264/90000\r\n\
        a=fmtp:35 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n";

    #[test]
    fn a_chromium_offer_is_accepted() {
        assert_eq!(
            check(&chromium(CHROMIUM_CODECS), ProfileLevel::ENCODER),
            Ok(())
        );
    }

    #[test]
    fn offers_without_receiving_video_are_refused() {
        let audio =
            "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(
            check(audio, ProfileLevel::ENCODER),
            Err(OfferProblem::NoVideo)
        );
        let sendonly = chromium(CHROMIUM_CODECS).replace("a=recvonly", "a=sendonly");
        assert_eq!(
            check(&sendonly, ProfileLevel::ENCODER),
            Err(OfferProblem::NoVideo)
        );
        let rejected = chromium(CHROMIUM_CODECS).replace("m=video 9", "m=video 0");
        assert_eq!(
            check(&rejected, ProfileLevel::ENCODER),
            Err(OfferProblem::NoVideo)
        );
        assert!(matches!(
            check("hello", ProfileLevel::ENCODER),
            Err(OfferProblem::Malformed(_))
        ));
    }

    #[test]
    fn h264_needs_packetization_mode_1_and_a_profile_that_decodes_the_stream() {
        let vp8 = chromium("a=rtpmap:96 VP8/90000\r\n");
        let e = check(&vp8, ProfileLevel::ENCODER).unwrap_err();
        assert!(e.to_string().contains("96 VP8/90000"), "{e}");
        let mode0 = chromium(
            "a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=0;profile-level-id=42e01f\r\n",
        );
        assert!(matches!(
            check(&mode0, ProfileLevel::ENCODER),
            Err(OfferProblem::NoH264 { .. })
        ));
        let high = chromium(
            "a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=640c1f\r\n",
        );
        // Constrained Baseline pictures decode as High; a camera's High pictures do not
        // decode as Constrained Baseline.
        assert_eq!(check(&high, ProfileLevel::ENCODER), Ok(()));
        let camera_high = ProfileLevel::parse("640028").unwrap();
        assert_eq!(check(&high, camera_high), Ok(()));
        let cb_only = chromium(
            "a=rtpmap:108 H264/90000\r\na=fmtp:108 packetization-mode=1;profile-level-id=42e01f\r\n",
        );
        let e = check(&cb_only, camera_high).unwrap_err();
        assert!(e.to_string().contains("640028"), "{e}");
    }

    #[test]
    fn no_input_makes_the_checks_panic() {
        // Every prefix, and bytes flipped through the offer by a small LCG: the checks
        // read hostile text from any client.
        let offer = chromium(CHROMIUM_CODECS);
        for end in 0..=offer.len() {
            if let Some(p) = offer.get(..end) {
                let _ = check(p, ProfileLevel::ENCODER);
                let _ = video_mid(p);
            }
        }
        let mut x: u32 = 12345;
        let mut bytes = offer.into_bytes();
        for _ in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (x >> 8) as usize % bytes.len();
            let alphabet = b"=: ;/\r\n0123456789abcdefHm";
            bytes[i] = alphabet[(x >> 20) as usize % alphabet.len()];
            let text = String::from_utf8_lossy(&bytes);
            let _ = check(&text, ProfileLevel::ENCODER);
            let _ = video_mid(&text);
        }
    }

    #[test]
    fn the_video_sections_mid_is_found() {
        let sdp = "v=0\r\nm=audio 9 X 0\r\na=mid:a\r\nm=video 0 X 96\r\na=mid:gone\r\n\
                   m=video 9 X 96\r\na=mid:1\r\n";
        assert_eq!(video_mid(sdp).as_deref(), Some("1"));
        assert_eq!(video_mid("v=0\r\n"), None);
    }

    #[test]
    fn profiles_read_from_sps_and_sdp() {
        let sps = [0x67, 0x42, 0xC0, 0x1F, 0x8C];
        let p = ProfileLevel::from_sps(&sps).unwrap();
        assert_eq!(p.as_u32(), 0x42C01F);
        assert!(p.constrained_baseline());
        assert_eq!(ProfileLevel::parse("42E01F"), Some(ProfileLevel::ENCODER));
        assert_eq!(ProfileLevel::parse("42e01"), None);
        assert_eq!(ProfileLevel::parse("zzzzzz"), None);
        assert_eq!(ProfileLevel::from_sps(&[0x67, 0x42]), None);
    }
}
