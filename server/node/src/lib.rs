//! ferry-node: the Ferry storage node ("managed storage").
//!
//! # What this crate owns
//! - the state directory: `node.toml` ([`config`]: vaults, quotas, grants, job schedules,
//!   retention), `node.pem` (certificate chain) + `node.key` (0600) + `ca.pem` (the
//!   management CA), `mgmt.url` (the management server enrolled with), `revoked.json`
//!   (0600, the management CA's signed revocation list, [`revocation`]), `vaults/<name>/` (one archive repository per vault, the same
//!   `ferry-archive` format as every other store), `verify-<vault>.json` (last verify of
//!   each point, for the catalog);
//! - the HTTPS API on 9876 ([`routes`], wire types and table in `ferry_api::node`): batch
//!   "which chunks are missing", chunk upload with the digest re-checked on the decoded
//!   content, chunk download (with Range), atomic commit of a restore point, catalog,
//!   retention, node jobs, and the object reads and lock writes that let the archive engine
//!   run unchanged over the `node://` store of `ferry-storage`;
//! - vault rules ([`vault`]): quotas, grants, the writer of each point;
//! - scheduled verify, prune and GC ([`jobs`]) under the archive's repository locks;
//! - enrollment with the management server ([`enroll`]);
//! - the revocation list ([`revocation`]): fetched from the management server, kept, and
//!   every client certificate on it refused (403) before any route runs.
//!
//! It does not back anything up and does not know about VMs: agents do, through
//! `node://host:9876/vault`.
//!
//! # Decisions where the issue is silent, and departures
//! - **Config in a TOML file**, read at start (restart to apply changes): vaults, quotas and
//!   grants are few and admin-edited; the per-point state the node needs (who wrote it) is
//!   kept in the repository itself, in the manifest's `meta` (`ferry.node.owner`), stamped
//!   by the node at commit, so it travels with the vault and needs no database.
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
//!   well-formed lock records are accepted). Any grantee of a vault may delete a lock object,
//!   because the archive's protocol removes other holders' stale locks; a node-side owner
//!   check is not done yet.
//! - **Quota** counts every byte in the vault directory (counted at start and after GC and
//!   prune, then kept as a running total). A chunk or commit that would exceed it gets 507;
//!   nothing partial is left visible (chunks are atomic objects; a point without manifest is
//!   not a point, and GC removes its chunks later).

pub mod config;
pub mod enroll;
pub mod jobs;
pub mod revocation;
pub mod routes;
pub mod vault;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The running node.
#[derive(Debug)]
pub struct Node {
    /// Config.
    pub config: NodeConfig,
    /// Vaults by name.
    pub vaults: BTreeMap<String, Arc<Vault>>,
    /// State directory.
    pub state_dir: PathBuf,
    /// The management CA's revocation list in force.
    pub revoked: RevocationStore,
}

/// The file in the state directory that names the management server (`https://host:port`).
pub const MGMT_URL_FILE: &str = "mgmt.url";

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
        let config = NodeConfig::load(&state_dir.join("node.toml"))?;
        Node::with_config(state_dir, config).await
    }

    /// Opens the state directory with `config` (read from `node.toml` and adjusted).
    pub async fn with_config(state_dir: &Path, config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let root = state_dir.join("vaults");
        std::fs::create_dir_all(&root)
            .map_err(|e| NodeError::Io(format!("{}: {e}", root.display())))?;
        let mut vaults = BTreeMap::new();
        for v in &config.vaults {
            vaults.insert(
                v.name.clone(),
                Arc::new(Vault::open(&root, state_dir, v).await?),
            );
        }
        Ok(Arc::new(Node {
            config,
            vaults,
            state_dir: state_dir.to_path_buf(),
            revoked: revocation::open(state_dir),
        }))
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
    let (_tx, rx) = tokio::sync::watch::channel(tls);
    let sched = tokio::spawn(jobs::scheduler(node.clone()));
    let fetch = tokio::spawn(revocation::fetcher(node.clone()));
    ferry_tls::serve::serve(listener, rx, routes::router(node)).await;
    sched.abort();
    fetch.abort();
    Ok(())
}
