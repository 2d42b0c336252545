//! Certificate renewal: owns renewing the node's management-signed certificate before it
//! expires. From two thirds of its lifetime on (550 of 825 days), the node sends a CSR for
//! its key over mTLS with its current certificate to the management server it enrolled with
//! (`POST /v1/agent/renew`, which renews agents and nodes alike), checks the answer (same
//! names, its key), stores it as `node.pem` and swaps the server config, so the next TLS
//! accept presents the new certificate. A failed attempt is retried at the next check.
//!
//! `FERRY_RENEW_CHECK_SECS`: seconds between checks (default 3600). `FERRY_NOW_OFFSET_SECS`
//! (tests only): seconds added to this module's clock, so a test can make the node believe
//! that 600 days have passed.

use std::sync::Arc;
use std::time::Duration;

use ferry_api::v1::{RenewRequest, RenewResponse};
use ferry_tls::trust::{server_config, ClientAuth, Identity};

use crate::{tls_files, Node, NodeError};

fn env_secs(k: &str) -> Option<f64> {
    std::env::var(k).ok().and_then(|s| s.trim().parse().ok())
}

/// Now, as renewal sees it (shifted by `FERRY_NOW_OFFSET_SECS` in tests).
fn now() -> i64 {
    let offset = env_secs("FERRY_NOW_OFFSET_SECS").unwrap_or(0.0) as i64;
    ferry_api::now_unix().saturating_add(offset)
}

/// Checks at start and every `FERRY_RENEW_CHECK_SECS`; installs a renewed certificate
/// into `tls` for the accept loop.
pub async fn renewer(node: Arc<Node>, tls: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>) {
    let every = Duration::from_secs_f64(
        env_secs("FERRY_RENEW_CHECK_SECS")
            .unwrap_or(3600.0)
            .max(1.0),
    );
    loop {
        match renew_if_due(&node).await {
            Ok(Some(sha)) => match node.server_tls() {
                Ok(cfg) => {
                    tls.send_replace(cfg);
                    tracing::info!("certificate renewed, sha256 {sha}");
                }
                Err(e) => tracing::warn!("renewed certificate stored but not served: {e}"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("certificate renewal: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

fn read(p: &std::path::Path) -> Result<String, NodeError> {
    std::fs::read_to_string(p).map_err(|e| NodeError::Io(format!("{}: {e}", p.display())))
}

/// Renews the certificate when it is due; the new certificate's SHA-256 when it did.
async fn renew_if_due(node: &Node) -> Result<Option<String>, NodeError> {
    let (cert_path, key_path, ca_path) = tls_files(&node.state_dir);
    let cert = read(&cert_path)?;
    if !ferry_tls::renewal_due(&cert, now()) {
        return Ok(None);
    }
    let Some(base) = crate::revocation::mgmt_url(&node.state_dir) else {
        return Err(NodeError::Invalid(
            "the certificate is due for renewal, but the node was not enrolled \
             (no mgmt.url in the state directory)"
                .into(),
        ));
    };
    let key = read(&key_path)?;
    let ca = read(&ca_path)?;
    let client = crate::revocation::mgmt_client(&node.state_dir)?;
    let csr_pem = ferry_tls::pki::csr_for_key_pem(&key, "ferry node")?;
    let resp: RenewResponse = crate::revocation::mgmt_call(
        client
            .post(format!("{base}/v1/agent/renew"))
            .json(&RenewRequest { csr_pem }),
        &base,
        "renewal answer",
    )
    .await?;
    // Same names as the certificate it replaces, and for this node's key.
    let names = |pem: &str| -> Result<Vec<String>, NodeError> {
        Ok(ferry_tls::certs_from_pem(pem)?
            .first()
            .map(|c| ferry_tls::dns_names(c.as_ref()))
            .unwrap_or_default())
    };
    if names(&resp.cert_pem)? != names(&cert)? {
        return Err(NodeError::Invalid(
            "the renewed certificate names another holder".into(),
        ));
    }
    server_config(Identity::from_pem(&resp.cert_pem, &key)?, ClientAuth::None)?;
    let sha = ferry_tls::pem_sha256(&resp.cert_pem)?;
    crate::enroll::install_identity(&node.state_dir, &resp.cert_pem, &key, &ca)?;
    Ok(Some(sha))
}
