//! The input seam: [`BlockSource`], and the local raw file source.
//!
//! Every transport (local file, VMDK over datastore HTTPS, NBD, later NFC and HotAdd) is a
//! `BlockSource`. The engine asks it for the allocation of a window, optionally for changed
//! extents, and reads whole chunks at disk offsets.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

/// Largest disk Ferry backs up: vSphere's largest virtual disk, 62 TB (62 TiB).
pub const MAX_DISK_SIZE: u64 = 62 << 40;

/// Errors of a block source.
///
/// Each variant's message carries its cause's text and does not also return the cause from
/// `source()`, so a printed chain names every cause once.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O error on the source.
    #[error("{what}: {error}")]
    Io {
        /// What was being read.
        what: String,
        /// Underlying error.
        error: std::io::Error,
    },
    /// The path is not something that holds a disk (a directory, a character device, ...).
    #[error("{path} is {kind}, not a disk: give a raw image file, a block device, a .vmdk file or an NBD URI")]
    NotADisk {
        /// The path given.
        path: String,
        /// What it is ("a directory", "a FIFO", ...).
        kind: &'static str,
    },
    /// The disk is larger than any disk vSphere allows.
    #[error("{what} is {size} bytes, larger than the largest disk Ferry backs up ({MAX_DISK_SIZE} bytes, 62 TiB)")]
    TooLarge {
        /// Which disk.
        what: String,
        /// Its size.
        size: u64,
    },
    /// The source got shorter while it was being read.
    #[error("{what} shrank from {expected} to {found} bytes during the backup: the restore point would be incomplete; back up a snapshot or a disk nobody writes to")]
    Shrank {
        /// Which source.
        what: String,
        /// Size when the backup started.
        expected: u64,
        /// Size now.
        found: u64,
    },
    /// A read or query outside the disk.
    #[error("read of {len} bytes at {offset} is past the end of a {size}-byte disk")]
    OutOfRange {
        /// Offset requested.
        offset: u64,
        /// Length requested.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// A transport-specific failure (protocol error, bad VMDK, ...).
    #[error("{0}")]
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

/// How a range of the disk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated data: must be read.
    Data,
    /// Reads as zeros (a hole, or known zeros): never read.
    Zero,
}

/// One run of the allocation map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Data or zero.
    pub kind: ExtentKind,
}

/// Sorted, non-overlapping byte ranges that changed since a base (CBT, a dirty bitmap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedExtents {
    ranges: Vec<Range<u64>>,
}

impl ChangedExtents {
    /// Builds the map from ranges in any order; overlapping and adjacent ranges merge.
    pub fn new(mut ranges: Vec<Range<u64>>) -> Self {
        ranges.retain(|r| r.end > r.start);
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        ChangedExtents { ranges: merged }
    }

    /// True when any changed byte falls in `[start, end)`.
    pub fn intersects(&self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= start);
        self.ranges.get(i).is_some_and(|r| r.start < end)
    }

    /// Total changed bytes.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// The merged ranges.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Parses the text form: one `OFFSET LENGTH` pair per line, `#` comments allowed.
    pub fn parse_text(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let parse = |s: Option<&str>| -> Result<u64, String> {
                s.ok_or_else(|| format!("line {}: expected OFFSET LENGTH", n + 1))?
                    .parse::<u64>()
                    .map_err(|e| format!("line {}: {e}", n + 1))
            };
            let off = parse(it.next())?;
            let len = parse(it.next())?;
            let end = off
                .checked_add(len)
                .ok_or_else(|| format!("line {}: range overflows", n + 1))?;
            ranges.push(off..end);
        }
        Ok(ChangedExtents::new(ranges))
    }
}

/// A disk to back up.
#[async_trait]
pub trait BlockSource: Send + Sync {
    /// Disk size in bytes.
    fn size(&self) -> u64;

    /// A short, secret-free description for logs.
    fn describe(&self) -> String;

    /// Allocation of `[offset, offset+len)`, as sorted extents covering the range, or `None`
    /// when the source cannot tell (everything is then read).
    async fn allocation(&self, offset: u64, len: u64) -> Result<Option<Vec<Extent>>, SourceError>;

    /// Extents changed since the source's own base (for example a dirty bitmap), when known.
    async fn changed(&self) -> Result<Option<ChangedExtents>, SourceError> {
        Ok(None)
    }

    /// Fills `buf` (its whole length) from `offset`. Reads past the end are errors.
    async fn read_at(&self, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>, SourceError>;

    /// Called once every chunk was read: fails when the source changed shape meanwhile (a
    /// file truncated during the backup), so that no short restore point is committed.
    async fn finish(&self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Refuses a disk size above [`MAX_DISK_SIZE`]; every transport's size passes here before
/// the engine sizes anything by it.
pub fn check_disk_size(what: &str, size: u64) -> Result<(), SourceError> {
    if size > MAX_DISK_SIZE {
        return Err(SourceError::TooLarge {
            what: what.to_string(),
            size,
        });
    }
    Ok(())
}

/// What a file type is, for messages; `None` for a regular file or block device.
fn not_a_disk(ft: std::fs::FileType) -> Option<&'static str> {
    if ft.is_file() || ft.is_block_device() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file or block device")
    }
}

/// A local raw disk image or block device. Holes come from `SEEK_DATA`/`SEEK_HOLE`.
#[derive(Debug, Clone)]
pub struct FileSource {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    seek_holes: bool,
}

impl FileSource {
    /// Opens a raw image or block device read-only. Anything else (a directory, a character
    /// device such as /dev/zero, a FIFO, a socket) and disks above [`MAX_DISK_SIZE`] are
    /// refused before anything is sized by them.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let io = |e| SourceError::Io {
            what: format!("open {}", path.display()),
            error: e,
        };
        let refuse = |kind| SourceError::NotADisk {
            path: path.display().to_string(),
            kind,
        };
        // Checked before opening: opening a FIFO for reading would wait for a writer.
        let meta = std::fs::metadata(path).map_err(io)?;
        if let Some(kind) = not_a_disk(meta.file_type()) {
            return Err(refuse(kind));
        }
        // O_NONBLOCK in case the path was swapped for a FIFO since; no effect on files.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if let Some(kind) = not_a_disk(meta.file_type()) {
            return Err(refuse(kind));
        }
        let (size, seek_holes) = if meta.is_file() {
            (meta.len(), true)
        } else {
            // Block devices report their size through seeking to the end.
            let end = {
                // SAFETY: lseek on a valid, owned descriptor has no memory effects.
                unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) }
            };
            if end < 0 {
                return Err(io(std::io::Error::last_os_error()));
            }
            (end as u64, false)
        };
        check_disk_size(&path.display().to_string(), size)?;
        Ok(FileSource {
            file: Arc::new(file),
            path: path.to_path_buf(),
            size,
            seek_holes,
        })
    }

    /// Fails when the file is now shorter than when it was opened.
    fn check_size(&self) -> Result<(), SourceError> {
        if !self.seek_holes {
            return Ok(());
        }
        let found = self
            .file
            .metadata()
            .map_err(|e| SourceError::Io {
                what: format!("stat {}", self.path.display()),
                error: e,
            })?
            .len();
        if found < self.size {
            return Err(SourceError::Shrank {
                what: self.path.display().to_string(),
                expected: self.size,
                found,
            });
        }
        Ok(())
    }

    fn lseek(&self, off: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        let off =
            libc::off_t::try_from(off).map_err(|_| std::io::Error::other("offset overflow"))?;
        // SAFETY: lseek on a valid, owned descriptor has no memory effects.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }

    fn allocation_blocking(&self, offset: u64, len: u64) -> std::io::Result<Option<Vec<Extent>>> {
        if !self.seek_holes {
            return Ok(None);
        }
        let end = offset + len;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match self.lseek(pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d.min(end),
                Ok(None) => end,
                // Filesystems without SEEK_DATA: everything is data.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(e) => return Err(e),
            };
            if data > pos {
                out.push(Extent {
                    offset: pos,
                    len: data - pos,
                    kind: ExtentKind::Zero,
                });
                pos = data;
            }
            if pos >= end {
                break;
            }
            let hole = self.lseek(pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            out.push(Extent {
                offset: pos,
                len: hole - pos,
                kind: ExtentKind::Data,
            });
            pos = hole;
        }
        Ok(Some(out))
    }
}

#[async_trait]
impl BlockSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Option<Vec<Extent>>, SourceError> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(SourceError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        let this = self.clone();
        let what = format!("allocation map of {}", self.path.display());
        let alloc = tokio::task::spawn_blocking(move || this.allocation_blocking(offset, len))
            .await
            .map_err(|e| SourceError::Transport(e.to_string().into()))?
            .map_err(|e| SourceError::Io { what, error: e })?;
        // A truncated file reads as a hole past its new end: that must not become zeros.
        self.check_size()?;
        Ok(alloc)
    }

    async fn read_at(&self, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, SourceError> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(SourceError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        let file = self.file.clone();
        let what = format!("read {} at {offset}", self.path.display());
        let res =
            tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf, offset).map(|()| buf))
                .await
                .map_err(|e| SourceError::Transport(e.to_string().into()))?;
        match res {
            Ok(buf) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.check_size()?;
                Err(SourceError::Io { what, error: e })
            }
            Err(e) => Err(SourceError::Io { what, error: e }),
        }
    }

    async fn finish(&self) -> Result<(), SourceError> {
        self.check_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_extents_merge_and_query() {
        let c = ChangedExtents::new(vec![10..20, 0..5, 18..30, 40..41, 50..50]);
        assert_eq!(c.ranges(), &[0..5, 10..30, 40..41]);
        assert!(c.intersects(4, 6));
        assert!(!c.intersects(5, 10));
        assert!(c.intersects(29, 100));
        assert!(!c.intersects(30, 40));
        assert!(!c.intersects(41, 1000));
        assert_eq!(c.total(), 26);
        let p = ChangedExtents::parse_text("# x\n0 5\n10 20 # c\n\n").unwrap();
        assert_eq!(p.ranges(), &[0..5, 10..30]);
        assert!(ChangedExtents::parse_text("1").is_err());
        assert!(ChangedExtents::parse_text("18446744073709551615 2").is_err());
    }

    #[test]
    fn only_files_and_block_devices_are_disks() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        for (path, kind) in [
            (dir.path().to_path_buf(), "a directory"),
            (PathBuf::from("/dev/zero"), "a character device"),
        ] {
            let e = FileSource::open(&path).unwrap_err();
            assert!(
                matches!(e, SourceError::NotADisk { kind: k, .. } if k == kind),
                "{e}"
            );
        }
        // The cause is in the message once, and not returned again from source().
        let e = FileSource::open(&dir.path().join("gone")).unwrap_err();
        assert_eq!(e.to_string().matches("No such file").count(), 1, "{e}");
        assert!(e.source().is_none());
        assert!(check_disk_size("d", MAX_DISK_SIZE).is_ok());
        assert!(matches!(
            check_disk_size("d", MAX_DISK_SIZE + 1),
            Err(SourceError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_file_that_shrinks_is_an_error_not_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let f = File::create(&p).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 0).unwrap();
        f.set_len(8 << 20).unwrap();
        let s = FileSource::open(&p).unwrap();
        s.finish().await.unwrap();
        f.set_len(1 << 20).unwrap();
        let e = s.allocation(0, 8 << 20).await.unwrap_err();
        assert!(
            matches!(e, SourceError::Shrank { found, .. } if found == 1 << 20),
            "{e}"
        );
        let e = s.read_at(4 << 20, vec![0; 4096]).await.unwrap_err();
        assert!(matches!(e, SourceError::Shrank { .. }), "{e}");
        assert!(s.finish().await.is_err());
    }

    #[tokio::test]
    async fn file_holes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 8 << 20).unwrap();
        f.sync_all().unwrap();
        let s = FileSource::open(&p).unwrap();
        let a = s.allocation(0, 64 << 20).await.unwrap().unwrap();
        let data: u64 = a
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| e.len)
            .sum();
        assert!((1 << 20..8 << 20).contains(&data), "data {data}");
        assert_eq!(a.iter().map(|e| e.len).sum::<u64>(), 64 << 20);
        let buf = s.read_at(8 << 20, vec![0; 4]).await.unwrap();
        assert_eq!(buf, vec![7; 4]);
        assert!(s.read_at(64 << 20, vec![0; 1]).await.is_err());
    }
}
