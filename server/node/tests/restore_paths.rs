//! Restore and NBD export read from a `node://` store the way they read from any store:
//! the `ferry` CLI restores points of a real node as VMDK (checked by `qemu-img check` and
//! `compare`) and serves them over NBD (read by `nbdinfo`, `nbdcopy` and `qemu-img`), for a
//! full and an incremental point; GC on the node waits for an export of a pruned point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_archive::{BackupOptions, ChangedExtents, Manifest, Progress, Repository, ZERO_DIGEST};
use ferry_tls::pki::Role;

const KIB: u64 = 1 << 10;
/// Not a multiple of the vault's 1 MiB chunks: the last chunk is short.
const SIZE: u64 = 40 * MIB + 192 * KIB;

/// The test disk: random data, written zeros, never-written holes, one random MiB repeated
/// eight times, and a random run that starts inside a chunk, up to a short last chunk.
fn write_disk(p: &Path) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(SIZE).unwrap();
    let random = |off: u64, len: u64, seed: u64| {
        let mut b = vec![0u8; len as usize];
        ferry_testkit::Rng::new(seed).fill(&mut b);
        f.write_all_at(&b, off).unwrap();
    };
    random(0, 6 * MIB, 1);
    f.write_all_at(&vec![0u8; 4 * MIB as usize], 6 * MIB)
        .unwrap();
    // 10..14 MiB: hole.
    let mut block = vec![0u8; MIB as usize];
    ferry_testkit::Rng::new(2).fill(&mut block);
    for i in 0..8 {
        f.write_all_at(&block, (14 + i) * MIB).unwrap();
    }
    random(22 * MIB + 300 * KIB, 4 * MIB - 300 * KIB, 3);
    // 26..36 MiB: hole.
    random(36 * MIB, SIZE - 36 * MIB, 4);
    f.sync_all().unwrap();
}

/// The changes of the incremental: new data over random data, zeros over random data, data
/// in a hole, one of the repeated blocks changed. Returns what CBT would report.
fn change_disk(p: &Path) -> ChangedExtents {
    let changes = [
        (3 * MIB + 4 * KIB, 2 * MIB + 512),
        (MIB, MIB),
        (11 * MIB + 64 * KIB, 512 * KIB),
        (17 * MIB, 4 * KIB),
    ];
    for (i, (off, len)) in changes.into_iter().enumerate() {
        if i == 1 {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.write_all_at(&vec![0u8; len as usize], off).unwrap();
        } else {
            scribble(p, off, len as usize, 20 + i as u64);
        }
    }
    ChangedExtents::new(changes.iter().map(|(o, l)| *o..o + l).collect())
}

/// `ferry restore --format FORMAT` from the node; qemu-img finds the image sound and equal
/// to `source`.
fn check_vmdk_restores(url: &str, m: &Manifest, source: &Path, dir: &Path) {
    for format in ["vmdk", "vmdk-sparse", "vmdk-flat"] {
        let out = dir.join(format!("{}-{format}.vmdk", m.id));
        run(ferry(url)
            .args(["restore", &m.id, "--format", format, "--target"])
            .arg(&out));
        if format != "vmdk-flat" {
            let o = run(Command::new("qemu-img").arg("check").arg(&out));
            assert!(o.contains("No errors"), "{format}: {o}");
        }
        let o = run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vmdk"])
            .arg(source)
            .arg(&out));
        assert!(o.contains("identical"), "{format}: {o}");
    }
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.join(format!("{}-vmdk.vmdk", m.id))));
    assert!(info.contains("streamOptimized"), "{info}");
}

/// `nbdinfo --map`: (offset, length, type) runs, adjacent runs of one type merged.
fn nbd_map(uri: &str) -> Vec<(u64, u64, u32)> {
    let text = run(Command::new("nbdinfo").arg("--map").arg(uri));
    let mut runs: Vec<(u64, u64, u32)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (off, len, ty) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        match runs.last_mut() {
            Some(last) if last.2 == ty && last.0 + last.1 == off => last.1 += len,
            _ => runs.push((off, len, ty)),
        }
    }
    runs
}

/// What the index says the map is: zero chunks are holes that read as zeros (type 3).
async fn expected_map(repo: &Repository, m: &Manifest) -> Vec<(u64, u64, u32)> {
    let index = repo.load_index(m, 0).await.unwrap();
    let chunk = u64::from(repo.config().chunk_size);
    let mut runs: Vec<(u64, u64, u32)> = Vec::new();
    for (i, d) in index.entries.iter().enumerate() {
        let off = i as u64 * chunk;
        let len = chunk.min(SIZE - off);
        let ty = if *d == ZERO_DIGEST { 3 } else { 0 };
        match runs.last_mut() {
            Some(last) if last.2 == ty => last.1 += len,
            _ => runs.push((off, len, ty)),
        }
    }
    runs
}

/// `ferry serve-nbd` of point `m` from the node on a unix socket: the server and its URI.
fn serve_nbd(url: &str, m: &Manifest, dir: &Path) -> (Proc, String) {
    let sock = dir.join(format!("{}.sock", m.id));
    let mut server = Proc(
        ferry(url)
            .args(["serve-nbd", &m.id, "--socket"])
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    server.wait_for(&sock);
    (
        server,
        format!("nbd+unix:///disk0?socket={}", sock.display()),
    )
}

/// `nbdcopy URI FILE`, and the SHA-256 of the copy.
fn nbd_copy_sha(uri: &str, copy: &Path) -> String {
    run(Command::new("nbdcopy").arg(uri).arg(copy));
    sha256_file(copy)
}

/// `ferry serve-nbd` of point `m` from the node, read by real clients; the export holds a
/// lock in the vault while it runs, and SIGTERM stops it cleanly and releases it.
async fn check_nbd_export(
    w: &World,
    url: &str,
    repo: &Repository,
    m: &Manifest,
    source: &Path,
    dir: &Path,
) {
    let (mut server, uri) = serve_nbd(url, m, dir);

    let size = run(Command::new("nbdinfo").arg("--size").arg(&uri));
    assert_eq!(size.trim(), SIZE.to_string());

    let copy = dir.join(format!("{}-nbd.raw", m.id));
    assert_eq!(nbd_copy_sha(&uri, &copy), sha256_file(source));

    let o = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(source)
        .arg(&uri));
    assert!(o.contains("identical"), "{o}");

    let map = nbd_map(&uri);
    assert_eq!(map, expected_map(repo, m).await, "nbdinfo --map of {uri}");
    assert!(map.iter().any(|r| r.2 == 3), "no holes in {map:?}");
    assert!(map.iter().any(|r| r.2 == 0), "no data in {map:?}");

    assert_eq!(lock_count(w, "main"), 1, "the export holds no lock");
    let st = server.term();
    assert!(st.success(), "serve-nbd: {st}");
    assert_eq!(lock_count(w, "main"), 0, "the export left its lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vmdk_restores_and_nbd_exports_from_a_node() {
    if !peers(&["qemu-img", "nbdinfo", "nbdcopy"]) {
        return;
    }
    let w = World::new(CONFIG);
    let node = w.start(0);
    let a1 = w.agent("a1");
    let url = node_url(&node, "main", &a1);
    let repo = repo(&node, "main", &a1).await;
    let dir = w.path("out");
    std::fs::create_dir_all(&dir).unwrap();

    let disk = w.path("disk.raw");
    write_disk(&disk);
    let full_src = w.path("full.raw");
    std::fs::copy(&disk, &full_src).unwrap();
    let full = backup(&repo, &disk, "vm1", None).await.unwrap();
    let s = &full.disks[0].stats;
    assert_eq!(s.zero, 18 * MIB, "{s:?}");
    // 6 + 4 + 5 chunks of random data, and the repeated MiB once.
    assert_eq!(w.chunk_count("main"), 16, "{s:?}");

    // The incremental reads only what changed, as with CBT; the rest comes from the parent.
    let changed = change_disk(&disk);
    let mut opts = BackupOptions::new("vm1");
    opts.parent = Some(full.id.clone());
    let mut changed_input = input(&disk);
    changed_input.changed = Some(changed);
    let incr = ferry_archive::backup(
        &repo,
        vec![changed_input],
        &opts,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let s = &incr.disks[0].stats;
    assert!(s.read <= 6 * MIB && s.inherited > 0, "{s:?}");
    assert_ne!(sha256_file(&disk), sha256_file(&full_src));

    for (m, src) in [(&full, full_src.as_path()), (&incr, disk.as_path())] {
        check_vmdk_restores(&url, m, src, &dir);
        assert_eq!(lock_count(&w, "main"), 0, "a restore left its lock");
        check_nbd_export(&w, &url, &repo, m, src, &dir).await;
    }

    // GC on the node waits while a pruned point is exported: the point's chunks stay
    // readable until the export stops, and then they go.
    let admin = w.identity_of(&w.ca, Role::Admin, "root");
    let (mut server, uri) = serve_nbd(&url, &full, &dir);
    let d = prune_keep_last(&w, &node, &a1, "main", 1).await;
    assert_eq!(d.iter().filter(|d| !d.keep).count(), 1, "{d:?}");
    assert_eq!(repo.list_point_ids().await.unwrap(), vec![incr.id.clone()]);
    let chunks = w.chunk_count("main");
    let gc_done = AtomicBool::new(false);
    let gc = async {
        let r = job(&w, &node, &admin, "main", "gc").await;
        gc_done.store(true, Ordering::SeqCst);
        r
    };
    let reader = async {
        // Time for the GC to start and find the export's lock.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (u, c) = (uri.clone(), dir.join("pruned-nbd.raw"));
        let sha = tokio::task::spawn_blocking(move || nbd_copy_sha(&u, &c))
            .await
            .unwrap();
        assert_eq!(sha, sha256_file(&full_src));
        assert!(
            !gc_done.load(Ordering::SeqCst),
            "GC ran while the export held its lock"
        );
        assert_eq!(w.chunk_count("main"), chunks);
        let st = server.term();
        assert!(st.success(), "serve-nbd: {st}");
    };
    let (report, ()) = tokio::join!(gc, reader);
    assert!(report.ok, "{report:?}");
    assert!(
        report.detail["removed_chunks"].as_u64().unwrap() >= 4,
        "{report:?}"
    );
    assert_eq!(lock_count(&w, "main"), 0);

    // The incremental point still restores, raw through the CLI this time.
    let raw = dir.join("incr.raw");
    run(ferry(&url)
        .args(["restore", "latest", "--group", "vm1", "--target"])
        .arg(&raw));
    assert_eq!(sha256_file(&raw), sha256_file(&disk));
}
