//! Certificate renewal: owns renewing the agent's management-signed certificate before it
//! expires. From two thirds of its lifetime on (550 of 825 days), the agent sends a CSR for
//! its key over mTLS with its current certificate (`POST /v1/agent/renew`), checks the
//! answer (its id, its key), writes it to `<state>/tls/cert.pem` and swaps the server
//! config, so the next TLS accept presents the new certificate; the hello and every later
//! client call read it from the file. A failed attempt is retried at the next check.
//!
//! `FERRY_RENEW_CHECK_SECS`: seconds between checks (default 3600). `FERRY_NOW_OFFSET_SECS`
//! (tests only): seconds added to this module's clock, so a test can make the agent believe
//! that 600 days have passed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_api::v1::{ApiError, RenewRequest, RenewResponse};
use ferry_tls::trust::{client_config, server_config, ClientAuth, Identity, ServerTrust};

use crate::agent::Agent;

fn env_secs(k: &str) -> Option<f64> {
    std::env::var(k).ok().and_then(|s| s.trim().parse().ok())
}

/// Now, as renewal sees it (shifted by `FERRY_NOW_OFFSET_SECS` in tests).
fn now() -> i64 {
    let offset = env_secs("FERRY_NOW_OFFSET_SECS").unwrap_or(0.0) as i64;
    ferry_api::now_unix().saturating_add(offset)
}

/// Checks once registered, then every `FERRY_RENEW_CHECK_SECS`.
pub async fn renew_loop(agent: Arc<Agent>) {
    let every = Duration::from_secs_f64(
        env_secs("FERRY_RENEW_CHECK_SECS")
            .unwrap_or(3600.0)
            .max(1.0),
    );
    loop {
        if !agent.registered() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        match renew_if_due(&agent).await {
            Ok(Some(sha)) => tracing::info!("certificate renewed, sha256 {sha}"),
            Ok(None) => {}
            Err(e) => tracing::warn!("certificate renewal: {e:#}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Renews the certificate when it is due; the new certificate's SHA-256 when it did.
async fn renew_if_due(agent: &Agent) -> anyhow::Result<Option<String>> {
    let (key_path, cert_path) = crate::identity::paths(&agent.state_dir);
    let cert = std::fs::read_to_string(&cert_path).context("read the TLS certificate")?;
    if !ferry_tls::renewal_due(&cert, now()) {
        return Ok(None);
    }
    let Some((saved, ca)) = crate::registration::load(&agent.state_dir) else {
        return Ok(None);
    };
    let Some(url) = saved.mgmt_url else {
        bail!("the certificate is due for renewal, but no management server address is known");
    };
    let key = std::fs::read_to_string(&key_path).context("read the TLS key")?;
    let client = ferry_tls::http_client(client_config(
        ServerTrust::Ca {
            ca_pem: ca.clone(),
            name: ferry_api::MGMT_SERVER_NAME.into(),
        },
        Some(Identity::from_pem(&cert, &key)?),
    )?)?;
    let req = RenewRequest {
        csr_pem: ferry_tls::pki::csr_for_key_pem(&key, &agent.hostname)?,
    };
    let r = client
        .post(format!("{url}/v1/agent/renew"))
        .json(&req)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("reach {url}"))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        bail!("{url} answered {status}: {msg}");
    }
    let resp: RenewResponse = r.json().await.context("renewal answer")?;
    // The same checks as at registration: our id, our key; nothing is replaced otherwise.
    let names = ferry_tls::certs_from_pem(&resp.cert_pem)?
        .first()
        .map(|c| ferry_tls::dns_names(c.as_ref()))
        .unwrap_or_default();
    if !names.contains(&ferry_api::agent_server_name(&saved.agent_id)) {
        bail!(
            "the renewed certificate is not for agent {}",
            saved.agent_id
        );
    }
    server_config(Identity::from_pem(&resp.cert_pem, &key)?, ClientAuth::None)
        .context("the renewed certificate is not for this agent's key")?;
    crate::identity::write_private(&cert_path, resp.cert_pem.as_bytes())?;
    agent
        .tls_tx
        .send_replace(crate::registration::server_tls(&agent.state_dir)?);
    let sha = ferry_tls::pem_sha256(&resp.cert_pem)?;
    agent
        .reg
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .cert_sha256 = sha.clone();
    Ok(Some(sha))
}
