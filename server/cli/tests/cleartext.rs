//! Cleartext is never chosen silently by the real `ferry`: plain `ftp://` and an `http://` S3
//! endpoint are refused without `insecure=1` in the URL, saying why, and go ahead with it;
//! `serve-nbd` without TLS off loopback is refused without `--insecure`, and serves with it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(repo: &str, args: &[&str]) -> Output {
    Command::new(FERRY)
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", "AKTEST")
        .env("AWS_SECRET_ACCESS_KEY", "not-shown-secret")
        .env("FERRY_STORE_PASSWORD", "not-shown-pw")
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cleartext_storage_needs_insecure_in_the_url() {
    let port = closed_port();
    let urls = [
        format!("ftp://u@127.0.0.1:{port}/repo?retries=0"),
        format!("s3://bkt/p?endpoint=http://127.0.0.1:{port}&path_style=true&retries=0"),
    ];
    for url in urls {
        let o = ferry(&url, &["repo", "init"]);
        assert_eq!(o.status.code(), Some(1), "{url}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("in clear") && err.contains("insecure=1"),
            "{url}: {err}"
        );
        // Asked for explicitly: the URL is taken and the store is contacted (nothing
        // listens there, so that is what fails now).
        let o = ferry(&format!("{url}&insecure=1"), &["repo", "init"]);
        assert_eq!(o.status.code(), Some(1), "{url}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("in clear"), "{url}: {err}");
        assert!(
            !err.contains("not-shown-secret") && !err.contains("not-shown-pw"),
            "{err}"
        );
    }
}

fn local(repo: &Path, args: &[&str]) -> Output {
    ferry(repo.to_str().unwrap(), args)
}

#[test]
fn serve_nbd_off_loopback_needs_tls_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    assert!(local(&repo, &["repo", "init"]).status.success());
    let o = local(
        &repo,
        &["backup", "--source", disk.to_str().unwrap(), "--name", "d"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Every address (not loopback), no TLS: refused before serving anything.
    let o = local(&repo, &["serve-nbd", "latest", "--listen", "0.0.0.0:0"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("in clear") && err.contains("--insecure") && err.contains("--tls-cert"),
        "{err}"
    );

    // Loopback without TLS, and any address with --insecure, serve.
    for args in [
        &["--listen", "127.0.0.1:0"][..],
        &["--listen", "0.0.0.0:0", "--insecure"][..],
    ] {
        let mut child = Command::new(FERRY)
            .arg("--repo")
            .arg(&repo)
            .args(["serve-nbd", "latest"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Up to its "serving ..." line, or its end if it quits.
        let mut seen = String::new();
        for l in BufReader::new(child.stderr.take().unwrap()).lines() {
            let l = l.unwrap();
            seen.push_str(&l);
            if l.contains("serving") {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(seen.contains("serving"), "{args:?}: {seen}");
    }
}
