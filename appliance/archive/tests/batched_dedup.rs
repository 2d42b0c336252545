//! The backup engine's batched dedup checks: a store with a batch query gets its checks in
//! `missing` batches and no `exists` calls, stores the same objects as without batching, and
//! a store without one is asked `exists` as before.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use ferry_archive::{BackupOptions, Progress, Repository};
use ferry_storage::{LocalStore, ObjectInfo, Store, StoreError};

/// A local store that counts calls and reports a batch size.
#[derive(Debug)]
struct Counting {
    inner: LocalStore,
    batch: usize,
    exists: AtomicU64,
    missing_calls: AtomicU64,
    missing_keys: AtomicU64,
    largest: AtomicU64,
}

#[async_trait]
impl Store for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.inner.put(key, data).await
    }
    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.inner.put_new(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.exists.fetch_add(1, Ordering::Relaxed);
        self.inner.exists(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync().await
    }
    async fn missing(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        assert!(
            keys.len() <= self.batch,
            "batch of {} > {}",
            keys.len(),
            self.batch
        );
        self.missing_calls.fetch_add(1, Ordering::Relaxed);
        self.missing_keys
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        self.largest.fetch_max(keys.len() as u64, Ordering::Relaxed);
        // Slow round trips make the checks of the chunks in flight pile up into batches.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut out = Vec::new();
        for k in keys {
            if !self.inner.exists(k).await? {
                out.push(k.clone());
            }
        }
        Ok(out)
    }
    fn batch_hint(&self) -> usize {
        self.batch
    }
}

async fn run(batch: usize) -> (Arc<Counting>, Vec<String>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Counting {
        inner: LocalStore::new(dir.path().join("repo")),
        batch,
        exists: AtomicU64::new(0),
        missing_calls: AtomicU64::new(0),
        missing_keys: AtomicU64::new(0),
        largest: AtomicU64::new(0),
    });
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let src = dir.path().join("disk.raw");
    // 24 MiB of random data, its first 8 MiB repeated: 16 distinct chunks, 8 reused.
    write_random(&src, 0, 16 << 20, 7);
    let head = std::fs::read(&src).unwrap()[..8 << 20].to_vec();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&head, 16 << 20).unwrap();
    }
    let mut opts = BackupOptions::new("vm");
    opts.concurrency = 8;
    let m = ferry_archive::backup(
        &repo,
        vec![input(&src, None)],
        &opts,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(m.disks[0].stats.new_chunks, 16);
    // A second full backup finds every chunk present.
    let m2 = ferry_archive::backup(
        &repo,
        vec![input(&src, None)],
        &opts,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(m2.disks[0].stats.new_chunks, 0);
    let mut chunks: Vec<String> = store
        .list("chunks/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    chunks.sort();
    let restored = dir.path().join("out.raw");
    ferry_archive::restore::restore(
        &repo,
        &m2,
        0,
        &ferry_archive::restore::Target::File(restored.clone()),
        4,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(sha256_file(&src), sha256_file(&restored));
    let sha = sha256_file(&src);
    (store, chunks, sha, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batching_store_gets_batches_and_no_exists() {
    let (b, chunks_b, sha_b, _d1) = run(4).await;
    assert_eq!(b.exists.load(Ordering::Relaxed), 0);
    assert!(b.missing_calls.load(Ordering::Relaxed) > 0);
    // Some checks were gathered (the 20 ms round trip lets the window fill up).
    assert!(b.largest.load(Ordering::Relaxed) > 1);
    assert!(b.missing_calls.load(Ordering::Relaxed) < b.missing_keys.load(Ordering::Relaxed));

    let (p, chunks_p, sha_p, _d2) = run(1).await;
    assert_eq!(p.missing_calls.load(Ordering::Relaxed), 0);
    assert!(p.exists.load(Ordering::Relaxed) > 0);
    assert_eq!(chunks_b, chunks_p);
    assert_eq!(sha_b, sha_p);
}
