//! Talking to agents: pairing, plan push, run-now, and collection by cursor; and the
//! revocation push, to agents and storage nodes alike.

use std::sync::Arc;
use std::time::Duration;

use ferry_api::v1::{
    AgentInfo, AgentState, ApiError, CollectReport, EnrollResponse, JobPage, LogPage,
    PairCompleteRequest, PairCsrRequest, PairCsrResponse, PeerRole, PlanPush, PlanSummary,
};
use ferry_tls::pki::Role;
use futures::StreamExt;

use crate::{now, random_hex, Mgmt, MgmtError};

const PAGE: u32 = 500;

fn agent_err(agent: &str, e: impl std::fmt::Display) -> MgmtError {
    MgmtError::Agent {
        agent: agent.to_string(),
        detail: e.to_string(),
    }
}

async fn check(agent: &str, r: reqwest::Response) -> Result<reqwest::Response, MgmtError> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<ApiError>(&text)
        .map(|e| e.error)
        .unwrap_or(text);
    Err(agent_err(agent, format!("{status}: {msg}")))
}

fn url(a: &AgentInfo, path: &str) -> String {
    format!("https://{}{path}", a.address)
}

/// Management-initiated registration: checks the pairing code with the agent at
/// `address`, signs its CSR, and installs the certificate there.
pub async fn pair(m: &Mgmt, address: &str, code: &str) -> Result<AgentInfo, MgmtError> {
    // Before pairing the agent has only a self-signed certificate: the code, which the
    // admin read on its console, is what authenticates it.
    let c = ferry_tls::http_client(ferry_tls::trust::client_config(
        ferry_tls::trust::ServerTrust::Any,
        None,
    )?)?;
    let base = format!("https://{address}");
    let r = c
        .post(format!("{base}/v1/pair/csr"))
        .json(&PairCsrRequest { code: code.into() })
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| agent_err(address, e))?;
    let csr: PairCsrResponse = check(address, r)
        .await?
        .json()
        .await
        .map_err(|e| agent_err(address, e))?;
    let id = random_hex(8);
    let cert_pem = m.ca.sign_csr(&csr.csr_pem, Role::Agent, &id, 825)?;
    let info = AgentInfo {
        id: id.clone(),
        hostname: csr.hello.hostname.clone(),
        address: address.to_string(),
        addresses: csr.hello.addresses.clone(),
        version: csr.hello.version.clone(),
        cert_sha256: ferry_tls::pem_sha256(&cert_pem)?,
        state: AgentState::Active,
        registered_unix: now(),
        last_seen_unix: Some(now()),
        role: csr.hello.role,
    };
    let req = PairCompleteRequest {
        code: code.into(),
        enrolled: EnrollResponse {
            agent_id: id.clone(),
            cert_pem,
            ca_pem: m.ca.cert_pem().to_string(),
            license: m.issue_license(&id)?,
        },
        mgmt_url: m.opts.public_url.clone(),
    };
    let r = c
        .post(format!("{base}/v1/pair/complete"))
        .json(&req)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| agent_err(address, e))?;
    check(address, r).await?;
    m.db.add_agent(&info)?;
    Ok(info)
}

/// Pushes a plan with its credentials.
pub async fn push_plan(m: &Mgmt, a: &AgentInfo, push: &PlanPush) -> Result<PlanSummary, MgmtError> {
    let c = m.agent_client(&a.id)?;
    let r = c
        .put(url(a, &format!("/v1/plans/{}", push.plan.name)))
        .json(push)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| agent_err(&a.id, e))?;
    let s = check(&a.id, r)
        .await?
        .json()
        .await
        .map_err(|e| agent_err(&a.id, e))?;
    m.db.touch_agent(&a.id, now())?;
    Ok(s)
}

/// Starts a plan now; the answer streams the job's progress (NDJSON).
pub async fn run_now(m: &Mgmt, a: &AgentInfo, plan: &str) -> Result<reqwest::Response, MgmtError> {
    let c = m.agent_client(&a.id)?;
    let r = c
        .post(url(a, &format!("/v1/plans/{plan}/run")))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| agent_err(&a.id, e))?;
    let started: ferry_api::v1::JobStarted = check(&a.id, r)
        .await?
        .json()
        .await
        .map_err(|e| agent_err(&a.id, e))?;
    let r = c
        .get(url(a, &format!("/v1/jobs/{}/progress", started.job_id)))
        .send()
        .await
        .map_err(|e| agent_err(&a.id, e))?;
    check(&a.id, r).await
}

/// Pulls new job records and log lines by cursor until the agent has no more.
pub async fn collect(m: &Mgmt, a: &AgentInfo) -> Result<CollectReport, MgmtError> {
    if a.state == AgentState::Revoked {
        return Err(MgmtError::Invalid(format!("agent {} is revoked", a.id)));
    }
    let c = m.agent_client(&a.id)?;
    let mut rep = CollectReport::default();
    loop {
        let (jc, _) = m.db.cursors(&a.id)?;
        let r = c
            .get(url(a, &format!("/v1/jobs?after={jc}&limit={PAGE}")))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| agent_err(&a.id, e))?;
        let page: JobPage = check(&a.id, r)
            .await?
            .json()
            .await
            .map_err(|e| agent_err(&a.id, e))?;
        if page.records.is_empty() {
            break;
        }
        rep.jobs += m.db.add_jobs(&a.id, &page.records, page.next)?;
    }
    loop {
        let (_, lc) = m.db.cursors(&a.id)?;
        let r = c
            .get(url(a, &format!("/v1/events?after={lc}&limit={PAGE}")))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| agent_err(&a.id, e))?;
        let page: LogPage = check(&a.id, r)
            .await?
            .json()
            .await
            .map_err(|e| agent_err(&a.id, e))?;
        if page.entries.is_empty() {
            break;
        }
        rep.logs += m.db.add_logs(&a.id, &page.entries, page.next)?;
    }
    m.db.touch_agent(&a.id, now())?;
    if rep.jobs + rep.logs > 0 {
        tracing::info!(
            "collected {} job records and {} log lines from agent {}",
            rep.jobs,
            rep.logs,
            a.id
        );
    }
    Ok(rep)
}

/// Sends the revocation list to an agent or a storage node (`PUT /v1/revocations` at the
/// address it enrolled with; both accept it from this server's certificate only) unless it
/// has this version already.
pub async fn push_revocations(m: &Mgmt, a: &AgentInfo) -> Result<(), MgmtError> {
    let list = m.revocation_list()?;
    let version = list.verify(m.ca.cert_pem())?.version;
    let done = m
        .revocations_pushed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&a.id)
        .copied();
    if version == 0 || done.is_some_and(|d| d >= version) {
        return Ok(());
    }
    let c = m.agent_client(&a.id)?;
    let r = c
        .put(url(a, "/v1/revocations"))
        .json(&list)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| agent_err(&a.id, e))?;
    check(&a.id, r).await?;
    m.revocations_pushed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(a.id.clone(), version);
    let what = match a.role {
        PeerRole::Node => "storage node",
        PeerRole::Agent => "agent",
    };
    tracing::info!(
        "revocation list version {version} pushed to {what} {}",
        a.id
    );
    Ok(())
}

/// An active agent (not a storage node: nodes take no plans or jobs).
fn is_active_agent(a: &AgentInfo) -> bool {
    a.state == AgentState::Active && a.role == PeerRole::Agent
}

/// An active storage node.
fn is_active_node(a: &AgentInfo) -> bool {
    a.state == AgentState::Active && a.role == PeerRole::Node
}

/// Pushes the revocation list to every active agent and storage node, in the background.
/// Nodes also fetch it every `revocation_every` seconds: the push only makes it take effect
/// at once.
pub fn spawn_push_revocations(m: Arc<Mgmt>) {
    tokio::spawn(async move {
        let agents = match m.db.agents() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("revocation push: {e}");
                return;
            }
        };
        futures::stream::iter(
            agents
                .into_iter()
                .filter(|a| is_active_agent(a) || is_active_node(a)),
        )
        .for_each_concurrent(16, |a| {
            let m = m.clone();
            async move {
                // An agent that is down gets the list when it next says hello; a node at its
                // next fetch, or at the next collect round.
                if let Err(e) = push_revocations(&m, &a).await {
                    tracing::info!("revocation list not pushed to {}: {e}", a.id);
                }
            }
        })
        .await;
    });
}

/// Pushes the revocation list and the plans the agent has not got yet, then collects.
pub async fn sync_agent(m: &Mgmt, id: &str) -> Result<CollectReport, MgmtError> {
    let Some(a) = m.db.agent(id)? else {
        return Err(MgmtError::Invalid(format!("no agent {id}")));
    };
    if a.state == AgentState::Active {
        if let Err(e) = push_revocations(m, &a).await {
            tracing::debug!("revocation list to {id}: {e}");
        }
    }
    for (name, body, updated, pushed) in m.db.plans(id)? {
        if pushed.is_some_and(|p| p >= updated) {
            continue;
        }
        let push: PlanPush =
            serde_json::from_str(&body).map_err(|e| MgmtError::Db(e.to_string()))?;
        push_plan(m, &a, &push).await?;
        m.db.plan_pushed(id, &name, now())?;
    }
    collect(m, &a).await
}

/// Collects from every active agent now and then.
pub async fn collect_loop(m: Arc<Mgmt>) {
    loop {
        tokio::time::sleep(m.opts.collect_every).await;
        let agents = match m.db.agents() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("collect: {e}");
                continue;
            }
        };
        futures::stream::iter(agents.iter().filter(|a| is_active_agent(a)).cloned())
            .for_each_concurrent(16, |a| {
                let m = m.clone();
                async move {
                    if let Err(e) = sync_agent(&m, &a.id).await {
                        tracing::debug!("collect from {}: {e}", a.id);
                    }
                }
            })
            .await;
        // Nodes have nothing to collect; they get a list they missed (a no-op when current).
        futures::stream::iter(agents.into_iter().filter(is_active_node))
            .for_each_concurrent(16, |a| {
                let m = m.clone();
                async move {
                    if let Err(e) = push_revocations(&m, &a).await {
                        tracing::debug!("revocation list to node {}: {e}", a.id);
                    }
                }
            })
            .await;
    }
}
