//! Supervision: owns child processes, the zombie reaper, and the agent's
//! restart loop.
//!
//! As PID 1, init inherits every orphan and must reap them, but a blanket
//! `waitpid(-1)` would steal the exit status of a child that other code is
//! waiting for. So there is exactly one waiter, the [`Reaper`]: code that
//! starts a child does so through [`Reaper::spawn`], which registers the pid
//! (under the same lock the reaper takes before looking a pid up, so even a
//! child that exits at once is delivered) and returns a receiver for its
//! status. Unregistered pids are orphans and are just reaped. Nothing in init
//! uses `tokio::process` or `Child::wait`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::state::Published;

/// Where the image installs the agent.
pub const AGENT_PATH: &str = "/sbin/ferry-agent";
/// How long the agent gets to exit after SIGTERM before SIGKILL.
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>>;

/// The single owner of `waitpid`.
#[derive(Debug, Clone)]
pub struct Reaper {
    waiters: Waiters,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts reaping. Must run before the
    /// first child is spawned.
    pub fn start() -> anyhow::Result<Self> {
        let mut sigchld = signal(SignalKind::child()).context("install SIGCHLD handler")?;
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            // The tick covers a SIGCHLD that raced with installation.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                reap_all(&w);
            }
        });
        Ok(Self { waiters })
    }

    /// Spawns `cmd` and returns the child with a receiver for its status.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<WaitStatus>)> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        waiters.insert(pid, tx);
        Ok((child, rx))
    }
}

fn reap_all(waiters: &Waiters) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid: {e}");
                return;
            }
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                let tx = waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&pid.as_raw());
                match tx {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => tracing::debug!("reaped orphan {pid}: {status:?}"),
                }
            }
        }
    }
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// Settings passed to every agent start.
#[derive(Clone)]
pub struct AgentEnv {
    pub state_dir: String,
    pub log_level: String,
    pub debug: bool,
    /// Settings for the agent (management server, enrollment token); the token is a
    /// secret, so this is never logged.
    pub extra: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for AgentEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentEnv")
            .field("state_dir", &self.state_dir)
            .field("log_level", &self.log_level)
            .field("debug", &self.debug)
            .field(
                "extra",
                &self.extra.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Keeps the agent running until `stop` turns true, then stops it
/// (SIGTERM, then SIGKILL after [`AGENT_STOP_TIMEOUT`]) and returns.
pub async fn supervise_agent(
    reaper: Reaper,
    env: AgentEnv,
    published: Published,
    mut stop: watch::Receiver<bool>,
) {
    let mut starts: u32 = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return;
        }
        starts += 1;
        let mut cmd = Command::new(AGENT_PATH);
        cmd.env_clear()
            .env("PATH", "/sbin:/bin")
            .env("FERRY_STATE_DIR", &env.state_dir)
            .env("FERRY_AGENT_START", starts.to_string())
            .env("FERRY_LOG", &env.log_level)
            .env("FERRY_DEBUG", if env.debug { "1" } else { "0" })
            .envs(env.extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let (mut child, status_rx) = match reaper.spawn(&mut cmd) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(
                    "cannot start {AGENT_PATH}: {e}; retrying in {}s",
                    backoff.as_secs()
                );
                published.agent(|a| a.last_exit = Some(format!("spawn failed: {e}")));
                if wait_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        tracing::info!("started ferry-agent (pid {pid}, start #{starts})");
        published.agent(|a| {
            a.starts = starts;
            a.pid = Some(pid);
        });
        forward_output(child.stdout.take());
        forward_output(child.stderr.take());
        // The reaper owns waiting; dropping Child does not wait or kill.
        drop(child);

        let mut status_rx = status_rx;
        let status = tokio::select! {
            s = &mut status_rx => s.ok(),
            _ = stop.changed() => {
                stop_agent(pid, status_rx).await;
                published.agent(|a| a.pid = None);
                return;
            }
        };
        let what = status
            .as_ref()
            .map(describe)
            .unwrap_or_else(|| "vanished".into());
        published.agent(|a| {
            a.pid = None;
            a.last_exit = Some(what.clone());
        });
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(
            "ferry-agent (pid {pid}) {what}; restarting in {}s",
            backoff.as_secs()
        );
        if wait_or_stop(backoff, &mut stop).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Sleeps for `d`; returns true if a stop was requested meanwhile.
async fn wait_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn stop_agent(pid: i32, mut status_rx: oneshot::Receiver<WaitStatus>) {
    tracing::info!("stopping ferry-agent (pid {pid})");
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    match tokio::time::timeout(AGENT_STOP_TIMEOUT, &mut status_rx).await {
        Ok(Ok(s)) => tracing::info!("ferry-agent stopped: {}", describe(&s)),
        _ => {
            tracing::warn!(
                "ferry-agent did not stop within {}s; killing it",
                AGENT_STOP_TIMEOUT.as_secs()
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(2), status_rx).await;
        }
    }
}

/// Copies a child's output lines into init's log (console and ring).
fn forward_output<R: std::io::Read + Send + 'static>(r: Option<R>) {
    let Some(r) = r else { return };
    let spawned = std::thread::Builder::new()
        .name("agent-log".into())
        .spawn(move || {
            for line in BufReader::new(r).lines() {
                match line {
                    Ok(l) => tracing::info!(target: "agent", "{l}"),
                    Err(_) => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot forward agent output: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered child's status reaches its waiter, while its orphaned
    /// grandchild (re-parented to us as a subreaper, as it would be to PID 1)
    /// is reaped without a waiter and leaves no zombie.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_registered_status_and_reaps_orphans() {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0);
        let reaper = Reaper::start().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 0.3 & exit 3"]);
        let (child, rx) = reaper.spawn(&mut cmd).unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        drop(child);
        let status = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, WaitStatus::Exited(Pid::from_raw(pid), 3));
        // The orphaned sleep exits after 0.3 s; the reaper must collect it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
            Err(Errno::ECHILD),
            "no child (and no zombie) may be left"
        );
    }
}
