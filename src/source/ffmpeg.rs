//! Anything ffmpeg can read (RTSP, RTMP, HTTP-FLV, HLS, files) through a supervised `ffmpeg`
//! child process.
//!
//! Placeholder: being written (issue 5). The API below is fixed; the implementation is not.

use super::{Source, SourceContext, SourceError, SourceInfo};

/// Settings for [`FfmpegSource`].
#[derive(Debug, Clone, Copy)]
pub struct FfmpegOptions {
    /// Frame size delivered to the encoders (the input is scaled to fit).
    pub width: u32,
    pub height: u32,
    /// Most frames per second taken from the input.
    pub fps: u32,
    /// Files only: start again at the end.
    pub looping: bool,
    /// The input is MJPEG: copy its JPEGs through instead of decoding and re-encoding.
    pub passthrough: bool,
    /// Largest JPEG accepted in pass-through mode.
    pub max_frame_bytes: usize,
}

pub struct FfmpegSource {
    input: String,
    _options: FfmpegOptions,
}

impl FfmpegSource {
    pub fn new(input: String, options: FfmpegOptions) -> Self {
        FfmpegSource {
            input,
            _options: options,
        }
    }
}

impl Source for FfmpegSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "ffmpeg",
            name: self.input.clone(),
        }
    }

    fn run(&mut self, _ctx: &mut SourceContext) -> Result<(), SourceError> {
        Err(SourceError::Unavailable(
            "ffmpeg is not implemented yet".into(),
        ))
    }
}
