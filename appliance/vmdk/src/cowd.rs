//! The VMFS sparse extent (`COWD`, the `-delta.vmdk` of a vmfsSparse snapshot).

use std::sync::Arc;

use crate::error::{Result, VmdkError};
use crate::io::ByteSource;
use crate::Alloc;

/// `COWD`, little-endian.
pub const COWD_MAGIC: u32 = 0x4457_4f43;

/// The COWD header fields we use.
#[derive(Debug, Clone, Copy)]
pub struct CowdHeader {
    /// Capacity in sectors.
    pub capacity: u64,
}

impl CowdHeader {
    /// Parses the header sector.
    pub fn parse(file: &str, _b: &[u8]) -> Result<CowdHeader> {
        Err(VmdkError::Unsupported(format!("{file}: COWD")))
    }
}

/// An opened COWD extent.
#[derive(Debug)]
pub struct CowdExtent {
    _src: Arc<dyn ByteSource>,
}

impl CowdExtent {
    /// Opens a COWD extent.
    pub async fn open(src: Arc<dyn ByteSource>) -> Result<CowdExtent> {
        Err(VmdkError::Unsupported(format!("{}: COWD", src.name())))
    }
    /// Reads; returns unallocated ranges.
    pub async fn read(&self, _off: u64, _buf: &mut [u8]) -> Result<Vec<(u64, u64)>> {
        Err(VmdkError::Unsupported("COWD".into()))
    }
    /// Allocation map.
    pub async fn map(&self, _off: u64, _len: u64) -> Result<Vec<(u64, u64, Alloc)>> {
        Err(VmdkError::Unsupported("COWD".into()))
    }
}
