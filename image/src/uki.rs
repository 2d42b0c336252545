//! UKI: appends the sections systemd-stub reads (`.osrel`, `.cmdline`,
//! `.initrd`, `.linux`) to systemd's EFI stub (`linuxx64.efi.stub` from
//! Debian's `systemd-boot-efi`).
//!
//! The PE/COFF writer is deliberately small: it adds section headers in the
//! free space of the header area (it refuses when there is none), places
//! each new section after the last one, page-aligned in memory and
//! `FileAlignment`-aligned in the file, and updates `NumberOfSections`,
//! `SizeOfInitializedData`, `SizeOfImage` and the checksum. `.linux` goes
//! last, as `ukify` does. A stub carrying a signature (security directory) is
//! refused, since appending would invalidate it.

use crate::error::{ImageError, Result};

/// Where Debian's `systemd-boot-efi` installs the x86-64 stub.
pub const STUB_PATH: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
const DATA_RO: u32 = 0x4000_0040;
/// Memory alignment of appended sections (a page, a multiple of every
/// `SectionAlignment` a stub uses).
const PAGE: u64 = 4096;
const SECTION_HEADER: usize = 40;

/// The payload of a UKI.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    /// `/etc/os-release` text.
    pub osrel: &'a [u8],
    /// Kernel command line.
    pub cmdline: &'a [u8],
    /// The kernel (bzImage).
    pub linux: &'a [u8],
    /// The initramfs.
    pub initrd: &'a [u8],
}

/// Builds a UKI from the stub and the parts.
pub fn build(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>> {
    add_sections(
        stub,
        &[
            (".osrel", parts.osrel),
            (".cmdline", parts.cmdline),
            (".initrd", parts.initrd),
            (".linux", parts.linux),
        ],
    )
}

/// One section header, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    pub characteristics: u32,
}

fn pe_err(msg: impl Into<String>) -> ImageError {
    ImageError::Pe(msg.into())
}

fn rd16(b: &[u8], off: usize) -> Result<u16> {
    b.get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| pe_err(format!("truncated at {off}")))
}

fn rd32(b: &[u8], off: usize) -> Result<u32> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| pe_err(format!("truncated at {off}")))
}

fn wr16(b: &mut [u8], off: usize, v: u16) -> Result<()> {
    b.get_mut(off..off + 2)
        .ok_or_else(|| pe_err(format!("write out of range at {off}")))?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn wr32(b: &mut [u8], off: usize, v: u32) -> Result<()> {
    b.get_mut(off..off + 4)
        .ok_or_else(|| pe_err(format!("write out of range at {off}")))?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn to_u32(v: u64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| pe_err(format!("{what} {v} does not fit in 32 bits")))
}

/// Offsets of the structures of a PE32+ image.
struct Layout {
    coff: usize,
    opt: usize,
    table: usize,
    count: usize,
}

fn layout(pe: &[u8]) -> Result<Layout> {
    if pe.get(0..2) != Some(b"MZ") {
        return Err(pe_err("no MZ header"));
    }
    let pe_off = rd32(pe, 0x3c)? as usize;
    if pe.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
        return Err(pe_err("no PE signature"));
    }
    let coff = pe_off + 4;
    let count = usize::from(rd16(pe, coff + 2)?);
    let opt_size = usize::from(rd16(pe, coff + 16)?);
    let opt = coff + 20;
    if rd16(pe, opt)? != 0x20b {
        return Err(pe_err("not a PE32+ image"));
    }
    Ok(Layout {
        coff,
        opt,
        table: opt + opt_size,
        count,
    })
}

/// Reads the section table.
pub fn sections(pe: &[u8]) -> Result<Vec<Section>> {
    let l = layout(pe)?;
    (0..l.count)
        .map(|i| {
            let h = l.table + i * SECTION_HEADER;
            let raw = pe
                .get(h..h + 8)
                .ok_or_else(|| pe_err("truncated section table"))?;
            let name = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string();
            Ok(Section {
                name,
                virtual_size: rd32(pe, h + 8)?,
                virtual_address: rd32(pe, h + 12)?,
                raw_size: rd32(pe, h + 16)?,
                raw_offset: rd32(pe, h + 20)?,
                characteristics: rd32(pe, h + 36)?,
            })
        })
        .collect()
}

/// Appends read-only data sections to a PE32+ image.
pub fn add_sections(pe: &[u8], new: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let l = layout(pe)?;
    let existing = sections(pe)?;
    let section_align = u64::from(rd32(pe, l.opt + 32)?);
    let file_align = u64::from(rd32(pe, l.opt + 36)?);
    let size_of_headers = u64::from(rd32(pe, l.opt + 60)?);
    if section_align == 0 || file_align == 0 || !PAGE.is_multiple_of(section_align) {
        return Err(pe_err(format!(
            "unsupported alignment: section {section_align}, file {file_align}"
        )));
    }
    let dirs = rd32(pe, l.opt + 108)?;
    if dirs > 4 && rd32(pe, l.opt + 112 + 4 * 8 + 4)? != 0 {
        return Err(pe_err(
            "the stub is signed; appending would break the signature",
        ));
    }
    for s in &existing {
        if new.iter().any(|(n, _)| *n == s.name) {
            return Err(pe_err(format!("the stub already has a {} section", s.name)));
        }
    }
    // The new headers must fit before the first section's data.
    let table_end = (l.table + (l.count + new.len()) * SECTION_HEADER) as u64;
    let first_raw = existing
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| u64::from(s.raw_offset))
        .min()
        .unwrap_or(size_of_headers);
    if table_end > size_of_headers.min(first_raw) {
        return Err(pe_err(format!(
            "no room for {} more section headers (table would end at {table_end}, headers end at {})",
            new.len(),
            size_of_headers.min(first_raw)
        )));
    }
    let mut next_va = existing
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
        .max()
        .unwrap_or(size_of_headers);
    let sections_end = existing
        .iter()
        .map(|s| u64::from(s.raw_offset) + u64::from(s.raw_size))
        .max()
        .unwrap_or(size_of_headers);
    // A COFF symbol table (Debian's stub keeps one) is debug data after the
    // sections that no loader reads; it is dropped, since our sections go
    // where it was.
    let symbols = u64::from(rd32(pe, l.coff + 8)?);
    let keep = if symbols != 0 {
        if symbols < sections_end {
            return Err(pe_err("the COFF symbol table overlaps the sections"));
        }
        sections_end
    } else {
        sections_end.max(pe.len() as u64)
    };
    let keep = usize::try_from(keep).map_err(|_| pe_err("image too large"))?;
    let mut out = pe
        .get(..keep)
        .ok_or_else(|| pe_err("sections extend past the end of the file"))?
        .to_vec();
    if symbols != 0 {
        wr32(&mut out, l.coff + 8, 0)?;
        wr32(&mut out, l.coff + 12, 0)?;
    }
    out.resize(align_up(keep as u64, file_align) as usize, 0);
    let mut init_data = u64::from(rd32(pe, l.opt + 8)?);
    for (i, (name, data)) in new.iter().enumerate() {
        if name.len() > 8 {
            return Err(pe_err(format!(
                "section name {name} is longer than 8 bytes"
            )));
        }
        let va = align_up(next_va, PAGE);
        let raw_off = out.len() as u64;
        let raw_size = align_up(data.len() as u64, file_align);
        out.extend_from_slice(data);
        out.resize((raw_off + raw_size) as usize, 0);
        next_va = va + data.len() as u64;
        init_data += raw_size;

        let h = l.table + (l.count + i) * SECTION_HEADER;
        let mut hdr = [0u8; SECTION_HEADER];
        hdr[..name.len()].copy_from_slice(name.as_bytes());
        hdr[8..12].copy_from_slice(&to_u32(data.len() as u64, "section size")?.to_le_bytes());
        hdr[12..16].copy_from_slice(&to_u32(va, "virtual address")?.to_le_bytes());
        hdr[16..20].copy_from_slice(&to_u32(raw_size, "raw size")?.to_le_bytes());
        hdr[20..24].copy_from_slice(&to_u32(raw_off, "file offset")?.to_le_bytes());
        hdr[36..40].copy_from_slice(&DATA_RO.to_le_bytes());
        out.get_mut(h..h + SECTION_HEADER)
            .ok_or_else(|| pe_err("section table out of range"))?
            .copy_from_slice(&hdr);
    }
    let count = u16::try_from(l.count + new.len()).map_err(|_| pe_err("too many sections"))?;
    wr16(&mut out, l.coff + 2, count)?;
    wr32(
        &mut out,
        l.opt + 8,
        to_u32(init_data, "SizeOfInitializedData")?,
    )?;
    wr32(
        &mut out,
        l.opt + 56,
        to_u32(align_up(next_va, section_align), "SizeOfImage")?,
    )?;
    let sum = checksum(&out, l.opt + 64);
    wr32(&mut out, l.opt + 64, sum)?;
    Ok(out)
}

/// The PE image checksum (as `imagehlp!CheckSumMappedFile` computes it):
/// 16-bit one's-complement-style sum of the file with the checksum field as
/// zero, plus the file length.
pub fn checksum(pe: &[u8], field: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, w) in pe.chunks(2).enumerate() {
        let off = i * 2;
        if off == field || off == field + 2 {
            continue;
        }
        let v = u64::from(w[0]) | (u64::from(*w.get(1).unwrap_or(&0)) << 8);
        sum += v;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: headers in 0x400 bytes, one .text section.
    fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x600];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 32..opt + 36].copy_from_slice(&0x200u32.to_le_bytes());
        b[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
        b[opt + 56..opt + 60].copy_from_slice(&0x1200u32.to_le_bytes());
        b[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let t = opt + 240;
        b[t..t + 5].copy_from_slice(b".text");
        b[t + 8..t + 12].copy_from_slice(&0x100u32.to_le_bytes());
        b[t + 12..t + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        b[t + 16..t + 20].copy_from_slice(&0x200u32.to_le_bytes());
        b[t + 20..t + 24].copy_from_slice(&0x400u32.to_le_bytes());
        b
    }

    #[test]
    fn appends_aligned_sections() {
        let pe = tiny_pe();
        let out = add_sections(&pe, &[(".osrel", b"ID=x\n"), (".linux", &[7u8; 5000])]).unwrap();
        let s = sections(&out).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].name, ".osrel");
        assert_eq!(s[1].virtual_address, 0x2000);
        assert_eq!(s[1].virtual_size, 5);
        assert_eq!(s[2].virtual_address, 0x3000);
        assert_eq!(s[2].raw_size, 5120);
        assert_eq!(s[2].raw_offset % 0x200, 0);
        let off = s[2].raw_offset as usize;
        assert_eq!(&out[off..off + 5000], &[7u8; 5000][..]);
        // SizeOfImage covers the last section.
        let l = layout(&out).unwrap();
        assert_eq!(rd32(&out, l.opt + 56).unwrap(), 0x3000 + 5120);
    }

    #[test]
    fn drops_a_trailing_coff_symbol_table() {
        let mut pe = tiny_pe();
        let coff = 0x84;
        pe[coff + 8..coff + 12].copy_from_slice(&0x600u32.to_le_bytes());
        pe[coff + 12..coff + 16].copy_from_slice(&3u32.to_le_bytes());
        pe.extend_from_slice(&[0xEE; 100]);
        let out = add_sections(&pe, &[(".cmdline", b"quiet")]).unwrap();
        let l = layout(&out).unwrap();
        assert_eq!(rd32(&out, l.coff + 8).unwrap(), 0);
        assert_eq!(rd32(&out, l.coff + 12).unwrap(), 0);
        let s = sections(&out).unwrap();
        assert_eq!(s[1].raw_offset, 0x600, "placed where the symbols were");
        assert!(!out.windows(4).any(|w| w == [0xEE; 4]));
        // A symbol table inside the sections is refused.
        let mut bad = tiny_pe();
        bad[coff + 8..coff + 12].copy_from_slice(&0x400u32.to_le_bytes());
        assert!(add_sections(&bad, &[(".x", b"x")]).is_err());
    }

    #[test]
    fn refuses_duplicates_and_full_headers() {
        let pe = tiny_pe();
        assert!(add_sections(&pe, &[(".text", b"x")]).is_err());
        let many: Vec<(&str, &[u8])> = (0..20).map(|_| (".x", &b"x"[..])).collect();
        assert!(add_sections(&pe, &many).is_err());
        assert!(add_sections(b"not a PE", &[(".x", b"x")]).is_err());
    }
}
