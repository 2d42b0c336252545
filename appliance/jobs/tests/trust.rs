//! vCenter trust of a plan job against the vSphere simulator: a plan with no thumbprint, CA
//! or explicit trust on first use (one stored before they were required) fails before
//! anything reaches vCenter; `trust_on_first_use = true` keeps the first certificate seen
//! and backs up as before, and a later certificate that differs is refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{disk_bytes, no_events, restored_sha, seed, sha, Sim};

const VM: &str = "DC0_H0_VM0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_trust_only_when_the_plan_says_so() {
    let sim = Sim::start(&["-disks", "4M"]).await;
    let data = disk_bytes(4 << 20, 7);
    seed(&sim.connect().await, VM, &data).await;
    let dir = tempfile::tempdir().unwrap();
    let trust_dir = dir.path().join("vcenter");
    std::fs::create_dir_all(&trust_dir).unwrap();
    let pinned = sim.plan(
        &format!("names = [\"{VM}\"]"),
        &format!("url = \"{}\"", dir.path().join("repo").display()),
        "",
    );

    // As a plan stored before trust was required: no rule at all. Nothing is sent.
    let mut silent = pinned.clone();
    silent.vcenter.thumbprint = None;
    let out = ferry_jobs::run(&silent, &sim.creds(), &trust_dir, no_events()).await;
    let e = out.error.unwrap();
    assert!(
        e.contains("plan refused") && e.contains("trust_on_first_use"),
        "{e}"
    );
    assert!(out.vms.is_empty());
    assert_eq!(std::fs::read_dir(&trust_dir).unwrap().count(), 0);
    assert!(!dir.path().join("repo").exists(), "storage was not touched");

    // Explicit trust on first use: the simulator's certificate is kept and the VM backed up.
    let mut tofu = silent.clone();
    tofu.vcenter.trust_on_first_use = true;
    tofu.validate().unwrap();
    let out = ferry_jobs::run(&tofu, &sim.creds(), &trust_dir, no_events()).await;
    assert!(out.error.is_none(), "{out:?}");
    assert!(out.vms[0].ok, "{out:?}");
    let point = out.vms[0].point.clone().unwrap();
    assert_eq!(
        restored_sha(&tofu, None, &point, dir.path()).await,
        sha(&data)
    );
    let kept: Vec<_> = std::fs::read_dir(&trust_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let stored = std::fs::read_to_string(&kept[0]).unwrap();
    assert_eq!(
        ferry_vsphere::tls::parse_thumbprint(&stored).unwrap(),
        ferry_vsphere::tls::parse_thumbprint(&sim.thumbprint).unwrap()
    );

    // Another certificate at the same address later (as after a takeover): refused.
    std::fs::write(&kept[0], "ab".repeat(32)).unwrap();
    let out = ferry_jobs::run(&tofu, &sim.creds(), &trust_dir, no_events()).await;
    let e = out.error.unwrap();
    assert!(e.contains("vCenter"), "{e}");
    assert!(out.vms.is_empty());
}
