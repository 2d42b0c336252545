//! A disk of a restore point read as a [`BlockSource`]: what restore-to-VMDK, the NBD export
//! and restore into vSphere read from. Chunks are fetched and verified on demand; a small
//! cache of decoded chunks serves the many small reads that writers and NBD clients make.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::format::{Index, ZERO_DIGEST};
use crate::repo::Manifest;
use crate::restore::fetch_chunk;
use crate::source::{BlockSource, Extent, ExtentKind, SourceError};
use crate::{ArchiveError, Repository};

/// Decoded chunks kept by default (at 4 MiB chunks, 32 MiB).
pub const DEFAULT_CACHE_CHUNKS: usize = 8;

/// Decoded chunks by chunk number, and their insertion order for eviction.
type ChunkCache = (HashMap<usize, Arc<Vec<u8>>>, VecDeque<usize>);

/// One disk of a restore point.
pub struct PointSource {
    repo: Repository,
    index: Arc<Index>,
    describe: String,
    cap: usize,
    cache: Mutex<ChunkCache>,
}

impl std::fmt::Debug for PointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointSource")
            .field("describe", &self.describe)
            .finish()
    }
}

impl PointSource {
    /// Loads and checks the index of disk `disk` of `manifest`.
    pub async fn open(
        repo: Repository,
        manifest: &Manifest,
        disk: usize,
    ) -> Result<PointSource, ArchiveError> {
        let index = repo.load_index(manifest, disk).await?;
        let name = manifest
            .disks
            .get(disk)
            .map_or("?", |d| d.name.as_str())
            .to_string();
        Ok(PointSource {
            repo,
            index: Arc::new(index),
            describe: format!("restore point {} disk {disk} ({name})", manifest.id),
            cap: DEFAULT_CACHE_CHUNKS,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    /// Sets how many decoded chunks are cached.
    pub fn with_cache_chunks(mut self, n: usize) -> Self {
        self.cap = n.max(1);
        self
    }

    /// The disk's index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    async fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>, ArchiveError> {
        {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = c.0.get(&i) {
                return Ok(d.clone());
            }
        }
        let (_, len) = self.index.chunk_range(i);
        let data = Arc::new(fetch_chunk(&self.repo, self.index.entries[i], len).await?);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.0.insert(i, data.clone()).is_none() {
            c.1.push_back(i);
        }
        while c.1.len() > self.cap {
            if let Some(old) = c.1.pop_front() {
                c.0.remove(&old);
            }
        }
        Ok(data)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), SourceError> {
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.index.disk_size)
        {
            return Err(SourceError::OutOfRange {
                offset,
                len,
                size: self.index.disk_size,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl BlockSource for PointSource {
    fn size(&self) -> u64 {
        self.index.disk_size
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Option<Vec<Extent>>, SourceError> {
        self.check_range(offset, len)?;
        let cs = u64::from(self.index.chunk_size);
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let (coff, clen) = self.index.chunk_range(i);
            let stop = (coff + clen as u64).min(end);
            let kind = if self.index.entries[i] == ZERO_DIGEST {
                ExtentKind::Zero
            } else {
                ExtentKind::Data
            };
            match out.last_mut() {
                Some(last) if last.kind == kind => last.len += stop - pos,
                _ => out.push(Extent {
                    offset: pos,
                    len: stop - pos,
                    kind,
                }),
            }
            pos = stop;
        }
        Ok(Some(out))
    }

    async fn read_at(&self, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, SourceError> {
        self.check_range(offset, buf.len() as u64)?;
        let cs = u64::from(self.index.chunk_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = (pos / cs) as usize;
            let (coff, clen) = self.index.chunk_range(i);
            let within = (pos - coff) as usize;
            let n = (clen - within).min(buf.len() - done);
            if self.index.entries[i] == ZERO_DIGEST {
                buf[done..done + n].fill(0);
            } else {
                let data = self
                    .chunk(i)
                    .await
                    .map_err(|e| SourceError::Transport(Box::new(e)))?;
                buf[done..done + n].copy_from_slice(&data[within..within + n]);
            }
            done += n;
        }
        Ok(buf)
    }
}
