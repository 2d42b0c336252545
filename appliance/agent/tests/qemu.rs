//! The agent as the booted appliance in QEMU (TCG): it enrolls with a ferry-mgmt on the
//! host, reached through a slirp `guestfwd` rule (the guest's 10.0.2.100:9876 runs
//! `socat` to the server's loopback port for each connection), switches to mTLS, takes a
//! plan over the hostfwd'd 9876, gets the revocation list and refuses a revoked admin, and
//! reports its idle RSS (target: under 40 MiB). `#[ignore]`d: tests/slow/mgmt-qemu.sh
//! builds the image and runs it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::time::Duration;

use common::{wait_for, Mgmt};
use ferry_boot_tests::{BootOpts, Vm};

/// Where the guest finds the management server (slirp guestfwd).
const GUEST_MGMT: &str = "10.0.2.100:9876";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boot test: run tests/slow/mgmt-qemu.sh"]
async fn appliance_enrolls_through_slirp_and_serves_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let token = mgmt.token(900).await;
    let opts = BootOpts {
        cmdline: format!("ferry.mgmt={GUEST_MGMT} ferry.token={token}"),
        guestfwd: vec![format!(
            "tcp:{GUEST_MGMT}-cmd:socat - TCP:127.0.0.1:{}",
            mgmt.port
        )],
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
        "name = \"n\"\nschedule = \"0 2 * * *\"\n[vcenter]\nurl = \"https://vc\"\ncredential = \"vc\"\ntrust_on_first_use = true\n[vms]\nall = true\n[destination]\nurl = \"/srv\"\n",
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

    // Revocation in the appliance: a second admin works until the CA's signed list names
    // it. The server cannot dial the guest's own address from here, so the list goes the
    // way the server pushes it (its certificate, PUT /v1/revocations) through hostfwd.
    let (bob, bob_info) = mgmt.admin.add_admin("bob").await.unwrap();
    let as_admin = |cert: &str, key: &str, ca: &str| {
        ferry_tls::http_client(
            ferry_tls::trust::client_config(
                ferry_tls::trust::ServerTrust::Ca {
                    ca_pem: ca.to_string(),
                    name: ferry_api::agent_server_name(&agent.id),
                },
                Some(ferry_tls::trust::Identity::from_pem(cert, key).unwrap()),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let bob_http = as_admin(&bob.cert_pem, &bob.key_pem, &bob.ca_pem);
    let code = |c: reqwest::Client| {
        let u = format!("{url}/v1/plans");
        async move { c.get(u).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(code(bob_http.clone()).await, 200);
    mgmt.admin.revoke_admin("bob").await.unwrap();
    let st = &mgmt.state;
    let read = |f: &str| std::fs::read_to_string(st.join(f)).unwrap();
    let ca = ferry_tls::pki::Ca::from_pem(&read("ca.pem"), &read("ca.key")).unwrap();
    let list = ca
        .sign_revocations(&ferry_tls::revocation::RevocationList {
            version: 1,
            issued_unix: ferry_api::now_unix(),
            entries: vec![ferry_tls::revocation::Revoked {
                sha256: bob_info.cert_sha256.clone(),
                role: "admin".into(),
                name: "bob".into(),
                revoked_unix: ferry_api::now_unix(),
            }],
        })
        .unwrap();
    let server = as_admin(&read("server.pem"), &read("server.key"), ca.cert_pem());
    let r = server
        .put(format!("{url}/v1/revocations"))
        .json(&list)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_eq!(code(bob_http).await, 403, "revoked admin refused");
    assert_eq!(code(http.clone()).await, 200, "the other admin kept");

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
