#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]
//! End to end against the govmomi simulator (ferry-vcsim): full backup of a 2-disk VM, a
//! CBT incremental that reads only the changed areas, restores with equal SHA-256, and the
//! faults (wrong password, unknown VM, pinned thumbprint mismatch, session expiry mid-job,
//! outage and kill mid-backup, failing snapshot removal).

mod common;

use std::time::Duration;

use common::{connect, disk_bytes, new_repo, options, progress, sha};
use ferry_testkit::vcsim::Vcsim;
use ferry_vsphere::job::{monolithic_flat_descriptor, DiskRead};
use ferry_vsphere::{
    backup_vm, restore_disk_to_datastore, restore_disk_to_file, restore_vm, Client, Datastore,
    DatastorePath, FaultKind, Trust, VmBackupOptions, VmInfo, VmRestoreOptions, VmSelector,
    VsphereError,
};

const VM: &str = "DC0_H0_VM0";

async fn vm_info(c: &Client) -> VmInfo {
    let vm = c.find_vm(&VmSelector::Name(VM.into())).await.unwrap();
    c.vm_info(&vm).await.unwrap()
}

/// PUTs a monolithicFlat pair for each disk; returns the contents.
async fn seed(c: &Client, info: &VmInfo, datas: &[Vec<u8>]) {
    let ds = Datastore::new(c, &info.datacenter, 4);
    for (d, data) in info.disks.iter().zip(datas) {
        let p = DatastorePath::parse(&d.file_name).unwrap();
        let stem = p
            .path
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".vmdk")
            .to_string();
        let flat = format!("{stem}-flat.vmdk");
        ds.put_bytes(&p.sibling(&flat), data.clone()).await.unwrap();
        ds.put_bytes(
            &p,
            monolithic_flat_descriptor(data.len() as u64, &flat).into_bytes(),
        )
        .await
        .unwrap();
    }
}

fn opts() -> VmBackupOptions {
    let mut o = VmBackupOptions::new(VmSelector::Name(VM.into()));
    o.task_timeout = Duration::from_secs(60);
    o
}

async fn setup(sim: &Vcsim) -> (Client, VmInfo, Vec<Vec<u8>>) {
    let c = connect(sim).await;
    let info = vm_info(&c).await;
    assert_eq!(info.disks.len(), 2, "{:?}", info.disks);
    let datas: Vec<Vec<u8>> = info
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| disk_bytes(d.capacity as usize, i as u64 + 1))
        .collect();
    seed(&c, &info, &datas).await;
    (c, info, datas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_cbt_incremental_then_restore() {
    let sim = Vcsim::start(&["-disks", "24M,12M", "-cbt-window", "8388608"])
        .await
        .unwrap();
    let (c, info, mut datas) = setup(&sim).await;
    assert_eq!(info.disks[0].capacity, 24 << 20);
    assert!(!info.datacenter.is_empty());

    // CBT on, and a first change generation so the disks carry changeIds.
    let mut o = opts();
    o.enable_cbt = true;
    c.enable_cbt(&info.moref, Duration::from_secs(30))
        .await
        .unwrap();
    for d in &info.disks {
        sim.control(&format!("/cbt?vm={}&key={}", info.moref.value, d.key), "")
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    let full = backup_vm(&c, &repo, &o, progress()).await.unwrap();
    assert_eq!(full.manifest.disks.len(), 2);
    assert!(full
        .disks
        .iter()
        .all(|d| matches!(d.read, DiskRead::Full { .. })));
    assert_eq!(full.manifest.meta["vm.name"], VM);
    assert_eq!(full.manifest.meta["vm.moref"], info.moref.value);
    assert!(full.manifest.disks.iter().all(|d| d.change_id.is_some()));
    // CBT "*" gives the allocated areas: the all-zero MiB blocks are never fetched.
    let nonzero: usize = datas
        .iter()
        .map(|d| {
            d.chunks(1 << 20)
                .filter(|c| c.iter().any(|b| *b != 0))
                .count()
                << 20
        })
        .sum();
    assert!(nonzero < 36 << 20);
    let fetched = full.bytes_fetched as usize;
    assert!(
        (nonzero..nonzero + 65536).contains(&fetched),
        "{fetched} vs {nonzero}"
    );
    assert!(
        vm_info(&c).await.snapshots.is_empty(),
        "snapshot left behind"
    );

    // Change some blocks and tell the simulator's CBT.
    let changes: [&[(usize, usize)]; 2] = [&[(5 << 20, 65536), (20 << 20, 1 << 20)], &[(0, 4096)]];
    for (i, (d, ch)) in info.disks.iter().zip(changes).enumerate() {
        let mut body = String::new();
        for &(off, len) in ch {
            for b in &mut datas[i][off..off + len] {
                *b = b.wrapping_add(0x5a) ^ 0x11;
            }
            body.push_str(&format!("{off} {len}\n"));
        }
        sim.control(
            &format!("/cbt?vm={}&key={}", info.moref.value, d.key),
            &body,
        )
        .await
        .unwrap();
    }
    seed(&c, &info, &datas).await;

    let inc = backup_vm(&c, &repo, &o, progress()).await.unwrap();
    assert_eq!(
        inc.manifest.parent.as_deref(),
        Some(full.manifest.id.as_str())
    );
    for d in &inc.disks {
        assert!(
            matches!(d.read, DiskRead::Incremental { .. }),
            "{:?}",
            d.read
        );
    }
    // Three 1 MiB chunks are touched; plus descriptor reads.
    assert!(
        inc.bytes_fetched <= (3 << 20) + 64 * 1024,
        "{}",
        inc.bytes_fetched
    );
    assert!(inc.bytes_fetched >= 3 << 20, "{}", inc.bytes_fetched);
    assert_ne!(
        inc.manifest.disks[0].change_id,
        full.manifest.disks[0].change_id
    );

    // Restores: local files, and back into the datastore as monolithicFlat.
    for (i, data) in datas.iter().enumerate() {
        let out = dir.path().join(format!("r{i}.raw"));
        restore_disk_to_file(&repo, &inc.manifest, i, &out, progress())
            .await
            .unwrap();
        assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(data), "disk {i}");
    }
    let target = DatastorePath::parse(&format!("[{}] restored/r0.vmdk", sim.datastore)).unwrap();
    restore_disk_to_datastore(
        &c,
        &repo,
        &inc.manifest,
        0,
        &info.datacenter,
        &target,
        progress(),
    )
    .await
    .unwrap();
    let flat = std::fs::read(format!("{}/restored/r0-flat.vmdk", sim.ds_dir)).unwrap();
    assert_eq!(sha(&flat), sha(&datas[0]));
    let ds = Datastore::new(&c, &info.datacenter, 2);
    let v = ferry_vmdk::Vmdk::open(std::sync::Arc::new(ds.resolver(&target)), &target.path)
        .await
        .unwrap();
    assert_eq!(v.size(), datas[0].len() as u64);

    // CBT semantics: "*" gives allocated areas; an unknown changeId is a typed fault.
    let snap = c
        .create_snapshot(
            &info.moref,
            "ferry-probe",
            "",
            false,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let d0 = &info.disks[0];
    let alloc = c
        .query_changed_areas(&info.moref, &snap.snapshot, d0.key, d0.capacity, "*")
        .await
        .unwrap();
    assert!(
        alloc.total() > 0 && alloc.total() < d0.capacity,
        "{}",
        alloc.total()
    );
    let e = c
        .query_changed_areas(
            &info.moref,
            &snap.snapshot,
            d0.key,
            d0.capacity,
            "52 bogus/1",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e.fault(), Some(FaultKind::InvalidArgument { .. })),
        "{e}"
    );
    c.remove_snapshot(&snap.snapshot, Duration::from_secs(30))
        .await
        .unwrap();
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_then_reset_change_ids() {
    let sim = Vcsim::start(&["-disks", "4M,4M"]).await.unwrap();
    let (c, info, _) = setup(&sim).await;
    c.enable_cbt(&info.moref, Duration::from_secs(30))
        .await
        .unwrap();
    for d in &info.disks {
        sim.control(&format!("/cbt?vm={}&key={}", info.moref.value, d.key), "")
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    backup_vm(&c, &repo, &opts(), progress()).await.unwrap();

    // Nothing changed: CBT reports nothing and the incremental reads no disk data.
    let inc = backup_vm(&c, &repo, &opts(), progress()).await.unwrap();
    assert!(inc.disks.iter().all(|d| matches!(
        d.read,
        DiskRead::Incremental {
            changed_bytes: 0,
            ..
        }
    )));
    assert!(inc.bytes_fetched < 64 * 1024, "{}", inc.bytes_fetched);

    // A CBT reset makes the parent's changeId unknown: full read, said in the notes.
    let d0 = &info.disks[0];
    sim.control(
        &format!("/cbt?vm={}&key={}&reset=1", info.moref.value, d0.key),
        "",
    )
    .await
    .unwrap();
    let after = backup_vm(&c, &repo, &opts(), progress()).await.unwrap();
    match &after.disks[0].read {
        DiskRead::Full { reason: Some(r) } => assert!(r.contains("rejected"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(after.disks[1].read, DiskRead::Incremental { .. }));
    assert!(
        after.notes.iter().any(|n| n.contains("full read")),
        "{:?}",
        after.notes
    );
    // Disk 0 is read again in full (its allocated 3 of 4 MiB); disk 1 not at all.
    assert!(after.bytes_fetched >= 3 << 20, "{}", after.bytes_fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_vm_and_pins() {
    let sim = Vcsim::start(&["-disks", "1M"]).await.unwrap();
    let mut o = options(&sim);
    o.credentials = ferry_vsphere::Credentials::new(&sim.user, "wrong");
    let e = Client::connect(&o).await.unwrap_err();
    assert_eq!(e.fault(), Some(&FaultKind::InvalidLogin), "{e}");
    assert!(!e.to_string().contains("wrong"), "password leaked: {e}");

    let mut o = options(&sim);
    o.trust = Trust::Thumbprint("00".repeat(32));
    let e = Client::connect(&o).await.unwrap_err();
    assert!(matches!(e, VsphereError::ThumbprintMismatch { .. }), "{e}");
    assert!(e.to_string().contains("pinned"), "{e}");

    // Trust on first use: learnt and stored, then a changed pin is refused.
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("vcenter.pin");
    let mut o = options(&sim);
    o.trust = Trust::TrustOnFirstUse(pin.clone());
    let c = Client::connect(&o).await.unwrap();
    let stored = std::fs::read_to_string(&pin).unwrap();
    assert_eq!(
        ferry_vsphere::tls::parse_thumbprint(&stored).unwrap(),
        ferry_vsphere::tls::parse_thumbprint(&sim.thumbprint).unwrap()
    );
    assert!(c.pinned_thumbprint().is_some());
    std::fs::write(&pin, "11".repeat(32)).unwrap();
    let e = Client::connect(&o).await.unwrap_err();
    assert!(matches!(e, VsphereError::ThumbprintMismatch { .. }), "{e}");

    let c = connect(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    let e = backup_vm(
        &c,
        &repo,
        &VmBackupOptions::new(VmSelector::Name("nope".into())),
        progress(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, VsphereError::NotFound(_)), "{e}");
    let e = c
        .find_vm(&VmSelector::MoRef("vm-99999".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, VsphereError::NotFound(_)), "{e}");
    assert!(repo.list_point_ids().await.unwrap().is_empty());

    // Other selectors find the same VM.
    let by_name = c.find_vm(&VmSelector::Name(VM.into())).await.unwrap();
    let info = c.vm_info(&by_name).await.unwrap();
    let by_uuid = c
        .find_vm(&VmSelector::InstanceUuid(info.instance_uuid.clone()))
        .await
        .unwrap();
    assert_eq!(by_uuid, by_name);
    let by_path = c
        .find_vm(&VmSelector::InventoryPath(format!(
            "{}/vm/{VM}",
            info.datacenter
        )))
        .await
        .unwrap();
    assert_eq!(by_path, by_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiring_mid_job_logs_in_again() {
    let sim = Vcsim::start(&["-disks", "16M,8M"]).await.unwrap();
    let (c, _info, datas) = setup(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    let logins = c.login_count();
    sim.control("/expire-sessions?after-bytes=6291456", "")
        .await
        .unwrap();
    // A keep-alive far shorter than the job: the session is pinged while disks are read.
    let mut o = opts();
    o.keep_alive = Some(Duration::from_millis(20));
    let r = backup_vm(&c, &repo, &o, progress()).await.unwrap();
    assert!(c.login_count() > logins, "no re-login happened");
    let pings: u64 = sim
        .control("/current-time-calls", "")
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pings > 0, "no keep-alive call during the job");
    for (i, data) in datas.iter().enumerate() {
        let out = dir.path().join(format!("r{i}.raw"));
        restore_disk_to_file(&repo, &r.manifest, i, &out, progress())
            .await
            .unwrap();
        assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(data));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_backup_then_next_run_cleans_up() {
    let sim = Vcsim::start(&["-disks", "16M,8M"]).await.unwrap();
    let (c, _info, _) = setup(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    sim.control("/outage?after-bytes=4194304", "")
        .await
        .unwrap();
    let e = backup_vm(&c, &repo, &opts(), progress()).await.unwrap_err();
    assert!(matches!(e, VsphereError::JobAndCleanup { .. }), "{e}");
    assert!(repo.list_point_ids().await.unwrap().is_empty());
    sim.control("/outage?end=1", "").await.unwrap();
    let left = vm_info(&c).await;
    assert!(left.snapshots.iter().any(|s| s.name.starts_with("ferry-")));
    let r = backup_vm(&c, &repo, &opts(), progress()).await.unwrap();
    assert_eq!(r.stale_snapshots_removed.len(), 1, "{:?}", r.notes);
    assert!(vm_info(&c).await.snapshots.is_empty());
    assert_eq!(repo.list_point_ids().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_snapshot_removal_withdraws_the_point() {
    let sim = Vcsim::start(&["-disks", "4M,4M"]).await.unwrap();
    let (c, _info, _) = setup(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    sim.control("/fail-remove-snapshot?n=1", "").await.unwrap();
    let e = backup_vm(&c, &repo, &opts(), progress()).await.unwrap_err();
    match &e {
        VsphereError::JobAndCleanup { removal, .. } => {
            assert_eq!(removal.fault(), Some(&FaultKind::InvalidState), "{e}")
        }
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("withdrawn"), "{e}");
    assert!(repo.list_point_ids().await.unwrap().is_empty());
    let r = backup_vm(&c, &repo, &opts(), progress()).await.unwrap();
    assert_eq!(r.stale_snapshots_removed.len(), 1);
    assert!(vm_info(&c).await.snapshots.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_killed_mid_backup() {
    let mut sim = Vcsim::start(&["-disks", "64M,1M"]).await.unwrap();
    let (c, _info, _) = setup(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    let c2 = c.clone();
    let repo2 = repo.clone();
    let job = tokio::spawn(async move { backup_vm(&c2, &repo2, &opts(), progress()).await });
    // Kill once the backup is reading data.
    for _ in 0..600 {
        let n: u64 = sim
            .control("/folder-bytes", "")
            .await
            .unwrap()
            .parse()
            .unwrap();
        if n > 8 << 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.kill().await.unwrap();
    let e = job.await.unwrap().unwrap_err();
    assert!(matches!(e, VsphereError::JobAndCleanup { .. }), "{e}");
    assert!(repo.list_point_ids().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_a_new_vm() {
    let sim = Vcsim::start(&["-disks", "6M,3M"]).await.unwrap();
    let (c, info, datas) = setup(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    let full = backup_vm(&c, &repo, &opts(), progress()).await.unwrap();
    assert_eq!(full.manifest.meta["vm.num_cpu"], info.num_cpu.to_string());

    let mut ro = VmRestoreOptions::new("restored-vm", "LocalDS_0");
    ro.task_timeout = Duration::from_secs(60);
    let rep = restore_vm(&c, &repo, &full.manifest, &ro, progress())
        .await
        .unwrap();
    assert_eq!(rep.disks.len(), 2);
    let vm = c
        .find_vm(&VmSelector::Name("restored-vm".into()))
        .await
        .unwrap();
    assert_eq!(vm, rep.vm);
    let new = c.vm_info(&vm).await.unwrap();
    assert_eq!(new.num_cpu, info.num_cpu);
    assert_eq!(new.memory_mb, info.memory_mb);
    assert_eq!(new.guest_id, info.guest_id);
    assert_eq!(new.disks.len(), 2, "{:?}", new.disks);
    // The new VM's disks, read back through the datastore, equal the source disks.
    let ds = Datastore::new(&c, &new.datacenter, 2);
    for (d, data) in new.disks.iter().zip(&datas) {
        assert!(d.file_name.contains("restored-vm/"), "{}", d.file_name);
        let p = DatastorePath::parse(&d.file_name).unwrap();
        let v = ferry_vmdk::Vmdk::open(std::sync::Arc::new(ds.resolver(&p)), &p.path)
            .await
            .unwrap();
        let mut buf = vec![0u8; data.len()];
        v.read_at(0, &mut buf).await.unwrap();
        assert_eq!(sha(&buf), sha(data));
    }

    // The same name again is refused before anything is uploaded.
    let e = restore_vm(&c, &repo, &full.manifest, &ro, progress())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    // An unknown datastore fails cleanly and leaves no VM behind.
    let mut bad = VmRestoreOptions::new("restored-2", "NoSuchDS");
    bad.task_timeout = Duration::from_secs(60);
    assert!(restore_vm(&c, &repo, &full.manifest, &bad, progress())
        .await
        .is_err());
    assert!(c
        .find_vm(&VmSelector::Name("restored-2".into()))
        .await
        .is_err());
    c.logout().await.unwrap();
}
