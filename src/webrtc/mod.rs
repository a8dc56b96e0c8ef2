//! WebRTC egress: each stream's H.264 track to browsers and WHEP clients (RFC 9725), with
//! str0m (sans-IO ICE, DTLS, SRTP, RTP/RTCP) doing the protocol and this module the I/O.
//!
//! An output like `rtsp`: it reads the hub (the H.264 track and the viewer counts) and the
//! configuration; nothing below it imports it, and it does not import `http` — the WHEP
//! routes in `http/whep.rs` call [`WebRtc::offer`] and [`WebRtc::end`] and hand it the
//! server-wide viewer slot as an opaque box, as `lib.rs` does for RTSP.
//!
//! Shape:
//! - **One UDP socket** for every session (`webrtc_udp_port`, 8555 by default), read by one
//!   task ([`WebRtc::serve`]). Each datagram goes to the session whose `Rtc::accepts` says
//!   it is its own (STUN by the ICE username, the rest by the peer's address); the address
//!   is remembered so later datagrams skip the search. A session takes them through a
//!   bounded queue ([`INBOX`] datagrams); a full queue drops, as the network would.
//! - **ICE-TCP** (RFC 6544, passive candidates, RFC 4571 framing) on the same port number,
//!   for networks that block UDP: each connection's frames are routed like datagrams.
//! - **A task per session** ([`session`]) owns its `Rtc` (behind a mutex only so the
//!   receive task can ask `accepts`), feeds it datagrams and timeouts, and writes the
//!   track's access units into it.
//! - The answer lists every candidate (ICE gathered in full: host candidates of the
//!   addresses picamd listens on, every interface's when it listens on 0.0.0.0 or ::, and
//!   `webrtc_public_ip`), so clients need no trickle ICE.

mod ice;
pub mod offer;
mod session;
mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::offer::{OfferProblem, ProfileLevel};
use crate::config::{IceServer, WebRtcConfig};
use crate::hub::{Hub, Output, ViewerGuard, ViewerLimit};
use crate::shutdown::Shutdown;

/// Datagrams queued for one session: far more than a client sends between two runs of its
/// task (RTCP every ~100 ms to 1 s, STUN every ~5 s, a few DTLS flights at the start).
pub const INBOX: usize = 64;
/// Kernel send buffer of the shared socket: 1 MiB is ten 720p keyframes (~100 KB each) at
/// once, the burst of many sessions starting together; more would only hold old video.
pub const UDP_SEND_BUFFER: usize = 1 << 20;
/// Kernel receive buffer: RTCP and STUN from every client between two reads.
pub const UDP_RECV_BUFFER: usize = 256 * 1024;
/// Largest datagram read: Ethernet's MTU, with room; WebRTC packets stay under 1200 bytes.
const MAX_DATAGRAM: usize = 2048;
/// How long shutdown waits for sessions to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why an offer was not answered; `http/whep.rs` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    /// The offer is not SDP (400).
    #[error("{0}")]
    Malformed(String),
    /// Well-formed, but nothing picamd can send fits it (422).
    #[error(transparent)]
    Unacceptable(OfferProblem),
    /// The stream's viewer limit (503).
    #[error(transparent)]
    TooManyViewers(#[from] ViewerLimit),
    /// Something on this side failed (500).
    #[error("WebRTC: {0}")]
    Internal(String),
}

impl From<OfferProblem> for WebRtcError {
    fn from(p: OfferProblem) -> Self {
        match p {
            OfferProblem::Malformed(m) => WebRtcError::Malformed(format!("not an SDP offer: {m}")),
            other => WebRtcError::Unacceptable(other),
        }
    }
}

/// An answered offer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The session's id (its WHEP resource is `…/whep/<id>`).
    pub id: String,
    /// The SDP answer, every candidate in it.
    pub sdp: String,
}

/// A datagram (or an ICE-TCP frame) on its way to a session.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub at: Instant,
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
}

impl Datagram {
    /// As str0m's input; `None` when the bytes are none of STUN, DTLS, RTP or RTCP.
    fn input(&self) -> Option<Input<'_>> {
        Receive::new(self.proto, self.source, self.destination, &self.data)
            .ok()
            .map(|r| Input::Receive(self.at, r))
    }
}

/// An offer picamd made (camera-streamer's handshake), waiting for the client's answer.
struct Pending {
    stream: usize,
    rtc: Rtc,
    offer: str0m::change::SdpPendingOffer,
    mid: Mid,
    sending: ProfileLevel,
    viewer: ViewerGuard,
    slot: Option<Box<dyn Send + Sync>>,
}

/// What the receive side knows of a session.
struct Entry {
    stream: usize,
    rtc: Arc<Mutex<Rtc>>,
    inbox: mpsc::Sender<Datagram>,
    stop: CancellationToken,
}

/// The sockets WebRTC serves on, bound before privileges are dropped.
pub struct Sockets {
    /// Every session's UDP.
    pub udp: std::net::UdpSocket,
    /// ICE-TCP on the same port number, when it could be bound.
    pub tcp: Option<std::net::TcpListener>,
}

impl Sockets {
    /// Binds `addr` (UDP, with the buffers above) and TCP on the port UDP got. For port 0
    /// (any), a UDP port whose TCP twin is taken is given back and another tried, up to 8
    /// times; a fixed port whose TCP twin is taken goes without ICE-TCP.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Sockets> {
        let tries = if addr.port() == 0 { 8 } else { 1 };
        let mut attempt = 1;
        loop {
            let udp = std::net::UdpSocket::bind(addr)?;
            let sock = socket2::SockRef::from(&udp);
            let _ = sock.set_send_buffer_size(UDP_SEND_BUFFER);
            let _ = sock.set_recv_buffer_size(UDP_RECV_BUFFER);
            udp.set_nonblocking(true)?;
            let port = udp.local_addr()?.port();
            match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
                Ok(l) => {
                    l.set_nonblocking(true)?;
                    return Ok(Sockets { udp, tcp: Some(l) });
                }
                Err(e) if attempt >= tries => {
                    tracing::warn!("no ICE-TCP on port {port}: {e}");
                    return Ok(Sockets { udp, tcp: None });
                }
                Err(_) => attempt += 1,
            }
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// The WebRTC server: the streams, the shared sockets and the sessions.
pub struct WebRtc {
    streams: Vec<Hub>,
    config: WebRtcConfig,
    socket: Arc<UdpSocket>,
    /// The address the socket is bound to (its port is every candidate's).
    bound: SocketAddr,
    tcp: Option<Arc<tcp::TcpSide>>,
    sessions: Mutex<HashMap<String, Entry>>,
    /// Offers picamd made, by id, until answered or expired.
    pending: Mutex<HashMap<String, Pending>>,
    /// Peer address → session id, learnt from datagrams `accepts` gave to a session.
    routes: Mutex<HashMap<(Protocol, SocketAddr), String>>,
    shutdown: Shutdown,
    tracker: TaskTracker,
}

impl WebRtc {
    /// The server over `sockets`; [`WebRtc::serve`] must run for sessions to get datagrams.
    pub fn new(
        streams: Vec<Hub>,
        config: WebRtcConfig,
        sockets: Sockets,
        shutdown: Shutdown,
    ) -> std::io::Result<Arc<WebRtc>> {
        let bound = sockets.udp.local_addr()?;
        let socket = Arc::new(UdpSocket::from_std(sockets.udp)?);
        ice::enable_destination_info(&socket, bound);
        let tcp = match sockets.tcp {
            Some(l) => Some(Arc::new(tcp::TcpSide::new(
                tokio::net::TcpListener::from_std(l)?,
            ))),
            None => None,
        };
        Ok(Arc::new(WebRtc {
            streams,
            config,
            socket,
            bound,
            tcp,
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            shutdown,
            tracker: TaskTracker::new(),
        }))
    }

    /// The UDP port (the ICE-TCP one has the same number).
    pub fn port(&self) -> u16 {
        self.bound.port()
    }

    /// STUN/TURN servers clients should use (`webrtc_ice_servers`).
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.config.ice_servers
    }

    /// Answers `sdp`, an offer to receive stream `stream`'s video: checks it, makes the
    /// session (a viewer of the stream, holding `slot`, the server-wide viewer slot, for its
    /// life) and starts its task.
    pub fn offer(
        self: &Arc<Self>,
        stream: usize,
        sdp: &str,
        slot: Option<Box<dyn Send + Sync>>,
    ) -> Result<Answer, WebRtcError> {
        let (hub, sending) = self.stream(stream)?;
        offer::check(sdp, sending)?;
        let parsed = str0m::change::SdpOffer::from_sdp_string(sdp)
            .map_err(|e| WebRtcError::Malformed(format!("not an SDP offer: {e}")))?;
        let viewer = hub.add_viewer(Output::WebRtc)?;
        let mut rtc = self.new_rtc(sending);
        let answer = rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| WebRtcError::Malformed(format!("offer refused: {e}")))?;
        // The one video section (str0m announces it only once connected): its mid, as the
        // answer names it.
        let sdp_answer = answer.to_sdp_string();
        let mid: Mid = offer::video_mid(&sdp_answer)
            .map(|m| Mid::from(m.as_str()))
            .ok_or_else(|| WebRtcError::Internal("no video section in the answer".into()))?;
        let mut early = Vec::new();
        loop {
            match rtc.poll_output() {
                Ok(str0m::Output::Timeout(_)) => break,
                Ok(str0m::Output::Transmit(t)) => early.push(t),
                Ok(_) => {}
                Err(e) => return Err(WebRtcError::Internal(e.to_string())),
            }
        }
        let id = self.launch(stream, hub, rtc, mid, sending, viewer, slot)?;
        for t in early {
            self.transmit(&t);
        }
        Ok(Answer {
            id,
            sdp: sdp_answer,
        })
    }

    /// camera-streamer's handshake, first half: picamd offers (one sendonly H.264 video
    /// section, every candidate) and waits up to `webrtc_peer_timeout` for the client's
    /// answer ([`WebRtc::accept_answer`]). The offer holds a viewer (and `slot`) meanwhile.
    pub fn server_offer(
        self: &Arc<Self>,
        stream: usize,
        slot: Option<Box<dyn Send + Sync>>,
    ) -> Result<Answer, WebRtcError> {
        let (hub, sending) = self.stream(stream)?;
        let viewer = hub.add_viewer(Output::WebRtc)?;
        let mut rtc = self.new_rtc(sending);
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| WebRtcError::Internal("no offer made".into()))?;
        let id = session_id().map_err(WebRtcError::Internal)?;
        lock(&self.pending).insert(
            id.clone(),
            Pending {
                stream,
                rtc,
                offer: pending,
                mid,
                sending,
                viewer,
                slot,
            },
        );
        // Not answered in time: the viewer and the slot are given back.
        let server = self.clone();
        let expired = id.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(server.config.peer_timeout) => {}
                _ = server.shutdown.cancelled() => {}
            }
            lock(&server.pending).remove(&expired);
        });
        Ok(Answer {
            id,
            sdp: offer.to_sdp_string(),
        })
    }

    /// camera-streamer's handshake, second half: the client's answer to offer `id`.
    pub fn accept_answer(self: &Arc<Self>, id: &str, sdp: &str) -> Result<(), WebRtcError> {
        let p = lock(&self.pending).remove(id).ok_or_else(|| {
            WebRtcError::Malformed(format!("no offer {id:?} waits for an answer"))
        })?;
        let answer = str0m::change::SdpAnswer::from_sdp_string(sdp)
            .map_err(|e| WebRtcError::Malformed(format!("not an SDP answer: {e}")))?;
        let mut rtc = p.rtc;
        rtc.sdp_api()
            .accept_answer(p.offer, answer)
            .map_err(|e| WebRtcError::Malformed(format!("answer refused: {e}")))?;
        let hub = &self.streams[p.stream];
        self.launch(p.stream, hub, rtc, p.mid, p.sending, p.viewer, p.slot)?;
        Ok(())
    }

    /// Stream `stream`'s hub and the profile of its pictures (from its newest SPS; the
    /// encoder's before the first keyframe).
    fn stream(&self, stream: usize) -> Result<(&Hub, ProfileLevel), WebRtcError> {
        let hub = self
            .streams
            .get(stream)
            .ok_or_else(|| WebRtcError::Internal(format!("no stream {stream}")))?;
        let sending = hub
            .h264()
            .parameter_sets()
            .and_then(|(sps, _)| ProfileLevel::from_sps(&sps))
            .unwrap_or(ProfileLevel::ENCODER);
        Ok((hub, sending))
    }

    /// An `Rtc` that sends H.264 of profile `sending` and lists every candidate.
    fn new_rtc(&self, sending: ProfileLevel) -> Rtc {
        let mut config = Rtc::builder()
            .clear_codecs()
            .set_send_buffer_video(session::SEND_BUFFER_PACKETS)
            .set_extension(
                session::ABS_CAPTURE_TIME_ID,
                str0m::rtp::Extension::AbsoluteCaptureTime,
            );
        // Our own payload types (an answer takes the offer's numbers): every profile whose
        // decoders take the stream's pictures, each with an RTX type for retransmissions.
        for (i, p) in sending.decodable_as().iter().enumerate() {
            let pt = 96 + 2 * i as u8;
            config
                .codec_config()
                .add_h264(pt.into(), Some((pt + 1).into()), true, p.as_u32());
        }
        let mut rtc = config.build(Instant::now());
        for c in self.candidates() {
            rtc.add_local_candidate(c);
        }
        rtc
    }

    /// Registers a negotiated session and starts its task; its id.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        self: &Arc<Self>,
        stream: usize,
        hub: &Hub,
        mut rtc: Rtc,
        mid: Mid,
        sending: ProfileLevel,
        viewer: ViewerGuard,
        slot: Option<Box<dyn Send + Sync>>,
    ) -> Result<String, WebRtcError> {
        let pt = rtc
            .writer(mid)
            .and_then(|w| w.payload_params().next().map(|p| p.pt()))
            .ok_or_else(|| {
                WebRtcError::Unacceptable(OfferProblem::NoH264 {
                    wanted: format!("{:06x}", sending.as_u32()),
                    offered: "no H.264 payload type was agreed".into(),
                })
            })?;
        let id = session_id().map_err(WebRtcError::Internal)?;
        let rtc = Arc::new(Mutex::new(rtc));
        let (tx, rx) = mpsc::channel(INBOX);
        let stop = CancellationToken::new();
        if self.shutdown.is_cancelled() {
            return Err(WebRtcError::Internal("shutting down".into()));
        }
        lock(&self.sessions).insert(
            id.clone(),
            Entry {
                stream,
                rtc: rtc.clone(),
                inbox: tx,
                stop: stop.clone(),
            },
        );
        let task = session::Session {
            id: id.clone(),
            rtc,
            mid,
            pt,
            hub: hub.clone(),
            inbox: rx,
            stop,
            peer_timeout: self.config.peer_timeout,
            _viewer: viewer,
            _slot: slot,
        };
        let server = self.clone();
        let running = tokio::spawn(async move { task.run(&server).await });
        // Forgotten however the task ends: a panic (a bug in str0m or here) ends only this
        // session, and its entry and routes go with it.
        let server = self.clone();
        let ended = id.clone();
        self.tracker.spawn(async move {
            if let Err(e) = running.await {
                tracing::warn!(session = %ended, "WebRTC session task failed: {e}");
            }
            server.forget(&ended);
        });
        Ok(id)
    }

    /// Ends session `id` (WHEP's DELETE); `false` if there is none.
    pub fn end(&self, id: &str, stream: Option<usize>) -> bool {
        let s = lock(&self.sessions);
        match s.get(id) {
            Some(e) if stream.is_none_or(|n| n == e.stream) => {
                e.stop.cancel();
                true
            }
            _ => false,
        }
    }

    fn forget(&self, id: &str) {
        lock(&self.sessions).remove(id);
        lock(&self.routes).retain(|_, s| s != id);
    }

    /// The candidates every answer lists: a host candidate (UDP, and passive TCP when it
    /// listens) for each address picamd can be reached at, and `webrtc_public_ip`.
    fn candidates(&self) -> Vec<Candidate> {
        let port = self.bound.port();
        let mut ips = ice::local_addresses(self.bound.ip());
        if let Some(public) = self.config.public_ip {
            if !ips.contains(&public) {
                ips.push(public);
            }
        }
        let mut out = Vec::new();
        for ip in ips {
            let addr = SocketAddr::new(ip, port);
            if self.config.udp_candidates {
                match Candidate::host(addr, "udp") {
                    Ok(c) => out.push(c),
                    Err(e) => tracing::debug!(%addr, "no UDP candidate: {e}"),
                }
            }
            if self.tcp.is_some() {
                let c = Candidate::builder()
                    .tcp()
                    .host(addr)
                    .tcptype(str0m::net::TcpType::Passive)
                    .build();
                match c {
                    Ok(c) => out.push(c),
                    Err(e) => tracing::debug!(%addr, "no TCP candidate: {e}"),
                }
            }
        }
        out
    }

    /// Sends one of a session's packets: over UDP without waiting (a full send buffer drops
    /// it, as a congested network would; the client asks again by NACK or PLI), or into its
    /// ICE-TCP connection's bounded queue.
    pub(crate) fn transmit(&self, t: &str0m::net::Transmit) {
        match t.proto {
            Protocol::Udp => {
                let sock = socket2::SockRef::from(&*self.socket);
                if let Err(e) = sock.send_to(&t.contents, &t.destination.into()) {
                    tracing::trace!(to = %t.destination, "WebRTC datagram dropped: {e}");
                }
            }
            Protocol::Tcp => {
                if let Some(tcp) = &self.tcp {
                    tcp.send(t.destination, &t.contents);
                }
            }
            _ => {}
        }
    }

    /// Hands a datagram to its session: the one remembered for its source, else the first
    /// whose `Rtc` accepts it (STUN by its ICE username), remembered from then on.
    pub(crate) fn route(&self, d: Datagram) {
        let key = (d.proto, d.source);
        let Some(inbox) = self.session_for(&d, key) else {
            tracing::trace!(from = %key.1, "datagram for no WebRTC session");
            return;
        };
        if inbox.try_send(d).is_err() {
            tracing::trace!("WebRTC session's queue full; datagram dropped");
        }
    }

    /// The inbox of the session `d` belongs to.
    fn session_for(
        &self,
        d: &Datagram,
        key: (Protocol, SocketAddr),
    ) -> Option<mpsc::Sender<Datagram>> {
        let input = d.input()?;
        let known = lock(&self.routes).get(&key).cloned();
        let sessions = lock(&self.sessions);
        // An address a session's ICE credentials claimed stays that session's: asking its
        // `Rtc` again would race its task, which may not have read the STUN request yet
        // when the client's DTLS hello follows 1 ms later — `accepts` would say no and the
        // hello would be lost until the client resends it (~1 s, measured).
        if let Some(e) = known.as_ref().and_then(|id| sessions.get(id)) {
            return Some(e.inbox.clone());
        }
        let (id, e) = sessions
            .iter()
            .find(|(_, e)| lock(&e.rtc).accepts(&input))?;
        lock(&self.routes).insert(key, id.clone());
        Some(e.inbox.clone())
    }

    /// Reads the UDP socket (and accepts ICE-TCP connections) until shutdown, handing each
    /// datagram to its session; then ends every session and waits up to
    /// [`SHUTDOWN_GRACE`] for them.
    pub async fn serve(self: Arc<Self>) {
        if let Some(tcp) = self.tcp.clone() {
            let server = self.clone();
            self.tracker.spawn(async move { tcp.serve(server).await });
        }
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let got = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = ice::recv(&self.socket, self.bound, &mut buf) => r,
            };
            match got {
                Ok((n, source, destination)) => self.route(Datagram {
                    at: Instant::now(),
                    proto: Protocol::Udp,
                    source,
                    destination,
                    data: buf[..n].to_vec(),
                }),
                Err(e) => {
                    // ICMP errors (port unreachable from a client gone) surface here.
                    tracing::trace!("WebRTC socket: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        for e in lock(&self.sessions).values() {
            e.stop.cancel();
        }
        lock(&self.pending).clear();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("WebRTC sessions still open after {SHUTDOWN_GRACE:?}");
        }
    }

    /// The stream index of stream `name`.
    pub fn stream_index(&self, name: &str) -> Option<usize> {
        self.streams.iter().position(|h| h.info().name == name)
    }
}

/// 128 random bits in hex: a session's resource name, not guessable.
fn session_id() -> Result<String, String> {
    let b = crate::auth::random_bytes::<16>().map_err(|e| e.to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
