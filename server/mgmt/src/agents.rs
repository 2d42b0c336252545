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

/// Lifetime of agent and node certificates; they renew at two thirds of it.
pub const CERT_DAYS: u32 = 825;

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

/// Records the leaf certificate the agent presents on the first pairing call. Before
/// pairing the agent has only a self-signed certificate, so any certificate is accepted
/// here (the code authenticates the agent); what the pin adds is that the second call, and
/// the key that gets signed, belong to the same TLS endpoint.
#[derive(Debug, Default)]
struct CaptureLeaf(Arc<std::sync::Mutex<Option<Vec<u8>>>>);

impl ferry_certcheck::CertCheck for CaptureLeaf {
    fn check(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_deref() {
            // One client, one request: a second, different certificate is refused too.
            Some(seen) if seen != end_entity.as_ref() => Err(rustls::Error::General(
                "the agent changed its certificate during pairing".into(),
            )),
            Some(_) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            None => {
                *slot = Some(end_entity.as_ref().to_vec());
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
        }
    }
}

/// A client that accepts any server certificate and records the first one.
fn capturing_client() -> Result<(reqwest::Client, CaptureLeaf), MgmtError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = CaptureLeaf::default();
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| MgmtError::Tls(ferry_tls::TlsError::Config(e.to_string())))?
        .dangerous()
        .with_custom_certificate_verifier(ferry_certcheck::Verifier::new(
            CaptureLeaf(seen.0.clone()),
            provider,
        ))
        .with_no_client_auth();
    Ok((ferry_tls::http_client(cfg)?, seen))
}

/// Checks that `csr_pem` asks for the key of the certificate `cert_der`: the key the agent
/// proved it holds in the TLS handshake is the one that gets signed.
pub fn csr_matches_cert(csr_pem: &str, cert_der: &[u8]) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| format!("the CSR is not PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(format!(
            "the CSR is a {:?}, not a CERTIFICATE REQUEST",
            pem.label
        ));
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| format!("the CSR does not parse: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("the agent's TLS certificate does not parse: {e}"))?;
    if csr.certification_request_info.subject_pki.raw != cert.tbs_certificate.subject_pki.raw {
        return Err("the CSR is for another key than the agent's TLS certificate".into());
    }
    Ok(())
}

/// Management-initiated registration: checks the pairing code with the agent at
/// `address`, signs its CSR, and installs the certificate there. Returns the registry
/// entry and the SHA-256 of the certificate the appliance presented (the console shows
/// the same figure, for the admin to compare).
pub async fn pair(m: &Mgmt, address: &str, code: &str) -> Result<(AgentInfo, String), MgmtError> {
    // Before pairing the agent has only a self-signed certificate: the code, which the
    // admin read on its console, is what authenticates it. The certificate seen on the
    // first call is then pinned for the second, and its key is the one that is signed.
    let (c, seen) = capturing_client()?;
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
    let leaf = seen
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| agent_err(address, "no TLS certificate was seen"))?;
    let leaf_sha256 = ferry_tls::sha256_hex(&leaf);
    csr_matches_cert(&csr.csr_pem, &leaf).map_err(|e| {
        tracing::warn!("pairing with {address} refused: {e}");
        agent_err(address, format!("pairing refused: {e}"))
    })?;
    let id = random_hex(8);
    let cert_pem = m.ca.sign_csr(&csr.csr_pem, Role::Agent, &id, CERT_DAYS)?;
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
    // A new connection, which must reach the very certificate the CSR came from.
    let pinned = ferry_tls::http_client(ferry_tls::trust::client_config(
        ferry_tls::trust::ServerTrust::CertPin(leaf_sha256.clone()),
        None,
    )?)?;
    let r = pinned
        .post(format!("{base}/v1/pair/complete"))
        .json(&req)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| agent_err(address, e))?;
    check(address, r).await?;
    m.db.add_agent(&info)?;
    Ok((info, leaf_sha256))
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

/// Largest answer body read for one page: a page of `PAGE` records is far smaller.
const MAX_PAGE_BYTES: usize = 8 << 20;
/// Pages of each kind (jobs, logs) read in one round; the rest waits for the next round.
const MAX_ROUND_PAGES: u32 = 64;
/// Bytes read from one agent in one round.
const MAX_ROUND_BYTES: usize = 64 << 20;
/// A whole round, however slowly the agent answers.
const ROUND_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads an answer body of at most `cap` bytes, refusing a longer one before reading
/// past the cap (a compromised agent must not make this server buffer without bound).
async fn read_capped(agent: &str, r: reqwest::Response, cap: usize) -> Result<Vec<u8>, MgmtError> {
    let too_big = || agent_err(agent, format!("answer larger than {cap} bytes refused"));
    if r.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| agent_err(agent, e))?;
        if body.len() + chunk.len() > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks that a page moves the cursor forward: at most `PAGE` records, sequence numbers
/// strictly increasing after `cursor`, and `next` past the cursor and not before the last
/// record. Anything else would make the collector loop or go backwards.
pub fn check_page(cursor: u64, seqs: &[u64], next: u64) -> Result<(), String> {
    if seqs.len() > PAGE as usize {
        return Err(format!(
            "page of {} records refused (asked for at most {PAGE})",
            seqs.len()
        ));
    }
    let mut last = cursor;
    for &s in seqs {
        if s <= last {
            return Err(format!(
                "record {s} is not after {last}: the cursor does not advance"
            ));
        }
        last = s;
    }
    if next <= cursor || next < last {
        return Err(format!(
            "next cursor {next} does not advance past {cursor} (last record {last})"
        ));
    }
    Ok(())
}

/// One page from an agent, read with the page cap and counted against the round's bytes.
async fn fetch_page<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    a: &AgentInfo,
    path: &str,
    round_bytes: &mut usize,
) -> Result<T, MgmtError> {
    let r = c
        .get(url(a, path))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| agent_err(&a.id, e))?;
    let r = check(&a.id, r).await?;
    let cap = MAX_PAGE_BYTES.min(MAX_ROUND_BYTES.saturating_sub(*round_bytes));
    let body = read_capped(&a.id, r, cap).await?;
    *round_bytes += body.len();
    serde_json::from_slice(&body).map_err(|e| agent_err(&a.id, e))
}

/// Pulls new job records and log lines by cursor until the agent has no more, or the
/// round's page or byte budget is spent (the next round goes on from the cursor). A page
/// that does not advance the cursor, or is larger than asked, ends the round with an error.
pub async fn collect(m: &Mgmt, a: &AgentInfo) -> Result<CollectReport, MgmtError> {
    if a.state == AgentState::Revoked {
        return Err(MgmtError::Invalid(format!("agent {} is revoked", a.id)));
    }
    let round = tokio::time::timeout(ROUND_TIMEOUT, collect_round(m, a)).await;
    let rep = match round {
        Ok(r) => r.inspect_err(|e| tracing::warn!("collection from {} stopped: {e}", a.id))?,
        Err(_) => {
            let e = agent_err(&a.id, "collection round took too long");
            tracing::warn!("{e}");
            return Err(e);
        }
    };
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

async fn collect_round(m: &Mgmt, a: &AgentInfo) -> Result<CollectReport, MgmtError> {
    let c = m.agent_client(&a.id)?;
    let mut rep = CollectReport::default();
    let mut bytes = 0usize;
    for _ in 0..MAX_ROUND_PAGES {
        let (jc, _) = m.db.cursors(&a.id)?;
        let page: JobPage = fetch_page(
            &c,
            a,
            &format!("/v1/jobs?after={jc}&limit={PAGE}"),
            &mut bytes,
        )
        .await?;
        if page.records.is_empty() {
            break;
        }
        let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
        check_page(jc, &seqs, page.next).map_err(|e| agent_err(&a.id, e))?;
        rep.jobs += m.db.add_jobs(&a.id, &page.records, page.next)?;
    }
    for _ in 0..MAX_ROUND_PAGES {
        let (_, lc) = m.db.cursors(&a.id)?;
        let page: LogPage = fetch_page(
            &c,
            a,
            &format!("/v1/events?after={lc}&limit={PAGE}"),
            &mut bytes,
        )
        .await?;
        if page.entries.is_empty() {
            break;
        }
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        check_page(lc, &seqs, page.next).map_err(|e| agent_err(&a.id, e))?;
        rep.logs += m.db.add_logs(&a.id, &page.entries, page.next)?;
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

/// Starts [`sync_agent`] in the background unless one is already running for this agent
/// (each hello asks for one: a flood of hellos must not pile up tasks). Returns whether
/// it started one.
pub fn spawn_sync(m: &Arc<Mgmt>, id: &str, why: &'static str) -> bool {
    let Ok(guard) = m.sync_lock(id).try_lock_owned() else {
        tracing::debug!("sync {why} of {id}: one is running already");
        return false;
    };
    let (m, id) = (m.clone(), id.to_string());
    tokio::spawn(async move {
        if let Err(e) = sync_agent(&m, &id).await {
            tracing::debug!("sync {why} of {id}: {e}");
        }
        drop(guard);
    });
    true
}

/// Pushes the revocation list and the plans the agent has not got yet, then collects.
/// Callers hold the agent's [`Mgmt::sync_lock`].
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
                    // An agent whose sync (after a hello) is still running is skipped.
                    let Ok(_guard) = m.sync_lock(&a.id).try_lock_owned() else {
                        return;
                    };
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

#[cfg(test)]
mod tests {
    use super::check_page;

    #[test]
    fn pages_must_move_the_cursor_forward() {
        assert!(check_page(0, &[1, 2, 3], 3).is_ok());
        assert!(check_page(10, &[11], 11).is_ok());
        // Same record again, a cursor that does not move, going back, out of order.
        assert!(check_page(5, &[5], 5).is_err());
        assert!(check_page(5, &[6], 5).is_err());
        assert!(check_page(5, &[6, 7], 6).is_err());
        assert!(check_page(5, &[7, 6], 7).is_err());
        assert!(check_page(5, &[3], 9).is_err());
        // More records than asked.
        let many: Vec<u64> = (1..=501).collect();
        assert!(check_page(0, &many, 501).is_err());
    }
}
