//! The agent as the booted appliance in QEMU (TCG): it enrolls with a ferry-mgmt on the
//! host, reached through slirp (the guest's 10.0.2.2 is the host's loopback), switches to
//! mTLS, takes a plan over the hostfwd'd 9876, and reports its idle RSS (target: under
//! 40 MiB). `#[ignore]`d: tests/slow/mgmt-qemu.sh builds the image and runs it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::time::Duration;

use common::{wait_for, Mgmt};
use ferry_boot_tests::{BootOpts, Vm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boot test: run tests/slow/mgmt-qemu.sh"]
async fn appliance_enrolls_through_slirp_and_serves_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let token = mgmt.token(900).await;
    let opts = BootOpts {
        cmdline: format!("ferry.mgmt=10.0.2.2:{} ferry.token={token}", mgmt.port),
        ..BootOpts::default()
    };
    let vm = tokio::task::spawn_blocking(move || {
        let mut vm = Vm::boot(&opts).unwrap();
        let t = vm
            .wait_console("agent ready", Duration::from_secs(180))
            .unwrap();
        println!("boot to \"agent ready\": {t:.1} s");
        vm
    })
    .await
    .unwrap();
    let agent = wait_for(120, "the appliance registered", || async {
        mgmt.admin.agents().await.unwrap().into_iter().next()
    })
    .await;
    println!(
        "registered agent {} ({}) reported at {}, {:.1} s after boot",
        agent.id,
        agent.hostname,
        agent.address,
        vm.started.elapsed().as_secs_f64()
    );
    let console = vm.console();
    let secret = token.split('.').nth(1).unwrap();
    assert!(
        !console.contains(secret),
        "the token secret reached the console"
    );

    // mTLS through the hostfwd'd port: the admin certificate is accepted, none is not.
    let http = mgmt.agent_http(&agent.id);
    let url = format!("https://127.0.0.1:{}", vm.port);
    let st: serde_json::Value = wait_for(60, "mTLS status", || async {
        http.get(format!("{url}/v1/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    })
    .await;
    assert_eq!(st["registration"]["registered"], true, "{st:#}");
    assert_eq!(
        st["registration"]["mgmt_ca_sha256"],
        mgmt.ca_sha256.as_str()
    );
    let anon = ferry_tls::http_client(
        ferry_tls::trust::client_config(ferry_tls::trust::ServerTrust::Any, None).unwrap(),
    )
    .unwrap();
    assert!(anon.get(format!("{url}/v1/status")).send().await.is_err());

    // A plan pushed over mTLS is kept.
    let plan = ferry_api::Plan::from_toml(
        "name = \"n\"\nschedule = \"0 2 * * *\"\n[vcenter]\nurl = \"https://vc\"\ncredential = \"vc\"\n[vms]\nall = true\n[destination]\nurl = \"/srv\"\n",
    )
    .unwrap();
    let mut creds = std::collections::BTreeMap::new();
    creds.insert("vc".to_string(), ferry_api::v1::Credential::default());
    let r = http
        .put(format!("{url}/v1/plans/n"))
        .json(&ferry_api::v1::PlanPush {
            plan,
            credentials: creds,
        })
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // Idle RSS after things settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let st: serde_json::Value = http
        .get(format!("{url}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rss = st["agent"]["rss_kib"].as_u64().unwrap();
    println!(
        "agent idle RSS in the appliance: {rss} KiB ({:.1} MiB), peak {} KiB",
        rss as f64 / 1024.0,
        st["agent"]["peak_rss_kib"]
    );
    assert!(rss < 40 * 1024, "agent idle RSS {rss} KiB over 40 MiB");
    let _ = tokio::task::spawn_blocking(move || {
        let _ = vm.qmp("quit");
        vm
    })
    .await;
    mgmt.stop().await;
}
