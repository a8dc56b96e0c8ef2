//! Which encoders a stream uses: its `jpeg_encoder` and `h264_encoder` resolved against the
//! M2M encoder nodes this machine has ([`EncoderPlan`]), and what `/state` says of them as
//! hardware sessions open and fail ([`apply`]).

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::config::StreamConfig;
use crate::encode::fallback::EncoderNews;
use crate::encode::m2m::{choose, probe_encoders, Codec, EncoderNode, EncoderPref};
use crate::hub::EncoderState;

/// One codec's encoder as planned at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub configured: EncoderPref,
    /// The hardware encoder to use; `None`: software.
    pub device: Option<PathBuf>,
    pub why: String,
    software: &'static str,
}

impl Planned {
    /// What `/state` says before the first frame opens anything.
    pub fn initial_state(&self) -> EncoderState {
        EncoderState {
            configured: self.configured.to_string(),
            using: match &self.device {
                Some(p) => format!("v4l2:{}", p.display()),
                None => format!("software ({})", self.software),
            },
            why: match &self.device {
                Some(_) => format!("{}; opened at the first frame", self.why),
                None => self.why.clone(),
            },
            fallbacks: 0,
        }
    }
}

/// A stream's encoders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderPlan {
    pub jpeg: Planned,
    pub h264: Planned,
}

/// The nodes, probed once per process (every stream asks the same question, and opening
/// each `/dev/video*` node is not free).
fn nodes() -> &'static [EncoderNode] {
    static NODES: OnceLock<Vec<EncoderNode>> = OnceLock::new();
    NODES.get_or_init(probe_encoders)
}

impl EncoderPlan {
    pub fn for_config(config: &StreamConfig) -> EncoderPlan {
        let plan = |pref: &EncoderPref, codec: Codec, software| {
            let found = match pref {
                EncoderPref::Software => &[][..],
                _ => nodes(),
            };
            let c = choose(pref, codec, (config.size.width, config.size.height), found);
            Planned {
                configured: pref.clone(),
                device: c.device,
                why: c.why,
                software,
            }
        };
        EncoderPlan {
            jpeg: plan(&config.jpeg_encoder, Codec::Jpeg, "TurboJPEG"),
            h264: plan(&config.h264.encoder, Codec::H264, "OpenH264"),
        }
    }

    /// Software for both, as configured (the unit tests' plan).
    pub fn software() -> EncoderPlan {
        let plan = |software| Planned {
            configured: EncoderPref::Software,
            device: None,
            why: "as configured".into(),
            software,
        };
        EncoderPlan {
            jpeg: plan("TurboJPEG"),
            h264: plan("OpenH264"),
        }
    }
}

/// Takes in an encoder's news.
pub fn apply(state: &mut EncoderState, news: EncoderNews) {
    state.using = news.using;
    state.why = news.why;
    if news.fell_back {
        state.fallbacks += 1;
    }
}
