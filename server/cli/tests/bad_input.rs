//! What a new user gets from the real `ferry` binary for bad input: an exit code, one line
//! that names each cause once, no panic or backtrace, and nothing lost (a refused restore
//! target is left as it was).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

fn ferry_env(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ferry(repo: &Path, args: &[&str]) -> Output {
    ferry_env(repo, args, &[])
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "ferry failed: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// One bad input: what to run, the exit code, and a text that must appear exactly once.
struct Case {
    what: &'static str,
    args: Vec<String>,
    code: i32,
    once: &'static str,
}

fn check(repo: &Path, c: &Case) {
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let o = ferry(repo, &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(c.code), "{}: {err}", c.what);
    assert_eq!(
        err.matches(c.once).count(),
        1,
        "{}: {:?} should appear once in: {err}",
        c.what,
        c.once
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{}: {err}", c.what);
    }
    assert!(o.status.code() != Some(0) || c.code == 0);
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// A repository with one restore point of a small disk; returns (repo, disk).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let repo = dir.join("repo");
    ok(&ferry(&repo, &["repo", "init", "--chunk-size", "1M"]));
    let disk = dir.join("disk.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 100_000], 1 << 20).unwrap();
    ok(&ferry(
        &repo,
        &["backup", "--source", disk.to_str().unwrap()],
    ));
    (repo, disk)
}

#[test]
fn bad_sources_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = setup(dir.path());
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let gone = dir.path().join("nonexistent.raw");
    let cases = [
        Case {
            what: "directory",
            args: s(&["backup", "--source", "/tmp"]),
            code: 1,
            once: "/tmp is a directory, not a disk",
        },
        Case {
            what: "character device",
            args: s(&["backup", "--source", "/dev/zero"]),
            code: 1,
            once: "/dev/zero is a character device, not a disk",
        },
        Case {
            what: "FIFO",
            args: vec!["backup".into(), "--source".into(), p(&fifo)],
            code: 1,
            once: "is a FIFO (named pipe), not a disk",
        },
        Case {
            what: "socket",
            args: vec!["backup".into(), "--source".into(), p(&sock)],
            code: 1,
            once: "is a socket, not a disk",
        },
        Case {
            what: "missing source",
            args: vec!["backup".into(), "--source".into(), p(&gone)],
            code: 1,
            once: "No such file or directory",
        },
        Case {
            what: "no source at all (usage)",
            args: s(&["backup"]),
            code: 2,
            once: "required arguments were not provided",
        },
    ];
    for c in &cases {
        check(&repo, c);
    }
    // Nothing was added by the refused backups.
    let o = ferry(&repo, &["--json", "list"]);
    let points: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(points.len(), 1);
}

#[test]
fn bad_repositories_get_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = setup(dir.path());
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A path under a regular file fails for root too, unlike chmod 000.
    check(
        &file.join("repo"),
        &Case {
            what: "unreadable repository",
            args: s(&["list"]),
            code: 1,
            once: "Not a directory",
        },
    );
    check(
        &dir.path().join("missing"),
        &Case {
            what: "missing repository",
            args: s(&["list"]),
            code: 1,
            once: "ferry repo init",
        },
    );
    // The config object of a newer format: version 2 in the header, header CRC redone.
    let config = repo.join("config");
    let mut data = std::fs::read(&config).unwrap();
    data[4..6].copy_from_slice(&2u16.to_le_bytes());
    let crc = crc32(&data[..28]);
    data[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&config, &data).unwrap();
    check(
        &repo,
        &Case {
            what: "newer repository format",
            args: s(&["list"]),
            code: 1,
            once: "upgrade Ferry",
        },
    );
}

#[test]
fn restores_do_not_destroy_by_surprise() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, disk) = setup(dir.path());
    let existing = dir.path().join("existing.raw");
    std::fs::write(&existing, b"not a Ferry restore").unwrap();
    let before = sha(&existing);
    let a_dir = dir.path().join("dd");
    std::fs::create_dir(&a_dir).unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let cases = [
        Case {
            what: "existing file",
            args: vec![
                "restore".into(),
                "latest".into(),
                "--target".into(),
                p(&existing),
            ],
            code: 1,
            once: "pass --force",
        },
        Case {
            what: "existing file as VMDK",
            args: vec![
                "restore".into(),
                "latest".into(),
                "--format".into(),
                "vmdk".into(),
                "--target".into(),
                p(&existing),
            ],
            code: 1,
            once: "pass --force",
        },
        Case {
            what: "directory",
            args: vec![
                "restore".into(),
                "latest".into(),
                "--target".into(),
                p(&a_dir),
            ],
            code: 1,
            once: "is a directory",
        },
        Case {
            what: "character device",
            args: s(&["restore", "latest", "--force", "--target", "/dev/null"]),
            code: 1,
            once: "not a regular file or block device",
        },
        Case {
            what: "under a regular file",
            args: vec![
                "restore".into(),
                "latest".into(),
                "--target".into(),
                p(&file.join("x.raw")),
            ],
            code: 1,
            once: "Not a directory",
        },
        Case {
            // Read-only for root too: sysfs takes no new files.
            what: "read-only location",
            args: s(&["restore", "latest", "--target", "/sys/ferry-test.raw"]),
            code: 1,
            once: "Permission denied",
        },
    ];
    for c in &cases {
        check(&repo, c);
    }
    assert_eq!(sha(&existing), before, "a refused target is left as it was");
    assert!(!Path::new("/sys/ferry-test.raw.ferry-partial").exists());
    let partials = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("ferry-partial"))
        .count();
    assert_eq!(partials, 0);

    // With --force the file is replaced by the disk; an empty or new file needs nothing.
    ok(&ferry(
        &repo,
        &["restore", "latest", "--force", "--target", &p(&existing)],
    ));
    assert_eq!(sha(&existing), sha(&disk));
    let empty = dir.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    ok(&ferry(
        &repo,
        &["restore", "latest", "--target", &p(&empty)],
    ));
    assert_eq!(sha(&empty), sha(&disk));
}

#[test]
fn a_panic_is_one_line_and_exit_101() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = ferry_env(&repo, &["list"], &[("FERRY_TEST_PANIC", "1")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(101), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("this is a bug") && err.contains("/issues"),
        "{err}"
    );
    assert!(err.contains("bug.rs:"), "where it happened: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );

    // Developers keep the standard report.
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--repo", repo.to_str().unwrap(), "list"])
        .env("FERRY_TEST_PANIC", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("panicked"));
}

/// CRC-32 (IEEE), as the object header uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
