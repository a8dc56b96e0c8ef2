//! H.264 on an M2M encoder ([`M2mH264`]): the same contract as the software encoder
//! ([`crate::encode::h264::H264Encoder`]) so the H.264 stage can use either: one access unit
//! per frame, an IDR every `gop` frames, SPS and PPS in front of every IDR, keyframes on
//! request at most one per [`MIN_FORCED_IDR_GAP`].
//!
//! Controls (all set before streaming; a driver may refuse the optional ones, which
//! `/state` then lists): CBR at the stream's bitrate, `H264_I_PERIOD` = the GOP in frames,
//! Constrained Baseline (the profile every WebRTC browser and NVR decodes), the level for the
//! size and rate, and SPS/PPS repeated with each IDR (`REPEAT_SEQ_HEADER`, and the newer
//! `PREPEND_SPSPPS_TO_IDR`). A driver that still emits SPS/PPS once, alone in a buffer, or
//! leaves them off later IDRs is covered here: parameter sets are kept as they pass and put
//! in front of any IDR that lacks them, since a client joining at that IDR needs them.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use v4l::v4l_sys;

use super::device::{M2mDevice, V4l2Device};
use super::encoder::{Control, M2mEncoder, Spec};
use super::{Codec, M2mError};
use crate::encode::h264::{level_idc, H264Settings, KeyframeGate};
use crate::frame::{split_annex_b, AccessUnit, CaptureTime, Yuv420Buffer};

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// The controls for `settings`.
pub fn controls(settings: &H264Settings) -> Vec<Control> {
    let c = |id, value: i64, name, required| Control {
        id,
        value: value.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        name,
        required,
    };
    vec![
        c(
            v4l_sys::V4L2_CID_MPEG_VIDEO_BITRATE_MODE,
            v4l_sys::v4l2_mpeg_video_bitrate_mode_V4L2_MPEG_VIDEO_BITRATE_MODE_CBR as i64,
            "bitrate mode CBR",
            false,
        ),
        c(
            v4l_sys::V4L2_CID_MPEG_VIDEO_BITRATE,
            settings.bitrate as i64,
            "bitrate",
            false,
        ),
        c(
            v4l_sys::V4L2_CID_MPEG_VIDEO_H264_I_PERIOD,
            settings.gop as i64,
            "IDR period",
            false,
        ),
        c(
            v4l_sys::V4L2_CID_MPEG_VIDEO_H264_PROFILE,
            v4l_sys::v4l2_mpeg_video_h264_profile_V4L2_MPEG_VIDEO_H264_PROFILE_CONSTRAINED_BASELINE
                as i64,
            "profile Constrained Baseline",
            false,
        ),
        c(
            v4l_sys::V4L2_CID_MPEG_VIDEO_H264_LEVEL,
            v4l2_level(level_idc(settings.width, settings.height, settings.fps)) as i64,
            "level",
            false,
        ),
        c(
            v4l_sys::V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER,
            1,
            "SPS/PPS repeated",
            false,
        ),
        c(
            v4l_sys::V4L2_CID_MPEG_VIDEO_PREPEND_SPSPPS_TO_IDR,
            1,
            "SPS/PPS before each IDR",
            false,
        ),
    ]
}

/// V4L2's level menu index for a `level_idc` (`V4L2_MPEG_VIDEO_H264_LEVEL_1_0` = 0, …).
fn v4l2_level(idc: u8) -> u32 {
    const IDCS: [u8; 16] = [
        10, 9, 11, 12, 13, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51,
    ];
    IDCS.iter().position(|&i| i == idc).unwrap_or(15) as u32
}

fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1F)
}

/// Whether coded bytes hold a picture (a VCL NAL unit: types 1–5), not only parameter sets.
pub fn has_picture(data: &[u8]) -> bool {
    split_annex_b(data)
        .into_iter()
        .any(|r| (1..=5).contains(&nal_type(&data[r])))
}

/// H.264 from an M2M encoder.
pub struct M2mH264<D: M2mDevice = V4l2Device> {
    encoder: M2mEncoder<D>,
    settings: H264Settings,
    keyframes: KeyframeGate,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    /// The driver refused FORCE_KEY_FRAME once (said in the log once).
    cannot_force: bool,
}

impl M2mH264<V4l2Device> {
    /// Opens the encoder node at `path` for `settings`.
    pub fn open(path: &std::path::Path, settings: H264Settings) -> Result<Self, M2mError> {
        let dev = V4l2Device::open(path).map_err(|source| M2mError::Io {
            path: path.display().to_string(),
            what: "opening",
            source,
        })?;
        M2mH264::with_device(dev, settings)
    }
}

impl<D: M2mDevice> M2mH264<D> {
    pub fn with_device(dev: D, settings: H264Settings) -> Result<Self, M2mError> {
        let spec = Spec {
            codec: Codec::H264,
            width: settings.width,
            height: settings.height,
            fps: settings.fps,
            controls: controls(&settings),
            import_stride: None,
        };
        Ok(M2mH264 {
            encoder: M2mEncoder::open(dev, spec)?,
            settings,
            keyframes: KeyframeGate::default(),
            sps: None,
            pps: None,
            cannot_force: false,
        })
    }

    pub fn settings(&self) -> H264Settings {
        self.settings
    }

    pub fn encoder(&self) -> &M2mEncoder<D> {
        &self.encoder
    }

    /// Ends the session ([`M2mEncoder::drain`]).
    pub fn drain(&mut self) -> Result<Vec<super::Coded>, M2mError> {
        self.encoder.drain()
    }

    /// Makes the next frame an IDR, or the first one after [`MIN_FORCED_IDR_GAP`] has passed
    /// since the last forced IDR.
    pub fn request_keyframe(&mut self) {
        self.keyframes.request();
    }

    /// Encodes one frame; `Ok(None)` when the driver gave no picture for it.
    pub fn encode(
        &mut self,
        planes: &dyn Yuv420Buffer,
        seq: u64,
        captured: CaptureTime,
        now: Instant,
    ) -> Result<Option<AccessUnit>, M2mError> {
        let (width, height) = (self.settings.width, self.settings.height);
        if self.keyframes.force_now(now) {
            // Applies to the next frame queued (V4L2's FORCE_KEY_FRAME is a button control).
            // A driver without it is not broken: the GOP's own IDRs still come, so a joining
            // client waits up to a GOP (said once in the log), and the device stays in use.
            if let Err(e) = self.encoder.set_control(
                v4l_sys::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME,
                1,
                "forcing a keyframe",
            ) {
                if !self.cannot_force {
                    tracing::warn!(error = %e, "the H.264 encoder cannot force keyframes; new viewers wait for the next IDR");
                    self.cannot_force = true;
                }
            }
        }
        let coded = self.encoder.encode(planes, width, height, has_picture)?;
        let Some((data, keyframe)) = self.complete(coded.data) else {
            return Ok(None);
        };
        if keyframe {
            self.keyframes.served();
        }
        let nals = split_annex_b(&data);
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

    /// Keeps the parameter sets that pass, and puts them in front of an IDR without them;
    /// the unit's bytes and whether it is an IDR, `None` when it holds no NAL unit.
    fn complete(&mut self, data: Bytes) -> Option<(Bytes, bool)> {
        let ranges = split_annex_b(&data);
        if ranges.is_empty() {
            return None;
        }
        let (mut sps, mut pps, mut idr) = (false, false, false);
        for r in &ranges {
            match nal_type(&data[r.clone()]) {
                NAL_SPS => {
                    sps = true;
                    self.sps = Some(data.slice(r.clone()));
                }
                NAL_PPS => {
                    pps = true;
                    self.pps = Some(data.slice(r.clone()));
                }
                NAL_IDR => idr = true,
                _ => {}
            }
        }
        if !idr || (sps && pps) {
            return Some((data, idr));
        }
        let (Some(s), Some(p)) = (&self.sps, &self.pps) else {
            // Nothing to add yet: a decoder cannot start here, but the unit is still the
            // stream's next picture.
            return Some((data, idr));
        };
        let mut out = BytesMut::with_capacity(data.len() + s.len() + p.len() + 8);
        for nal in [s, p] {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        out.extend_from_slice(&data);
        Some((out.freeze(), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::h264::MIN_FORCED_IDR_GAP;
    use crate::encode::m2m::fake::{FakeDevice, Planes};
    use crate::encode::m2m::FourCc;

    fn settings() -> H264Settings {
        H264Settings {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate: 2_000_000,
            gop: 60,
        }
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect()
    }

    const SPS: &[u8] = &[0x67, 0x42, 0xC0, 0x1F];
    const PPS: &[u8] = &[0x68, 0xCE];
    const IDR: &[u8] = &[0x65, 0x88, 0x84];
    const P: &[u8] = &[0x41, 0x9A];

    fn types(au: &AccessUnit) -> Vec<u8> {
        au.nal_units().map(|n| n[0] & 0x1F).collect()
    }

    #[test]
    fn controls_ask_for_cbr_the_gop_constrained_baseline_the_level_and_repeated_headers() {
        let dev = FakeDevice::encoder(FourCc::H264, |_| vec![annexb(&[SPS, PPS, IDR])]);
        let log = dev.log();
        let enc = M2mH264::with_device(dev, settings()).unwrap();
        let set = log.lock().unwrap().controls.clone();
        let value = |id| set.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
        assert_eq!(value(v4l_sys::V4L2_CID_MPEG_VIDEO_BITRATE), Some(2_000_000));
        assert_eq!(value(v4l_sys::V4L2_CID_MPEG_VIDEO_H264_I_PERIOD), Some(60));
        assert_eq!(
            value(v4l_sys::V4L2_CID_MPEG_VIDEO_H264_PROFILE),
            Some(
                v4l_sys::v4l2_mpeg_video_h264_profile_V4L2_MPEG_VIDEO_H264_PROFILE_CONSTRAINED_BASELINE
                    as i32
            )
        );
        // 720p30: level 3.1, V4L2's menu index 9.
        assert_eq!(value(v4l_sys::V4L2_CID_MPEG_VIDEO_H264_LEVEL), Some(9));
        assert_eq!(
            value(v4l_sys::V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER),
            Some(1)
        );
        assert_eq!(
            value(v4l_sys::V4L2_CID_MPEG_VIDEO_BITRATE_MODE),
            Some(v4l_sys::v4l2_mpeg_video_bitrate_mode_V4L2_MPEG_VIDEO_BITRATE_MODE_CBR as i32)
        );
        assert!(enc.encoder().refused().is_empty());
        assert_eq!(log.lock().unwrap().frame_rate, Some(30));
    }

    #[test]
    fn optional_controls_a_driver_refuses_are_listed_not_fatal() {
        let mut dev = FakeDevice::encoder(FourCc::H264, |_| vec![annexb(&[SPS, PPS, IDR])]);
        dev.refuse_control(v4l_sys::V4L2_CID_MPEG_VIDEO_PREPEND_SPSPPS_TO_IDR);
        let enc = M2mH264::with_device(dev, settings()).unwrap();
        assert_eq!(enc.encoder().refused().len(), 1);
        assert!(enc.encoder().refused()[0].starts_with("SPS/PPS before each IDR"));
    }

    #[test]
    fn parameter_sets_in_a_buffer_of_their_own_are_joined_to_the_picture_and_kept_for_later_idrs() {
        // Frame 0: the driver hands SPS/PPS alone, then the IDR; later IDRs come bare.
        let dev = FakeDevice::encoder(FourCc::H264, |n| match n {
            0 => vec![annexb(&[SPS, PPS]), annexb(&[IDR])],
            3 => vec![annexb(&[IDR])],
            _ => vec![annexb(&[P])],
        });
        let mut enc = M2mH264::with_device(dev, settings()).unwrap();
        let planes = Planes::grey(1280, 720);
        let now = Instant::now();
        let mut units = Vec::new();
        for seq in 0..5 {
            let au = enc.encode(&planes, seq, CaptureTime::now(), now).unwrap();
            units.push(au.expect("a unit per frame"));
        }
        assert_eq!(types(&units[0]), [7, 8, 5]);
        assert!(units[0].keyframe);
        assert_eq!(types(&units[1]), [1]);
        assert!(!units[1].keyframe);
        assert_eq!(
            types(&units[3]),
            [7, 8, 5],
            "SPS/PPS put in front of a bare IDR"
        );
        assert!(units[3].keyframe);
        assert_eq!(units[3].nal_of_type(7).unwrap()[..], SPS[..]);
    }

    #[test]
    fn keyframe_requests_press_force_key_frame_at_most_every_half_second() {
        let dev = FakeDevice::encoder(FourCc::H264, |n| match n {
            0 => vec![annexb(&[SPS, PPS, IDR])],
            _ => vec![annexb(&[P])],
        });
        let log = dev.log();
        let mut enc = M2mH264::with_device(dev, settings()).unwrap();
        let planes = Planes::grey(1280, 720);
        let t0 = Instant::now();
        let forced = || {
            log.lock()
                .unwrap()
                .controls
                .iter()
                .filter(|(id, _)| *id == v4l_sys::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME)
                .count()
        };
        enc.encode(&planes, 0, CaptureTime::now(), t0).unwrap();
        enc.request_keyframe();
        enc.encode(&planes, 1, CaptureTime::now(), t0).unwrap();
        assert_eq!(forced(), 1);
        // Asked again 100 ms later: held until 0.5 s after the last forced one.
        enc.request_keyframe();
        let t = t0 + std::time::Duration::from_millis(100);
        enc.encode(&planes, 2, CaptureTime::now(), t).unwrap();
        assert_eq!(forced(), 1);
        let t = t0 + MIN_FORCED_IDR_GAP;
        enc.encode(&planes, 3, CaptureTime::now(), t).unwrap();
        assert_eq!(forced(), 2);
        // The control is pressed before the frame it applies to is queued.
        let log = log.lock().unwrap();
        let press = log
            .events
            .iter()
            .position(|e| *e == format!("control {}", v4l_sys::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME))
            .unwrap();
        assert_eq!(log.events[press + 1], "queue raw");
    }

    #[test]
    fn a_frame_the_driver_answers_with_nothing_gives_no_unit() {
        let dev = FakeDevice::encoder(FourCc::H264, |n| match n {
            0 => vec![annexb(&[SPS, PPS, IDR])],
            _ => vec![b"\0\0\0\x01\x09\x10".to_vec()],
        });
        let mut enc = M2mH264::with_device(dev, settings()).unwrap();
        let planes = Planes::grey(1280, 720);
        assert!(enc
            .encode(&planes, 0, CaptureTime::now(), Instant::now())
            .unwrap()
            .is_some());
        // An access unit delimiter alone is not a picture: waited for until the timeout.
        let e = enc
            .encode(&planes, 1, CaptureTime::now(), Instant::now())
            .unwrap_err();
        assert!(matches!(e, M2mError::Timeout(..)), "{e}");
    }

    #[test]
    fn a_driver_without_forced_keyframes_keeps_encoding() {
        let mut dev = FakeDevice::encoder(FourCc::H264, |n| match n {
            0 => vec![annexb(&[SPS, PPS, IDR])],
            _ => vec![annexb(&[P])],
        });
        dev.refuse_control(v4l_sys::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME);
        let mut enc = M2mH264::with_device(dev, settings()).unwrap();
        let planes = Planes::grey(1280, 720);
        for seq in 0..3 {
            enc.request_keyframe();
            let t = Instant::now() + MIN_FORCED_IDR_GAP * seq as u32;
            assert!(enc
                .encode(&planes, seq, CaptureTime::now(), t)
                .unwrap()
                .is_some());
        }
    }
}
