//! The SESparse extent (`-sesparse.vmdk`, the snapshot format of VMFS6 and disks over
//! 2 TiB).
//!
//! Layout, as qemu's `block/vmdk.c` documents it (VMware publishes none): a 512-byte
//! constant header (magic `0xcafebabe`, version `0x200000001`, capacity, grain size 8
//! sectors, grain-table size 64 sectors, then offset/size pairs in sectors for the volatile
//! header, journal, grain directory, grain tables, free bitmap, back map and grains), a
//! volatile header (magic `0xcafecafe`, `replay_journal` must be 0). Directory entries are
//! 64-bit: 0 unallocated, else `0x10000000_<table index>`. Table entries are 64-bit with a
//! type nibble: 0 unallocated, 1 unmapped and 2 zero (both read as zeros), 3 allocated with
//! the grain number split as `((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0xffff_ffff_ffff) << 12)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Result, VmdkError};
use crate::io::ByteSource;
use crate::sparse::{push_run, read};
use crate::{Alloc, SECTOR};

/// Constant header magic.
pub const CONST_MAGIC: u64 = 0xcafe_babe;
/// Volatile header magic.
pub const VOLATILE_MAGIC: u64 = 0xcafe_cafe;
/// The only version in the field.
pub const VERSION: u64 = 0x0000_0002_0000_0001;
/// Grain size in sectors (4 KiB).
pub const GRAIN_SECTORS: u64 = 8;
/// Grain table size in sectors (4096 entries of 8 bytes).
pub const GT_SECTORS: u64 = 64;
const GTES: u64 = GT_SECTORS * SECTOR / 8;
const GT_CACHE_LIMIT: usize = 4096;

/// True when `head` starts with the constant header magic.
pub fn is_sesparse(head: &[u8]) -> bool {
    head.len() >= 8 && head[..8] == CONST_MAGIC.to_le_bytes()
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The constant header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeSparseHeader {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Volatile header (sectors).
    pub volatile_offset: u64,
    /// Volatile header size.
    pub volatile_size: u64,
    /// Journal header (sectors).
    pub journal_header_offset: u64,
    /// Journal header size.
    pub journal_header_size: u64,
    /// Journal (sectors).
    pub journal_offset: u64,
    /// Journal size.
    pub journal_size: u64,
    /// Grain directory (sectors).
    pub gd_offset: u64,
    /// Grain directory size (sectors).
    pub gd_size: u64,
    /// Grain tables (sectors).
    pub gt_offset: u64,
    /// Grain tables size (sectors).
    pub gt_size: u64,
    /// Free bitmap (sectors).
    pub free_bitmap_offset: u64,
    /// Free bitmap size.
    pub free_bitmap_size: u64,
    /// Back map (sectors).
    pub backmap_offset: u64,
    /// Back map size.
    pub backmap_size: u64,
    /// Grains (sectors).
    pub grains_offset: u64,
    /// Grains size (sectors).
    pub grains_size: u64,
}

impl SeSparseHeader {
    /// Parses and checks the constant header sector.
    pub fn parse(file: &str, b: &[u8]) -> Result<SeSparseHeader> {
        if b.len() < 512 || !is_sesparse(b) {
            return Err(VmdkError::header(file, "no SESparse magic"));
        }
        let version = le64(b, 8);
        if version != VERSION {
            return Err(VmdkError::Unsupported(format!(
                "{file}: SESparse version {version:#x}"
            )));
        }
        if le64(b, 24) != GRAIN_SECTORS || le64(b, 32) != GT_SECTORS {
            return Err(VmdkError::Unsupported(format!(
                "{file}: SESparse grain size {} / table size {}",
                le64(b, 24),
                le64(b, 32)
            )));
        }
        if le64(b, 40) != 0 {
            return Err(VmdkError::Unsupported(format!("{file}: SESparse flags")));
        }
        let f = |i: usize| le64(b, 80 + 8 * i);
        let h = SeSparseHeader {
            capacity: le64(b, 16),
            volatile_offset: f(0),
            volatile_size: f(1),
            journal_header_offset: f(2),
            journal_header_size: f(3),
            journal_offset: f(4),
            journal_size: f(5),
            gd_offset: f(6),
            gd_size: f(7),
            gt_offset: f(8),
            gt_size: f(9),
            free_bitmap_offset: f(10),
            free_bitmap_size: f(11),
            backmap_offset: f(12),
            backmap_size: f(13),
            grains_offset: f(14),
            grains_size: f(15),
        };
        if h.capacity.checked_mul(SECTOR).is_none() {
            return Err(VmdkError::header(file, format!("capacity {}", h.capacity)));
        }
        Ok(h)
    }

    /// Serialises the constant header (for test images and tools).
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        let vals = [
            CONST_MAGIC,
            VERSION,
            self.capacity,
            GRAIN_SECTORS,
            GT_SECTORS,
            0,
            0,
            0,
            0,
            0,
            self.volatile_offset,
            self.volatile_size,
            self.journal_header_offset,
            self.journal_header_size,
            self.journal_offset,
            self.journal_size,
            self.gd_offset,
            self.gd_size,
            self.gt_offset,
            self.gt_size,
            self.free_bitmap_offset,
            self.free_bitmap_size,
            self.backmap_offset,
            self.backmap_size,
            self.grains_offset,
            self.grains_size,
        ];
        for (i, v) in vals.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    Unallocated,
    Zero,
    At(u64),
}

/// An opened SESparse extent.
#[derive(Debug)]
pub struct SeSparseExtent {
    src: Arc<dyn ByteSource>,
    name: String,
    file_len: u64,
    hdr: SeSparseHeader,
    gd: Vec<u64>,
    gt_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

impl SeSparseExtent {
    /// Opens and checks a SESparse extent, loading its grain directory.
    pub async fn open(src: Arc<dyn ByteSource>) -> Result<SeSparseExtent> {
        let name = src.name().to_string();
        let file_len = src
            .len()
            .await
            .map_err(|e| VmdkError::io(format!("length of {name}"), e))?;
        let hdr = SeSparseHeader::parse(&name, &read(&*src, 0, 512).await?)?;
        let vo = hdr
            .volatile_offset
            .checked_mul(SECTOR)
            .filter(|o| o.checked_add(SECTOR).is_some_and(|e| e <= file_len))
            .ok_or_else(|| VmdkError::header(&name, "volatile header outside the file"))?;
        let vol = read(&*src, vo, 512).await?;
        if le64(&vol, 0) != VOLATILE_MAGIC {
            return Err(VmdkError::header(&name, "bad volatile header magic"));
        }
        if le64(&vol, 24) != 0 {
            return Err(VmdkError::Unsupported(format!(
                "{name}: the journal needs replaying (dirty SESparse)"
            )));
        }
        let needed = hdr.capacity.div_ceil(GRAIN_SECTORS).div_ceil(GTES);
        let have = hdr.gd_size.saturating_mul(SECTOR / 8);
        let entries = needed.min(have);
        let gd_bytes = entries * 8;
        let gd = if entries == 0 {
            Vec::new()
        } else {
            let start = hdr
                .gd_offset
                .checked_mul(SECTOR)
                .filter(|s| s.checked_add(gd_bytes).is_some_and(|e| e <= file_len))
                .ok_or_else(|| {
                    VmdkError::header(
                        &name,
                        format!("grain directory of {entries} entries is outside the file"),
                    )
                })?;
            let raw = read(&*src, start, gd_bytes as usize).await?;
            raw.chunks_exact(8).map(|c| le64(c, 0)).collect()
        };
        Ok(SeSparseExtent {
            src,
            name,
            file_len,
            hdr,
            gd,
            gt_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.hdr.capacity * SECTOR
    }

    async fn table(&self, t: u64) -> Result<Option<Arc<Vec<u64>>>> {
        let Some(&e) = usize::try_from(t).ok().and_then(|i| self.gd.get(i)) else {
            return Ok(None);
        };
        if e == 0 {
            return Ok(None);
        }
        if e & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
            return Err(VmdkError::corrupt(
                &self.name,
                format!("grain directory entry {t} is {e:#x}"),
            ));
        }
        if let Ok(c) = self.gt_cache.lock() {
            if let Some(x) = c.get(&t) {
                return Ok(Some(x.clone()));
            }
        }
        let idx = e & 0xffff_ffff;
        let start = idx
            .checked_mul(GT_SECTORS)
            .and_then(|s| s.checked_add(self.hdr.gt_offset))
            .and_then(|s| s.checked_mul(SECTOR))
            .filter(|s| {
                s.checked_add(GT_SECTORS * SECTOR)
                    .is_some_and(|e| e <= self.file_len)
            })
            .ok_or_else(|| {
                VmdkError::corrupt(
                    &self.name,
                    format!("grain table {idx} is past the end of the file"),
                )
            })?;
        let raw = read(&*self.src, start, (GT_SECTORS * SECTOR) as usize).await?;
        let v: Arc<Vec<u64>> = Arc::new(raw.chunks_exact(8).map(|c| le64(c, 0)).collect());
        if let Ok(mut c) = self.gt_cache.lock() {
            if c.len() >= GT_CACHE_LIMIT {
                c.clear();
            }
            c.insert(t, v.clone());
        }
        Ok(Some(v))
    }

    async fn grain(&self, g: u64) -> Result<Grain> {
        let Some(t) = self.table(g / GTES).await? else {
            return Ok(Grain::Unallocated);
        };
        let e = t.get((g % GTES) as usize).copied().unwrap_or(0);
        Ok(match e >> 60 {
            0 if e == 0 => Grain::Unallocated,
            1 | 2 => Grain::Zero,
            3 => {
                let n = ((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0x0000_ffff_ffff_ffff) << 12);
                let off = n
                    .checked_mul(GRAIN_SECTORS)
                    .and_then(|s| s.checked_add(self.hdr.grains_offset))
                    .and_then(|s| s.checked_mul(SECTOR))
                    .filter(|o| *o < self.file_len)
                    .ok_or_else(|| {
                        VmdkError::corrupt(
                            &self.name,
                            format!("grain {g} points past the end of the file"),
                        )
                    })?;
                Grain::At(off)
            }
            _ => {
                return Err(VmdkError::corrupt(
                    &self.name,
                    format!("grain table entry {e:#x} for grain {g}"),
                ))
            }
        })
    }

    /// Allocation of `[off, off+len)` (extent-relative).
    pub async fn map(&self, off: u64, len: u64) -> Result<Vec<(u64, u64, Alloc)>> {
        let gb = GRAIN_SECTORS * SECTOR;
        let cap = self.capacity();
        let end = off + len;
        let mut out = Vec::new();
        let mut pos = off;
        while pos < end {
            if pos >= cap {
                push_run(&mut out, pos, end - pos, Alloc::Zero);
                break;
            }
            let g = pos / gb;
            let (kind, next) = if self.table(g / GTES).await?.is_none() {
                (Alloc::Unallocated, (g / GTES + 1) * GTES * gb)
            } else {
                let k = match self.grain(g).await? {
                    Grain::Unallocated => Alloc::Unallocated,
                    Grain::Zero => Alloc::Zero,
                    Grain::At(_) => Alloc::Data,
                };
                (k, (g + 1) * gb)
            };
            let next = next.min(end).min(cap.max(pos + 1));
            push_run(&mut out, pos, next - pos, kind);
            pos = next;
        }
        Ok(out)
    }

    /// Reads `[off, off+buf.len())`; returns the unallocated ranges (zeroed).
    pub async fn read(&self, off: u64, buf: &mut [u8]) -> Result<Vec<(u64, u64)>> {
        let gb = GRAIN_SECTORS * SECTOR;
        let cap = self.capacity();
        let end = off + buf.len() as u64;
        let mut holes: Vec<(u64, u64)> = Vec::new();
        let mut runs: Vec<(u64, usize, usize)> = Vec::new();
        let mut pos = off;
        while pos < end {
            let dst = (pos - off) as usize;
            if pos >= cap {
                buf[dst..].fill(0);
                break;
            }
            let g = pos / gb;
            let n = (gb - pos % gb).min(end - pos);
            match self.grain(g).await? {
                Grain::Unallocated => {
                    buf[dst..dst + n as usize].fill(0);
                    match holes.last_mut() {
                        Some(h) if h.0 + h.1 == pos => h.1 += n,
                        _ => holes.push((pos, n)),
                    }
                }
                Grain::Zero => buf[dst..dst + n as usize].fill(0),
                Grain::At(fo) => {
                    let at = fo + pos % gb;
                    match runs.last_mut() {
                        Some(r) if r.0 + r.2 as u64 == at && r.1 + r.2 == dst => r.2 += n as usize,
                        _ => runs.push((at, dst, n as usize)),
                    }
                }
            }
            pos += n;
        }
        for (at, dst, n) in runs {
            if at + n as u64 > self.file_len {
                return Err(VmdkError::corrupt(
                    &self.name,
                    format!("grain data at {at} is past the end of the file"),
                ));
            }
            let data = read(&*self.src, at, n).await?;
            buf[dst..dst + n].copy_from_slice(&data);
        }
        Ok(holes)
    }
}

/// Builds a SESparse file (for tests and tools): `grains` maps a 4 KiB grain number to
/// its content, `zero` lists grains marked zero. Grains are stored in the order given.
pub fn build_image(capacity_sectors: u64, grains: &[(u64, Vec<u8>)], zero: &[u64]) -> Vec<u8> {
    let gb = (GRAIN_SECTORS * SECTOR) as usize;
    let gd_entries = capacity_sectors.div_ceil(GRAIN_SECTORS).div_ceil(GTES);
    let gd_sectors = (gd_entries * 8).div_ceil(SECTOR).max(1);
    let mut tables: Vec<u64> = Vec::new(); // GD index of each allocated table, in order
    for g in grains.iter().map(|(g, _)| *g).chain(zero.iter().copied()) {
        let t = g / GTES;
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    let mut h = SeSparseHeader {
        capacity: capacity_sectors,
        volatile_offset: 1,
        volatile_size: 1,
        journal_header_offset: 2,
        journal_header_size: 1,
        journal_offset: 3,
        journal_size: 1,
        gd_offset: 4,
        gd_size: gd_sectors,
        ..Default::default()
    };
    h.gt_offset = h.gd_offset + gd_sectors;
    h.gt_size = (tables.len() as u64).max(1) * GT_SECTORS;
    h.free_bitmap_offset = h.gt_offset + h.gt_size;
    h.free_bitmap_size = 1;
    h.backmap_offset = h.free_bitmap_offset + 1;
    h.backmap_size = 1;
    h.grains_offset = (h.backmap_offset + 1).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    h.grains_size = grains.len() as u64 * GRAIN_SECTORS;
    let mut f = vec![0u8; ((h.grains_offset + h.grains_size) * SECTOR) as usize];
    f[..512].copy_from_slice(&h.to_bytes());
    f[512..520].copy_from_slice(&VOLATILE_MAGIC.to_le_bytes());
    for (i, t) in tables.iter().enumerate() {
        let at = (h.gd_offset * SECTOR + t * 8) as usize;
        f[at..at + 8].copy_from_slice(&(0x1000_0000_0000_0000u64 | i as u64).to_le_bytes());
    }
    let set_gte = |f: &mut Vec<u8>, g: u64, v: u64| {
        let ti = tables.iter().position(|t| *t == g / GTES).unwrap_or(0) as u64;
        let at = ((h.gt_offset + ti * GT_SECTORS) * SECTOR + (g % GTES) * 8) as usize;
        f[at..at + 8].copy_from_slice(&v.to_le_bytes());
    };
    for (i, (g, data)) in grains.iter().enumerate() {
        let n = i as u64;
        // The split encoding of the grain number: low 12 bits in 48..60, the rest below.
        let e = 0x3000_0000_0000_0000 | ((n & 0xfff) << 48) | (n >> 12);
        set_gte(&mut f, *g, e);
        let at = ((h.grains_offset + n * GRAIN_SECTORS) * SECTOR) as usize;
        let len = data.len().min(gb);
        f[at..at + len].copy_from_slice(&data[..len]);
    }
    for (k, g) in zero.iter().enumerate() {
        set_gte(
            &mut f,
            *g,
            if k % 2 == 0 {
                0x2000_0000_0000_0000
            } else {
                0x1000_0000_0000_0000
            },
        );
    }
    f
}
