//! STARTTLS against `qemu-nbd --tls-creds` and `nbdkit --tls=require`, with certificates
//! made by rcgen in the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::*;
use ferry_nbd::proto::BASE_ALLOCATION;
use ferry_nbd::{ClientOptions, ClientTls, NbdClient, NbdError, ServerTrust};

const SIZE: u64 = 8 << 20;

fn tls_uri(uri: &str, pki: &Pki) -> String {
    format!(
        "{}&tls-certificates={}",
        uri.replacen("nbd+unix", "nbds+unix", 1),
        pki.client_dir.display()
    )
}

#[tokio::test]
async fn qemu_nbd_with_x509_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = make_disk(&raw, SIZE, 21);
    let pki = pki(dir.path());
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=on",
        pki.dir.display()
    );
    let peer = qemu_nbd(
        dir.path(),
        &raw,
        "raw",
        &["--object", &object, "--tls-creds", "tls0"],
    );

    // CA verification plus a client certificate.
    let tls = ClientTls::new(
        ServerTrust::Ca(pki.ca_pem.clone()),
        Some((&pki.client_cert_pem, &pki.client_key_pem)),
    )
    .unwrap();
    let opts = ClientOptions::default().with_tls(tls);
    let client = NbdClient::connect_uri(&peer.uri, &opts).await.unwrap();
    assert_eq!(read_all(&client).await, content);
    let ours = client.block_status(BASE_ALLOCATION, 0, SIZE).await.unwrap();
    assert_eq!(ours, nbdinfo_map(&tls_uri(&peer.uri, &pki), None));
    client.disconnect().await;

    // The same through the URI alone (libnbd-style tls-certificates directory).
    let client = NbdClient::connect_uri(&tls_uri(&peer.uri, &pki), &ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(client.size(), SIZE);
    client.disconnect().await;

    // Without a client certificate the server refuses the session.
    let tls = ClientTls::new(ServerTrust::Ca(pki.ca_pem.clone()), None).unwrap();
    let e = NbdClient::connect_uri(&peer.uri, &ClientOptions::default().with_tls(tls))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::Tls(_) | NbdError::Closed { .. } | NbdError::Io { .. }
        ),
        "{e}"
    );

    // Without TLS the server says TLS is required.
    let e = NbdClient::connect_uri(&peer.uri, &ClientOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::Refused {
                reply: "NBD_REP_ERR_TLS_REQD",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn nbdkit_tls_require_with_pin_and_ca() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = make_disk(&raw, SIZE, 22);
    let pki = pki(dir.path());
    let certs = format!("--tls-certificates={}", pki.dir.display());
    let file_arg = format!("file={}", raw.display());
    let peer = nbdkit(
        dir.path(),
        &["-r", "--tls=require", &certs, "file", &file_arg],
    );

    // Pinning the server certificate (no CA needed).
    let pin = ferry_nbd::tls::cert_sha256(&pki.server_der);
    let tls = ClientTls::new(ServerTrust::Pin(pin), None).unwrap();
    let client = NbdClient::connect_uri(&peer.uri, &ClientOptions::default().with_tls(tls))
        .await
        .unwrap();
    assert_eq!(read_all(&client).await, content);
    client.disconnect().await;

    // CA verification, with a client certificate the server does not ask for.
    let tls = ClientTls::new(
        ServerTrust::Ca(pki.ca_pem.clone()),
        Some((&pki.client_cert_pem, &pki.client_key_pem)),
    )
    .unwrap();
    let client = NbdClient::connect_uri(&peer.uri, &ClientOptions::default().with_tls(tls))
        .await
        .unwrap();
    let ours = client.block_status(BASE_ALLOCATION, 0, SIZE).await.unwrap();
    assert_eq!(ours, nbdinfo_map(&tls_uri(&peer.uri, &pki), None));
    client.disconnect().await;

    // A wrong pin is a TLS error, not a session.
    let tls = ClientTls::new(ServerTrust::Pin([7; 32]), None).unwrap();
    let e = NbdClient::connect_uri(&peer.uri, &ClientOptions::default().with_tls(tls))
        .await
        .unwrap_err();
    assert!(matches!(&e, NbdError::Tls(m) if m.contains("pin")), "{e}");

    // A CA that did not sign the server certificate is refused too.
    let other = pki_other(dir.path());
    let tls = ClientTls::new(ServerTrust::Ca(other), None).unwrap();
    let e = NbdClient::connect_uri(&peer.uri, &ClientOptions::default().with_tls(tls))
        .await
        .unwrap_err();
    assert!(matches!(e, NbdError::Tls(_)), "{e}");

    // nbds:// without any TLS settings is a configuration error.
    let e = NbdClient::connect_uri(
        &peer.uri.replacen("nbd+unix", "nbds+unix", 1),
        &ClientOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, NbdError::Invalid(_)), "{e}");
}

fn pki_other(base: &std::path::Path) -> Vec<u8> {
    let d = base.join("other");
    std::fs::create_dir_all(&d).unwrap();
    pki(&d).ca_pem
}
