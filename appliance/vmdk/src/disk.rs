//! A whole disk: descriptor, extents in disk order, and the parent chain. Owns opening
//! (magic sniffing, embedded and standalone descriptors, CID checks, loop detection), reads
//! through the chain, and the allocation map.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT};
use crate::error::{Result, VmdkError};
use crate::io::{join_relative, ByteSource, Resolver};
use crate::sparse::{push_run, read, SparseExtent, SparseHeader, KDMV_MAGIC};
use crate::{cowd, sesparse, Alloc, MapRun, SECTOR};

/// Deepest snapshot chain we follow (vSphere allows 32 snapshots).
pub const MAX_CHAIN: usize = 255;

#[derive(Debug)]
enum ExtentImpl {
    Flat {
        src: Arc<dyn ByteSource>,
        base: u64,
        file_len: u64,
    },
    Zero,
    Sparse(SparseExtent),
    SeSparse(sesparse::SeSparseExtent),
}

#[derive(Debug)]
struct Slot {
    start: u64,
    len: u64,
    ext: ExtentImpl,
}

/// An opened VMDK, with its parents.
#[derive(Debug)]
pub struct Vmdk {
    name: String,
    descriptor: Descriptor,
    size: u64,
    slots: Vec<Slot>,
    parent: Option<Box<Vmdk>>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Vmdk {
    /// Opens `name` through `resolver` (for local files: a [`crate::DirResolver`] on its
    /// directory and the file name), following the snapshot chain.
    pub async fn open(resolver: Arc<dyn Resolver>, name: &str) -> Result<Vmdk> {
        let mut seen = HashSet::new();
        open_layer(resolver, name.to_string(), &mut seen, 0).await
    }

    /// Opens a local file.
    pub async fn open_path(path: &std::path::Path) -> Result<Vmdk> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let file = path
            .file_name()
            .ok_or_else(|| VmdkError::Input(format!("{}: not a file", path.display())))?
            .to_string_lossy()
            .to_string();
        Self::open(Arc::new(crate::io::DirResolver::new(dir)), &file).await
    }

    /// Disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The name it was opened by.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The descriptor (synthesised for a bare sparse, COWD or SESparse file).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }
    /// The parent disk, if any.
    pub fn parent(&self) -> Option<&Vmdk> {
        self.parent.as_deref()
    }
    /// Number of layers, this disk included.
    pub fn chain_len(&self) -> usize {
        1 + self.parent.as_ref().map_or(0, |p| p.chain_len())
    }

    fn check(&self, off: u64, len: u64) -> Result<()> {
        if off.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(VmdkError::OutOfRange {
                offset: off,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `off`, through the chain.
    pub async fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len() as u64)?;
        self.read_layer(off, buf).await
    }

    /// Reads `len` bytes at `off` into a new buffer. A range inside one flat extent is
    /// returned as the transport delivered it, which saves a copy per chunk on the
    /// datastore-HTTPS path; anything else goes through [`Vmdk::read_at`].
    pub async fn read_owned(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        self.check(off, len as u64)?;
        let end = off + len as u64;
        for s in &self.slots {
            if off >= s.start && end <= s.start + s.len {
                if let ExtentImpl::Flat {
                    src,
                    base,
                    file_len,
                } = &s.ext
                {
                    let at = base + (off - s.start);
                    if at + len as u64 <= *file_len {
                        let data = read(&**src, at, len).await?;
                        if data.len() != len {
                            return Err(VmdkError::corrupt(
                                src.name(),
                                format!("{} bytes at {at} where {len} were asked for", data.len()),
                            ));
                        }
                        return Ok(data);
                    }
                }
                break;
            }
        }
        let mut buf = vec![0u8; len];
        self.read_layer(off, &mut buf).await?;
        Ok(buf)
    }

    fn read_layer<'a>(&'a self, off: u64, buf: &'a mut [u8]) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let end = off + buf.len() as u64;
            let mut holes: Vec<(u64, u64)> = Vec::new();
            for s in &self.slots {
                let (a, b) = (off.max(s.start), end.min(s.start + s.len));
                if a >= b {
                    continue;
                }
                let dst = &mut buf[(a - off) as usize..(b - off) as usize];
                let rel = a - s.start;
                let h = match &s.ext {
                    ExtentImpl::Flat {
                        src,
                        base,
                        file_len,
                    } => {
                        let at = base + rel;
                        if at + dst.len() as u64 > *file_len {
                            return Err(VmdkError::corrupt(
                                src.name(),
                                format!(
                                    "flat extent is {file_len} bytes, read at {at} of {} bytes",
                                    dst.len()
                                ),
                            ));
                        }
                        let data = read(&**src, at, dst.len()).await?;
                        dst.copy_from_slice(&data);
                        Vec::new()
                    }
                    ExtentImpl::Zero => {
                        dst.fill(0);
                        Vec::new()
                    }
                    ExtentImpl::Sparse(x) => {
                        let cap = x.capacity();
                        let inside = if rel < cap {
                            (cap - rel).min(dst.len() as u64) as usize
                        } else {
                            0
                        };
                        let h = if inside > 0 {
                            x.read(rel, &mut dst[..inside]).await?
                        } else {
                            Vec::new()
                        };
                        dst[inside..].fill(0);
                        h
                    }
                    ExtentImpl::SeSparse(x) => x.read(rel, dst).await?,
                };
                holes.extend(h.into_iter().map(|(o, l)| (o + s.start, l)));
            }
            if let Some(p) = &self.parent {
                for (ho, hl) in holes {
                    let pe = (ho + hl).min(p.size);
                    if ho < pe {
                        let d = &mut buf[(ho - off) as usize..(pe - off) as usize];
                        p.read_layer(ho, d).await?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The allocation of `[off, off+len)` through the chain, as merged runs.
    pub async fn map(&self, off: u64, len: u64) -> Result<Vec<MapRun>> {
        self.check(off, len)?;
        self.map_layer(off, len, 0).await
    }

    fn map_layer(&self, off: u64, len: u64, depth: usize) -> BoxFut<'_, Result<Vec<MapRun>>> {
        Box::pin(async move {
            let end = off + len;
            let mut runs: Vec<(u64, u64, Alloc)> = Vec::new();
            for s in &self.slots {
                let (a, b) = (off.max(s.start), end.min(s.start + s.len));
                if a >= b {
                    continue;
                }
                let rel = a - s.start;
                let part = match &s.ext {
                    ExtentImpl::Flat { .. } => vec![(rel, b - a, Alloc::Data)],
                    ExtentImpl::Zero => vec![(rel, b - a, Alloc::Zero)],
                    ExtentImpl::Sparse(x) => {
                        let cap = x.capacity();
                        let mut v = if rel < cap {
                            x.map(rel, (b - a).min(cap - rel)).await?
                        } else {
                            Vec::new()
                        };
                        if rel + (b - a) > cap {
                            let z = rel.max(cap);
                            v.push((z, rel + (b - a) - z, Alloc::Zero));
                        }
                        v
                    }
                    ExtentImpl::SeSparse(x) => x.map(rel, b - a).await?,
                };
                for (o, l, k) in part {
                    push_run(&mut runs, o + s.start, l, k);
                }
            }
            let mut out: Vec<MapRun> = Vec::new();
            let push = |out: &mut Vec<MapRun>, r: MapRun| match out.last_mut() {
                Some(l)
                    if l.kind == r.kind && l.depth == r.depth && l.offset + l.len == r.offset =>
                {
                    l.len += r.len
                }
                _ => out.push(r),
            };
            for (o, l, k) in runs {
                match (&self.parent, k) {
                    (Some(p), Alloc::Unallocated) if o < p.size => {
                        let pe = (o + l).min(p.size);
                        for r in p.map_layer(o, pe - o, depth + 1).await? {
                            push(&mut out, r);
                        }
                        if pe < o + l {
                            push(
                                &mut out,
                                MapRun {
                                    offset: pe,
                                    len: o + l - pe,
                                    kind: k,
                                    depth,
                                },
                            );
                        }
                    }
                    _ => push(
                        &mut out,
                        MapRun {
                            offset: o,
                            len: l,
                            kind: k,
                            depth,
                        },
                    ),
                }
            }
            Ok(out)
        })
    }
}

fn open_layer<'a>(
    resolver: Arc<dyn Resolver>,
    name: String,
    seen: &'a mut HashSet<String>,
    depth: usize,
) -> BoxFut<'a, Result<Vmdk>> {
    Box::pin(async move {
        if depth > MAX_CHAIN {
            return Err(VmdkError::ChainTooDeep(MAX_CHAIN));
        }
        let id = resolver.identity(&name);
        if !seen.insert(id) {
            return Err(VmdkError::ChainLoop(name));
        }
        let src = resolver
            .open(&name)
            .await
            .map_err(|e| VmdkError::io(format!("open {name}"), e))?;
        let file_len = src
            .len()
            .await
            .map_err(|e| VmdkError::io(format!("length of {name}"), e))?;
        let head = read(&*src, 0, file_len.min(512) as usize).await?;
        let magic = head
            .get(..4)
            .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        let descriptor = if magic == Some(KDMV_MAGIC) {
            let hdr = SparseHeader::parse(&name, &head)?;
            match SparseExtent::embedded_descriptor(&*src, &hdr).await? {
                Some(text) => Descriptor::parse(&name, &text)?,
                None => synthetic(&name, hdr.capacity, ExtentType::Sparse, "monolithicSparse"),
            }
        } else if magic == Some(cowd::COWD_MAGIC) {
            let h = cowd::CowdHeader::parse(&name, &head)?;
            synthetic(&name, h.capacity, ExtentType::VmfsSparse, "vmfsSparse")
        } else if file_len >= 8 && sesparse::is_sesparse(&head) {
            let h = sesparse::SeSparseExtent::open(src.clone()).await?;
            synthetic(
                &name,
                h.capacity() / SECTOR,
                ExtentType::SeSparse,
                "seSparse",
            )
        } else {
            if file_len > crate::descriptor::MAX_DESCRIPTOR_BYTES as u64 {
                return Err(VmdkError::Descriptor {
                    file: name.clone(),
                    line: 0,
                    msg: format!(
                        "{file_len}-byte file has no known magic and is too large for a descriptor"
                    ),
                });
            }
            let text = read(&*src, 0, file_len as usize).await?;
            Descriptor::parse(&name, &text)?
        };
        let own_id = resolver.identity(&name);
        let mut slots = Vec::with_capacity(descriptor.extents.len());
        let mut start = 0u64;
        for line in &descriptor.extents {
            let len = line
                .sectors
                .checked_mul(SECTOR)
                .and_then(|l| start.checked_add(l).map(|_| l))
                .ok_or_else(|| VmdkError::Descriptor {
                    file: name.clone(),
                    line: 0,
                    msg: "disk size overflows".into(),
                })?;
            let ext = open_extent(&resolver, &name, &own_id, &src, line).await?;
            slots.push(Slot { start, len, ext });
            start += len;
        }
        let parent = if descriptor.parent_cid != NO_PARENT {
            let hint = descriptor.parent_hint.clone().unwrap_or_default();
            let pname = join_relative(&name, &hint);
            let p = open_layer(resolver.clone(), pname.clone(), seen, depth + 1).await?;
            if p.descriptor.cid != descriptor.parent_cid {
                return Err(VmdkError::CidMismatch {
                    child: name.clone(),
                    parent: pname,
                    expected: descriptor.parent_cid,
                    found: p.descriptor.cid,
                });
            }
            Some(Box::new(p))
        } else {
            None
        };
        Ok(Vmdk {
            name,
            descriptor,
            size: start,
            slots,
            parent,
        })
    })
}

fn synthetic(name: &str, sectors: u64, kind: ExtentType, create_type: &str) -> Descriptor {
    let file = name.rsplit('/').next().unwrap_or(name).to_string();
    Descriptor {
        version: 1,
        cid: 0,
        parent_cid: NO_PARENT,
        create_type: create_type.to_string(),
        parent_hint: None,
        extents: vec![ExtentLine {
            access: Access::Rw,
            sectors,
            kind,
            file: Some(file),
            offset: 0,
        }],
        ddb: Default::default(),
        other: Default::default(),
    }
}

async fn open_extent(
    resolver: &Arc<dyn Resolver>,
    name: &str,
    own_id: &str,
    own: &Arc<dyn ByteSource>,
    line: &ExtentLine,
) -> Result<ExtentImpl> {
    let Some(file) = &line.file else {
        return Ok(ExtentImpl::Zero);
    };
    let ename = join_relative(name, file);
    let src = if resolver.identity(&ename) == own_id {
        own.clone()
    } else {
        resolver
            .open(&ename)
            .await
            .map_err(|e| VmdkError::io(format!("open extent {ename}"), e))?
    };
    Ok(match line.kind {
        ExtentType::Zero => ExtentImpl::Zero,
        ExtentType::Flat | ExtentType::Vmfs => {
            let file_len = src
                .len()
                .await
                .map_err(|e| VmdkError::io(format!("length of {ename}"), e))?;
            let base = line
                .offset
                .checked_mul(SECTOR)
                .ok_or_else(|| VmdkError::Descriptor {
                    file: name.to_string(),
                    line: 0,
                    msg: "extent offset overflows".into(),
                })?;
            ExtentImpl::Flat {
                src,
                base,
                file_len,
            }
        }
        ExtentType::Sparse => ExtentImpl::Sparse(SparseExtent::open(src).await?),
        ExtentType::VmfsSparse => ExtentImpl::Sparse(cowd::open(src).await?),
        ExtentType::SeSparse => ExtentImpl::SeSparse(sesparse::SeSparseExtent::open(src).await?),
    })
}
