//! `/assets/<file>`: the web player's ES modules, CSS and page, embedded in the binary.
//!
//! Plain files, no bundler: the browser loads the modules as they are written in `src/web/`.
//! [`ASSETS`] must list every file of that folder; a unit test checks it.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every embedded file: name under `/assets/`, content type, bytes.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../web/app.js")),
    ("backoff.js", JS, include_bytes!("../web/backoff.js")),
    (
        "camera-source.js",
        JS,
        include_bytes!("../web/camera-source.js"),
    ),
    (
        "canvas-renderer.js",
        JS,
        include_bytes!("../web/canvas-renderer.js"),
    ),
    ("clock.js", JS, include_bytes!("../web/clock.js")),
    (
        "frame-header.js",
        JS,
        include_bytes!("../web/frame-header.js"),
    ),
    ("grid.js", JS, include_bytes!("../web/grid.js")),
    ("index.html", HTML, include_bytes!("../web/index.html")),
    ("main.js", JS, include_bytes!("../web/main.js")),
    (
        "mjpeg-source.js",
        JS,
        include_bytes!("../web/mjpeg-source.js"),
    ),
    ("options.js", JS, include_bytes!("../web/options.js")),
    (
        "player-state.js",
        JS,
        include_bytes!("../web/player-state.js"),
    ),
    ("player.css", CSS, include_bytes!("../web/player.css")),
    ("player.js", JS, include_bytes!("../web/player.js")),
    ("rate.js", JS, include_bytes!("../web/rate.js")),
    ("streams.js", JS, include_bytes!("../web/streams.js")),
    ("ui.js", JS, include_bytes!("../web/ui.js")),
    (
        "video-frames.js",
        JS,
        include_bytes!("../web/video-frames.js"),
    ),
    (
        "webcodecs-source.js",
        JS,
        include_bytes!("../web/webcodecs-source.js"),
    ),
    (
        "webrtc-source.js",
        JS,
        include_bytes!("../web/webrtc-source.js"),
    ),
    ("ws-source.js", JS, include_bytes!("../web/ws-source.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The bytes of an embedded file.
pub fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, bytes)| (*ct, *bytes))
}

pub async fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}

pub fn serve(name: &str) -> Response {
    let Some((content_type, bytes)) = find(name) else {
        return super::HttpError::NotFound.into_response();
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary; revalidating costs little on a LAN and never leaves a
    // browser running an old player against a new server.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_web_file_is_embedded_once() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/web");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|(n, _, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "src/web and ASSETS differ");
    }

    #[test]
    fn content_types_follow_the_extension() {
        for (name, ct, _) in ASSETS {
            let want = match name.rsplit('.').next() {
                Some("js") => JS,
                Some("css") => CSS,
                Some("html") => HTML,
                other => panic!("unexpected asset type {other:?}"),
            };
            assert_eq!(*ct, want, "{name}");
        }
    }
}
