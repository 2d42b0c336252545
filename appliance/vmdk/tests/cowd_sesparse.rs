//! vmfsSparse (COWD) and SESparse snapshots built byte by byte from the published layouts,
//! read through a qemu-img-made parent: our bytes and map equal qemu-img's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::path::Path;

use common::*;
use ferry_vmdk::cowd::CowdHeader;
use ferry_vmdk::{sesparse, Vmdk};

const SIZE: u64 = 64 << 20;
const SECTORS: u64 = SIZE / 512;

/// A flat base written by qemu-io; returns its CID.
fn base(dir: &Path) -> String {
    let p = dir.join("base.vmdk");
    create(&p, "monolithicFlat", "", "64M");
    qemu_io(
        &p,
        &[
            "write -P 0x11 0 4M",
            "write -P 0x12 30M 2M",
            "write -P 0x13 63M 1M",
        ],
    );
    let t = std::fs::read_to_string(&p).unwrap();
    t.lines()
        .find_map(|l| l.strip_prefix("CID="))
        .unwrap()
        .trim()
        .to_string()
}

fn child_descriptor(dir: &Path, name: &str, create_type: &str, kind: &str, file: &str, pcid: &str) {
    let d = format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=abcdef01\nparentCID={pcid}\n\
         createType=\"{create_type}\"\nparentFileNameHint=\"base.vmdk\"\n\n# Extent description\n\
         RW {SECTORS} {kind} \"{file}\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n"
    );
    std::fs::write(dir.join(name), d).unwrap();
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8))
        .collect()
}

/// A COWD delta with `grain` sectors per grain holding `writes` (sector, bytes).
fn cowd_image(grain: u64, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let gtes = 4096u64;
    let gd_entries = SECTORS.div_ceil(grain * gtes);
    let gd_at = 4u64;
    let gt_at = gd_at + (gd_entries * 4).div_ceil(512);
    let grains_at = gt_at + gd_entries * gtes * 4 / 512;
    let mut f = vec![0u8; (grains_at * 512) as usize];
    let h = CowdHeader {
        version: 1,
        flags: 3,
        capacity: SECTORS,
        grain_size: grain,
        gd_offset: gd_at,
        gd_entries,
        free_sector: 0,
    };
    f[..2048].copy_from_slice(&h.to_bytes());
    // Tables are laid out in GD order, but only tables that hold a grain are linked.
    let mut next = grains_at;
    for (sector, data) in writes {
        assert_eq!(sector % grain, 0);
        for (k, chunk) in data.chunks((grain * 512) as usize).enumerate() {
            let g = sector / grain + k as u64;
            let t = g / gtes;
            let gde = (gd_at * 512 + t * 4) as usize;
            let t_at = gt_at + t * gtes * 4 / 512;
            f[gde..gde + 4].copy_from_slice(&(t_at as u32).to_le_bytes());
            let gte = (t_at * 512 + (g % gtes) * 4) as usize;
            f[gte..gte + 4].copy_from_slice(&(next as u32).to_le_bytes());
            let mut block = chunk.to_vec();
            block.resize((grain * 512) as usize, 0);
            f.extend_from_slice(&block);
            next += grain;
        }
    }
    f
}

async fn compare_with_qemu(dir: &Path, name: &str) {
    let p = dir.join(name);
    let want = qemu_raw(&p, dir);
    let v = Vmdk::open_path(&p).await.unwrap();
    assert_eq!(v.chain_len(), 2);
    assert_eq!(v.size(), SIZE);
    assert!(
        read_all(&v).await == want,
        "{name}: bytes differ from qemu-img"
    );
    // Flat parents: qemu reports their holes as zero, we report data; compare the child's
    // own layer (depth 0) and that everything else is the parent.
    let ours = our_map(&v, 0, SIZE).await;
    let theirs = qemu_map(&p, &[]);
    let own = |m: &[(u64, u64, bool, u64)]| -> Vec<(u64, u64)> {
        m.iter()
            .filter(|r| r.2 && r.3 == 0)
            .map(|r| (r.0, r.1))
            .collect()
    };
    assert_eq!(own(&ours), own(&theirs), "{name}: child layer map");
}

#[tokio::test]
async fn cowd_delta_over_a_flat_base() {
    let dir = tempfile::tempdir().unwrap();
    let cid = base(dir.path());
    // One-sector grains as ESX writes them, and 8-sector grains; crossing a table boundary.
    for (grain, name) in [(1u64, "c1"), (8, "c8")] {
        let writes = vec![
            (8u64, pattern(0x40, 4096)),
            (4096 * grain - 8, pattern(0x50, 8192)),
            (61440, pattern(0x60, 65536)),
        ];
        std::fs::write(
            dir.path().join(format!("{name}-delta.vmdk")),
            cowd_image(grain, &writes),
        )
        .unwrap();
        child_descriptor(
            dir.path(),
            &format!("{name}.vmdk"),
            "vmfsSparse",
            "VMFSSPARSE",
            &format!("{name}-delta.vmdk"),
            &cid,
        );
        compare_with_qemu(dir.path(), &format!("{name}.vmdk")).await;
        // The delta alone (no descriptor; qemu-img wants one) reads as the delta over zeros.
        let bare = dir.path().join(format!("{name}-delta.vmdk"));
        let v = Vmdk::open_path(&bare).await.unwrap();
        assert_eq!(v.chain_len(), 1);
        let all = read_all(&v).await;
        let mut want = vec![0u8; SIZE as usize];
        for (sector, data) in &writes {
            let at = (*sector * 512) as usize;
            want[at..at + data.len()].copy_from_slice(data);
        }
        assert!(all == want);
    }
}

#[tokio::test]
async fn sesparse_over_a_flat_base() {
    let dir = tempfile::tempdir().unwrap();
    let cid = base(dir.path());
    // Grain numbers (4 KiB): inside the first table, across into the second (4096 grains
    // per table), and stored out of order; plus zero and unmapped grains over base data.
    let grains = vec![
        (5u64, pattern(0x70, 4096)),
        (4095, pattern(0x71, 4096)),
        (4096, pattern(0x72, 4096)),
        (2, pattern(0x73, 4096)),
        (16000, pattern(0x74, 4096)),
    ];
    let zero = [10u64, 11, 7700];
    let img = sesparse::build_image(SECTORS, &grains, &zero);
    std::fs::write(dir.path().join("s-sesparse.vmdk"), img).unwrap();
    child_descriptor(
        dir.path(),
        "s.vmdk",
        "seSparse",
        "SESPARSE",
        "s-sesparse.vmdk",
        &cid,
    );
    compare_with_qemu(dir.path(), "s.vmdk").await;
    let v = Vmdk::open_path(&dir.path().join("s.vmdk")).await.unwrap();
    let mut b = vec![0u8; 4096];
    v.read_at(10 * 4096, &mut b).await.unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "zero grain hides the base's 0x11"
    );
}
