//! [`VmdkSource`]: an opened VMDK as the backup engine's [`BlockSource`].

use std::sync::Arc;

use async_trait::async_trait;
use ferry_archive::{BlockSource, Extent, ExtentKind, SourceError};

use crate::disk::Vmdk;
use crate::error::VmdkError;
use crate::Alloc;

/// A VMDK (with its chain) as a [`BlockSource`]. Zero and unallocated ranges are holes.
#[derive(Debug, Clone)]
pub struct VmdkSource {
    disk: Arc<Vmdk>,
}

impl VmdkSource {
    /// Wraps an opened disk.
    pub fn new(disk: Vmdk) -> Self {
        VmdkSource {
            disk: Arc::new(disk),
        }
    }

    /// Opens a local VMDK (descriptor or monolithic file) with its snapshot chain.
    pub async fn open_path(path: &std::path::Path) -> Result<Self, VmdkError> {
        Ok(Self::new(Vmdk::open_path(path).await?))
    }

    /// The disk.
    pub fn disk(&self) -> &Vmdk {
        &self.disk
    }
}

fn to_source(e: VmdkError) -> SourceError {
    match e {
        VmdkError::OutOfRange { offset, len, size } => {
            SourceError::OutOfRange { offset, len, size }
        }
        VmdkError::Io { what, error } => SourceError::Io { what, error },
        e => SourceError::Transport(Box::new(e)),
    }
}

#[async_trait]
impl BlockSource for VmdkSource {
    fn size(&self) -> u64 {
        self.disk.size()
    }

    fn describe(&self) -> String {
        format!(
            "vmdk {} ({}, {} layer(s))",
            self.disk.name(),
            self.disk.descriptor().create_type,
            self.disk.chain_len()
        )
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Option<Vec<Extent>>, SourceError> {
        let runs = self.disk.map(offset, len).await.map_err(to_source)?;
        let mut out: Vec<Extent> = Vec::with_capacity(runs.len());
        for r in runs {
            let kind = match r.kind {
                Alloc::Data => ExtentKind::Data,
                Alloc::Zero | Alloc::Unallocated => ExtentKind::Zero,
            };
            match out.last_mut() {
                Some(l) if l.kind == kind && l.offset + l.len == r.offset => l.len += r.len,
                _ => out.push(Extent {
                    offset: r.offset,
                    len: r.len,
                    kind,
                }),
            }
        }
        Ok(Some(out))
    }

    async fn read_at(&self, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>, SourceError> {
        self.disk
            .read_owned(offset, buf.len())
            .await
            .map_err(to_source)
    }
}
