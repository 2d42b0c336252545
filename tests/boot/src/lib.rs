//! QEMU harness for Ferry's boot tests: boots `target/appliance/` with
//! direct kernel boot under TCG, captures the serial console to a file,
//! forwards a free host port to the agent's 9876 over slirp, and drives the
//! VM through QMP. The HTTPS client accepts the agent's self-signed
//! certificate but records it, so tests can pin it against `/v1/status`.
//!
//! Nothing is skipped silently: a missing QEMU or missing artifacts fail the
//! test with the command that fixes it.

pub mod ova;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_certcheck::{AnyCert, CertCheck, Verifier};
use rustls::client::danger::ServerCertVerified;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

pub const QEMU: &str = "qemu-system-x86_64";

/// The workspace root.
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

/// `target/appliance`, or `$FERRY_APPLIANCE_DIR`.
pub fn appliance_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_APPLIANCE_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("appliance")
}

/// Fails clearly when QEMU or the image are missing.
pub fn preflight() -> anyhow::Result<PathBuf> {
    match Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        _ => bail!(
            "{QEMU} is not installed: apt-get install -y qemu-system-x86 (boot tests never skip)"
        ),
    }
    let dir = appliance_dir();
    for f in ["vmlinuz", "initramfs.cpio.zst"] {
        if !dir.join(f).exists() {
            bail!(
                "{} is missing: build the image first with `cargo run -p ferry-image` (or run tests/boot.sh)",
                dir.join(f).display()
            );
        }
    }
    Ok(dir)
}

/// A free TCP port on loopback (racy by nature, but QEMU binds it at once).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOpts {
    /// Extra kernel command line words (`ferry.*`); direct kernel boot only.
    pub cmdline: String,
    /// QEMU NIC model: `e1000` (VMware-like), `vmxnet3` or `virtio-net-pci`.
    pub nic: &'static str,
    /// Guest address the host port forwards to.
    pub guest_ip: String,
    /// Boot the appliance disk through OVMF instead of the kernel directly.
    pub disk: Option<DiskBoot>,
    /// slirp `guestfwd` rules (`tcp:10.0.2.100:9876-cmd:socat - TCP:127.0.0.1:PORT`): a
    /// guest address that reaches a host service, with no route to the host's loopback.
    pub guestfwd: Vec<String>,
}

/// Booting the appliance's VMDK the way vCenter does: UEFI firmware, the
/// disk as the only disk, and optionally a CD-ROM (the OVF environment ISO).
#[derive(Debug, Clone)]
pub struct DiskBoot {
    pub vmdk: PathBuf,
    pub cdrom: Option<PathBuf>,
    /// Memory in MiB (the OVF asks for 2048).
    pub memory_mib: u32,
    /// QEMU's emulation of the VMware backdoor port (`-machine vmport=`):
    /// the appliance must not touch it unless CPUID says VMware.
    pub vmport: bool,
}

impl Default for BootOpts {
    fn default() -> Self {
        Self {
            cmdline: String::new(),
            nic: "e1000",
            guest_ip: "10.0.2.15".into(),
            disk: None,
            guestfwd: Vec::new(),
        }
    }
}

/// OVMF from Debian's `ovmf`: the firmware code and the variable store
/// template (each VM gets its own copy of the variables).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// A running appliance VM.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub started: Instant,
    console: PathBuf,
    qmp: PathBuf,
    /// The admin certificate, once [`Vm::pair_with_test_ca`] registered the agent: every
    /// request then presents it (the agent wants mTLS after registration).
    client: Option<ClientCert>,
}

/// A client certificate and key (PEM) for mTLS requests.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientCert {
    /// The certificate chain and key for `with_client_auth_cert`.
    pub fn rustls(
        &self,
    ) -> anyhow::Result<(
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )> {
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("client certificate PEM")?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("client key PEM")?;
        Ok((certs, key))
    }
}

/// The pairing code the agent shows last on a console text.
pub fn pairing_code(console: &str) -> Option<String> {
    console
        .lines()
        .rev()
        .find_map(|l| l.split("PAIRING CODE ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

impl Vm {
    pub fn boot(opts: &BootOpts) -> anyhow::Result<Self> {
        let art = preflight()?;
        let dir = tempfile::Builder::new().prefix("ferry-boot-").tempdir()?;
        let console = dir.path().join("console.log");
        let qmp = dir.path().join("qmp.sock");
        let port = free_port()?;
        let mut cmd = Command::new(QEMU);
        cmd.args(["-accel", "tcg", "-smp", "1"])
            .args(["-display", "none", "-vga", "none", "-monitor", "none"]);
        match &opts.disk {
            None => {
                let append = format!(
                    "console=ttyS0,115200 quiet panic=-1 ferry.debug=1 {}",
                    opts.cmdline
                );
                cmd.args(["-m", "512", "-no-reboot"])
                    .arg("-kernel")
                    .arg(art.join("vmlinuz"))
                    .arg("-initrd")
                    .arg(art.join("initramfs.cpio.zst"))
                    .arg("-append")
                    .arg(append.trim());
            }
            Some(d) => {
                for f in [OVMF_CODE, OVMF_VARS] {
                    if !Path::new(f).exists() {
                        bail!("{f} is missing: apt-get install -y ovmf (boot tests never skip)");
                    }
                }
                let vars = dir.path().join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars).context("copy the OVMF variable store")?;
                // QEMU appends grains to a streamOptimized VMDK but cannot
                // rewrite them, so the guest's writes go to a temporary
                // overlay (snapshot=on) that lives as long as this QEMU
                // process, across guest reboots: like vCenter, which turns
                // the OVA's disk into a writable one at import.
                cmd.args(["-m", &d.memory_mib.to_string()])
                    .arg("-machine")
                    .arg(if d.vmport {
                        "pc,vmport=on"
                    } else {
                        "pc,vmport=off"
                    })
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "file={},format=vmdk,if=ide,index=0,media=disk,snapshot=on",
                        d.vmdk.display()
                    ));
                if let Some(iso) = &d.cdrom {
                    cmd.arg("-drive").arg(format!(
                        "file={},format=raw,if=ide,index=2,media=cdrom,readonly=on",
                        iso.display()
                    ));
                }
            }
        }
        cmd.arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-{}:9876{}",
                opts.guest_ip,
                opts.guestfwd
                    .iter()
                    // QEMU's option syntax escapes a comma by doubling it.
                    .map(|r| format!(",guestfwd={}", r.replace(',', ",,")))
                    .collect::<String>()
            ))
            .arg("-device")
            .arg(format!("{},netdev=n0", opts.nic))
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().with_context(|| format!("start {QEMU}"))?;
        Ok(Self {
            child,
            dir,
            port,
            started: Instant::now(),
            console,
            qmp,
            client: None,
        })
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits for `needle` on the console; returns seconds since boot.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return Ok(self.started.elapsed().as_secs_f64());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({st}) before {needle:?} appeared{}",
                    self.stderr_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{needle:?} did not appear on the console within {}s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Counts occurrences of `needle` on the console.
    pub fn console_count(&self, needle: &str) -> usize {
        self.console().matches(needle).count()
    }

    fn stderr_tail(&mut self) -> String {
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        if s.is_empty() {
            s
        } else {
            format!(": {s}")
        }
    }

    /// HTTPS request to the agent through the forwarded port (with the admin certificate
    /// once the agent is registered).
    pub fn https(&self, method: &str, path: &str) -> anyhow::Result<Response> {
        https_request_as(self.port, method, path, "", self.client.as_ref())
    }

    /// The admin certificate, once registered.
    pub fn client(&self) -> Option<&ClientCert> {
        self.client.as_ref()
    }

    /// Registers the agent the way `ferry mgmt agents add` does, with the pairing code on
    /// the serial console (`/dev/console` is ttyS0 with direct kernel boot) and a CA made
    /// here; then every request presents an admin certificate of that CA.
    pub fn pair_with_test_ca(&mut self) -> anyhow::Result<()> {
        use ferry_tls::pki::{Ca, Role};
        let code = pairing_code(&self.console()).context("no pairing code on the console")?;
        let body = serde_json::json!({ "code": code }).to_string();
        let r = https_request_as(self.port, "POST", "/v1/pair/csr", &body, None)?;
        if r.status != 200 {
            bail!("POST /v1/pair/csr: HTTP {}: {}", r.status, r.body);
        }
        let csr: serde_json::Value = serde_json::from_str(&r.body)?;
        let ca = Ca::create("boot test CA")?;
        let id = "boottest0001";
        let cert = ca.sign_csr(
            csr["csr_pem"].as_str().context("no csr_pem")?,
            Role::Agent,
            id,
            30,
        )?;
        let body = serde_json::json!({
            "code": code,
            "enrolled": { "agent_id": id, "cert_pem": cert, "ca_pem": ca.cert_pem() },
        })
        .to_string();
        let r = https_request_as(self.port, "POST", "/v1/pair/complete", &body, None)?;
        if r.status != 200 {
            bail!("POST /v1/pair/complete: HTTP {}: {}", r.status, r.body);
        }
        let (cert_pem, key_pem) = ca.issue(Role::Admin, "boottest", 30)?;
        self.client = Some(ClientCert { cert_pem, key_pem });
        Ok(())
    }

    /// GET a JSON document, retrying while the agent is not reachable yet.
    pub fn get_json(&self, path: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.https("GET", path) {
                Ok(r) if r.status == 200 => {
                    return serde_json::from_str(&r.body).context("parse JSON")
                }
                Ok(r) if Instant::now() >= deadline => bail!("GET {path}: HTTP {}", r.status),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("GET {path}")))
                }
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Polls `/v1/status` until `pred` holds.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(v) = self.get_json("/v1/status", Duration::from_secs(1)) {
                if pred(&v) {
                    return Ok(v);
                }
                last = v;
            }
            if Instant::now() >= deadline {
                bail!(
                    "status never showed {what} within {}s; last status: {last:#}",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs one QMP command and returns its reply.
    pub fn qmp(&self, command: &str) -> anyhow::Result<serde_json::Value> {
        self.qmp_args(command, serde_json::json!({}))
    }

    /// Runs one QMP command with arguments and returns its reply.
    pub fn qmp_args(
        &self,
        command: &str,
        arguments: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let s = UnixStream::connect(&self.qmp)
            .with_context(|| format!("connect {}", self.qmp.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line)?; // greeting
        for cmd in ["qmp_capabilities", command] {
            let args = if cmd == command {
                arguments.clone()
            } else {
                serde_json::json!({})
            };
            writeln!(
                w,
                "{}",
                serde_json::json!({ "execute": cmd, "arguments": args })
            )?;
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    bail!("QMP closed");
                }
                let v: serde_json::Value = serde_json::from_str(&line)?;
                if v.get("return").is_some() || v.get("error").is_some() {
                    if cmd == command {
                        return Ok(v);
                    }
                    break;
                }
            }
        }
        bail!("no QMP reply")
    }

    /// Waits for QEMU to exit (guest power-off with -no-reboot).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!("QEMU still running after {}s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- console of the failed VM ----\n{}\n---- end ----",
                self.console()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response from the agent.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub cert_sha256: String,
    pub tls13: bool,
}

/// Accepts any certificate (the agent's is self-signed) but remembers it.
#[derive(Debug, Default)]
struct Recording {
    seen: Mutex<Option<Vec<u8>>>,
}

impl CertCheck for Recording {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }
}

/// One HTTPS request on 127.0.0.1:`port` (TLS 1.2 or 1.3 offered, so the
/// test can see that the agent picks 1.3).
pub fn https_request(port: u16, method: &str, path: &str) -> anyhow::Result<Response> {
    https_request_as(port, method, path, "", None)
}

/// [`https_request`] with a JSON body (when not empty) and a client certificate.
pub fn https_request_as(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    client: Option<&ClientCert>,
) -> anyhow::Result<Response> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Verifier::new(Recording::default(), provider.clone());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let cfg = match client {
        Some(c) => {
            let (certs, key) = c.rustls()?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("ferry-agent")?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name)?;
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        tls,
        "{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // Servers may close without close_notify after Connection: close.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let tls13 = tls.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let cert = verifier
        .check()
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    Ok(Response {
        status,
        body,
        cert_sha256: hex::encode(Sha256::digest(&cert)),
        tls13,
    })
}

/// Tries a TLS 1.2-only handshake; returns Ok(()) if the server refuses it.
pub fn tls12_is_refused(port: u16) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Verifier::new(AnyCert, provider))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("ferry-agent")?)?;
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return Ok(());
        }
    }
    bail!("the agent completed a TLS 1.2 handshake")
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

/// A tiny SNTP server on the host's UDP 127.0.0.1:123, which the guest
/// reaches as 10.0.2.2:123 through slirp. Its clock runs `offset_secs` ahead
/// of the host's, so a guest that syncs to it shows a clear step.
#[derive(Debug)]
pub struct SntpServer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
}

/// Seconds from 1900 (NTP era 0) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

fn ntp_timestamp(offset_secs: i64) -> [u8; 8] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = (now.as_secs() + NTP_UNIX_OFFSET).saturating_add_signed(offset_secs);
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    b[4..].copy_from_slice(&(frac as u32).to_be_bytes());
    b
}

impl SntpServer {
    pub fn start(offset_secs: i64) -> anyhow::Result<Self> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:123")
            .context("bind UDP 127.0.0.1:123 for the SNTP peer (needs root and a free port 123)")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, req2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 48 {
                    continue;
                }
                req2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut r = [0u8; 48];
                r[0] = 0x24; // LI 0, version 4, mode 4 (server)
                r[1] = 1; // stratum 1
                r[2] = buf[2]; // poll
                r[3] = 0xEC; // precision 2^-20
                r[8..12].copy_from_slice(&0x0000_0010u32.to_be_bytes()); // root dispersion
                r[12..16].copy_from_slice(b"LOCL");
                r[16..24].copy_from_slice(&ntp_timestamp(offset_secs - 1));
                r[24..32].copy_from_slice(&buf[40..48]); // originate = client transmit
                r[32..40].copy_from_slice(&ntp_timestamp(offset_secs));
                r[40..48].copy_from_slice(&ntp_timestamp(offset_secs));
                let _ = sock.send_to(&r, peer);
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
            requests,
        })
    }
}

impl Drop for SntpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Vm {
    /// Presses Ctrl-Alt-Del on the guest's keyboard (init reboots cleanly).
    pub fn ctrl_alt_del(&self) -> anyhow::Result<()> {
        let keys = serde_json::json!({ "keys": [
            { "type": "qcode", "data": "ctrl" },
            { "type": "qcode", "data": "alt" },
            { "type": "qcode", "data": "delete" }
        ]});
        let r = self.qmp_args("send-key", keys)?;
        if r.get("error").is_some() {
            bail!("send-key: {r}");
        }
        Ok(())
    }
}

/// Writes an ISO 9660 image (with Rock Ridge and Joliet names, like the
/// one vCenter attaches) holding `files`, with xorriso.
pub fn make_iso(iso: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
    let src = tempfile::tempdir()?;
    for (name, data) in files {
        std::fs::write(src.path().join(name), data)?;
    }
    let out = Command::new("xorriso")
        .args([
            "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "OVF ENV", "-o",
        ])
        .arg(iso)
        .arg(src.path())
        .output()
        .context("run xorriso (apt-get install xorriso)")?;
    if !out.status.success() {
        bail!("xorriso failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Reads `manifest.json` written by ferry-image.
pub fn manifest() -> anyhow::Result<serde_json::Value> {
    let p = appliance_dir().join("manifest.json");
    let b = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
    Ok(serde_json::from_slice(&b)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
