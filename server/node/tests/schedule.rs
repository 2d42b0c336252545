//! The node's own jobs run on their cron schedules: GC removes the chunks of a deleted point,
//! and verify fills in the catalog's verify state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::*;
use ferry_api::node::CatalogEntry;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_gc_and_verify_run_on_the_node() {
    let config = format!("{CONFIG}\n[schedule]\ngc = \"* * * * * *\"\nverify = \"* * * * * *\"\n");
    let w = World::new(&config);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let repo = repo(&node, "main", &a1).await;
    let keep = w.path("keep.raw");
    random_disk(&keep, 3 * MIB as usize, 1);
    let kept = backup(&repo, &keep, "vm", None).await.unwrap();
    let gone = w.path("gone.raw");
    random_disk(&gone, 4 * MIB as usize, 2);
    let m = backup(&repo, &gone, "vm", None).await.unwrap();
    repo.store()
        .delete(&ferry_archive::repo::manifest_key(&m.id))
        .await
        .unwrap();
    // Wait (bounded) for the scheduled GC to remove the 4 chunks only the deleted point used,
    // and for the scheduled verify to mark the kept point.
    let mut verified = false;
    for _ in 0..300 {
        let cat: Vec<CatalogEntry> = http(&w, &a1)
            .get(format!("https://{}/v1/vaults/main/catalog", node.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        verified = cat.len() == 1 && cat[0].verify.as_ref().is_some_and(|v| v.ok);
        if verified && w.chunk_count("main") == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(verified);
    assert_eq!(w.chunk_count("main"), 3);
    assert_eq!(
        restore_sha(&repo, &kept, &w.path("out")).await,
        sha256_file(&keep)
    );
}
