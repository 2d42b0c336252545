//! Damage detection, failed writes, and GC racing backups.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use ferry_archive::restore::Target;
use ferry_archive::{BackupOptions, Progress, Repository};
use ferry_storage::{LocalStore, ObjectInfo, Store, StoreError};

const CS: u32 = 1 << 20;

#[tokio::test]
async fn flipped_byte_is_caught_by_verify_and_restore() {
    let env = Env::new(CS).await;
    let src = env.path("disk.raw");
    write_random(&src, 0, 4 * CS as usize, 5);
    let m = env.backup(&[&src], None, None).await;
    let report = ferry_archive::verify::verify(&env.repo, &[], 2, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(report.ok());
    assert_eq!(report.chunks, 4);

    // Flip one byte in the middle of one chunk object.
    let chunks = env.repo.store().list("chunks/").await.unwrap();
    let victim = &chunks[0];
    let path = env.path("repo").join(&victim.key);
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    std::fs::write(&path, &data).unwrap();

    let report = ferry_archive::verify::verify(&env.repo, &[], 2, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    let d = &report.damaged[0];
    assert_eq!(d.point, m.id);
    assert_eq!(d.disk.as_deref(), Some("disk.raw"));
    let index = env.repo.load_index(&m, 0).await.unwrap();
    let hex = victim.key.rsplit('/').next().unwrap();
    let pos = index
        .entries
        .iter()
        .position(|e| hex::encode(e) == hex)
        .unwrap();
    assert_eq!(d.offset, Some(pos as u64 * CS as u64));

    let out = env.path("out.raw");
    let err = ferry_archive::restore::restore(
        &env.repo,
        &m,
        0,
        &Target::File(out.clone()),
        2,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    // No complete-looking output, and no partial left behind.
    assert!(!out.exists());
    assert!(!env.path("out.raw.ferry-partial").exists());
}

#[tokio::test]
async fn damaged_manifest_and_index_are_reported() {
    let env = Env::new(CS).await;
    let src = env.path("disk.raw");
    write_random(&src, 0, CS as usize, 6);
    let m = env.backup(&[&src], None, None).await;
    let idx_path = env.path("repo").join(&m.disks[0].index);
    let mut data = std::fs::read(&idx_path).unwrap();
    data.truncate(data.len() - 3);
    std::fs::write(&idx_path, &data).unwrap();
    let report = ferry_archive::verify::verify(&env.repo, &[], 2, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.damaged.len(), 1);
    // GC refuses to judge garbage with an unreadable index.
    assert!(ferry_archive::gc::gc(&env.repo, Duration::ZERO)
        .await
        .is_err());
    assert_eq!(env.repo.store().list("chunks/").await.unwrap().len(), 1);
}

/// A store that fails every put after a budget, like a disk that fills up.
/// A mock on purpose: no real filesystem can be made to fill at an exact point here.
#[derive(Debug)]
struct FillingStore {
    inner: LocalStore,
    budget: AtomicU64,
}

#[async_trait]
impl Store for FillingStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.take(key)?;
        self.inner.put(key, data).await
    }
    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.take(key)?;
        self.inner.put_new(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
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
}

impl FillingStore {
    fn take(&self, key: &str) -> Result<(), StoreError> {
        if key.starts_with("locks/") {
            return Ok(());
        }
        let left = self.budget.load(Ordering::SeqCst);
        if left == 0 {
            return Err(StoreError::NoSpace {
                key: key.into(),
                error: std::io::Error::from_raw_os_error(28),
            });
        }
        self.budget.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn full_disk_leaves_no_point_and_the_next_backup_reuses_chunks() {
    let env = Env::new(CS).await;
    let src = env.path("disk.raw");
    write_random(&src, 0, 10 * CS as usize, 8);
    for budget in [0u64, 3, 7] {
        let store: Arc<dyn Store> = Arc::new(FillingStore {
            inner: LocalStore::new(env.path("repo")),
            budget: AtomicU64::new(budget),
        });
        let repo = Repository::open(store).await.unwrap();
        let mut o = BackupOptions::new("vm");
        o.concurrency = 1;
        let err = ferry_archive::backup(
            &repo,
            vec![input(&src, None)],
            &o,
            Arc::new(Progress::default()),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        assert!(env.repo.list_point_ids().await.unwrap().is_empty());
    }
    // 10 chunks were written before the index write failed; the next backup reuses them all.
    let m = env.backup(&[&src], None, None).await;
    assert_eq!(m.disks[0].stats.new_chunks, 0);
    assert_eq!(m.disks[0].stats.reused, 10 * CS as u64);
    assert!(
        ferry_archive::verify::verify(&env.repo, &[], 2, Arc::new(Progress::default()))
            .await
            .unwrap()
            .ok()
    );
    assert_eq!(sha256_file(&src), sha256_file(&env.restore(&m, 0).await));
}

/// A block source that reads slowly, so GC certainly overlaps the backup.
struct SlowSource(ferry_archive::FileSource);

#[async_trait]
impl ferry_archive::BlockSource for SlowSource {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn allocation(
        &self,
        o: u64,
        l: u64,
    ) -> Result<Option<Vec<ferry_archive::Extent>>, ferry_archive::SourceError> {
        self.0.allocation(o, l).await
    }
    async fn read_at(&self, o: u64, b: Vec<u8>) -> Result<Vec<u8>, ferry_archive::SourceError> {
        tokio::time::sleep(Duration::from_millis(40)).await;
        self.0.read_at(o, b).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_a_backup_loses_nothing() {
    let env = Env::new(CS).await;
    let a = env.path("a.raw");
    write_random(&a, 0, 16 * CS as usize, 20);
    let first = env.backup(&[&a], None, None).await;
    // Prune the first point: its chunks are garbage unless the next backup reuses them.
    env.repo
        .store()
        .delete(&format!("points/{}/manifest", first.id))
        .await
        .unwrap();
    write_random(&a, 0, CS as usize, 21);

    let repo = env.repo.clone();
    let src = a.clone();
    let progress = Arc::new(Progress::default());
    let p2 = progress.clone();
    let backup = tokio::spawn(async move {
        let mut inp = input(&src, None);
        inp.source = Arc::new(SlowSource(ferry_archive::FileSource::open(&src).unwrap()));
        let mut o = BackupOptions::new("vm");
        o.concurrency = 2;
        ferry_archive::backup(&repo, vec![inp], &o, p2).await
    });
    // Start GC once the backup holds its lock and is reading and reusing chunks.
    while progress.snapshot().read == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gc = ferry_archive::gc::gc(&env.repo, Duration::from_secs(60))
        .await
        .unwrap();
    let m = backup.await.unwrap().unwrap();
    assert_eq!(m.disks[0].stats.new_chunks, 1);
    // GC waited for the backup: everything the new point names is still there.
    assert_eq!(gc.points, 1);
    assert_eq!(
        gc.removed_chunks, 1,
        "only the one overwritten chunk is garbage"
    );
    let report = ferry_archive::verify::verify(&env.repo, &[], 2, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(sha256_file(&a), sha256_file(&env.restore(&m, 0).await));
}

#[tokio::test]
async fn prune_then_gc_frees_only_unreferenced_chunks() {
    let env = Env::new(CS).await;
    let a = env.path("a.raw");
    write_random(&a, 0, 4 * CS as usize, 30);
    let p1 = env.backup(&[&a], None, None).await;
    write_random(&a, 0, CS as usize, 31);
    let p2 = env.backup(&[&a], None, None).await;
    let opts = ferry_archive::prune::KeepOptions {
        last: Some(1),
        ..Default::default()
    };
    let d = ferry_archive::prune::prune(&env.repo, None, &opts, false)
        .await
        .unwrap();
    assert_eq!(d.iter().filter(|x| !x.keep).count(), 1);
    assert_eq!(
        env.repo.list_point_ids().await.unwrap(),
        vec![p2.id.clone()]
    );
    let gc = ferry_archive::gc::gc(&env.repo, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(gc.removed_chunks, 1);
    assert!(env.repo.load_manifest(&p1.id).await.is_err());
    assert_eq!(sha256_file(&a), sha256_file(&env.restore(&p2, 0).await));
}

#[tokio::test]
async fn newer_repository_format_is_refused() {
    let env = Env::new(CS).await;
    let cfg = env.path("repo/config");
    let mut data = std::fs::read(&cfg).unwrap();
    data[4] = 7;
    let crc = crc32fast::hash(&data[..28]).to_le_bytes();
    data[28..32].copy_from_slice(&crc);
    std::fs::write(&cfg, &data).unwrap();
    let store = ferry_storage::open_store(&env.path("repo").to_string_lossy()).unwrap();
    let err = Repository::open(store).await.unwrap_err();
    assert!(err.to_string().contains("upgrade Ferry"), "{err}");
}
