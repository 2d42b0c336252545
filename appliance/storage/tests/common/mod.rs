//! Real servers for the backend tests (sshd, s3s-fs), and the archive cycle every backend runs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_archive::restore::Target;
use ferry_archive::{BackupOptions, DiskInput, FileSource, Manifest, Progress, Repository};
use ferry_storage::{Store, StoreOptions};
use sha2::{Digest as _, Sha256};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "server on {port} not up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn which(bin: &str, extra: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(extra.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

/// Installs Debian packages through the repository's `scripts/ensure-tools.sh` (a no-op for
/// packages already installed). Panics with the command to run when that fails.
pub fn ensure_debian(pkgs: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ensure-tools.sh");
    let ok = Command::new(script)
        .args(pkgs)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "test peers missing: apt-get install -y {}",
        pkgs.join(" ")
    );
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server process that can be killed and started again with the same command.
pub struct Proc {
    cmd: Vec<String>,
    child: Option<Child>,
    pub port: u16,
}

impl Proc {
    fn spawn(cmd: Vec<String>, port: u16) -> Proc {
        let mut p = Proc {
            cmd,
            child: None,
            port,
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port);
    }

    /// Kills the server and every process it forked (by pid, found through /proc).
    pub fn kill_tree(&mut self) {
        let Some(root) = self.child.as_ref().map(Child::id) else {
            return;
        };
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(parent) && !tree.contains(&pid) {
                    tree.push(pid);
                }
            }
            i += 1;
        }
        for pid in tree.iter().skip(1) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- S3 (s3s-fs)

pub const S3_ACCESS: &str = "ferrytestaccess";
pub const S3_SECRET: &str = "ferrytestsecret0123456789";

pub struct S3Server {
    pub proc: Proc,
    pub root: PathBuf,
}

impl S3Server {
    /// s3s-fs (checks SigV4) on a free loopback port, serving `root`; bucket `bkt` exists.
    pub fn start(root: &Path) -> S3Server {
        let home_bin = std::env::var("HOME").unwrap_or_default() + "/.cargo/bin";
        let bin = which("s3s-fs", &[&home_bin]).unwrap_or_else(|| {
            eprintln!("installing s3s-fs (about 7 minutes on 2 cores, once)");
            let ok = Command::new("cargo")
                .args([
                    "install",
                    "s3s-fs@0.14.1",
                    "--features",
                    "binary",
                    "--locked",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "s3s-fs not found: install it with \
                 `cargo install s3s-fs@0.14.1 --features binary --locked`"
            );
            which("s3s-fs", &[&home_bin]).unwrap()
        });
        std::fs::create_dir_all(root.join("bkt")).unwrap();
        let port = free_port();
        let cmd = vec![
            bin.to_string_lossy().into_owned(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            S3_ACCESS.into(),
            "--secret-key".into(),
            S3_SECRET.into(),
            root.to_string_lossy().into_owned(),
        ];
        S3Server {
            proc: Proc::spawn(cmd, port),
            root: root.to_path_buf(),
        }
    }

    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://bkt/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true&insecure=1",
            self.proc.port
        )
    }

    pub fn options(&self) -> StoreOptions {
        let mut o = fast_retry_options();
        o.secrets.access_key_id = Some(S3_ACCESS.into());
        o.secrets.secret_access_key = Some(S3_SECRET.into());
        o
    }
}

/// Retries quick enough for tests, still enough to ride out a server restart.
pub fn fast_retry_options() -> StoreOptions {
    StoreOptions {
        retries: 8,
        backoff: Duration::from_millis(100),
        op_timeout: Duration::from_secs(20),
        ..StoreOptions::default()
    }
}

// ---------------------------------------------------------------- SFTP (sshd)

pub const SFTP_USER: &str = "ferrysftp";
pub const SFTP_PASSWORD: &str = "Ferry-test-pw-7";

pub struct Sshd {
    pub proc: Proc,
    pub dir: PathBuf,
    pub client_key: PathBuf,
    pub host_key: PathBuf,
}

fn sshd_bin() -> PathBuf {
    if which("sshd", &["/usr/sbin"]).is_none() {
        ensure_debian(&["openssh-server"]);
    }
    which("sshd", &["/usr/sbin"]).unwrap_or_else(|| {
        panic!("sshd not found: install it with `apt-get install -y openssh-server`")
    })
}

/// A local user with a password, for password authentication (the tests run as root).
pub fn ensure_user() {
    let ok = Command::new("id").arg(SFTP_USER).output().unwrap();
    if !ok.status.success() {
        let _ = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", SFTP_USER])
            .status();
    }
    let mut c = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("{SFTP_USER}:{SFTP_PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
}

pub fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ferry-test", "-f"])
        .arg(path));
}

impl Sshd {
    /// sshd with its own config, host key, and an authorized client key, on a free port.
    pub fn start(dir: &Path) -> Sshd {
        let bin = sshd_bin();
        std::fs::create_dir_all("/run/sshd").unwrap();
        ensure_user();
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        let port = free_port();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\n\
                 AuthorizedKeysFile {ak}\nStrictModes no\nPermitRootLogin yes\n\
                 PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 Subsystem sftp internal-sftp\nMaxSessions 64\nMaxStartups 64\n",
                hk = host_key.display(),
                ak = dir.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        let cmd = vec![
            bin.to_string_lossy().into_owned(),
            "-D".into(),
            "-e".into(),
            "-f".into(),
            cfg.to_string_lossy().into_owned(),
        ];
        Sshd {
            proc: Proc::spawn(cmd, port),
            dir: dir.to_path_buf(),
            client_key,
            host_key,
        }
    }

    /// `SHA256:…` of the current host key.
    pub fn fingerprint(&self) -> String {
        let out = run(Command::new("ssh-keygen")
            .args(["-E", "sha256", "-l", "-f"])
            .arg(self.host_key.with_extension("pub")));
        out.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Replaces the host key and restarts the server.
    pub fn change_host_key(&mut self) {
        self.proc.kill();
        keygen(&self.host_key);
        self.proc.start();
    }

    pub fn url(&self, user: &str, path: &Path) -> String {
        format!(
            "sftp://{user}@127.0.0.1:{}{}",
            self.proc.port,
            path.display()
        )
    }

    /// Options for key auth as root, with the host key pinned by fingerprint.
    pub fn key_options(&self) -> StoreOptions {
        let mut o = fast_retry_options();
        o.secrets.key_file = Some(self.client_key.clone());
        o.secrets.host_fingerprint = Some(self.fingerprint());
        o
    }
}

// ---------------------------------------------------------------- the archive cycle

pub fn sha256_file(p: &Path) -> String {
    let data = std::fs::read(p).unwrap();
    hex::encode(Sha256::digest(&data))
}

pub fn input(p: &Path) -> DiskInput {
    DiskInput {
        name: p.file_name().unwrap().to_string_lossy().into_owned(),
        source: Arc::new(FileSource::open(p).unwrap()),
        changed: None,
        change_id: None,
        meta: BTreeMap::new(),
    }
}

pub async fn backup(
    repo: &Repository,
    disk: &Path,
) -> Result<Manifest, ferry_archive::ArchiveError> {
    let opts = BackupOptions::new("vm");
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

pub async fn verify_ok(repo: &Repository) {
    let r = ferry_archive::verify::verify(repo, &[], 4, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(r.ok(), "verify found damage: {:?}", r.damaged);
}

/// Overwrites 1 MiB at `off` with new random bytes.
pub fn touch_disk(p: &Path, off: u64, seed: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect();
    f.write_all_at(&data, off).unwrap();
}

/// The cycle every backend must pass: init, full backup, verify, restore (sha256 equal),
/// incremental, prune to the last point, GC, verify, restore the survivor.
pub async fn full_cycle(store: Arc<dyn Store>, work: &Path, disk_size: u64) {
    let disk = work.join("disk.raw");
    ferry_testkit::MixedDisk::new(disk_size, 11)
        .write(&disk)
        .unwrap();
    let repo = Repository::init(store.clone(), 1 << 20, 3).await.unwrap();
    let m1 = backup(&repo, &disk).await.unwrap();
    assert!(m1.disks[0].stats.new_chunks > 0);
    verify_ok(&repo).await;
    let sha1 = sha256_file(&disk);
    assert_eq!(restore_sha(&repo, &m1, &work.join("r1")).await, sha1);

    touch_disk(&disk, disk_size / 3, 0x5a);
    let m2 = backup(&repo, &disk).await.unwrap();
    let s2 = &m2.disks[0].stats;
    assert!(
        s2.new_chunks >= 1 && s2.new_chunks <= 2,
        "incremental stored {s2:?}"
    );
    let sha2 = sha256_file(&disk);
    assert_ne!(sha1, sha2);

    let keep = ferry_archive::prune::KeepOptions {
        last: Some(1),
        ..Default::default()
    };
    let d = ferry_archive::prune::prune(&repo, None, &keep, false)
        .await
        .unwrap();
    assert_eq!(d.iter().filter(|d| !d.keep).count(), 1, "{d:?}");
    let g = ferry_archive::gc::gc(&repo, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(g.removed_chunks >= 1, "{g:?}");
    let points = repo.list_points().await.unwrap();
    assert_eq!(points.len(), 1);
    verify_ok(&repo).await;
    assert_eq!(restore_sha(&repo, &points[0], &work.join("r2")).await, sha2);
    // Nothing but repository objects is left behind (no probe or temporary objects).
    for o in store.list("").await.unwrap() {
        assert!(
            o.key == "config" || o.key.starts_with("chunks/") || o.key.starts_with("points/"),
            "stray object {o:?}"
        );
    }
}

/// A disk of incompressible pseudo-random bytes.
pub fn random_disk(p: &Path, size: usize, seed: u64) {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    std::fs::write(p, data).unwrap();
}

// ---------------------------------------------------------------- FTP (pyftpdlib)

pub const FTP_USER: &str = "ferry";
pub const FTP_PASSWORD: &str = "ftp-test-pw";

pub struct Ftpd {
    pub proc: Proc,
}

/// A test CA and a server certificate it signed for `names` (DNS names or IPs), made with
/// the openssl CLI. Returns (CA cert, server cert, server key).
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca = dir.join(format!("{stem}-ca.crt"));
    let ca_key = dir.join(format!("{stem}-ca.key"));
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    let ext = dir.join(format!("{stem}.ext"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=Ferry test CA"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    let san: Vec<String> = names
        .iter()
        .map(|n| {
            if n.parse::<std::net::IpAddr>().is_ok() {
                format!("IP:{n}")
            } else {
                format!("DNS:{n}")
            }
        })
        .collect();
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            san.join(",")
        ),
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", &format!("/CN={}", names[0])])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca, cert, key)
}

impl Ftpd {
    /// pyftpdlib under Debian's python, serving `root`, optionally with explicit TLS.
    pub fn start(root: &Path, tls: Option<(&Path, &Path)>, drop_every: u32) -> Ftpd {
        Self::start_with(root, tls, drop_every, &[])
    }

    /// Like [`Ftpd::start`], with more `ftpd.py` arguments (`--implicit`, `--cut-data B N`).
    pub fn start_with(
        root: &Path,
        tls: Option<(&Path, &Path)>,
        drop_every: u32,
        extra: &[&str],
    ) -> Ftpd {
        let py = "/usr/bin/python3";
        let have = |py: &str| {
            Command::new(py)
                .args(["-c", "import pyftpdlib, OpenSSL"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !have(py) {
            ensure_debian(&["python3-pyftpdlib", "python3-openssl", "openssl"]);
        }
        let ok = Command::new(py)
            .args(["-c", "import pyftpdlib, OpenSSL"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "pyftpdlib missing: apt-get install -y python3-pyftpdlib python3-openssl"
        );
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ftpd.py");
        let mut cmd = vec![
            py.to_string(),
            script.to_string(),
            port.to_string(),
            root.to_string_lossy().into_owned(),
            FTP_USER.into(),
            FTP_PASSWORD.into(),
        ];
        if let Some((c, k)) = tls {
            cmd.extend([
                "--tls".into(),
                c.to_string_lossy().into_owned(),
                k.to_string_lossy().into_owned(),
            ]);
        }
        if drop_every > 0 {
            cmd.extend(["--drop-data".into(), drop_every.to_string()]);
        }
        cmd.extend(extra.iter().map(|a| a.to_string()));
        Ftpd {
            proc: Proc::spawn(cmd, port),
        }
    }

    pub fn url(&self, scheme: &str, host: &str, path: &str) -> String {
        // Plain FTP must be asked for explicitly.
        let insecure = if scheme == "ftp" { "?insecure=1" } else { "" };
        format!(
            "{scheme}://{FTP_USER}@{host}:{}{path}{insecure}",
            self.proc.port
        )
    }

    pub fn options(&self) -> StoreOptions {
        let mut o = fast_retry_options();
        o.secrets.password = Some(FTP_PASSWORD.into());
        o
    }
}

// ---------------------------------------------------------------- TLS front for plain servers

/// Terminates TLS on a free loopback port with `cert`/`key` (PEM) and forwards the plain
/// bytes to `backend_port`: HTTPS in front of s3s-fs. Returns the port; runs until the
/// runtime ends.
pub async fn tls_front(cert: &Path, key: &Path, backend_port: u16) -> u16 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Ok(mut plain) =
                    tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}
