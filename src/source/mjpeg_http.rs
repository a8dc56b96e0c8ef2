//! Upstream MJPEG over HTTP: another streamer's `multipart/x-mixed-replace` stream, its JPEGs
//! passed through without re-encoding.
//!
//! Placeholder: being written (issue 5). The API below is fixed; the implementation is not.

use super::{Source, SourceContext, SourceError, SourceInfo};

/// Settings for [`MjpegHttpSource`].
#[derive(Debug, Clone, Copy)]
pub struct MjpegHttpOptions {
    /// Largest JPEG accepted from the upstream; a larger part is an error (and a reconnect).
    pub max_frame_bytes: usize,
}

/// Checks that `url` is an upstream this source can read (`http://host[:port]/path`).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http:// URL"))
    }
}

pub struct MjpegHttpSource {
    url: String,
    _options: MjpegHttpOptions,
}

impl MjpegHttpSource {
    pub fn new(url: &str, options: MjpegHttpOptions) -> Result<Self, String> {
        check_url(url)?;
        Ok(MjpegHttpSource {
            url: url.to_owned(),
            _options: options,
        })
    }
}

impl Source for MjpegHttpSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "mjpeg-http",
            name: self.url.clone(),
        }
    }

    fn run(&mut self, _ctx: &mut SourceContext) -> Result<(), SourceError> {
        Err(SourceError::Unavailable(
            "upstream MJPEG is not implemented yet".into(),
        ))
    }
}
