//! Certificate renewal (issue 16, finding 6): a real `ferry-node`, enrolled by token with
//! a real management server, is told by `FERRY_NOW_OFFSET_SECS` that 600 days have passed
//! (past two thirds of its 825-day certificate). It renews over mTLS at start: the server
//! records the new certificate as the node's current one, the node stores it as `node.pem`
//! and serves it, and an agent of the CA still gets its answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tls::pki::Role;
use ferry_tls::trust::{client_config, Identity, ServerTrust};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_its_certificate_at_two_thirds_of_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = ferry_mgmt::Mgmt::open(ferry_mgmt::Options {
        state_dir: dir.path().join("mgmt"),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        collect_every: Duration::from_secs(3600),
        license: None,
    })
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mgmt_addr = l.local_addr().unwrap();
    tokio::spawn(ferry_mgmt::serve_on(mgmt.clone(), l));
    let token = mgmt
        .create_token(Duration::from_secs(600), Some("node"))
        .unwrap()
        .token;

    let state = dir.path().join("node");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("node.toml"),
        "[[vault]]\nname = \"main\"\nchunk_size = 1048576\n[[grant]]\nidentity = \"agent-a1\"\nvaults = [\"main\"]\n",
    )
    .unwrap();
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ferry-node"))
            .arg("--state")
            .arg(&st)
            .args([
                "enroll",
                "--mgmt",
                &mgmt_addr.to_string(),
                "--token",
                &token,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text
        .split("node id ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    let enrolled = mgmt.db.agent(&id).unwrap().unwrap().cert_sha256;

    // The node starts believing it is 600 days later.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-node"))
        .arg("--state")
        .arg(&state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("FERRY_LOG", "info")
        .env("FERRY_NOW_OFFSET_SECS", (600 * 86400).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _node = Kill(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("node said {line:?}"))
        .to_string();

    let current = eventually("renewal recorded", || {
        let shas = mgmt.db.agent_cert_shas(&id).unwrap();
        (shas.len() == 2).then(|| shas[0].clone())
    })
    .await;
    assert_ne!(current, enrolled);
    assert_eq!(mgmt.db.agent(&id).unwrap().unwrap().cert_sha256, current);
    // The old certificate still identifies the node until it expires.
    assert_eq!(mgmt.db.agent_by_cert(&enrolled).unwrap().unwrap().id, id);
    eventually("renewed certificate stored", || {
        let pem = std::fs::read_to_string(state.join("node.pem")).ok()?;
        (ferry_tls::pem_sha256(&pem).ok()? == current).then_some(())
    })
    .await;

    // Served: an agent of the CA that accepts only the new certificate is answered.
    let (c, k) = mgmt.ca.issue(Role::Agent, "a1", 30).unwrap();
    let pinned = ferry_tls::http_client(
        client_config(
            ServerTrust::CertPin(current.clone()),
            Some(Identity::from_pem(&c, &k).unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let start = Instant::now();
    loop {
        match pinned.get(format!("https://{addr}/v1/vaults")).send().await {
            Ok(r) => {
                assert!(r.status().is_success(), "{}", r.status());
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(30), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
