//! Storage node (`ferry-node`) wire types: the `/v1/vaults/...` endpoints on port 9876.
//!
//! The node serves archive repositories ("vaults") over mTLS. A caller is named by the DNS
//! name in its client certificate without `.ferry.internal` (`agent-<id>`, `admin-<name>`);
//! the node's config grants names write access to vaults, or admin access.
//!
//! | method and path | body → answer | who |
//! |---|---|---|
//! | `GET /v1/vaults` | → `[`[`VaultInfo`]`]` | vaults the caller is granted |
//! | `POST /v1/vaults/{v}/chunks/missing` | [`MissingRequest`] → [`MissingResponse`] | grantee; at most [`MAX_MISSING_BATCH`] digests |
//! | `PUT /v1/vaults/{v}/chunks/{sha256}` | chunk object (FRYC) → [`PutResponse`] | grantee; decoded and re-hashed: 422 when the content does not match the digest; 507 over quota; create-if-absent |
//! | `HEAD`/`GET /v1/vaults/{v}/chunks/{sha256}` | → chunk object | grantee; `Range: bytes=A-B` gives 206 |
//! | `POST /v1/vaults/{v}/points/{id}/commit` | commit body (below) → [`PutResponse`] | grantee; 409 when a chunk the indexes name is missing |
//! | `DELETE /v1/vaults/{v}/points/{id}` | → 204 | the point's writer or admin; manifest first, then indexes |
//! | `GET /v1/vaults/{v}/catalog` | → `[`[`CatalogEntry`]`]` | points the caller may read |
//! | `GET /v1/vaults/{v}/catalog/{id}` | → [`CatalogEntry`] | the point's writer or admin |
//! | `POST /v1/vaults/{v}/prune` | [`PruneRequest`] → `[`[`PruneDecision`]`]` | grantee (own points only) or admin (all) |
//! | `POST /v1/vaults/{v}/jobs/{verify,gc}` | → [`JobReport`] | admin |
//! | `GET /v1/vaults/{v}/objects?prefix=P` | → `[`[`ObjectEntry`]`]` | filtered: locks to grantees, own points, everything to admins |
//! | `GET`/`HEAD /v1/vaults/{v}/objects/{key}` | → object bytes | `config`, `locks/…` and chunks to grantees; `points/{id}/…` to its writer or admin |
//! | `PUT /v1/vaults/{v}/locks/{name}?new=1` | lock object (FRYL) → [`PutResponse`] | grantee; `new=1` is create-if-absent; replacing another identity's lock: 409 unless the node received no write of it for 180 s, or the caller is admin |
//! | `DELETE /v1/vaults/{v}/locks/{name}` | → 204 | the lock's writer or admin; anyone granted once the node received no write of it for 180 s (409 before) |
//! | `GET /v1/catalog` | → `[`[`CatalogEntry`]`]` | every vault the caller is granted; every point of every vault for the management server (`mgmt`), read-only |
//! | `PUT /v1/revocations` | `SignedRevocations` → `RevocationState` (`ferry-tls`) | the management server (`mgmt`) only (403); 422 when the management CA's signature does not check, 409 when older than the list held |
//! | `GET /v1/revocations` | → `RevocationState` | any caller |
//!
//! **Commit body** (`application/octet-stream`): a little-endian `u32` header length, a JSON
//! [`CommitHeader`], then the objects it lists, back to back. It holds the manifest
//! (`points/{id}/manifest`) and every index the manifest names. The node writes the indexes,
//! syncs, and writes the manifest last, only if every chunk the indexes name is present.
//!
//! Error answers carry an [`crate::v1::ApiError`] body: 400 malformed, 403 no grant,
//! 404 unknown vault or object, 409 missing chunks, 413 body too large, 422 poisoned chunk,
//! 507 quota exceeded.

use serde::{Deserialize, Serialize};

/// Default port of a storage node.
pub const NODE_PORT: u16 = 9876;
/// Most digests in one [`MissingRequest`].
pub const MAX_MISSING_BATCH: usize = 8192;
/// Largest chunk object the node accepts (16 MiB chunks plus envelope and zstd slack).
pub const MAX_CHUNK_BODY: usize = (16 << 20) + (1 << 20);
/// Largest commit body (manifest plus indexes: 32 bytes per chunk, zstd).
pub const MAX_COMMIT_BODY: usize = 512 << 20;
/// Largest lock object.
pub const MAX_LOCK_BODY: usize = 64 << 10;

/// `POST /v1/vaults/{v}/chunks/missing`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingRequest {
    /// SHA-256 digests (lowercase hex) of chunks the caller is about to upload.
    pub digests: Vec<String>,
}

/// Which of the asked digests the vault does not hold, in the order asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingResponse {
    /// Missing digests.
    pub missing: Vec<String>,
}

/// Answer of a create-if-absent write.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutResponse {
    /// False when the object already existed (content-addressed: same content).
    pub created: bool,
}

/// One object of a vault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Key relative to the vault.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, Unix seconds.
    pub modified: u64,
}

/// One object in a commit body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitObject {
    /// `points/{id}/manifest` or an index key the manifest names.
    pub key: String,
    /// Its length in the body.
    pub size: u64,
}

/// The JSON header of a commit body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitHeader {
    /// Objects that follow the header, in order.
    pub objects: Vec<CommitObject>,
}

/// A vault as its grantees see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultInfo {
    /// Vault name.
    pub name: String,
    /// Quota in bytes (0: none).
    pub quota: u64,
    /// Bytes stored.
    pub used: u64,
    /// True when the caller has an admin grant on it.
    pub admin: bool,
}

/// A disk of a restore point in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogDisk {
    /// Disk name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// The last verify of a restore point on the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyState {
    /// When it ran, Unix seconds.
    pub time: i64,
    /// True when nothing was damaged.
    pub ok: bool,
    /// First damage found, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One restore point in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Vault.
    pub vault: String,
    /// Restore point id.
    pub id: String,
    /// Backup group (VM name).
    pub group: String,
    /// Start of the backup, Unix seconds.
    pub created: i64,
    /// End of the backup.
    pub finished: i64,
    /// Disks.
    pub disks: Vec<CatalogDisk>,
    /// Bytes this point added to the vault when it was taken (new chunks, compressed).
    pub stored: u64,
    /// Who wrote it (certificate name).
    pub owner: String,
    /// Last verify on the node; `None` until one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyState>,
}

/// `POST /v1/vaults/{v}/prune`: retention rules as `ferry prune` takes them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneRequest {
    /// Only this group; all the caller may touch when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Keep the newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// One per hour for N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// One per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// One per ISO week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// One per month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// One per year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Decide only.
    #[serde(default)]
    pub dry_run: bool,
}

/// One retention decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneDecision {
    /// Restore point id.
    pub id: String,
    /// Group.
    pub group: String,
    /// Creation time.
    pub created: i64,
    /// Kept or removed.
    pub keep: bool,
}

/// What a node job did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobReport {
    /// `verify`, `gc` or `prune`.
    pub job: String,
    /// Vault.
    pub vault: String,
    /// True when it succeeded and found no damage.
    pub ok: bool,
    /// The archive's report (JSON), or the error.
    pub detail: serde_json::Value,
}

/// Splits a commit body into its header and the objects' bytes, checking every length.
pub fn split_commit(body: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    if body.len() > MAX_COMMIT_BODY {
        return Err(format!(
            "commit body is {} bytes; the limit is {MAX_COMMIT_BODY}",
            body.len()
        ));
    }
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return Err("commit body shorter than its header length".into());
    };
    let hlen = u32::from_le_bytes(*len) as usize;
    if hlen > rest.len() || hlen > crate::MAX_BODY {
        return Err("commit header length out of range".into());
    }
    let (h, mut data) = rest.split_at(hlen);
    let header: CommitHeader = crate::parse_body(h).map_err(|e| format!("commit header: {e}"))?;
    let mut out = Vec::with_capacity(header.objects.len());
    for o in header.objects {
        let n = usize::try_from(o.size).map_err(|_| "object size out of range".to_string())?;
        if n > data.len() {
            return Err(format!("commit body ends inside {}", o.key));
        }
        let (obj, tail) = data.split_at(n);
        out.push((o.key, obj));
        data = tail;
    }
    if !data.is_empty() {
        return Err(format!("{} bytes after the last object", data.len()));
    }
    Ok(out)
}

/// Builds a commit body from `(key, bytes)` pairs.
pub fn join_commit(objects: &[(String, &[u8])]) -> Result<Vec<u8>, String> {
    let header = CommitHeader {
        objects: objects
            .iter()
            .map(|(k, b)| CommitObject {
                key: k.clone(),
                size: b.len() as u64,
            })
            .collect(),
    };
    let h = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let hlen = u32::try_from(h.len()).map_err(|_| "commit header too large".to_string())?;
    let total: usize = objects.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(4 + h.len() + total);
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(&h);
    for (_, b) in objects {
        out.extend_from_slice(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_bodies_roundtrip_and_bad_ones_are_refused() {
        let objs = vec![
            ("points/x/disk-0.index".to_string(), &b"abc"[..]),
            ("points/x/manifest".to_string(), &b"defgh"[..]),
        ];
        let body = join_commit(&objs).unwrap();
        let back = split_commit(&body).unwrap();
        assert_eq!(back, objs);
        assert!(split_commit(&body[..body.len() - 1]).is_err());
        let mut longer = body.clone();
        longer.push(0);
        assert!(split_commit(&longer).is_err());
        assert!(split_commit(&[1, 2]).is_err());
        assert!(split_commit(&[255, 255, 255, 255, b'{']).is_err());
    }
}
