//! The `ferry` binary against real third-party peers: restore to VMDK checked by qemu-img,
//! `serve-nbd` read by nbdcopy and nbdinfo, and backup from a qemu-nbd export and a VMDK.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: run tests/run.sh, which installs the test peers"
    );
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn ferry(repo: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.arg("--repo").arg(repo);
    c
}

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn wait_for(p: &Path, child: &mut Child) {
    let start = Instant::now();
    while !p.exists() {
        assert!(child.try_wait().unwrap().is_none(), "server exited early");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup(size: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    ferry_testkit::MixedDisk::new(size, 9).write(&disk).unwrap();
    let repo = dir.path().join("repo");
    run(ferry(&repo).args(["repo", "init", "--chunk-size", "1M"]));
    run(ferry(&repo).arg("backup").arg("--source").arg(&disk));
    (dir, disk, repo)
}

#[test]
fn restore_to_vmdk_is_accepted_by_qemu_img() {
    need("qemu-img");
    let (dir, disk, repo) = setup(80 << 20);
    for (name, format) in [
        ("s.vmdk", "vmdk"),
        ("m.vmdk", "vmdk-sparse"),
        ("f.vmdk", "vmdk-flat"),
    ] {
        let out = dir.path().join(name);
        run(ferry(&repo)
            .args(["restore", "latest", "--format", format, "--target"])
            .arg(&out));
        if format != "vmdk-flat" {
            let o = run(Command::new("qemu-img").arg("check").arg(&out));
            assert!(String::from_utf8_lossy(&o.stdout).contains("No errors"));
        }
        let o = run(Command::new("qemu-img").arg("compare").arg(&disk).arg(&out));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("identical"),
            "{format}"
        );
    }
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.path().join("s.vmdk")));
    assert!(String::from_utf8_lossy(&info.stdout).contains("streamOptimized"));
    // A VMDK is also a backup source, and dedups against the raw backup of the same disk.
    let o = run(ferry(&repo)
        .args(["--json", "backup", "--source"])
        .arg(dir.path().join("s.vmdk")));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["disks"][0]["stats"]["new_chunks"], 0, "{m}");
}

#[test]
fn serve_nbd_is_read_by_nbdcopy_and_nbdinfo() {
    need("nbdcopy");
    need("nbdinfo");
    let (dir, disk, repo) = setup(48 << 20);
    let sock = dir.path().join("nbd.sock");
    let mut server = ferry(&repo)
        .args(["serve-nbd", "latest", "--socket"])
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock, &mut server);
    let uri = format!("nbd+unix:///disk.raw?socket={}", sock.display());
    let out = dir.path().join("copy.raw");
    run(Command::new("nbdcopy").arg(&uri).arg(&out));
    assert_eq!(sha(&out), sha(&disk));
    let map = run(Command::new("nbdinfo").arg("--map").arg(&uri));
    let map = String::from_utf8_lossy(&map.stdout);
    assert!(map.contains("hole"), "no holes in the map:\n{map}");
    assert!(map.contains("data"), "{map}");
    // The export holds a shared lock, so GC waits instead of deleting chunks under it.
    let gc = ferry(&repo).args(["gc", "--wait", "0"]).output().unwrap();
    assert_eq!(
        gc.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    // SIGTERM stops it cleanly and releases the lock.
    let pid = i32::try_from(server.id()).unwrap();
    // SAFETY: kill() on the pid of our own live child has no memory effects.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let st = server.wait().unwrap();
    assert!(st.success(), "{st}");
    run(ferry(&repo).args(["gc", "--wait", "0"]));
}

#[test]
fn backup_from_a_qemu_nbd_export_skips_holes() {
    need("qemu-nbd");
    let (dir, disk, repo) = setup(48 << 20);
    let sock = dir.path().join("q.sock");
    let mut q = Command::new("qemu-nbd")
        .args(["-r", "-t", "-f", "raw", "-x", "vm-disk", "--socket"])
        .arg(&sock)
        .arg(&disk)
        .spawn()
        .unwrap();
    wait_for(&sock, &mut q);
    let uri = format!("nbd+unix:///vm-disk?socket={}", sock.display());
    let o = ferry(&repo)
        .args(["--json", "backup", "--source", &uri])
        .output()
        .unwrap();
    let _ = q.kill();
    let _ = q.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &m["disks"][0]["stats"];
    assert_eq!(m["disks"][0]["name"], "vm-disk");
    assert!(s["zero"].as_u64().unwrap() > 0);
    assert!(
        s["read"].as_u64().unwrap() < 48 << 20,
        "holes were read: {s}"
    );
    assert_eq!(s["new_chunks"], 0, "same content as the file backup: {s}");
    let out = dir.path().join("r.raw");
    run(ferry(&repo)
        .args(["restore", "latest", "--group", "vm-disk", "--target"])
        .arg(&out));
    assert_eq!(sha(&out), sha(&disk));
}
