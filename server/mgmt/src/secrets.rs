//! Plan credentials at rest: ChaCha20-Poly1305 (ring) under `secrets.key`, a 32-byte key
//! kept 0600 beside `ca.key`.
//!
//! A sealed value is `sealed:v1:` and the hex of a random 96-bit nonce followed by the
//! ciphertext and tag. The associated data names the row (agent and plan), so a sealed
//! body copied onto another row does not open.

use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use crate::MgmtError;

/// The prefix of a sealed value.
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// The key that seals plan bodies.
pub struct Sealer {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("path", &self.path).finish()
    }
}

fn err(m: String) -> MgmtError {
    MgmtError::Secrets(m)
}

impl Sealer {
    /// Loads the key file; with `create`, makes a new one (0600) when it is missing.
    pub fn load(path: &Path, create: bool) -> Result<Sealer, MgmtError> {
        let bytes = if path.exists() {
            let t = std::fs::read_to_string(path)
                .map_err(|e| err(format!("read {}: {e}", path.display())))?;
            hex::decode(t.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    err(format!(
                        "{} is not a key file (64 hex digits)",
                        path.display()
                    ))
                })?
        } else if create {
            let mut b = vec![0u8; 32];
            rand::fill(&mut b[..]);
            crate::write_private(path, hex::encode(&b).as_bytes())?;
            tracing::info!("created the key for plan credentials, {}", path.display());
            b
        } else {
            return Err(err(format!(
                "{} is missing, and mgmt.db holds plan credentials encrypted with it; restore the key file from a backup of the state directory",
                path.display()
            )));
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| err("the key file does not hold a ChaCha20-Poly1305 key".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            path: path.to_path_buf(),
        })
    }

    /// Seals `plain` for the row named `aad`.
    pub fn seal(&self, aad: &str, plain: &str) -> Result<String, MgmtError> {
        let mut n = [0u8; NONCE_LEN];
        rand::fill(&mut n);
        let mut buf = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| err("sealing failed".into()))?;
        let mut out = n.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED_PREFIX}{}", hex::encode(out)))
    }

    /// Opens a value [`Sealer::seal`] made for the same `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<String, MgmtError> {
        let wrong = || {
            err(format!(
                "{aad} does not decrypt with {}: the key file is not the one it was encrypted with",
                self.path.display()
            ))
        };
        let b = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(|| err(format!("{aad} is not a sealed value")))?;
        let (n, ct) = b.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| wrong())?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| wrong())?;
        String::from_utf8(plain.to_vec()).map_err(|_| wrong())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secrets.key");
        assert!(Sealer::load(&p, false)
            .unwrap_err()
            .to_string()
            .contains("missing"));
        let s = Sealer::load(&p, true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = s.seal("plan a/b", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(s.open("plan a/b", &sealed).unwrap(), "hunter2");
        assert!(s.open("plan a/c", &sealed).is_err(), "bound to its row");
        let again = Sealer::load(&p, false).unwrap();
        assert_eq!(again.open("plan a/b", &sealed).unwrap(), "hunter2");
        let other = Sealer::load(&d.path().join("other.key"), true).unwrap();
        let e = other.open("plan a/b", &sealed).unwrap_err().to_string();
        assert!(e.contains("not the one"), "{e}");
        std::fs::write(&p, "zz").unwrap();
        assert!(Sealer::load(&p, false).is_err());
    }
}
