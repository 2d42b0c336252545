//! Several admins: added by CSR, listed, revoked (refused at once by the server, and put on
//! the signed revocation list); names not reused; the last active admin kept.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::time::Duration;

use ferry_mgmt::client::{AdminBundle, AdminClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_add_list_revoke() {
    let d = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let m = ferry_mgmt::Mgmt::open(ferry_mgmt::Options {
        state_dir: d.path().to_path_buf(),
        listen: addr.parse().unwrap(),
        public_url: None,
        collect_every: Duration::from_secs(3600),
        license: None,
    })
    .unwrap();
    let ca_pem = m.ca.cert_pem().to_string();
    let task = tokio::spawn(ferry_mgmt::serve_on(m.clone(), listener));
    let root = AdminClient::new(
        &addr,
        &AdminBundle::load(&d.path().join("admin.pem")).unwrap(),
    )
    .unwrap();

    let (bob_bundle, bob) = root.add_admin("bob").await.unwrap();
    assert_eq!(bob.name, "bob");
    assert!(bob.revoked_unix.is_none());
    let names =
        ferry_tls::dns_names(ferry_tls::certs_from_pem(&bob_bundle.cert_pem).unwrap()[0].as_ref());
    assert_eq!(names, vec!["admin-bob.ferry.internal".to_string()]);
    // The bundle round-trips through its file, written 0600.
    let f = d.path().join("bob.pem");
    bob_bundle.save(&f).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&f).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(bob_bundle.save(&f).is_err(), "no overwrite");
    let bob_c = AdminClient::new(&addr, &AdminBundle::load(&f).unwrap()).unwrap();
    assert!(bob_c.agents().await.unwrap().is_empty());
    let (carol_bundle, _) = bob_c.add_admin("carol").await.unwrap();
    let carol_c = AdminClient::new(&addr, &carol_bundle).unwrap();

    for bad in ["bob", "Bob", "-x", "a.b", ""] {
        assert!(root.add_admin(bad).await.is_err(), "{bad:?} accepted");
    }
    let list = root.admins().await.unwrap();
    let names: Vec<&str> = list.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["admin", "bob", "carol"]);

    // Revoked: refused by the server at once, and on the signed list.
    let r = carol_c.revoke_admin("bob").await.unwrap();
    assert!(r.revoked_unix.is_some());
    let e = bob_c.agents().await.unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");
    assert!(carol_c.agents().await.is_ok());
    let list = m.revocation_list().unwrap().verify(&ca_pem).unwrap();
    assert_eq!(list.version, 1);
    assert!(list.fingerprints().contains(&bob.cert_sha256));
    // The name stays taken; the last active admin cannot be revoked.
    assert!(root.add_admin("bob").await.is_err());
    carol_c.revoke_admin("admin").await.unwrap();
    let e = carol_c.revoke_admin("carol").await.unwrap_err().to_string();
    assert!(e.contains("last active admin"), "{e}");
    assert!(root.agents().await.is_err());
    assert_eq!(
        m.revocation_list()
            .unwrap()
            .verify(&ca_pem)
            .unwrap()
            .version,
        2
    );
    task.abort();
}
