//! A plan must say how vCenter's certificate is trusted: against ferry-mgmt on loopback, the
//! real ferry-agent and the govmomi simulator, a plan with no thumbprint, CA or explicit
//! `trust_on_first_use` is refused by the management server and by the agent itself (PUT
//! /v1/plans), saying why, and nothing is stored; with `trust_on_first_use = true` it is
//! deployed and runs as before, the agent keeping the simulator's thumbprint.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{free_port, wait_for, Agent, Mgmt};
use ferry_api::v1::{Credential, PlanPush, ProgressEvent};
use ferry_testkit::vcsim::Vcsim;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_without_vcenter_trust_is_refused() {
    let sim = Vcsim::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let mgmt_addr = format!("127.0.0.1:{}", mgmt.port);
    let token = mgmt.token(600).await;
    let port = free_port();
    let agent = Agent::start(
        &dir.path().join("agent"),
        port,
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", token.as_str()),
        ],
    )
    .await;
    let id = wait_for(30, "registered", || async {
        mgmt.admin
            .agents()
            .await
            .unwrap()
            .first()
            .map(|a| a.id.clone())
    })
    .await;
    let http = mgmt.agent_http(&id);

    let plan = ferry_api::Plan::from_toml(&format!(
        r#"
name = "p"
schedule = "0 0 1 1 *"
[vcenter]
url = "{}"
credential = "vc"
trust_on_first_use = true
[vms]
names = ["no-such-vm"]
[destination]
url = "{}"
"#,
        sim.url,
        dir.path().join("repo").display()
    ))
    .unwrap();
    let mut credentials = std::collections::BTreeMap::new();
    credentials.insert(
        "vc".to_string(),
        Credential {
            user: Some(sim.user.clone()),
            password: Some(sim.password.clone()),
            ..Default::default()
        },
    );
    let good = PlanPush { plan, credentials };
    // The same plan as an older one would be: no thumbprint, no CA, no explicit first use.
    let mut bad = good.clone();
    bad.plan.vcenter.trust_on_first_use = false;
    let says_why = |e: &str| e.contains("trust_on_first_use") && e.contains("password");

    // The management server refuses to deploy it.
    let e = mgmt
        .admin
        .apply_plan(&id, &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(says_why(&e), "{e}");

    // The agent refuses it too when an admin puts it there directly.
    let r = http
        .put(format!("https://127.0.0.1:{port}/v1/plans/p"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let e = r.text().await.unwrap();
    assert!(says_why(&e), "{e}");
    let plans: serde_json::Value = http
        .get(format!("https://127.0.0.1:{port}/v1/plans"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plans.as_array().map(Vec::len), Some(0), "{plans}");

    // Explicit trust on first use: deployed, and the job logs in and lists the inventory.
    mgmt.admin.apply_plan(&id, &good).await.unwrap();
    let last = mgmt.admin.run_now(&id, "p", |_| {}).await.unwrap();
    let Some(ProgressEvent::Done(rec)) = last else {
        panic!("no done event: {last:?}")
    };
    assert!(rec.error.is_none(), "{rec:?}");
    let vm = &rec.vms[0];
    assert!(
        vm.error.as_deref().unwrap().contains("no VM named"),
        "{rec:?}"
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("agent/vcenter"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let norm = |t: &str| t.trim().replace(':', "").to_lowercase();
    assert_eq!(kept.len(), 1);
    assert_eq!(norm(&kept[0]), norm(&sim.thumbprint));
    drop(agent);
    mgmt.stop().await;
}
