//! OVA: the `.mf` manifest and the tar archive.
//!
//! The manifest has one `SHA256(<file>)= <hex>` line per file, the format
//! vCenter and ovftool verify. The OVA is a POSIX ustar archive holding the
//! `.ovf` first (vCenter streams the archive and needs the descriptor
//! before anything else), then the `.mf`, then the disks, with root
//! ownership, mode 0644 and one timestamp (`SOURCE_DATE_EPOCH`, default 0).

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{io, ImageError, Result};

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The manifest text for `(name in the OVA, path on disk)` pairs.
pub fn manifest(files: &[(&str, &Path)]) -> Result<String> {
    let mut out = String::new();
    for (name, path) in files {
        out.push_str(&format!("SHA256({name})= {}\n", sha256_file(path)?));
    }
    Ok(out)
}

/// Writes the OVA: `files` in the given order.
pub fn write(out: &Path, files: &[(&str, &Path)], mtime: u64) -> Result<()> {
    let tmp = out.with_extension("ova.tmp");
    let f = std::fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
    for (name, path) in files {
        if name.len() > 99 || name.contains('/') {
            return Err(ImageError::Template(format!(
                "{name}: OVA members are plain names under 100 bytes"
            )));
        }
        let src = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
        let len = src
            .metadata()
            .map_err(io(format!("stat {}", path.display())))?
            .len();
        let mut h = tar::Header::new_ustar();
        h.set_path(name).map_err(io(format!("tar name {name}")))?;
        h.set_size(len);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_username("root").map_err(io("tar user"))?;
        h.set_groupname("root").map_err(io("tar group"))?;
        h.set_cksum();
        tar.append(&h, src)
            .map_err(io(format!("add {name} to the OVA")))?;
    }
    let mut w = tar.into_inner().map_err(io("finish the OVA"))?;
    w.flush().map_err(io("flush the OVA"))?;
    w.into_inner()
        .map_err(|e| ImageError::Io {
            what: "flush the OVA".into(),
            error: e.into_error(),
        })?
        .sync_all()
        .map_err(io("sync the OVA"))?;
    std::fs::rename(&tmp, out).map_err(io(format!("rename to {}", out.display())))
}
