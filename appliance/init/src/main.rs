//! ferry-init: PID 1 of the Ferry appliance.
//!
//! It mounts the API filesystems, logs to the console and the log ring,
//! reads the config, loads the drivers for the hardware it finds, brings up
//! the network and the clock, and keeps `ferry-agent` running until a
//! shutdown request, which it carries out in order. It never exits: a fatal
//! error is shown on the console and followed by a reboot.
//!
//! It deliberately does not run a shell, udev, or any other program besides
//! the agent. Each concern is one module; `main` only wires them up.

mod config;
mod console;
mod modules;
mod mount;
mod net;
mod shutdown;
mod state;
mod supervise;
mod time;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::config::{Config, STATE_DIR};
use crate::console::Console;
use crate::shutdown::{fatal, Triggers};
use crate::state::Published;
use crate::supervise::{AgentEnv, Reaper};

/// Where the kernel finds us; also registered as the module helper.
const INIT_PATH: &str = "/init";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if modules::invoked_as_modprobe(&args) {
        std::process::exit(modules::modprobe_main(&args));
    }
    if std::process::id() != 1 {
        eprintln!("ferry-init is the appliance's PID 1 and does nothing elsewhere");
        std::process::exit(2);
    }
    no_core_dumps();
    // With panic=abort a panic would kill PID 1 and the kernel with it.
    std::panic::set_hook(Box::new(|info| fatal(&format!("panic: {info}"))));

    let console = Console::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("init")
        .enable_all()
        .build();
    match rt {
        Ok(rt) => match rt.block_on(run(console)) {
            Err(e) => fatal(&format!("{e:#}")),
            Ok(never) => match never {},
        },
        Err(e) => fatal(&format!("cannot start the async runtime: {e}")),
    }
}

async fn run(console: Console) -> anyhow::Result<std::convert::Infallible> {
    let t0 = Instant::now();
    mount::mount_early().context("mounting the API filesystems")?;
    console.attach_devices();
    tracing::info!("ferry-init {} starting", env!("CARGO_PKG_VERSION"));

    // Before anything can send us signals or children can exit.
    let mut triggers = Triggers::install().context("installing signal handlers")?;
    let reaper = Reaper::start()?;
    shutdown::disable_cad();
    if let Err(e) = std::fs::write("/proc/sys/kernel/modprobe", INIT_PATH) {
        tracing::warn!("cannot register the module helper: {e}");
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let _ = std::fs::create_dir_all(STATE_DIR);
    let cfg = Config::load(&cmdline, Path::new(STATE_DIR));
    console.set_level(cfg.log_level());
    for e in &cfg.errors {
        tracing::error!("config error: {e}");
    }
    if !cfg.errors.is_empty() {
        tracing::error!(
            "config: {} error(s); the bad entries are ignored and defaults apply",
            cfg.errors.len()
        );
    }
    let published = Published::new(&cfg);

    let loaded = tokio::task::spawn_blocking(load_modules)
        .await
        .unwrap_or_default();
    tracing::info!(
        "loaded {} modules in {} ms",
        loaded.len(),
        t0.elapsed().as_millis()
    );
    published.modules(loaded);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let env = AgentEnv {
        state_dir: STATE_DIR.to_string(),
        log_level: cfg.log_level().to_string().to_lowercase(),
        debug: cfg.debug(),
    };
    let supervisor = tokio::spawn(supervise::supervise_agent(
        reaper,
        env,
        published.clone(),
        stop_rx,
    ));

    let (ntp_tx, ntp_rx) = tokio::sync::watch::channel(Vec::new());
    {
        let (cfg, published) = (cfg.clone(), published.clone());
        tokio::spawn(async move {
            if let Err(e) = net::run(cfg, published.clone(), ntp_tx).await {
                tracing::error!("network: {e:#}");
                published.net(|n| n.state = format!("failed: {e:#}"));
            }
        });
    }
    tokio::spawn(time::run(cfg.ntp(), ntp_rx, published.clone()));
    triggers.watch_power_buttons().await;

    let (action, reason) = triggers.next().await;
    shutdown::shutdown(
        action,
        &reason,
        &mut triggers,
        stop_tx,
        supervisor,
        &console,
    )
    .await
}

/// A crashing agent must not fill the RAM-backed root with core files; the
/// limit is inherited by every child.
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; no memory is retained.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

fn load_modules() -> Vec<String> {
    match modules::ModuleIndex::for_running_kernel() {
        Ok(index) => {
            let mut loader = modules::Loader::new(index);
            loader.load_for_hardware();
            loader.inserted
        }
        Err(e) => {
            tracing::warn!("no module index ({e:#}); relying on built-in drivers");
            Vec::new()
        }
    }
}
