//! The guard in front of every route: request rate, CORS, authentication.
//!
//! In order, for each request:
//! 1. the client's request rate ([`RequestLimiter`]) → `429` with `Retry-After`;
//! 2. a CORS preflight is answered ([`CorsPolicy::preflight`]);
//! 3. with authentication on, credentials are checked ([`Authenticator`]): an
//!    `Authorization: Basic …` or `Bearer …` header, else a `?token=` query parameter.
//!    None or wrong → `401` with `WWW-Authenticate: Basic realm="picamd", charset="UTF-8"`;
//!    a client locked out after too many failures → `429` with `Retry-After`;
//! 4. the route runs, and CORS headers are added to whatever it answers (401s included, so
//!    a permitted page can tell a login problem from a network one).
//!
//! `/healthz` skips 1 and 3: service monitors need it without credentials, and it says
//! nothing about the camera. Viewer slots are taken by the stream handlers themselves, since
//! only they know how long a viewer stays.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::cors::CorsPolicy;
use super::limits::{ClientAddr, RequestLimiter, ViewerSlots};
use super::HttpError;
use crate::auth::{AuthError, Authenticator, ClientKey, Credentials, Verdict};
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
}

impl Policy {
    pub fn new(config: &SecurityConfig) -> Result<Arc<Policy>, AuthError> {
        Ok(Arc::new(Policy {
            auth: Authenticator::new(config.auth.clone())?,
            cors: config.cors.clone(),
            controls_api: config.controls_api,
            viewers: ViewerSlots::new(config.max_viewers_total, config.max_viewers_per_client),
            requests: RequestLimiter::new(config.max_requests_per_second),
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
        match authenticate(&policy.auth, ip, presented(&req), &path).await {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response_for(&path),
        }
    };
    policy.cors.decorate(origin.as_ref(), resp.headers_mut());
    resp
}

/// The credentials a request carries: its `Authorization` header (`Err` if unreadable),
/// else a `?token=`.
fn presented(req: &Request) -> Result<Option<Credentials>, ()> {
    match req.headers().get(header::AUTHORIZATION) {
        Some(v) => Credentials::from_authorization(v.as_bytes())
            .map(Some)
            .map_err(|_| ()),
        None => Ok(req.uri().query().and_then(Credentials::from_query)),
    }
}

async fn authenticate(
    auth: &Authenticator,
    ip: IpAddr,
    creds: Result<Option<Credentials>, ()>,
    path: &str,
) -> Result<(), HttpError> {
    let Ok(Some(creds)) = creds else {
        return Err(HttpError::Unauthorized);
    };
    match auth.check(ClientKey::of(ip), &creds).await {
        Verdict::Allowed(_) => Ok(()),
        Verdict::Denied => {
            tracing::info!(%ip, path, "wrong credentials");
            Err(HttpError::Unauthorized)
        }
        Verdict::Locked(wait) => Err(HttpError::TooManyFailures(wait)),
    }
}
