//! State partition: owns finding, formatting and mounting the persistent
//! state filesystem at `/var/lib/ferry`.
//!
//! The image's GPT disk has a partition named `ferry-state` (see
//! `image/src/disk.rs`), blank when shipped. The kernel publishes GPT names
//! as `PARTNAME=` in `/sys/class/block/<dev>/uevent`, so no partition table
//! is parsed here. On first boot the partition is all zeros; init formats it
//! as FAT32 with the `fatfs` crate (there is no mkfs in the image) and
//! mounts it as `vfat` with `uid=0,gid=0,fmask=0177,dmask=0077`: every file
//! is root's and 0600, every directory 0700, whatever mode a program asks
//! for. FAT was chosen because it can be formatted from Rust reliably; it
//! has no journal, so writers use write-to-temporary, fsync, rename.
//!
//! A partition that is neither blank nor FAT is never formatted: init
//! reports it and keeps the state in RAM, so nothing is destroyed by a
//! mistake. Without a state partition (direct kernel boot in tests) the
//! state directory stays on the initramfs, as before.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};

/// GPT name of the state partition.
pub const PARTNAME: &str = "ferry-state";
/// Mount options: root-only, 0600 files, 0700 directories; chmod succeeds
/// silently (`quiet`) so that programs setting 0600 do not fail.
pub const MOUNT_OPTS: &str =
    "uid=0,gid=0,fmask=0177,dmask=0077,quiet,shortname=mixed,utf8=1,iocharset=iso8859-1";
/// Volume label written when formatting.
const LABEL: [u8; 11] = *b"FERRY-STATE";
/// Bytes inspected to decide whether the partition is blank.
const PROBE: usize = 64 * 1024;

/// What happened to the state partition, for the console and `/v1/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StateInfo {
    /// `partition`, `ram` (no partition found) or `ram (error)`.
    pub backing: String,
    pub device: Option<String>,
    /// Formatted during this boot.
    pub formatted: bool,
    pub error: Option<String>,
}

/// Finds the block device of the partition named [`PARTNAME`], waiting up
/// to `wait` for disk drivers to finish probing.
pub fn find(wait: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(d) = scan("/sys/class/block") {
            return Some(d);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scan(sys: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys).ok()?;
    for e in entries.flatten() {
        let Ok(uevent) = std::fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        let mut name = None;
        let mut dev = None;
        for line in uevent.lines() {
            if let Some(v) = line.strip_prefix("PARTNAME=") {
                name = Some(v.to_string());
            }
            if let Some(v) = line.strip_prefix("DEVNAME=") {
                dev = Some(v.to_string());
            }
        }
        if name.as_deref() == Some(PARTNAME) {
            if let Some(d) = dev {
                return Some(Path::new("/dev").join(d));
            }
        }
    }
    None
}

/// What the first bytes of a partition hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Blank,
    Fat,
    Other,
}

/// Classifies the start of a partition.
pub fn classify(head: &[u8]) -> Content {
    if head.iter().all(|&b| b == 0) {
        return Content::Blank;
    }
    let sig = head.get(510..512) == Some(&[0x55, 0xAA][..]);
    let fat32 = head.get(82..90) == Some(&b"FAT32   "[..]);
    let fat16 = head.get(54..59) == Some(&b"FAT16"[..]) || head.get(54..59) == Some(&b"FAT12"[..]);
    if sig && (fat32 || fat16) {
        Content::Fat
    } else {
        Content::Other
    }
}

/// Formats `dev` as FAT32 (fatfs picks the cluster size for the size).
pub fn format(dev: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("open {}", dev.display()))?;
    let size = f.seek(SeekFrom::End(0)).context("size of the partition")?;
    f.seek(SeekFrom::Start(0))?;
    let fat_type = if size >= 64 << 20 {
        fatfs::FatType::Fat32
    } else {
        fatfs::FatType::Fat16
    };
    let opts = fatfs::FormatVolumeOptions::new()
        .fat_type(fat_type)
        .volume_label(LABEL);
    fatfs::format_volume(&mut f, opts).with_context(|| format!("format {}", dev.display()))?;
    f.sync_all().context("sync the new filesystem")?;
    Ok(())
}

/// Mounts the state partition on `target`, formatting it first when blank.
pub fn setup(dev: &Path, target: &str) -> anyhow::Result<bool> {
    let meta = std::fs::metadata(dev).with_context(|| format!("stat {}", dev.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", dev.display());
    }
    let mut head = vec![0u8; PROBE];
    std::fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("read {}", dev.display()))?;
    let mut formatted = false;
    match classify(&head) {
        Content::Fat => {}
        Content::Blank => {
            tracing::info!("state: {} is blank; formatting it (FAT32)", dev.display());
            format(dev)?;
            formatted = true;
        }
        Content::Other => bail!(
            "{} holds something that is not a FAT filesystem; not touching it",
            dev.display()
        ),
    }
    std::fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
    mount(
        Some(dev),
        target,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME,
        Some(MOUNT_OPTS),
    )
    .with_context(|| format!("mount {} on {target}", dev.display()))?;
    crate::mount::register_extra(target);
    Ok(formatted)
}

/// Finds and mounts the state partition; the state stays in RAM when there
/// is none or it cannot be used.
pub fn mount_state(target: &str, wait: Duration) -> StateInfo {
    let Some(dev) = find(wait) else {
        tracing::info!("state: no {PARTNAME} partition; state is kept in RAM");
        return StateInfo {
            backing: "ram".into(),
            ..Default::default()
        };
    };
    match setup(&dev, target) {
        Ok(formatted) => {
            tracing::info!("state: {} mounted on {target}", dev.display());
            StateInfo {
                backing: "partition".into(),
                device: Some(dev.display().to_string()),
                formatted,
                error: None,
            }
        }
        Err(e) => {
            tracing::error!("state: {e:#}; state is kept in RAM");
            StateInfo {
                backing: "ram (error)".into(),
                device: Some(dev.display().to_string()),
                formatted: false,
                error: Some(format!("{e:#}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_blank_fat_and_other() {
        assert_eq!(classify(&[0u8; 4096]), Content::Blank);
        assert_eq!(classify(&[1u8; 4096]), Content::Other);
        let mut img = std::io::Cursor::new(vec![0u8; 80 << 20]);
        fatfs::format_volume(
            &mut img,
            fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat32),
        )
        .unwrap();
        assert_eq!(classify(&img.get_ref()[..PROBE]), Content::Fat);
    }

    #[test]
    fn formats_a_blank_file_that_fatfs_can_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.img");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        format(&p).unwrap();
        let head = std::fs::read(&p).unwrap();
        assert_eq!(classify(&head[..PROBE]), Content::Fat);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        assert_eq!(fs.volume_label(), "FERRY-STATE");
    }

    #[test]
    fn finds_the_partition_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (d, name) in [("sda1", "ESP"), ("sda2", PARTNAME), ("sr0", "")] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
            let mut ev = format!("MAJOR=8\nDEVNAME={d}\nDEVTYPE=partition\n");
            if !name.is_empty() {
                ev.push_str(&format!("PARTNAME={name}\n"));
            }
            std::fs::write(dir.path().join(d).join("uevent"), ev).unwrap();
        }
        assert_eq!(
            scan(dir.path().to_str().unwrap()),
            Some(PathBuf::from("/dev/sda2"))
        );
    }
}
