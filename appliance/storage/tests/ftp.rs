//! The FTP/FTPS backend against pyftpdlib (Debian's python3) on loopback.
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
async fn archive_cycle_on_ftp() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ftproot");
    let ftpd = Ftpd::start(&root, None, 0);
    let store = open_store_with(&ftpd.url("ftp", "127.0.0.1", "/repo"), ftpd.options()).unwrap();
    store.check().await.unwrap();
    full_cycle(store, dir.path(), 24 << 20).await;
    assert!(root.join("repo/config").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_cycle_on_explicit_ftps() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(dir.path(), "srv", &["localhost", "127.0.0.1"]);
    let root = dir.path().join("ftproot");
    let ftpd = Ftpd::start(&root, Some((&cert, &key)), 0);
    let mut o = ftpd.options();
    o.secrets.ca_file = Some(ca.clone());
    let store = open_store_with(&ftpd.url("ftps", "localhost", "/repo"), o).unwrap();
    store.check().await.unwrap();
    full_cycle(store, dir.path(), 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(dir.path(), "other", &["other.example"]);
    let ftpd = Ftpd::start(&dir.path().join("root"), Some((&cert, &key)), 0);
    let mut o = ftpd.options();
    o.secrets.ca_file = Some(ca.clone());
    o.retries = 0;
    let store = open_store_with(&ftpd.url("ftps", "localhost", "/repo"), o).unwrap();
    let e = store.check().await.unwrap_err();
    assert!(matches!(e, StoreError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ftpd = Ftpd::start(&dir.path().join("root"), None, 0);
    let mut o = ftpd.options();
    o.secrets.password = Some("wrong-ftp-pw".into());
    let store = open_store_with(&ftpd.url("ftp", "127.0.0.1", "/r"), o).unwrap();
    let e = store.check().await.unwrap_err();
    assert!(matches!(e, StoreError::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-ftp-pw"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_data_connections_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // Every 5th transfer loses its data connection.
    let ftpd = Ftpd::start(&root, None, 5);
    let store = open_store_with(&ftpd.url("ftp", "127.0.0.1", "/r"), ftpd.options()).unwrap();
    for i in 0..20u8 {
        let key = format!("k/{i}");
        store
            .put(&key, Bytes::from(vec![i; 100_000]))
            .await
            .unwrap();
        assert_eq!(
            store.get(&key).await.unwrap(),
            Bytes::from(vec![i; 100_000])
        );
    }
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let disk = dir.path().join("disk.raw");
    ferry_testkit::MixedDisk::new(16 << 20, 3)
        .write(&disk)
        .unwrap();
    let m = backup(&repo, &disk).await.unwrap();
    verify_ok(&repo).await;
    assert_eq!(
        restore_sha(&repo, &m, &dir.path().join("out")).await,
        sha256_file(&disk)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_backup_then_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut ftpd = Ftpd::start(&root, None, 0);
    let store = open_store_with(&ftpd.url("ftp", "127.0.0.1", "/r"), ftpd.options()).unwrap();
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let disk = dir.path().join("disk.raw");
    ferry_testkit::MixedDisk::new(48 << 20, 5)
        .write(&disk)
        .unwrap();
    let task = {
        let repo = repo.clone();
        let disk = disk.clone();
        tokio::spawn(async move { backup(&repo, &disk).await })
    };
    let chunks = root.join("r/chunks");
    let t = std::time::Instant::now();
    while !chunks.is_dir() && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ftpd.proc.kill_tree();
    tokio::time::sleep(Duration::from_secs(2)).await;
    ftpd.proc.start();
    match task.await.unwrap() {
        Ok(m) => {
            let out = dir.path().join("restored");
            assert_eq!(restore_sha(&repo, &m, &out).await, sha256_file(&disk));
        }
        Err(e) => eprintln!("backup failed cleanly: {e}"),
    }
    verify_ok(&repo).await;
    let m = backup(&repo, &disk).await.unwrap();
    assert_eq!(
        restore_sha(&repo, &m, &dir.path().join("r2")).await,
        sha256_file(&disk)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_cycle_on_implicit_ftps() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(dir.path(), "srv", &["localhost", "127.0.0.1"]);
    let root = dir.path().join("ftproot");
    let ftpd = Ftpd::start_with(&root, Some((&cert, &key)), 0, &["--implicit"]);
    let mut o = ftpd.options();
    o.secrets.ca_file = Some(ca.clone());
    let store = open_store_with(&ftpd.url("ftps-implicit", "localhost", "/repo"), o).unwrap();
    assert!(store.location().starts_with("ftps-implicit://"));
    store.check().await.unwrap();
    full_cycle(store, dir.path(), 16 << 20).await;
    assert!(root.join("repo/config").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_ftps_refuses_a_mismatched_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(dir.path(), "other", &["other.example"]);
    let ftpd = Ftpd::start_with(
        &dir.path().join("root"),
        Some((&cert, &key)),
        0,
        &["--implicit"],
    );
    let mut o = ftpd.options();
    o.secrets.ca_file = Some(ca.clone());
    o.retries = 0;
    // The same server through ftps://…?implicit=1.
    let url = ftpd.url("ftps", "localhost", "/repo") + "?implicit=1";
    let store = open_store_with(&url, o).unwrap();
    let e = store.check().await.unwrap_err();
    assert!(matches!(e, StoreError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");
}

/// Every third transfer loses its data and control connections after 200 kB. With no
/// retries at all in the retry layer, only REST resume can finish the uploads and downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_transfers_resume_with_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ftpd = Ftpd::start_with(&root, None, 0, &["--cut-data", "200000", "3"]);
    let mut o = ftpd.options();
    o.retries = 0;
    o.probe = false;
    let store = open_store_with(&ftpd.url("ftp", "127.0.0.1", "/r"), o).unwrap();
    let blob = |i: u8| -> Vec<u8> {
        (0..700_000u32)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i)
            .collect()
    };
    for i in 0..9u8 {
        let key = format!("k/{i}");
        store.put(&key, Bytes::from(blob(i))).await.unwrap();
        assert_eq!(
            store.get(&key).await.unwrap(),
            Bytes::from(blob(i)),
            "{key}"
        );
    }
    // Whole objects only, and no temporaries left behind by the resumed uploads.
    for i in 0..9u8 {
        assert_eq!(
            std::fs::read(root.join(format!("r/k/{i}"))).unwrap(),
            blob(i)
        );
    }
    let names: Vec<String> = std::fs::read_dir(root.join("r/k"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
    // A backup through the same faults, then verify and restore.
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let disk = dir.path().join("disk.raw");
    ferry_testkit::MixedDisk::new(16 << 20, 7)
        .write(&disk)
        .unwrap();
    let m = backup(&repo, &disk).await.unwrap();
    verify_ok(&repo).await;
    assert_eq!(
        restore_sha(&repo, &m, &dir.path().join("out")).await,
        sha256_file(&disk)
    );
}
