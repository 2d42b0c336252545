//! `ferry-node`: run the storage node, enroll it with the management server, or check its
//! config. A running node re-reads `node.toml` on SIGHUP (see the crate docs).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-node",
    version,
    about = "Ferry storage node (managed storage on 9876)"
)]
struct Cli {
    /// State directory: node.toml, certificates, vaults.
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_STATE",
        default_value = "/var/lib/ferry-node"
    )]
    state: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the vaults of node.toml over mTLS; SIGHUP re-reads node.toml.
    Serve {
        /// Listen address; overrides `listen` in node.toml.
        #[arg(long)]
        listen: Option<String>,
        /// Seconds between fetches of the revocation list; overrides `revocation_every`.
        #[arg(long, env = "FERRY_NODE_REVOCATION_EVERY")]
        revocation_every: Option<u64>,
    },
    /// Validate node.toml and list its vaults and grants (before a reload); exit 1 if invalid.
    CheckConfig,
    /// Enroll with the management server using a one-time token (ID.SECRET.CA_SHA256).
    Enroll {
        /// Management server, host:port.
        #[arg(long, env = "FERRY_MGMT")]
        mgmt: String,
        /// The token; read from FERRY_TOKEN when not given.
        #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
        token: String,
        /// Name the node reports.
        #[arg(long, default_value = "ferry-node")]
        hostname: String,
        /// Port the node serves on.
        #[arg(long, default_value_t = ferry_api::node::NODE_PORT)]
        port: u16,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            listen,
            revocation_every,
        } => {
            let overrides = ferry_node::Overrides { revocation_every };
            let node = ferry_node::Node::open_with(&cli.state, overrides)
                .await
                .with_context(|| format!("opening {}", cli.state.display()))?;
            let live = node.live();
            let addr = listen.unwrap_or_else(|| live.config.listen.clone());
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let local = listener.local_addr().context("local address")?;
            tracing::info!("serving {} vault(s) on {local}", live.vaults.len());
            drop(live);
            // Installed before the address is announced: from then on a SIGHUP reloads
            // instead of ending the process.
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?;
            let reloader = tokio::spawn(reload_on_hup(node.clone(), hup));
            // Tests and scripts read the bound address from stdout.
            let mut out = std::io::stdout();
            writeln!(out, "listening on {local}").context("stdout")?;
            out.flush().context("stdout")?;
            tokio::select! {
                r = ferry_node::serve_on(node, listener) => r.context("serving")?,
                _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
            }
            reloader.abort();
        }
        Cmd::CheckConfig => {
            let path = cli.state.join(ferry_node::CONFIG_FILE);
            match ferry_node::NodeConfig::load(&path) {
                Ok(c) => {
                    print!("{} is valid\n{}", path.display(), c.describe(&cli.state));
                }
                Err(e) => {
                    eprintln!("ferry-node: {e}");
                    eprintln!(
                        "{} is NOT valid; a reload would keep the running config",
                        path.display()
                    );
                    std::process::exit(1);
                }
            }
        }
        Cmd::Enroll {
            mgmt,
            token,
            hostname,
            port,
        } => {
            let id = ferry_node::enroll::enroll(&cli.state, &mgmt, &token, &hostname, port)
                .await
                .context("enrolling")?;
            println!(
                "enrolled: node id {id}; certificate in {}. Grant agents in node.toml; they use node://HOST:{port}/VAULT?node={id}",
                cli.state.display()
            );
        }
    }
    Ok(())
}

/// Re-reads node.toml at every SIGHUP; a bad file is logged and changes nothing.
async fn reload_on_hup(
    node: std::sync::Arc<ferry_node::Node>,
    mut hup: tokio::signal::unix::Signal,
) {
    let path = node.state_dir.join(ferry_node::CONFIG_FILE);
    while hup.recv().await.is_some() {
        match node.reload().await {
            Ok(s) => tracing::info!("reloaded {}: {s}", path.display()),
            Err(e) => tracing::error!(
                "reload of {} failed, the running config is kept: {e}",
                path.display()
            ),
        }
    }
}
