//! The text descriptor: parsing (standalone files and descriptors embedded in sparse files)
//! and rendering for the writer.

use std::collections::BTreeMap;

use crate::error::{Result, VmdkError};

/// Largest descriptor we read; real ones are under 2 KiB.
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;

/// `parentCID` of a disk without a parent.
pub const NO_PARENT: u32 = 0xffff_ffff;

/// Access mode of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-write.
    Rw,
    /// Read-only.
    RdOnly,
    /// No access.
    NoAccess,
}

/// Kind of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// Raw hosted file.
    Flat,
    /// Hosted sparse (`KDMV`).
    Sparse,
    /// Reads as zeros, no file.
    Zero,
    /// Raw file on VMFS (also VMFSRAW and VMFSRDM).
    Vmfs,
    /// VMFS sparse (`COWD`).
    VmfsSparse,
    /// Space-efficient sparse.
    SeSparse,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Kind.
    pub kind: ExtentType,
    /// File name (absent for ZERO).
    pub file: Option<String>,
    /// Start offset in the file, in sectors (FLAT/VMFS only).
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version`.
    pub version: u32,
    /// Content id.
    pub cid: u32,
    /// Parent content id, [`NO_PARENT`] for a base disk.
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: String,
    /// `parentFileNameHint`.
    pub parent_hint: Option<String>,
    /// Extents in disk order.
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` entries, key without the `ddb.` prefix kept as written.
    pub ddb: BTreeMap<String, String>,
    /// Other `key=value` lines.
    pub other: BTreeMap<String, String>,
}

impl Descriptor {
    /// Total size in sectors.
    pub fn sectors(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.sectors))
    }

    /// True when the disk has a parent.
    pub fn has_parent(&self) -> bool {
        self.parent_cid != NO_PARENT
    }

    /// Parses descriptor text from `file` (trailing NULs of an embedded descriptor allowed).
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Descriptor> {
        let err = |line: usize, msg: String| VmdkError::Descriptor {
            file: file.to_string(),
            line,
            msg,
        };
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(err(0, format!("{} bytes is too large", bytes.len())));
        }
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|e| err(0, e.to_string()))?;
        let mut d = Descriptor {
            version: 1,
            cid: 0,
            parent_cid: NO_PARENT,
            create_type: String::new(),
            parent_hint: None,
            extents: Vec::new(),
            ddb: BTreeMap::new(),
            other: BTreeMap::new(),
        };
        let mut saw_cid = false;
        let mut saw_header = false;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                if line.eq_ignore_ascii_case("# Disk DescriptorFile") {
                    saw_header = true;
                }
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                d.extents.push(parse_extent(line).map_err(|m| err(n, m))?);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(err(
                    n,
                    format!("not a key=value or extent line: {line:.60}"),
                ));
            };
            let k = k.trim();
            let v = unquote(v.trim());
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(n, format!("bad key {k:.60}")));
            }
            match k {
                "version" => {
                    d.version = v
                        .parse()
                        .map_err(|_| err(n, format!("bad version {v:.20}")))?
                }
                "CID" => {
                    d.cid = parse_hex(v).ok_or_else(|| err(n, format!("bad CID {v:.20}")))?;
                    saw_cid = true;
                }
                "parentCID" => {
                    d.parent_cid =
                        parse_hex(v).ok_or_else(|| err(n, format!("bad parentCID {v:.20}")))?
                }
                "createType" => d.create_type = v.to_string(),
                "parentFileNameHint" => d.parent_hint = Some(v.to_string()),
                _ if k.starts_with("ddb.") => {
                    d.ddb.insert(k.to_string(), v.to_string());
                }
                _ => {
                    d.other.insert(k.to_string(), v.to_string());
                }
            }
        }
        // qemu writes a 0-byte disk with no extent lines; anything else needs one.
        if d.extents.is_empty() && d.create_type.is_empty() {
            return Err(err(0, "no extent lines".into()));
        }
        if !saw_cid && !saw_header && d.create_type.is_empty() {
            return Err(err(
                0,
                "no CID, createType or header: not a descriptor".into(),
            ));
        }
        if d.has_parent() && d.parent_hint.is_none() {
            return Err(err(0, "parentCID set but no parentFileNameHint".into()));
        }
        Ok(d)
    }

    /// Renders the descriptor as VMware writes it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# Disk DescriptorFile\n");
        s.push_str(&format!("version={}\n", self.version));
        s.push_str("encoding=\"UTF-8\"\n");
        s.push_str(&format!("CID={:08x}\n", self.cid));
        s.push_str(&format!("parentCID={:08x}\n", self.parent_cid));
        s.push_str(&format!("createType=\"{}\"\n", self.create_type));
        if let Some(h) = &self.parent_hint {
            s.push_str(&format!("parentFileNameHint=\"{h}\"\n"));
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            let access = match e.access {
                Access::Rw => "RW",
                Access::RdOnly => "RDONLY",
                Access::NoAccess => "NOACCESS",
            };
            let kind = match e.kind {
                ExtentType::Flat => "FLAT",
                ExtentType::Sparse => "SPARSE",
                ExtentType::Zero => "ZERO",
                ExtentType::Vmfs => "VMFS",
                ExtentType::VmfsSparse => "VMFSSPARSE",
                ExtentType::SeSparse => "SESPARSE",
            };
            match (&e.file, e.kind) {
                (Some(f), ExtentType::Flat) => s.push_str(&format!(
                    "{access} {} {kind} \"{f}\" {}\n",
                    e.sectors, e.offset
                )),
                (Some(f), _) => s.push_str(&format!("{access} {} {kind} \"{f}\"\n", e.sectors)),
                (None, _) => s.push_str(&format!("{access} {} {kind}\n", e.sectors)),
            }
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in &self.ddb {
            s.push_str(&format!("{k} = \"{v}\"\n"));
        }
        s
    }
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn parse_hex(v: &str) -> Option<u32> {
    let v = v.trim_start_matches("0x");
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

fn parse_extent(line: &str) -> std::result::Result<ExtentLine, String> {
    // ACCESS SECTORS TYPE ["FILE" [OFFSET]]; the file name is quoted and may hold spaces.
    let (head, rest) = match line.find('"') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    let mut it = head.split_whitespace();
    let access = match it.next() {
        Some("RW") => Access::Rw,
        Some("RDONLY") => Access::RdOnly,
        _ => Access::NoAccess,
    };
    let sectors: u64 = it
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad extent size in {line:.60}"))?;
    let kind = match it.next() {
        Some("FLAT") => ExtentType::Flat,
        Some("SPARSE") => ExtentType::Sparse,
        Some("ZERO") => ExtentType::Zero,
        Some("VMFS") | Some("VMFSRAW") | Some("VMFSRDM") | Some("VMFSPASSTHROUGHRAW") => {
            ExtentType::Vmfs
        }
        Some("VMFSSPARSE") => ExtentType::VmfsSparse,
        Some("SESPARSE") => ExtentType::SeSparse,
        other => return Err(format!("unknown extent type {:.20}", other.unwrap_or(""))),
    };
    if it.next().is_some() {
        return Err(format!("unexpected field in {line:.60}"));
    }
    let (file, offset) = match rest {
        None => (None, 0),
        Some(rest) => {
            let close = rest
                .find('"')
                .ok_or_else(|| format!("unterminated file name in {line:.60}"))?;
            let name = &rest[..close];
            let tail = rest[close + 1..].trim();
            let offset = if tail.is_empty() {
                0
            } else {
                tail.parse()
                    .map_err(|_| format!("bad extent offset {tail:.20}"))?
            };
            if name.is_empty() {
                return Err("empty extent file name".into());
            }
            (Some(name.to_string()), offset)
        }
    };
    if kind != ExtentType::Zero && file.is_none() {
        return Err(format!("extent without a file: {line:.60}"));
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_snapshot_descriptor() {
        let t = b"# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fb183c20\nparentCID=1a2b3c4d\nisNativeSnapshot=\"no\"\ncreateType=\"vmfsSparse\"\nparentFileNameHint=\"base vm.vmdk\"\n# Extent description\nRW 8388608 VMFSSPARSE \"base vm-000001-delta.vmdk\"\nRW 100 FLAT \"x-flat.vmdk\" 2048\nRDONLY 10 ZERO\n\n# The Disk Data Base\n#DDB\n\nddb.longContentID = \"abc\"\nddb.adapterType=\"lsilogic\"\n\0\0\0";
        let d = Descriptor::parse("d", t).unwrap();
        assert_eq!(d.cid, 0xfb183c20);
        assert_eq!(d.parent_cid, 0x1a2b3c4d);
        assert_eq!(d.create_type, "vmfsSparse");
        assert_eq!(d.parent_hint.as_deref(), Some("base vm.vmdk"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].kind, ExtentType::VmfsSparse);
        assert_eq!(
            d.extents[0].file.as_deref(),
            Some("base vm-000001-delta.vmdk")
        );
        assert_eq!(d.extents[1].offset, 2048);
        assert_eq!(d.extents[2].kind, ExtentType::Zero);
        assert_eq!(d.extents[2].access, Access::RdOnly);
        assert_eq!(d.sectors(), 8388608 + 110);
        assert_eq!(d.ddb["ddb.adapterType"], "lsilogic");
        assert_eq!(d.other["isNativeSnapshot"], "no");
        let again = Descriptor::parse("d", d.render().as_bytes()).unwrap();
        assert_eq!(again.extents, d.extents);
        assert_eq!(again.ddb, d.ddb);
    }

    #[test]
    fn rejects_garbage() {
        for t in [
            &b"hello world"[..],
            b"\xff\xfe",
            b"CID=zz\nRW 1 FLAT \"a\"",
            b"CID=1\nRW x FLAT \"a\"",
            b"CID=1\nRW 1 BOGUS \"a\"",
            b"CID=1\nRW 1 FLAT \"a",
            b"CID=1\nRW 1 FLAT",
            b"CID=1\n",
            b"CID=1\nparentCID=2\nRW 1 FLAT \"a\"",
        ] {
            assert!(
                matches!(Descriptor::parse("g", t), Err(VmdkError::Descriptor { .. })),
                "{t:?}"
            );
        }
    }
}
