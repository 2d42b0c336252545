//! `ferry mgmt admins add|list|revoke` through the real binary against its own management
//! server: bundles written 0600 and never overwritten, each admin's certificate works, a
//! revoked one is refused, the last active admin is kept, and the server's log names the
//! admin in its audit lines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{serve_mgmt, FERRY};
use std::path::Path;
use std::process::{Command, Output};

fn run(addr: &str, bundle: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(args)
        .current_dir(cwd)
        .env("FERRY_MGMT", addr)
        .env("FERRY_ADMIN_CERT", bundle)
        .output()
        .unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn admins_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mgmt");
    let log = dir.path().join("serve.log");
    let serve = serve_mgmt(
        &state,
        "127.0.0.1:0",
        &[],
        std::fs::File::create(&log).unwrap(),
    );
    let addr = serve.addr.clone();
    let root = state.join("admin.pem");
    let cwd = dir.path();

    // Added with the default file name, 0600; an existing file is not overwritten.
    let o = run(&addr, &root, cwd, &["mgmt", "admins", "add", "bob"]);
    assert!(o.status.success(), "{}", err(&o));
    let bob = cwd.join("admin-bob.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&bob).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let o = run(
        &addr,
        &root,
        cwd,
        &["mgmt", "admins", "add", "carol", "--out", "admin-bob.pem"],
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("not overwriting"), "{}", err(&o));
    // Bob adds carol with his own certificate.
    let carol = cwd.join("carol.pem");
    let o = run(
        &addr,
        &bob,
        cwd,
        &[
            "--json",
            "mgmt",
            "admins",
            "add",
            "carol",
            "--out",
            "carol.pem",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let added: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(added["admin"]["name"], "carol");
    let o = run(&addr, &root, cwd, &["mgmt", "admins", "add", "Not Valid"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("a-z"), "{}", err(&o));

    let o = run(&addr, &carol, cwd, &["--json", "mgmt", "admins", "list"]);
    assert!(o.status.success(), "{}", err(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "bob", "carol"]);
    let o = run(&addr, &root, cwd, &["mgmt", "admins", "list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("active"));

    // Bob is revoked: refused from then on; carol works.
    let o = run(&addr, &carol, cwd, &["mgmt", "admins", "revoke", "bob"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("admin bob is revoked"));
    let o = run(&addr, &bob, cwd, &["mgmt", "agents", "list"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("403"), "{}", err(&o));
    let o = run(&addr, &carol, cwd, &["mgmt", "token", "create"]);
    assert!(o.status.success(), "{}", err(&o));
    // The last active admin stays.
    let o = run(&addr, &carol, cwd, &["mgmt", "admins", "revoke", "admin"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = run(&addr, &carol, cwd, &["mgmt", "admins", "revoke", "carol"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("last active admin"), "{}", err(&o));

    // The server's log (default level) names the admin in each audit line.
    let text = std::fs::read_to_string(&log).unwrap();
    for want in [
        "audit: admin admin added admin bob",
        "audit: admin bob added admin carol",
        "audit: admin carol revoked admin bob",
        "audit: admin carol created enrollment token",
    ] {
        assert!(text.contains(want), "{want:?} not in the log:\n{text}");
    }
}
