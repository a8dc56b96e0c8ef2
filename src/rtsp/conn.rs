//! One RTSP connection: requests in (parsed by `rtsp-types`), replies out in order, and the
//! connection's session with its play task.
//!
//! [`Conn::process`] is the whole request path (parse, authenticate, dispatch, reply) over a
//! buffer of received bytes, independent of the socket it came from: the connection task
//! feeds it, and so do the unit tests and the `rtsp_request` fuzz target.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use rtsp_types::headers::{self, Session as SessionHeader, Transport, Transports};
use rtsp_types::{Message, Method, ParseError, Request, Version};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::login::{self, Login};
use super::rtp::RtpSender;
use super::sdp::{self, Description};
use super::{
    lock, stream_for, Server, DESCRIBE_WAIT, MAX_REQUEST, NOTSENT_LOWAT, SENDER_REPORT_INTERVAL,
    UDP_SEND_BUFFER, WRITE_STALL_TIMEOUT,
};
use crate::auth::{random_bytes, ClientKey};
use crate::hub::h264::H264Consumer;
use crate::hub::{Output, ViewerGuard};

/// The methods answered, for `Public` (OPTIONS, 501) and `Allow` (405).
const PUBLIC: &str =
    "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER";
/// The `Server` header.
const SERVER: &str = concat!("picamd/", env!("CARGO_PKG_VERSION"));

/// The write half the replies and (over TCP) the media share.
pub(crate) type Writer = Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;

/// A reply, written by hand: `rtsp-types` keeps one value per header name, and a `401`
/// needs two `WWW-Authenticate` lines (most clients read one challenge per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub cseq: Option<u32>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Close the connection after sending it.
    pub close: bool,
}

impl Reply {
    fn new(status: u16, cseq: Option<u32>) -> Reply {
        Reply {
            status,
            cseq,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// A reply with a one-line reason in a `text/plain` body.
    pub(crate) fn error(status: u16, cseq: Option<u32>, why: impl Into<String>) -> Reply {
        let mut r = Reply::new(status, cseq);
        r.body = format!("{}\r\n", why.into()).into_bytes();
        r.headers.push(("Content-Type", "text/plain".into()));
        r
    }

    /// The reply on the wire. Header values are made here, never copied from a request, so no
    /// line break can get into one.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("RTSP/1.0 {} {}\r\n", self.status, reason(self.status));
        if let Some(c) = self.cseq {
            out.push_str(&format!("CSeq: {c}\r\n"));
        }
        out.push_str(&format!("Server: {SERVER}\r\n"));
        for (name, value) in &self.headers {
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        451 => "Parameter Not Understood",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version Not Supported",
        _ => "Error",
    }
}

/// When the client last showed it is there (a request, an RTCP report), as milliseconds
/// since the connection started; shared with a UDP play task.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Where a session's packets go.
#[derive(Clone)]
enum Route {
    /// Interleaved in the RTSP connection (`$`, channel, length, packet).
    Tcp { rtp: u8, rtcp: u8 },
    /// UDP from our two sockets to the client's two ports.
    Udp {
        rtp: Arc<UdpSocket>,
        rtcp: Arc<UdpSocket>,
        to_rtp: SocketAddr,
        to_rtcp: SocketAddr,
    },
}

/// The connection's session: SETUP to TEARDOWN.
struct Session {
    id: String,
    stream: usize,
    route: Route,
    rtp: Arc<Mutex<RtpSender>>,
    playing: Option<Playing>,
    /// The hub's count of this viewer and the server-wide slot, held for the session's life.
    _viewer: ViewerGuard,
    _slot: Option<Box<dyn Send + Sync>>,
}

/// A session's play task.
struct Playing {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Playing {
    /// Stops the task between two units (never inside one: interleaved framing must stay
    /// whole) and waits for it.
    async fn end(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Stops the task at once, mid-unit if it is writing one: for a connection that is
    /// closing anyway (a stalled client's write would otherwise hold shutdown for up to
    /// [`WRITE_STALL_TIMEOUT`]).
    async fn abort(self) {
        self.stop.cancel();
        self.task.abort();
        let _ = self.task.await;
    }
}

/// What the connection loop does after a batch of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// One connection's state.
pub(crate) struct Conn {
    server: Arc<Server>,
    peer: SocketAddr,
    local: SocketAddr,
    writer: Writer,
    /// Cancelled when a play task finds the socket dead.
    broken: CancellationToken,
    activity: Arc<Activity>,
    session: Option<Session>,
    /// The Digest nonce this connection logged in with (see `login`).
    trusted_nonce: Option<String>,
}

/// Serves one accepted connection to its end.
pub(super) async fn run(server: Arc<Server>, stream: TcpStream, peer: SocketAddr) {
    let local = stream.local_addr().unwrap_or(peer);
    // Packets are sent as soon as a unit exists; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set; slow RTSP clients may lag");
    }
    let (mut rd, wr) = stream.into_split();
    let mut conn = Conn::new(server.clone(), peer, local, Box::pin(wr));
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if conn.process(&mut buf).await == Flow::Close {
            break;
        }
        // Over TCP a playing session shows it is alive by reading; anything else must send
        // something within the timeout.
        let idle_limit = if conn.playing_over_tcp() {
            Duration::MAX
        } else {
            server.session_timeout
        };
        let idle = conn.activity.idle();
        if idle >= idle_limit {
            tracing::debug!(%peer, "RTSP client silent for {idle:?}; closing");
            break;
        }
        let check_in = (idle_limit - idle).min(Duration::from_secs(5));
        let room = MAX_REQUEST.saturating_sub(buf.len());
        let mut limited = (&mut buf).limit(room);
        tokio::select! {
            _ = server.shutdown.cancelled() => break,
            _ = conn.broken.cancelled() => break,
            _ = tokio::time::sleep(check_in) => continue,
            r = rd.read_buf(&mut limited) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    conn.end().await;
}

impl Conn {
    pub(crate) fn new(
        server: Arc<Server>,
        peer: SocketAddr,
        local: SocketAddr,
        writer: Pin<Box<dyn AsyncWrite + Send>>,
    ) -> Conn {
        let activity = Activity::new();
        activity.touch();
        Conn {
            server,
            peer,
            local,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            broken: CancellationToken::new(),
            activity,
            session: None,
            trusted_nonce: None,
        }
    }

    /// The authenticator of this connection's server (tests).
    #[cfg(test)]
    pub(crate) fn server_auth(&self) -> Arc<crate::auth::Authenticator> {
        self.server.auth.clone()
    }

    /// The `Session` header: the id and the timeout it lives by.
    fn session_value(&self, id: &str) -> String {
        format!(
            "{id};timeout={}",
            self.server.session_timeout.as_secs().max(1)
        )
    }

    fn playing_over_tcp(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.playing.is_some() && matches!(s.route, Route::Tcp { .. }))
    }

    /// Handles every complete message in `buf` (removing it), writing the replies.
    /// `Close` after a reply that ends the connection, a message that cannot be parsed,
    /// a request larger than [`MAX_REQUEST`], or a write that failed.
    pub(crate) async fn process(&mut self, buf: &mut BytesMut) -> Flow {
        loop {
            let parsed = Message::<Vec<u8>>::parse(&buf[..]);
            let message = match parsed {
                Ok((m, used)) => {
                    buf.advance(used);
                    m
                }
                Err(ParseError::Incomplete(_)) if buf.len() < MAX_REQUEST => return Flow::Continue,
                Err(ParseError::Incomplete(_)) => {
                    let r = Reply::error(
                        400,
                        None,
                        format!("request larger than {MAX_REQUEST} bytes"),
                    );
                    return self.send(Reply { close: true, ..r }).await;
                }
                Err(ParseError::Error) => {
                    let r = Reply::error(400, None, "not an RTSP/1.0 request");
                    return self.send(Reply { close: true, ..r }).await;
                }
            };
            self.activity.touch();
            let reply = match message {
                Message::Request(req) => self.handle(&req).await,
                Message::Data(data) => {
                    // Interleaved packets from the client: RTCP receiver reports on the
                    // session's channels are signs of life; anything else is a broken client.
                    match &self.session {
                        Some(Session {
                            route: Route::Tcp { rtp, rtcp },
                            ..
                        }) if [*rtp, *rtcp].contains(&data.channel_id()) => continue,
                        _ => {
                            tracing::debug!(peer = %self.peer, channel = data.channel_id(), "interleaved data on a channel not set up; closing");
                            return Flow::Close;
                        }
                    }
                }
                Message::Response(_) => {
                    // picamd sends no requests, so no response is expected.
                    Reply {
                        close: true,
                        ..Reply::error(400, None, "unexpected response")
                    }
                }
            };
            if self.send(reply).await == Flow::Close {
                return Flow::Close;
            }
        }
    }

    async fn send(&self, reply: Reply) -> Flow {
        let bytes = reply.to_bytes();
        let mut w = self.writer.lock().await;
        let written = tokio::time::timeout(WRITE_STALL_TIMEOUT, async {
            w.write_all(&bytes).await?;
            w.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) if !reply.close => Flow::Continue,
            _ => Flow::Close,
        }
    }

    /// Ends the session (its play task first), as the connection closes.
    pub(crate) async fn end(&mut self) {
        if let Some(mut s) = self.session.take() {
            if let Some(p) = s.playing.take() {
                p.abort().await;
            }
        }
    }

    async fn handle(&mut self, req: &Request<Vec<u8>>) -> Reply {
        let cseq = req
            .header(&headers::CSEQ)
            .and_then(|v| v.as_str().trim().parse::<u32>().ok());
        let Some(cseq) = cseq else {
            return Reply::error(400, None, "no CSeq");
        };
        if req.version() != Version::V1_0 {
            return Reply::error(505, Some(cseq), "RTSP/1.0 only");
        }
        let method = req.method().clone();
        if method == Method::Options {
            return Reply::new(200, Some(cseq)).header("Public", PUBLIC);
        }
        if let Method::Extension(_) = method {
            return Reply::error(501, Some(cseq), "unknown method").header("Public", PUBLIC);
        }
        if let Some(denied) = self.authenticate(req, cseq).await {
            return denied;
        }
        let reply = match method {
            Method::Describe => self.describe(req, cseq).await,
            Method::Setup => self.setup(req, cseq).await,
            Method::Play => self.play(req, cseq),
            Method::Pause => self.pause(req, cseq).await,
            Method::Teardown => self.teardown(req, cseq).await,
            Method::GetParameter | Method::SetParameter => self.parameter(req, cseq, &method),
            _ => Err(
                Reply::error(405, Some(cseq), "not supported by this server")
                    .header("Allow", PUBLIC),
            ),
        };
        let mut reply = reply.unwrap_or_else(|e| e);
        if let Some(s) = &self.session {
            if !reply.headers.iter().any(|(n, _)| *n == "Session") && reply.status < 300 {
                reply = reply.header("Session", self.session_value(&s.id));
            }
        }
        reply
    }

    /// `None` when the request may go on; else the reply that refuses it.
    async fn authenticate(&mut self, req: &Request<Vec<u8>>, cseq: u32) -> Option<Reply> {
        let auth = self.server.auth.clone();
        if !auth.enabled() {
            return None;
        }
        let header = req.header(&headers::AUTHORIZATION).map(|v| v.as_str());
        let method: &str = req.method().into();
        let client = ClientKey::of(self.peer.ip());
        let login = login::check(
            &auth,
            &self.server.nonces,
            client,
            method,
            header,
            self.trusted_nonce.as_deref(),
        )
        .await;
        match login {
            Login::Allowed { digest_nonce } => {
                if digest_nonce.is_some() {
                    self.trusted_nonce = digest_nonce;
                }
                None
            }
            Login::Denied { stale } => {
                if header.is_some() {
                    tracing::info!(peer = %self.peer, "RTSP login refused");
                }
                let mut reply = Reply::error(401, Some(cseq), "authentication required");
                for c in login::challenges(&self.server.nonces, stale, auth.has_digest_users()) {
                    reply = reply.header("WWW-Authenticate", c);
                }
                Some(reply)
            }
            Login::Locked(wait) => Some(
                Reply::error(503, Some(cseq), "too many failed logins from this address")
                    .header("Retry-After", wait.as_secs().max(1).to_string()),
            ),
        }
    }

    /// The stream the request URL names, and whether it named the track.
    fn target(&self, req: &Request<Vec<u8>>, cseq: u32) -> Result<(usize, bool), Reply> {
        let path = req.request_uri().map_or("/", |u| u.path());
        stream_for(&self.server.streams, path)
            .ok_or_else(|| Reply::error(404, Some(cseq), format!("no stream at {path}")))
    }

    /// The stream's URL as this client reached it (for `Content-Base` and `RTP-Info`).
    fn base_url(&self, req: &Request<Vec<u8>>, stream: usize) -> String {
        let name = &self.server.streams[stream].info().name;
        let host = match req
            .request_uri()
            .and_then(|u| u.host_str().map(str::to_owned))
        {
            Some(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
            Some(h) => h,
            None => match self.local.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            },
        };
        format!("rtsp://{host}:{}/{name}", self.local.port())
    }

    async fn describe(&mut self, req: &Request<Vec<u8>>, cseq: u32) -> Result<Reply, Reply> {
        let (stream, _) = self.target(req, cseq)?;
        let hub = self.server.streams[stream].clone();
        let track = hub.h264();
        if track.parameter_sets().is_none() {
            // No keyframe yet: become a consumer for a moment, which wakes the source and
            // asks the encoder for one.
            let guard = hub
                .add_viewer(Output::Rtsp)
                .map_err(|e| Reply::error(503, Some(cseq), e.to_string()))?;
            let mut consumer = track.consume(Some(guard));
            let _ = tokio::time::timeout(DESCRIBE_WAIT, consumer.next()).await;
        }
        let info = hub.info();
        let body = sdp::describe(&Description {
            name: &info.name,
            server_ip: self.local.ip(),
            session_id: session_version(),
            parameter_sets: track.parameter_sets(),
            fps: info.fps,
        });
        let mut reply = Reply::new(200, Some(cseq))
            .header("Content-Type", "application/sdp")
            .header("Content-Base", format!("{}/", self.base_url(req, stream)));
        reply.body = body.into_bytes();
        Ok(reply)
    }

    /// The session a request names: `Ok(None)` for none, 454 for one that is not this
    /// connection's.
    fn named_session(&self, req: &Request<Vec<u8>>, cseq: u32) -> Result<Option<()>, Reply> {
        let named = req
            .typed_header::<SessionHeader>()
            .map_err(|_| Reply::error(400, Some(cseq), "bad Session header"))?;
        match (named, &self.session) {
            (None, _) => Ok(None),
            (Some(n), Some(s)) if n.0 == s.id => Ok(Some(())),
            (Some(_), _) => Err(Reply::error(454, Some(cseq), "no such session")),
        }
    }

    /// The session a request must name.
    fn require_session(&self, req: &Request<Vec<u8>>, cseq: u32) -> Result<(), Reply> {
        match self.named_session(req, cseq)? {
            Some(()) => Ok(()),
            None => Err(Reply::error(454, Some(cseq), "no Session header")),
        }
    }

    async fn setup(&mut self, req: &Request<Vec<u8>>, cseq: u32) -> Result<Reply, Reply> {
        let (stream, _) = self.target(req, cseq)?;
        let named = self.named_session(req, cseq)?;
        if let Some(s) = &self.session {
            if named.is_none() {
                return Err(Reply::error(
                    459,
                    Some(cseq),
                    "this connection has a session already; one track per stream",
                ));
            }
            if s.playing.is_some() {
                return Err(Reply::error(
                    455,
                    Some(cseq),
                    "cannot change the transport while playing",
                ));
            }
            if s.stream != stream {
                return Err(Reply::error(
                    459,
                    Some(cseq),
                    "the session is of another stream",
                ));
            }
        }
        let route = self.route(req, cseq).await?;
        let transport = match &route {
            Route::Tcp { rtp, rtcp } => format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp}"),
            Route::Udp {
                rtp,
                rtcp,
                to_rtp,
                to_rtcp,
            } => {
                let port = |s: &UdpSocket| s.local_addr().map_or(0, |a| a.port());
                format!(
                    "RTP/AVP;unicast;client_port={}-{};server_port={}-{}",
                    to_rtp.port(),
                    to_rtcp.port(),
                    port(rtp),
                    port(rtcp)
                )
            }
        };
        let session = match self.session.take() {
            Some(mut s) => {
                s.route = route;
                s
            }
            None => self.new_session(stream, route, cseq)?,
        };
        let ssrc = lock(&session.rtp).ssrc;
        let reply = Reply::new(200, Some(cseq))
            .header("Transport", format!("{transport};ssrc={ssrc:08X}"))
            .header("Session", self.session_value(&session.id));
        self.session = Some(session);
        Ok(reply)
    }

    fn new_session(&self, stream: usize, route: Route, cseq: u32) -> Result<Session, Reply> {
        let hub = &self.server.streams[stream];
        let viewer = hub
            .add_viewer(Output::Rtsp)
            .map_err(|e| Reply::error(503, Some(cseq), e.to_string()).header("Retry-After", "2"))?;
        let slot = match &self.server.slots {
            Some(s) => Some(
                s.take(self.peer.ip())
                    .map_err(|e| Reply::error(503, Some(cseq), e).header("Retry-After", "2"))?,
            ),
            None => None,
        };
        let random =
            random_bytes::<18>().map_err(|e| Reply::error(500, Some(cseq), e.to_string()))?;
        let id: String = random[..8].iter().map(|b| format!("{b:02X}")).collect();
        let word = |i: usize| u32::from_be_bytes(random[i..i + 4].try_into().expect("4 bytes"));
        let rtp = RtpSender::new(
            word(8),
            u16::from_be_bytes([random[12], random[13]]),
            word(14),
            Instant::now(),
        );
        Ok(Session {
            id,
            stream,
            route,
            rtp: Arc::new(Mutex::new(rtp)),
            playing: None,
            _viewer: viewer,
            _slot: slot,
        })
    }

    /// The first transport offered that picamd serves: RTP/AVP/TCP interleaved, or RTP/AVP
    /// over UDP unicast to the client's own address; else 461.
    async fn route(&self, req: &Request<Vec<u8>>, cseq: u32) -> Result<Route, Reply> {
        let unsupported = |why: &str| {
            Reply::error(461, Some(cseq), why)
                .header("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")
        };
        let raw = req
            .header(&headers::TRANSPORT)
            .map(|v| v.as_str())
            .ok_or_else(|| unsupported("no Transport header"))?;
        // rtsp-types 0.1.3 panics on a quoted `dest_addr`/`src_addr` ending in a backslash
        // (its unescaping asserts); no transport served here needs an escape at all.
        if raw.contains('\\') {
            return Err(unsupported("escapes in Transport"));
        }
        let offered = req
            .typed_header::<Transports>()
            .ok()
            .flatten()
            .ok_or_else(|| unsupported("unreadable Transport header"))?;
        for t in offered.iter() {
            let Transport::Rtp(t) = t else { continue };
            if t.profile != headers::RtpProfile::Avp || t.params.multicast {
                continue;
            }
            match t.lower_transport {
                Some(headers::RtpLowerTransport::Tcp) => {
                    let (rtp, rtcp) = match t.params.interleaved {
                        Some((a, Some(b))) if b != a => (a, b),
                        Some((a, _)) if a < u8::MAX => (a, a + 1),
                        Some(_) => continue,
                        None => (0, 1),
                    };
                    return Ok(Route::Tcp { rtp, rtcp });
                }
                None | Some(headers::RtpLowerTransport::Udp) => {
                    let Some((rtp_port, rtcp_port)) = t.params.client_port else {
                        continue;
                    };
                    // Packets go to the client's own address only: a `destination` naming
                    // another host would make picamd a flood cannon.
                    if t.params.destination.is_some() || rtp_port == 0 {
                        continue;
                    }
                    let rtcp_port = rtcp_port.unwrap_or(rtp_port.wrapping_add(1)).max(1);
                    let (rtp, rtcp) = udp_pair(self.local.ip())
                        .await
                        .map_err(|e| Reply::error(500, Some(cseq), format!("no UDP ports: {e}")))?;
                    return Ok(Route::Udp {
                        rtp: Arc::new(rtp),
                        rtcp: Arc::new(rtcp),
                        to_rtp: SocketAddr::new(self.peer.ip(), rtp_port),
                        to_rtcp: SocketAddr::new(self.peer.ip(), rtcp_port),
                    });
                }
                Some(_) => continue,
            }
        }
        Err(unsupported(
            "use RTP/AVP/TCP (interleaved) or RTP/AVP unicast UDP with client_port",
        ))
    }

    fn play(&mut self, req: &Request<Vec<u8>>, cseq: u32) -> Result<Reply, Reply> {
        self.require_session(req, cseq)?;
        let (stream, _) = self.target(req, cseq)?;
        let base = self.base_url(req, stream);
        let writer = self.writer.clone();
        let broken = self.broken.clone();
        let activity = self.activity.clone();
        let s = self.session.as_mut().expect("checked above");
        if s.stream != stream {
            return Err(Reply::error(
                459,
                Some(cseq),
                "the session is of another stream",
            ));
        }
        let (seq, rtptime) = {
            let r = lock(&s.rtp);
            (r.next_seq(), r.timestamp(Instant::now()))
        };
        if s.playing.is_none() {
            let consumer = self.server.streams[stream].h264().consume(None);
            let stop = CancellationToken::new();
            let task = tokio::spawn(send_units(
                consumer,
                s.rtp.clone(),
                s.route.clone(),
                writer,
                stop.clone(),
                broken,
                activity,
            ));
            s.playing = Some(Playing { stop, task });
        }
        Ok(Reply::new(200, Some(cseq))
            .header("Range", "npt=now-")
            .header(
                "RTP-Info",
                format!(
                    "url={base}/{};seq={seq};rtptime={rtptime}",
                    sdp::TRACK_CONTROL
                ),
            ))
    }

    async fn pause(&mut self, req: &Request<Vec<u8>>, cseq: u32) -> Result<Reply, Reply> {
        self.require_session(req, cseq)?;
        if let Some(p) = self.session.as_mut().and_then(|s| s.playing.take()) {
            p.end().await;
        }
        Ok(Reply::new(200, Some(cseq)))
    }

    async fn teardown(&mut self, req: &Request<Vec<u8>>, cseq: u32) -> Result<Reply, Reply> {
        self.require_session(req, cseq)?;
        if let Some(mut s) = self.session.take() {
            // The connection stays: the reply must not follow half a unit.
            if let Some(p) = s.playing.take() {
                p.end().await;
            }
        }
        Ok(Reply::new(200, Some(cseq)))
    }

    /// GET_PARAMETER and SET_PARAMETER: keep-alives (an empty body). Parameters themselves
    /// are not supported.
    fn parameter(
        &self,
        req: &Request<Vec<u8>>,
        cseq: u32,
        method: &Method,
    ) -> Result<Reply, Reply> {
        self.named_session(req, cseq)?;
        if *method == Method::SetParameter && !req.body().is_empty() {
            return Err(Reply::error(451, Some(cseq), "no parameters can be set"));
        }
        Ok(Reply::new(200, Some(cseq)))
    }
}

/// The SDP's `o=` session id and version: the time, so a description made later is newer.
fn session_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Two UDP sockets on `ip`, RTP on an even port and RTCP on the next (RFC 3550's
/// convention, which some clients assume), each with a bounded send buffer.
async fn udp_pair(ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let mut last = None;
    for _ in 0..32 {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        match UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
            Ok(rtcp) => {
                for s in [&rtp, &rtcp] {
                    let _ = socket2::SockRef::from(s).set_send_buffer_size(UDP_SEND_BUFFER);
                }
                return Ok((rtp, rtcp));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free even/odd port pair in 32 tries")))
}

/// A session's play task: units from the track, packetized, out by the route, with a
/// sender report every [`SENDER_REPORT_INTERVAL`], until `stop` or the track closes. Over
/// TCP a failed or stalled write breaks the connection.
async fn send_units(
    mut consumer: H264Consumer,
    rtp: Arc<Mutex<RtpSender>>,
    route: Route,
    writer: Writer,
    stop: CancellationToken,
    broken: CancellationToken,
    activity: Arc<Activity>,
) {
    let mut last_report: Option<Instant> = None;
    let mut out = Vec::new();
    let mut rtcp_in = vec![0u8; 1500];
    loop {
        let unit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            u = consumer.next() => match u {
                Some(u) => u,
                None => return,
            },
            r = recv_rtcp(&route, &mut rtcp_in) => {
                if r {
                    activity.touch();
                }
                continue;
            }
        };
        let report_due = last_report.is_none_or(|t| t.elapsed() >= SENDER_REPORT_INTERVAL);
        match &route {
            Route::Tcp {
                rtp: rtp_ch,
                rtcp: rtcp_ch,
            } => {
                out.clear();
                let report = {
                    let mut r = lock(&rtp);
                    r.packetize(&unit, |p| interleave(&mut out, *rtp_ch, p));
                    report_due.then(|| r.sender_report()).flatten()
                };
                if let Some(sr) = report {
                    interleave(&mut out, *rtcp_ch, &sr);
                    last_report = Some(Instant::now());
                }
                let mut w = writer.lock().await;
                let sent = tokio::time::timeout(WRITE_STALL_TIMEOUT, w.write_all(&out)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!("RTSP client stopped reading; closing its connection");
                    broken.cancel();
                    return;
                }
            }
            Route::Udp {
                rtp: sock,
                rtcp,
                to_rtp,
                to_rtcp,
            } => {
                let report = {
                    let mut r = lock(&rtp);
                    let mut full = false;
                    // Straight to the kernel (tokio's `try_send_to` refuses until its reactor
                    // has seen the socket writable once): a full send buffer drops the rest
                    // of the unit, never queued.
                    let (sock, to) = (socket2::SockRef::from(&**sock), (*to_rtp).into());
                    r.packetize(&unit, |p| {
                        if !full && sock.send_to(p, &to).is_err() {
                            full = true;
                        }
                    });
                    report_due.then(|| r.sender_report()).flatten()
                };
                if let Some(sr) = report {
                    let _ = socket2::SockRef::from(&**rtcp).send_to(&sr, &(*to_rtcp).into());
                    last_report = Some(Instant::now());
                }
            }
        }
    }
}

/// Waits for an RTCP packet from the client on a UDP route (never ready over TCP, where
/// reports come in the connection); `true` when one came from the client's address.
async fn recv_rtcp(route: &Route, buf: &mut [u8]) -> bool {
    match route {
        Route::Udp { rtcp, to_rtcp, .. } => match rtcp.recv_from(buf).await {
            Ok((_, from)) => from.ip() == to_rtcp.ip(),
            Err(_) => {
                // ICMP port unreachable surfaces here on Linux; do not spin on it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                false
            }
        },
        Route::Tcp { .. } => std::future::pending().await,
    }
}

/// Appends one interleaved frame: `$`, channel, 16-bit length, packet.
fn interleave(out: &mut Vec<u8>, channel: u8, packet: &[u8]) {
    out.push(b'$');
    out.push(channel);
    out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    out.extend_from_slice(packet);
}

/// An in-memory writer whose bytes can be taken out (tests, fuzzing).
#[cfg(any(fuzzing, test))]
#[derive(Clone, Default)]
pub(crate) struct SharedVec(Arc<Mutex<Vec<u8>>>);

#[cfg(any(fuzzing, test))]
impl SharedVec {
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *lock(&self.0))
    }
}

#[cfg(any(fuzzing, test))]
impl AsyncWrite for SharedVec {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        lock(&self.0).extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(any(fuzzing, test))]
pub(crate) mod tests_support {
    use crate::frame::{split_annex_b, AccessUnit, CaptureTime};

    /// A keyframe with an SPS (Constrained Baseline, level 3.1), a PPS and a small IDR slice:
    /// enough for the track's parameter sets and for packetizing.
    pub(crate) fn keyframe() -> AccessUnit {
        unit(true)
    }

    pub(crate) fn unit(keyframe: bool) -> AccessUnit {
        let mut data = Vec::new();
        if keyframe {
            data.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1F, 0x8C, 0x8D, 0x40]);
            data.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xCE, 0x3C, 0x80]);
            data.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        } else {
            data.extend_from_slice(&[0, 0, 0, 1, 0x41]);
        }
        data.extend((0..3000).map(|i| (i % 200) as u8 + 1));
        let nals = split_annex_b(&data);
        AccessUnit {
            seq: 1,
            captured: CaptureTime::now(),
            width: 16,
            height: 16,
            keyframe,
            data: data.into(),
            nals,
        }
    }
}
