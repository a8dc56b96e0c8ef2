//! Persisted files that fell back to their previous copy: `/state`'s `persist` list and
//! `/metrics`' `picamd_persist_fallbacks`, from the boot status file the SD image's scripts
//! write (`--boot-status`) and from picamd's own self-signed TLS pair.

use crate::common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::peers::TempDir;
use common::Picamd;
use serde_json::json;

/// `picamd_persist_fallbacks`'s value in `/metrics`.
async fn fallbacks(p: &Picamd) -> String {
    let text = String::from_utf8(p.get("/metrics").await.body).unwrap();
    assert!(
        text.contains("# HELP picamd_persist_fallbacks "),
        "no HELP line:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("picamd_persist_fallbacks "))
        .unwrap_or_else(|| panic!("no picamd_persist_fallbacks sample:\n{text}"))
        .to_owned()
}

#[tokio::test]
async fn the_boot_status_file_is_listed_without_its_malformed_line() {
    let dir = TempDir::new("boot-status");
    let path = dir.path().join("boot-status.tsv");
    std::fs::write(
        &path,
        "# picamd-persist restore, this boot\n\
         picamd.toml\tprevious\tsha256 does not match\n\
         ssh_host_ed25519_key current no tabs here\n\
         \n\
         hostname\tcurrent\t\n",
    )
    .unwrap();
    let p = Picamd::start(&["--size", "320x240", "--boot-status", path.to_str().unwrap()]);
    let want = json!([
        {"file": "picamd.toml", "used": "previous", "reason": "sha256 does not match"},
        {"file": "hostname", "used": "current", "reason": ""},
    ]);
    assert_eq!(p.state().await["persist"], want);
    // Every stream's /state carries the same list: it is about picamd, not a stream.
    let named: serde_json::Value =
        serde_json::from_slice(&p.get("/cam/main/state").await.body).unwrap();
    assert_eq!(named["persist"], want);
    assert_eq!(fallbacks(&p).await, "1");
}

#[tokio::test]
async fn a_missing_boot_status_file_is_an_empty_list() {
    let dir = TempDir::new("boot-status-missing");
    let path = dir.path().join("not-written.tsv");
    let p = Picamd::start(&["--size", "320x240", "--boot-status", path.to_str().unwrap()]);
    assert_eq!(p.state().await["persist"], json!([]));
    assert_eq!(fallbacks(&p).await, "0");
}

/// Sets a file's modification time `age` into the past.
fn age(path: &Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[tokio::test]
async fn a_tls_pair_that_fell_back_is_listed() {
    let dir = TempDir::new("persist-tls");
    let state_dir = dir.path().to_str().unwrap();
    let no_boot_status = dir.path().join("none.tsv");
    let start = || {
        Picamd::start(&[
            "--size",
            "320x240",
            "--tls-listen",
            "127.0.0.1:0",
            "--state-dir",
            state_dir,
            "--boot-status",
            no_boot_status.to_str().unwrap(),
        ])
    };
    let cert = dir.path().join("tls-cert.pem");
    // First pair, then (made old) a second one: the first becomes the previous copy.
    drop(start());
    age(&cert, Duration::from_secs(801 * 24 * 3600));
    let p = start();
    assert_eq!(p.state().await["persist"], json!([]), "a fresh pair");
    drop(p);
    // A cut while the key was written: the current pair is broken.
    std::fs::write(dir.path().join("tls-key.pem"), b"-----BEGIN PRIV").unwrap();
    let p = start();
    let persist = p.state().await["persist"].clone();
    let entries = persist.as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{persist}");
    assert_eq!(entries[0]["file"], cert.to_str().unwrap());
    assert_eq!(entries[0]["used"], "previous");
    assert!(
        entries[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{persist}"
    );
    assert_eq!(fallbacks(&p).await, "1");
}
