//! The hosted sparse extent (`KDMV`): monolithicSparse, twoGbMaxExtentSparse and
//! streamOptimized. Owns header parsing, the grain directory, the grain-table cache and
//! grain reads, including compressed grains with markers and the footer GD of a stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Result, VmdkError};
use crate::io::ByteSource;
use crate::{Alloc, SECTOR};

/// `KDMV`, little-endian.
pub const KDMV_MAGIC: u32 = 0x564d_444b;
/// The grain directory is in the footer (streamOptimized).
pub const GD_AT_END: u64 = u64::MAX;
/// Flag: newline test is valid.
pub const FLAG_NL_TEST: u32 = 1;
/// Flag: the redundant grain directory is used.
pub const FLAG_RGD: u32 = 1 << 1;
/// Flag: GT entry 1 means a zeroed grain.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the file has markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// Marker types.
pub const MARKER_EOS: u32 = 0;
/// Grain table marker.
pub const MARKER_GT: u32 = 1;
/// Grain directory marker.
pub const MARKER_GD: u32 = 2;
/// Footer marker.
pub const MARKER_FOOTER: u32 = 3;

/// Largest grain we accept (bounds per-grain buffers).
const MAX_GRAIN_SECTORS: u64 = 1 << 16;
/// Largest grain table we accept.
const MAX_GTES: u32 = 1 << 16;
/// Grain tables kept in memory per extent before the cache is reset.
const GT_CACHE_LIMIT: usize = 8192;
/// Compressed grains further apart than this in the file are read separately.
const COALESCE_GAP: u64 = 1 << 20;

/// The 512-byte sparse header (also the footer of a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// 1, 2 or 3.
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Embedded descriptor start, in sectors (0: none).
    pub descriptor_offset: u64,
    /// Embedded descriptor size, in sectors.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant GD, in sectors.
    pub rgd_offset: u64,
    /// GD, in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Metadata overhead, in sectors.
    pub overhead: u64,
    /// Unclean shutdown flag.
    pub unclean_shutdown: bool,
    /// 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

fn le32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl SparseHeader {
    /// Parses a header sector (does not check it against the file).
    pub fn parse(file: &str, b: &[u8]) -> Result<SparseHeader> {
        if b.len() < 512 {
            return Err(VmdkError::header(file, "shorter than 512 bytes"));
        }
        if le32(b, 0) != KDMV_MAGIC {
            return Err(VmdkError::header(file, "no KDMV magic"));
        }
        let h = SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_size: le64(b, 20),
            descriptor_offset: le64(b, 28),
            descriptor_size: le64(b, 36),
            num_gtes_per_gt: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(VmdkError::header(file, format!("version {}", h.version)));
        }
        if h.grain_size == 0 || !h.grain_size.is_power_of_two() || h.grain_size > MAX_GRAIN_SECTORS
        {
            return Err(VmdkError::header(
                file,
                format!("grain size {}", h.grain_size),
            ));
        }
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > MAX_GTES {
            return Err(VmdkError::header(
                file,
                format!("{} entries per grain table", h.num_gtes_per_gt),
            ));
        }
        if h.capacity.checked_mul(SECTOR).is_none() {
            return Err(VmdkError::header(file, format!("capacity {}", h.capacity)));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.compress_algorithm > 1 {
            return Err(VmdkError::Unsupported(format!(
                "{file}: compression algorithm {}",
                h.compress_algorithm
            )));
        }
        Ok(h)
    }

    /// Serialises the header as one 512-byte sector.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&KDMV_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73] = b'\n';
        b[74] = b' ';
        b[75] = b'\r';
        b[76] = b'\n';
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }

    /// Number of grain-directory entries the capacity needs.
    pub fn gd_entries(&self) -> u64 {
        let grains = self.capacity.div_ceil(self.grain_size);
        grains.div_ceil(u64::from(self.num_gtes_per_gt))
    }

    /// True for compressed grains.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
    /// True when grains carry markers.
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }
}

/// Where a grain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    Unallocated,
    Zero,
    At(u64),
}

/// An opened `KDMV` extent.
#[derive(Debug)]
pub struct SparseExtent {
    src: Arc<dyn ByteSource>,
    name: String,
    file_len: u64,
    hdr: SparseHeader,
    gd: Vec<u32>,
    gt_cache: Mutex<HashMap<u64, Arc<Vec<u32>>>>,
}

/// A piece of a read served by one compressed grain.
struct ZPiece {
    /// File offset of the grain.
    file_off: u64,
    /// Offset inside the decompressed grain.
    in_grain: usize,
    /// Destination offset in the caller's buffer.
    dst: usize,
    /// Length.
    len: usize,
}

impl SparseExtent {
    /// Reads and checks the header of `src`.
    pub async fn read_header(src: &dyn ByteSource) -> Result<(SparseHeader, u64)> {
        let name = src.name().to_string();
        let file_len = src
            .len()
            .await
            .map_err(|e| VmdkError::io(format!("length of {name}"), e))?;
        let head = read(src, 0, 512).await?;
        let mut hdr = SparseHeader::parse(&name, &head)?;
        if hdr.gd_offset == GD_AT_END {
            // streamOptimized: the footer (a copy of the header with the real GD offset) sits
            // just before the end-of-stream marker.
            if file_len < 3 * SECTOR {
                return Err(VmdkError::header(&name, "GD at end but no footer"));
            }
            let foot = read(src, file_len - 2 * SECTOR, 512).await?;
            let footer = SparseHeader::parse(&name, &foot)
                .map_err(|_| VmdkError::corrupt(&name, "GD at end but the footer is missing"))?;
            if footer.gd_offset == GD_AT_END || footer.capacity != hdr.capacity {
                return Err(VmdkError::corrupt(
                    &name,
                    "footer does not match the header",
                ));
            }
            hdr.gd_offset = footer.gd_offset;
        }
        Ok((hdr, file_len))
    }

    /// Opens a sparse extent, loading its grain directory.
    pub async fn open(src: Arc<dyn ByteSource>) -> Result<SparseExtent> {
        let (hdr, file_len) = Self::read_header(&*src).await?;
        let entries = hdr.gd_entries();
        Self::open_with(src, hdr, file_len, entries).await
    }

    /// Opens a grain-directory extent described by `hdr` (also used for COWD), loading
    /// `entries` GD entries.
    pub(crate) async fn open_with(
        src: Arc<dyn ByteSource>,
        hdr: SparseHeader,
        file_len: u64,
        entries: u64,
    ) -> Result<SparseExtent> {
        let name = src.name().to_string();
        let gd_bytes = entries
            .checked_mul(4)
            .ok_or_else(|| VmdkError::header(&name, "capacity overflows the GD"))?;
        // A GD must lie inside the file; this also bounds what an absurd capacity allocates.
        let use_rgd = hdr.gd_offset == 0 && hdr.flags & FLAG_RGD != 0 && hdr.rgd_offset != 0;
        let gd_sector = if use_rgd {
            hdr.rgd_offset
        } else {
            hdr.gd_offset
        };
        let gd = if entries == 0 {
            Vec::new()
        } else {
            let start = gd_sector
                .checked_mul(SECTOR)
                .filter(|s| *s > 0 && s.checked_add(gd_bytes).is_some_and(|e| e <= file_len))
                .ok_or_else(|| {
                    VmdkError::header(
                        &name,
                        format!(
                            "grain directory ({entries} entries at sector {gd_sector}) is outside the {file_len}-byte file"
                        ),
                    )
                })?;
            let raw = read(&*src, start, gd_bytes as usize).await?;
            raw.chunks_exact(4).map(|c| le32(c, 0)).collect()
        };
        Ok(SparseExtent {
            src,
            name,
            file_len,
            hdr,
            gd,
            gt_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The header (with the footer's GD offset for a stream).
    pub fn header(&self) -> &SparseHeader {
        &self.hdr
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.hdr.capacity * SECTOR
    }

    /// The embedded descriptor, if any.
    pub async fn embedded_descriptor(
        src: &dyn ByteSource,
        hdr: &SparseHeader,
    ) -> Result<Option<Vec<u8>>> {
        if hdr.descriptor_offset == 0 || hdr.descriptor_size == 0 {
            return Ok(None);
        }
        let len = hdr
            .descriptor_size
            .checked_mul(SECTOR)
            .filter(|l| *l <= crate::descriptor::MAX_DESCRIPTOR_BYTES as u64)
            .ok_or_else(|| VmdkError::header(src.name(), "embedded descriptor too large"))?;
        let off = hdr
            .descriptor_offset
            .checked_mul(SECTOR)
            .ok_or_else(|| VmdkError::header(src.name(), "descriptor offset"))?;
        Ok(Some(read(src, off, len as usize).await?))
    }

    async fn table(&self, gt: u64) -> Result<Option<Arc<Vec<u32>>>> {
        let Some(&sector) = usize::try_from(gt).ok().and_then(|i| self.gd.get(i)) else {
            return Ok(None);
        };
        if sector == 0 {
            return Ok(None);
        }
        if let Ok(c) = self.gt_cache.lock() {
            if let Some(t) = c.get(&gt) {
                return Ok(Some(t.clone()));
            }
        }
        let bytes = u64::from(self.hdr.num_gtes_per_gt) * 4;
        let start = u64::from(sector) * SECTOR;
        if start + bytes > self.file_len {
            return Err(VmdkError::corrupt(
                &self.name,
                format!("grain table {gt} at sector {sector} is past the end of the file"),
            ));
        }
        let raw = read(&*self.src, start, bytes as usize).await?;
        let t: Arc<Vec<u32>> = Arc::new(raw.chunks_exact(4).map(|c| le32(c, 0)).collect());
        if let Ok(mut c) = self.gt_cache.lock() {
            if c.len() >= GT_CACHE_LIMIT {
                c.clear();
            }
            c.insert(gt, t.clone());
        }
        Ok(Some(t))
    }

    async fn grain(&self, g: u64) -> Result<Grain> {
        let per = u64::from(self.hdr.num_gtes_per_gt);
        let Some(t) = self.table(g / per).await? else {
            return Ok(Grain::Unallocated);
        };
        self.decode(g, t.get((g % per) as usize).copied().unwrap_or(0))
    }

    fn decode(&self, g: u64, e: u32) -> Result<Grain> {
        Ok(match e {
            0 => Grain::Unallocated,
            1 if self.hdr.flags & FLAG_ZERO_GRAIN != 0 => Grain::Zero,
            s => {
                let off = u64::from(s) * SECTOR;
                if off >= self.file_len {
                    return Err(VmdkError::corrupt(
                        &self.name,
                        format!("grain {g} points to sector {s}, past the end of the file"),
                    ));
                }
                Grain::At(off)
            }
        })
    }

    /// Allocation of `[off, off+len)` (extent-relative), merged runs. One table lookup per
    /// grain table, so a hostile directory cannot make this slow beyond its size.
    pub async fn map(&self, off: u64, len: u64) -> Result<Vec<(u64, u64, Alloc)>> {
        let gb = self.hdr.grain_bytes();
        let per = u64::from(self.hdr.num_gtes_per_gt);
        let end = off + len;
        let mut out: Vec<(u64, u64, Alloc)> = Vec::new();
        let mut pos = off;
        while pos < end {
            let t = pos / gb / per;
            let t_end = ((t + 1) * per * gb).min(end);
            let Some(table) = self.table(t).await? else {
                push_run(&mut out, pos, t_end - pos, Alloc::Unallocated);
                pos = t_end;
                continue;
            };
            while pos < t_end {
                let g = pos / gb;
                let e = table.get((g % per) as usize).copied().unwrap_or(0);
                let kind = match self.decode(g, e)? {
                    Grain::Unallocated => Alloc::Unallocated,
                    Grain::Zero => Alloc::Zero,
                    Grain::At(_) => Alloc::Data,
                };
                let next = ((g + 1) * gb).min(t_end);
                push_run(&mut out, pos, next - pos, kind);
                pos = next;
            }
        }
        Ok(out)
    }

    /// Reads `[off, off+buf.len())` (extent-relative) into `buf`. Zero grains are zeroed;
    /// unallocated ranges are zeroed and returned so the caller can fill them from a parent.
    pub async fn read(&self, off: u64, buf: &mut [u8]) -> Result<Vec<(u64, u64)>> {
        let gb = self.hdr.grain_bytes();
        let end = off + buf.len() as u64;
        let mut holes: Vec<(u64, u64)> = Vec::new();
        // Uncompressed runs: (file offset, dst, len), coalesced when contiguous in the file.
        let mut runs: Vec<(u64, usize, usize)> = Vec::new();
        let mut zpieces: Vec<ZPiece> = Vec::new();
        let mut pos = off;
        while pos < end {
            let g = pos / gb;
            let in_grain = pos - g * gb;
            let n = (gb - in_grain).min(end - pos);
            let dst = (pos - off) as usize;
            match self.grain(g).await? {
                Grain::Unallocated => {
                    buf[dst..dst + n as usize].fill(0);
                    match holes.last_mut() {
                        Some(h) if h.0 + h.1 == pos => h.1 += n,
                        _ => holes.push((pos, n)),
                    }
                }
                Grain::Zero => buf[dst..dst + n as usize].fill(0),
                Grain::At(fo) if self.hdr.compressed() => zpieces.push(ZPiece {
                    file_off: fo,
                    in_grain: in_grain as usize,
                    dst,
                    len: n as usize,
                }),
                Grain::At(fo) => {
                    let at = fo + in_grain;
                    match runs.last_mut() {
                        Some(r) if r.0 + r.2 as u64 == at && r.1 + r.2 == dst => r.2 += n as usize,
                        _ => runs.push((at, dst, n as usize)),
                    }
                }
            }
            pos += n;
        }
        for (at, dst, n) in runs {
            if at.checked_add(n as u64).is_none_or(|e| e > self.file_len) {
                return Err(VmdkError::corrupt(
                    &self.name,
                    format!("grain data at {at} (+{n}) is past the end of the file"),
                ));
            }
            let data = read(&*self.src, at, n).await?;
            buf[dst..dst + n].copy_from_slice(&data);
        }
        if !zpieces.is_empty() {
            self.read_compressed(zpieces, buf).await?;
        }
        Ok(holes)
    }

    /// Reads compressed grains: one file read per group of nearby grains, inflated off the
    /// async threads.
    async fn read_compressed(&self, mut pieces: Vec<ZPiece>, buf: &mut [u8]) -> Result<()> {
        pieces.sort_by_key(|p| p.file_off);
        let gb = self.hdr.grain_bytes();
        // Upper bound of one compressed grain record: marker + deflate worst case + slack.
        let max_rec = 12 + max_compressed(gb);
        while let Some(p0) = pieces.first() {
            let first = p0.file_off;
            let mut j = 1;
            while j < pieces.len()
                && pieces[j].file_off - pieces[j - 1].file_off <= COALESCE_GAP
                && pieces[j].file_off - first <= 16 * COALESCE_GAP
            {
                j += 1;
            }
            let last = pieces[j - 1].file_off;
            let span_end = (last + max_rec).min(self.file_len);
            let span = read(&*self.src, first, (span_end - first) as usize).await?;
            let group: Vec<ZPiece> = pieces.drain(..j).collect();
            let name = self.name.clone();
            let markers = self.hdr.markers();
            let file_len = self.file_len;
            let (base, out) = tokio::task::spawn_blocking(move || {
                inflate_group(&name, &span, first, file_len, gb as usize, markers, group)
            })
            .await
            .map_err(|e| VmdkError::io("inflate task", std::io::Error::other(e)))??;
            buf[base..base + out.len()].copy_from_slice(&out);
        }
        Ok(())
    }
}

/// Inflates each piece's grain from `span` (which starts at file offset `base`) into one
/// buffer covering the pieces' destinations; returns its destination offset and the buffer.
/// Whole grains inflate in place; partial ones go through a scratch grain.
fn inflate_group(
    name: &str,
    span: &[u8],
    base: u64,
    file_len: u64,
    grain_bytes: usize,
    markers: bool,
    group: Vec<ZPiece>,
) -> Result<(usize, Vec<u8>)> {
    let lo = group.iter().map(|p| p.dst).min().unwrap_or(0);
    let hi = group.iter().map(|p| p.dst + p.len).max().unwrap_or(0);
    let mut out = vec![0u8; hi - lo];
    let mut scratch: Vec<u8> = Vec::new();
    for p in group {
        let rel = (p.file_off - base) as usize;
        let rec = span.get(rel..).unwrap_or(&[]);
        let data = if markers {
            if rec.len() < 12 {
                return Err(VmdkError::corrupt(
                    name,
                    format!("grain marker at {} is truncated", p.file_off),
                ));
            }
            let size = le32(rec, 8) as usize;
            if size == 0 || size as u64 > max_compressed(grain_bytes as u64) {
                return Err(VmdkError::corrupt(
                    name,
                    format!("grain at {} has compressed size {size}", p.file_off),
                ));
            }
            if p.file_off + 12 + size as u64 > file_len || rec.len() < 12 + size {
                return Err(VmdkError::corrupt(
                    name,
                    format!(
                        "compressed grain at {} runs past the end of the file",
                        p.file_off
                    ),
                ));
            }
            &rec[12..12 + size]
        } else {
            rec
        };
        let err = |msg: String| VmdkError::Inflate {
            file: name.to_string(),
            offset: p.file_off,
            msg,
        };
        let dst = &mut out[p.dst - lo..p.dst - lo + p.len];
        if p.in_grain == 0 && p.len == grain_bytes {
            let n = inflate(data, dst).map_err(err)?;
            if n < p.len {
                return Err(err(format!(
                    "grain inflates to {n} bytes, {} needed",
                    p.len
                )));
            }
        } else {
            scratch.resize(grain_bytes, 0);
            let n = inflate(data, &mut scratch).map_err(err)?;
            if p.in_grain + p.len > n {
                return Err(err(format!(
                    "grain inflates to {n} bytes, {} needed",
                    p.in_grain + p.len
                )));
            }
            dst.copy_from_slice(&scratch[p.in_grain..p.in_grain + p.len]);
        }
    }
    Ok((lo, out))
}

/// Largest compressed grain we accept: deflate of any level stays well under twice the input.
fn max_compressed(grain_bytes: u64) -> u64 {
    2 * grain_bytes + 1024
}

/// Inflates one zlib stream into `out` (never grows it); returns the bytes produced.
pub(crate) fn inflate(data: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    let mut d = flate2::Decompress::new(true);
    match d.decompress(data, out, flate2::FlushDecompress::Finish) {
        Ok(flate2::Status::StreamEnd) => Ok(d.total_out() as usize),
        Ok(_) => Err("zlib stream does not end within one grain".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn push_run(out: &mut Vec<(u64, u64, Alloc)>, off: u64, len: u64, kind: Alloc) {
    if len == 0 {
        return;
    }
    match out.last_mut() {
        Some(l) if l.2 == kind && l.0 + l.1 == off => l.1 += len,
        _ => out.push((off, len, kind)),
    }
}

pub(crate) async fn read(src: &dyn ByteSource, off: u64, len: usize) -> Result<Vec<u8>> {
    src.read_at(off, len).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            VmdkError::corrupt(
                src.name(),
                format!("truncated: {len} bytes at {off} are past the end"),
            )
        } else {
            VmdkError::io(format!("read {} at {off}", src.name()), e)
        }
    })
}
