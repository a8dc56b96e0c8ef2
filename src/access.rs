//! Who may use picamd, as configured: the origins whose pages may (`cors_origins`) and the
//! reverse proxies whose `X-Forwarded-For` is believed (`trusted_proxies`), parsed and
//! checked. Configuration builds these values (and reports bad entries naming the key);
//! the HTTP side acts on them (`http/cors.rs` answers preflights and decorates responses,
//! `http/forwarded.rs` walks the header). Imports nothing of either.

use std::net::IpAddr;

/// The allowed origins, checked and normalised (lower case, no default port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsPolicy {
    pub(crate) any: bool,
    pub(crate) origins: Vec<String>,
}

impl CorsPolicy {
    /// Builds the policy from `cors_origins`: each entry is `"*"` or `scheme://host[:port]`
    /// with scheme `http` or `https` and nothing after the host (no path, not even `/`).
    pub fn new(list: &[String]) -> Result<CorsPolicy, String> {
        let mut policy = CorsPolicy::default();
        for entry in list {
            if entry == "*" {
                policy.any = true;
                continue;
            }
            let origin = normalise_origin(entry)?;
            if !policy.origins.contains(&origin) {
                policy.origins.push(origin);
            }
        }
        Ok(policy)
    }

    /// Whether no cross-origin access is allowed at all (the default).
    pub fn is_off(&self) -> bool {
        !self.any && self.origins.is_empty()
    }

    /// Whether a page from `origin` (an `Origin` header's value) may use picamd.
    pub fn allows(&self, origin: &str) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        self.origins.contains(&origin)
    }
}

/// `scheme://host[:port]`, lower case, without the scheme's default port, as browsers
/// write `Origin`.
pub fn normalise_origin(entry: &str) -> Result<String, String> {
    let lower = entry.trim().to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| format!("{entry:?} is not an origin like https://octopi.local or \"*\""))?;
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return Err(format!("{entry:?}: the scheme must be http or https")),
    };
    if rest.is_empty()
        || rest
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '@' | '*') || c.is_whitespace())
    {
        return Err(format!(
            "{entry:?}: an origin is scheme://host[:port], with no path (not even a trailing /)"
        ));
    }
    let bad_port = || format!("{entry:?}: the port must be a number 1..=65535");
    let port = match rest.strip_prefix('[') {
        // An IPv6 literal: [addr] or [addr]:port.
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) if !addr.is_empty() => match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad_port)?),
            },
            _ => return Err(format!("{entry:?}: bad IPv6 address")),
        },
        None => match rest.split_once(':') {
            Some(("", _)) => return Err(format!("{entry:?}: no host")),
            Some((_, p)) => Some(p),
            None => None,
        },
    };
    if let Some(p) = port {
        if !p.chars().all(|c| c.is_ascii_digit()) || !matches!(p.parse::<u16>(), Ok(1..)) {
            return Err(bad_port());
        }
    }
    let rest = rest.strip_suffix(default_port).unwrap_or(rest);
    Ok(format!("{scheme}://{rest}"))
}

/// The proxies whose `X-Forwarded-For` is believed: IP addresses and CIDR networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

/// One network, in the IPv6 space (an IPv4 network is its IPv4-mapped form, `::ffff:0:0/96`
/// plus its prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: u128,
    prefix: u8,
}

impl Net {
    fn mask(prefix: u8) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
    }

    fn contains(&self, ip: u128) -> bool {
        (ip ^ self.addr) & Net::mask(self.prefix) == 0
    }
}

/// `ip` in the IPv6 space: IPv4 addresses as their IPv4-mapped form.
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl TrustedProxies {
    /// Parses the `trusted_proxies` entries: each an address (`127.0.0.1`, `::1`) or a CIDR
    /// network (`10.0.0.0/8`, `fd00::/8`; bits past the prefix are ignored). The error names
    /// the first bad entry and why.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        let nets = entries
            .iter()
            .map(|e| parse_net(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// No proxy trusted: `X-Forwarded-For` is ignored.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// How many addresses and networks are listed.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// Whether `ip` is a listed address or in a listed network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = bits(ip);
        self.nets.iter().any(|n| n.contains(ip))
    }
}

fn parse_net(entry: &str) -> Result<Net, String> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{entry:?} is not an IP address or a CIDR network"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "{entry:?}: the prefix length must be a number from 0 to {max}"
                ))
            }
        },
    };
    let prefix = if ip.is_ipv4() { prefix + 96 } else { prefix };
    Ok(Net {
        addr: bits(ip) & Net::mask(prefix),
        prefix,
    })
}
