//! WebRTC signalling over HTTP: WHEP (RFC 9725) and the single-POST JSON handshake, in
//! front of the sessions `crate::webrtc` runs.
//!
//! - `POST /whep`, `POST /cam/<name>/whep`: the body is an SDP offer
//!   (`Content-Type: application/sdp`, else `415`); the answer is `201 Created` with the
//!   SDP answer (every candidate in it: no trickle ICE needed), `Location:` the session's
//!   URL (`…/whep/<id>`) and one `Link: <url>; rel="ice-server"` per configured STUN/TURN
//!   server. A malformed offer gets `400`, one without receiving video or without H.264
//!   picamd can send `422`, both with the reason in a text body; past the viewer limits
//!   `503` (or `429` for the per-client limit) with `Retry-After`, as for every stream.
//! - `DELETE` on the session's URL ends it (`204`; `404` for no such session). `PATCH`
//!   (trickle ICE, ICE restarts) is `405`: picamd gathers in full before answering, and
//!   learns a client's own addresses from its connectivity checks. `OPTIONS` says what is
//!   allowed (`Accept-Post: application/sdp`); CORS preflights are answered by the guard.
//! - `POST /webrtc`, `POST /cam/<name>/webrtc`: JSON `{"type":"offer","sdp":…}` (what
//!   OctoPrint's `webrtc://` stream URLs and go2rtc-style clients send after gathering) →
//!   `200` with `{"type":"answer","sdp":…,"id":…,"iceServers":[…]}`. camera-streamer's
//!   handshake (Mainsail's "WebRTC (camera-streamer)" mode) the other way round:
//!   `{"type":"request"}` → `200` with picamd's offer `{"type":"offer","sdp":…,"id":…,
//!   "iceServers":[…]}`, then `{"type":"answer","id":…,"sdp":…}` → `200 {}` (the offer
//!   waits `webrtc_peer_timeout` for it). `{"type":"remote_candidate",…}` → `200`, ignored
//!   (see PATCH above).
//!
//! Authentication, the request rate and CORS apply as to every route (the guard), and a
//! session takes a viewer slot of the server-wide limits like an MJPEG viewer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::limits::ClientIp;
use super::{AppState, HttpError};
use crate::config::IceServer;
use crate::webrtc::{Answer, WebRtc, WebRtcError};

/// Largest offer read: a browser's offer is 3-6 KB (one video section with every codec it
/// knows and its candidates).
const MAX_OFFER: usize = 64 * 1024;

/// The WebRTC server of `state`, and the index of its stream.
fn server(state: &AppState) -> Result<(Arc<WebRtc>, usize), HttpError> {
    let w = state.webrtc.clone().ok_or(HttpError::NotFound)?;
    let i = w
        .stream_index(&state.hub.info().name)
        .ok_or(HttpError::NotFound)?;
    Ok((w, i))
}

/// Checks the offer, takes a viewer slot and answers.
fn answer(state: &AppState, client: ClientIp, body: &[u8]) -> Result<Answer, HttpError> {
    let (webrtc, stream) = server(state)?;
    if body.len() > MAX_OFFER {
        return Err(HttpError::BadRequest(format!(
            "an offer of {} bytes; at most {MAX_OFFER}",
            body.len()
        )));
    }
    let sdp = std::str::from_utf8(body)
        .map_err(|_| HttpError::BadRequest("the offer is not UTF-8 text".into()))?;
    let slot = state.policy.viewers.take(client.0)?;
    webrtc
        .offer(stream, sdp, Some(Box::new(slot)))
        .map_err(webrtc_error)
}

/// `POST …/whep`.
pub async fn post(
    State(state): State<AppState>,
    client: ClientIp,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"));
    if !sdp_type {
        return HttpError::UnsupportedMediaType(
            "a WHEP offer is an SDP body with Content-Type: application/sdp".into(),
        )
        .into_response_for(&path);
    }
    let a = match answer(&state, client, &body) {
        Ok(a) => a,
        Err(e) => return e.into_response_for(&path),
    };
    let location = format!("{}/{}", path.trim_end_matches('/'), a.id);
    let mut resp = (StatusCode::CREATED, a.sdp).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Some(w) = &state.webrtc {
        for s in w.ice_servers() {
            if let Ok(v) = HeaderValue::from_str(&link(s)) {
                h.append(header::LINK, v);
            }
        }
    }
    h.extend(super::no_cache_headers());
    resp
}

/// `Link: <url>; rel="ice-server"` (RFC 9725, section 4.6), with the TURN credentials.
pub fn link(s: &IceServer) -> String {
    let mut l = format!("<{}>; rel=\"ice-server\"", s.urls);
    if let (Some(u), Some(c)) = (&s.username, &s.credential) {
        l.push_str(&format!(
            "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
            quoted(u),
            quoted(c)
        ));
    }
    l
}

/// A value inside a quoted string: backslash and quote escaped.
fn quoted(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `DELETE …/whep/<id>`: ends the session.
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>, uri: Uri) -> Response {
    match server(&state) {
        Ok((w, stream)) if w.end(&id, Some(stream)) => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => HttpError::NoSuchSession.into_response_for(uri.path()),
        Err(e) => e.into_response_for(uri.path()),
    }
}

/// `PATCH …/whep/<id>`: trickle ICE and ICE restarts are not supported.
pub async fn patch() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE, OPTIONS")],
        "picamd gathers every candidate before it answers: no trickle ICE (PATCH)\n",
    )
        .into_response()
}

/// `OPTIONS …/whep`.
pub async fn options_endpoint() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "POST, OPTIONS"),
            (
                header::HeaderName::from_static("accept-post"),
                "application/sdp",
            ),
        ],
    )
        .into_response()
}

/// `OPTIONS …/whep/<id>`.
pub async fn options_session() -> Response {
    (StatusCode::NO_CONTENT, [(header::ALLOW, "DELETE, OPTIONS")]).into_response()
}

/// The JSON handshake's messages.
#[derive(Debug, Deserialize)]
struct JsonMessage {
    #[serde(rename = "type")]
    kind: String,
    sdp: Option<String>,
    /// camera-streamer's: the offer an answer belongs to.
    id: Option<String>,
}

fn webrtc_error(e: WebRtcError) -> HttpError {
    match e {
        WebRtcError::Malformed(m) => HttpError::BadRequest(m),
        WebRtcError::Unacceptable(p) => HttpError::Unprocessable(p.to_string()),
        WebRtcError::TooManyViewers(l) => HttpError::TooManyViewers(l),
        WebRtcError::Internal(m) => HttpError::Internal(m),
    }
}

/// `POST …/webrtc`: one JSON offer, one JSON answer.
pub async fn json(
    State(state): State<AppState>,
    client: ClientIp,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let msg: JsonMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return HttpError::BadRequest(format!(
                "expected JSON {{\"type\":\"offer\",\"sdp\":\"…\"}}: {e}"
            ))
            .into_response_for(&path)
        }
    };
    match (msg.kind.as_str(), msg.sdp) {
        ("offer", Some(sdp)) => match answer(&state, client, sdp.as_bytes()) {
            Ok(a) => session_description(&state, "answer", &a.sdp, &a.id),
            Err(e) => e.into_response_for(&path),
        },
        // Candidates trickled after the offer: not needed (see the module's notes).
        ("remote_candidate", _) => Json(serde_json::json!({})).into_response(),
        // camera-streamer's: picamd offers, the client answers in a second POST.
        ("request", _) => {
            let offered = server(&state).and_then(|(w, stream)| {
                let slot = state.policy.viewers.take(client.0)?;
                w.server_offer(stream, Some(Box::new(slot)))
                    .map_err(webrtc_error)
            });
            match offered {
                Ok(o) => session_description(&state, "offer", &o.sdp, &o.id),
                Err(e) => e.into_response_for(&path),
            }
        }
        ("answer", Some(sdp)) => {
            let Some(id) = msg.id else {
                return HttpError::BadRequest("an answer needs the offer's \"id\"".into())
                    .into_response_for(&path);
            };
            match server(&state).and_then(|(w, _)| w.accept_answer(&id, &sdp).map_err(webrtc_error))
            {
                Ok(()) => Json(serde_json::json!({})).into_response(),
                Err(e) => e.into_response_for(&path),
            }
        }
        (other, _) => HttpError::BadRequest(format!(
            "type {other:?}: send {{\"type\":\"offer\",\"sdp\":\"…\"}}"
        ))
        .into_response_for(&path),
    }
}

/// picamd's side of a JSON handshake: `{type, sdp, id, iceServers}`, never cached.
fn session_description(state: &AppState, kind: &str, sdp: &str, id: &str) -> Response {
    let ice: &[IceServer] = state.webrtc.as_ref().map_or(&[], |w| w.ice_servers());
    let mut resp = Json(serde_json::json!({
        "type": kind,
        "sdp": sdp,
        "id": id,
        "iceServers": ice,
    }))
    .into_response();
    resp.headers_mut().extend(super::no_cache_headers());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_become_link_headers() {
        let stun = IceServer::parse("stun:stun.example.net:3478").unwrap();
        assert_eq!(
            link(&stun),
            "<stun:stun.example.net:3478>; rel=\"ice-server\""
        );
        let turn = IceServer::parse("turn:al\"ice:pw@turn.example.net:3478?transport=udp").unwrap();
        assert_eq!(
            link(&turn),
            "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; \
             username=\"al\\\"ice\"; credential=\"pw\"; credential-type=\"password\""
        );
    }
}
