//! Authentication, CORS and the limits, against the real binary over raw sockets.

use crate::common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{header, Picamd, TempFile};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery";
const TOKEN: &str = "k7Yc3Q-test-token_0123456789abcdefghij";
const CHALLENGE: &str = r#"Basic realm="picamd", charset="UTF-8""#;

/// The argon2 hash of [`PASSWORD`], made once per test binary.
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| picamd::auth::hash_password(PASSWORD).unwrap())
}

/// A config file with user `alice` and [`TOKEN`], plus `extra` top-level keys.
fn auth_config(extra: &str) -> TempFile {
    TempFile::with(&format!(
        "size = \"320x240\"\nfps = 10\n{extra}\n[auth]\n\
         users = [{{ name = \"alice\", password_hash = \"{}\" }}]\n\
         tokens = [\"{}\"]\n",
        password_hash(),
        picamd::auth::TokenHash::of(TOKEN).to_config_string()
    ))
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request; reads the head, and the body only when it has a `Content-Length` (streams
/// are left unread and closed).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    call_on(stream, addr, method, path, headers, body).await
}

async fn call_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("send");
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
        .await
        .unwrap_or_else(|_| panic!("no response to {method} {path} within 10 s"))
}

async fn read_response(stream: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before the response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    if let Some(len) = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = stream.read(&mut chunk).await.expect("read body");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    call(addr, "GET", path, headers, "").await
}

/// Every URL that needs credentials when authentication is on, with the status it gives
/// with them (`/nope` is a 404, but only once the client has proved who it is).
const PROTECTED: &[(&str, u16)] = &[
    ("/", 200),
    ("/assets/app.js", 200),
    ("/stream", 200),
    ("/stream.mjpg", 200),
    ("/?action=stream", 200),
    ("/snapshot", 200),
    ("/snapshot.jpg", 200),
    ("/?action=snapshot", 200),
    ("/state", 200),
    ("/metrics", 200),
    ("/streams", 200),
    ("/controls", 200),
    ("/cam/main/", 200),
    ("/cam/main", 308),
    ("/cam/main/stream", 200),
    ("/cam/main/stream.mjpg", 200),
    ("/cam/main/snapshot", 200),
    ("/cam/main/snapshot.jpg", 200),
    ("/cam/main/state", 200),
    ("/cam/main/controls", 200),
    ("/mjpgstreamer/main", 200),
    ("/mjpgsnapshot/main", 200),
    ("/mjpgstreamer/nope", 404),
    ("/nope", 404),
];

fn with_token(path: &str, token: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}token={token}")
}

#[tokio::test]
async fn every_url_but_healthz_needs_credentials() {
    let config = auth_config("");
    let p = Picamd::start(&["--config", config.as_str()]);
    let good = basic("alice", PASSWORD);
    let bearer = format!("Bearer {TOKEN}");
    for (i, &(path, ok)) in PROTECTED.iter().enumerate() {
        let r = get(p.addr, path, &[]).await;
        assert_eq!(r.status, 401, "{path} without credentials");
        assert_eq!(r.header("www-authenticate"), Some(CHALLENGE), "{path}");
        // Wrong guesses from an address of their own per URL, to stay under the lockout.
        let wrong = |n: u8| async move { (from(10 + 3 * i as u8 + n, p.addr).await, p.addr) };
        let (s, a) = wrong(0).await;
        let r = call_on(
            s,
            a,
            "GET",
            path,
            &[("Authorization", &basic("alice", "wrong"))],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{path} with a wrong password");
        assert_eq!(r.header("www-authenticate"), Some(CHALLENGE), "{path}");
        let (s, a) = wrong(1).await;
        let bad_bearer = format!("Bearer {TOKEN}x");
        let r = call_on(s, a, "GET", path, &[("Authorization", &bad_bearer)], "").await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let (s, a) = wrong(2).await;
        let r = call_on(s, a, "GET", &with_token(path, "nope"), &[], "").await;
        assert_eq!(r.status, 401, "{path} with a wrong ?token=");

        let r = get(p.addr, path, &[("Authorization", &good)]).await;
        assert_eq!(r.status, ok, "{path} with Basic: {}", r.text());
        let r = get(p.addr, path, &[("Authorization", &bearer)]).await;
        assert_eq!(r.status, ok, "{path} with Bearer");
        let r = get(p.addr, &with_token(path, TOKEN), &[]).await;
        assert_eq!(r.status, ok, "{path} with ?token=");
    }
    // A snapshot with credentials is a real JPEG.
    let r = get(p.addr, "/snapshot", &[("Authorization", &good)]).await;
    assert_eq!(&r.body[..2], &[0xFF, 0xD8]);
    let r = get(p.addr, "/healthz", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
}

/// Every `Set-Cookie` header of a response.
fn set_cookies(r: &Resp) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// What a request let in by `?token=TOKEN` sets, over plain HTTP.
fn token_cookie() -> String {
    format!("picamd_token={TOKEN}; Path=/; HttpOnly; SameSite=Strict")
}

/// What a `401` for a wrong or stale cookie sets, over plain HTTP.
const CLEAR_COOKIE: &str = "picamd_token=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict";

#[tokio::test]
async fn a_token_in_the_page_url_becomes_a_cookie_for_the_page_s_own_requests() {
    let config = auth_config("");
    let p = Picamd::start(&["--config", config.as_str()]);
    let r = get(p.addr, &with_token("/", TOKEN), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("/assets/app.js"), "the player page");
    assert_eq!(set_cookies(&r), [token_cookie().as_str()]);

    // What the page then loads by itself, with nothing but the cookie.
    let cookie = format!("picamd_token={TOKEN}");
    for path in [
        "/assets/app.js",
        "/assets/player.css",
        "/state",
        "/snapshot",
        "/stream",
        "/streams",
        "/cam/main/state",
    ] {
        let r = get(p.addr, path, &[("Cookie", &cookie)]).await;
        assert_eq!(r.status, 200, "{path} with the cookie: {}", r.text());
        assert_eq!(
            set_cookies(&r),
            [] as [&str; 0],
            "{path}: only ?token= sets it"
        );
    }
    let r = get(p.addr, "/snapshot", &[("Cookie", &cookie)]).await;
    assert_eq!(&r.body[..2], &[0xFF, 0xD8], "a JPEG");
    // Among a browser's other cookies for the host, and on the WebSocket upgrade.
    let jar = format!("theme=dark;{cookie} ;  lang=en");
    assert_eq!(get(p.addr, "/state", &[("Cookie", &jar)]).await.status, 200);
    let mut ws = ws_connect(p.addr, "/ws", &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(hello(&mut ws).await["type"], "hello");

    // Any URL let in by ?token= sets it; Basic and Bearer never do.
    let r = get(p.addr, &with_token("/state", TOKEN), &[]).await;
    assert_eq!(
        (r.status, set_cookies(&r)),
        (200, vec![token_cookie().as_str()])
    );
    for auth in [basic("alice", PASSWORD), format!("Bearer {TOKEN}")] {
        for path in ["/", "/assets/app.js", "/state"] {
            let r = get(p.addr, path, &[("Authorization", &auth)]).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(set_cookies(&r), [] as [&str; 0], "{path} with {auth:.6}");
        }
    }
    // The Authorization header goes first: the cookie does not rescue a wrong one (and is
    // not cleared, since it was not what failed).
    let s = from(40, p.addr).await;
    let wrong = basic("alice", "wrong");
    let r = call_on(
        s,
        p.addr,
        "GET",
        "/state",
        &[("Authorization", &wrong), ("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!((r.status, set_cookies(&r)), (401, vec![]));
    // So does ?token=: a wrong one with a good cookie is refused, the cookie kept.
    let s = from(41, p.addr).await;
    let r = call_on(
        s,
        p.addr,
        "GET",
        &with_token("/state", "wrong"),
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!((r.status, set_cookies(&r)), (401, vec![]));

    // /healthz is left alone.
    let r = get(p.addr, &with_token("/healthz", TOKEN), &[]).await;
    assert_eq!((r.status, set_cookies(&r)), (200, vec![]));
    // No credentials at all: the usual 401, no cookie either way.
    let r = get(p.addr, "/state", &[("Cookie", "theme=dark")]).await;
    assert_eq!((r.status, set_cookies(&r)), (401, vec![]));
}

#[tokio::test]
async fn a_wrong_cookie_is_refused_cleared_and_counted_as_a_failure() {
    let config = auth_config("");
    let p = Picamd::start(&["--config", config.as_str()]);
    for (i, path) in ["/", "/assets/app.js", "/state", "/snapshot", "/stream"]
        .into_iter()
        .enumerate()
    {
        let s = from(50 + i as u8, p.addr).await;
        let cookie = format!("theme=dark; picamd_token={TOKEN}x");
        let r = call_on(s, p.addr, "GET", path, &[("Cookie", &cookie)], "").await;
        assert_eq!(r.status, 401, "{path} with a wrong cookie");
        assert_eq!(r.header("www-authenticate"), Some(CHALLENGE), "{path}");
        assert_eq!(set_cookies(&r), [CLEAR_COOKIE], "{path}");
    }
    // A cookie that is no token at all (empty, too long) is cleared too.
    let long = format!(
        "picamd_token={}",
        "a".repeat(picamd::auth::MAX_SECRET_LEN + 1)
    );
    for cookie in ["picamd_token=", long.as_str()] {
        let s = from(60, p.addr).await;
        let r = call_on(s, p.addr, "GET", "/state", &[("Cookie", cookie)], "").await;
        assert_eq!((r.status, set_cookies(&r)), (401, vec![CLEAR_COOKIE]));
    }
    let e = ws_connect(p.addr, "/ws", &[("cookie", "picamd_token=nope")])
        .await
        .unwrap_err();
    assert!(e.contains("401"), "{e}");

    // Wrong cookies count towards the lockout like wrong ?token=s.
    let wrong_cookie = |i: u32| async move {
        let s = from(70, p.addr).await;
        let cookie = format!("picamd_token=guess{i}");
        call_on(s, p.addr, "GET", "/state", &[("Cookie", &cookie)], "").await
    };
    for i in 0..picamd::auth::MAX_FAILURES {
        assert_eq!(wrong_cookie(i).await.status, 401, "guess {i}");
    }
    let r = wrong_cookie(99).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        set_cookies(&r),
        [] as [&str; 0],
        "a lockout says nothing of the cookie"
    );
    // The right cookie from elsewhere is fine.
    let s = from(71, p.addr).await;
    let cookie = format!("picamd_token={TOKEN}");
    let r = call_on(s, p.addr, "GET", "/state", &[("Cookie", &cookie)], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_token_cookie_is_secure_over_https() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("picamd-security-cookie-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = auth_config("");
    let p = Picamd::start(&[
        "--config",
        config.as_str(),
        "--tls-listen",
        "127.0.0.1:0",
        "--state-dir",
        dir.to_str().unwrap(),
    ]);
    let (https, _) = p.https();
    // curl -k: the self-signed certificate is tests/it/tls.rs's business.
    let curl = |path: String, cookie: Option<&str>| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sSk", "--max-time", "10", "-o", "/dev/null", "-D", "-"]);
        if let Some(c) = cookie {
            cmd.args(["-H", &format!("Cookie: {c}")]);
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}{path}", https.port()))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = String::from_utf8(out.stdout).unwrap();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let cookies: Vec<String> = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.trim().to_owned())
            .collect();
        (status, cookies)
    };
    // curl runs to its end while this test's runtime waits: picamd is another process.
    let (status, cookies) = curl(with_token("/", TOKEN), None);
    assert_eq!(status, 200);
    assert_eq!(cookies, [format!("{}; Secure", token_cookie())]);
    let (status, cookies) = curl("/state".into(), Some(&format!("picamd_token={TOKEN}")));
    assert_eq!((status, cookies.len()), (200, 0));
    let (status, cookies) = curl("/state".into(), Some("picamd_token=nope"));
    assert_eq!(status, 401);
    assert_eq!(cookies, [format!("{CLEAR_COOKIE}; Secure")]);
    // The same server over plain HTTP: no Secure (the browser would not send it back).
    let r = get(p.addr, &with_token("/", TOKEN), &[]).await;
    assert_eq!(set_cookies(&r), [token_cookie().as_str()]);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn post_controls_needs_credentials() {
    let config = auth_config("");
    let p = Picamd::start(&["--config", config.as_str()]);
    let json = [("Content-Type", "application/json")];
    let r = call(p.addr, "POST", "/controls", &json, r#"{"brightness":0.2}"#).await;
    assert_eq!(r.status, 401);
    let auth = basic("alice", PASSWORD);
    let with = [
        ("Content-Type", "application/json"),
        ("Authorization", &auth),
    ];
    let r = call(p.addr, "POST", "/controls", &with, r#"{"brightness":0.2}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, String> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The first text message, the server's hello.
async fn hello(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn websocket_upgrades_need_credentials() {
    let config = auth_config("");
    let p = Picamd::start(&["--config", config.as_str()]);
    for path in ["/ws", "/cam/main/ws"] {
        let e = ws_connect(p.addr, path, &[]).await.unwrap_err();
        assert!(e.contains("401"), "{path}: {e}");
        let e = ws_connect(p.addr, &with_token(path, "wrong"), &[])
            .await
            .unwrap_err();
        assert!(e.contains("401"), "{path}: {e}");

        let mut ws = ws_connect(
            p.addr,
            path,
            &[("authorization", &basic("alice", PASSWORD))],
        )
        .await
        .unwrap();
        assert_eq!(hello(&mut ws).await["type"], "hello");
        let bearer = format!("Bearer {TOKEN}");
        let mut ws = ws_connect(p.addr, path, &[("authorization", &bearer)])
            .await
            .unwrap();
        assert_eq!(hello(&mut ws).await["type"], "hello");
        let mut ws = ws_connect(p.addr, &with_token(path, TOKEN), &[])
            .await
            .unwrap();
        assert_eq!(hello(&mut ws).await["type"], "hello");
    }
}

#[tokio::test]
async fn wrong_passwords_lock_the_client_out() {
    let config = auth_config("");
    let p = Picamd::start(&["--config", config.as_str()]);
    let good = basic("alice", PASSWORD);
    // A credential verified before the lockout keeps working through it.
    let r = get(p.addr, "/state", &[("Authorization", &good)]).await;
    assert_eq!(r.status, 200);
    for i in 0..picamd::auth::MAX_FAILURES {
        let r = get(
            p.addr,
            "/state",
            &[("Authorization", &basic("alice", &format!("guess{i}")))],
        )
        .await;
        assert_eq!(r.status, 401, "guess {i}");
    }
    let r = get(
        p.addr,
        "/state",
        &[("Authorization", &basic("alice", "guess"))],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.text().contains("failed logins"), "{}", r.text());
    // A new token is not even checked while locked out.
    let r = get(p.addr, &with_token("/state", TOKEN), &[]).await;
    assert_eq!(r.status, 429);
    let r = get(p.addr, "/state", &[("Authorization", &good)]).await;
    assert_eq!(r.status, 200);
    let r = get(p.addr, "/healthz", &[]).await;
    assert_eq!(r.status, 200);
}

/// A request to `addr` from another loopback address (`127.0.0.N`), as another client.
async fn from(n: u8, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from(([127, 0, 0, n], 0))).unwrap();
    s.connect(addr).await.expect("connect from another address")
}

#[tokio::test]
async fn lockouts_are_per_client() {
    let config = auth_config("");
    let p = Picamd::start(&["--config", config.as_str()]);
    for i in 0..=picamd::auth::MAX_FAILURES {
        let wrong = basic("alice", &format!("x{i}"));
        get(p.addr, "/state", &[("Authorization", &wrong)]).await;
    }
    let good = basic("alice", PASSWORD);
    let r = get(p.addr, "/state", &[("Authorization", &good)]).await;
    assert_eq!(r.status, 429);
    let other = from(2, p.addr).await;
    let r = call_on(
        other,
        p.addr,
        "GET",
        "/state",
        &[("Authorization", &good)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "another address is not locked out");
}

#[tokio::test]
async fn cors_headers_follow_the_allow_list() {
    let config = auth_config("cors_origins = [\"https://octopi.local\"]");
    let p = Picamd::start(&["--config", config.as_str()]);
    let good = basic("alice", PASSWORD);
    let allowed = [
        ("Origin", "https://octopi.local"),
        ("Authorization", good.as_str()),
    ];
    let r = get(p.addr, "/state", &allowed).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://octopi.local")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));

    let evil = [
        ("Origin", "https://evil.example"),
        ("Authorization", good.as_str()),
    ];
    let r = get(p.addr, "/state", &evil).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));

    // A 401 carries the CORS headers, so the page can tell it from a network error.
    let r = get(p.addr, "/state", &[("Origin", "https://octopi.local")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://octopi.local")
    );

    // Preflights come without credentials and are answered before authentication.
    let pre = |origin: &'static str| {
        [
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ]
    };
    let r = call(
        p.addr,
        "OPTIONS",
        "/controls",
        &pre("https://octopi.local"),
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://octopi.local")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Authorization"));
    let r = call(
        p.addr,
        "OPTIONS",
        "/controls",
        &pre("https://evil.example"),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // The WebSocket Origin check follows the same list.
    let mut ws = ws_connect(
        p.addr,
        "/ws",
        &[("origin", "https://octopi.local"), ("authorization", &good)],
    )
    .await
    .unwrap();
    assert_eq!(hello(&mut ws).await["type"], "hello");
    let e = ws_connect(
        p.addr,
        "/ws",
        &[("origin", "https://evil.example"), ("authorization", &good)],
    )
    .await
    .unwrap_err();
    assert!(e.contains("403"), "{e}");
}

#[tokio::test]
async fn no_cors_headers_by_default_and_a_star_when_configured() {
    let p = Picamd::start(&["--size", "320x240"]);
    let r = get(p.addr, "/state", &[("Origin", "https://octopi.local")]).await;
    assert_eq!(r.status, 200, "no authentication by default");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), None);
    let pre = [
        ("Origin", "https://octopi.local"),
        ("Access-Control-Request-Method", "GET"),
    ];
    let r = call(p.addr, "OPTIONS", "/state", &pre, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    drop(p);

    let p = Picamd::start(&["--size", "320x240", "--cors-origin", "*"]);
    let r = get(p.addr, "/state", &[("Origin", "https://anything.example")]).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    let r = call(p.addr, "OPTIONS", "/state", &pre, "").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn viewers_are_limited_per_client_without_stalling_others() {
    let p = Picamd::start(&[
        "--size",
        "320x240",
        "--fps",
        "10",
        "--max-viewers-per-client",
        "2",
    ]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::connect(p.addr).await.unwrap();
        let mut s = s;
        s.write_all(format!("GET /stream HTTP/1.1\r\nHost: {}\r\n\r\n", p.addr).as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200);
        held.push(s);
    }
    let r = get(p.addr, "/stream", &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("per client"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let e = ws_connect(p.addr, "/ws", &[]).await.unwrap_err();
    assert!(e.contains("429"), "{e}");
    // Snapshots are not viewers.
    assert_eq!(get(p.addr, "/snapshot", &[]).await.status, 200);
    // Another address still gets its stream at once.
    let other = from(3, p.addr).await;
    let r = call_on(other, p.addr, "GET", "/stream", &[], "").await;
    assert_eq!(r.status, 200);
    // A viewer that leaves frees its slot (the server notices at its next write).
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(p.addr, "/stream", &[]).await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn viewers_are_limited_in_all() {
    let p = Picamd::start(&[
        "--size",
        "320x240",
        "--stream",
        "a=test",
        "--stream",
        "b=test",
        "--max-viewers-total",
        "2",
    ]);
    let mut a = TcpStream::connect(p.addr).await.unwrap();
    a.write_all(format!("GET /cam/a/stream HTTP/1.1\r\nHost: {}\r\n\r\n", p.addr).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut a).await.status, 200);
    let _ws = ws_connect(p.addr, "/cam/b/ws", &[]).await.unwrap();
    let r = get(p.addr, "/cam/b/stream", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("over all streams"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("2"));
}

#[tokio::test]
async fn oversized_websocket_messages_close_with_1009() {
    let p = Picamd::start(&["--size", "320x240", "--fps", "5"]);
    let mut ws = ws_connect(p.addr, "/ws", &[]).await.unwrap();
    hello(&mut ws).await;
    // Just under the limit: answered.
    let small = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(4000));
    ws.send(Message::text(small)).await.unwrap();
    let big = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(5000));
    ws.send(Message::text(big)).await.unwrap();
    let mut pong = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("a close within 5 s");
        match msg {
            Some(Ok(Message::Text(t))) if t.contains("pong") => pong = true,
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
                break;
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("closed without the 1009 code")
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(pong, "the message under the limit was answered");
}

#[tokio::test]
async fn a_silent_connection_is_closed_within_the_header_timeout() {
    let p = Picamd::start(&["--size", "320x240"]);
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("closed within 15 s")
        .unwrap_or(0);
    let waited = t.elapsed();
    // hyper may answer 408 before closing; either way the connection ends.
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"));
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}");
}

#[tokio::test]
async fn headers_sent_a_byte_a_second_are_cut_off() {
    let p = Picamd::start(&["--size", "320x240"]);
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let t = Instant::now();
    let request = format!(
        "GET /state HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        p.addr,
        "a".repeat(100)
    );
    let mut cut_off = None;
    for b in request.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            cut_off = Some(t.elapsed());
            break;
        }
        // Wait a second for the server to act: an EOF, a reset or an error response all
        // end the attempt; nothing happening means the next byte goes out.
        let mut buf = [0u8; 256];
        if tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
            .await
            .is_ok()
        {
            cut_off = Some(t.elapsed());
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "still reading after 20 s"
        );
    }
    let after = cut_off.expect("the server closed the connection");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(13)).contains(&after),
        "cut off after {after:?}"
    );
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let p = Picamd::start(&["--size", "320x240"]);
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let req = format!(
        "GET /state HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\n\r\n",
        p.addr
    );
    // The server may stop reading (and close) before all of it is written.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
    // And the server is fine.
    assert_eq!(get(p.addr, "/healthz", &[]).await.status, 200);
}

#[tokio::test]
async fn the_request_rate_is_limited_per_client() {
    let p = Picamd::start(&["--size", "320x240", "--max-requests-per-second", "2"]);
    // A burst of 4 s worth (8), then 429.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(p.addr, "/state", &[]).await.status);
    }
    assert_eq!(&statuses[..8], &[200; 8], "{statuses:?}");
    assert!(statuses[9..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = get(p.addr, "/state", &[]).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(get(p.addr, "/healthz", &[]).await.status, 200);
    let other = from(4, p.addr).await;
    assert_eq!(
        call_on(other, p.addr, "GET", "/state", &[], "")
            .await
            .status,
        200
    );
}

/// Opens `/stream` on `conn` (a connection from some address) with these
/// `X-Forwarded-For` lines; the status, and the socket, which holds the viewer while open.
async fn stream_as(mut conn: TcpStream, addr: SocketAddr, xff: &[&str]) -> (u16, TcpStream) {
    let mut req = format!("GET /stream HTTP/1.1\r\nHost: {addr}\r\n");
    for v in xff {
        req.push_str(&format!("X-Forwarded-For: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut conn))
        .await
        .expect("a response within 10 s");
    (r.status, conn)
}

/// A connection from the proxy, 127.0.0.1.
async fn via_proxy(addr: SocketAddr) -> TcpStream {
    from(1, addr).await
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limits() {
    let config = TempFile::with(
        "size = \"320x240\"\nfps = 5\nmax_viewers_per_client = 1\n\
         trusted_proxies = [\"127.0.0.1\"]\n",
    );
    let p = Picamd::start(&["--config", config.as_str()]);
    let a = "198.51.100.1";
    let b = "198.51.100.2";
    let (status, _a) = stream_as(via_proxy(p.addr).await, p.addr, &[a]).await;
    assert_eq!(status, 200, "the first client through the proxy");
    let (status, _b) = stream_as(via_proxy(p.addr).await, p.addr, &[b]).await;
    assert_eq!(
        status, 200,
        "another client through the same proxy is not limited"
    );
    let (status, _) = stream_as(via_proxy(p.addr).await, p.addr, &[a]).await;
    assert_eq!(
        status, 429,
        "the first client again: its one viewer is taken"
    );
    // What a client writes into the header itself is left of what the proxy appends, and
    // is not believed: client `a` cannot pass for someone else.
    let spoofed = format!("203.0.113.50, {a}");
    let (status, _) = stream_as(via_proxy(p.addr).await, p.addr, &[&spoofed]).await;
    assert_eq!(status, 429, "a spoofed left-hand entry does not help");
    let (status, _) = stream_as(via_proxy(p.addr).await, p.addr, &["203.0.113.50", a]).await;
    assert_eq!(status, 429, "nor in a header line of its own");
    // No header, or a malformed one: the proxy's own address, a client of its own.
    let (status, _proxy) = stream_as(via_proxy(p.addr).await, p.addr, &[]).await;
    assert_eq!(status, 200);
    let (status, _) = stream_as(via_proxy(p.addr).await, p.addr, &["not-an-address"]).await;
    assert_eq!(status, 429, "a malformed header counts as the proxy");
    // A peer that is not a listed proxy cannot pick its address.
    let (status, _c) = stream_as(from(2, p.addr).await, p.addr, &["198.51.100.3"]).await;
    assert_eq!(status, 200);
    let (status, _) = stream_as(from(2, p.addr).await, p.addr, &["198.51.100.4"]).await;
    assert_eq!(
        status, 429,
        "X-Forwarded-For from an unlisted peer is ignored"
    );
}

#[tokio::test]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let p = Picamd::start(&[
        "--size",
        "320x240",
        "--fps",
        "5",
        "--max-viewers-per-client",
        "1",
    ]);
    let (status, _a) = stream_as(via_proxy(p.addr).await, p.addr, &["198.51.100.1"]).await;
    assert_eq!(status, 200);
    for xff in ["198.51.100.2", "127.0.0.2", "::1"] {
        let (status, _) = stream_as(via_proxy(p.addr).await, p.addr, &[xff]).await;
        assert_eq!(status, 429, "X-Forwarded-For: {xff}");
    }
}

#[tokio::test]
async fn forwarded_clients_have_their_own_request_rate_and_lockout() {
    let config = auth_config("max_requests_per_second = 3\ntrusted_proxies = [\"127.0.0.0/8\"]");
    let p = Picamd::start(&["--config", config.as_str()]);
    let good = basic("alice", PASSWORD);
    let get_as = |xff: &'static str, auth: String| async move {
        let conn = via_proxy(p.addr).await;
        let headers = [("X-Forwarded-For", xff), ("Authorization", auth.as_str())];
        call_on(conn, p.addr, "GET", "/state", &headers, "").await
    };
    // The request rate: a burst of 12, then 429, for that client only.
    let mut statuses = Vec::new();
    for _ in 0..16 {
        statuses.push(get_as("198.51.100.1", good.clone()).await.status);
    }
    assert_eq!(&statuses[..12], &[200; 12], "{statuses:?}");
    assert!(statuses[12..].contains(&429), "{statuses:?}");
    assert_eq!(get_as("198.51.100.2", good.clone()).await.status, 200);
    // The lockout: wrong passwords lock out the client that sent them, not the proxy.
    for i in 0..picamd::auth::MAX_FAILURES {
        let r = get_as("198.51.100.3", basic("alice", &format!("guess{i}"))).await;
        assert_eq!(r.status, 401, "guess {i}");
    }
    let r = get_as("198.51.100.3", basic("alice", "guess")).await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("failed logins"), "{}", r.text());
    let r = get_as("198.51.100.4", basic("alice", "guess")).await;
    assert_eq!(
        r.status, 401,
        "another client behind the same proxy is not locked out"
    );
}

#[test]
fn an_invalid_trusted_proxy_is_a_config_error_naming_the_key() {
    for text in [
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/33\"]",
        "trusted_proxies = [\"nginx.lan\"]",
    ] {
        let bad = TempFile::with(text);
        let out = common::run_picamd(&["--check-config", "--allow-root", "--config", bad.as_str()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains("`trusted_proxies`"), "{text}: {err}");
    }
    let out = common::run_picamd(&[
        "--check-config",
        "--allow-root",
        "--trusted-proxy",
        "fd00::/8x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`trusted_proxies`") && err.contains("--trusted-proxy"),
        "{err}"
    );
    let good =
        TempFile::with("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\", \"fd00::/8\"]");
    let out = common::run_picamd(&["--check-config", "--allow-root", "--config", good.as_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_controls_api_can_be_switched_off_and_takes_json_only() {
    let p = Picamd::start(&["--size", "320x240", "--controls-api", "off"]);
    let json = [("Content-Type", "application/json")];
    let r = call(p.addr, "POST", "/controls", &json, r#"{"brightness":0.5}"#).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("controls_api"), "{}", r.text());
    let r = get(p.addr, "/controls", &[]).await;
    assert_eq!(r.status, 200);
    let current: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(current["current"].get("brightness").is_none(), "{current}");
    drop(p);

    let p = Picamd::start(&["--size", "320x240"]);
    // A form on another site can send text/plain without a preflight: refused.
    let plain = [("Content-Type", "text/plain")];
    let r = call(p.addr, "POST", "/controls", &plain, r#"{"brightness":0.5}"#).await;
    assert_eq!(r.status, 415, "{}", r.text());
    let r = call(p.addr, "PUT", "/controls", &[], "").await;
    assert_eq!(r.status, 405);
    let r = call(p.addr, "POST", "/controls", &json, r#"{"brightness":0.5}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn hash_password_and_new_token_make_working_config_lines() {
    let out = common::run_picamd_with_stdin(&["--hash-password"], b"s3cret pass\n");
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    let h = picamd::auth::PasswordHashString::parse(&phc).unwrap();
    assert!(h.verify(b"s3cret pass"));

    let out = common::run_picamd(&["--new-token"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("for [auth] tokens: "))
        .unwrap();
    assert_eq!(
        line.trim_matches('"'),
        picamd::auth::TokenHash::of(token).to_config_string()
    );

    let good = TempFile::with(&format!(
        "[auth]\nusers = [{{ name = \"a\", password_hash = \"{phc}\" }}]\ntokens = [{line}]\n"
    ));
    let out = common::run_picamd(&["--check-config", "--allow-root", "--config", good.as_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("auth: on (1 users, 1 tokens)"), "{stdout}");

    let bad = TempFile::with(
        "[auth]\nusers = [{ name = \"a\", password_hash = \"$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$YWJj\" }]\n",
    );
    let out = common::run_picamd(&["--check-config", "--allow-root", "--config", bad.as_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`password_hash`") && err.contains("argon2id"),
        "{err}"
    );
}
