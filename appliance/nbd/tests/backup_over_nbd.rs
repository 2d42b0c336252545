//! End to end at library level: a full backup of a qemu-nbd export through `NbdSource`
//! (holes skipped thanks to block status), an incremental driven by a qemu dirty bitmap,
//! and restores that give the same bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use common::*;
use ferry_archive::restore::{restore, Target};
use ferry_archive::{backup, BackupOptions, DiskInput, Progress, Repository};
use ferry_nbd::{ClientOptions, NbdSource};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 40 * MIB;

fn input(src: NbdSource) -> DiskInput {
    DiskInput {
        name: "disk0".into(),
        source: Arc::new(src),
        changed: None,
        change_id: None,
        meta: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_dirty_bitmap_incremental_then_restore() {
    need("qemu-img");
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = make_disk(&raw, SIZE, 31);
    let q = dir.path().join("d.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q));
    // The bitmap starts clean at the moment of the full backup.
    run(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&q)
        .arg("b0"));

    let store = ferry_storage::open_store(dir.path().join("repo").to_str().unwrap()).unwrap();
    let repo = Repository::init(store, MIB as u32, 3).await.unwrap();

    // Full backup.
    let peer = qemu_nbd(dir.path(), &q, "qcow2", &[]);
    let src = NbdSource::connect(&peer.uri, None, ClientOptions::default())
        .await
        .unwrap();
    let m1 = backup(
        &repo,
        vec![input(src)],
        &BackupOptions::new("vm"),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    drop(peer);
    let s1 = &m1.disks[0].stats;
    let allocated = content
        .chunks(MIB as usize)
        .filter(|c| c.iter().any(|b| *b != 0))
        .count() as u64;
    assert!(s1.read < SIZE, "holes were read: {s1:?}");
    assert!(
        s1.read <= allocated * MIB + MIB,
        "read more than the allocated chunks: {s1:?}"
    );
    assert!(s1.zero > 0);

    // Guest writes after the snapshot: the bitmap records them.
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x61 5M 256k",
            "-c",
            "write -P 0x62 21M 2M",
            "-c",
            "write -z 30M 1M",
        ])
        .arg(&q));
    let now = dir.path().join("now.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&q)
        .arg(&now));

    // Incremental: only chunks the bitmap marks are read; the rest comes from the parent.
    let peer = qemu_nbd(dir.path(), &q, "qcow2", &["-B", "b0"]);
    let src = NbdSource::connect(&peer.uri, Some("b0"), ClientOptions::default())
        .await
        .unwrap();
    let mut opts = BackupOptions::new("vm");
    opts.parent = Some(m1.id.clone());
    let m2 = backup(
        &repo,
        vec![input(src)],
        &opts,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    drop(peer);
    assert_eq!(m2.parent.as_deref(), Some(m1.id.as_str()));
    let s2 = &m2.disks[0].stats;
    assert!(s2.read <= 4 * MIB, "incremental read too much: {s2:?}");
    assert!(s2.inherited > 0, "nothing inherited: {s2:?}");

    // Both restore points restore to the exact bytes of their moment.
    for (m, want) in [(&m1, raw.as_path()), (&m2, now.as_path())] {
        let out = dir.path().join(format!("restored-{}.raw", m.id));
        restore(
            &repo,
            m,
            0,
            &Target::File(out.clone()),
            4,
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
        assert!(
            ferry_testkit::files_equal(&out, want).unwrap(),
            "restore of {} differs",
            m.id
        );
    }
}
