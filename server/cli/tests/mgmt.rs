//! `ferry mgmt serve|token create|agents list|revoke`, `ferry plan check|apply`,
//! `ferry jobs list`, `ferry logs`: the real binary against its own management server on
//! loopback (the agent side is tested in appliance/agent/tests).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{serve_mgmt, FERRY};
use std::process::{Command, Stdio};

#[test]
fn mgmt_cli_end_to_end_without_agents() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mgmt");
    let serve = serve_mgmt(&state, "127.0.0.1:0", &[], Stdio::null());
    let (addr, ca) = (serve.addr.clone(), serve.ca_sha256.clone());
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.key", "server.key", "admin.pem", "mgmt.db"] {
        let m = std::fs::metadata(state.join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
    }
    let run = |args: &[&str]| {
        Command::new(FERRY)
            .args(args)
            .env("FERRY_MGMT", &addr)
            .env("FERRY_ADMIN_CERT", state.join("admin.pem"))
            .output()
            .unwrap()
    };
    let o = run(&["--json", "mgmt", "token", "create", "--ttl", "10m"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let token = t["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert!(token.ends_with(&ca), "the token pins the CA");
    let o = run(&["--json", "mgmt", "agents", "list"]);
    assert!(o.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );
    let o = run(&["mgmt", "agents", "revoke", "nope"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no agent nope"));

    // Plans: a malformed file is refused with the field named; apply needs credentials.
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        r#"
name = "nightly"
schedule = "0 2 * * *"
[vcenter]
url = "https://vc.example"
credential = "vc"
[vms]
globs = ["web-*"]
[destination]
url = "/srv/ferry"
[retention]
keep_daily = "seven"
"#,
    )
    .unwrap();
    let o = run(&["plan", "check", plan.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("retention.keep_daily"), "{err}");
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("\"seven\"", "7");
    // No thumbprint, CA or explicit trust on first use: refused, saying why.
    std::fs::write(&plan, &text).unwrap();
    let o = run(&["plan", "check", plan.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("vcenter") && err.contains("trust_on_first_use") && err.contains("password"),
        "{err}"
    );
    let text = text.replace(
        "credential = \"vc\"\n",
        "credential = \"vc\"\ntrust_on_first_use = true\n",
    );
    std::fs::write(&plan, text).unwrap();
    let o = run(&["plan", "check", plan.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["plan", "apply", plan.to_str().unwrap(), "--agent", "x"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("credential \"vc\""));
    let creds = dir.path().join("creds.toml");
    std::fs::write(&creds, "[vc]\nuser = \"u\"\npassword = \"pw-not-shown\"\n").unwrap();
    let o = run(&[
        "plan",
        "apply",
        plan.to_str().unwrap(),
        "--agent",
        "x",
        "--credentials",
        creds.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no agent x"), "{err}");
    assert!(!err.contains("pw-not-shown"));
    let o = run(&["--json", "jobs", "list"]);
    assert!(o.status.success());
    let o = run(&["--json", "logs", "--agent", "x"]);
    assert!(o.status.success());

    // Without the admin certificate the server refuses.
    let o = Command::new(FERRY)
        .args(["mgmt", "agents", "list", "--mgmt", &addr, "--admin-cert"])
        .arg(dir.path().join("missing.pem"))
        .output()
        .unwrap();
    assert!(!o.status.success());
}
