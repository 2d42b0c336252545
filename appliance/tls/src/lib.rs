//! Mutual TLS for Ferry's port 9876, shared by the agent, the management server and the CLI.
//!
//! # What this crate owns
//! - [`pki`]: the management CA (rcgen): create, persist as PEM, sign an agent's CSR with
//!   the subject and names the CA chooses (never the CSR's), issue admin and server
//!   certificates; new key + CSR for an agent;
//! - [`trust`]: rustls configs on the ring provider, TLS 1.3 only: server configs with no,
//!   optional or required client certificates of one CA, and client configs that trust a
//!   CA, a CA pinned by SHA-256 (enrollment: the pin travels in the token), one pinned
//!   certificate, or (pairing only) anything, always checking a fixed server name;
//! - [`serve`]: the accept loop (tokio-rustls + hyper + axum) that hands every request the
//!   peer's address and certificate fingerprint ([`serve::Peer`]), with a server config
//!   that can be swapped at run time (the agent switches to mTLS when it registers);
//! - [`revocation`]: the revocation list the management CA signs (fingerprints of revoked
//!   agent and admin certificates), its verification, and the store that keeps the list in
//!   force on a peer that enforces it (the agent, the storage node);
//! - [`http_client`]: a reqwest client on a given rustls config.
//!
//! It deliberately knows nothing about agents, plans or the registry: callers decide what
//! a fingerprint is allowed to do. The thumbprint pinning of vSphere and NBD stays in those
//! crates (it has trust-on-first-use files and error types of its own).

pub mod license;
pub mod pki;
pub mod revocation;
pub mod serve;
pub mod trust;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate or CSR generation, parsing or signing failed.
    #[error("certificate: {0}")]
    Pki(String),
    /// PEM input did not hold what was expected.
    #[error("PEM: {0}")]
    Pem(String),
    /// A rustls configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// An HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Pki(e.to_string())
    }
}

/// SHA-256 of DER bytes, lowercase hex: how Ferry names certificates.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Every certificate in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate".into()));
    }
    Ok(certs)
}

/// The first private key in a PEM text.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))
}

/// SHA-256 of the first certificate in a PEM text.
pub fn pem_sha256(pem: &str) -> Result<String, TlsError> {
    let c = certs_from_pem(pem)?;
    Ok(c.first()
        .map(|c| sha256_hex(c.as_ref()))
        .unwrap_or_default())
}

/// The DNS names in a certificate's subjectAltName (empty when it does not parse).
pub fn dns_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_string()),
            _ => None,
        })
        .collect()
}

/// A certificate's validity, `(not_before, not_after)` in Unix seconds (`None` when it
/// does not parse).
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether the first certificate of `cert_pem` should be renewed at `now_unix`: from two
/// thirds of its lifetime on (an unreadable certificate is due).
pub fn renewal_due(cert_pem: &str, now_unix: i64) -> bool {
    let Some((from, until)) = certs_from_pem(cert_pem)
        .ok()
        .and_then(|c| c.first().and_then(|c| validity(c.as_ref())))
    else {
        return true;
    };
    now_unix >= from + (until - from) * 2 / 3
}

/// A reqwest client on `cfg` (HTTP/1.1; the caller's config decides trust and identity).
pub fn http_client(cfg: rustls::ClientConfig) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))
}
