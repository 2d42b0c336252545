//! VM selection by vSphere tag, against the govmomi simulator's vAPI REST API: a plan
//! with `tags = ["category/tag"]` backs up exactly the tagged VM (not the host that has
//! the tag too), a bare name used in two categories and an unknown tag fail the job naming
//! the tag, an older server with only `/rest` is served too, and a server without the
//! vAPI (ESXi) gets a clear error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{disk_bytes, no_events, restored_sha, seed, sha, Sim};
use ferry_vsphere::{MoRef, VapiDialect};

const TAGGED: &str = "DC0_C0_RP0_VM1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_selects_exactly_the_tagged_vm() {
    let sim = Sim::start(&["-all-vms", "-disks", "4M"]).await;
    let vc = sim.connect().await;
    let data = disk_bytes(4 << 20, 11);
    let vm = seed(&vc, TAGGED, &data).await;
    let host = vc.list("HostSystem", &["name"]).await.unwrap()[0]
        .obj
        .value
        .clone();

    let api = sim.vapi().await;
    let tier = api.category("tier").await;
    let colour = api.category("colour").await;
    let gold = api.tag(&tier, "gold").await;
    api.tag(&colour, "gold").await; // the same name in another category, on nothing
    api.tag(&tier, "unused").await;
    api.attach(&gold, "VirtualMachine", &vm.value).await;
    api.attach(&gold, "HostSystem", &host).await;

    // The client speaks /api where the server has it, and keeps only VMs.
    assert_eq!(vc.vapi_dialect().await.unwrap(), VapiDialect::Api);
    let found = vc
        .vms_with_tags(&["tier/gold".into(), "unused".into()])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![
            (
                "tier/gold".to_string(),
                vec![MoRef::new("VirtualMachine", &vm.value)]
            ),
            ("unused".to_string(), vec![]),
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let dest = format!("url = \"{}\"", repo.display());
    let plan = sim.plan(r#"tags = ["tier/gold"]"#, &dest, "");
    let out = ferry_jobs::run(&plan, &sim.creds(), dir.path(), no_events()).await;
    assert!(out.error.is_none(), "{out:?}");
    assert_eq!(out.vms.len(), 1, "{out:?}");
    let r = &out.vms[0];
    assert_eq!(r.vm, TAGGED);
    assert!(r.ok, "{r:?}");
    assert_eq!(out.verified, Some(true));
    let point = r.point.as_deref().unwrap();
    assert_eq!(
        restored_sha(&plan, None, point, dir.path()).await,
        sha(&data)
    );

    // A bare name in two categories, and a tag nobody made: the job says which.
    let plan = sim.plan(r#"tags = ["gold"]"#, &dest, "");
    let out = ferry_jobs::run(&plan, &sim.creds(), dir.path(), no_events()).await;
    let e = out.error.unwrap();
    assert!(
        e.contains("\"gold\"") && e.contains("several categories"),
        "{e}"
    );
    assert!(e.contains("tier") && e.contains("colour"), "{e}");
    assert!(out.vms.is_empty());
    let plan = sim.plan(
        r#"names = ["DC0_H0_VM0"]
tags = ["tier/platinum"]"#,
        &dest,
        "",
    );
    let out = ferry_jobs::run(&plan, &sim.creds(), dir.path(), no_events()).await;
    let e = out.error.unwrap();
    assert!(e.contains("vSphere tag \"tier/platinum\" not found"), "{e}");
    assert!(out.vms.is_empty(), "nothing is backed up on a wrong tag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_only_rest_is_served() {
    let sim = Sim::start(&["-vapi", "rest"]).await;
    let vc = sim.connect().await;
    let api = sim.vapi().await;
    let c = api.category("site").await;
    let t = api.tag(&c, "berlin").await;
    let vm = vc
        .find_vm(&ferry_vsphere::VmSelector::Name("DC0_H0_VM0".into()))
        .await
        .unwrap();
    api.attach(&t, "VirtualMachine", &vm.value).await;
    assert_eq!(vc.vapi_dialect().await.unwrap(), VapiDialect::Rest);
    let found = vc.vms_with_tags(&["berlin".into()]).await.unwrap();
    assert_eq!(found[0].1, vec![vm]);
    let e = vc.vms_with_tags(&["paris".into()]).await.unwrap_err();
    assert_eq!(e.to_string(), "vSphere tag \"paris\" not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_vapi_says_so() {
    let sim = Sim::start(&["-vapi", "none"]).await;
    let vc = sim.connect().await;
    let e = vc.vms_with_tags(&["gold".into()]).await.unwrap_err();
    assert!(
        e.to_string().contains(
            "has no vSphere Automation REST API (/api and /rest answer 404): tags need vCenter"
        ),
        "{e}"
    );
}
