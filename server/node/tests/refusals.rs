//! Bad input: poisoned chunks, wrong grants, strangers, malformed and oversized bodies,
//! commits naming missing chunks. Each gets a clear 4xx and leaves nothing behind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use bytes::Bytes;
use common::*;
use ferry_archive::format;
use ferry_storage::StoreError;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poisoned_chunks_are_refused() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let c = http(&w, &a1);
    let good = vec![7u8; 100_000];
    let evil = vec![8u8; 100_000];
    let good_hex = format::digest_hex(&format::digest_of(&good));
    let url = |hex: &str| format!("https://{}/v1/vaults/main/chunks/{hex}", node.addr);

    // The content of one chunk under the digest of another.
    let body = format::encode_chunk(&evil, 3).unwrap();
    let r = c.put(url(&good_hex)).body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("chunk refused"), "{msg}");
    // Garbage, a truncated object, a bad digest.
    let r = c.put(url(&good_hex)).body("garbage").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let mut trunc = format::encode_chunk(&good, 3).unwrap();
    trunc.truncate(trunc.len() - 1);
    let r = c.put(url(&good_hex)).body(trunc).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let r = c.put(url("xyz")).body("x").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Nothing was stored; the honest chunk is then accepted.
    assert_eq!(w.chunk_count("main"), 0);
    let r = c.head(url(&good_hex)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body = format::encode_chunk(&good, 3).unwrap();
    let r = c.put(url(&good_hex)).body(body).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(w.chunk_count("main"), 1);

    // Through the Store trait, a poisoned put is a clear error too.
    let s = store(&node, "main", &a1);
    let key = ferry_archive::repo::chunk_key(&format::digest_of(&[1u8; 10]));
    let e = s
        .put_new(
            &key,
            Bytes::from(format::encode_chunk(&[2u8; 10], 3).unwrap()),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("does not match") || e.to_string().contains("refused"),
        "{e}"
    );

    // Oversized body: 413, and the node is still up. A client of its own: the node may close
    // that connection, and a later request on the same pooled connection would fail to send.
    let big = vec![0u8; ferry_api::node::MAX_CHUNK_BODY + 1];
    let r = http(&w, &a1).put(url(&good_hex)).body(big).send().await;
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }
    let r = c
        .post(format!(
            "https://{}/v1/vaults/main/chunks/missing",
            node.addr
        ))
        .body("{\"digests\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = c
        .post(format!(
            "https://{}/v1/vaults/main/chunks/missing",
            node.addr
        ))
        .json(&ferry_api::node::MissingRequest {
            digests: vec![good_hex.clone(), "ab".repeat(32)],
        })
        .send()
        .await
        .unwrap();
    let m: ferry_api::node::MissingResponse = r.json().await.unwrap();
    assert_eq!(m.missing, vec!["ab".repeat(32)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_grants_and_strangers_are_refused() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let disk = w.path("disk.raw");
    random_disk(&disk, 3 * MIB as usize, 1);

    // a2 has no grant on "small", nobody on "nope", a3 on nothing.
    for (who, vault) in [
        ("a2", "small"),
        ("a1", "other"),
        ("a1", "nope"),
        ("a3", "main"),
    ] {
        let id = w.agent(who);
        let s = store(&node, vault, &id);
        let e = ferry_archive::Repository::open(s.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ferry_archive::ArchiveError::Store(StoreError::PermissionDenied { .. })
            ),
            "{who} on {vault}: {e}"
        );
        assert!(e.to_string().contains("no grant"), "{e}");
        let e = s
            .put_new(
                &ferry_archive::repo::chunk_key(&format::digest_of(b"x")),
                Bytes::from(format::encode_chunk(b"x", 3).unwrap()),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::PermissionDenied { .. }), "{e}");
    }
    assert_eq!(w.chunk_count("small") + w.chunk_count("other"), 0);

    // A certificate of another CA does not get through TLS.
    let other = ferry_tls::pki::Ca::create("stranger").unwrap();
    let id = w.identity_of(&other, ferry_tls::pki::Role::Agent, "a1");
    let s = store(&node, "main", &id);
    assert!(s.exists("config").await.is_err());

    // An agent cannot run node jobs.
    let a1 = w.agent("a1");
    let r = http(&w, &a1)
        .post(format!("https://{}/v1/vaults/main/jobs/gc", node.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Nor delete chunks or list them.
    let s = store(&node, "main", &a1);
    assert!(s.list("chunks/").await.is_err());
    assert!(s
        .delete(&ferry_archive::repo::chunk_key(&format::digest_of(b"x")))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_need_every_chunk_and_a_consistent_manifest() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let repo = repo(&node, "main", &a1).await;
    let disk = w.path("disk.raw");
    random_disk(&disk, 4 * MIB as usize, 2);
    let m = backup(&repo, &disk, "vm", None).await.unwrap();
    let index = repo.store().get(&m.disks[0].index).await.unwrap();
    let c = http(&w, &a1);

    // The same index under a new point id, but a chunk the node does not have.
    let mut idx = ferry_archive::Index::decode(&index, "i").unwrap();
    idx.entries[1] = format::digest_of(b"never uploaded");
    let data = idx.encode().unwrap();
    let id = ferry_archive::repo::new_point_id();
    let mut m2 = m.clone();
    m2.id = id.clone();
    m2.meta.clear();
    m2.disks[0].index = ferry_archive::repo::index_key(&id, 0);
    m2.disks[0].index_sha256 = format::digest_hex(&format::digest_of(&data));
    let mdata = format::encode_json(format::Kind::Manifest, &m2).unwrap();
    let commit = |objs: Vec<(String, Vec<u8>)>| {
        let refs: Vec<(String, &[u8])> = objs
            .iter()
            .map(|(k, v)| (k.clone(), v.as_slice()))
            .collect();
        ferry_api::node::join_commit(&refs).unwrap()
    };
    let url = format!("https://{}/v1/vaults/main/points/{id}/commit", node.addr);
    let r = c
        .post(&url)
        .body(commit(vec![
            (m2.disks[0].index.clone(), data.clone()),
            (ferry_archive::repo::manifest_key(&id), mdata.clone()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    // Without its index; with an index that does not match the manifest; truncated.
    let r = c
        .post(&url)
        .body(commit(vec![(
            ferry_archive::repo::manifest_key(&id),
            mdata.clone(),
        )]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = c
        .post(&url)
        .body(commit(vec![
            (m2.disks[0].index.clone(), index.to_vec()),
            (ferry_archive::repo::manifest_key(&id), mdata.clone()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let mut body = commit(vec![(
        ferry_archive::repo::manifest_key(&id),
        mdata.clone(),
    )]);
    body.truncate(body.len() - 3);
    let r = c.post(&url).body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // No half-committed point: only the first one exists, and no stray index.
    assert_eq!(repo.list_point_ids().await.unwrap(), vec![m.id.clone()]);
    assert!(!w.vault_dir("main").join("points").join(&id).exists());
}
