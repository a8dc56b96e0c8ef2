//! The HTTP server: accept loop, routing, and the error → status mapping.
//!
//! One file per output (`mjpeg`, `snapshot`, `ws`, `status`, `assets`, `controls`, `whep`
//! for WebRTC's signalling); `guard`
//! (rate, CORS, authentication), `cors` and `limits` protect them all. Connections are served
//! by hyper's HTTP/1 server with upgrades (for `/ws`), each in its own task tracked for
//! graceful shutdown. Each request's client address ([`ClientAddr`]) is set here, once: the
//! TCP peer, or behind a trusted proxy the client it forwarded for ([`forwarded`]). Every
//! socket has a write timeout, so a client that stops reading is disconnected after
//! [`WRITE_STALL_TIMEOUT`] instead of being kept forever; it never slows the others, since
//! each output only ever holds the newest frame.

mod assets;
pub mod backlog;
mod controls;
pub mod cors;
pub mod forwarded;
pub mod guard;
pub mod limits;
mod mjpeg;
mod snapshot;
mod status;
mod whep;
pub(crate) mod ws;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Extension, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_io_timeout::TimeoutStream;
use tokio_util::task::TaskTracker;

use self::backlog::{Counted, WriteProgress};
use self::forwarded::TrustedProxies;
use self::guard::Policy;
use self::limits::{ClientAddr, ClientIp, SlotError};
use crate::hub::{Hub, ViewerLimit};
use crate::shutdown::Shutdown;
use crate::source::controls::CameraControls;

/// A client whose socket accepts no bytes for this long is disconnected.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Time a client has to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers), in bytes: larger gets `431` and a close.
/// Browsers send a few hundred bytes to a few KiB (cookies of other apps on the same host
/// included); hyper alone would let the head grow past [`MAX_CONN_BUFFER`].
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Most bytes hyper buffers per connection, each way: the largest request head, and how much
/// response data it queues beyond what the socket took. Kept small so a client that stops
/// reading pins at most about one frame in user space (frames are shared `Bytes`, so this
/// is a refcount, not a copy, for frames other clients also hold).
const MAX_CONN_BUFFER: usize = 64 * 1024;
/// Time a client has to finish its TLS handshake after connecting to the HTTPS port.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long graceful shutdown waits for connections to finish before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What one stream's handlers see.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub shutdown: Shutdown,
    /// The source's runtime controls, if it has any.
    pub controls: Option<Arc<dyn CameraControls>>,
    /// Authentication, CORS and limits, the same for every stream.
    pub policy: Arc<Policy>,
    /// The RTSP server's port, for the stream's `rtsp://` URL in `/state` and `/streams`
    /// (None: RTSP is off).
    pub rtsp_port: Option<u16>,
    /// The WebRTC server (None: WebRTC is off), for the WHEP routes.
    pub webrtc: Option<Arc<crate::webrtc::WebRtc>>,
    /// The persisted files read at start-up and which copy of each was used (`/state`'s
    /// `persist`, `/metrics`' `picamd_persist_fallbacks`); the same for every stream.
    pub persist: Arc<[crate::boot_status::PersistedFile]>,
}

/// Every stream, in configuration order (the first is the default); for the handlers that
/// cover them all (`/streams`, `/metrics`).
pub type Streams = Arc<[AppState]>;

/// The routes. The default stream answers the root URLs, which are exact as OctoPrint,
/// crowsnest, Home Assistant and go2rtc expect them from mjpg-streamer and ustreamer; every
/// stream, the default one included, also answers under `/cam/<name>/`.
/// Every route is behind [`guard::guard`] (rate, CORS, authentication).
pub fn router(streams: Streams) -> Router {
    let policy = streams[0].policy.clone();
    let mut app = stream_routes("", streams[0].clone(), Some(streams.clone()));
    for s in streams.iter() {
        let name = &s.hub.info().name;
        app = app
            .merge(stream_routes(&format!("/cam/{name}"), s.clone(), None))
            .route(
                &format!("/cam/{name}"),
                get(Redirect::permanent(&format!("/cam/{name}/"))),
            )
            .merge(article_routes(name, s.clone()));
    }
    app.merge(
        Router::new()
            .route("/streams", get(status::streams))
            .route("/metrics", get(status::metrics))
            .with_state(streams),
    )
    .route("/healthz", get(status::healthz))
    // An article URL naming no stream: a 404 that says so (the known names are routes above).
    .route("/mjpgstreamer/{name}", get(no_such_stream))
    .route("/mjpgsnapshot/{name}", get(no_such_stream))
    // The player's modules and styles.
    .route("/assets/{name}", get(assets::asset))
    .fallback(not_found)
    .layer(middleware::from_fn_with_state(policy, guard::guard))
}

/// The URLs of the article picamd grew out of, whose server named its two videos `picamera`
/// and `screen`: `/mjpgstreamer/<name>` is `/cam/<name>/stream` and `/mjpgsnapshot/<name>`
/// is `/cam/<name>/snapshot`, the same handlers on the same stream (viewer counts, limits and
/// headers included), so old clients work once the streams carry those names.
fn article_routes(name: &str, state: AppState) -> Router {
    Router::new()
        .route(&format!("/mjpgstreamer/{name}"), get(mjpeg::stream))
        .route(&format!("/mjpgsnapshot/{name}"), get(snapshot::snapshot))
        .with_state(state)
}

async fn no_such_stream(
    axum::extract::Path(name): axum::extract::Path<String>,
    req: Request,
) -> Response {
    HttpError::NoSuchStream(name).into_response_for(req.uri().path())
}

/// One stream's URLs under `prefix` (empty for the root ones). `all` is every stream, for
/// the root page's `?stream=<name>`.
fn stream_routes(prefix: &str, state: AppState, all: Option<Streams>) -> Router {
    let at = |path: &str| format!("{prefix}{path}");
    let root_state = state.clone();
    let routes = Router::new()
        // The page, or mjpg-streamer's `?action=stream` and `?action=snapshot`.
        .route(
            &at("/"),
            get(move |client: ClientIp, q: Query<RootQuery>, req: Request| {
                root(root_state.clone(), all.clone(), client, q.0, req)
            }),
        )
        // multipart/x-mixed-replace MJPEG.
        .route(&at("/stream"), get(mjpeg::stream))
        .route(&at("/stream.mjpg"), get(mjpeg::stream))
        // One fresh JPEG.
        .route(&at("/snapshot"), get(snapshot::snapshot))
        .route(&at("/snapshot.jpg"), get(snapshot::snapshot))
        // Binary frames (header + JPEG) and JSON control messages.
        .route(&at("/ws"), get(ws::upgrade))
        // JSON state.
        .route(&at("/state"), get(status::state))
        // Camera settings: JSON report, JSON changes.
        .route(
            &at("/controls"),
            get(controls::get_controls).post(controls::set_controls),
        );
    let routes = if state.webrtc.is_some() {
        routes
            // WHEP: an SDP offer in, 201 with the answer and the session's URL.
            .route(
                &at("/whep"),
                post(whep::post).options(whep::options_endpoint),
            )
            // The session: DELETE ends it.
            .route(
                &at("/whep/{id}"),
                delete(whep::delete)
                    .patch(whep::patch)
                    .options(whep::options_session),
            )
            // One JSON offer, one JSON answer (OctoPrint's webrtc:// URLs).
            .route(&at("/webrtc"), post(whep::json))
    } else {
        routes
    };
    routes.with_state(state)
}

#[derive(serde::Deserialize)]
struct RootQuery {
    action: Option<String>,
    /// Which stream: the player reads it from the page's URL, and `?action=` serves it.
    stream: Option<String>,
}

/// The page, or with `?action=` the stream or a snapshot of `here` — or, on the root URL
/// (`all` given), of the stream `?stream=` names. Under `/cam/<name>/` a `?stream=` naming
/// another stream is a 400 rather than a silent choice of one of the two.
async fn root(
    here: AppState,
    all: Option<Streams>,
    client: ClientIp,
    q: RootQuery,
    req: Request,
) -> Response {
    let path = req.uri().path();
    let snapshot = match q.action.as_deref() {
        None => return assets::serve("index.html"),
        Some("stream") => false,
        Some("snapshot") => true,
        Some(other) => {
            return HttpError::BadRequest(format!(
                "unknown action {other:?}; use action=stream or action=snapshot"
            ))
            .into_response_for(path)
        }
    };
    let state = match (q.stream, all) {
        (None, _) => here,
        (Some(name), Some(all)) => match all.iter().find(|s| s.hub.info().name == name) {
            Some(s) => s.clone(),
            None => return HttpError::NoSuchStream(name).into_response_for(path),
        },
        (Some(name), None) if name == here.hub.info().name => here,
        (Some(name), None) => {
            return HttpError::BadRequest(format!(
                "stream={name:?} names another stream than this URL's ({:?}); leave stream= out, or ask the root URL /?stream=…",
                here.hub.info().name
            ))
            .into_response_for(path)
        }
    };
    if snapshot {
        snapshot::snapshot(State(state)).await
    } else {
        let progress = req.extensions().get::<WriteProgress>().cloned();
        mjpeg::stream(State(state), client, progress.map(Extension)).await
    }
}

async fn not_found(req: Request) -> Response {
    HttpError::NotFound.into_response_for(req.uri().path())
}

/// Every failure a handler can report, mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not found")]
    NotFound,
    #[error("no stream named {0:?}; /streams lists them")]
    NoSuchStream(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    TooManyViewers(#[from] ViewerLimit),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("authentication required")]
    Unauthorized,
    #[error("too many failed logins from this address; retry in {} s", retry_secs(*.0))]
    TooManyFailures(Duration),
    #[error("too many requests from this address; retry in {} s", retry_secs(*.0))]
    TooManyRequests(Duration),

    #[error("no such WebRTC session (it ended, or the URL is wrong)")]
    NoSuchSession,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Internal(String),

    #[error("no frame within {0:?}; the source may be down")]
    NoFrame(Duration),
    #[error("shutting down")]
    ShuttingDown,
}

impl HttpError {
    fn status(&self) -> StatusCode {
        match self {
            HttpError::NotFound | HttpError::NoSuchStream(_) | HttpError::NoSuchSession => {
                StatusCode::NOT_FOUND
            }
            HttpError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::Slot(SlotError::PerClient(_))
            | HttpError::TooManyFailures(_)
            | HttpError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            HttpError::TooManyViewers(_)
            | HttpError::Slot(SlotError::Total(_))
            | HttpError::NoFrame(_)
            | HttpError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Retry-After` to send, in seconds, if any.
    fn retry_after(&self) -> Option<u64> {
        match self {
            HttpError::TooManyFailures(d) | HttpError::TooManyRequests(d) => Some(retry_secs(*d)),
            HttpError::Slot(_)
            | HttpError::TooManyViewers(_)
            | HttpError::NoFrame(_)
            | HttpError::ShuttingDown => Some(2),
            _ => None,
        }
    }

    fn into_response_for(self, path: &str) -> Response {
        tracing::debug!(path, error = %self, "request failed");
        self.into_response()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = self.retry_after();
        let mut resp = (status, format!("{}\n", self)).into_response();
        let h = resp.headers_mut();
        if let Some(s) = retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="picamd", charset="UTF-8""#),
            );
        }
        resp
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

/// Headers that keep browsers and proxies from caching live images.
pub(crate) fn no_cache_headers() -> [(header::HeaderName, HeaderValue); 3] {
    [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
        ),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
        (header::EXPIRES, HeaderValue::from_static("0")),
    ]
}

/// `X-Timestamp` value: capture time in seconds since the Unix epoch with microseconds, as
/// ustreamer writes it.
pub(crate) fn x_timestamp(wall_us: u64) -> String {
    format!("{}.{:06}", wall_us / 1_000_000, wall_us % 1_000_000)
}

/// The sockets to serve: plain HTTP, and HTTPS when configured.
pub struct Listeners {
    /// Plain HTTP.
    pub http: TcpListener,
    /// HTTPS and what it serves.
    pub https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// Whether plain HTTP only redirects to HTTPS (and answers `/healthz`).
    pub redirect: bool,
}

/// Serves `router(streams)` on every listener until shutdown, then waits up to
/// [`SHUTDOWN_GRACE`] for open connections. With [`Listeners::redirect`], plain HTTP gets
/// [`redirect_router`] instead.
pub async fn serve(listeners: Listeners, streams: Vec<AppState>, shutdown: Shutdown) {
    // Shared with the redirect, for one request budget per client over both ports.
    let policy = streams[0].policy.clone();
    let app = router(streams.into());
    let tracker = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_CONN_BUFFER)
        .max_header_size(MAX_REQUEST_HEAD);
    let server = Server {
        builder,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        trusted_proxies: policy.trusted_proxies.clone(),
    };
    let https_port = listeners
        .https
        .as_ref()
        .and_then(|(l, _)| l.local_addr().ok())
        .map(|a| a.port());
    let plain_app = match (listeners.redirect, https_port) {
        (true, Some(port)) => redirect_router(port, policy),
        _ => app.clone(),
    };
    let plain = server.accept_loop(listeners.http, plain_app, None);
    match listeners.https {
        Some((listener, config)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let secure = server.accept_loop(listener, app, Some(acceptor));
            tokio::join!(plain, secure);
        }
        None => plain.await,
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after {SHUTDOWN_GRACE:?}; closing them"
        );
    }
}

/// What every accept loop shares: the connection settings and the tracker of connection
/// tasks that graceful shutdown waits for.
struct Server {
    builder: hyper::server::conn::http1::Builder,
    tracker: TaskTracker,
    shutdown: Shutdown,
    /// Peers whose `X-Forwarded-For` names the client (`trusted_proxies`).
    trusted_proxies: Arc<TrustedProxies>,
}

impl Server {
    /// Accepts on `listener` until shutdown; each connection (after its TLS handshake, with
    /// `tls`) is served in a tracked task.
    async fn accept_loop(
        &self,
        listener: TcpListener,
        app: Router,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let mut accept_errors = 0u32;
        while let Some((stream, peer)) = self
            .shutdown
            .accept(&listener, &mut accept_errors, "HTTP")
            .await
        {
            // The guard, the limits and the logs need the client's address: the peer, or
            // behind a trusted proxy the client it names, per request (a proxy may send
            // several clients' requests over one connection). A redirect without a `Host`
            // header needs the address the client reached.
            let local = LocalAddr(stream.local_addr().unwrap_or(peer));
            let over_tls = tls.is_some();
            // What this connection has written, for the MJPEG body's "previous frame has
            // left" wait (backlog.rs).
            let progress = WriteProgress::default();
            let counted = Counted::new(stream, progress.clone());
            let trusted = self.trusted_proxies.clone();
            let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                app.clone(),
                move |mut req: Request<hyper::body::Incoming>| {
                    let ip = forwarded::client_ip_from_headers(peer.ip(), req.headers(), &trusted);
                    req.extensions_mut().insert(ClientAddr(ip));
                    req.extensions_mut().insert(local);
                    req.extensions_mut().insert(progress.clone());
                    if over_tls {
                        req.extensions_mut().insert(Tls);
                    }
                    req
                },
            ));
            let builder = self.builder.clone();
            let shutdown = self.shutdown.clone();
            let tls = tls.clone();
            self.tracker.spawn(async move {
                let stream = timed(counted);
                let Some(tls) = tls else {
                    serve_connection(&builder, stream, service, &shutdown, peer).await;
                    return;
                };
                let handshake = tokio::select! {
                    r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)) => r,
                    _ = shutdown.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        serve_connection(&builder, stream, service, &shutdown, peer).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => {
                        tracing::debug!(%peer, "no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}")
                    }
                }
            });
        }
    }
}

/// Serves HTTP/1.1 (with upgrades, for `/ws`) on one connection until it ends or shutdown.
async fn serve_connection<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    shutdown: &Shutdown,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Clients vanishing mid-frame are normal for a camera; log quietly.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The address a connection reached (this end's), for redirects without a `Host` header.
#[derive(Debug, Clone, Copy)]
struct LocalAddr(SocketAddr);

/// Marks a request that came over the HTTPS listener (the guard's cookie gets `Secure`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tls;

/// Plain HTTP when `http_redirect` is on: `/healthz` as usual (monitors), everything else a
/// `308` to the same path and query over HTTPS on `https_port`. No authentication here, on
/// purpose: a login prompt over plain HTTP would send the password in clear text.
///
/// The redirects count against the client's request rate like any other request (`429`
/// with `Retry-After` past it), with `policy`'s limiter: the one the HTTPS side's guard
/// uses, so a client has one budget over both ports. `/healthz` is not counted, as there.
pub fn redirect_router(https_port: u16, policy: Arc<Policy>) -> Router {
    Router::new()
        .route("/healthz", get(status::healthz))
        .fallback(move |client: ClientIp, req: Request| {
            let policy = policy.clone();
            async move {
                let limit = policy.requests.as_ref();
                if let Some(Err(wait)) = limit.map(|l| l.take(client.0, Instant::now())) {
                    tracing::debug!(ip = %client.0, "request rate limit reached");
                    return HttpError::TooManyRequests(wait).into_response();
                }
                to_https(&req, https_port)
            }
        })
}

fn to_https(req: &Request, https_port: u16) -> Response {
    let host = req.headers().get(header::HOST).map(|h| h.as_bytes());
    let local = req.extensions().get::<LocalAddr>().map(|a| a.0.ip());
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match https_location(host, local, https_port, path) {
        Ok(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
            "use HTTPS\n",
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Where a plain-HTTP request is sent: the same host (from `Host`, else the address the
/// connection reached), the HTTPS port, the same path and query. The host is checked, so a
/// crafted `Host` cannot smuggle a path, user info or a header into the `Location`.
pub(crate) fn https_location(
    host_header: Option<&[u8]>,
    local: Option<std::net::IpAddr>,
    https_port: u16,
    path_and_query: &str,
) -> Result<HeaderValue, HttpError> {
    let host = match host_header {
        Some(h) => std::str::from_utf8(h)
            .ok()
            .and_then(host_of)
            .map(str::to_owned)
            .ok_or_else(|| HttpError::BadRequest("bad Host header".into()))?,
        None => match local {
            Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
            None => return Err(HttpError::BadRequest("no Host header".into())),
        },
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    HeaderValue::from_str(&format!("https://{host}{port}{path_and_query}"))
        .map_err(|_| HttpError::BadRequest("bad request target".into()))
}

/// The host part of a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`), if it
/// looks like one.
fn host_of(h: &str) -> Option<&str> {
    let host = if h.starts_with('[') {
        &h[..=h.find(']')?]
    } else {
        h.split(':').next()?
    };
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    ok.then_some(host)
}

fn timed(stream: Counted) -> Pin<Box<TimeoutStream<Counted>>> {
    // Frames are sent as soon as they exist; Nagle would only add latency.
    let _ = stream.get_ref().set_nodelay(true);
    backlog::limit_unsent(stream.get_ref());
    let mut s = TimeoutStream::new(stream);
    s.set_write_timeout(Some(WRITE_STALL_TIMEOUT));
    Box::pin(s)
}

/// The URLs worth printing at start-up for a listener bound to `addr`; `scheme` is `http`
/// or `https`.
pub fn urls_for(scheme: &str, addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    if !addr.ip().is_unspecified() {
        return vec![format!("{scheme}://{}/", SocketAddr::new(addr.ip(), port))];
    }
    let mut urls = vec![format!("{scheme}://127.0.0.1:{port}/")];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(ip) = ifa
                .address
                .and_then(|a| a.as_sockaddr_in().map(|s| std::net::IpAddr::V4(s.ip())))
            else {
                continue;
            };
            if !ip.is_loopback() {
                urls.push(format!("{scheme}://{ip}:{port}/"));
            }
        }
    }
    urls
}
