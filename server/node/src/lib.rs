//! ferry-node: the Ferry storage node ("managed storage").
//!
//! # What this crate owns
//! - the state directory: `node.toml` ([`config`]: vaults, quotas, grants, job schedules,
//!   retention; re-read on SIGHUP), `node.pem` (certificate chain) + `node.key` (0600) +
//!   `ca.pem` (the management CA), `mgmt.url` (the management server enrolled with), `revoked.json`
//!   (0600, the management CA's signed revocation list, [`revocation`]), `vaults/<name>/` (one archive repository per vault, the same
//!   `ferry-archive` format as every other store), `verify-<vault>.json` (last verify of
//!   each point, for the catalog), `locks-<vault>.json` (who wrote each lock, and when the
//!   node last received it: [`vault::locks`]);
//! - the HTTPS API on 9876 ([`routes`], wire types and table in `ferry_api::node`): batch
//!   "which chunks are missing", chunk upload with the digest re-checked on the decoded
//!   content, chunk download (with Range), atomic commit of a restore point, catalog,
//!   retention, node jobs, and the object reads and lock writes that let the archive engine
//!   run unchanged over the `node://` store of `ferry-storage`;
//! - vault rules ([`vault`]): quotas, grants, the writer of each point;
//! - scheduled verify, prune and GC ([`jobs`]) under the archive's repository locks;
//! - enrollment with the management server ([`enroll`]);
//! - the revocation list ([`revocation`]): pushed by the management server
//!   (`PUT /v1/revocations`, its certificate only) and fetched from it as a fallback, kept,
//!   and every client certificate on it refused (403) before any route runs.
//!
//! It does not back anything up and does not know about VMs: agents do, through
//! `node://host:9876/vault`.
//!
//! # Decisions where the issue is silent, and departures
//! - **Config in a TOML file**, read at start and again on SIGHUP (`systemctl reload`,
//!   `kill -HUP`; [`Node::reload`]): vaults, quotas and grants are few and admin-edited; the
//!   per-point state the node needs (who wrote it) is kept in the repository itself, in the
//!   manifest's `meta` (`ferry.node.owner`), stamped by the node at commit, so it travels
//!   with the vault and needs no database.
//! - **Reload** swaps the whole config and vault table at once ([`Live`]): grants, quotas,
//!   job schedules, retention and `revocation_every` apply to requests and job runs that
//!   start afterwards (those in flight finish under the rules they started with); a new vault
//!   is opened or created; a vault the file no longer names is no longer served (403, as an
//!   unknown vault) and its directory is kept, so naming it again serves it again. A file
//!   that does not parse or validate changes nothing: the error (file and problem) is
//!   logged and the running config stays. `listen`, `mgmt` and a vault's `chunk_size` and
//!   `compression_level` (fixed when its repository is created) need a restart.
//!   `ferry-node check-config` validates the file and lists vaults and grants beforehand.
//! - **Identity** is the DNS name of the client certificate without `.ferry.internal`
//!   (`agent-<id>`, `admin-<name>`): stable across certificate renewal, and what the
//!   management CA already puts in every certificate. Only certificates of the management CA
//!   get through TLS; grants decide the rest.
//! - **Enrollment** reuses the agent flow of `ferry-mgmt` (`POST /v1/enroll` with a one-time
//!   token): the node appears in the registry as an agent (`agent-<id>`), and its server
//!   certificate names `agent-<id>.ferry.internal`, which is why `node://` URLs carry
//!   `?node=<id>`. The enrollment says `role: node`, so the registry lists it as a storage
//!   node, and the management server reads `GET /v1/catalog` of every vault with its own
//!   certificate (`mgmt`): catalog only, no chunk, object or point access.
//! - **Chunk reads** are allowed to every grantee of the vault (a digest is only known to
//!   someone who had the content); restore points, their manifests and indexes only to their
//!   writer or an admin. The missing-chunk query tells a grantee whether a digest exists in
//!   the vault: the usual price of cross-agent dedup.
//! - **GC is the node's**: the `node://` store refuses chunk deletes, so `ferry gc` runs on
//!   the node (`POST .../jobs/gc` or the schedule). Backups hold the archive's shared lock
//!   through the lock endpoints and commits take one of their own, so GC (exclusive) never
//!   runs between "this chunk is present" and the manifest that names it.
//! - **Indexes travel with the manifest.** The `node://` store keeps a point's indexes in
//!   memory until the archive writes the manifest, then sends them in one commit request;
//!   so a point's objects appear on the node all at once or not at all, and a killed client
//!   leaves nothing but chunks (which the next backup reuses and GC removes otherwise).
//! - **Locks** are the archive's lock objects, written through `PUT /locks/{name}` (only
//!   well-formed lock records are accepted). The node keeps a book of them
//!   ([`vault::locks`]): the identity that wrote each lock and the node's own receive time
//!   of its last write, in memory and in `locks-<vault>.json` in the state directory (a
//!   sidecar, not a field stamped into the record: the record stays the archive's, and the
//!   book is rewritten on every lock write, temp + rename). Only the writer may refresh or
//!   delete a lock, unless it is stale by the node's clock (no write received for 3 ×
//!   `REFRESH_SECS` = 180 s; no clock-skew slack, the node sees every refresh) or the
//!   caller is an admin of the vault; otherwise 409 naming the holder. After a restart the
//!   owners are read back and ages count from the node's start. The node's own lock users
//!   (commits, prune, verify, GC) see the vault through a store that removes locks stale by
//!   the node's clock whenever `locks/` is listed, so a backup that died during a node
//!   outage holds GC off for about 3 minutes, not the archive's 10; the archive's own
//!   judgement (10 minutes by the writer's clock, or a dead pid on the same host) never
//!   removes a lock the book says is fresh, and a client's archive that is refused such a
//!   removal takes the lock as live. `FERRY_NODE_LOCK_STALE_MS` (hidden, for tests)
//!   shortens the threshold of client locks.
//! - **One tenant cannot exhaust the node** ([`limits`], [`routes`]): a request body is
//!   read only after the caller's grant is checked (403 before any byte of the body, and no
//!   `100 Continue`), never beyond the route's limit (413 on the declared length); a commit
//!   must declare its length, at most what an index of a 62 TiB disk needs at the vault's
//!   chunk size ([`vault::commit_cap`]) and what the quota still allows (507); an index must
//!   declare exactly the decoded size of the disk its manifest names, checked before zstd
//!   runs; each identity runs 16 chunk uploads and 2 commits at once, queues 48 and 4 more,
//!   and gets 429 beyond (the `node://` client retries); node-wide, 64 uploads run at once,
//!   and commits weighing twice their body up to 1 GiB. Only an admin may take an exclusive lock (GC is the node's job): a grantee
//!   cannot stop the other tenants' backups, and an admin removes any lock at once.
//! - **Quota** counts every byte in the vault directory (counted at start and after GC and
//!   prune, then kept as a running total). A chunk or commit that would exceed it gets 507;
//!   nothing partial is left visible (chunks are atomic objects; a point without manifest is
//!   not a point, and GC removes its chunks later).

pub mod config;
pub mod enroll;
pub mod jobs;
pub mod limits;
pub mod renew;
pub mod revocation;
pub mod routes;
pub mod vault;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ferry_tls::revocation::RevocationStore;
use ferry_tls::trust::{server_config, ClientAuth, Identity};

pub use config::{Access, NodeConfig};
pub use vault::Vault;

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config file is wrong.
    #[error("config: {0}")]
    Config(String),
    /// A file of the state directory.
    #[error("{0}")]
    Io(String),
    /// TLS or certificates.
    #[error(transparent)]
    Tls(#[from] ferry_tls::TlsError),
    /// The repository of a vault.
    #[error(transparent)]
    Archive(#[from] ferry_archive::ArchiveError),
    /// The storage under a vault.
    #[error(transparent)]
    Store(#[from] ferry_storage::StoreError),
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
    /// A chunk whose content does not hash to its digest, or that does not decode.
    #[error("chunk refused: {0}")]
    Poisoned(String),
    /// A commit names chunks the vault does not hold.
    #[error("{count} chunk(s) named by the indexes are not in the vault (first: {first})")]
    MissingChunks {
        /// How many.
        count: usize,
        /// The first one's key.
        first: String,
    },
    /// The vault's quota would be exceeded.
    #[error("vault {vault} quota exceeded: {used} of {quota} bytes used, {need} more needed")]
    Quota {
        /// Vault.
        vault: String,
        /// Bytes used.
        used: u64,
        /// Quota.
        quota: u64,
        /// Bytes asked for.
        need: u64,
    },
    /// An unexpected internal failure.
    #[error("internal: {0}")]
    Internal(String),
}

/// The part of the node that a reload replaces as a whole: the config and the vaults it
/// names. Requests and jobs take the current one ([`Node::live`]) and keep it to their end, so
/// a reload never changes the rules under a request in flight.
#[derive(Debug)]
pub struct Live {
    /// Config.
    pub config: NodeConfig,
    /// Vaults by name.
    pub vaults: BTreeMap<String, Arc<Vault>>,
}

/// Settings given on the command line that win over `node.toml`, at start and at reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Seconds between fetches of the revocation list.
    pub revocation_every: Option<u64>,
}

impl Overrides {
    fn apply(&self, config: &mut NodeConfig) {
        if let Some(s) = self.revocation_every {
            config.revocation_every = s.max(1);
        }
    }
}

/// What a reload changed, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Vaults served from now on.
    pub vaults_added: Vec<String>,
    /// Vaults no longer served (their directories are kept).
    pub vaults_removed: Vec<String>,
    /// Vaults whose quota changed: name, old, new.
    pub quotas: Vec<(String, u64, u64)>,
    /// Whether the grants changed.
    pub grants_changed: bool,
    /// Whether the job schedules or the retention changed.
    pub jobs_changed: bool,
    /// Settings that changed in the file but apply only at restart.
    pub need_restart: Vec<&'static str>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "vaults added: {}; vaults removed (data kept): {}; grants {}",
            list(&self.vaults_added),
            list(&self.vaults_removed),
            if self.grants_changed {
                "changed"
            } else {
                "unchanged"
            }
        )?;
        for (v, old, new) in &self.quotas {
            write!(f, "; quota of {v}: {old} -> {new} bytes")?;
        }
        if self.jobs_changed {
            write!(f, "; job schedules or retention changed")?;
        }
        if !self.need_restart.is_empty() {
            write!(
                f,
                "; changed but applied only at restart: {}",
                self.need_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The running node.
#[derive(Debug)]
pub struct Node {
    live: RwLock<Arc<Live>>,
    /// State directory.
    pub state_dir: PathBuf,
    /// The management CA's revocation list in force.
    pub revoked: RevocationStore,
    overrides: Overrides,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Bumped at every applied reload (the scheduler waits on it).
    reloaded: tokio::sync::watch::Sender<u64>,
}

/// The config file in the state directory.
pub const CONFIG_FILE: &str = "node.toml";

/// The file in the state directory that names the management server (`https://host:port`).
pub const MGMT_URL_FILE: &str = "mgmt.url";

/// The vaults of `config`: those in `have` are reused, the others opened (or created).
async fn open_vaults(
    state_dir: &Path,
    config: &NodeConfig,
    have: &BTreeMap<String, Arc<Vault>>,
) -> Result<BTreeMap<String, Arc<Vault>>, NodeError> {
    let root = state_dir.join("vaults");
    std::fs::create_dir_all(&root)
        .map_err(|e| NodeError::Io(format!("{}: {e}", root.display())))?;
    let mut vaults = BTreeMap::new();
    for v in &config.vaults {
        let vault = match have.get(&v.name) {
            Some(o) => o.clone(),
            None => Arc::new(
                Vault::open(&root, state_dir, v)
                    .await
                    .map_err(|e| NodeError::Io(format!("vault {}: {e}", v.name)))?,
            ),
        };
        vaults.insert(v.name.clone(), vault);
    }
    Ok(vaults)
}

/// Files of the TLS identity in the state directory.
pub fn tls_files(state: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        state.join("node.pem"),
        state.join("node.key"),
        state.join("ca.pem"),
    )
}

impl Node {
    /// Opens the state directory: reads `node.toml`, opens (or creates) every vault.
    pub async fn open(state_dir: &Path) -> Result<Arc<Node>, NodeError> {
        Node::open_with(state_dir, Overrides::default()).await
    }

    /// Opens the state directory with command-line `overrides` of `node.toml`.
    pub async fn open_with(state_dir: &Path, overrides: Overrides) -> Result<Arc<Node>, NodeError> {
        let mut config = NodeConfig::load(&state_dir.join(CONFIG_FILE))?;
        overrides.apply(&mut config);
        let vaults = open_vaults(state_dir, &config, &BTreeMap::new()).await?;
        Ok(Arc::new(Node {
            live: RwLock::new(Arc::new(Live { config, vaults })),
            state_dir: state_dir.to_path_buf(),
            revoked: revocation::open(state_dir),
            overrides,
            reloading: tokio::sync::Mutex::new(()),
            reloaded: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// The config and vaults in force now.
    pub fn live(&self) -> Arc<Live> {
        // A poisoned lock still holds a whole `Arc<Live>`: writers only replace it.
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A receiver that sees a change at every applied reload.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// Re-reads `node.toml` and applies it: grants, quotas, schedules and retention for the
    /// requests and job runs that start from now on; new vaults are opened (created on first
    /// use); vaults the file no longer names stop being served, their data is kept. On any
    /// error nothing changes. `listen`, `mgmt` and the vault's `chunk_size` and
    /// `compression_level` (fixed when its repository is created) are not reloaded.
    pub async fn reload(&self) -> Result<ReloadSummary, NodeError> {
        let _one = self.reloading.lock().await;
        let mut config = NodeConfig::load(&self.state_dir.join(CONFIG_FILE))?;
        self.overrides.apply(&mut config);
        let old = self.live();
        let vaults = open_vaults(&self.state_dir, &config, &old.vaults).await?;
        // Nothing fails from here on.
        let mut sum = ReloadSummary {
            vaults_added: vaults
                .keys()
                .filter(|n| !old.vaults.contains_key(*n))
                .cloned()
                .collect(),
            vaults_removed: old
                .vaults
                .keys()
                .filter(|n| !vaults.contains_key(*n))
                .cloned()
                .collect(),
            grants_changed: config.grants != old.config.grants,
            jobs_changed: config.schedule != old.config.schedule
                || config.retention != old.config.retention,
            ..ReloadSummary::default()
        };
        for (what, changed) in [
            ("listen", config.listen != old.config.listen),
            ("mgmt", config.mgmt != old.config.mgmt),
        ] {
            if changed {
                sum.need_restart.push(what);
            }
        }
        for v in &config.vaults {
            if let Some(o) = old.vaults.get(&v.name) {
                let q = o.quota();
                if q != v.quota {
                    o.set_quota(v.quota);
                    sum.quotas.push((v.name.clone(), q, v.quota));
                }
            }
        }
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Live { config, vaults });
        self.reloaded.send_modify(|n| *n += 1);
        Ok(sum)
    }

    /// The TLS server config: the node's certificate, client certificates of the CA required.
    pub fn server_tls(&self) -> Result<Arc<rustls::ServerConfig>, NodeError> {
        let (cert, key, ca) = tls_files(&self.state_dir);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                NodeError::Io(format!(
                    "{}: {e} (enroll the node first: ferry-node enroll)",
                    p.display()
                ))
            })
        };
        let (cert, key, ca) = (read(&cert)?, read(&key)?, read(&ca)?);
        Ok(server_config(
            Identity::from_pem(&cert, &key)?,
            ClientAuth::Required(ca),
        )?)
    }
}

/// Serves the API on `listener` and runs the job scheduler, until the task is dropped.
pub async fn serve_on(node: Arc<Node>, listener: tokio::net::TcpListener) -> Result<(), NodeError> {
    let tls = node.server_tls()?;
    let (tx, rx) = tokio::sync::watch::channel(tls);
    let sched = tokio::spawn(jobs::scheduler(node.clone()));
    let fetch = tokio::spawn(revocation::fetcher(node.clone()));
    let renew = tokio::spawn(renew::renewer(node.clone(), tx));
    ferry_tls::serve::serve(listener, rx, routes::router(node)).await;
    sched.abort();
    fetch.abort();
    renew.abort();
    Ok(())
}
