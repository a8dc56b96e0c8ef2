//! HTTPS material: the certificate and key the TLS listener serves, as a rustls
//! [`ServerConfig`] on the ring provider.
//!
//! Either the PEM files named by `tls_cert`/`tls_key`, or a self-signed certificate made on
//! the first start and kept in `state_dir` (`tls-cert.pem`, `tls-key.pem`), reused while it is
//! readable and young enough. Everything here runs once, at start-up, before privileges are
//! dropped (so a root-only key file can be read). Accepting connections and the handshake
//! timeout belong to [`crate::http`].

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::atomic_file::{self, NewFile};
use crate::boot_status::{PersistedFile, Used};
use crate::config::{ConfigError, TlsConfig, TlsFiles};

/// The self-signed certificate's file in `state_dir`.
pub const SELF_SIGNED_CERT: &str = "tls-cert.pem";
/// Its private key's file in `state_dir` (mode 0600).
pub const SELF_SIGNED_KEY: &str = "tls-key.pem";
/// How long a self-signed certificate is valid: Apple's systems refuse TLS server
/// certificates valid for longer than 825 days, even trusted by hand.
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(825 * 24 * 3600);
/// A self-signed certificate whose file is older than this is made again at start.
const SELF_SIGNED_RENEW_AFTER: Duration = Duration::from_secs(800 * 24 * 3600);

/// Why no HTTPS configuration could be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file is missing, unreadable or not what its key says (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write the self-signed certificate to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the served certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOrigin {
    /// `tls_cert`/`tls_key`.
    Configured { cert: PathBuf },
    /// Made at this start, in `state_dir`.
    Generated { cert: PathBuf },
    /// Made at an earlier start, read back from `state_dir`.
    Reused { cert: PathBuf },
    /// The previous generation in `state_dir`: the current pair was broken (`reason`).
    Previous { cert: PathBuf, reason: String },
}

impl std::fmt::Display for CertOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertOrigin::Configured { cert } => write!(f, "from {}", cert.display()),
            CertOrigin::Generated { cert } => {
                write!(f, "self-signed, made now in {}", cert.display())
            }
            CertOrigin::Reused { cert } => write!(f, "self-signed, {}", cert.display()),
            CertOrigin::Previous { cert, reason } => write!(
                f,
                "self-signed, {} (the current one is broken: {reason})",
                cert.display()
            ),
        }
    }
}

impl CertOrigin {
    /// The entry for `/state`'s `persist` list when the certificate is the previous copy:
    /// named by the persisted file (`tls-cert.pem`, as the boot status file names its files),
    /// `used` saying which copy. `None` for every other origin: nothing fell back.
    pub fn fallback(&self) -> Option<PersistedFile> {
        let CertOrigin::Previous { cert, reason } = self else {
            return None;
        };
        let previous = cert.as_os_str().as_bytes();
        let current = previous
            .strip_suffix(atomic_file::PREVIOUS_SUFFIX.as_bytes())
            .unwrap_or(previous);
        Some(PersistedFile {
            file: String::from_utf8_lossy(current).into_owned(),
            used: Used::Previous,
            reason: reason.clone(),
        })
    }
}

/// What the TLS listener serves.
#[derive(Clone)]
pub struct TlsMaterial {
    pub server_config: Arc<ServerConfig>,
    /// SHA-256 of the certificate (DER), as browsers show it: `AB:CD:…`.
    pub fingerprint: String,
    pub origin: CertOrigin,
}

/// Reads the configured files, or reuses or makes the self-signed certificate.
pub fn load(tls: &TlsConfig, state_dir: &Path) -> Result<TlsMaterial, TlsError> {
    if let Some(files) = &tls.files {
        let (certs, key) = read_files(files)?;
        let fingerprint = fingerprint(&certs[0]);
        let server_config = server_config(certs, key).map_err(|e| ConfigError::Invalid {
            key: "tls_key",
            origin: files.key.origin.clone(),
            message: format!(
                "{} and {} do not make a usable pair: {e}",
                files.key.value.display(),
                files.cert.value.display()
            ),
        })?;
        return Ok(TlsMaterial {
            server_config,
            fingerprint,
            origin: CertOrigin::Configured {
                cert: files.cert.value.clone(),
            },
        });
    }
    let cert_path = state_dir.join(SELF_SIGNED_CERT);
    let key_path = state_dir.join(SELF_SIGNED_KEY);
    match read_self_signed(&cert_path, &key_path) {
        Ok((certs, key, refused)) => {
            let fingerprint = fingerprint(&certs[0]);
            if let Some(why) = &refused {
                tracing::warn!(
                    path = %cert_path.display(),
                    "the self-signed certificate is broken ({why}); using the previous one"
                );
            }
            return Ok(TlsMaterial {
                server_config: server_config(certs, key)?,
                fingerprint,
                origin: match refused {
                    None => CertOrigin::Reused { cert: cert_path },
                    Some(reason) => CertOrigin::Previous {
                        cert: atomic_file::previous_path(&cert_path),
                        reason,
                    },
                },
            });
        }
        Err(Reuse::Missing) => {}
        Err(Reuse::Old) => tracing::info!(
            path = %cert_path.display(),
            "the self-signed certificate is due for renewal; making a new one"
        ),
        Err(Reuse::Bad(why)) => {
            tracing::warn!(
                path = %cert_path.display(),
                "cannot use the self-signed certificate ({why}); making a new one"
            );
            // Neither generation is usable: the broken pair must not become the previous
            // generation of the new one (write_set keeps the old set only when it is whole).
            let _ = std::fs::remove_file(&cert_path);
            let _ = std::fs::remove_file(&key_path);
        }
    }
    let (cert_pem, key_pem) = generate(&names())?;
    std::fs::create_dir_all(state_dir).map_err(|source| TlsError::Write {
        path: state_dir.to_owned(),
        source,
    })?;
    // The old pair becomes the previous generation, then the new pair is written: a cut at
    // any moment leaves one whole pair to start from (atomic_file).
    atomic_file::write_set(&[
        NewFile {
            path: &key_path,
            bytes: key_pem.as_bytes(),
            mode: 0o600,
        },
        NewFile {
            path: &cert_path,
            bytes: cert_pem.as_bytes(),
            mode: 0o644,
        },
    ])
    .map_err(|e| TlsError::Write {
        path: e.path,
        source: e.source,
    })?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(|source| TlsError::Write {
            path: cert_path.clone(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(|source| TlsError::Write {
            path: key_path.clone(),
            source,
        })?;
    let fingerprint = fingerprint(&cert);
    Ok(TlsMaterial {
        server_config: server_config(vec![cert], key)?,
        fingerprint,
        origin: CertOrigin::Generated { cert: cert_path },
    })
}

/// Checks the configured files (for `--check-config`); a self-signed certificate is not
/// made or read here.
pub fn check_files(files: &TlsFiles) -> Result<String, TlsError> {
    let (certs, key) = read_files(files)?;
    let fp = fingerprint(&certs[0]);
    server_config(certs, key).map_err(|e| ConfigError::Invalid {
        key: "tls_key",
        origin: files.key.origin.clone(),
        message: format!("does not match {}: {e}", files.cert.value.display()),
    })?;
    Ok(fp)
}

/// SHA-256 of a certificate's DER bytes, in colon-separated upper-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let mut out = String::with_capacity(95);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // HTTP/1.1 only, as the plain listener.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configured chain and key, with errors naming the key whose file is wrong.
fn read_files(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    let bad = |key: &'static str, origin: &str, path: &Path, what: String| ConfigError::Invalid {
        key,
        origin: origin.to_owned(),
        message: format!("{}: {what}", path.display()),
    };
    let (cert_path, cert_origin) = (&files.cert.value, &files.cert.origin);
    let certs = read_certs(cert_path).map_err(|e| bad("tls_cert", cert_origin, cert_path, e))?;
    let (key_path, key_origin) = (&files.key.value, &files.key.origin);
    let key = read_key(key_path).map_err(|e| bad("tls_key", key_origin, key_path, e))?;
    Ok((certs, key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    parse_certs(&std::fs::read(path).map_err(|e| e.to_string())?)
}

fn parse_certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("has no `BEGIN CERTIFICATE` block".into());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    parse_key(&std::fs::read(path).map_err(|e| e.to_string())?)
}

fn parse_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "has no `BEGIN PRIVATE KEY` (or RSA / EC PRIVATE KEY) block".to_owned()
        }
        e => format!("not a PEM private key file: {e}"),
    })
}

/// Why the self-signed certificate in `state_dir` is not reused.
enum Reuse {
    Missing,
    Old,
    Bad(String),
}

/// A self-signed pair read back: the current files, or their previous generation (see
/// [`crate::atomic_file`]) when the current ones are broken, with the reason.
type SelfSigned = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    Option<String>,
);

fn read_self_signed(cert_path: &Path, key_path: &Path) -> Result<SelfSigned, Reuse> {
    match std::fs::metadata(cert_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Reuse::Bad(e.to_string())),
        Ok(meta) => {
            let age = meta
                .modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            if age.is_some_and(|a| a > SELF_SIGNED_RENEW_AFTER) {
                return Err(Reuse::Old);
            }
        }
    }
    let loaded = atomic_file::read_set(&[cert_path, key_path], |files| {
        let certs = parse_certs(&files[0])?;
        let key = parse_key(&files[1]).map_err(|e| format!("{}: {e}", key_path.display()))?;
        // Only a pair rustls accepts is reused.
        server_config(certs.clone(), key.clone_key()).map_err(|e| e.to_string())?;
        Ok((certs, key))
    })
    .map_err(|e| match e {
        atomic_file::ReadError::Missing => Reuse::Missing,
        e => Reuse::Bad(e.to_string()),
    })?;
    let (certs, key) = loaded.value;
    Ok((certs, key, loaded.current_refused))
}

/// The names a self-signed certificate covers: the host name, `localhost`,
/// `<hostname>.local` (mDNS), every current address but IPv6 link-local ones, and the
/// loopback addresses.
fn names() -> Vec<String> {
    let mut names = Vec::new();
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
        });
    if let Some(h) = &host {
        names.push(h.clone());
    }
    names.push("localhost".to_owned());
    if let Some(h) = &host {
        if !h.contains('.') {
            names.push(format!("{h}.local"));
        }
    }
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(a) = ifa.address else { continue };
            let ip: IpAddr = if let Some(v4) = a.as_sockaddr_in() {
                v4.ip().into()
            } else if let Some(v6) = a.as_sockaddr_in6() {
                let ip = v6.ip();
                if ip.segments()[0] & 0xffc0 == 0xfe80 {
                    continue;
                }
                ip.into()
            } else {
                continue;
            };
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    names.extend(ips.iter().map(IpAddr::to_string));
    names.dedup();
    names
}

/// A new ECDSA P-256 key and a certificate for `names` signed by it, both PEM.
fn generate(names: &[String]) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("picamd on {}", names.first().map_or("this host", |n| n)),
    );
    dn.push(rcgen::DnType::OrganizationName, "picamd self-signed");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    if now.year() < 2025 {
        tracing::warn!(
            "the system clock says {now}; the self-signed certificate will be dated from it"
        );
    }
    params.not_before = now - Duration::from_secs(24 * 3600);
    params.not_after = now + SELF_SIGNED_VALIDITY;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    tracing::info!(names = %names.join(", "), "made a self-signed certificate");
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_localhost_and_loopback() {
        let n = names();
        for want in ["localhost", "127.0.0.1", "::1"] {
            assert!(n.iter().any(|x| x == want), "{n:?}");
        }
    }

    #[test]
    fn generated_pair_loads_and_fingerprint_is_stable() {
        let (cert, key) = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let c = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let k = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let fp = fingerprint(&c);
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(fp, fingerprint(&c));
        server_config(vec![c], k).unwrap();
    }

    #[test]
    fn a_broken_self_signed_pair_falls_back_to_the_previous_one() {
        let dir = std::env::temp_dir().join(format!("picamd-tls-prev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let (cert_path, key_path) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
        let store = |(cert, key): &(String, String)| {
            atomic_file::write_set(&[
                NewFile {
                    path: &key_path,
                    bytes: key.as_bytes(),
                    mode: 0o600,
                },
                NewFile {
                    path: &cert_path,
                    bytes: cert.as_bytes(),
                    mode: 0o644,
                },
            ])
            .unwrap()
        };
        let fp = |pem: &str| fingerprint(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap());
        let first = generate(&["localhost".into()]).unwrap();
        let second = generate(&["localhost".into()]).unwrap();
        store(&first);
        store(&second);
        let (certs, _, refused) = read_self_signed(&cert_path, &key_path).ok().unwrap();
        assert_eq!((fingerprint(&certs[0]), refused), (fp(&second.0), None));
        // The new key written, the certificate not yet: a cut between the two files.
        std::fs::write(&key_path, first.1.as_bytes()).unwrap();
        let (certs, _, refused) = read_self_signed(&cert_path, &key_path).ok().unwrap();
        assert_eq!(fingerprint(&certs[0]), fp(&first.0), "the previous pair");
        assert!(refused.is_some());
        // A truncated key: the previous pair again, and the reason names the key file.
        std::fs::write(&key_path, b"").unwrap();
        let (_, _, refused) = read_self_signed(&cert_path, &key_path).ok().unwrap();
        assert!(refused.unwrap().contains(SELF_SIGNED_KEY));
        // Listed in /state by the certificate's own name, as the previous copy.
        let origin = CertOrigin::Previous {
            cert: atomic_file::previous_path(&cert_path),
            reason: "key broken".into(),
        };
        let entry = origin.fallback().unwrap();
        assert_eq!(
            (entry.file.as_str(), entry.used, entry.reason.as_str()),
            (cert_path.to_str().unwrap(), Used::Previous, "key broken")
        );
        let reused = CertOrigin::Reused { cert: cert_path };
        assert_eq!(reused.fallback(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_pair_made_after_both_generations_broke_keeps_no_broken_previous() {
        let dir = std::env::temp_dir().join(format!("picamd-tls-both-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        for name in [SELF_SIGNED_CERT, SELF_SIGNED_KEY] {
            std::fs::write(dir.join(name), b"cut short").unwrap();
        }
        let tls = TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            files: None,
            http_redirect: false,
        };
        let made = load(&tls, &dir).unwrap();
        assert!(matches!(made.origin, CertOrigin::Generated { .. }));
        let previous = atomic_file::previous_path(&dir.join(SELF_SIGNED_CERT));
        assert!(
            !previous.exists(),
            "the broken pair was kept as the previous one"
        );
        // The next start reuses the new pair.
        let again = load(&tls, &dir).unwrap();
        assert_eq!(again.fingerprint, made.fingerprint);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
