//! Bodies of the admin endpoints only ferry-mgmt and its client speak (`/v1/admins`); the
//! bodies agents share live in `ferry-api`, the revocation list in `ferry-tls`.

use serde::{Deserialize, Serialize};

/// An admin of the management server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminInfo {
    /// Name (`[a-z0-9-]`, in the certificate as `admin-NAME.ferry.internal`).
    pub name: String,
    /// SHA-256 of the admin's certificate.
    pub cert_sha256: String,
    /// When it was issued.
    pub created_unix: i64,
    /// When it was revoked, if it was.
    pub revoked_unix: Option<i64>,
}

/// `POST /v1/admins`: a new admin. The key stays with the caller; only the CSR travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCreate {
    /// Name of the new admin.
    pub name: String,
    /// CSR for the new admin's key (PEM); its subject is ignored.
    pub csr_pem: String,
}

/// The answer to [`AdminCreate`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminCreated {
    /// The registry entry.
    pub admin: AdminInfo,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The management CA (PEM), for the bundle.
    pub ca_pem: String,
}

/// The answer to `POST /v1/agents/pair`: the registry entry, and the SHA-256 of the
/// certificate the appliance presented while pairing (its console shows the same figure).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paired {
    /// The registry entry.
    #[serde(flatten)]
    pub agent: ferry_api::v1::AgentInfo,
    /// SHA-256 (lowercase hex) of the appliance's TLS certificate at pairing.
    pub appliance_cert_sha256: String,
}

/// Checks an admin name: 1 to 32 of `a-z`, `0-9` and `-`, starting with a letter or digit.
pub fn check_admin_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "admin name {name:?}: use 1 to 32 of a-z, 0-9 and '-', not starting with '-'"
        ))
    }
}
