//! Memory exhaustion of a real `ferry-node` by one tenant: a body is not read before the
//! caller's grant is checked, nor beyond its declared limit; an index cannot decode to more
//! than the disk its manifest declares needs; one identity's commits are queued with a bound
//! (429 beyond it) while others are served; and no grantee but an admin takes an exclusive
//! lock, which an admin can always remove.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_archive::format::{self, Kind};
use ferry_archive::lock::{LockInfo, LockKind};
use sha2::{Digest as _, Sha256};

/// A raw mTLS connection to the node, for requests whose body is sent late or never.
struct Raw(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Raw {
    fn open(w: &World, identity: &Path, node: &NodeProc) -> Raw {
        let name =
            rustls::pki_types::ServerName::try_from(ferry_api::agent_server_name("node1")).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(tls_config(w, identity)), name).unwrap();
        let tcp = TcpStream::connect(&node.addr).unwrap();
        // A bounded wait: an answer that needs the body never comes, and the test fails.
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw(rustls::StreamOwned::new(conn, tcp))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
        self.0.flush().unwrap();
    }

    /// The next response head (status line and headers).
    fn head(&mut self) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            match self.0.read(&mut b) {
                Ok(1) => out.push(b[0]),
                other => panic!(
                    "no answer before the body was sent ({other:?}); got {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// The status code of the next response head.
    fn status(&mut self) -> u16 {
        let h = self.head();
        h.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

fn request(method: &str, path: &str, len: u64, expect: bool) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: node1\r\ncontent-length: {len}\r\n{}\r\n",
        if expect {
            "expect: 100-continue\r\n"
        } else {
            ""
        }
    )
    .into_bytes()
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_are_read_only_after_the_grant_and_within_the_limit() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let (a1, a3) = (w.agent("a1"), w.agent("a3"));
    let hex = "ab".repeat(32);

    // A stranger (no grant on main) announces large bodies: the refusal comes before a byte
    // of the body is asked for (no "100 Continue") or sent.
    let mut r = Raw::open(&w, &a3, &node);
    r.send(&request(
        "PUT",
        &format!("/v1/vaults/main/chunks/{hex}"),
        16 << 20,
        true,
    ));
    assert_eq!(r.status(), 403);
    for (path, len) in [
        ("/v1/vaults/main/points/p1/commit", 500u64 << 20),
        ("/v1/vaults/main/chunks/missing", 1 << 20),
        ("/v1/vaults/main/locks/l1", 60 << 10),
        ("/v1/vaults/main/prune", 1 << 20),
    ] {
        let mut r = Raw::open(&w, &a3, &node);
        r.send(&request(
            if path.contains("locks") {
                "PUT"
            } else {
                "POST"
            },
            path,
            len,
            false,
        ));
        assert_eq!(r.status(), 403, "{path}");
    }
    // A grantee announcing more than the route takes: 413, before the body.
    for (method, path, len) in [
        ("PUT", format!("/v1/vaults/main/chunks/{hex}"), 64u64 << 20),
        ("POST", "/v1/vaults/main/points/p1/commit".into(), 4 << 30),
        ("PUT", "/v1/vaults/main/locks/l1".into(), 1 << 20),
        ("POST", "/v1/vaults/main/chunks/missing".into(), 8 << 20),
    ] {
        let mut r = Raw::open(&w, &a1, &node);
        r.send(&request(method, &path, len, true));
        assert_eq!(r.status(), 413, "{path}");
    }
    // A commit into a vault whose quota cannot hold it: 507, before the body.
    let mut r = Raw::open(&w, &a1, &node);
    r.send(&request(
        "POST",
        "/v1/vaults/small/points/p1/commit",
        64 << 20,
        false,
    ));
    assert_eq!(r.status(), 507);

    // The legitimate flow: a granted client that asks first is told to go on, and served.
    let plain = vec![5u8; 100_000];
    let obj = format::encode_chunk(&plain, 3).unwrap();
    let hex = format::digest_hex(&format::digest_of(&plain));
    let mut r = Raw::open(&w, &a1, &node);
    r.send(&request(
        "PUT",
        &format!("/v1/vaults/main/chunks/{hex}"),
        obj.len() as u64,
        true,
    ));
    assert_eq!(r.status(), 100);
    r.send(&obj);
    assert_eq!(r.status(), 200);
    assert_eq!(w.chunk_count("main"), 1);
}

/// CRC-32 (IEEE), as the archive's envelope uses.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// An index object whose zstd body is a few KiB of RLE blocks that decode to `plain` zero
/// bytes, and whose envelope says so.
fn bomb_index(plain: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let mut body = 0xFD2F_B528u32.to_le_bytes().to_vec();
    // Frame header: no content size, a 128 KiB window.
    body.extend_from_slice(&[0x00, 0x38]);
    let n = plain / BLOCK;
    for i in 0..n {
        let h = u32::from(i + 1 == n) | (1 << 1) | ((BLOCK as u32) << 3);
        body.extend_from_slice(&h.to_le_bytes()[..3]);
        body.push(0);
    }
    let mut out = b"FRYI".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&plain.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    let hcrc = crc32(&out);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_index_bomb_is_refused_before_decompression() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let disk = w.path("d.raw");
    mixed_disk(&disk, 4 * MIB, 7);
    let repo1 = repo(&node, "main", &a1).await;
    let m = backup(&repo1, &disk, "vm", None).await.unwrap();

    // The same 4 MiB disk, with an index that says it decodes to 1 GiB (a 32 KiB body).
    let index = bomb_index(1 << 30);
    assert!(index.len() < 64 << 10);
    let id = "bomb-1";
    let mut evil = m.clone();
    evil.id = id.into();
    evil.disks[0].index = format!("points/{id}/disk-0.index");
    evil.disks[0].index_sha256 = hex::encode(Sha256::digest(&index));
    let mkey = ferry_archive::repo::manifest_key(id);
    let mdata = format::encode_json(Kind::Manifest, &evil).unwrap();
    let body = ferry_api::node::join_commit(&[
        (evil.disks[0].index.clone(), &index[..]),
        (mkey, &mdata[..]),
    ])
    .unwrap();
    let before = peak_rss(node.child.id());
    let r = http(&w, &a1)
        .post(format!(
            "https://{}/v1/vaults/main/points/{id}/commit",
            node.addr
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let msg = r.text().await.unwrap();
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("refused before decompression"), "{msg}");
    let after = peak_rss(node.child.id());
    eprintln!(
        "node peak RSS: {} MiB before, {} MiB after",
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (256 << 20),
        "the node's peak memory grew from {before} to {after} bytes"
    );
    assert!(!w.vault_dir("main").join("points").join(id).exists());

    // The honest point is still served, and the next honest commit goes through.
    assert_eq!(
        restore_sha(&repo1, &m, &w.path("o1")).await,
        sha256_file(&disk)
    );
    std::fs::copy(&disk, w.path("d2.raw")).unwrap();
    scribble(&w.path("d2.raw"), MIB, 100_000, 8);
    backup(&repo1, &w.path("d2.raw"), "vm", Some(&m.id))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_grantees_commits_are_bounded_and_others_are_served() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let (a1, a2) = (w.agent("a1"), w.agent("a2"));
    // a1 starts commits it never finishes sending: one runs (waiting for its body), the
    // others queue for it.
    let held: Vec<Raw> = (0..ferry_node::limits::COMMITS_RUNNING
        + ferry_node::limits::COMMITS_QUEUED)
        .map(|i| {
            let mut r = Raw::open(&w, &a1, &node);
            r.send(&request(
                "POST",
                &format!("/v1/vaults/main/points/held-{i}/commit"),
                1000,
                false,
            ));
            r
        })
        .collect();
    // One more is refused at once with 429 (once the node has taken in the held ones).
    let c1 = http(&w, &a1);
    let url = format!("https://{}/v1/vaults/main/points/extra/commit", node.addr);
    // Until the node has taken in all the held requests, a probe may itself queue behind
    // them: it gives up after a few seconds (its connection closes, freeing its place)
    // and asks again.
    let probe = || async {
        match c1
            .post(&url)
            .body(vec![0u8; 16])
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    };
    let mut last = probe().await;
    for _ in 0..600 {
        if last.0 == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = probe().await;
    }
    assert_eq!(last.0, 429, "{}", last.1);
    assert!(
        last.1.contains("agent-a1") && last.1.contains("retry"),
        "{last:?}"
    );

    // Another grantee backs up meanwhile.
    let (d1, d2) = (w.path("d1.raw"), w.path("d2.raw"));
    mixed_disk(&d2, 4 * MIB, 2);
    let repo2 = repo(&node, "main", &a2).await;
    let m2 = backup(&repo2, &d2, "vm2", None).await.unwrap();
    assert_eq!(
        restore_sha(&repo2, &m2, &w.path("o2")).await,
        sha256_file(&d2)
    );

    // a1's held requests go away: a1 is served again.
    drop(held);
    for _ in 0..600 {
        if probe().await.0 != 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(probe().await.0, 429);
    mixed_disk(&d1, 4 * MIB, 1);
    let repo1 = repo(&node, "main", &a1).await;
    let m1 = backup(&repo1, &d1, "vm1", None).await.unwrap();
    assert_eq!(
        restore_sha(&repo1, &m1, &w.path("o1")).await,
        sha256_file(&d1)
    );
}

fn lock_record(kind: LockKind) -> Vec<u8> {
    let info = LockInfo {
        kind,
        purpose: "gc".into(),
        host: "elsewhere".into(),
        pid: 4242,
        created: 0,
        refreshed: 0,
    };
    format::encode_json(Kind::Lock, &info).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_admin_holds_an_exclusive_lock_and_an_admin_breaks_any() {
    let w = World::new(CONFIG);
    let node = w.start(0);
    let (a1, admin) = (
        w.agent("a1"),
        w.identity_of(&w.ca, ferry_tls::pki::Role::Admin, "root"),
    );
    let (c1, cr) = (http(&w, &a1), http(&w, &admin));
    let url = |name: &str| format!("https://{}/v1/vaults/main/locks/{name}", node.addr);

    // A grantee cannot stop every other tenant's backups with an exclusive lock.
    let r = c1
        .put(url("x1"))
        .body(lock_record(LockKind::Exclusive))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("only an admin"), "{msg}");
    assert_eq!(lock_count(&w, "main"), 0);
    // Shared locks are a grantee's, as before; an admin may take an exclusive one.
    let r = c1
        .put(url("s1"))
        .body(lock_record(LockKind::Shared))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = cr
        .put(url("x2"))
        .body(lock_record(LockKind::Exclusive))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(cr.delete(url("x2")).send().await.unwrap().status(), 204);

    // An exclusive lock left by a dead writer the node has no record of (written before the
    // node's book, or by hand): fresh by the node's clock, so a grantee may not remove or
    // take it over, and an admin removes it at once.
    std::fs::write(
        w.vault_dir("main").join("locks/dead-gc"),
        lock_record(LockKind::Exclusive),
    )
    .unwrap();
    assert_eq!(
        c1.delete(url("dead-gc")).send().await.unwrap().status(),
        409
    );
    let r = c1
        .put(url("dead-gc"))
        .body(lock_record(LockKind::Exclusive))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(
        cr.delete(url("dead-gc")).send().await.unwrap().status(),
        204
    );
    assert!(!w.vault_dir("main").join("locks/dead-gc").exists());

    // Backups go on.
    assert_eq!(c1.delete(url("s1")).send().await.unwrap().status(), 204);
    let disk = w.path("d.raw");
    mixed_disk(&disk, 4 * MIB, 4);
    let repo1 = repo(&node, "main", &a1).await;
    backup(&repo1, &disk, "vm", None).await.unwrap();
    assert_eq!(lock_count(&w, "main"), 0);
}
