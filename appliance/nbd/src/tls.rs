//! TLS settings for `NBD_OPT_STARTTLS`, on rustls with the ring provider only.
//!
//! A client verifies the server against CA certificates, or pins the SHA-256 of the server's
//! certificate (the usual case for self-signed appliances), and presents a client certificate
//! when one is configured. A server presents its certificate and, when given a CA, requires
//! and verifies client certificates.

use std::path::Path;
use std::sync::Arc;

use ferry_certcheck::{CertCheck, Verifier};
use rustls::client::danger::ServerCertVerified;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::error::NbdError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> NbdError + '_ {
    move |e| NbdError::Tls(format!("{what}: {e}"))
}

/// Parses PEM certificates.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, NbdError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NbdError::Tls(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(NbdError::Tls("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, NbdError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| NbdError::Tls(format!("bad private key PEM: {e}")))
}

/// SHA-256 of a DER certificate: the value a pin compares.
pub fn cert_sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

fn roots(pem: &[u8]) -> Result<RootCertStore, NbdError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(pem)? {
        roots.add(c).map_err(tls_err("CA certificate"))?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, NbdError> {
    std::fs::read(path).map_err(|e| NbdError::Tls(format!("read {}: {e}", path.display())))
}

/// How the client trusts the server.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Verify the chain and host name against these CA certificates (PEM).
    Ca(Vec<u8>),
    /// Accept exactly the certificate with this SHA-256 (of its DER encoding).
    Pin([u8; 32]),
}

/// TLS settings of a client.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: Option<String>,
}

impl ClientTls {
    /// Builds the settings: how to trust the server, and an optional client certificate
    /// chain and key (PEM).
    pub fn new(trust: ServerTrust, client_cert: Option<(&[u8], &[u8])>) -> Result<Self, NbdError> {
        let p = provider();
        let builder = ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("client config"))?;
        let builder = match trust {
            ServerTrust::Ca(pem) => builder.with_root_certificates(roots(&pem)?),
            ServerTrust::Pin(sha256) => builder
                .dangerous()
                .with_custom_certificate_verifier(Verifier::new(Pinned { sha256 }, p.clone())),
        };
        let config = match client_cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(certs_from_pem(chain)?, key_from_pem(key)?)
                .map_err(tls_err("client certificate"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Trust from a libnbd-style directory: `ca-cert.pem`, and `client-cert.pem` with
    /// `client-key.pem` when both exist.
    pub fn from_dir(dir: &Path) -> Result<Self, NbdError> {
        let ca = read(&dir.join("ca-cert.pem"))?;
        let (cert, key) = (dir.join("client-cert.pem"), dir.join("client-key.pem"));
        if cert.exists() && key.exists() {
            let (c, k) = (read(&cert)?, read(&key)?);
            ClientTls::new(ServerTrust::Ca(ca), Some((&c, &k)))
        } else {
            ClientTls::new(ServerTrust::Ca(ca), None)
        }
    }

    /// Parses a pin: 64 hex digits, colons allowed (`openssl x509 -fingerprint -sha256`).
    pub fn parse_pin(s: &str) -> Result<[u8; 32], NbdError> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&clean, &mut out)
            .map_err(|e| NbdError::Tls(format!("bad SHA-256 pin {s:?}: {e}")))?;
        Ok(out)
    }

    /// Checks the certificate against this name instead of the URI's host.
    pub fn with_server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_string());
        self
    }
}

#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
}

impl CertCheck for Pinned {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The pin replaces chain, name and validity checks: it names one exact certificate.
        if cert_sha256(end_entity) == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate SHA-256 {} does not match the pin",
                hex::encode(cert_sha256(end_entity))
            )))
        }
    }
}

/// TLS settings of the server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<ServerConfig>,
}

impl ServerTls {
    /// The server's certificate chain and key (PEM), and the CA that client certificates
    /// must chain to (PEM); without a CA no client certificate is asked for.
    pub fn new(cert_chain: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self, NbdError> {
        let p = provider();
        let builder = ServerConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("server config"))?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    p,
                )
                .build()
                .map_err(|e| NbdError::Tls(format!("client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs_from_pem(cert_chain)?, key_from_pem(key)?)
            .map_err(tls_err("server certificate"))?;
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// From a qemu/nbdkit-style directory: `server-cert.pem`, `server-key.pem`, and
    /// `ca-cert.pem` for client certificates when `verify_clients`.
    pub fn from_dir(dir: &Path, verify_clients: bool) -> Result<Self, NbdError> {
        let cert = read(&dir.join("server-cert.pem"))?;
        let key = read(&dir.join("server-key.pem"))?;
        if verify_clients {
            let ca = read(&dir.join("ca-cert.pem"))?;
            ServerTls::new(&cert, &key, Some(&ca))
        } else {
            ServerTls::new(&cert, &key, None)
        }
    }
}
