//! Who may watch: password and token checks, the cache of verified credentials and the
//! per-client limit on failed attempts.
//!
//! Passwords are stored as argon2id PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`),
//! tokens as `sha256:<64 hex digits>` of the token (tokens are long random strings, so a
//! fast hash is enough; passwords are not, so they get a slow one). Nothing here knows about
//! HTTP beyond the `Authorization` header's syntax: `http/guard.rs` applies it to requests.
//!
//! Costs: an argon2 check takes tens of milliseconds (more on a Pi), so it runs off the async
//! runtime, one at a time, and a credential that passed is remembered in a small cache keyed
//! by a keyed SHA-256 of what the client sent (an MJPEG client reconnecting costs a hash, not
//! an argon2). Failed attempts are counted per client address; after
//! [`MAX_FAILURES`] within [`FAILURE_WINDOW`] the address gets `429` for [`LOCKOUT`], except
//! for credentials already in the cache. Every map here is capped.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Failed attempts from one client within [`FAILURE_WINDOW`] before it is locked out.
pub const MAX_FAILURES: u32 = 10;
/// The window over which failures are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a client that failed too often gets `429` for credentials not seen before.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Most client addresses whose failures are remembered at once.
const MAX_TRACKED_CLIENTS: usize = 4096;
/// Most verified credentials remembered.
const MAX_CACHED: usize = 256;
/// How long a verified credential is trusted without a new argon2 check.
const CACHE_TTL: Duration = Duration::from_secs(15 * 60);
/// Largest argon2 memory cost accepted from the config, in KiB (a typo must not make every
/// login allocate gigabytes on a Pi).
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
/// Largest argon2 time cost (passes) accepted from the config.
const MAX_ARGON2_PASSES: u32 = 16;
/// Longest user name or password accepted from a client, in bytes.
pub const MAX_SECRET_LEN: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("not an argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$SALT$HASH): {0}")]
    BadPasswordHash(String),
    #[error(
        "argon2 cost too high ({0}); at most m={MAX_ARGON2_MEMORY_KIB}, t={MAX_ARGON2_PASSES}"
    )]
    CostTooHigh(String),
    #[error("not of the form sha256:<64 hex digits>")]
    BadTokenHash,
    #[error("not of the form md5:<32 hex digits>")]
    BadDigestHa1,
    #[error("empty")]
    Empty,
    #[error("cannot hash: {0}")]
    Hashing(String),
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(String),
}

/// A checked argon2id PHC string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHashString(String);

impl PasswordHashString {
    /// Parses and checks a PHC string: argon2id, a salt and a hash, and costs a Pi can bear.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let h = PasswordHash::new(s).map_err(|e| AuthError::BadPasswordHash(e.to_string()))?;
        if h.algorithm.as_str() != "argon2id" {
            return Err(AuthError::BadPasswordHash(format!(
                "algorithm {} (use argon2id)",
                h.algorithm
            )));
        }
        if h.salt.is_none() || h.hash.is_none() {
            return Err(AuthError::BadPasswordHash("no salt or no hash".into()));
        }
        let params =
            argon2::Params::try_from(&h).map_err(|e| AuthError::BadPasswordHash(e.to_string()))?;
        if params.m_cost() > MAX_ARGON2_MEMORY_KIB || params.t_cost() > MAX_ARGON2_PASSES {
            return Err(AuthError::CostTooHigh(format!(
                "m={}, t={}",
                params.m_cost(),
                params.t_cost()
            )));
        }
        Ok(PasswordHashString(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `password` matches (slow: argon2).
    pub fn verify(&self, password: &[u8]) -> bool {
        match PasswordHash::new(&self.0) {
            Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
            Err(_) => false,
        }
    }
}

/// The SHA-256 of a token, written `sha256:<hex>` in the config.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash(sha256:{})", hex(&self.0))
    }
}

impl TokenHash {
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let hex_part = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or(AuthError::BadTokenHash)?;
        // Checked byte by byte (parse_hex): slicing a string with multi-byte characters in it
        // would panic (found by the config fuzz target), and from_str_radix would also take
        // a `+`.
        parse_hex::<32>(hex_part)
            .map(TokenHash)
            .ok_or(AuthError::BadTokenHash)
    }

    /// The hash of `token`.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Written as in the config: `sha256:<hex>`.
    pub fn to_config_string(&self) -> String {
        format!("sha256:{}", hex(&self.0))
    }

    /// Constant-time comparison.
    fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `2 * N` hex digits (either case) into bytes; `None` unless `s` is exactly that. Checked
/// byte by byte: slicing a string with multi-byte characters in it would panic.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let nibble = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
        *byte = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
    Some(out)
}

/// The realm of RTSP Digest authentication; HA1 values are made for it.
pub const DIGEST_REALM: &str = "picamd";

/// RTSP Digest's HA1 (RFC 2617, section 3.2.2.2): MD5(`user:realm:password`), written
/// `md5:<32 hex>` in the config. Whoever has it can log in over RTSP Digest as that user
/// (it is password-equivalent there), but it is no use for HTTP, which checks the argon2
/// hash.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestHa1([u8; 16]);

impl std::fmt::Debug for DigestHa1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Password-equivalent for RTSP: not printed.
        f.write_str("DigestHa1(<md5>)")
    }
}

impl DigestHa1 {
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let digits = s
            .trim()
            .strip_prefix("md5:")
            .ok_or(AuthError::BadDigestHa1)?;
        parse_hex::<16>(digits)
            .map(DigestHa1)
            .ok_or(AuthError::BadDigestHa1)
    }

    /// HA1 of `user` with `password` in [`DIGEST_REALM`].
    pub fn of(user: &str, password: &str) -> Self {
        use md5::Digest as _;
        let mut h = md5::Md5::new();
        h.update(format!("{user}:{DIGEST_REALM}:{password}").as_bytes());
        DigestHa1(h.finalize().into())
    }

    /// Written as in the config: `md5:<hex>`.
    pub fn to_config_string(&self) -> String {
        format!("md5:{}", hex(&self.0))
    }

    /// Lowercase hex, as the Digest response is computed over it.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// One account: a name, its password hash, and optionally its RTSP Digest HA1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password_hash: PasswordHashString,
    /// For RTSP Digest logins (`rtsp_digest`); without it the user can log in to RTSP with
    /// Basic only.
    pub rtsp_digest: Option<DigestHa1>,
}

/// The accounts and tokens allowed in. Empty: authentication is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSpec {
    pub users: Vec<User>,
    pub tokens: Vec<TokenHash>,
}

impl AuthSpec {
    pub fn enabled(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }
}

/// `n` bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(out)
}

/// The PHC string for `password` with argon2id's default (OWASP-recommended) costs and a
/// random salt: what `picamd --hash-password` prints.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::Empty);
    }
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// A new random token (256 bits, URL-safe) and its config line: what `picamd --new-token`
/// prints.
pub fn new_token() -> Result<(String, TokenHash), AuthError> {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let hash = TokenHash::of(&token);
    Ok((token, hash))
}

/// What a client presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, not even in a debug log.
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, <password>)"),
            Credentials::Token(_) => f.write_str("Token(<token>)"),
        }
    }
}

/// Why a header could not be read as credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("unsupported Authorization scheme (use Basic or Bearer)")]
    Scheme,
    #[error("malformed Authorization header")]
    Malformed,
}

impl Credentials {
    /// Parses an `Authorization` header value: `Basic base64(user:password)` (RFC 7617,
    /// UTF-8) or `Bearer token` (RFC 6750). Scheme names are case-insensitive.
    pub fn from_authorization(value: &[u8]) -> Result<Credentials, CredentialsError> {
        let value = std::str::from_utf8(value).map_err(|_| CredentialsError::Malformed)?;
        let (scheme, rest) = value
            .trim()
            .split_once(' ')
            .ok_or(CredentialsError::Malformed)?;
        let rest = rest.trim();
        if rest.is_empty() || rest.len() > 4 * MAX_SECRET_LEN {
            return Err(CredentialsError::Malformed);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| CredentialsError::Malformed)?;
            let text = String::from_utf8(decoded).map_err(|_| CredentialsError::Malformed)?;
            let (user, password) = text.split_once(':').ok_or(CredentialsError::Malformed)?;
            Ok(Credentials::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Ok(Credentials::Token(rest.to_owned()))
        } else {
            Err(CredentialsError::Scheme)
        }
    }

    /// A token from a query string (`…?token=…&…`), percent-decoded.
    pub fn from_query(query: &str) -> Option<Credentials> {
        query.split('&').find_map(|pair| {
            let v = pair.strip_prefix("token=")?;
            let v = percent_decode(v)?;
            (!v.is_empty() && v.len() <= MAX_SECRET_LEN).then_some(Credentials::Token(v))
        })
    }

    /// A token from a `Cookie` header's [`TOKEN_COOKIE`] pair (`name=value` pairs separated
    /// by `;`, whitespace around them trimmed; the first pair of that name counts). The value
    /// is taken as it is, not percent-decoded: tokens from `picamd --new-token` are URL-safe
    /// base64, and the guard sets the cookie only to values made of cookie octets. Empty,
    /// longer than [`MAX_SECRET_LEN`] or not cookie octets (RFC 6265 `cookie-octet`): `None`.
    pub fn from_cookie(header: &str) -> Option<Credentials> {
        let v = cookie_value(header, TOKEN_COOKIE)?;
        (!v.is_empty() && v.len() <= MAX_SECRET_LEN && is_cookie_value(v))
            .then(|| Credentials::Token(v.to_owned()))
    }

    /// The cache key: a SHA-256 keyed with a per-process secret, so the cache holds nothing
    /// a memory dump could brute-force faster than the argon2 hashes.
    fn cache_key(&self, secret: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(secret);
        match self {
            Credentials::Basic { user, password } => {
                h.update(b"basic\0");
                h.update((user.len() as u64).to_le_bytes());
                h.update(user.as_bytes());
                h.update(password.as_bytes());
            }
            Credentials::Token(t) => {
                h.update(b"token\0");
                h.update(t.as_bytes());
            }
        }
        h.finalize().into()
    }
}

/// The cookie that carries a token once a page was opened with `?token=`.
pub const TOKEN_COOKIE: &str = "picamd_token";

/// The value of the first pair called `name` in a `Cookie` header (`a=1; b=2`), trimmed;
/// `Some("")` for `name=`, `None` when there is no such pair.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    // Only HTTP's own whitespace (space, tab) is trimmed: `str::trim` would also take other
    // characters away and turn `\u{a0}abc` into a valid-looking `abc` (the fuzz target's find).
    let ows = |s: &'a str| s.trim_matches([' ', '\t']);
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (ows(k) == name).then(|| ows(v))
    })
}

/// Whether `s` is made of RFC 6265 `cookie-octet`s only (printable ASCII without space,
/// `"`, `,`, `;` and `\`), so it can be sent as a cookie value unquoted.
pub fn is_cookie_value(s: &str) -> bool {
    s.bytes()
        .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hexpair = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hexpair, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A client address as the limits see it: IPv4 addresses one by one, IPv6 by /64 (one
/// household or host usually has a whole /64, and counting its addresses one by one would
/// let it step around every limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(u32::from(v4) as u128),
                None => ClientKey((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match u32::try_from(self.0) {
            Ok(v4) => write!(f, "{}", std::net::Ipv4Addr::from(v4)),
            Err(_) => write!(f, "{}/64", std::net::Ipv6Addr::from(self.0 & !1)),
        }
    }
}

/// Counts failed attempts per client, in a capped map.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    clients: HashMap<ClientKey, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first_at: Instant,
    locked_until: Option<Instant>,
}

impl Failures {
    fn expired(&self, now: Instant) -> bool {
        match self.locked_until {
            Some(t) => now >= t,
            None => now.duration_since(self.first_at) >= FAILURE_WINDOW,
        }
    }
}

impl FailureLimiter {
    /// How long `client` is still locked out, if it is.
    pub fn locked(&self, client: ClientKey, now: Instant) -> Option<Duration> {
        let f = self.clients.get(&client)?;
        f.locked_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Records one failure; returns the lockout it starts, if this one reaches the limit.
    pub fn fail(&mut self, client: ClientKey, now: Instant) -> Option<Duration> {
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_TRACKED_CLIENTS {
            self.clients.retain(|_, f| !f.expired(now));
            if self.clients.len() >= MAX_TRACKED_CLIENTS {
                // Still full: forget the oldest record.
                if let Some(oldest) = self
                    .clients
                    .iter()
                    .min_by_key(|(_, f)| f.first_at)
                    .map(|(k, _)| *k)
                {
                    self.clients.remove(&oldest);
                }
            }
        }
        let f = self.clients.entry(client).or_insert(Failures {
            count: 0,
            first_at: now,
            locked_until: None,
        });
        if f.expired(now) {
            *f = Failures {
                count: 0,
                first_at: now,
                locked_until: None,
            };
        }
        f.count += 1;
        if f.count >= MAX_FAILURES && f.locked_until.is_none() {
            f.locked_until = Some(now + LOCKOUT);
            return Some(LOCKOUT);
        }
        None
    }

    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// Who was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    User(String),
    Token,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Identity),
    /// Wrong credentials.
    Denied,
    /// Too many failures from this client: come back after this long.
    Locked(Duration),
}

/// Checks credentials against an [`AuthSpec`], with the cache and the failure limiter.
pub struct Authenticator {
    spec: AuthSpec,
    secret: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
    failures: Mutex<FailureLimiter>,
    /// One argon2 check at a time: a burst of logins must not starve the encoders.
    argon2: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Authenticator {
    pub fn new(spec: AuthSpec) -> Result<Arc<Self>, AuthError> {
        let secret = if spec.enabled() {
            random_bytes::<32>()?
        } else {
            [0; 32]
        };
        Ok(Arc::new(Authenticator {
            spec,
            secret,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureLimiter::default()),
            argon2: tokio::sync::Semaphore::new(1),
        }))
    }

    pub fn enabled(&self) -> bool {
        self.spec.enabled()
    }

    /// Checks what `client` presented.
    pub async fn check(&self, client: ClientKey, creds: &Credentials) -> Verdict {
        let key = creds.cache_key(&self.secret);
        let now = Instant::now();
        {
            let mut cache = lock(&self.cache);
            match cache.get(&key) {
                Some((id, at)) if now.duration_since(*at) < CACHE_TTL => {
                    return Verdict::Allowed(id.clone())
                }
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        if let Some(wait) = lock(&self.failures).locked(client, now) {
            return Verdict::Locked(wait);
        }
        let found = match creds {
            Credentials::Token(t) => {
                let h = TokenHash::of(t);
                // Compare with every configured token, so timing does not say which matched.
                let hit = self
                    .spec
                    .tokens
                    .iter()
                    .fold(false, |acc, known| known.matches(&h) | acc);
                hit.then_some(Identity::Token)
            }
            Credentials::Basic { user, password } => self.check_password(user, password).await,
        };
        match found {
            Some(id) => {
                let mut cache = lock(&self.cache);
                if cache.len() >= MAX_CACHED {
                    cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
                    if cache.len() >= MAX_CACHED {
                        if let Some(oldest) = cache.iter().min_by_key(|(_, (_, at))| *at) {
                            let oldest = *oldest.0;
                            cache.remove(&oldest);
                        }
                    }
                }
                cache.insert(key, (id.clone(), now));
                Verdict::Allowed(id)
            }
            None => match lock(&self.failures).fail(client, Instant::now()) {
                Some(wait) => {
                    tracing::warn!(
                        %client,
                        "{MAX_FAILURES} failed logins within {FAILURE_WINDOW:?}; locked out for {wait:?}"
                    );
                    Verdict::Denied
                }
                None => Verdict::Denied,
            },
        }
    }

    async fn check_password(&self, user: &str, password: &str) -> Option<Identity> {
        if user.len() > MAX_SECRET_LEN || password.len() > MAX_SECRET_LEN {
            return None;
        }
        // An unknown name costs an argon2 check too, so timing does not tell names apart.
        let (hash, known) = match self.spec.users.iter().find(|u| u.name == user) {
            Some(u) => (u.password_hash.clone(), true),
            None => (self.spec.users.first()?.password_hash.clone(), false),
        };
        let _permit = self.argon2.acquire().await.ok()?;
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || hash.verify(password.as_bytes()))
            .await
            .unwrap_or(false);
        (ok && known).then(|| Identity::User(user.to_owned()))
    }

    /// How long `client` is still locked out after too many failures, if it is: for
    /// checks made outside [`Authenticator::check`] (RTSP Digest), which share the lockout.
    pub fn locked_out(&self, client: ClientKey) -> Option<Duration> {
        lock(&self.failures).locked(client, Instant::now())
    }

    /// Counts a failed attempt made outside [`Authenticator::check`] (RTSP Digest) against
    /// `client`, as a wrong password would be.
    pub fn note_failure(&self, client: ClientKey) {
        if let Some(wait) = lock(&self.failures).fail(client, Instant::now()) {
            tracing::warn!(
                %client,
                "{MAX_FAILURES} failed logins within {FAILURE_WINDOW:?}; locked out for {wait:?}"
            );
        }
    }

    /// Whether any account has an RTSP Digest HA1 (else RTSP offers Basic only).
    pub fn has_digest_users(&self) -> bool {
        self.spec.users.iter().any(|u| u.rtsp_digest.is_some())
    }

    /// Whether an account has this name.
    pub fn has_user(&self, name: &str) -> bool {
        self.spec.users.iter().any(|u| u.name == name)
    }

    /// The RTSP Digest HA1 of `user`, if the user exists and has one.
    pub fn digest_ha1(&self, user: &str) -> Option<&DigestHa1> {
        self.spec
            .users
            .iter()
            .find(|u| u.name == user)?
            .rtsp_digest
            .as_ref()
    }

    /// A per-process secret derived for `purpose` (RTSP Digest nonces): random at start, so
    /// nothing made with it outlives the process.
    pub fn derived_secret(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// Client addresses with failures on record (for tests of the cap).
    pub fn tracked_clients(&self) -> usize {
        lock(&self.failures).tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn authorization_headers_parse() {
        let h = format!("Basic {}", b64("alice:pa:ss wörd"));
        assert_eq!(
            Credentials::from_authorization(h.as_bytes()),
            Ok(Credentials::Basic {
                user: "alice".into(),
                password: "pa:ss wörd".into()
            })
        );
        let h = format!("basic   {}", b64("bob:"));
        assert!(matches!(
            Credentials::from_authorization(h.as_bytes()),
            Ok(Credentials::Basic { password, .. }) if password.is_empty()
        ));
        assert_eq!(
            Credentials::from_authorization(b"Bearer abc.DEF_123"),
            Ok(Credentials::Token("abc.DEF_123".into()))
        );
        assert_eq!(
            Credentials::from_authorization(b"Digest x=1"),
            Err(CredentialsError::Scheme)
        );
        for bad in [
            &b"Basic"[..],
            b"Basic !!!",
            b"Bearer ",
            b"\xff\xfe",
            b"",
            format!("Basic {}", b64("no-colon")).as_bytes(),
        ] {
            assert_eq!(
                Credentials::from_authorization(bad),
                Err(CredentialsError::Malformed),
                "{bad:?}"
            );
        }
        let huge = format!("Bearer {}", "a".repeat(10_000));
        assert!(Credentials::from_authorization(huge.as_bytes()).is_err());
    }

    #[test]
    fn query_tokens_parse() {
        assert_eq!(
            Credentials::from_query("a=1&token=x%2By+z&b"),
            Some(Credentials::Token("x+y z".into()))
        );
        assert_eq!(Credentials::from_query("tokens=1&xtoken=2"), None);
        assert_eq!(Credentials::from_query("token="), None);
        assert_eq!(Credentials::from_query("token=%zz"), None);
        assert_eq!(Credentials::from_query("token=%e"), None);
    }

    #[test]
    fn cookie_tokens_parse() {
        let t = |v: &str| Some(Credentials::Token(v.into()));
        // A token from --new-token: URL-safe base64, used as it is.
        let tok = "k7Yc3Q-test_token-0123456789abcdefghijklmnopq";
        assert_eq!(
            Credentials::from_cookie(&format!("picamd_token={tok}")),
            t(tok)
        );
        // Among other cookies, with or without spaces around the pairs and the `=`.
        assert_eq!(
            Credentials::from_cookie(&format!("theme=dark; picamd_token={tok}; lang=en")),
            t(tok)
        );
        assert_eq!(
            Credentials::from_cookie(&format!("a=1;picamd_token={tok};b=2")),
            t(tok)
        );
        assert_eq!(
            Credentials::from_cookie(&format!("  a=1 ;  picamd_token = {tok}  ; b")),
            t(tok)
        );
        assert_eq!(
            Credentials::from_cookie(&format!("\tpicamd_token={tok}\t")),
            t(tok)
        );
        // The first pair of that name counts.
        assert_eq!(
            Credentials::from_cookie("picamd_token=first; picamd_token=second"),
            t("first")
        );
        // `=` inside the value is kept (base64 padding).
        assert_eq!(Credentials::from_cookie("picamd_token=ab=="), t("ab=="));
        // No percent-decoding, no `+` to space: the bytes are the token.
        assert_eq!(
            Credentials::from_cookie("picamd_token=a%2Bb+c"),
            t("a%2Bb+c")
        );
        // Other names, near misses included.
        for none in [
            "",
            ";",
            " ; ; ",
            "picamd_token",
            "theme=dark",
            "xpicamd_token=abc",
            "picamd_tokens=abc",
            "picamd-token=abc",
            "PICAMD_TOKEN=abc",
            "token=abc",
            "session=picamd_token=abc",
        ] {
            assert_eq!(Credentials::from_cookie(none), None, "{none:?}");
        }
        // Empty, too long, or not cookie octets: no credentials.
        assert_eq!(Credentials::from_cookie("picamd_token="), None);
        assert_eq!(Credentials::from_cookie("picamd_token=  ; a=1"), None);
        // An empty first pair is not skipped for a later one.
        assert_eq!(
            Credentials::from_cookie("picamd_token=; picamd_token=x"),
            None
        );
        let longest = "a".repeat(MAX_SECRET_LEN);
        assert_eq!(
            Credentials::from_cookie(&format!("picamd_token={longest}")),
            t(&longest)
        );
        let too_long = "a".repeat(MAX_SECRET_LEN + 1);
        assert_eq!(
            Credentials::from_cookie(&format!("picamd_token={too_long}")),
            None
        );
        for bad in [
            "picamd_token=a b",
            "picamd_token=\"abc\"",
            "picamd_token=a,b",
            "picamd_token=a\\b",
            "picamd_token=héllo",
            "picamd_token=a\u{7f}",
        ] {
            assert_eq!(Credentials::from_cookie(bad), None, "{bad:?}");
        }
        assert_eq!(
            cookie_value("a=1; picamd_token=; b=2", TOKEN_COOKIE),
            Some("")
        );
        assert_eq!(cookie_value("a=1; b=2", TOKEN_COOKIE), None);
        assert!(is_cookie_value(tok));
        assert!(!is_cookie_value("a;b"));
        // Only spaces and tabs are trimmed: other whitespace is part of the value, and so
        // not a token (the fuzz target found `\u{a0}abc` read as `abc`, `\r=` as `=`).
        assert_eq!(Credentials::from_cookie("picamd_token=\u{a0}abc"), None);
        assert_eq!(Credentials::from_cookie("picamd_token=\r="), None);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Credentials::Basic {
            user: "alice".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Token("s3cret".into())).contains("s3cret"));
    }

    #[test]
    fn token_hashes_round_trip_and_reject_junk() {
        let h = TokenHash::of("abc");
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            h.to_config_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenHash::parse(&h.to_config_string()), Ok(h));
        for bad in [
            "abc",
            "sha256:",
            "sha256:zz",
            &format!("sha1:{}", "0".repeat(64)),
        ] {
            assert_eq!(TokenHash::parse(bad), Err(AuthError::BadTokenHash), "{bad}");
        }
        assert!(TokenHash::parse(&format!("sha256:{}é", "0".repeat(62))).is_err());
        // A multi-byte character across a digit pair (the config fuzz target's find: it
        // panicked) and a sign that from_str_radix would take.
        let odd = format!("sha256:{}ǝ{}", "0".repeat(41), "0".repeat(21));
        assert_eq!(TokenHash::parse(&odd), Err(AuthError::BadTokenHash));
        let plus = format!("sha256:+f{}", "0".repeat(62));
        assert_eq!(TokenHash::parse(&plus), Err(AuthError::BadTokenHash));
        let upper = format!("sha256:{}", "AB".repeat(32));
        assert_eq!(TokenHash::parse(&upper), Ok(TokenHash([0xAB; 32])));
    }

    #[test]
    fn digest_ha1_is_md5_of_user_realm_password_and_parses_back() {
        // MD5("Mufasa:picamd:Circle Of Life"), computed with `printf %s … | md5sum`.
        let h = DigestHa1::of("Mufasa", "Circle Of Life");
        assert_eq!(h.to_config_string(), "md5:f9508cd9c29037421e7b6f834d8314bd");
        assert_eq!(DigestHa1::parse(&h.to_config_string()), Ok(h.clone()));
        assert_eq!(
            DigestHa1::parse("md5:F9508CD9C29037421E7B6F834D8314BD"),
            Ok(h.clone())
        );
        for bad in [
            "",
            "md5:",
            "cbd21d0a4ce1e40a4ffea6ef3d8cd7d8",
            "md5:zz",
            "md5:é",
        ] {
            assert_eq!(DigestHa1::parse(bad), Err(AuthError::BadDigestHa1), "{bad}");
        }
        assert!(!format!("{h:?}").contains("f950"), "not printed");
    }

    #[test]
    fn password_hashes_are_checked() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        let h = PasswordHashString::parse(&phc).unwrap();
        assert!(h.verify(b"correct horse"));
        assert!(!h.verify(b"correct horse "));
        assert_eq!(hash_password(""), Err(AuthError::Empty));
        assert!(matches!(
            PasswordHashString::parse("hunter2"),
            Err(AuthError::BadPasswordHash(_))
        ));
        let argon2i = phc.replacen("argon2id", "argon2i", 1);
        assert!(matches!(
            PasswordHashString::parse(&argon2i),
            Err(AuthError::BadPasswordHash(m)) if m.contains("argon2i")
        ));
        let costly = phc.replacen("m=19456", "m=4000000", 1);
        assert!(matches!(
            PasswordHashString::parse(&costly),
            Err(AuthError::CostTooHigh(_))
        ));
    }

    #[test]
    fn ipv6_clients_count_by_slash_64() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a.into()), ClientKey::of(b.into()));
        assert_ne!(ClientKey::of(a.into()), ClientKey::of(c.into()));
        assert_eq!(ClientKey::of(a.into()).to_string(), "2001:db8:1:2::/64");
        let v4 = Ipv4Addr::new(192, 168, 1, 7);
        assert_eq!(ClientKey::of(v4.into()).to_string(), "192.168.1.7");
        assert_eq!(
            ClientKey::of(v4.into()),
            ClientKey::of(v4.to_ipv6_mapped().into())
        );
        assert_ne!(
            ClientKey::of(v4.into()),
            ClientKey::of(Ipv4Addr::new(192, 168, 1, 8).into())
        );
    }

    #[test]
    fn failures_lock_out_after_the_limit_and_expire() {
        let mut l = FailureLimiter::default();
        let c = ClientKey::of(Ipv4Addr::new(10, 0, 0, 1).into());
        let other = ClientKey::of(Ipv4Addr::new(10, 0, 0, 2).into());
        let t0 = Instant::now();
        for i in 1..MAX_FAILURES {
            assert_eq!(l.fail(c, t0), None, "failure {i}");
            assert_eq!(l.locked(c, t0), None);
        }
        assert_eq!(l.fail(c, t0), Some(LOCKOUT));
        assert_eq!(
            l.locked(c, t0 + Duration::from_secs(1)),
            Some(LOCKOUT - Duration::from_secs(1))
        );
        assert_eq!(l.locked(other, t0), None);
        assert_eq!(l.locked(c, t0 + LOCKOUT), None);
        // After the lockout the count starts again.
        assert_eq!(l.fail(c, t0 + LOCKOUT), None);

        // Failures spread wider than the window never lock out.
        let mut l = FailureLimiter::default();
        for i in 0..3 * MAX_FAILURES {
            let at = t0 + FAILURE_WINDOW / (MAX_FAILURES - 2) * i;
            assert_eq!(l.fail(c, at), None, "failure {i}");
        }
    }

    #[test]
    fn the_failure_map_is_capped() {
        let mut l = FailureLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 500) {
            l.fail(ClientKey::of(Ipv4Addr::from(i).into()), t0);
        }
        assert_eq!(l.tracked(), MAX_TRACKED_CLIENTS);
    }

    fn spec_with(password: &str, token: &str) -> AuthSpec {
        AuthSpec {
            users: vec![User {
                name: "alice".into(),
                password_hash: PasswordHashString::parse(&hash_password(password).unwrap())
                    .unwrap(),
                rtsp_digest: None,
            }],
            tokens: vec![TokenHash::of(token)],
        }
    }

    #[tokio::test]
    async fn the_authenticator_caches_successes_and_locks_out_failures() {
        let auth = Authenticator::new(spec_with("pw", "tok")).unwrap();
        let me = ClientKey::of(Ipv4Addr::LOCALHOST.into());
        let good = Credentials::Basic {
            user: "alice".into(),
            password: "pw".into(),
        };
        let t = Instant::now();
        assert_eq!(
            auth.check(me, &good).await,
            Verdict::Allowed(Identity::User("alice".into()))
        );
        let first = t.elapsed();
        let t = Instant::now();
        assert!(matches!(auth.check(me, &good).await, Verdict::Allowed(_)));
        let cached = t.elapsed();
        assert!(cached * 10 < first, "cached {cached:?} vs argon2 {first:?}");
        assert_eq!(
            auth.check(me, &Credentials::Token("tok".into())).await,
            Verdict::Allowed(Identity::Token)
        );
        assert_eq!(
            auth.check(me, &Credentials::Token("tok2".into())).await,
            Verdict::Denied
        );
        let wrong_user = Credentials::Basic {
            user: "bob".into(),
            password: "pw".into(),
        };
        assert_eq!(auth.check(me, &wrong_user).await, Verdict::Denied);
        for _ in 2..MAX_FAILURES {
            assert_eq!(
                auth.check(me, &Credentials::Token("x".into())).await,
                Verdict::Denied
            );
        }
        // Locked: new guesses are not even checked, but a known-good credential still works.
        assert!(matches!(
            auth.check(me, &Credentials::Token("y".into())).await,
            Verdict::Locked(_)
        ));
        assert!(matches!(auth.check(me, &good).await, Verdict::Allowed(_)));
        let elsewhere = ClientKey::of(Ipv4Addr::new(10, 1, 1, 1).into());
        assert_eq!(
            auth.check(elsewhere, &Credentials::Token("y".into())).await,
            Verdict::Denied
        );
    }
}
