//! ICE-TCP (RFC 6544), passive side: clients whose network blocks UDP connect to the TCP
//! port with the UDP port's number, and each connection carries datagrams framed by a
//! 16-bit length (RFC 4571). Frames in are routed to sessions like UDP datagrams (str0m
//! speaks ICE-TCP itself given the protocol); frames out go through a bounded queue per
//! connection, dropped when full, so a stalled connection holds at most
//! [`QUEUE_FRAMES`] packets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::{lock, Datagram, WebRtc};

/// Open ICE-TCP connections at most: a browser opens one or two per session.
pub const MAX_CONNECTIONS: usize = 256;
/// Frames queued for one connection: a 720p keyframe (~80 packets) and then some.
pub const QUEUE_FRAMES: usize = 256;
/// Largest frame taken from a client: STUN, DTLS and RTCP stay near the 1200-byte MTU.
const MAX_FRAME: usize = 4096;
/// A connection that sends no frame for this long is closed (clients send a STUN consent
/// check every ~5 s).
const READ_IDLE: Duration = Duration::from_secs(30);

pub(super) struct TcpSide {
    listener: TcpListener,
    /// The write queue of each connection, by its peer's address.
    conns: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    permits: Arc<Semaphore>,
}

impl TcpSide {
    pub fn new(listener: TcpListener) -> TcpSide {
        TcpSide {
            listener,
            conns: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    /// Queues `packet` for the connection from `to`; dropped if there is none or its queue
    /// is full.
    pub fn send(&self, to: SocketAddr, packet: &[u8]) {
        if let Some(q) = lock(&self.conns).get(&to) {
            let _ = q.try_send(packet.to_vec());
        }
    }

    /// Accepts connections until shutdown.
    pub async fn serve(self: Arc<Self>, server: Arc<WebRtc>) {
        let mut failures = 0u32;
        while let Some((stream, peer)) = server
            .shutdown
            .accept(&self.listener, &mut failures, "ICE-TCP")
            .await
        {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "ICE-TCP connection refused: {MAX_CONNECTIONS} open");
                continue;
            };
            let side = self.clone();
            let server = server.clone();
            tokio::spawn(async move {
                side.connection(server, stream, peer).await;
                lock(&side.conns).remove(&peer);
                drop(permit);
            });
        }
    }

    async fn connection(&self, server: Arc<WebRtc>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE_FRAMES);
        lock(&self.conns).insert(peer, tx);
        let writer = tokio::spawn(async move {
            let mut out = Vec::with_capacity(2 + 1500);
            while let Some(p) = rx.recv().await {
                out.clear();
                out.extend_from_slice(&(p.len() as u16).to_be_bytes());
                out.extend_from_slice(&p);
                let sent = tokio::time::timeout(READ_IDLE, wr.write_all(&out)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let frame = tokio::select! {
                _ = server.shutdown.cancelled() => break,
                r = tokio::time::timeout(READ_IDLE, read_frame(&mut rd, &mut buf)) => r,
            };
            match frame {
                Ok(Ok(n)) => server.route(Datagram {
                    at: Instant::now(),
                    proto: Protocol::Tcp,
                    source: peer,
                    destination: local,
                    data: buf[..n].to_vec(),
                }),
                _ => break,
            }
        }
        writer.abort();
    }
}

/// Reads one RFC 4571 frame into `buf`: its length.
async fn read_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut len = [0u8; 2];
    rd.read_exact(&mut len).await?;
    let n = u16::from_be_bytes(len) as usize;
    if n > buf.len() {
        return Err(std::io::Error::other("ICE-TCP frame too large"));
    }
    rd.read_exact(&mut buf[..n]).await?;
    Ok(n)
}
