//! Restore of one disk of a restore point to a sparse file, a block device, or a stream.
//!
//! Chunks are fetched in parallel and verified (CRC, then SHA-256 of the content) before a
//! byte is written. A file target is written as `<target>.ferry-partial` and renamed only
//! when complete and synced, so a failed restore never leaves a complete-looking file.
//! Zero chunks are holes in a file; a block device gets real zeros, since it may hold old
//! data; a stream gets every byte in order.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::format::{self, Digest, Index, ZERO_DIGEST};
use crate::lock::{LockKind, RepoLock};
use crate::progress::Progress;
use crate::repo::{chunk_key, Manifest};
use crate::{ArchiveError, Repository};

/// Where a restore writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A regular file, created sparse.
    File(PathBuf),
    /// An existing block device.
    Device(PathBuf),
    /// Standard output.
    Stdout,
}

impl Target {
    /// Picks the target kind for a path; `-` is standard output.
    pub fn for_path(path: &str) -> Target {
        if path == "-" {
            return Target::Stdout;
        }
        let p = PathBuf::from(path);
        match std::fs::metadata(&p) {
            Ok(m) if m.file_type().is_block_device() => Target::Device(p),
            _ => Target::File(p),
        }
    }
}

/// Checks that restoring a disk of `disk_size` bytes to `target` destroys nothing by
/// surprise, before anything is written.
///
/// A missing or empty file is fine. An existing non-empty file, or any block device, needs
/// `force`. Refused whatever `force` says: a directory, a character device, FIFO or socket
/// (use `-` for a stream), a block device that is mounted (or has a mounted partition), and
/// a block device smaller than the disk.
pub fn check_target(target: &Target, disk_size: u64, force: bool) -> Result<(), ArchiveError> {
    let (path, device) = match target {
        Target::Stdout => return Ok(()),
        Target::File(p) => (p, false),
        Target::Device(p) => (p, true),
    };
    let refuse = |why: String| ArchiveError::TargetRefused {
        target: path.display().to_string(),
        why,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !device => return Ok(()),
        Err(e) => return Err(target_err(path, e)),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(refuse(
            "is a directory: give the path of the image file to create".into(),
        ));
    }
    if ft.is_block_device() {
        if let Some(what) = mounted_device(meta.rdev()) {
            return Err(refuse(format!(
                "is a block device in use ({what} is mounted): unmount it first"
            )));
        }
        let size = device_size(path)?;
        if size < disk_size {
            return Err(refuse(format!(
                "is a block device of {size} bytes, smaller than the {disk_size}-byte disk"
            )));
        }
        if !force {
            return Err(refuse(
                "is a block device: everything on it would be overwritten; pass --force to do so"
                    .into(),
            ));
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Err(refuse(
            "is not a regular file or block device: give an image path, a block device, or - for standard output"
                .into(),
        ));
    }
    if meta.len() > 0 && !force {
        return Err(refuse(format!(
            "exists and holds {} bytes that would be replaced; pass --force to replace it",
            meta.len()
        )));
    }
    Ok(())
}

/// Size of a block device.
fn device_size(path: &Path) -> Result<u64, ArchiveError> {
    let f = File::open(path).map_err(|e| target_err(path, e))?;
    // SAFETY: lseek on a valid, owned descriptor has no memory effects.
    let end = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        return Err(target_err(path, std::io::Error::last_os_error()));
    }
    Ok(end as u64)
}

/// The mount point of the device `rdev` or of one of its partitions, if any is mounted.
fn mounted_device(rdev: u64) -> Option<String> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let mut devs = vec![format!("{major}:{minor}")];
    // Partitions of a whole disk are subdirectories of its sysfs node with a `dev` file.
    if let Ok(dir) = std::fs::read_dir(format!("/sys/dev/block/{major}:{minor}")) {
        for e in dir.flatten() {
            if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                devs.push(d.trim().to_string());
            }
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        // mount-id parent-id major:minor root mount-point ...
        let mut it = l.split_whitespace();
        let dev = it.nth(2)?;
        let point = it.nth(1)?;
        devs.iter()
            .any(|d| d == dev)
            .then(|| format!("{dev} on {point}"))
    })
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreStats {
    /// Disk size.
    pub size: u64,
    /// Bytes of data written.
    pub written: u64,
    /// Bytes of zero chunks (holes in a file).
    pub zero: u64,
    /// Chunks fetched and verified.
    pub chunks: u64,
}

/// Fetches, decodes and verifies one chunk.
pub async fn fetch_chunk(
    repo: &Repository,
    digest: Digest,
    expected_len: usize,
) -> Result<Vec<u8>, ArchiveError> {
    let key = chunk_key(&digest);
    let data = match repo.store().get(&key).await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => {
            return Err(ArchiveError::Corrupt {
                object: format!("chunk {}", format::digest_hex(&digest)),
                why: "missing from the repository".into(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let plain = crate::cpu::run(move || format::decode_chunk(&data, &digest)).await??;
    if plain.len() != expected_len {
        return Err(ArchiveError::Corrupt {
            object: format!("chunk {}", format::digest_hex(&digest)),
            why: format!("{} bytes where the index needs {expected_len}", plain.len()),
        });
    }
    Ok(plain)
}

/// Takes a shared lock so GC cannot remove chunks mid-restore; a read-only repository is
/// restored without one. Readers outside this module (VMDK and datastore restores, NBD
/// export) take it the same way.
pub async fn read_lock(repo: &Repository, purpose: &str) -> Result<Option<RepoLock>, ArchiveError> {
    match RepoLock::acquire(
        repo.store().clone(),
        LockKind::Shared,
        purpose,
        Duration::from_secs(600),
    )
    .await
    {
        Ok(l) => Ok(Some(l)),
        Err(ArchiveError::Store(ferry_storage::StoreError::PermissionDenied { .. })) => {
            tracing::warn!("repository is read-only: reading without a lock");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs `work` under the shared read lock ([`read_lock`]), releasing it afterwards.
pub async fn with_read_lock<T, E: From<ArchiveError>>(
    repo: &Repository,
    purpose: &str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let lock = read_lock(repo, purpose).await?;
    let res = work.await;
    if let Some(l) = lock {
        l.release().await?;
    }
    res
}

/// Restores disk `disk` of `manifest` to `target`.
pub async fn restore(
    repo: &Repository,
    manifest: &Manifest,
    disk: usize,
    target: &Target,
    concurrency: usize,
    progress: Arc<Progress>,
) -> Result<RestoreStats, ArchiveError> {
    with_read_lock(
        repo,
        &format!("restore of {}", manifest.id),
        restore_locked(repo, manifest, disk, target, concurrency, progress),
    )
    .await
}

async fn restore_locked(
    repo: &Repository,
    manifest: &Manifest,
    disk: usize,
    target: &Target,
    concurrency: usize,
    progress: Arc<Progress>,
) -> Result<RestoreStats, ArchiveError> {
    let index = Arc::new(repo.load_index(manifest, disk).await?);
    progress.add_total(index.disk_size);
    match target {
        Target::File(path) => restore_file(repo, &index, path, concurrency, &progress).await,
        Target::Device(path) => {
            // O_EXCL on a block device: the kernel refuses it (EBUSY) while the device or a
            // partition of it is mounted or otherwise claimed.
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_EXCL)
                .open(path)
                .map_err(|e| target_err(path, e))?;
            let f = Arc::new(f);
            let stats =
                write_positional(repo, &index, f.clone(), true, path, concurrency, &progress)
                    .await?;
            f.sync_all().map_err(|e| target_err(path, e))?;
            Ok(stats)
        }
        Target::Stdout => restore_stream(repo, &index, concurrency, &progress).await,
    }
}

fn target_err(path: &Path, e: std::io::Error) -> ArchiveError {
    ArchiveError::Target {
        target: path.display().to_string(),
        error: e,
    }
}

async fn restore_file(
    repo: &Repository,
    index: &Arc<Index>,
    path: &Path,
    concurrency: usize,
    progress: &Arc<Progress>,
) -> Result<RestoreStats, ArchiveError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".ferry-partial");
    let partial = PathBuf::from(partial);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .map_err(|e| target_err(&partial, e))?;
    f.set_len(index.disk_size)
        .map_err(|e| target_err(&partial, e))?;
    let f = Arc::new(f);
    let res = write_positional(
        repo,
        index,
        f.clone(),
        false,
        &partial,
        concurrency,
        progress,
    )
    .await;
    let res = res.and_then(|stats| {
        f.sync_all().map_err(|e| target_err(&partial, e))?;
        std::fs::rename(&partial, path).map_err(|e| target_err(path, e))?;
        Ok(stats)
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    res
}

/// Fetches chunks in parallel and hands them, in completion order, to one writer thread:
/// parallel buffered writes to one file only contend on the inode lock.
async fn write_positional(
    repo: &Repository,
    index: &Arc<Index>,
    file: Arc<File>,
    write_zeros: bool,
    path: &Path,
    concurrency: usize,
    progress: &Arc<Progress>,
) -> Result<RestoreStats, ArchiveError> {
    let mut stats = RestoreStats {
        size: index.disk_size,
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Vec<u8>)>(4);
    let writer_path = path.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
        while let Some((off, data)) = rx.blocking_recv() {
            file.write_all_at(&data, off)
                .map_err(|e| target_err(&writer_path, e))?;
        }
        Ok(())
    });
    let mut jobs = stream::iter(0..index.entries.len())
        .map(|i| {
            let index = index.clone();
            async move {
                let (off, len) = index.chunk_range(i);
                let digest = index.entries[i];
                if digest == ZERO_DIGEST {
                    let data = if write_zeros {
                        Some(vec![0u8; len])
                    } else {
                        None
                    };
                    return Ok::<_, ArchiveError>((off, len, true, data));
                }
                let data = fetch_chunk(repo, digest, len).await?;
                Ok((off, len, false, Some(data)))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut failed = None;
    while let Some(item) = jobs.next().await {
        let (off, len, zero, data) = match item {
            Ok(x) => x,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        if let Some(data) = data {
            if tx.send((off, data)).await.is_err() {
                // The writer stopped: its error is reported below.
                break;
            }
        }
        let len = len as u64;
        if zero {
            stats.zero += len;
        } else {
            stats.written += len;
            stats.chunks += 1;
            progress.add_read(len);
        }
        progress.add_done(len);
    }
    drop(tx);
    let written = writer.await?;
    if let Some(e) = failed {
        return Err(e);
    }
    written?;
    Ok(stats)
}

async fn restore_stream(
    repo: &Repository,
    index: &Arc<Index>,
    concurrency: usize,
    progress: &Arc<Progress>,
) -> Result<RestoreStats, ArchiveError> {
    let mut stats = RestoreStats {
        size: index.disk_size,
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    let mut jobs = stream::iter(0..index.entries.len())
        .map(|i| {
            let index = index.clone();
            async move {
                let (_, len) = index.chunk_range(i);
                let digest = index.entries[i];
                if digest == ZERO_DIGEST {
                    Ok::<_, ArchiveError>((vec![0u8; len], true))
                } else {
                    Ok((fetch_chunk(repo, digest, len).await?, false))
                }
            }
        })
        .buffered(concurrency.max(1));
    while let Some((data, zero)) = jobs.try_next().await? {
        out.write_all(&data)
            .map_err(|e| target_err(Path::new("<stdout>"), e))?;
        let len = data.len() as u64;
        if zero {
            stats.zero += len;
        } else {
            stats.written += len;
            stats.chunks += 1;
        }
        progress.add_done(len);
    }
    out.flush()
        .map_err(|e| target_err(Path::new("<stdout>"), e))?;
    Ok(stats)
}
