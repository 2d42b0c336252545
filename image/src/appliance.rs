//! Appliance: owns the steps after the initramfs: UKI, GPT disk,
//! streamOptimized VMDK, OVF, manifest and OVA, in `target/appliance/`.

use std::io::BufWriter;
use std::path::Path;

use anyhow::Context;
use ferry_image::{disk, ova, ovf, uki};
use serde_json::json;

/// What the steps need.
pub struct Inputs<'a> {
    pub out: &'a Path,
    pub stub: &'a Path,
    pub osrel: &'a [u8],
    pub cmdline: &'a [u8],
    pub linux: &'a [u8],
    pub initrd: &'a [u8],
    pub disk_mib: u64,
    pub mtime: u64,
}

/// What was built.
pub struct Built {
    pub file_name: String,
    pub uki_size: u64,
    pub disk_capacity: u64,
    pub disk_populated: u64,
    pub vmdk_size: u64,
    pub ova_size: u64,
}

/// The base name of every appliance file for this version.
pub fn base_name() -> String {
    format!("ferry-agent-{}", env!("CARGO_PKG_VERSION"))
}

pub fn build(
    i: &Inputs<'_>,
    files: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<Built> {
    let stub = std::fs::read(i.stub).with_context(|| {
        format!(
            "read the EFI stub {} (apt-get install systemd-boot-efi)",
            i.stub.display()
        )
    })?;
    let efi = uki::build(
        &stub,
        &uki::UkiParts {
            osrel: i.osrel,
            cmdline: i.cmdline,
            linux: i.linux,
            initrd: i.initrd,
        },
    )
    .context("build the UKI")?;
    crate::write(&i.out.join("ferry.efi"), &efi)?;
    files.insert(
        "ferry.efi".into(),
        json!({ "size": efi.len(), "sha256": crate::sha256(&efi) }),
    );

    let raw = i.out.join("disk.raw");
    let layout = disk::DiskLayout {
        size: i.disk_mib << 20,
        ..disk::DiskLayout::default()
    };
    let d = disk::build(&raw, &efi, &layout).context("build the GPT disk")?;
    files.insert(
        "disk.raw".into(),
        json!({ "size": d.size, "esp": { "offset": d.esp.start, "size": d.esp.len },
                "state": { "offset": d.state.start, "size": d.state.len } }),
    );

    let base = base_name();
    let vmdk_name = format!("{base}-disk1.vmdk");
    let vmdk_path = i.out.join(&vmdk_name);
    let stats = {
        let src = std::fs::File::open(&raw).with_context(|| format!("open {}", raw.display()))?;
        let dst = std::fs::File::create(&vmdk_path)
            .with_context(|| format!("create {}", vmdk_path.display()))?;
        let opts = ferry_vmdk::WriteOptions {
            level: 9,
            adapter_type: "lsilogic".into(),
            cid: Some(cid(&efi)),
            extent_name: vmdk_name.clone(),
            ..Default::default()
        };
        let mut w = BufWriter::with_capacity(1 << 20, dst);
        let st = ferry_vmdk::write_stream_optimized_sync(
            std::io::BufReader::with_capacity(1 << 20, src),
            d.size,
            &mut w,
            &opts,
        )
        .context("write the streamOptimized VMDK")?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all().context("sync the VMDK")?;
        st
    };
    let vmdk_size = std::fs::metadata(&vmdk_path)?.len();
    // Grains are 64 KiB; what is stored is what a thin disk will hold.
    let populated = stats.grains_stored * ferry_vmdk::writer::GRAIN_SECTORS * 512;

    let ovf_name = format!("{base}.ovf");
    let ovf_text = ovf::render_descriptor(&ovf::OvfValues {
        version: env!("CARGO_PKG_VERSION").into(),
        disk_file: vmdk_name.clone(),
        disk_file_size: vmdk_size,
        disk_capacity: d.size,
        disk_populated: populated,
    })
    .context("render the OVF descriptor")?;
    let ovf_path = i.out.join(&ovf_name);
    crate::write(&ovf_path, ovf_text.as_bytes())?;

    let mf_name = format!("{base}.mf");
    let mf_path = i.out.join(&mf_name);
    let mf = ova::manifest(&[(&ovf_name, &ovf_path), (&vmdk_name, &vmdk_path)])?;
    crate::write(&mf_path, mf.as_bytes())?;

    let ova_name = format!("{base}.ova");
    let ova_path = i.out.join(&ova_name);
    ova::write(
        &ova_path,
        &[
            (&ovf_name, &ovf_path),
            (&mf_name, &mf_path),
            (&vmdk_name, &vmdk_path),
        ],
        i.mtime,
    )?;
    let ova_size = std::fs::metadata(&ova_path)?.len();
    for (name, path) in [(&vmdk_name, &vmdk_path), (&ova_name, &ova_path)] {
        files.insert(
            name.clone(),
            json!({ "size": std::fs::metadata(path)?.len(), "sha256": ova::sha256_file(path)? }),
        );
    }
    files.insert(
        ovf_name.clone(),
        json!({ "size": ovf_text.len(), "sha256": crate::sha256(ovf_text.as_bytes()),
                "disk_capacity": d.size, "disk_populated": populated }),
    );
    Ok(Built {
        file_name: ova_name,
        uki_size: efi.len() as u64,
        disk_capacity: d.size,
        disk_populated: populated,
        vmdk_size,
        ova_size,
    })
}

/// A VMDK content id derived from the UKI, so equal inputs give equal files.
fn cid(efi: &[u8]) -> u32 {
    let h = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(efi));
    let c = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if c == u32::MAX {
        1
    } else {
        c
    }
}
