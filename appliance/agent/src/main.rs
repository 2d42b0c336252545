//! ferry-agent: the appliance's API on TCP 9876 (TLS 1.3 only).
//!
//! This first cut serves status and logs over a self-signed identity kept in
//! the state directory. Registration, mutual TLS, plans and jobs come later.
//! It is started and restarted by ferry-init, which passes its settings in
//! the environment and captures its output into the console and log ring;
//! so it logs plain lines to stderr.

mod api;
mod identity;
mod server;
mod storage_check;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

const LISTEN: &str = "0.0.0.0:9876";

fn main() -> anyhow::Result<()> {
    let level = std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let state_dir =
        PathBuf::from(std::env::var("FERRY_STATE_DIR").unwrap_or_else(|_| "/var/lib/ferry".into()));
    let run_dir =
        PathBuf::from(std::env::var("FERRY_RUN_DIR").unwrap_or_else(|_| "/run/ferry".into()));
    let start_number = std::env::var("FERRY_AGENT_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let debug = std::env::var("FERRY_DEBUG").is_ok_and(|v| v == "1");
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;

    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "ferry".into());
    let id = identity::load_or_create(&state_dir, &hostname).context("TLS identity")?;
    if id.created {
        tracing::info!("created a self-signed TLS identity, sha256 {}", id.sha256);
    }
    let tls_sha256 = id.sha256.clone();
    let tls = identity::server_config(id)?;
    let ctx = Arc::new(api::Ctx {
        started,
        start_number,
        tls_sha256: tls_sha256.clone(),
        run_dir,
        debug,
    });
    let addr: SocketAddr = LISTEN.parse().context("listen address")?;
    let listener = server::bind(addr).await?;
    let hooks = if debug { ", debug hooks on" } else { "" };
    tracing::info!("agent ready: listening on {addr} (TLS 1.3), start #{start_number}, cert sha256 {tls_sha256}{hooks}");
    tokio::select! {
        _ = server::serve(listener, tls, api::router(ctx)) => {}
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
    }
    Ok(())
}
