//! The session description DESCRIBE answers with (SDP, RFC 4566; H.264 parameters from
//! RFC 6184, section 8.1): one video track, payload type 96, packetization-mode 1, and the
//! profile, level and parameter sets taken from the stream's own SPS and PPS, so a client
//! can set up its decoder before the first keyframe arrives.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine;
use bytes::Bytes;

use super::rtp::PAYLOAD_TYPE;

/// The control URL of the one track, relative to the `Content-Base`.
pub const TRACK_CONTROL: &str = "trackID=0";

/// What goes into one stream's description.
#[derive(Debug, Clone)]
pub struct Description<'a> {
    /// The stream's name (the `s=` line).
    pub name: &'a str,
    /// The address the client reached (the `o=` line).
    pub server_ip: IpAddr,
    /// An id for the `o=` line (any number; the stream's start time works).
    pub session_id: u64,
    /// The newest SPS and PPS, if the stream has made a keyframe yet. Without them the
    /// description names no profile and no parameter sets; they then come in band, in front
    /// of every keyframe, which every decoder tried reads too.
    pub parameter_sets: Option<(Bytes, Bytes)>,
    pub fps: u32,
}

/// The SDP text.
pub fn describe(d: &Description) -> String {
    let (addr_type, ip) = match d.server_ip {
        IpAddr::V4(v4) => ("IP4", v4.to_string()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ("IP4", v4.to_string()),
            None => ("IP6", v6.to_string()),
        },
    };
    let mut s = String::with_capacity(512);
    // `writeln!` to a String cannot fail.
    let _ = write!(
        s,
        "v=0\r\n\
         o=- {id} 1 IN {addr_type} {ip}\r\n\
         s={name}\r\n\
         c=IN {addr_type} {unspecified}\r\n\
         t=0 0\r\n\
         a=tool:picamd\r\n\
         a=type:broadcast\r\n\
         a=range:npt=now-\r\n\
         a=control:*\r\n\
         m=video 0 RTP/AVP {pt}\r\n\
         a=rtpmap:{pt} H264/90000\r\n",
        id = d.session_id,
        name = sanitize(d.name),
        unspecified = if addr_type == "IP4" { "0.0.0.0" } else { "::" },
        pt = PAYLOAD_TYPE,
    );
    let _ = write!(s, "a=fmtp:{PAYLOAD_TYPE} packetization-mode=1");
    if let Some((sps, pps)) = &d.parameter_sets {
        if let Some(pli) = profile_level_id(sps) {
            let _ = write!(s, ";profile-level-id={pli}");
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let _ = write!(
            s,
            ";sprop-parameter-sets={},{}",
            b64.encode(sps),
            b64.encode(pps)
        );
    }
    s.push_str("\r\n");
    if d.fps > 0 {
        let _ = write!(s, "a=framerate:{}\r\n", d.fps);
    }
    let _ = write!(s, "a=control:{TRACK_CONTROL}\r\n");
    s
}

/// `profile-level-id`: the SPS's profile_idc, constraint flags and level_idc (the three
/// bytes after the NAL header) in hex; `None` for an SPS too short to hold them.
pub fn profile_level_id(sps: &[u8]) -> Option<String> {
    let b = sps.get(1..4)?;
    Some(format!("{:02X}{:02X}{:02X}", b[0], b[1], b[2]))
}

/// A stream name is `A-Z a-z 0-9 _ -` already (config checks it); this only keeps a line
/// break out of the SDP should that ever change.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_carries_the_streams_parameter_sets() {
        // Constrained Baseline (66, constraint_set0+1), level 3.1: what OpenH264 makes at 720p.
        let sps = Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1F, 0x8C, 0x8D, 0x40]);
        let pps = Bytes::from_static(&[0x68, 0xCE, 0x3C, 0x80]);
        let sdp = describe(&Description {
            name: "main",
            server_ip: "127.0.0.1".parse().unwrap(),
            session_id: 42,
            parameter_sets: Some((sps, pps)),
            fps: 30,
        });
        let lines: Vec<&str> = sdp.split("\r\n").collect();
        assert_eq!(lines[0], "v=0");
        assert!(lines.contains(&"o=- 42 1 IN IP4 127.0.0.1"), "{sdp}");
        assert!(lines.contains(&"m=video 0 RTP/AVP 96"));
        assert!(lines.contains(&"a=rtpmap:96 H264/90000"));
        assert!(lines.contains(
            &"a=fmtp:96 packetization-mode=1;profile-level-id=42C01F;\
              sprop-parameter-sets=Z0LAH4yNQA==,aM48gA=="
        ));
        assert!(lines.contains(&"a=control:trackID=0"));
        assert_eq!(lines.last(), Some(&""), "every line ends with CRLF");
        // The session-level control comes before the media section.
        let star = lines.iter().position(|l| *l == "a=control:*").unwrap();
        let m = lines.iter().position(|l| l.starts_with("m=")).unwrap();
        assert!(star < m);
    }

    #[test]
    fn without_parameter_sets_only_the_packetization_is_stated() {
        let sdp = describe(&Description {
            name: "door\r\nx=evil",
            server_ip: "::1".parse().unwrap(),
            session_id: 1,
            parameter_sets: None,
            fps: 0,
        });
        assert!(sdp.contains("a=fmtp:96 packetization-mode=1\r\n"), "{sdp}");
        assert!(sdp.contains("IN IP6 ::1"));
        assert!(sdp.contains("s=doorx=evil\r\n"));
        assert!(!sdp.contains("framerate"));
        assert_eq!(profile_level_id(&[0x67, 0x42]), None);
    }
}
