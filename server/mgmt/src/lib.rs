//! ferry-mgmt: the management server, and the admin client the `ferry` CLI uses.
//!
//! # What this crate owns
//! - the state directory: `ca.pem` + `ca.key` (0600), `server.pem` + `server.key` (0600,
//!   the TLS server certificate for [`ferry_api::MGMT_SERVER_NAME`], also the client
//!   certificate the server presents to agents), `admin.pem` (0600: the first admin's
//!   certificate, key and the CA, for the CLI), `secrets.key` (0600, the key that seals
//!   plan credentials, [`secrets`]), `license.key` (0600, when the license service is on)
//!   and `mgmt.db` (0600, SQLite, [`db`]);
//! - enrollment tokens (one-time, expiring; stored as SHA-256 of the secret), the agent
//!   registry, admins, revocation and the signed revocation list pushed to agents and nodes, plans
//!   (with their credentials, sealed), collected job records and logs;
//! - the HTTPS API ([`routes`], documented in `ferry-api`), pairing with an agent, pushing
//!   plans, collecting jobs and logs by cursor ([`agents`]), the optional license service;
//! - the central catalog ([`catalog`]): the restore points of every registered storage
//!   node (`role: node`), read from each node with the server's certificate;
//! - [`client::AdminClient`]: the same API from the admin's side.
//!
//! It does not back anything up: the agents do. Credentials are stored in the database
//! sealed with ChaCha20-Poly1305 and sent only to the agent a plan is for, over mTLS; no
//! answer and no log line carries them.
//!
//! # Trust
//! Agents enroll with a token `ID.SECRET.CA_SHA256`: the third part pins this server's CA,
//! so the appliance trusts nothing before it has a certificate. Every caller is identified
//! by the SHA-256 of its client certificate in the registry, so revoking an agent takes
//! effect at once. Agents accept only clients signed by this CA whose name is the
//! management server's or an admin's.

//!
//! # Decisions where the issue is silent, and departures
//! - **Token format.** `ID.SECRET.CA_SHA256`: the CA pin rides in the token (as kubeadm's
//!   discovery hash does), so enrollment needs no prior trust; the server keeps only the
//!   SHA-256 of the secret. Tokens live 1 s to 30 days (`ferry mgmt token create --ttl`).
//! - **Pairing** is two calls on the agent (`/v1/pair/csr`, `/v1/pair/complete`), each with
//!   the console code; the server trusts the agent's self-signed certificate only for those
//!   two calls, and binds them to it: the leaf seen on the first call is pinned (SHA-256) for
//!   the second connection, and the CSR must be for that leaf's key. `ferry mgmt agents add`
//!   prints the leaf's SHA-256, which the appliance console shows too.
//! - **Renewal** (`POST /v1/agent/renew`, mTLS): an active agent or node sends a CSR and
//!   gets a new 825-day certificate for the same id; agents and nodes ask at two thirds of
//!   the lifetime. Every certificate issued to an agent is kept in the registry
//!   (`agent_certs`): earlier ones stay valid until they expire, and revoking the agent puts
//!   all of them on the revocation list. At most one renewal per agent per hour.
//! - **Collection** is bounded: a page must move the cursor forward and hold at most the
//!   records asked; page bodies are read up to 8 MiB, a round stops after 64 pages of each
//!   kind, 64 MiB or 5 minutes; one sync or collection runs per agent at a time (a hello
//!   while one runs starts none).
//! - **Revocation** is enforced here at once (hello, collection, plan push, run-now refuse
//!   a revoked agent; a revoked admin's calls get 403). Every revocation also goes on a
//!   list of certificate fingerprints that the CA signs ([`ferry_tls::revocation`]); the
//!   server pushes it to every agent and storage node after a revocation
//!   (`PUT /v1/revocations`, at the address each enrolled with) and at each sync or collect
//!   round; agents fetch it after each hello and nodes every `revocation_every` seconds
//!   (`GET /v1/agent/revocations`), as a fallback. Agents and nodes refuse the
//!   certificates on it. Fingerprints
//!   rather than an X.509 CRL: the registry names certificates by fingerprint, and agents
//!   registered before serials were kept could not be listed by serial.
//! - **Admins** (`/v1/admins`): the CLI makes the key and sends a CSR, so an admin's key
//!   never leaves the admin's machine. Names are never reused, and the last active admin
//!   cannot be revoked (nobody could add another).
//! - **Credentials** are kept (to re-push to an agent that missed a push) sealed under
//!   `secrets.key`. Losing that file loses the stored credentials: the server refuses to
//!   start rather than create a new key over sealed rows; re-applying the plans recovers.
//!   The key sits beside `ca.key`, so this protects copies of `mgmt.db` (backups,
//!   support bundles), not a compromised state directory.
//! - **Addresses.** The server reaches an agent at its `advertise` address, else its first
//!   reported address, else the TCP peer. The QEMU test reaches the host through a slirp
//!   `guestfwd` rule (10.0.2.100:9876, one `socat` per connection).

pub mod agents;
pub mod catalog;
pub mod client;
pub mod db;
pub mod routes;
pub mod secrets;
pub mod wire;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::v1::LicenseTerms;
use ferry_tls::pki::{Ca, Role};
use ferry_tls::trust::{server_config, ClientAuth, Identity};
use sha2::{Digest, Sha256};

/// Errors of the management server.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// A file of the state directory.
    #[error("{0}")]
    Io(String),
    /// TLS or certificates.
    #[error(transparent)]
    Tls(#[from] ferry_tls::TlsError),
    /// Talking to an agent failed.
    #[error("agent {agent}: {detail}")]
    Agent {
        /// Agent id or address.
        agent: String,
        /// What failed.
        detail: String,
    },
    /// The caller asked for something wrong.
    #[error("{0}")]
    Invalid(String),
    /// The key that seals plan credentials.
    #[error("plan credentials: {0}")]
    Secrets(String),
}

/// License service settings: every agent gets a license with these terms at registration.
#[derive(Debug, Clone)]
pub struct LicenseService {
    /// Licensee name.
    pub licensee: String,
    /// Protected hosts.
    pub hosts: u32,
    /// Protected sockets.
    pub sockets: u32,
    /// Validity of each license issued.
    pub days: u32,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// State directory.
    pub state_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Address agents use to reach this server (`https://host:port`), told to agents that
    /// pair; agents that enroll know it already.
    pub public_url: Option<String>,
    /// How often to collect from every agent.
    pub collect_every: Duration,
    /// License service; off when `None`.
    pub license: Option<LicenseService>,
}

/// The running server's shared state.
#[derive(Debug)]
pub struct Mgmt {
    /// Database.
    pub db: db::Db,
    /// The CA.
    pub ca: Ca,
    /// Server certificate chain (PEM, leaf then CA) and key.
    server_cert_pem: String,
    server_key_pem: String,
    /// Options.
    pub opts: Options,
    /// License issuer when the service is on.
    pub license: Option<ferry_tls::license::Issuer>,
    /// Per-agent HTTP clients (each checks that agent's name).
    clients: std::sync::Mutex<std::collections::HashMap<String, reqwest::Client>>,
    /// The revocation list version each agent has acknowledged (since this start).
    pub(crate) revocations_pushed: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// One lock per agent, held by the sync or collection running for it.
    syncing: std::sync::Mutex<SyncLocks>,
}

type SyncLocks = std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// Now in Unix seconds.
pub fn now() -> i64 {
    ferry_api::now_unix()
}

/// Constant-time comparison.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 hex of a string.
pub fn sha256_str(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Random hex of `n` bytes.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), MgmtError> {
    let io = |e: std::io::Error| MgmtError::Io(format!("write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn read(path: &Path) -> Result<String, MgmtError> {
    std::fs::read_to_string(path)
        .map_err(|e| MgmtError::Io(format!("read {}: {e}", path.display())))
}

impl Mgmt {
    /// Opens the state directory, creating the CA, server certificate, first admin and
    /// database on first use.
    pub fn open(opts: Options) -> Result<Arc<Mgmt>, MgmtError> {
        let dir = &opts.state_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| MgmtError::Io(format!("mkdir {}: {e}", dir.display())))?;
        let db = db::Db::open(&dir.join("mgmt.db"), &dir.join("secrets.key"))?;
        let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let ca = if ca_key.exists() {
            Ca::from_pem(&read(&ca_cert)?, &read(&ca_key)?)?
        } else {
            let ca = Ca::create("Ferry management CA")?;
            write_private(&ca_key, ca.key_pem().as_bytes())?;
            std::fs::write(&ca_cert, ca.cert_pem())
                .map_err(|e| MgmtError::Io(format!("write {}: {e}", ca_cert.display())))?;
            tracing::info!("created the management CA, sha256 {}", ca.sha256());
            ca
        };
        let (srv_cert, srv_key) = (dir.join("server.pem"), dir.join("server.key"));
        if !srv_key.exists() {
            let (c, k) = ca.issue(Role::Server, "", 3650)?;
            write_private(&srv_key, k.as_bytes())?;
            write_private(&srv_cert, format!("{c}{}", ca.cert_pem()).as_bytes())?;
        }
        let admin = dir.join("admin.pem");
        if !admin.exists() {
            let (c, k) = ca.issue(Role::Admin, "admin", 3650)?;
            db.add_admin("admin", &ferry_tls::pem_sha256(&c)?, now())?;
            write_private(&admin, format!("{c}{k}{}", ca.cert_pem()).as_bytes())?;
            tracing::info!("wrote the first admin's certificate to {}", admin.display());
        }
        let license = match &opts.license {
            None => None,
            Some(_) => {
                let p = dir.join("license.key");
                Some(if p.exists() {
                    ferry_tls::license::Issuer::from_hex(&read(&p)?)?
                } else {
                    let i = ferry_tls::license::Issuer::generate();
                    write_private(&p, i.secret_hex().as_bytes())?;
                    i
                })
            }
        };
        Ok(Arc::new(Mgmt {
            db,
            ca,
            server_cert_pem: read(&srv_cert)?,
            server_key_pem: read(&srv_key)?,
            opts,
            license,
            clients: std::sync::Mutex::new(std::collections::HashMap::new()),
            revocations_pushed: std::sync::Mutex::new(std::collections::HashMap::new()),
            syncing: std::sync::Mutex::new(std::collections::HashMap::new()),
        }))
    }

    /// The current revocation list, signed. Its version is the number of entries: the
    /// list only grows.
    pub fn revocation_list(&self) -> Result<ferry_tls::revocation::SignedRevocations, MgmtError> {
        let entries = self.db.revoked()?;
        let l = ferry_tls::revocation::RevocationList {
            version: entries.len() as u64,
            issued_unix: now(),
            entries,
        };
        Ok(self.ca.sign_revocations(&l)?)
    }

    /// Issues an admin certificate for `csr_pem` and registers it.
    pub fn create_admin(&self, name: &str, csr_pem: &str) -> Result<wire::AdminCreated, MgmtError> {
        wire::check_admin_name(name).map_err(MgmtError::Invalid)?;
        let cert_pem = self
            .ca
            .sign_csr(csr_pem, Role::Admin, name, 825)
            .map_err(|e| MgmtError::Invalid(e.to_string()))?;
        let sha = ferry_tls::pem_sha256(&cert_pem)?;
        let t = now();
        self.db.create_admin(name, &sha, t)?;
        Ok(wire::AdminCreated {
            admin: wire::AdminInfo {
                name: name.to_string(),
                cert_sha256: sha,
                created_unix: t,
                revoked_unix: None,
            },
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }

    /// Revokes an admin; refuses to revoke the last active one.
    pub fn revoke_admin(&self, name: &str) -> Result<wire::AdminInfo, MgmtError> {
        let all = self.db.admins()?;
        let Some(a) = all.iter().find(|a| a.name == name) else {
            return Err(MgmtError::Invalid(format!("no admin {name:?}")));
        };
        if a.revoked_unix.is_none()
            && all
                .iter()
                .filter(|x| x.revoked_unix.is_none() && x.name != name)
                .count()
                == 0
        {
            return Err(MgmtError::Invalid(format!(
                "{name} is the last active admin; add another before revoking it"
            )));
        }
        self.db.revoke_cert(&a.cert_sha256, "admin", name, now())?;
        self.db
            .admins()?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| MgmtError::Invalid(format!("no admin {name:?}")))
    }

    /// The TLS server config: client certificates of the CA optional (enrollment has none).
    pub fn server_tls(&self) -> Result<Arc<rustls::ServerConfig>, MgmtError> {
        Ok(server_config(
            Identity::from_pem(&self.server_cert_pem, &self.server_key_pem)?,
            ClientAuth::Optional(self.ca.cert_pem().to_string()),
        )?)
    }

    /// The identity this server presents to agents.
    pub fn identity(&self) -> Result<Identity, MgmtError> {
        Ok(Identity::from_pem(
            &self.server_cert_pem,
            &self.server_key_pem,
        )?)
    }

    /// A new enrollment token: (id, token to hand out, expiry).
    pub fn create_token(
        &self,
        ttl: Duration,
        note: Option<&str>,
    ) -> Result<ferry_api::v1::TokenCreated, MgmtError> {
        let id = random_hex(6);
        let secret = random_hex(16);
        let now = now();
        let expires = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        self.db
            .add_token(&id, &sha256_str(&secret), now, expires, note)?;
        Ok(ferry_api::v1::TokenCreated {
            token: format!("{id}.{secret}.{}", self.ca.sha256()),
            id,
            expires_unix: expires,
        })
    }

    /// A license for an agent, when the service is on.
    pub fn issue_license(
        &self,
        agent_id: &str,
    ) -> Result<Option<ferry_api::v1::License>, MgmtError> {
        let (Some(i), Some(svc)) = (&self.license, &self.opts.license) else {
            return Ok(None);
        };
        let now = now();
        Ok(Some(i.sign(LicenseTerms {
            id: random_hex(6),
            licensee: svc.licensee.clone(),
            hosts: svc.hosts,
            sockets: svc.sockets,
            issued_unix: now,
            expires_unix: now + i64::from(svc.days) * 86400,
            agent_id: Some(agent_id.to_string()),
        })?))
    }

    /// The lock a sync or collection for agent `id` holds: at most one runs per agent.
    pub fn sync_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.syncing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn agent_client(&self, id: &str) -> Result<reqwest::Client, MgmtError> {
        let mut m = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(id) {
            return Ok(c.clone());
        }
        let cfg = ferry_tls::trust::client_config(
            ferry_tls::trust::ServerTrust::Ca {
                ca_pem: self.ca.cert_pem().to_string(),
                name: ferry_api::agent_server_name(id),
            },
            Some(self.identity()?),
        )?;
        let c = ferry_tls::http_client(cfg)?;
        m.insert(id.to_string(), c.clone());
        Ok(c)
    }
}

/// Runs the server until the future is dropped: the API and the collector.
pub async fn serve(m: Arc<Mgmt>) -> Result<(), MgmtError> {
    let listener = tokio::net::TcpListener::bind(m.opts.listen)
        .await
        .map_err(|e| MgmtError::Io(format!("bind {}: {e}", m.opts.listen)))?;
    serve_on(m, listener).await
}

/// Like [`serve`] on a bound listener.
pub async fn serve_on(m: Arc<Mgmt>, listener: tokio::net::TcpListener) -> Result<(), MgmtError> {
    let (_tx, rx) = tokio::sync::watch::channel(m.server_tls()?);
    let collector = tokio::spawn(agents::collect_loop(m.clone()));
    ferry_tls::serve::serve(listener, rx, routes::router(m)).await;
    collector.abort();
    Ok(())
}
