//! The read-only server against real clients (`nbdinfo`, `nbdcopy`, `qemu-img`), our own
//! client, raw protocol abuse, and TLS with client certificates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use ferry_archive::{
    backup, BackupOptions, DiskInput, FileSource, Progress, Repository, ZERO_DIGEST,
};
use ferry_nbd::proto::{self, cmd, errno, opt, rep, reply, BASE_ALLOCATION};
use ferry_nbd::{
    ClientOptions, ClientTls, Export, NbdClient, ServeOptions, ServerTls, ServerTrust,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 20 * MIB + 12345;

/// Data, a long hole, a short data run, written zeros, and an unaligned tail.
fn write_disk(path: &Path) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut content = vec![0u8; SIZE as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut fill = |from: u64, to: u64| {
        for i in from..to {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            content[i as usize] = (x >> 56) as u8;
        }
    };
    fill(0, 3 * MIB);
    fill(10 * MIB, 10 * MIB + MIB / 2);
    fill(16 * MIB + 777, SIZE);
    for (from, to) in [
        (0, 3 * MIB),
        (10 * MIB, 10 * MIB + MIB / 2),
        (16 * MIB, SIZE),
    ] {
        f.write_all_at(&content[from as usize..to as usize], from)
            .unwrap();
    }
    f.write_all_at(&vec![0u8; 2 * MIB as usize], 12 * MIB)
        .unwrap();
    f.sync_all().unwrap();
    content
}

struct Fixture {
    _dir: tempfile::TempDir,
    content: Vec<u8>,
    export: Arc<Export>,
    zero_chunks: Vec<bool>,
    path: std::path::PathBuf,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = write_disk(&raw);
    let store = ferry_storage::open_store(dir.path().join("repo").to_str().unwrap()).unwrap();
    let repo = Repository::init(store, MIB as u32, 3).await.unwrap();
    let input = DiskInput {
        name: "disk0".into(),
        source: Arc::new(FileSource::open(&raw).unwrap()),
        changed: None,
        change_id: None,
        meta: BTreeMap::new(),
    };
    let m = backup(
        &repo,
        vec![input],
        &BackupOptions::new("vm"),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let index = repo.load_index(&m, 0).await.unwrap();
    let zero_chunks = index.entries.iter().map(|d| *d == ZERO_DIGEST).collect();
    let export = Arc::new(Export::open(repo, &m, 0).await.unwrap());
    Fixture {
        path: dir.path().to_path_buf(),
        _dir: dir,
        content,
        export,
        zero_chunks,
    }
}

/// Starts the server on a free port; returns the URI and a stopper.
async fn start(
    export: Arc<Export>,
    opts: ServeOptions,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ferry_nbd::serve_until(l, export, opts, async {
        let _ = rx.await;
    }));
    (format!("nbd://127.0.0.1:{port}/disk0"), tx)
}

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_copy_and_map_the_restore_point() {
    need("nbdinfo");
    need("nbdcopy");
    need("qemu-img");
    let fx = fixture().await;
    let (uri, _stop) = start(fx.export.clone(), ServeOptions::default()).await;

    let size = tokio::task::spawn_blocking({
        let uri = uri.clone();
        move || run(Command::new("nbdinfo").arg("--size").arg(&uri))
    })
    .await
    .unwrap();
    assert_eq!(size.trim(), SIZE.to_string());

    let copy = fx.path.join("copy.raw");
    let (u, c) = (uri.clone(), copy.clone());
    tokio::task::spawn_blocking(move || run(Command::new("nbdcopy").arg(&u).arg(&c)))
        .await
        .unwrap();
    assert_eq!(sha(&std::fs::read(&copy).unwrap()), sha(&fx.content));

    let conv = fx.path.join("conv.raw");
    let (u, c) = (uri.clone(), conv.clone());
    tokio::task::spawn_blocking(move || {
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&u)
            .arg(&c))
    })
    .await
    .unwrap();
    let got = std::fs::read(&conv).unwrap();
    // qemu's block layer rounds an unaligned export up to 512 bytes and reads the tail as zeros.
    assert_eq!(
        got.len() as u64,
        SIZE.div_ceil(512) * 512,
        "qemu-img output size"
    );
    assert!(got[SIZE as usize..].iter().all(|b| *b == 0));
    assert_eq!(sha(&got[..SIZE as usize]), sha(&fx.content));

    // nbdinfo --map shows the zero chunks of the index as holes.
    let u = uri.clone();
    let map = tokio::task::spawn_blocking(move || nbdinfo_map(&u, None))
        .await
        .unwrap();
    let mut expect = Vec::new();
    for (i, z) in fx.zero_chunks.iter().enumerate() {
        let off = i as u64 * MIB;
        expect.push(ferry_nbd::StatusExtent {
            offset: off,
            len: MIB.min(SIZE - off),
            flags: if *z { 3 } else { 0 },
        });
    }
    assert_eq!(map, proto::merge_extents(expect));
    assert!(map.iter().any(|e| e.flags == 3), "no holes in {map:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once_with_our_client() {
    let fx = fixture().await;
    let (uri, stop) = start(fx.export.clone(), ServeOptions::default()).await;
    let clients = (0..6).map(|_| {
        let uri = uri.clone();
        async move {
            let c = NbdClient::connect_uri(&uri, &ClientOptions::default())
                .await
                .unwrap();
            let bytes = read_all(&c).await;
            let map = c.block_status(BASE_ALLOCATION, 0, SIZE).await.unwrap();
            c.disconnect().await;
            (bytes, map)
        }
    });
    for (bytes, map) in futures::future::join_all(clients).await {
        assert!(bytes == fx.content);
        assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), SIZE);
        assert!(map.iter().any(|e| e.flags == 3));
    }
    // While serving, a shared lock keeps GC away; stopping the server releases it.
    let locks = fx.path.join("repo/locks");
    let count = || std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count(), 1);
    stop.send(()).unwrap();
    for _ in 0..100 {
        if count() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(count(), 0, "lock left behind");
}

struct Raw {
    s: TcpStream,
}

impl Raw {
    async fn open(uri: &str) -> Raw {
        let port: u16 = uri
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        s.write_all(&3u32.to_be_bytes()).await.unwrap();
        let mut r = Raw { s };
        r.opt(opt::STRUCTURED_REPLY, &[]).await;
        let q = proto::encode_meta_query("disk0", &[BASE_ALLOCATION.to_string()]);
        r.opt(opt::SET_META_CONTEXT, &q).await;
        r.opt(opt::GO, &proto::encode_go("disk0", &[])).await;
        r
    }

    async fn opt(&mut self, o: u32, data: &[u8]) {
        self.s
            .write_all(&proto::encode_option(o, data))
            .await
            .unwrap();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).await.unwrap();
            let h = proto::OptReplyHeader::parse(&h).unwrap();
            let mut p = vec![0u8; h.len as usize];
            self.s.read_exact(&mut p).await.unwrap();
            if h.typ == rep::ACK {
                return;
            }
            assert!(h.typ & rep::FLAG_ERROR == 0, "option {o} refused");
        }
    }

    async fn request(&mut self, typ: u16, handle: u64, offset: u64, len: u32, payload: &[u8]) {
        let h = proto::encode_request(0, typ, handle, offset, len);
        self.s.write_all(&h).await.unwrap();
        self.s.write_all(payload).await.unwrap();
    }

    /// Reads one structured chunk: (flags, type, handle, payload).
    async fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await.unwrap();
        match proto::ReplyHeader::parse(&h).unwrap() {
            proto::ReplyHeader::Chunk {
                flags,
                typ,
                handle,
                len,
            } => {
                let mut p = vec![0u8; len as usize];
                self.s.read_exact(&mut p).await.unwrap();
                (flags, typ, handle, p)
            }
            other => panic!("expected a structured chunk, got {other:?}"),
        }
    }

    async fn expect_error(&mut self, handle: u64, e: u32) {
        let (flags, typ, h, p) = self.chunk().await;
        assert_eq!(h, handle);
        assert_eq!(typ, reply::ERROR);
        assert!(flags & reply::FLAG_DONE != 0);
        assert_eq!(proto::parse_error_chunk(typ, &p).unwrap().errno, e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_nbd_errors_and_the_server_stays_up() {
    let fx = fixture().await;
    let (uri, _stop) = start(fx.export.clone(), ServeOptions::default()).await;
    let mut r = Raw::open(&uri).await;

    r.request(cmd::WRITE, 1, 0, 4096, &[0xaa; 4096]).await;
    r.expect_error(1, errno::EPERM).await;
    r.request(cmd::TRIM, 2, 0, 4096, &[]).await;
    r.expect_error(2, errno::EPERM).await;
    r.request(cmd::READ, 3, SIZE - 100, 101, &[]).await;
    r.expect_error(3, errno::EINVAL).await;
    r.request(99, 4, 0, 512, &[]).await;
    r.expect_error(4, errno::EINVAL).await;
    r.request(cmd::BLOCK_STATUS, 5, SIZE, 1, &[]).await;
    r.expect_error(5, errno::EINVAL).await;

    // The same connection still serves reads.
    r.request(cmd::READ, 6, 10 * MIB, 4096, &[]).await;
    let (flags, typ, h, p) = r.chunk().await;
    assert_eq!((h, typ), (6, reply::OFFSET_DATA));
    assert!(flags & reply::FLAG_DONE != 0);
    assert_eq!(
        &p[8..],
        &fx.content[10 * MIB as usize..10 * MIB as usize + 4096]
    );
    // A hole reads as a hole chunk.
    r.request(cmd::READ, 7, 5 * MIB, 4096, &[]).await;
    let (_, typ, _, p) = r.chunk().await;
    assert_eq!(typ, reply::OFFSET_HOLE);
    assert_eq!(proto::parse_hole(&p).unwrap(), (5 * MIB, 4096));
    r.request(cmd::DISC, 8, 0, 0, &[]).await;
    let mut rest = Vec::new();
    r.s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // A client that sends garbage is dropped; others are unaffected.
    let mut g = Raw::open(&uri).await;
    g.s.write_all(&[0xde; 28]).await.unwrap();
    let mut rest = Vec::new();
    let _ = g.s.read_to_end(&mut rest).await;
    let c = NbdClient::connect_uri(&uri, &ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(
        c.read_at(0, vec![0; 100]).await.unwrap(),
        &fx.content[..100]
    );
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let fx = fixture().await;
    let pki = pki(&fx.path);
    let tls = ServerTls::from_dir(&pki.dir, true).unwrap();
    let opts = ServeOptions {
        tls: Some(tls),
        ..ServeOptions::default()
    };
    let (uri, _stop) = start(fx.export.clone(), opts).await;

    let ctls = ClientTls::new(
        ServerTrust::Ca(pki.ca_pem.clone()),
        Some((&pki.client_cert_pem, &pki.client_key_pem)),
    )
    .unwrap();
    let c = NbdClient::connect_uri(&uri, &ClientOptions::default().with_tls(ctls))
        .await
        .unwrap();
    assert!(read_all(&c).await == fx.content);
    c.disconnect().await;

    // No TLS: refused with TLS_REQD. No client certificate: the handshake fails.
    let e = NbdClient::connect_uri(&uri, &ClientOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ferry_nbd::NbdError::Refused {
                reply: "NBD_REP_ERR_TLS_REQD",
                ..
            }
        ),
        "{e}"
    );
    let ctls = ClientTls::new(ServerTrust::Ca(pki.ca_pem.clone()), None).unwrap();
    assert!(
        NbdClient::connect_uri(&uri, &ClientOptions::default().with_tls(ctls))
            .await
            .is_err()
    );

    // A real TLS client (libnbd) with the client certificate.
    if which("nbdinfo") {
        let u = format!(
            "{}?tls-certificates={}",
            uri.replacen("nbd://", "nbds://", 1),
            pki.client_dir.display()
        );
        let out =
            tokio::task::spawn_blocking(move || run(Command::new("nbdinfo").arg("--size").arg(&u)))
                .await
                .unwrap();
        assert_eq!(out.trim(), SIZE.to_string());
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_default_export_and_list() {
    let fx = fixture().await;
    let sock = fx.path.join("serve.sock");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry_nbd::serve_until(
        l,
        fx.export.clone(),
        ServeOptions::default(),
        async {
            let _ = rx.await;
        },
    ));
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let parsed = ferry_nbd::NbdUri::parse(&uri).unwrap();
    let list = ferry_nbd::list_exports(&parsed, &ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "disk0");
    let info = ferry_nbd::export_info(&parsed, &ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(info.size, SIZE);
    assert!(info.read_only() && info.can_multi_conn());
    let c = NbdClient::connect(&parsed, &ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(c.connections(), 4);
    let b = c.read_at(SIZE - MIB, vec![0; MIB as usize]).await.unwrap();
    assert!(b[..] == fx.content[(SIZE - MIB) as usize..]);
    c.disconnect().await;
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_and_served_clients_keep_reading() {
    need("nbdinfo");
    let fx = fixture().await;
    let opts = ServeOptions {
        max_clients: 2,
        ..ServeOptions::default()
    };
    let (uri, _stop) = start(fx.export.clone(), opts).await;
    let addr = uri
        .trim_start_matches("nbd://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let one = ClientOptions {
        connections: 1,
        ..ClientOptions::default()
    };
    let c = NbdClient::connect_uri(&uri, &one).await.unwrap();
    // Ten silent connections: one takes the last slot (and gets the greeting), the other
    // nine are closed before it.
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(TcpStream::connect(&addr).await.unwrap());
    }
    let (mut greeted, mut closed) = (0, 0);
    for s in flood.iter_mut() {
        let mut magic = [0u8; 8];
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut magic))
            .await
        {
            Ok(Ok(_)) if &magic == b"NBDMAGIC" => greeted += 1,
            Ok(_) => closed += 1,
            Err(_) => panic!("a flood connection got neither a greeting nor a close"),
        }
    }
    assert_eq!((greeted, closed), (1, 9));
    // The client that was connected before the flood is still served.
    assert_eq!(
        c.read_at(0, vec![0; 4096]).await.unwrap(),
        &fx.content[..4096]
    );
    c.disconnect().await;
    drop(flood);
    // With the flood gone, a real client (libnbd) connects again.
    let u = uri.clone();
    let mut size = String::new();
    for _ in 0..50 {
        let u = u.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("nbdinfo")
                .arg("--size")
                .arg(&u)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        if out.status.success() {
            size = String::from_utf8_lossy(&out.stdout).trim().to_string();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(size, SIZE.to_string());
}
