//! VM-level jobs: `backup_vm` (snapshot, read every disk at the snapshot through datastore
//! HTTPS and the VMDK reader, CBT incremental against the parent, one restore point,
//! snapshot always removed) and the restores (to a datastore as monolithicFlat through
//! `/folder` PUT, or to a local file through the engine).
//!
//! A restore point appears only when the whole job succeeded, snapshot removal included:
//! if removal fails after the engine committed the point, the point is withdrawn, so the
//! next run (which first removes stale Ferry snapshots) starts from the previous one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_archive::restore::{fetch_chunk, Target};
use ferry_archive::{
    BackupOptions, BlockSource, ChangedExtents, DiskInput, Extent, ExtentKind, Manifest, Progress,
    Repository, SourceError, ZERO_DIGEST,
};
use ferry_vmdk::{Vmdk, VmdkSource};
use futures::stream::{self, StreamExt};

use crate::client::Client;
use crate::datastore::{Datastore, DatastorePath};
use crate::error::{Result, VsphereError};
use crate::inventory::{VirtualDisk, VmInfo, VmSelector};
use crate::snapshot::{TakenSnapshot, SNAPSHOT_PREFIX};

/// What `backup_vm` does.
#[derive(Debug, Clone)]
pub struct VmBackupOptions {
    /// The VM.
    pub vm: VmSelector,
    /// Backup group; the VM name when `None`.
    pub group: Option<String>,
    /// Ask for a quiesced snapshot (falls back to crash-consistent, reported).
    pub quiesce: bool,
    /// Turn CBT on when it is off (it takes effect from this job's snapshot on).
    pub enable_cbt: bool,
    /// Use CBT for an incremental when the parent has changeIds.
    pub use_cbt: bool,
    /// Timeout of each vSphere task (snapshot create/remove, reconfigure).
    pub task_timeout: Duration,
    /// Datastore range requests in flight.
    pub in_flight: usize,
    /// Engine chunk size; the repository's when `None`.
    pub chunk_size: Option<u32>,
    /// zstd level; the repository's when `None`.
    pub compression_level: Option<i32>,
    /// How often the session is pinged while disks are read, so that vCenter's idle
    /// timeout (30 min by default) never ends it mid-job; `None` turns it off.
    pub keep_alive: Option<Duration>,
}

impl VmBackupOptions {
    /// Defaults: crash-consistent, CBT used when on, 30 min task timeout, 8 requests.
    pub fn new(vm: VmSelector) -> Self {
        VmBackupOptions {
            vm,
            group: None,
            quiesce: false,
            enable_cbt: false,
            use_cbt: true,
            task_timeout: Duration::from_secs(1800),
            in_flight: 8,
            chunk_size: None,
            compression_level: None,
            keep_alive: Some(Duration::from_secs(600)),
        }
    }
}

/// How one disk was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRead {
    /// Every allocated byte was read.
    Full {
        /// Why not incremental, when CBT could have applied.
        reason: Option<String>,
    },
    /// Only the areas CBT reported since the parent's changeId.
    Incremental {
        /// The parent's changeId.
        since: String,
        /// Bytes reported changed.
        changed_bytes: u64,
    },
}

/// Per-disk outcome.
#[derive(Debug, Clone)]
pub struct DiskReport {
    /// Name in the manifest (`disk-<key>`).
    pub name: String,
    /// The disk.
    pub disk: VirtualDisk,
    /// How it was read.
    pub read: DiskRead,
}

/// What `backup_vm` did.
#[derive(Debug, Clone)]
pub struct VmBackupReport {
    /// The committed restore point.
    pub manifest: Manifest,
    /// The VM as found.
    pub vm: VmInfo,
    /// The snapshot that was read (and removed).
    pub snapshot: TakenSnapshot,
    /// Per-disk outcome.
    pub disks: Vec<DiskReport>,
    /// Stale Ferry snapshots removed before the job.
    pub stale_snapshots_removed: Vec<String>,
    /// Body bytes fetched from the datastore.
    pub bytes_fetched: u64,
    /// Things the job log should say (fallbacks, CBT enabled, ...).
    pub notes: Vec<String>,
}

fn manifest_disk_name(d: &VirtualDisk) -> String {
    format!("disk-{}", d.key)
}

/// Backs up every disk of a VM into one restore point.
pub async fn backup_vm(
    client: &Client,
    repo: &Repository,
    opts: &VmBackupOptions,
    progress: Arc<Progress>,
) -> Result<VmBackupReport> {
    let vm = client.find_vm(&opts.vm).await?;
    let stale = client
        .remove_stale_snapshots(&vm, opts.task_timeout)
        .await?;
    let mut notes: Vec<String> = stale
        .iter()
        .map(|s| format!("removed stale snapshot {s:?} left by an earlier run"))
        .collect();
    let mut info = client.vm_info(&vm).await?;
    if opts.enable_cbt && !info.cbt_enabled {
        client.enable_cbt(&vm, opts.task_timeout).await?;
        notes.push("changed block tracking enabled; incrementals start after this backup".into());
        info = client.vm_info(&vm).await?;
    }
    let group = opts.group.clone().unwrap_or_else(|| info.name.clone());
    let parent = match repo.resolve_point("latest", Some(&group)).await {
        Ok(m) => Some(m),
        Err(ferry_archive::ArchiveError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let snap_name = format!("{SNAPSHOT_PREFIX}{now}");
    let snapshot = client
        .create_snapshot(
            &vm,
            &snap_name,
            &format!("Ferry backup of {group}; removed when the backup ends"),
            opts.quiesce,
            opts.task_timeout,
        )
        .await?;
    if let Some(q) = &snapshot.quiesce_error {
        notes.push(format!(
            "quiescing failed ({q}); the snapshot is crash-consistent"
        ));
    }
    tracing::info!(vm = %info.name, snapshot = %snapshot.name, quiesced = snapshot.quiesced, "snapshot taken");

    let ds = Datastore::new(client, &info.datacenter, opts.in_flight);
    let _pinger = opts.keep_alive.map(|every| KeepAlive::start(client, every));
    let job = read_and_store(
        client,
        repo,
        opts,
        &info,
        &snapshot,
        parent.as_ref(),
        &ds,
        &group,
        progress,
    )
    .await;
    let removal = client
        .remove_snapshot(&snapshot.snapshot, opts.task_timeout)
        .await;
    match (job, removal) {
        (Ok((manifest, disks, mut more)), Ok(())) => {
            notes.append(&mut more);
            Ok(VmBackupReport {
                manifest,
                vm: info,
                snapshot,
                disks,
                stale_snapshots_removed: stale,
                bytes_fetched: ds.stats().bytes_fetched.load(Ordering::Relaxed),
                notes,
            })
        }
        (Ok((manifest, _, _)), Err(removal)) => {
            withdraw(repo, &manifest).await;
            Err(VsphereError::JobAndCleanup {
                job: Box::new(VsphereError::Invalid(format!(
                    "backup of {} read every disk, but restore point {} was withdrawn because its snapshot stayed behind",
                    info.name, manifest.id
                ))),
                snapshot: snapshot.name,
                removal: Box::new(removal),
            })
        }
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(removal)) => Err(VsphereError::JobAndCleanup {
            job: Box::new(e),
            snapshot: snapshot.name,
            removal: Box::new(removal),
        }),
    }
}

/// Deletes a just-committed restore point (manifest first, so it disappears at once);
/// its chunks are left to GC.
async fn withdraw(repo: &Repository, m: &Manifest) {
    let store = repo.store();
    if let Err(e) = store
        .delete(&ferry_archive::repo::manifest_key(&m.id))
        .await
    {
        tracing::error!(point = %m.id, error = %e, "could not withdraw the restore point");
        return;
    }
    for d in &m.disks {
        if let Err(e) = store.delete(&d.index).await {
            tracing::warn!(index = %d.index, error = %e, "could not delete a withdrawn index");
        }
    }
    if let Err(e) = store.sync().await {
        tracing::warn!(error = %e, "sync after withdrawing a restore point failed");
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_and_store(
    client: &Client,
    repo: &Repository,
    opts: &VmBackupOptions,
    info: &VmInfo,
    snapshot: &TakenSnapshot,
    parent: Option<&Manifest>,
    ds: &Datastore,
    group: &str,
    progress: Arc<Progress>,
) -> Result<(Manifest, Vec<DiskReport>, Vec<String>)> {
    let disks = client.snapshot_disks(&snapshot.snapshot).await?;
    if disks.is_empty() {
        return Err(VsphereError::Invalid(format!(
            "VM {} has no virtual disks",
            info.name
        )));
    }
    let mut notes = Vec::new();
    let mut inputs = Vec::new();
    let mut reports = Vec::new();
    for d in &disks {
        let name = manifest_disk_name(d);
        let path = DatastorePath::parse(&d.file_name)?;
        let resolver = Arc::new(ds.resolver(&path));
        let vmdk = Vmdk::open(resolver, &path.path).await?;
        if vmdk.size() != d.capacity {
            notes.push(format!(
                "{name}: VMDK says {} bytes, vSphere says {}; the VMDK size is used",
                vmdk.size(),
                d.capacity
            ));
        }
        let (changed, read) = plan_cbt(client, opts, info, snapshot, parent, d, &name).await;
        let mut source: Arc<dyn BlockSource> = Arc::new(VmdkSource::new(vmdk));
        // A full read of a CBT disk asks vSphere for its allocated areas ("*"), so thin
        // and sparse regions are never fetched.
        if changed.is_none() && opts.use_cbt && info.cbt_enabled {
            match client
                .query_changed_areas(&info.moref, &snapshot.snapshot, d.key, d.capacity, "*")
                .await
            {
                Ok(alloc) => {
                    tracing::info!(disk = %name, allocated = alloc.total(), "allocation map from CBT");
                    source = Arc::new(AllocatedSource {
                        inner: source,
                        alloc,
                    });
                }
                Err(e) => notes.push(format!(
                    "{name}: no allocation map from CBT ({e}); every byte is read"
                )),
            }
        }
        if let DiskRead::Full { reason: Some(r) } = &read {
            tracing::warn!(disk = %name, reason = %r, "full read");
            notes.push(format!("{name}: full read: {r}"));
        }
        let mut meta = BTreeMap::new();
        meta.insert("device_key".into(), d.key.to_string());
        meta.insert("label".into(), d.label.clone());
        meta.insert("file".into(), d.file_name.clone());
        meta.insert("capacity".into(), d.capacity.to_string());
        meta.insert("backing".into(), d.backing_type.clone());
        meta.insert("controller_key".into(), d.controller_key.to_string());
        meta.insert("unit_number".into(), d.unit_number.to_string());
        meta.insert("controller_type".into(), d.controller_type.clone());
        meta.insert("controller_bus".into(), d.controller_bus.to_string());
        meta.insert("transport".into(), "https".into());
        inputs.push(DiskInput {
            name: name.clone(),
            source,
            changed,
            change_id: d.change_id.clone(),
            meta,
        });
        reports.push(DiskReport {
            name,
            disk: d.clone(),
            read,
        });
    }
    let mut bo = BackupOptions::new(group);
    bo.parent = parent.map(|p| p.id.clone());
    bo.chunk_size = opts.chunk_size;
    bo.compression_level = opts.compression_level;
    bo.concurrency = bo.concurrency.max(opts.in_flight * 2);
    let m = &mut bo.meta;
    m.insert("source".into(), "vsphere".into());
    m.insert(
        "vcenter".into(),
        client.url().host_str().unwrap_or("").into(),
    );
    m.insert("vm.name".into(), info.name.clone());
    m.insert("vm.moref".into(), info.moref.value.clone());
    m.insert("vm.instance_uuid".into(), info.instance_uuid.clone());
    m.insert("vm.bios_uuid".into(), info.bios_uuid.clone());
    m.insert("vm.power_state".into(), info.power_state.clone());
    m.insert("vm.guest_id".into(), info.guest_id.clone());
    m.insert("vm.num_cpu".into(), info.num_cpu.to_string());
    m.insert("vm.memory_mb".into(), info.memory_mb.to_string());
    m.insert("vm.firmware".into(), info.firmware.clone());
    m.insert("datacenter".into(), info.datacenter.clone());
    m.insert("snapshot".into(), snapshot.name.clone());
    m.insert("snapshot.quiesced".into(), snapshot.quiesced.to_string());
    let manifest = ferry_archive::backup(repo, inputs, &bo, progress).await?;
    Ok((manifest, reports, notes))
}

/// A source whose allocation is narrowed to the areas vSphere reports allocated.
struct AllocatedSource {
    inner: Arc<dyn BlockSource>,
    alloc: ChangedExtents,
}

#[async_trait::async_trait]
impl BlockSource for AllocatedSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn describe(&self) -> String {
        format!("{} (CBT allocation map)", self.inner.describe())
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Option<Vec<Extent>>, SourceError> {
        let end = offset.saturating_add(len);
        let inner = self
            .inner
            .allocation(offset, len)
            .await?
            .unwrap_or_else(|| {
                vec![Extent {
                    offset,
                    len,
                    kind: ExtentKind::Data,
                }]
            });
        Ok(Some(narrow(&inner, self.alloc.ranges(), offset, end)))
    }

    async fn changed(&self) -> Result<Option<ChangedExtents>, SourceError> {
        self.inner.changed().await
    }

    async fn read_at(&self, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>, SourceError> {
        self.inner.read_at(offset, buf).await
    }
}

/// Data only where `inner` says data and `alloc` covers it; zero elsewhere. The result
/// covers `[start, end)` in order, with runs of one kind merged.
fn narrow(inner: &[Extent], alloc: &[std::ops::Range<u64>], start: u64, end: u64) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut push = |o: u64, e: u64, kind: ExtentKind| {
        if e <= o {
            return;
        }
        match out.last_mut() {
            Some(l) if l.kind == kind && l.offset + l.len == o => l.len += e - o,
            _ => out.push(Extent {
                offset: o,
                len: e - o,
                kind,
            }),
        }
    };
    let mut pos = start;
    for x in inner {
        let (xs, xe) = (x.offset.max(start), (x.offset + x.len).min(end));
        if xe <= xs {
            continue;
        }
        push(pos, xs, ExtentKind::Zero);
        if x.kind == ExtentKind::Zero {
            push(xs, xe, ExtentKind::Zero);
        } else {
            let mut p = xs;
            let first = alloc.partition_point(|r| r.end <= xs);
            for r in alloc[first..].iter().take_while(|r| r.start < xe) {
                let (rs, re) = (r.start.max(xs), r.end.min(xe));
                push(p, rs, ExtentKind::Zero);
                push(rs, re, ExtentKind::Data);
                p = re;
            }
            push(p, xe, ExtentKind::Zero);
        }
        pos = xe;
    }
    push(pos, end, ExtentKind::Zero);
    out
}

/// Decides how a disk is read: CBT areas since the parent's changeId, or a full read.
async fn plan_cbt(
    client: &Client,
    opts: &VmBackupOptions,
    info: &VmInfo,
    snapshot: &TakenSnapshot,
    parent: Option<&Manifest>,
    d: &VirtualDisk,
    name: &str,
) -> (Option<ChangedExtents>, DiskRead) {
    let full = |r: &str| {
        (
            None,
            DiskRead::Full {
                reason: Some(r.to_string()),
            },
        )
    };
    if !opts.use_cbt {
        return (None, DiskRead::Full { reason: None });
    }
    let Some(parent) = parent else {
        return (None, DiskRead::Full { reason: None });
    };
    if d.change_id.is_none() {
        return full("the disk has no changeId (CBT off or not yet active)");
    }
    let Some(pd) = parent.disks.iter().find(|p| p.name == name) else {
        return full("the parent restore point has no such disk");
    };
    let Some(since) = pd.change_id.clone() else {
        return full("the parent restore point has no changeId for it");
    };
    if pd.size != d.capacity {
        return full("the disk was resized since the parent");
    }
    match client
        .query_changed_areas(&info.moref, &snapshot.snapshot, d.key, d.capacity, &since)
        .await
    {
        Ok(c) => {
            let changed_bytes = c.total();
            (
                Some(c),
                DiskRead::Incremental {
                    since,
                    changed_bytes,
                },
            )
        }
        Err(e) => full(&format!(
            "QueryChangedDiskAreas since {since:?} was rejected: {e}"
        )),
    }
}

/// Pings the session in the background until dropped. Datastore reads carry the session
/// cookie but do not all count as activity; a failed ping is logged and the next call
/// logs in again anyway.
struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    fn start(client: &Client, every: Duration) -> KeepAlive {
        let client = client.clone();
        KeepAlive(tokio::spawn(async move {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                t.tick().await;
                match client.keep_alive().await {
                    Ok(()) => tracing::debug!("vSphere session kept alive"),
                    Err(e) => tracing::warn!(error = %e, "vSphere keep-alive failed"),
                }
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Restores disk `disk` of `manifest` to a local sparse raw file through the engine.
pub async fn restore_disk_to_file(
    repo: &Repository,
    manifest: &Manifest,
    disk: usize,
    path: &Path,
    progress: Arc<Progress>,
) -> Result<ferry_archive::restore::RestoreStats> {
    Ok(ferry_archive::restore::restore(
        repo,
        manifest,
        disk,
        &Target::File(path.to_path_buf()),
        8,
        progress,
    )
    .await?)
}

/// The descriptor of a monolithicFlat disk whose extent is `flat_name`.
pub fn monolithic_flat_descriptor(size: u64, flat_name: &str) -> String {
    let sectors = size.div_ceil(512);
    // Geometry as VMware writes it for SCSI disks: 255 heads, 63 sectors per track.
    let cylinders = (sectors / (255 * 63)).clamp(1, 65535);
    let cid: u32 = rand_cid();
    format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW {sectors} FLAT \"{flat_name}\" 0\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.virtualHWVersion = \"13\"\n"
    )
}

fn rand_cid() -> u32 {
    let t = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    // Any value except the "no parent" marker will do; the low bits of the clock suffice.
    let v = (t & 0xffff_fffe) as u32;
    v.max(1)
}

/// Restores disk `disk` of `manifest` into a datastore as a monolithicFlat pair:
/// `target` (the descriptor, `[ds] dir/name.vmdk`) and `name-flat.vmdk`, streamed through
/// `/folder` PUT. Returns the bytes uploaded.
pub async fn restore_disk_to_datastore(
    client: &Client,
    repo: &Repository,
    manifest: &Manifest,
    disk: usize,
    datacenter: &str,
    target: &DatastorePath,
    progress: Arc<Progress>,
) -> Result<u64> {
    let file = target.path.rsplit('/').next().unwrap_or(&target.path);
    let stem = file
        .strip_suffix(".vmdk")
        .ok_or_else(|| VsphereError::Invalid(format!("{target}: the target must end in .vmdk")))?;
    let flat_name = format!("{stem}-flat.vmdk");
    let flat = target.sibling(&flat_name);
    let purpose = format!("restore of {} to {target}", manifest.id);
    ferry_archive::restore::with_read_lock(repo, &purpose, async {
    let index = Arc::new(repo.load_index(manifest, disk).await?);
    let size = index.disk_size;
    progress.total.fetch_add(size, Ordering::Relaxed);
    let ds = Datastore::new(client, datacenter, 4);

    // Chunks are fetched and verified in parallel, and uploaded in order as one body.
    let repo2 = repo.clone();
    let idx = index.clone();
    let prog = progress.clone();
    let chunks = stream::iter(0..index.entries.len())
        .map(move |i| {
            let repo = repo2.clone();
            let idx = idx.clone();
            let prog = prog.clone();
            async move {
                let (_, len) = idx.chunk_range(i);
                let digest = idx.entries[i];
                let data = if digest == ZERO_DIGEST {
                    vec![0u8; len]
                } else {
                    fetch_chunk(&repo, digest, len).await?
                };
                prog.done.fetch_add(len as u64, Ordering::Relaxed);
                Ok::<_, ferry_archive::ArchiveError>(bytes::Bytes::from(data))
            }
        })
        .buffered(8);
    let body = reqwest::Body::wrap_stream(chunks);
    ds.put(&flat, body, size).await?;
    ds.put_bytes(
        target,
        monolithic_flat_descriptor(size, &flat_name).into_bytes(),
    )
    .await?;
    tracing::info!(point = %manifest.id, disk, target = %target, "disk restored to the datastore");
    Ok(size)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn narrow_covers_and_only_keeps_allocated_data(
            cuts in proptest::collection::vec(0u64..1000, 0..8),
            alloc in proptest::collection::vec((0u64..1000, 1u64..200), 0..6),
        ) {
            let mut cuts = cuts;
            cuts.extend([0, 1000]);
            cuts.sort_unstable();
            cuts.dedup();
            let inner: Vec<Extent> = cuts.windows(2).enumerate().map(|(i, w)| Extent {
                offset: w[0],
                len: w[1] - w[0],
                kind: if i % 2 == 0 { ExtentKind::Data } else { ExtentKind::Zero },
            }).collect();
            let alloc = ChangedExtents::new(alloc.into_iter().map(|(s, l)| s..s + l).collect());
            let out = narrow(&inner, alloc.ranges(), 0, 1000);
            let mut pos = 0;
            for e in &out {
                proptest::prop_assert_eq!(e.offset, pos);
                pos += e.len;
                for b in [e.offset, e.offset + e.len - 1] {
                    let data_in = inner.iter().any(|x| x.kind == ExtentKind::Data && x.offset <= b && b < x.offset + x.len);
                    let want = data_in && alloc.intersects(b, b + 1);
                    proptest::prop_assert_eq!(e.kind == ExtentKind::Data, want);
                }
            }
            proptest::prop_assert_eq!(pos, 1000);
        }
    }

    #[tokio::test]
    async fn descriptor_opens_with_the_vmdk_reader() {
        let mut r = ferry_vmdk::MemResolver::new();
        r.insert(
            "d.vmdk",
            monolithic_flat_descriptor(3 << 20, "d-flat.vmdk").into_bytes(),
        );
        r.insert("d-flat.vmdk", vec![7u8; 3 << 20]);
        let v = Vmdk::open(Arc::new(r), "d.vmdk").await.unwrap();
        assert_eq!(v.size(), 3 << 20);
        let mut b = vec![0u8; 16];
        v.read_at(1 << 20, &mut b).await.unwrap();
        assert_eq!(b, vec![7u8; 16]);
    }
}
