//! Entry points for the fuzz targets in `fuzz/`: the parsers that read what clients and
//! upstreams send but that picamd does not export. Built only by cargo-fuzz (which passes
//! `--cfg fuzzing`), so picamd's API does not grow for them. Parsers that are already public
//! (credentials, CORS, controls, the config file, the multipart splitter) are fuzzed through
//! their own API.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue};

use crate::source::mjpeg_http;

/// The reply to one WebSocket text message from a viewer.
pub fn ws_reply(message: &str) -> serde_json::Value {
    crate::http::ws::reply_to(message)
}

/// Whether a WebSocket handshake with these `Origin` and `Host` values counts as same-origin.
pub fn ws_same_origin(origin: Option<HeaderValue>, host: Option<HeaderValue>) -> bool {
    let mut headers = HeaderMap::new();
    if let Some(o) = origin {
        headers.insert(header::ORIGIN, o);
    }
    if let Some(h) = host {
        headers.insert(header::HOST, h);
    }
    crate::http::ws::same_origin(&headers)
}

/// The `Location` of the plain-HTTP → HTTPS redirect, or the error's message.
pub fn https_location(
    host_header: Option<&[u8]>,
    local: Option<IpAddr>,
    https_port: u16,
    path_and_query: &str,
) -> Result<HeaderValue, String> {
    crate::http::https_location(host_header, local, https_port, path_and_query)
        .map_err(|e| e.to_string())
}

/// An upstream MJPEG server's response head, as the MJPEG-over-HTTP source reads it.
#[derive(Debug)]
pub struct UpstreamHead {
    pub boundary: Option<String>,
    pub chunked: bool,
    pub length: Option<usize>,
    pub body_at: usize,
    pub unverified: Option<String>,
}

/// Parses an upstream's response head: `Ok(None)` while incomplete.
pub fn upstream_head(data: &[u8]) -> Result<Option<UpstreamHead>, String> {
    match mjpeg_http::parse_response_head(data) {
        Ok(head) => Ok(head.map(|h| UpstreamHead {
            boundary: h.boundary,
            chunked: h.chunked,
            length: h.length,
            body_at: h.body_at,
            unverified: h.unverified,
        })),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// The upstream source's `Transfer-Encoding: chunked` decoder.
#[derive(Debug, Default)]
pub struct Dechunker(mjpeg_http::Dechunker);

impl Dechunker {
    /// Decodes `data`, handing the body's bytes to `out`; `out`'s error stops it.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        self.0.feed(data, out)
    }

    /// Whether the last chunk and the trailer have been read.
    pub fn done(&self) -> bool {
        self.0.done()
    }

    /// Bytes of an unfinished chunk-size or trailer line held back.
    pub fn line_len(&self) -> usize {
        self.0.line_len()
    }
}

/// Feeds `input` to one RTSP connection's request path (parse, authenticate, dispatch) as
/// if it arrived in `cut`-byte reads, over a stream named `main` whose track has no unit
/// yet, with authentication on when `auth` is set (user `alice`, password `pw`, with a
/// Digest HA1; token `tok`). Returns what the server wrote back and whether it closed the
/// connection.
pub fn rtsp_exchange(input: &[u8], cut: usize, auth: bool) -> (Vec<u8>, bool) {
    crate::rtsp::fuzz_exchange(input, cut, auth)
}
