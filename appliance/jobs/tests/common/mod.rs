//! Peers for the plan-job tests: the vSphere simulator (tests/vcsim), VM disks seeded
//! through `/folder`, vSphere tags made through the simulator's vAPI REST API, and an
//! sshd of our own on loopback for SFTP destinations.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::v1::{Credential, ProgressEvent};
use ferry_api::Plan;
use ferry_testkit::vcsim::Vcsim;
use ferry_vsphere::job::monolithic_flat_descriptor;
use ferry_vsphere::{
    Client, ConnectOptions, Credentials, Datastore, DatastorePath, Trust, VmSelector,
};

/// The simulator, with what the plan-job tests ask of it; its URL, credentials and
/// `control` are [`Vcsim`]'s.
pub struct Sim(Vcsim);

impl Deref for Sim {
    type Target = Vcsim;

    fn deref(&self) -> &Vcsim {
        &self.0
    }
}

impl Sim {
    pub async fn start(args: &[&str]) -> Sim {
        Sim(Vcsim::start(args).await.unwrap())
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&ConnectOptions::new(
            &self.url,
            Credentials::new(&self.user, &self.password),
            Trust::Thumbprint(self.thumbprint.clone()),
        ))
        .await
        .unwrap()
    }

    /// The credentials a plan names "vc".
    pub fn creds(&self) -> BTreeMap<String, Credential> {
        let mut m = BTreeMap::new();
        m.insert(
            "vc".to_string(),
            Credential {
                user: Some(self.user.clone()),
                password: Some(self.password.clone()),
                ..Default::default()
            },
        );
        m
    }

    /// A plan: `vms` and `extra` are TOML lines of the `[vms]` table and after it.
    pub fn plan(&self, vms: &str, destination: &str, extra: &str) -> Plan {
        Plan::from_toml(&format!(
            r#"
name = "test"
schedule = "0 0 1 1 *"
verify = true
[vcenter]
url = "{}"
credential = "vc"
thumbprint = "{}"
[vms]
{vms}
[destination]
{destination}
{extra}
"#,
            self.url, self.thumbprint
        ))
        .unwrap()
    }

    /// The vAPI REST API of the simulator, as the test's own client (not ferry's).
    pub async fn vapi(&self) -> Vapi {
        let http = ferry_tls::http_client(
            ferry_tls::trust::client_config(ferry_tls::trust::ServerTrust::Any, None).unwrap(),
        )
        .unwrap();
        let base = self.url.trim_end_matches("/sdk").to_string();
        let r = http
            .post(format!("{base}/rest/com/vmware/cis/session"))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        Vapi {
            http,
            base,
            session: v["value"].as_str().unwrap().to_string(),
        }
    }
}

pub struct Vapi {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Vapi {
    async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}/rest/com/vmware/cis/tagging/{path}", self.base))
            .header("vmware-api-session-id", &self.session)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let t = r.text().await.unwrap();
        if t.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&t).unwrap()
        }
    }

    pub async fn category(&self, name: &str) -> String {
        let v = self
            .post(
                "category",
                serde_json::json!({"create_spec": {"name": name, "description": "",
                    "cardinality": "MULTIPLE", "associable_types": []}}),
            )
            .await;
        v["value"].as_str().unwrap().to_string()
    }

    pub async fn tag(&self, category_id: &str, name: &str) -> String {
        let v = self
            .post(
                "tag",
                serde_json::json!({"create_spec": {"name": name, "description": "",
                    "category_id": category_id}}),
            )
            .await;
        v["value"].as_str().unwrap().to_string()
    }

    /// Attaches a tag to an object (`VirtualMachine`/`vm-42`, `HostSystem`/`host-21`...).
    pub async fn attach(&self, tag_id: &str, kind: &str, id: &str) {
        self.post(
            &format!("tag-association/id:{tag_id}?~action=attach"),
            serde_json::json!({"object_id": {"type": kind, "id": id}}),
        )
        .await;
    }
}

/// Writes `data` as the first disk of `vm` (a monolithicFlat pair through `/folder`).
pub async fn seed(vc: &Client, vm: &str, data: &[u8]) -> ferry_vsphere::MoRef {
    let r = vc.find_vm(&VmSelector::Name(vm.into())).await.unwrap();
    let info = vc.vm_info(&r).await.unwrap();
    let ds = Datastore::new(vc, &info.datacenter, 4);
    let d = &info.disks[0];
    assert_eq!(d.capacity as usize, data.len(), "{vm}: disk size");
    let p = DatastorePath::parse(&d.file_name).unwrap();
    let stem = p
        .path
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".vmdk")
        .to_string();
    let flat = format!("{stem}-flat.vmdk");
    ds.put_bytes(&p.sibling(&flat), data.to_vec())
        .await
        .unwrap();
    ds.put_bytes(
        &p,
        monolithic_flat_descriptor(data.len() as u64, &flat).into_bytes(),
    )
    .await
    .unwrap();
    r
}

/// Distinct, partly compressible content for a disk.
pub fn disk_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    ferry_testkit::Rng::new(seed).fill(&mut v[..size / 2]);
    for (i, b) in v[size / 2..size * 3 / 4].iter_mut().enumerate() {
        *b = b"ferry text "[(i + seed as usize) % 11];
    }
    v
}

pub fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Restores disk 0 of restore point `point` from the plan's destination; its sha256.
pub async fn restored_sha(
    plan: &Plan,
    cred: Option<&Credential>,
    point: &str,
    work: &Path,
) -> String {
    let opts = ferry_jobs::store_options(plan, cred).unwrap();
    let store = ferry_storage::open_store_with(&plan.destination.url, opts).unwrap();
    let repo = ferry_archive::Repository::open(store).await.unwrap();
    let m = repo.load_manifest(point).await.unwrap();
    let out = work.join(format!("{point}.raw"));
    ferry_vsphere::restore_disk_to_file(
        &repo,
        &m,
        0,
        &out,
        Arc::new(ferry_archive::Progress::default()),
    )
    .await
    .unwrap();
    let s = sha(&std::fs::read(&out).unwrap());
    std::fs::remove_file(&out).unwrap();
    s
}

pub fn no_events() -> ferry_jobs::Events {
    Arc::new(|_e: ProgressEvent| {})
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// sshd on loopback with its own config and keys; key login as the current user.
pub struct Sshd {
    child: std::process::Child,
    pub port: u16,
    pub client_key: PathBuf,
    pub fingerprint: String,
    pub user: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd (Debian openssh-server, tests/peers.d/storage.list)");
        std::fs::create_dir_all("/run/sshd").unwrap();
        let (host_key, client_key) = (dir.join("host_key"), dir.join("client_key"));
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
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nStrictModes no\nPermitRootLogin yes\nUsePAM no\n\
                 PasswordAuthentication no\nSubsystem sftp internal-sftp\nMaxStartups 64\n",
                host_key.display(),
                dir.join("authorized_keys").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < end, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = std::process::Command::new("ssh-keygen")
            .args(["-E", "sha256", "-l", "-f"])
            .arg(host_key.with_extension("pub"))
            .output()
            .unwrap();
        let fingerprint = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let user = String::from_utf8_lossy(
            &std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string();
        Sshd {
            child,
            port,
            client_key,
            fingerprint,
            user,
        }
    }
}
