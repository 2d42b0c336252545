//! Two agents (two client certificates) back up the same disk: the node stores the data
//! once, and each agent sees only its own restore points.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_same_data_store_it_once() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let (a1, a2) = (w.agent("a1"), w.agent("a2"));
    let disk = w.path("disk.raw");
    mixed_disk(&disk, 64 * MIB, 3);
    let sha = sha256_file(&disk);

    let r1 = repo(&node, "main", &a1).await;
    let m1 = backup(&r1, &disk, "web01", None).await.unwrap();
    let chunks1 = w.chunk_bytes("main");
    let count1 = w.chunk_count("main");
    assert!(chunks1 > 0);

    let r2 = repo(&node, "main", &a2).await;
    let m2 = backup(&r2, &disk, "web01-copy", None).await.unwrap();
    // Nothing new: every chunk was already there.
    assert_eq!(m2.disks[0].stats.new_chunks, 0, "{:?}", m2.disks[0].stats);
    assert_eq!(m2.disks[0].stats.stored, 0);
    assert_eq!(w.chunk_bytes("main"), chunks1);
    assert_eq!(w.chunk_count("main"), count1);

    // Each restores its own point with the same bytes.
    assert_eq!(restore_sha(&r1, &m1, &w.path("o1")).await, sha);
    assert_eq!(restore_sha(&r2, &m2, &w.path("o2")).await, sha);

    // a2 does not see a1's point, and cannot read its manifest or index.
    assert_eq!(r2.list_point_ids().await.unwrap(), vec![m2.id.clone()]);
    assert!(r2.load_manifest(&m1.id).await.is_err());
    let e = r2.store().get(&m1.disks[0].index).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // Nor delete it.
    r2.store()
        .delete(&ferry_archive::repo::manifest_key(&m1.id))
        .await
        .unwrap();
    assert_eq!(r1.list_point_ids().await.unwrap(), vec![m1.id.clone()]);
}
