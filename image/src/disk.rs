//! Disk: the appliance's GPT disk image, built in a sparse file in userspace.
//!
//! Layout (512-byte sectors, partitions aligned to 1 MiB):
//! 1. `ESP` (EFI system partition, FAT32): `\EFI\BOOT\BOOTX64.EFI` is the
//!    UKI, the removable-media path every UEFI firmware boots without NVRAM
//!    entries (vCenter creates the VM with empty NVRAM);
//! 2. `ferry-state` (Linux filesystem data type): left blank (zeros).
//!    ferry-init finds it by its GPT name, formats it on first boot and
//!    mounts it at `/var/lib/ferry`.
//!
//! Zeros are never written, so the file stays sparse and the VMDK writer
//! skips them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types;

use crate::error::{io, ImageError, Result};

/// GPT name of the state partition; ferry-init looks for it.
pub const STATE_PARTITION_NAME: &str = "ferry-state";
/// GPT name of the ESP.
pub const ESP_NAME: &str = "ESP";
/// Where firmware looks for a bootloader on a disk without boot entries.
pub const BOOT_PATH: [&str; 3] = ["EFI", "BOOT", "BOOTX64.EFI"];
const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

/// Sizes of the disk and its ESP.
#[derive(Debug, Clone, Copy)]
pub struct DiskLayout {
    /// Virtual size of the disk in bytes.
    pub size: u64,
    /// Size of the ESP in bytes; the state partition takes the rest.
    pub esp_size: u64,
}

impl Default for DiskLayout {
    /// 1 GiB: a 128 MiB ESP (room for the UKI and a second one for updates)
    /// and about 894 MiB of state.
    fn default() -> Self {
        Self {
            size: 1024 * MIB,
            esp_size: 128 * MIB,
        }
    }
}

/// A partition as placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub name: String,
    /// Byte offset.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What [`build`] produced.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    pub size: u64,
    pub esp: PartInfo,
    pub state: PartInfo,
}

/// A window of a file, so that a filesystem library sees a partition.
#[derive(Debug)]
pub struct Slice<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Slice<'a> {
    pub fn new(file: &'a mut File, start: u64, len: u64) -> Self {
        Self {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

fn gpt_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Gpt(e.to_string())
}

/// Writes the disk image to `path` (created or truncated, sparse).
pub fn build(path: &Path, uki: &[u8], layout: &DiskLayout) -> Result<DiskInfo> {
    if !layout.size.is_multiple_of(MIB) || !layout.esp_size.is_multiple_of(MIB) {
        return Err(gpt_err("sizes must be multiples of 1 MiB"));
    }
    if layout.esp_size < 64 * MIB || layout.size < layout.esp_size + 64 * MIB {
        return Err(gpt_err(
            "the ESP needs at least 64 MiB and the state partition 64 MiB",
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io(format!("create {}", path.display())))?;
    file.set_len(layout.size)
        .map_err(io(format!("size {}", path.display())))?;

    let lba_count = u32::try_from(layout.size / SECTOR - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(lba_count)
        .overwrite_lba0(&mut file)
        .map_err(gpt_err)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .change_partition_count(true)
        .create_from_device(file, None)
        .map_err(gpt_err)?;
    let align = Some(MIB / SECTOR);
    disk.add_partition(ESP_NAME, layout.esp_size, partition_types::EFI, 0, align)
        .map_err(gpt_err)?;
    // The rest, less the backup GPT at the end (1 MiB keeps it aligned).
    let state_size = layout.size - layout.esp_size - 2 * MIB;
    disk.add_partition(
        STATE_PARTITION_NAME,
        state_size,
        partition_types::LINUX_FS,
        0,
        align,
    )
    .map_err(gpt_err)?;
    let parts: Vec<PartInfo> = disk
        .partitions()
        .values()
        .map(|p| PartInfo {
            name: p.name.clone(),
            start: p.first_lba * SECTOR,
            len: (p.last_lba + 1 - p.first_lba) * SECTOR,
        })
        .collect();
    let mut file = disk.write().map_err(gpt_err)?;
    let find = |n: &str| {
        parts
            .iter()
            .find(|p| p.name == n)
            .cloned()
            .ok_or_else(|| gpt_err(format!("partition {n} missing after writing")))
    };
    let (esp, state) = (find(ESP_NAME)?, find(STATE_PARTITION_NAME)?);

    write_esp(&mut file, &esp, uki)?;
    file.sync_all()
        .map_err(io(format!("sync {}", path.display())))?;
    Ok(DiskInfo {
        size: layout.size,
        esp,
        state,
    })
}

fn write_esp(file: &mut File, esp: &PartInfo, uki: &[u8]) -> Result<()> {
    let fat = |what: &str| io(format!("ESP: {what}"));
    let opts = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        // FAT32 needs at least 65525 clusters: 512-byte clusters give that
        // from 33 MiB on, and the ESP is at least 64 MiB.
        .bytes_per_cluster(512)
        .volume_label(*b"FERRY-ESP  ")
        .volume_id(0x4652_5259);
    fatfs::format_volume(Slice::new(file, esp.start, esp.len), opts).map_err(fat("format"))?;
    let fs = fatfs::FileSystem::new(
        Slice::new(file, esp.start, esp.len),
        fatfs::FsOptions::new(),
    )
    .map_err(fat("open"))?;
    {
        let root = fs.root_dir();
        let efi = root.create_dir(BOOT_PATH[0]).map_err(fat("mkdir EFI"))?;
        let boot = efi
            .create_dir(BOOT_PATH[1])
            .map_err(fat("mkdir EFI/BOOT"))?;
        let mut f = boot
            .create_file(BOOT_PATH[2])
            .map_err(fat("create BOOTX64.EFI"))?;
        f.truncate().map_err(fat("truncate BOOTX64.EFI"))?;
        f.write_all(uki).map_err(fat("write BOOTX64.EFI"))?;
        f.flush().map_err(fat("flush BOOTX64.EFI"))?;
    }
    fs.unmount().map_err(fat("unmount"))
}

/// Reads `\EFI\BOOT\BOOTX64.EFI` back from a disk image (for tests and
/// checks).
pub fn read_boot_file(path: &Path, esp: &PartInfo) -> Result<Vec<u8>> {
    let fat = |what: &str| io(format!("ESP: {what}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(format!("open {}", path.display())))?;
    let fs = fatfs::FileSystem::new(
        Slice::new(&mut file, esp.start, esp.len),
        fatfs::FsOptions::new(),
    )
    .map_err(fat("open"))?;
    let mut out = Vec::new();
    fs.root_dir()
        .open_file(&BOOT_PATH.join("/"))
        .map_err(fat("open BOOTX64.EFI"))?
        .read_to_end(&mut out)
        .map_err(fat("read BOOTX64.EFI"))?;
    Ok(out)
}
