//! The S3 backend against s3s-fs (a real S3 server that checks SigV4) on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferry_archive::Repository;
use ferry_storage::{open_store_with, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_cycle_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let srv = S3Server::start(&dir.path().join("s3"));
    let store = open_store_with(&srv.url("repos/one"), srv.options()).unwrap();
    store.check().await.unwrap();
    full_cycle(store, dir.path(), 24 << 20).await;
    // The objects really are in the bucket, under the prefix.
    assert!(dir.path().join("s3/bkt/repos/one/config").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_put_new_list_and_multipart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = S3Server::start(&dir.path().join("s3"));
    let store = open_store_with(&srv.url("p"), srv.options()).unwrap();
    assert!(store
        .put_new("a/b", Bytes::from_static(b"one"))
        .await
        .unwrap());
    assert!(!store
        .put_new("a/b", Bytes::from_static(b"two"))
        .await
        .unwrap());
    assert_eq!(store.get("a/b").await.unwrap(), Bytes::from_static(b"one"));
    store
        .put("a/b", Bytes::from_static(b"three"))
        .await
        .unwrap();
    assert_eq!(
        store.get("a/b").await.unwrap(),
        Bytes::from_static(b"three")
    );
    store.put("a/cd", Bytes::from_static(b"x")).await.unwrap();
    store.put("ab", Bytes::from_static(b"x")).await.unwrap();
    let mut keys: Vec<_> = store
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["a/b", "a/cd"]);
    let keys: Vec<_> = store
        .list("a/c")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["a/cd"]);
    // Above the multipart threshold: uploaded in parts, read back whole.
    let big: Vec<u8> = (0..(ferry_storage::s3::MULTIPART_THRESHOLD + 3 * 1024 * 1024))
        .map(|i| (i % 251) as u8)
        .collect();
    store.put("big", Bytes::from(big.clone())).await.unwrap();
    assert_eq!(store.get("big").await.unwrap().len(), big.len());
    assert_eq!(store.get("big").await.unwrap(), Bytes::from(big));
    store.delete("big").await.unwrap();
    store.delete("big").await.unwrap();
    assert!(!store.exists("big").await.unwrap());
    assert!(store.get("big").await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = S3Server::start(&dir.path().join("s3"));
    let mut o = srv.options();
    o.secrets.secret_access_key = Some("not-the-secret".into());
    o.retries = 1;
    let store = open_store_with(&srv.url("p"), o).unwrap();
    let e = store.check().await.unwrap_err();
    let text = e.to_string();
    assert!(!text.contains("not-the-secret"), "{text}");
    assert!(
        matches!(
            e,
            StoreError::Capability { .. } | StoreError::Auth { .. } | StoreError::Remote { .. }
        ),
        "{e:?}"
    );
    assert!(
        text.contains("403") || text.contains("Signature") || text.contains("Access"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_backup_then_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = S3Server::start(&dir.path().join("s3"));
    let store = open_store_with(&srv.url("r"), srv.options()).unwrap();
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let disk = dir.path().join("disk.raw");
    ferry_testkit::MixedDisk::new(64 << 20, 5)
        .write(&disk)
        .unwrap();
    let task = {
        let repo = repo.clone();
        let disk = disk.clone();
        tokio::spawn(async move { backup(&repo, &disk).await })
    };
    // Kill once chunks are arriving, and come back two seconds later on the same port.
    let chunks = dir.path().join("s3/bkt/r/chunks");
    let t = std::time::Instant::now();
    while !chunks.is_dir() && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.proc.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    srv.proc.start();
    let result = task.await.unwrap();
    match result {
        Ok(m) => {
            let out = dir.path().join("restored");
            assert_eq!(restore_sha(&repo, &m, &out).await, sha256_file(&disk));
        }
        Err(e) => eprintln!("backup failed cleanly: {e}"),
    }
    verify_ok(&repo).await;
    // A next backup completes and reuses what the first one stored.
    let m = backup(&repo, &disk).await.unwrap();
    assert_eq!(
        restore_sha(&repo, &m, &dir.path().join("r2")).await,
        sha256_file(&disk)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let srv = S3Server::start(&mnt);
    let mut o = srv.options();
    o.retries = 1;
    let store = open_store_with(&srv.url("r"), o).unwrap();
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let disk = dir.path().join("disk.raw");
    // Random data does not compress: 16 MiB cannot fit in 6 MiB.
    random_disk(&disk, 16 << 20, 9);
    let e = backup(&repo, &disk).await.unwrap_err();
    eprintln!("full disk: {e}");
    // No restore point became visible, and the repository still verifies.
    assert!(repo.list_points().await.unwrap().is_empty());
    verify_ok(&repo).await;
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_bundle_and_a_mismatched_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let srv = S3Server::start(&dir.path().join("s3"));
    let (ca, cert, key) = self_signed(dir.path(), "s3", &["localhost"]);
    let port = tls_front(&cert, &key, srv.proc.port).await;
    let url = |host: &str| {
        format!("s3://bkt/tls?endpoint=https://{host}:{port}&region=us-east-1&path_style=true")
    };
    let mut o = srv.options();
    o.secrets.ca_file = Some(ca.clone());
    let store = open_store_with(&url("localhost"), o.clone()).unwrap();
    store.check().await.unwrap();
    full_cycle(store, dir.path(), 8 << 20).await;
    // The same server reached as 127.0.0.1: its certificate names only localhost. Refused
    // as a trust failure, not retried.
    let mut o2 = o.clone();
    o2.retries = 3;
    let t = std::time::Instant::now();
    let e = open_store_with(&url("127.0.0.1"), o2)
        .unwrap()
        .check()
        .await
        .unwrap_err();
    eprintln!("mismatch: {e}");
    assert!(matches!(e, StoreError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "retried a certificate failure"
    );
    // Without the CA bundle (system roots only) the test CA is unknown: refused too.
    let mut o3 = srv.options();
    o3.retries = 0;
    assert!(open_store_with(&url("localhost"), o3)
        .unwrap()
        .check()
        .await
        .is_err());
}
