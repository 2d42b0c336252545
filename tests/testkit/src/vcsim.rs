//! The vSphere test peer: the govmomi simulator with Ferry's additions (`tests/vcsim`).
//!
//! [`Vcsim::start`] runs `tests/vcsim/run.sh` (which builds ferry-vcsim once), waits for the
//! JSON line it prints when it listens, and keeps what the line says. The simulator exits
//! when its stdin closes; dropping a [`Vcsim`] closes it and kills the process.
//! [`Vcsim::control`] talks to its control listener (CBT generations, fault injection, the
//! snapshot barrier); `tests/vcsim/README.md` lists the requests.
//!
//! Talking vSphere to it is the caller's business: this crate does not depend on
//! ferry-vsphere.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The wrapper that builds and runs the simulator.
const RUN_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../vcsim/run.sh");

/// How long the start may take: the first one builds the simulator (and may install Go).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Why the simulator did not start or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum VcsimError {
    /// `tests/vcsim/run.sh` could not be run.
    #[error("run tests/vcsim/run.sh: {0}")]
    Spawn(std::io::Error),
    /// The simulator printed nothing within the time allowed.
    #[error("ferry-vcsim did not start within {0:?}")]
    Timeout(Duration),
    /// The simulator exited before it printed its line.
    #[error(
        "ferry-vcsim did not start (needs golang-go and golang-github-vmware-govmomi-dev; see stderr)"
    )]
    NotStarted,
    /// The line it printed is not what `tests/vcsim/main.go` writes.
    #[error("ferry-vcsim printed {line:?}: {why}")]
    BadLine {
        /// The line.
        line: String,
        /// What is wrong with it.
        why: String,
    },
    /// Reading its line, or talking to its control listener, failed.
    #[error("ferry-vcsim: {0}")]
    Io(#[from] std::io::Error),
    /// The control listener answered with another status than 200.
    #[error("ferry-vcsim control {path}: {response}")]
    Control {
        /// The request's path and query.
        path: String,
        /// The whole response.
        response: String,
    },
}

/// A running simulator; killed when dropped.
#[derive(Debug)]
pub struct Vcsim {
    child: Child,
    /// The SDK URL (`https://127.0.0.1:PORT/sdk`).
    pub url: String,
    /// A user the simulator accepts.
    pub user: String,
    /// That user's password.
    pub password: String,
    /// The control listener (`http://127.0.0.1:PORT`).
    pub control: String,
    /// The name of the VMs' datastore.
    pub datastore: String,
    /// The local directory that holds that datastore.
    pub ds_dir: String,
    /// The SHA-256 thumbprint of the simulator's certificate.
    pub thumbprint: String,
}

impl Vcsim {
    /// Starts the simulator with `args` (`-disks 64M,32M`, `-cbt-window BYTES`, `-all-vms`,
    /// `-vapi rest|api|none`) and waits until it listens. Its stderr is the caller's.
    pub async fn start(args: &[&str]) -> Result<Vcsim, VcsimError> {
        let mut child = Command::new(RUN_SH)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(VcsimError::Spawn)?;
        let out = child
            .stdout
            .take()
            .ok_or(VcsimError::Io(std::io::ErrorKind::BrokenPipe.into()))?;
        let mut line = String::new();
        tokio::time::timeout(START_TIMEOUT, BufReader::new(out).read_line(&mut line))
            .await
            .map_err(|_| VcsimError::Timeout(START_TIMEOUT))??;
        if line.is_empty() {
            return Err(VcsimError::NotStarted);
        }
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                return Err(VcsimError::BadLine {
                    why: e.to_string(),
                    line,
                })
            }
        };
        let field = |k: &str| match v[k].as_str() {
            Some(s) => Ok(s.to_string()),
            None => Err(VcsimError::BadLine {
                line: line.clone(),
                why: format!("no {k}"),
            }),
        };
        Ok(Vcsim {
            url: field("url")?,
            user: field("user")?,
            password: field("password")?,
            control: field("control")?,
            datastore: field("datastore")?,
            ds_dir: field("ds_dir")?,
            thumbprint: field("thumbprint")?,
            child,
        })
    }

    /// A POST to the control listener (plain HTTP/1.0 on loopback); the body of its answer,
    /// which must be a 200.
    pub async fn control(&self, path_and_query: &str, body: &str) -> Result<String, VcsimError> {
        let hostport = self.control.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        let req = format!(
            "POST {path_and_query} HTTP/1.0\r\nHost: {hostport}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).await?;
        if !(resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200")) {
            return Err(VcsimError::Control {
                path: path_and_query.to_string(),
                response: resp,
            });
        }
        Ok(resp
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string())
    }

    /// Kills the simulator now (a vCenter that goes away mid-job).
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}
