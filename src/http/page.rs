//! `/`: a minimal page that shows the stream. The full canvas player replaces it later.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../web/index.html");

pub async fn index() -> Response {
    let mut resp = INDEX_HTML.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}
