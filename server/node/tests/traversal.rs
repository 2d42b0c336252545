//! Path traversal against a real `ferry-node`: every path and query parameter that names
//! something (list prefix, object key, chunk digest, lock name, point id, vault name, job)
//! is refused with 400, 403 or 404 when it tries to leave the vault, and nothing outside the
//! vault is listed, read, written or deleted; a legitimate client is served meanwhile.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::*;
use ferry_archive::format::{self, Kind};
use ferry_archive::lock::{LockInfo, LockKind};

/// A marker only files outside the vaults hold.
const SECRET: &str = "s3cr3t-outside-the-vault";

fn lock_record() -> Vec<u8> {
    let info = LockInfo {
        kind: LockKind::Shared,
        purpose: "backup".into(),
        host: "elsewhere".into(),
        pid: 4242,
        created: 0,
        refreshed: 0,
    };
    format::encode_json(Kind::Lock, &info).unwrap()
}

/// The listing URL of `prefix`, every byte but letters and digits percent-encoded: the node
/// sees exactly `prefix`.
fn list_url(base: &str, vault: &str, prefix: &str) -> String {
    let q: String = prefix
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{base}/{vault}/objects?prefix={q}")
}

/// Asserts a refusal that reveals nothing from outside the vault.
async fn refused(what: &str, r: reqwest::Response) {
    let code = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert!(
        [400, 403, 404, 405].contains(&code),
        "{what}: answered {code}: {body}"
    );
    // Names only a listing of the state directory would show (the keys tried name others).
    for leak in [
        SECRET,
        "node.toml",
        "ca.pem",
        "locks-main",
        "\"key\":\"vaults",
    ] {
        assert!(
            !body.contains(leak),
            "{what}: answer leaks {leak:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traversal_is_refused_everywhere() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let (a1, admin) = (
        w.agent("a1"),
        w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root"),
    );
    // Files outside the vault: in the state directory, beside it, and another vault.
    std::fs::write(w.state.join("secret.txt"), SECRET).unwrap();
    std::fs::write(w.state.join("vaults/secret.txt"), SECRET).unwrap();
    std::fs::write(w.vault_dir("other").join("secret.txt"), SECRET).unwrap();
    std::fs::create_dir_all(w.vault_dir("main").join("locks")).unwrap();
    let base = format!("https://{}/v1/vaults", node.addr);

    // A legitimate backup first, so that the vault has points, chunks and locks to find.
    let disk = w.path("d.raw");
    mixed_disk(&disk, 4 * MIB, 3);
    let repo1 = repo(&node, "main", &a1).await;
    let m = backup(&repo1, &disk, "vm", None).await.unwrap();

    for (who, id) in [("a1", &a1), ("admin", &admin)] {
        let c = http(&w, id);
        // List prefixes.
        for p in [
            "locks/../../../../",
            "locks/../../",
            "locks/../..",
            "locks/..",
            "points/../../",
            "points/../../other/",
            "../",
            "..",
            "/",
            "/etc/",
            "//",
            "locks//",
            "locks\\..\\..\\",
            "locks/\0",
            "locks/.tmp",
            "./",
        ] {
            let r = c.get(list_url(&base, "main", p)).send().await.unwrap();
            refused(&format!("{who} list {p:?}"), r).await;
        }
        // Object keys, chunk digests, lock names, point ids: encoded slashes reach the
        // node as one path parameter, which it decodes to `../..`.
        for k in [
            "locks%2F..%2F..%2F..%2Fsecret.txt",
            "..%2F..%2Fsecret.txt",
            "..%2Fsecret.txt",
            "config%2F..%2F..%2F..%2Fnode.key",
            "points%2F..%2F..%2F..%2Fnode.key",
            "%2Fetc%2Fpasswd",
            "locks%5C..%5C..%5Csecret.txt",
            "config%00",
            "chunks%2F..%2F..%2Fother%2Fsecret.txt",
        ] {
            let r = c
                .get(format!("{base}/main/objects/{k}"))
                .send()
                .await
                .unwrap();
            refused(&format!("{who} GET object {k}"), r).await;
            let r = c
                .head(format!("{base}/main/objects/{k}"))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            assert!([400, 403, 404].contains(&code), "{who} HEAD {k}: {code}");
            let r = c
                .get(format!("{base}/main/chunks/{k}"))
                .send()
                .await
                .unwrap();
            refused(&format!("{who} GET chunk {k}"), r).await;
            let r = c
                .put(format!("{base}/main/chunks/{k}"))
                .body(vec![0u8; 64])
                .send()
                .await
                .unwrap();
            refused(&format!("{who} PUT chunk {k}"), r).await;
            let r = c
                .put(format!("{base}/main/locks/{k}"))
                .body(lock_record())
                .send()
                .await
                .unwrap();
            refused(&format!("{who} PUT lock {k}"), r).await;
            let r = c
                .delete(format!("{base}/main/locks/{k}"))
                .send()
                .await
                .unwrap();
            refused(&format!("{who} DELETE lock {k}"), r).await;
            let r = c
                .get(format!("{base}/main/catalog/{k}"))
                .send()
                .await
                .unwrap();
            refused(&format!("{who} catalog {k}"), r).await;
            let r = c
                .delete(format!("{base}/main/points/{k}"))
                .send()
                .await
                .unwrap();
            refused(&format!("{who} DELETE point {k}"), r).await;
            let r = c
                .post(format!("{base}/main/points/{k}/commit"))
                .body(vec![0u8; 8])
                .send()
                .await
                .unwrap();
            refused(&format!("{who} commit {k}"), r).await;
            let r = c
                .post(format!("{base}/main/jobs/{k}"))
                .send()
                .await
                .unwrap();
            refused(&format!("{who} job {k}"), r).await;
            // Vault names.
            let r = c.get(format!("{base}/{k}/catalog")).send().await.unwrap();
            refused(&format!("{who} vault {k}"), r).await;
            let r = c
                .get(format!("{base}/{k}/objects?prefix="))
                .send()
                .await
                .unwrap();
            refused(&format!("{who} vault {k} list"), r).await;
        }
    }
    // Nothing outside the vault was touched.
    for p in [
        w.state.join("secret.txt"),
        w.state.join("vaults/secret.txt"),
        w.vault_dir("other").join("secret.txt"),
        w.state.join("node.key"),
    ] {
        assert!(p.exists(), "{} is gone", p.display());
    }
    assert_eq!(
        std::fs::read_to_string(w.state.join("secret.txt")).unwrap(),
        SECRET
    );

    // The legitimate client is still served: its locks and points list, its point restores.
    let c = http(&w, &a1);
    for p in ["locks/", "points/", &format!("points/{}/", m.id)] {
        let r = c.get(list_url(&base, "main", p)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "list {p}");
    }
    let all: Vec<ferry_api::node::ObjectEntry> = http(&w, &admin)
        .get(list_url(&base, "main", ""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(all.iter().any(|o| o.key == "config"));
    assert!(all
        .iter()
        .all(|o| ferry_storage::validate_key(&o.key).is_ok()));
    assert_eq!(
        restore_sha(&repo1, &m, &w.path("out")).await,
        sha256_file(&disk)
    );
}
