//! Revocation: owns the management CA's revocation list in `<state>/mgmt/revoked.json`.
//!
//! The management server pushes the list (`PUT /v1/revocations`, its own certificate
//! only) after every revocation, and the agent fetches it after each hello. A list is
//! installed only when the management CA's signature checks and its version is not older
//! than the one held. The API gate refuses every client certificate on it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ferry_tls::revocation::{RevocationList, SignedRevocations};
use serde::Serialize;

/// What `GET /v1/revocations` and the status show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RevocationState {
    pub version: u64,
    pub issued_unix: i64,
    pub revoked: usize,
}

#[derive(Debug, Default)]
struct Held {
    list: RevocationList,
    set: BTreeSet<String>,
}

/// The list in force.
#[derive(Debug)]
pub struct RevocationStore {
    dir: PathBuf,
    held: RwLock<Held>,
}

fn ca_pem(dir: &Path) -> Result<String, String> {
    std::fs::read_to_string(dir.join("ca.pem"))
        .map_err(|e| format!("no management CA to check the list with: {e}"))
}

impl RevocationStore {
    /// Loads the kept list; one that does not verify is ignored (and said so): the
    /// management server sends it again at the next contact.
    pub fn open(state_dir: &Path) -> RevocationStore {
        let dir = state_dir.join("mgmt");
        let s = RevocationStore {
            held: RwLock::new(Held::default()),
            dir,
        };
        let path = s.dir.join("revoked.json");
        if let Ok(b) = std::fs::read(&path) {
            let r = serde_json::from_slice::<SignedRevocations>(&b)
                .map_err(|e| e.to_string())
                .and_then(|l| s.check(&l));
            match r {
                Ok(list) => s.set(list),
                Err(e) => tracing::error!("{}: {e}; ignored", path.display()),
            }
        }
        s
    }

    fn check(&self, l: &SignedRevocations) -> Result<RevocationList, String> {
        l.verify(&ca_pem(&self.dir)?).map_err(|e| e.to_string())
    }

    fn set(&self, list: RevocationList) {
        let set = list.fingerprints();
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = Held { list, set };
    }

    /// True when `sha256` is on the list.
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
    pub fn install(&self, l: SignedRevocations) -> Result<RevocationState, String> {
        let list = self.check(&l)?;
        let held = self.state().version;
        if list.version < held {
            return Err(format!(
                "revocation list version {} is older than the version {held} held",
                list.version
            ));
        }
        if list.version > held {
            let body = serde_json::to_vec(&l).map_err(|e| e.to_string())?;
            crate::identity::write_private(&self.dir.join("revoked.json"), &body)
                .map_err(|e| format!("{e:#}"))?;
            let (v, n) = (list.version, list.entries.len());
            self.set(list);
            tracing::info!("revocation list version {v} installed: {n} certificates revoked");
        }
        Ok(self.state())
    }
}
