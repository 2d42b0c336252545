//! Helpers shared by the integration tests: running qemu-img/qemu-io and comparing results.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use ferry_vmdk::{Alloc, Vmdk};

/// Runs a tool and returns stdout; panics with a clear message if it is missing or fails.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required for this test (install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {} {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes `path` of subformat `sub` holding what `cmds` write. streamOptimized only appends
/// whole grains in qemu, so it is made the way real ones are: a raw image, converted.
pub fn make(path: &Path, sub: &str, extra: &str, size: &str, cmds: &[&str]) {
    if sub == "streamOptimized" {
        let raw = path.with_extension("src.raw");
        run(
            "qemu-img",
            &["create", "-q", "-f", "raw", raw.to_str().unwrap(), size],
        );
        qemu_io_fmt(&raw, "raw", cmds);
        let o = format!("subformat={sub}");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "vmdk",
                "-o",
                &o,
                raw.to_str().unwrap(),
                path.to_str().unwrap(),
            ],
        );
        std::fs::remove_file(&raw).unwrap();
    } else {
        create(path, sub, extra, size);
        qemu_io(path, cmds);
    }
}

/// `qemu-img create -f vmdk -o subformat=SUB[,extra] PATH SIZE`.
pub fn create(path: &Path, sub: &str, extra: &str, size: &str) {
    let o = if extra.is_empty() {
        format!("subformat={sub}")
    } else {
        format!("subformat={sub},{extra}")
    };
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &o,
            path.to_str().unwrap(),
            size,
        ],
    );
}

/// Writes with qemu-io commands such as `write -P 0xab 1M 64k`.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    qemu_io_fmt(path, "vmdk", cmds)
}

/// qemu-io on an image of format `fmt`.
pub fn qemu_io_fmt(path: &Path, fmt: &str, cmds: &[&str]) {
    if cmds.is_empty() {
        return;
    }
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(path.to_str().unwrap());
    run("qemu-io", &args);
}

/// What qemu-img convert -O raw makes of `path`.
pub fn qemu_raw(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.qemu.raw",
        path.file_name().unwrap().to_string_lossy()
    ));
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            path.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

/// qemu-img map as (start, len, data, depth) runs, merged.
pub fn qemu_map(path: &Path, extra: &[&str]) -> Vec<(u64, u64, bool, u64)> {
    let mut args = vec!["map", "--output=json"];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    let j: serde_json::Value = serde_json::from_str(&run("qemu-img", &args)).unwrap();
    let mut out: Vec<(u64, u64, bool, u64)> = Vec::new();
    for e in j.as_array().unwrap() {
        let s = e["start"].as_u64().unwrap();
        let l = e["length"].as_u64().unwrap();
        let d = e["data"].as_bool().unwrap();
        let depth = if d { e["depth"].as_u64().unwrap() } else { 0 };
        push(&mut out, (s, l, d, depth));
    }
    out
}

fn push(out: &mut Vec<(u64, u64, bool, u64)>, r: (u64, u64, bool, u64)) {
    match out.last_mut() {
        Some(l) if l.2 == r.2 && l.3 == r.3 && l.0 + l.1 == r.0 => l.1 += r.1,
        _ => out.push(r),
    }
}

/// Our map in the same shape as [`qemu_map`].
pub async fn our_map(v: &Vmdk, off: u64, len: u64) -> Vec<(u64, u64, bool, u64)> {
    let mut out = Vec::new();
    for r in v.map(off, len).await.unwrap() {
        let d = r.kind == Alloc::Data;
        push(
            &mut out,
            (r.offset, r.len, d, if d { r.depth as u64 } else { 0 }),
        );
    }
    out
}

/// Reads the whole disk through our reader in 3 MiB pieces (not grain aligned on purpose).
pub async fn read_all(v: &Vmdk) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    for (i, c) in buf.chunks_mut(3 << 20).enumerate() {
        v.read_at(i as u64 * (3 << 20), c).await.unwrap();
    }
    buf
}

/// A disk in memory as a [`ferry_archive::BlockSource`] (no allocation map).
#[derive(Debug)]
pub struct MemDisk(pub Vec<u8>);

#[async_trait::async_trait]
impl ferry_archive::BlockSource for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn describe(&self) -> String {
        "memory".into()
    }
    async fn allocation(
        &self,
        _offset: u64,
        _len: u64,
    ) -> Result<Option<Vec<ferry_archive::Extent>>, ferry_archive::SourceError> {
        Ok(None)
    }
    async fn read_at(
        &self,
        offset: u64,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, ferry_archive::SourceError> {
        let o = offset as usize;
        let n = buf.len();
        buf.copy_from_slice(&self.0[o..o + n]);
        Ok(buf)
    }
}
