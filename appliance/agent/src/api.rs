//! API routes: owns what the agent answers on 9876.
//!
//! - `GET /v1/status`: version, uptimes, hostname, addresses, network and
//!   time-sync state, every setting with its source (secrets redacted),
//!   config errors, and the TLS fingerprint. Init's part comes from
//!   `/run/ferry/init.json`.
//! - `GET /v1/logs[?lines=N]`: the log ring (init and agent), as text.
//! - `POST /v1/debug/crash`: aborts the agent so tests can watch init restart
//!   it; only present when the appliance booted with `ferry.debug=1`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// Everything the handlers need.
#[derive(Debug)]
pub struct Ctx {
    pub started: Instant,
    pub start_number: u32,
    pub tls_sha256: String,
    pub run_dir: PathBuf,
    pub debug: bool,
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    let mut r = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/logs", get(logs));
    if ctx.debug {
        r = r.route("/v1/debug/crash", post(crash));
        r = r.route(
            "/v1/debug/storage-check",
            post(crate::storage_check::handler),
        );
    }
    r.with_state(ctx)
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Json<Value> {
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
            "supervisor": pick("agent"),
        },
        "addresses": addresses(),
        "network": pick("network"),
        "time": time,
        "config": pick("config"),
        "config_errors": pick("config_errors"),
        "modules_loaded": pick("modules_loaded"),
        "tls": { "sha256": ctx.tls_sha256 },
    }))
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
