//! The software H.264 encoder: YUV 4:2:0 planes in, one access unit out per frame.
//!
//! Cisco's OpenH264 (the `openh264` crate, built from its C++ source; BSD) in the settings
//! every browser's WebRTC and WebCodecs decoder and every NVR accepts: Constrained Baseline
//! (no B-frames, CAVLC), one slice, one frame in → one access unit out (no lookahead, frame
//! lookahead, so nothing is held back), bitrate rate control (which may skip a frame when over
//! budget: that frame gives no access unit), an IDR every
//! `gop` frames, SPS and PPS in front of every IDR so any keyframe starts a decoder.
//!
//! The planes are read in place, as the JPEG encoder reads them: [`BorrowedPlanes`] lends the
//! source's buffer to OpenH264 without a copy or a colour conversion.
//!
//! Keyframes on request: a new consumer needs an IDR to start, so [`H264Encoder::request_keyframe`]
//! makes the next frame one — but at most one forced IDR per [`MIN_FORCED_IDR_GAP`], so a
//! flood of joining clients cannot turn every frame into a keyframe (an IDR at 720p is ~5–10×
//! a P-frame). A request inside the gap is kept and served when the gap has passed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::YUVSource;
use openh264::OpenH264API;

use crate::frame::{planes_hold, split_annex_b, AccessUnit, CaptureTime, Yuv420Buffer};

/// Shortest time between two IDRs forced by requests. A joining client waits at most this
/// long for its first picture when others joined just before it; 0.5 s keeps a join flood to
/// at most 2 extra keyframes a second.
pub const MIN_FORCED_IDR_GAP: Duration = Duration::from_millis(500);

/// How a stream's H.264 is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Settings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Target bits per second.
    pub bitrate: u32,
    /// Frames from one IDR to the next.
    pub gop: u32,
}

/// The default bitrate for a size and rate: 2 Mbit/s at 1280x720, 30 fps, scaled with the
/// pixel rate to the power 0.75 (bits per pixel fall as pictures grow: 1080p30 gets 3.6
/// Mbit/s, 640x480 at 30 fps 0.9 Mbit/s), at least 100 kbit/s.
pub fn default_bitrate(width: u32, height: u32, fps: u32) -> u32 {
    let reference = 1280.0 * 720.0 * 30.0;
    let rate = width as f64 * height as f64 * fps.max(1) as f64;
    ((2_000_000.0 * (rate / reference).powf(0.75)) as u32).max(100_000)
}

/// Why the encoder failed.
#[derive(Debug, thiserror::Error)]
pub enum H264Error {
    #[error("openh264: {0}")]
    OpenH264(#[from] openh264::Error),
    #[error("frame {width}x{height} has planes too small for its strides")]
    BadPlanes { width: u32, height: u32 },
    #[error("frame {width}x{height}: H.264 needs even dimensions of at most 3840x2160")]
    BadSize { width: u32, height: u32 },
}

/// The planes of a [`Yuv420Buffer`] as OpenH264 reads them, borrowed.
pub struct BorrowedPlanes<'a> {
    buffer: &'a dyn Yuv420Buffer,
    width: usize,
    height: usize,
}

impl<'a> BorrowedPlanes<'a> {
    /// Checks that the planes hold `width`x`height` at their strides (OpenH264 trusts them).
    pub fn new(buffer: &'a dyn Yuv420Buffer, width: u32, height: u32) -> Result<Self, H264Error> {
        // OpenH264 takes one stride for both chroma planes.
        let [_, us, vs] = buffer.strides();
        if us != vs || !planes_hold(buffer, width, height) {
            return Err(H264Error::BadPlanes { width, height });
        }
        Ok(BorrowedPlanes {
            buffer,
            width: width as usize,
            height: height as usize,
        })
    }
}

impl YUVSource for BorrowedPlanes<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let [y, u, v] = self.buffer.strides();
        (y, u, v)
    }

    fn y(&self) -> &[u8] {
        self.buffer.planes()[0]
    }

    fn u(&self) -> &[u8] {
        self.buffer.planes()[1]
    }

    fn v(&self) -> &[u8] {
        self.buffer.planes()[2]
    }
}

/// Keyframe requests, served with the next frame but at most one forced IDR per
/// [`MIN_FORCED_IDR_GAP`]; the software and the hardware H.264 encoders both keep one.
#[derive(Debug, Default)]
pub struct KeyframeGate {
    /// A consumer asked for a keyframe that has not been made yet.
    wanted: bool,
    /// When the last IDR was forced by a request.
    last_forced: Option<Instant>,
}

impl KeyframeGate {
    pub fn request(&mut self) {
        self.wanted = true;
    }

    /// Whether the frame encoded at `now` is to be forced to an IDR (then counted as forced).
    pub fn force_now(&mut self, now: Instant) -> bool {
        let due = self.wanted
            && self
                .last_forced
                .is_none_or(|t| now.duration_since(t) >= MIN_FORCED_IDR_GAP);
        if due {
            self.wanted = false;
            self.last_forced = Some(now);
        }
        due
    }

    /// An IDR came anyway (the GOP's own): it serves a pending request as well.
    pub fn served(&mut self) {
        self.wanted = false;
    }
}

/// One OpenH264 encoder and its keyframe bookkeeping.
pub struct H264Encoder {
    encoder: Encoder,
    settings: H264Settings,
    keyframes: KeyframeGate,
    out: Vec<u8>,
}

impl H264Encoder {
    pub fn new(settings: H264Settings) -> Result<Self, H264Error> {
        let (w, h) = (settings.width, settings.height);
        if w % 2 != 0 || h % 2 != 0 || w.max(h) > 3840 || w.min(h) > 2160 {
            return Err(H264Error::BadSize {
                width: w,
                height: h,
            });
        }
        let config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .level(level_for(w, h, settings.fps))
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(settings.bitrate))
            .max_frame_rate(FrameRate::from_hz(settings.fps as f32))
            // OpenH264 holds the bitrate only by skipping a frame now and then when over
            // budget (it says so at init otherwise); a skipped frame gives no access unit, and
            // nothing waits: frames are never held back for lookahead.
            .skip_frames(true)
            .intra_frame_period(IntraFramePeriod::from_num_frames(settings.gop.max(1)))
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .scene_change_detect(false)
            .num_threads(1);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)?;
        Ok(H264Encoder {
            encoder,
            settings,
            keyframes: KeyframeGate::default(),
            out: Vec::new(),
        })
    }

    pub fn settings(&self) -> H264Settings {
        self.settings
    }

    /// Makes the next frame an IDR, or the first one after [`MIN_FORCED_IDR_GAP`] has passed
    /// since the last forced IDR.
    pub fn request_keyframe(&mut self) {
        self.keyframes.request();
    }

    /// Encodes one frame. `Ok(None)` when the rate control skipped it (nothing to send).
    pub fn encode(
        &mut self,
        planes: &dyn Yuv420Buffer,
        seq: u64,
        captured: CaptureTime,
        now: Instant,
    ) -> Result<Option<AccessUnit>, H264Error> {
        let (width, height) = (self.settings.width, self.settings.height);
        let source = BorrowedPlanes::new(planes, width, height)?;
        if self.keyframes.force_now(now) {
            self.encoder.force_intra_frame();
        }
        let stream = self.encoder.encode(&source)?;
        let keyframe = matches!(stream.frame_type(), FrameType::IDR);
        if matches!(stream.frame_type(), FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        self.out.clear();
        stream.write_vec(&mut self.out);
        if keyframe {
            self.keyframes.served();
        }
        let data = Bytes::copy_from_slice(&self.out);
        let nals = split_annex_b(&data);
        if nals.is_empty() {
            return Ok(None);
        }
        Ok(Some(AccessUnit {
            seq,
            captured,
            width,
            height,
            keyframe,
            data,
            nals,
        }))
    }
}

/// The lowest level whose limits (H.264 Table A-1: macroblocks per second and per frame) hold
/// the stream, so decoders size their buffers for it; 5.1 beyond.
fn level_for(width: u32, height: u32, fps: u32) -> Level {
    level_row(width, height, fps).0
}

/// `level_idc` of the level [`H264Encoder`] picks for a size and rate (31 for 720p30, 40 for
/// 1080p30): the last byte of the codec string a player can check before the first SPS.
pub fn level_idc(width: u32, height: u32, fps: u32) -> u8 {
    level_row(width, height, fps).1
}

/// The codec string (`avc1.42C0LL`: Constrained Baseline, constraint_set0 and 1, as
/// OpenH264 writes its SPS) the encoder's stream will have at this size and rate.
pub fn expected_codec(width: u32, height: u32, fps: u32) -> String {
    format!("avc1.42C0{:02X}", level_idc(width, height, fps))
}

fn level_row(width: u32, height: u32, fps: u32) -> (Level, u8) {
    let mbs = width.div_ceil(16) as u64 * height.div_ceil(16) as u64;
    let rate = mbs * fps.max(1) as u64;
    const LEVELS: &[(u64, u64, Level, u8)] = &[
        (396, 11_880, Level::Level_2_1, 21),
        (1_620, 40_500, Level::Level_3_0, 30),
        (3_600, 108_000, Level::Level_3_1, 31),
        (5_120, 216_000, Level::Level_3_2, 32),
        (8_192, 245_760, Level::Level_4_0, 40),
        (8_704, 522_240, Level::Level_4_2, 42),
        (22_080, 589_824, Level::Level_5_0, 50),
    ];
    LEVELS
        .iter()
        .find(|(frame, second, _, _)| mbs <= *frame && rate <= *second)
        .map_or((Level::Level_5_1, 51), |(_, _, level, idc)| (*level, *idc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// I420 planes with a stride wider than the picture, a moving gradient in luma.
    struct Planes {
        y: Vec<u8>,
        u: Vec<u8>,
        v: Vec<u8>,
        stride: usize,
    }

    impl Planes {
        fn new(w: usize, h: usize, stride: usize, t: usize) -> Planes {
            let y = (0..stride * h)
                .map(|i| ((i % stride + i / stride + 3 * t) % 220 + 16) as u8)
                .collect();
            let c = vec![128u8; (stride / 2) * h.div_ceil(2)];
            let _ = w;
            Planes {
                y,
                u: c.clone(),
                v: c,
                stride,
            }
        }
    }

    impl Yuv420Buffer for Planes {
        fn planes(&self) -> [&[u8]; 3] {
            [&self.y, &self.u, &self.v]
        }
        fn strides(&self) -> [usize; 3] {
            [self.stride, self.stride / 2, self.stride / 2]
        }
    }

    fn settings(gop: u32) -> H264Settings {
        H264Settings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate: 300_000,
            gop,
        }
    }

    use crate::frame::{NAL_PPS, NAL_SPS};

    fn nal_types(au: &AccessUnit) -> Vec<u8> {
        au.nal_units().map(|n| n[0] & 0x1f).collect()
    }

    #[test]
    fn every_frame_gives_one_unit_and_idrs_carry_sps_and_pps() {
        let mut enc = H264Encoder::new(settings(10)).unwrap();
        let start = Instant::now();
        let mut keys = Vec::new();
        for t in 0..25 {
            let planes = Planes::new(320, 240, 384, t);
            let au = enc
                .encode(&planes, t as u64, CaptureTime::now(), start)
                .unwrap()
                .expect("a simple picture is never skipped");
            assert_eq!(au.seq, t as u64);
            let types = nal_types(&au);
            if au.keyframe {
                keys.push(t);
                assert_eq!(&types[..2], &[NAL_SPS, NAL_PPS], "{types:?}");
                // What the WebSocket's hello promises before the first SPS exists.
                let sps = au.nal_of_type(NAL_SPS).expect("an SPS");
                assert_eq!(
                    crate::wire::avc1_codec(&sps),
                    Some(expected_codec(320, 240, 30))
                );
                assert!(types.contains(&5), "an IDR slice: {types:?}");
                // Constrained Baseline: profile_idc 66 with constraint_set1.
                let sps = au.nal_of_type(NAL_SPS).unwrap();
                assert_eq!(sps[1], 66, "profile_idc");
                assert_ne!(sps[2] & 0x40, 0, "constraint_set1_flag");
            } else {
                assert_eq!(types, [1], "one non-IDR slice");
            }
        }
        assert_eq!(keys, [0, 10, 20], "an IDR every gop frames");
    }

    #[test]
    fn rate_control_holds_the_bitrate() {
        // 3 s of a busy picture (a moving gradient with noise) at 300 kbit/s.
        let mut enc = H264Encoder::new(settings(60)).unwrap();
        let mut noise = 12345u32;
        let mut bytes = 0;
        for t in 0..90 {
            let mut planes = Planes::new(320, 240, 320, t);
            for p in planes.y.iter_mut() {
                noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *p = p.wrapping_add((noise >> 28) as u8);
            }
            if let Some(au) = enc
                .encode(&planes, t as u64, CaptureTime::now(), Instant::now())
                .unwrap()
            {
                bytes += au.data.len();
            }
        }
        let bps = bytes as f64 * 8.0 / 3.0;
        eprintln!("{bps:.0} bit/s for a 300 kbit/s target");
        assert!(
            bps < 300_000.0 * 1.5,
            "{bps:.0} bit/s for a 300 kbit/s target"
        );
    }

    #[test]
    fn keyframe_requests_are_served_at_once_but_rate_limited() {
        let mut enc = H264Encoder::new(settings(1000)).unwrap();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let frame = |enc: &mut H264Encoder, t: usize, now: Instant| {
            let planes = Planes::new(320, 240, 320, t);
            enc.encode(&planes, t as u64, CaptureTime::now(), now)
                .unwrap()
                .is_some_and(|au| au.keyframe)
        };
        assert!(frame(&mut enc, 0, at(0)), "the first frame");
        assert!(!frame(&mut enc, 1, at(33)));
        enc.request_keyframe();
        assert!(
            frame(&mut enc, 2, at(66)),
            "a request is served by the next frame"
        );
        // A request with every frame: no IDR within 500 ms of the last forced one (at 66
        // ms), then one at the first frame after, then none for 500 ms again.
        let mut keys = Vec::new();
        for (t, ms) in (3..30).zip((99..).step_by(33)) {
            enc.request_keyframe();
            if frame(&mut enc, t, at(ms)) {
                keys.push(ms);
            }
        }
        assert_eq!(keys, [594]);
    }

    #[test]
    fn planes_too_small_and_odd_sizes_are_errors() {
        let mut enc = H264Encoder::new(settings(30)).unwrap();
        let mut planes = Planes::new(320, 240, 320, 0);
        planes.v.truncate(100);
        assert!(matches!(
            enc.encode(&planes, 0, CaptureTime::now(), Instant::now()),
            Err(H264Error::BadPlanes { .. })
        ));
        let odd = H264Settings {
            width: 321,
            ..settings(30)
        };
        assert!(matches!(
            H264Encoder::new(odd),
            Err(H264Error::BadSize { .. })
        ));
    }

    #[test]
    fn levels_and_default_bitrates() {
        assert!(matches!(level_for(1280, 720, 30), Level::Level_3_1));
        assert!(matches!(level_for(1920, 1080, 30), Level::Level_4_0));
        assert!(matches!(level_for(640, 480, 30), Level::Level_3_0));
        assert_eq!(expected_codec(1280, 720, 30), "avc1.42C01F");
        assert_eq!(expected_codec(1920, 1080, 30), "avc1.42C028");
        assert_eq!(default_bitrate(1280, 720, 30), 2_000_000);
        let hd = default_bitrate(1920, 1080, 30);
        assert!((3_500_000..3_700_000).contains(&hd), "{hd}");
        assert_eq!(default_bitrate(16, 16, 1), 100_000);
    }
}
