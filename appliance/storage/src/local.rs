//! The local-folder backend: one file per object.
//!
//! `put` writes `.tmp-<random>` beside the target, fsyncs it and renames it into place, so an
//! object is never visible half-written and a crash leaves only a temporary that
//! [`Store::clean_temporaries`] removes. Directories whose entries changed are remembered and
//! fsynced by [`Store::sync`], which is what makes the renames themselves durable.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{validate_key, ObjectInfo, Store, StoreError};

/// A store in a local directory (or any mounted filesystem).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    dirty_dirs: Arc<Mutex<HashSet<PathBuf>>>,
}

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
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_data()?;
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::from_io("write", key, e));
        }
        Ok(tmp)
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
            source: std::io::Error::other(e.to_string()),
        })?
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
}
