//! A backup that overflows its vault's quota fails cleanly: no restore point appears, the
//! earlier points still restore, the vault verifies, and GC gives the space back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::Arc;

use common::*;
use ferry_archive::{ArchiveError, Progress};
use ferry_storage::StoreError;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_overflow_fails_cleanly_and_the_vault_verifies() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let admin = w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root");
    let repo = repo(&node, "small", &a1).await;

    let small = w.path("small.raw");
    random_disk(&small, 2 * MIB as usize, 1);
    let m = backup(&repo, &small, "vm", None).await.unwrap();

    // 12 MiB of incompressible data into a 6 MiB vault.
    let big = w.path("big.raw");
    random_disk(&big, 12 * MIB as usize, 2);
    let e = backup(&repo, &big, "vm", Some(&m.id)).await.unwrap_err();
    assert!(
        matches!(e, ArchiveError::Store(StoreError::NoSpace { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("quota exceeded"), "{e}");
    let used = w.chunk_bytes("small");
    assert!(used <= 6 * MIB, "{used}");
    // The node's own count never passes the quota either.
    let vaults: Vec<ferry_api::node::VaultInfo> = http(&w, &a1)
        .get(format!("https://{}/v1/vaults", node.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let info = vaults.iter().find(|v| v.name == "small").unwrap();
    assert!(info.used <= info.quota && info.quota == 6 * MIB, "{info:?}");

    // No new point; the old one restores; the vault verifies, on the node and here.
    assert_eq!(repo.list_point_ids().await.unwrap(), vec![m.id.clone()]);
    assert_eq!(
        restore_sha(&repo, &m, &w.path("out")).await,
        sha256_file(&small)
    );
    let j = job(&w, &node, &admin, "small", "verify").await;
    assert!(j.ok, "{j:?}");
    let r = ferry_archive::verify::verify(&repo, &[], 4, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(r.ok() && r.points == 1, "{r:?}");
    // The failed backup released its lock, so GC runs and frees its chunks.
    let g = job(&w, &node, &admin, "small", "gc").await;
    assert!(g.ok, "{g:?}");
    assert!(g.detail["removed_chunks"].as_u64().unwrap() > 0);
    assert!(w.chunk_bytes("small") < used);
    // Then a backup that fits succeeds.
    let fits = w.path("fits.raw");
    random_disk(&fits, 3 * MIB as usize, 3);
    let m2 = backup(&repo, &fits, "vm", None).await.unwrap();
    assert_eq!(
        restore_sha(&repo, &m2, &w.path("out2")).await,
        sha256_file(&fits)
    );
    let j = job(&w, &node, &admin, "small", "verify").await;
    assert!(j.ok, "{j:?}");
}
