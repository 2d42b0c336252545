//! Lock ownership and staleness on a real `ferry-node`: a lock belongs to the identity that
//! wrote it; another grantee may replace or delete it only once the node has received no
//! write of it for the stale threshold (180 s; `FERRY_NODE_LOCK_STALE_MS` shortens it here);
//! an admin always may; owners survive a restart; the node's GC goes ahead once a dead
//! backup's lock is stale by the node's clock, and ordinary backups are unaffected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ferry_archive::format::{self, Kind};
use ferry_archive::lock::{LockInfo, LockKind};

/// Starts the node with extra environment variables.
fn start_env(w: &World, env: &[(&str, &str)]) -> NodeProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-node"));
    cmd.arg("--state")
        .arg(&w.state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("FERRY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("node said {line:?}"))
        .to_string();
    NodeProc { child, addr }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// A lock record as the archive writes it.
fn record(host: &str, pid: u32) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let info = LockInfo {
        kind: LockKind::Shared,
        purpose: "backup".into(),
        host: host.into(),
        pid,
        created: now,
        refreshed: now,
    };
    Bytes::from(format::encode_json(Kind::Lock, &info).unwrap())
}

/// PUT (refresh) of lock `name` in vault main as the client `c`: the status.
async fn put(c: &reqwest::Client, node: &NodeProc, name: &str) -> u16 {
    let r = c
        .put(format!("https://{}/v1/vaults/main/locks/{name}", node.addr))
        .body(record("elsewhere", 4242))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// DELETE of lock `name`: the status and the body.
async fn del(c: &reqwest::Client, node: &NodeProc, name: &str) -> (u16, String) {
    let r = c
        .delete(format!("https://{}/v1/vaults/main/locks/{name}", node.addr))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn locks_in(w: &World) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(w.vault_dir("main").join("locks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn has_lock(w: &World, name: &str) -> bool {
    w.vault_dir("main").join("locks").join(name).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_lock_is_its_holders_and_an_admins() {
    let w = World::new(CONFIG);
    let mut node = w.start(0);
    let (a1, a2) = (w.agent("a1"), w.agent("a2"));
    let admin = w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root");
    let (ca, cb, cr) = (http(&w, &a1), http(&w, &a2), http(&w, &admin));

    // a1 takes a lock; a2 can neither replace nor delete it while it is fresh.
    assert_eq!(put(&ca, &node, "l1").await, 200);
    assert_eq!(put(&cb, &node, "l1").await, 409);
    let (code, body) = del(&cb, &node, "l1").await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("held by agent-a1") && body.contains("admin"),
        "{body}"
    );
    assert!(has_lock(&w, "l1"));
    // Its holder refreshes and deletes it.
    assert_eq!(put(&ca, &node, "l1").await, 200);
    assert_eq!(del(&ca, &node, "l1").await.0, 204);
    assert!(!has_lock(&w, "l1"));
    // An admin deletes a fresh lock of someone else.
    assert_eq!(put(&ca, &node, "l2").await, 200);
    assert_eq!(del(&cr, &node, "l2").await.0, 204);
    assert!(!has_lock(&w, "l2"));

    // The owner survives a restart of the node.
    assert_eq!(put(&ca, &node, "l3").await, 200);
    node.kill();
    let node = w.start(0);
    let (ca, cb, cr) = (http(&w, &a1), http(&w, &a2), http(&w, &admin));
    assert_eq!(del(&cb, &node, "l3").await.0, 409);
    assert_eq!(put(&ca, &node, "l3").await, 200);
    assert_eq!(del(&cr, &node, "l3").await.0, 204);

    // A lock that looks stale to another client's archive (same host, dead pid) but that
    // the node knows is fresh: the node refuses to let it go, and that client's backup
    // takes it as live (shared with shared: it goes ahead) instead of failing.
    let r = ca
        .put(format!(
            "https://{}/v1/vaults/main/locks/dead-pid",
            node.addr
        ))
        .body(record(&hostname(), 999_999_999))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let disk = w.path("d.raw");
    random_disk(&disk, 3 * MIB as usize, 5);
    let repo2 = repo(&node, "main", &a2).await;
    backup(&repo2, &disk, "vm2", None).await.unwrap();
    assert!(has_lock(&w, "dead-pid"));
    assert_eq!(del(&ca, &node, "dead-pid").await.0, 204);

    // The normal flow: two agents back up at the same time, each refreshing and releasing
    // its own lock; nothing is left behind.
    let repo1 = repo(&node, "main", &a1).await;
    let (d1, d2) = (w.path("d1.raw"), w.path("d2.raw"));
    mixed_disk(&d1, 8 * MIB, 1);
    mixed_disk(&d2, 8 * MIB, 2);
    let (m1, m2) = tokio::join!(
        backup(&repo1, &d1, "vm1", None),
        backup(&repo2, &d2, "vm2", None)
    );
    let (m1, m2) = (m1.unwrap(), m2.unwrap());
    assert!(locks_in(&w).is_empty(), "{:?}", locks_in(&w));
    assert_eq!(
        restore_sha(&repo1, &m1, &w.path("o1")).await,
        sha256_file(&d1)
    );
    assert_eq!(
        restore_sha(&repo2, &m2, &w.path("o2")).await,
        sha256_file(&d2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_lock_may_go_and_gc_runs_after_a_dead_backup() {
    let w = World::new(CONFIG);
    // Client locks are stale 1.5 s after the node last received a write of them.
    let node = start_env(&w, &[("FERRY_NODE_LOCK_STALE_MS", "1500")]);
    let (a1, a2) = (w.agent("a1"), w.agent("a2"));
    let admin = w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root");
    let (ca, cb) = (http(&w, &a1), http(&w, &a2));

    // Stale by the node's clock (the record itself says it was refreshed just now): a2 may
    // delete one, and replace another, which is then a2's.
    assert_eq!(put(&ca, &node, "s1").await, 200);
    assert_eq!(put(&ca, &node, "s2").await, 200);
    assert_eq!(del(&cb, &node, "s1").await.0, 409);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(del(&cb, &node, "s1").await.0, 204);
    assert_eq!(put(&cb, &node, "s2").await, 200);
    assert_eq!(del(&ca, &node, "s2").await.0, 409);
    assert_eq!(del(&cb, &node, "s2").await.0, 204);

    // A backup's point, then its chunks made garbage by deleting the point.
    let repo1 = repo(&node, "main", &a1).await;
    let disk = w.path("d.raw");
    random_disk(&disk, 4 * MIB as usize, 9);
    let m = backup(&repo1, &disk, "vm", None).await.unwrap();
    repo1
        .store()
        .delete(&ferry_archive::repo::manifest_key(&m.id))
        .await
        .unwrap();
    // A backup holds its shared lock and keeps refreshing it (every 300 ms here), then dies
    // during a node outage: no more refreshes, no release.
    let store1 = repo1.store().clone();
    let refresher = tokio::spawn(async move {
        loop {
            store1
                .put("locks/dying-backup", record("elsewhere", 4242))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = node.addr.clone();
    let admin2 = admin.clone();
    let started = Instant::now();
    let gc = tokio::spawn({
        let c = http(&w, &admin2);
        async move {
            let r = c
                .post(format!("https://{addr}/v1/vaults/main/jobs/gc"))
                .send()
                .await
                .unwrap();
            r.json::<ferry_api::node::JobReport>().await.unwrap()
        }
    });
    // While the lock is refreshed, GC waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!gc.is_finished(), "GC ran under a live backup's lock");
    assert_eq!(w.chunk_count("main"), 4);
    refresher.abort();
    let stopped = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(30), gc)
        .await
        .expect("GC still waiting 30 s after the backup died")
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.detail["removed_chunks"].as_u64(),
        Some(4),
        "{report:?}"
    );
    assert!(
        stopped.elapsed() >= Duration::from_millis(1000),
        "GC did not wait for the lock to go stale"
    );
    eprintln!(
        "GC finished {:?} after it started, {:?} after the last refresh",
        started.elapsed(),
        stopped.elapsed()
    );
    assert!(!has_lock(&w, "dying-backup"));
    assert!(locks_in(&w).is_empty(), "{:?}", locks_in(&w));
}
