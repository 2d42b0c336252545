//! Registration with a management server, both ways, and the agent's notifications.
//!
//! - **Agent-initiated:** with `FERRY_MGMT` (`host[:port]`) and `FERRY_TOKEN`
//!   (`ID.SECRET.CA_SHA256`), the agent sends a CSR for its key with the token to
//!   `POST /v1/enroll`, trusting only a server whose chain holds the CA the token pins. A
//!   refusal (wrong, spent or expired token) stops the attempts; network errors are retried.
//! - **Management-initiated:** an unregistered agent shows a pairing code and its
//!   certificate's fingerprint on the console (only there; pairing.rs owns the code, its
//!   expiry and the attempt limits); `POST /v1/pair/csr` and `/v1/pair/complete` with that
//!   code do the same exchange the other way.
//! - **After registration** (`<state>/mgmt/registration.json`, `<state>/mgmt/ca.pem`, the
//!   signed certificate in `<state>/tls/cert.pem`) the server config switches to TLS 1.3
//!   with required client certificates of the management CA, at once and at every start.
//! - **Hello:** once registered, the agent tells the management server when it starts and
//!   whenever its addresses change (`POST /v1/agent/hello`), renews its license there, and
//!   fetches the revocation list (`GET /v1/agent/revocations`; revocation.rs).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_api::v1::{
    AgentHello, ApiError, EnrollRequest, EnrollResponse, HelloResponse, PairCsrResponse,
    Registration,
};
use ferry_tls::trust::{client_config, server_config, ClientAuth, Identity, ServerTrust};
use serde::{Deserialize, Serialize};

use crate::agent::Agent;

/// What is kept about the registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub agent_id: String,
    pub mgmt_url: Option<String>,
    pub ca_sha256: String,
    pub registered_unix: i64,
}

fn mgmt_dir(state: &Path) -> std::path::PathBuf {
    state.join("mgmt")
}

/// Loads the saved registration, if any.
pub fn load(state: &Path) -> Option<(Saved, String)> {
    let d = mgmt_dir(state);
    let s: Saved =
        serde_json::from_slice(&std::fs::read(d.join("registration.json")).ok()?).ok()?;
    let ca = std::fs::read_to_string(d.join("ca.pem")).ok()?;
    Some((s, ca))
}

/// The server config for the current state: self-signed and open before registration,
/// management-signed with required client certificates after.
pub fn server_tls(state: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (key, cert) = crate::identity::paths(state);
    let key = std::fs::read_to_string(&key).context("read the TLS key")?;
    let cert = std::fs::read_to_string(&cert).context("read the TLS certificate")?;
    match load(state) {
        Some((_, ca)) => Ok(server_config(
            Identity::from_pem(&format!("{cert}{ca}"), &key)?,
            ClientAuth::Required(ca),
        )?),
        None => Ok(server_config(
            Identity::from_pem(&cert, &key)?,
            ClientAuth::None,
        )?),
    }
}

impl Agent {
    /// Shows a new pairing code on the console (only there: see pairing.rs).
    pub fn show_pairing_code(&self) {
        self.pairing.renew();
        self.reg.lock().unwrap_or_else(|e| e.into_inner()).pairing = true;
    }

    /// Checks a pairing code from `ip` (rate limit, expiry, five failures: pairing.rs).
    pub fn check_pairing_code(&self, ip: std::net::IpAddr, code: &str) -> crate::pairing::Check {
        self.pairing.check(ip, code)
    }

    /// The hello this agent sends.
    pub fn hello(&self) -> AgentHello {
        AgentHello {
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            addresses: crate::api::address_list(self.debug),
            port: self.port,
            advertise: self.advertise.clone(),
            role: ferry_api::v1::PeerRole::Agent,
        }
    }

    /// A CSR for the agent's key.
    pub fn csr(&self) -> anyhow::Result<String> {
        let (key, _) = crate::identity::paths(&self.state_dir);
        let key = std::fs::read_to_string(key).context("read the TLS key")?;
        Ok(ferry_tls::pki::csr_for_key_pem(&key, &self.hostname)?)
    }

    /// Pairing, step 1.
    pub fn pair_csr(&self) -> anyhow::Result<PairCsrResponse> {
        Ok(PairCsrResponse {
            csr_pem: self.csr()?,
            hello: self.hello(),
        })
    }

    /// Installs a registration: certificate, CA, id; switches the server to mTLS.
    pub fn apply(
        &self,
        e: EnrollResponse,
        mgmt_url: Option<String>,
    ) -> anyhow::Result<Registration> {
        let names = ferry_tls::certs_from_pem(&e.cert_pem)?
            .first()
            .map(|c| ferry_tls::dns_names(c.as_ref()))
            .unwrap_or_default();
        if !names.contains(&ferry_api::agent_server_name(&e.agent_id)) {
            bail!("the certificate is not for agent {}", e.agent_id);
        }
        let (key_path, cert_path) = crate::identity::paths(&self.state_dir);
        let key = std::fs::read_to_string(&key_path).context("read the TLS key")?;
        // Refuse a certificate for another key before replacing anything.
        server_config(Identity::from_pem(&e.cert_pem, &key)?, ClientAuth::None)?;
        let d = mgmt_dir(&self.state_dir);
        std::fs::create_dir_all(&d).context("create the mgmt state directory")?;
        let ca_sha256 = ferry_tls::pem_sha256(&e.ca_pem)?;
        crate::identity::write_private(&d.join("ca.pem"), e.ca_pem.as_bytes())?;
        let saved = Saved {
            agent_id: e.agent_id.clone(),
            mgmt_url: mgmt_url.clone(),
            ca_sha256: ca_sha256.clone(),
            registered_unix: ferry_api::now_unix(),
        };
        let self_signed = cert_path.with_file_name("self-signed.pem");
        if !self_signed.exists() {
            let _ = std::fs::copy(&cert_path, &self_signed);
        }
        crate::identity::write_private(&cert_path, e.cert_pem.as_bytes())?;
        crate::identity::write_private(
            &d.join("registration.json"),
            &serde_json::to_vec_pretty(&saved)?,
        )?;
        if let Some(l) = e.license {
            self.license.install_from_mgmt(l);
        }
        self.tls_tx.send_replace(server_tls(&self.state_dir)?);
        self.pairing.clear();
        let reg = Registration {
            registered: true,
            agent_id: Some(e.agent_id.clone()),
            mgmt_url,
            mgmt_ca_sha256: Some(ca_sha256),
            cert_sha256: ferry_tls::pem_sha256(&e.cert_pem)?,
            pairing: false,
            last_error: None,
        };
        *self.reg.lock().unwrap_or_else(|e| e.into_inner()) = reg.clone();
        tracing::info!(
            "registered as agent {} with management CA {}",
            e.agent_id,
            reg.mgmt_ca_sha256.as_deref().unwrap_or("")
        );
        self.hello_now.notify_one();
        Ok(reg)
    }

    fn set_error(&self, e: String) {
        self.reg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = Some(e);
    }

    /// A client of the management server with the agent's certificate.
    fn mgmt_client(&self) -> anyhow::Result<Option<(reqwest::Client, String)>> {
        let Some((saved, ca)) = load(&self.state_dir) else {
            return Ok(None);
        };
        let Some(url) = saved.mgmt_url else {
            return Ok(None);
        };
        let (key, cert) = crate::identity::paths(&self.state_dir);
        let id = Identity::from_pem(
            &std::fs::read_to_string(cert)?,
            &std::fs::read_to_string(key)?,
        )?;
        let cfg = client_config(
            ServerTrust::Ca {
                ca_pem: ca,
                name: ferry_api::MGMT_SERVER_NAME.into(),
            },
            Some(id),
        )?;
        Ok(Some((ferry_tls::http_client(cfg)?, url)))
    }
}

/// `host[:port]` or a URL → `https://host:port`.
pub fn mgmt_url(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    let s = s.strip_prefix("https://").unwrap_or(s);
    if s.rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        format!("https://{s}")
    } else {
        format!("https://{s}:9876")
    }
}

async fn answer<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> Result<T, (bool, String)> {
    let status = r.status();
    if status.is_success() {
        return r.json().await.map_err(|e| (false, e.to_string()));
    }
    let text = r.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<ApiError>(&text)
        .map(|e| e.error)
        .unwrap_or(text);
    Err((status.is_client_error(), format!("{status}: {msg}")))
}

/// Agent-initiated registration; retries network errors, stops on a refusal.
pub async fn enroll_loop(agent: Arc<Agent>, mgmt: String, token: String) {
    let url = mgmt_url(&mgmt);
    let mut parts = token.trim().split('.');
    let (Some(id), Some(secret), Some(pin)) = (parts.next(), parts.next(), parts.next()) else {
        tracing::error!("the enrollment token is malformed (expected ID.SECRET.CA_SHA256)");
        agent.set_error("the enrollment token is malformed".into());
        return;
    };
    let token = format!("{id}.{secret}");
    let mut backoff = Duration::from_secs(1);
    loop {
        if agent
            .reg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .registered
        {
            return;
        }
        match enroll_once(&agent, &url, &token, pin).await {
            Ok(resp) => match agent.apply(resp, Some(url.clone())) {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!("registration answer unusable: {e:#}");
                    agent.set_error(format!("{e:#}"));
                    return;
                }
            },
            Err((true, e)) => {
                tracing::error!("enrollment with {url} refused: {e}");
                agent.set_error(format!("enrollment refused: {e}"));
                return;
            }
            Err((false, e)) => {
                tracing::warn!(
                    "enrollment with {url} failed: {e}; retrying in {}s",
                    backoff.as_secs()
                );
                agent.set_error(format!("enrollment: {e}"));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

async fn enroll_once(
    agent: &Agent,
    url: &str,
    token: &str,
    pin: &str,
) -> Result<EnrollResponse, (bool, String)> {
    let cfg = client_config(
        ServerTrust::CaPin {
            sha256: pin.to_string(),
            name: ferry_api::MGMT_SERVER_NAME.into(),
        },
        None,
    )
    .map_err(|e| (true, e.to_string()))?;
    let c = ferry_tls::http_client(cfg).map_err(|e| (false, e.to_string()))?;
    let req = EnrollRequest {
        token: token.to_string(),
        csr_pem: agent.csr().map_err(|e| (true, format!("{e:#}")))?,
        hello: agent.hello(),
    };
    let r = c
        .post(format!("{url}/v1/enroll"))
        .json(&req)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| (false, format!("{e}")))?;
    answer(r).await
}

/// Replaces the pairing code on the console when it expires, until registration.
pub async fn pairing_expiry(agent: Arc<Agent>) {
    while let Some(at) = agent.pairing.expires() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        if agent.registered() {
            return;
        }
        agent.pairing.renew_if_expired();
    }
}

/// Says hello at start, when the addresses change, when asked, and every
/// `FERRY_HELLO_EVERY` seconds (default 300: an agent the server cannot reach, behind NAT,
/// still gets the revocation list and its license renewal); renews the license.
pub async fn hello_loop(agent: Arc<Agent>) {
    let secs = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(d))
    };
    let poll = secs("FERRY_ADDR_POLL", 10);
    let every = secs("FERRY_HELLO_EVERY", 300);
    let mut sent: Option<AgentHello> = None;
    let mut last = tokio::time::Instant::now();
    loop {
        let h = agent.hello();
        let changed = sent.as_ref() != Some(&h);
        if changed || last.elapsed() >= every {
            match send_hello(&agent, &h).await {
                Ok(Some(r)) => {
                    if changed {
                        tracing::info!("management server reaches this agent at {}", r.address);
                    }
                    agent
                        .reg
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .last_error = None;
                    sent = Some(h);
                    last = tokio::time::Instant::now();
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("hello to the management server: {e}");
                    agent.set_error(format!("hello: {e}"));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = agent.hello_now.notified() => { sent = None; }
        }
    }
}

async fn send_hello(agent: &Agent, h: &AgentHello) -> Result<Option<HelloResponse>, String> {
    let Some((c, url)) = agent.mgmt_client().map_err(|e| format!("{e:#}"))? else {
        return Ok(None);
    };
    let r = c
        .post(format!("{url}/v1/agent/hello"))
        .json(h)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let resp: HelloResponse = answer(r).await.map_err(|(_, e)| e)?;
    match c
        .get(format!("{url}/v1/agent/revocations"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(r) => match answer::<ferry_tls::revocation::SignedRevocations>(r).await {
            Ok(l) => {
                if let Err(e) = agent.revoked.install(l) {
                    tracing::warn!("revocation list from the management server refused: {e}");
                }
            }
            Err((_, e)) => tracing::debug!("revocation list: {e}"),
        },
        Err(e) => tracing::debug!("revocation list: {e}"),
    }
    if agent.license.wants_renewal() {
        if let Ok(r) = c
            .get(format!("{url}/v1/agent/license"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            if let Ok(l) = answer::<ferry_api::v1::License>(r).await {
                if let Err(e) = agent.license.install(l) {
                    tracing::warn!("renewed license refused: {e}");
                }
            }
        }
    }
    Ok(Some(resp))
}
