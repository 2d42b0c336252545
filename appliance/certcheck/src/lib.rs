//! One rustls server-certificate verifier for every place where Ferry decides about the
//! server's certificate itself: SHA-256 pins (NBD, vSphere), trust on first use (vSphere),
//! the management CA's own rules (ferry-tls) and the test harnesses.
//!
//! rustls asks a custom verifier for four things, and three of them (the TLS 1.2 and 1.3
//! handshake signatures, and the schemes offered) are always the provider's own checks.
//! [`Verifier`] does those once; each user writes only the [`CertCheck`] that differs.
//! It is a crate of its own because the NBD and vSphere crates (and the fuzz targets built
//! from them) must not pull in ferry-tls's HTTP stack for it.

use std::fmt::Debug;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The server-certificate decision of one verifier: what rustls passes to
/// [`ServerCertVerifier::verify_server_cert`].
pub trait CertCheck: Debug + Send + Sync {
    /// Accepts or refuses the server's certificate chain for `name`.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

/// A [`ServerCertVerifier`] from a [`CertCheck`] and the provider whose signature
/// algorithms check the handshake.
#[derive(Debug)]
pub struct Verifier<C> {
    check: C,
    provider: Arc<CryptoProvider>,
}

impl<C: CertCheck> Verifier<C> {
    /// The verifier, ready for `ClientConfig::dangerous().with_custom_certificate_verifier`.
    pub fn new(check: C, provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Verifier { check, provider })
    }

    /// The certificate check.
    pub fn check(&self) -> &C {
        &self.check
    }
}

impl<C: CertCheck> ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check.check(end_entity, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts any certificate: for test clients of servers with throwaway self-signed
/// certificates. The handshake signatures are still checked against the certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyCert;

impl CertCheck for AnyCert {
    fn check(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
}
