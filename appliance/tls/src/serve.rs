//! The HTTPS accept loop: tokio-rustls in front of hyper and axum.
//!
//! Each request carries a [`Peer`] extension: the TCP peer and the SHA-256 of the client
//! certificate it presented (already verified against the configured CA by rustls). The
//! server config comes from a `watch` channel, read at every accept, so a new config (the
//! agent after registration) applies to the next connection without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::{dns_names, sha256_hex};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    app: Router,
) {
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
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
            let peer = Peer {
                addr,
                cert_sha256,
                names,
            };
            let svc = TowerToHyperService::new(app.layer(Extension(peer)));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("connection from {addr}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Role};
    use crate::trust::{client_config, server_config, ClientAuth, Identity, ServerTrust};

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
