//! HTTPS: the self-signed certificate (made, kept, reused), configured PEM files, `wss`,
//! `http_redirect`, the handshake timeout, and configuration errors for bad files.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peers::TempDir;
use common::{decode, run_picamd, send_request, Picamd};
use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// `name` in `dir`, as a string for flags and for curl.
fn file(dir: &TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_owned()
}

/// picamd with HTTPS on a free port and its state (the self-signed certificate) in `dir`,
/// plus `extra` flags.
fn start_https(dir: &TempDir, extra: &[&str]) -> Picamd {
    let state_dir = dir.path().to_str().unwrap();
    let mut args = vec!["--tls-listen", "127.0.0.1:0", "--state-dir", state_dir];
    args.extend_from_slice(extra);
    Picamd::start(&args)
}

/// `curl --cacert CA https://localhost:PORT/PATH`: status and body. Debian's curl verifies
/// with OpenSSL, a TLS stack other than picamd's.
fn curl(ca: &str, port: u16, path: &str) -> (u16, Vec<u8>) {
    let body = std::env::temp_dir().join(format!("picamd-tls-body-{}-{port}", std::process::id()));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca, "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("run curl");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    (status, bytes)
}

/// A rustls client that trusts only the certificate in `ca` (PEM).
fn connector(ca: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let cert = CertificateDer::from_pem_file(ca).expect("PEM certificate");
    roots.add(cert).expect("usable as a trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(ca: &str, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector(ca)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

fn sha256_colons(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn self_signed_round_trip_then_reused_on_restart() {
    let dir = TempDir::new("self");
    let p = start_https(&dir, &["--size", "320x240"]);
    let (addr, fp) = p.https();
    let cert = file(&dir, "tls-cert.pem");
    let line = p.stdout_line("https on ").unwrap();
    assert!(line.contains("self-signed, made now in"), "{line}");
    // The fingerprint printed is the file's.
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    assert_eq!(fp, sha256_colons(&der));
    assert!(p
        .stdout_line(&format!("open https://127.0.0.1:{}/", addr.port()))
        .is_some());
    // The key is the service's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file(&dir, "tls-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (status, jpeg) = curl(&cert, addr.port(), "/snapshot");
    assert_eq!(status, 200);
    assert_eq!(decode(&jpeg).0, 320);
    // Without http_redirect, plain HTTP keeps serving.
    assert_eq!(p.get("/snapshot").await.status, 200);

    // The same request through rustls trusting the file.
    let tls = tls_connect(&cert, addr).await;
    let mut r = send_request(tls, addr, "/state").await;
    assert_eq!(r.status, 200);
    let state: serde_json::Value = serde_json::from_slice(&r.read_to_end().await).unwrap();
    assert_eq!(state["resolution"]["width"], 320);
    drop(p);

    let p = start_https(&dir, &["--size", "320x240"]);
    let (addr, again) = p.https();
    assert_eq!(again, fp, "the certificate is reused");
    let line = p.stdout_line("https on ").unwrap();
    assert!(!line.contains("made now"), "{line}");
    assert_eq!(curl(&cert, addr.port(), "/healthz").0, 200);
}

#[tokio::test]
async fn websocket_over_tls() {
    let dir = TempDir::new("wss");
    let p = start_https(&dir, &["--size", "320x240"]);
    let (addr, _) = p.https();
    let tls = tls_connect(&file(&dir, "tls-cert.pem"), addr).await;
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        if let Message::Binary(data) = msg {
            let (_, jpeg) = picamd::wire::FrameHeader::parse(&data).expect("header");
            assert_eq!(decode(jpeg).0, 320);
            break;
        }
    }
}

#[tokio::test]
async fn configured_certificate_is_served() {
    let dir = TempDir::new("files");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (file(&dir, "mine.pem"), file(&dir, "mine.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let p = start_https(&dir, &["--tls-cert", &cert_path, "--tls-key", &key_path]);
    let (addr, fp) = p.https();
    assert_eq!(fp, sha256_colons(cert.der()));
    let (status, jpeg) = curl(&cert_path, addr.port(), "/snapshot");
    assert_eq!(status, 200);
    decode(&jpeg);
    assert!(
        !Path::new(&file(&dir, "tls-cert.pem")).exists(),
        "no self-signed certificate is made"
    );

    let out = run_picamd(&[
        "--check-config",
        "--tls-listen",
        "0.0.0.0:8443",
        "--tls-cert",
        &cert_path,
        "--tls-key",
        &key_path,
        "--allow-root",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("https: listen 0.0.0.0:8443") && text.contains(&fp),
        "{text}"
    );
}

#[test]
fn bad_certificate_files_are_configuration_errors() {
    let dir = TempDir::new("bad");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let good_cert = file(&dir, "cert.pem");
    let good_key = file(&dir, "key.pem");
    std::fs::write(&good_cert, cert.pem()).unwrap();
    std::fs::write(&good_key, key.serialize_pem()).unwrap();
    let garbage = file(&dir, "garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let other_key = file(&dir, "other.key");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let missing = file(&dir, "missing.pem");
    for (cert, key, names) in [
        (&missing, &good_key, "tls_cert"),
        (&garbage, &good_key, "tls_cert"),
        (&good_key, &good_key, "tls_cert"),
        (&good_cert, &garbage, "tls_key"),
        (&good_cert, &good_cert, "tls_key"),
        (&good_cert, &other_key, "tls_key"),
    ] {
        for check in [true, false] {
            let mut args = vec![
                "--allow-root",
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ];
            if check {
                args.push("--check-config");
            }
            let out = run_picamd(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cert} {key}: {err}");
            assert!(
                err.contains(&format!("`{names}`")) && !err.contains("panicked"),
                "{cert} {key}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn plain_http_redirects_when_asked() {
    let dir = TempDir::new("redirect");
    let p = start_https(&dir, &["--http-redirect"]);
    let (addr, _) = p.https();
    let r = p.get("/snapshot?x=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://127.0.0.1:{}/snapshot?x=1", addr.port()).as_str())
    );
    assert_eq!(p.get("/").await.status, 308);
    assert_eq!(p.get("/healthz").await.status, 200);
    // HTTPS itself serves.
    assert_eq!(
        curl(&file(&dir, "tls-cert.pem"), addr.port(), "/healthz").0,
        200
    );
}

/// The redirect is not a way around the request rate: plain HTTP counts against the same
/// per-client budget as HTTPS, and `/healthz` against none.
#[tokio::test]
async fn redirects_count_against_the_request_rate() {
    let dir = TempDir::new("redirect-rate");
    let p = start_https(&dir, &["--http-redirect", "--max-requests-per-second", "1"]);
    let (addr, _) = p.https();
    // Handshake done before the burst, so the HTTPS request below follows it closely.
    let tls = tls_connect(&file(&dir, "tls-cert.pem"), addr).await;
    // 1 per second allows bursts of 4.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = p.get(&format!("/snapshot?n={i}")).await;
        if r.status == 429 {
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "Retry-After: {retry}");
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|&s| s == 308 || s == 429),
        "{statuses:?}"
    );
    assert_eq!(statuses[0], 308, "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 429).count() >= 6,
        "plain HTTP is not rate limited: {statuses:?}"
    );
    // The HTTPS side shares the budget the redirects spent.
    let r = send_request(tls, addr, "/state").await;
    assert_eq!(r.status, 429, "HTTPS has a budget of its own");
    // Monitors are not limited.
    for _ in 0..10 {
        assert_eq!(p.get("/healthz").await.status, 200);
    }
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let dir = TempDir::new("silent");
    let p = start_https(&dir, &[]);
    let (addr, _) = p.https();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
        .await
        .expect("closed within 20 s");
    let waited = start.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(13)).contains(&waited),
        "closed after {waited:?}"
    );
    // Others are still served.
    assert_eq!(
        curl(&file(&dir, "tls-cert.pem"), addr.port(), "/healthz").0,
        200
    );
}
