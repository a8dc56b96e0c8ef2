//! Which encoder a stream uses: the `jpeg_encoder` / `h264_encoder` preference
//! ([`EncoderPref`]: `auto`, `software` or `v4l2:/dev/videoN`), the M2M encoder nodes this
//! machine has ([`probe_encoders`]), and the choice with its reason ([`choose`]) that
//! `/state`, `--list-encoders` and the logs show.
//!
//! A node is an encoder of a codec when its CAPTURE (coded) side offers the codec's format
//! and its OUTPUT (raw) side takes YU12 or NV12. On a Pi 0–4 that is `/dev/video11` (H.264)
//! and `/dev/video31` (JPEG); the decoder (`/dev/video10`) and the ISP (`/dev/video12`) are
//! M2M nodes too but offer raw formats on CAPTURE, so they are never picked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::device::{M2mDevice, Queue, SizeRange, V4l2Device};
use super::{Codec, FourCc};

/// A stream's choice of encoder for one codec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EncoderPref {
    /// A hardware encoder of the codec if one is found, else software.
    #[default]
    Auto,
    /// TurboJPEG / OpenH264 on the CPU.
    Software,
    /// This M2M node; if it cannot be used, software, with the reason in `/state`.
    Device(PathBuf),
}

impl FromStr for EncoderPref {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EncoderPref::Auto),
            "software" => Ok(EncoderPref::Software),
            _ => match s.strip_prefix("v4l2:") {
                Some(p) if p.starts_with("/dev/") && p.len() > 5 => {
                    Ok(EncoderPref::Device(PathBuf::from(p)))
                }
                _ => Err("expected auto, software or v4l2:/dev/videoN".to_owned()),
            },
        }
    }
}

impl fmt::Display for EncoderPref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncoderPref::Auto => f.write_str("auto"),
            EncoderPref::Software => f.write_str("software"),
            EncoderPref::Device(p) => write!(f, "v4l2:{}", p.display()),
        }
    }
}

/// One M2M node that encodes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderNode {
    pub path: PathBuf,
    pub driver: String,
    pub card: String,
    pub mplane: bool,
    /// What it encodes (of the codecs picamd knows).
    pub codecs: Vec<Codec>,
    /// Its coded and raw formats, as listed.
    pub coded: Vec<FourCc>,
    pub raw: Vec<FourCc>,
    /// The sizes it encodes (of its first coded format), when the driver says.
    pub sizes: Option<SizeRange>,
}

impl EncoderNode {
    /// Reads a node; `None` when it is not an M2M node or encodes nothing picamd knows.
    pub fn read(path: &Path) -> Option<EncoderNode> {
        let mut dev = V4l2Device::open(path).ok()?;
        EncoderNode::from_device(&mut dev, path)
    }

    pub fn from_device(dev: &mut dyn M2mDevice, path: &Path) -> Option<EncoderNode> {
        let coded = dev.formats(Queue::Coded).ok()?;
        let raw = dev.formats(Queue::Raw).ok()?;
        let takes_yuv = raw
            .iter()
            .any(|f| [FourCc::YUV420, FourCc::NV12].contains(f));
        let codecs: Vec<Codec> = [Codec::H264, Codec::Jpeg, Codec::Fwht]
            .into_iter()
            .filter(|c| takes_yuv && c.fourccs().iter().any(|f| coded.contains(f)))
            .collect();
        if codecs.is_empty() {
            return None;
        }
        let sizes = coded
            .iter()
            .find(|f| codecs.iter().any(|c| c.fourccs().contains(f)))
            .and_then(|f| dev.size_range(*f));
        let info = dev.info();
        Some(EncoderNode {
            path: path.to_path_buf(),
            driver: info.driver.clone(),
            card: info.card.clone(),
            mplane: info.mplane,
            codecs,
            coded,
            raw,
            sizes,
        })
    }
}

impl fmt::Display for EncoderNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[FourCc]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let codecs: Vec<&str> = self.codecs.iter().map(|c| c.name()).collect();
        write!(
            f,
            "{}: {} ({}) encodes {}; coded {}; raw {}{}{}",
            self.path.display(),
            self.card,
            self.driver,
            codecs.join(", "),
            list(&self.coded),
            list(&self.raw),
            match self.sizes {
                Some(r) => format!("; {}x{} to {}x{}", r.min.0, r.min.1, r.max.0, r.max.1),
                None => String::new(),
            },
            if self.mplane { "; multi-planar" } else { "" }
        )
    }
}

/// Every `/dev/video*` M2M node that encodes, in numeric order.
pub fn probe_encoders() -> Vec<EncoderNode> {
    let mut paths: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|(_, p)| EncoderNode::read(&p))
        .collect()
}

/// What a stream will use for one codec, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderChoice {
    /// `None`: software.
    pub device: Option<PathBuf>,
    pub why: String,
}

/// The encoder for `codec` under `pref`, given the nodes found. `why` is the reason alone;
/// what runs is said by `device`.
pub fn choose(
    pref: &EncoderPref,
    codec: Codec,
    size: (u32, u32),
    nodes: &[EncoderNode],
) -> EncoderChoice {
    let software = |why: String| EncoderChoice { device: None, why };
    let too_big = |n: &EncoderNode| match n.sizes {
        Some(r) if !r.holds(size.0, size.1) => Some(format!(
            "{} ({}) takes {}x{} to {}x{}, not {}x{}",
            n.path.display(),
            n.card,
            r.min.0,
            r.min.1,
            r.max.0,
            r.max.1,
            size.0,
            size.1
        )),
        _ => None,
    };
    match pref {
        EncoderPref::Software => software("as configured".into()),
        EncoderPref::Device(p) => match nodes.iter().find(|n| &n.path == p) {
            Some(n) if n.codecs.contains(&codec) && too_big(n).is_some() => {
                software(too_big(n).expect("checked"))
            }
            Some(n) if n.codecs.contains(&codec) => EncoderChoice {
                device: Some(p.clone()),
                why: format!("as configured ({})", n.card),
            },
            Some(n) => software(format!(
                "{} ({}) does not encode {codec}",
                p.display(),
                n.card
            )),
            None => software(format!(
                "{} is not a memory-to-memory encoder here",
                p.display()
            )),
        },
        EncoderPref::Auto => {
            let of_codec: Vec<&EncoderNode> = nodes
                .iter()
                .filter(|n| n.codecs.contains(&codec) && codec != Codec::Fwht)
                .collect();
            match of_codec.iter().find(|n| too_big(n).is_none()) {
                Some(n) => EncoderChoice {
                    device: Some(n.path.clone()),
                    why: format!("found by auto ({})", n.card),
                },
                None => match of_codec.first() {
                    Some(n) => software(too_big(n).expect("none fits")),
                    None => software(format!("auto found no {codec} encoder")),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, codecs: &[Codec]) -> EncoderNode {
        EncoderNode {
            path: path.into(),
            driver: "bcm2835-codec".into(),
            card: "bcm2835-codec-encode".into(),
            mplane: true,
            codecs: codecs.to_vec(),
            coded: vec![],
            raw: vec![FourCc::YUV420],
            // bcm2835-codec's limits.
            sizes: Some(SizeRange {
                min: (32, 32),
                max: (1920, 1920),
            }),
        }
    }

    const HD: (u32, u32) = (1280, 720);

    #[test]
    fn preferences_parse_and_print() {
        for s in ["auto", "software", "v4l2:/dev/video11"] {
            assert_eq!(s.parse::<EncoderPref>().unwrap().to_string(), s);
        }
        for bad in ["hardware", "v4l2:", "v4l2:video11", "/dev/video11", ""] {
            let e = bad.parse::<EncoderPref>().unwrap_err();
            assert!(e.contains("auto, software or v4l2:/dev/videoN"), "{e}");
        }
    }

    #[test]
    fn auto_takes_the_node_of_the_codec_and_says_why() {
        let pi = [
            node("/dev/video11", &[Codec::H264]),
            node("/dev/video31", &[Codec::Jpeg]),
        ];
        let c = choose(&EncoderPref::Auto, Codec::Jpeg, HD, &pi);
        assert_eq!(c.device.as_deref(), Some(Path::new("/dev/video31")));
        assert_eq!(c.why, "found by auto (bcm2835-codec-encode)");
        let c = choose(&EncoderPref::Auto, Codec::H264, HD, &pi);
        assert_eq!(c.device.as_deref(), Some(Path::new("/dev/video11")));
        let c = choose(&EncoderPref::Auto, Codec::H264, HD, &[]);
        assert_eq!(
            (c.device, c.why.as_str()),
            (None, "auto found no H.264 encoder")
        );
        // 4K is beyond bcm2835-codec's 1920x1920: software, saying so.
        let c = choose(&EncoderPref::Auto, Codec::H264, (3840, 2160), &pi);
        assert_eq!(c.device, None);
        assert_eq!(
            c.why,
            "/dev/video11 (bcm2835-codec-encode) takes 32x32 to 1920x1920, not 3840x2160"
        );
        // vicodec's FWHT is never a stream's codec.
        let vicodec = [node("/dev/video1", &[Codec::Fwht])];
        assert_eq!(
            choose(&EncoderPref::Auto, Codec::Jpeg, HD, &vicodec).device,
            None
        );
    }

    #[test]
    fn a_named_node_is_used_only_if_it_encodes_the_codec() {
        let pi = [node("/dev/video11", &[Codec::H264])];
        let named = EncoderPref::Device("/dev/video11".into());
        assert!(choose(&named, Codec::H264, HD, &pi).device.is_some());
        let c = choose(&named, Codec::Jpeg, HD, &pi);
        assert_eq!(c.device, None);
        assert!(c.why.ends_with("does not encode JPEG"), "{}", c.why);
        let c = choose(
            &EncoderPref::Device("/dev/video9".into()),
            Codec::Jpeg,
            HD,
            &pi,
        );
        assert!(
            c.why.contains("not a memory-to-memory encoder"),
            "{}",
            c.why
        );
        let c = choose(&EncoderPref::Software, Codec::H264, HD, &pi);
        assert_eq!((c.device, c.why.as_str()), (None, "as configured"));
    }
}
