//! ferry-image library: the userspace steps that turn the appliance's kernel,
//! command line and initramfs into something vCenter deploys.
//!
//! - [`uki`]: a Unified Kernel Image, systemd's EFI stub with `.osrel`,
//!   `.cmdline`, `.initrd` and `.linux` sections appended by a small PE
//!   section writer (no objcopy);
//! - [`disk`]: a GPT disk image with an ESP (FAT32, `\EFI\BOOT\BOOTX64.EFI`)
//!   and a blank state partition that ferry-init formats on first boot, built
//!   in a sparse file with the `gpt` and `fatfs` crates (no loop devices, no
//!   root);
//! - [`ovf`]: renders the OVF descriptor template from `ovf/`;
//! - [`ova`]: the `.mf` manifest and the OVA (ustar: `.ovf`, `.mf`, disk).
//!
//! The streamOptimized VMDK comes from `ferry-vmdk`. Fetching the kernel and
//! building the initramfs live in the `ferry-image` binary. This library does
//! no network access and runs no external programs.

pub mod disk;
pub mod error;
pub mod ova;
pub mod ovf;
pub mod uki;

pub use error::{ImageError, Result};
