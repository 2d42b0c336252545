//! The central catalog: every active storage node's `GET /v1/catalog`, asked in parallel
//! with the server's own certificate, merged and tagged with the node.

use std::time::Duration;

use ferry_api::node::CatalogEntry;
use ferry_api::v1::{AgentInfo, AgentState, Catalog, CatalogNodeError, CatalogPoint, PeerRole};
use futures::StreamExt;

use crate::{now, Mgmt, MgmtError};

/// How long one node may take to answer; a slower node is reported, not waited for.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

async fn node_catalog(m: &Mgmt, n: &AgentInfo) -> Result<Vec<CatalogEntry>, MgmtError> {
    let err = |e: &dyn std::fmt::Display| MgmtError::Agent {
        agent: n.id.clone(),
        detail: e.to_string(),
    };
    let c = m.agent_client(&n.id)?;
    let r = c
        .get(format!("https://{}/v1/catalog", n.address))
        .timeout(NODE_TIMEOUT)
        .send()
        .await
        .map_err(|e| err(&e))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ferry_api::v1::ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        return Err(err(&format!("{status}: {msg}")));
    }
    let body = r.bytes().await.map_err(|e| err(&e))?;
    serde_json::from_slice(&body).map_err(|e| err(&format!("catalog answer: {e}")))
}

/// The catalog of every active node (or only `node`), optionally one group (VM) only.
/// A node that fails goes in `errors`; the others are still listed.
pub async fn catalog(
    m: &Mgmt,
    node: Option<&str>,
    group: Option<&str>,
) -> Result<Catalog, MgmtError> {
    let nodes: Vec<AgentInfo> =
        m.db.agents()?
            .into_iter()
            .filter(|a| a.role == PeerRole::Node && a.state == AgentState::Active)
            .filter(|a| node.is_none_or(|n| n == a.id))
            .collect();
    let answers: Vec<(AgentInfo, Result<Vec<CatalogEntry>, MgmtError>)> =
        futures::stream::iter(nodes)
            .map(|n| async move {
                let r = node_catalog(m, &n).await;
                (n, r)
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut out = Catalog::default();
    for (n, r) in answers {
        match r {
            Ok(entries) => {
                if let Err(e) = m.db.touch_agent(&n.id, now()) {
                    tracing::debug!("last seen of node {}: {e}", n.id);
                }
                out.points.extend(
                    entries
                        .into_iter()
                        .filter(|e| group.is_none_or(|g| g == e.group))
                        .map(|entry| CatalogPoint {
                            node_id: n.id.clone(),
                            node_hostname: n.hostname.clone(),
                            entry,
                        }),
                );
            }
            Err(e) => {
                tracing::info!("catalog of node {} ({}): {e}", n.id, n.address);
                out.errors.push(CatalogNodeError {
                    node_id: n.id.clone(),
                    node_hostname: n.hostname.clone(),
                    address: n.address.clone(),
                    error: e.to_string(),
                });
            }
        }
    }
    out.points.sort_by(|a, b| {
        (
            &a.node_id,
            &a.entry.vault,
            &a.entry.group,
            a.entry.created,
            &a.entry.id,
        )
            .cmp(&(
                &b.node_id,
                &b.entry.vault,
                &b.entry.group,
                b.entry.created,
                &b.entry.id,
            ))
    });
    out.errors.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}
