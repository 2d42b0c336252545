//! Reading every subformat qemu-img creates: our bytes equal `qemu-img convert -O raw`, our
//! allocation map equals `qemu-img map`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::*;
use ferry_archive::{BlockSource, ExtentKind};
use ferry_vmdk::{Vmdk, VmdkError, VmdkSource};

const PATTERNS: &[&str] = &[
    "write -P 0xab 1M 300k",
    "write -P 0x11 50M 64k",
    "write -P 0x5a 0 512",
    "write -P 0x77 99M 1M",
];

async fn check(sub: &str, extra: &str, size: &str, cmds: &[&str], compare_map: bool) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(format!("{sub}.vmdk"));
    make(&p, sub, extra, size, cmds);
    let want = qemu_raw(&p, dir.path());
    let v = Vmdk::open_path(&p).await.unwrap();
    assert_eq!(v.size(), want.len() as u64, "{sub}: size");
    let got = read_all(&v).await;
    assert!(got == want, "{sub}: bytes differ from qemu-img convert");
    if compare_map {
        assert_eq!(
            our_map(&v, 0, v.size()).await,
            qemu_map(&p, &[]),
            "{sub}: map differs from qemu-img map"
        );
    }
    // The BlockSource view agrees with the reader.
    let s = VmdkSource::new(v);
    let a = s.allocation(0, s.size()).await.unwrap().unwrap();
    assert_eq!(a.iter().map(|e| e.len).sum::<u64>(), s.size());
    for e in a.iter().filter(|e| e.kind == ExtentKind::Zero) {
        let n = e.len.min(1 << 20);
        assert!(want[e.offset as usize..(e.offset + n) as usize]
            .iter()
            .all(|&b| b == 0));
    }
    let b = s.read_at(1 << 20, vec![0; 4096]).await.unwrap();
    assert_eq!(&b[..], &want[1 << 20..(1 << 20) + 4096]);
    assert!(s.read_at(s.size() - 1, vec![0; 2]).await.is_err());
}

#[tokio::test]
async fn monolithic_sparse() {
    check("monolithicSparse", "", "100M", PATTERNS, true).await;
}

#[tokio::test]
async fn stream_optimized() {
    // qemu appends to a stream; writes go in increasing grain order.
    check("streamOptimized", "", "100M", PATTERNS, true).await;
}

#[tokio::test]
async fn monolithic_flat() {
    check("monolithicFlat", "", "100M", PATTERNS, false).await;
}

#[tokio::test]
async fn two_gb_sparse_and_flat_span_extents() {
    // 4.5 GiB crosses two extent boundaries; the files stay sparse.
    let cmds = [
        "write -P 0x21 0 64k",
        "write -P 0x22 2047M 2M",
        "write -P 0x23 4100M 128k",
    ];
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(format!("{sub}.vmdk"));
        create(&p, sub, "", "4608M");
        qemu_io(&p, &cmds);
        let v = Vmdk::open_path(&p).await.unwrap();
        assert_eq!(v.descriptor().extents.len(), 3);
        let mut buf = vec![0u8; 4 << 20];
        v.read_at(2046 << 20, &mut buf).await.unwrap();
        assert!(buf[..1 << 20].iter().all(|&b| b == 0));
        assert!(buf[1 << 20..3 << 20].iter().all(|&b| b == 0x22));
        assert!(buf[3 << 20..].iter().all(|&b| b == 0));
        let mut b2 = vec![0u8; 256 << 10];
        v.read_at(4100 << 20, &mut b2).await.unwrap();
        assert!(b2[..128 << 10].iter().all(|&b| b == 0x23));
        assert!(b2[128 << 10..].iter().all(|&b| b == 0));
        // Same bytes as qemu-img convert in the windows that hold data.
        let out = dir.path().join("w.raw");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                p.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
        );
        let f = std::fs::File::open(&out).unwrap();
        let mut w = vec![0u8; 4 << 20];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut w, 2046 << 20).unwrap();
        assert!(w == buf, "{sub}: window differs from qemu-img");
        if sub == "twoGbMaxExtentSparse" {
            assert_eq!(our_map(&v, 0, v.size()).await, qemu_map(&p, &[]), "{sub}");
        }
    }
}

#[tokio::test]
async fn size_not_a_multiple_of_the_grain() {
    // 10 MiB + 3 sectors: the last grain is partial.
    let size = (10 << 20) + 1536;
    let s = size.to_string();
    let last = format!("write -P 0x99 {} 1536", 10 << 20);
    for sub in ["monolithicSparse", "streamOptimized", "monolithicFlat"] {
        check(
            sub,
            "",
            &s,
            &["write -P 0x42 0 4k", &last],
            sub != "monolithicFlat",
        )
        .await;
    }
}

#[tokio::test]
async fn empty_disks() {
    for sub in ["monolithicSparse", "streamOptimized", "monolithicFlat"] {
        // qemu-img creates a 0-byte disk but cannot open it; we can.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("zero.vmdk");
        create(&p, sub, "", "0");
        let v = Vmdk::open_path(&p).await.unwrap();
        assert_eq!(v.size(), 0);
        assert!(v.map(0, 0).await.unwrap().is_empty());
        v.read_at(0, &mut []).await.unwrap();
        check(sub, "", "64M", &[], sub != "monolithicFlat").await;
    }
}

#[tokio::test]
async fn four_tib_sparse_capacity() {
    for sub in ["monolithicSparse", "streamOptimized"] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.vmdk");
        let hi = (3u64 << 40) + (5 << 20);
        make(
            &p,
            sub,
            "",
            "4T",
            &["write -P 0x31 1M 64k", &format!("write -P 0x32 {hi} 128k")],
        );
        let v = Vmdk::open_path(&p).await.unwrap();
        assert_eq!(v.size(), 4 << 40);
        let mut b = vec![0u8; 256 << 10];
        v.read_at(hi - (64 << 10), &mut b).await.unwrap();
        assert!(b[..64 << 10].iter().all(|&x| x == 0));
        assert!(b[64 << 10..192 << 10].iter().all(|&x| x == 0x32));
        assert!(b[192 << 10..].iter().all(|&x| x == 0));
        // Map of a window past 2 TiB against qemu-img map of the same window.
        let (wo, wl) = (3u64 << 40, 64u64 << 20);
        assert_eq!(
            our_map(&v, wo, wl).await,
            qemu_map(
                &p,
                &[
                    "--start-offset",
                    &wo.to_string(),
                    "--max-length",
                    &wl.to_string()
                ]
            ),
            "{sub}"
        );
        if sub == "streamOptimized" {
            // No grain tables besides the two written: the full map is cheap.
            let m = v.map(0, v.size()).await.unwrap();
            let data: u64 = m
                .iter()
                .filter(|r| r.kind == ferry_vmdk::Alloc::Data)
                .map(|r| r.len)
                .sum();
            assert_eq!(data, 192 << 10);
        }
    }
}

#[tokio::test]
async fn zeroed_grains() {
    check(
        "monolithicSparse",
        "zeroed_grain=on",
        "16M",
        &[
            "write -P 0x61 0 1M",
            "write -z 256k 128k",
            "write -z 4M 64k",
        ],
        false,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.vmdk");
    create(&p, "monolithicSparse", "zeroed_grain=on", "16M");
    qemu_io(&p, &["write -P 0x61 0 1M", "write -z 256k 128k"]);
    let v = Vmdk::open_path(&p).await.unwrap();
    let m = v.map(0, 1 << 20).await.unwrap();
    assert!(m
        .iter()
        .any(|r| r.kind == ferry_vmdk::Alloc::Zero && r.offset == 256 << 10));
}

#[tokio::test]
async fn snapshot_chain_matches_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vmdk");
    let mid = dir.path().join("mid.vmdk");
    let top = dir.path().join("top.vmdk");
    create(&base, "monolithicSparse", "", "64M");
    qemu_io(&base, &["write -P 0x01 0 8M", "write -P 0x02 40M 1M"]);
    // Each layer is written before its child is made: a write changes a disk's CID, and
    // qemu (like ESXi) then refuses the stale child.
    let layers = [
        (
            &mid,
            "base.vmdk",
            &["write -P 0x03 1M 1M", "write -P 0x04 60M 64k"],
        ),
        (
            &top,
            "mid.vmdk",
            &["write -P 0x05 1536k 64k", "write -P 0x06 40M 4k"],
        ),
    ];
    for (child, parent, cmds) in layers {
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-b",
                parent,
                "-F",
                "vmdk",
                "-o",
                "subformat=monolithicSparse",
                child.to_str().unwrap(),
            ],
        );
        qemu_io(child, cmds);
    }
    let want = qemu_raw(&top, dir.path());
    let v = Vmdk::open_path(&top).await.unwrap();
    assert_eq!(v.chain_len(), 3);
    assert!(read_all(&v).await == want);
    assert_eq!(our_map(&v, 0, v.size()).await, qemu_map(&top, &[]));
}

#[tokio::test]
async fn chain_cid_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vmdk");
    let child = dir.path().join("child.vmdk");
    create(&base, "monolithicSparse", "", "1M");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "-o",
            "subformat=monolithicSparse",
            child.to_str().unwrap(),
        ],
    );
    assert!(Vmdk::open_path(&child).await.is_ok());
    // Rewrite the CID in the base's embedded descriptor, in place.
    let mut b = std::fs::read(&base).unwrap();
    // qemu-img writes the CID without zero padding: change every digit, keep the length.
    let i = b.windows(5).position(|w| w == b"\nCID=").unwrap() + 5;
    let end = i + b[i..].iter().position(|&c| c == b'\n').unwrap();
    for c in &mut b[i..end] {
        *c = if *c == b'1' { b'2' } else { b'1' };
    }
    let cid = u32::from_str_radix(std::str::from_utf8(&b[i..end]).unwrap(), 16).unwrap();
    std::fs::write(&base, b).unwrap();
    let r = Vmdk::open_path(&child).await;
    assert!(
        matches!(
            r,
            Err(VmdkError::CidMismatch { found, .. }) if found == cid
        ),
        "{r:?}"
    );
}
