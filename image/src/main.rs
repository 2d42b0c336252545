//! ferry-image: assembles the appliance boot artifacts into
//! `target/appliance/`, reproducibly and without root or loop devices.
//!
//! Steps: resolve and fetch Debian's kernel package (cached under
//! `target/ferry-image-cache/`), build ferry-init and ferry-agent as static
//! release binaries, select the kernel modules with their dependencies, and
//! write a zstd-compressed newc initramfs. Outputs:
//!
//! - `vmlinuz`: the kernel;
//! - `initramfs.cpio.zst`: `/init` (ferry-init), `/sbin/ferry-agent`, the
//!   modules and their index, `/dev/console`, and nothing else;
//! - `cmdline`: the default kernel command line;
//! - `ferry.efi`: the UKI (systemd-stub + kernel + command line + initramfs);
//! - `disk.raw`: the GPT disk (ESP with the UKI, blank state partition), sparse;
//! - `ferry-agent-<version>-disk1.vmdk`: that disk as a streamOptimized VMDK;
//! - `ferry-agent-<version>.ovf`, `.mf` and `ferry-agent-<version>.ova`;
//! - `manifest.json`: versions, module list, sizes and SHA-256 of each file.
//!
//! The UKI, disk, OVF and OVA steps are in the `ferry_image` library.

mod appliance;
mod binaries;
mod cpio;
mod elf;
mod kernel;
mod kmod;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Size targets from the issues.
const MAX_INITRAMFS: u64 = 24 * 1024 * 1024;
const MAX_TOTAL: u64 = 40 * 1024 * 1024;
const MAX_OVA: u64 = 40 * 1024 * 1024;

/// Serial and VGA console; quiet keeps TCG boots fast; reboot 10 s after a
/// kernel panic instead of hanging.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200 quiet panic=10";
/// The UKI's command line. Init writes to every active console, so the
/// vSphere console (tty0) and the serial port both show its messages.
pub const UKI_CMDLINE: &str = DEFAULT_CMDLINE;

#[derive(Debug, Parser)]
#[command(
    name = "ferry-image",
    about = "Build the Ferry appliance boot artifacts"
)]
struct Args {
    /// Output directory [default: <workspace>/target/appliance]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Download and extraction cache [default: <workspace>/target/ferry-image-cache]
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Exact kernel package (default: what linux-image-amd64 depends on)
    #[arg(long)]
    kernel_package: Option<String>,
    /// Use the already built static binaries instead of running cargo
    #[arg(long)]
    no_build: bool,
    /// zstd level for the initramfs
    #[arg(long, default_value_t = 19)]
    zstd_level: i32,
    /// Fail when the size targets are exceeded
    #[arg(long)]
    enforce_size: bool,
    /// systemd's EFI stub (Debian package systemd-boot-efi)
    #[arg(long, default_value = ferry_image::uki::STUB_PATH)]
    efi_stub: PathBuf,
    /// Only the kernel and initramfs: no UKI, disk, VMDK, OVF or OVA
    #[arg(long)]
    no_ova: bool,
    /// Virtual size of the appliance disk in MiB
    #[arg(long, default_value_t = 1024)]
    disk_mib: u64,
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ws = workspace_root();
    let target = binaries::target_dir(&ws);
    let out = args.out.clone().unwrap_or_else(|| target.join("appliance"));
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| target.join("ferry-image-cache"));

    let package = match &args.kernel_package {
        Some(p) => p.clone(),
        None => kernel::resolve_package()?,
    };
    let k = kernel::fetch(&package, &cache)?;
    if !args.no_build {
        binaries::build(&ws)?;
    }
    let init = binaries::read_static(&ws, "ferry-init")?;
    let agent = binaries::read_static(&ws, "ferry-agent")?;

    let sel = kmod::select(&k.moddir, kmod::ROOT_MODULES)?;
    if !sel.missing_soft.is_empty() {
        eprintln!(
            "ferry-image: soft dependencies not in this kernel (skipped): {}",
            sel.missing_soft
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    let mut a = cpio::Archive::default();
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "mnt", "root"] {
        a.dir(d, 0o755);
    }
    a.dir("tmp", 0o1777);
    a.dir("root", 0o700);
    a.dir("var/lib/ferry", 0o700);
    a.add(
        "dev/console",
        cpio::Kind::CharDev { major: 5, minor: 1 },
        0o600,
    );
    a.add(
        "dev/null",
        cpio::Kind::CharDev { major: 1, minor: 3 },
        0o666,
    );
    let init_size = init.len() as u64;
    let agent_size = agent.len() as u64;
    a.file("init", init, 0o755);
    a.file("sbin/ferry-agent", agent, 0o755);
    a.file("etc/os-release", os_release().into_bytes(), 0o644);
    let libmod = format!("lib/modules/{}", k.release);
    for m in sel.modules.values() {
        let data =
            std::fs::read(k.moddir.join(&m.rel)).with_context(|| format!("read {}", m.rel))?;
        a.file(&format!("{libmod}/{}", m.rel), data, 0o644);
    }
    a.file(
        &format!("{libmod}/modules.dep"),
        sel.dep_file().into_bytes(),
        0o644,
    );
    a.file(
        &format!("{libmod}/modules.alias"),
        sel.alias_file().into_bytes(),
        0o644,
    );
    a.file(
        &format!("{libmod}/modules.softdep"),
        sel.softdep_file().into_bytes(),
        0o644,
    );
    if let Ok(b) = std::fs::read(k.moddir.join("modules.builtin")) {
        a.file(&format!("{libmod}/modules.builtin"), b, 0o644);
    }

    let mtime = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    let mut raw = Vec::new();
    a.write(&mut raw, mtime).context("write the cpio archive")?;
    let raw_len = raw.len() as u64;
    let zst = compress(&raw, args.zstd_level)?;

    std::fs::create_dir_all(&out).with_context(|| format!("mkdir {}", out.display()))?;
    let vmlinuz =
        std::fs::read(&k.vmlinuz).with_context(|| format!("read {}", k.vmlinuz.display()))?;
    write(&out.join("vmlinuz"), &vmlinuz)?;
    write(&out.join("initramfs.cpio.zst"), &zst)?;
    write(
        &out.join("cmdline"),
        format!("{DEFAULT_CMDLINE}\n").as_bytes(),
    )?;
    let kernel_len = vmlinuz.len() as u64;
    let initrd_len = zst.len() as u64;
    let mut files = serde_json::Map::new();
    files.insert(
        "vmlinuz".into(),
        json!({ "size": kernel_len, "sha256": sha256(&vmlinuz) }),
    );
    files.insert(
        "initramfs.cpio.zst".into(),
        json!({ "size": initrd_len, "sha256": sha256(&zst), "uncompressed": raw_len }),
    );
    let ova = if args.no_ova {
        None
    } else {
        Some(appliance::build(
            &appliance::Inputs {
                out: &out,
                stub: &args.efi_stub,
                osrel: os_release().as_bytes(),
                cmdline: UKI_CMDLINE.as_bytes(),
                linux: &vmlinuz,
                initrd: &zst,
                disk_mib: args.disk_mib,
                mtime: u64::from(mtime),
            },
            &mut files,
        )?)
    };
    let manifest = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel_package": k.package,
        "kernel_deb": k.deb.file_name().map(|f| f.to_string_lossy().into_owned()),
        "kernel_release": k.release,
        "cmdline": DEFAULT_CMDLINE,
        "uki_cmdline": UKI_CMDLINE,
        "modules": sel.modules.keys().collect::<Vec<_>>(),
        "files": files,
        "ova": ova.as_ref().map(|o| o.file_name.clone()),
    });
    write(
        &out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let ok = |b: u64, max: u64| if b < max { "ok" } else { "OVER" };
    println!(
        "ferry-image: {} ({}, kernel {})",
        out.display(),
        k.package,
        k.release
    );
    println!("  vmlinuz              {:7.2} MiB", mib(kernel_len));
    println!(
        "  initramfs.cpio.zst   {:7.2} MiB  (target < 24 MiB: {})  uncompressed {:.2} MiB:",
        mib(initrd_len),
        ok(initrd_len, MAX_INITRAMFS),
        mib(raw_len)
    );
    println!("      ferry-init       {:7.2} MiB", mib(init_size));
    println!("      ferry-agent      {:7.2} MiB", mib(agent_size));
    println!(
        "      {:3} modules      {:7.2} MiB",
        sel.modules.len(),
        mib(sel.total_bytes())
    );
    println!(
        "  kernel + initramfs   {:7.2} MiB  (target < 40 MiB: {})",
        mib(kernel_len + initrd_len),
        ok(kernel_len + initrd_len, MAX_TOTAL)
    );
    let mut over = initrd_len >= MAX_INITRAMFS || kernel_len + initrd_len >= MAX_TOTAL;
    if let Some(o) = &ova {
        println!("  ferry.efi (UKI)      {:7.2} MiB", mib(o.uki_size));
        println!(
            "  disk                 {:7.2} MiB virtual, {:.2} MiB populated; VMDK {:.2} MiB",
            mib(o.disk_capacity),
            mib(o.disk_populated),
            mib(o.vmdk_size)
        );
        println!(
            "  {}  {:7.2} MiB  (target < 40 MiB: {})",
            o.file_name,
            mib(o.ova_size),
            ok(o.ova_size, MAX_OVA)
        );
        over |= o.ova_size >= MAX_OVA;
    }
    if args.enforce_size && over {
        bail!("size targets exceeded");
    }
    Ok(())
}

fn compress(raw: &[u8], level: i32) -> anyhow::Result<Vec<u8>> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), level).context("zstd encoder")?;
    // The kernel's decompressor handles standard frames; no long mode.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    enc.multithread(u32::try_from(threads).unwrap_or(1))
        .context("zstd threads")?;
    enc.include_checksum(true).context("zstd checksum")?;
    std::io::Write::write_all(&mut enc, raw).context("zstd compress")?;
    enc.finish().context("zstd finish")
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

fn os_release() -> String {
    let v = env!("CARGO_PKG_VERSION");
    format!(
        "NAME=\"Ferry\"\nID=ferry\nPRETTY_NAME=\"Ferry backup appliance {v}\"\nVERSION_ID={v}\n"
    )
}
