//! The revocation list: SHA-256 fingerprints of revoked agent and admin certificates,
//! signed by the management CA (ECDSA P-256), numbered so that an agent never goes back
//! to an older list.
//!
//! Not an X.509 CRL: Ferry names certificates by fingerprint everywhere (the registry, the
//! agent's gate), and agents registered before serials were recorded could not be listed
//! by serial. The signature makes the file an agent keeps trustworthy on its own, whatever
//! channel brought it.

use std::collections::BTreeSet;

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::{Deserialize, Serialize};

use crate::pki::Ca;
use crate::TlsError;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// SHA-256 (hex) of the certificate.
    pub sha256: String,
    /// `agent` or `admin`.
    pub role: String,
    /// Agent id or admin name.
    pub name: String,
    /// When it was revoked (Unix seconds).
    pub revoked_unix: i64,
}

/// The list as signed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Grows with every revocation; an agent keeps the highest it has seen.
    pub version: u64,
    /// When the list was signed (Unix seconds).
    pub issued_unix: i64,
    /// Every revoked certificate.
    pub entries: Vec<Revoked>,
}

impl RevocationList {
    /// The fingerprints on the list.
    pub fn fingerprints(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .map(|e| e.sha256.to_ascii_lowercase())
            .collect()
    }
}

/// A list and the CA's signature over its exact JSON bytes (wire and file format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocations {
    /// The [`RevocationList`] as JSON.
    pub list: String,
    /// ECDSA P-256 SHA-256 signature (ASN.1 DER, hex) by the CA key over `list`.
    pub signature: String,
}

/// Domain separation: a revocation-list signature is never valid for anything else.
const CONTEXT: &[u8] = b"ferry revocation list v1\n";

fn signed_bytes(list: &str) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(list.as_bytes());
    m
}

impl Ca {
    /// Signs a revocation list.
    pub fn sign_revocations(&self, l: &RevocationList) -> Result<SignedRevocations, TlsError> {
        use rcgen::SigningKey;
        let list = serde_json::to_string(l).map_err(|e| TlsError::Pki(e.to_string()))?;
        let sig = self.signing_key().sign(&signed_bytes(&list))?;
        Ok(SignedRevocations {
            list,
            signature: hex::encode(sig),
        })
    }
}

impl SignedRevocations {
    /// Checks the signature against the CA certificate (PEM) and returns the list.
    pub fn verify(&self, ca_pem: &str) -> Result<RevocationList, TlsError> {
        let bad = |m: &str| TlsError::Pki(format!("revocation list: {m}"));
        let ca = crate::certs_from_pem(ca_pem)?;
        let der = ca.first().ok_or_else(|| bad("no CA certificate"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| bad(&format!("the CA certificate does not parse: {e}")))?;
        let key = cert.public_key().subject_public_key.data.to_vec();
        let sig = hex::decode(&self.signature).map_err(|_| bad("the signature is not hex"))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
            .verify(&signed_bytes(&self.list), &sig)
            .map_err(|_| bad("the signature is not the management CA's"))?;
        serde_json::from_str(&self.list).map_err(|e| bad(&format!("malformed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_lists_verify_and_tampering_is_caught() {
        let ca = Ca::create("ca").unwrap();
        let other = Ca::create("other").unwrap();
        let l = RevocationList {
            version: 2,
            issued_unix: 5,
            entries: vec![Revoked {
                sha256: "AB".repeat(32),
                role: "admin".into(),
                name: "bob".into(),
                revoked_unix: 4,
            }],
        };
        let s = ca.sign_revocations(&l).unwrap();
        let back = s.verify(ca.cert_pem()).unwrap();
        assert_eq!(back, l);
        assert!(back.fingerprints().contains(&"ab".repeat(32)));
        // Reloaded CA signs lists the original's certificate verifies.
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        again
            .sign_revocations(&l)
            .unwrap()
            .verify(ca.cert_pem())
            .unwrap();
        assert!(s.verify(other.cert_pem()).is_err());
        let mut t = s.clone();
        t.list = t.list.replace("bob", "eve");
        assert!(t.verify(ca.cert_pem()).is_err());
        let mut t = s;
        t.signature = "00".into();
        assert!(t.verify(ca.cert_pem()).is_err());
    }
}
