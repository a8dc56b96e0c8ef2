//! `X-Forwarded-For` behind `trusted_proxies`: which address the limits and the login
//! lockout count a request against. The answer is the TCP peer unless the peer is a trusted
//! proxy, and otherwise the peer or an address written in the header; and once the walk found
//! a client that is not a trusted proxy, nothing a client adds to the left of the header
//! (where a spoofer writes) changes it.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use picamd::http::forwarded::{client_ip, TrustedProxies};

#[derive(Arbitrary, Debug)]
struct Input {
    peer: IpAddr,
    trusted: Vec<String>,
    /// Addresses added to the list as written (so the walk meets real entries often).
    trusted_ips: Vec<IpAddr>,
    lines: Vec<Vec<u8>>,
    spoofed: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut entries = input.trusted.clone();
    entries.extend(input.trusted_ips.iter().map(IpAddr::to_string));
    let Ok(trusted) = TrustedProxies::parse(&entries) else {
        return;
    };
    for ip in &input.trusted_ips {
        assert!(trusted.contains(*ip), "{ip} listed but not trusted");
    }
    let lines: Vec<&[u8]> = input.lines.iter().map(Vec::as_slice).collect();
    let client = client_ip(input.peer, &lines, &trusted);
    if !trusted.contains(input.peer) {
        assert_eq!(client, input.peer, "an untrusted peer picked its address");
        return;
    }
    if client == input.peer {
        return;
    }
    assert!(
        written(&lines).contains(&client.to_canonical()),
        "{client} is neither the peer nor in the header"
    );
    if !trusted.contains(client) {
        let mut spoofed = vec![input.spoofed.as_slice()];
        spoofed.extend_from_slice(&lines);
        assert_eq!(
            client_ip(input.peer, &spoofed, &trusted),
            client,
            "a line added on the left changed the client"
        );
        if let Some(first) = lines.first() {
            let mut joined = input.spoofed.clone();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(first);
            let mut prefixed = vec![joined.as_slice()];
            prefixed.extend_from_slice(&lines[1..]);
            assert_eq!(
                client_ip(input.peer, &prefixed, &trusted),
                client,
                "entries added on the left changed the client"
            );
        }
    }
});

/// Every address the header lines spell out, read independently of picamd's parser: list
/// elements, trimmed, with brackets and a port taken off.
fn written(lines: &[&[u8]]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in lines {
        for part in String::from_utf8_lossy(line).split(',') {
            let p = part.trim_matches([' ', '\t']);
            let unbracketed = p
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map(|(inside, _)| inside);
            let unported = p.rsplit_once(':').map(|(host, _)| host);
            for candidate in [Some(p), unbracketed, unported].into_iter().flatten() {
                if let Ok(ip) = candidate.parse::<IpAddr>() {
                    out.push(ip.to_canonical());
                }
            }
        }
    }
    out
}
