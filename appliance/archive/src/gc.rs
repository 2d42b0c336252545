//! Garbage collection: delete chunks that no manifest references.
//!
//! GC holds the repository's exclusive lock for its whole run (see [`crate::lock`]): no
//! backup can be between "this chunk exists, reuse it" and "my manifest names it" while GC
//! decides what is garbage. A backup that starts meanwhile waits for GC, and GC waits for
//! running backups. GC also removes indexes of points that never got a manifest (killed
//! backups) and stale temporaries of interrupted writes.
//!
//! If any manifest or index cannot be read, GC deletes nothing: a damaged index must not turn
//! live chunks into garbage.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::format::{parse_digest, Digest, ZERO_DIGEST};
use crate::lock::{LockKind, RepoLock};
use crate::{ArchiveError, Repository};

/// What a GC run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    /// Restore points scanned.
    pub points: usize,
    /// Chunks still referenced.
    pub live_chunks: u64,
    /// Chunks deleted.
    pub removed_chunks: u64,
    /// Bytes freed by deleted chunks.
    pub removed_bytes: u64,
    /// Orphaned index objects deleted.
    pub removed_orphans: u64,
    /// Temporaries of interrupted writes deleted.
    pub removed_temporaries: u64,
}

/// Runs GC, waiting up to `lock_wait` for running backups.
pub async fn gc(repo: &Repository, lock_wait: Duration) -> Result<GcReport, ArchiveError> {
    let lock =
        RepoLock::acquire(repo.store().clone(), LockKind::Exclusive, "gc", lock_wait).await?;
    let res = gc_locked(repo).await;
    lock.release().await?;
    res
}

async fn gc_locked(repo: &Repository) -> Result<GcReport, ArchiveError> {
    let store: &Arc<dyn ferry_storage::Store> = repo.store();
    let mut report = GcReport::default();
    // Mark.
    let mut live: HashSet<Digest> = HashSet::new();
    let mut live_indexes: HashSet<String> = HashSet::new();
    let ids = repo.list_point_ids().await?;
    for id in &ids {
        let m = repo.load_manifest(id).await?;
        for n in 0..m.disks.len() {
            let idx = repo.load_index(&m, n).await?;
            live.extend(idx.entries.iter().filter(|d| **d != ZERO_DIGEST));
            live_indexes.insert(m.disks[n].index.clone());
        }
        report.points += 1;
    }
    report.live_chunks = live.len() as u64;
    // Sweep orphaned indexes: a point directory without a manifest is a dead backup, since
    // every live writer is excluded by our lock.
    let committed: HashSet<&str> = ids.iter().map(String::as_str).collect();
    for obj in store.list("points/").await? {
        let Some((id, _)) = obj
            .key
            .strip_prefix("points/")
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        if !committed.contains(id) && !live_indexes.contains(&obj.key) {
            store.delete(&obj.key).await?;
            report.removed_orphans += 1;
        }
    }
    // Sweep chunks.
    for obj in store.list("chunks/").await? {
        let name = obj.key.rsplit('/').next().unwrap_or("");
        let Some(d) = parse_digest(name) else {
            tracing::warn!("ignoring foreign object {}", obj.key);
            continue;
        };
        if !live.contains(&d) {
            store.delete(&obj.key).await?;
            report.removed_chunks += 1;
            report.removed_bytes += obj.size;
        }
    }
    // Temporaries older than an hour cannot belong to a lock being written right now.
    report.removed_temporaries = store.clean_temporaries(3600).await?;
    store.sync().await?;
    Ok(report)
}
