//! newc cpio writer: owns the initramfs archive format.
//!
//! Entries are written in path order with fixed owners (root) and one
//! timestamp, so the same inputs give the same bytes. Special files such as
//! `/dev/console` are described, not created, so no root is needed.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// What one archive entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    perm: u32,
}

/// An in-memory archive; paths are relative (no leading `/`).
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    /// Adds an entry and any missing parent directories (0755).
    pub fn add(&mut self, path: &str, kind: Kind, perm: u32) {
        let path = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let mut parent = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p.to_vec())
            .unwrap_or_default()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert(Entry {
                kind: Kind::Dir,
                perm: 0o755,
            });
        }
        self.entries.insert(path, Entry { kind, perm });
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.add(path, Kind::Dir, perm);
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, perm: u32) {
        self.add(path, Kind::File(data), perm);
    }

    /// Writes the archive, with `mtime` on every entry, and the trailer.
    pub fn write<W: Write>(&self, w: &mut W, mtime: u32) -> io::Result<()> {
        for (ino, (path, e)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
                Kind::Dir => (S_IFDIR | e.perm, &[], (0, 0)),
                Kind::File(d) => (S_IFREG | e.perm, d.as_slice(), (0, 0)),
                Kind::CharDev { major, minor } => (S_IFCHR | e.perm, &[], (*major, *minor)),
            };
            let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
            write_entry(w, path, ino, mode, nlink, mtime, data, rdev)?;
        }
        write_entry(w, "TRAILER!!!", 0, 0, 1, 0, &[], (0, 0))
    }
}

#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    w: &mut W,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| io::Error::other(format!("{name}: file over 4 GiB")))?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| io::Error::other("name too long"))?;
    let header = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, header.len() + name.len() + 1)?;
    w.write_all(data)?;
    pad4(w, data.len())
}

fn pad4<W: Write>(w: &mut W, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut a = Archive::default();
        a.file("/sbin/x", b"hello".to_vec(), 0o755);
        a.add("dev/console", Kind::CharDev { major: 5, minor: 1 }, 0o600);
        let mut out = Vec::new();
        a.write(&mut out, 0).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // Parents come first, in path order.
        let order: Vec<_> = [
            "dev\0",
            "dev/console\0",
            "sbin\0",
            "sbin/x\0",
            "TRAILER!!!\0",
        ]
        .iter()
        .map(|n| text.find(n).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        // dev/console: char device 5:1, mode 020600.
        let at = text.find("dev/console").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "00002180");
        assert_eq!(&text[at + 78..at + 86], "00000005");
        assert_eq!(&text[at + 86..at + 94], "00000001");
    }

    #[test]
    fn reproducible() {
        let build = || {
            let mut a = Archive::default();
            a.file("b", vec![1, 2, 3], 0o644);
            a.file("a/c", vec![4], 0o644);
            let mut out = Vec::new();
            a.write(&mut out, 42).unwrap();
            out
        };
        assert_eq!(build(), build());
    }
}
