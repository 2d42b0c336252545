//! A fake agent for attack tests: an HTTPS server on loopback with whatever certificate
//! and routes a test gives it (its certificate can be swapped while it runs), and an
//! "agent" enrolled with a real `ferry mgmt serve` through its public API.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_tls::trust::{client_config, server_config, ClientAuth, Identity, ServerTrust};

/// A running fake agent.
pub struct FakeAgent {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its server config: `send_replace` swaps the certificate for the next connection.
    pub tls: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server config for a certificate chain and key (no client certificates asked).
pub fn tls(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    server_config(
        Identity::from_pem(cert_pem, key_pem).unwrap(),
        ClientAuth::None,
    )
    .unwrap()
}

/// A throwaway certificate and key: (cert PEM, key PEM).
pub fn throwaway_cert(name: &str) -> (String, String) {
    let ca = ferry_tls::pki::Ca::create("throwaway").unwrap();
    ca.issue(ferry_tls::pki::Role::Agent, name, 30).unwrap()
}

/// Serves `app` over TLS on a loopback port.
pub async fn start(cfg: Arc<rustls::ServerConfig>, app: axum::Router) -> FakeAgent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(cfg);
    let task = tokio::spawn(ferry_tls::serve::serve(listener, rx, app));
    FakeAgent {
        addr,
        tls: tx,
        task,
    }
}

/// An agent enrolled with the management server at `mgmt` (`host:port`): its id,
/// certificate (with the CA) and key, and an mTLS client of the server.
pub struct Enrolled {
    pub id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub mgmt: String,
    pub client: reqwest::Client,
}

/// The hello body of a fake agent reachable at `advertise`.
pub fn hello(advertise: &str) -> serde_json::Value {
    serde_json::json!({
        "hostname": "fake",
        "version": "0",
        "addresses": ["127.0.0.1/8"],
        "port": 9876,
        "advertise": advertise,
        "role": "agent",
    })
}

/// Enrolls with a fresh token from the admin bundle `admin`, advertising `advertise`.
pub async fn enroll(
    mgmt: &str,
    ca_sha256: &str,
    admin: &ferry_mgmt::client::AdminClient,
    advertise: &str,
) -> Enrolled {
    let tok = admin
        .create_token(Duration::from_secs(600), None)
        .await
        .unwrap()
        .token;
    let (key_pem, csr_pem) = ferry_tls::pki::new_key_and_csr("fake").unwrap();
    let c = ferry_tls::http_client(
        client_config(
            ServerTrust::CaPin {
                sha256: ca_sha256.to_string(),
                name: ferry_api::MGMT_SERVER_NAME.into(),
            },
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let r = c
        .post(format!("https://{mgmt}/v1/enroll"))
        .json(&serde_json::json!({
            "token": tok,
            "csr_pem": csr_pem,
            "hello": hello(advertise),
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let e: serde_json::Value = r.json().await.unwrap();
    let s = |k: &str| e[k].as_str().unwrap().to_string();
    let (id, cert_pem, ca_pem) = (s("agent_id"), s("cert_pem"), s("ca_pem"));
    let client = ferry_tls::http_client(
        client_config(
            ServerTrust::Ca {
                ca_pem: ca_pem.clone(),
                name: ferry_api::MGMT_SERVER_NAME.into(),
            },
            Some(Identity::from_pem(&cert_pem, &key_pem).unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    Enrolled {
        id,
        cert_pem,
        key_pem,
        ca_pem,
        mgmt: mgmt.to_string(),
        client,
    }
}

impl Enrolled {
    /// Its certificate chain and key as a server config (what a real agent serves).
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        tls(&format!("{}{}", self.cert_pem, self.ca_pem), &self.key_pem)
    }

    /// `POST /v1/agent/hello`; the status.
    pub async fn hello(&self, advertise: &str) -> reqwest::StatusCode {
        self.client
            .post(format!("https://{}/v1/agent/hello", self.mgmt))
            .json(&hello(advertise))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap()
            .status()
    }
}
