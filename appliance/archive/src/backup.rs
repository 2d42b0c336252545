//! The backup pipeline.
//!
//! For each disk, a planner walks the chunks in windows. A chunk that the allocation map says
//! reads as zeros is recorded as zero without reading. With a parent and a changed-extent
//! map, a chunk that no changed range touches is taken from the parent index without reading.
//! Every other chunk is read, checked for zeros, hashed, and, unless the repository already
//! has it, compressed and stored. At most `concurrency` chunks are in flight, which bounds
//! memory; hashing and compression run on the blocking pool so every core is used. On a store
//! with a batch query (the storage node), the "does the repository have it" checks of the
//! chunks in flight are gathered into batches ([`MissingBatcher`]); only missing chunks are
//! compressed and uploaded.
//!
//! Commit order: all chunks, then every index, then `sync`, then the manifest, then `sync`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use futures::FutureExt;
use tracing::{info, warn};

use crate::format::{self, Digest, Index, ZERO_DIGEST};
use crate::lock::{LockKind, RepoLock};
use crate::progress::Progress;
use crate::repo::{self, chunk_key, index_key, manifest_key, DiskEntry, DiskStats, Manifest};
use crate::source::{BlockSource, ChangedExtents, ExtentKind};
use crate::{now_secs, ArchiveError, Repository};
use ferry_storage::StoreError;

/// One disk to back up.
pub struct DiskInput {
    /// Name recorded in the manifest; also how a disk finds its twin in the parent.
    pub name: String,
    /// Where the bytes come from.
    pub source: Arc<dyn BlockSource>,
    /// Changed extents since the parent, overriding what the source reports.
    pub changed: Option<ChangedExtents>,
    /// The change token this backup is taken at (vSphere changeId).
    pub change_id: Option<String>,
    /// Transport facts recorded in the manifest.
    pub meta: BTreeMap<String, String>,
}

impl std::fmt::Debug for DiskInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskInput")
            .field("name", &self.name)
            .field("source", &self.source.describe())
            .field("changed", &self.changed.as_ref().map(|c| c.total()))
            .finish()
    }
}

/// Options of a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Backup group (VM or source name).
    pub group: String,
    /// Parent restore point id.
    pub parent: Option<String>,
    /// Chunk size; the repository default when `None`.
    pub chunk_size: Option<u32>,
    /// zstd level; the repository default when `None`.
    pub compression_level: Option<i32>,
    /// Chunks in flight.
    pub concurrency: usize,
    /// How long to wait for a conflicting lock (a running GC).
    pub lock_wait: Duration,
    /// Source-level facts recorded in the manifest.
    pub meta: BTreeMap<String, String>,
}

impl BackupOptions {
    /// Defaults for a group: repository chunk size and level, four chunks per core in flight
    /// (enough to keep every core busy while other chunks wait on reads and fsync).
    pub fn new(group: &str) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        BackupOptions {
            group: group.to_string(),
            parent: None,
            chunk_size: None,
            compression_level: None,
            concurrency: (cores * 4).max(8),
            lock_wait: Duration::from_secs(600),
            meta: BTreeMap::new(),
        }
    }
}

/// Totals of a backup.
pub type BackupStats = DiskStats;

enum Plan {
    Zero,
    Inherit(Digest),
    Read,
}

enum Outcome {
    Zero,
    ZeroRead,
    Inherited,
    Reused,
    New { stored: u64 },
}

struct DiskCtx {
    source: Arc<dyn BlockSource>,
    name: String,
    size: u64,
    parent: Option<Index>,
    changed: Option<ChangedExtents>,
}

struct Shared {
    store: Arc<dyn ferry_storage::Store>,
    /// Digests known to be in the repository: a cache in front of `Store::exists`, bounded
    /// so that memory does not grow with disk size.
    known: Mutex<HashSet<Digest>>,
    level: i32,
    progress: Arc<Progress>,
    /// Read buffers handed back after a chunk is done, so that each read does not
    /// allocate and zero a fresh chunk-sized buffer (page faults and memset showed in
    /// profiles). Bounded by `pool_cap`, so idle memory stays at a few chunks.
    pool: Mutex<Vec<Vec<u8>>>,
    pool_cap: usize,
    /// Batched dedup checks, when the store has a batch query.
    batcher: Option<MissingBatcher>,
}

/// Entries of the known-digest cache (about 50 bytes each) before it is cleared.
const KNOWN_CAP: usize = 1 << 19;

/// Where a queued dedup check gets its answer: missing or not, or the query's error.
type Answer = tokio::sync::oneshot::Sender<Result<bool, String>>;

/// Gathers the dedup checks of the chunks in flight into [`Store::missing`] batches, for
/// stores with a batch query ([`Store::batch_hint`] above 1).
///
/// Group commit: a chunk that finds no query running sends one with every check waiting
/// (its own included) and keeps sending until none is left; chunks that arrive meanwhile
/// wait for their answer. Batches therefore grow with the round-trip time and the window
/// of chunks in flight, without a timer, and memory stays bounded by that window.
///
/// [`Store::missing`]: ferry_storage::Store::missing
/// [`Store::batch_hint`]: ferry_storage::Store::batch_hint
struct MissingBatcher {
    max: usize,
    queue: Mutex<Vec<(String, Answer)>>,
    busy: std::sync::atomic::AtomicBool,
}

impl MissingBatcher {
    fn new(max: usize) -> Self {
        MissingBatcher {
            max: max.max(1),
            queue: Mutex::new(Vec::new()),
            busy: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True when the store lacks `key`.
    async fn is_missing(
        &self,
        store: &dyn ferry_storage::Store,
        key: String,
    ) -> Result<bool, ArchiveError> {
        use std::sync::atomic::Ordering;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key.clone(), tx));
        while !self.busy.swap(true, Ordering::AcqRel) {
            // Leader: drain the queue in batches.
            loop {
                let batch: Vec<_> = {
                    let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                    let n = q.len().min(self.max);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
                match store.missing(&keys).await {
                    Ok(missing) => {
                        let missing: HashSet<&String> = missing.iter().collect();
                        for (k, tx) in batch {
                            let _ = tx.send(Ok(missing.contains(&k)));
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for (_, tx) in batch {
                            let _ = tx.send(Err(msg.clone()));
                        }
                    }
                }
            }
            self.busy.store(false, Ordering::Release);
            // A check queued after the last drain and before `busy` cleared has no leader.
            if self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                break;
            }
        }
        match rx.await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(detail)) => Err(ArchiveError::Store(StoreError::Transient {
                op: "missing",
                key,
                detail,
            })),
            Err(_) => Err(ArchiveError::Task("dedup query dropped".into())),
        }
    }
}

impl Shared {
    fn remember(&self, d: Digest) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_CAP {
            known.clear();
        }
        known.insert(d);
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified: sources fill it whole.
    fn take_buf(&self, len: usize) -> Vec<u8> {
        let reused = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match reused {
            Some(mut b) => {
                b.resize(len, 0);
                b
            }
            None => vec![0u8; len],
        }
    }

    fn give_buf(&self, b: Vec<u8>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.pool_cap {
            pool.push(b);
        }
    }
}

/// Backs up `disks` into a new restore point and returns its manifest.
pub async fn backup(
    repo: &Repository,
    disks: Vec<DiskInput>,
    opts: &BackupOptions,
    progress: Arc<Progress>,
) -> Result<Manifest, ArchiveError> {
    let chunk_size = opts.chunk_size.unwrap_or(repo.config().chunk_size);
    repo::check_chunk_size(chunk_size)?;
    let level = opts
        .compression_level
        .unwrap_or(repo.config().compression_level);
    repo::check_level(level)?;
    if disks.is_empty() {
        return Err(ArchiveError::Invalid {
            what: "backup",
            why: "no disks given".into(),
        });
    }
    // Before any lock or index is sized by a disk: a size no vSphere disk can have is a
    // wrong source (or a lying one), not a disk to allocate an index for.
    for d in &disks {
        crate::source::check_disk_size(&d.name, d.source.size()).map_err(|e| {
            ArchiveError::Source {
                source_name: d.source.describe(),
                error: e,
            }
        })?;
    }
    let lock = RepoLock::acquire(
        repo.store().clone(),
        LockKind::Shared,
        &format!("backup of {}", opts.group),
        opts.lock_wait,
    )
    .await?;
    let res = run(repo, disks, opts, chunk_size, level, progress).await;
    let released = lock.release().await;
    let m = res?;
    released?;
    Ok(m)
}

async fn run(
    repo: &Repository,
    disks: Vec<DiskInput>,
    opts: &BackupOptions,
    chunk_size: u32,
    level: i32,
    progress: Arc<Progress>,
) -> Result<Manifest, ArchiveError> {
    let created = now_secs();
    let id = repo::new_point_id();
    let parent = match &opts.parent {
        Some(p) => Some(repo.load_manifest(p).await?),
        None => None,
    };
    let shared = Arc::new(Shared {
        store: repo.store().clone(),
        known: Mutex::new(HashSet::new()),
        level,
        progress: progress.clone(),
        pool: Mutex::new(Vec::new()),
        pool_cap: opts.concurrency.clamp(1, 64),
        batcher: match repo.store().batch_hint() {
            0 | 1 => None,
            n => Some(MissingBatcher::new(n)),
        },
    });

    // Match each disk with its twin in the parent: by name, else by position.
    let mut ctxs = Vec::with_capacity(disks.len());
    for (n, d) in disks.iter().enumerate() {
        let size = d.source.size();
        progress.add_total(size);
        let mut parent_index = None;
        if let Some(pm) = &parent {
            let pos = pm
                .disks
                .iter()
                .position(|pd| pd.name == d.name)
                .or_else(|| (n < pm.disks.len()).then_some(n));
            if let Some(pos) = pos {
                let idx = repo.load_index(pm, pos).await?;
                if idx.chunk_size == chunk_size {
                    for d in idx.entries.iter().filter(|e| **e != ZERO_DIGEST) {
                        shared.remember(*d);
                    }
                    parent_index = Some(idx);
                } else {
                    warn!(
                        "parent {} uses {}-byte chunks, this backup {}: reading {} in full",
                        pm.id, idx.chunk_size, chunk_size, d.name
                    );
                }
            }
        }
        let changed = match &d.changed {
            Some(c) => Some(c.clone()),
            None => d.source.changed().await.map_err(|e| ArchiveError::Source {
                source_name: d.source.describe(),
                error: e,
            })?,
        };
        let changed = match (changed, &parent_index) {
            (Some(c), Some(_)) => {
                info!(
                    "{}: changed-extent map covers {} bytes; reading only those chunks",
                    d.name,
                    c.total()
                );
                Some(c)
            }
            (Some(_), None) => {
                warn!(
                    "{}: changed-extent map given but no usable parent: full read",
                    d.name
                );
                None
            }
            (None, _) => None,
        };
        ctxs.push(DiskCtx {
            source: d.source.clone(),
            name: d.name.clone(),
            size,
            parent: parent_index,
            changed,
        });
    }

    let mut entries = Vec::with_capacity(ctxs.len());
    for (n, ctx) in ctxs.iter().enumerate() {
        let (index, stats) = backup_disk(ctx, chunk_size, opts.concurrency, &shared).await?;
        ctx.source
            .finish()
            .await
            .map_err(|e| ArchiveError::Source {
                source_name: ctx.source.describe(),
                error: e,
            })?;
        let data = index.encode()?;
        let key = index_key(&id, n);
        let sha = format::digest_hex(&format::digest_of(&data));
        repo.store().put(&key, Bytes::from(data)).await?;
        let input = &disks[n];
        entries.push(DiskEntry {
            name: ctx.name.clone(),
            size: ctx.size,
            index: key,
            index_sha256: sha,
            change_id: input.change_id.clone(),
            stats,
            meta: input.meta.clone(),
        });
    }
    // Every chunk and index must be durable before the manifest makes them reachable.
    repo.store().sync().await?;
    let manifest = Manifest {
        format: repo::REPO_FORMAT,
        id: id.clone(),
        group: opts.group.clone(),
        created,
        finished: now_secs(),
        parent: parent.map(|p| p.id),
        chunk_size,
        compression: "zstd".into(),
        compression_level: level,
        disks: entries,
        meta: opts.meta.clone(),
    };
    let data = format::encode_json(format::Kind::Manifest, &manifest)?;
    if !repo
        .store()
        .put_new(&manifest_key(&id), Bytes::from(data))
        .await?
    {
        return Err(ArchiveError::Invalid {
            what: "restore point id",
            why: format!("{id} already exists"),
        });
    }
    repo.store().sync().await?;
    Ok(manifest)
}

/// Chunks per allocation query.
const WINDOW_CHUNKS: u64 = 256;

async fn plan_window(
    ctx: &DiskCtx,
    chunk_size: u32,
    first: u64,
    count: u64,
) -> Result<Vec<(u64, Plan)>, ArchiveError> {
    let cs = u64::from(chunk_size);
    let start = first * cs;
    let end = ((first + count) * cs).min(ctx.size);
    let alloc = ctx
        .source
        .allocation(start, end - start)
        .await
        .map_err(|e| ArchiveError::Source {
            source_name: ctx.source.describe(),
            error: e,
        })?;
    let mut out = Vec::with_capacity(count as usize);
    let mut ai = 0usize;
    for i in first..first + count {
        let off = i * cs;
        let cend = (off + cs).min(ctx.size);
        let all_zero = alloc.as_ref().is_some_and(|ext| {
            // Extents are sorted: skip those ending before this chunk.
            while ai < ext.len() && ext[ai].offset + ext[ai].len <= off {
                ai += 1;
            }
            let mut j = ai;
            let mut covered = off;
            while j < ext.len() && ext[j].offset < cend {
                if ext[j].kind == ExtentKind::Data || ext[j].offset > covered {
                    return false;
                }
                covered = ext[j].offset + ext[j].len;
                j += 1;
            }
            covered >= cend
        });
        let plan = if all_zero {
            Plan::Zero
        } else if let (Some(p), Some(c)) = (&ctx.parent, &ctx.changed) {
            // The parent's chunk must cover exactly the same bytes (disks can grow or shrink).
            let parent_len = p.disk_size.saturating_sub(off).min(cs);
            let same_shape = parent_len == cend - off && (i as usize) < p.entries.len();
            if same_shape && !c.intersects(off, cend) {
                Plan::Inherit(p.entries[i as usize])
            } else {
                Plan::Read
            }
        } else {
            Plan::Read
        };
        out.push((i, plan));
    }
    Ok(out)
}

async fn backup_disk(
    ctx: &DiskCtx,
    chunk_size: u32,
    concurrency: usize,
    shared: &Arc<Shared>,
) -> Result<(Index, DiskStats), ArchiveError> {
    let cs = u64::from(chunk_size);
    let nchunks = Index::chunk_count(ctx.size, chunk_size);
    let mut index = Index {
        disk_size: ctx.size,
        chunk_size,
        entries: vec![
            ZERO_DIGEST;
            usize::try_from(nchunks).map_err(|_| ArchiveError::Invalid {
                what: "disk size",
                why: "too many chunks for this platform".into(),
            })?
        ],
    };
    let windows = stream::iter((0..nchunks.div_ceil(WINDOW_CHUNKS)).map(|w| {
        let first = w * WINDOW_CHUNKS;
        let count = WINDOW_CHUNKS.min(nchunks - first);
        plan_window(ctx, chunk_size, first, count)
    }))
    .buffered(2)
    .map_ok(|v| stream::iter(v.into_iter().map(Ok::<_, ArchiveError>)))
    .try_flatten();

    let mut stats = DiskStats::default();
    let mut results = windows
        .map_ok(|(i, plan)| {
            let off = i * cs;
            let len = (ctx.size - off).min(cs) as usize;
            process_chunk(ctx, shared.clone(), off, len, plan).map(move |r| r.map(|o| (i, len, o)))
        })
        .try_buffer_unordered(concurrency.max(1));
    while let Some((i, len, (digest, outcome))) = results.try_next().await? {
        let len = len as u64;
        index.entries[i as usize] = digest;
        if matches!(
            outcome,
            Outcome::ZeroRead | Outcome::Reused | Outcome::New { .. }
        ) {
            stats.read += len;
        }
        match outcome {
            Outcome::Zero | Outcome::ZeroRead => stats.zero += len,
            Outcome::Inherited => stats.inherited += len,
            Outcome::Reused => stats.reused += len,
            Outcome::New { stored } => {
                stats.new += len;
                stats.stored += stored;
                stats.new_chunks += 1;
            }
        }
        shared.progress.add_done(len);
    }
    Ok((index, stats))
}

async fn process_chunk(
    ctx: &DiskCtx,
    shared: Arc<Shared>,
    off: u64,
    len: usize,
    plan: Plan,
) -> Result<(Digest, Outcome), ArchiveError> {
    match plan {
        Plan::Zero => return Ok((ZERO_DIGEST, Outcome::Zero)),
        Plan::Inherit(d) => {
            return Ok((
                d,
                if d == ZERO_DIGEST {
                    Outcome::Zero
                } else {
                    Outcome::Inherited
                },
            ))
        }
        Plan::Read => {}
    }
    let buf = ctx
        .source
        .read_at(off, shared.take_buf(len))
        .await
        .map_err(|e| ArchiveError::Source {
            source_name: ctx.source.describe(),
            error: e,
        })?;
    shared.progress.add_read(len as u64);
    let (buf, digest) = crate::cpu::run(move || {
        if format::is_zero(&buf) {
            (buf, ZERO_DIGEST)
        } else {
            let d = format::digest_of(&buf);
            (buf, d)
        }
    })
    .await?;
    if digest == ZERO_DIGEST {
        shared.give_buf(buf);
        return Ok((ZERO_DIGEST, Outcome::ZeroRead));
    }
    let seen = {
        let known = shared.known.lock().unwrap_or_else(|e| e.into_inner());
        known.contains(&digest)
    };
    let key = chunk_key(&digest);
    let present = seen
        || match &shared.batcher {
            Some(b) => !b.is_missing(shared.store.as_ref(), key.clone()).await?,
            None => shared.store.exists(&key).await?,
        };
    if present {
        shared.remember(digest);
        shared.give_buf(buf);
        return Ok((digest, Outcome::Reused));
    }
    let level = shared.level;
    let (buf, encoded) =
        crate::cpu::run(move || format::encode_chunk(&buf, level).map(|e| (buf, e))).await??;
    shared.give_buf(buf);
    let stored = encoded.len() as u64;
    let fresh = shared.store.put_new(&key, Bytes::from(encoded)).await?;
    shared.remember(digest);
    if fresh {
        shared.progress.add_stored(stored);
        Ok((digest, Outcome::New { stored }))
    } else {
        Ok((digest, Outcome::Reused))
    }
}
