//! Writers: streamOptimized (one forward pass, parallel deflate), monolithicSparse and
//! monolithicFlat. All-zero grains and holes of the source are never stored.

use std::io::{Read, Write};
use std::path::Path;

use ferry_archive::{BlockSource, ExtentKind};
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT};
use crate::error::{Result, VmdkError};
use crate::sparse::{
    SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NL_TEST, FLAG_RGD, GD_AT_END, MARKER_EOS,
    MARKER_FOOTER, MARKER_GD, MARKER_GT,
};
use crate::SECTOR;

/// Grain size the writers use: 128 sectors (64 KiB), what ESXi expects.
pub const GRAIN_SECTORS: u64 = 128;
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
const GTES: u64 = 512;
/// Sectors of one grain table.
const GT_SECTORS: u64 = GTES * 4 / SECTOR;

/// Options of the writers.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Deflate level, 0-9. Level 1 is several times faster than zlib's default 6 and is
    /// accepted everywhere; the level is not recorded in the file.
    pub level: u32,
    /// Compression threads; 0 means one per core.
    pub threads: usize,
    /// `ddb.adapterType`: `lsilogic`, `buslogic`, `ide`, `pvscsi` (written as `lsilogic`
    /// geometry), `legacyESX`.
    pub adapter_type: String,
    /// `ddb.virtualHWVersion`.
    pub hw_version: u32,
    /// Content id; random when `None`.
    pub cid: Option<u32>,
    /// File name the descriptor's extent line names (streamOptimized and monolithicSparse).
    pub extent_name: String,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            level: 1,
            threads: 0,
            adapter_type: "lsilogic".into(),
            hw_version: 4,
            cid: None,
            extent_name: "disk.vmdk".into(),
        }
    }
}

impl WriteOptions {
    fn threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    fn cid(&self) -> u32 {
        self.cid.unwrap_or_else(|| {
            // Any value but the "no parent" marker; time and address entropy are enough.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let x = t ^ (self as *const _ as u64).rotate_left(32);
            let c = (x ^ (x >> 32)) as u32;
            if c == NO_PARENT {
                1
            } else {
                c
            }
        })
    }
}

/// What a writer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Grains stored (not zero).
    pub grains_stored: u64,
    /// Bytes written in total.
    pub bytes_written: u64,
}

/// The descriptor the writers embed or write.
pub fn make_descriptor(
    create_type: &str,
    size: u64,
    extents: Vec<ExtentLine>,
    opts: &WriteOptions,
) -> Descriptor {
    let sectors = size.div_ceil(SECTOR);
    let (heads, secs, max_cyl) = if opts.adapter_type == "ide" {
        (16u64, 63u64, 16383u64)
    } else {
        (255, 63, 65535)
    };
    let cyl = (sectors / (heads * secs)).clamp(1, max_cyl);
    let adapter = if opts.adapter_type == "pvscsi" {
        "lsilogic".to_string()
    } else {
        opts.adapter_type.clone()
    };
    let mut ddb = std::collections::BTreeMap::new();
    ddb.insert("ddb.adapterType".to_string(), adapter);
    ddb.insert("ddb.geometry.cylinders".to_string(), cyl.to_string());
    ddb.insert("ddb.geometry.heads".to_string(), heads.to_string());
    ddb.insert("ddb.geometry.sectors".to_string(), secs.to_string());
    ddb.insert(
        "ddb.virtualHWVersion".to_string(),
        opts.hw_version.to_string(),
    );
    Descriptor {
        version: 1,
        cid: opts.cid(),
        parent_cid: NO_PARENT,
        create_type: create_type.to_string(),
        parent_hint: None,
        extents,
        ddb,
        other: Default::default(),
    }
}

fn marker(val: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&val.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn pad_to_sector(v: &mut Vec<u8>) {
    let r = v.len() % SECTOR as usize;
    if r != 0 {
        v.resize(v.len() + SECTOR as usize - r, 0);
    }
}

/// One grain as a stream record: marker (LBA, size), zlib data, padded to a sector.
/// `None` for an all-zero grain.
pub fn compress_grain(lba: u64, data: &[u8], level: u32) -> Result<Option<Vec<u8>>> {
    if is_zero(data) {
        return Ok(None);
    }
    // Short final grains are padded to a whole grain so every reader can inflate them.
    let full;
    let data = if (data.len() as u64) < GRAIN {
        let mut v = data.to_vec();
        v.resize(GRAIN as usize, 0);
        full = v;
        &full[..]
    } else {
        data
    };
    let mut out = deflate_record(lba, data, level)?;
    // Fast levels can expand incompressible data by several percent; stored blocks bound a
    // grain record to its size plus a few bytes, which every reader accepts.
    if out.len() > data.len() && level > 0 {
        out = deflate_record(lba, data, 0)?;
    }
    pad_to_sector(&mut out);
    Ok(Some(out))
}

fn deflate_record(lba: u64, data: &[u8], level: u32) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(12 + data.len() + data.len() / 100 + 1024);
    out.extend_from_slice(&lba.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    let mut c = flate2::Compress::new(flate2::Compression::new(level.min(9)), true);
    // The bound above is usually enough in one call; zlib may still ask for more room.
    for _ in 0..64 {
        let input = &data[c.total_in() as usize..];
        match c.compress_vec(input, &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => break,
            Ok(_) => out.reserve(64 * 1024),
            Err(e) => return Err(VmdkError::Input(format!("deflate failed: {e}"))),
        }
    }
    if c.total_in() != data.len() as u64 {
        return Err(VmdkError::Input("deflate did not finish".into()));
    }
    let size = (out.len() - 12) as u32;
    out[8..12].copy_from_slice(&size.to_le_bytes());
    Ok(out)
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    let (pre, mid, post) = {
        // SAFETY: every bit pattern is a valid u64; align_to only reinterprets the aligned middle.
        unsafe { b.align_to::<u64>() }
    };
    pre.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && post.iter().all(|&x| x == 0)
}

/// The streamOptimized layout, without I/O: it turns compressed grain records, in grain
/// order, into the bytes to append.
#[derive(Debug)]
struct StreamEncoder {
    hdr: SparseHeader,
    /// Current position in sectors.
    pos: u64,
    gd: Vec<u32>,
    gt: Vec<u32>,
    gt_index: u64,
    gt_dirty: bool,
    stored: u64,
}

impl StreamEncoder {
    fn new(size: u64, opts: &WriteOptions) -> Result<(StreamEncoder, Vec<u8>)> {
        let sectors = size.div_ceil(SECTOR);
        let d = make_descriptor(
            "streamOptimized",
            size,
            vec![ExtentLine {
                access: Access::Rw,
                sectors,
                kind: ExtentType::Sparse,
                file: Some(opts.extent_name.clone()),
                offset: 0,
            }],
            opts,
        );
        let text = d.render();
        let desc_sectors = (text.len() as u64).div_ceil(SECTOR).max(1);
        let overhead = (1 + desc_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        let hdr = SparseHeader {
            version: 3,
            flags: FLAG_NL_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: sectors,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: desc_sectors,
            num_gtes_per_gt: GTES as u32,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead,
            unclean_shutdown: false,
            compress_algorithm: 1,
        };
        let gd_entries = usize::try_from(hdr.gd_entries())
            .map_err(|_| VmdkError::Input("disk too large".into()))?;
        let mut head = Vec::with_capacity((overhead * SECTOR) as usize);
        head.extend_from_slice(&hdr.to_bytes());
        head.extend_from_slice(text.as_bytes());
        head.resize((overhead * SECTOR) as usize, 0);
        Ok((
            StreamEncoder {
                hdr,
                pos: overhead,
                gd: vec![0; gd_entries],
                gt: vec![0; GTES as usize],
                gt_index: 0,
                gt_dirty: false,
                stored: 0,
            },
            head,
        ))
    }

    fn flush_gt(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.gt_dirty {
            out.extend_from_slice(&marker(GT_SECTORS, MARKER_GT));
            self.pos += 1;
            let at = u32::try_from(self.pos)
                .map_err(|_| VmdkError::Input("compressed stream exceeds 2 TiB".into()))?;
            if let Some(e) = self.gd.get_mut(self.gt_index as usize) {
                *e = at;
            }
            for e in &self.gt {
                out.extend_from_slice(&e.to_le_bytes());
            }
            self.pos += GT_SECTORS;
            self.gt.fill(0);
            self.gt_dirty = false;
        }
        Ok(())
    }

    fn push(&mut self, grain: u64, record: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let t = grain / GTES;
        if t != self.gt_index {
            self.flush_gt(out)?;
            self.gt_index = t;
        }
        // GT entries are 32-bit sectors: a stream past 2 TiB of compressed data cannot be
        // addressed.
        let at = u32::try_from(self.pos)
            .map_err(|_| VmdkError::Input("compressed stream exceeds 2 TiB".into()))?;
        self.gt[(grain % GTES) as usize] = at;
        self.gt_dirty = true;
        out.extend_from_slice(record);
        self.pos += record.len() as u64 / SECTOR;
        self.stored += 1;
        Ok(())
    }

    fn finish(mut self, out: &mut Vec<u8>) -> Result<u64> {
        self.flush_gt(out)?;
        let gd_sectors = (self.gd.len() as u64 * 4).div_ceil(SECTOR);
        out.extend_from_slice(&marker(gd_sectors, MARKER_GD));
        self.pos += 1;
        let gd_at = self.pos;
        let start = out.len();
        for e in &self.gd {
            out.extend_from_slice(&e.to_le_bytes());
        }
        out.resize(start + (gd_sectors * SECTOR) as usize, 0);
        self.pos += gd_sectors;
        out.extend_from_slice(&marker(1, MARKER_FOOTER));
        let mut footer = self.hdr;
        footer.gd_offset = gd_at;
        out.extend_from_slice(&footer.to_bytes());
        out.extend_from_slice(&marker(0, MARKER_EOS));
        Ok(self.stored)
    }
}

/// Compressed grain records with their grain index, in order.
type Records = Vec<(u64, Vec<u8>)>;

/// Compresses a batch (grains starting at `first`) on `threads` threads, in grain order.
fn compress_batch(first: u64, data: &[u8], level: u32, threads: usize) -> Result<Records> {
    let grains: Vec<&[u8]> = data.chunks(GRAIN as usize).collect();
    let per = grains.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<Records>> = std::thread::scope(|s| {
        let handles: Vec<_> = grains
            .chunks(per)
            .enumerate()
            .map(|(k, chunk)| {
                s.spawn(move || {
                    let mut v = Vec::new();
                    for (i, g) in chunk.iter().enumerate() {
                        let idx = first + (k * per + i) as u64;
                        if let Some(r) = compress_grain(idx * GRAIN_SECTORS, g, level)? {
                            v.push((idx, r));
                        }
                    }
                    Ok(v)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(VmdkError::Input("compression thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::new();
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

fn batch_grains(opts: &WriteOptions) -> u64 {
    (opts.threads() as u64 * 32).max(64)
}

/// Writes a streamOptimized VMDK of `size` bytes read sequentially from `input` to `out`,
/// in one forward pass (the output may be a pipe or an upload).
pub fn write_stream_optimized_sync<R: Read + Send, W: Write + Send>(
    mut input: R,
    size: u64,
    mut out: W,
    opts: &WriteOptions,
) -> Result<WriteStats> {
    let (mut enc, head) = StreamEncoder::new(size, opts)?;
    let wio = |e| VmdkError::io("write", e);
    out.write_all(&head).map_err(wio)?;
    let mut written = head.len() as u64;
    let batch = batch_grains(opts) * GRAIN;
    let threads = opts.threads();
    let read_batch = |input: &mut R, off: u64| -> Result<Vec<u8>> {
        let n = batch.min(size - off) as usize;
        let mut b = vec![0u8; n];
        input
            .read_exact(&mut b)
            .map_err(|e| VmdkError::Input(format!("read at {off}: {e}")))?;
        Ok(b)
    };
    let mut off = 0u64;
    let mut cur = if size > 0 {
        Some(read_batch(&mut input, 0)?)
    } else {
        None
    };
    let mut pending: Vec<u8> = Vec::new();
    while let Some(data) = cur.take() {
        let first = off / GRAIN;
        let next_off = off + data.len() as u64;
        // Compress this batch while writing the previous one and reading the next.
        let (records, next) = std::thread::scope(|s| {
            let h = s.spawn(|| compress_batch(first, &data, opts.level, threads));
            let w = out.write_all(&pending).map_err(wio);
            let n = if w.is_ok() && next_off < size {
                read_batch(&mut input, next_off).map(Some)
            } else {
                Ok(None)
            };
            let r = h
                .join()
                .unwrap_or_else(|_| Err(VmdkError::Input("compression panicked".into())));
            (r, w.and(n))
        });
        written += pending.len() as u64;
        pending.clear();
        for (g, r) in records? {
            enc.push(g, &r, &mut pending)?;
        }
        cur = next?;
        off = next_off;
    }
    let stored = enc.finish(&mut pending)?;
    out.write_all(&pending).map_err(wio)?;
    out.flush().map_err(wio)?;
    written += pending.len() as u64;
    Ok(WriteStats {
        disk_size: size,
        grains_stored: stored,
        bytes_written: written,
    })
}

/// Reads `[off, off+len)` of `src`, reading only its data extents.
async fn read_source(src: &dyn BlockSource, off: u64, len: u64) -> Result<Vec<u8>> {
    let e = |e: ferry_archive::SourceError| VmdkError::Input(format!("{}: {e}", src.describe()));
    let mut buf = vec![0u8; len as usize];
    let Some(map) = src.allocation(off, len).await.map_err(e)? else {
        return src.read_at(off, buf).await.map_err(e);
    };
    for x in map {
        if x.kind != ExtentKind::Data {
            continue;
        }
        let (a, b) = (x.offset.max(off), (x.offset + x.len).min(off + len));
        if a >= b {
            continue;
        }
        let got = src
            .read_at(a, vec![0u8; (b - a) as usize])
            .await
            .map_err(e)?;
        buf[(a - off) as usize..(b - off) as usize].copy_from_slice(&got);
    }
    Ok(buf)
}

/// Writes `src` as a streamOptimized VMDK to `out` in one forward pass, deflating on all
/// cores while the next batch is read and the previous one written.
pub async fn write_stream_optimized<W: AsyncWrite + Unpin + Send>(
    src: &dyn BlockSource,
    out: &mut W,
    opts: &WriteOptions,
) -> Result<WriteStats> {
    let size = src.size();
    let (mut enc, head) = StreamEncoder::new(size, opts)?;
    let wio = |e| VmdkError::io("write", e);
    out.write_all(&head).await.map_err(wio)?;
    let mut written = head.len() as u64;
    let batch = batch_grains(opts) * GRAIN;
    let threads = opts.threads();
    let level = opts.level;
    let mut off = 0u64;
    let mut cur = if size > 0 {
        Some(read_source(src, 0, batch.min(size)).await?)
    } else {
        None
    };
    let mut pending: Vec<u8> = Vec::new();
    while let Some(data) = cur.take() {
        let first = off / GRAIN;
        let next_off = off + data.len() as u64;
        let job = tokio::task::spawn_blocking(move || compress_batch(first, &data, level, threads));
        let (w, n) = tokio::join!(out.write_all(&pending), async {
            if next_off < size {
                read_source(src, next_off, batch.min(size - next_off))
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        });
        w.map_err(wio)?;
        let records = job
            .await
            .map_err(|e| VmdkError::Input(format!("compression task: {e}")))??;
        written += pending.len() as u64;
        pending.clear();
        for (g, r) in records {
            enc.push(g, &r, &mut pending)?;
        }
        cur = n?;
        off = next_off;
    }
    let stored = enc.finish(&mut pending)?;
    out.write_all(&pending).await.map_err(wio)?;
    out.flush().await.map_err(wio)?;
    written += pending.len() as u64;
    Ok(WriteStats {
        disk_size: size,
        grains_stored: stored,
        bytes_written: written,
    })
}

/// Writes `src` as a monolithicSparse VMDK at `path`: header and descriptor, then the
/// non-zero grains, then grain tables and directory (and their redundant copies); the
/// header is rewritten last.
pub async fn write_monolithic_sparse(
    src: &dyn BlockSource,
    path: &Path,
    opts: &WriteOptions,
) -> Result<WriteStats> {
    let size = src.size();
    let sectors = size.div_ceil(SECTOR);
    let name = path.file_name().map_or(opts.extent_name.clone(), |n| {
        n.to_string_lossy().to_string()
    });
    let d = make_descriptor(
        "monolithicSparse",
        size,
        vec![ExtentLine {
            access: Access::Rw,
            sectors,
            kind: ExtentType::Sparse,
            file: Some(name),
            offset: 0,
        }],
        opts,
    );
    let text = d.render();
    let desc_sectors = (text.len() as u64).div_ceil(SECTOR).max(20);
    let overhead = (1 + desc_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let mut hdr = SparseHeader {
        version: 1,
        flags: FLAG_NL_TEST | FLAG_RGD,
        capacity: sectors,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: desc_sectors,
        num_gtes_per_gt: GTES as u32,
        rgd_offset: 0,
        gd_offset: 0,
        overhead,
        unclean_shutdown: false,
        compress_algorithm: 0,
    };
    let grains = sectors.div_ceil(GRAIN_SECTORS);
    let gd_entries = hdr.gd_entries();
    let mut gt = vec![
        0u32;
        usize::try_from(gd_entries * GTES)
            .map_err(|_| VmdkError::Input("disk too large".into()))?
    ];
    let wio = |e| VmdkError::io(format!("write {}", path.display()), e);
    let mut f = tokio::fs::File::create(path).await.map_err(wio)?;
    let mut head = Vec::new();
    head.extend_from_slice(&hdr.to_bytes());
    head.extend_from_slice(text.as_bytes());
    head.resize((overhead * SECTOR) as usize, 0);
    f.write_all(&head).await.map_err(wio)?;
    let mut pos = overhead;
    let batch = 256 * GRAIN;
    let mut off = 0u64;
    let mut stored = 0u64;
    while off < size {
        let n = batch.min(size - off);
        let mut data = read_source(src, off, n).await?;
        data.resize(n.div_ceil(GRAIN) as usize * GRAIN as usize, 0);
        let mut out = Vec::with_capacity(data.len());
        for (i, g) in data.chunks(GRAIN as usize).enumerate() {
            if is_zero(g) {
                continue;
            }
            let idx = off / GRAIN + i as u64;
            gt[idx as usize] = u32::try_from(pos)
                .map_err(|_| VmdkError::Input("sparse file exceeds 2 TiB".into()))?;
            out.extend_from_slice(g);
            pos += GRAIN_SECTORS;
            stored += 1;
        }
        f.write_all(&out).await.map_err(wio)?;
        off += n;
    }
    debug_assert!(stored <= grains);
    // Metadata after the grains: for each copy (redundant first), the tables then the GD.
    let mut meta = Vec::new();
    let mut gd_offsets = [0u64; 2];
    for slot in &mut gd_offsets {
        let gts_at = pos;
        for e in &gt {
            meta.extend_from_slice(&e.to_le_bytes());
        }
        pad_to_sector(&mut meta);
        pos = gts_at + (gt.len() as u64 * 4).div_ceil(SECTOR);
        *slot = pos;
        for t in 0..gd_entries {
            let at = u32::try_from(gts_at + t * GT_SECTORS)
                .map_err(|_| VmdkError::Input("sparse file exceeds 2 TiB".into()))?;
            meta.extend_from_slice(&at.to_le_bytes());
        }
        pad_to_sector(&mut meta);
        pos = *slot + (gd_entries * 4).div_ceil(SECTOR);
    }
    f.write_all(&meta).await.map_err(wio)?;
    hdr.rgd_offset = gd_offsets[0];
    hdr.gd_offset = gd_offsets[1];
    f.seek(std::io::SeekFrom::Start(0)).await.map_err(wio)?;
    f.write_all(&hdr.to_bytes()).await.map_err(wio)?;
    f.flush().await.map_err(wio)?;
    f.sync_all().await.map_err(wio)?;
    Ok(WriteStats {
        disk_size: size,
        grains_stored: stored,
        bytes_written: pos * SECTOR,
    })
}

/// Writes `src` as monolithicFlat: the descriptor at `descriptor_path` and the raw data in
/// `<stem>-flat.vmdk` beside it (sparse: holes are not written).
pub async fn write_monolithic_flat(
    src: &dyn BlockSource,
    descriptor_path: &Path,
    opts: &WriteOptions,
) -> Result<WriteStats> {
    let size = src.size();
    let stem = descriptor_path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .ok_or_else(|| VmdkError::Input(format!("{}: no file name", descriptor_path.display())))?;
    let flat_name = format!("{stem}-flat.vmdk");
    let flat_path = descriptor_path.with_file_name(&flat_name);
    let d = make_descriptor(
        "monolithicFlat",
        size,
        vec![ExtentLine {
            access: Access::Rw,
            sectors: size.div_ceil(SECTOR),
            kind: ExtentType::Flat,
            file: Some(flat_name),
            offset: 0,
        }],
        opts,
    );
    let wio = |e| VmdkError::io(format!("write {}", flat_path.display()), e);
    let mut f = tokio::fs::File::create(&flat_path).await.map_err(wio)?;
    f.set_len(size.div_ceil(SECTOR) * SECTOR)
        .await
        .map_err(wio)?;
    let batch = 16 << 20;
    let mut off = 0u64;
    let mut written = 0u64;
    while off < size {
        let n = batch.min(size - off);
        let data = read_source(src, off, n).await?;
        for (i, g) in data.chunks(GRAIN as usize).enumerate() {
            if is_zero(g) {
                continue;
            }
            f.seek(std::io::SeekFrom::Start(off + i as u64 * GRAIN))
                .await
                .map_err(wio)?;
            f.write_all(g).await.map_err(wio)?;
            written += g.len() as u64;
        }
        off += n;
    }
    f.sync_all().await.map_err(wio)?;
    let text = d.render();
    tokio::fs::write(descriptor_path, text.as_bytes())
        .await
        .map_err(|e| VmdkError::io(format!("write {}", descriptor_path.display()), e))?;
    Ok(WriteStats {
        disk_size: size,
        grains_stored: written.div_ceil(GRAIN),
        bytes_written: written + text.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        assert!(is_zero(&v[1..]));
        v[4098] = 1;
        assert!(!is_zero(&v));
        assert!(!is_zero(&v[3..]));
    }
}
