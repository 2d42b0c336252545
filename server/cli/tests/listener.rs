//! Attacks on the listener of port 9876, against a real `ferry mgmt serve` (the agent and
//! the storage node share the same accept loop, `ferry_tls::serve`): a flood of idle sockets
//! from one address, a slowloris request head, a stalled body, an oversized head and a
//! truncated TLS handshake. Each attack must fail while an admin (mTLS, from another
//! loopback address) is still served. The timeouts are shortened through the server's
//! environment so the bounded waits below stay short; the waits are limits, not timings.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::serve_mgmt_env;
use ferry_mgmt::client::{AdminBundle, AdminClient};
use ferry_tls::trust::{client_config, ServerTrust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// A TCP connection to `port` from the loopback address `from`.
async fn connect_from(from: &str, port: u16) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

/// True when the peer closes the stream (EOF or an error) within `limit`.
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A TLS session without a client certificate, as any stranger on the network can open.
async fn stranger(port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = client_config(ServerTrust::Any, None).unwrap();
    let tcp = connect_from("127.0.0.3", port).await;
    TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from(ferry_api::MGMT_SERVER_NAME).unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

struct Server {
    dir: tempfile::TempDir,
    _mgmt: common::ServedMgmt,
    port: u16,
    admin: AdminClient,
}

fn start(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mgmt");
    let mgmt = serve_mgmt_env(
        &state,
        "127.0.0.1:0",
        &["--collect-every", "3600"],
        std::process::Stdio::null(),
        env,
    );
    let port: u16 = mgmt.addr.rsplit(':').next().unwrap().parse().unwrap();
    let bundle = AdminBundle::load(&state.join("admin.pem")).unwrap();
    let admin = AdminClient::new(&format!("127.0.0.1:{port}"), &bundle).unwrap();
    Server {
        dir,
        _mgmt: mgmt,
        port,
        admin,
    }
}

async fn admin_is_served(s: &Server) {
    let agents = tokio::time::timeout(Duration::from_secs(10), s.admin.agents())
        .await
        .expect("the admin waited over 10 s")
        .expect("the admin was refused");
    assert!(agents.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_takes_only_its_own_slots() {
    let s = start(&[
        ("FERRY_MAX_CONNECTIONS_PER_ADDRESS", "8"),
        ("FERRY_HANDSHAKE_TIMEOUT", "60"),
    ]);
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(connect_from("127.0.0.2", s.port).await);
    }
    // The first eight wait for their handshake; the other 32 are closed at accept.
    let mut closed = 0;
    for c in flood.iter_mut() {
        if closed_within(c, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 32,
        "only {closed} of 40 idle connections were closed"
    );
    admin_is_served(&s).await;
    // A stranger from another address still gets a TLS session (enrollment needs that).
    let mut t = stranger(s.port).await;
    t.write_all(b"GET /v1/agents HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = t.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_and_a_stalled_body_are_cut_off() {
    let s = start(&[("FERRY_HEADER_TIMEOUT", "2"), ("FERRY_IDLE_TIMEOUT", "2")]);
    // Half a request head, then silence.
    let mut head = stranger(s.port).await;
    head.write_all(b"GET /v1/agents HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    head.flush().await.unwrap();
    // A whole head promising a body that never comes.
    let mut body = stranger(s.port).await;
    body.write_all(
        b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"tok",
    )
    .await
    .unwrap();
    body.flush().await.unwrap();
    admin_is_served(&s).await;
    assert!(
        closed_within(&mut head, Duration::from_secs(20)).await,
        "a half-sent request head kept its connection"
    );
    assert!(
        closed_within(&mut body, Duration::from_secs(20)).await,
        "a stalled body kept its connection"
    );
    admin_is_served(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_gets_431_and_a_truncated_handshake_is_dropped() {
    let s = start(&[("FERRY_HANDSHAKE_TIMEOUT", "2")]);
    let mut big = stranger(s.port).await;
    let filler = "a".repeat(100 * 1024);
    big.write_all(
        format!("GET /v1/agents HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // The first bytes of a ClientHello, then nothing.
    let mut tcp = connect_from("127.0.0.3", s.port).await;
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    admin_is_served(&s).await;
    assert!(
        closed_within(&mut tcp, Duration::from_secs(20)).await,
        "a truncated handshake kept its connection"
    );
    admin_is_served(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_future_foreign_and_non_admin_certificates_are_refused() {
    let s = start(&[]);
    let state = s.dir.path().join("mgmt");
    let ca = ferry_tls::pki::Ca::from_pem(
        &std::fs::read_to_string(state.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(state.join("ca.key")).unwrap(),
    )
    .unwrap();
    let now = ferry_api::now_unix();
    let day = 86_400;
    let foreign = ferry_tls::pki::Ca::create("someone else").unwrap();
    let certs = [
        (
            "expired",
            ca.issue_between(
                ferry_tls::pki::Role::Admin,
                "root",
                now - 30 * day,
                now - day,
            )
            .unwrap(),
        ),
        (
            "not yet valid",
            ca.issue_between(
                ferry_tls::pki::Role::Admin,
                "root",
                now + day,
                now + 30 * day,
            )
            .unwrap(),
        ),
        (
            "of the agent role",
            ca.issue(ferry_tls::pki::Role::Agent, "0123456789abcdef", 30)
                .unwrap(),
        ),
        (
            "the server never registered",
            ca.issue(ferry_tls::pki::Role::Admin, "root", 30).unwrap(),
        ),
        (
            "of another CA",
            foreign
                .issue(ferry_tls::pki::Role::Admin, "root", 30)
                .unwrap(),
        ),
    ];
    for (what, (cert_pem, key_pem)) in certs {
        let bundle = AdminBundle {
            cert_pem,
            key_pem,
            ca_pem: ca.cert_pem().to_string(),
        };
        let c = AdminClient::new(&format!("127.0.0.1:{}", s.port), &bundle).unwrap();
        assert!(
            c.agents().await.is_err(),
            "an admin certificate {what} was accepted"
        );
        admin_is_served(&s).await;
    }
}
