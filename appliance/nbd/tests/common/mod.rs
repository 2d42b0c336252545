//! Shared helpers: starting real NBD peers, generating disks and certificates, and reading
//! what `nbdinfo --map` prints.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_nbd::StatusExtent;

/// Fails the test with an install hint when a peer tool is missing.
pub fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; these tests need real NBD peers: \
         apt-get install -y nbdkit libnbd-bin qemu-utils"
    );
}

/// A peer process, killed when dropped.
pub struct Peer {
    child: Child,
    pub uri: String,
    pub socket: Option<PathBuf>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_unix(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "peer exited with {st} before listening on {}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("peer did not listen on {}", path.display());
}

fn wait_tcp(port: u16, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("peer exited with {st} before listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("peer did not listen on port {port}");
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `qemu-nbd` serving `file` read-only on a unix socket in `dir` as export `disk`.
pub fn qemu_nbd(dir: &Path, file: &Path, fmt: &str, extra: &[&str]) -> Peer {
    need("qemu-nbd");
    let sock = dir.join(format!("qemu-{}.sock", rand_suffix()));
    let mut child = Command::new("qemu-nbd")
        .args(["-r", "-t", "-e", "8", "-x", "disk", "-f", fmt, "-k"])
        .arg(&sock)
        .args(extra)
        .arg(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start qemu-nbd");
    wait_unix(&sock, &mut child);
    Peer {
        child,
        uri: format!("nbd+unix:///disk?socket={}", sock.display()),
        socket: Some(sock),
    }
}

/// `qemu-nbd` on a TCP port (URI `nbd://127.0.0.1:PORT/disk`).
pub fn qemu_nbd_tcp(file: &Path, fmt: &str, extra: &[&str]) -> Peer {
    need("qemu-nbd");
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new("qemu-nbd")
            .args([
                "-r",
                "-t",
                "-e",
                "8",
                "-x",
                "disk",
                "-f",
                fmt,
                "-b",
                "127.0.0.1",
                "-p",
            ])
            .arg(port.to_string())
            .args(extra)
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu-nbd");
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(_)) = child.try_wait() {
            continue; // port taken meanwhile: try another
        }
        wait_tcp(port, &mut child);
        return Peer {
            child,
            uri: format!("nbd://127.0.0.1:{port}/disk"),
            socket: None,
        };
    }
    panic!("could not start qemu-nbd on a free port");
}

/// `nbdkit` in the foreground on a unix socket in `dir`.
pub fn nbdkit(dir: &Path, args: &[&str]) -> Peer {
    need("nbdkit");
    let sock = dir.join(format!("nbdkit-{}.sock", rand_suffix()));
    let mut child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-U"])
        .arg(&sock)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start nbdkit");
    wait_unix(&sock, &mut child);
    Peer {
        child,
        uri: format!("nbd+unix:///?socket={}", sock.display()),
        socket: Some(sock),
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command and returns stdout, failing the test with stderr on error.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nbdinfo --map[=CONTEXT] URI`, merged into runs of equal flags.
pub fn nbdinfo_map(uri: &str, context: Option<&str>) -> Vec<StatusExtent> {
    need("nbdinfo");
    let flag = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".to_string(),
    };
    let out = run(Command::new("nbdinfo").arg(flag).arg(uri));
    let ext = out.lines().filter(|l| !l.trim().is_empty()).map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        StatusExtent {
            offset: f[0].parse().unwrap(),
            len: f[1].parse().unwrap(),
            flags: f[2].parse().unwrap(),
        }
    });
    ferry_nbd::proto::merge_extents(ext)
}

/// A sparse raw test disk of `size` bytes: data, holes and written zeros at uneven places.
pub fn make_disk(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut content = vec![0u8; size as usize];
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Regions aligned to 64 KiB so that every server reports them the same way.
    let unit = 64 << 10;
    let mut off = 0u64;
    while off < size {
        let len = ((1 + next() % 24) * unit).min(size - off);
        match next() % 4 {
            0 | 1 => {
                let mut buf = vec![0u8; len as usize];
                for b in buf.chunks_mut(8) {
                    let v = next().to_le_bytes();
                    b.copy_from_slice(&v[..b.len()]);
                }
                f.write_all_at(&buf, off).unwrap();
                content[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            2 => f.write_all_at(&vec![0u8; len as usize], off).unwrap(),
            _ => {}
        }
        off += len;
    }
    f.sync_all().unwrap();
    content
}

/// Test PKI: a CA, a server certificate for localhost/127.0.0.1 and a client certificate,
/// written in the layout qemu, nbdkit and libnbd read.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: Vec<u8>,
    pub server_der: Vec<u8>,
    pub client_cert_pem: Vec<u8>,
    pub client_key_pem: Vec<u8>,
    /// A separate directory holding only the client side (for libnbd's tls-certificates).
    pub client_dir: PathBuf,
}

pub fn pki(base: &Path) -> Pki {
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let dir = base.join("pki");
    let client_dir = base.join("pki-client");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&client_dir).unwrap();
    let validity = |p: &mut CertificateParams| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2040, 1, 1);
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Ferry test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    sp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    sp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut sp);
    let skey = KeyPair::generate().unwrap();
    let scert = sp.signed_by(&skey, &ca).unwrap();

    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(DnType::CommonName, "ferry-client");
    cp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut cp);
    let ckey = KeyPair::generate().unwrap();
    let ccert = cp.signed_by(&ckey, &ca).unwrap();

    let w = |d: &Path, n: &str, s: &str| std::fs::write(d.join(n), s).unwrap();
    w(&dir, "ca-cert.pem", &ca.pem());
    w(&dir, "server-cert.pem", &scert.pem());
    w(&dir, "server-key.pem", &skey.serialize_pem());
    w(&dir, "client-cert.pem", &ccert.pem());
    w(&dir, "client-key.pem", &ckey.serialize_pem());
    w(&client_dir, "ca-cert.pem", &ca.pem());
    w(&client_dir, "client-cert.pem", &ccert.pem());
    w(&client_dir, "client-key.pem", &ckey.serialize_pem());
    Pki {
        dir,
        client_dir,
        ca_pem: ca.pem().into_bytes(),
        server_der: scert.der().to_vec(),
        client_cert_pem: ccert.pem().into_bytes(),
        client_key_pem: ckey.serialize_pem().into_bytes(),
    }
}

/// Reads a whole export with our client (holes included, in 1 MiB requests).
pub async fn read_all(client: &ferry_nbd::NbdClient) -> Vec<u8> {
    let size = client.size();
    let mut out = Vec::with_capacity(size as usize);
    let step = 3 << 20; // not a power of two: exercises splitting and partial tails
    let mut pos = 0;
    while pos < size {
        let n = step.min(size - pos);
        out.extend(client.read_at(pos, vec![0u8; n as usize]).await.unwrap());
        pos += n;
    }
    out
}
