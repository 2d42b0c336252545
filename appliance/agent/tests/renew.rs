//! Certificate renewal (issue 16, finding 6): a real `ferry-agent`, enrolled by token with
//! a management server, is told by `FERRY_NOW_OFFSET_SECS` that 600 days have passed (past
//! two thirds of the 825-day lifetime). It renews over mTLS: the server records the new
//! certificate as the agent's current one, the agent stores it and serves it on the next
//! TLS accept. Revoking the agent then revokes the old and the new certificate, and a
//! revoked agent cannot renew. An agent whose certificate is young does not renew.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{free_port, wait_for, Agent, Mgmt};
use ferry_tls::trust::{client_config, Identity, ServerTrust};

const DAY: i64 = 86400;

fn db(m: &Mgmt) -> ferry_mgmt::db::Db {
    ferry_mgmt::db::Db::open(&m.state.join("mgmt.db"), &m.state.join("secrets.key")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_certificate_at_two_thirds_of_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let mgmt_addr = format!("127.0.0.1:{}", mgmt.port);
    let offset = (600 * DAY).to_string();

    // A young agent (real clock) and an old one (600 days on).
    let (young_tok, old_tok) = (mgmt.token(600).await, mgmt.token(600).await);
    let young = Agent::start(
        &dir.path().join("young"),
        free_port(),
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", young_tok.as_str()),
        ],
    )
    .await;
    let old_port = free_port();
    let old = Agent::start(
        &dir.path().join("old"),
        old_port,
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", old_tok.as_str()),
            ("FERRY_NOW_OFFSET_SECS", offset.as_str()),
        ],
    )
    .await;
    let agents = wait_for(30, "both agents registered", || async {
        let v = mgmt.admin.agents().await.unwrap();
        (v.len() == 2).then_some(v)
    })
    .await;
    let id_of = |port: u16| {
        agents
            .iter()
            .find(|a| a.address.ends_with(&format!(":{port}")))
            .unwrap()
            .id
            .clone()
    };
    let old_id = id_of(old_port);
    let young_id = id_of(young.port);

    // The old agent renews: two certificates on record, the new one current.
    let shas = wait_for(30, "renewal recorded", || async {
        let s = db(&mgmt).agent_cert_shas(&old_id).unwrap();
        (s.len() == 2).then_some(s)
    })
    .await;
    let current = mgmt
        .admin
        .agents()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.id == old_id)
        .unwrap()
        .cert_sha256;
    assert_eq!(shas[0], current);
    let cert_file = old.state.join("tls").join("cert.pem");
    let on_disk = wait_for(10, "renewed certificate stored", || async {
        let pem = std::fs::read_to_string(&cert_file).ok()?;
        (ferry_tls::pem_sha256(&pem).ok()? == current).then_some(pem)
    })
    .await;
    let der = ferry_tls::certs_from_pem(&on_disk).unwrap();
    let (from, until) = ferry_tls::validity(der[0].as_ref()).unwrap();
    assert!(from > ferry_api::now_unix() - 2 * 3600, "issued now");
    assert!(until - from >= 824 * DAY, "a full lifetime");

    // The agent serves it: a client that accepts only the new certificate gets an answer.
    let pinned = ferry_tls::http_client(
        client_config(
            ServerTrust::CertPin(current.clone()),
            Some(Identity::from_pem(&mgmt.bundle.cert_pem, &mgmt.bundle.key_pem).unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let status: serde_json::Value = wait_for(10, "new certificate served", || async {
        let r = pinned
            .get(format!("https://127.0.0.1:{old_port}/v1/status"))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(status["registration"]["cert_sha256"], current.as_str());

    // The young agent did not renew.
    assert_eq!(db(&mgmt).agent_cert_shas(&young_id).unwrap().len(), 1);

    // Revoking the agent revokes every certificate it was issued.
    mgmt.admin.revoke(&old_id).await.unwrap();
    let revoked: Vec<String> = db(&mgmt)
        .revoked()
        .unwrap()
        .into_iter()
        .map(|r| r.sha256)
        .collect();
    for s in &shas {
        assert!(revoked.contains(s), "{s} not revoked: {revoked:?}");
    }
    // And a revoked agent gets no new certificate.
    let key = std::fs::read_to_string(old.state.join("tls").join("key.pem")).unwrap();
    let c = ferry_tls::http_client(
        client_config(
            ServerTrust::Ca {
                ca_pem: mgmt.bundle.ca_pem.clone(),
                name: ferry_api::MGMT_SERVER_NAME.into(),
            },
            Some(Identity::from_pem(&on_disk, &key).unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let r = c
        .post(format!("https://{mgmt_addr}/v1/agent/renew"))
        .json(&serde_json::json!({
            "csr_pem": ferry_tls::pki::csr_for_key_pem(&key, "x").unwrap()
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    assert_eq!(db(&mgmt).agent_cert_shas(&old_id).unwrap().len(), 2);
}
