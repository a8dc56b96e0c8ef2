//! `/stream`, `/stream.mjpg`, `/?action=stream`: `multipart/x-mixed-replace` MJPEG.
//!
//! Each part carries `Content-Type`, `Content-Length` and `X-Timestamp` (capture time), and
//! the boundary line is written right after the JPEG bytes, not before the next frame:
//! browsers paint a part only once they see the boundary that ends it. A part is three body
//! chunks (headers, the shared JPEG `Bytes`, the boundary), so no frame is copied per client.
//! The stream always sends the newest frame: a client that reads slowly skips frames. When
//! no new frame arrives for [`IDLE_RESEND`], the last one is sent again so clients and
//! proxies do not time out.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::watch;

use super::limits::{ClientIp, ViewerSlot};
use super::{no_cache_headers, x_timestamp, AppState, HttpError};
use crate::hub::{EncodedFrame, Output, ViewerGuard};
use crate::shutdown::Shutdown;

/// The response type, naming the boundary `picamdframe`.
const CONTENT_TYPE: &str = "multipart/x-mixed-replace;boundary=picamdframe";
/// Opens the first part.
const OPENING: &[u8] = b"--picamdframe\r\n";
/// Ends the JPEG just sent and opens the next part.
const PART_END: &[u8] = b"\r\n--picamdframe\r\n";
/// Resend the last frame after this long without a new one.
pub const IDLE_RESEND: Duration = Duration::from_secs(1);

pub async fn stream(State(state): State<AppState>, ClientIp(ip): ClientIp) -> Response {
    let slot = match state.policy.viewers.take(ip) {
        Ok(s) => s,
        Err(e) => return HttpError::from(e).into_response(),
    };
    let guard = match state.hub.add_viewer(Output::Mjpeg) {
        Ok(g) => g,
        Err(e) => return HttpError::from(e).into_response(),
    };
    let mut rx = state.hub.subscribe();
    rx.mark_unchanged();
    let first = state.hub.latest_if_fresh();
    let mut parts = PartStream {
        rx,
        shutdown: state.shutdown.clone(),
        _guard: guard,
        _slot: slot,
        queued: [None, None, None],
        last: first.clone(),
        last_sent_at: Instant::now(),
    };
    parts.queue(first.as_deref());
    let opening = futures_util::stream::once(async { Ok(Bytes::from_static(OPENING)) });
    let frames = futures_util::stream::unfold(parts, |mut parts| async move {
        let chunk = parts.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), parts))
    });
    let body = futures_util::StreamExt::chain(opening, frames);
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.extend(no_cache_headers());
    resp
}

/// Produces body chunks: three per frame, newest frame first.
struct PartStream {
    rx: watch::Receiver<Option<Arc<EncodedFrame>>>,
    shutdown: Shutdown,
    _guard: ViewerGuard,
    _slot: ViewerSlot,
    /// Chunks of the part being sent, in order.
    queued: [Option<Bytes>; 3],
    last: Option<Arc<EncodedFrame>>,
    last_sent_at: Instant,
}

impl PartStream {
    fn queue(&mut self, frame: Option<&EncodedFrame>) {
        let Some(f) = frame else { return };
        let jpeg = f.jpeg();
        let head = format!(
            "Content-Type: image/jpeg\r\nContent-Length: {}\r\nX-Timestamp: {}\r\n\r\n",
            jpeg.len(),
            x_timestamp(f.captured.wall_us)
        );
        self.queued = [
            Some(Bytes::from(head)),
            Some(jpeg),
            Some(Bytes::from_static(PART_END)),
        ];
        self.last_sent_at = Instant::now();
    }

    /// The next chunk, or `None` to end the response (shutdown).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(c) = self.queued.iter_mut().find_map(Option::take) {
                return Some(c);
            }
            let resend_at = tokio::time::Instant::from_std(self.last_sent_at + IDLE_RESEND);
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                changed = self.rx.changed() => {
                    changed.ok()?;
                    self.last = self.rx.borrow_and_update().clone();
                }
                _ = tokio::time::sleep_until(resend_at) => {}
            }
            let frame = self.last.clone();
            match frame {
                Some(f) => self.queue(Some(&f)),
                // Nothing published yet: wait again rather than busy-loop on the timer.
                None => self.last_sent_at = Instant::now(),
            }
        }
    }
}
