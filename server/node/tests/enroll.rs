//! Enrollment with a real management server (ferry-mgmt) by token, like an agent; then an
//! agent reaches the node by the id the management server gave it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_enrolls_with_a_token_and_serves_agents_of_that_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = ferry_mgmt::Mgmt::open(ferry_mgmt::Options {
        state_dir: dir.path().join("mgmt"),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        collect_every: std::time::Duration::from_secs(3600),
        license: None,
    })
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mgmt_addr = l.local_addr().unwrap();
    tokio::spawn(ferry_mgmt::serve_on(mgmt.clone(), l));
    let token = mgmt
        .create_token(std::time::Duration::from_secs(600), Some("node"))
        .unwrap()
        .token;

    let state = dir.path().join("node");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("node.toml"),
        "[[vault]]\nname = \"main\"\nchunk_size = 1048576\n[[grant]]\nidentity = \"agent-a1\"\nvaults = [\"main\"]\n",
    )
    .unwrap();
    let run = |token: &str| {
        let st = state.clone();
        let token = token.to_string();
        async move {
            tokio::task::spawn_blocking(move || {
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
            .unwrap()
        }
    };
    let out = run(&token).await;
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
    // The token is spent: a second enrollment is refused.
    let again = run(&token).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already used"));

    // Serve, and back up from an agent whose certificate the same CA signed.
    let ca = ferry_tls::pki::Ca::from_pem(
        &std::fs::read_to_string(dir.path().join("mgmt/ca.pem")).unwrap(),
        &std::fs::read_to_string(dir.path().join("mgmt/ca.key")).unwrap(),
    )
    .unwrap();
    let w = World {
        dir,
        ca,
        state: state.clone(),
    };
    let node = w.start(0);
    let a1 = w.agent("a1");
    let url = format!(
        "node://{}/main?node={id}&identity={}&retries=1",
        node.addr,
        a1.display()
    );
    let s = ferry_storage::open_store_with(&url, ferry_storage::StoreOptions::default()).unwrap();
    let repo = ferry_archive::Repository::open(s).await.unwrap();
    let disk = w.path("d.raw");
    random_disk(&disk, 3 * MIB as usize, 4);
    let m = backup(&repo, &disk, "vm", None).await.unwrap();
    assert_eq!(
        restore_sha(&repo, &m, &w.path("o")).await,
        sha256_file(&disk)
    );
}
