//! rustls configurations (ring provider, TLS 1.3 only).

use std::sync::Arc;

use ferry_certcheck::CertCheck;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::{certs_from_pem, key_from_pem, sha256_hex, TlsError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cfg_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From PEM texts (the chain may hold the leaf and the CA).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        Ok(Identity {
            certs: certs_from_pem(cert_pem)?,
            key: key_from_pem(key_pem)?,
        })
    }

    /// SHA-256 of the leaf.
    pub fn sha256(&self) -> String {
        self.certs
            .first()
            .map(|c| sha256_hex(c.as_ref()))
            .unwrap_or_default()
    }
}

/// Roots holding the certificates of a PEM text.
pub fn roots_from_pem(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots.add(c).map_err(cfg_err)?;
    }
    Ok(roots)
}

/// Who may connect to a server.
#[derive(Debug)]
pub enum ClientAuth {
    /// Nobody is asked for a certificate.
    None,
    /// A certificate signed by this CA (PEM) is checked when offered; none is also fine.
    Optional(String),
    /// Only clients with a certificate signed by this CA (PEM).
    Required(String),
}

/// A TLS 1.3 server config, ALPN http/1.1.
pub fn server_config(id: Identity, auth: ClientAuth) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let b = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg_err)?;
    let b = match auth {
        ClientAuth::None => b.with_no_client_auth(),
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) if ca.is_empty() => {
            return Err(TlsError::Config("empty client CA".into()))
        }
        ClientAuth::Optional(ca) => b.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from_pem(&ca)?), p)
                .allow_unauthenticated()
                .build()
                .map_err(cfg_err)?,
        ),
        ClientAuth::Required(ca) => b.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from_pem(&ca)?), p)
                .build()
                .map_err(cfg_err)?,
        ),
    };
    let mut cfg = b.with_single_cert(id.certs, id.key).map_err(cfg_err)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How a client trusts the server.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Chains to this CA (PEM) and names `name`.
    Ca {
        /// CA certificates (PEM).
        ca_pem: String,
        /// The DNS name the certificate must carry, whatever address is dialled.
        name: String,
    },
    /// Chains to a CA that the server sends along and whose SHA-256 is this (the pin an
    /// enrollment token carries), and names `name`.
    CaPin {
        /// SHA-256 (hex) of the CA certificate.
        sha256: String,
        /// DNS name.
        name: String,
    },
    /// The leaf certificate's SHA-256 is this.
    CertPin(String),
    /// Anything (pairing only: the pairing code authenticates, not TLS).
    Any,
}

/// A TLS 1.3 client config with `trust`, presenting `id` when given.
pub fn client_config(trust: ServerTrust, id: Option<Identity>) -> Result<ClientConfig, TlsError> {
    let p = provider();
    let verifier = ferry_certcheck::Verifier::new(Verifier::new(trust, p.clone())?, p.clone());
    let b = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match id {
        Some(id) => b.with_client_auth_cert(id.certs, id.key).map_err(cfg_err)?,
        None => b.with_no_client_auth(),
    })
}

#[derive(Debug)]
enum Anchor {
    Roots(Arc<RootCertStore>),
    CaPin(String),
    CertPin(String),
    Any,
}

/// One verifier for every [`ServerTrust`]; chain checks go through webpki with the fixed
/// name, so dialling an IP address still checks the Ferry name.
#[derive(Debug)]
struct Verifier {
    anchor: Anchor,
    name: Option<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(t: ServerTrust, provider: Arc<CryptoProvider>) -> Result<Verifier, TlsError> {
        let dns = |n: String| ServerName::try_from(n).map_err(cfg_err);
        let (anchor, name) = match t {
            ServerTrust::Ca { ca_pem, name } => (
                Anchor::Roots(Arc::new(roots_from_pem(&ca_pem)?)),
                Some(dns(name)?),
            ),
            ServerTrust::CaPin { sha256, name } => {
                (Anchor::CaPin(sha256.to_lowercase()), Some(dns(name)?))
            }
            ServerTrust::CertPin(s) => (Anchor::CertPin(s.to_lowercase()), None),
            ServerTrust::Any => (Anchor::Any, None),
        };
        Ok(Verifier {
            anchor,
            name,
            provider,
        })
    }

    fn webpki(
        &self,
        roots: Arc<RootCertStore>,
        ee: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        given: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = self.name.as_ref().unwrap_or(given);
        v.verify_server_cert(ee, inter, name, ocsp, now)
    }
}

impl CertCheck for Verifier {
    fn check(
        &self,
        ee: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.anchor {
            Anchor::Roots(r) => self.webpki(r.clone(), ee, inter, name, ocsp, now),
            Anchor::CaPin(pin) => {
                let ca = inter
                    .iter()
                    .find(|c| &sha256_hex(c.as_ref()) == pin)
                    .ok_or_else(|| {
                        rustls::Error::General(format!(
                            "the server did not present the CA {pin} named in the token"
                        ))
                    })?;
                let mut roots = RootCertStore::empty();
                roots
                    .add(ca.clone().into_owned())
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                self.webpki(Arc::new(roots), ee, &[], name, ocsp, now)
            }
            Anchor::CertPin(pin) => {
                let got = sha256_hex(ee.as_ref());
                if &got == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "server certificate {got} is not the pinned {pin}"
                    )))
                }
            }
            Anchor::Any => Ok(ServerCertVerified::assertion()),
        }
    }
}
