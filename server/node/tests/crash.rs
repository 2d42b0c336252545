//! The node is killed (SIGKILL) in the middle of an upload and restarted: the next backup
//! reuses the chunks that were stored, and nothing is corrupted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::Arc;

use common::*;
use ferry_archive::{BackupOptions, FileSource, Progress};
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_killed_mid_upload_then_next_backup_reuses_and_verifies() {
    let w = World::new(CONFIG);
    let mut node = w.start(0);
    let port: u16 = node.addr.rsplit(':').next().unwrap().parse().unwrap();
    let a1 = w.agent("a1");
    let admin = w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root");
    let disk = w.path("disk.raw");
    random_disk(&disk, 40 * MIB as usize, 8);
    let sha = sha256_file(&disk);

    let repo1 = repo(&node, "main", &a1).await;
    let gate = Arc::new(Semaphore::new(0));
    let src = Gated {
        inner: FileSource::open(&disk).unwrap(),
        gate_at: 16 * MIB,
        gate: gate.clone(),
    };
    let input = ferry_archive::DiskInput {
        name: "disk0".into(),
        source: Arc::new(src),
        changed: None,
        change_id: None,
        meta: Default::default(),
    };
    let task = tokio::spawn(async move {
        ferry_archive::backup(
            &repo1,
            vec![input],
            &BackupOptions::new("vm"),
            Arc::new(Progress::default()),
        )
        .await
    });
    // The first 16 chunks are uploaded; the rest wait at the gate.
    while w.chunk_count("main") < 16 {
        assert!(!task.is_finished(), "{:?}", task.await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    node.kill();
    gate.add_permits(1 << 20);
    let e = task.await.unwrap().unwrap_err();
    eprintln!("backup during the kill failed as expected: {e}");
    assert!(
        w.vault_dir("main")
            .join("points")
            .read_dir()
            .map_or(0, |d| d.count())
            == 0
    );

    // Restart on the same port; the next backup reuses the 16 stored chunks.
    let node = w.start(port);
    let repo2 = repo(&node, "main", &a1).await;
    assert!(repo2.list_point_ids().await.unwrap().is_empty());
    let m = backup(&repo2, &disk, "vm", None).await.unwrap();
    let s = &m.disks[0].stats;
    assert!(s.reused >= 16 * MIB, "{s:?}");
    assert_eq!(s.new_chunks, 40 - s.reused / MIB, "{s:?}");
    assert_eq!(restore_sha(&repo2, &m, &w.path("out")).await, sha);
    let j = job(&w, &node, &admin, "main", "verify").await;
    assert!(j.ok, "{j:?}");
    // Every chunk object in the vault decodes to its digest (no torn writes).
    let local = ferry_archive::Repository::open(Arc::new(ferry_storage::LocalStore::new(
        w.vault_dir("main"),
    )))
    .await
    .unwrap();
    for o in local.store().list("chunks/").await.unwrap() {
        let d = ferry_archive::format::parse_digest(o.key.rsplit('/').next().unwrap()).unwrap();
        let data = local.store().get(&o.key).await.unwrap();
        ferry_archive::format::decode_chunk(&data, &d).unwrap();
    }
}
