//! JPEG on an M2M encoder ([`M2mJpeg`]): what the JPEG pool's worker uses instead of
//! TurboJPEG when the stream's `jpeg_encoder` names (or `auto` finds) a hardware JPEG
//! encoder. Quality is `V4L2_CID_JPEG_COMPRESSION_QUALITY`, set at open and again when the
//! stream's quality changes; each coded buffer is checked to be a JPEG (SOI marker) before
//! it is published.

use bytes::Bytes;
use v4l::v4l_sys;

use super::device::{M2mDevice, V4l2Device};
use super::encoder::{Control, M2mEncoder, Spec};
use super::{Codec, M2mError};
use crate::frame::Yuv420Buffer;

/// JPEG from an M2M encoder, for one picture size.
pub struct M2mJpeg<D: M2mDevice = V4l2Device> {
    encoder: M2mEncoder<D>,
    quality: u8,
}

impl M2mJpeg<V4l2Device> {
    /// Opens the encoder node at `path` for `width`x`height` at `quality`.
    pub fn open(
        path: &std::path::Path,
        width: u32,
        height: u32,
        fps: u32,
        quality: u8,
    ) -> Result<Self, M2mError> {
        let dev = V4l2Device::open(path).map_err(|source| M2mError::Io {
            path: path.display().to_string(),
            what: "opening",
            source,
        })?;
        M2mJpeg::with_device(dev, width, height, fps, quality)
    }
}

impl<D: M2mDevice> M2mJpeg<D> {
    pub fn with_device(
        dev: D,
        width: u32,
        height: u32,
        fps: u32,
        quality: u8,
    ) -> Result<Self, M2mError> {
        let spec = Spec {
            codec: Codec::Jpeg,
            width,
            height,
            fps,
            controls: vec![Control {
                id: v4l_sys::V4L2_CID_JPEG_COMPRESSION_QUALITY,
                value: quality as i32,
                name: "JPEG quality",
                required: false,
            }],
            import_stride: None,
        };
        Ok(M2mJpeg {
            encoder: M2mEncoder::open(dev, spec)?,
            quality,
        })
    }

    pub fn encoder(&self) -> &M2mEncoder<D> {
        &self.encoder
    }

    /// Ends the session ([`M2mEncoder::drain`]).
    pub fn drain(&mut self) -> Result<Vec<super::Coded>, M2mError> {
        self.encoder.drain()
    }

    /// The picture size this session encodes.
    pub fn size(&self) -> (u32, u32) {
        (self.encoder.spec().width, self.encoder.spec().height)
    }

    /// Encodes one frame at `quality`.
    pub fn encode(
        &mut self,
        planes: &dyn Yuv420Buffer,
        width: u32,
        height: u32,
        quality: u8,
    ) -> Result<Bytes, M2mError> {
        if quality != self.quality {
            // A driver that takes no quality keeps its own: not a reason to leave the device.
            if let Err(e) = self.encoder.set_control(
                v4l_sys::V4L2_CID_JPEG_COMPRESSION_QUALITY,
                quality as i32,
                "setting the JPEG quality",
            ) {
                tracing::warn!(error = %e, "the JPEG encoder kept its quality");
            }
            self.quality = quality;
        }
        let coded = self.encoder.encode(planes, width, height, |_| true)?;
        if !coded.data.starts_with(&[0xFF, 0xD8]) {
            return Err(M2mError::Unsupported(
                format!(
                    "the coded buffer is not a JPEG (starts {:02X?})",
                    &coded.data[..coded.data.len().min(4)]
                ),
                self.encoder.device().info().path.clone(),
            ));
        }
        Ok(coded.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::m2m::fake::{FakeDevice, Planes};
    use crate::encode::m2m::FourCc;

    #[test]
    fn quality_is_set_at_open_and_when_it_changes() {
        let dev = FakeDevice::encoder(FourCc::JPEG, |_| vec![vec![0xFF, 0xD8, 0xFF, 0xD9]]);
        let log = dev.log();
        let mut enc = M2mJpeg::with_device(dev, 640, 480, 30, 80).unwrap();
        let planes = Planes::grey(640, 480);
        let quality = || -> Vec<i32> {
            log.lock()
                .unwrap()
                .controls
                .iter()
                .filter(|(id, _)| *id == v4l_sys::V4L2_CID_JPEG_COMPRESSION_QUALITY)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(quality(), [80]);
        assert_eq!(
            enc.encode(&planes, 640, 480, 80).unwrap()[..2],
            [0xFF, 0xD8]
        );
        assert_eq!(quality(), [80]);
        enc.encode(&planes, 640, 480, 50).unwrap();
        assert_eq!(quality(), [80, 50]);
    }

    #[test]
    fn a_coded_buffer_that_is_not_a_jpeg_is_an_error() {
        let dev = FakeDevice::encoder(FourCc::MJPEG, |_| vec![b"junk".to_vec()]);
        let mut enc = M2mJpeg::with_device(dev, 640, 480, 30, 80).unwrap();
        let e = enc
            .encode(&Planes::grey(640, 480), 640, 480, 80)
            .unwrap_err();
        assert!(e.to_string().contains("not a JPEG"), "{e}");
    }

    #[test]
    fn a_device_without_a_jpeg_format_is_refused_with_its_formats() {
        let dev = FakeDevice::encoder(FourCc::FWHT, |_| vec![]);
        let e = M2mJpeg::with_device(dev, 640, 480, 30, 80)
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("does not encode JPEG (its coded formats: FWHT)"),
            "{e}"
        );
    }
}
