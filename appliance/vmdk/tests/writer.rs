//! Writers against the oracles: `qemu-img check` and `compare`, and `vmdk-core` read-back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::io::Read;
use std::path::Path;

use common::*;
use ferry_archive::FileSource;
use ferry_vmdk::{
    write_monolithic_flat, write_monolithic_sparse, write_stream_optimized,
    write_stream_optimized_sync, Vmdk, WriteOptions,
};

/// A mixed test disk whose size is not a multiple of the grain (or of a MiB).
fn mixed_raw(dir: &Path, size: u64) -> std::path::PathBuf {
    let p = dir.join("src.raw");
    ferry_testkit::MixedDisk::new(size, 7).write(&p).unwrap();
    p
}

fn opts(name: &str) -> WriteOptions {
    WriteOptions {
        cid: Some(0x1234_abcd),
        extent_name: name.into(),
        ..WriteOptions::default()
    }
}

fn oracle_checks(raw: &Path, vmdk: &Path) {
    run("qemu-img", &["check", "-f", "vmdk", vmdk.to_str().unwrap()]);
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "vmdk",
            raw.to_str().unwrap(),
            vmdk.to_str().unwrap(),
        ],
    );
    let mut r = vmdk::VmdkReader::open_path(vmdk).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    let want = std::fs::read(raw).unwrap();
    assert_eq!(got.len(), want.len(), "vmdk-core size");
    assert!(got == want, "vmdk-core reads different bytes");
}

async fn our_read_equals(raw: &Path, vmdk: &Path) {
    let v = Vmdk::open_path(vmdk).await.unwrap();
    let want = std::fs::read(raw).unwrap();
    assert_eq!(v.size(), want.len() as u64);
    assert!(read_all(&v).await == want, "our reader differs");
}

const SIZE: u64 = (40 << 20) + (3 << 12) + 512;

#[tokio::test]
async fn stream_optimized_passes_qemu_and_vmdk_core() {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), SIZE);
    let out = dir.path().join("out.vmdk");
    let src = FileSource::open(&raw).unwrap();
    // Written to a Vec: the writer needs no seeking.
    let mut v: Vec<u8> = Vec::new();
    let st = write_stream_optimized(&src, &mut v, &opts("out.vmdk"))
        .await
        .unwrap();
    assert_eq!(st.bytes_written, v.len() as u64);
    std::fs::write(&out, &v).unwrap();
    oracle_checks(&raw, &out);
    our_read_equals(&raw, &out).await;

    // What ESXi looks at: header v3, compressed + markers, 64 KiB grains, GD at end.
    assert_eq!(&v[0..4], b"KDMV");
    assert_eq!(u32::from_le_bytes(v[4..8].try_into().unwrap()), 3);
    assert_eq!(
        u32::from_le_bytes(v[8..12].try_into().unwrap()),
        0x0003_0001
    );
    assert_eq!(u64::from_le_bytes(v[20..28].try_into().unwrap()), 128);
    assert_eq!(u64::from_le_bytes(v[56..64].try_into().unwrap()), u64::MAX);
    let text = String::from_utf8_lossy(&v[512..2048]).to_string();
    let extent = format!("RW {} SPARSE \"out.vmdk\"", SIZE / 512);
    for needle in [
        "createType=\"streamOptimized\"",
        "CID=1234abcd",
        "parentCID=ffffffff",
        "ddb.adapterType = \"lsilogic\"",
        "ddb.virtualHWVersion = \"4\"",
        "ddb.geometry.heads = \"255\"",
        "ddb.geometry.sectors = \"63\"",
        "ddb.geometry.cylinders",
        &extent,
    ] {
        assert!(text.contains(needle), "descriptor lacks {needle}:\n{text}");
    }
    // Ends with footer marker, footer, end-of-stream marker.
    let n = v.len();
    assert_eq!(
        u32::from_le_bytes(v[n - 1536 + 12..n - 1536 + 16].try_into().unwrap()),
        3
    );
    assert_eq!(&v[n - 1024..n - 1020], b"KDMV");
    assert!(v[n - 512..].iter().all(|&b| b == 0));
    // Holes and zero runs are not stored.
    let raw_bytes = std::fs::read(&raw).unwrap();
    let nonzero = raw_bytes
        .chunks(65536)
        .filter(|g| g.iter().any(|&b| b != 0))
        .count() as u64;
    assert_eq!(st.grains_stored, nonzero);
    assert!(
        nonzero < SIZE / 65536,
        "the test disk should hold zero grains"
    );

    // The synchronous writer produces the same bytes.
    let mut w: Vec<u8> = Vec::new();
    let f = std::fs::File::open(&raw).unwrap();
    write_stream_optimized_sync(std::io::BufReader::new(f), SIZE, &mut w, &opts("out.vmdk"))
        .unwrap();
    assert!(w == v, "sync and async writers differ");
}

#[tokio::test]
async fn monolithic_sparse_and_flat_pass_qemu_and_vmdk_core() {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), SIZE);
    let src = FileSource::open(&raw).unwrap();
    let sparse = dir.path().join("sparse.vmdk");
    let st = write_monolithic_sparse(&src, &sparse, &opts("sparse.vmdk"))
        .await
        .unwrap();
    assert!(st.grains_stored > 0);
    oracle_checks(&raw, &sparse);
    our_read_equals(&raw, &sparse).await;

    let flat = dir.path().join("flat.vmdk");
    write_monolithic_flat(&src, &flat, &opts("flat.vmdk"))
        .await
        .unwrap();
    assert!(dir.path().join("flat-flat.vmdk").exists());
    oracle_checks(&raw, &flat);
    our_read_equals(&raw, &flat).await;
}

#[tokio::test]
async fn empty_and_tiny_disks() {
    for size in [0u64, 512, 65536, 65536 + 512] {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("src.raw");
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(&raw, &data).unwrap();
        let src = MemDisk(data);
        let out = dir.path().join("s.vmdk");
        let mut v: Vec<u8> = Vec::new();
        write_stream_optimized(&src, &mut v, &opts("s.vmdk"))
            .await
            .unwrap();
        std::fs::write(&out, &v).unwrap();
        if size > 0 {
            // qemu-img cannot open 0-byte VMDKs, even its own.
            oracle_checks(&raw, &out);
        }
        our_read_equals(&raw, &out).await;
        let sp = dir.path().join("m.vmdk");
        write_monolithic_sparse(&src, &sp, &opts("m.vmdk"))
            .await
            .unwrap();
        if size > 0 {
            oracle_checks(&raw, &sp);
        }
        our_read_equals(&raw, &sp).await;
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn disk() -> impl Strategy<Value = Vec<u8>> {
        // Up to 1.5 MiB in sectors, with a few written runs over zeros.
        (
            1u64..3072,
            prop::collection::vec((0u64..3072, 1u64..300, any::<u8>()), 0..8),
        )
            .prop_map(|(sectors, writes)| {
                let mut d = vec![0u8; (sectors * 512) as usize];
                for (at, len, b) in writes {
                    let s = ((at % sectors) * 512) as usize;
                    let e = (s + len as usize * 97).min(d.len());
                    for (i, x) in d[s..e].iter_mut().enumerate() {
                        *x = b.wrapping_add(i as u8 / 7);
                    }
                }
                d
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn writer_reader_round_trip(d in disk(), level in 0u32..10, threads in 1usize..4) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let src = MemDisk(d.clone());
                let o = WriteOptions { level, threads, ..opts("p.vmdk") };
                let mut v: Vec<u8> = Vec::new();
                write_stream_optimized(&src, &mut v, &o).await.unwrap();
                let p = dir.path().join("p.vmdk");
                std::fs::write(&p, &v).unwrap();
                let r = Vmdk::open_path(&p).await.unwrap();
                assert!(read_all(&r).await == d);
                let s = dir.path().join("q.vmdk");
                write_monolithic_sparse(&src, &s, &o).await.unwrap();
                let r = Vmdk::open_path(&s).await.unwrap();
                assert!(read_all(&r).await == d);
                let f = dir.path().join("f.vmdk");
                write_monolithic_flat(&src, &f, &o).await.unwrap();
                let r = Vmdk::open_path(&f).await.unwrap();
                assert!(read_all(&r).await == d);
            });
        }
    }
}
