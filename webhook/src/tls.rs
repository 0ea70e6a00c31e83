//! The serving certificate: loaded from PEM files and re-read on a timer (`--tls-mode=files`),
//! or installed from the certificate Secret as it changes (`--tls-mode=runtime`, see
//! [`crate::runtime_tls`]); either way swapped without a restart.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink in the volume's directory, so
//! watching the files themselves misses updates; a periodic re-read of both files sees every
//! change. A new pair replaces the old one only when it parses and the key matches the
//! certificate: a half-written update (new certificate, old key) is skipped and retried on the
//! next tick, and a broken pair keeps the old one serving.

use crate::error::{Error, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Installs ring as the process's rustls provider (idempotent). Call at start and in tests.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// File contents (certificate, key) of a pair.
type Files = (Vec<u8>, Vec<u8>);

/// The pair in use, and the last pair that failed (logged once, not on every tick). Holds the
/// private key: no `Debug`.
struct Seen {
    current: Files,
    failed: Option<Files>,
}

/// The current certificate, readable by every handshake, replaceable by [`CertReloader::reload`].
/// Its `Debug` shows the file paths and the SHA-256 fingerprint of the certificate in use, never
/// the key.
pub struct CertReloader {
    /// The files (`--tls-mode=files`); none when the pair comes from the Secret.
    cert_path: PathBuf,
    key_path: PathBuf,
    /// None until the first pair is installed (run-time mode): handshakes then fail, and
    /// readiness says not ready.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertReloader")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("cert_sha256", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

fn parse(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(
            "the certificate file holds no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::Tls("the key file holds no PRIVATE KEY block".into()),
        e => Error::Tls(format!("key PEM: {e}")),
    })?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        Error::Tls(format!(
            "certificate and key do not form a usable pair: {e}"
        ))
    })
}

impl CertReloader {
    /// Loads the pair once; fails when it is missing or broken (start-up).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>> {
        let (cert, key) = (read(cert_path)?, read(key_path)?);
        let ck = parse(&cert, &key)?;
        Ok(Arc::new(CertReloader {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Some(Arc::new(ck))),
            seen: Mutex::new(Seen {
                current: (cert, key),
                failed: None,
            }),
        }))
    }

    /// No pair yet: one comes through [`CertReloader::install`] (run-time mode).
    pub fn empty() -> Arc<Self> {
        Arc::new(CertReloader {
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
            current: RwLock::new(None),
            seen: Mutex::new(Seen {
                current: (Vec::new(), Vec::new()),
                failed: None,
            }),
        })
    }

    /// Whether a pair is in use (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Re-reads both files. `Ok(true)`: a new pair is in use; `Ok(false)`: nothing changed;
    /// `Err`: the files changed but do not form a valid pair (the old one stays).
    pub fn reload(&self) -> Result<bool> {
        let (cert, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        self.install(cert, key)
    }

    /// Puts a pair in use when it differs from the current one. `Ok(true)`: a new pair is in
    /// use; `Ok(false)`: nothing changed (or the same broken pair as last time); `Err`: the
    /// pair is not usable (the old one stays; its message holds no key material).
    pub fn install(&self, cert: Vec<u8>, key: Vec<u8>) -> Result<bool> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.current.0 == cert && seen.current.1 == key {
            return Ok(false);
        }
        match parse(&cert, &key) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ck));
                *seen = Seen {
                    current: (cert, key),
                    failed: None,
                };
                Ok(true)
            }
            Err(e) => {
                let failed = Some((cert, key));
                if seen.failed == failed {
                    // Same broken pair as last time: quiet.
                    return Ok(false);
                }
                seen.failed = failed;
                Err(e)
            }
        }
    }

    /// Re-reads the files every `interval`, forever.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "new certificate files not usable; still serving the previous certificate")
                }
                Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
            }
        }
    }

    /// SHA-256 of the certificate in use (its first, end-entity DER), as colon-separated hex:
    /// what `openssl x509 -noout -fingerprint -sha256` prints. Public, unlike the key.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        current
            .as_ref()
            .and_then(|c| c.cert.first())
            .map(|der| {
                sha2::Sha256::digest(der.as_ref())
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default()
    }

    /// A rustls server configuration that always serves the current pair (HTTP/2 and 1.1).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn a_pem_certificate_and_key_form_a_pair() {
        install_crypto_provider();
        let (cert, key) = pair();
        let ck = parse(cert.as_bytes(), key.as_bytes()).expect("a valid pair");
        assert_eq!(ck.cert.len(), 1);
    }

    #[test]
    fn an_empty_reloader_is_not_loaded_until_a_pair_is_installed_and_a_bad_pair_keeps_the_old() {
        install_crypto_provider();
        let certs = CertReloader::empty();
        assert!(!certs.is_loaded());
        assert_eq!(certs.fingerprint(), "");
        let (cert, key) = pair();
        assert!(
            certs
                .install(cert.clone().into_bytes(), key.clone().into_bytes())
                .expect("a valid pair")
        );
        assert!(certs.is_loaded());
        let first = certs.fingerprint();
        assert_eq!(first.len(), 95, "{first}");
        // The same pair again: nothing to do.
        assert!(
            !certs
                .install(cert.clone().into_bytes(), key.into_bytes())
                .expect("same")
        );
        // A key of another certificate: refused, the first stays in use.
        let (_, other_key) = pair();
        assert!(
            certs
                .install(cert.into_bytes(), other_key.into_bytes())
                .is_err()
        );
        assert_eq!(certs.fingerprint(), first);
    }

    #[test]
    fn files_without_the_expected_blocks_are_named_in_the_error() {
        install_crypto_provider();
        let (cert, key) = pair();
        let no_key = parse(cert.as_bytes(), cert.as_bytes())
            .err()
            .map(|e| e.to_string());
        assert!(
            no_key
                .as_deref()
                .is_some_and(|e| e.contains("no PRIVATE KEY block")),
            "{no_key:?}"
        );
        let no_cert = parse(key.as_bytes(), key.as_bytes())
            .err()
            .map(|e| e.to_string());
        assert!(
            no_cert
                .as_deref()
                .is_some_and(|e| e.contains("no CERTIFICATE block")),
            "{no_cert:?}"
        );
        let broken = format!("{}garbage", &cert[..cert.len() - 30]);
        assert!(parse(broken.as_bytes(), key.as_bytes()).is_err());
    }
}
