//! The HTTPS API (see `ferry-api` for the table of endpoints).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use ferry_api::v1::{
    AgentHello, AgentInfo, AgentState, ApiError, EnrollRequest, EnrollResponse, HelloResponse,
    PairRequest, PlanPush, PlanSummary, RenewRequest, RenewResponse, TokenCreate,
};
use ferry_api::{parse_body, MAX_BODY};
use ferry_tls::pki::Role;
use ferry_tls::serve::Peer;
use serde::Deserialize;

use crate::db::TokenCheck;
use crate::wire::{AdminCreate, AdminCreated, AdminInfo, Paired};
use crate::{agents, now, random_hex, sha256_str, Mgmt, MgmtError};

/// An error answer.
#[derive(Debug)]
pub struct Fail(pub StatusCode, pub String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<MgmtError> for Fail {
    fn from(e: MgmtError) -> Self {
        let code = match &e {
            MgmtError::Invalid(_) => StatusCode::BAD_REQUEST,
            MgmtError::Secrets(_) => StatusCode::SERVICE_UNAVAILABLE,
            MgmtError::Agent { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Fail(code, e.to_string())
    }
}

type R<T> = Result<Json<T>, Fail>;

fn body<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, Fail> {
    parse_body(b).map_err(|e| Fail(StatusCode::BAD_REQUEST, e.to_string()))
}

/// The routes.
pub fn router(m: Arc<Mgmt>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/agent/hello", post(hello))
        .route("/v1/agent/license", get(agent_license))
        .route("/v1/agent/renew", post(agent_renew))
        .route("/v1/agent/revocations", get(agent_revocations))
        .route("/v1/admins", get(admins_list).post(admin_create))
        .route("/v1/admins/{name}/revoke", post(admin_revoke))
        .route("/v1/tokens", post(token_create))
        .route("/v1/agents", get(agents_list))
        .route("/v1/agents/pair", post(pair))
        .route("/v1/agents/{id}/revoke", post(revoke))
        .route("/v1/agents/{id}/plans", get(plans_list))
        .route("/v1/agents/{id}/plans/{name}", put(plan_put))
        .route("/v1/agents/{id}/plans/{name}/run", post(run_now))
        .route("/v1/agents/{id}/collect", post(collect_now))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{agent}/{id}", get(job))
        .route("/v1/logs", get(logs))
        .route("/v1/catalog", get(catalog))
        .fallback(|| async { Fail(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(m)
}

fn admin(m: &Mgmt, p: &Peer) -> Result<String, Fail> {
    let Some(fp) = &p.cert_sha256 else {
        return Err(Fail(
            StatusCode::UNAUTHORIZED,
            "an admin client certificate is required".into(),
        ));
    };
    m.db.admin_by_cert(fp)?
        .ok_or_else(|| Fail(StatusCode::FORBIDDEN, "not an admin certificate".into()))
}

fn agent(m: &Mgmt, p: &Peer) -> Result<AgentInfo, Fail> {
    let Some(fp) = &p.cert_sha256 else {
        return Err(Fail(
            StatusCode::UNAUTHORIZED,
            "an agent certificate is required".into(),
        ));
    };
    let a =
        m.db.agent_by_cert(fp)?
            .ok_or_else(|| Fail(StatusCode::FORBIDDEN, "unknown agent certificate".into()))?;
    if a.state == AgentState::Revoked {
        tracing::warn!("refused revoked agent {} from {}", a.id, p.addr);
        return Err(Fail(
            StatusCode::FORBIDDEN,
            format!("agent {} is revoked", a.id),
        ));
    }
    Ok(a)
}

/// Where to reach an agent: what it advertises; else the address it connected from, when it
/// reports it (a multi-homed agent is reachable on the network that reached us); else its
/// first address (behind NAT the peer address is the router's); else the peer.
pub fn agent_address(h: &AgentHello, peer: &Peer) -> String {
    if let Some(a) = &h.advertise {
        return a.clone();
    }
    let reported: Vec<std::net::IpAddr> = h
        .addresses
        .iter()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    let from = peer.addr.ip();
    let ip = if reported.contains(&from) {
        from
    } else {
        reported.first().copied().unwrap_or(from)
    };
    std::net::SocketAddr::new(ip, h.port).to_string()
}

async fn enroll(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> R<EnrollResponse> {
    let req: EnrollRequest = body(&b)?;
    let mut parts = req.token.trim().split('.');
    let (Some(tid), Some(secret)) = (parts.next(), parts.next()) else {
        return Err(Fail(
            StatusCode::FORBIDDEN,
            "enrollment token refused: malformed".into(),
        ));
    };
    let id = random_hex(8);
    // Check the CSR before spending the token.
    let cert_pem =
        m.ca.sign_csr(&req.csr_pem, Role::Agent, &id, agents::CERT_DAYS)
            .map_err(|e| Fail(StatusCode::BAD_REQUEST, e.to_string()))?;
    match m.db.redeem_token(tid, &sha256_str(secret), now(), &id)? {
        TokenCheck::Ok => {}
        other => {
            let why = match other {
                TokenCheck::Spent => "already used",
                TokenCheck::Expired => "expired",
                _ => "unknown",
            };
            tracing::warn!(
                "refused enrollment from {} ({}): token {tid} {why}",
                peer.addr,
                req.hello.hostname
            );
            return Err(Fail(
                StatusCode::FORBIDDEN,
                format!("enrollment token refused: {why}"),
            ));
        }
    }
    let info = AgentInfo {
        id: id.clone(),
        hostname: req.hello.hostname.clone(),
        address: agent_address(&req.hello, &peer),
        addresses: req.hello.addresses.clone(),
        version: req.hello.version.clone(),
        cert_sha256: ferry_tls::pem_sha256(&cert_pem).map_err(MgmtError::from)?,
        state: AgentState::Active,
        registered_unix: now(),
        last_seen_unix: Some(now()),
        role: req.hello.role,
    };
    m.db.add_agent(&info)?;
    tracing::info!(
        "agent {id} ({}) registered with token {tid}, reachable at {}",
        info.hostname,
        info.address
    );
    Ok(Json(EnrollResponse {
        agent_id: id.clone(),
        cert_pem,
        ca_pem: m.ca.cert_pem().to_string(),
        license: m.issue_license(&id)?,
    }))
}

async fn hello(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> R<HelloResponse> {
    let a = agent(&m, &peer)?;
    let h: AgentHello = body(&b)?;
    let address = agent_address(&h, &peer);
    if address != a.address {
        tracing::info!("agent {} moved from {} to {address}", a.id, a.address);
    }
    m.db.agent_hello(&a.id, &h, &address, now())?;
    agents::spawn_sync(&m, &a.id, "after hello");
    Ok(Json(HelloResponse {
        agent_id: a.id,
        address,
    }))
}

async fn agent_license(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
) -> R<ferry_api::v1::License> {
    let a = agent(&m, &peer)?;
    m.issue_license(&a.id)?
        .map(Json)
        .ok_or_else(|| Fail(StatusCode::NOT_FOUND, "the license service is off".into()))
}

/// Least time between two renewals of one agent's certificate: renewal is due after
/// 550 days, so this only stops a caller from filling the registry with certificates.
const RENEW_MIN_INTERVAL_SECS: i64 = 3600;

/// Renews the caller's certificate: an active agent or node, known by the certificate it
/// connected with, gets a new one for the same id and role, for the key of its CSR.
async fn agent_renew(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> R<RenewResponse> {
    let a = agent(&m, &peer)?;
    let req: RenewRequest = body(&b)?;
    let t = now();
    if let Some(last) = m.db.last_renewal(&a.id)? {
        if t - last < RENEW_MIN_INTERVAL_SECS {
            return Err(Fail(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the certificate of {} was renewed {}s ago; try again later",
                    a.id,
                    t - last
                ),
            ));
        }
    }
    let cert_pem =
        m.ca.sign_csr(&req.csr_pem, Role::Agent, &a.id, agents::CERT_DAYS)
            .map_err(|e| Fail(StatusCode::BAD_REQUEST, e.to_string()))?;
    let sha = ferry_tls::pem_sha256(&cert_pem).map_err(MgmtError::from)?;
    m.db.add_renewed_cert(&a.id, &sha, t)?;
    tracing::info!(
        "renewed the certificate of {} {} (sha256 {sha}, was {})",
        a.role.as_str(),
        a.id,
        peer.cert_sha256.as_deref().unwrap_or("")
    );
    Ok(Json(RenewResponse {
        cert_pem,
        ca_pem: m.ca.cert_pem().to_string(),
    }))
}

async fn agent_revocations(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
) -> R<ferry_tls::revocation::SignedRevocations> {
    agent(&m, &peer)?;
    Ok(Json(m.revocation_list()?))
}

async fn admins_list(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
) -> R<Vec<AdminInfo>> {
    admin(&m, &peer)?;
    Ok(Json(m.db.admins()?))
}

async fn admin_create(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> R<AdminCreated> {
    let who = admin(&m, &peer)?;
    let req: AdminCreate = body(&b)?;
    let c = m.create_admin(&req.name, &req.csr_pem)?;
    tracing::info!(
        "audit: admin {who} added admin {} (cert sha256 {})",
        c.admin.name,
        c.admin.cert_sha256
    );
    Ok(Json(c))
}

async fn admin_revoke(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> R<AdminInfo> {
    let who = admin(&m, &peer)?;
    let a = m.revoke_admin(&name)?;
    tracing::warn!(
        "audit: admin {who} revoked admin {name} (cert sha256 {})",
        a.cert_sha256
    );
    agents::spawn_push_revocations(m.clone());
    Ok(Json(a))
}

async fn token_create(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> R<ferry_api::v1::TokenCreated> {
    let who = admin(&m, &peer)?;
    let t: TokenCreate = body(&b)?;
    if t.ttl_seconds == 0 || t.ttl_seconds > 30 * 86400 {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            "ttl_seconds: 1 second to 30 days".into(),
        ));
    }
    let tok = m.create_token(
        std::time::Duration::from_secs(t.ttl_seconds),
        t.note.as_deref(),
    )?;
    tracing::info!(
        "audit: admin {who} created enrollment token {} (expires {})",
        tok.id,
        tok.expires_unix
    );
    Ok(Json(tok))
}

async fn agents_list(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
) -> R<Vec<AgentInfo>> {
    admin(&m, &peer)?;
    Ok(Json(m.db.agents()?))
}

async fn pair(State(m): State<Arc<Mgmt>>, Extension(peer): Extension<Peer>, b: Bytes) -> R<Paired> {
    let who = admin(&m, &peer)?;
    let req: PairRequest = body(&b)?;
    let (a, leaf) = agents::pair(&m, &req.address, &req.code).await?;
    tracing::info!(
        "audit: admin {who} paired agent {} at {} (appliance certificate sha256 {leaf})",
        a.id,
        a.address
    );
    Ok(Json(Paired {
        agent: a,
        appliance_cert_sha256: leaf,
    }))
}

fn known_agent(m: &Mgmt, id: &str) -> Result<AgentInfo, Fail> {
    m.db.agent(id)?
        .ok_or_else(|| Fail(StatusCode::NOT_FOUND, format!("no agent {id}")))
}

async fn revoke(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> R<AgentInfo> {
    let who = admin(&m, &peer)?;
    let a = known_agent(&m, &id)?;
    m.db.set_agent_state(&id, AgentState::Revoked)?;
    // Every certificate it was issued: a renewed agent may still hold the earlier ones.
    for sha in m.db.agent_cert_shas(&a.id)? {
        m.db.revoke_cert(&sha, "agent", &id, now())?;
    }
    tracing::warn!("audit: admin {who} revoked agent {id}");
    agents::spawn_push_revocations(m.clone());
    Ok(Json(known_agent(&m, &id)?))
}

async fn plans_list(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> R<Vec<PlanSummary>> {
    admin(&m, &peer)?;
    known_agent(&m, &id)?;
    let mut out = Vec::new();
    for (_, b, updated, _) in m.db.plans(&id)? {
        let p: PlanPush = serde_json::from_str(&b).map_err(|e| MgmtError::Db(e.to_string()))?;
        out.push(PlanSummary {
            credentials: p.credentials.keys().cloned().collect(),
            plan: p.plan,
            updated_unix: updated,
            next_run_unix: None,
            last_run_unix: None,
        });
    }
    Ok(Json(out))
}

async fn plan_put(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Path((id, name)): Path<(String, String)>,
    b: Bytes,
) -> R<PlanSummary> {
    let who = admin(&m, &peer)?;
    let push: PlanPush = body(&b)?;
    check_push(&push, &name)?;
    let a = known_agent(&m, &id)?;
    if a.state == AgentState::Revoked {
        return Err(Fail(StatusCode::CONFLICT, format!("agent {id} is revoked")));
    }
    let text = serde_json::to_string(&push).map_err(|e| MgmtError::Db(e.to_string()))?;
    m.db.put_plan(&id, &name, &text, now())?;
    let s = agents::push_plan(&m, &a, &push).await?;
    m.db.plan_pushed(&id, &name, now())?;
    tracing::info!(
        "audit: admin {who} deployed plan {name} to agent {id} (credentials {})",
        push.credentials
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(Json(s))
}

/// Checks a plan push: valid plan, name matches, every credential present.
pub fn check_push(push: &PlanPush, name: &str) -> Result<(), Fail> {
    push.plan
        .validate()
        .map_err(|e| Fail(StatusCode::UNPROCESSABLE_ENTITY, format!("plan {e}")))?;
    if push.plan.name != name {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            format!(
                "plan name {:?} does not match the path {name:?}",
                push.plan.name
            ),
        ));
    }
    for c in push.plan.credential_names() {
        if !push.credentials.contains_key(&c) {
            return Err(Fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("credentials: the plan names {c:?}, which was not given"),
            ));
        }
    }
    Ok(())
}

async fn run_now(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, Fail> {
    let who = admin(&m, &peer)?;
    let a = known_agent(&m, &id)?;
    if a.state == AgentState::Revoked {
        return Err(Fail(StatusCode::CONFLICT, format!("agent {id} is revoked")));
    }
    tracing::info!("audit: admin {who} runs plan {name} now on agent {id}");
    let resp = agents::run_now(&m, &a, &name).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(resp.bytes_stream()),
    )
        .into_response())
}

async fn collect_now(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> R<ferry_api::v1::CollectReport> {
    admin(&m, &peer)?;
    let a = known_agent(&m, &id)?;
    // Waits for a sync that is running (rounds are bounded), rather than racing it.
    let _guard = m.sync_lock(&id).lock_owned().await;
    Ok(Json(agents::collect(&m, &a).await?))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    agent: Option<String>,
    after: Option<u64>,
    limit: Option<u32>,
}

async fn jobs(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<ListQuery>,
) -> R<Vec<ferry_api::v1::CollectedJob>> {
    admin(&m, &peer)?;
    Ok(Json(m.db.jobs(
        q.agent.as_deref(),
        q.limit.unwrap_or(100).min(10_000),
    )?))
}

async fn job(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Path((agent, id)): Path<(String, String)>,
) -> R<ferry_api::v1::CollectedJob> {
    admin(&m, &peer)?;
    m.db.job(&agent, &id)?.map(Json).ok_or_else(|| {
        Fail(
            StatusCode::NOT_FOUND,
            format!("no job {id} of agent {agent}"),
        )
    })
}

async fn logs(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<ListQuery>,
) -> R<Vec<ferry_api::v1::CollectedLog>> {
    admin(&m, &peer)?;
    Ok(Json(m.db.logs(
        q.agent.as_deref(),
        q.after.unwrap_or(0),
        q.limit.unwrap_or(1000).min(100_000),
    )?))
}

#[derive(Debug, Deserialize)]
struct CatalogQuery {
    node: Option<String>,
    group: Option<String>,
}

async fn catalog(
    State(m): State<Arc<Mgmt>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<CatalogQuery>,
) -> R<ferry_api::v1::Catalog> {
    admin(&m, &peer)?;
    Ok(Json(
        crate::catalog::catalog(&m, q.node.as_deref(), q.group.as_deref()).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(addresses: &[&str], advertise: Option<&str>) -> AgentHello {
        serde_json::from_value(serde_json::json!({
            "hostname": "a",
            "version": "0",
            "addresses": addresses,
            "port": 9876,
            "advertise": advertise,
        }))
        .unwrap()
    }

    fn peer(ip: &str) -> Peer {
        Peer {
            addr: format!("{ip}:50000").parse().unwrap(),
            cert_sha256: None,
            names: Vec::new(),
        }
    }

    #[test]
    fn agent_address_prefers_the_network_that_reached_us() {
        let multi = hello(&["192.168.1.5/24", "10.1.2.3/16"], None);
        assert_eq!(agent_address(&multi, &peer("10.1.2.3")), "10.1.2.3:9876");
        // NAT: the peer is not one of the agent's own addresses.
        assert_eq!(
            agent_address(&multi, &peer("127.0.0.1")),
            "192.168.1.5:9876"
        );
        assert_eq!(
            agent_address(&hello(&[], None), &peer("10.9.9.9")),
            "10.9.9.9:9876"
        );
        let adv = hello(&["10.1.2.3/16"], Some("backup.example:443"));
        assert_eq!(agent_address(&adv, &peer("10.1.2.3")), "backup.example:443");
    }
}
