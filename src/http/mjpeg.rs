//! `/stream`, `/stream.mjpg`, `/?action=stream`: `multipart/x-mixed-replace` MJPEG.
//!
//! Each part carries `Content-Type`, `Content-Length` and `X-Timestamp` (capture time), and
//! the boundary line is written right after the JPEG bytes, not before the next frame:
//! browsers paint a part only once they see the boundary that ends it. A part is three body
//! chunks (headers, the shared JPEG `Bytes`, the boundary), so no frame is copied per client.
//! The stream always sends the newest frame: a client that reads slowly skips frames. The
//! next frame is picked only once the previous one has been written to the socket (see
//! [`super::backlog`]: otherwise hyper's write buffer would hold most of a second frame, and
//! the kernel's send queue seconds of them), so the frame a slow client gets is current.
//! When no new frame arrives for [`IDLE_RESEND`], the last one is sent again so clients and
//! proxies do not time out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::watch;

use super::backlog::{Stalled, WriteProgress};
use super::limits::{ClientIp, ViewerSlot};
use super::{no_cache_headers, x_timestamp, AppState, HttpError, WRITE_STALL_TIMEOUT};
use crate::frame::EncodedFrame;
use crate::hub::{Output, ViewerGuard};
use crate::shutdown::Shutdown;

/// The response type, naming the boundary `picamdframe`.
const CONTENT_TYPE: &str = "multipart/x-mixed-replace;boundary=picamdframe";
/// Opens the first part.
const OPENING: &[u8] = b"--picamdframe\r\n";
/// Ends the JPEG just sent and opens the next part.
const PART_END: &[u8] = b"\r\n--picamdframe\r\n";
/// Resend the last frame after this long without a new one.
pub const IDLE_RESEND: Duration = Duration::from_secs(1);

/// `progress` is the connection's write counter (set by the accept loop; absent only when
/// the router is driven without a socket).
pub async fn stream(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    progress: Option<Extension<WriteProgress>>,
) -> Response {
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
    let progress = progress.map(|Extension(p)| p);
    // Bytes this response has handed hyper, counted on the connection's scale (whatever it
    // wrote before, e.g. an earlier response, is already behind).
    let yielded = progress.as_ref().map_or(0, WriteProgress::written) + OPENING.len() as u64;
    let mut parts = PartStream {
        progress,
        yielded,
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
    // An error (a client that took nothing for WRITE_STALL_TIMEOUT) aborts the connection.
    let frames = futures_util::stream::unfold(Some(parts), |parts| async move {
        let mut parts = parts?;
        match parts.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(parts))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
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
    /// The connection's write counter, and where it will stand once everything this body
    /// has yielded is written.
    progress: Option<WriteProgress>,
    yielded: u64,
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

    /// The next chunk, `None` to end the response (shutdown), or `Err` for a client that
    /// stopped reading.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, Stalled> {
        loop {
            if let Some(c) = self.queued.iter_mut().find_map(Option::take) {
                self.yielded += c.len() as u64;
                return Ok(Some(c));
            }
            // The previous part must have (nearly) left the machine before the next frame is
            // chosen, or the choice is stale by the time it is sent.
            if let Some(progress) = &self.progress {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Ok(None),
                    r = progress.sent(self.yielded, WRITE_STALL_TIMEOUT) => r?,
                }
            }
            let resend_at = tokio::time::Instant::from_std(self.last_sent_at + IDLE_RESEND);
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(None),
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
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
