//! Attacks on an unregistered ferry-agent over the network, as anyone who can reach its
//! port would: the pairing code is on the console only (no endpoint, no log, no state file
//! holds it), logs and debug hooks are refused before registration, status tells nothing
//! about vCenter, attempts are limited per source address, and a code expires. Each test
//! also pairs the agent the legitimate way (a real ferry-mgmt, code read off the console).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::{free_port, wait_for, Agent, Mgmt};
use ferry_api::v1::AgentState;
use ferry_tls::trust::{client_config, ServerTrust};

/// A client that accepts the agent's self-signed certificate and presents none, from the
/// loopback address `from` (another source address as far as the agent can tell).
fn anonymous(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(ServerTrust::Any, None).unwrap())
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Every file under `dir`, as text.
fn files_text(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let b = std::fs::read(&p).unwrap_or_default();
                out.push((
                    p.display().to_string(),
                    String::from_utf8_lossy(&b).into_owned(),
                ));
            }
        }
    }
    out
}

/// The code as typed, and without its dash (how an answer could also spell it).
fn spellings(code: &str) -> [String; 2] {
    [code.to_string(), code.replace('-', "")]
}

async fn post_code(c: &reqwest::Client, port: u16, path: &str, code: &str) -> (u16, String) {
    let body = if path.ends_with("/csr") {
        serde_json::json!({ "code": code })
    } else {
        serde_json::json!({
            "code": code,
            "enrolled": { "agent_id": "x", "cert_pem": "", "ca_pem": "" },
        })
    };
    let r = c
        .post(format!("https://127.0.0.1:{port}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// (a) Before registration: logs and debug hooks refused, status without vCenter, the code
/// in no answer, no stderr line and no file but the console; after pairing, the admin gets
/// the logs, the debug hooks and the full status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_agent_leaks_no_pairing_code() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let port = free_port();
    let state = dir.path().join("agent");
    // What init publishes, with vCenter settings and a config error quoting a value.
    std::fs::create_dir_all(state.join("run")).unwrap();
    std::fs::write(
        state.join("run/init.json"),
        serde_json::json!({
            "network": { "mode": "dhcp", "state": "bound", "address": "10.0.2.15/24" },
            "config": {
                "hostname": { "value": "ferry", "source": "default" },
                "vcenter": { "value": "vc.corp.example", "source": "ovf-env" },
                "vcenter_user": { "value": "backup@vsphere.local", "source": "ovf-env" },
                "vcenter_password": { "value": "<redacted>", "source": "ovf-env" },
                "token": { "value": "<redacted>", "source": "cmdline" },
            },
            "config_errors": [
                "cmdline: ferry.vcenter_thumbprint=vc.corp.example-thumb: not hex; ignored",
                "cmdline: unknown key ferry.bogus",
            ],
        })
        .to_string(),
    )
    .unwrap();
    let agent = Agent::start(&state, port, &[("FERRY_DEBUG", "1")]).await;
    let code = wait_for(10, "pairing code on the console", || async {
        agent.pairing_code()
    })
    .await;
    // Next to the code: the SHA-256 of the certificate the agent serves now.
    let served =
        ferry_tls::pem_sha256(&std::fs::read_to_string(state.join("tls/cert.pem")).unwrap())
            .unwrap();
    assert!(
        agent
            .console()
            .contains(&format!("appliance certificate sha256 {served}")),
        "{}",
        agent.console()
    );

    let c = anonymous("127.0.0.3");
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let mut answers = Vec::new();
    let status = c.get(url("/v1/status")).send().await.unwrap();
    assert_eq!(status.status(), 200);
    let status = status.text().await.unwrap();
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["tls"]["sha256"], served.as_str());
    assert_eq!(st["registration"]["pairing"], true, "{st:#}");
    assert_eq!(st["network"]["address"], "10.0.2.15/24", "{st:#}");
    assert_eq!(st["config"]["hostname"]["value"], "ferry", "{st:#}");
    assert_eq!(st["config"]["token"]["value"], "<redacted>", "{st:#}");
    for hidden in ["vc.corp.example", "backup@vsphere.local", "vcenter_user"] {
        assert!(
            !status.contains(hidden),
            "{hidden} before registration: {st:#}"
        );
    }
    assert!(
        status.contains("unknown key ferry.bogus"),
        "other errors stay: {st:#}"
    );
    answers.push(status);
    for (method, path) in [
        ("GET", "/v1/logs"),
        ("GET", "/v1/logs?lines=1000"),
        ("POST", "/v1/debug/crash"),
        ("POST", "/v1/debug/storage-check"),
        ("GET", "/v1/events"),
        ("GET", "/v1/plans"),
        ("GET", "/v1/nope"),
        ("GET", "/"),
    ] {
        let r = c
            .request(method.parse().unwrap(), url(path))
            .json(&serde_json::json!({ "url": "/tmp/x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        answers.push(r.text().await.unwrap());
    }
    for path in ["/v1/pair/csr", "/v1/pair/complete"] {
        let (s, body) = post_code(&c, port, path, "AAAA-AAAA").await;
        assert_eq!(s, 403, "{path}: {body}");
        answers.push(body);
    }
    // The crash hook did not run: the same process still answers.
    let again: serde_json::Value = c
        .get(url("/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["agent"]["pid"], st["agent"]["pid"]);
    answers.push(again.to_string());

    for a in &answers {
        for s in spellings(&code) {
            assert!(!a.contains(&s), "the pairing code in an answer: {a}");
        }
    }
    let stderr = agent.stderr.lock().unwrap().clone();
    assert!(stderr.contains("agent ready"), "{stderr}");
    for (path, text) in files_text(&state)
        .into_iter()
        .chain([("stderr".to_string(), stderr)])
    {
        for s in spellings(&code) {
            assert!(!text.contains(&s), "the pairing code in {path}");
        }
    }

    // The admin pairs with the code from the console, then gets what was refused.
    let addr = format!("127.0.0.1:{port}");
    let info = mgmt.admin.pair(&addr, &code).await.unwrap();
    assert_eq!(info.state, AgentState::Active);
    let http = mgmt.agent_http(&info.id);
    let logs = http.get(url("/v1/logs")).send().await.unwrap();
    assert_eq!(logs.status(), 200);
    let logs = logs.text().await.unwrap();
    assert!(logs.contains("agent ready"), "{logs}");
    for s in spellings(&code) {
        assert!(!logs.contains(&s), "the pairing code in the log ring");
    }
    let st: serde_json::Value = http
        .get(url("/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        st["config"]["vcenter"]["value"], "vc.corp.example",
        "{st:#}"
    );
    let r = http
        .post(url("/v1/debug/storage-check"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(
        ![403, 404].contains(&r.status().as_u16()),
        "the debug hook answers after registration: {}",
        r.status()
    );
    // A connection opened before registration gets nothing more; a new one needs mTLS.
    let r = c.get(url("/v1/logs")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        anonymous("127.0.0.3")
            .get(url("/v1/status"))
            .send()
            .await
            .is_err(),
        "mTLS now"
    );
    drop(agent);
    mgmt.stop().await;
}

/// (b) One address gets five attempts a minute, then 429 even with the right code; the
/// admin, from another address, still pairs with the code on the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_attempts_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let port = free_port();
    let agent = Agent::start(&dir.path().join("agent"), port, &[]).await;
    let first = wait_for(10, "pairing code", || async { agent.pairing_code() }).await;
    let attacker = anonymous("127.0.0.2");
    for i in 0..5 {
        let (s, body) = post_code(&attacker, port, "/v1/pair/csr", "AAAA-AAAA").await;
        assert_eq!(s, 403, "attempt {i}: {body}");
    }
    // Five failures replaced the code; the attacker is now out of attempts, even with the
    // right one.
    let code = wait_for(10, "a new code", || async {
        agent.pairing_code().filter(|c| *c != first)
    })
    .await;
    for c in [code.as_str(), "AAAA-AAAA"] {
        let (s, body) = post_code(&attacker, port, "/v1/pair/csr", c).await;
        assert_eq!(s, 429, "{body}");
        assert!(body.contains("too many"), "{body}");
    }
    let info = mgmt
        .admin
        .pair(&format!("127.0.0.1:{port}"), &code)
        .await
        .unwrap();
    assert_eq!(info.state, AgentState::Active);
    drop(agent);
    mgmt.stop().await;
}

/// (c) A code expires (`FERRY_PAIRING_TTL`, seconds, for tests; 15 min otherwise) and a new
/// one is shown; the old one is refused, the new one pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_code_expires_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, false).await;
    let port = free_port();
    let agent = Agent::start(
        &dir.path().join("agent"),
        port,
        &[("FERRY_PAIRING_TTL", "4")],
    )
    .await;
    let first = wait_for(10, "pairing code", || async { agent.pairing_code() }).await;
    wait_for(15, "a new code after the first expired", || async {
        agent.pairing_code().filter(|c| *c != first)
    })
    .await;
    let (s, body) = post_code(&anonymous("127.0.0.2"), port, "/v1/pair/csr", &first).await;
    assert_eq!(s, 403, "the expired code: {body}");
    // The code may expire again between reading and pairing; then the next one is read.
    let addr = format!("127.0.0.1:{port}");
    let mut tries = 0;
    let info = loop {
        tries += 1;
        let code = agent.pairing_code().unwrap();
        match mgmt.admin.pair(&addr, &code).await {
            Ok(i) => break i,
            Err(e) if tries < 2 && e.to_string().contains("wrong pairing code") => continue,
            Err(e) => panic!("pairing with the current code: {e}"),
        }
    };
    assert_eq!(info.state, AgentState::Active);
    drop(agent);
    mgmt.stop().await;
}
