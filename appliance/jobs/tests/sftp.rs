//! A plan whose destination is SFTP: the job backs up the simulator's VM through an sshd
//! of our own on loopback (key login, host key pinned by fingerprint, the secrets pushed
//! with the plan), verifies it, and a restore from the SFTP repository has the source's
//! sha256. A second run reads only what CBT says changed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::time::Duration;

use common::{disk_bytes, no_events, restored_sha, seed, sha, Sim, Sshd};
use ferry_api::v1::Credential;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_destination_backup_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let sim = Sim::start(&["-disks", "8M"]).await;
    let vc = sim.connect().await;
    let mut data = disk_bytes(8 << 20, 5);
    let vm = seed(&vc, "DC0_H0_VM0", &data).await;
    let info = vc.vm_info(&vm).await.unwrap();
    vc.enable_cbt(&vm, Duration::from_secs(30)).await.unwrap();
    let cbt = format!("/cbt?vm={}&key={}", vm.value, info.disks[0].key);
    sim.control(&cbt, "").await.unwrap();

    let repo = dir.path().join("sftp-repo");
    let plan = sim.plan(
        r#"names = ["DC0_H0_VM0"]"#,
        &format!(
            "url = \"sftp://{}@127.0.0.1:{}{}\"\ncredential = \"nas\"",
            sshd.user,
            sshd.port,
            repo.display()
        ),
        "[retention]\nkeep_last = 2\n",
    );
    let mut creds = sim.creds();
    let nas = Credential {
        secrets: [
            (
                "key_file".to_string(),
                sshd.client_key.display().to_string(),
            ),
            ("host_fingerprint".to_string(), sshd.fingerprint.clone()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    creds.insert("nas".into(), nas.clone());

    let out = ferry_jobs::run(&plan, &creds, dir.path(), no_events()).await;
    assert!(out.error.is_none(), "{out:?}");
    assert_eq!(out.verified, Some(true));
    let r = &out.vms[0];
    assert!(r.ok && r.bytes_stored > 0, "{r:?}");
    // The repository is on the SFTP server's file system, written through sshd.
    assert!(repo.join("config").exists() || std::fs::read_dir(&repo).unwrap().count() > 0);
    let p1 = r.point.clone().unwrap();
    assert_eq!(
        restored_sha(&plan, Some(&nas), &p1, dir.path()).await,
        sha(&data)
    );

    // Change 64 KiB: the second run is a CBT incremental to the same SFTP repository.
    for b in &mut data[3 << 20..(3 << 20) + 65536] {
        *b ^= 0xa5;
    }
    seed(&vc, "DC0_H0_VM0", &data).await;
    sim.control(&cbt, &format!("{} 65536\n", 3 << 20))
        .await
        .unwrap();
    let out = ferry_jobs::run(&plan, &creds, dir.path(), no_events()).await;
    assert!(out.error.is_none(), "{out:?}");
    let r = &out.vms[0];
    assert!(r.ok && r.incremental, "{r:?}");
    assert!(r.bytes_read <= 4 << 20, "only the changed chunk: {r:?}");
    let p2 = r.point.clone().unwrap();
    assert_ne!(p1, p2);
    assert_eq!(
        restored_sha(&plan, Some(&nas), &p2, dir.path()).await,
        sha(&data)
    );

    // A wrong host key is refused before anything is written.
    let mut bad = creds.clone();
    bad.get_mut("nas").unwrap().secrets.insert(
        "host_fingerprint".into(),
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    );
    let out = ferry_jobs::run(&plan, &bad, dir.path(), no_events()).await;
    let e = out.error.unwrap();
    assert!(e.starts_with("storage sftp://"), "{e}");
    assert!(out.vms.is_empty());
}
