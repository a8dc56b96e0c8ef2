//! CORS: which other sites' pages may read picamd's responses and open its WebSocket.
//!
//! Off by default: no CORS headers, so browsers keep other sites' scripts out (an `<img>` of
//! `/stream` still works anywhere, as images always do). `cors_origins` lists origins
//! (`https://octopi.local`, `http://192.168.1.5:5000`) whose pages may; those get their
//! `Origin` echoed with `Access-Control-Allow-Credentials: true` (so Basic credentials and
//! the `Authorization` header work), and every response carries `Vary: Origin` so caches keep
//! them apart. `"*"` allows any page, without credentials (browsers refuse `*` with them); the
//! bearer token in a header or `?token=` still works then. Preflights (`OPTIONS` with
//! `Access-Control-Request-Method`) are answered here, before authentication, since browsers
//! never send credentials on them. `/ws` uses [`CorsPolicy::allows`] in its `Origin` check.
//!
//! Hand-written rather than `tower-http`'s `CorsLayer`: the same list must also drive the
//! `/ws` Origin check and decorate the 401/429 answers of the guard in front of the routes,
//! and this is a few dozen lines against a new dependency.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

pub use crate::access::CorsPolicy;

/// Methods a cross-origin page may use.
/// (DELETE ends a WHEP session; PATCH is WHEP's, answered 405.)
const ALLOW_METHODS: &str = "GET, POST, DELETE, PATCH, OPTIONS";
/// Request headers a cross-origin page may send.
const ALLOW_HEADERS: &str = "Authorization, Content-Type";
/// Response headers a cross-origin page may read beyond the basic ones.
/// (`Location` and `Link` carry a WHEP session's URL and its ICE servers.)
const EXPOSE_HEADERS: &str = "X-Timestamp, Retry-After, WWW-Authenticate, Location, Link";
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE_S: &str = "600";

impl CorsPolicy {
    /// The answer to a CORS preflight, or `None` when `method`/`headers` are not one.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let vary = HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        if !allowed {
            let mut resp = (
                StatusCode::FORBIDDEN,
                "this origin may not use picamd (see cors_origins)\n",
            )
                .into_response();
            resp.headers_mut().insert(header::VARY, vary);
            return Some(resp);
        }
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        self.allow_origin(origin, h);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE_S),
        );
        h.insert(header::VARY, vary);
        Some(resp)
    }

    /// Adds the CORS headers to a response for a request that had `origin`.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if self.is_off() {
            return;
        }
        if !self.any {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = origin else { return };
        if origin.to_str().is_ok_and(|o| self.allows(o)) {
            self.allow_origin(origin, headers);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }

    fn allow_origin(&self, origin: &HeaderValue, h: &mut HeaderMap) {
        if self.any {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> CorsPolicy {
        CorsPolicy::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn origins_are_checked_and_normalised() {
        let p = policy(&[
            "https://OctoPi.local",
            "http://192.168.1.5:5000",
            "http://a:80",
        ]);
        assert!(p.allows("https://octopi.local"));
        assert!(p.allows("HTTPS://OCTOPI.LOCAL"));
        assert!(p.allows("http://192.168.1.5:5000"));
        assert!(p.allows("http://a"));
        assert!(!p.allows("http://octopi.local"), "scheme matters");
        assert!(!p.allows("https://octopi.local:8443"), "port matters");
        assert!(!p.allows("https://evil.octopi.local"));
        assert!(!p.allows("null"));
        assert!(policy(&["*"]).allows("https://anything.example"));
        assert!(CorsPolicy::default().is_off());
        assert!(!CorsPolicy::default().allows("http://x"));
        for bad in [
            "octopi.local",
            "https://octopi.local/",
            "https://octopi.local/path",
            "ftp://x",
            "https://",
            "https://user@host",
            "https://*.example",
            "https://host:port",
        ] {
            assert!(CorsPolicy::new(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(CorsPolicy::new(&["http://[::1]:8080".to_string()]).is_ok());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn responses_echo_allowed_origins_only() {
        let p = policy(&["https://octopi.local"]);
        let ok = HeaderValue::from_static("https://octopi.local");
        let mut h = HeaderMap::new();
        p.decorate(Some(&ok), &mut h);
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://octopi.local"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::VARY], "Origin");

        let mut h = HeaderMap::new();
        p.decorate(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut h,
        );
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(h[header::VARY], "Origin");

        let mut h = HeaderMap::new();
        CorsPolicy::default().decorate(Some(&ok), &mut h);
        assert!(h.is_empty(), "no CORS configured: no headers");

        let mut h = HeaderMap::new();
        policy(&["*"]).decorate(Some(&ok), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn preflights_are_answered() {
        let p = policy(&["https://octopi.local"]);
        let pre = headers(&[
            ("origin", "https://octopi.local"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ]);
        let r = p.preflight(&Method::OPTIONS, &pre).unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://octopi.local"
        );
        assert!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .contains("Authorization"));

        let evil = headers(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ]);
        let r = p.preflight(&Method::OPTIONS, &evil).unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(!r
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

        // Not preflights: a plain OPTIONS, or another method.
        assert!(p
            .preflight(
                &Method::OPTIONS,
                &headers(&[("origin", "https://octopi.local")])
            )
            .is_none());
        assert!(p.preflight(&Method::GET, &pre).is_none());
    }
}
