//! The SFTP backend against OpenSSH's sshd (own config, host key, users) on loopback.
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
async fn archive_cycle_on_sftp_with_key() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let repo_dir = dir.path().join("repo");
    let store = open_store_with(&sshd.url("root", &repo_dir), sshd.key_options()).unwrap();
    store.check().await.unwrap();
    full_cycle(store, dir.path(), 24 << 20).await;
    assert!(repo_dir.join("config").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_and_object_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let root = dir.path().join("pw");
    std::fs::create_dir(&root).unwrap();
    run(std::process::Command::new("chown")
        .arg(SFTP_USER)
        .arg(&root));
    let mut o = fast_retry_options();
    o.secrets.password = Some(SFTP_PASSWORD.into());
    o.secrets.host_fingerprint = Some(sshd.fingerprint());
    let store = open_store_with(&sshd.url(SFTP_USER, &root), o).unwrap();
    assert!(store
        .put_new("a/b", Bytes::from_static(b"one"))
        .await
        .unwrap());
    assert!(!store
        .put_new("a/b", Bytes::from_static(b"two"))
        .await
        .unwrap());
    store
        .put("a/b", Bytes::from_static(b"three"))
        .await
        .unwrap();
    assert_eq!(
        store.get("a/b").await.unwrap(),
        Bytes::from_static(b"three")
    );
    store.put("a/cd", Bytes::from_static(b"x")).await.unwrap();
    let mut keys: Vec<_> = store
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["a/b", "a/cd"]);
    store.delete("a/b").await.unwrap();
    store.delete("a/b").await.unwrap();
    assert!(store.get("a/b").await.unwrap_err().is_not_found());
    // Written as the password user, through temp + rename: no temporaries left.
    let names: Vec<_> = std::fs::read_dir(root.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["cd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let mut o = fast_retry_options();
    o.secrets.password = Some("wrong-password".into());
    o.secrets.host_fingerprint = Some(sshd.fingerprint());
    let store = open_store_with(&sshd.url(SFTP_USER, dir.path()), o).unwrap();
    let e = store.check().await.unwrap_err();
    assert!(matches!(e, StoreError::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-password"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_are_pinned_learned_and_changes_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::start(dir.path());
    let url = sshd.url("root", &dir.path().join("repo"));
    let kh = dir.path().join("known_hosts");
    let client_key = sshd.client_key.clone();
    let with_kh = |learn: bool| {
        let mut o = fast_retry_options();
        o.secrets.key_file = Some(client_key.clone());
        o.secrets.known_hosts = Some(kh.clone());
        o.secrets.accept_new_host_key = learn;
        o
    };
    // Unknown key, no TOFU: refused.
    let e = open_store_with(&url, with_kh(false))
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown host key"), "{e}");
    // TOFU records it; afterwards it is known without TOFU.
    open_store_with(&url, with_kh(true))
        .unwrap()
        .check()
        .await
        .unwrap();
    assert!(std::fs::read_to_string(&kh)
        .unwrap()
        .contains("ssh-ed25519"));
    open_store_with(&url, with_kh(false))
        .unwrap()
        .check()
        .await
        .unwrap();
    let old_fp = sshd.fingerprint();
    // The server's key changes: refused even with TOFU, and by the old fingerprint pin.
    sshd.change_host_key();
    let e = open_store_with(&url, with_kh(true))
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HOST KEY CHANGED"), "{e}");
    let mut o = with_kh(false);
    o.secrets.host_fingerprint = Some(old_fp);
    let e = open_store_with(&url, o).unwrap().check().await.unwrap_err();
    assert!(e.to_string().contains("does not match the pinned"), "{e}");
    // The new pin works.
    open_store_with(&url, sshd.key_options())
        .unwrap()
        .check()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_backup_then_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::start(dir.path());
    let repo_dir = dir.path().join("repo");
    let store = open_store_with(&sshd.url("root", &repo_dir), sshd.key_options()).unwrap();
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
    let chunks = repo_dir.join("chunks");
    let t = std::time::Instant::now();
    while !chunks.is_dir() && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killing the listener leaves established sessions alive: kill those too.
    sshd.proc.kill_tree();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sshd.proc.start();
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
async fn full_disk_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
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
    let mut o = sshd.key_options();
    o.retries = 1;
    let store = open_store_with(&sshd.url("root", &mnt), o).unwrap();
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let disk = dir.path().join("disk.raw");
    random_disk(&disk, 16 << 20, 9);
    let e = backup(&repo, &disk).await.unwrap_err();
    eprintln!("full disk: {e}");
    assert!(
        matches!(
            e,
            ferry_archive::ArchiveError::Store(StoreError::NoSpace { .. })
        ),
        "{e:?}"
    );
    assert!(repo.list_points().await.unwrap().is_empty());
    // The admin grows the filesystem: the repository verifies and the next backup completes.
    run(std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt));
    verify_ok(&repo).await;
    let m = backup(&repo, &disk).await.unwrap();
    assert!(m.disks[0].stats.reused > 0, "{:?}", m.disks[0].stats);
    drop(store);
}
