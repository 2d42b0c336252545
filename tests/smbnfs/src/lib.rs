//! Peers for the SMB/NFS kernel-mount test: `smbd` (Debian samba) and `ganesha.nfsd`
//! (nfs-ganesha with the VFS FSAL, NFSv4 only) on the host's loopback, each with its own
//! configuration in a temporary directory, plus an HTTPS JSON POST to the appliance's agent.
//!
//! The appliance in QEMU reaches them as 10.0.2.2 through slirp, which connects to the
//! host's 127.0.0.1. The host kernel has no cifs or nfs client; only the guest mounts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_certcheck::{AnyCert, Verifier};
use rustls::pki_types::ServerName;

/// The SMB user (an account every Debian system has; the share forces writes to root).
pub const SMB_USER: &str = "backup";

fn wait_port(port: u16, what: &str, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = child.try_wait()? {
            bail!(
                "{what} exited ({st}) before listening on {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{what} not listening on {port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn need(bin: &str, pkgs: &str) -> anyhow::Result<()> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("{bin} is missing: apt-get install -y {pkgs} (tests/peers.d/smbnfs-slow.list)");
    }
    Ok(())
}

/// A free loopback port, preferring `want`.
pub fn port_near(want: u16) -> anyhow::Result<u16> {
    if std::net::TcpListener::bind(("127.0.0.1", want)).is_ok() {
        return Ok(want);
    }
    ferry_boot_tests::free_port()
}

/// `smbd` serving share `backups` (and nothing else) on a loopback port.
#[derive(Debug)]
pub struct Smbd {
    child: Child,
    conf: PathBuf,
    log: PathBuf,
    pub port: u16,
    /// The shared directory on the host.
    pub share: PathBuf,
    _dir: tempfile::TempDir,
}

impl Smbd {
    /// Starts smbd on 1445 (or a free port) with user [`SMB_USER`] and `password`.
    pub fn start(password: &str) -> anyhow::Result<Smbd> {
        need("smbd", "samba")?;
        let dir = tempfile::Builder::new().prefix("ferry-smbd-").tempdir()?;
        let d = dir.path();
        for sub in [
            "private", "lock", "state", "cache", "pid", "ncalrpc", "share",
        ] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let port = port_near(1445)?;
        let p = |s: &str| d.join(s).display().to_string();
        let conf = format!(
            "[global]\n  smb ports = {port}\n  interfaces = 127.0.0.1\n  bind interfaces only = yes\n  \
             disable netbios = yes\n  server role = standalone server\n  \
             server min protocol = SMB3_00\n  server smb encrypt = desired\n  \
             passdb backend = tdbsam:{}\n  private dir = {}\n  lock directory = {}\n  \
             state directory = {}\n  cache directory = {}\n  pid directory = {}\n  \
             ncalrpc dir = {}\n  log file = {}\n  log level = 1\n  map to guest = never\n  \
             load printers = no\n  printing = bsd\n  printcap name = /dev/null\n  \
             disable spoolss = yes\n\
             [backups]\n  path = {}\n  read only = no\n  valid users = {SMB_USER}\n  \
             force user = root\n",
            p("private/passdb.tdb"),
            p("private"),
            p("lock"),
            p("state"),
            p("cache"),
            p("pid"),
            p("ncalrpc"),
            p("log.smbd"),
            p("share"),
        );
        let conf_path = d.join("smb.conf");
        std::fs::write(&conf_path, conf)?;
        let mut pdbedit = Command::new("pdbedit")
            .arg("-s")
            .arg(&conf_path)
            .args(["-a", "-u", SMB_USER, "-t"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("run pdbedit")?;
        if let Some(mut i) = pdbedit.stdin.take() {
            writeln!(i, "{password}\n{password}")?;
        }
        let out = pdbedit.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "pdbedit -a {SMB_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = d.join("smbd.out");
        let mut child = spawn_smbd(&conf_path, &log)?;
        wait_port(port, "smbd", &mut child, &log)?;
        Ok(Smbd {
            child,
            conf: conf_path,
            log,
            port,
            share: d.join("share"),
            _dir: dir,
        })
    }
}

fn spawn_smbd(conf: &Path, log: &Path) -> anyhow::Result<Child> {
    Command::new("smbd")
        .args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(log)?,
        )
        .stderr(Stdio::null())
        .spawn()
        .context("start smbd")
}

/// Children of `parent` (from `/proc/*/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

impl Smbd {
    /// Kills smbd and the processes it forked for its clients (by pid), as a crash would.
    pub fn kill(&mut self) {
        let mut tree = vec![self.child.id()];
        let mut i = 0;
        while i < tree.len() {
            let kids = children_of(tree[i]);
            tree.extend(kids);
            i += 1;
        }
        for pid in tree.iter().skip(1) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts smbd again with the same configuration and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.child = spawn_smbd(&self.conf, &self.log)?;
        wait_port(self.port, "smbd", &mut self.child, &self.log)
    }
}

/// `ganesha.nfsd` exporting one directory as NFSv4 pseudo path `/export`.
#[derive(Debug)]
pub struct Ganesha {
    child: Child,
    pub port: u16,
    /// The exported directory on the host.
    pub export: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ganesha {
    pub fn start() -> anyhow::Result<Ganesha> {
        need("ganesha.nfsd", "nfs-ganesha nfs-ganesha-vfs")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-ganesha-")
            .tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("export"))?;
        std::fs::create_dir_all(d.join("recovery"))?;
        let port = port_near(20490)?;
        let conf = format!(
            "NFS_CORE_PARAM {{\n  NFS_Port = {port};\n  Protocols = 4;\n  Enable_NLM = false;\n  \
             Enable_RQUOTA = false;\n  Bind_addr = 127.0.0.1;\n}}\n\
             NFSV4 {{\n  Graceless = true;\n  RecoveryBackend = fs;\n  RecoveryRoot = {};\n}}\n\
             NFS_KRB5 {{ Active_krb5 = false; }}\n\
             EXPORT {{\n  Export_Id = 1;\n  Path = {};\n  Pseudo = /export;\n  \
             Access_Type = RW;\n  Squash = No_Root_Squash;\n  SecType = sys;\n  Protocols = 4;\n  \
             Transports = TCP;\n  FSAL {{ Name = VFS; }}\n}}\n",
            d.join("recovery").display(),
            d.join("export").display(),
        );
        let conf_path = d.join("ganesha.conf");
        std::fs::write(&conf_path, conf)?;
        let log = d.join("ganesha.log");
        let mut child = Command::new("ganesha.nfsd")
            .arg("-F")
            .arg("-f")
            .arg(&conf_path)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(d.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start ganesha.nfsd")?;
        wait_port(port, "ganesha.nfsd", &mut child, &log)?;
        Ok(Ganesha {
            child,
            port,
            export: d.join("export"),
            _dir: dir,
        })
    }
}

macro_rules! kill_on_drop {
    ($t:ty) => {
        impl Drop for $t {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    };
}
kill_on_drop!(Smbd);
kill_on_drop!(Ganesha);

/// Accepts the agent's self-signed certificate (the boot tests pin it separately).
/// POSTs a JSON body to the agent on 127.0.0.1:`port`; returns status and parsed body.
/// With `client`, presents that certificate (a registered agent wants mTLS).
pub fn post_json(
    port: u16,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
    client: Option<&ferry_boot_tests::ClientCert>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Verifier::new(AnyCert, provider));
    let cfg = match client {
        Some(c) => {
            let (certs, key) = c.rustls()?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("ferry-agent")?)?;
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(timeout))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let body = body.to_string();
    write!(
        tls,
        "POST {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).context(format!("POST {path}")),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let json = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let v = serde_json::from_str(&json).with_context(|| format!("HTTP {status}: {json}"))?;
    Ok((status, v))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
