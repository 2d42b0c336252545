//! `ferry`: standalone backup, restore, verify, prune and GC on a Ferry repository, and
//! remote management of appliances through the management server (manage.rs).
//!
//! Exit codes: 0 success; 1 error; 2 usage error; 3 verify found damage; 4 repository locked.

mod bug;
mod catalog;
mod demo;
mod manage;
mod output;
mod sources;
mod vcenter;
mod vm_backup;
mod vm_restore;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ferry_archive::prune::KeepOptions;
use ferry_archive::restore::Target;
use ferry_archive::{ArchiveError, BackupOptions, ChangedExtents, Progress, Repository};

use crate::output::{human_bytes, Reporter};

/// Ferry: deduplicated, compressed backups of disks.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, long_about = None)]
struct Cli {
    /// Repository location: a path, file:///path, sftp://, ftp://, ftps:// or s3:// URL
    /// (secrets come from the environment, see the README).
    #[arg(long, short = 'r', global = true, env = "FERRY_REPO")]
    repo: Option<String>,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More log output (-v info, -vv debug).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create or inspect a repository.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Back up one or more disks into a new restore point.
    Backup(BackupArgs),
    /// Restore one disk of a restore point.
    Restore(RestoreArgs),
    /// List restore points.
    List {
        /// Only this backup group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Serve one disk of a restore point read-only over NBD ("instant access"): attach it
    /// with nbd-client, qemu-nbd -c, nbdfuse or qemu-img, until interrupted.
    ServeNbd(ServeNbdArgs),
    /// Re-read and re-hash every chunk of some or all restore points.
    Verify {
        /// Restore points (ids, unique prefixes, or `latest`); all when none.
        points: Vec<String>,
    },
    /// Remove restore points by retention rules.
    Prune(PruneArgs),
    /// Delete chunks that no restore point references.
    Gc {
        /// Seconds to wait for running backups.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Management server: serve, enrollment tokens, the agent registry.
    #[command(subcommand)]
    Mgmt(manage::MgmtCmd),
    /// Backup plans on managed agents.
    #[command(subcommand)]
    Plan(manage::PlanCmd),
    /// Job history of managed agents; run a plan now.
    #[command(subcommand)]
    Jobs(manage::JobsCmd),
    /// Logs collected from a managed agent.
    Logs(manage::LogsArgs),
    /// Restore points across every storage node (the management server's catalog).
    #[command(subcommand)]
    Catalog(catalog::CatalogCmd),
    /// Generate a sample disk, back it up, change it, back it up again, restore and verify.
    Demo {
        /// Working directory (created; reused if it exists).
        #[arg(long, default_value = "ferry-demo")]
        dir: PathBuf,
        /// Size of the sample disk.
        #[arg(long, default_value = "1G")]
        size: String,
    },
}

#[derive(Subcommand, Debug)]
enum RepoCmd {
    /// Create a repository.
    Init {
        /// Chunk size (1M to 16M).
        #[arg(long, default_value = "4M")]
        chunk_size: String,
        /// zstd level (1 to 19).
        #[arg(long, default_value_t = 3)]
        compression_level: i32,
    },
    /// Show repository statistics.
    Stats,
    /// Remove stale locks (of processes that are gone); with --force, all locks.
    Unlock {
        /// Also remove locks of live processes.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// A disk to back up: a raw image or block device, a .vmdk file (snapshot chains
    /// included), or an NBD URI (nbd://host:port/export, nbds://..., nbd+unix:///export?socket=PATH).
    /// Repeat for several disks.
    #[arg(long = "source", short = 's', required_unless_present = "vcenter")]
    sources: Vec<String>,
    #[command(flatten)]
    vsphere: VsphereArgs,
    /// NBD: use the `qemu:dirty-bitmap:NAME` context as the changed-extent map.
    #[arg(long)]
    nbd_bitmap: Option<String>,
    /// NBD over TLS: directory with ca-cert.pem (and client-cert.pem, client-key.pem).
    #[arg(long)]
    nbd_tls_dir: Option<PathBuf>,
    /// NBD over TLS: pin the server certificate by its SHA-256 (hex) instead of a CA.
    #[arg(long)]
    nbd_tls_pin: Option<String>,
    /// Backup group (VM or machine name); defaults to the first source's file name.
    #[arg(long)]
    name: Option<String>,
    /// Use the group's latest restore point as parent.
    #[arg(long, conflicts_with = "parent")]
    incremental: bool,
    /// Parent restore point.
    #[arg(long)]
    parent: Option<String>,
    /// Changed extents since the parent (`OFFSET LENGTH` lines), one file per source in order.
    #[arg(long = "changed-extents")]
    changed: Vec<PathBuf>,
    /// Chunk size (1M to 16M); the repository default if not given.
    #[arg(long)]
    chunk_size: Option<String>,
    /// zstd level (1 to 19); the repository default if not given.
    #[arg(long)]
    compression_level: Option<i32>,
    /// Chunks in flight.
    #[arg(long)]
    concurrency: Option<usize>,
}

/// Backing up VMs through vCenter or ESXi.
#[derive(Args, Debug)]
struct VsphereArgs {
    /// vCenter or ESXi (https://host or host): back up VMs instead of --source disks.
    #[arg(long, conflicts_with = "sources")]
    vcenter: Option<String>,
    /// A VM: by name, or `moref:vm-42`, `uuid:<instance uuid>`, `path:/dc/vm/folder/name`.
    /// Repeat for several.
    #[arg(long = "vm", requires = "vcenter")]
    vms: Vec<String>,
    /// Every VM of the inventory.
    #[arg(long, requires = "vcenter", conflicts_with = "vms")]
    all: bool,
    #[command(flatten)]
    conn: VcenterConn,
    /// Ask for a quiesced snapshot (falls back to crash-consistent, reported).
    #[arg(long, requires = "vcenter")]
    quiesce: bool,
    /// Turn on Changed Block Tracking where it is off.
    #[arg(long, requires = "vcenter")]
    enable_cbt: bool,
    /// Read every disk in full even when CBT could give an incremental.
    #[arg(long, requires = "vcenter")]
    no_cbt: bool,
}

/// How to reach and trust vCenter or ESXi.
#[derive(Args, Debug)]
pub(crate) struct VcenterConn {
    /// Pin the server certificate by its SHA-256 thumbprint.
    #[arg(long, requires = "vcenter")]
    thumbprint: Option<String>,
    /// Verify the server certificate against this CA bundle (PEM).
    #[arg(long, requires = "vcenter")]
    ca: Option<PathBuf>,
    /// Trust the certificate seen first and keep its thumbprint in FILE; refuse a change.
    #[arg(long, requires = "vcenter")]
    trust_on_first_use: Option<PathBuf>,
    /// File with the user on line 1 and the password on line 2 (default: the environment
    /// variables FERRY_VCENTER_USER and FERRY_VCENTER_PASSWORD).
    #[arg(long, requires = "vcenter")]
    credentials: Option<PathBuf>,
}

/// Restoring into vSphere.
#[derive(Args, Debug)]
struct VsphereRestoreArgs {
    /// vCenter or ESXi (https://host or host) to restore into, with --new-vm or --to-datastore.
    #[arg(long)]
    vcenter: Option<String>,
    #[command(flatten)]
    conn: VcenterConn,
    /// Restore every disk of the point as a new VM of this name (registered with the
    /// recorded CPUs, memory, firmware and disk controllers; no network adapter).
    #[arg(long, requires_all = ["vcenter", "datastore"], conflicts_with = "to_datastore")]
    new_vm: Option<String>,
    /// Datastore for --new-vm.
    #[arg(long, requires = "new_vm")]
    datastore: Option<String>,
    /// Datacenter, when there are several.
    #[arg(long, requires = "vcenter")]
    datacenter: Option<String>,
    /// Host or cluster for --new-vm (default: the datacenter's first).
    #[arg(long, requires = "new_vm")]
    compute: Option<String>,
    /// Power the new VM on.
    #[arg(long, requires = "new_vm")]
    power_on: bool,
    /// Restore one disk (--disk) as a monolithicFlat pair at this datastore path,
    /// `[datastore] folder/name.vmdk`, e.g. to attach it to an existing VM.
    #[arg(long, requires = "vcenter")]
    to_datastore: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// Restore point: id, unique id prefix, or `latest`.
    point: String,
    /// Disk index or name; the first disk if not given.
    #[arg(long)]
    disk: Option<String>,
    /// Where to write: a file (created sparse), a block device, or `-` for stdout. An
    /// existing non-empty file or a block device needs --force.
    #[arg(
        long,
        short = 't',
        required_unless_present = "vcenter",
        conflicts_with = "vcenter"
    )]
    target: Option<String>,
    /// With `latest`: the group.
    #[arg(long)]
    group: Option<String>,
    /// Output format; by default `vmdk` for a target ending in .vmdk, else `raw`.
    #[arg(long, value_enum)]
    format: Option<RestoreFormat>,
    /// Overwrite an existing non-empty file, or a block device (never a mounted one or one
    /// smaller than the disk); without it such targets are refused.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    vsphere: VsphereRestoreArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RestoreFormat {
    /// Raw image (sparse file), block device, or stdout.
    Raw,
    /// streamOptimized VMDK (compressed; what vCenter imports).
    Vmdk,
    /// monolithicSparse VMDK.
    VmdkSparse,
    /// monolithicFlat VMDK: descriptor plus `-flat.vmdk`.
    VmdkFlat,
}

#[derive(Args, Debug)]
struct ServeNbdArgs {
    /// Restore point: id, unique id prefix, or `latest`.
    point: String,
    /// Disk index or name; the first disk if not given.
    #[arg(long)]
    disk: Option<String>,
    /// With `latest`: the group.
    #[arg(long)]
    group: Option<String>,
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
    listen: String,
    /// Listen on a unix socket instead.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, clients must use TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve without TLS on an address that is not loopback: the disk's data crosses the
    /// network in clear, readable by anyone on it.
    #[arg(long)]
    insecure: bool,
}

#[derive(Args, Debug)]
struct PruneArgs {
    /// Keep the newest N restore points.
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep one per hour for N hours.
    #[arg(long)]
    keep_hourly: Option<u32>,
    /// Keep one per day for N days.
    #[arg(long)]
    keep_daily: Option<u32>,
    /// Keep one per week for N weeks.
    #[arg(long)]
    keep_weekly: Option<u32>,
    /// Keep one per month for N months.
    #[arg(long)]
    keep_monthly: Option<u32>,
    /// Keep one per year for N years.
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Only this group.
    #[arg(long)]
    group: Option<String>,
    /// Show what would be removed.
    #[arg(long)]
    dry_run: bool,
}

/// Parses `4M`, `1048576`, `16MiB`.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    ferry_testkit::parse_size(t).with_context(|| format!("invalid size {s:?}"))
}

pub(crate) fn chunk_size(s: &str) -> anyhow::Result<u32> {
    let v = parse_size(s)?;
    u32::try_from(v).with_context(|| format!("chunk size {s} is too large"))
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // The management server's info lines (registrations, audit lines naming the
        // admin) are its log; a plain `ferry mgmt serve` must show them.
        0 => "warn,ferry_mgmt=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    bug::install_panic_hook();
    let cli = Cli::parse();
    bug::test_panic();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: error: {}", output::error_text(&e));
            let locked = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<ArchiveError>(),
                    Some(ArchiveError::Locked(_))
                )
            });
            ExitCode::from(if locked { 4 } else { 1 })
        }
    }
}

fn repo_location(cli: &Cli) -> anyhow::Result<String> {
    cli.repo
        .clone()
        .context("no repository given: pass --repo PATH or set FERRY_REPO")
}

async fn open_repo(cli: &Cli) -> anyhow::Result<Repository> {
    let loc = repo_location(cli)?;
    let store = ferry_storage::open_store(&loc)?;
    Ok(Repository::open(store).await?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rep = Reporter::new(cli.json);
    match &cli.cmd {
        Cmd::Mgmt(c) => return manage::mgmt(c, &rep).await,
        Cmd::Plan(c) => return manage::plan(c, &rep).await,
        Cmd::Jobs(c) => return manage::jobs(c, &rep).await,
        Cmd::Logs(a) => return manage::logs(a, &rep).await,
        Cmd::Catalog(c) => return catalog::catalog(c, &rep).await,
        Cmd::Repo(RepoCmd::Init {
            chunk_size: cs,
            compression_level,
        }) => {
            let loc = repo_location(&cli)?;
            let store = ferry_storage::open_store(&loc)?;
            let repo = Repository::init(store, chunk_size(cs)?, *compression_level).await?;
            rep.result(repo.config(), || {
                format!(
                    "created repository {} at {loc} ({} chunks, zstd level {})",
                    repo.config().id,
                    human_bytes(u64::from(repo.config().chunk_size)),
                    repo.config().compression_level
                )
            });
        }
        Cmd::Repo(RepoCmd::Stats) => {
            let repo = open_repo(&cli).await?;
            let stats = output::repo_stats(&repo).await?;
            rep.result(&stats, || stats.to_string());
        }
        Cmd::Repo(RepoCmd::Unlock { force }) => {
            let repo = open_repo(&cli).await?;
            let removed = ferry_archive::lock::unlock(repo.store().as_ref(), *force).await?;
            rep.result(&removed, || {
                if removed.is_empty() {
                    "no stale locks".to_string()
                } else {
                    removed
                        .iter()
                        .map(|r| format!("removed {r}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            });
        }
        Cmd::Backup(a) if a.vsphere.vcenter.is_some() => {
            let repo = open_repo(&cli).await?;
            return vm_backup::run(&repo, a, &rep).await;
        }
        Cmd::Backup(a) => {
            let repo = open_repo(&cli).await?;
            let m = do_backup(&repo, a, &rep).await?;
            rep.result(&m, || output::backup_summary(&m));
        }
        Cmd::Restore(a) if a.vsphere.vcenter.is_some() => {
            let repo = open_repo(&cli).await?;
            let m = repo.resolve_point(&a.point, a.group.as_deref()).await?;
            return vm_restore::run(&repo, &m, a, &rep).await;
        }
        Cmd::Restore(a) => {
            let repo = open_repo(&cli).await?;
            let m = repo.resolve_point(&a.point, a.group.as_deref()).await?;
            let target_arg = a.target.as_deref().context("--target is required")?;
            let disk = disk_index(&m, a.disk.as_deref())?;
            let size = m
                .disks
                .get(disk)
                .with_context(|| format!("restore point {} has no disk {disk}", m.id))?
                .size;
            let format =
                a.format
                    .unwrap_or(if target_arg.to_ascii_lowercase().ends_with(".vmdk") {
                        RestoreFormat::Vmdk
                    } else {
                        RestoreFormat::Raw
                    });
            let target = Target::for_path(target_arg);
            ferry_archive::restore::check_target(&target, size, a.force)?;
            if format != RestoreFormat::Raw {
                let stats = restore_vmdk(&repo, &m, disk, target_arg, format).await?;
                rep.result(&stats, || {
                    format!(
                        "restored {} disk {} ({}) to {} as {:?}: {} grains stored, {} written",
                        m.id,
                        disk,
                        human_bytes(size),
                        target_arg,
                        format,
                        stats.grains_stored,
                        human_bytes(stats.bytes_written)
                    )
                });
                return Ok(ExitCode::SUCCESS);
            }
            let progress = Arc::new(Progress::default());
            let bar = rep.progress_bar(progress.clone(), "restore", size);
            let started = std::time::Instant::now();
            let res = ferry_archive::restore::restore(
                &repo,
                &m,
                disk,
                &target,
                default_concurrency(),
                progress,
            )
            .await;
            bar.finish();
            let stats = res?;
            if target != Target::Stdout || cli.json {
                rep.result(&stats, || {
                    format!(
                        "restored {} disk {} ({}) to {}: {} written, {} zero, {} in {:.1}s",
                        m.id,
                        disk,
                        human_bytes(stats.size),
                        target_arg,
                        human_bytes(stats.written),
                        human_bytes(stats.zero),
                        output::rate(stats.size, started.elapsed()),
                        started.elapsed().as_secs_f64()
                    )
                });
            }
        }
        Cmd::ServeNbd(a) => {
            let repo = open_repo(&cli).await?;
            serve_nbd(repo, a).await?;
        }
        Cmd::List { group } => {
            let repo = open_repo(&cli).await?;
            let points: Vec<_> = repo
                .list_points()
                .await?
                .into_iter()
                .filter(|m| group.as_ref().is_none_or(|g| &m.group == g))
                .collect();
            rep.result(&points, || output::list_table(&points));
        }
        Cmd::Verify { points } => {
            let repo = open_repo(&cli).await?;
            let mut ids = Vec::new();
            for p in points {
                ids.push(repo.resolve_point(p, None).await?.id);
            }
            let progress = Arc::new(Progress::default());
            let bar = rep.progress_bar(progress.clone(), "verify", 0);
            let res =
                ferry_archive::verify::verify(&repo, &ids, default_concurrency(), progress).await;
            bar.finish();
            let report = res?;
            rep.result(&report, || output::verify_text(&report));
            if !report.ok() {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Prune(a) => {
            let opts = KeepOptions {
                last: a.keep_last,
                hourly: a.keep_hourly,
                daily: a.keep_daily,
                weekly: a.keep_weekly,
                monthly: a.keep_monthly,
                yearly: a.keep_yearly,
            };
            if !opts.any() {
                bail!("no retention rule given: pass at least one --keep-* option");
            }
            let repo = open_repo(&cli).await?;
            let decisions =
                ferry_archive::prune::prune(&repo, a.group.as_deref(), &opts, a.dry_run).await?;
            rep.result(&decisions, || output::prune_text(&decisions, a.dry_run));
        }
        Cmd::Gc { wait } => {
            let repo = open_repo(&cli).await?;
            let r = ferry_archive::gc::gc(&repo, Duration::from_secs(*wait)).await?;
            rep.result(&r, || {
                format!(
                    "gc: {} restore points, {} live chunks; removed {} chunks ({}), {} orphaned indexes, {} temporaries",
                    r.points,
                    r.live_chunks,
                    r.removed_chunks,
                    human_bytes(r.removed_bytes),
                    r.removed_orphans,
                    r.removed_temporaries
                )
            });
        }
        Cmd::Demo { dir, size } => {
            let size = parse_size(size)?;
            return demo::run(dir, size, &rep).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves `--disk` (an index or a name) against a manifest.
pub(crate) fn disk_index(m: &ferry_archive::Manifest, disk: Option<&str>) -> anyhow::Result<usize> {
    let n = match disk {
        None => 0,
        Some(d) => match d.parse::<usize>() {
            Ok(n) => n,
            Err(_) => m
                .disks
                .iter()
                .position(|x| x.name == d)
                .with_context(|| format!("restore point {} has no disk {d:?}", m.id))?,
        },
    };
    if n >= m.disks.len() {
        bail!(
            "restore point {} has no disk {n} ({} disks)",
            m.id,
            m.disks.len()
        );
    }
    Ok(n)
}

async fn restore_vmdk(
    repo: &Repository,
    m: &ferry_archive::Manifest,
    disk: usize,
    target: &str,
    format: RestoreFormat,
) -> anyhow::Result<WriteStatsOut> {
    let src = ferry_archive::PointSource::open(repo.clone(), m, disk).await?;
    let path = PathBuf::from(target);
    let mut opts = ferry_vmdk::WriteOptions::default();
    if let Some(n) = path.file_name() {
        opts.extent_name = n.to_string_lossy().into_owned();
    }
    let work = async {
        match format {
            RestoreFormat::Vmdk => {
                // Written to a partial name and renamed when complete, like raw restores.
                let partial = PathBuf::from(format!("{target}.ferry-partial"));
                let res = async {
                    let f = tokio::fs::File::create(&partial)
                        .await
                        .with_context(|| format!("creating {}", partial.display()))?;
                    let mut w = tokio::io::BufWriter::with_capacity(4 << 20, f);
                    let stats = ferry_vmdk::write_stream_optimized(&src, &mut w, &opts).await?;
                    let f = w.into_inner();
                    f.sync_all().await?;
                    tokio::fs::rename(&partial, &path).await?;
                    anyhow::Ok(stats)
                }
                .await;
                if res.is_err() {
                    let _ = std::fs::remove_file(&partial);
                }
                res
            }
            RestoreFormat::VmdkSparse => {
                Ok(ferry_vmdk::write_monolithic_sparse(&src, &path, &opts).await?)
            }
            RestoreFormat::VmdkFlat => {
                Ok(ferry_vmdk::write_monolithic_flat(&src, &path, &opts).await?)
            }
            RestoreFormat::Raw => bail!("raw restores do not go through the VMDK writer"),
        }
    };
    let purpose = format!("restore of {} to VMDK", m.id);
    let s = ferry_archive::restore::with_read_lock(repo, &purpose, work).await?;
    Ok(WriteStatsOut {
        disk_size: s.disk_size,
        grains_stored: s.grains_stored,
        bytes_written: s.bytes_written,
    })
}

/// JSON form of the VMDK writer's statistics.
#[derive(Debug, serde::Serialize)]
struct WriteStatsOut {
    disk_size: u64,
    grains_stored: u64,
    bytes_written: u64,
}

async fn serve_nbd(repo: Repository, a: &ServeNbdArgs) -> anyhow::Result<()> {
    let m = repo.resolve_point(&a.point, a.group.as_deref()).await?;
    let disk = disk_index(&m, a.disk.as_deref())?;
    let export = ferry_nbd::Export::open(repo.clone(), &m, disk).await?;
    let mut opts = ferry_nbd::ServeOptions::default();
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let ca = match &a.tls_client_ca {
            Some(p) => Some(read(p)?),
            None => None,
        };
        opts.tls = Some(ferry_nbd::ServerTls::new(
            &read(cert)?,
            &read(key)?,
            ca.as_deref(),
        )?);
    }
    let listener: ferry_nbd::Listener = match &a.socket {
        Some(p) => {
            let _ = std::fs::remove_file(p);
            tokio::net::UnixListener::bind(p)
                .with_context(|| format!("listening on {}", p.display()))?
                .into()
        }
        None => {
            let l = tokio::net::TcpListener::bind(&a.listen)
                .await
                .with_context(|| format!("listening on {}", a.listen))?;
            // Checked on the bound address, so a host name that resolves off loopback counts.
            let ip = l.local_addr().context("the listening address")?.ip();
            if opts.tls.is_none() && !ip.is_loopback() && !a.insecure {
                bail!(
                    "refusing to serve {} without TLS on {ip}: the disk's data would cross the \
                     network in clear. Give --tls-cert/--tls-key, listen on loopback or a \
                     --socket (and reach it through an SSH tunnel), or pass --insecure",
                    a.listen
                );
            }
            l.into()
        }
    };
    let where_ = match &a.socket {
        Some(p) => format!("nbd+unix:///{}?socket={}", m.disks[disk].name, p.display()),
        None => format!("nbd://{}/{}", a.listen, m.disks[disk].name),
    };
    eprintln!(
        "serving {} disk {} ({}) read-only at {where_}; Ctrl-C stops",
        m.id, disk, m.disks[disk].name
    );
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    // serve_until holds a shared repository lock, so GC waits while clients read.
    let res = ferry_nbd::serve_until(listener, Arc::new(export), opts, shutdown).await;
    if let Some(p) = &a.socket {
        let _ = std::fs::remove_file(p);
    }
    Ok(res?)
}

fn default_concurrency() -> usize {
    BackupOptions::new("x").concurrency
}

async fn do_backup(
    repo: &Repository,
    a: &BackupArgs,
    rep: &Reporter,
) -> anyhow::Result<ferry_archive::Manifest> {
    if !a.changed.is_empty() && a.changed.len() != a.sources.len() {
        bail!(
            "{} --changed-extents files for {} sources: give one per source, in order",
            a.changed.len(),
            a.sources.len()
        );
    }
    let src_opts = sources::SourceOptions {
        nbd_bitmap: a.nbd_bitmap.clone(),
        nbd_tls_dir: a.nbd_tls_dir.clone(),
        nbd_tls_pin: a.nbd_tls_pin.clone(),
    };
    let mut disks = Vec::new();
    for (n, spec) in a.sources.iter().enumerate() {
        let mut input = sources::open(spec, &src_opts).await?;
        if let Some(p) = a.changed.get(n) {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading changed extents {}", p.display()))?;
            let map = ChangedExtents::parse_text(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            input.changed = Some(map);
        }
        disks.push(input);
    }
    let group = match &a.name {
        Some(n) => n.clone(),
        None => disks[0].name.clone(),
    };
    let mut opts = BackupOptions::new(&group);
    if let Some(cs) = &a.chunk_size {
        opts.chunk_size = Some(chunk_size(cs)?);
    }
    opts.compression_level = a.compression_level;
    if let Some(c) = a.concurrency {
        opts.concurrency = c;
    }
    opts.parent = if a.incremental {
        match repo.resolve_point("latest", Some(&group)).await {
            Ok(m) => Some(m.id),
            Err(ArchiveError::NotFound(_)) => {
                tracing::warn!("no earlier restore point of {group}: taking a full backup");
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else if let Some(p) = &a.parent {
        Some(repo.resolve_point(p, None).await?.id)
    } else {
        None
    };
    if !a.changed.is_empty() && opts.parent.is_none() {
        tracing::warn!("changed extents given without a parent: reading everything");
    }
    let total: u64 = disks.iter().map(|d| d.source.size()).sum();
    let progress = Arc::new(Progress::default());
    let bar = rep.progress_bar(progress.clone(), "backup", total);
    let res = ferry_archive::backup(repo, disks, &opts, progress).await;
    bar.finish();
    Ok(res?)
}
