//! ferry-agent: the appliance's API on TCP 9876 (TLS 1.3 only), registration with a
//! management server, the plan store and scheduler, the job runner, job records and the
//! persistent event log.
//!
//! It is started and restarted by ferry-init, which passes its settings in the
//! environment and captures its output into the console and log ring; so it logs plain
//! lines to stderr. Everything it keeps is in the state directory, so a restart or a
//! reboot forgets nothing.
//!
//! Environment: `FERRY_STATE_DIR`, `FERRY_RUN_DIR`, `FERRY_LOG`, `FERRY_DEBUG`,
//! `FERRY_AGENT_START` (from init); `FERRY_LISTEN` (default `0.0.0.0:9876`);
//! `FERRY_MGMT` and `FERRY_TOKEN` (agent-initiated registration); `FERRY_ADVERTISE`
//! (`host:port` the management server should use; by default the listen address when
//! that is one address, not `0.0.0.0` or `::`); `FERRY_ADDR_POLL` (seconds between
//! address checks, default 10); `FERRY_HELLO_EVERY` (seconds between hellos when nothing
//! changed, default 300); `FERRY_LICENSE`, `FERRY_LICENSE_ISSUER` (license.rs);
//! `FERRY_CONSOLE` and `FERRY_PAIRING_TTL` (tests only; pairing.rs).

mod agent;
mod api;
mod events;
mod identity;
mod jobs;
mod license;
mod pairing;
mod plans;
mod registration;
mod renew;
mod revocation;
mod storage_check;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use ferry_api::v1::Registration;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const LISTEN: &str = "0.0.0.0:9876";

fn main() -> anyhow::Result<()> {
    let state_dir =
        PathBuf::from(std::env::var("FERRY_STATE_DIR").unwrap_or_else(|_| "/var/lib/ferry".into()));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let events = events::EventLog::open(&state_dir);
    let level = std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(level))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_writer(std::io::stderr),
        )
        .with(events::EventLayer(events.clone()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run(state_dir, events))
}

async fn run(state_dir: PathBuf, events: Arc<events::EventLog>) -> anyhow::Result<()> {
    let started = Instant::now();
    let run_dir =
        PathBuf::from(std::env::var("FERRY_RUN_DIR").unwrap_or_else(|_| "/run/ferry".into()));
    let start_number = std::env::var("FERRY_AGENT_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let debug = std::env::var("FERRY_DEBUG").is_ok_and(|v| v == "1");
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;

    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "ferry".into());
    let id = identity::load_or_create(&state_dir, &hostname).context("TLS identity")?;
    if id.created {
        tracing::info!("created a self-signed TLS identity, sha256 {}", id.sha256);
    }
    let addr: SocketAddr = env("FERRY_LISTEN")
        .unwrap_or_else(|| LISTEN.into())
        .parse()
        .context("FERRY_LISTEN")?;
    let saved = registration::load(&state_dir);
    let reg = match &saved {
        Some((s, _)) => Registration {
            registered: true,
            agent_id: Some(s.agent_id.clone()),
            mgmt_url: s.mgmt_url.clone(),
            mgmt_ca_sha256: Some(s.ca_sha256.clone()),
            cert_sha256: id.sha256.clone(),
            pairing: false,
            last_error: None,
        },
        None => Registration {
            cert_sha256: id.sha256.clone(),
            ..Registration::default()
        },
    };
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(registration::server_tls(&state_dir)?);
    let pairing = pairing::Pairing::from_env(addr.port(), identity::paths(&state_dir).1);
    let agent = Arc::new(agent::Agent {
        plans: plans::PlanStore::open(&state_dir),
        jobs: jobs::JobStore::open(&state_dir),
        license: license::LicenseStore::open(&state_dir),
        revoked: revocation::open(&state_dir),
        state_dir,
        hostname,
        port: addr.port(),
        // Bound to one address, the agent answers on no other: the server must use it.
        advertise: env("FERRY_ADVERTISE")
            .or_else(|| (!addr.ip().is_unspecified()).then(|| addr.to_string())),
        debug,
        events,
        reg: Mutex::new(reg),
        pairing,
        tls_tx,
        hello_now: tokio::sync::Notify::new(),
    });
    let ctx = Arc::new(api::Ctx {
        started,
        start_number,
        run_dir,
        debug,
        agent: agent.clone(),
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let hooks = if debug { ", debug hooks on" } else { "" };
    match &saved {
        Some((s, _)) => tracing::info!(
            "agent ready: listening on {addr} (TLS 1.3, client certificates of management CA {} required), agent {}, start #{start_number}, cert sha256 {}{hooks}",
            s.ca_sha256,
            s.agent_id,
            id.sha256
        ),
        None => {
            tracing::info!("agent ready: listening on {addr} (TLS 1.3), not registered, start #{start_number}, cert sha256 {}{hooks}", id.sha256);
            agent.show_pairing_code();
            tokio::spawn(registration::pairing_expiry(agent.clone()));
            if let (Some(m), Some(t)) = (env("FERRY_MGMT"), env("FERRY_TOKEN")) {
                tokio::spawn(registration::enroll_loop(agent.clone(), m, t));
            }
        }
    }
    tokio::spawn(registration::hello_loop(agent.clone()));
    tokio::spawn(renew::renew_loop(agent.clone()));
    tokio::spawn(plans::scheduler(agent.clone()));
    tokio::select! {
        _ = ferry_tls::serve::serve(listener, tls_rx, api::router(ctx)) => {}
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
    }
    Ok(())
}
