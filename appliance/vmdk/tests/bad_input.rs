//! Corrupt and hostile files give typed errors: never a panic, a hang or a huge allocation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_vmdk::{MemResolver, Vmdk, VmdkError, WriteOptions};

/// Opens `name` from in-memory files and reads and maps the whole disk, bounded in time.
async fn exercise(files: &[(&str, Vec<u8>)], name: &str) -> Result<Vec<u8>, VmdkError> {
    let mut r = MemResolver::new();
    for (n, d) in files {
        r.insert(n, d.clone());
    }
    let work = async {
        let v = Vmdk::open(Arc::new(r), name).await?;
        let size = v.size();
        // Bounded work even for an absurd capacity: the first and last 8 MiB.
        let mut out = Vec::new();
        for (off, len) in [
            (0, size.min(8 << 20)),
            (size.saturating_sub(8 << 20), size.min(8 << 20)),
        ] {
            v.map(off, len).await?;
            let mut buf = vec![0u8; len as usize];
            v.read_at(off, &mut buf).await?;
            out.extend_from_slice(&buf);
        }
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("hang on hostile input")
}

fn qemu_image(sub: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.vmdk");
    make(
        &p,
        sub,
        "",
        "8M",
        &["write -P 0x41 0 192k", "write -P 0x42 5M 64k"],
    );
    std::fs::read(&p).unwrap()
}

async fn stream_image() -> Vec<u8> {
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data.iter_mut().enumerate().take(300_000) {
        *b = (i % 241) as u8;
    }
    let mut v = Vec::new();
    let o = WriteOptions {
        extent_name: "d.vmdk".into(),
        ..Default::default()
    };
    ferry_vmdk::write_stream_optimized(&MemDisk(data), &mut v, &o)
        .await
        .unwrap();
    v
}

#[tokio::test]
async fn truncated_files_error() {
    for (k, img) in [
        qemu_image("monolithicSparse"),
        qemu_image("streamOptimized"),
        stream_image().await,
    ]
    .into_iter()
    .enumerate()
    {
        let good = exercise(&[("d.vmdk", img.clone())], "d.vmdk")
            .await
            .unwrap();
        let mut cuts: Vec<usize> = (0..img.len()).step_by(img.len() / 97 + 1).collect();
        cuts.extend([0, 1, 4, 511, 512, 513, 1024, img.len() - 1]);
        let mut errors = 0;
        for cut in cuts {
            // A cut file either fails, or (when only trailing padding was lost) reads the same.
            match exercise(&[("d.vmdk", img[..cut].to_vec())], "d.vmdk").await {
                Err(_) => errors += 1,
                Ok(b) => assert!(b == good, "image {k} cut at {cut} reads wrong data"),
            }
        }
        assert!(
            errors > 40,
            "image {k}: truncations must be detected ({errors})"
        );
    }
}

#[tokio::test]
async fn grain_table_entry_past_eof() {
    let mut img = qemu_image("monolithicSparse");
    // Header: gd_offset at byte 56; first GD entry -> first GT; set its first GTE huge.
    let gd = u64::from_le_bytes(img[56..64].try_into().unwrap()) as usize * 512;
    let gt = u32::from_le_bytes(img[gd..gd + 4].try_into().unwrap()) as usize * 512;
    img[gt..gt + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let e = exercise(&[("d.vmdk", img.clone())], "d.vmdk")
        .await
        .unwrap_err();
    assert!(matches!(e, VmdkError::Corrupt { .. }), "{e}");
    // A GD entry past the end.
    img[gd..gd + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let e = exercise(&[("d.vmdk", img)], "d.vmdk").await.unwrap_err();
    assert!(matches!(e, VmdkError::Corrupt { .. }), "{e}");
}

fn descriptor(cid: &str, parent: Option<(&str, &str)>) -> Vec<u8> {
    let p = match parent {
        Some((pcid, hint)) => format!("parentCID={pcid}\nparentFileNameHint=\"{hint}\"\n"),
        None => "parentCID=ffffffff\n".into(),
    };
    format!("# Disk DescriptorFile\nversion=1\nCID={cid}\n{p}createType=\"monolithicFlat\"\nRW 2048 ZERO\n")
        .into_bytes()
}

#[tokio::test]
async fn chain_loops_and_depth() {
    let a = descriptor("aaaaaaaa", Some(("bbbbbbbb", "b.vmdk")));
    let b = descriptor("bbbbbbbb", Some(("aaaaaaaa", "a.vmdk")));
    let e = exercise(&[("a.vmdk", a), ("b.vmdk", b)], "a.vmdk")
        .await
        .unwrap_err();
    assert!(matches!(e, VmdkError::ChainLoop(_)), "{e}");
    let s = descriptor("aaaaaaaa", Some(("aaaaaaaa", "s.vmdk")));
    let e = exercise(&[("s.vmdk", s)], "s.vmdk").await.unwrap_err();
    assert!(matches!(e, VmdkError::ChainLoop(_)), "{e}");
    // A missing parent is an I/O error, not a panic.
    let c = descriptor("cccccccc", Some(("dddddddd", "gone.vmdk")));
    let e = exercise(&[("c.vmdk", c)], "c.vmdk").await.unwrap_err();
    assert!(matches!(e, VmdkError::Io { .. }), "{e}");
    // 300 distinct layers: too deep.
    let mut files = Vec::new();
    for i in 0..300 {
        let cid = format!("{:08x}", i + 1);
        let parent = if i == 299 {
            None
        } else {
            Some((format!("{:08x}", i + 2), format!("l{}.vmdk", i + 1)))
        };
        let d = descriptor(&cid, parent.as_ref().map(|(c, h)| (c.as_str(), h.as_str())));
        files.push((format!("l{i}.vmdk"), d));
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let e = exercise(&refs, "l0.vmdk").await.unwrap_err();
    assert!(matches!(e, VmdkError::ChainTooDeep(_)), "{e}");
}

#[tokio::test]
async fn absurd_capacity() {
    let img = qemu_image("monolithicSparse");
    for cap in [u64::MAX, u64::MAX / 512, 1u64 << 50, 1u64 << 40] {
        let mut m = img.clone();
        m[12..20].copy_from_slice(&cap.to_le_bytes());
        // Also drop the embedded descriptor so the header alone decides the size.
        m[28..44].fill(0);
        let e = exercise(&[("d.vmdk", m)], "d.vmdk").await.unwrap_err();
        assert!(matches!(e, VmdkError::Header { .. }), "capacity {cap}: {e}");
    }
    // A descriptor that claims an exabyte of flat extents over a tiny file.
    let d = b"# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 18014398509481983 FLAT \"f.bin\" 0\nRW 18014398509481983 FLAT \"f.bin\" 0\n".to_vec();
    let e = exercise(&[("d.vmdk", d), ("f.bin", vec![0; 512])], "d.vmdk")
        .await
        .unwrap_err();
    assert!(
        matches!(e, VmdkError::Descriptor { .. } | VmdkError::Corrupt { .. }),
        "{e}"
    );
}

#[tokio::test]
async fn broken_zlib_stream() {
    let mut img = stream_image().await;
    // The first grain record starts at the header's overhead; corrupt its zlib body.
    let overhead = u64::from_le_bytes(img[64..72].try_into().unwrap()) as usize * 512;
    for b in &mut img[overhead + 20..overhead + 60] {
        *b ^= 0x5a;
    }
    let e = exercise(&[("d.vmdk", img.clone())], "d.vmdk")
        .await
        .unwrap_err();
    assert!(matches!(e, VmdkError::Inflate { .. }), "{e}");
    // A compressed size larger than any grain.
    img[overhead + 8..overhead + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = exercise(&[("d.vmdk", img)], "d.vmdk").await.unwrap_err();
    assert!(matches!(e, VmdkError::Corrupt { .. }), "{e}");
}

#[tokio::test]
async fn garbage_descriptors() {
    let cases: Vec<Vec<u8>> = vec![
        b"not a vmdk at all".to_vec(),
        vec![0xff; 3000],
        vec![0; 100],
        b"version=1\nCID=1\ncreateType=\"monolithicFlat\"\nRW 10 FLAT\n".to_vec(),
        b"version=1\nCID=1\ncreateType=\"x\"\nRW 10 FLAT \"missing.bin\" 0\n".to_vec(),
        vec![b'a'; 2 << 20],
    ];
    for c in cases {
        let e = exercise(&[("d.vmdk", c)], "d.vmdk").await.unwrap_err();
        assert!(
            matches!(e, VmdkError::Descriptor { .. } | VmdkError::Io { .. }),
            "{e}"
        );
    }
}

#[tokio::test]
async fn random_corruption_never_panics() {
    let imgs = [qemu_image("monolithicSparse"), stream_image().await];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for img in imgs {
        for _ in 0..150 {
            let mut m = img.clone();
            for _ in 0..1 + next() % 8 {
                // Mostly metadata (the first 64 KiB and the last 4 KiB), sometimes anywhere.
                let i = match next() % 3 {
                    0 => (next() % 65536) as usize % m.len(),
                    1 => m.len() - 1 - (next() % 4096) as usize % m.len(),
                    _ => (next() as usize) % m.len(),
                };
                m[i] = next() as u8;
            }
            let _ = exercise(&[("d.vmdk", m)], "d.vmdk").await;
        }
    }
}
