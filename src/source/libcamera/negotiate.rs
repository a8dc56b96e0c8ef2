//! Negotiating a libcamera stream: the configuration picamd asks for (one video stream in
//! YUV420 at the configured size, buffer count and orientation), what the camera adjusts, and
//! the plane layout that results; and picamd's rotation and flips as libcamera's orientation.

use libcamera::camera::{
    ActiveCamera, Camera, CameraConfiguration, CameraConfigurationStatus, Orientation,
};
use libcamera::geometry::Size;
use libcamera::stream::{Stream, StreamRole};

use super::planes::{Format, Layout, YUV420};
use super::{LibcameraError, Want};

/// Configures `active` for one YUV 4:2:0 stream as close to `want` as the camera allows:
/// YUV420 asked for, NV12 taken too (libcamera's `virtual` camera offers only that), any
/// other format, an odd size or a stride narrower than a row refused. Returns the applied
/// configuration (the caller holds it until the camera has started), where the planes are in
/// the stream's buffers, and the stream.
pub(super) fn configure(
    camera: &Camera<'static>,
    active: &mut ActiveCamera<'static>,
    label: &str,
    want: &Want,
) -> Result<(CameraConfiguration, Layout, Stream), LibcameraError> {
    let unsupported = |message: String| LibcameraError::unsupported(label, message);
    let mut config = camera
        .generate_first_supported_configuration(&[
            StreamRole::VideoRecording,
            StreamRole::ViewFinder,
        ])
        .map(|(c, _)| c)
        .ok_or_else(|| unsupported("offers no video stream configuration".into()))?;
    {
        let mut stream = config
            .get_mut(0)
            .ok_or_else(|| unsupported("generated an empty configuration".into()))?;
        stream.set_pixel_format(YUV420);
        stream.set_size(Size::new(want.width, want.height));
        stream.set_buffer_count(want.buffers);
    }
    if let Some(o) = want.orientation {
        config.set_orientation(o);
    }
    match config.validate() {
        CameraConfigurationStatus::Invalid => {
            return Err(unsupported(format!(
                "rejects {}x{} YUV420 output",
                want.width, want.height
            )))
        }
        CameraConfigurationStatus::Adjusted => {
            tracing::info!(camera = label, config = %config.to_string_repr(), "camera adjusted the configuration");
        }
        CameraConfigurationStatus::Valid => {}
    }
    if let Some(o) = want.orientation {
        if config.orientation() != o {
            tracing::warn!(camera = label, wanted = ?o, got = ?config.orientation(), "camera cannot produce the wanted orientation");
        }
    }
    active
        .configure(&mut config)
        .map_err(LibcameraError::device(label, "configure"))?;

    let sc = config
        .get(0)
        .ok_or_else(|| unsupported("lost its stream configuration".into()))?;
    let pixel_format = sc.get_pixel_format();
    let format = [Format::I420, Format::Nv12]
        .into_iter()
        .find(|f| f.pixel_format() == pixel_format)
        .ok_or_else(|| {
            unsupported(format!(
                "offers neither YUV420 nor NV12 output (it proposed {pixel_format}); for USB webcams use the v4l2 source"
            ))
        })?;
    let size = sc.get_size();
    let (w, h) = (size.width as usize, size.height as usize);
    if w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1 {
        return Err(unsupported(format!("configured an odd size {w}x{h}")));
    }
    if (size.width, size.height) != (want.width, want.height) {
        tracing::warn!(
            camera = label,
            "camera delivers {w}x{h} instead of {}x{}",
            want.width,
            want.height
        );
    }
    let stride = sc.get_stride() as usize;
    let layout = Layout {
        format,
        width: w,
        height: h,
        stride,
    };
    if stride < w {
        return Err(unsupported(format!(
            "stride {stride} is less than the width {w}"
        )));
    }
    let stream = sc
        .stream()
        .ok_or_else(|| unsupported("has no stream after configure".into()))?;
    Ok((config, layout, stream))
}

/// picamd's rotation + flips as libcamera's orientation (an EXIF orientation: a rotation
/// applied after an optional horizontal mirror).
pub(super) fn orientation(
    rotation: u32,
    hflip: bool,
    vflip: bool,
) -> Result<Orientation, LibcameraError> {
    if rotation % 90 != 0 || rotation >= 360 {
        return Err(LibcameraError::Orientation(format!(
            "rotation {rotation} is not 0, 90, 180 or 270"
        )));
    }
    // A vertical flip is a horizontal one followed by a half turn.
    let degrees = (rotation + if vflip { 180 } else { 0 }) % 360;
    let mirror = hflip != vflip;
    Ok(match (degrees, mirror) {
        (0, false) => Orientation::Rotate0,
        (0, true) => Orientation::Rotate0Mirror,
        (90, false) => Orientation::Rotate90,
        (90, true) => Orientation::Rotate90Mirror,
        (180, false) => Orientation::Rotate180,
        (180, true) => Orientation::Rotate180Mirror,
        (270, false) => Orientation::Rotate270,
        _ => Orientation::Rotate270Mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientations() {
        assert_eq!(orientation(0, false, false).unwrap(), Orientation::Rotate0);
        assert_eq!(
            orientation(180, false, false).unwrap(),
            Orientation::Rotate180
        );
        assert_eq!(
            orientation(0, true, false).unwrap(),
            Orientation::Rotate0Mirror
        );
        assert_eq!(
            orientation(0, false, true).unwrap(),
            Orientation::Rotate180Mirror
        );
        assert_eq!(orientation(0, true, true).unwrap(), Orientation::Rotate180);
        assert_eq!(orientation(180, true, true).unwrap(), Orientation::Rotate0);
        assert_eq!(
            orientation(90, false, false).unwrap(),
            Orientation::Rotate90
        );
        assert!(orientation(45, false, false).is_err());
        assert!(orientation(360, false, false).is_err());
    }
}
