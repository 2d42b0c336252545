//! Plan credentials at rest: sealed in mgmt.db, opened for the push, migrated from clear
//! rows, and a missing or wrong key file refused clearly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::path::Path;
use std::time::Duration;

const SECRET: &str = "vc-Pa55w0rd-7f3a91";

fn opts(dir: &Path) -> ferry_mgmt::Options {
    ferry_mgmt::Options {
        state_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        collect_every: Duration::from_secs(3600),
        license: None,
    }
}

/// Every byte SQLite keeps: the database, its WAL and shared memory.
fn db_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["mgmt.db", "mgmt.db-wal", "mgmt.db-shm"] {
        if let Ok(b) = std::fs::read(dir.join(f)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn body() -> String {
    serde_json::json!({
        "plan": {"name": "p"},
        "credentials": {"vc": {"user": "u", "password": SECRET}}
    })
    .to_string()
}

#[test]
fn credentials_are_sealed_and_a_wrong_or_missing_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let m = ferry_mgmt::Mgmt::open(opts(dir)).unwrap();
    m.db.put_plan("agent1", "p", &body(), 1).unwrap();
    let rows = m.db.plans("agent1").unwrap();
    assert_eq!(rows[0].1, body(), "opened for the push");
    drop(m);
    assert!(
        !contains(&db_bytes(dir), SECRET),
        "the secret is in mgmt.db"
    );
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("secrets.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Reopened with the same key: still there.
    let m = ferry_mgmt::Mgmt::open(opts(dir)).unwrap();
    assert_eq!(m.db.plans("agent1").unwrap()[0].1, body());
    drop(m);

    // A wrong key: refused at open, naming the key file, never printing the secret.
    let good = std::fs::read(&key).unwrap();
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let e = ferry_mgmt::Mgmt::open(opts(dir)).unwrap_err().to_string();
    assert!(
        e.contains("secrets.key") && e.contains("not the one"),
        "{e}"
    );
    assert!(!e.contains(SECRET));
    // A missing key: refused, not replaced by a new one.
    std::fs::remove_file(&key).unwrap();
    let e = ferry_mgmt::Mgmt::open(opts(dir)).unwrap_err().to_string();
    assert!(e.contains("secrets.key is missing"), "{e}");
    assert!(!key.exists(), "no new key over sealed rows");
    std::fs::write(&key, good).unwrap();
    ferry_mgmt::Mgmt::open(opts(dir)).unwrap();
}

#[test]
fn clear_rows_of_an_older_version_are_sealed_at_open() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    drop(ferry_mgmt::Mgmt::open(opts(dir)).unwrap());
    // What an older version left: no key file, the plan body in clear.
    std::fs::remove_file(dir.join("secrets.key")).unwrap();
    {
        let c = rusqlite::Connection::open(dir.join("mgmt.db")).unwrap();
        c.execute(
            "INSERT INTO plans (agent_id, name, body, updated) VALUES ('a', 'p', ?1, 1)",
            [body()],
        )
        .unwrap();
    }
    assert!(
        contains(&db_bytes(dir), SECRET),
        "the test wrote it in clear"
    );
    let m = ferry_mgmt::Mgmt::open(opts(dir)).unwrap();
    assert_eq!(m.db.plans("a").unwrap()[0].1, body());
    assert!(
        !contains(&db_bytes(dir), SECRET),
        "the clear text lingers in mgmt.db"
    );
}
