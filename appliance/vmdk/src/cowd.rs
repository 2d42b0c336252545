//! The VMFS sparse extent (`COWD`, the `-delta.vmdk` of a vmfsSparse snapshot).
//!
//! Layout (libvmdk's format documentation): a 2048-byte header starting with `COWD`,
//! version 1, flags, capacity and grain size in sectors (32-bit), the grain directory's
//! sector and entry count; grain tables of 4096 32-bit sector numbers; 0 is unallocated. It
//! is the `KDMV` grain-directory scheme with other constants, so it reuses
//! [`SparseExtent`](crate::sparse::SparseExtent).

use std::sync::Arc;

use crate::error::{Result, VmdkError};
use crate::io::ByteSource;
use crate::sparse::{read, SparseExtent, SparseHeader};
use crate::SECTOR;

/// `COWD` as a little-endian u32.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// Entries per COWD grain table.
pub const COWD_GTES: u32 = 4096;

/// The COWD header fields the reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CowdHeader {
    /// Format version (1).
    pub version: u32,
    /// Flags (3 on ESX).
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Grain directory start, in sectors.
    pub gd_offset: u64,
    /// Grain directory entries.
    pub gd_entries: u64,
    /// Next free sector.
    pub free_sector: u32,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl CowdHeader {
    /// Parses the first sector.
    pub fn parse(file: &str, b: &[u8]) -> Result<CowdHeader> {
        if b.len() < 32 || le32(b, 0) != COWD_MAGIC {
            return Err(VmdkError::header(file, "no COWD magic"));
        }
        let h = CowdHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: u64::from(le32(b, 12)),
            grain_size: u64::from(le32(b, 16)),
            gd_offset: u64::from(le32(b, 20)),
            gd_entries: u64::from(le32(b, 24)),
            free_sector: le32(b, 28),
        };
        if h.version != 1 {
            return Err(VmdkError::header(
                file,
                format!("COWD version {}", h.version),
            ));
        }
        if h.grain_size == 0 || !h.grain_size.is_power_of_two() || h.grain_size > 1 << 16 {
            return Err(VmdkError::header(
                file,
                format!("grain size {}", h.grain_size),
            ));
        }
        Ok(h)
    }

    /// Serialises the header (2048 bytes) for test images and tools.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        let put = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put(&mut b, 0, COWD_MAGIC);
        put(&mut b, 4, self.version);
        put(&mut b, 8, self.flags);
        put(&mut b, 12, self.capacity as u32);
        put(&mut b, 16, self.grain_size as u32);
        put(&mut b, 20, self.gd_offset as u32);
        put(&mut b, 24, self.gd_entries as u32);
        put(&mut b, 28, self.free_sector);
        b
    }
}

/// Opens a COWD extent.
pub async fn open(src: Arc<dyn ByteSource>) -> Result<SparseExtent> {
    let name = src.name().to_string();
    let file_len = src
        .len()
        .await
        .map_err(|e| VmdkError::io(format!("length of {name}"), e))?;
    let head = read(&*src, 0, file_len.min(SECTOR) as usize).await?;
    let h = CowdHeader::parse(&name, &head)?;
    let hdr = SparseHeader {
        version: 1,
        flags: 0,
        capacity: h.capacity,
        grain_size: h.grain_size,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: COWD_GTES,
        rgd_offset: 0,
        gd_offset: h.gd_offset,
        overhead: 0,
        unclean_shutdown: false,
        compress_algorithm: 0,
    };
    // Entries past the header's count are unallocated; more than the capacity needs are
    // ignored.
    let entries = h.gd_entries.min(hdr.gd_entries());
    SparseExtent::open_with(src, hdr, file_len, entries).await
}
