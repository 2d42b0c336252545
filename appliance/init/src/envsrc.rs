//! Deployment-time config sources: owns reading the OVF environment from the
//! CD-ROM (vCenter's `iso` transport) and, on VMware only, the guestinfo
//! variables (`guestinfo.ovfEnv` for the `com.vmware.guestInfo` transport,
//! and plain `guestinfo.ferry.<key>` set with `govc vm.change -e`).
//!
//! The VMware backdoor is an I/O port that only VMware implements; touching
//! it elsewhere can fault or return garbage. It is used only when CPUID
//! says the hypervisor is VMware (`VMwareVMware`), which QEMU/TCG and KVM
//! never report, so QEMU without `vmport` neither crashes nor hangs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use ferry_init::ovfenv::MAX_DOC;

use crate::config::GUESTINFO_PREFIX;

/// Where the CD-ROM is mounted while `ovf-env.xml` is read.
const CD_MOUNT: &str = "/run/ferry/ovf-cd";
/// File name on the ISO (matched without case: ISO 9660 names are upper
/// case without Rock Ridge or Joliet).
const OVF_ENV_FILE: &str = "ovf-env.xml";

/// An OVF environment document and where it came from.
#[derive(Debug, Clone)]
pub struct EnvDoc {
    /// `/dev/sr0` or `guestinfo.ovfEnv`.
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// Lists CD-ROM block devices (`sr*`), waiting up to `wait` for the first.
pub fn cdroms(wait: Duration) -> Vec<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        let mut out: Vec<PathBuf> = std::fs::read_dir("/sys/class/block")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.starts_with("sr").then(|| Path::new("/dev").join(n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        if !out.is_empty() || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `ovf-env.xml` from the first CD-ROM that has one. Errors of one
/// drive (no medium, not ISO 9660) are logged at debug level and skipped.
pub fn read_cdrom(devices: &[PathBuf]) -> Option<anyhow::Result<EnvDoc>> {
    for dev in devices {
        match read_one_cdrom(dev) {
            Ok(Some(bytes)) => {
                return Some(Ok(EnvDoc {
                    origin: dev.display().to_string(),
                    bytes,
                }))
            }
            Ok(None) => tracing::debug!("ovf-env: no {OVF_ENV_FILE} on {}", dev.display()),
            Err(e) if is_not_an_env_disc(&e) => {
                tracing::debug!("ovf-env: {}: {e:#}", dev.display())
            }
            Err(e) => return Some(Err(e)),
        }
    }
    None
}

/// No medium, or a medium that is not ISO 9660: not our business.
fn is_not_an_env_disc(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<nix::errno::Errno>(),
            Some(nix::errno::Errno::ENOMEDIUM)
                | Some(nix::errno::Errno::EINVAL)
                | Some(nix::errno::Errno::ENXIO)
        )
    })
}

fn read_one_cdrom(dev: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    std::fs::create_dir_all(CD_MOUNT).with_context(|| format!("mkdir {CD_MOUNT}"))?;
    mount(
        Some(dev),
        CD_MOUNT,
        Some("iso9660"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("mount {} (iso9660, read-only)", dev.display()))?;
    let res = find_and_read(Path::new(CD_MOUNT));
    if let Err(e) = umount2(CD_MOUNT, MntFlags::empty()) {
        tracing::warn!("ovf-env: cannot unmount {CD_MOUNT}: {e}");
        let _ = umount2(CD_MOUNT, MntFlags::MNT_DETACH);
    }
    res
}

fn find_and_read(dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_ascii_lowercase();
        let name = name.trim_end_matches(";1").trim_end_matches('.');
        // Strict ISO 9660 level 1 has no '-': some tools write OVF_ENV.XML.
        if name == OVF_ENV_FILE || name == "ovf_env.xml" {
            let mut buf = Vec::new();
            std::fs::File::open(e.path())
                .with_context(|| format!("open {}", e.path().display()))?
                .take(MAX_DOC as u64 + 1)
                .read_to_end(&mut buf)
                .with_context(|| format!("read {}", e.path().display()))?;
            return Ok(Some(buf));
        }
    }
    Ok(None)
}

/// Values read through the VMware backdoor.
#[derive(Debug, Clone, Default)]
pub struct GuestInfo {
    /// Whether this is VMware at all.
    pub vmware: bool,
    /// `guestinfo.ovfEnv`, when set.
    pub ovf_env: Option<Vec<u8>>,
    /// `guestinfo.ferry.<key>` values, by `<key>`.
    pub keys: BTreeMap<String, String>,
    /// A backdoor failure (VMware detected but the channel did not work).
    pub error: Option<String>,
}

/// Reads guestinfo when running on VMware; returns `vmware: false` at once
/// elsewhere.
pub fn read_guestinfo(keys: &[&str]) -> GuestInfo {
    if !vmw_backdoor::is_vmware_cpu() {
        return GuestInfo::default();
    }
    let mut gi = GuestInfo {
        vmware: true,
        ..Default::default()
    };
    if let Err(e) = read_backdoor(keys, &mut gi) {
        tracing::warn!("guestinfo: {e:#}");
        gi.error = Some(format!("{e:#}"));
    }
    gi
}

fn read_backdoor(keys: &[&str], gi: &mut GuestInfo) -> anyhow::Result<()> {
    let mut guard =
        vmw_backdoor::probe_backdoor_privileged().context("VMware backdoor not available")?;
    let mut chan = guard
        .open_enhanced_chan()
        .context("open the guest RPC channel")?;
    gi.ovf_env = chan
        .get_guestinfo(b"guestinfo.ovfEnv")
        .context("read guestinfo.ovfEnv")?
        .filter(|v| !v.is_empty());
    if let Some(v) = &gi.ovf_env {
        if v.len() > MAX_DOC {
            gi.ovf_env = None;
            anyhow::bail!("guestinfo.ovfEnv is larger than {MAX_DOC} bytes; ignored");
        }
    }
    for k in keys {
        let name = format!("{GUESTINFO_PREFIX}{k}");
        if let Some(v) = chan
            .get_guestinfo(name.as_bytes())
            .with_context(|| format!("read {name}"))?
        {
            let v = String::from_utf8_lossy(&v).trim().to_string();
            if !v.is_empty() {
                gi.keys.insert((*k).to_string(), v);
            }
        }
    }
    let _ = chan.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_env_file_whatever_the_iso_naming() {
        for name in [
            "ovf-env.xml",
            "OVF-ENV.XML;1",
            "OVF_ENV.XML",
            "ovf_env.xml.",
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("other.txt"), b"x").unwrap();
            std::fs::write(dir.path().join(name), b"<Environment/>").unwrap();
            assert_eq!(
                find_and_read(dir.path()).unwrap().as_deref(),
                Some(&b"<Environment/>"[..]),
                "{name}"
            );
        }
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(find_and_read(empty.path()).unwrap(), None);
    }

    #[test]
    fn reads_at_most_one_byte_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ovf-env.xml"), vec![b' '; MAX_DOC + 4096]).unwrap();
        assert_eq!(
            find_and_read(dir.path()).unwrap().unwrap().len(),
            MAX_DOC + 1
        );
    }

    #[test]
    fn empty_drives_are_not_errors() {
        let e = anyhow::Error::new(nix::errno::Errno::ENOMEDIUM).context("mount /dev/sr0");
        assert!(is_not_an_env_disc(&e));
        let e = anyhow::Error::new(nix::errno::Errno::EIO).context("mount /dev/sr0");
        assert!(!is_not_an_env_disc(&e));
    }

    #[test]
    fn guestinfo_is_not_read_off_vmware() {
        if !vmw_backdoor::is_vmware_cpu() {
            let gi = read_guestinfo(&["ip"]);
            assert!(!gi.vmware && gi.ovf_env.is_none() && gi.keys.is_empty() && gi.error.is_none());
        }
    }
}
