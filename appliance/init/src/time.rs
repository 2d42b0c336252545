//! Time: owns the system clock. Steps it once with SNTP from the configured
//! servers (or, when none are configured, the ones DHCP offered), then keeps
//! it in sync: small offsets are slewed with adjtime(3), large ones stepped.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sntpc::{NtpContext, NtpUdpSocket, StdTimestampGen};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::state::Published;

/// Offsets above this are stepped rather than slewed.
const STEP_THRESHOLD: Duration = Duration::from_millis(500);
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
const POLL_SYNCED: Duration = Duration::from_secs(1024);
const POLL_RETRY: Duration = Duration::from_secs(30);

struct Socket(UdpSocket);

impl NtpUdpSocket for Socket {
    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> sntpc::Result<usize> {
        self.0
            .send_to(buf, addr)
            .await
            .map_err(|_| sntpc::Error::Network)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        self.0
            .recv_from(buf)
            .await
            .map_err(|_| sntpc::Error::Network)
    }
}

/// Runs forever. `configured` wins over `dhcp_servers` when non-empty.
pub async fn run(
    configured: Vec<String>,
    mut dhcp_servers: watch::Receiver<Vec<String>>,
    published: Published,
) {
    let mut stepped = false;
    loop {
        let servers = if configured.is_empty() {
            dhcp_servers.borrow_and_update().clone()
        } else {
            configured.clone()
        };
        if servers.is_empty() {
            published.time(|t| {
                t.state = if stepped {
                    "synchronized".into()
                } else {
                    "no-servers".into()
                };
                t.servers.clear();
            });
            // Wait for DHCP to offer servers.
            if dhcp_servers.changed().await.is_err() {
                // The network task ended; nothing will ever arrive.
                std::future::pending::<()>().await;
            }
            continue;
        }
        published.time(|t| t.servers = servers.clone());
        let mut ok = false;
        for server in &servers {
            match sync_once(server, !stepped).await {
                Ok(offset_us) => {
                    stepped = true;
                    ok = true;
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .ok();
                    published.time(|t| {
                        t.state = "synchronized".into();
                        t.server = Some(server.clone());
                        t.last_offset_ms = Some(offset_us as f64 / 1000.0);
                        t.last_sync_unix = now;
                        t.last_error = None;
                    });
                    break;
                }
                Err(e) => {
                    tracing::debug!("sntp {server}: {e:#}");
                    published.time(|t| t.last_error = Some(format!("{server}: {e:#}")));
                }
            }
        }
        if !ok && !stepped {
            published.time(|t| t.state = "unsynchronized".into());
        }
        let wait = if ok { POLL_SYNCED } else { POLL_RETRY };
        // A new DHCP server list restarts the cycle early.
        let _ = tokio::time::timeout(wait, dhcp_servers.changed()).await;
    }
}

/// Queries one server and corrects the clock; returns the offset in µs.
async fn sync_once(server: &str, first: bool) -> anyhow::Result<i64> {
    let addr = tokio::net::lookup_host((server, 123))
        .await
        .with_context(|| format!("resolve {server}"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{server} has no IPv4 address"))?;
    let sock = UdpSocket::bind("0.0.0.0:0").await.context("bind UDP")?;
    let ctx = NtpContext::new(StdTimestampGen::default());
    let result = tokio::time::timeout(QUERY_TIMEOUT, sntpc::get_time(addr, &Socket(sock), ctx))
        .await
        .context("no answer")?
        .map_err(|e| anyhow::anyhow!("sntp: {e:?}"))?;
    let offset = result.offset();
    let abs = Duration::from_micros(offset.unsigned_abs());
    if first || abs > STEP_THRESHOLD {
        step(offset)?;
        tracing::info!(
            "time: stepped clock by {:.3}s from {server} ({addr})",
            offset as f64 / 1e6
        );
    } else {
        slew(offset)?;
        tracing::debug!("time: slewing {:.3}ms from {server}", offset as f64 / 1e3);
    }
    Ok(offset)
}

fn step(offset_us: i64) -> anyhow::Result<()> {
    use nix::sys::time::TimeSpec;
    use nix::time::{clock_gettime, clock_settime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_REALTIME).context("clock_gettime")?;
    let delta = TimeSpec::from_duration(Duration::from_micros(offset_us.unsigned_abs()));
    let new = if offset_us >= 0 {
        now + delta
    } else {
        now - delta
    };
    clock_settime(ClockId::CLOCK_REALTIME, new).context("clock_settime")?;
    Ok(())
}

fn slew(offset_us: i64) -> anyhow::Result<()> {
    let tv = libc::timeval {
        tv_sec: offset_us / 1_000_000,
        tv_usec: offset_us % 1_000_000,
    };
    // SAFETY: adjtime reads a valid timeval and accepts a null old-value
    // pointer.
    let rc = unsafe { libc::adjtime(&tv, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("adjtime");
    }
    Ok(())
}
