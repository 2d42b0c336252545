//! The HTTPS accept loop: tokio-rustls in front of hyper and axum, and what keeps one
//! client from exhausting it.
//!
//! Each request carries a [`Peer`] extension: the TCP peer and the SHA-256 of the client
//! certificate it presented (already verified against the configured CA by rustls). The
//! server config comes from a `watch` channel, read at every accept, so a new config (the
//! agent after registration) applies to the next connection without a restart.
//!
//! # Limits ([`Limits`])
//! Port 9876 is reachable by anyone on the appliance's network, so every connection is
//! bounded before it costs more than a socket:
//! - a global cap on open connections (a connection over it is closed at accept);
//! - a cap per client address (per /64 for IPv6) on connections that have not presented a
//!   verified client certificate: a flood of idle sockets from one host takes only its own
//!   slots, while mTLS clients (admins, agents, the management server) count only against
//!   the global cap;
//! - a TLS handshake timeout, a header-read timeout that also closes idle keep-alive
//!   connections, and an idle timeout on any read or write that makes no progress (a
//!   slowloris body, a client that stops reading its answer);
//! - at most 64 KiB of request head and 100 headers (hyper answers 431 past them);
//! - TCP keepalive, so a peer that vanished frees its slot.
//!
//! Request bodies are capped per route by the routers (`DefaultBodyLimit`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::{dns_names, sha256_hex};

/// What one listener allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) without a verified client
    /// certificate, handshakes included.
    pub max_unauthenticated_per_address: usize,
    /// Time from accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to receive a whole request head, also while a kept-alive connection is idle.
    pub header_read_timeout: Duration,
    /// A read or write that makes no progress for this long closes the connection.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_unauthenticated_per_address: 32,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// The defaults, with `FERRY_MAX_CONNECTIONS`, `FERRY_MAX_CONNECTIONS_PER_ADDRESS`,
    /// `FERRY_HANDSHAKE_TIMEOUT`, `FERRY_HEADER_TIMEOUT` and `FERRY_IDLE_TIMEOUT` (seconds)
    /// applied where set and valid.
    pub fn from_env() -> Self {
        let mut l = Limits::default();
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = num("FERRY_MAX_CONNECTIONS").filter(|n| *n > 0) {
            l.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = num("FERRY_MAX_CONNECTIONS_PER_ADDRESS").filter(|n| *n > 0) {
            l.max_unauthenticated_per_address = usize::try_from(n).unwrap_or(usize::MAX);
        }
        for (k, d) in [
            ("FERRY_HANDSHAKE_TIMEOUT", &mut l.handshake_timeout),
            ("FERRY_HEADER_TIMEOUT", &mut l.header_read_timeout),
            ("FERRY_IDLE_TIMEOUT", &mut l.idle_timeout),
        ] {
            if let Some(n) = num(k).filter(|n| *n > 0) {
                *d = Duration::from_secs(n);
            }
        }
        l
    }
}

/// Who is on the other side of a request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// TCP peer.
    pub addr: SocketAddr,
    /// SHA-256 (hex) of the verified client certificate, if one was presented.
    pub cert_sha256: Option<String>,
    /// DNS names in that certificate.
    pub names: Vec<String>,
}

/// The key a client address is counted under by every per-address limit: the address
/// (also when IPv4-mapped), or its /64 for IPv6 (one host usually has a whole /64 to pick
/// from).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((v6.to_bits() & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Connections without a verified client certificate, per address key.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One unauthenticated slot of an address; given back on drop.
#[derive(Debug)]
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A stream whose reads and writes fail with `TimedOut` when neither made progress for
/// `idle`. hyper has no body-read or write timeout of its own.
#[derive(Debug)]
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progress(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// After a pending read or write: an error once the deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.progress();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.progress();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!("TCP keepalive: {e}");
    }
}

/// Accepts connections on `listener` until the task is dropped, with [`Limits::from_env`].
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    app: Router,
) {
    serve_with(listener, tls, app, Limits::from_env()).await
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve_with(
    listener: TcpListener,
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let limits = Arc::new(limits);
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE; back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a limit: close at once (the peer sees a reset or EOF), and say so at most
        // once a minute so a flood cannot fill the log either.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if refused_logged.elapsed() >= Duration::from_secs(60) {
                tracing::warn!(
                    "refusing connections: {} open (the limit)",
                    limits.max_connections
                );
                refused_logged = Instant::now();
            }
            continue;
        };
        let Some(slot) = per_address.take(addr.ip(), limits.max_unauthenticated_per_address) else {
            if refused_logged.elapsed() >= Duration::from_secs(60) {
                tracing::warn!(
                    "refusing connections from {}: {} without a client certificate open",
                    addr.ip(),
                    limits.max_unauthenticated_per_address
                );
                refused_logged = Instant::now();
            }
            continue;
        };
        keepalive(&tcp);
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        let app = app.clone();
        let limits = limits.clone();
        tokio::spawn(connection(tcp, addr, acceptor, app, limits, permit, slot));
    }
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    limits: Arc<Limits>,
    _permit: OwnedSemaphorePermit,
    slot: AddressSlot,
) {
    let tcp = IdleTimeout::new(tcp, limits.idle_timeout);
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {addr}: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake with {addr} timed out");
            return;
        }
    };
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    let cert_sha256 = leaf.map(|c| sha256_hex(c.as_ref()));
    let names = leaf.map(|c| dns_names(c.as_ref())).unwrap_or_default();
    // A verified client certificate: this connection no longer counts against its
    // address (many agents behind one NAT, a CLI's connection pool).
    let _slot = if cert_sha256.is_some() {
        drop(slot);
        None
    } else {
        Some(slot)
    };
    let peer = Peer {
        addr,
        cert_sha256,
        names,
    };
    let svc = TowerToHyperService::new(app.layer(Extension(peer)));
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024)
        .max_header_size(64 * 1024)
        .max_headers(100)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!("connection from {addr}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Role};
    use crate::trust::{client_config, server_config, ClientAuth, Identity, ServerTrust};

    #[test]
    fn ipv6_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(x), address_key(y));
        assert_ne!(address_key(x), address_key(z));
        let m: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(m), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_address_gets_its_slots_back() {
        let t = Arc::new(PerAddress::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..3).filter_map(|_| t.take(a, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(t.take(a, 3).is_none());
        assert!(t.take("192.0.2.2".parse().unwrap(), 3).is_some());
        drop(held);
        assert!(t.take(a, 3).is_some());
        assert!(
            t.open.lock().unwrap().get(&a).is_none(),
            "emptied entries are removed"
        );
    }

    async fn whoami(Extension(p): Extension<Peer>) -> String {
        format!(
            "{} {}",
            p.cert_sha256.unwrap_or_else(|| "none".into()),
            p.names.join(",")
        )
    }

    #[tokio::test]
    async fn mtls_identity_reaches_the_handler_and_strangers_are_refused() {
        let ca = Ca::create("ca").unwrap();
        let other = Ca::create("other").unwrap();
        let (sc, sk) = ca.issue(Role::Server, "", 1).unwrap();
        let chain = format!("{sc}{}", ca.cert_pem());
        let cfg = server_config(
            Identity::from_pem(&chain, &sk).unwrap(),
            ClientAuth::Required(ca.cert_pem().to_string()),
        )
        .unwrap();
        let (_tx, rx) = watch::channel(cfg);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let app = Router::new().route("/", axum::routing::get(whoami));
        tokio::spawn(serve(l, rx, app));
        let url = format!("https://127.0.0.1:{port}/");

        let (ac, ak) = ca.issue(Role::Admin, "root", 1).unwrap();
        let id = Identity::from_pem(&ac, &ak).unwrap();
        let fp = id.sha256();
        for trust in [
            ServerTrust::Ca {
                ca_pem: ca.cert_pem().into(),
                name: crate::pki::dns_name(Role::Server, ""),
            },
            ServerTrust::CaPin {
                sha256: ca.sha256().into(),
                name: crate::pki::dns_name(Role::Server, ""),
            },
        ] {
            let c = crate::http_client(
                client_config(trust, Some(Identity::from_pem(&ac, &ak).unwrap())).unwrap(),
            )
            .unwrap();
            let body = c.get(&url).send().await.unwrap().text().await.unwrap();
            assert_eq!(body, format!("{fp} admin-root.ferry.internal"));
        }
        // No client certificate, a certificate of another CA, a wrong CA pin, a wrong name.
        let (oc, ok) = other.issue(Role::Admin, "root", 1).unwrap();
        let bad = [
            client_config(ServerTrust::Any, None).unwrap(),
            client_config(
                ServerTrust::Any,
                Some(Identity::from_pem(&oc, &ok).unwrap()),
            )
            .unwrap(),
            client_config(
                ServerTrust::CaPin {
                    sha256: other.sha256().into(),
                    name: crate::pki::dns_name(Role::Server, ""),
                },
                Some(Identity::from_pem(&ac, &ak).unwrap()),
            )
            .unwrap(),
            client_config(
                ServerTrust::Ca {
                    ca_pem: ca.cert_pem().into(),
                    name: crate::pki::dns_name(Role::Agent, "x"),
                },
                Some(Identity::from_pem(&ac, &ak).unwrap()),
            )
            .unwrap(),
        ];
        for cfg in bad {
            let c = crate::http_client(cfg).unwrap();
            assert!(c.get(&url).send().await.is_err());
        }
    }
}
