//! The simulator peer: starts `tests/vcsim/run.sh` (which builds ferry-vcsim once), reads
//! its JSON line, and talks to its control listener. The simulator exits when the test
//! drops it (its stdin closes) or kills it.

#![allow(dead_code)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_archive::Repository;
use ferry_vsphere::{Client, ConnectOptions, Credentials, Trust};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub struct Sim {
    pub child: Child,
    pub url: String,
    pub user: String,
    pub password: String,
    pub control: String,
    pub datastore: String,
    pub ds_dir: String,
    pub thumbprint: String,
}

impl Sim {
    pub async fn start(args: &[&str]) -> Sim {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vcsim/run.sh");
        let mut child = Command::new(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("run tests/vcsim/run.sh");
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(600),
            BufReader::new(out).read_line(&mut line),
        )
        .await
        .expect("simulator start timed out")
        .unwrap();
        assert!(
            !line.is_empty(),
            "ferry-vcsim did not start (needs golang-go and golang-github-vmware-govmomi-dev; see stderr)"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        Sim {
            url: s("url"),
            user: s("user"),
            password: s("password"),
            control: s("control"),
            datastore: s("datastore"),
            ds_dir: s("ds_dir"),
            thumbprint: s("thumbprint"),
            child,
        }
    }

    pub fn options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new(
            &self.url,
            Credentials::new(&self.user, &self.password),
            Trust::Thumbprint(self.thumbprint.clone()),
        );
        o.request_timeout = Duration::from_secs(30);
        o
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.options()).await.unwrap()
    }

    /// A request to the control listener (plain HTTP/1.0 on loopback).
    pub async fn control(&self, path_and_query: &str, body: &str) -> String {
        let hostport = self.control.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
        let req = format!(
            "POST {path_and_query} HTTP/1.0\r\nHost: {hostport}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(
            resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
            "{resp}"
        );
        resp.split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// Deterministic disk content: per MiB, zeros, random bytes or compressible text.
pub fn disk_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x = seed | 1;
    for (i, mib) in v.chunks_mut(1 << 20).enumerate() {
        match (i as u64 + seed) % 4 {
            0 => {}
            1 | 2 => {
                for b in mib.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            _ => {
                for (j, b) in mib.iter_mut().enumerate() {
                    *b = b"ferry text block "[j % 17];
                }
            }
        }
    }
    v
}

pub async fn new_repo(dir: &std::path::Path) -> Repository {
    let store = ferry_storage::open_store(dir.to_str().unwrap()).unwrap();
    Repository::init(store, 1 << 20, 3).await.unwrap()
}

pub fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn progress() -> Arc<ferry_archive::Progress> {
    Arc::new(ferry_archive::Progress::default())
}
