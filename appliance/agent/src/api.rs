//! API routes: owns what the agent answers on 9876 (the table is in `ferry-api`).
//!
//! - `GET /v1/status`: version, uptimes, hostname, addresses, network and
//!   time-sync state, every setting with its source (secrets redacted; before
//!   registration no vCenter setting at all), config errors, the TLS
//!   fingerprint, registration and license state. Init's part comes from
//!   `/run/ferry/init.json`.
//! - `GET /v1/logs[?lines=N]`: the log ring (init and agent), as text.
//! - `POST /v1/pair/csr`, `POST /v1/pair/complete`: pairing (unregistered only;
//!   429 past the per-address attempt limit, see pairing.rs).
//! - plans, jobs, progress, events and license: see `ferry-api`; registered only.
//! - `PUT /v1/revocations` (the management server only): a signed revocation list
//!   ([`ferry_tls::revocation::SignedRevocations`]); `GET /v1/revocations`: the version
//!   held and how many certificates are on it.
//! - `POST /v1/debug/crash`, `POST /v1/debug/storage-check`: test hooks; only
//!   present when the appliance booted with `ferry.debug=1`, and then, like
//!   everything but status and pairing, only after registration.
//!
//! Access: before registration only `GET /v1/status` (nothing secret, no
//! vCenter host or user) and `POST /v1/pair/*` answer; everything else, logs
//! and debug hooks included, is 403. After it, TLS admits only certificates of
//! the management CA, and this gate admits only the management server's and
//! admins' (not other agents'), and none on the revocation list.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use ferry_api::v1::{
    ApiError, JobPage, JobStarted, License, LogPage, PairCompleteRequest, PairCsrRequest, PlanPush,
    ProgressEvent, Trigger,
};
use ferry_api::{parse_body, MAX_BODY};
use ferry_tls::serve::Peer;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::Agent;
use crate::jobs::Follow;
use crate::pairing::Check;

/// Everything the handlers need.
#[derive(Debug)]
pub struct Ctx {
    pub started: Instant,
    pub start_number: u32,
    pub run_dir: PathBuf,
    pub debug: bool,
    pub agent: Arc<Agent>,
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    let mut r = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/logs", get(logs))
        .route("/v1/pair/csr", post(pair_csr))
        .route("/v1/pair/complete", post(pair_complete))
        .route("/v1/plans", get(plans_list))
        .route("/v1/plans/{name}", put(plan_put).delete(plan_delete))
        .route("/v1/plans/{name}/run", post(plan_run))
        .route("/v1/jobs", get(jobs_page))
        .route("/v1/jobs/{id}/progress", get(job_progress))
        .route("/v1/events", get(events_page))
        .route("/v1/license", put(license_put))
        .route("/v1/revocations", get(revocations_get).put(revocations_put));
    if ctx.debug {
        r = r.route("/v1/debug/crash", post(crash));
        r = r.route(
            "/v1/debug/storage-check",
            post(crate::storage_check::handler),
        );
    }
    r.fallback(|| async { fail(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(ctx.clone(), gate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

fn fail(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

async fn gate(
    State(ctx): State<Arc<Ctx>>,
    Extension(peer): Extension<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if ctx.agent.registered() {
        let ok = peer.names.iter().any(|n| {
            n == ferry_api::MGMT_SERVER_NAME
                || (n.starts_with("admin-") && n.ends_with(".ferry.internal"))
        });
        if !ok {
            return fail(
                StatusCode::FORBIDDEN,
                "only the management server and admins may call this agent",
            );
        }
        if let Some(fp) = &peer.cert_sha256 {
            if ctx.agent.revoked.is_revoked(fp) {
                tracing::warn!(
                    "refused a revoked certificate ({}, sha256 {fp}) from {}",
                    peer.names.join(","),
                    peer.addr
                );
                return fail(StatusCode::FORBIDDEN, "this certificate is revoked");
            }
        }
        // Only the management server replaces the list (an admin could otherwise push an
        // older one; the version check refuses that too).
        if path == "/v1/revocations"
            && req.method() == axum::http::Method::PUT
            && !peer.names.iter().any(|n| n == ferry_api::MGMT_SERVER_NAME)
        {
            return fail(
                StatusCode::FORBIDDEN,
                "only the management server sends revocation lists",
            );
        }
    } else {
        // The log ring and the debug hooks are not for anyone who can reach the port.
        let open = path == "/v1/status" || path.starts_with("/v1/pair/");
        if !open {
            return fail(
                StatusCode::FORBIDDEN,
                "this agent is not registered with a management server",
            );
        }
    }
    next.run(req).await
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Json<Value> {
    let reg = ctx
        .agent
        .reg
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let init: Value = std::fs::read(ctx.run_dir.join("init.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let pick = |k: &str| init.get(k).cloned().unwrap_or(Value::Null);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut time = pick("time");
    if let Some(t) = time.as_object_mut() {
        t.insert("now_unix".into(), json!(now));
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": hostname(),
        "uptime_seconds": system_uptime(),
        "agent": {
            "pid": std::process::id(),
            "start": ctx.start_number,
            "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
            "rss_kib": self_status_kib("VmRSS:"),
            "peak_rss_kib": self_status_kib("VmHWM:"),
            "supervisor": pick("agent"),
        },
        "addresses": addresses(),
        "network": pick("network"),
        "time": time,
        "config": if reg.registered { pick("config") } else { public_config(pick("config")) },
        "config_errors": if reg.registered { pick("config_errors") } else { public_errors(pick("config_errors")) },
        "modules_loaded": pick("modules_loaded"),
        "tls": { "sha256": reg.cert_sha256 },
        "registration": reg,
        "license": ctx.agent.license.state(),
        "revocations": ctx.agent.revoked.state(),
        "plans": ctx.agent.plans.list().len(),
    }))
}

/// Setting names shown to anyone before registration: the vCenter ones (host, user,
/// thumbprint, password) are left out, and anything secret-like is redacted even if init
/// did not.
fn public_config(mut config: Value) -> Value {
    if let Some(m) = config.as_object_mut() {
        m.retain(|k, _| !k.starts_with("vcenter"));
        for (k, v) in m.iter_mut() {
            let secret_like = ["token", "password", "secret", "key"]
                .iter()
                .any(|w| k.contains(w));
            if secret_like && !v["value"].is_null() {
                v["value"] = json!("<redacted>");
            }
        }
    }
    config
}

/// Config errors before registration: one about a vCenter setting may quote its value,
/// so it says only which setting.
fn public_errors(mut errors: Value) -> Value {
    if let Some(a) = errors.as_array_mut() {
        for e in a.iter_mut() {
            if let Some(key) = e.as_str().and_then(|t| {
                let i = t.find("ferry.vcenter")?;
                let k: String = t[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                    .collect();
                Some(k)
            }) {
                *e = json!(format!(
                    "{key}: invalid (details are shown after registration)"
                ));
            }
        }
    }
    errors
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    lines: Option<usize>,
}

async fn logs(State(ctx): State<Arc<Ctx>>, Query(q): Query<LogsQuery>) -> impl IntoResponse {
    let mut text = String::new();
    for name in ["log.1", "log"] {
        if let Ok(b) = std::fs::read(ctx.run_dir.join(name)) {
            text.push_str(&String::from_utf8_lossy(&b));
        }
    }
    if let Some(n) = q.lines {
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        text = lines[start..].join("\n");
        text.push('\n');
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text)
}

async fn crash() -> impl IntoResponse {
    tracing::warn!("debug: crash requested over the API; aborting");
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        std::process::abort();
    });
    (StatusCode::ACCEPTED, "aborting\n")
}

/// A `kB` field of `/proc/self/status`.
fn self_status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn system_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The addresses told to the management server (with `FERRY_DEBUG=1`, the lines of
/// `FERRY_ADDRESSES_FILE` when set, so tests can simulate an address change).
pub fn address_list(debug: bool) -> Vec<String> {
    if debug {
        if let Some(f) = std::env::var_os("FERRY_ADDRESSES_FILE") {
            if let Ok(t) = std::fs::read_to_string(f) {
                return t
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
            }
        }
    }
    addresses()
        .iter()
        .filter_map(|a| a["address"].as_str().map(str::to_string))
        .collect()
}

/// Non-loopback IPv4 and IPv6 addresses with prefix lengths.
fn addresses() -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in ifs {
        let Some(addr) = ifa.address else { continue };
        let prefix_v4 = |m: Option<nix::sys::socket::SockaddrStorage>| {
            m.and_then(|m| m.as_sockaddr_in().map(|s| s.ip().to_bits().count_ones()))
        };
        if let Some(sin) = addr.as_sockaddr_in() {
            let ip = sin.ip();
            if ip.is_loopback() {
                continue;
            }
            out.push(json!({
                "interface": ifa.interface_name,
                "address": ip.to_string(),
                "prefix": prefix_v4(ifa.netmask),
            }));
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let ip = sin6.ip();
            if ip.is_loopback() {
                continue;
            }
            let prefix = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|s| s.ip().to_bits().count_ones()));
            out.push(json!({
                "interface": ifa.interface_name,
                "address": ip.to_string(),
                "prefix": prefix,
            }));
        }
    }
    out
}

fn body<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, String> {
    parse_body(b).map_err(|e| e.to_string())
}

/// The answer to a pairing attempt that is refused, if it is.
fn refuse_code(ctx: &Ctx, peer: &Peer, code: &str) -> Option<Response> {
    match ctx.agent.check_pairing_code(peer.addr.ip(), code) {
        Check::Ok => None,
        Check::Wrong => Some(fail(StatusCode::FORBIDDEN, "wrong pairing code")),
        Check::Limited => Some(fail(
            StatusCode::TOO_MANY_REQUESTS,
            "too many pairing attempts from this address; wait a minute",
        )),
    }
}

async fn pair_csr(
    State(ctx): State<Arc<Ctx>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> Response {
    if ctx.agent.registered() {
        return fail(StatusCode::CONFLICT, "already registered");
    }
    let req: PairCsrRequest = match body(&b) {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    if let Some(r) = refuse_code(&ctx, &peer, &req.code) {
        return r;
    }
    match ctx.agent.pair_csr() {
        Ok(r) => Json(r).into_response(),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn pair_complete(
    State(ctx): State<Arc<Ctx>>,
    Extension(peer): Extension<Peer>,
    b: Bytes,
) -> Response {
    if ctx.agent.registered() {
        return fail(StatusCode::CONFLICT, "already registered");
    }
    let req: PairCompleteRequest = match body(&b) {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    if let Some(r) = refuse_code(&ctx, &peer, &req.code) {
        return r;
    }
    match ctx.agent.apply(req.enrolled, req.mgmt_url) {
        Ok(r) => Json(r).into_response(),
        Err(e) => fail(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

async fn plans_list(State(ctx): State<Arc<Ctx>>) -> Response {
    Json(ctx.agent.plans.list()).into_response()
}

/// Who called, for audit lines: an admin by name (a direct connection), or the management
/// server (whose own log names the admin behind the call).
fn caller(p: &Peer) -> String {
    for n in &p.names {
        if n == ferry_api::MGMT_SERVER_NAME {
            return "the management server".into();
        }
        if let Some(a) = n
            .strip_prefix("admin-")
            .and_then(|r| r.strip_suffix(".ferry.internal"))
        {
            return format!("admin {a}");
        }
    }
    format!("{}", p.addr)
}

async fn plan_put(
    State(ctx): State<Arc<Ctx>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    b: Bytes,
) -> Response {
    let push: PlanPush = match body(&b) {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = push.plan.validate() {
        return fail(StatusCode::UNPROCESSABLE_ENTITY, format!("plan {e}"));
    }
    if push.plan.name != name {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("plan name {:?} does not match the path", push.plan.name),
        );
    }
    for c in push.plan.credential_names() {
        if !push.credentials.contains_key(&c) {
            return fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("credentials: the plan names {c:?}, which was not given"),
            );
        }
    }
    match ctx.agent.plans.put(push) {
        Ok(s) => {
            tracing::info!(
                "plan {name} deployed by {} (schedule {:?}, next run {:?})",
                caller(&peer),
                s.plan.schedule,
                s.next_run_unix
            );
            Json(s).into_response()
        }
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn plan_delete(
    State(ctx): State<Arc<Ctx>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Response {
    if ctx.agent.plans.delete(&name) {
        tracing::info!("plan {name} removed by {}", caller(&peer));
        StatusCode::NO_CONTENT.into_response()
    } else {
        fail(StatusCode::NOT_FOUND, format!("no plan {name:?}"))
    }
}

async fn plan_run(
    State(ctx): State<Arc<Ctx>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Response {
    if ctx.agent.plans.get(&name).is_none() {
        return fail(StatusCode::NOT_FOUND, format!("no plan {name:?}"));
    }
    tracing::info!("plan {name} run now by {}", caller(&peer));
    match ctx.agent.start_job(&name, Trigger::Manual, None) {
        Ok(job_id) => Json(JobStarted { job_id }).into_response(),
        Err(e) => fail(StatusCode::CONFLICT, e),
    }
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn jobs_page(State(ctx): State<Arc<Ctx>>, Query(q): Query<PageQuery>) -> Response {
    let after = q.after.unwrap_or(0);
    let records = ctx
        .agent
        .jobs
        .page(after, q.limit.unwrap_or(100).clamp(1, 1000));
    let next = records.last().map(|r| r.seq).unwrap_or(after);
    Json(JobPage { records, next }).into_response()
}

async fn events_page(State(ctx): State<Arc<Ctx>>, Query(q): Query<PageQuery>) -> Response {
    let after = q.after.unwrap_or(0);
    let entries = ctx
        .agent
        .events
        .page(after, q.limit.unwrap_or(500).clamp(1, 5000));
    let next = entries.last().map(|e| e.seq).unwrap_or(after);
    Json(LogPage { entries, next }).into_response()
}

fn line(ev: &ProgressEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

async fn job_progress(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let stream = match ctx.agent.jobs.follow(&id) {
        None => return fail(StatusCode::NOT_FOUND, format!("no job {id:?}")),
        Some(Follow::Done(r)) => Body::from(line(&ProgressEvent::Done(*r))),
        Some(Follow::Running(plan, rx)) => {
            // The job's own `started` event may have gone out before this subscription.
            let first = line(&ProgressEvent::Started {
                job_id: id.clone(),
                plan,
                vms: Vec::new(),
            });
            let head = futures::stream::once(async move { Ok::<_, Infallible>(first) });
            let s = futures::stream::unfold(Some(rx), |rx| async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            let done = matches!(ev, ProgressEvent::Done(_));
                            return Some((
                                Ok::<_, Infallible>(line(&ev)),
                                if done { None } else { Some(rx) },
                            ));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            Body::from_stream(futures::StreamExt::chain(head, s))
        }
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], stream).into_response()
}

async fn revocations_get(State(ctx): State<Arc<Ctx>>) -> Response {
    Json(ctx.agent.revoked.state()).into_response()
}

async fn revocations_put(State(ctx): State<Arc<Ctx>>, b: Bytes) -> Response {
    let l: ferry_tls::revocation::SignedRevocations = match body(&b) {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    match ctx.agent.revoked.install(l) {
        Ok(s) => Json(s).into_response(),
        Err(e) => fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

async fn license_put(State(ctx): State<Arc<Ctx>>, b: Bytes) -> Response {
    let l: License = match body(&b) {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    match ctx.agent.license.install(l) {
        Ok(s) => {
            tracing::info!("license installed");
            Json(s).into_response()
        }
        Err(e) => fail(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}
