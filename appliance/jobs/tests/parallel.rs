//! `parallel_vms`: every VM of the simulator is backed up, and the runs overlap. The
//! simulator holds each `CreateSnapshot_Task` until as many have arrived as the plan runs
//! in parallel, so the job only gets past its snapshots if that many VMs are in flight at
//! once; the simulator reports the most calls it saw in flight together. No clocks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::{Arc, Mutex};

use common::{disk_bytes, restored_sha, seed, sha, Sim};
use ferry_api::v1::ProgressEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_vms_all_backed_up_and_overlapping() {
    let sim = Sim::start(&["-all-vms", "-disks", "4M"]).await;
    let vc = sim.connect().await;
    let vms: Vec<String> = vc
        .list("VirtualMachine", &["name"])
        .await
        .unwrap()
        .iter()
        .map(|o| o.text("name").unwrap().to_string())
        .collect();
    assert!(vms.len() >= 3, "{vms:?}");
    let mut sums = std::collections::BTreeMap::new();
    for (i, name) in vms.iter().enumerate() {
        let data = disk_bytes(4 << 20, 100 + i as u64);
        seed(&vc, name, &data).await;
        sums.insert(name.clone(), sha(&data));
    }

    let dir = tempfile::tempdir().unwrap();
    let n = vms.len();
    let plan = sim.plan(
        "all = true",
        &format!("url = \"{}\"", dir.path().join("repo").display()),
        &format!("[options]\nparallel_vms = {n}\n"),
    );
    sim.control(&format!("/hold-snapshots?n={n}"), "")
        .await
        .unwrap();
    let done = Arc::new(Mutex::new(Vec::new()));
    let events: ferry_jobs::Events = {
        let done = done.clone();
        Arc::new(move |e| {
            if let ProgressEvent::VmDone(r) = e {
                done.lock().unwrap().push(r.vm);
            }
        })
    };
    let out = ferry_jobs::run(&plan, &sim.creds(), dir.path(), events).await;
    assert!(out.error.is_none(), "{out:?}");
    assert_eq!(out.vms.len(), n);
    for r in &out.vms {
        assert!(r.ok, "{r:?}");
        let got = restored_sha(&plan, None, r.point.as_deref().unwrap(), dir.path()).await;
        assert_eq!(got, sums[&r.vm], "{}", r.vm);
    }
    assert_eq!(done.lock().unwrap().len(), n);

    let s: serde_json::Value =
        serde_json::from_str(&sim.control("/snapshots", "").await.unwrap()).unwrap();
    assert_eq!(
        s["timed_out"], false,
        "the barrier was released by time: {s}"
    );
    assert_eq!(s["arrived"], n, "{s}");
    assert_eq!(
        s["max_in_flight"], n,
        "all VMs were snapshotting at once: {s}"
    );

    // With parallel_vms = 1 the VMs go one by one: never two snapshots in flight.
    let mut one = plan.clone();
    one.options.parallel_vms = 1;
    sim.control("/hold-snapshots?n=0", "").await.unwrap();
    let out = ferry_jobs::run(&one, &sim.creds(), dir.path(), common::no_events()).await;
    assert!(
        out.error.is_none() && out.vms.iter().all(|r| r.ok),
        "{out:?}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&sim.control("/snapshots", "").await.unwrap()).unwrap();
    assert_eq!(s["max_in_flight"], 1, "{s}");
}
