//! Ferry's backup format and engine.
//!
//! This crate owns what a repository *means*: chunk, index, manifest and lock objects, the
//! backup pipeline, restore, verify, prune and garbage collection. It writes only through
//! `ferry_storage::Store`, and reads disks only through [`BlockSource`], so every transport
//! and every storage backend gets the same format and guarantees. It does not know about
//! vSphere, NBD or VMDK; those crates implement `BlockSource`.
//!
//! # Repository layout (format version 1)
//!
//! ```text
//! config                               repository config (FRYR, JSON): id, defaults
//! chunks/<aa>/<sha256 hex>             chunk (FRYC): zstd or raw plain content, named by its SHA-256
//! points/<id>/disk-<n>.index           disk index (FRYI): one SHA-256 per fixed chunk
//! points/<id>/manifest                 restore point manifest (FRYM, JSON), written last
//! locks/<lock id>                      lock record (FRYL, JSON)
//! ```
//!
//! Object envelopes and bodies are described in [`format`]. A restore point id is
//! `YYYYMMDDTHHMMSS-mmmZ-<8 hex>` (UTC, milliseconds), so ids sort by time.
//!
//! # Guarantees
//! - **Atomic commit.** Chunks and indexes are written first; then [`Store::sync`] makes them
//!   durable; then the manifest is put and synced. A point is listed only by its manifest, so
//!   a killed backup leaves no visible point, and its chunks are reused by the next backup.
//! - **Locking.** Backups and prunes take shared locks, GC takes an exclusive one (see
//!   [`lock`]). GC therefore never runs while a backup is writing or reusing chunks.
//! - **Bounded memory.** The pipeline holds at most `concurrency` chunks in flight; the only
//!   structure that grows with disk size is the index itself (32 bytes per chunk).
//!
//! [`Store::sync`]: ferry_storage::Store::sync

pub mod backup;
mod cpu;
pub mod format;
pub mod gc;
pub mod lock;
pub mod point;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod source;
pub mod verify;

pub use backup::{backup, BackupOptions, BackupStats, DiskInput};
pub use format::{Digest, Index, ZERO_DIGEST};
pub use point::PointSource;
pub use progress::Progress;
pub use repo::{DiskEntry, Manifest, RepoConfig, Repository};
pub use source::{
    BlockSource, ChangedExtents, Extent, ExtentKind, FileSource, SourceError, MAX_DISK_SIZE,
};

use ferry_storage::StoreError;

/// Errors of the archive engine.
///
/// A message carries its cause's text; no variant also returns that cause from `source()`
/// (except the transparent ones, which are their cause), so a printed chain names each cause
/// once.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A block source failed.
    #[error("source {source_name}: {error}")]
    Source {
        /// Which source.
        source_name: String,
        /// What failed (shown in the message, so not also returned by `source()`).
        error: SourceError,
    },
    /// There is no repository at the location.
    #[error("no Ferry repository at {0} (run `ferry repo init` first)")]
    NoRepository(String),
    /// A repository already exists at the location.
    #[error("a Ferry repository already exists at {0}")]
    AlreadyExists(String),
    /// An object is damaged, truncated, or not ours.
    #[error("{object} is damaged: {why}")]
    Corrupt {
        /// Which object.
        object: String,
        /// What is wrong.
        why: String,
    },
    /// An object was written by a newer Ferry.
    #[error(
        "{object} has format version {found}, this build reads up to {supported}: upgrade Ferry"
    )]
    NewerFormat {
        /// Which object.
        object: String,
        /// Version found.
        found: u16,
        /// Newest supported version.
        supported: u16,
    },
    /// A bad argument (chunk size, compression level, ...).
    #[error("invalid {what}: {why}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// A restore point, disk or chunk that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The repository is locked by someone else.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// Writing the restore target failed.
    #[error("restore target {target}: {error}")]
    Target {
        /// Target path.
        target: String,
        /// Underlying error (shown in the message, so not also returned by `source()`).
        error: std::io::Error,
    },
    /// A restore target that Ferry will not overwrite without being told to.
    #[error("restore target {target}: {why}")]
    TargetRefused {
        /// Target path.
        target: String,
        /// Why, and what to do.
        why: String,
    },
    /// A background task failed.
    #[error("internal task failure: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for ArchiveError {
    fn from(e: tokio::task::JoinError) -> Self {
        ArchiveError::Task(e.to_string())
    }
}

/// Current time, seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
