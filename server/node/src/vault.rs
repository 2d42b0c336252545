//! One vault: an archive repository in a directory, its quota and usage, and the checked
//! operations the API performs on it (chunk upload with digest check, commit, delete,
//! catalog, prune). It owns the rule that a restore point records its writer: the node
//! stamps the caller's identity into the manifest's `meta` under [`OWNER_KEY`] at commit.
//! Its lock objects have a book of owners and receive times ([`locks`]).

pub mod locks;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_api::node::{CatalogDisk, CatalogEntry, PruneDecision, PruneRequest, VerifyState};
use ferry_archive::format::{self, Kind};
use ferry_archive::lock::{LockKind, RepoLock};
use ferry_archive::prune::KeepOptions;
use ferry_archive::repo::{chunk_key, manifest_key, validate_point_id};
use ferry_archive::{ArchiveError, Index, Manifest, Repository, ZERO_DIGEST};
use ferry_storage::{LocalStore, Store};

use crate::config::VaultConfig;
use crate::NodeError;
use locks::{BookedStore, LockBook, LockError, LockPolicy, Writer};

/// Bytes of a vault's quota held for a write in progress; given back on drop unless kept.
struct Reservation<'a> {
    vault: &'a Vault,
    n: u64,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.vault.unreserve(self.n);
        }
    }
}

/// Manifest `meta` key holding the identity that committed the point.
pub const OWNER_KEY: &str = "ferry.node.owner";

/// How long a commit or prune waits for a running GC.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Largest disk a restore point may declare: vSphere's largest virtual disk (62 TiB),
/// rounded up. It bounds what an index may decode to.
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// Envelope header of an archive object; bytes 8..16 hold the decoded body length.
const ENVELOPE: usize = 32;

/// The decoded size of the index of a disk of `size` bytes in `chunk_size` chunks (a 20-byte
/// header, then 32 bytes per chunk), or why no index may have one.
pub fn index_plain_len(size: u64, chunk_size: u32) -> Result<u64, String> {
    let cs = chunk_size as usize;
    if !(format::MIN_CHUNK_SIZE..=format::MAX_CHUNK_SIZE).contains(&cs) {
        return Err(format!("chunk size {chunk_size} is out of range"));
    }
    if size > MAX_DISK_SIZE {
        return Err(format!(
            "disk size {size} exceeds the largest disk the node accepts ({MAX_DISK_SIZE})"
        ));
    }
    // size <= 2^46 and chunk_size >= 2^20: at most 2^26 entries, no overflow.
    Ok(20 + 32 * Index::chunk_count(size, chunk_size))
}

/// Largest commit body for a vault of `chunk_size` chunks: the header and manifest (each at
/// most `MAX_BODY`), and the index of one disk of [`MAX_DISK_SIZE`] (SHA-256 digests do not
/// compress; zstd adds a little framing), never more than `MAX_COMMIT_BODY`. At the default
/// 4 MiB chunks that index alone is 512 MiB, the old fixed cap; at 16 MiB, 128 MiB.
pub fn commit_cap(chunk_size: u32) -> usize {
    let index = index_plain_len(MAX_DISK_SIZE, chunk_size).unwrap_or(u64::MAX);
    let framing = index / 128 + ENVELOPE as u64;
    let cap = index
        .saturating_add(framing)
        .saturating_add(2 * ferry_api::MAX_BODY as u64 + 4);
    usize::try_from(cap)
        .unwrap_or(usize::MAX)
        .min(ferry_api::node::MAX_COMMIT_BODY)
}

/// Refuses an index whose envelope declares a decoded size other than its disk needs, before
/// anything is decompressed: a small zstd "bomb" cannot make the node allocate more than the
/// index of the disk its manifest declares.
fn check_index_envelope(key: &str, data: &[u8], size: u64, chunk_size: u32) -> Result<(), String> {
    let need = index_plain_len(size, chunk_size)?;
    let declared = data
        .get(8..16)
        .filter(|_| data.len() >= ENVELOPE)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| format!("{key} is truncated"))?;
    if declared != need {
        return Err(format!(
            "{key} declares {declared} bytes decoded, but the index of a {size}-byte disk in \
             {chunk_size}-byte chunks is {need} bytes: refused before decompression"
        ));
    }
    Ok(())
}

/// A vault.
#[derive(Debug)]
pub struct Vault {
    /// Name.
    pub name: String,
    /// Repository directory.
    pub dir: PathBuf,
    /// Quota in bytes (0: none); a config reload may change it.
    quota: AtomicU64,
    repo: Repository,
    /// The directory's store, without the lock book in front.
    raw: Arc<dyn Store>,
    locks: Arc<LockBook>,
    used: AtomicU64,
    verify_file: PathBuf,
    verify: Mutex<BTreeMap<String, VerifyState>>,
    checks: tokio::sync::Semaphore,
}

fn du(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => n += du(&e.path()),
            Ok(m) => n += m.len(),
            Err(_) => {}
        }
    }
    n
}

impl Vault {
    /// Opens the vault under `root`, creating its repository on first use. Locks are judged
    /// by [`LockPolicy::from_env`].
    pub async fn open(root: &Path, state: &Path, cfg: &VaultConfig) -> Result<Vault, NodeError> {
        Vault::open_with(root, state, cfg, LockPolicy::from_env()).await
    }

    /// [`Vault::open`] with the clock and staleness threshold of its locks given.
    pub async fn open_with(
        root: &Path,
        state: &Path,
        cfg: &VaultConfig,
        policy: LockPolicy,
    ) -> Result<Vault, NodeError> {
        let dir = root.join(&cfg.name);
        let raw: Arc<dyn Store> = Arc::new(LocalStore::new(dir.clone()));
        let locks = Arc::new(LockBook::open(
            &cfg.name,
            &state.join(format!("locks-{}.json", cfg.name)),
            policy,
        ));
        let store: Arc<dyn Store> = Arc::new(BookedStore::new(raw.clone(), locks.clone()));
        let repo = match Repository::open(store.clone()).await {
            Ok(r) => r,
            Err(ArchiveError::NoRepository(_)) => {
                tracing::info!("vault {}: new repository in {}", cfg.name, dir.display());
                Repository::init(store, cfg.chunk_size, cfg.compression_level).await?
            }
            Err(e) => return Err(e.into()),
        };
        let verify_file = state.join(format!("verify-{}.json", cfg.name));
        let verify = std::fs::read(&verify_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let d = dir.clone();
        let used = tokio::task::spawn_blocking(move || du(&d))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok(Vault {
            name: cfg.name.clone(),
            dir,
            quota: AtomicU64::new(cfg.quota),
            repo,
            raw,
            locks,
            used: AtomicU64::new(used),
            verify_file,
            verify: Mutex::new(verify),
            checks: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            ),
        })
    }

    /// The repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.repo.store()
    }

    /// Quota in bytes (0: none).
    pub fn quota(&self) -> u64 {
        self.quota.load(Ordering::Relaxed)
    }

    /// Sets the quota (config reload); writes already admitted are not undone.
    pub fn set_quota(&self, quota: u64) {
        self.quota.store(quota, Ordering::Relaxed);
    }

    /// Writes lock `name` for the client `who` (with admin access on the vault or not):
    /// refused while another identity's lock is fresh ([`locks`]).
    pub async fn put_lock(
        &self,
        name: &str,
        who: &str,
        admin: bool,
        data: Bytes,
        new: bool,
    ) -> Result<bool, LockError> {
        self.locks
            .write(
                self.raw.as_ref(),
                name,
                Writer::Client { who, admin },
                data,
                new,
            )
            .await
    }

    /// Deletes lock `name` for the client `who`, under the same rule as [`Vault::put_lock`].
    pub async fn delete_lock(&self, name: &str, who: &str, admin: bool) -> Result<(), LockError> {
        self.locks
            .remove(self.raw.as_ref(), name, Writer::Client { who, admin })
            .await
    }

    /// The book of the vault's locks.
    pub fn lock_book(&self) -> &LockBook {
        &self.locks
    }

    /// Largest commit body this vault accepts ([`commit_cap`] of its chunk size).
    pub fn commit_cap(&self) -> usize {
        commit_cap(self.repo.config().chunk_size)
    }

    /// Bytes the quota still allows (`u64::MAX` without a quota).
    pub fn room(&self) -> u64 {
        match self.quota() {
            0 => u64::MAX,
            q => q.saturating_sub(self.used()),
        }
    }

    /// Bytes stored.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Recounts usage from the directory (after GC or prune).
    pub async fn recount(&self) {
        let d = self.dir.clone();
        if let Ok(n) = tokio::task::spawn_blocking(move || du(&d)).await {
            self.used.store(n, Ordering::Relaxed);
        }
    }

    /// Reserves `n` bytes of the quota until the returned guard is kept or dropped (a
    /// handler dropped mid-write, when its client goes away, gives the bytes back).
    fn reserve(&self, n: u64) -> Result<Reservation<'_>, NodeError> {
        let quota = match self.quota() {
            0 => u64::MAX,
            q => q,
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= quota)
            })
            .map(|_| Reservation {
                vault: self,
                n,
                kept: false,
            })
            .map_err(|u| NodeError::Quota {
                vault: self.name.clone(),
                used: u,
                quota,
                need: n,
            })
    }

    fn unreserve(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Digests (hex) of `digests` that the vault lacks, in order. Malformed ones are an error.
    pub async fn missing(&self, digests: &[String]) -> Result<Vec<String>, NodeError> {
        let mut keys = Vec::with_capacity(digests.len());
        for d in digests {
            let p = format::parse_digest(d)
                .ok_or_else(|| NodeError::Invalid(format!("{d:?} is not a SHA-256 digest")))?;
            keys.push(chunk_key(&p));
        }
        let present = self.store().missing(&keys).await?;
        let missing: HashSet<&String> = present.iter().collect();
        Ok(digests
            .iter()
            .zip(&keys)
            .filter(|(_, k)| missing.contains(k))
            .map(|(d, _)| d.clone())
            .collect())
    }

    /// Stores a chunk after decoding it and checking its content hashes to `digest`.
    pub async fn put_chunk(&self, digest: &str, body: Bytes) -> Result<bool, NodeError> {
        let d = format::parse_digest(digest)
            .ok_or_else(|| NodeError::Invalid(format!("{digest:?} is not a SHA-256 digest")))?;
        let key = chunk_key(&d);
        if self.store().exists(&key).await? {
            return Ok(false);
        }
        let check = body.clone();
        // Bounds the threads (and their per-thread decode buffers) checking uploads at once.
        let _permit = self
            .checks
            .acquire()
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || format::verify_chunk(&check, &d).map(|_| ()))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::Poisoned(e.to_string()))?;
        let mut r = self.reserve(body.len() as u64)?;
        let fresh = self.store().put_new(&key, body).await?;
        r.kept = fresh;
        Ok(fresh)
    }

    /// The owner recorded in a manifest.
    pub fn owner(m: &Manifest) -> &str {
        m.meta.get(OWNER_KEY).map(String::as_str).unwrap_or("")
    }

    /// Commits a restore point: checks the manifest, its indexes and every chunk they name,
    /// then writes the indexes, syncs, and writes the manifest last.
    pub async fn commit(
        &self,
        id: &str,
        owner: &str,
        objects: Vec<(String, &[u8])>,
    ) -> Result<bool, NodeError> {
        validate_point_id(id).map_err(|_| NodeError::Invalid(format!("bad point id {id:?}")))?;
        let mkey = manifest_key(id);
        let mut by_key: HashMap<String, &[u8]> = HashMap::new();
        for (k, b) in objects {
            if by_key.insert(k.clone(), b).is_some() {
                return Err(NodeError::Invalid(format!("{k} twice in the commit")));
            }
        }
        let mdata = by_key
            .remove(&mkey)
            .ok_or_else(|| NodeError::Invalid(format!("the commit has no {mkey}")))?;
        let mut m: Manifest = format::decode_json(Kind::Manifest, mdata, &mkey)
            .map_err(|e| NodeError::Invalid(e.to_string()))?;
        if m.id != id {
            return Err(NodeError::Invalid(format!("manifest names point {}", m.id)));
        }
        let mut indexes = Vec::new();
        let mut needed: HashSet<[u8; 32]> = HashSet::new();
        for (n, disk) in m.disks.iter().enumerate() {
            if !disk.index.starts_with(&format!("points/{id}/")) || disk.index == mkey {
                return Err(NodeError::Invalid(format!(
                    "disk {n} index {} is outside the point",
                    disk.index
                )));
            }
            ferry_storage::validate_key(&disk.index)
                .map_err(|e| NodeError::Invalid(e.to_string()))?;
            let data = by_key
                .remove(&disk.index)
                .ok_or_else(|| NodeError::Invalid(format!("the commit lacks {}", disk.index)))?;
            check_index_envelope(&disk.index, data, disk.size, m.chunk_size)
                .map_err(NodeError::Invalid)?;
            if format::digest_hex(&format::digest_of(data)) != disk.index_sha256 {
                return Err(NodeError::Invalid(format!(
                    "{} does not match the SHA-256 in the manifest",
                    disk.index
                )));
            }
            let idx =
                Index::decode(data, &disk.index).map_err(|e| NodeError::Invalid(e.to_string()))?;
            if idx.disk_size != disk.size || idx.chunk_size != m.chunk_size {
                return Err(NodeError::Invalid(format!(
                    "{}: disk or chunk size disagrees with the manifest",
                    disk.index
                )));
            }
            needed.extend(idx.entries.iter().filter(|e| **e != ZERO_DIGEST));
            indexes.push((disk.index.clone(), Bytes::copy_from_slice(data)));
        }
        if let Some(extra) = by_key.keys().next() {
            return Err(NodeError::Invalid(format!(
                "{extra} is not named by the manifest"
            )));
        }
        // GC must not run between the presence check and the manifest.
        let lock = RepoLock::acquire(
            self.store().clone(),
            LockKind::Shared,
            &format!("commit of {id}"),
            LOCK_WAIT,
        )
        .await?;
        let res = self.commit_locked(&mut m, owner, &needed, indexes).await;
        let released = lock.release().await;
        let created = res?;
        released?;
        Ok(created)
    }

    async fn commit_locked(
        &self,
        m: &mut Manifest,
        owner: &str,
        needed: &HashSet<[u8; 32]>,
        indexes: Vec<(String, Bytes)>,
    ) -> Result<bool, NodeError> {
        let mkey = manifest_key(&m.id);
        if let Ok(existing) = self.repo.load_manifest(&m.id).await {
            // A retried commit whose first answer was lost.
            let same = Vault::owner(&existing) == owner
                && existing.disks.len() == m.disks.len()
                && existing
                    .disks
                    .iter()
                    .zip(&m.disks)
                    .all(|(a, b)| a.index_sha256 == b.index_sha256);
            return Ok(same);
        }
        let keys: Vec<String> = needed.iter().map(chunk_key).collect();
        let lacking = self.store().missing(&keys).await?;
        if !lacking.is_empty() {
            return Err(NodeError::MissingChunks {
                count: lacking.len(),
                first: lacking[0].clone(),
            });
        }
        m.meta.insert(OWNER_KEY.into(), owner.to_string());
        let mdata = format::encode_json(Kind::Manifest, &*m)?;
        let total: u64 =
            indexes.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + mdata.len() as u64;
        let mut r = self.reserve(total)?;
        let res = async {
            for (k, b) in indexes {
                self.store().put(&k, b).await?;
            }
            self.store().sync().await?;
            let fresh = self.store().put_new(&mkey, Bytes::from(mdata)).await?;
            self.store().sync().await?;
            Ok::<bool, NodeError>(fresh)
        }
        .await;
        r.kept = matches!(res, Ok(true));
        res
    }

    /// Deletes a point: manifest first (it disappears at once), then its indexes.
    pub async fn delete_point(&self, m: &Manifest) -> Result<(), NodeError> {
        self.store().delete(&manifest_key(&m.id)).await?;
        self.store().sync().await?;
        for d in &m.disks {
            self.store().delete(&d.index).await?;
        }
        self.store().sync().await?;
        self.recount().await;
        Ok(())
    }

    /// Every committed point.
    pub async fn points(&self) -> Result<Vec<Manifest>, NodeError> {
        Ok(self.repo.list_points().await?)
    }

    /// A catalog entry for a manifest.
    pub fn catalog_entry(&self, m: &Manifest) -> CatalogEntry {
        let verify = self
            .verify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&m.id)
            .cloned();
        CatalogEntry {
            vault: self.name.clone(),
            id: m.id.clone(),
            group: m.group.clone(),
            created: m.created,
            finished: m.finished,
            disks: m
                .disks
                .iter()
                .map(|d| CatalogDisk {
                    name: d.name.clone(),
                    size: d.size,
                })
                .collect(),
            stored: m.stats().stored,
            owner: Vault::owner(m).to_string(),
            verify,
        }
    }

    /// Records verify results for `points` (ids) from a report's damage list.
    pub fn record_verify(&self, points: &[String], damaged: &[(String, String)]) {
        let now = ferry_api::now_unix();
        let mut v = self.verify.lock().unwrap_or_else(|e| e.into_inner());
        for p in points {
            let error = damaged
                .iter()
                .find(|(id, _)| id == p)
                .map(|(_, e)| e.clone());
            v.insert(
                p.clone(),
                VerifyState {
                    time: now,
                    ok: error.is_none(),
                    error,
                },
            );
        }
        // Points verified in this run are all that exist; drop entries of pruned ones.
        v.retain(|id, _| points.contains(id));
        if let Ok(text) = serde_json::to_vec_pretty(&*v) {
            if let Err(e) = std::fs::write(&self.verify_file, text) {
                tracing::warn!("vault {}: cannot save verify state: {e}", self.name);
            }
        }
    }

    /// Applies retention to the points `allowed` selects, per group.
    pub async fn prune(
        &self,
        req: &PruneRequest,
        allowed: impl Fn(&Manifest) -> bool,
    ) -> Result<Vec<PruneDecision>, NodeError> {
        let keep = KeepOptions {
            last: req.keep_last,
            hourly: req.keep_hourly,
            daily: req.keep_daily,
            weekly: req.keep_weekly,
            monthly: req.keep_monthly,
            yearly: req.keep_yearly,
        };
        if !keep.any() {
            return Err(NodeError::Invalid(
                "no retention rule given: refusing to remove every point".into(),
            ));
        }
        let lock = if req.dry_run {
            None
        } else {
            Some(
                RepoLock::acquire(self.store().clone(), LockKind::Shared, "prune", LOCK_WAIT)
                    .await?,
            )
        };
        let res = async {
            let points: Vec<Manifest> = self
                .points()
                .await?
                .into_iter()
                .filter(|m| req.group.as_ref().is_none_or(|g| &m.group == g) && allowed(m))
                .collect();
            let mut groups: Vec<&str> = points.iter().map(|m| m.group.as_str()).collect();
            groups.sort();
            groups.dedup();
            let mut out = Vec::new();
            for g in groups {
                let members: Vec<(String, i64)> = points
                    .iter()
                    .filter(|m| m.group == g)
                    .map(|m| (m.id.clone(), m.created))
                    .collect();
                for (id, kept) in ferry_archive::prune::select(&members, &keep) {
                    let Some(m) = points.iter().find(|m| m.id == id) else {
                        continue;
                    };
                    if !kept && !req.dry_run {
                        self.delete_point(m).await?;
                    }
                    out.push(PruneDecision {
                        id,
                        group: g.to_string(),
                        created: m.created,
                        keep: kept,
                    });
                }
            }
            Ok::<_, NodeError>(out)
        }
        .await;
        if let Some(l) = lock {
            l.release().await?;
        }
        res
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn index_sizes_and_commit_caps_follow_the_disk_and_chunk_size() {
        // 4 chunks of 1 MiB: header and four digests.
        assert_eq!(index_plain_len(4 << 20, 1 << 20).unwrap(), 20 + 4 * 32);
        assert_eq!(index_plain_len(0, 4 << 20).unwrap(), 20);
        assert!(index_plain_len(MAX_DISK_SIZE + 1, 4 << 20).is_err());
        assert!(index_plain_len(1 << 30, 1000).is_err());
        // A 62 TiB disk (vSphere's largest) fits the cap at every chunk size from 4 MiB up.
        for cs in [4u32 << 20, 8 << 20, 16 << 20] {
            let need = index_plain_len(62 << 40, cs).unwrap() as usize;
            assert!(commit_cap(cs) > need + 2 * ferry_api::MAX_BODY, "{cs}");
        }
        // 16 MiB chunks: a 128 MiB index at most, so a cap near 130 MiB, not 512 MiB.
        assert!(commit_cap(16 << 20) < 140 << 20);
        assert!(commit_cap(1 << 20) <= ferry_api::node::MAX_COMMIT_BODY);
    }

    #[test]
    fn an_index_envelope_must_declare_what_its_disk_needs() {
        let idx = Index {
            disk_size: 3 << 20,
            chunk_size: 1 << 20,
            entries: vec![ZERO_DIGEST; 3],
        }
        .encode()
        .unwrap();
        check_index_envelope("i", &idx, 3 << 20, 1 << 20).unwrap();
        let e = check_index_envelope("i", &idx, 300 << 20, 1 << 20).unwrap_err();
        assert!(e.contains("refused before decompression"), "{e}");
        assert!(check_index_envelope("i", &idx[..20], 3 << 20, 1 << 20).is_err());
    }
}
