//! GC on the node while a backup is running loses nothing: the backup's shared lock holds GC
//! off until the manifest names every chunk it reused, and GC then removes only garbage.
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
async fn gc_during_a_backup_loses_nothing() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let admin = w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root");
    let repo = repo(&node, "main", &a1).await;

    // Point A holds 24 MiB; then it is deleted, so all its chunks are garbage...
    let a = w.path("a.raw");
    random_disk(&a, 24 * MIB as usize, 21);
    let ma = backup(&repo, &a, "vm", None).await.unwrap();
    repo.store()
        .delete(&ferry_archive::repo::manifest_key(&ma.id))
        .await
        .unwrap();
    // ...except that backup B, running during GC, reuses its first 16 MiB.
    let b = w.path("b.raw");
    std::fs::copy(&a, &b).unwrap();
    scribble(&b, 16 * MIB, 8 * MIB as usize, 22);
    let sha_b = sha256_file(&b);
    let gate = Arc::new(Semaphore::new(0));
    let input = ferry_archive::DiskInput {
        name: "disk0".into(),
        source: Arc::new(Gated {
            inner: FileSource::open(&b).unwrap(),
            gate_at: 16 * MIB,
            gate: gate.clone(),
        }),
        changed: None,
        change_id: None,
        meta: Default::default(),
    };
    let repo_b = repo.clone();
    let backup_task = tokio::spawn(async move {
        ferry_archive::backup(
            &repo_b,
            vec![input],
            &BackupOptions::new("vm"),
            Arc::new(Progress::default()),
        )
        .await
    });
    // Wait until B holds its lock and has decided to reuse A's chunks (progress passes 16 MiB
    // only after those dedup checks): the lock object is in the vault.
    while w
        .vault_dir("main")
        .join("locks")
        .read_dir()
        .map_or(0, |d| d.count())
        == 0
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (w2, addr) = (Arc::new(w), node.addr.clone());
    let gc_task = {
        let w2 = w2.clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            let r = http(&w2, &admin)
                .post(format!("https://{addr}/v1/vaults/main/jobs/gc"))
                .send()
                .await
                .unwrap();
            r.json::<ferry_api::node::JobReport>().await.unwrap()
        })
    };
    // GC waits for B's lock; let B finish.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    gate.add_permits(1 << 20);
    let mb = backup_task.await.unwrap().unwrap();
    let g = gc_task.await.unwrap();
    assert!(g.ok, "{g:?}");
    // GC removed A's garbage (its last 8 MiB) but nothing B uses.
    assert_eq!(g.detail["removed_chunks"].as_u64().unwrap(), 8, "{g:?}");
    assert_eq!(restore_sha(&repo, &mb, &w2.path("out")).await, sha_b);
    let j = job(&w2, &node, &admin, "main", "verify").await;
    assert!(j.ok, "{j:?}");
}
