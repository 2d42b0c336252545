//! The byte-source seam: positional async reads of the files that make up a disk.
//!
//! The reader never assumes a local file: a datastore HTTPS range reader implements
//! [`ByteSource`] and [`Resolver`] the same way [`FileByteSource`] and [`DirResolver`] do.

use std::fmt::Debug;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

/// A file the reader reads by offset.
#[allow(clippy::len_without_is_empty)] // an empty file is not a case callers need
#[async_trait]
pub trait ByteSource: Send + Sync + Debug {
    /// Name for errors and logs.
    fn name(&self) -> &str;
    /// Length in bytes.
    async fn len(&self) -> std::io::Result<u64>;
    /// Exactly `len` bytes at `offset`; a short read is `UnexpectedEof`.
    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
}

/// Opens the other files of a disk (extents, parents) by the names the descriptor gives.
#[async_trait]
pub trait Resolver: Send + Sync + Debug {
    /// Opens `name` (a path relative to the resolver's root, or absolute).
    async fn open(&self, name: &str) -> std::io::Result<Arc<dyn ByteSource>>;
    /// A stable identity for `name`, used to detect loops in a snapshot chain.
    fn identity(&self, name: &str) -> String;
}

/// A local file.
#[derive(Debug, Clone)]
pub struct FileByteSource {
    file: Arc<File>,
    name: String,
    len: u64,
}

impl FileByteSource {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(FileByteSource {
            file: Arc::new(file),
            name: path.display().to_string(),
            len,
        })
    }
}

#[async_trait]
impl ByteSource for FileByteSource {
    fn name(&self) -> &str {
        &self.name
    }
    async fn len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if offset.checked_add(len as u64).is_none_or(|e| e > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} past end of {} bytes",
                    self.len
                ),
            ));
        }
        let file = self.file.clone();
        // Small metadata reads are cheaper inline than through the blocking pool.
        if len <= 64 * 1024 {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            return Ok(buf);
        }
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map(|()| buf)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Bytes in memory (tests, fuzzing, small embedded images).
#[derive(Debug, Clone)]
pub struct MemByteSource {
    name: String,
    data: Arc<Vec<u8>>,
}

impl MemByteSource {
    /// Wraps `data` under `name`.
    pub fn new(name: &str, data: Vec<u8>) -> Self {
        MemByteSource {
            name: name.to_string(),
            data: Arc::new(data),
        }
    }
}

#[async_trait]
impl ByteSource for MemByteSource {
    fn name(&self) -> &str {
        &self.name
    }
    async fn len(&self) -> std::io::Result<u64> {
        Ok(self.data.len() as u64)
    }
    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(len)
            .and_then(|end| self.data.get(start..end))
        {
            Some(s) => Ok(s.to_vec()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past end",
            )),
        }
    }
}

/// Resolves names against a local directory.
#[derive(Debug, Clone)]
pub struct DirResolver {
    root: PathBuf,
}

impl DirResolver {
    /// Names resolve relative to `root`.
    pub fn new(root: &Path) -> Self {
        DirResolver {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() && p.exists() {
            return p.to_path_buf();
        }
        if p.is_absolute() {
            // An ESXi path (/vmfs/volumes/...) of a parent copied here: try its file name.
            if let Some(f) = p.file_name() {
                return self.root.join(f);
            }
        }
        self.root.join(p)
    }
}

#[async_trait]
impl Resolver for DirResolver {
    async fn open(&self, name: &str) -> std::io::Result<Arc<dyn ByteSource>> {
        let p = self.path(name);
        Ok(Arc::new(FileByteSource::open(&p)?))
    }
    fn identity(&self, name: &str) -> String {
        let p = self.path(name);
        std::fs::canonicalize(&p).unwrap_or(p).display().to_string()
    }
}

/// Resolves names to in-memory files (tests and fuzzing).
#[derive(Debug, Clone, Default)]
pub struct MemResolver {
    files: std::collections::BTreeMap<String, MemByteSource>,
}

impl MemResolver {
    /// An empty set of files.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a file.
    pub fn insert(&mut self, name: &str, data: Vec<u8>) {
        self.files
            .insert(name.to_string(), MemByteSource::new(name, data));
    }
}

#[async_trait]
impl Resolver for MemResolver {
    async fn open(&self, name: &str) -> std::io::Result<Arc<dyn ByteSource>> {
        match self.files.get(name) {
            Some(f) => Ok(Arc::new(f.clone())),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{name}: no such file"),
            )),
        }
    }
    fn identity(&self, name: &str) -> String {
        name.to_string()
    }
}

/// Joins a name from a descriptor to the directory of the file that named it.
pub(crate) fn join_relative(base: &str, name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    match base.rfind('/') {
        Some(i) => format!("{}/{}", &base[..i], name),
        None => name.to_string(),
    }
}
