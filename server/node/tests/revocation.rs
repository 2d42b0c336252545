//! Revocation on the storage node, against a real ferry-mgmt on loopback and a real
//! `ferry-node` enrolled by token: two agents enrolled with the management server back up
//! to a vault; an admin revokes one; after the node's next fetch of the revocation list its
//! requests get 403 while the other agent still works; the list survives a node restart
//! with the management server unreachable; a forged or tampered list is not installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ferry_api::v1::{AgentHello, EnrollRequest, EnrollResponse, PeerRole};
use ferry_mgmt::client::{AdminBundle, AdminClient};
use ferry_tls::revocation::{RevocationList, Revoked, SignedRevocations};
use ferry_tls::trust::{client_config, Identity, ServerTrust};

/// Enrolls an agent with the management server by token, like an appliance does; returns
/// its id and an identity bundle (certificate, key, CA).
async fn enroll_agent(mgmt: &ferry_mgmt::Mgmt, addr: &str, dir: &Path) -> (String, PathBuf) {
    let token = mgmt
        .create_token(Duration::from_secs(600), Some("agent"))
        .unwrap()
        .token;
    let mut parts = token.split('.');
    let (id, secret, pin) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let (key_pem, csr_pem) = ferry_tls::pki::new_key_and_csr("ferry agent").unwrap();
    let cfg = client_config(
        ServerTrust::CaPin {
            sha256: pin.to_string(),
            name: ferry_api::MGMT_SERVER_NAME.into(),
        },
        None,
    )
    .unwrap();
    let r: EnrollResponse = ferry_tls::http_client(cfg)
        .unwrap()
        .post(format!("https://{addr}/v1/enroll"))
        .json(&EnrollRequest {
            token: format!("{id}.{secret}"),
            csr_pem,
            hello: AgentHello {
                hostname: "esx-agent".into(),
                version: "test".into(),
                addresses: Vec::new(),
                port: 9876,
                advertise: None,
                role: PeerRole::Agent,
            },
        })
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = dir.join(format!("agent-{}.pem", r.agent_id));
    std::fs::write(&p, format!("{}{key_pem}{}", r.cert_pem, r.ca_pem)).unwrap();
    (r.agent_id, p)
}

/// A raw HTTPS client of the node (`node_id`) with an identity bundle.
fn client(identity: &Path, ca_pem: &str, node_id: &str) -> reqwest::Client {
    let text = std::fs::read_to_string(identity).unwrap();
    let cert_end =
        text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    let ks = text.find("-----BEGIN PRIVATE KEY-----").unwrap();
    let ke = text.find("-----END PRIVATE KEY-----").unwrap() + "-----END PRIVATE KEY-----\n".len();
    let id = Identity::from_pem(&text[..cert_end], &text[ks..ke]).unwrap();
    ferry_tls::http_client(
        client_config(
            ServerTrust::Ca {
                ca_pem: ca_pem.to_string(),
                name: ferry_api::agent_server_name(node_id),
            },
            Some(id),
        )
        .unwrap(),
    )
    .unwrap()
}

/// Status and body of `GET /v1/vaults` on the node.
async fn vaults(c: &reqwest::Client, node: &NodeProc) -> (u16, String) {
    let r = c
        .get(format!("https://{}/v1/vaults", node.addr))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn back_up(
    node: &NodeProc,
    node_id: &str,
    identity: &Path,
    disk: &Path,
    group: &str,
) -> Result<ferry_archive::Manifest, ferry_archive::ArchiveError> {
    let url = format!(
        "node://{}/main?node={node_id}&identity={}&retries=1",
        node.addr,
        identity.display()
    );
    let s = ferry_storage::open_store_with(&url, ferry_storage::StoreOptions::default()).unwrap();
    let repo = ferry_archive::Repository::open(s).await?;
    backup(&repo, disk, group, None).await
}

/// Enrolls the node in `state` by token with `ferry-node enroll` (announcing `port` when
/// given); returns its id.
async fn enroll_node(
    mgmt: &ferry_mgmt::Mgmt,
    mgmt_addr: &str,
    state: &Path,
    port: Option<u16>,
) -> String {
    let token = mgmt
        .create_token(Duration::from_secs(600), Some("node"))
        .unwrap()
        .token;
    let st = state.to_path_buf();
    let addr = mgmt_addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-node"));
        c.arg("--state")
            .arg(&st)
            .args(["enroll", "--mgmt", &addr, "--token", &token]);
        if let Some(p) = port {
            c.args(["--port", &p.to_string()]);
        }
        c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("node id ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string()
}

/// A management server on loopback: the server and its address.
async fn start_mgmt(state: &Path) -> (std::sync::Arc<ferry_mgmt::Mgmt>, String) {
    let mgmt = ferry_mgmt::Mgmt::open(ferry_mgmt::Options {
        state_dir: state.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        collect_every: Duration::from_secs(3600),
        license: None,
    })
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(ferry_mgmt::serve_on(mgmt.clone(), l));
    (mgmt, addr)
}

/// `node.toml` with one vault, `main`, granted to both agents; the revocation list is
/// fetched every `every` seconds.
fn write_two_agent_config(state: &Path, every: u64, a1_id: &str, a2_id: &str) {
    std::fs::write(
        state.join("node.toml"),
        format!(
            "revocation_every = {every}\n[[vault]]\nname = \"main\"\nchunk_size = 1048576\n\
             [[grant]]\nidentity = \"agent-{a1_id}\"\nvaults = [\"main\"]\n\
             [[grant]]\nidentity = \"agent-{a2_id}\"\nvaults = [\"main\"]\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_agent_refused_by_the_node_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mstate = dir.path().join("mgmt");
    let (mgmt, mgmt_addr) = start_mgmt(&mstate).await;

    let (a1_id, a1) = enroll_agent(&mgmt, &mgmt_addr, dir.path()).await;
    let (a2_id, a2) = enroll_agent(&mgmt, &mgmt_addr, dir.path()).await;

    // The node, enrolled by token; the list is fetched every second.
    let state = dir.path().join("node");
    std::fs::create_dir_all(&state).unwrap();
    write_two_agent_config(&state, 1, &a1_id, &a2_id);
    let node_id = enroll_node(&mgmt, &mgmt_addr, &state, None).await;
    assert_eq!(
        ferry_node::revocation::mgmt_url(&state).unwrap(),
        format!("https://{mgmt_addr}")
    );

    let ca_pem = mgmt.ca.cert_pem().to_string();
    let w = World {
        dir,
        ca: ferry_tls::pki::Ca::from_pem(&ca_pem, &mgmt.ca.key_pem()).unwrap(),
        state: state.clone(),
    };
    let mut node = w.start(0);
    let (c1, c2) = (
        client(&a1, &ca_pem, &node_id),
        client(&a2, &ca_pem, &node_id),
    );
    let disk = w.path("d.raw");
    random_disk(&disk, 2 * MIB as usize, 7);
    back_up(&node, &node_id, &a1, &disk, "vm1").await.unwrap();
    back_up(&node, &node_id, &a2, &disk, "vm2").await.unwrap();
    assert_eq!(vaults(&c1, &node).await.0, 200);

    // Revoke a1 at the management server; the node refuses it after its next fetch.
    let admin = AdminClient::new(
        &mgmt_addr,
        &AdminBundle::load(&mstate.join("admin.pem")).unwrap(),
    )
    .unwrap();
    admin.revoke(&a1_id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, body) = loop {
        let (code, body) = vaults(&c1, &node).await;
        if code == 403 || Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert!(back_up(&node, &node_id, &a1, &disk, "vm1").await.is_err());
    // The other agent still works.
    assert_eq!(vaults(&c2, &node).await.0, 200);
    back_up(&node, &node_id, &a2, &disk, "vm2").await.unwrap();
    let kept = std::fs::read(state.join("revoked.json")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(state.join("revoked.json")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    // A forged list (another CA) and a tampered one (the real list with a2 added) are not
    // installed; the kept list is unchanged.
    node.kill();
    let store = ferry_node::revocation::open(&state);
    assert_eq!(store.state().version, 1);
    let a2_sha = ferry_tls::pem_sha256(&std::fs::read_to_string(&a2).unwrap()).unwrap();
    let forged = ferry_tls::pki::Ca::create("Ferry management CA")
        .unwrap()
        .sign_revocations(&RevocationList {
            version: 99,
            issued_unix: 1,
            entries: vec![Revoked {
                sha256: a2_sha.clone(),
                role: "agent".into(),
                name: a2_id.clone(),
                revoked_unix: 1,
            }],
        })
        .unwrap();
    assert!(store.install(forged).is_err());
    let real: SignedRevocations = serde_json::from_slice(&kept).unwrap();
    let mut list: RevocationList = serde_json::from_str(&real.list).unwrap();
    list.version = 2;
    list.entries.push(Revoked {
        sha256: a2_sha.clone(),
        role: "agent".into(),
        name: a2_id.clone(),
        revoked_unix: 1,
    });
    let tampered = SignedRevocations {
        list: serde_json::to_string(&list).unwrap(),
        signature: real.signature.clone(),
    };
    assert!(store.install(tampered).is_err());
    assert!(!store.is_revoked(&a2_sha));
    assert_eq!(std::fs::read(state.join("revoked.json")).unwrap(), kept);

    // Restart with the management server unreachable: the node serves, the kept list holds.
    std::fs::write(
        state.join(ferry_node::MGMT_URL_FILE),
        "https://127.0.0.1:1\n",
    )
    .unwrap();
    let node = w.start(0);
    assert_eq!(vaults(&c1, &node).await.0, 403);
    assert_eq!(vaults(&c2, &node).await.0, 200);
    back_up(&node, &node_id, &a2, &disk, "vm3").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_revocation_applies_at_once_and_only_from_mgmt() {
    let dir = tempfile::tempdir().unwrap();
    let mstate = dir.path().join("mgmt");
    let (mgmt, mgmt_addr) = start_mgmt(&mstate).await;
    let (a1_id, a1) = enroll_agent(&mgmt, &mgmt_addr, dir.path()).await;
    let (a2_id, a2) = enroll_agent(&mgmt, &mgmt_addr, dir.path()).await;

    // The node polls only every hour: anything faster is the push. It announces the port it
    // serves on at enrollment, which is where the management server reaches it.
    let state = dir.path().join("node");
    std::fs::create_dir_all(&state).unwrap();
    write_two_agent_config(&state, 3600, &a1_id, &a2_id);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node_id = enroll_node(&mgmt, &mgmt_addr, &state, Some(port)).await;
    let ca_pem = mgmt.ca.cert_pem().to_string();
    let ca = ferry_tls::pki::Ca::from_pem(&ca_pem, &mgmt.ca.key_pem()).unwrap();
    let w = World {
        dir,
        ca,
        state: state.clone(),
    };
    let node = w.start(port);
    let (c1, c2) = (
        client(&a1, &ca_pem, &node_id),
        client(&a2, &ca_pem, &node_id),
    );
    assert_eq!(vaults(&c1, &node).await.0, 200);
    // The node has made its start-up fetch (nothing revoked yet) before the revocation.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let admin = AdminClient::new(
        &mgmt_addr,
        &AdminBundle::load(&mstate.join("admin.pem")).unwrap(),
    )
    .unwrap();
    let revoked_at = Instant::now();
    admin.revoke(&a1_id).await.unwrap();
    let (code, body) = loop {
        let (code, body) = vaults(&c1, &node).await;
        if code == 403 || revoked_at.elapsed() > Duration::from_secs(15) {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    eprintln!(
        "the node refused the revoked agent {:?} after the revocation",
        revoked_at.elapsed()
    );
    assert_eq!(vaults(&c2, &node).await.0, 200);
    let state_of = |c: reqwest::Client| {
        let url = format!("https://{}/v1/revocations", node.addr);
        async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<ferry_tls::revocation::RevocationState>()
                .await
                .unwrap()
        }
    };
    assert_eq!(state_of(c2.clone()).await.version, 1);

    // Pushes that are refused: the real list from an agent; from a certificate that names
    // the management server (issued by its CA), a list signed by another CA, and the real
    // list tampered with.
    let real = mgmt.revocation_list().unwrap();
    let push = |c: &reqwest::Client, l: &SignedRevocations| {
        c.put(format!("https://{}/v1/revocations", node.addr))
            .json(l)
            .send()
    };
    let r = push(&c2, &real).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (mc, mk) =
        w.ca.issue(ferry_tls::pki::Role::Server, "mgmt", 30)
            .unwrap();
    let mgmt_id = w.path("mgmt-id.pem");
    std::fs::write(&mgmt_id, format!("{mc}{mk}{ca_pem}")).unwrap();
    let cm = client(&mgmt_id, &ca_pem, &node_id);
    let a2_sha = ferry_tls::pem_sha256(&std::fs::read_to_string(&a2).unwrap()).unwrap();
    let entry = Revoked {
        sha256: a2_sha.clone(),
        role: "agent".into(),
        name: a2_id.clone(),
        revoked_unix: 1,
    };
    let forged = ferry_tls::pki::Ca::create("Ferry management CA")
        .unwrap()
        .sign_revocations(&RevocationList {
            version: 99,
            issued_unix: 1,
            entries: vec![entry.clone()],
        })
        .unwrap();
    let r = push(&cm, &forged).await.unwrap();
    assert_eq!(r.status().as_u16(), 422, "{:?}", r.text().await);
    let mut list: RevocationList = serde_json::from_str(&real.list).unwrap();
    list.version = 2;
    list.entries.push(entry);
    let tampered = SignedRevocations {
        list: serde_json::to_string(&list).unwrap(),
        signature: real.signature.clone(),
    };
    let r = push(&cm, &tampered).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert_eq!(vaults(&c2, &node).await.0, 200);
    assert_eq!(state_of(c2.clone()).await.version, 1);
    // The same list again is accepted (no change); the real list from that certificate too.
    let r = push(&cm, &real).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(vaults(&c1, &node).await.0, 403);
}
