//! Registration both ways against a real ferry-mgmt on loopback and real ferry-agent
//! processes: token enrollment, refusals (spent, expired, unknown token), mTLS on the agent
//! (no certificate, another CA, an agent certificate), pairing with the console code,
//! address change notified, revocation, an unlicensed job, malformed and oversized bodies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::time::Duration;

use common::{free_port, wait_for, Agent, Mgmt};
use ferry_api::v1::{AgentState, EnrollRequest, JobState, PlanPush, ProgressEvent};
use ferry_tls::trust::{client_config, Identity, ServerTrust};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_both_ways_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let mport = mgmt.port.to_string();
    let mgmt_addr = format!("127.0.0.1:{mport}");

    // --- Agent-initiated: a token registers agent A.
    let token = mgmt.token(600).await;
    let addr_file = dir.path().join("a-addresses");
    std::fs::write(&addr_file, "127.0.0.1\n").unwrap();
    let a_port = free_port();
    let a = Agent::start(
        &dir.path().join("a"),
        a_port,
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", token.as_str()),
            ("FERRY_DEBUG", "1"),
            ("FERRY_ADDRESSES_FILE", addr_file.to_str().unwrap()),
        ],
    )
    .await;
    let agents = wait_for(30, "agent A registered", || async {
        let v = mgmt.admin.agents().await.unwrap();
        (!v.is_empty()).then_some(v)
    })
    .await;
    let a_id = agents[0].id.clone();
    assert_eq!(agents[0].address, format!("127.0.0.1:{a_port}"));
    // The token secret never reaches the agent's log.
    let secret = token.split('.').nth(1).unwrap().to_string();

    // The agent now asks for client certificates of the management CA.
    let http = mgmt.agent_http(&a_id);
    let status: serde_json::Value = wait_for(10, "mTLS status", || async {
        let r = http
            .get(format!("https://127.0.0.1:{a_port}/v1/status"))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(status["registration"]["registered"], true, "{status}");
    assert_eq!(status["registration"]["agent_id"], a_id.as_str());
    assert_eq!(
        status["registration"]["mgmt_ca_sha256"],
        mgmt.ca_sha256.as_str()
    );
    assert!(a.status_anonymous().await.is_err(), "no client certificate");
    let other = ferry_tls::pki::Ca::create("another CA").unwrap();
    let (oc, ok) = other
        .issue(ferry_tls::pki::Role::Admin, "admin", 1)
        .unwrap();
    let stranger = ferry_tls::http_client(
        client_config(
            ServerTrust::Any,
            Some(Identity::from_pem(&oc, &ok).unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(stranger
        .get(format!("https://127.0.0.1:{a_port}/v1/status"))
        .send()
        .await
        .is_err());
    // Another agent's certificate is signed by the right CA but is not an admin's.
    let (key, cert) = (
        std::fs::read_to_string(dir.path().join("a/tls/key.pem")).unwrap(),
        std::fs::read_to_string(dir.path().join("a/tls/cert.pem")).unwrap(),
    );
    let as_agent = ferry_tls::http_client(
        client_config(
            ServerTrust::Any,
            Some(Identity::from_pem(&cert, &key).unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let r = as_agent
        .get(format!("https://127.0.0.1:{a_port}/v1/plans"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // --- Refusals at enrollment: spent, expired, unknown tokens; malformed, oversized.
    let (_k, csr) = ferry_tls::pki::new_key_and_csr("x").unwrap();
    let anon = ferry_tls::http_client(
        client_config(
            ServerTrust::CaPin {
                sha256: mgmt.ca_sha256.clone(),
                name: ferry_api::MGMT_SERVER_NAME.into(),
            },
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let short = mgmt.token(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let two = |t: &str| t.split('.').take(2).collect::<Vec<_>>().join(".");
    for (tok, why) in [
        (two(&token), "already used"),
        (two(&short), "expired"),
        (
            "0123456789ab.00000000000000000000000000000000".to_string(),
            "unknown",
        ),
    ] {
        let r = anon
            .post(format!("https://{mgmt_addr}/v1/enroll"))
            .json(&EnrollRequest {
                token: tok,
                csr_pem: csr.clone(),
                hello: Default::default(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let body = r.text().await.unwrap();
        assert!(body.contains(why), "{why}: {body}");
    }
    // The oversized body goes last: the server may close that connection, and a request
    // after it on the same pooled connection would fail to send.
    for (body, code) in [
        (b"{not json".to_vec(), 400),
        (br#"{"token": 5}"#.to_vec(), 400),
        (vec![b'x'; 2 << 20], 413),
    ] {
        let r = anon
            .post(format!("https://{mgmt_addr}/v1/enroll"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) => assert_eq!(r.status().as_u16(), code),
            // The server answers 413 as soon as it sees the length, and may close the
            // connection before the client has finished sending.
            Err(e) => assert!(code == 413 && e.to_string().contains("request"), "{e}"),
        }
    }
    assert_eq!(mgmt.admin.agents().await.unwrap().len(), 1, "still up");
    // An agent given the spent token says why in its status and stays unregistered.
    let b = Agent::start(
        &dir.path().join("b"),
        free_port(),
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", token.as_str()),
        ],
    )
    .await;
    let err = wait_for(20, "agent B refused", || async {
        let s = b.status_anonymous().await.ok()?;
        s["registration"]["last_error"]
            .as_str()
            .filter(|e| e.contains("refused"))
            .map(str::to_string)
    })
    .await;
    assert!(err.contains("already used"), "{err}");
    drop(b);

    // --- Management-initiated: pairing with the code on the console.
    let issuer = ferry_tls::license::Issuer::generate();
    let e_port = free_port();
    let e = Agent::start(
        &dir.path().join("e"),
        e_port,
        &[("FERRY_LICENSE_ISSUER", issuer.public_hex().as_str())],
    )
    .await;
    let code = wait_for(10, "pairing code on the console", || async {
        e.pairing_code()
    })
    .await;
    let e_addr = format!("127.0.0.1:{e_port}");
    let wrong = mgmt.admin.pair(&e_addr, "AAAA-AAAA").await.unwrap_err();
    assert!(wrong.to_string().contains("wrong pairing code"), "{wrong}");
    let info = mgmt.admin.pair(&e_addr, &code).await.unwrap();
    assert_eq!(info.state, AgentState::Active);
    let e_http = mgmt.agent_http(&info.id);
    let s: serde_json::Value = e_http
        .get(format!("https://{e_addr}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["registration"]["registered"], true, "{s}");
    assert_eq!(s["license"]["required"], true, "{s}");
    assert_eq!(s["license"]["valid"], false, "{s}");
    assert!(e.status_anonymous().await.is_err());

    // --- An unlicensed job is refused with the reason.
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
url = "/nonexistent"
"#,
    )
    .unwrap();
    let mut creds = std::collections::BTreeMap::new();
    creds.insert(
        "vc".to_string(),
        ferry_api::v1::Credential {
            user: Some("u".into()),
            password: Some("sup3rs3cret".into()),
            ..Default::default()
        },
    );
    let push = PlanPush {
        plan,
        credentials: creds,
    };
    let missing = PlanPush {
        credentials: Default::default(),
        ..push.clone()
    };
    let err = mgmt.admin.apply_plan(&info.id, &missing).await.unwrap_err();
    assert!(err.to_string().contains("credentials"), "{err}");
    mgmt.admin.apply_plan(&info.id, &push).await.unwrap();
    let last = mgmt.admin.run_now(&info.id, "p", |_| {}).await.unwrap();
    let Some(ProgressEvent::Done(rec)) = last else {
        panic!("no done event: {last:?}")
    };
    assert_eq!(rec.state, JobState::Refused);
    assert!(
        rec.error
            .as_deref()
            .unwrap_or("")
            .contains("no valid license"),
        "{rec:?}"
    );
    // Plans come back without credentials; the password is in no answer and no log.
    let plans = mgmt.admin.plans(&info.id).await.unwrap();
    assert_eq!(plans[0].credentials, vec!["vc".to_string()]);
    let listed = e_http
        .get(format!("https://{e_addr}/v1/plans"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains("sup3rs3cret"));
    let mode = std::fs::metadata(dir.path().join("e/plans/p.json")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    // --- Address change: agent A tells the server, which uses the new address.
    std::fs::write(&addr_file, "127.0.0.2\n").unwrap();
    wait_for(20, "address change noticed", || async {
        let v = mgmt.admin.agents().await.unwrap();
        let a = v.iter().find(|x| x.id == a_id)?;
        (a.address == format!("127.0.0.2:{a_port}")).then_some(())
    })
    .await;
    // Collection works over the new address (the hello already triggered one).
    mgmt.admin.collect(&a_id).await.unwrap();
    let logs = mgmt.admin.logs(Some(&a_id), 0, 1000).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.entry.message.contains("registered as agent")),
        "{logs:?}"
    );

    // --- Revocation: the server refuses the agent, and lists it as revoked.
    let r = mgmt.admin.revoke(&a_id).await.unwrap();
    assert_eq!(r.state, AgentState::Revoked);
    std::fs::write(&addr_file, "127.0.0.1\n").unwrap();
    let st = wait_for(20, "agent A refused", || async {
        let s: serde_json::Value = http
            .get(format!("https://127.0.0.1:{a_port}/v1/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        s["registration"]["last_error"]
            .as_str()
            .filter(|e| e.contains("revoked"))
            .map(str::to_string)
    })
    .await;
    assert!(st.contains("403"), "{st}");
    assert!(mgmt.admin.collect(&a_id).await.is_err());
    let listed = mgmt.admin.agents().await.unwrap();
    assert_eq!(
        listed.iter().find(|x| x.id == a_id).unwrap().state,
        AgentState::Revoked
    );

    let logs = a.stderr.lock().unwrap().clone() + &e.stderr.lock().unwrap();
    assert!(!logs.contains(&secret), "token secret in a log");
    assert!(!logs.contains("sup3rs3cret"), "password in a log");
    drop(a);
    drop(e);
    mgmt.stop().await;
}
