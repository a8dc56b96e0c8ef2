//! WebRTC by WHEP against the real binary on 127.0.0.1: a client built on str0m (the same
//! crate as the server, but its own ICE, DTLS and SRTP state) offers to receive video,
//! connects over UDP, and decodes the H.264 it gets with OpenH264; the test pattern's
//! frame numbers read back from the pictures must climb. Then the session's end (DELETE,
//! silence), the limits, and the answers to bad requests.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use common::{Picamd, Response};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// One HTTP request with a body; the whole response.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let ct = content_type.map_or(String::new(), |c| format!("Content-Type: {c}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{ct}\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A receiving WebRTC peer on a UDP socket of its own.
struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    /// The answer, when this peer answered picamd's offer.
    answer: Option<String>,
    /// The video section (when this peer offered).
    mid: Option<str0m::media::Mid>,
}

impl Client {
    /// A peer with a recvonly video section (every codec str0m knows, like a browser, and
    /// the abs-capture-time extension) and its offer.
    async fn new() -> (Client, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder()
            .set_extension(9, str0m::rtp::Extension::AbsoluteCaptureTime)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let client = Client {
            rtc,
            socket,
            local,
            pending: Some(pending),
            answer: None,
            mid: Some(mid),
        };
        (client, offer.to_sdp_string())
    }

    /// A peer that answers picamd's `offer` (camera-streamer's handshake).
    async fn answering(offer: &str) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let offer = str0m::change::SdpOffer::from_sdp_string(offer).expect("an SDP offer");
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("the offer is acceptable");
        Client {
            rtc,
            socket,
            local,
            pending: None,
            answer: Some(answer.to_sdp_string()),
            mid: None,
        }
    }

    fn accept(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("an SDP answer");
        let pending = self.pending.take().expect("an offer pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the answer fits the offer");
    }

    /// Runs the peer until `until` says it has enough or `limit` passes; every video frame
    /// received goes to `on_frame`.
    async fn run(
        &mut self,
        limit: Duration,
        mut on_frame: impl FnMut(&str0m::media::MediaData) -> bool,
    ) -> bool {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = loop {
                match self.rtc.poll_output().expect("the client runs") {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination).await;
                    }
                    Output::Event(Event::MediaData(m)) => {
                        if on_frame(&m) {
                            return true;
                        }
                    }
                    Output::Event(_) => {}
                }
            };
            let now = Instant::now();
            if now >= end {
                return false;
            }
            let wait = timeout
                .min(end)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            let input = match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    let r = Receive::new(Protocol::Udp, from, self.local, &buf[..n]);
                    match r {
                        Ok(r) => Input::Receive(Instant::now(), r),
                        Err(_) => continue,
                    }
                }
                _ => Input::Timeout(Instant::now()),
            };
            self.rtc.handle_input(input).expect("input taken");
        }
    }
}

/// What a client decoded: frame numbers, and the capture-time lags abs-capture-time told.
#[derive(Default, Debug)]
struct Decoded {
    seqs: Vec<u32>,
    /// When the first picture decoded.
    first: Option<Instant>,
    lags_ms: Vec<f64>,
    sender_reports: usize,
}

/// Receives and decodes until `pictures` pictures decoded (or 20 s).
async fn receive(client: &mut Client, pictures: usize) -> Decoded {
    use openh264::formats::YUVSource;
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    let mut out = Decoded::default();
    let done = client
        .run(Duration::from_secs(20), |m| {
            if let Some(at) = m.ext_vals.abs_capture_time {
                let lag = SystemTime::now()
                    .duration_since(at.capture_time)
                    .unwrap_or_default();
                out.lags_ms.push(lag.as_secs_f64() * 1000.0);
            }
            if m.last_sender_info.is_some() {
                out.sender_reports += 1;
            }
            if let Ok(Some(p)) = decoder.decode(&m.data) {
                let (w, _) = p.dimensions();
                out.first.get_or_insert_with(Instant::now);
                out.seqs.push(picamd::source::test_pattern::read_seq_cells(
                    p.y(),
                    p.strides().0,
                    w,
                ));
            }
            out.seqs.len() >= pictures
        })
        .await;
    assert!(
        done,
        "only {} pictures decoded in 20 s: {out:?}",
        out.seqs.len()
    );
    out
}

async fn offer(p: &Picamd, path: &str) -> (Client, Response) {
    let (client, sdp) = Client::new().await;
    let r = request(
        p.addr,
        "POST",
        path,
        Some("application/sdp"),
        sdp.as_bytes(),
    )
    .await;
    (client, r)
}

async fn webrtc_viewers(p: &Picamd) -> u64 {
    p.state().await["viewers"]["webrtc"]
        .as_u64()
        .expect("viewers.webrtc")
}

/// Polls `/state` until the WebRTC viewers are `n` (10 s at most); how long it took.
async fn wait_viewers(p: &Picamd, n: u64) -> Duration {
    let t = Instant::now();
    p.wait_state(
        &format!("{n} WebRTC viewers"),
        Duration::from_secs(10),
        |s| s["viewers"]["webrtc"] == n,
    )
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_client_decodes_climbing_frame_numbers_and_delete_ends_the_session() {
    let p = Picamd::start(&["--size", "320x240", "--fps", "30"]);
    let posted = Instant::now();
    let (mut client, r) = offer(&p, "/whep").await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    let location = r.header("location").expect("a Location").to_owned();
    assert!(
        location.starts_with("/whep/") && location.len() == 6 + 32,
        "{location}"
    );
    let answer = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        answer.contains("a=candidate:") && answer.contains("127.0.0.1"),
        "{answer}"
    );
    assert!(answer.contains("H264/90000"), "{answer}");
    client.accept(&answer);
    let t = Instant::now();
    let got = receive(&mut client, 60).await;
    println!(
        "WHEP: POST to the first decoded picture {:?} (cold: the source and encoder start); \
         60 pictures in {:?}; frame numbers {:?}; capture-to-receive (abs-capture-time) \
         median {:.1} ms; frames after a sender report: {}",
        got.first.map(|f| f - posted),
        t.elapsed(),
        got.seqs,
        median(&got.lags_ms),
        got.sender_reports
    );
    assert!(got.seqs[0] > 0, "test-pattern pictures");
    for pair in got.seqs.windows(2) {
        assert!(pair[1] > pair[0], "frame numbers climb: {:?}", got.seqs);
    }
    assert!(!got.lags_ms.is_empty(), "abs-capture-time on the pictures");
    assert!(median(&got.lags_ms) < 1000.0, "{:?}", got.lags_ms);
    assert_eq!(webrtc_viewers(&p).await, 1);
    let streams: serde_json::Value = serde_json::from_slice(&p.get("/streams").await.body).unwrap();
    assert_eq!(streams["streams"][0]["urls"]["whep"], "/cam/main/whep");
    let m = String::from_utf8(p.get("/metrics").await.body).unwrap();
    assert!(
        m.contains("picamd_viewers{stream=\"main\",output=\"webrtc\"} 1"),
        "{m}"
    );

    let r = request(p.addr, "DELETE", &location, None, b"").await;
    assert_eq!(r.status, 204);
    let took = wait_viewers(&p, 0).await;
    println!("DELETE to viewers.webrtc 0: {took:?}");
    let r = request(p.addr, "DELETE", &location, None, b"").await;
    assert_eq!(r.status, 404, "a session ends once");
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pli_from_the_client_gets_a_keyframe_made_for_it() {
    // A GOP of 60 s: no keyframe comes by itself during the test.
    let p = Picamd::start(&["--size", "320x240", "--fps", "30", "--h264-gop", "60"]);
    let (mut client, r) = offer(&p, "/whep").await;
    assert_eq!(r.status, 201);
    client.accept(&String::from_utf8(r.body).unwrap());
    receive(&mut client, 10).await;
    // Past the encoder's 0.5 s between forced keyframes, still receiving: none comes.
    let mut keyframes = 0;
    client
        .run(Duration::from_millis(1000), |m| {
            keyframes += usize::from(m.is_keyframe());
            false
        })
        .await;
    assert_eq!(keyframes, 0, "no keyframe without a reason");
    let before = p.state().await["h264"]["keyframes"].as_u64().unwrap();
    let mid = client.mid.unwrap();
    client
        .rtc
        .writer(mid)
        .expect("the video section")
        .request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
        .expect("a PLI");
    let asked = Instant::now();
    let got = client
        .run(Duration::from_secs(5), |m| m.is_keyframe())
        .await;
    assert!(got, "no keyframe within 5 s of the PLI");
    println!("PLI to keyframe received: {:?}", asked.elapsed());
    let after = p.state().await["h264"]["keyframes"].as_u64().unwrap();
    assert_eq!(after, before + 1, "one keyframe made for the PLI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_streams_whep_and_the_json_handshake_answer_too() {
    let p = Picamd::start(&["--size", "320x240", "--fps", "15"]);
    let (mut client, r) = offer(&p, "/cam/main/whep").await;
    assert_eq!(r.status, 201);
    assert!(r.header("location").unwrap().starts_with("/cam/main/whep/"));
    client.accept(&String::from_utf8(r.body).unwrap());
    assert!(!receive(&mut client, 5).await.seqs.is_empty());

    // OctoPrint's webrtc:// URLs: one JSON offer, one JSON answer.
    let (mut client, sdp) = Client::new().await;
    let body = serde_json::json!({"type": "offer", "sdp": sdp}).to_string();
    let r = request(
        p.addr,
        "POST",
        "/webrtc",
        Some("application/json"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["type"], "answer");
    client.accept(answer["sdp"].as_str().unwrap());
    assert!(!receive(&mut client, 5).await.seqs.is_empty());
    // camera-streamer's handshake (Mainsail): picamd offers, the client answers.
    let r = request(
        p.addr,
        "POST",
        "/webrtc",
        None,
        br#"{"type":"request","iceServers":null}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let offer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(offer["type"], "offer");
    let mut client = Client::answering(offer["sdp"].as_str().unwrap()).await;
    let answer = client.answer.take().unwrap();
    let body = serde_json::json!({"type": "answer", "id": offer["id"], "sdp": answer}).to_string();
    let r = request(
        p.addr,
        "POST",
        "/webrtc",
        Some("application/json"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let cand = serde_json::json!({"type": "remote_candidate", "id": offer["id"], "candidates": []});
    let r = request(
        p.addr,
        "POST",
        "/webrtc",
        Some("application/json"),
        cand.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!receive(&mut client, 5).await.seqs.is_empty());
    // An answer to no offer.
    let body = serde_json::json!({"type": "answer", "id": "nope", "sdp": "v=0"}).to_string();
    let r = request(p.addr, "POST", "/webrtc", None, body.as_bytes()).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_and_methods_get_clear_answers() {
    let p = Picamd::start(&["--size", "320x240"]);
    let (_, sdp) = Client::new().await;
    let text = |r: &Response| String::from_utf8_lossy(&r.body).into_owned();

    let r = request(p.addr, "POST", "/whep", Some("text/plain"), sdp.as_bytes()).await;
    assert_eq!(r.status, 415, "{}", text(&r));
    assert!(text(&r).contains("application/sdp"));
    let r = request(p.addr, "POST", "/whep", Some("application/sdp"), b"hello").await;
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("SDP"), "{}", text(&r));
    let audio = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                 m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
                 a=rtpmap:111 opus/48000/2\r\n";
    let r = request(
        p.addr,
        "POST",
        "/whep",
        Some("application/sdp"),
        audio.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(text(&r).contains("no video"), "{}", text(&r));
    // Video without H.264 (packetization mode 0 only, and VP8).
    let vp8 = sdp
        .lines()
        .filter(|l| !l.contains("H264") && !l.contains("packetization-mode"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let r = request(
        p.addr,
        "POST",
        "/whep",
        Some("application/sdp"),
        vp8.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(text(&r).contains("H.264"), "{}", text(&r));
    assert_eq!(webrtc_viewers(&p).await, 0, "refused offers hold no viewer");

    let r = request(
        p.addr,
        "PATCH",
        "/whep/0123",
        Some("application/trickle-ice-sdpfrag"),
        b"a=x",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("DELETE, OPTIONS"));
    let r = request(p.addr, "OPTIONS", "/whep", None, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("accept-post"), Some("application/sdp"));
    let r = request(p.addr, "DELETE", "/whep/nosuchsession", None, b"").await;
    assert_eq!(r.status, 404);
    let r = request(
        p.addr,
        "POST",
        "/cam/nosuch/whep",
        Some("application/sdp"),
        sdp.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_viewer_limit_an_offer_gets_503_with_retry_after() {
    let p = Picamd::start(&["--size", "320x240", "--max-viewers", "1"]);
    let (_first, r) = offer(&p, "/whep").await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let (_second, r) = offer(&p, "/whep").await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert_eq!(webrtc_viewers(&p).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_silent_is_dropped_after_the_peer_timeout() {
    let p = Picamd::start(&["--size", "320x240", "--webrtc-peer-timeout", "2"]);
    let (mut client, r) = offer(&p, "/whep").await;
    assert_eq!(r.status, 201);
    client.accept(&String::from_utf8(r.body).unwrap());
    receive(&mut client, 3).await;
    // The client stops: no STUN, no RTCP from now on.
    drop(client);
    let silent = Instant::now();
    wait_viewers(&p, 0).await;
    let took = silent.elapsed();
    println!("silent client dropped after {took:?} (peer timeout 2 s)");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[test]
fn webrtc_can_be_turned_off_and_ice_servers_are_advertised() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = Picamd::start(&["--webrtc", "off"]);
    rt.block_on(async {
        let r = request(p.addr, "POST", "/whep", Some("application/sdp"), b"v=0").await;
        assert_eq!(r.status, 404);
        let s: serde_json::Value = serde_json::from_slice(&p.get("/streams").await.body).unwrap();
        assert!(s["streams"][0]["urls"].get("whep").is_none());
    });
    drop(p);
    let p = Picamd::start(&[
        "--webrtc-ice-server",
        "stun:stun.example.net:3478",
        "--webrtc-ice-server",
        "turn:alice:secret@turn.example.net:3478?transport=udp",
    ]);
    rt.block_on(async {
        let s: serde_json::Value = serde_json::from_slice(&p.get("/streams").await.body).unwrap();
        let ice = &s["webrtc"]["ice_servers"];
        assert_eq!(ice[0]["urls"], "stun:stun.example.net:3478");
        assert_eq!(ice[1]["urls"], "turn:turn.example.net:3478?transport=udp");
        assert_eq!(ice[1]["username"], "alice");
        assert_eq!(ice[1]["credential"], "secret");
        let (_c, sdp) = Client::new().await;
        let r = request(
            p.addr,
            "POST",
            "/whep",
            Some("application/sdp"),
            sdp.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 201);
        let links: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("link"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(links.len(), 2, "{links:?}");
        assert_eq!(links[0], "<stun:stun.example.net:3478>; rel=\"ice-server\"");
        assert!(
            links[1].contains("username=\"alice\"") && links[1].contains("credential=\"secret\"")
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_sessions_share_the_one_socket_and_each_gets_the_frames() {
    use common::procfs::{cpu_ticks, status_field};
    const N: usize = 8;
    let p = Picamd::start(&["--size", "640x480", "--fps", "30"]);
    let pid = p.pid().to_string();
    let rss_before = status_field(&pid, "VmRSS:").unwrap_or(0);
    let mut clients = Vec::new();
    for _ in 0..N {
        let (mut c, r) = offer(&p, "/whep").await;
        assert_eq!(r.status, 201);
        c.accept(&String::from_utf8(r.body).unwrap());
        clients.push(c);
    }
    let ticks_before = cpu_ticks(&pid);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut frames = 0u32;
                c.run(Duration::from_secs(6), |_| {
                    frames += 1;
                    false
                })
                .await;
                frames
            })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(&pid) - ticks_before) as f64 / 100.0 / secs * 100.0;
    let rss_after = status_field(&pid, "VmRSS:").unwrap_or(0);
    assert_eq!(webrtc_viewers(&p).await, N as u64);
    println!(
        "{N} WebRTC sessions, 640x480 at 30 fps, {secs:.1} s: frames per client {counts:?}; \
         server CPU {cpu:.0} % of a core; RSS {} → {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    // Connecting takes about a second of the six; the rest is 30 fps.
    for c in &counts {
        assert!(*c >= 100, "a client got {c} frames in 6 s: {counts:?}");
    }
}
