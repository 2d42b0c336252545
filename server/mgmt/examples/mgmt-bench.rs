//! Management-plane figures: agents registered per minute (simulated agents as tasks, each
//! with its own key, CSR and one-time token), plans deployed per second (to a real
//! ferry-agent), the management server's peak RSS, and the agent's idle RSS on the host.
//!
//!   mgmt-bench FERRY_BIN AGENT_BIN [AGENTS] [PLANS]
//!
//! Run by tests/bench/mgmt.sh with release binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::v1::{AgentHello, EnrollRequest, EnrollResponse, PlanPush};
use ferry_mgmt::client::{AdminBundle, AdminClient};
use ferry_tls::trust::{client_config, Identity, ServerTrust};

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ferry = args.get(1).expect("FERRY_BIN").clone();
    let agent_bin = args.get(2).expect("AGENT_BIN").clone();
    let n_agents: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200);
    let n_plans: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mgmt");
    let mut child = Command::new(&ferry)
        .args([
            "mgmt",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--collect-every",
            "10",
        ])
        .arg("--state")
        .arg(&state)
        // The simulated agents all enroll at once from one address, which the listener
        // otherwise caps at 32 connections without a client certificate.
        .env("FERRY_MAX_CONNECTIONS_PER_ADDRESS", "100000")
        .env("FERRY_MAX_CONNECTIONS", "100000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mgmt = Kill(child);
    let pid = mgmt.0.id();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = v["listening"].as_str().unwrap().to_string();
    let ca = v["ca_sha256"].as_str().unwrap().to_string();
    let bundle = AdminBundle::load(&state.join("admin.pem")).unwrap();
    let admin = AdminClient::new(&addr, &bundle).unwrap();
    println!(
        "management server pid {pid} on {addr}; idle RSS {} KiB",
        rss_kib(pid, "VmRSS:")
    );

    // --- Registration: every simulated agent enrolls with its own token and CSR.
    let mut tokens = Vec::new();
    for _ in 0..n_agents {
        let t = admin
            .create_token(Duration::from_secs(3600), None)
            .await
            .unwrap();
        tokens.push(t.token);
    }
    let started = Instant::now();
    let url = Arc::new(format!("https://{addr}"));
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, tok)| {
            let (ca, url) = (ca.clone(), url.clone());
            tokio::spawn(async move {
                let (key, csr) = ferry_tls::pki::new_key_and_csr(&format!("sim-{i}")).unwrap();
                let c = ferry_tls::http_client(
                    client_config(
                        ServerTrust::CaPin {
                            sha256: ca.clone(),
                            name: ferry_api::MGMT_SERVER_NAME.into(),
                        },
                        None,
                    )
                    .unwrap(),
                )
                .unwrap();
                let hello = AgentHello {
                    hostname: format!("sim-{i}"),
                    version: "bench".into(),
                    addresses: vec![],
                    port: 9876,
                    advertise: Some("127.0.0.1:9".into()),
                    role: Default::default(),
                };
                let tok: String = tok.split('.').take(2).collect::<Vec<_>>().join(".");
                let r: EnrollResponse = c
                    .post(format!("{url}/v1/enroll"))
                    .json(&EnrollRequest {
                        token: tok,
                        csr_pem: csr,
                        hello: hello.clone(),
                    })
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                // Online, as a real agent says right after registering.
                let c = ferry_tls::http_client(
                    client_config(
                        ServerTrust::Ca {
                            ca_pem: r.ca_pem.clone(),
                            name: ferry_api::MGMT_SERVER_NAME.into(),
                        },
                        Some(Identity::from_pem(&r.cert_pem, &key).unwrap()),
                    )
                    .unwrap(),
                )
                .unwrap();
                c.post(format!("{url}/v1/agent/hello"))
                    .json(&hello)
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let listed = admin.agents().await.unwrap().len();
    assert_eq!(listed, n_agents);
    println!(
        "registered {n_agents} agents (CSR + token + hello each) in {:.2}s: {:.0} agents/min",
        took.as_secs_f64(),
        n_agents as f64 * 60.0 / took.as_secs_f64()
    );

    // --- Plans: a real agent, plans pushed one after another through the server.
    let astate = dir.path().join("agent");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = admin
        .create_token(Duration::from_secs(600), None)
        .await
        .unwrap()
        .token;
    let agent = Kill(
        Command::new(&agent_bin)
            .env_clear()
            .env("FERRY_STATE_DIR", &astate)
            .env("FERRY_RUN_DIR", dir.path())
            .env("FERRY_LISTEN", format!("127.0.0.1:{port}"))
            .env("FERRY_ADVERTISE", format!("127.0.0.1:{port}"))
            .env("FERRY_MGMT", &addr)
            .env("FERRY_TOKEN", &token)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let id = loop {
        let v = admin.agents().await.unwrap();
        if let Some(a) = v.iter().find(|a| a.version != "bench") {
            break a.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut creds = std::collections::BTreeMap::new();
    creds.insert(
        "vc".to_string(),
        ferry_api::v1::Credential {
            user: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        },
    );
    let started = Instant::now();
    for i in 0..n_plans {
        let plan = ferry_api::Plan::from_toml(&format!(
            "name = \"plan-{}\"\nschedule = \"0 2 * * *\"\n[vcenter]\nurl = \"https://vc\"\ncredential = \"vc\"\ntrust_on_first_use = true\n[vms]\nall = true\n[destination]\nurl = \"/srv/ferry\"\n",
            i % 20
        ))
        .unwrap();
        admin
            .apply_plan(
                &id,
                &PlanPush {
                    plan,
                    credentials: creds.clone(),
                },
            )
            .await
            .unwrap();
    }
    let took = started.elapsed();
    println!(
        "deployed {n_plans} plans (stored, pushed over mTLS, stored 0600 by the agent) in {:.2}s: {:.0} plans/s",
        took.as_secs_f64(),
        n_plans as f64 / took.as_secs_f64()
    );
    // Let the collector make a round over every agent.
    tokio::time::sleep(Duration::from_secs(12)).await;
    println!(
        "management server with {} agents: peak RSS {} KiB ({:.1} MiB)",
        n_agents + 1,
        rss_kib(pid, "VmHWM:"),
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    println!(
        "agent idle RSS on the host: {} KiB ({:.1} MiB), peak {} KiB",
        rss_kib(agent.0.id(), "VmRSS:"),
        rss_kib(agent.0.id(), "VmRSS:") as f64 / 1024.0,
        rss_kib(agent.0.id(), "VmHWM:")
    );
}
