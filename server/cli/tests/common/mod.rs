//! Helpers for the CLI tests: `ferry mgmt serve` on loopback, and other packages' binaries
//! run next to `ferry`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Kills and reaps a child process when the test ends, pass or fail.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `ferry mgmt serve` process, killed when dropped.
pub struct ServedMgmt {
    /// The address it listens on (its `listening` line).
    pub addr: String,
    /// The SHA-256 of its CA, as it printed it.
    pub ca_sha256: String,
    _kill: Kill,
}

/// Runs `ferry mgmt serve --listen LISTEN --state STATE EXTRA...` with its stderr to
/// `stderr`, and reads the JSON line it prints once it listens.
pub fn serve_mgmt(
    state: &Path,
    listen: &str,
    extra: &[&str],
    stderr: impl Into<Stdio>,
) -> ServedMgmt {
    serve_mgmt_env(state, listen, extra, stderr, &[])
}

/// [`serve_mgmt`] with extra environment variables for the server.
pub fn serve_mgmt_env(
    state: &Path,
    listen: &str,
    extra: &[&str],
    stderr: impl Into<Stdio>,
    env: &[(&str, &str)],
) -> ServedMgmt {
    let mut child = Command::new(FERRY)
        .args(["mgmt", "serve", "--listen", listen])
        .envs(env.iter().copied())
        .args(extra)
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let kill = Kill(child);
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("ferry mgmt serve said {line:?}: {e}"));
    let field = |k: &str| match v[k].as_str() {
        Some(s) => s.to_string(),
        None => panic!("no {k} in {line:?}"),
    };
    ServedMgmt {
        addr: field("listening"),
        ca_sha256: field("ca_sha256"),
        _kill: kill,
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Binary `bin` of package `package`, from the same target directory and profile as
/// `ferry`: the path in `env_var` when set, else built here with cargo (a no-op when fresh).
pub fn sibling_bin(package: &str, bin: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return p.into();
    }
    let dir = PathBuf::from(FERRY).parent().unwrap().to_path_buf();
    let mut c = Command::new(env!("CARGO"));
    c.args(["build", "-q", "-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        c.arg("--release");
    }
    assert!(c.status().unwrap().success(), "cargo build -p {package}");
    dir.join(bin)
}
