//! SMB and NFS through the appliance's kernel mounts: smbd (port 1445) and nfs-ganesha
//! (NFSv4, VFS FSAL) on the host, the appliance booted in QEMU (direct kernel boot), and the
//! agent's debug hook `POST /v1/debug/storage-check` (registered agents only: the test pairs
//! it with a CA of its own first) driving a real backup, verify and
//! restore inside the guest. The host then checks the repository in the share with
//! `ferry verify`. Run by tests/slow/smbnfs.sh (needs the image and the peers).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_boot_tests::{BootOpts, Vm};
use ferry_smbnfs_tests::{post_json, Ganesha, Smbd, SMB_USER};
use serde_json::{json, Value};

const SMB_PASSWORD: &str = "Ferry,smb-pw1";
const WRONG_PASSWORD: &str = "not-the-Ferry-pw";
const CHECK: &str = "/v1/debug/storage-check";
const SLOW: Duration = Duration::from_secs(900);

fn ferry_bin() -> PathBuf {
    let p = std::env::var_os("FERRY_BIN").map_or_else(
        || ferry_boot_tests::workspace().join("target/debug/ferry"),
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "{} missing: cargo build -p ferry-cli (tests/slow/smbnfs.sh does)",
        p.display()
    );
    p
}

/// `ferry verify` on the host, on the share's directory as a local repository.
fn host_verify(repo: &Path) {
    let out = Command::new(ferry_bin())
        .arg("--repo")
        .arg(repo)
        .arg("--json")
        .arg("verify")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry verify {}: {}\n{}",
        repo.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "host: ferry verify {}: {}",
        repo.display(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
}

fn check(vm: &Vm, url: &str, password: Option<&str>, size_mib: u64) -> (u16, Value) {
    let mut body = json!({ "url": url, "size_mib": size_mib });
    if let Some(p) = password {
        body["password"] = json!(p);
    }
    let t = std::time::Instant::now();
    let (status, v) = post_json(vm.port, CHECK, &body, SLOW, vm.client()).unwrap();
    eprintln!(
        "check {url}: HTTP {status} in {:.1}s: {v}",
        t.elapsed().as_secs_f64()
    );
    (status, v)
}

fn assert_success(v: &Value, status: u16) {
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["verify_ok"], true, "{v:#}");
    assert_eq!(v["source_sha256"], v["restored_sha256"], "{v:#}");
    assert!(v["new_chunks"].as_u64().unwrap() > 0, "{v:#}");
    let during = v["mount_entries"].as_array().unwrap();
    assert_eq!(during.len(), 1, "one mount during the check: {v:#}");
    assert!(
        v["mounts_after"].as_array().unwrap().is_empty(),
        "still mounted: {v:#}"
    );
}

fn assert_failure(v: &Value, status: u16, stage: &str, needle: &str) {
    assert_eq!(status, 502, "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["stage"], stage, "{v:#}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
}

fn assert_repo_files(repo: &Path) {
    assert!(
        repo.join("config").is_file(),
        "no config in {}",
        repo.display()
    );
    let names: Vec<String> = walk(repo);
    assert!(
        names.iter().any(|n| n.contains("chunks/")),
        "no chunks in {}: {names:?}",
        repo.display()
    );
    assert!(
        !names.iter().any(|n| n.contains(".tmp-")),
        "temporaries left: {names:?}"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
#[ignore = "boots the appliance in QEMU with smbd and nfs-ganesha: run tests/slow/smbnfs.sh"]
fn smb_and_nfs_kernel_mounts_in_the_appliance() {
    let mut smbd = Smbd::start(SMB_PASSWORD).unwrap();
    let smb_port = smbd.port;
    let nfs = Ganesha::start().unwrap();
    eprintln!("peers: smbd on {}, ganesha on {}", smbd.port, nfs.port);
    let mut vm = Vm::boot(&BootOpts::default()).unwrap();
    vm.wait_console("agent ready", Duration::from_secs(300))
        .unwrap();
    vm.get_json("/v1/status", Duration::from_secs(120)).unwrap();
    // The debug hook answers only a registered agent, over mTLS.
    vm.pair_with_test_ca().unwrap();

    // SMB 3.1.1 with encryption, user + password, repository in a subdirectory of the share.
    let smb = |path: &str| format!("smb://{SMB_USER}@10.0.2.2:{smb_port}/backups/{path}");
    let (st, v) = check(&vm, &smb("ferry/repo"), Some(SMB_PASSWORD), 24);
    assert_success(&v, st);
    let entry = v["mount_entries"][0].as_str().unwrap();
    assert!(
        entry.contains(" cifs ") && entry.contains("seal"),
        "{entry}"
    );
    let repo = smbd.share.join("ferry/repo");
    assert_repo_files(&repo);
    host_verify(&repo);
    // A second backup to the same repository dedups against the first one.
    let (st, v) = check(&vm, &smb("ferry/repo"), Some(SMB_PASSWORD), 8);
    assert_success(&v, st);
    host_verify(&repo);

    // smbd killed in the middle of a backup and started again: the backup either finishes
    // (the kernel client reconnects) or fails cleanly; the repository verifies either way,
    // and the next backup works.
    let port = vm.port;
    let url = smb("ferry/repo");
    let client = vm.client().cloned();
    let worker = std::thread::spawn(move || {
        let body = json!({ "url": url, "password": SMB_PASSWORD, "size_mib": 40 });
        post_json(port, CHECK, &body, SLOW, client.as_ref())
    });
    let before = walk(&repo).len();
    let t = std::time::Instant::now();
    while walk(&repo).len() < before + 8 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        walk(&repo).len() >= before + 8,
        "the backup never started writing chunks"
    );
    smbd.kill();
    std::thread::sleep(Duration::from_secs(2));
    smbd.restart().unwrap();
    let (st, v) = worker.join().unwrap().unwrap();
    eprintln!("backup across an smbd restart: HTTP {st}: {v}");
    if st == 200 {
        assert_success(&v, st);
    } else {
        assert_eq!(v["ok"], false, "{v:#}");
    }
    host_verify(&repo);
    let (st, v) = check(&vm, &smb("ferry/repo"), Some(SMB_PASSWORD), 8);
    assert_success(&v, st);
    host_verify(&repo);

    // Wrong password: a clear error and nothing written.
    let (st, v) = check(&vm, &smb("ferry/other"), Some(WRONG_PASSWORD), 4);
    assert_failure(&v, st, "mount", "wrong user name, domain or password");
    assert!(!smbd.share.join("ferry/other").exists());
    // No password at all.
    let (st, v) = check(&vm, &smb("ferry/other"), None, 4);
    assert_failure(&v, st, "mount", "no password");
    // A share that does not exist.
    let url = format!("smb://{SMB_USER}@10.0.2.2:{smb_port}/nosuchshare/r");
    let (st, v) = check(&vm, &url, Some(SMB_PASSWORD), 4);
    assert_failure(&v, st, "mount", "share \"nosuchshare\" does not exist");
    // Nothing listens there.
    let dead = ferry_boot_tests::free_port().unwrap();
    let url = format!("smb://{SMB_USER}@10.0.2.2:{dead}/backups/r");
    let (st, v) = check(&vm, &url, Some(SMB_PASSWORD), 4);
    assert_failure(&v, st, "mount", "cannot reach the SMB server");

    // NFSv4.1 through ganesha: the repository directory does not exist yet (the parent is
    // mounted and the rest created).
    let url = format!("nfs://10.0.2.2:{}/export/ferry/repo", nfs.port);
    let (st, v) = check(&vm, &url, None, 24);
    assert_success(&v, st);
    let entry = v["mount_entries"][0].as_str().unwrap();
    assert!(
        entry.contains(" nfs4 ") && entry.contains("vers=4.1"),
        "{entry}"
    );
    let repo = nfs.export.join("ferry/repo");
    assert_repo_files(&repo);
    host_verify(&repo);
    let url = format!("nfs://10.0.2.2:{}/nosuchexport/r", nfs.port);
    let (st, v) = check(&vm, &url, None, 4);
    assert_failure(&v, st, "mount", "does not exist");
    let url = format!("nfs://10.0.2.2:{dead}/export/r");
    let (st, v) = check(&vm, &url, None, 4);
    assert_failure(&v, st, "mount", "cannot reach the NFS server");

    // The passwords never reach the log ring or the console.
    let logs = vm.https("GET", "/v1/logs").unwrap().body;
    for text in [logs, vm.console()] {
        assert!(text.contains("storage check"), "no check in the logs");
        for pw in [SMB_PASSWORD, WRONG_PASSWORD] {
            assert!(!text.contains(pw), "password in the logs");
        }
    }
}
