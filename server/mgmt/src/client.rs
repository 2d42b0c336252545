//! The admin's side of the API, for the `ferry` CLI: an admin bundle (certificate, key and
//! the management CA in one PEM file, 0600) and typed calls.

use std::path::Path;
use std::time::Duration;

use ferry_api::v1::{
    AgentInfo, ApiError, CollectReport, CollectedJob, CollectedLog, PairRequest, PlanPush,
    PlanSummary, ProgressEvent, TokenCreate, TokenCreated,
};
use ferry_tls::trust::{client_config, Identity, ServerTrust};
use futures::StreamExt;

use crate::wire::{AdminCreate, AdminCreated, AdminInfo};
use crate::MgmtError;

/// Percent-encodes a query value (everything but unreserved characters).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Certificate, key and CA of an admin, from one PEM file.
#[derive(Debug)]
pub struct AdminBundle {
    /// The admin certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    /// The management CA (PEM).
    pub ca_pem: String,
}

impl AdminBundle {
    /// Splits a bundle: the first certificate is the admin's, later ones the CA.
    pub fn parse(text: &str) -> Result<AdminBundle, MgmtError> {
        let (mut cert, mut key, mut ca) = (String::new(), String::new(), String::new());
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let after = &rest[start..];
            let Some(end_tag) = after.find("-----END ") else {
                break;
            };
            let tail = &after[end_tag..];
            let end = end_tag + tail.find('\n').map(|i| i + 1).unwrap_or(tail.len());
            let block = &after[..end];
            if block.starts_with("-----BEGIN CERTIFICATE-----") {
                if cert.is_empty() {
                    cert.push_str(block);
                } else {
                    ca.push_str(block);
                }
            } else if block.contains("PRIVATE KEY-----") {
                key.push_str(block);
            }
            rest = &after[end..];
        }
        if cert.is_empty() || key.is_empty() || ca.is_empty() {
            return Err(MgmtError::Invalid(
                "an admin bundle holds the admin certificate, its key and the CA".into(),
            ));
        }
        Ok(AdminBundle {
            cert_pem: cert,
            key_pem: key,
            ca_pem: ca,
        })
    }

    /// The bundle as one PEM text (certificate, key, CA): what [`AdminBundle::parse`] reads.
    pub fn to_pem(&self) -> String {
        format!("{}{}{}", self.cert_pem, self.key_pem, self.ca_pem)
    }

    /// Writes the bundle (0600, atomically); refuses to overwrite a file.
    pub fn save(&self, path: &Path) -> Result<(), MgmtError> {
        if path.exists() {
            return Err(MgmtError::Invalid(format!(
                "{} exists; not overwriting an admin bundle",
                path.display()
            )));
        }
        crate::write_private(path, self.to_pem().as_bytes())
    }

    /// Reads a bundle file.
    pub fn load(path: &Path) -> Result<AdminBundle, MgmtError> {
        let t = std::fs::read_to_string(path)
            .map_err(|e| MgmtError::Io(format!("read {}: {e}", path.display())))?;
        Self::parse(&t)
    }
}

/// A client of the management server (or, with [`AdminClient::agent`], of one agent).
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
}

async fn check(r: reqwest::Response) -> Result<reqwest::Response, MgmtError> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<ApiError>(&text)
        .map(|e| e.error)
        .unwrap_or(text);
    Err(MgmtError::Invalid(format!("{status}: {msg}")))
}

fn net(e: reqwest::Error) -> MgmtError {
    MgmtError::Io(format!("request failed: {e}"))
}

fn base_url(s: &str) -> String {
    let s = s.trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    }
}

impl AdminClient {
    /// A client of the management server at `url` (`https://host:port` or `host:port`).
    pub fn new(url: &str, b: &AdminBundle) -> Result<AdminClient, MgmtError> {
        Self::with_name(url, b, ferry_api::MGMT_SERVER_NAME)
    }

    /// A client of one agent directly (`host:port` and its id).
    pub fn agent(url: &str, agent_id: &str, b: &AdminBundle) -> Result<AdminClient, MgmtError> {
        Self::with_name(url, b, &ferry_api::agent_server_name(agent_id))
    }

    fn with_name(url: &str, b: &AdminBundle, name: &str) -> Result<AdminClient, MgmtError> {
        let cfg = client_config(
            ServerTrust::Ca {
                ca_pem: b.ca_pem.clone(),
                name: name.to_string(),
            },
            Some(Identity::from_pem(&b.cert_pem, &b.key_pem)?),
        )?;
        Ok(AdminClient {
            base: base_url(url),
            http: ferry_tls::http_client(cfg)?,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, MgmtError> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(net)?;
        check(r).await?.json().await.map_err(net)
    }

    async fn send<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<T, MgmtError> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(body)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(net)?;
        check(r).await?.json().await.map_err(net)
    }

    /// A new enrollment token.
    pub async fn create_token(
        &self,
        ttl: Duration,
        note: Option<String>,
    ) -> Result<TokenCreated, MgmtError> {
        self.send(
            reqwest::Method::POST,
            "/v1/tokens",
            &TokenCreate {
                ttl_seconds: ttl.as_secs(),
                note,
            },
        )
        .await
    }

    /// Registered agents.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, MgmtError> {
        self.get("/v1/agents").await
    }

    /// Pairs with the agent at `address` using the code on its console.
    pub async fn pair(&self, address: &str, code: &str) -> Result<AgentInfo, MgmtError> {
        Ok(self.pair_with_fingerprint(address, code).await?.agent)
    }

    /// Like [`AdminClient::pair`], with the SHA-256 of the certificate the appliance
    /// presented, for the admin to compare with its console.
    pub async fn pair_with_fingerprint(
        &self,
        address: &str,
        code: &str,
    ) -> Result<crate::wire::Paired, MgmtError> {
        self.send(
            reqwest::Method::POST,
            "/v1/agents/pair",
            &PairRequest {
                address: address.into(),
                code: code.into(),
            },
        )
        .await
    }

    /// Adds an admin: makes its key here, has the server sign a CSR for it, and returns
    /// the new admin's bundle (the key never leaves this process).
    pub async fn add_admin(&self, name: &str) -> Result<(AdminBundle, AdminInfo), MgmtError> {
        crate::wire::check_admin_name(name).map_err(MgmtError::Invalid)?;
        let (key_pem, csr_pem) = ferry_tls::pki::new_key_and_csr(&format!("ferry admin {name}"))?;
        let c: AdminCreated = self
            .send(
                reqwest::Method::POST,
                "/v1/admins",
                &AdminCreate {
                    name: name.to_string(),
                    csr_pem,
                },
            )
            .await?;
        Ok((
            AdminBundle {
                cert_pem: c.cert_pem,
                key_pem,
                ca_pem: c.ca_pem,
            },
            c.admin,
        ))
    }

    /// Every admin.
    pub async fn admins(&self) -> Result<Vec<AdminInfo>, MgmtError> {
        self.get("/v1/admins").await
    }

    /// Revokes an admin: the server refuses it at once, and agents once they have the
    /// new revocation list.
    pub async fn revoke_admin(&self, name: &str) -> Result<AdminInfo, MgmtError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/admins/{name}/revoke"),
            &serde_json::json!({}),
        )
        .await
    }

    /// The central catalog: restore points on every storage node (or one node, one group).
    pub async fn catalog(
        &self,
        node: Option<&str>,
        group: Option<&str>,
    ) -> Result<ferry_api::v1::Catalog, MgmtError> {
        let mut q = Vec::new();
        if let Some(n) = node {
            q.push(format!("node={}", urlencode(n)));
        }
        if let Some(g) = group {
            q.push(format!("group={}", urlencode(g)));
        }
        let path = if q.is_empty() {
            "/v1/catalog".to_string()
        } else {
            format!("/v1/catalog?{}", q.join("&"))
        };
        self.get(&path).await
    }

    /// Revokes an agent or a storage node.
    pub async fn revoke(&self, id: &str) -> Result<AgentInfo, MgmtError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/agents/{id}/revoke"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Deploys a plan to an agent.
    pub async fn apply_plan(&self, agent: &str, push: &PlanPush) -> Result<PlanSummary, MgmtError> {
        self.send(
            reqwest::Method::PUT,
            &format!("/v1/agents/{agent}/plans/{}", push.plan.name),
            push,
        )
        .await
    }

    /// Plans of an agent as the server holds them.
    pub async fn plans(&self, agent: &str) -> Result<Vec<PlanSummary>, MgmtError> {
        self.get(&format!("/v1/agents/{agent}/plans")).await
    }

    /// Collects from an agent now.
    pub async fn collect(&self, agent: &str) -> Result<CollectReport, MgmtError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/collect"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Collected jobs, newest first.
    pub async fn jobs(
        &self,
        agent: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CollectedJob>, MgmtError> {
        let q = agent.map(|a| format!("&agent={a}")).unwrap_or_default();
        self.get(&format!("/v1/jobs?limit={limit}{q}")).await
    }

    /// One collected job.
    pub async fn job(&self, agent: &str, id: &str) -> Result<CollectedJob, MgmtError> {
        self.get(&format!("/v1/jobs/{agent}/{id}")).await
    }

    /// Collected log lines.
    pub async fn logs(
        &self,
        agent: Option<&str>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<CollectedLog>, MgmtError> {
        let q = agent.map(|a| format!("&agent={a}")).unwrap_or_default();
        self.get(&format!("/v1/logs?after={after}&limit={limit}{q}"))
            .await
    }

    /// Runs a plan now, calling `each` for every progress event; returns the last one.
    pub async fn run_now(
        &self,
        agent: &str,
        plan: &str,
        mut each: impl FnMut(&ProgressEvent),
    ) -> Result<Option<ProgressEvent>, MgmtError> {
        let r = self
            .http
            .post(format!("{}/v1/agents/{agent}/plans/{plan}/run", self.base))
            .send()
            .await
            .map_err(net)?;
        let mut s = check(r).await?.bytes_stream();
        let mut buf = Vec::new();
        let mut last = None;
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk.map_err(net)?);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let ev: ProgressEvent = serde_json::from_slice(&line)
                    .map_err(|e| MgmtError::Invalid(format!("progress stream: {e}")))?;
                each(&ev);
                last = Some(ev);
            }
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_splits() {
        let ca = ferry_tls::pki::Ca::create("x").unwrap();
        let (c, k) = ca.issue(ferry_tls::pki::Role::Admin, "a", 1).unwrap();
        let b = AdminBundle::parse(&format!("{c}{k}{}", ca.cert_pem())).unwrap();
        assert_eq!(b.cert_pem, c);
        assert_eq!(b.key_pem, k);
        assert_eq!(b.ca_pem, ca.cert_pem());
        assert!(AdminBundle::parse(&c).is_err());
    }
}
