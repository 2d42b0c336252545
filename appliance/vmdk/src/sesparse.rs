//! The SESparse extent (`-sesparse.vmdk`).

use std::sync::Arc;

use crate::error::{Result, VmdkError};
use crate::io::ByteSource;
use crate::Alloc;

/// True when `head` starts with the SESparse constant header magic.
pub fn is_sesparse(head: &[u8]) -> bool {
    head.len() >= 8 && head[..8] == 0x0000_0000_cafe_babe_u64.to_le_bytes()
}

/// An opened SESparse extent.
#[derive(Debug)]
pub struct SeSparseExtent {
    _src: Arc<dyn ByteSource>,
    capacity: u64,
}

impl SeSparseExtent {
    /// Opens a SESparse extent.
    pub async fn open(src: Arc<dyn ByteSource>) -> Result<SeSparseExtent> {
        Err(VmdkError::Unsupported(format!("{}: SESparse", src.name())))
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// Reads; returns unallocated ranges.
    pub async fn read(&self, _off: u64, _buf: &mut [u8]) -> Result<Vec<(u64, u64)>> {
        Err(VmdkError::Unsupported("SESparse".into()))
    }
    /// Allocation map.
    pub async fn map(&self, _off: u64, _len: u64) -> Result<Vec<(u64, u64, Alloc)>> {
        Err(VmdkError::Unsupported("SESparse".into()))
    }
}
