//! The encoder pool: YUV 4:2:0 frames in, JPEGs out to an [`EncodeSink`] (the pipeline
//! connects it to the stream's hub; this module knows no hub and no source).
//!
//! N worker threads (`enc-0`, `enc-1`, …) each own one reusable TurboJPEG compressor and one
//! worst-case-sized output buffer, allocated once. A worker compresses straight from the
//! source's planes (`tj3CompressFromYUVPlanes8`: no colour conversion, no copy of the input),
//! then copies the compressed bytes once into an exact-size buffer behind the WebSocket
//! header (see [`EncodedFrame::new`]). That one copy is ~2 % of the encode time and keeps
//! every frame held by a slow client at its real size instead of the worst case.
//!
//! Frames reach the workers through a zero-capacity channel: `submit` succeeds only if a
//! worker is idle, otherwise the frame is dropped at once, so the source never waits and no
//! queue of stale frames can build up. Frames that finish out of order are dropped by the
//! sink (the hub keeps only the newest). Already-encoded JPEG frames bypass the workers.
//!
//! With a hardware JPEG encoder (`jpeg_encoder`, [`fallback::JpegBackend`]) the pool has one
//! worker, which feeds the device: the device encodes one frame at a time however many
//! threads feed it, and more workers would only encode the frames it is busy for in
//! software, burning the CPU the device is there to spare. TurboJPEG stays that worker's
//! fallback when the device fails.

pub mod fallback;
pub mod h264;
pub mod m2m;

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use turbojpeg::{Compressor, Subsamp, YuvPlanesImage};

use crate::frame::{planes_hold, EncodedFrame, Frame, Payload, Yuv420Buffer};
use fallback::{EncoderNews, JpegBackend};

/// Where encoded frames go, and what the pool tells about its work.
pub trait EncodeSink: Send + Sync + 'static {
    /// A frame ready to send (encoded here, or a JPEG that came ready-made).
    fn publish(&self, frame: EncodedFrame);
    /// What happened to one frame, for the counters.
    fn count(&self, event: EncodeEvent);
    /// The encoder changed (a hardware one opened, or failed and software took over).
    fn encoder_news(&self, _news: EncoderNews) {}
}

/// Counted outcomes of the pool's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeEvent {
    /// A worker encoded a frame in this long.
    Encoded(Duration),
    /// A worker failed to encode a frame; it was dropped.
    Failed,
    /// Every worker was busy; the frame was dropped.
    Busy,
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("turbojpeg: {0}")]
    Turbo(#[from] turbojpeg::Error),
    #[error("frame {width}x{height} has planes too small for its strides")]
    BadPlanes { width: u32, height: u32 },
}

/// Handle used to submit frames; cheap to clone.
#[derive(Clone)]
pub struct EncoderPool {
    tx: SyncSender<Frame>,
    sink: Arc<dyn EncodeSink>,
}

/// The worker threads; joining waits for them to finish after every pool handle is dropped.
pub struct EncoderThreads {
    handles: Vec<JoinHandle<()>>,
}

impl EncoderThreads {
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

impl EncoderPool {
    /// Starts `workers` threads that encode at `quality` into `sink`; with `hardware` (an
    /// M2M JPEG encoder node and the stream's frame rate), one thread that uses it.
    pub fn start(
        workers: usize,
        quality: u8,
        sink: Arc<dyn EncodeSink>,
        hardware: Option<(std::path::PathBuf, u32)>,
    ) -> std::io::Result<(EncoderPool, EncoderThreads)> {
        let workers = if hardware.is_some() { 1 } else { workers };
        let (tx, rx) = mpsc::sync_channel::<Frame>(0);
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (rx, sink, hardware) = (rx.clone(), sink.clone(), hardware.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("enc-{i}"))
                    .spawn(move || worker(rx, sink, quality, hardware))?,
            );
        }
        Ok((EncoderPool { tx, sink }, EncoderThreads { handles }))
    }

    /// Hands `frame` to an idle worker, or drops it if all are busy; `false` when dropped.
    /// Never blocks.
    pub fn submit(&self, frame: Frame) -> bool {
        if let Payload::Jpeg(jpeg) = &frame.payload {
            self.sink.publish(EncodedFrame::for_frame(&frame, jpeg));
            return true;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.sink.count(EncodeEvent::Busy);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::debug!("encoder pool stopped; frame dropped");
                false
            }
        }
    }
}

fn worker(
    rx: Arc<Mutex<Receiver<Frame>>>,
    sink: Arc<dyn EncodeSink>,
    quality: u8,
    hardware: Option<(std::path::PathBuf, u32)>,
) {
    let report = {
        let sink = sink.clone();
        Arc::new(move |news| sink.encoder_news(news))
    };
    let mut encoder = match JpegBackend::new(quality, hardware, report) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a JPEG compressor; worker exits");
            return;
        }
    };
    loop {
        // Only one idle worker waits in recv(); the others wait for the lock. Either way
        // they are idle, and a zero-capacity try_send succeeds while one of them receives.
        let frame = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(f) => f,
                Err(_) => return,
            }
        };
        let Payload::Yuv420(planes) = &frame.payload else {
            continue;
        };
        let start = Instant::now();
        match encoder.encode(planes.as_ref(), frame.width, frame.height, quality) {
            Ok(jpeg) => {
                sink.count(EncodeEvent::Encoded(start.elapsed()));
                let encoded = EncodedFrame::for_frame(&frame, jpeg);
                // Give the planes back to their owner before publishing.
                drop(frame);
                sink.publish(encoded);
            }
            Err(e) => {
                sink.count(EncodeEvent::Failed);
                tracing::warn!(seq = frame.seq, error = %e, "encode failed; frame dropped");
            }
        }
    }
}

/// One reusable compressor and output buffer: the unit of work of a worker, also used
/// directly by the encode benchmark.
pub struct JpegEncoder {
    compressor: Compressor,
    quality: u8,
    out: Vec<u8>,
    out_for: (u32, u32),
}

impl JpegEncoder {
    pub fn new(quality: u8) -> Result<Self, EncodeError> {
        let mut compressor = Compressor::new()?;
        compressor.set_quality(quality as i32)?;
        compressor.set_subsamp(Subsamp::Sub2x2)?;
        Ok(JpegEncoder {
            compressor,
            quality,
            out: Vec::new(),
            out_for: (0, 0),
        })
    }

    /// Compresses 4:2:0 planes; the returned slice is valid until the next call.
    pub fn encode(
        &mut self,
        planes: &dyn Yuv420Buffer,
        width: u32,
        height: u32,
        quality: u8,
    ) -> Result<&[u8], EncodeError> {
        if quality != self.quality {
            self.compressor.set_quality(quality as i32)?;
            self.quality = quality;
        }
        // TurboJPEG reads `stride * rows` bytes per plane; check rather than trust the source.
        if !planes_hold(planes, width, height) {
            return Err(EncodeError::BadPlanes { width, height });
        }
        let [y, u, v] = planes.planes();
        let [ys, us, vs] = planes.strides();
        let (w, h) = (width as usize, height as usize);
        if self.out_for != (width, height) {
            // Sized once for the worst case so TurboJPEG never reallocates.
            let len = turbojpeg::compressed_buf_len(w, h, Subsamp::Sub2x2)?;
            self.out = vec![0; len];
            self.out_for = (width, height);
        }
        let image = YuvPlanesImage {
            y_plane: y,
            u_plane: u,
            v_plane: v,
            width: w,
            height: h,
            y_stride: ys,
            u_stride: us,
            v_stride: vs,
            subsamp: Subsamp::Sub2x2,
        };
        let n = self
            .compressor
            .compress_yuv_planes_to_slice(&image, &mut self.out)?;
        Ok(&self.out[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three separately allocated planes with a row stride of `stride` (chroma: half).
    struct Planes {
        y: Vec<u8>,
        u: Vec<u8>,
        v: Vec<u8>,
        stride: usize,
    }

    impl Planes {
        fn new(stride: usize, h: usize) -> Self {
            let y = (0..stride * h).map(|i| (i % 251) as u8).collect();
            let c = vec![128u8; (stride / 2) * (h / 2)];
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

    #[test]
    fn encodes_padded_planes_to_a_decodable_jpeg() {
        // Stride wider than the image, as cameras deliver.
        let (w, h, stride) = (64usize, 48usize, 96usize);
        let planes = Planes::new(stride, h);
        let mut enc = JpegEncoder::new(80).unwrap();
        let jpeg = enc
            .encode(&planes, w as u32, h as u32, 80)
            .unwrap()
            .to_vec();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let header = turbojpeg::read_header(&jpeg).unwrap();
        assert_eq!((header.width, header.height), (w, h));
        // A lower quality gives a smaller file from the same planes.
        let small = enc.encode(&planes, w as u32, h as u32, 10).unwrap().len();
        assert!(small < jpeg.len());
    }

    #[test]
    fn rejects_planes_smaller_than_declared() {
        let mut planes = Planes::new(64, 48);
        planes.v.truncate(10);
        let mut enc = JpegEncoder::new(80).unwrap();
        assert!(matches!(
            enc.encode(&planes, 64, 48, 80),
            Err(EncodeError::BadPlanes { .. })
        ));
    }
}
