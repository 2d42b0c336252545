//! Helpers for the CLI tests that run other packages' binaries next to `ferry`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Kills and reaps a child process when the test ends, pass or fail.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
