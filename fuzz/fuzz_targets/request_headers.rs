//! The request headers picamd itself interprets: `Host` for the plain-HTTP → HTTPS redirect,
//! `Origin`/`Host` for the WebSocket same-origin check, and `Origin` with the `cors_origins`
//! list for CORS answers and preflights.
//!
//! Checks: no panic; a redirect's `Location` is `https://` + a plain host (nothing a crafted
//! `Host` could use to point elsewhere, add user info or a path) + the request's own path;
//! CORS headers appear only for an origin the list allows, and never `*` with credentials.
#![no_main]

use std::net::IpAddr;

use http::{header, HeaderMap, HeaderValue, Method};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use picamd::fuzzing::{https_location, ws_same_origin};
use picamd::http::cors::CorsPolicy;

#[derive(Arbitrary, Debug)]
struct Input {
    host: Option<Vec<u8>>,
    origin: Option<Vec<u8>>,
    local: Option<IpAddr>,
    https_port: u16,
    /// What hyper hands over as the path and query of a request it accepted.
    path: PathKind,
    cors_origins: Vec<String>,
    preflight_method: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
enum PathKind {
    Origin(String),
    Asterisk,
}

fuzz_target!(|input: Input| {
    let path = match &input.path {
        // Origin-form targets start with a slash and are visible ASCII (hyper refuses others).
        PathKind::Origin(p) => {
            if p.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return;
            }
            format!("/{p}")
        }
        PathKind::Asterisk => "*".to_owned(),
    };
    match https_location(input.host.as_deref(), input.local, input.https_port, &path) {
        Ok(location) => {
            let location = location.to_str().expect("Location is visible ASCII");
            let rest = location.strip_prefix("https://").expect("an https URL");
            let authority = rest
                .strip_suffix(path.as_str())
                .expect("the request's path kept");
            assert!(!authority.is_empty(), "no host in {location:?}");
            assert!(
                authority
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c)),
                "authority {authority:?} in {location:?}"
            );
            if input.https_port != 443 {
                assert!(authority.ends_with(&format!(":{}", input.https_port)));
            }
        }
        Err(message) => {
            // Refused only for a missing or bad Host.
            assert!(message.contains("Host") || message.contains("request target"));
            if input.host.is_none() {
                assert!(
                    input.local.is_none(),
                    "no Host, but the local address {:?}",
                    input.local
                );
            }
        }
    }

    let origin = input
        .origin
        .as_deref()
        .and_then(|o| HeaderValue::from_bytes(o).ok());
    let host = input
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_bytes(h).ok());
    if ws_same_origin(origin.clone(), host.clone()) {
        if let Some(o) = origin.as_ref() {
            // Same-origin only when the origin's host and port are exactly the Host header.
            let o = o.to_str().expect("a matching origin is text");
            let h = host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .expect("a Host to match");
            let (_, origin_host) = o.split_once("://").expect("an origin with a scheme");
            assert!(origin_host.eq_ignore_ascii_case(h));
        }
    }

    let Ok(policy) = CorsPolicy::new(&input.cors_origins) else {
        return;
    };
    let any = input.cors_origins.iter().any(|o| o == "*");
    let check = |headers: &HeaderMap| {
        let Some(allowed) = headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN) else {
            return;
        };
        let credentials = headers.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        if allowed == "*" {
            assert!(any, "* without \"*\" in the list");
            assert!(!credentials, "* with credentials");
        } else {
            let o = origin.as_ref().expect("an origin echoed without one");
            assert_eq!(allowed, o, "another origin echoed");
            assert!(policy.allows(o.to_str().unwrap()));
            assert!(!any && credentials);
        }
    };
    let mut headers = HeaderMap::new();
    policy.decorate(origin.as_ref(), &mut headers);
    check(&headers);
    if policy.is_off() {
        assert!(headers.is_empty(), "CORS headers while CORS is off");
    }

    let mut request = HeaderMap::new();
    if let Some(o) = &origin {
        request.insert(header::ORIGIN, o.clone());
    }
    if let Some(m) = input
        .preflight_method
        .as_deref()
        .and_then(|m| HeaderValue::from_bytes(m).ok())
    {
        request.insert(header::ACCESS_CONTROL_REQUEST_METHOD, m);
    }
    if let Some(answer) = policy.preflight(&Method::OPTIONS, &request) {
        assert!(origin.is_some() && request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD));
        let allowed = origin
            .as_ref()
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| policy.allows(o));
        assert_eq!(answer.status().is_success(), allowed);
        check(answer.headers());
    }
    assert!(policy.preflight(&Method::GET, &request).is_none());
});
