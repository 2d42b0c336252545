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
mod envsrc;
mod modules;
mod mount;
mod net;
mod shutdown;
mod state;
mod statefs;
mod supervise;
mod time;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, DeploySources, EnvDocument, STATE_DIR};
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

    // Drivers first: the state partition and the OVF environment CD-ROM
    // need the disk controllers.
    let loaded = tokio::task::spawn_blocking(load_modules)
        .await
        .unwrap_or_default();
    tracing::info!(
        "loaded {} modules in {} ms",
        loaded.len(),
        t0.elapsed().as_millis()
    );

    // Booted by UEFI firmware means booted from the appliance disk, so its
    // state partition exists: wait for the disk driver's probe. A direct
    // kernel boot (tests) only looks once, briefly.
    let efi = Path::new("/sys/firmware/efi").exists();
    let state_wait = if efi {
        Duration::from_secs(20)
    } else {
        Duration::from_millis(200)
    };
    let state_info =
        tokio::task::spawn_blocking(move || statefs::mount_state(STATE_DIR, state_wait))
            .await
            .unwrap_or_default();
    let deploy = tokio::task::spawn_blocking(move || read_deploy_sources(efi))
        .await
        .unwrap_or_default();

    let cfg = Config::load(&cmdline, Path::new(STATE_DIR), &deploy);
    console.set_level(cfg.log_level());
    if let Some(origin) = cfg.ovf_env_origin() {
        tracing::info!("config: OVF environment read from {origin}");
    }
    for e in &cfg.errors {
        tracing::error!("config error: {e}");
    }
    if !cfg.errors.is_empty() {
        tracing::error!(
            "config: {} error(s); the bad entries are ignored and defaults apply",
            cfg.errors.len()
        );
    }
    match cfg.persist_secrets(Path::new(STATE_DIR)) {
        Ok(true) => tracing::info!("config: secrets stored in the state directory (0600)"),
        Ok(false) => {}
        Err(e) => tracing::error!("config: cannot store the secrets: {e}"),
    }
    let published = Published::new(&cfg);
    published.modules(loaded);
    published.state_fs(state_info);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let env = AgentEnv {
        state_dir: STATE_DIR.to_string(),
        log_level: cfg.log_level().to_string().to_lowercase(),
        debug: cfg.debug(),
        extra: cfg.agent_env(),
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

/// Reads the OVF environment (CD-ROM first, then `guestinfo.ovfEnv`) and
/// the `guestinfo.ferry.*` keys. Never fails: problems become config errors.
fn read_deploy_sources(efi: bool) -> DeploySources {
    let mut out = DeploySources::default();
    // The CD-ROM is probed with the disk; on a direct kernel boot there is
    // rarely one, so only a short look.
    let cd_wait = if efi {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    let cds = envsrc::cdroms(cd_wait);
    match envsrc::read_cdrom(&cds) {
        Some(Ok(doc)) => {
            out.ovf_env = Some(EnvDocument {
                origin: doc.origin,
                bytes: doc.bytes,
            })
        }
        Some(Err(e)) => out.errors.push(format!("ovf-env: {e:#}")),
        None => {}
    }
    let gi = envsrc::read_guestinfo(&Config::key_names());
    if gi.vmware {
        tracing::info!(
            "guestinfo: VMware detected; guestinfo.ovfEnv {}, {} guestinfo.ferry.* key(s)",
            if gi.ovf_env.is_some() {
                "set"
            } else {
                "not set"
            },
            gi.keys.len()
        );
    }
    if let Some(e) = gi.error {
        out.errors.push(format!("guestinfo: {e}"));
    }
    if out.ovf_env.is_none() {
        out.ovf_env = gi.ovf_env.map(|bytes| EnvDocument {
            origin: "guestinfo.ovfEnv".into(),
            bytes,
        });
    }
    out.guestinfo = gi.keys;
    out
}

/// Disk and CD-ROM drivers that must be present before their devices are
/// discovered (SCSI devices appear asynchronously, after the hardware scan).
const ALWAYS_MODULES: &[&str] = &["sd_mod", "sr_mod"];

fn load_modules() -> Vec<String> {
    match modules::ModuleIndex::for_running_kernel() {
        Ok(index) => {
            let mut loader = modules::Loader::new(index);
            for m in ALWAYS_MODULES {
                if let Err(e) = loader.load(m) {
                    tracing::warn!("{e:#}");
                }
            }
            loader.load_for_hardware();
            loader.inserted
        }
        Err(e) => {
            tracing::warn!("no module index ({e:#}); relying on built-in drivers");
            Vec::new()
        }
    }
}
