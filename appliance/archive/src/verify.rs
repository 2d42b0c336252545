//! Verify: re-read and re-hash every chunk that restore points name.
//!
//! Each distinct chunk is checked once per run; every place that uses a damaged chunk is
//! reported with its restore point, disk and offset. Damaged manifests and indexes are
//! reported too, and never stop the run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::format::{Digest, ZERO_DIGEST};
use crate::progress::Progress;
use crate::restore::{fetch_chunk, read_lock};
use crate::{ArchiveError, Repository};

/// One damaged place.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Damage {
    /// Restore point id.
    pub point: String,
    /// Disk name, when the damage is in a disk.
    pub disk: Option<String>,
    /// Byte offset in the disk of the damaged chunk.
    pub offset: Option<u64>,
    /// What is wrong.
    pub error: String,
}

/// The result of a verify run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Restore points checked.
    pub points: usize,
    /// Distinct chunks read and hashed.
    pub chunks: u64,
    /// Plain bytes hashed.
    pub bytes: u64,
    /// Everything found damaged.
    pub damaged: Vec<Damage>,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn ok(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// Verifies the given restore points (all when `ids` is empty).
pub async fn verify(
    repo: &Repository,
    ids: &[String],
    concurrency: usize,
    progress: Arc<Progress>,
) -> Result<VerifyReport, ArchiveError> {
    let lock = read_lock(repo, "verify").await?;
    let res = verify_locked(repo, ids, concurrency, progress).await;
    if let Some(l) = lock {
        l.release().await?;
    }
    res
}

async fn verify_locked(
    repo: &Repository,
    ids: &[String],
    concurrency: usize,
    progress: Arc<Progress>,
) -> Result<VerifyReport, ArchiveError> {
    let ids = if ids.is_empty() {
        repo.list_point_ids().await?
    } else {
        ids.to_vec()
    };
    let mut report = VerifyReport::default();
    let mut good: HashSet<Digest> = HashSet::new();
    let mut bad: HashMap<Digest, String> = HashMap::new();
    for id in &ids {
        report.points += 1;
        let m = match repo.load_manifest(id).await {
            Ok(m) => m,
            Err(e) => {
                report.damaged.push(Damage {
                    point: id.clone(),
                    disk: None,
                    offset: None,
                    error: e.to_string(),
                });
                continue;
            }
        };
        progress.add_total(m.total_size());
        for (n, disk) in m.disks.iter().enumerate() {
            let index = match repo.load_index(&m, n).await {
                Ok(i) => Arc::new(i),
                Err(e) => {
                    report.damaged.push(Damage {
                        point: id.clone(),
                        disk: Some(disk.name.clone()),
                        offset: None,
                        error: e.to_string(),
                    });
                    progress.add_done(disk.size);
                    continue;
                }
            };
            // Check each chunk not yet judged; the first occurrence does the work.
            let mut first_seen = HashSet::new();
            let todo: Vec<usize> = (0..index.entries.len())
                .filter(|&i| {
                    let d = index.entries[i];
                    d != ZERO_DIGEST
                        && !good.contains(&d)
                        && !bad.contains_key(&d)
                        && first_seen.insert(d)
                })
                .collect();
            let mut results = stream::iter(todo)
                .map(|i| {
                    let index = index.clone();
                    async move {
                        let (_, len) = index.chunk_range(i);
                        let d = index.entries[i];
                        (d, len, fetch_chunk(repo, d, len).await.map(|_| ()))
                    }
                })
                .buffer_unordered(concurrency.max(1));
            while let Some((d, len, r)) = results.next().await {
                match r {
                    Ok(()) => {
                        good.insert(d);
                        report.chunks += 1;
                        report.bytes += len as u64;
                    }
                    Err(e) => {
                        bad.insert(d, e.to_string());
                    }
                }
                progress.add_done(len as u64);
            }
            for (i, d) in index.entries.iter().enumerate() {
                if let Some(err) = bad.get(d) {
                    report.damaged.push(Damage {
                        point: id.clone(),
                        disk: Some(disk.name.clone()),
                        offset: Some(index.chunk_range(i).0),
                        error: err.clone(),
                    });
                }
            }
        }
    }
    Ok(report)
}
