//! `/controls`: read and change the camera's settings at runtime.
//!
//! - `GET /controls` → `{"supported": {"brightness": true, …}, "current": {…}}`
//! - `POST /controls` with a JSON object of the controls to change (see
//!   [`crate::source::controls::Controls`]; unnamed controls keep their values) → the same
//!   report on success. Errors are JSON `{"error": "…"}`: 400 for malformed JSON, unknown
//!   names or out-of-range values (the message names the control), 422 with `"unsupported":
//!   […]` when the camera lacks a named control (nothing is applied), 503 while the camera is
//!   not running, 404 when the source has no controls at all.
//! - `POST` needs `Content-Type: application/json` (else 415): a cross-site page can only send
//!   that after a CORS preflight, which picamd refuses unless `cors_origins` lists the page,
//!   so a form on another site cannot change the camera with a LAN visitor's browser.
//! - With `controls_api = "off"`, `POST` answers 403 and changes nothing; `GET` still reports.
//!   With authentication on, both need credentials, like every other URL.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::source::controls::{ControlError, Controls};

/// Largest request body accepted, in bytes.
const MAX_BODY: usize = 16 * 1024;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub async fn get_controls(State(state): State<AppState>) -> Response {
    match &state.controls {
        Some(c) => Json(c.report()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this source has no adjustable controls",
        ),
    }
}

pub async fn set_controls(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.policy.controls_api {
        return error(
            StatusCode::FORBIDDEN,
            "changing controls is switched off (controls_api = \"off\")",
        );
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the controls as Content-Type: application/json",
        );
    }
    let Some(handle) = &state.controls else {
        return error(
            StatusCode::NOT_FOUND,
            "this source has no adjustable controls",
        );
    };
    if body.len() > MAX_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY} bytes"),
        );
    }
    let wanted: Controls = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid controls: {e}")),
    };
    if wanted.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no controls named");
    }
    // Applying may wait for the camera thread to write the values: keep it off the runtime.
    let (h, w) = (handle.clone(), wanted.clone());
    let applied = match tokio::task::spawn_blocking(move || h.apply(&w)).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("controls task failed: {e}"),
            )
        }
    };
    match applied {
        Ok(()) => {
            tracing::info!(controls = ?wanted.names(), "controls applied");
            Json(handle.report()).into_response()
        }
        Err(ControlError::Unsupported(names)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": format!("not supported by this camera: {}", names.join(", ")),
                "unsupported": names,
            })),
        )
            .into_response(),
        Err(e @ ControlError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ ControlError::Rejected(_)) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
