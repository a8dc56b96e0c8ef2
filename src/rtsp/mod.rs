//! The RTSP server (RFC 2326, RTSP 1.0): each stream's H.264 track to RTSP clients — VLC,
//! ffmpeg, GStreamer, NVRs (Frigate, go2rtc, Home Assistant, Blue Iris) — over RTP (RFC 6184)
//! interleaved in the RTSP connection (TCP) or over UDP unicast.
//!
//! An output like `http`: it reads the hub (the H.264 track and the viewer counts), the
//! configuration and the `[auth]` accounts; nothing below it imports it.
//!
//! URLs: `rtsp://HOST:8554/` is the default stream, `rtsp://HOST:8554/<name>` and
//! `rtsp://HOST:8554/cam/<name>` (as the HTTP URLs) any stream; the one track's control
//! URL is `<stream URL>/trackID=0`.
//!
//! Shape (mini-redis's): [`serve`] accepts until shutdown; each connection is a task
//! ([`conn`]) holding a permit of [`ConnectionLimits`] (the viewer limits and a few more,
//! server-wide and per client address) that reads requests (parsed by
//! the `rtsp-types` crate, at most [`MAX_REQUEST`] bytes each) and answers them in order. A
//! session (one per connection: the stream has one track) is a viewer of the hub
//! (`Output::Rtsp`, counted against the stream's `max_viewers` and, through
//! [`SharedSlots`], the server-wide limits HTTP uses) from SETUP to TEARDOWN; while it plays,
//! a task of its own takes units from the track and sends them:
//!
//! - over TCP, each unit's packets in one write behind the connection's write lock, with
//!   `TCP_NOTSENT_LOWAT` on the socket ([`NOTSENT_LOWAT`]): a client that reads slowly holds
//!   at most one unit in picamd and about 16 KiB in the kernel, and falls behind in the
//!   track, which moves it on to a newer keyframe; one that stops reading is dropped after
//!   [`WRITE_STALL_TIMEOUT`];
//! - over UDP, each packet with a non-blocking send on a socket with a
//!   [`UDP_SEND_BUFFER`]-byte buffer; when the buffer is full the rest of the unit is
//!   dropped (the decoder recovers at the next keyframe) rather than queued.
//!
//! A session ends with TEARDOWN, with its connection, or after [`SESSION_TIMEOUT`] without a
//! request or (UDP) an RTCP report from the client — the `timeout=` its `Session` header
//! states. A session playing over TCP does not time out while the client reads (its reading
//! is the sign of life; the write stall timeout covers the rest).

mod conn;
pub mod login;
#[cfg(test)]
mod requests_tests;
pub mod rtp;
pub mod sdp;

use std::collections::HashMap;
use std::net::IpAddr;
#[cfg(any(fuzzing, test))]
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, ClientKey};
use crate::hub::Hub;
use crate::shutdown::Shutdown;

pub use conn::Reply;

/// A session without a request (or, over UDP, an RTCP report) for this long is ended.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// RTSP connections allowed beyond the viewer limits, server-wide and per client address:
/// connections that only ask (OPTIONS, DESCRIBE: an NVR probing, ffprobe) and play nothing
/// hold no viewer slot. Each connection costs a task, up to [`MAX_REQUEST`] of read buffer
/// and, while it plays, one access unit being sent (a 720p keyframe is ~50–100 KB).
pub const EXTRA_CONNECTIONS: usize = 32;
pub const EXTRA_CONNECTIONS_PER_CLIENT: usize = 4;

/// How many RTSP connections may be open: the HTTP viewer limits (`max_viewers_total`,
/// `max_viewers_per_client`) plus [`EXTRA_CONNECTIONS`] and [`EXTRA_CONNECTIONS_PER_CLIENT`],
/// so that every viewer the limits allow can play over RTSP. Playing still takes a viewer
/// slot (SETUP answers 503 beyond the limits); these caps stop a flood of idle connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_client: usize,
}

impl ConnectionLimits {
    pub fn for_viewers(max_viewers_total: usize, max_viewers_per_client: usize) -> Self {
        ConnectionLimits {
            total: max_viewers_total + EXTRA_CONNECTIONS,
            per_client: max_viewers_per_client + EXTRA_CONNECTIONS_PER_CLIENT,
        }
    }
}

impl Default for ConnectionLimits {
    /// The limits for the default viewer limits (400 in all, 20 per client).
    fn default() -> Self {
        ConnectionLimits::for_viewers(400, 20)
    }
}
/// Largest request (head and body). Clients send a few hundred bytes; a Digest
/// `Authorization` adds ~300. Larger: `400` and the connection is closed.
pub const MAX_REQUEST: usize = 8 * 1024;
/// A client whose socket takes no bytes for this long is disconnected.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long DESCRIBE waits for the stream's first keyframe (for the SDP's parameter sets);
/// the encoder makes one within two frame intervals of being asked once the source runs.
pub const DESCRIBE_WAIT: Duration = Duration::from_secs(3);
/// Time between RTCP sender reports (RFC 3550 suggests 5 s as the minimum interval).
pub const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Kernel send buffer of each UDP socket: 256 KiB is several 720p keyframes, and 1 s of a
/// 2 Mbit/s stream; more would only hold old video.
pub const UDP_SEND_BUFFER: usize = 256 * 1024;
/// `TCP_NOTSENT_LOWAT` of RTSP connections: at most this much waits unsent in the kernel (as
/// for HTTP, `http/backlog.rs`: 26 ms at 5 Mbit/s, a fraction of a frame).
pub const NOTSENT_LOWAT: u32 = 16 * 1024;
/// How long shutdown waits for connections to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Viewer limits shared with the other outputs (HTTP's `max_viewers_total` and
/// `max_viewers_per_client`). The wiring (`lib.rs`) hands the server HTTP's counter, so an
/// RTSP session takes a slot like an MJPEG viewer does; this output does not depend on
/// `http` for it.
pub trait SharedSlots: Send + Sync {
    /// A slot for one viewer from `ip`, given back when the box is dropped; `Err` says why
    /// not.
    fn take(&self, ip: IpAddr) -> Result<Box<dyn Send + Sync>, String>;
}

/// What every connection shares.
pub struct Server {
    /// The streams, in configuration order (the first is the default).
    streams: Vec<Hub>,
    auth: Arc<Authenticator>,
    nonces: login::Nonces,
    slots: Option<Arc<dyn SharedSlots>>,
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    per_client: Mutex<HashMap<ClientKey, usize>>,
    shutdown: Shutdown,
    /// [`SESSION_TIMEOUT`]; shorter in tests.
    session_timeout: Duration,
}

impl Server {
    pub fn new(
        streams: Vec<Hub>,
        auth: Arc<Authenticator>,
        slots: Option<Arc<dyn SharedSlots>>,
        limits: ConnectionLimits,
        shutdown: Shutdown,
    ) -> Arc<Server> {
        let nonces = login::Nonces::new(auth.derived_secret("rtsp digest nonces"));
        Arc::new(Server {
            streams,
            auth,
            nonces,
            slots,
            limits,
            permits: Arc::new(Semaphore::new(limits.total)),
            per_client: Mutex::new(HashMap::new()),
            shutdown,
            session_timeout: SESSION_TIMEOUT,
        })
    }

    /// A server whose sessions time out after `timeout` (tests).
    #[cfg(test)]
    pub(crate) fn with_timeout(mut self: Arc<Self>, timeout: Duration) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("not shared yet")
            .session_timeout = timeout;
        self
    }

    /// Counts a connection from `ip`; `None` when that client has too many.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientConn> {
        let key = ClientKey::of(ip);
        let mut m = lock(&self.per_client);
        let n = m.entry(key).or_insert(0);
        if *n >= self.limits.per_client {
            return None;
        }
        *n += 1;
        Some(ClientConn {
            server: self.clone(),
            key,
        })
    }
}

/// One client's connection, counted until dropped.
struct ClientConn {
    server: Arc<Server>,
    key: ClientKey,
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        let mut m = lock(&self.server.per_client);
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Tells a connection over the caps why before closing it: `503` with `Retry-After`, written
/// without waiting (a new socket's send buffer is empty, so the few bytes fit; if they do
/// not, the client gets the close alone). No task and no read: a flood costs nothing more.
/// The reply has no `CSeq`, as no request was read; ffmpeg and GStreamer report the status.
fn refuse(stream: &tokio::net::TcpStream, peer: std::net::SocketAddr, why: &str) {
    tracing::debug!(%peer, "RTSP connection refused: {why}");
    let reply = Reply::error(503, None, why).header("Retry-After", "5");
    let _ = stream.try_write(&reply.to_bytes());
}

/// Accepts RTSP connections on `listener` until shutdown, then gives open ones
/// [`SHUTDOWN_GRACE`] to end.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let tracker = TaskTracker::new();
    let mut accept_errors = 0u32;
    while let Some((stream, peer)) = server
        .shutdown
        .accept(&listener, &mut accept_errors, "RTSP")
        .await
    {
        let Ok(permit) = server.permits.clone().try_acquire_owned() else {
            let why = format!("{} RTSP connections are open", server.limits.total);
            refuse(&stream, peer, &why);
            continue;
        };
        let Some(client) = server.admit(peer.ip()) else {
            let why = format!(
                "{} RTSP connections are open from this address",
                server.limits.per_client
            );
            refuse(&stream, peer, &why);
            continue;
        };
        let server = server.clone();
        tracker.spawn(async move {
            conn::run(server, stream, peer).await;
            drop((client, permit));
        });
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "RTSP connections still open after {SHUTDOWN_GRACE:?}"
        );
    }
}

/// The stream a request URL names: `/` the default one, `/<name>` or `/cam/<name>` any,
/// each optionally followed by `/` and the track's control (`trackID=0`). `Ok(track)` says
/// whether the URL named the track.
pub(crate) fn stream_for(streams: &[Hub], path: &str) -> Option<(usize, bool)> {
    let path = path.trim_end_matches('/');
    let (path, track) = match path.strip_suffix(sdp::TRACK_CONTROL) {
        Some(p) => (p.trim_end_matches('/'), true),
        None => (path, false),
    };
    let name = match path {
        "" => return (!streams.is_empty()).then_some((0, track)),
        p => p.strip_prefix("/cam/").or_else(|| p.strip_prefix('/'))?,
    };
    streams
        .iter()
        .position(|h| h.info().name == name)
        .map(|i| (i, track))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`crate::fuzzing::rtsp_exchange`] runs: a connection over an in-memory writer.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_exchange(input: &[u8], cut: usize, auth: bool) -> (Vec<u8>, bool) {
    use std::sync::OnceLock;
    // One authenticator per process: its argon2 hash is slow to make.
    static AUTH: OnceLock<Arc<Authenticator>> = OnceLock::new();
    static OPEN: OnceLock<Arc<Authenticator>> = OnceLock::new();
    let authenticator = if auth {
        AUTH.get_or_init(|| {
            use crate::auth::{
                hash_password, AuthSpec, DigestHa1, PasswordHashString, TokenHash, User,
            };
            let spec = AuthSpec {
                users: vec![User {
                    name: "alice".into(),
                    password_hash: PasswordHashString::parse(
                        &hash_password("pw").expect("hashing works"),
                    )
                    .expect("a hash just made"),
                    rtsp_digest: Some(DigestHa1::of("alice", "pw")),
                }],
                tokens: vec![TokenHash::of("tok")],
            };
            Authenticator::new(spec).expect("random bytes")
        })
    } else {
        OPEN.get_or_init(|| Authenticator::new(Default::default()).expect("no secrets"))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let hub = Hub::new(crate::hub::PipelineInfo {
            name: "main".into(),
            source: crate::frame::SourceInfo {
                kind: "test",
                name: "fuzz".into(),
            },
            width: 16,
            height: 16,
            fps: 30,
            workers: 1,
            quality: 80,
            max_viewers: 4,
            h264_bitrate: 100_000,
            h264_gop_s: 2,
        });
        // A keyframe's parameter sets, so DESCRIBE does not wait for one.
        hub.h264().publish(conn::tests_support::keyframe());
        let server = Server::new(
            vec![hub],
            authenticator.clone(),
            None,
            ConnectionLimits::default(),
            Shutdown::new(),
        );
        let out = conn::SharedVec::default();
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let local: SocketAddr = ([127, 0, 0, 1], 8554).into();
        let mut c = conn::Conn::new(server, peer, local, Box::pin(out.clone()));
        let mut buf = bytes::BytesMut::new();
        let mut closed = false;
        // As the connection task reads: at most up to MAX_REQUEST buffered at a time.
        'reads: for piece in input.chunks(cut.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let take = rest.len().min(MAX_REQUEST.saturating_sub(buf.len()));
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if c.process(&mut buf).await == conn::Flow::Close {
                    closed = true;
                    break 'reads;
                }
            }
        }
        c.end().await;
        (out.take(), closed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::PipelineInfo;

    fn hub(name: &str) -> Hub {
        Hub::new(PipelineInfo {
            name: name.into(),
            ..PipelineInfo::for_tests(10)
        })
    }

    #[test]
    fn urls_name_streams() {
        let s = [hub("main"), hub("door")];
        assert_eq!(stream_for(&s, "/"), Some((0, false)));
        assert_eq!(stream_for(&s, ""), Some((0, false)));
        assert_eq!(stream_for(&s, "/trackID=0"), Some((0, true)));
        assert_eq!(stream_for(&s, "/door"), Some((1, false)));
        assert_eq!(stream_for(&s, "/door/"), Some((1, false)));
        assert_eq!(stream_for(&s, "/cam/door/trackID=0"), Some((1, true)));
        assert_eq!(stream_for(&s, "/main/trackID=0"), Some((0, true)));
        assert_eq!(stream_for(&s, "/garage"), None);
        assert_eq!(stream_for(&s, "/cam/"), None);
        assert_eq!(stream_for(&s, "/door/x"), None);
        assert_eq!(stream_for(&[], "/"), None);
    }
}
