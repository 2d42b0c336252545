//! TLS trust for vCenter/ESXi: a CA bundle, or SHA-256 thumbprint pinning with
//! trust-on-first-use. There is deliberately no "accept any certificate" mode.
//!
//! Pinning replaces chain validation (vCenter certificates are usually self-signed) but
//! still checks the handshake signatures against the pinned certificate's key, so a pin is
//! as strong as the key behind it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_certcheck::{CertCheck, Verifier};
use rustls::client::danger::ServerCertVerified;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::ClientConfig;
use sha2::{Digest, Sha256};

use crate::error::VsphereError;

/// How the server's certificate is trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Verify the chain against the CA certificates in this PEM file.
    CaBundle(PathBuf),
    /// Verify the chain against these PEM bytes.
    CaPem(Vec<u8>),
    /// Accept only a certificate with this SHA-256 thumbprint (hex, colons optional).
    Thumbprint(String),
    /// Pin to the thumbprint stored in this file; when it does not exist yet, accept the
    /// first certificate seen and store its thumbprint there.
    TrustOnFirstUse(PathBuf),
}

/// Normalises a thumbprint: 64 lower-case hex digits.
pub fn parse_thumbprint(s: &str) -> Result<[u8; 32], VsphereError> {
    let clean: String = s
        .trim()
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bytes = hex::decode(&clean)
        .map_err(|_| VsphereError::Invalid(format!("{s:?} is not a SHA-256 thumbprint")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| VsphereError::Invalid(format!("{s:?} is not a SHA-256 thumbprint (32 bytes)")))
}

/// Thumbprint text as vSphere shows it (`AB:CD:...`).
pub fn format_thumbprint(t: &[u8; 32]) -> String {
    t.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The SHA-256 thumbprint of a DER certificate.
pub fn thumbprint_of(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// What the pinning verifier saw; the client turns a mismatch into a typed error.
#[derive(Debug, Default)]
pub(crate) struct PinState {
    pinned: Option<[u8; 32]>,
    tofu_file: Option<PathBuf>,
    mismatch: Option<([u8; 32], [u8; 32])>,
}

/// The pin state shared between the verifier and the client.
pub(crate) type SharedPin = Arc<Mutex<PinState>>;

/// Thumbprint-pinning verifier.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    state: Arc<Mutex<PinState>>,
}

impl PinVerifier {
    fn check_der(&self, der: &[u8]) -> Result<(), rustls::Error> {
        let got = thumbprint_of(der);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.pinned {
            Some(p) if p == got => Ok(()),
            Some(p) => {
                st.mismatch = Some((p, got));
                Err(rustls::Error::General(format!(
                    "certificate thumbprint {} does not match the pinned {}",
                    format_thumbprint(&got),
                    format_thumbprint(&p)
                )))
            }
            None => {
                // Trust on first use: record, then hold every later connection to it.
                if let Some(f) = &st.tofu_file {
                    let text = format!("{}\n", format_thumbprint(&got));
                    let tmp = f.with_extension("tmp");
                    std::fs::write(&tmp, text)
                        .and_then(|()| std::fs::rename(&tmp, f))
                        .map_err(|e| {
                            rustls::Error::General(format!(
                                "cannot record the thumbprint in {}: {e}",
                                f.display()
                            ))
                        })?;
                    tracing::warn!(
                        thumbprint = %format_thumbprint(&got),
                        file = %f.display(),
                        "trusting the server certificate on first use"
                    );
                }
                st.pinned = Some(got);
                Ok(())
            }
        }
    }
}

impl CertCheck for PinVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_der(end_entity.as_ref())?;
        Ok(ServerCertVerified::assertion())
    }
}

/// A rustls client config (ring provider) for `trust`, with the pin state when pinning.
pub(crate) fn client_config(
    trust: &Trust,
) -> Result<(ClientConfig, Option<SharedPin>), VsphereError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| VsphereError::Tls(e.to_string()))?;
    let ca = |pem: &[u8], what: &str| -> Result<ClientConfig, VsphereError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| VsphereError::Tls(format!("{what}: {e}")))?;
            roots
                .add(c)
                .map_err(|e| VsphereError::Tls(format!("{what}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(VsphereError::Tls(format!("{what}: no certificates")));
        }
        Ok(builder
            .clone()
            .with_root_certificates(roots)
            .with_no_client_auth())
    };
    let state = match trust {
        Trust::CaBundle(p) => {
            let pem = std::fs::read(p).map_err(|e| VsphereError::Io {
                what: format!("reading CA bundle {}", p.display()),
                error: e,
            })?;
            return Ok((ca(&pem, &p.display().to_string())?, None));
        }
        Trust::CaPem(pem) => return Ok((ca(pem, "CA certificates")?, None)),
        Trust::Thumbprint(t) => PinState {
            pinned: Some(parse_thumbprint(t)?),
            ..PinState::default()
        },
        Trust::TrustOnFirstUse(f) => PinState {
            pinned: read_tofu(f)?,
            tofu_file: Some(f.clone()),
            mismatch: None,
        },
    };
    let state = Arc::new(Mutex::new(state));
    let cfg = builder
        .dangerous()
        .with_custom_certificate_verifier(Verifier::new(
            PinVerifier {
                state: state.clone(),
            },
            provider,
        ))
        .with_no_client_auth();
    Ok((cfg, Some(state)))
}

fn read_tofu(f: &Path) -> Result<Option<[u8; 32]>, VsphereError> {
    match std::fs::read_to_string(f) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => parse_thumbprint(&s).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VsphereError::Io {
            what: format!("reading pinned thumbprint {}", f.display()),
            error: e,
        }),
    }
}

/// Takes a recorded mismatch (pinned, presented), if the last handshake had one.
pub(crate) fn take_mismatch(state: &Mutex<PinState>) -> Option<(String, String)> {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.mismatch
        .take()
        .map(|(p, g)| (format_thumbprint(&p), format_thumbprint(&g)))
}

/// The thumbprint pinned now (after trust on first use, the one learnt).
pub(crate) fn pinned(state: &Mutex<PinState>) -> Option<String> {
    let st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.pinned.as_ref().map(format_thumbprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_parse_with_or_without_colons() {
        let t = [0xabu8; 32];
        assert_eq!(parse_thumbprint(&format_thumbprint(&t)).unwrap(), t);
        assert_eq!(parse_thumbprint(&hex::encode(t)).unwrap(), t);
        assert!(parse_thumbprint("abcd").is_err());
        assert!(parse_thumbprint("zz").is_err());
    }

    #[test]
    fn tofu_records_then_refuses_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pin");
        let (_, st) = client_config(&Trust::TrustOnFirstUse(f.clone())).unwrap();
        let v = PinVerifier {
            state: st.clone().unwrap(),
        };
        v.check_der(b"cert one").unwrap();
        v.check_der(b"cert one").unwrap();
        assert!(v.check_der(b"cert two").is_err());
        let stored = parse_thumbprint(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert_eq!(stored, thumbprint_of(b"cert one"));
        assert!(take_mismatch(&st.unwrap()).is_some());
        // A new process reads the stored pin and refuses the other certificate.
        let (_, st2) = client_config(&Trust::TrustOnFirstUse(f)).unwrap();
        let v2 = PinVerifier {
            state: st2.unwrap(),
        };
        assert!(v2.check_der(b"cert two").is_err());
    }
}
