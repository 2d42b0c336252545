//! Storage backends for Ferry repositories.
//!
//! This crate owns the [`Store`] trait: a flat namespace of immutable objects addressed by
//! `/`-separated keys, with atomic visibility of every `put` and an explicit durability
//! barrier ([`Store::sync`]). The archive format (`ferry-archive`) is written only in terms
//! of this trait, so a repository behaves the same on every backend.
//!
//! It deliberately knows nothing about chunks, indexes or manifests: those are the archive's.
//!
//! Backends today: [`LocalStore`] (`file:///path` or a plain path). Remote backends (SFTP,
//! FTP(S), SMB, NFS, S3, storage node) plug in behind the same trait.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;

mod local;

pub use local::LocalStore;

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// The key is not a valid object key (empty, absolute, `..`, or odd characters).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The storage has no space left.
    #[error("storage is full while writing {key}: {source}")]
    NoSpace {
        /// Key being written.
        key: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The storage refused access.
    #[error("permission denied on {key}: {source}")]
    PermissionDenied {
        /// Key being accessed.
        key: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Any other I/O error, with the operation and key that failed.
    #[error("{op} {key}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Key or path.
        key: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The storage URL is malformed or names an unsupported scheme.
    #[error("unsupported or malformed storage location {0:?}")]
    BadLocation(String),
}

impl StoreError {
    /// Classifies an `io::Error` for `key` during `op`.
    pub fn from_io(op: &'static str, key: &str, source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(key.to_string()),
            std::io::ErrorKind::PermissionDenied => StoreError::PermissionDenied {
                key: key.to_string(),
                source,
            },
            std::io::ErrorKind::StorageFull => StoreError::NoSpace {
                key: key.to_string(),
                source,
            },
            _ if source.raw_os_error() == Some(libc::ENOSPC)
                || source.raw_os_error() == Some(libc::EDQUOT) =>
            {
                StoreError::NoSpace {
                    key: key.to_string(),
                    source,
                }
            }
            _ => StoreError::Io {
                op,
                key: key.to_string(),
                source,
            },
        }
    }

    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key, relative to the store root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, seconds since the Unix epoch (0 when unknown).
    pub modified: u64,
}

/// A flat store of immutable objects.
///
/// Contract every backend keeps:
/// - `put` is atomic: readers see either no object or the whole object, never a prefix.
///   Concurrent `put`s of the same key with the same content are harmless.
/// - After `sync` returns, every `put` that returned before it is durable.
/// - `list` never returns temporary objects of an unfinished `put`.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// A short, secret-free description for logs ("file:///srv/repo").
    fn location(&self) -> String;

    /// Writes `data` under `key`, replacing any previous object.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Writes `data` under `key` only if no object has the key. Returns false if one existed.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError>;

    /// Reads the whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// True when the object exists.
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;

    /// Lists every object whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes the object. Deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Makes every completed `put` and `delete` durable.
    async fn sync(&self) -> Result<(), StoreError>;

    /// Removes leftovers of interrupted `put`s older than `min_age_secs`. Returns how many.
    async fn clean_temporaries(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        let _ = min_age_secs;
        Ok(0)
    }
}

/// Checks that a key is relative, normalized and made of safe characters.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && !part.starts_with(".tmp")
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(key.to_string()))
    }
}

/// Opens a store from a location: `file:///path`, or a plain filesystem path.
pub fn open_store(location: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if let Some(rest) = location.strip_prefix("file://") {
        let url =
            url::Url::parse(location).map_err(|_| StoreError::BadLocation(location.to_string()))?;
        let path = url
            .to_file_path()
            .map_err(|()| StoreError::BadLocation(rest.to_string()))?;
        return Ok(std::sync::Arc::new(LocalStore::new(path)));
    }
    if location.contains("://") {
        return Err(StoreError::BadLocation(location.to_string()));
    }
    Ok(std::sync::Arc::new(LocalStore::new(location.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for good in ["config", "chunks/ab/abcdef", "points/2026-x.manifest"] {
            validate_key(good).unwrap();
        }
        for bad in [
            "", "/abs", "a/../b", "a//b", "a/", "a/.tmp-x", "sp ace", "a/./b",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn locations_parse() {
        assert!(open_store("file:///tmp/x").is_ok());
        assert!(open_store("/tmp/x").is_ok());
        assert!(matches!(
            open_store("gopher://x/y"),
            Err(StoreError::BadLocation(_))
        ));
    }
}
