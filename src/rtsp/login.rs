//! Who may use RTSP: the `[auth]` users and tokens HTTP uses, over the schemes RTSP clients
//! speak.
//!
//! - **Basic** (RFC 7617): `user:password`, checked against the argon2id hash like HTTP's
//!   (through [`Authenticator::check`]: same cache, same lockout). With user name `token`
//!   (when no account has that name) the password is taken as a token, so a client that can
//!   only put credentials into the URL can still use one: `rtsp://token:<TOKEN>@host/…`.
//! - **Bearer** (RFC 6750): a token, as HTTP.
//! - **Digest** (RFC 2617, MD5, with or without `qop=auth`): many NVRs and cameras' clients
//!   only do this one. It needs HA1 = MD5(user:realm:password), which an argon2 hash cannot
//!   give, so only users with an `rtsp_digest` in the config can log in this way.
//!
//! Nonces are stateless: 16 hex digits of the Unix time they were made and 32 of a keyed
//! SHA-256 of it, with a per-process key. A nonce is fresh for [`NONCE_LIFETIME`]; an older
//! one gets `401` with `stale=true` (the client retries without asking the user again),
//! except on the connection where it already logged in, since clients keep one nonce for the
//! whole session, keep-alives included. Failed Digest logins count in the same per-client
//! lockout as HTTP's failed logins.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest as _, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::{Authenticator, ClientKey, Credentials, Verdict, DIGEST_REALM, MAX_SECRET_LEN};

/// How long a nonce may start a login.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Most parameters read from a Digest header (a real one has 5 to 9).
const MAX_PARAMS: usize = 16;

/// The outcome of a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Let in; for Digest, the nonce it used (trusted on this connection from now on).
    Allowed { digest_nonce: Option<String> },
    /// No or wrong credentials: `401` with fresh challenges; `stale` when only the Digest
    /// nonce was too old.
    Denied { stale: bool },
    /// Too many failures from this client: come back after this long.
    Locked(Duration),
}

/// Makes and checks nonces.
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
}

impl Nonces {
    pub fn new(key: [u8; 32]) -> Nonces {
        Nonces { key }
    }

    fn mac(&self, stamp: u64) -> [u8; 16] {
        let mut h = Sha256::new();
        sha2::Digest::update(&mut h, self.key);
        sha2::Digest::update(&mut h, stamp.to_be_bytes());
        let full: [u8; 32] = sha2::Digest::finalize(h).into();
        full[..16].try_into().expect("16 of 32 bytes")
    }

    /// A nonce made at `now` (seconds since 1970).
    pub fn make(&self, now: u64) -> String {
        format!("{now:016x}{}", hex(&self.mac(now)))
    }

    /// `Some(fresh)` for a nonce this process made (fresh: younger than
    /// [`NONCE_LIFETIME`]), `None` for anything else.
    pub fn check(&self, nonce: &str, now: u64) -> Option<bool> {
        let (stamp, mac) = (nonce.get(..16)?, nonce.get(16..)?);
        if !stamp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let stamp = u64::from_str_radix(stamp, 16).ok()?;
        let ok: bool = mac
            .as_bytes()
            .ct_eq(hex(&self.mac(stamp)).as_bytes())
            .into();
        ok.then(|| now.saturating_sub(stamp) < NONCE_LIFETIME.as_secs() && stamp <= now + 5)
    }
}

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    hex(&h.finalize())
}

/// The `WWW-Authenticate` values of a `401`: Digest first (clients that know both pick
/// it: ffmpeg does, and then never tries Basic), then Basic. Digest is offered only when
/// some account can use it (`digest`), so that with no `rtsp_digest` configured those
/// clients fall back to Basic instead of failing.
pub fn challenges(nonces: &Nonces, stale: bool, digest: bool) -> Vec<String> {
    let stale = if stale { ", stale=TRUE" } else { "" };
    let mut out = Vec::with_capacity(2);
    if digest {
        out.push(format!(
            "Digest realm=\"{DIGEST_REALM}\", nonce=\"{}\", algorithm=MD5{stale}",
            nonces.make(unix_now())
        ));
    }
    out.push(format!("Basic realm=\"{DIGEST_REALM}\""));
    out
}

/// A Digest `Authorization` header's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestParams {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

/// Reads `Digest k=v, k="quoted", …` (RFC 7616's auth-params; quoted strings may hold
/// `\`-escapes and commas). `None` for another scheme, a malformed list, a missing
/// required parameter, or values longer than [`MAX_SECRET_LEN`].
pub fn parse_digest(header: &str) -> Option<DigestParams> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut p = DigestParams::default();
    let (mut seen, mut has) = (0, [false; 5]);
    let mut s = rest.trim_start();
    while !s.is_empty() {
        seen += 1;
        if seen > MAX_PARAMS {
            return None;
        }
        let eq = s.find('=')?;
        let name = s[..eq].trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            value = out;
            s = &quoted[end?..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_owned();
            s = &s[end..];
        }
        if value.len() > MAX_SECRET_LEN {
            return None;
        }
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest.trim_start();
        } else if !s.is_empty() {
            return None;
        }
        let slot = match name.to_ascii_lowercase().as_str() {
            "username" => (&mut p.username, Some(0)),
            "realm" => (&mut p.realm, Some(1)),
            "nonce" => (&mut p.nonce, Some(2)),
            "uri" => (&mut p.uri, Some(3)),
            "response" => (&mut p.response, Some(4)),
            "algorithm" => {
                p.algorithm = Some(value);
                continue;
            }
            "qop" => {
                p.qop = Some(value);
                continue;
            }
            "nc" => {
                p.nc = Some(value);
                continue;
            }
            "cnonce" => {
                p.cnonce = Some(value);
                continue;
            }
            _ => continue,
        };
        *slot.0 = value;
        if let Some(i) = slot.1 {
            has[i] = true;
        }
    }
    has.iter().all(|h| *h).then_some(p)
}

/// Whether Digest `p` is a correct answer for `method` given the user's HA1 (hex). The nonce
/// is checked by the caller.
pub fn digest_matches(p: &DigestParams, method: &str, ha1_hex: &str) -> bool {
    if p.realm != DIGEST_REALM {
        return false;
    }
    if !p
        .algorithm
        .as_deref()
        .is_none_or(|a| a.eq_ignore_ascii_case("md5"))
    {
        return false;
    }
    let ha2 = md5_hex(&[method, &p.uri]);
    let expected = match (&p.qop, &p.nc, &p.cnonce) {
        (None, _, _) => md5_hex(&[ha1_hex, &p.nonce, &ha2]),
        (Some(q), Some(nc), Some(cnonce)) if q.eq_ignore_ascii_case("auth") => {
            md5_hex(&[ha1_hex, &p.nonce, nc, cnonce, "auth", &ha2])
        }
        _ => return false,
    };
    let got = p.response.to_ascii_lowercase();
    got.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// Checks a request's `Authorization` header (`None`: absent). `trusted_nonce` is the Digest
/// nonce this connection already logged in with (it does not go stale here).
pub async fn check(
    auth: &Authenticator,
    nonces: &Nonces,
    client: ClientKey,
    method: &str,
    header: Option<&str>,
    trusted_nonce: Option<&str>,
) -> Login {
    let Some(header) = header else {
        return Login::Denied { stale: false };
    };
    if let Some(p) = parse_digest(header) {
        return check_digest(auth, nonces, client, method, &p, trusted_nonce);
    }
    let creds = match Credentials::from_authorization(header.as_bytes()) {
        Ok(Credentials::Basic { user, password }) if user == "token" && !auth.has_user("token") => {
            Credentials::Token(password)
        }
        Ok(c) => c,
        Err(_) => {
            auth.note_failure(client);
            return Login::Denied { stale: false };
        }
    };
    match auth.check(client, &creds).await {
        Verdict::Allowed(_) => Login::Allowed { digest_nonce: None },
        Verdict::Denied => Login::Denied { stale: false },
        Verdict::Locked(wait) => Login::Locked(wait),
    }
}

fn check_digest(
    auth: &Authenticator,
    nonces: &Nonces,
    client: ClientKey,
    method: &str,
    p: &DigestParams,
    trusted_nonce: Option<&str>,
) -> Login {
    if let Some(wait) = auth.locked_out(client) {
        return Login::Locked(wait);
    }
    let trusted = trusted_nonce == Some(p.nonce.as_str());
    let fresh = match nonces.check(&p.nonce, unix_now()) {
        Some(fresh) => fresh || trusted,
        None => {
            auth.note_failure(client);
            return Login::Denied { stale: false };
        }
    };
    let ok = auth
        .digest_ha1(&p.username)
        .is_some_and(|ha1| digest_matches(p, method, &ha1.hex()));
    if !ok {
        tracing::info!(%client, user = %p.username, "wrong RTSP Digest credentials");
        auth.note_failure(client);
        return Login::Denied { stale: false };
    }
    if !fresh {
        // Right answer to an old nonce: a new one, without counting a failure.
        return Login::Denied { stale: true };
    }
    Login::Allowed {
        digest_nonce: Some(p.nonce.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{hash_password, AuthSpec, DigestHa1, PasswordHashString, User};

    #[test]
    fn rfc_2617_example_response() {
        // RFC 2617, section 3.5, with its realm swapped for ours: the response computed
        // independently with `md5sum` over the same strings.
        let p = DigestParams {
            username: "Mufasa".into(),
            realm: DIGEST_REALM.into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            response: String::new(),
            algorithm: None,
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("0a4f113b".into()),
        };
        let ha1 = DigestHa1::of("Mufasa", "Circle Of Life").hex();
        let ha2 = md5_hex(&["GET", "/dir/index.html"]);
        let want = md5_hex(&[&ha1, &p.nonce, "00000001", "0a4f113b", "auth", &ha2]);
        assert!(digest_matches(
            &DigestParams {
                response: want.clone(),
                ..p.clone()
            },
            "GET",
            &ha1
        ));
        assert!(digest_matches(
            &DigestParams {
                response: want.to_uppercase(),
                ..p.clone()
            },
            "GET",
            &ha1
        ));
        assert!(!digest_matches(
            &DigestParams {
                response: want.clone(),
                ..p.clone()
            },
            "PUT",
            &ha1
        ));
        // Without qop (RFC 2069 style, what most RTSP clients send).
        let plain = md5_hex(&[&ha1, &p.nonce, &ha2]);
        let p2 = DigestParams {
            response: plain,
            qop: None,
            nc: None,
            cnonce: None,
            ..p.clone()
        };
        assert!(digest_matches(&p2, "GET", &ha1));
        let sess = DigestParams {
            algorithm: Some("MD5-sess".into()),
            ..p2.clone()
        };
        assert!(!digest_matches(&sess, "GET", &ha1));
        let other_realm = DigestParams {
            realm: "x".into(),
            ..p2
        };
        assert!(!digest_matches(&other_realm, "GET", &ha1));
    }

    #[test]
    fn digest_headers_parse() {
        let h = r#"Digest username="bob", realm="picamd", nonce="abc", uri="rtsp://h:8554/main", response="0123", algorithm=MD5"#;
        let p = parse_digest(h).unwrap();
        assert_eq!(p.username, "bob");
        assert_eq!(p.uri, "rtsp://h:8554/main");
        assert_eq!(p.algorithm.as_deref(), Some("MD5"));
        // Escapes and commas in quoted strings, odd spacing, qop fields unquoted.
        let h = r#"digest  username = "a\"b,c" ,realm="picamd",nonce="n",uri="/",response="r",qop=auth,nc=00000001,cnonce="x""#;
        let p = parse_digest(h).unwrap();
        assert_eq!(p.username, "a\"b,c");
        assert_eq!(p.nc.as_deref(), Some("00000001"));
        for bad in [
            "Basic abc",
            "Digest",
            r#"Digest username="a""#,
            r#"Digest username="a, realm="picamd", nonce="n", uri="/", response="r""#,
            r#"Digest username="a" realm="picamd", nonce="n", uri="/", response="r""#,
            r#"Digest =x, username="a""#,
            "Digest username=\"\\",
        ] {
            assert_eq!(parse_digest(bad), None, "{bad}");
        }
        let many = format!("Digest {}", "a=1, ".repeat(20));
        assert_eq!(parse_digest(&many), None);
    }

    #[test]
    fn nonces_are_ours_and_expire() {
        let n = Nonces::new([7; 32]);
        let t = 1_800_000_000;
        let nonce = n.make(t);
        assert_eq!(nonce.len(), 48);
        assert_eq!(n.check(&nonce, t), Some(true));
        assert_eq!(
            n.check(&nonce, t + NONCE_LIFETIME.as_secs() - 1),
            Some(true)
        );
        assert_eq!(n.check(&nonce, t + NONCE_LIFETIME.as_secs()), Some(false));
        assert_eq!(Nonces::new([8; 32]).check(&nonce, t), None, "another key");
        let mut forged = nonce.clone().into_bytes();
        forged[0] = b'f';
        assert_eq!(n.check(std::str::from_utf8(&forged).unwrap(), t), None);
        for junk in [
            "",
            "abc",
            "é",
            &"z".repeat(48),
            &format!("+{}", &nonce[1..]),
        ] {
            assert_eq!(n.check(junk, t), None, "{junk}");
        }
    }

    fn authenticator() -> std::sync::Arc<Authenticator> {
        Authenticator::new(AuthSpec {
            users: vec![User {
                name: "alice".into(),
                password_hash: PasswordHashString::parse(&hash_password("pw").unwrap()).unwrap(),
                rtsp_digest: Some(DigestHa1::of("alice", "pw")),
            }],
            tokens: vec![crate::auth::TokenHash::of("tok")],
        })
        .unwrap()
    }

    fn digest_header(nonce: &str, password: &str, method: &str) -> String {
        let ha1 = DigestHa1::of("alice", password).hex();
        let uri = "rtsp://127.0.0.1:8554/main";
        let response = md5_hex(&[&ha1, nonce, &md5_hex(&[method, uri])]);
        format!(
            r#"Digest username="alice", realm="picamd", nonce="{nonce}", uri="{uri}", response="{response}""#
        )
    }

    #[tokio::test]
    async fn every_scheme_is_checked_and_failures_lock_out() {
        let auth = authenticator();
        let nonces = Nonces::new(auth.derived_secret("test"));
        let me = ClientKey::of(std::net::Ipv4Addr::LOCALHOST.into());
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let go = |h: Option<String>, trusted: Option<String>| {
            let (auth, nonces) = (auth.clone(), nonces.clone());
            async move {
                check(
                    &auth,
                    &nonces,
                    me,
                    "DESCRIBE",
                    h.as_deref(),
                    trusted.as_deref(),
                )
                .await
            }
        };
        assert_eq!(go(None, None).await, Login::Denied { stale: false });
        let basic = format!("Basic {}", b64("alice:pw"));
        assert_eq!(
            go(Some(basic), None).await,
            Login::Allowed { digest_nonce: None }
        );
        let token = format!("Basic {}", b64("token:tok"));
        assert_eq!(
            go(Some(token), None).await,
            Login::Allowed { digest_nonce: None }
        );
        assert_eq!(
            go(Some("Bearer tok".into()), None).await,
            Login::Allowed { digest_nonce: None }
        );
        let nonce = nonces.make(unix_now());
        assert_eq!(
            go(Some(digest_header(&nonce, "pw", "DESCRIBE")), None).await,
            Login::Allowed {
                digest_nonce: Some(nonce.clone())
            }
        );
        // An old nonce: stale, unless this connection logged in with it.
        let old = nonces.make(unix_now() - NONCE_LIFETIME.as_secs() - 10);
        assert_eq!(
            go(Some(digest_header(&old, "pw", "DESCRIBE")), None).await,
            Login::Denied { stale: true }
        );
        assert!(matches!(
            go(
                Some(digest_header(&old, "pw", "DESCRIBE")),
                Some(old.clone())
            )
            .await,
            Login::Allowed { .. }
        ));
        // Wrong passwords, by Digest and Basic, share one lockout.
        for _ in 0..crate::auth::MAX_FAILURES / 2 {
            assert_eq!(
                go(Some(digest_header(&nonce, "nope", "DESCRIBE")), None).await,
                Login::Denied { stale: false }
            );
            let wrong = format!("Basic {}", b64("alice:nope"));
            let _ = go(Some(wrong), None).await;
        }
        assert!(matches!(
            go(Some(digest_header(&nonce, "pw", "DESCRIBE")), None).await,
            Login::Locked(_)
        ));
    }
}
