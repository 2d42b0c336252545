//! Pairing is bound to the TLS channel (issue 16, finding 2): `ferry mgmt agents add`
//! against the real `ferry mgmt serve`, with a fake appliance. A CSR for another key than
//! the appliance's TLS certificate is refused; an appliance whose certificate changes
//! between `/v1/pair/csr` and `/v1/pair/complete` (a machine in the middle taking over the
//! second call) is refused; in both cases nothing is signed into the registry and the
//! complete call never arrives. A consistent appliance pairs, and the command prints the
//! SHA-256 of the certificate it presented (what its console shows).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;
mod fake_agent;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use common::{free_port, serve_mgmt, FERRY};

struct Fake {
    /// The CSR `/v1/pair/csr` answers with.
    csr_pem: String,
    /// A config to switch to once the CSR is sent (the swap).
    swap_to: Mutex<Option<Arc<rustls::ServerConfig>>>,
    tls: Mutex<Option<tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>>>,
    completes: AtomicUsize,
}

async fn csr(State(f): State<Arc<Fake>>) -> Json<serde_json::Value> {
    if let Some(cfg) = f.swap_to.lock().unwrap().take() {
        if let Some(tx) = f.tls.lock().unwrap().as_ref() {
            tx.send_replace(cfg);
        }
    }
    Json(serde_json::json!({
        "csr_pem": f.csr_pem,
        "hello": fake_agent::hello("127.0.0.1:9"),
    }))
}

async fn complete(State(f): State<Arc<Fake>>) -> Json<serde_json::Value> {
    f.completes.fetch_add(1, Ordering::SeqCst);
    Json(serde_json::json!({"registered": true}))
}

/// Starts a fake appliance with `cert`/`key`, answering with `csr_pem`, switching to
/// `swap_to` after the CSR when given.
async fn fake(
    cert: &str,
    key: &str,
    csr_pem: String,
    swap_to: Option<Arc<rustls::ServerConfig>>,
) -> (Arc<Fake>, fake_agent::FakeAgent) {
    let f = Arc::new(Fake {
        csr_pem,
        swap_to: Mutex::new(swap_to),
        tls: Mutex::new(None),
        completes: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/v1/pair/csr", post(csr))
        .route("/v1/pair/complete", post(complete))
        .with_state(f.clone());
    let agent = fake_agent::start(fake_agent::tls(cert, key), app).await;
    *f.tls.lock().unwrap() = Some(agent.tls.clone());
    (f, agent)
}

struct Mgmt {
    _dir: tempfile::TempDir,
    _serve: common::ServedMgmt,
    state: PathBuf,
    port: u16,
}

impl Mgmt {
    fn start() -> Mgmt {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("mgmt");
        let port = free_port();
        let serve = serve_mgmt(&state, &format!("127.0.0.1:{port}"), &[], Stdio::null());
        Mgmt {
            _dir: dir,
            _serve: serve,
            state,
            port,
        }
    }

    async fn ferry(&self, args: &[&str]) -> Output {
        let mut c = Command::new(FERRY);
        c.args(args)
            .env("FERRY_MGMT", format!("127.0.0.1:{}", self.port))
            .env("FERRY_ADMIN_CERT", self.state.join("admin.pem"));
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    async fn agents(&self) -> serde_json::Value {
        let o = self.ferry(&["--json", "mgmt", "agents", "list"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    async fn add(&self, addr: &str) -> Output {
        self.ferry(&["mgmt", "agents", "add", addr, "--pairing-code", "ABCD-EFGH"])
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_for_another_key_is_refused() {
    let m = Mgmt::start();
    let (cert, key) = fake_agent::throwaway_cert("a");
    let (_other_key, other_csr) = ferry_tls::pki::new_key_and_csr("a").unwrap();
    let (f, agent) = fake(&cert, &key, other_csr, None).await;
    let o = m.add(&agent.addr.to_string()).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another key"), "{err}");
    assert_eq!(f.completes.load(Ordering::SeqCst), 0);
    assert_eq!(m.agents().await, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_between_csr_and_complete_is_refused() {
    let m = Mgmt::start();
    let (cert, key) = fake_agent::throwaway_cert("a");
    let csr = ferry_tls::pki::csr_for_key_pem(&key, "a").unwrap();
    let (c2, k2) = fake_agent::throwaway_cert("mitm");
    let (f, agent) = fake(&cert, &key, csr, Some(fake_agent::tls(&c2, &k2))).await;
    let o = m.add(&agent.addr.to_string()).await;
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(f.completes.load(Ordering::SeqCst), 0);
    assert_eq!(m.agents().await, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_appliance_pairs_and_its_fingerprint_is_printed() {
    let m = Mgmt::start();
    let (cert, key) = fake_agent::throwaway_cert("a");
    let want = ferry_tls::pem_sha256(&cert).unwrap();
    let csr = ferry_tls::pki::csr_for_key_pem(&key, "a").unwrap();
    let (f, agent) = fake(&cert, &key, csr, None).await;
    let o = m.add(&agent.addr.to_string()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("appliance certificate sha256 {want}")),
        "{out}"
    );
    assert_eq!(f.completes.load(Ordering::SeqCst), 1);
    let list = m.agents().await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
