//! The request path end to end without sockets (a [`Conn`] over an in-memory writer), and
//! UDP delivery over loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::conn::{tests_support, Conn, Flow, SharedVec};
use super::*;
use crate::auth::{hash_password, AuthSpec, DigestHa1, PasswordHashString, User};
use crate::hub::{Output, PipelineInfo};

fn hub(max_viewers: usize) -> Hub {
    Hub::new(PipelineInfo::for_tests(max_viewers))
}

fn open_auth() -> Arc<Authenticator> {
    Authenticator::new(AuthSpec::default()).unwrap()
}

struct Client {
    conn: Conn,
    out: SharedVec,
    cseq: u32,
}

impl Client {
    fn new(hubs: Vec<Hub>, auth: Arc<Authenticator>) -> Client {
        let server = Server::new(
            hubs,
            auth,
            None,
            ConnectionLimits::default(),
            Shutdown::new(),
        );
        let out = SharedVec::default();
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let local: SocketAddr = ([127, 0, 0, 1], 8554).into();
        Client {
            conn: Conn::new(server, peer, local, Box::pin(out.clone())),
            out,
            cseq: 0,
        }
    }

    /// Sends raw bytes; what came back, and whether the connection closed.
    async fn raw(&mut self, bytes: &[u8]) -> (String, Flow) {
        let mut buf = BytesMut::from(bytes);
        let flow = self.conn.process(&mut buf).await;
        (String::from_utf8_lossy(&self.out.take()).into_owned(), flow)
    }

    /// Sends `METHOD url` with `headers` (CRLF-terminated lines) and a fresh CSeq.
    async fn req(&mut self, method: &str, url: &str, headers: &str) -> String {
        self.cseq += 1;
        let text = format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\n{headers}\r\n",
            self.cseq
        );
        let (reply, flow) = self.raw(text.as_bytes()).await;
        assert_eq!(flow, Flow::Continue, "{reply}");
        assert!(
            reply.contains(&format!("CSeq: {}\r\n", self.cseq)),
            "CSeq echoed: {reply}"
        );
        reply
    }
}

fn status(reply: &str) -> u16 {
    reply
        .strip_prefix("RTSP/1.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a reply: {reply:?}"))
}

fn header<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    reply
        .split("\r\n")
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

fn session_id(reply: &str) -> String {
    header(reply, "Session")
        .and_then(|s| s.split(';').next())
        .expect("a Session header")
        .to_owned()
}

const URL: &str = "rtsp://127.0.0.1:8554/main";

#[tokio::test]
async fn options_describe_setup_play_teardown_over_tcp() {
    let h = hub(10);
    h.h264().publish(tests_support::keyframe());
    let mut c = Client::new(vec![h.clone()], open_auth());
    let r = c.req("OPTIONS", "*", "").await;
    assert_eq!(status(&r), 200);
    assert!(header(&r, "Public").unwrap().contains("DESCRIBE"));

    let r = c.req("DESCRIBE", URL, "Accept: application/sdp\r\n").await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(header(&r, "Content-Type"), Some("application/sdp"));
    assert_eq!(
        header(&r, "Content-Base"),
        Some("rtsp://127.0.0.1:8554/main/")
    );
    assert!(
        r.contains("a=fmtp:96 packetization-mode=1;profile-level-id=42C01F;sprop-parameter-sets=")
    );

    let r = c
        .req(
            "SETUP",
            &format!("{URL}/trackID=0"),
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
        )
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let transport = header(&r, "Transport").unwrap();
    assert!(
        transport.starts_with("RTP/AVP/TCP;unicast;interleaved=0-1;ssrc="),
        "{transport}"
    );
    assert!(header(&r, "Session").unwrap().ends_with(";timeout=60"));
    let id = session_id(&r);
    assert_eq!(h.viewers(Output::Rtsp), 1, "a session is a viewer");

    let r = c
        .req("PLAY", URL, &format!("Session: {id}\r\nRange: npt=0-\r\n"))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(header(&r, "RTP-Info")
        .unwrap()
        .starts_with(&format!("url={URL}/trackID=0;seq=")));
    assert_eq!(header(&r, "Range"), Some("npt=now-"));
    // The newest unit is a keyframe: sent at once, as interleaved RTP on channel 0, then a
    // sender report on channel 1; a P-frame published later follows.
    h.h264().publish(tests_support::unit(false));
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(c.out.take());
        if count_frames(&got).0 >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (units, channels) = count_frames(&got);
    assert_eq!(units, 2, "two units, each ending in a marker bit");
    assert!(channels.contains(&1), "a sender report on the RTCP channel");

    let r = c
        .req("GET_PARAMETER", URL, &format!("Session: {id}\r\n"))
        .await;
    assert_eq!(status(&r), 200);
    let r = c.req("TEARDOWN", URL, &format!("Session: {id}\r\n")).await;
    assert_eq!(status(&r), 200);
    assert_eq!(h.viewers(Output::Rtsp), 0, "TEARDOWN ends the viewer");
    assert_eq!(h.h264().consumers(), 0);
    let r = c.req("PLAY", URL, &format!("Session: {id}\r\n")).await;
    assert_eq!(status(&r), 454);
}

/// Interleaved frames in `data`: units ended (RTP packets with the marker bit on channel 0)
/// and the channels seen. Every byte must belong to a whole frame.
fn count_frames(data: &[u8]) -> (usize, Vec<u8>) {
    let (mut units, mut channels, mut i) = (0, Vec::new(), 0);
    while i + 4 <= data.len() {
        assert_eq!(data[i], b'$', "framing at {i}");
        let len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
        let Some(packet) = data.get(i + 4..i + 4 + len) else {
            break;
        };
        if data[i + 1] == 0 && packet[1] & 0x80 != 0 {
            units += 1;
        }
        channels.push(data[i + 1]);
        i += 4 + len;
    }
    (units, channels)
}

#[tokio::test]
async fn bad_requests_get_a_clear_status_or_a_closed_connection() {
    let h = hub(10);
    h.h264().publish(tests_support::keyframe());
    let mut c = Client::new(vec![h.clone()], open_auth());
    let r = c.req("FOO", URL, "").await;
    assert_eq!(status(&r), 501);
    assert!(header(&r, "Public").is_some());
    let r = c.req("RECORD", URL, "").await;
    assert_eq!(status(&r), 405);
    assert!(header(&r, "Allow").is_some());
    let r = c.req("DESCRIBE", "rtsp://127.0.0.1:8554/nope", "").await;
    assert_eq!(status(&r), 404);
    let r = c.req("PLAY", URL, "Session: 1234\r\n").await;
    assert_eq!(status(&r), 454);
    let r = c.req("PLAY", URL, "").await;
    assert_eq!(status(&r), 454);
    for transport in [
        "RTP/AVP;multicast",
        "RTP/SAVP/UDP;unicast;client_port=5000-5001",
        "RTP/AVP;unicast",
        "RTP/AVP;unicast;client_port=5000-5001;destination=10.0.0.1",
        // rtsp-types 0.1.3 panics on this one; picamd never hands it over.
        r#"RTP/AVP;unicast;dest_addr="\"/""#,
        "garbage ;;; ==",
    ] {
        let r = c
            .req("SETUP", URL, &format!("Transport: {transport}\r\n"))
            .await;
        assert_eq!(status(&r), 461, "{transport}: {r}");
    }
    let r = c.req("SETUP", URL, "").await;
    assert_eq!(status(&r), 461);
    assert_eq!(h.viewers(Output::Rtsp), 0, "refused setups hold no viewer");
    let r = c
        .req("SET_PARAMETER", URL, "Content-Length: 5\r\n\r\nx: 1\n")
        .await;
    assert!(matches!(status(&r), 200 | 451), "{r}");

    // No CSeq: 400 without one, connection kept.
    let (r, flow) = c.raw(b"OPTIONS * RTSP/1.0\r\n\r\n").await;
    assert_eq!((status(&r), flow), (400, Flow::Continue));
    let (r, flow) = c.raw(b"OPTIONS * RTSP/2.0\r\nCSeq: 9\r\n\r\n").await;
    assert_eq!((status(&r), flow), (505, Flow::Continue));
    // Data on a channel nobody set up: closed.
    let (r, flow) = c.raw(&[b'$', 5, 0, 2, 1, 2]).await;
    assert_eq!((r.as_str(), flow), ("", Flow::Close));

    // Garbage: 400 and closed.
    let mut c = Client::new(vec![h.clone()], open_auth());
    let (r, flow) = c.raw(b"\x00\x01 hello\r\n\r\n").await;
    assert_eq!((status(&r), flow), (400, Flow::Close));
    // A head that never ends within MAX_REQUEST: 400 and closed.
    let mut c = Client::new(vec![h.clone()], open_auth());
    let mut huge = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX-Pad: ".to_vec();
    huge.resize(MAX_REQUEST + 10, b'a');
    let (r, flow) = c.raw(&huge).await;
    assert_eq!((status(&r), flow), (400, Flow::Close), "{r}");
}

#[tokio::test]
async fn sessions_count_against_max_viewers() {
    let h = hub(1);
    h.h264().publish(tests_support::keyframe());
    let setup = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n";
    let mut a = Client::new(vec![h.clone()], open_auth());
    assert_eq!(status(&a.req("SETUP", URL, setup).await), 200);
    let mut b = Client::new(vec![h.clone()], open_auth());
    let r = b.req("SETUP", URL, setup).await;
    assert_eq!(status(&r), 503, "{r}");
    a.conn.end().await;
    assert_eq!(status(&b.req("SETUP", URL, setup).await), 200);
}

fn alice_user() -> User {
    User {
        name: "alice".into(),
        password_hash: PasswordHashString::parse(&hash_password("pw").unwrap()).unwrap(),
        rtsp_digest: Some(DigestHa1::of("alice", "pw")),
    }
}

fn alice() -> Arc<Authenticator> {
    Authenticator::new(AuthSpec {
        users: vec![alice_user()],
        tokens: vec![],
    })
    .unwrap()
}

#[tokio::test]
async fn with_auth_on_a_401_offers_digest_and_basic_and_both_work() {
    use md5::{Digest as _, Md5};
    let h = hub(10);
    h.h264().publish(tests_support::keyframe());
    let mut c = Client::new(vec![h.clone()], alice());
    // OPTIONS stays open (it tells nothing).
    assert_eq!(status(&c.req("OPTIONS", URL, "").await), 200);
    let r = c.req("DESCRIBE", URL, "").await;
    assert_eq!(status(&r), 401);
    let challenges: Vec<&str> = r
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .collect();
    assert_eq!(challenges.len(), 2, "{r}");
    assert!(challenges[0].starts_with("Digest realm=\"picamd\", nonce=\""));
    assert_eq!(challenges[1], "Basic realm=\"picamd\"");
    assert!(!r.contains("v=0"), "no SDP without credentials");

    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:pw");
    let r = c
        .req(
            "DESCRIBE",
            URL,
            &format!("Authorization: Basic {basic}\r\n"),
        )
        .await;
    assert_eq!(status(&r), 200, "{r}");

    let nonce = challenges[0].split('"').nth(3).unwrap();
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let md5 = |s: String| hex(&Md5::digest(s.as_bytes()));
    let ha1 = md5("alice:picamd:pw".into());
    let ha2 = md5(format!("DESCRIBE:{URL}"));
    let response = md5(format!("{ha1}:{nonce}:{ha2}"));
    let digest = format!(
        r#"Digest username="alice", realm="picamd", nonce="{nonce}", uri="{URL}", response="{response}""#
    );
    let mut d = Client::new(vec![h.clone()], c.conn_auth());
    let r = d
        .req("DESCRIBE", URL, &format!("Authorization: {digest}\r\n"))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let wrong = digest.replace(&response, &"0".repeat(32));
    let r = d
        .req("DESCRIBE", URL, &format!("Authorization: {wrong}\r\n"))
        .await;
    assert_eq!(status(&r), 401);
}

impl Client {
    /// The authenticator this client's server uses (a second connection to the same server
    /// shares its nonces).
    fn conn_auth(&self) -> Arc<Authenticator> {
        self.conn.server_auth()
    }
}

#[tokio::test]
async fn udp_sessions_send_to_the_clients_ports() {
    let h = hub(10);
    h.h264().publish(tests_support::keyframe());
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtcp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (p1, p2) = (
        rtp.local_addr().unwrap().port(),
        rtcp.local_addr().unwrap().port(),
    );
    let mut c = Client::new(vec![h.clone()], open_auth());
    let r = c
        .req(
            "SETUP",
            &format!("{URL}/trackID=0"),
            &format!("Transport: RTP/AVP;unicast;client_port={p1}-{p2}\r\n"),
        )
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let t = header(&r, "Transport").unwrap();
    let server_ports = t
        .split(';')
        .find_map(|p| p.strip_prefix("server_port="))
        .expect("server_port");
    let (a, b) = server_ports.split_once('-').unwrap();
    let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
    assert_eq!((a % 2, b), (0, a + 1), "an even/odd pair");
    let id = session_id(&r);
    assert_eq!(
        status(&c.req("PLAY", URL, &format!("Session: {id}\r\n")).await),
        200
    );
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), rtp.recv_from(&mut buf))
        .await
        .expect("an RTP packet")
        .unwrap();
    assert_eq!(from.port(), a);
    assert_eq!(buf[0], 0x80);
    assert!(n > 12);
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), rtcp.recv_from(&mut buf))
        .await
        .expect("a sender report")
        .unwrap();
    assert_eq!((from.port(), buf[1]), (b, 200));
    assert!(n >= 28);
    c.conn.end().await;
    assert_eq!(h.viewers(Output::Rtsp), 0);
}

#[test]
fn the_fuzz_entry_survives_its_seeds() {
    let script = format!(
        "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\nDESCRIBE {URL} RTSP/1.0\r\nCSeq: 2\r\n\r\n\
         SETUP {URL}/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n\r\n"
    );
    for cut in [1, 7, 1000] {
        let (out, closed) = fuzz_exchange(script.as_bytes(), cut, false);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("RTSP/1.0 200 OK").count(), 3, "{text}");
        assert!(!closed);
    }
    let (out, _) = fuzz_exchange(script.as_bytes(), 5, true);
    assert!(String::from_utf8_lossy(&out).contains("401 Unauthorized"));
}

/// A small stand-in for the fuzz target on stable: seeded mutations (byte flips, cuts,
/// splices of RTSP words) of a valid conversation must never panic and must leave only
/// whole replies or interleaved frames.
#[test]
fn mutated_conversations_never_panic() {
    let seed = format!(
        "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\nDESCRIBE {URL} RTSP/1.0\r\nCSeq: 2\r\n\r\n\
         SETUP {URL}/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP;unicast;client_port=50000-50001\r\n\r\n\
         PLAY {URL} RTSP/1.0\r\nCSeq: 4\r\nSession: 00\r\n\r\n$\x01\x00\x02ab\
         SET_PARAMETER {URL} RTSP/1.0\r\nCSeq: 5\r\nContent-Length: 3\r\n\r\nabc"
    );
    let words: &[&[u8]] = &[
        b"\r\n",
        b"\r\n\r\n",
        b";",
        b"=",
        b"\\",
        b"\"",
        b"$",
        b"-",
        b"RTSP/2.0",
        b"CSeq: ",
        b"Transport: RTP/AVP/TCP;interleaved=",
        b";dest_addr=\"",
        b"Session: ",
        b"Content-Length: 99999",
        b"Authorization: Digest username=\"",
        b"TEARDOWN ",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let mut input = seed.clone().into_bytes();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % (input.len() + 1);
            match next() % 3 {
                0 if at < input.len() => input[at] ^= 1 << (next() % 8),
                1 => {
                    let w = words[(next() as usize) % words.len()];
                    input.splice(at..at, w.iter().copied());
                }
                _ => {
                    let end = (at + (next() as usize) % 40).min(input.len());
                    input.drain(at..end);
                }
            }
        }
        let cut = 1 + (next() % 64) as usize;
        let (out, _) = fuzz_exchange(&input, cut, next() % 2 == 0);
        let text = String::from_utf8_lossy(&out);
        assert!(
            out.is_empty() || out.starts_with(b"RTSP/1.0 ") || out.starts_with(b"$"),
            "{text}"
        );
    }
}

/// Over a real socket through [`serve`]: a client that SETUPs and never PLAYs is dropped
/// when its session times out, and its viewer is gone with it; a client that keeps sending
/// keep-alives stays.
#[tokio::test]
async fn a_session_that_never_plays_is_dropped_at_its_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = hub(10);
    h.h264().publish(tests_support::keyframe());
    let shutdown = Shutdown::new();
    let server = Server::new(
        vec![h.clone()],
        open_auth(),
        None,
        ConnectionLimits::default(),
        shutdown.clone(),
    )
    .with_timeout(Duration::from_secs(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(serve(listener, server));
    let setup = |cseq: u32| {
        format!(
            "SETUP rtsp://{addr}/main/trackID=0 RTSP/1.0\r\nCSeq: {cseq}\r\n\
             Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
        )
    };
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(setup(1).as_bytes()).await.unwrap();
    busy.write_all(setup(1).as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains(";timeout=1"));
    let _ = busy.read(&mut buf).await.unwrap();
    assert_eq!(h.viewers(Output::Rtsp), 2);
    let t = std::time::Instant::now();
    for cseq in 2..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let keepalive =
            format!("GET_PARAMETER rtsp://{addr}/main RTSP/1.0\r\nCSeq: {cseq}\r\n\r\n");
        busy.write_all(keepalive.as_bytes()).await.unwrap();
        assert!(
            busy.read(&mut buf).await.unwrap() > 0,
            "the busy client stays"
        );
    }
    // The idle one was closed after about a second.
    let n = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf))
        .await
        .expect("closed by now")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF");
    assert!(t.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        h.viewers(Output::Rtsp),
        1,
        "the idle session's viewer is gone"
    );
    shutdown.trigger();
    served.await.unwrap();
    assert_eq!(h.viewers(Output::Rtsp), 0, "shutdown ends the rest");
}
