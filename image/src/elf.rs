//! Minimal ELF64 reading: the `.modinfo` section of kernel modules and the
//! program headers of our binaries (to prove they are static).

use anyhow::{bail, Context};

fn u16_at(b: &[u8], o: usize) -> anyhow::Result<u16> {
    let s = b.get(o..o + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> anyhow::Result<u32> {
    let s = b.get(o..o + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], o: usize) -> anyhow::Result<u64> {
    let s = b.get(o..o + 8).context("ELF truncated")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn usize_at(b: &[u8], o: usize) -> anyhow::Result<usize> {
    usize::try_from(u64_at(b, o)?).context("ELF offset overflows usize")
}

fn check_header(b: &[u8]) -> anyhow::Result<()> {
    if b.get(0..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 file");
    }
    Ok(())
}

/// Returns the contents of the named section.
pub fn section<'a>(b: &'a [u8], want: &str) -> anyhow::Result<Option<&'a [u8]>> {
    check_header(b)?;
    let shoff = usize_at(b, 0x28)?;
    let shentsize = usize::from(u16_at(b, 0x3A)?);
    let shnum = usize::from(u16_at(b, 0x3C)?);
    let shstrndx = usize::from(u16_at(b, 0x3E)?);
    let sh = |i: usize| shoff + i * shentsize;
    let str_off = usize_at(b, sh(shstrndx) + 24)?;
    for i in 0..shnum {
        let name_off = u32_at(b, sh(i))? as usize;
        let name = b
            .get(str_off + name_off..)
            .context("section name out of range")?;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        if &name[..end] == want.as_bytes() {
            let off = usize_at(b, sh(i) + 24)?;
            let size = usize_at(b, sh(i) + 32)?;
            return Ok(Some(
                b.get(off..off + size).context("section out of range")?,
            ));
        }
    }
    Ok(None)
}

/// `key=value` pairs of a module's `.modinfo`, in order.
pub fn modinfo(b: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let sec = section(b, ".modinfo")?.context("no .modinfo section")?;
    Ok(sec
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// True when the executable asks for no dynamic loader (PT_INTERP).
pub fn is_static(b: &[u8]) -> anyhow::Result<bool> {
    check_header(b)?;
    let phoff = usize_at(b, 0x20)?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    for i in 0..phnum {
        if u32_at(b, phoff + i * phentsize)? == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_test_binary_is_elf() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked.
        assert!(!super::is_static(&exe).unwrap());
        assert!(super::section(&exe, ".text").unwrap().is_some());
        assert!(super::section(&exe, ".nope").unwrap().is_none());
    }
}
