//! `ferry mgmt agents add HOST:PORT --pairing-code CODE`: the real `ferry` binary pairs a
//! real, unregistered `ferry-agent` with the management server that `ferry mgmt serve`
//! runs. A wrong code is refused and the agent stays unregistered; the right one registers
//! it, `agents list` shows it active, its API then wants the management CA's client
//! certificates, and pairing again is refused.
//!
//! The agent is another package's binary: `FERRY_AGENT_BIN`, or built here with cargo.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::{free_port, serve_mgmt, sibling_bin, Kill, FERRY};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent_bin() -> PathBuf {
    sibling_bin("ferry-agent", "ferry-agent", "FERRY_AGENT_BIN")
}

#[test]
fn agents_add_pairs_an_unregistered_agent() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mgmt");
    let mport = free_port();
    let _serve = serve_mgmt(
        &state,
        &format!("127.0.0.1:{mport}"),
        &["--public-url", &format!("https://127.0.0.1:{mport}")],
        Stdio::null(),
    );

    // An agent that was given no management server: it shows a pairing code.
    let aport = free_port();
    let astate = dir.path().join("agent");
    std::fs::create_dir_all(astate.join("run")).unwrap();
    // The agent shows its pairing code on the console device only; here a file stands in
    // for /dev/console (it must exist: the agent never creates it).
    let console = dir.path().join("console");
    std::fs::write(&console, "").unwrap();
    let mut agent = Command::new(agent_bin())
        .env_clear()
        .env("FERRY_STATE_DIR", &astate)
        .env("FERRY_RUN_DIR", astate.join("run"))
        // Bound to loopback only: the server must keep using the address it paired with.
        .env("FERRY_LISTEN", format!("127.0.0.1:{aport}"))
        .env("FERRY_LOG", "info")
        .env("FERRY_CONSOLE", &console)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = agent.stderr.take().unwrap();
    let _agent = Kill(agent);
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines() {
            let Ok(l) = l else { break };
            eprintln!("[agent] {l}");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        let text = std::fs::read_to_string(&console).unwrap();
        if let Some(rest) = text
            .lines()
            .rev()
            .find_map(|l| l.split("PAIRING CODE ").nth(1))
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no pairing code on the console");
        std::thread::sleep(Duration::from_millis(100));
    };

    let ferry = |args: &[&str]| {
        Command::new(FERRY)
            .args(args)
            .env("FERRY_MGMT", format!("127.0.0.1:{mport}"))
            .env("FERRY_ADMIN_CERT", state.join("admin.pem"))
            .output()
            .unwrap()
    };
    let agent_addr = format!("127.0.0.1:{aport}");

    // A wrong code: refused, and nothing is registered.
    let wrong = if code == "AAAA-AAAA" {
        "BBBB-BBBB"
    } else {
        "AAAA-AAAA"
    };
    let o = ferry(&[
        "mgmt",
        "agents",
        "add",
        &agent_addr,
        "--pairing-code",
        wrong,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong pairing code"), "{err}");
    let o = ferry(&["--json", "mgmt", "agents", "list"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );

    // The code from the console: registered.
    let o = ferry(&[
        "--json",
        "mgmt",
        "agents",
        "add",
        &agent_addr,
        "--pairing-code",
        &code,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let added: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(added["state"], "active", "{added}");
    assert_eq!(added["address"], agent_addr.as_str(), "{added}");
    // The fingerprint the CLI shows is the one next to the code on the appliance console.
    let fp = added["appliance_cert_sha256"].as_str().unwrap();
    let shown = std::fs::read_to_string(&console).unwrap();
    assert!(
        shown.contains(&format!("appliance certificate sha256 {fp}")),
        "{fp} not on the console: {shown}"
    );
    let o = ferry(&["--json", "mgmt", "agents", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "active");

    // The server now reaches the agent over mTLS: it collects the agent's log.
    let o = ferry(&["--json", "logs", "--agent", &id, "--collect"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let logs = String::from_utf8_lossy(&o.stdout);
    assert!(
        logs.contains(&format!("registered as agent {id}")),
        "{logs}"
    );

    // Pairing again: the agent is registered and says so.
    let o = ferry(&[
        "mgmt",
        "agents",
        "add",
        &agent_addr,
        "--pairing-code",
        &code,
    ]);
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).is_empty());
    let o = ferry(&["--json", "mgmt", "agents", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
