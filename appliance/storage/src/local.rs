//! The local-folder backend: one file per object.
//!
//! `put` writes `.tmp-<random>` beside the target, fsyncs it and renames it into place, so an
//! object is never visible half-written and a crash leaves only a temporary that
//! [`Store::clean_temporaries`] removes. Directories whose entries changed are remembered and
//! fsynced by [`Store::sync`], which is what makes the renames themselves durable.
//!
//! Objects of [`DIRECT_MIN`] bytes or more (chunks) are written with `O_DIRECT` when the
//! folder is on a local-disk filesystem (ext4, XFS, btrfs, F2FS). Every object is fsynced
//! before it is renamed anyway, so the page cache buys no write-behind: it only costs a copy
//! into freshly allocated cache pages per byte written (on the test VMs, more CPU than
//! compressing it) and evicts data that is read again (indexes, the source disk) in favour of
//! backup data that is not. Other filesystems (NFS, SMB, tmpfs, overlay, ZFS, FUSE) keep
//! buffered writes: their direct-I/O semantics differ or are missing. A filesystem that
//! refuses `O_DIRECT` after all (`EINVAL`) switches the store back to buffered writes.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{validate_key, validate_prefix, ObjectInfo, Store, StoreError};

/// A store in a local directory (or any mounted filesystem).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    dirty_dirs: Arc<Mutex<HashSet<PathBuf>>>,
    /// [`DIRECT_UNKNOWN`], [`DIRECT_ON`] or [`DIRECT_OFF`]: decided at the first large write.
    direct: Arc<AtomicU8>,
}

/// Objects at least this large are written with `O_DIRECT` where the filesystem allows.
pub const DIRECT_MIN: usize = 64 * 1024;
/// Alignment of `O_DIRECT` buffers, offsets and lengths (covers 512 and 4096-byte sectors).
const ALIGN: usize = 4096;
/// The aligned bounce buffer of each writing thread; a multiple of [`ALIGN`].
const BOUNCE: usize = 1 << 20;
const DIRECT_UNKNOWN: u8 = 0;
const DIRECT_ON: u8 = 1;
const DIRECT_OFF: u8 = 2;

impl LocalStore {
    /// A store rooted at `root`. The directory is created on the first `put`. A relative
    /// root is made absolute against the current directory, so that creating its missing
    /// ancestors has a place to stop.
    pub fn new(root: PathBuf) -> Self {
        // absolute() fails only for an empty path or when the current directory is gone;
        // then the path stays as given and the first put reports the I/O error.
        let root = std::path::absolute(&root).unwrap_or(root);
        LocalStore {
            root,
            dirty_dirs: Arc::new(Mutex::new(HashSet::new())),
            direct: Arc::new(AtomicU8::new(DIRECT_UNKNOWN)),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn mark_dirty(&self, dir: PathBuf) {
        // A poisoned lock only means another thread panicked mid-insert; the set is still usable.
        let mut set = self.dirty_dirs.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(dir);
    }

    /// Creates `dir` and its missing ancestors below the root, remembering every directory
    /// that gained an entry.
    fn ensure_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cur = dir.to_path_buf();
        while !cur.is_dir() {
            missing.push(cur.clone());
            match cur.parent() {
                Some(p) => cur = p.to_path_buf(),
                None => break,
            }
        }
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StoreError::from_io(
                        "create directory",
                        &d.to_string_lossy(),
                        e,
                    ))
                }
            }
            if let Some(p) = d.parent() {
                self.mark_dirty(p.to_path_buf());
            }
        }
        Ok(())
    }

    /// Writes a synced temporary next to `path` and returns its path.
    fn write_temp(&self, key: &str, path: &Path, data: &[u8]) -> Result<PathBuf, StoreError> {
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::InvalidKey(key.to_string()))?;
        self.ensure_dir(dir)?;
        let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let res = (|| {
            if data.len() >= DIRECT_MIN && self.use_direct(dir) {
                match write_direct(&tmp, data) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::info!(
                            "{}: the filesystem refuses O_DIRECT ({e}); using buffered writes",
                            self.root.display()
                        );
                        self.direct.store(DIRECT_OFF, Ordering::Relaxed);
                        let _ = fs::remove_file(&tmp);
                    }
                    other => return other,
                }
            }
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_data()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::from_io("write", key, e));
        }
        Ok(tmp)
    }

    /// Whether large objects go around the page cache (decided once, from `dir`'s filesystem).
    fn use_direct(&self, dir: &Path) -> bool {
        match self.direct.load(Ordering::Relaxed) {
            DIRECT_ON => true,
            DIRECT_OFF => false,
            _ => {
                let on = std::env::var_os("FERRY_BUFFERED_IO").is_none() && local_disk_fs(dir);
                self.direct
                    .store(if on { DIRECT_ON } else { DIRECT_OFF }, Ordering::Relaxed);
                on
            }
        }
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let tmp = self.write_temp(key, &path, data)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::from_io("rename", key, e));
        }
        if let Some(p) = path.parent() {
            self.mark_dirty(p.to_path_buf());
        }
        Ok(())
    }

    fn put_new_blocking(&self, key: &str, data: &[u8]) -> Result<bool, StoreError> {
        let path = self.path_of(key)?;
        if path.exists() {
            return Ok(false);
        }
        let tmp = self.write_temp(key, &path, data)?;
        // link() refuses to replace an existing name, which makes create-if-absent atomic.
        let res = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match res {
            Ok(()) => {
                if let Some(p) = path.parent() {
                    self.mark_dirty(p.to_path_buf());
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::from_io("link", key, e)),
        }
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // The directory part is joined onto the root: `..` or `/` would walk outside it.
        validate_prefix(prefix)?;
        // Start the walk at the deepest directory named completely by the prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::from_io("list", &dir.to_string_lossy(), e)),
            };
            for entry in rd {
                let entry =
                    entry.map_err(|e| StoreError::from_io("list", &dir.to_string_lossy(), e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp") {
                    continue;
                }
                let ft = entry
                    .file_type()
                    .map_err(|e| StoreError::from_io("list", &name, e))?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                if !key.starts_with(prefix) {
                    continue;
                }
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Deleted between readdir and stat: simply not listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::from_io("stat", &key, e)),
                };
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                    modified: mtime_secs(&meta),
                });
            }
        }
        Ok(out)
    }

    fn sync_blocking(&self) -> Result<(), StoreError> {
        let dirs: Vec<PathBuf> = {
            let mut set = self.dirty_dirs.lock().unwrap_or_else(|e| e.into_inner());
            set.drain().collect()
        };
        for d in &dirs {
            let res = File::open(d).and_then(|f| f.sync_all());
            if let Err(e) = res {
                // Put the rest back so a retry syncs them.
                let mut set = self.dirty_dirs.lock().unwrap_or_else(|e| e.into_inner());
                set.extend(dirs.iter().cloned());
                return Err(StoreError::from_io("sync", &d.to_string_lossy(), e));
            }
        }
        Ok(())
    }

    fn clean_blocking(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for entry in rd.flatten() {
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                if !entry.file_name().to_string_lossy().starts_with(".tmp") {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if now.saturating_sub(mtime_secs(&meta)) >= min_age_secs
                    && fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn mtime_secs(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            op: "background task",
            key: String::new(),
            error: std::io::Error::other(e.to_string()),
        })?
}

/// True when `dir` is on a filesystem whose `O_DIRECT` writes go straight to a local disk.
fn local_disk_fs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    // f_type's integer type differs between libc targets; every magic above fits in i64.
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    matches!(t, EXT4 | XFS | BTRFS | F2FS)
}

/// Writes `data` to the new file `path`, synced: the 4 KiB-aligned head with `O_DIRECT`
/// through an aligned per-thread bounce buffer, the tail (under 4 KiB) buffered.
fn write_direct(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let head = data.len() / ALIGN * ALIGN;
    BUF.with(|cell| -> std::io::Result<()> {
        let mut buf = cell.borrow_mut();
        if buf.len() < BOUNCE + ALIGN {
            buf.resize(BOUNCE + ALIGN, 0);
        }
        // A Vec of BOUNCE + ALIGN bytes holds an ALIGN-aligned window of BOUNCE bytes.
        let off = buf.as_ptr().align_offset(ALIGN);
        let window = buf
            .get_mut(off..off + BOUNCE)
            .ok_or_else(|| std::io::Error::other("no aligned window in the bounce buffer"))?;
        for piece in data[..head].chunks(BOUNCE) {
            // Every piece but the last is BOUNCE long, and head is a multiple of ALIGN, so
            // each write is aligned in memory, in the file and in length.
            window[..piece.len()].copy_from_slice(piece);
            f.write_all(&window[..piece.len()])?;
        }
        Ok(())
    })?;
    if head < data.len() {
        // The tail is not a whole sector: append it through a second, buffered descriptor.
        // fdatasync is per file, so syncing this one makes the O_DIRECT head durable too.
        let mut t = OpenOptions::new().append(true).open(path)?;
        t.write_all(&data[head..])?;
        return t.sync_data();
    }
    f.sync_data()
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || this.put_blocking(&key, &data)).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || this.put_new_blocking(&key, &data)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || {
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| StoreError::from_io("read", &key, e))
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || match fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::from_io("stat", &key, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let this = self.clone();
        let prefix = prefix.to_string();
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let this = self.clone();
        let key = key.to_string();
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(p) = path.parent() {
                    this.mark_dirty(p.to_path_buf());
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io("delete", &key, e)),
        })
        .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let this = self.clone();
        blocking(move || this.sync_blocking()).await
    }

    async fn clean_temporaries(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        let this = self.clone();
        blocking(move || this.clean_blocking(min_age_secs)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().join("repo"));
        s.put("a/b/c", Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(&s.get("a/b/c").await.unwrap()[..], b"hello");
        assert!(s.exists("a/b/c").await.unwrap());
        assert!(!s.put_new("a/b/c", Bytes::from_static(b"x")).await.unwrap());
        assert!(s.put_new("a/b/d", Bytes::from_static(b"x")).await.unwrap());
        let mut keys: Vec<_> = s
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        assert_eq!(keys, vec!["a/b/c", "a/b/d"]);
        assert_eq!(s.list("a/b/c").await.unwrap().len(), 1);
        s.sync().await.unwrap();
        s.delete("a/b/c").await.unwrap();
        s.delete("a/b/c").await.unwrap();
        assert!(s.get("a/b/c").await.unwrap_err().is_not_found());
    }

    /// Defence in depth: whatever a caller forgot to check, no key or prefix reads, writes,
    /// lists or deletes outside the root.
    #[tokio::test]
    async fn nothing_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("secret"), b"outside").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/x"), b"outside").unwrap();
        let s = LocalStore::new(dir.path().join("repo"));
        s.put("locks/l", Bytes::from_static(b"in")).await.unwrap();
        for p in [
            "locks/../../",
            "locks/../..",
            "../",
            "..",
            "/",
            "/tmp/",
            "locks//",
            "locks\\..\\..\\",
            "locks/\0",
        ] {
            let e = s.list(p).await.unwrap_err();
            assert!(matches!(e, StoreError::InvalidKey(_)), "{p:?}: {e}");
        }
        for k in [
            "../secret",
            "locks/../../secret",
            "/etc/passwd",
            "../sub/x",
            "a\0",
        ] {
            assert!(
                matches!(s.get(k).await, Err(StoreError::InvalidKey(_))),
                "{k}"
            );
            assert!(
                matches!(s.exists(k).await, Err(StoreError::InvalidKey(_))),
                "{k}"
            );
            assert!(
                matches!(s.delete(k).await, Err(StoreError::InvalidKey(_))),
                "{k}"
            );
            let b = Bytes::from_static(b"x");
            assert!(
                matches!(s.put(k, b.clone()).await, Err(StoreError::InvalidKey(_))),
                "{k}"
            );
            assert!(
                matches!(s.put_new(k, b).await, Err(StoreError::InvalidKey(_))),
                "{k}"
            );
        }
        assert_eq!(fs::read(dir.path().join("secret")).unwrap(), b"outside");
        assert_eq!(fs::read(dir.path().join("sub/x")).unwrap(), b"outside");
        assert_eq!(s.list("locks/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn temporaries_are_hidden_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().to_path_buf());
        s.put("x/y", Bytes::from_static(b"1")).await.unwrap();
        fs::write(dir.path().join("x/.tmp-dead"), b"partial").unwrap();
        assert_eq!(s.list("").await.unwrap().len(), 1);
        assert_eq!(s.clean_temporaries(0).await.unwrap(), 1);
        assert!(!dir.path().join("x/.tmp-dead").exists());
    }

    /// Sizes around every boundary of the O_DIRECT path: below DIRECT_MIN, whole sectors,
    /// a tail, several bounce windows.
    const SIZES: [usize; 8] = [
        0,
        100,
        DIRECT_MIN - 1,
        DIRECT_MIN,
        DIRECT_MIN + 1,
        BOUNCE,
        BOUNCE + ALIGN + 17,
        3 * BOUNCE + 4095,
    ];

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
            .collect()
    }

    /// On the build directory's filesystem (a real disk in CI; /tmp may be tmpfs, which
    /// refuses O_DIRECT): every size round-trips, through put and put_new.
    #[tokio::test]
    async fn large_objects_round_trip_on_a_disk_filesystem() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        let s = LocalStore::new(dir.path().join("repo"));
        for (i, len) in SIZES.into_iter().enumerate() {
            let data = pattern(len, i as u8);
            s.put(&format!("p/{i}"), Bytes::from(data.clone()))
                .await
                .unwrap();
            assert!(s
                .put_new(&format!("n/{i}"), Bytes::from(data.clone()))
                .await
                .unwrap());
            assert_eq!(
                s.get(&format!("p/{i}")).await.unwrap(),
                data,
                "put of {len}"
            );
            assert_eq!(
                s.get(&format!("n/{i}")).await.unwrap(),
                data,
                "put_new of {len}"
            );
        }
        let expect = if local_disk_fs(dir.path()) {
            DIRECT_ON
        } else {
            DIRECT_OFF
        };
        assert_eq!(s.direct.load(Ordering::Relaxed), expect);
        assert!(s
            .list("")
            .await
            .unwrap()
            .iter()
            .all(|o| !o.key.contains(".tmp")));
    }

    /// The direct writer itself, wherever O_DIRECT works here; a filesystem that refuses it
    /// must refuse with EINVAL, which is what the store falls back on.
    #[test]
    fn direct_writer_writes_exact_bytes() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        for (i, len) in SIZES.into_iter().enumerate() {
            let data = pattern(len, i as u8);
            let p = dir.path().join(format!("f{i}"));
            match write_direct(&p, &data) {
                Ok(()) => assert_eq!(fs::read(&p).unwrap(), data, "{len} bytes"),
                Err(e) => {
                    assert!(!local_disk_fs(dir.path()), "{e}");
                    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
                }
            }
        }
    }

    /// tmpfs (if this machine has /dev/shm) is not a local-disk filesystem: buffered writes.
    #[test]
    fn tmpfs_is_not_direct() {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            assert!(!local_disk_fs(shm));
        }
    }
}
