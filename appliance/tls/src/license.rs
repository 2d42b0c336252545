//! Signed licenses: ed25519 over the canonical JSON of [`LicenseTerms`].
//!
//! A license that names an agent (`agent_id`, as the license service issues them) is valid
//! on that agent only, so it cannot be copied to other appliances. One without an agent id
//! is a site license its issuer chose not to bind (given in an appliance's config).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ferry_api::v1::{License, LicenseTerms};

use crate::TlsError;

/// A license issuer's key.
pub struct Issuer(SigningKey);

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issuer({})", self.public_hex())
    }
}

impl Issuer {
    /// A new random key.
    pub fn generate() -> Issuer {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        Issuer(SigningKey::from_bytes(&b))
    }

    /// From the 32 secret bytes in hex.
    pub fn from_hex(s: &str) -> Result<Issuer, TlsError> {
        let b: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| TlsError::Pki("a license key is 32 bytes in hex".into()))?;
        Ok(Issuer(SigningKey::from_bytes(&b)))
    }

    /// The secret bytes in hex (store 0600).
    pub fn secret_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The public key in hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }

    /// Signs `terms`.
    pub fn sign(&self, terms: LicenseTerms) -> Result<License, TlsError> {
        let msg = serde_json::to_vec(&terms).map_err(|e| TlsError::Pki(e.to_string()))?;
        let sig = self.0.sign(&msg);
        Ok(License {
            terms,
            issuer_key: self.public_hex(),
            signature: hex::encode(sig.to_bytes()),
        })
    }
}

/// Checks the signature against `trusted` issuer keys (hex), the expiry, and that a license
/// bound to an agent is bound to `agent_id` (the verifier's own id, `None` when it has
/// none yet); the terms on success, else why not.
pub fn verify(
    lic: &License,
    trusted: &[String],
    now_unix: i64,
    agent_id: Option<&str>,
) -> Result<LicenseTerms, String> {
    if !trusted
        .iter()
        .any(|k| k.eq_ignore_ascii_case(&lic.issuer_key))
    {
        return Err(format!(
            "the license was issued by an unknown key {}",
            lic.issuer_key
        ));
    }
    let key: [u8; 32] = hex::decode(&lic.issuer_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("the issuer key is not 32 bytes of hex")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|e| e.to_string())?;
    let sig: [u8; 64] = hex::decode(&lic.signature)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("the signature is not 64 bytes of hex")?;
    let msg = serde_json::to_vec(&lic.terms).map_err(|e| e.to_string())?;
    key.verify(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| "the license signature does not verify".to_string())?;
    if lic.terms.expires_unix <= now_unix {
        return Err(format!(
            "the license {} expired at {}",
            lic.terms.id, lic.terms.expires_unix
        ));
    }
    // Checked after the signature, so the id named in the error is the signed one.
    match (&lic.terms.agent_id, agent_id) {
        (Some(bound), Some(me)) if bound != me => {
            return Err(format!(
                "the license {} was issued to agent {bound}, not to this agent ({me})",
                lic.terms.id
            ))
        }
        (Some(bound), None) => {
            return Err(format!(
                "the license {} was issued to agent {bound}, and this agent is not registered",
                lic.terms.id
            ))
        }
        _ => {}
    }
    Ok(lic.terms.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_tamper_expire() {
        let i = Issuer::generate();
        let terms = LicenseTerms {
            id: "L1".into(),
            licensee: "ACME".into(),
            hosts: 4,
            sockets: 8,
            issued_unix: 100,
            expires_unix: 1000,
            agent_id: None,
        };
        let l = i.sign(terms.clone()).unwrap();
        let keys = vec![i.public_hex()];
        assert!(verify(&l, &keys, 500, None).is_ok());
        assert!(verify(&l, &keys, 500, Some("a1")).is_ok(), "a site license");
        assert!(verify(&l, &keys, 1000, None)
            .unwrap_err()
            .contains("expired"));
        assert!(verify(&l, &[], 500, None)
            .unwrap_err()
            .contains("unknown key"));
        let mut t = l.clone();
        t.terms.hosts = 400;
        assert!(verify(&t, &keys, 500, None).unwrap_err().contains("verify"));
        let bound = i
            .sign(LicenseTerms {
                agent_id: Some("a1".into()),
                ..terms
            })
            .unwrap();
        assert!(verify(&bound, &keys, 500, Some("a1")).is_ok());
        let e = verify(&bound, &keys, 500, Some("a2")).unwrap_err();
        assert!(e.contains("issued to agent a1"), "{e}");
        let e = verify(&bound, &keys, 500, None).unwrap_err();
        assert!(e.contains("not registered"), "{e}");
        // Rebinding the terms to another agent breaks the signature.
        let mut moved = bound.clone();
        moved.terms.agent_id = Some("a2".into());
        assert!(verify(&moved, &keys, 500, Some("a2"))
            .unwrap_err()
            .contains("verify"));
        let again = Issuer::from_hex(&i.secret_hex()).unwrap();
        assert_eq!(again.public_hex(), i.public_hex());
    }
}
