//! Backup and restore round trips: restored bytes equal the source for every disk shape.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::*;
use ferry_archive::ChangedExtents;

const CS: u32 = 1 << 20;

async fn round_trip(make: impl FnOnce(&std::path::Path)) -> (Env, ferry_archive::Manifest) {
    let env = Env::new(CS).await;
    let src = env.path("disk.raw");
    make(&src);
    let m = env.backup(&[&src], None, None).await;
    let out = env.restore(&m, 0).await;
    assert_eq!(sha256_file(&src), sha256_file(&out));
    assert_eq!(
        std::fs::metadata(&src).unwrap().len(),
        std::fs::metadata(&out).unwrap().len()
    );
    (env, m)
}

#[tokio::test]
async fn empty_disk() {
    let (_, m) = round_trip(|p| sparse_file(p, 0)).await;
    assert_eq!(m.disks[0].size, 0);
}

#[tokio::test]
async fn smaller_than_one_chunk() {
    let (_, m) = round_trip(|p| write_random(p, 0, 12345, 1)).await;
    assert_eq!(m.disks[0].stats.new, 12345);
}

#[tokio::test]
async fn not_a_multiple_of_the_chunk_size() {
    round_trip(|p| {
        write_random(p, 0, 3 * CS as usize + 777, 2);
    })
    .await;
}

#[tokio::test]
async fn all_holes_are_never_read() {
    let (_, m) = round_trip(|p| sparse_file(p, 64 << 20)).await;
    let s = &m.disks[0].stats;
    assert_eq!(s.read, 0, "holes were read");
    assert_eq!(s.zero, 64 << 20);
    assert_eq!(s.stored, 0);
}

#[tokio::test]
async fn all_random() {
    let (_, m) = round_trip(|p| write_random(p, 0, 8 * CS as usize, 3)).await;
    assert_eq!(m.disks[0].stats.new_chunks, 8);
}

#[tokio::test]
async fn mixed_disk() {
    let (_, m) = round_trip(|p| {
        ferry_testkit::MixedDisk::new(192 << 20, 7)
            .write(p)
            .unwrap()
    })
    .await;
    let s = &m.disks[0].stats;
    assert!(s.zero > 0 && s.new > 0);
    // Text and records compress: stored is well below new.
    assert!(s.stored < s.new, "{s:?}");
}

#[tokio::test]
async fn written_zeros_are_not_stored() {
    let (_, m) = round_trip(|p| {
        sparse_file(p, 4 * CS as u64);
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(&vec![0u8; 2 * CS as usize], 0).unwrap();
    })
    .await;
    assert_eq!(m.disks[0].stats.stored, 0);
    assert_eq!(m.disks[0].stats.zero, 4 * CS as u64);
}

#[tokio::test]
async fn dedup_across_points_and_disks() {
    let env = Env::new(CS).await;
    let a = env.path("a.raw");
    let b = env.path("b.raw");
    write_random(&a, 0, 6 * CS as usize, 10);
    std::fs::copy(&a, &b).unwrap();
    // Two identical disks in one point: the second stores nothing.
    let m1 = env.backup(&[&a, &b], None, None).await;
    assert_eq!(m1.disks[0].stats.new_chunks, 6);
    assert_eq!(m1.disks[1].stats.new_chunks, 0);
    assert_eq!(m1.disks[1].stats.reused, 6 * CS as u64);
    // A second point of an unchanged disk, without a parent, stores nothing either.
    let m2 = env.backup(&[&a], None, None).await;
    assert_eq!(m2.disks[0].stats.new_chunks, 0);
    for (m, n) in [(&m1, 0), (&m1, 1), (&m2, 0)] {
        assert_eq!(sha256_file(&a), sha256_file(&env.restore(m, n).await));
    }
}

#[tokio::test]
async fn incremental_with_and_without_a_changed_map() {
    let env = Env::new(CS).await;
    let src = env.path("disk.raw");
    ferry_testkit::MixedDisk::new(64 << 20, 3)
        .write(&src)
        .unwrap();
    let full = env.backup(&[&src], None, None).await;
    // Change two 4 KiB pieces, one of them in a former hole past the old data.
    write_random(&src, 5 * CS as u64 + 4096, 4096, 99);
    write_random(&src, 40 * CS as u64, 4096, 98);
    let map = ChangedExtents::new(vec![
        5 * CS as u64 + 4096..5 * CS as u64 + 8192,
        40 * CS as u64..40 * CS as u64 + 4096,
    ]);
    let inc = env.backup(&[&src], Some(&full.id), Some(map)).await;
    let s = &inc.disks[0].stats;
    assert_eq!(
        s.read,
        2 * CS as u64,
        "only the two changed chunks are read: {s:?}"
    );
    assert_eq!(s.new_chunks, 2);
    assert!(s.inherited > 0);
    assert_eq!(sha256_file(&src), sha256_file(&env.restore(&inc, 0).await));
    // Without a map, everything allocated is read and only the changed chunks are new.
    write_random(&src, 10 * CS as u64, 100, 97);
    let inc2 = env.backup(&[&src], Some(&inc.id), None).await;
    assert_eq!(inc2.disks[0].stats.new_chunks, 1);
    assert_eq!(inc2.disks[0].stats.inherited, 0);
    assert_eq!(sha256_file(&src), sha256_file(&env.restore(&inc2, 0).await));
    // Older points still restore their own content.
    assert_ne!(sha256_file(&env.restore(&full, 0).await), sha256_file(&src));
}

#[tokio::test]
async fn grown_disk_reads_the_new_tail() {
    let env = Env::new(CS).await;
    let src = env.path("disk.raw");
    write_random(&src, 0, 2 * CS as usize + 100, 1);
    let full = env.backup(&[&src], None, None).await;
    write_random(&src, 3 * CS as u64, 5000, 2);
    // An empty changed map: nothing changed in the old range, but the tail is new.
    let inc = env
        .backup(&[&src], Some(&full.id), Some(ChangedExtents::new(vec![])))
        .await;
    assert_eq!(sha256_file(&src), sha256_file(&env.restore(&inc, 0).await));
}

#[tokio::test]
async fn point_source_reads_and_maps_like_the_source() {
    use ferry_archive::{BlockSource, ExtentKind, PointSource};
    let env = Env::new(CS).await;
    let src = env.path("disk.raw");
    ferry_testkit::MixedDisk::new(40 << 20, 11)
        .write(&src)
        .unwrap();
    write_random(&src, 41 << 20, 1000, 5); // a tail that is not chunk aligned
    let m = env.backup(&[&src], None, None).await;
    let p = PointSource::open(env.repo.clone(), &m, 0)
        .await
        .unwrap()
        .with_cache_chunks(2);
    let data = std::fs::read(&src).unwrap();
    assert_eq!(p.size(), data.len() as u64);
    let mut rng = ferry_testkit::Rng::new(3);
    for _ in 0..200 {
        let off = rng.below(data.len() as u64);
        let len = rng.below((data.len() as u64 - off).min(3 << 20)) as usize;
        let got = p.read_at(off, vec![0xAA; len]).await.unwrap();
        assert!(
            got == data[off as usize..off as usize + len],
            "mismatch at {off}+{len}"
        );
    }
    let map = p.allocation(0, p.size()).await.unwrap().unwrap();
    assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), p.size());
    for e in &map {
        if e.kind == ExtentKind::Zero {
            assert!(data[e.offset as usize..(e.offset + e.len) as usize]
                .iter()
                .all(|b| *b == 0));
        }
    }
    assert!(p.read_at(p.size(), vec![0; 1]).await.is_err());
}
