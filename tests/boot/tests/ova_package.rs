//! The OVA pipeline of `ferry-image` (UKI, GPT disk, streamOptimized VMDK,
//! OVF, manifest, OVA) from a fake kernel and initramfs, checked with real
//! tools: objdump (binutils), sfdisk and mtools, qemu-img, xmllint,
//! sha256sum, tar and the govmomi simulator. No QEMU VM, no kernel
//! download: this runs in a plain `cargo test`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::path::Path;
use std::process::Command;

use ferry_boot_tests::ova::{check_ova, run};
use ferry_image::{disk, ova, ovf, uki};

fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn stub() -> Vec<u8> {
    std::fs::read(uki::STUB_PATH).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: apt-get install systemd-boot-efi (tests never skip)",
            uki::STUB_PATH
        )
    })
}

#[test]
fn uki_sections_as_objdump_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let linux = pseudo_random(300_001, 1);
    let initrd = pseudo_random(200_003, 2);
    let efi = uki::build(
        &stub(),
        &uki::UkiParts {
            osrel: b"ID=ferry\n",
            cmdline: b"console=ttyS0 quiet",
            linux: &linux,
            initrd: &initrd,
        },
    )
    .unwrap();
    let p = dir.path().join("ferry.efi");
    std::fs::write(&p, &efi).unwrap();
    let out = run(
        Command::new("objdump").arg("-h").arg(&p),
        "apt-get install binutils",
    )
    .unwrap();
    assert!(out.contains("file format pei-x86-64"), "{out}");
    for s in uki::sections(&efi).unwrap() {
        if [".osrel", ".cmdline", ".initrd", ".linux"].contains(&s.name.as_str()) {
            assert_eq!(s.virtual_address % 4096, 0, "{s:?}");
            assert!(
                out.contains(&s.name),
                "objdump does not list {}:\n{out}",
                s.name
            );
        }
    }
    let secs = uki::sections(&efi).unwrap();
    let body = |name: &str| {
        let s = secs.iter().find(|s| s.name == name).unwrap();
        &efi[s.raw_offset as usize..s.raw_offset as usize + s.virtual_size as usize]
    };
    assert_eq!(body(".linux"), &linux[..]);
    assert_eq!(body(".initrd"), &initrd[..]);
    assert_eq!(body(".cmdline"), b"console=ttyS0 quiet");
    assert_eq!(secs.last().unwrap().name, ".linux");
}

/// Builds a whole OVA in `dir` from a fake UKI payload, as ferry-image does.
fn build_package(dir: &Path) -> (std::path::PathBuf, disk::DiskInfo, Vec<u8>) {
    let efi = uki::build(
        &stub(),
        &uki::UkiParts {
            osrel: b"ID=ferry\n",
            cmdline: b"console=ttyS0",
            linux: &pseudo_random(1 << 20, 3),
            initrd: &pseudo_random(1 << 20, 4),
        },
    )
    .unwrap();
    let raw = dir.join("disk.raw");
    let layout = disk::DiskLayout {
        size: 256 << 20,
        esp_size: 64 << 20,
    };
    let d = disk::build(&raw, &efi, &layout).unwrap();
    let vmdk_name = "ferry-agent-test-disk1.vmdk";
    let vmdk = dir.join(vmdk_name);
    let st = ferry_vmdk::write_stream_optimized_sync(
        std::fs::File::open(&raw).unwrap(),
        d.size,
        std::fs::File::create(&vmdk).unwrap(),
        &ferry_vmdk::WriteOptions {
            extent_name: vmdk_name.into(),
            ..Default::default()
        },
    )
    .unwrap();
    let text = ovf::render_descriptor(&ovf::OvfValues {
        version: "0.0.0-test".into(),
        disk_file: vmdk_name.into(),
        disk_file_size: std::fs::metadata(&vmdk).unwrap().len(),
        disk_capacity: d.size,
        disk_populated: st.grains_stored * 64 * 1024,
    })
    .unwrap();
    let ovf_path = dir.join("ferry-agent-test.ovf");
    std::fs::write(&ovf_path, text).unwrap();
    let mf_path = dir.join("ferry-agent-test.mf");
    let mf = ova::manifest(&[("ferry-agent-test.ovf", &ovf_path), (vmdk_name, &vmdk)]).unwrap();
    std::fs::write(&mf_path, mf).unwrap();
    let ova_path = dir.join("ferry-agent-test.ova");
    ova::write(
        &ova_path,
        &[
            ("ferry-agent-test.ovf", &ovf_path),
            ("ferry-agent-test.mf", &mf_path),
            (vmdk_name, &vmdk),
        ],
        0,
    )
    .unwrap();
    (ova_path, d, efi)
}

#[test]
fn gpt_disk_layout_and_esp_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (_, d, efi) = build_package(dir.path());
    let raw = dir.path().join("disk.raw");
    let table: serde_json::Value = serde_json::from_str(
        &run(
            Command::new("sfdisk").arg("--json").arg(&raw),
            "apt-get install fdisk",
        )
        .unwrap(),
    )
    .unwrap();
    let t = &table["partitiontable"];
    assert_eq!(t["label"], "gpt", "{table:#}");
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{table:#}");
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0]["name"], disk::ESP_NAME);
    assert_eq!(parts[0]["start"], 2048, "1 MiB aligned");
    assert_eq!(parts[1]["name"], disk::STATE_PARTITION_NAME);
    assert_eq!(parts[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[1]["start"].as_u64().unwrap() * 512, d.state.start);
    assert_eq!(d.state.start % (1 << 20), 0);
    // sfdisk also verifies the backup header and the protective MBR.
    let verify = run(Command::new("sfdisk").arg("--verify").arg(&raw), "fdisk").unwrap();
    assert!(verify.contains("No errors detected"), "{verify}");

    // mtools reads the FAT32 ESP on its own.
    let img = format!("{}@@{}", raw.display(), d.esp.start);
    let info = run(
        Command::new("minfo").args(["-i", &img, "::"]),
        "apt-get install mtools",
    )
    .unwrap();
    assert!(info.contains("FAT32"), "{info}");
    let out = dir.path().join("BOOTX64.EFI");
    run(
        Command::new("mcopy")
            .args(["-n", "-i", &img, "::/EFI/BOOT/BOOTX64.EFI"])
            .arg(&out),
        "mtools",
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), efi);
    assert_eq!(disk::read_boot_file(&raw, &d.esp).unwrap(), efi);

    // The state partition ships blank: ferry-init formats it on first boot.
    let bytes = std::fs::read(&raw).unwrap();
    let state = &bytes[d.state.start as usize..(d.state.start + d.state.len) as usize];
    assert!(state.iter().all(|&b| b == 0));
}

#[test]
fn ova_checks_with_tar_sha256sum_qemu_img_xmllint_and_govmomi() {
    let dir = tempfile::tempdir().unwrap();
    let (ova_path, d, _) = build_package(dir.path());
    let pkg = check_ova(&ova_path).unwrap();
    assert_eq!(
        pkg.members,
        [
            "ferry-agent-test.ovf",
            "ferry-agent-test.mf",
            "ferry-agent-test-disk1.vmdk"
        ]
    );
    assert_eq!(pkg.descriptor.capacity, d.size);
    // The VMDK holds exactly the raw disk.
    run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vmdk"])
            .arg(dir.path().join("disk.raw"))
            .arg(&pkg.vmdk),
        "qemu-utils",
    )
    .unwrap();
    println!(
        "govmomi CreateImportSpec: {} devices, {} properties, no errors or warnings",
        pkg.import_spec["devices"].as_array().unwrap().len(),
        pkg.import_spec["properties"].as_array().unwrap().len()
    );
}

#[test]
fn every_property_is_documented() {
    let readme =
        std::fs::read_to_string(ferry_boot_tests::workspace().join("ovf/README.md")).unwrap();
    let text = ovf::TEMPLATE;
    let d = ferry_boot_tests::ova::Descriptor::parse(text).unwrap();
    assert!(d.keys().len() >= 13);
    for k in d.keys() {
        assert!(
            readme.contains(&format!("`{k}`")),
            "ovf/README.md does not document {k}"
        );
    }
}

#[test]
fn a_broken_template_is_refused() {
    let t = ovf::TEMPLATE.replace("@@DISK_CAPACITY@@", "@@DISK_CAPACITY@@ @@NEW_THING@@");
    let vars = std::collections::BTreeMap::from([
        ("VERSION", "1".to_string()),
        ("DISK_FILE", "d".to_string()),
        ("DISK_FILE_SIZE", "1".to_string()),
        ("DISK_CAPACITY", "1".to_string()),
        ("DISK_POPULATED", "1".to_string()),
    ]);
    let e = ovf::render(&t, &vars).unwrap_err();
    assert!(e.to_string().contains("NEW_THING"), "{e}");
}
