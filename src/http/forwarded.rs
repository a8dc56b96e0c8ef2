//! The client's address behind a trusted reverse proxy (`trusted_proxies`, `X-Forwarded-For`).
//!
//! Without `trusted_proxies` (the default) the client is the TCP peer and `X-Forwarded-For`
//! is never read. When the peer is a listed proxy, the header lines are read as one
//! comma-separated list (each proxy appends the address it got the request from), walked from
//! the right: entries that are trusted proxies themselves are skipped, and the first one that
//! is not is the client. Everything left of it was written by that client, or by hops before
//! it, and is never looked at: a client cannot pick its own address. If every entry is a
//! trusted proxy, the leftmost is the client (a LAN machine inside a trusted range, say).
//!
//! The walk falls back to the peer when it meets an entry that is not an address (or not
//! UTF-8) before finding the client, when there is no entry at all, and when it would go past
//! [`MAX_ENTRIES`] entries or reach an entry that is not wholly within the last
//! [`MAX_HEADER_BYTES`] bytes of the header lines (padding left of the client, where the
//! walk never goes, costs nothing). Past a malformed entry nothing is believed, but what lies
//! left of the client is never parsed, so junk there does not matter.
//!
//! An entry is an IPv4 or IPv6 address with optional spaces or tabs around it, IPv6 possibly
//! in brackets, and an optional `:port` after an IPv4 address or a bracketed IPv6 one
//! (`1.2.3.4:5678`, `[2001:db8::1]:443`). Empty list elements (`a, , b`) are skipped, as HTTP
//! lists allow, but count towards [`MAX_ENTRIES`].
//!
//! An IPv4 peer or entry also matches an IPv6 network that holds its IPv4-mapped form, and an
//! IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, how a dual-stack socket reports IPv4 peers)
//! matches the IPv4 networks: `127.0.0.1` in the list trusts both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::HeaderMap;

pub use crate::access::TrustedProxies;

/// Most list entries looked at, over every `X-Forwarded-For` line.
pub const MAX_ENTRIES: usize = 32;
/// Most bytes of `X-Forwarded-For` looked at, over every line, counted from the right.
pub const MAX_HEADER_BYTES: usize = 4096;
/// The longest entry that can be an address: a bracketed IPv6 address in its longest written
/// form (`[ffff:…:255.255.255.255]`, 47 bytes) with `:65535`, and room to spare.
const MAX_ENTRY_LEN: usize = 64;

/// The client's address: `peer` itself unless it is a trusted proxy, else what the
/// `X-Forwarded-For` lines `xff` (in the order received) say, as the module explains.
pub fn client_ip(peer: IpAddr, xff: &[&[u8]], trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let mut left = MAX_HEADER_BYTES;
    let mut entries = 0;
    let mut leftmost = None;
    for line in xff.iter().rev() {
        // Only the last `left` bytes of the line. Its leftmost entry is whole if it starts
        // the line or follows a comma; otherwise it reaches past the budget.
        let start = line.len() - left.min(line.len());
        let part = &line[start..];
        left -= part.len();
        let cut = start > 0 && line[start - 1] != b',';
        let mut pieces = part.rsplit(|&b| b == b',').peekable();
        while let Some(piece) = pieces.next() {
            entries += 1;
            if entries > MAX_ENTRIES || (cut && pieces.peek().is_none()) {
                return peer;
            }
            match entry(piece) {
                Entry::Empty => {}
                Entry::Bad => return peer,
                Entry::Ip(ip) if trusted.contains(ip) => leftmost = Some(ip),
                Entry::Ip(ip) => return ip,
            }
        }
    }
    leftmost.unwrap_or(peer)
}

/// [`client_ip`] for a request's headers: every `X-Forwarded-For` line, unless `peer` is not
/// trusted (then none is read).
pub fn client_ip_from_headers(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    // Every line holds at least one entry, so past MAX_ENTRIES lines from the right the
    // walk has given up anyway.
    let mut lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .take(MAX_ENTRIES + 1)
        .map(|v| v.as_bytes())
        .collect();
    lines.reverse();
    client_ip(peer, &lines, trusted)
}

enum Entry {
    Empty,
    Bad,
    Ip(IpAddr),
}

/// One list element: an address, nothing, or something else.
fn entry(raw: &[u8]) -> Entry {
    let Ok(s) = std::str::from_utf8(raw) else {
        return Entry::Bad;
    };
    let s = s.trim_matches(|c| c == ' ' || c == '\t');
    if s.is_empty() {
        return Entry::Empty;
    }
    if s.len() > MAX_ENTRY_LEN {
        return Entry::Bad;
    }
    address(s).map_or(Entry::Bad, Entry::Ip)
}

fn address(s: &str) -> Option<IpAddr> {
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !after.is_empty() && !is_port(after.strip_prefix(':')?) {
            return None;
        }
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (v4, port) = s.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    v4.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    (1..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClientKey;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    /// The client for `peer` sending these `X-Forwarded-For` lines, trusting `list`.
    fn client(peer: &str, lines: &[&str], list: &[&str]) -> IpAddr {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        client_ip(ip(peer), &lines, &trusted(list))
    }

    #[test]
    fn entries_parse_as_addresses_and_networks() {
        let t = trusted(&[
            "127.0.0.1",
            "10.0.0.0/8",
            "::1",
            "fd00::/8",
            "192.168.1.77/24",
        ]);
        assert_eq!(t.len(), 5);
        for yes in [
            "127.0.0.1",
            "10.0.0.1",
            "10.255.255.255",
            "::1",
            "fd12:3456::1",
            "192.168.1.1",
            "192.168.1.255",
        ] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in [
            "127.0.0.2",
            "11.0.0.1",
            "::2",
            "fe80::1",
            "192.168.2.1",
            "2001:db8::1",
        ] {
            assert!(!t.contains(ip(no)), "{no}");
        }
        assert!(trusted(&["0.0.0.0/0"]).contains(ip("203.0.113.9")));
        assert!(!trusted(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
        assert!(trusted(&["::/0"]).contains(ip("2001:db8::1")));
        assert!(trusted(&["::/0"]).contains(ip("203.0.113.9")));
        assert!(trusted(&["10.1.2.3/32"]).contains(ip("10.1.2.3")));
        assert!(!trusted(&["10.1.2.3/32"]).contains(ip("10.1.2.4")));
        assert!(TrustedProxies::default().is_empty());
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_named() {
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0",
            " 10.0.0.1",
            "[::1]",
            "10.0.0.1:80",
            "fe80::1%eth0",
            "010.0.0.1",
        ] {
            let e = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(TrustedProxies::parse(&["10.0.0.1", "nope"]).is_err());
        assert!(TrustedProxies::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_entries_and_back() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        assert!(t.contains(ip("::ffff:127.0.0.1")));
        assert!(t.contains(ip("::ffff:10.9.8.7")));
        assert!(!t.contains(ip("::ffff:11.0.0.1")));
        assert!(!t.contains(ip("::1")), "IPv6 loopback is not 127.0.0.1");
        let t = trusted(&["::ffff:10.0.0.0/104"]);
        assert!(t.contains(ip("10.1.1.1")));
        assert!(!t.contains(ip("11.1.1.1")));
        // A dual-stack listener reports an IPv4 proxy as mapped.
        assert_eq!(
            client("::ffff:127.0.0.1", &["198.51.100.7"], &["127.0.0.1"]),
            ip("198.51.100.7")
        );
        // And a mapped entry that is a trusted proxy is skipped too.
        assert_eq!(
            client(
                "127.0.0.1",
                &["198.51.100.7, ::ffff:127.0.0.1"],
                &["127.0.0.1"]
            ),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_pick_its_address() {
        let list = &["127.0.0.1"];
        assert_eq!(client("203.0.113.5", &["1.1.1.1"], list), ip("203.0.113.5"));
        assert_eq!(
            client("203.0.113.5", &["1.1.1.1, 127.0.0.1"], list),
            ip("203.0.113.5")
        );
        // Nothing trusted: the header is never read.
        assert_eq!(client("127.0.0.1", &["1.1.1.1"], &[]), ip("127.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_gives_the_rightmost_untrusted_entry() {
        let list = &["127.0.0.1", "10.0.0.0/8"];
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7"], list),
            ip("198.51.100.7")
        );
        // A client that sends its own header: what it wrote is left of its real address.
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 198.51.100.7"], list),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6", "198.51.100.7"], list),
            ip("198.51.100.7"),
            "lines are one list"
        );
        // Claiming to be a trusted proxy does not help either.
        assert_eq!(
            client("127.0.0.1", &["10.0.0.1, 198.51.100.7"], list),
            ip("198.51.100.7")
        );
        // Proxies in a chain are skipped.
        assert_eq!(
            client(
                "127.0.0.1",
                &["6.6.6.6, 198.51.100.7, 10.0.0.2, 10.0.0.3"],
                list
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("10.0.0.3", &["6.6.6.6, 198.51.100.7", "10.0.0.2"], list),
            ip("198.51.100.7")
        );
        // Every entry trusted: the leftmost.
        assert_eq!(
            client("127.0.0.1", &["10.0.0.5, 10.0.0.2"], list),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn entry_forms() {
        let list = &["127.0.0.1"];
        for (line, want) in [
            ("198.51.100.7", "198.51.100.7"),
            ("  198.51.100.7\t", "198.51.100.7"),
            ("198.51.100.7:5678", "198.51.100.7"),
            ("2001:db8::7", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            (" [2001:db8::7]:443 ", "2001:db8::7"),
            ("::ffff:198.51.100.7", "::ffff:198.51.100.7"),
            ("1.1.1.1,198.51.100.7", "198.51.100.7"),
            ("1.1.1.1 ,\t198.51.100.7 ", "198.51.100.7"),
            ("198.51.100.7, ", "198.51.100.7"),
            ("198.51.100.7,,", "198.51.100.7"),
        ] {
            assert_eq!(client("127.0.0.1", &[line], list), ip(want), "{line:?}");
        }
        for bad in [
            "unknown",
            "198.51.100",
            "198.51.100.7:",
            "198.51.100.7:99999",
            "198.51.100.7:80:80",
            "198.51.100.7:+80",
            "2001:db8::7:80x",
            "[2001:db8::7",
            "[2001:db8::7]80",
            "[2001:db8::7]:",
            "[198.51.100.7]",
            "fe80::1%eth0",
            "_hidden",
            "198.51.100.7 1.1.1.1",
            "",
            " , ",
        ] {
            assert_eq!(
                client("127.0.0.1", &[bad], list),
                ip("127.0.0.1"),
                "{bad:?}"
            );
        }
        // No header at all.
        assert_eq!(client("127.0.0.1", &[], list), ip("127.0.0.1"));
    }

    #[test]
    fn the_walk_stops_at_a_malformed_entry() {
        let list = &["127.0.0.1", "10.0.0.0/8"];
        // Right of the client, a bad entry: nothing past it is believed.
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7, garbage, 10.0.0.2"], list),
            ip("127.0.0.1")
        );
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7, 10.0.0.2:x"], list),
            ip("127.0.0.1")
        );
        // Left of the client, it does not matter: it is never read.
        assert_eq!(
            client("127.0.0.1", &["garbage, 198.51.100.7"], list),
            ip("198.51.100.7")
        );
        let lines: [&[u8]; 2] = [b"\xff\xfe, 1.1.1.1", b"198.51.100.7"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), &lines, &trusted(list)),
            ip("198.51.100.7")
        );
        // Not UTF-8 on the way: the peer.
        let lines: [&[u8]; 1] = [b"198.51.100.7, 10.0.0.\xff"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), &lines, &trusted(list)),
            ip("127.0.0.1")
        );
        let lines: [&[u8]; 1] = [b"198.51.100.\xe9"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), &lines, &trusted(list)),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_work_is_bounded() {
        let list = &["127.0.0.1", "10.0.0.0/8"];
        // Padding left of the client costs nothing: the walk never gets there.
        let padded = format!("{}198.51.100.7", "6.6.6.6, ".repeat(2000));
        assert_eq!(client("127.0.0.1", &[&padded], list), ip("198.51.100.7"));
        let many: Vec<&str> = std::iter::repeat_n("6.6.6.6", 5000)
            .chain(["198.51.100.7"])
            .collect();
        assert_eq!(client("127.0.0.1", &many, list), ip("198.51.100.7"));
        // MAX_ENTRIES trusted hops and then the client: found.
        let chain = |hops: usize| {
            let mut v = vec!["198.51.100.7".to_owned()];
            v.extend((0..hops).map(|i| format!("10.0.0.{}", i % 250 + 1)));
            v.join(", ")
        };
        assert_eq!(
            client("127.0.0.1", &[&chain(MAX_ENTRIES - 1)], list),
            ip("198.51.100.7")
        );
        // More hops than that: the walk gives up, on the peer.
        assert_eq!(
            client("127.0.0.1", &[&chain(MAX_ENTRIES)], list),
            ip("127.0.0.1")
        );
        // The same by bytes: an entry that crosses MAX_HEADER_BYTES from the right.
        let spaces = " ".repeat(MAX_HEADER_BYTES - "198.51.100.7".len());
        let fits = format!("6.6.6.6,{spaces}198.51.100.7");
        assert_eq!(client("127.0.0.1", &[&fits], list), ip("198.51.100.7"));
        let over = format!("6.6.6.6,{spaces} 198.51.100.7");
        assert_eq!(client("127.0.0.1", &[&over], list), ip("127.0.0.1"));
        let spaces = " ".repeat(MAX_HEADER_BYTES - "10.0.0.2".len());
        let lines = ["198.51.100.7", &format!("{spaces}10.0.0.2")];
        assert_eq!(client("127.0.0.1", &lines, list), ip("127.0.0.1"));
        // Empty elements count as entries too.
        let commas = format!("198.51.100.7{}", ",".repeat(MAX_ENTRIES));
        assert_eq!(client("127.0.0.1", &[&commas], list), ip("127.0.0.1"));
        let commas = format!("198.51.100.7{}", ",".repeat(MAX_ENTRIES - 1));
        assert_eq!(client("127.0.0.1", &[&commas], list), ip("198.51.100.7"));
    }

    #[test]
    fn ipv6_clients_still_count_by_64() {
        let list = &["::1"];
        let a = client("::1", &["2001:db8:0:1::a"], list);
        let b = client("::1", &["2001:db8:0:1::b"], list);
        let c = client("::1", &["2001:db8:0:2::a"], list);
        assert_eq!(a, ip("2001:db8:0:1::a"), "the address itself is kept");
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        // And a mapped IPv4 client is the same client as the IPv4 one.
        let m = client("::1", &["::ffff:198.51.100.7"], list);
        assert_eq!(ClientKey::of(m), ClientKey::of(ip("198.51.100.7")));
    }

    #[test]
    fn headers_are_read_only_from_trusted_peers() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.7, 10.0.0.2".parse().unwrap());
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(
            client_ip_from_headers(ip("127.0.0.1"), &h, &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip_from_headers(ip("192.0.2.1"), &h, &t),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_ip_from_headers(ip("127.0.0.1"), &HeaderMap::new(), &t),
            ip("127.0.0.1")
        );
        // Many lines: only the last ones are read, and the client is in the last.
        let mut h = HeaderMap::new();
        for _ in 0..100 {
            h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        }
        h.append("x-forwarded-for", "198.51.100.7".parse().unwrap());
        assert_eq!(
            client_ip_from_headers(ip("127.0.0.1"), &h, &t),
            ip("198.51.100.7")
        );
    }
}
