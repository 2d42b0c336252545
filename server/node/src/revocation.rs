//! The management CA's revocation list on the node: kept as `revoked.json` (0600) in the
//! state directory and checked against `ca.pem` ([`ferry_tls::revocation::RevocationStore`],
//! shared with the agent), enforced by the request gate in [`crate::routes`], and fetched
//! from the management server the node enrolled with (`mgmt.url`, written by
//! [`crate::enroll`]; else `mgmt` in `node.toml`) at start and every `revocation_every` seconds, with the node's own
//! certificate (`GET /v1/agent/revocations`, which the management server answers for every
//! active registered peer).
//!
//! The management server also pushes the list after every revocation
//! (`PUT /v1/revocations` on the node, accepted from its own certificate, `mgmt`, only:
//! [`crate::routes`]), so a revocation applies at once; the fetch is the fallback for a push
//! the node missed (it was down, or unreachable from the management server).
//!
//! A management server that does not answer changes nothing: the node keeps serving with the
//! last list it verified. Only lists signed by the management CA and not older than the one
//! held are installed, whether fetched or pushed ([`RevocationStore::install`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_tls::revocation::{RevocationState, RevocationStore, SignedRevocations};
use ferry_tls::trust::{client_config, Identity, ServerTrust};

use crate::{tls_files, Node, NodeError, MGMT_URL_FILE};

/// Opens the node's list in `state`.
pub fn open(state: &Path) -> RevocationStore {
    RevocationStore::open(state, &state.join("ca.pem"))
}

/// The management server's base URL (`https://host:port`) recorded at enrollment.
pub fn mgmt_url(state: &Path) -> Option<String> {
    let t = std::fs::read_to_string(state.join(MGMT_URL_FILE)).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// An HTTPS client of the management server with the node's certificate.
pub fn mgmt_client(state: &Path) -> Result<reqwest::Client, NodeError> {
    let (cert, key, ca) = tls_files(state);
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| NodeError::Io(format!("{}: {e}", p.display())))
    };
    let cfg = client_config(
        ServerTrust::Ca {
            ca_pem: read(&ca)?,
            name: ferry_api::MGMT_SERVER_NAME.into(),
        },
        Some(Identity::from_pem(&read(&cert)?, &read(&key)?)?),
    )?;
    Ok(ferry_tls::http_client(cfg)?)
}

/// Sends one request to the management server at `base` and decodes its JSON answer
/// (`what` it is, for errors); a refusal quotes the start of the server's text.
pub(crate) async fn mgmt_call<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    base: &str,
    what: &str,
) -> Result<T, NodeError> {
    let r = req
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| NodeError::Io(format!("cannot reach {base}: {e}")))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(NodeError::Invalid(format!(
            "{base} answered {status}: {}",
            text.chars().take(200).collect::<String>()
        )));
    }
    r.json()
        .await
        .map_err(|e| NodeError::Invalid(format!("{what} from {base}: {e}")))
}

/// Fetches the list once and installs it.
pub async fn fetch(
    node: &Node,
    client: &reqwest::Client,
    base: &str,
) -> Result<RevocationState, NodeError> {
    let l: SignedRevocations = mgmt_call(
        client.get(format!("{base}/v1/agent/revocations")),
        base,
        "revocation list",
    )
    .await?;
    node.revoked
        .install(l)
        .map_err(|e| NodeError::Invalid(format!("revocation list from {base} refused: {e}")))
}

/// Fetches the list at start and every `revocation_every` seconds, until dropped.
pub async fn fetcher(node: Arc<Node>) {
    let from_config = node.live().config.mgmt.clone().map(|m| {
        let m = m.trim().trim_end_matches('/');
        if m.starts_with("https://") {
            m.to_string()
        } else {
            format!("https://{m}")
        }
    });
    let Some(base) = mgmt_url(&node.state_dir).or(from_config) else {
        tracing::info!(
            "no {MGMT_URL_FILE} in the state directory and no `mgmt` in node.toml: \
             the revocation list is not fetched; the kept one (version {}) is enforced",
            node.revoked.state().version
        );
        return;
    };
    let client = match mgmt_client(&node.state_dir) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("revocation list: no client for {base}: {e}");
            return;
        }
    };
    loop {
        // Read at every round: a reload may change it.
        let every = Duration::from_secs(node.live().config.revocation_every.max(1));
        match fetch(&node, &client, &base).await {
            Ok(s) => tracing::debug!("revocation list version {} in force", s.version),
            Err(e) => tracing::warn!(
                "revocation list not fetched: {e}; keeping version {}",
                node.revoked.state().version
            ),
        }
        tokio::time::sleep(every).await;
    }
}
