//! Revocation: the management CA's revocation list in `<state>/mgmt/revoked.json`, checked
//! against `<state>/mgmt/ca.pem` ([`ferry_tls::revocation::RevocationStore`], shared with
//! the storage node).
//!
//! The management server pushes the list (`PUT /v1/revocations`, its own certificate
//! only) after every revocation, and the agent fetches it after each hello. A list is
//! installed only when the management CA's signature checks and its version is not older
//! than the one held. The API gate refuses every client certificate on it.

use std::path::Path;

pub use ferry_tls::revocation::RevocationStore;

/// Opens the agent's list in `state_dir`.
pub fn open(state_dir: &Path) -> RevocationStore {
    let dir = state_dir.join("mgmt");
    RevocationStore::open(&dir, &dir.join("ca.pem"))
}
