//! `/snapshot`, `/snapshot.jpg`, `/?action=snapshot`: one JPEG, always fresh.
//!
//! The handler counts as a viewer while it waits, which wakes an idle source, and it returns
//! the first frame captured after the request arrived, never a frame kept from minutes ago:
//! timelapse tools poll this URL and depend on it. With the stream already running this costs
//! at most one frame interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{no_cache_headers, x_timestamp, AppState, HttpError};
use crate::frame::EncodedFrame;
use crate::hub::Output;

/// Longest wait for a fresh frame, whatever the frame rate.
const MIN_WAIT: Duration = Duration::from_secs(5);

pub async fn snapshot(State(state): State<AppState>) -> Response {
    match fresh_frame(&state).await {
        Ok(frame) => {
            let mut resp = frame.jpeg().into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
            h.extend(no_cache_headers());
            if let Ok(ts) = HeaderValue::from_str(&x_timestamp(frame.captured.wall_us)) {
                h.insert("x-timestamp", ts);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn fresh_frame(state: &AppState) -> Result<Arc<EncodedFrame>, HttpError> {
    let requested = Instant::now();
    let hub = &state.hub;
    let _viewer = hub.add_viewer(Output::Snapshot)?;
    let mut rx = hub.subscribe();
    let interval = Duration::from_secs_f64(1.0 / hub.info().fps.max(1) as f64);
    let wait = MIN_WAIT.max(interval * 3);
    let found = tokio::time::timeout(wait, async {
        loop {
            let newest = rx.borrow_and_update().clone();
            if let Some(f) = newest.filter(|f| f.captured.mono >= requested) {
                return Ok(f);
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => return Err(HttpError::ShuttingDown),
                r = rx.changed() => r.map_err(|_| HttpError::ShuttingDown)?,
            }
        }
    })
    .await;
    found.unwrap_or(Err(HttpError::NoFrame(wait)))
}
