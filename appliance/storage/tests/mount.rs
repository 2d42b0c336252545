//! smb:// and nfs:// on a host that cannot mount them: the error must say why, and never
//! show the password. (The real mounts are tested inside the appliance: tests/slow/smbnfs.sh.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use ferry_storage::{open_store_with, StoreError, StoreOptions};

fn refused(url: &str) -> String {
    let mut o = StoreOptions::default();
    o.secrets.password = Some("hunter2-smb".into());
    let e = open_store_with(url, o).unwrap_err();
    assert!(matches!(e, StoreError::Mount { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    msg
}

#[test]
fn mounts_fail_clearly_without_root_or_kernel_support() {
    // Port 9 (discard) is closed on loopback: a kernel with cifs/nfs cannot reach it, a kernel
    // without them says so, and a non-root process is told it needs root.
    let dir = tempfile::tempdir().unwrap();
    let q = format!("?mountdir={}", dir.path().display());
    for url in [
        format!("smb://backup@127.0.0.1:9/share/repo{q}"),
        format!("nfs://127.0.0.1:9/export/repo{q}"),
    ] {
        let msg = refused(&url);
        assert!(
            msg.contains("needs root")
                || msg.contains("the kernel has no")
                || msg.contains("cannot reach"),
            "{url}: {msg}"
        );
        eprintln!("{url}: {msg}");
        // No mount point is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
