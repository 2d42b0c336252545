//! Licensing against the real ferry-mgmt and ferry-agent processes:
//! - from the license service: a license about to expire, and one that expired while the
//!   agent was off, are renewed by the agent from the service (at its next hello: an
//!   address change, or its start);
//! - a license key given in the agent's config with no license service: valid (jobs run),
//!   expired, or with a signature that does not verify (jobs refused, saying why);
//! - a valid license of the service issued to another agent, put on this agent, is refused
//!   (422) and leaves its license as it was; one issued to it installs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{free_port, wait_for, Agent, Mgmt};
use ferry_api::v1::{Credential, JobState, License, LicenseTerms, PlanPush, ProgressEvent};
use ferry_tls::license::Issuer;

async fn status(http: &reqwest::Client, port: u16) -> Option<serde_json::Value> {
    http.get(format!("https://127.0.0.1:{port}/v1/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn terms(id: &str, agent: Option<&str>, issued: i64, expires: i64) -> LicenseTerms {
    LicenseTerms {
        id: id.into(),
        licensee: "Test".into(),
        hosts: 2,
        sockets: 4,
        issued_unix: issued,
        expires_unix: expires,
        agent_id: agent.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_its_license_from_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, true).await;
    let mgmt_addr = format!("127.0.0.1:{}", mgmt.port);
    let token = mgmt.token(600).await;
    let addr_file = dir.path().join("addresses");
    std::fs::write(&addr_file, "127.0.0.1\n").unwrap();
    let port = free_port();
    let agent = Agent::start(
        &dir.path().join("agent"),
        port,
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", token.as_str()),
            ("FERRY_DEBUG", "1"),
            ("FERRY_ADDRESSES_FILE", addr_file.to_str().unwrap()),
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
    let first = wait_for(10, "licensed", || async {
        let s = status(&http, port).await?;
        (s["license"]["valid"] == true).then_some(s)
    })
    .await;
    let first_id = first["license"]["terms"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first["license"]["terms"]["agent_id"], id.as_str());

    // A license of the service's key that is nearly over (as after weeks of uptime).
    let service =
        Issuer::from_hex(&std::fs::read_to_string(dir.path().join("mgmt/license.key")).unwrap())
            .unwrap();
    let now = ferry_api::now_unix();
    let old = service
        .sign(terms("old-1", Some(&id), now - 29 * 86400, now + 600))
        .unwrap();
    let r = http
        .put(format!("https://127.0.0.1:{port}/v1/license"))
        .json(&old)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let s = status(&http, port).await.unwrap();
    assert_eq!(s["license"]["terms"]["id"], "old-1");

    // Its next hello (here: an address change) renews it from the service.
    std::fs::write(&addr_file, "127.0.0.2\n").unwrap();
    let renewed = wait_for(20, "renewed license", || async {
        let s = status(&http, port).await?;
        (s["license"]["terms"]["id"] != "old-1").then_some(s)
    })
    .await;
    let l = &renewed["license"];
    assert_eq!(l["valid"], true, "{renewed}");
    assert_ne!(l["terms"]["id"], first_id.as_str());
    assert_eq!(l["terms"]["agent_id"], id.as_str());
    assert!(l["terms"]["expires_unix"].as_i64().unwrap() > now + 29 * 86400);

    // Off past its expiry: the expired license is renewed when the agent starts again.
    let agent = agent.kill().await;
    let expired = service
        .sign(terms("old-2", Some(&id), now - 31 * 86400, now - 86400))
        .unwrap();
    std::fs::write(
        dir.path().join("agent/license/license.json"),
        serde_json::to_vec(&expired).unwrap(),
    )
    .unwrap();
    let agent = agent.restart().await;
    let s = wait_for(20, "renewed at start", || async {
        let s = status(&http, port).await?;
        (s["license"]["valid"] == true && s["license"]["terms"]["id"] != "old-2").then_some(s)
    })
    .await;
    assert!(s["license"]["terms"]["expires_unix"].as_i64().unwrap() > now + 29 * 86400);
    let logs = agent.stderr.lock().unwrap().clone();
    assert!(!logs.contains(&service.secret_hex()));
    drop(agent);
    mgmt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_issued_to_another_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, true).await;
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
    let before = wait_for(10, "licensed", || async {
        let s = status(&http, port).await?;
        (s["license"]["valid"] == true).then_some(s)
    })
    .await;
    let service =
        Issuer::from_hex(&std::fs::read_to_string(dir.path().join("mgmt/license.key")).unwrap())
            .unwrap();
    let now = ferry_api::now_unix();
    let put = |l: License| {
        let http = http.clone();
        async move {
            http.put(format!("https://127.0.0.1:{port}/v1/license"))
                .json(&l)
                .send()
                .await
                .unwrap()
        }
    };

    // Signed by the trusted service key, valid, but issued to another appliance.
    let foreign = service
        .sign(terms(
            "foreign",
            Some("agent-elsewhere"),
            now - 60,
            now + 86400,
        ))
        .unwrap();
    let r = put(foreign).await;
    assert_eq!(r.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let why = r.text().await.unwrap();
    assert!(why.contains("issued to agent agent-elsewhere"), "{why}");
    let after = status(&http, port).await.unwrap();
    assert_eq!(
        after["license"], before["license"],
        "the license is unchanged"
    );

    // One issued to this agent installs.
    let own = service
        .sign(terms("own", Some(&id), now - 60, now + 86400))
        .unwrap();
    let r = put(own).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let s = status(&http, port).await.unwrap();
    assert_eq!(s["license"]["terms"]["id"], "own");
    assert_eq!(s["license"]["valid"], true, "{s}");
    drop(agent);
    mgmt.stop().await;
}

fn plan() -> PlanPush {
    let plan = ferry_api::Plan::from_toml(
        r#"
name = "p"
schedule = "0 0 1 1 *"
[vcenter]
url = "https://127.0.0.1:1"
credential = "vc"
trust_on_first_use = true
[vms]
all = true
[destination]
url = "/nonexistent-ferry-test"
create = false
"#,
    )
    .unwrap();
    let mut credentials = std::collections::BTreeMap::new();
    credentials.insert(
        "vc".to_string(),
        Credential {
            user: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        },
    );
    PlanPush { plan, credentials }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_key_in_the_config_without_a_service() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let mgmt_addr = format!("127.0.0.1:{}", mgmt.port);
    let issuer = Issuer::generate();
    let now = ferry_api::now_unix();
    let valid = issuer
        .sign(terms("cfg-valid", None, now - 60, now + 86400))
        .unwrap();
    let expired = issuer
        .sign(terms("cfg-expired", None, now - 2 * 86400, now - 86400))
        .unwrap();
    // Terms changed after signing: the signature no longer covers them.
    let mut forged = valid.clone();
    forged.terms.hosts = 200;
    // Signed by another key that claims to be the trusted one.
    let mut stranger = Issuer::generate()
        .sign(terms("cfg-stranger", None, now - 60, now + 86400))
        .unwrap();
    stranger.issuer_key = issuer.public_hex();

    let cases: [(&str, &License, Option<&str>); 4] = [
        ("valid", &valid, None),
        ("expired", &expired, Some("expired")),
        ("forged", &forged, Some("does not verify")),
        ("stranger", &stranger, Some("does not verify")),
    ];
    for (name, lic, why) in cases {
        let token = mgmt.token(600).await;
        let port = free_port();
        let lic_json = serde_json::to_string(lic).unwrap();
        let agent = Agent::start(
            &dir.path().join(name),
            port,
            &[
                ("FERRY_MGMT", mgmt_addr.as_str()),
                ("FERRY_TOKEN", token.as_str()),
                ("FERRY_LICENSE_ISSUER", issuer.public_hex().as_str()),
                ("FERRY_LICENSE", lic_json.as_str()),
            ],
        )
        .await;
        let id = wait_for(30, "registered", || async {
            let s = status(
                &ferry_tls::http_client(
                    ferry_tls::trust::client_config(ferry_tls::trust::ServerTrust::Any, None)
                        .unwrap(),
                )
                .unwrap(),
                port,
            )
            .await;
            // Registered agents stop answering anonymous clients.
            if s.is_some() {
                return None;
            }
            mgmt.admin
                .agents()
                .await
                .unwrap()
                .into_iter()
                .find(|a| a.address.ends_with(&format!(":{port}")))
                .map(|a| a.id)
        })
        .await;
        let http = mgmt.agent_http(&id);
        let s = wait_for(10, "status", || status(&http, port)).await;
        let l = &s["license"];
        assert_eq!(l["required"], true, "{name}: {s}");
        assert_eq!(l["terms"]["id"], lic.terms.id.as_str(), "{name}: {s}");
        mgmt.admin.apply_plan(&id, &plan()).await.unwrap();
        let last = mgmt.admin.run_now(&id, "p", |_| {}).await.unwrap();
        let Some(ProgressEvent::Done(rec)) = last else {
            panic!("{name}: no done event: {last:?}")
        };
        match why {
            None => {
                assert_eq!(l["valid"], true, "{name}: {s}");
                // Licensed: the job runs (and fails on the storage that is not there).
                assert_ne!(rec.state, JobState::Refused, "{name}: {rec:?}");
                assert!(
                    !rec.error.as_deref().unwrap_or("").contains("license"),
                    "{name}: {rec:?}"
                );
            }
            Some(why) => {
                assert_eq!(l["valid"], false, "{name}: {s}");
                assert!(l["reason"].as_str().unwrap().contains(why), "{name}: {s}");
                assert_eq!(rec.state, JobState::Refused, "{name}: {rec:?}");
                let e = rec.error.as_deref().unwrap();
                assert!(
                    e.contains("no valid license") && e.contains(why),
                    "{name}: {e}"
                );
            }
        }
        drop(agent);
    }
    mgmt.stop().await;
}
