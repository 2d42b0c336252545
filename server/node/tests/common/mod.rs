//! Helpers of the storage node tests: a CA, identities, a real `ferry-node` process on
//! loopback, `node://` stores, disks, backups and restores.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use ferry_archive::restore::Target;
use ferry_archive::{BackupOptions, DiskInput, FileSource, Manifest, Progress, Repository};
use ferry_tls::pki::{Ca, Role};
use sha2::{Digest as _, Sha256};

pub const MIB: u64 = 1 << 20;

/// A test world: a CA, a node state directory, client identities.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub state: PathBuf,
}

/// A running `ferry-node` process, killed when dropped.
pub struct NodeProc {
    pub child: Child,
    pub addr: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProc {
    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGHUP: the node re-reads node.toml. Fails the test if the node has exited.
    pub fn hup(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the node exited");
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill() on the pid of our own child, not yet reaped, has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }
}

/// Polls `check` every 50 ms until it holds; fails the test after 30 s, naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out (30 s) waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

impl World {
    /// A CA, the node's certificate (node id `node1`) and `config` as node.toml.
    pub fn new(config: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("test management CA").unwrap();
        let state = dir.path().join("node");
        let (c, k) = ca.issue(Role::Agent, "node1", 30).unwrap();
        ferry_node::enroll::install_identity(&state, &c, &k, ca.cert_pem()).unwrap();
        std::fs::write(state.join("node.toml"), config).unwrap();
        World { dir, ca, state }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an identity bundle for `role`/`name` signed by `ca` (default: the world's CA).
    pub fn identity_of(&self, ca: &Ca, role: Role, name: &str) -> PathBuf {
        let (c, k) = ca.issue(role, name, 30).unwrap();
        let p = self.path(&format!("id-{name}-{}.pem", &ca.sha256()[..8]));
        std::fs::write(&p, format!("{c}{k}{}", self.ca.cert_pem())).unwrap();
        p
    }

    /// An agent identity (`agent-<name>`).
    pub fn agent(&self, name: &str) -> PathBuf {
        self.identity_of(&self.ca, Role::Agent, name)
    }

    /// Starts the node on `port` (0: any free port).
    pub fn start(&self, port: u16) -> NodeProc {
        self.spawn(port, Stdio::inherit())
    }

    /// Starts the node on any free port with its log (stderr) appended to `log`.
    pub fn start_logged(&self, log: &Path) -> NodeProc {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.spawn(0, Stdio::from(f))
    }

    /// Replaces node.toml (a running node applies it at its next SIGHUP, [`NodeProc::hup`]).
    pub fn write_config(&self, config: &str) {
        std::fs::write(self.state.join("node.toml"), config).unwrap();
    }

    fn spawn(&self, port: u16, stderr: Stdio) -> NodeProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-node"))
            .arg("--state")
            .arg(&self.state)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("FERRY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("node said {line:?}"))
            .to_string();
        NodeProc { child, addr }
    }

    pub fn vault_dir(&self, vault: &str) -> PathBuf {
        self.state.join("vaults").join(vault)
    }

    /// Bytes under a vault's chunks/.
    pub fn chunk_bytes(&self, vault: &str) -> u64 {
        du(&self.vault_dir(vault).join("chunks"))
    }

    /// Number of chunk objects in a vault.
    pub fn chunk_count(&self, vault: &str) -> usize {
        count(&self.vault_dir(vault).join("chunks"))
    }
}

/// Bytes of the objects under `p` (temporaries of writes in flight are not objects).
fn du(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let Ok(m) = e.metadata() else {
                return 0;
            };
            if m.is_dir() {
                du(&e.path())
            } else if e.file_name().to_string_lossy().starts_with(".tmp") {
                0
            } else {
                m.len()
            }
        })
        .sum()
}

fn count(p: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.metadata().is_ok_and(|m| m.is_dir()) {
                count(&e.path())
            } else {
                usize::from(!e.file_name().to_string_lossy().starts_with(".tmp"))
            }
        })
        .sum()
}

/// The `node://` URL of `vault` as `identity` (what `ferry --repo` and agents are given).
pub fn node_url(node: &NodeProc, vault: &str, identity: &Path) -> String {
    format!(
        "node://{}/{vault}?node=node1&identity={}&retries=1",
        node.addr,
        identity.display()
    )
}

/// A `node://` store for `vault` as `identity`.
pub fn store(node: &NodeProc, vault: &str, identity: &Path) -> Arc<dyn ferry_storage::Store> {
    ferry_storage::open_store_with(
        &node_url(node, vault, identity),
        ferry_storage::StoreOptions::default(),
    )
    .unwrap()
}

pub async fn repo(node: &NodeProc, vault: &str, identity: &Path) -> Repository {
    Repository::open(store(node, vault, identity))
        .await
        .unwrap()
}

pub fn input(p: &Path) -> DiskInput {
    DiskInput {
        name: "disk0".into(),
        source: Arc::new(FileSource::open(p).unwrap()),
        changed: None,
        change_id: None,
        meta: BTreeMap::new(),
    }
}

pub async fn backup(
    repo: &Repository,
    disk: &Path,
    group: &str,
    parent: Option<&str>,
) -> Result<Manifest, ferry_archive::ArchiveError> {
    let mut opts = BackupOptions::new(group);
    opts.parent = parent.map(str::to_string);
    ferry_archive::backup(
        repo,
        vec![input(disk)],
        &opts,
        Arc::new(Progress::default()),
    )
    .await
}

pub async fn restore_sha(repo: &Repository, m: &Manifest, out: &Path) -> String {
    ferry_archive::restore::restore(
        repo,
        m,
        0,
        &Target::File(out.to_path_buf()),
        4,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    sha256_file(out)
}

pub fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The mixed test disk (holes, zeros, random, text, records).
pub fn mixed_disk(p: &Path, size: u64, seed: u64) {
    ferry_testkit::MixedDisk::new(size, seed).write(p).unwrap();
}

/// `len` bytes of deterministic random data.
pub fn random_disk(p: &Path, len: usize, seed: u64) {
    let mut b = vec![0u8; len];
    ferry_testkit::Rng::new(seed).fill(&mut b);
    std::fs::write(p, b).unwrap();
}

/// Overwrites `len` bytes at `off` with random data.
pub fn scribble(p: &Path, off: u64, len: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    ferry_testkit::Rng::new(seed).fill(&mut b);
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&b, off).unwrap();
}

/// A raw HTTPS client with `identity`, trusting the world's CA for the node's name.
pub fn http(world: &World, identity: &Path) -> reqwest::Client {
    ferry_tls::http_client(tls_config(world, identity)).unwrap()
}

/// The TLS client config of [`http`]: `identity`, trusting the world's CA for the node's name.
pub fn tls_config(world: &World, identity: &Path) -> rustls::ClientConfig {
    let text = std::fs::read_to_string(identity).unwrap();
    let certs: Vec<&str> = text
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    let key_start = text.find("-----BEGIN PRIVATE KEY-----").unwrap();
    let key_end =
        text.find("-----END PRIVATE KEY-----").unwrap() + "-----END PRIVATE KEY-----\n".len();
    let id = ferry_tls::trust::Identity::from_pem(certs[0], &text[key_start..key_end]).unwrap();
    ferry_tls::trust::client_config(
        ferry_tls::trust::ServerTrust::Ca {
            ca_pem: world.ca.cert_pem().to_string(),
            name: ferry_api::agent_server_name("node1"),
        },
        Some(id),
    )
    .unwrap()
}

/// Runs a node job as `admin`.
pub async fn job(
    world: &World,
    node: &NodeProc,
    admin: &Path,
    vault: &str,
    job: &str,
) -> ferry_api::node::JobReport {
    let r = http(world, admin)
        .post(format!(
            "https://{}/v1/vaults/{vault}/jobs/{job}",
            node.addr
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{job}: {}", r.status());
    r.json().await.unwrap()
}

/// Retention on the node as `identity`: keep the newest `keep_last` points of `vault`.
pub async fn prune_keep_last(
    world: &World,
    node: &NodeProc,
    identity: &Path,
    vault: &str,
    keep_last: u32,
) -> Vec<ferry_api::node::PruneDecision> {
    http(world, identity)
        .post(format!("https://{}/v1/vaults/{vault}/prune", node.addr))
        .json(&ferry_api::node::PruneRequest {
            keep_last: Some(keep_last),
            ..Default::default()
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// node.toml for the tests: vault `main` (1 MiB chunks), `other`, and `small` with a quota;
/// agents `a1` and `a2` on main and small, `admin-root` admin everywhere.
pub const CONFIG: &str = r#"
[[vault]]
name = "main"
chunk_size = 1048576

[[vault]]
name = "other"
chunk_size = 1048576

[[vault]]
name = "small"
chunk_size = 1048576
quota = "6M"

[[grant]]
identity = "agent-a1"
vaults = ["main", "small"]

[[grant]]
identity = "agent-a2"
vaults = ["main"]

[[grant]]
identity = "admin-root"
vaults = ["*"]
admin = true
"#;

/// A file whose reads at or past `gate_at` wait until the gate opens: a backup is provably
/// still running while a test acts (kills the node, runs GC).
#[derive(Debug)]
pub struct Gated {
    pub inner: FileSource,
    pub gate_at: u64,
    pub gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl ferry_archive::BlockSource for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn allocation(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<ferry_archive::Extent>>, ferry_archive::SourceError> {
        self.inner.allocation(offset, len).await
    }
    async fn read_at(
        &self,
        offset: u64,
        buf: Vec<u8>,
    ) -> Result<Vec<u8>, ferry_archive::SourceError> {
        if offset >= self.gate_at {
            let _p = self.gate.acquire().await;
        }
        self.inner.read_at(offset, buf).await
    }
}

/// Whether the third-party programs `tools` are all on PATH. In CI (`CI` set) a missing one
/// fails the test; elsewhere the test says what is missing and skips (returns false).
/// tests/run.sh installs them from tests/peers.d/core.list.
pub fn peers(tools: &[&str]) -> bool {
    let on_path = |t: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
    };
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not installed (apt-get install -y qemu-utils libnbd-bin nbdkit, or tests/run.sh)",
        missing.join(", ")
    );
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// Runs `cmd`, fails the test with its output unless it succeeds, returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The workspace's `ferry` CLI, from the same target directory and profile as `ferry-node`:
/// `FERRY_BIN` when set, else built with cargo once per test binary (a no-op when fresh).
pub fn ferry_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("FERRY_BIN") {
            return p.into();
        }
        let dir = Path::new(env!("CARGO_BIN_EXE_ferry-node"))
            .parent()
            .unwrap();
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-q", "-p", "ferry-cli", "--bin", "ferry"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            c.arg("--release");
        }
        assert!(c.status().unwrap().success(), "cargo build -p ferry-cli");
        dir.join("ferry")
    })
    .clone()
}

/// `ferry --repo URL`.
pub fn ferry(repo_url: &str) -> Command {
    let mut c = Command::new(ferry_bin());
    c.arg("--repo").arg(repo_url);
    c
}

/// A child process (a server of a test), killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits until `path` exists (a server's socket); fails if the process exits first.
    pub fn wait_for(&mut self, path: &Path) {
        let start = std::time::Instant::now();
        while !path.exists() {
            if let Some(st) = self.0.try_wait().unwrap() {
                panic!("the server exited early: {st}");
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn term(&mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.0.id()).unwrap();
        // SAFETY: kill() on the pid of our own child, not yet reaped, has no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.0.wait().unwrap()
    }
}

/// Lock objects in a vault (`locks/`).
pub fn lock_count(world: &World, vault: &str) -> usize {
    count(&world.vault_dir(vault).join("locks"))
}
