//! Storage backends for Ferry repositories.
//!
//! This crate owns the [`Store`] trait: a flat namespace of immutable objects addressed by
//! `/`-separated keys, with atomic visibility of every `put` and an explicit durability
//! barrier ([`Store::sync`]). The archive format (`ferry-archive`) is written only in terms
//! of this trait, so a repository behaves the same on every backend.
//!
//! It deliberately knows nothing about chunks, indexes or manifests: those are the archive's.
//! SMB and NFS are kernel mounts ([`mount`], Linux and root only, the appliance's path):
//! the share is mounted and then used as a [`LocalStore`].
//!
//! # Backends
//!
//! | location | backend | module |
//! |---|---|---|
//! | `/path`, `file:///path` | local folder or mounted share: temp + fsync + rename, hard link for `put_new` | [`LocalStore`] |
//! | `sftp://user@host:port/path` | SFTP, russh (ring) + russh-sftp; key or password; pinned host key | [`sftp`] |
//! | `ftp://user@host:port/path`, `ftps://…`, `ftps-implicit://…` | FTP, explicit and implicit FTPS (port 990), REST resume; suppaftp on tokio + rustls (ring) | [`ftp`] |
//! | `smb://[domain;]user@host[:port]/share/path` | SMB 3 (`vers=3.1.1`, `sec=ntlmssp`, `seal`) through a kernel `cifs` mount | [`mount`] |
//! | `nfs://host[:port]/export/path` | NFS v4.1 (`vers=4.0`/`4.2` in the query) through a kernel `nfs4` mount | [`mount`] |
//! | `s3://bucket/prefix?endpoint=URL&region=R&path_style=true&ca=FILE` | S3-compatible, object_store + reqwest + rustls (ring) | [`s3`] |
//! | `node://host:9876/vault?node=ID` | Ferry storage node (`ferry-node`), mTLS with a management-CA certificate; batch dedup queries | `node` (feature `node`) |
//!
//! Every remote backend sits behind [`Limited`] ([`limit`]): bounded retries with backoff
//! for transient faults (reconnecting in between), a parallel-operation limit, a bandwidth
//! limit, and a capability probe (write, read back, `put_new`, delete) before first use.
//! Remote stores connect lazily, so [`open_store`] stays synchronous; [`Store::check`]
//! connects and probes eagerly.
//!
//! Query parameters every remote URL accepts: `parallel=N` (operations in flight, default
//! 16), `bwlimit=RATE` (bytes/s, `k`/`M`/`G` suffixes), `retries=N` (default 6),
//! `timeout=SECS` (per attempt, default 120), `probe=0` (skip the probe). Secrets never come
//! from the URL: see [`options`] for the environment variables and the secrets file
//! (`FERRY_STORE_SECRETS`). [`Store::location`] and every error print the URL without them.
//!
//! # SMB and NFS: decision
//!
//! - **In the appliance**, `smb://` and `nfs://` are mounted by the kernel through
//!   `nix::mount` in this crate ([`mount`], feature `mount`, which the agent enables), and
//!   the repository is a [`LocalStore`] on the mount point, behind [`Limited`] for the
//!   probe, parallelism and bandwidth limit. The store unmounts when it is dropped. The
//!   kernel clients are the mature implementations (SMB3 encryption, NFSv4.1 sessions,
//!   reconnects); `LocalStore`'s temp + fsync + rename and hard-link create-if-absent map to
//!   SMB2 FileRenameInformation / FileLinkInformation and NFS RENAME / LINK. The password
//!   reaches the kernel only in the `mount(2)` data: no `mount.cifs` helper, no command line,
//!   not shown in `/proc/mounts`, never logged. Proven in `tests/slow/smbnfs.sh`: the
//!   appliance booted in QEMU mounts smbd (SMB 3.1.1, sealed, port 1445) and nfs-ganesha
//!   (VFS FSAL, NFSv4.1, high port) on the host through slirp, backs up, verifies, restores
//!   (SHA-256 equal) and unmounts; the host then runs `ferry verify` on the share's
//!   directory. smbd killed mid-backup and restarted: the backup retries to success (errors
//!   of a reconnecting share are transient) and the repository verifies. Wrong password, missing share or export, unreachable host, and no root or
//!   no kernel module each give their own message ([`StoreError::Auth`] or
//!   [`StoreError::Mount`]). The appliance kernel needs `ctr` and `ghash_generic` besides
//!   the cifs softdeps for `seal` (gcm(aes)); `image/src/kmod.rs` ships them.
//! - **On a workstation (the `ferry` CLI)** the binary does not mount (it is not root, and a
//!   CLI that mounts behind the user's back is surprising): mount the share with the OS and
//!   pass the local path. A userspace client remains possible: checked in November 2026,
//!   `smb` (smb-rs) 0.10.2 resolves together with russh 0.65 + ring without aws-lc or
//!   OpenSSL (0.10.4 does not), and `nfs3_client` 0.9 resolves (NFSv3 only). Not built:
//!   the appliance, where backups run, is covered by the kernel path, and a second SMB
//!   implementation would need its own fault tests against smbd on the host.
//! - **Benchmark:** SMB and NFS are not in `tests/bench/storage.sh`: the host kernel has no
//!   cifs/nfs client, and the only place that mounts is the QEMU guest under TCG (no KVM
//!   here), whose emulated CPU and slirp networking would measure the emulator, not the
//!   backend.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "ftp")]
pub mod ftp;
pub mod limit;
mod local;
#[cfg(all(feature = "mount", target_os = "linux"))]
pub mod mount;
#[cfg(feature = "node")]
pub mod node;
pub mod options;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "sftp")]
pub mod sftp;

pub use limit::{Backend, Limited};
pub use local::LocalStore;
pub use options::{Secrets, StoreOptions};

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
    #[error("storage is full while writing {key}: {error}")]
    NoSpace {
        /// Key being written.
        key: String,
        /// Underlying error (in the message, so not also returned by `source()`).
        error: std::io::Error,
    },
    /// The storage refused access.
    #[error("permission denied on {key}: {error}")]
    PermissionDenied {
        /// Key being accessed.
        key: String,
        /// Underlying error (in the message, so not also returned by `source()`).
        error: std::io::Error,
    },
    /// Any other I/O error, with the operation and key that failed.
    #[error("{op} {key}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Key or path.
        key: String,
        /// Underlying error (in the message, so not also returned by `source()`).
        error: std::io::Error,
    },
    /// The storage URL is malformed or names an unsupported scheme.
    #[error("unsupported or malformed storage location {0:?}")]
    BadLocation(String),
    /// A network or server fault that may go away (connection reset, timeout, 5xx, FTP 421).
    /// The retry layer retries these; callers see one only after the retries are exhausted.
    #[error("{op} {key}: temporary failure: {detail}")]
    Transient {
        /// What was being done.
        op: &'static str,
        /// Key or path.
        key: String,
        /// What the backend reported (never contains secrets).
        detail: String,
    },
    /// The server refused the operation for good (a 4xx status, an SFTP failure status).
    #[error("{op} {key}: {detail}")]
    Remote {
        /// What was being done.
        op: &'static str,
        /// Key or path.
        key: String,
        /// What the server reported.
        detail: String,
    },
    /// Logging in failed, or the server could not be trusted (wrong password, unknown or
    /// changed host key, TLS certificate that does not verify).
    #[error("cannot connect to {location}: {detail}")]
    Auth {
        /// Secret-free location.
        location: String,
        /// What failed.
        detail: String,
    },
    /// Mounting an SMB or NFS share failed (unreachable host, missing share or export, no
    /// root, no kernel support). A wrong password is [`StoreError::Auth`].
    #[error("cannot mount {location}: {detail}")]
    Mount {
        /// Secret-free location.
        location: String,
        /// What failed, in terms an admin can act on.
        detail: String,
    },
    /// The capability probe at open found that the storage cannot hold a repository.
    #[error("storage {location} cannot hold a repository: {detail}")]
    Capability {
        /// Secret-free location.
        location: String,
        /// Which step failed and why.
        detail: String,
    },
}

impl StoreError {
    /// Classifies an `io::Error` for `key` during `op`.
    pub fn from_io(op: &'static str, key: &str, source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(key.to_string()),
            std::io::ErrorKind::PermissionDenied => StoreError::PermissionDenied {
                key: key.to_string(),
                error: source,
            },
            std::io::ErrorKind::StorageFull => StoreError::NoSpace {
                key: key.to_string(),
                error: source,
            },
            _ if source.raw_os_error() == Some(libc::ENOSPC)
                || source.raw_os_error() == Some(libc::EDQUOT) =>
            {
                StoreError::NoSpace {
                    key: key.to_string(),
                    error: source,
                }
            }
            _ => StoreError::Io {
                op,
                key: key.to_string(),
                error: source,
            },
        }
    }

    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }

    /// True for faults worth retrying: [`StoreError::Transient`], and I/O errors that mean the
    /// connection or the server went away.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Transient { .. } => true,
            StoreError::Io { error: source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::Interrupted
            ),
            _ => false,
        }
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

    /// Of `keys`, those that do not exist, in the order given.
    ///
    /// The default asks [`Store::exists`] for each key. Backends with a batch query (the
    /// storage node) override it and report a [`Store::batch_hint`] above 1, which makes the
    /// backup engine gather its dedup checks into batches.
    async fn missing(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for k in keys {
            if !self.exists(k).await? {
                out.push(k.clone());
            }
        }
        Ok(out)
    }

    /// How many keys one [`Store::missing`] call should carry at most; 1 (the default) means
    /// the backend has no batch query, and callers ask [`Store::exists`] key by key.
    fn batch_hint(&self) -> usize {
        1
    }

    /// Removes leftovers of interrupted `put`s older than `min_age_secs`. Returns how many.
    async fn clean_temporaries(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        let _ = min_age_secs;
        Ok(0)
    }

    /// Connects and runs the capability probe now, instead of at the first operation.
    /// Remote stores fail here with [`StoreError::Capability`] or [`StoreError::Auth`].
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Checks that a key is relative, normalized and made of safe characters: `/`-separated
/// segments of ASCII letters, digits, `-`, `_` and `.`, none empty, `.` or `..`, none a
/// temporary (`.tmp…`). So no key is absolute, climbs out of the store's root, or holds a
/// NUL, a backslash or a control character. The one rule for every object name: keys here,
/// list prefixes through [`validate_prefix`].
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
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

/// Checks a list prefix: empty (everything), or a key ([`validate_key`]) with an optional
/// trailing `/` (`locks/`, `points/ID/`, `chunks/ab`). Backends join the directory part of a
/// prefix onto their root, so a prefix is held to the same rule as a key.
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix))
        .map_err(|_| StoreError::InvalidKey(prefix.to_string()))
}

/// Opens a store from a location with options from the environment
/// ([`StoreOptions::from_env`]). See [`open_store_with`].
pub fn open_store(location: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if location.contains("://") && !location.starts_with("file://") {
        return open_store_with(location, StoreOptions::from_env()?);
    }
    open_store_with(location, StoreOptions::default())
}

/// Opens a store from a location: `file:///path`, a plain filesystem path, or a remote URL
/// (see the crate docs). Remote stores connect lazily: the first operation (or
/// [`Store::check`]) connects and runs the capability probe, so this needs no runtime.
pub fn open_store_with(
    location: &str,
    opts: StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if let Some((scheme, _)) = location.split_once("://") {
        if scheme != "file" {
            return open_remote(scheme, location, opts);
        }
    }
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

/// Parses a remote URL, applies its tuning parameters, and builds the backend behind the
/// retry/limit layer. Errors never echo the URL (it may hold a password).
fn open_remote(
    scheme: &str,
    location: &str,
    mut opts: StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let url = url::Url::parse(location)
        .map_err(|e| StoreError::BadLocation(format!("{scheme}:// URL does not parse: {e}")))?;
    for (k, v) in url.query_pairs() {
        opts.apply_param(&k, &v)?;
    }
    match scheme {
        #[cfg(feature = "s3")]
        "s3" => Ok(std::sync::Arc::new(Limited::new(
            s3::S3Store::open(&url, &opts)?,
            &opts,
        ))),
        #[cfg(feature = "ftp")]
        "ftp" | "ftps" | "ftps-implicit" => Ok(std::sync::Arc::new(Limited::new(
            ftp::FtpStore::open(&url, &opts)?,
            &opts,
        ))),
        #[cfg(feature = "sftp")]
        "sftp" => Ok(std::sync::Arc::new(Limited::new(
            sftp::SftpStore::open(&url, &opts)?,
            &opts,
        ))),
        #[cfg(feature = "node")]
        "node" => {
            // The node checks every write itself; the generic probe's key is not a vault key.
            opts.probe = false;
            Ok(std::sync::Arc::new(Limited::new(
                node::NodeStore::open(&url, &opts)?,
                &opts,
            )))
        }
        #[cfg(all(feature = "mount", target_os = "linux"))]
        "smb" | "cifs" | "nfs" => Ok(std::sync::Arc::new(Limited::new(
            mount::open(&url, &opts)?,
            &opts,
        ))),
        other => Err(StoreError::BadLocation(format!(
            "unsupported storage scheme {other}:// (this build supports: file{}{}{}{}{})",
            if cfg!(feature = "sftp") { ", sftp" } else { "" },
            if cfg!(feature = "ftp") {
                ", ftp, ftps, ftps-implicit"
            } else {
                ""
            },
            if cfg!(feature = "s3") { ", s3" } else { "" },
            if cfg!(feature = "node") { ", node" } else { "" },
            if cfg!(all(feature = "mount", target_os = "linux")) {
                ", smb, nfs (kernel mount, root only)"
            } else {
                ""
            },
        ))),
    }
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
    fn prefixes_are_validated_as_keys() {
        for good in ["", "locks/", "points/", "chunks/ab", "points/x/", "config"] {
            validate_prefix(good).unwrap();
        }
        for bad in [
            "/",
            "//",
            "/etc",
            "locks/../../../../",
            "locks/..",
            "..",
            "../",
            "a//",
            "a\\..\\b",
            "a/\0",
            "./",
            "a/.tmp-x/",
            "locks/../",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Where a key (or prefix) would land under a root, by lexical resolution of its
    /// segments; None when it climbs above the root or is absolute.
    fn resolve(key: &str) -> Option<Vec<&str>> {
        if key.starts_with('/') || key.contains('\\') || key.contains('\0') {
            return None;
        }
        let mut out = Vec::new();
        for seg in key.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop()?;
                }
                s => out.push(s),
            }
        }
        Some(out)
    }

    /// Property: over random strings made of the characters that matter to paths, every
    /// accepted key and prefix stays below the root, is relative, and names exactly the
    /// path its text says (no segment is dropped or resolved away).
    #[test]
    fn no_accepted_key_or_prefix_leaves_the_root() {
        const ALPHABET: &[u8] = b"a.-_/\\\0 :~%2e";
        let mut rng = ferry_testkit::Rng::new(0x5eed);
        let mut accepted = 0;
        for _ in 0..200_000 {
            let len = rng.below(14);
            let s: String = (0..len)
                .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]))
                .collect();
            for (ok, trailing_ok) in [
                (validate_key(&s).is_ok(), false),
                (validate_prefix(&s).is_ok(), true),
            ] {
                if !ok {
                    continue;
                }
                accepted += 1;
                let body = if trailing_ok {
                    s.strip_suffix('/').unwrap_or(&s)
                } else {
                    &s
                };
                let segs = resolve(body).unwrap_or_else(|| panic!("{s:?} leaves the root"));
                let literal: Vec<&str> = if body.is_empty() {
                    Vec::new()
                } else {
                    body.split('/').collect()
                };
                assert_eq!(segs, literal, "{s:?} does not name what it says");
                assert!(!s.contains(['\\', '\0', ' ', ':', '%']), "{s:?}");
            }
        }
        assert!(
            accepted > 1000,
            "only {accepted} accepted: the test is too narrow"
        );
    }

    #[tokio::test]
    async fn missing_defaults_to_exists_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::new(dir.path().to_path_buf());
        local.put("a/x", Bytes::from_static(b"1")).await.unwrap();
        local.put("c", Bytes::from_static(b"2")).await.unwrap();
        let keys: Vec<String> = ["a/x", "b", "c", "d/e"].map(String::from).to_vec();
        assert_eq!(local.missing(&keys).await.unwrap(), vec!["b", "d/e"]);
        assert!(local.missing(&[]).await.unwrap().is_empty());
        // No batch query: the engine keeps asking `exists`, as before.
        assert_eq!(local.batch_hint(), 1);
        let o = StoreOptions {
            probe: false,
            ..StoreOptions::default()
        };
        let limited = Limited::new(Flat(local), &o);
        assert_eq!(limited.missing(&keys).await.unwrap(), vec!["b", "d/e"]);
        assert_eq!(limited.batch_hint(), 1);
    }

    /// A local store as a remote backend, to go through [`Limited`].
    #[derive(Debug)]
    struct Flat(LocalStore);

    impl Backend for Flat {}

    #[async_trait]
    impl Store for Flat {
        fn location(&self) -> String {
            self.0.location()
        }
        async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
            self.0.put(key, data).await
        }
        async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
            self.0.put_new(key, data).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.0.get(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StoreError> {
            self.0.exists(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            self.0.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.0.delete(key).await
        }
        async fn sync(&self) -> Result<(), StoreError> {
            self.0.sync().await
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
