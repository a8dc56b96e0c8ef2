//! The guard in front of every route: request rate, CORS, authentication.
//!
//! In order, for each request:
//! 1. the client's request rate ([`RequestLimiter`]) → `429` with `Retry-After`;
//! 2. a CORS preflight is answered ([`CorsPolicy::preflight`]);
//! 3. with authentication on, credentials are checked ([`Authenticator`]): an
//!    `Authorization: Basic …` or `Bearer …` header, else a `?token=` query parameter, else
//!    the `picamd_token` cookie. None or wrong → `401` with `WWW-Authenticate: Basic
//!    realm="picamd", charset="UTF-8"`; a client locked out after too many failures → `429`
//!    with `Retry-After`;
//! 4. the route runs, and CORS headers are added to whatever it answers (401s included, so
//!    a permitted page can tell a login problem from a network one).
//!
//! The cookie is what lets a page opened as `/?token=…` load its own modules, `/state`,
//! `/ws` and `/stream`, which it requests without the query: a request let in by `?token=`
//! gets `Set-Cookie: picamd_token=<token>; Path=/; HttpOnly; SameSite=Strict` (a session
//! cookie; `; Secure` over HTTPS). A `401` for a request that relied on the cookie clears
//! it, so the browser stops sending a revoked token. A wrong cookie counts as a failed
//! attempt like a wrong `?token=`.
//!
//! `/healthz` skips 1 and 3: service monitors need it without credentials, and it says
//! nothing about the camera. Viewer slots are taken by the stream handlers themselves, since
//! only they know how long a viewer stays.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::cors::CorsPolicy;
use super::forwarded::TrustedProxies;
use super::limits::{ClientAddr, RequestLimiter, ViewerSlots};
use super::{HttpError, Tls};
use crate::auth::{
    cookie_value, is_cookie_value, AuthError, Authenticator, ClientKey, Credentials, Verdict,
    TOKEN_COOKIE,
};
use crate::config::SecurityConfig;

/// The path that stays open whatever the configuration.
const OPEN_PATH: &str = "/healthz";

/// Everything the guard and the handlers enforce, shared by every stream.
#[derive(Debug)]
pub struct Policy {
    pub auth: Arc<Authenticator>,
    pub cors: CorsPolicy,
    /// Whether `POST /controls` may change settings.
    pub controls_api: bool,
    pub viewers: Arc<ViewerSlots>,
    pub requests: Option<RequestLimiter>,
    /// Proxies whose `X-Forwarded-For` is believed; read by the accept loop, which sets each
    /// request's [`ClientAddr`].
    pub trusted_proxies: Arc<TrustedProxies>,
}

impl Policy {
    pub fn new(config: &SecurityConfig) -> Result<Arc<Policy>, AuthError> {
        Ok(Arc::new(Policy {
            auth: Authenticator::new(config.auth.clone())?,
            cors: config.cors.clone(),
            controls_api: config.controls_api,
            viewers: ViewerSlots::new(config.max_viewers_total, config.max_viewers_per_client),
            requests: RequestLimiter::new(config.max_requests_per_second),
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        }))
    }

    /// No authentication, no CORS, the default limits: for tests and tools.
    pub fn open() -> Arc<Policy> {
        Policy::new(&crate::config::Config::default().security).expect("no secrets to set up")
    }
}

pub async fn guard(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0);
    let open = req.uri().path() == OPEN_PATH;
    if !open {
        if let Some(Err(wait)) = policy.requests.as_ref().map(|l| l.take(ip, Instant::now())) {
            tracing::debug!(%ip, "request rate limit reached");
            return HttpError::TooManyRequests(wait).into_response();
        }
    }
    if let Some(resp) = policy.cors.preflight(req.method(), req.headers()) {
        return resp;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = if open || !policy.auth.enabled() {
        next.run(req).await
    } else {
        let path = req.uri().path().to_owned();
        let presented = presented(&req);
        let secure = req.extensions().get::<Tls>().is_some();
        match authenticate(&policy.auth, ip, presented.credentials(), &path).await {
            Ok(()) => {
                let mut resp = next.run(req).await;
                if let Presented::Query(Credentials::Token(token)) = &presented {
                    set_token_cookie(resp.headers_mut(), token, secure);
                }
                resp
            }
            Err(e) => {
                let mut resp = e.into_response_for(&path);
                if matches!(presented, Presented::Cookie(_))
                    && resp.status() == StatusCode::UNAUTHORIZED
                {
                    clear_token_cookie(resp.headers_mut(), secure);
                }
                resp
            }
        }
    };
    policy.cors.decorate(origin.as_ref(), resp.headers_mut());
    resp
}

/// What a request presented, and where.
enum Presented {
    /// An `Authorization` header (`Err` if unreadable).
    Header(Result<Credentials, ()>),
    /// A `?token=` query parameter.
    Query(Credentials),
    /// A [`TOKEN_COOKIE`] cookie (`None` if its value is no token: empty, too long, …).
    Cookie(Option<Credentials>),
    Nothing,
}

impl Presented {
    fn credentials(&self) -> Option<&Credentials> {
        match self {
            Presented::Header(Ok(c)) | Presented::Query(c) | Presented::Cookie(Some(c)) => Some(c),
            Presented::Header(Err(())) | Presented::Cookie(None) | Presented::Nothing => None,
        }
    }
}

/// The credentials a request carries: its `Authorization` header, else a `?token=`, else
/// the [`TOKEN_COOKIE`] cookie (the first one, over all `Cookie` headers).
fn presented(req: &Request) -> Presented {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        return Presented::Header(Credentials::from_authorization(v.as_bytes()).map_err(|_| ()));
    }
    if let Some(c) = req.uri().query().and_then(Credentials::from_query) {
        return Presented::Query(c);
    }
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| cookie_value(v, TOKEN_COOKIE).is_some())
        .map_or(Presented::Nothing, |v| {
            Presented::Cookie(Credentials::from_cookie(v))
        })
}

/// Adds the cookie that lets the page a `?token=` opened load the rest without it. Tokens
/// that cannot be a cookie value as they are (spaces, `;`, non-ASCII: never one from
/// `picamd --new-token`) get none.
fn set_token_cookie(headers: &mut HeaderMap, token: &str, secure: bool) {
    if !is_cookie_value(token) {
        tracing::debug!("token not usable as a cookie value; no cookie set");
        return;
    }
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Tells the browser to forget the cookie (a revoked or wrong token).
fn clear_token_cookie(headers: &mut HeaderMap, secure: bool) {
    let v = if secure {
        "picamd_token=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure"
    } else {
        "picamd_token=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
    };
    headers.append(header::SET_COOKIE, HeaderValue::from_static(v));
}

async fn authenticate(
    auth: &Authenticator,
    ip: IpAddr,
    creds: Option<&Credentials>,
    path: &str,
) -> Result<(), HttpError> {
    let Some(creds) = creds else {
        return Err(HttpError::Unauthorized);
    };
    match auth.check(ClientKey::of(ip), creds).await {
        Verdict::Allowed(_) => Ok(()),
        Verdict::Denied => {
            tracing::info!(%ip, path, "wrong credentials");
            Err(HttpError::Unauthorized)
        }
        Verdict::Locked(wait) => Err(HttpError::TooManyFailures(wait)),
    }
}
