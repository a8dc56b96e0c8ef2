//! Splitting a `multipart/x-mixed-replace` MJPEG byte stream into JPEG frames.
//!
//! Placeholder: being written (issue 5). The API below is fixed; the implementation is not.

use std::io::Read;

use bytes::Bytes;

/// Bounds that keep a hostile or broken upstream from using unbounded memory.
#[derive(Debug, Clone, Copy)]
pub struct SplitLimits {
    /// Largest JPEG accepted; a larger part is an error.
    pub max_frame_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("not implemented yet")]
    NotImplemented,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads JPEG frames from a multipart body.
pub struct MultipartReader<R: Read> {
    _reader: R,
}

impl<R: Read> MultipartReader<R> {
    /// `boundary` as given in the response's `Content-Type`, if it had one.
    pub fn new(reader: R, _boundary: Option<&str>, _limits: SplitLimits) -> Self {
        MultipartReader { _reader: reader }
    }

    /// The next complete JPEG, or `None` at a clean end of the stream.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, SplitError> {
        Err(SplitError::NotImplemented)
    }
}
