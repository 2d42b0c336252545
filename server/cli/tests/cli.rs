//! The `ferry` binary end to end: exit codes, JSON output, and crash consistency under SIGKILL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

fn ferry(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "ferry failed: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                usize::from(!e.file_name().to_string_lossy().starts_with(".tmp"))
            }
        })
        .sum()
}

fn points(repo: &Path) -> Vec<serde_json::Value> {
    let out = ok(&ferry(repo, &["--json", "list"]));
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

#[test]
fn relative_repository_path() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .current_dir(dir.path())
            .args(["--repo", "repo"])
            .args(args)
            .output()
            .unwrap()
    };
    ok(&run(&["repo", "init"]));
    assert!(dir.path().join("repo").is_dir());
    ok(&run(&["list"]));
}

/// `ferry list | head`: a reader that closed its end is not an error and no panic
/// (`println!` panicked on EPIPE). The reader is closed before ferry starts, so the first
/// write fails every time.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(&ferry(&repo, &["repo", "init"]));
    for args in [&["list"][..], &["--json", "list"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--repo")
            .arg(&repo)
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {} {err}", out.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn errors_a_person_can_act_on() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = ferry(&repo, &["list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ferry repo init"));

    ok(&ferry(&repo, &["repo", "init"]));
    let o = ferry(&repo, &["repo", "init"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));

    let o = ferry(
        &dir.path().join("r2"),
        &["repo", "init", "--chunk-size", "3K"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("chunk size"));

    let o = ferry(&repo, &["backup", "--source", "/nonexistent/disk.raw"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot read source") && err.contains("No such file"),
        "{err}"
    );

    let o = ferry(&repo, &["restore", "nope", "--target", "/tmp/x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));

    let o = ferry(&repo, &["prune"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--keep"));

    let o = ferry(&repo, &["bogus"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn backup_restore_verify_prune_gc_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let disk = dir.path().join("disk.raw");
    let changed = dir.path().join("disk2.raw");
    let map = dir.path().join("map.txt");
    let layout = ferry_testkit::MixedDisk::new(96 << 20, 1);
    layout.write(&disk).unwrap();
    let ranges = layout.write_modified(&disk, &changed, 2.0).unwrap();
    let text: String = ranges.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    std::fs::write(&map, text).unwrap();
    ok(&ferry(&repo, &["repo", "init", "--chunk-size", "1M"]));
    let full: serde_json::Value = serde_json::from_str(&ok(&ferry(
        &repo,
        &[
            "--json",
            "backup",
            "--source",
            disk.to_str().unwrap(),
            "--name",
            "vm1",
        ],
    )))
    .unwrap();
    let inc: serde_json::Value = serde_json::from_str(&ok(&ferry(
        &repo,
        &[
            "--json",
            "backup",
            "--source",
            changed.to_str().unwrap(),
            "--name",
            "vm1",
            "--incremental",
            "--changed-extents",
            map.to_str().unwrap(),
        ],
    )))
    .unwrap();
    assert_eq!(inc["parent"], full["id"]);
    let changed_bytes: u64 = std::fs::read_to_string(&map)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    let read = inc["disks"][0]["stats"]["read"].as_u64().unwrap();
    assert!(
        read <= changed_bytes * 2,
        "incremental read {read} for {changed_bytes} changed"
    );

    let out = dir.path().join("restored.raw");
    ok(&ferry(
        &repo,
        &["restore", "latest", "--target", out.to_str().unwrap()],
    ));
    assert_eq!(sha(&out), sha(&changed));
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--repo")
        .arg(&repo)
        .args(["restore", full["id"].as_str().unwrap(), "--target", "-"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(hex::encode(Sha256::digest(&o.stdout)), sha(&disk));

    let v: serde_json::Value =
        serde_json::from_str(&ok(&ferry(&repo, &["--json", "verify"]))).unwrap();
    assert_eq!(v["damaged"].as_array().unwrap().len(), 0);
    assert_eq!(v["points"], 2);

    let p: serde_json::Value =
        serde_json::from_str(&ok(&ferry(&repo, &["--json", "prune", "--keep-last", "1"]))).unwrap();
    assert_eq!(
        p.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == false)
            .count(),
        1
    );
    let g: serde_json::Value = serde_json::from_str(&ok(&ferry(&repo, &["--json", "gc"]))).unwrap();
    assert!(g["removed_chunks"].as_u64().unwrap() > 0);
    // The earlier restore is there: replacing it takes --force.
    ok(&ferry(
        &repo,
        &[
            "restore",
            "latest",
            "--force",
            "--target",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(sha(&out), sha(&changed));
    let stats = ok(&ferry(&repo, &["repo", "stats"]));
    assert!(stats.contains("1 restore points"), "{stats}");

    // A flipped byte makes verify exit 3 and name the place.
    let chunk = walk_first(&repo.join("chunks"));
    let mut data = std::fs::read(&chunk).unwrap();
    let n = data.len() - 1;
    data[n] ^= 0xff;
    std::fs::write(&chunk, data).unwrap();
    let o = ferry(&repo, &["verify"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("DAMAGED"));
}

fn walk_first(dir: &Path) -> PathBuf {
    let e = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("no file under {}", dir.display()));
    if e.file_type().unwrap().is_dir() {
        walk_first(&e.path())
    } else {
        e.path()
    }
}

#[test]
fn killed_backups_leave_a_consistent_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let disk = dir.path().join("disk.raw");
    ferry_testkit::MixedDisk::new(512 << 20, 4)
        .write(&disk)
        .unwrap();
    ok(&ferry(&repo, &["repo", "init", "--chunk-size", "1M"]));
    // Kill points: right after the lock appears, after some chunks, after most chunks.
    for target in [0usize, 20, 120, 220] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--repo")
            .arg(&repo)
            .args(["backup", "--concurrency", "2", "--source"])
            .arg(&disk)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let locked = count_files(&repo.join("locks")) > 0;
            if (locked && count_files(&repo.join("chunks")) >= target)
                || child.try_wait().unwrap().is_some()
                || start.elapsed() > Duration::from_secs(120)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        eprintln!(
            "kill at {target} chunks: {status}, {} chunks on disk",
            count_files(&repo.join("chunks"))
        );
        // Either it was killed, or it won the race and committed a complete point.
        let pts = points(&repo);
        if status.success() {
            assert_eq!(pts.len(), 1);
            ok(&ferry(&repo, &["prune", "--keep-last", "1"]));
        } else {
            assert!(
                pts.is_empty(),
                "a killed backup left a visible point at target {target}"
            );
        }
        let v = ferry(&repo, &["verify"]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    }
    // The dead process's lock is recognised as stale, and the next backup completes,
    // reusing what the killed ones wrote.
    let m: serde_json::Value = serde_json::from_str(&ok(&ferry(
        &repo,
        &["--json", "backup", "--source", disk.to_str().unwrap()],
    )))
    .unwrap();
    assert!(
        m["disks"][0]["stats"]["reused"].as_u64().unwrap() > 0,
        "{m}"
    );
    let out = dir.path().join("restored.raw");
    ok(&ferry(
        &repo,
        &["restore", "latest", "--target", out.to_str().unwrap()],
    ));
    assert_eq!(sha(&out), sha(&disk));
    ok(&ferry(&repo, &["gc"]));
    ok(&ferry(&repo, &["verify"]));
}
