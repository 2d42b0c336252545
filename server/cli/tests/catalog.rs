//! The central catalog: `ferry mgmt serve`, two real `ferry-node` processes enrolled by
//! token (role node), backups written to their vaults over `node://` by the `ferry` binary,
//! a node-side verify; then the catalog through the admin client library and through
//! `ferry catalog list|show`, a stopped node, a non-admin caller and a revoked node.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{free_port, serve_mgmt, sibling_bin, Kill, FERRY};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_api::v1::{Catalog, PeerRole};
use ferry_mgmt::client::{AdminBundle, AdminClient};
use ferry_tls::pki::{Ca, Role};
use ferry_tls::trust::{client_config, Identity, ServerTrust};

const MIB: usize = 1 << 20;

fn node_bin() -> PathBuf {
    sibling_bin("ferry-node", "ferry-node", "FERRY_NODE_BIN")
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

struct NodeSetup {
    id: String,
    port: u16,
    state: PathBuf,
}

/// Enrolls a node with the management server by token, through the real binary.
fn enroll_node(
    bin: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    mgmt: &str,
    token: &str,
) -> NodeSetup {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("node.toml"), config).unwrap();
    let port = free_port();
    let o = Command::new(bin)
        .arg("--state")
        .arg(&state)
        .args([
            "enroll",
            "--mgmt",
            mgmt,
            "--token",
            token,
            "--hostname",
            name,
        ])
        .args(["--port", &port.to_string()])
        .output()
        .unwrap();
    let text = ok(&o, "ferry-node enroll");
    let id = text
        .split("node id ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    NodeSetup { id, port, state }
}

fn start_node(bin: &Path, n: &NodeSetup) -> Kill {
    let mut child = Command::new(bin)
        .arg("--state")
        .arg(&n.state)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", n.port)])
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "node said {line:?}");
    Kill(child)
}

fn disk(path: &Path, len: usize, seed: u64) {
    let mut b = vec![0u8; len];
    ferry_testkit::Rng::new(seed).fill(&mut b);
    std::fs::write(path, b).unwrap();
}

/// What a backup made, as the catalog should list it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expect {
    node: String,
    vault: String,
    id: String,
    group: String,
    disks: usize,
    logical: u64,
    stored: u64,
}

/// Backs up `disks` as group `vm` through `ferry backup` to `node://`.
fn backup(n: &NodeSetup, vault: &str, identity: &Path, vm: &str, disks: &[PathBuf]) -> Expect {
    let url = format!(
        "node://127.0.0.1:{}/{vault}?node={}&identity={}&retries=1",
        n.port,
        n.id,
        identity.display()
    );
    let mut c = Command::new(FERRY);
    c.args(["--json", "--repo", &url, "backup", "--name", vm]);
    for d in disks {
        c.arg("-s").arg(d);
    }
    let m: serde_json::Value = serde_json::from_str(&ok(&c.output().unwrap(), "backup")).unwrap();
    let ds = m["disks"].as_array().unwrap();
    Expect {
        node: n.id.clone(),
        vault: vault.into(),
        id: m["id"].as_str().unwrap().into(),
        group: vm.into(),
        disks: ds.len(),
        logical: ds.iter().map(|d| d["size"].as_u64().unwrap()).sum(),
        stored: ds
            .iter()
            .map(|d| d["stats"]["stored"].as_u64().unwrap())
            .sum(),
    }
}

fn seen(c: &Catalog) -> BTreeSet<Expect> {
    c.points
        .iter()
        .map(|p| Expect {
            node: p.node_id.clone(),
            vault: p.entry.vault.clone(),
            id: p.entry.id.clone(),
            group: p.entry.group.clone(),
            disks: p.entry.disks.len(),
            logical: p.entry.disks.iter().map(|d| d.size).sum(),
            stored: p.entry.stored,
        })
        .collect()
}

/// An mTLS client to a node with a bundle (certificate, key, CA).
fn node_http(n: &NodeSetup, b: &AdminBundle) -> reqwest::Client {
    let cfg = client_config(
        ServerTrust::Ca {
            ca_pem: b.ca_pem.clone(),
            name: ferry_api::agent_server_name(&n.id),
        },
        Some(Identity::from_pem(&b.cert_pem, &b.key_pem).unwrap()),
    )
    .unwrap();
    ferry_tls::http_client(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalog_lists_points_of_every_node() {
    let bin = node_bin();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mgmt");
    let serve = serve_mgmt(&state, "127.0.0.1:0", &[], Stdio::null());
    let mgmt = serve.addr.clone();
    let admin_pem = state.join("admin.pem");
    let cli = |args: &[&str]| {
        Command::new(FERRY)
            .args(args)
            .env("FERRY_MGMT", &mgmt)
            .env("FERRY_ADMIN_CERT", &admin_pem)
            .output()
            .unwrap()
    };
    let token = || {
        let t: serde_json::Value = serde_json::from_str(&ok(
            &cli(&["--json", "mgmt", "token", "create", "--ttl", "10m"]),
            "token create",
        ))
        .unwrap();
        t["token"].as_str().unwrap().to_string()
    };

    // Two nodes; the first admin may run jobs on both, agents a1 and a2 write.
    let config_a = "[[vault]]\nname = \"main\"\nchunk_size = 1048576\n\
        [[grant]]\nidentity = \"agent-a1\"\nvaults = [\"main\"]\n\
        [[grant]]\nidentity = \"admin-admin\"\nvaults = [\"*\"]\nadmin = true\n";
    let config_b = "[[vault]]\nname = \"east\"\nchunk_size = 1048576\n\
        [[vault]]\nname = \"west\"\nchunk_size = 1048576\n\
        [[grant]]\nidentity = \"agent-a1\"\nvaults = [\"east\"]\n\
        [[grant]]\nidentity = \"agent-a2\"\nvaults = [\"west\"]\n\
        [[grant]]\nidentity = \"admin-admin\"\nvaults = [\"*\"]\nadmin = true\n";
    let na = enroll_node(&bin, dir.path(), "node-a", config_a, &mgmt, &token());
    let nb = enroll_node(&bin, dir.path(), "node-b", config_b, &mgmt, &token());
    let mut node_a = Some(start_node(&bin, &na));
    let _node_b = start_node(&bin, &nb);

    // The registry knows them as storage nodes, not agents.
    let nodes: serde_json::Value = serde_json::from_str(&ok(
        &cli(&["--json", "mgmt", "nodes", "list"]),
        "nodes list",
    ))
    .unwrap();
    let ids: BTreeSet<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([na.id.as_str(), nb.id.as_str()]));
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["role"], "node");
        assert_eq!(n["state"], "active");
        assert!(n["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    let agents: serde_json::Value = serde_json::from_str(&ok(
        &cli(&["--json", "mgmt", "agents", "list"]),
        "agents list",
    ))
    .unwrap();
    assert_eq!(agents, serde_json::json!([]));
    let text = ok(&cli(&["mgmt", "nodes", "list"]), "nodes list");
    assert!(text.contains("node-a") && text.contains("node-b"), "{text}");

    // Agent identities from the management CA.
    let ca = Ca::from_pem(
        &std::fs::read_to_string(state.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(state.join("ca.key")).unwrap(),
    )
    .unwrap();
    let ident = |name: &str| {
        let (c, k) = ca.issue(Role::Agent, name, 30).unwrap();
        let p = dir.path().join(format!("{name}.pem"));
        std::fs::write(&p, format!("{c}{k}{}", ca.cert_pem())).unwrap();
        p
    };
    let (a1, a2) = (ident("a1"), ident("a2"));

    let d = |name: &str, len: usize, seed: u64| {
        let p = dir.path().join(name);
        disk(&p, len, seed);
        p
    };
    let web0 = d("web-0.raw", 3 * MIB, 1);
    let web1 = d("web-1.raw", MIB + 4096, 2);
    let db0 = d("db-0.raw", 2 * MIB, 3);
    let files0 = d("files-0.raw", 2 * MIB, 4);
    let mail0 = d("mail-0.raw", MIB, 5);
    let mut expected = BTreeSet::new();
    expected.insert(backup(
        &na,
        "main",
        &a1,
        "web",
        &[web0.clone(), web1.clone()],
    ));
    expected.insert(backup(&na, "main", &a1, "db", std::slice::from_ref(&db0)));
    // An incremental of web: a second point of the same VM.
    expected.insert(backup(&na, "main", &a1, "web", &[web0, web1]));
    expected.insert(backup(&nb, "east", &a1, "files", &[files0]));
    expected.insert(backup(&nb, "west", &a2, "mail", &[mail0]));
    assert_eq!(expected.len(), 5);

    // Through the library, before any verify.
    let admin = AdminBundle::load(&admin_pem).unwrap();
    let client = AdminClient::new(&mgmt, &admin).unwrap();
    let c = client.catalog(None, None).await.unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(seen(&c), expected);
    for p in &c.points {
        assert!(p.entry.verify.is_none(), "{p:?}");
        let host = if p.node_id == na.id {
            "node-a"
        } else {
            "node-b"
        };
        assert_eq!(p.node_hostname, host);
        assert!(p.entry.owner == "agent-a1" || p.entry.owner == "agent-a2");
    }
    // Filters: one VM, one node.
    let web = client.catalog(None, Some("web")).await.unwrap();
    assert_eq!(web.points.len(), 2);
    assert!(web.points.iter().all(|p| p.entry.group == "web"));
    let only_b = client.catalog(Some(&nb.id), None).await.unwrap();
    assert_eq!(
        seen(&only_b),
        expected
            .iter()
            .filter(|e| e.node == nb.id)
            .cloned()
            .collect()
    );

    // Node-side verify jobs (run by the admin on the node), then the verify state shows.
    for (n, vault) in [(&na, "main"), (&nb, "east")] {
        let r = node_http(n, &admin)
            .post(format!(
                "https://127.0.0.1:{}/v1/vaults/{vault}/jobs/verify",
                n.port
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "verify {vault}: {}", r.status());
        let rep: ferry_api::node::JobReport = r.json().await.unwrap();
        assert!(rep.ok, "{rep:?}");
    }
    let c = client.catalog(None, None).await.unwrap();
    assert_eq!(seen(&c), expected);
    for p in &c.points {
        if p.entry.vault == "west" {
            assert!(p.entry.verify.is_none(), "west was not verified");
        } else {
            let v = p.entry.verify.as_ref().unwrap();
            assert!(v.ok && v.error.is_none() && v.time > 0, "{p:?}");
        }
    }

    // The same through the CLI.
    let j: Catalog =
        serde_json::from_str(&ok(&cli(&["catalog", "list", "--json"]), "catalog list")).unwrap();
    assert_eq!(j, c);
    let text = ok(&cli(&["catalog", "list"]), "catalog list");
    for e in &expected {
        let row = text
            .lines()
            .find(|l| l.contains(&e.id))
            .unwrap_or_else(|| panic!("{} not in\n{text}", e.id));
        assert!(row.starts_with(&e.node), "{row}");
        assert!(row.contains(&e.vault) && row.contains(&e.group), "{row}");
        let verified = if e.vault == "west" { "never" } else { "ok " };
        assert!(row.contains(verified), "{row}");
    }
    assert!(text.contains("5 restore point(s)"), "{text}");
    let j: Catalog = serde_json::from_str(&ok(
        &cli(&["--json", "catalog", "list", "--vm", "web", "--node", &na.id]),
        "catalog list --vm",
    ))
    .unwrap();
    assert_eq!(j.points.len(), 2);
    let db = expected.iter().find(|e| e.group == "db").unwrap();
    let text = ok(&cli(&["catalog", "show", &db.id]), "catalog show");
    assert!(
        text.contains("db-0.raw") && text.contains("2097152 bytes"),
        "{text}"
    );
    assert!(text.contains("verify    ok"), "{text}");
    assert!(
        text.contains(&format!("new in the vault ({} bytes)", db.stored)),
        "{text}"
    );
    let shown: serde_json::Value = serde_json::from_str(&ok(
        &cli(&["catalog", "show", &db.id[..db.id.len() - 2], "--json"]),
        "catalog show --json",
    ))
    .unwrap();
    assert_eq!(shown["id"], db.id.as_str());
    assert_eq!(shown["node_id"], na.id.as_str());
    assert_eq!(shown["disks"][0]["size"], 2 * MIB as u64);
    assert_eq!(shown["verify"]["ok"], true);
    let o = cli(&["catalog", "show", "ffffffffffff"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no restore point"));

    // The management server's certificate reads the catalog only: no vault access.
    let srv = AdminBundle {
        cert_pem: std::fs::read_to_string(state.join("server.pem")).unwrap(),
        key_pem: std::fs::read_to_string(state.join("server.key")).unwrap(),
        ca_pem: ca.cert_pem().to_string(),
    };
    let h = node_http(&nb, &srv);
    let r = h
        .get(format!("https://127.0.0.1:{}/v1/catalog", nb.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (method, path) in [
        (reqwest::Method::GET, "/v1/vaults/east/catalog"),
        (reqwest::Method::POST, "/v1/vaults/east/jobs/verify"),
        (reqwest::Method::GET, "/v1/vaults/east/objects"),
    ] {
        let r = h
            .request(method, format!("https://127.0.0.1:{}{path}", nb.port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }

    // A non-admin (an agent's certificate of the same CA) is refused.
    let agent = AdminBundle::load(&a1).unwrap();
    let e = AdminClient::new(&mgmt, &agent)
        .unwrap()
        .catalog(None, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not an admin"), "{e}");
    let o = Command::new(FERRY)
        .args(["catalog", "list", "--mgmt", &mgmt, "--admin-cert"])
        .arg(&a1)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an admin"));

    // Node A stops: it is reported, node B's points are still listed.
    drop(node_a.take());
    let c = client.catalog(None, None).await.unwrap();
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert_eq!(c.errors[0].node_id, na.id);
    assert_eq!(c.errors[0].node_hostname, "node-a");
    assert_eq!(
        seen(&c),
        expected
            .iter()
            .filter(|e| e.node == nb.id)
            .cloned()
            .collect()
    );
    let o = cli(&["catalog", "list"]);
    let text = ok(&o, "catalog list with a node down");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&na.id) && err.contains("did not answer"),
        "{err}"
    );
    assert!(
        text.contains("2 restore point(s); 1 node(s) did not answer"),
        "{text}"
    );
    let j: Catalog =
        serde_json::from_str(&ok(&cli(&["--json", "catalog", "list"]), "json")).unwrap();
    assert_eq!(j.errors.len(), 1);
    assert_eq!(j.points.len(), 2);

    // Revoking a node works as for agents: listed revoked, no longer asked.
    let o = ok(&cli(&["mgmt", "nodes", "revoke", &na.id]), "nodes revoke");
    assert!(o.contains("revoked"), "{o}");
    let infos = client.agents().await.unwrap();
    let a = infos.iter().find(|a| a.id == na.id).unwrap();
    assert_eq!(a.role, PeerRole::Node);
    assert_eq!(a.state, ferry_api::v1::AgentState::Revoked);
    let c = client.catalog(None, None).await.unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.points.len(), 2);

    // A node that accepts connections and never answers costs the per-node timeout, no
    // more, and the others are still listed.
    let nc = enroll_node(&bin, dir.path(), "node-c", config_a, &mgmt, &token());
    let hole = std::net::TcpListener::bind(("127.0.0.1", nc.port)).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming() {
            held.push(s);
        }
    });
    let t = std::time::Instant::now();
    let c = client.catalog(None, None).await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= ferry_mgmt::catalog::NODE_TIMEOUT
            && took < ferry_mgmt::catalog::NODE_TIMEOUT + std::time::Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert_eq!(c.errors[0].node_id, nc.id);
    assert_eq!(c.points.len(), 2);
}
