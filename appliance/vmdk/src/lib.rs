//! Ferry's VMDK reader and writer.
//!
//! # What this crate owns
//! Everything Ferry knows about VMware virtual disk files: the text descriptor, every extent
//! format a vSphere datastore or a hosted product holds, snapshot chains, and the writers
//! used for restores and for the appliance's own OVA. It reads through the [`ByteSource`] /
//! [`Resolver`] seam, so the same code reads local files and, later, datastore files over
//! HTTPS range requests without downloading them. [`VmdkSource`] exposes an opened disk as
//! the backup engine's [`ferry_archive::BlockSource`]. It does not talk to vSphere.
//!
//! # Formats
//! | createType | extents | read | write |
//! |---|---|---|---|
//! | monolithicFlat, vmfs, twoGbMaxExtentFlat | FLAT / VMFS / ZERO | yes | monolithicFlat |
//! | monolithicSparse, twoGbMaxExtentSparse | SPARSE (`KDMV` v1-3, GD/GT, redundant GD, zeroed-grain GTEs) | yes | monolithicSparse |
//! | streamOptimized | SPARSE, compressed grains with markers, GD in the footer | yes | yes, single forward pass |
//! | vmfsSparse | VMFSSPARSE (`COWD`) | yes | no |
//! | seSparse | SESPARSE | yes | no |
//!
//! Snapshot chains are followed through `parentFileNameHint`, checking each parent's `CID`
//! against the child's `parentCID`, with loop and depth limits. [`Vmdk::map`] gives the
//! allocation (data / zeroed / unallocated, with the chain depth) so backups skip holes.
//!
//! # Why our own, and what of `vmdk-core`
//! `vmdk-core` (the old `vmdk` crate renamed) is synchronous and read-only, reads whole
//! local files through `std::fs`, and has no allocation map, no chain CID checks, no COWD or
//! SESparse and no writer. The datastore transport needs async positional reads of remote
//! files, and restores and the OVA need a streaming writer, so none of it can serve in
//! production: it is a dev-dependency only, an independent oracle that reads back what our
//! writer produces. `qemu-img` is the other oracle.
//!
//! # Use
//! ```no_run
//! # async fn demo(out: &mut tokio::fs::File) -> Result<(), ferry_vmdk::VmdkError> {
//! use ferry_vmdk::{write_stream_optimized, VmdkSource, WriteOptions};
//! // A local VMDK (any subformat, with its snapshot chain) as the engine's BlockSource.
//! let src = VmdkSource::open_path(std::path::Path::new("vm/disk-000002.vmdk")).await?;
//! // Any BlockSource to a streamOptimized VMDK, in one forward pass.
//! write_stream_optimized(&src, out, &WriteOptions::default()).await?;
//! # Ok(()) }
//! ```
//!
//! # Proof
//! Integration tests compare every subformat qemu-img creates with `qemu-img convert` and
//! `qemu-img map`, COWD and SESparse images built byte by byte with qemu-img's reading of
//! them, and the writers' output with `qemu-img check`/`compare` and `vmdk-core`. The fuzz
//! target is in `fuzz/` (`cargo +nightly fuzz run parse`, seeds from `fuzz/seed.sh`); the
//! benchmark against qemu-img is `tests/bench/vmdk.sh`.
//!
//! # Hostile input
//! Every offset and size read from a file is checked against the file's length before it is
//! used, so a corrupt or hostile file gives a [`VmdkError`], never a panic, a hang or an
//! allocation larger than the file justifies (the grain directory must fit in the file,
//! grains are at most 32 MiB, inflating never grows past one grain).

pub mod cowd;
pub mod descriptor;
pub mod disk;
pub mod error;
pub mod io;
pub mod sesparse;
pub mod source;
pub mod sparse;
pub mod writer;

pub use descriptor::{Descriptor, ExtentLine, ExtentType};
pub use disk::Vmdk;
pub use error::{Result, VmdkError};
pub use io::{ByteSource, DirResolver, FileByteSource, MemByteSource, MemResolver, Resolver};
pub use source::VmdkSource;
pub use writer::{
    write_monolithic_flat, write_monolithic_sparse, write_stream_optimized,
    write_stream_optimized_sync, WriteOptions, WriteStats,
};

/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// How a range of the disk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alloc {
    /// Stored data.
    Data,
    /// Known zeros (ZERO extent, zeroed grain).
    Zero,
    /// Not allocated anywhere in the chain: reads as zeros.
    Unallocated,
}

/// One run of the allocation map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRun {
    /// Disk offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the range is.
    pub kind: Alloc,
    /// Which layer answered: 0 is the opened disk, 1 its parent, ...
    pub depth: usize,
}
