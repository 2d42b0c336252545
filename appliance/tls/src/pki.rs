//! The management CA and certificate requests.
//!
//! Certificates name their holder in a DNS SAN under `ferry.internal`
//! (`agent-<id>.ferry.internal`, `admin-<name>.ferry.internal`, `mgmt.ferry.internal`), and
//! carry both serverAuth and clientAuth: an agent uses one certificate as the server of its
//! API and as the client towards the management server.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};

use crate::TlsError;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An appliance.
    Agent,
    /// An administrator's CLI.
    Admin,
    /// The management server's own TLS server certificate.
    Server,
}

/// The DNS name for a holder.
pub fn dns_name(role: Role, name: &str) -> String {
    match role {
        Role::Agent => format!("agent-{name}.ferry.internal"),
        Role::Admin => format!("admin-{name}.ferry.internal"),
        Role::Server => "mgmt.ferry.internal".to_string(),
    }
}

fn serial(seed: &str) -> SerialNumber {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let d = h.finalize();
    let mut b = d[..16].to_vec();
    // Positive and non-zero first byte, as DER INTEGER serials should be.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn leaf_params(role: Role, name: &str, days: u32) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(vec![dns_name(role, name)])?;
    let mut dn = DistinguishedName::new();
    let cn = match role {
        Role::Agent => format!("ferry agent {name}"),
        Role::Admin => format!("ferry admin {name}"),
        Role::Server => "ferry management server".to_string(),
    };
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Ferry");
    p.distinguished_name = dn;
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(i64::from(days));
    p.serial_number = Some(serial(name));
    Ok(p)
}

/// The management CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    sha256: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("sha256", &self.sha256).finish()
    }
}

impl Ca {
    /// A new P-256 CA valid for 20 years.
    pub fn create(common_name: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Ferry");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(365 * 20);
        p.serial_number = Some(serial(common_name));
        let cert = p.self_signed(&key)?;
        let cert_pem = cert.pem();
        let sha256 = crate::sha256_hex(cert.der());
        Ok(Ca {
            cert_pem,
            sha256,
            issuer: Issuer::new(p, key),
        })
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            sha256: crate::pem_sha256(cert_pem)?,
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PKCS#8 PEM). Store it 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// SHA-256 of the CA certificate (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The CA key, for signatures other than certificates (revocation lists).
    pub(crate) fn signing_key(&self) -> &KeyPair {
        self.issuer.key()
    }

    /// Signs the key in `csr_pem` (after checking the CSR's own signature) for `role` and
    /// `name`. The CSR's subject and extensions are ignored: the CA decides them.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        days: u32,
    ) -> Result<String, TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Pki(format!("the CSR does not parse or verify: {e}")))?;
        csr.params = leaf_params(role, name, days)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// Issues a key and certificate for `role` and `name`: (certificate PEM, key PEM).
    pub fn issue(&self, role: Role, name: &str, days: u32) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(role, name, days)?.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Like [`Ca::issue`], valid only from `not_before` to `not_after` (Unix seconds): how
    /// tests make expired and not-yet-valid certificates. Not for production use.
    #[doc(hidden)]
    pub fn issue_between(
        &self,
        role: Role,
        name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<(String, String), TlsError> {
        let at = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .map_err(|e| TlsError::Pki(format!("validity {t}: {e}")))
        };
        let mut p = leaf_params(role, name, 1)?;
        p.not_before = at(not_before)?;
        p.not_after = at(not_after)?;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A new P-256 key and a CSR for it: (key PEM, CSR PEM).
pub fn new_key_and_csr(common_name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = csr_for_key(&key, common_name)?;
    Ok((key.serialize_pem(), csr))
}

/// A CSR for an existing key (PEM).
pub fn csr_for_key_pem(key_pem: &str, common_name: &str) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(key_pem)?;
    csr_for_key(&key, common_name)
}

fn csr_for_key(key: &KeyPair, common_name: &str) -> Result<String, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    Ok(p.serialize_request(key)?.pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_roundtrip_and_csr_signing() {
        let ca = Ca::create("test CA").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(ca.sha256(), again.sha256());
        let (_key, csr) = new_key_and_csr("whatever the agent says").unwrap();
        let cert = again.sign_csr(&csr, Role::Agent, "abc", 30).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert!(ca.sign_csr("garbage", Role::Agent, "abc", 30).is_err());
        let (c, k) = ca.issue(Role::Admin, "root", 30).unwrap();
        crate::certs_from_pem(&c).unwrap();
        crate::key_from_pem(&k).unwrap();
    }
}
