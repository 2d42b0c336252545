//! Mounts: owns the early API filesystems and unmounting them at shutdown.
//!
//! The root is the initramfs (rootfs), which cannot be unmounted. Everything
//! init mounts is recorded so shutdown unmounts it in reverse order.

use std::path::Path;

use anyhow::Context;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One filesystem init mounts at boot.
#[derive(Debug, Clone, Copy)]
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// API filesystems (proc, sysfs, devtmpfs, devpts) hold no data; if one
    /// is still referenced at shutdown (init's console, a library's cached
    /// /dev/urandom) it is detached, which is not an unclean unmount.
    pub api: bool,
}

/// The early mounts, in mount order.
pub fn early_mounts() -> [Mount; 6] {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid_nodev_noexec,
            data: None,
            api: true,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_nodev_noexec,
            data: None,
            api: true,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
            api: true,
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("gid=5,mode=0620,ptmxmode=0666"),
            api: true,
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755,size=64m"),
            api: false,
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777,size=256m"),
            api: false,
        },
    ]
}

/// Mounts one filesystem, creating its mount point. An already mounted
/// target (EBUSY) counts as success so a restarted init is harmless.
pub fn mount_one(m: &Mount) -> anyhow::Result<()> {
    std::fs::create_dir_all(m.target).with_context(|| format!("mkdir {}", m.target))?;
    match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mount {} on {}", m.fstype, m.target)),
    }
}

/// Mounts all early filesystems. Failure of any is fatal for the appliance.
pub fn mount_early() -> anyhow::Result<()> {
    for m in early_mounts() {
        mount_one(&m)?;
    }
    // The agent and the ring live here; created before anything logs to it.
    std::fs::create_dir_all("/run/ferry").context("mkdir /run/ferry")?;
    Ok(())
}

/// Filesystems mounted after the early ones (the state partition), in mount
/// order; unmounted first at shutdown.
static EXTRA: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records a mount that [`unmount_all`] must undo.
pub fn register_extra(target: &str) {
    EXTRA
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(target.to_string());
}

/// Unmounts the extra filesystems (newest first), then the early ones in
/// reverse order. Returns the targets that could only be detached lazily
/// (still busy), so the caller can say whether the unmount was clean.
pub fn unmount_all() -> Vec<String> {
    let mut busy = Vec::new();
    let extra: Vec<String> = std::mem::take(&mut *EXTRA.lock().unwrap_or_else(|e| e.into_inner()));
    nix::unistd::sync();
    for target in extra.iter().rev() {
        match umount2(target.as_str(), MntFlags::empty()) {
            Ok(()) => tracing::info!("unmounted {target}"),
            Err(e) => {
                tracing::warn!("{target} is busy ({e}); remounting it read-only and detaching it");
                for user in open_files_under(target) {
                    tracing::warn!("  still open: {user}");
                }
                let _ = mount(
                    None::<&str>,
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                let _ = umount2(target.as_str(), MntFlags::MNT_DETACH);
                busy.push(target.clone());
            }
        }
    }
    for m in early_mounts().iter().rev() {
        if !is_mounted(m.target) {
            continue;
        }
        match umount2(m.target, MntFlags::empty()) {
            Ok(()) => tracing::info!("unmounted {}", m.target),
            Err(e) if m.api => {
                let _ = umount2(m.target, MntFlags::MNT_DETACH);
                tracing::info!(
                    "detached API filesystem {} ({e}: still referenced)",
                    m.target
                );
            }
            Err(e) => {
                tracing::warn!("{} is busy ({e}); detaching it", m.target);
                for user in open_files_under(m.target) {
                    tracing::warn!("  still open: {user}");
                }
                let _ = umount2(m.target, MntFlags::MNT_DETACH);
                busy.push(m.target.to_string());
            }
        }
    }
    busy
}

/// Lists `pid fd -> path` for open files below `prefix`, from /proc, to
/// explain a busy unmount.
fn open_files_under(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if t.starts_with(prefix) {
                    out.push(format!(
                        "pid {pid} fd {} -> {t}",
                        fd.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    out
}

/// Whether `target` is a mount point, by comparing its device with its
/// parent's. Unmounting /proc early would break /proc/mounts reads, so this
/// avoids relying on it.
fn is_mounted(target: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(target);
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}
