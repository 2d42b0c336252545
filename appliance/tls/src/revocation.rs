//! The revocation list: SHA-256 fingerprints of revoked agent and admin certificates,
//! signed by the management CA (ECDSA P-256), numbered so that an agent never goes back
//! to an older list.
//!
//! Not an X.509 CRL: Ferry names certificates by fingerprint everywhere (the registry, the
//! agent's gate), and agents registered before serials were recorded could not be listed
//! by serial. The signature makes the file an agent keeps trustworthy on its own, whatever
//! channel brought it.
//!
//! [`RevocationStore`] is the list in force on a peer that enforces it (the agent, the
//! storage node): verified against the CA, kept 0600 on disk, never replaced by an older
//! version.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

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

/// Why a list was not installed.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The management CA certificate to check the list with cannot be read.
    #[error("no management CA to check the list with ({path}): {why}")]
    NoCa {
        /// Where it was looked for.
        path: String,
        /// The I/O error.
        why: String,
    },
    /// The signature or the list is wrong.
    #[error(transparent)]
    Invalid(#[from] TlsError),
    /// A list older than the one held.
    #[error("revocation list version {got} is older than the version {held} held")]
    Older {
        /// Version offered.
        got: u64,
        /// Version held.
        held: u64,
    },
    /// The list could not be kept on disk.
    #[error("{0}")]
    Io(String),
}

/// What a peer reports about the list in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationState {
    /// Version of the list held (0: none).
    pub version: u64,
    /// When it was signed (Unix seconds).
    pub issued_unix: i64,
    /// How many certificates it revokes.
    pub revoked: usize,
}

#[derive(Debug, Default)]
struct Held {
    list: RevocationList,
    set: BTreeSet<String>,
}

/// The list in force, kept as `revoked.json` (0600) in a directory and checked against the
/// management CA certificate in a file (read at every check: it may appear after the store
/// is opened, when an agent registers).
#[derive(Debug)]
pub struct RevocationStore {
    file: PathBuf,
    ca_path: PathBuf,
    held: RwLock<Held>,
}

/// The file name of the kept list.
pub const REVOKED_FILE: &str = "revoked.json";

fn write_private(path: &Path, data: &[u8]) -> Result<(), RevocationError> {
    let io = |e: std::io::Error| RevocationError::Io(format!("{}: {e}", path.display()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl RevocationStore {
    /// Loads `dir/revoked.json` if present; a kept list that does not verify is ignored
    /// (and said so): the management server sends it again.
    pub fn open(dir: &Path, ca_pem_path: &Path) -> RevocationStore {
        let s = RevocationStore {
            file: dir.join(REVOKED_FILE),
            ca_path: ca_pem_path.to_path_buf(),
            held: RwLock::new(Held::default()),
        };
        if let Ok(b) = std::fs::read(&s.file) {
            let r = serde_json::from_slice::<SignedRevocations>(&b)
                .map_err(|e| RevocationError::Invalid(TlsError::Pki(e.to_string())))
                .and_then(|l| s.check(&l));
            match r {
                Ok(list) => s.set(list),
                Err(e) => tracing::error!("{}: {e}; ignored", s.file.display()),
            }
        }
        s
    }

    fn check(&self, l: &SignedRevocations) -> Result<RevocationList, RevocationError> {
        let ca = std::fs::read_to_string(&self.ca_path).map_err(|e| RevocationError::NoCa {
            path: self.ca_path.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(l.verify(&ca)?)
    }

    fn set(&self, list: RevocationList) {
        let set = list.fingerprints();
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = Held { list, set };
    }

    /// True when `sha256` (hex, any case) is on the list.
    pub fn is_revoked(&self, sha256: &str) -> bool {
        self.held
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .contains(&sha256.to_ascii_lowercase())
    }

    /// The list in force.
    pub fn state(&self) -> RevocationState {
        let h = self.held.read().unwrap_or_else(|e| e.into_inner());
        RevocationState {
            version: h.list.version,
            issued_unix: h.list.issued_unix,
            revoked: h.set.len(),
        }
    }

    /// Verifies, keeps and applies a list; an older version than the one held is refused,
    /// the same version is a no-op.
    pub fn install(&self, l: SignedRevocations) -> Result<RevocationState, RevocationError> {
        let list = self.check(&l)?;
        let held = self.state().version;
        if list.version < held {
            return Err(RevocationError::Older {
                got: list.version,
                held,
            });
        }
        if list.version > held {
            let body = serde_json::to_vec(&l).map_err(|e| RevocationError::Io(e.to_string()))?;
            write_private(&self.file, &body)?;
            let (v, n) = (list.version, list.entries.len());
            self.set(list);
            tracing::info!("revocation list version {v} installed: {n} certificates revoked");
        }
        Ok(self.state())
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

    #[test]
    fn store_keeps_newer_verified_lists_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("ca").unwrap();
        let other = Ca::create("other").unwrap();
        let ca_path = dir.path().join("ca.pem");
        let list = |v: u64, fp: &str| RevocationList {
            version: v,
            issued_unix: 1,
            entries: vec![Revoked {
                sha256: fp.into(),
                role: "agent".into(),
                name: "x".into(),
                revoked_unix: 1,
            }],
        };
        let s = RevocationStore::open(dir.path(), &ca_path);
        let l2 = ca.sign_revocations(&list(2, &"AA".repeat(32))).unwrap();
        // No CA yet: refused.
        assert!(matches!(
            s.install(l2.clone()),
            Err(RevocationError::NoCa { .. })
        ));
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        assert_eq!(s.install(l2).unwrap().version, 2);
        assert!(s.is_revoked(&"aa".repeat(32)));
        let mode = std::fs::metadata(dir.path().join(REVOKED_FILE)).unwrap();
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        // Forged and older lists are refused; the list in force stays.
        let forged = other.sign_revocations(&list(9, &"bb".repeat(32))).unwrap();
        assert!(matches!(
            s.install(forged),
            Err(RevocationError::Invalid(_))
        ));
        let old = ca.sign_revocations(&list(1, &"cc".repeat(32))).unwrap();
        assert!(matches!(s.install(old), Err(RevocationError::Older { .. })));
        assert!(!s.is_revoked(&"bb".repeat(32)));
        // Kept across a reopen.
        let again = RevocationStore::open(dir.path(), &ca_path);
        assert_eq!(again.state().version, 2);
        assert!(again.is_revoked(&"AA".repeat(32)));
    }
}
