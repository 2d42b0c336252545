//! `node.toml` is applied on SIGHUP without a restart: grants, new and removed vaults,
//! quotas; a file that does not validate changes nothing and is logged. `check-config`
//! validates the file beforehand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ferry_api::node::VaultInfo;
use ferry_archive::format;

async fn status(c: &reqwest::Client, url: &str) -> u16 {
    c.get(url).send().await.unwrap().status().as_u16()
}

/// Lines of the node's log that contain every one of `parts`.
fn log_lines(log: &Path, parts: &[&str]) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) for a line of the log with every one of `parts`: the node logs a reload
/// just after applying it, so a request may see the change first.
async fn log_says(log: &Path, parts: &[&str]) {
    let what = format!("a log line with {parts:?}");
    eventually(&what, || async move { !log_lines(log, parts).is_empty() }).await;
}

const GRANT_A3_MAIN: &str = "\n[[grant]]\nidentity = \"agent-a3\"\nvaults = [\"main\"]\n";

/// CONFIG with vault `fresh` (quota `quota`) and agent-a3 granted on it.
fn with_fresh(quota: &str) -> String {
    format!(
        "[[vault]]\nname = \"fresh\"\nchunk_size = 1048576\nquota = \"{quota}\"\n{CONFIG}\n\
         [[grant]]\nidentity = \"agent-a3\"\nvaults = [\"fresh\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_grants_vaults_and_quotas_and_a_bad_file_changes_nothing() {
    let w = World::new(CONFIG);
    let log = w.path("node.log");
    let mut node = w.start_logged(&log);
    let (a1, a3) = (w.agent("a1"), w.agent("a3"));
    let (c1, c3) = (http(&w, &a1), http(&w, &a3));
    let main_cat = format!("https://{}/v1/vaults/main/catalog", node.addr);
    let (c3r, main_r) = (&c3, main_cat.as_str());

    // agent-a3 has no grant.
    assert_eq!(status(&c3, &main_cat).await, 403);
    assert_eq!(status(&c1, &main_cat).await, 200);

    // Granted in the file + SIGHUP: it may back up.
    w.write_config(&format!("{CONFIG}{GRANT_A3_MAIN}"));
    node.hup();
    eventually("agent-a3 granted on main", || async move {
        status(c3r, main_r).await == 200
    })
    .await;
    let disk = w.path("a3.raw");
    random_disk(&disk, MIB as usize, 1);
    let r3 = repo(&node, "main", &a3).await;
    backup(&r3, &disk, "vm3", None).await.unwrap();
    log_says(&log, &["reloaded", "node.toml", "grants changed"]).await;

    // Grant removed: refused again.
    w.write_config(CONFIG);
    node.hup();
    eventually("agent-a3 refused on main", || async move {
        status(c3r, main_r).await == 403
    })
    .await;

    // Broken files (unknown field, bad quota) that would grant agent-a3 if half applied:
    // each is logged with the file and the problem, and the running config stays.
    let toml_path = w.state.join("node.toml").display().to_string();
    for (n, (bad, problem)) in [
        (
            format!("lisen = \"0.0.0.0:1\"\n{CONFIG}{GRANT_A3_MAIN}"),
            "lisen",
        ),
        (
            format!("{CONFIG}{GRANT_A3_MAIN}").replace("quota = \"6M\"", "quota = \"lots\""),
            "quota \"lots\" is not a size",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        w.write_config(&bad);
        node.hup();
        let log_r = &log;
        eventually("the reload error in the log", || async move {
            log_lines(log_r, &["ERROR", "failed"]).len() > n
        })
        .await;
        let errs = log_lines(&log, &["ERROR", "failed", &toml_path]);
        assert_eq!(errs.len(), n + 1, "{errs:?}");
        let all = std::fs::read_to_string(&log).unwrap();
        assert!(all.contains(problem), "{problem} not in the log:\n{all}");
        assert_eq!(status(&c3, &main_cat).await, 403);
        assert_eq!(status(&c1, &main_cat).await, 200);
        assert!(node.child.try_wait().unwrap().is_none(), "the node exited");
    }
    // check-config says the same before any reload.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-node"))
        .args(["check-config", "--state"])
        .arg(&w.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&toml_path) && err.contains("is not a size"),
        "{err}"
    );

    // A new vault: created and usable at once.
    let fresh_cat = format!("https://{}/v1/vaults/fresh/catalog", node.addr);
    let fresh_r = fresh_cat.as_str();
    assert_eq!(status(&c3, &fresh_cat).await, 403);
    w.write_config(&with_fresh("64M"));
    node.hup();
    eventually("vault fresh served to agent-a3", || async move {
        status(c3r, fresh_r).await == 200
    })
    .await;
    log_says(&log, &["reloaded", "vaults added: fresh"]).await;
    let disk2 = w.path("fresh.raw");
    random_disk(&disk2, 2 * MIB as usize, 2);
    let rf = repo(&node, "fresh", &a3).await;
    let m = backup(&rf, &disk2, "vm3", None).await.unwrap();
    assert!(w.chunk_bytes("fresh") >= 2 * MIB);

    // A lower quota: the next put over it gets 507.
    w.write_config(&with_fresh("1M"));
    node.hup();
    let vaults_url = format!("https://{}/v1/vaults", node.addr);
    let vaults_r = vaults_url.as_str();
    eventually("quota of fresh lowered to 1 MiB", || async move {
        let v: Vec<VaultInfo> = c3r
            .get(vaults_r)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.iter().any(|v| v.name == "fresh" && v.quota == MIB)
    })
    .await;
    let plain = vec![9u8; 100_000];
    let hex = format::digest_hex(&format::digest_of(&plain));
    let r = c3
        .put(format!(
            "https://{}/v1/vaults/fresh/chunks/{hex}",
            node.addr
        ))
        .body(format::encode_chunk(&plain, 3).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 507);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("quota exceeded"), "{msg}");

    // The vault removed from the file: no longer served, its data kept; named again, it
    // serves its points again.
    w.write_config(CONFIG);
    node.hup();
    eventually("vault fresh no longer served", || async move {
        status(c3r, fresh_r).await == 403
    })
    .await;
    log_says(&log, &["reloaded", "vaults removed (data kept): fresh"]).await;
    assert!(w.chunk_bytes("fresh") >= 2 * MIB);
    w.write_config(&with_fresh("64M"));
    node.hup();
    eventually("vault fresh served again", || async move {
        status(c3r, fresh_r).await == 200
    })
    .await;
    assert_eq!(rf.list_point_ids().await.unwrap(), vec![m.id.clone()]);
}

#[test]
fn check_config_lists_a_valid_file_and_refuses_a_bad_one() {
    let w = World::new(CONFIG);
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_ferry-node"))
            .arg("check-config")
            .arg("--state")
            .arg(&w.state)
            .output()
            .unwrap()
    };
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("is valid"), "{text}");
    assert!(text.contains("small (quota 6291456 bytes)"), "{text}");
    assert!(text.contains("agent-a1 -> main, small"), "{text}");
    assert!(text.contains("admin-root -> * (admin)"), "{text}");

    w.write_config(&format!(
        "{CONFIG}\n[[grant]]\nidentity = \"agent-x\"\nvaults = [\"nope\"]\n"
    ));
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node.toml"), "{err}");
    assert!(err.contains("unknown vault nope"), "{err}");
    assert!(err.contains("NOT valid"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_added_by_reload_runs_without_a_restart() {
    let w = World::new(CONFIG);
    let log = w.path("node.log");
    let mut node = w.start_logged(&log);
    let a1 = w.agent("a1");
    let repo = repo(&node, "main", &a1).await;
    let disk = w.path("d.raw");
    random_disk(&disk, MIB as usize, 1);
    backup(&repo, &disk, "vm", None).await.unwrap();
    let c1 = http(&w, &a1);
    let url = format!("https://{}/v1/vaults/main/catalog", node.addr);
    let verified = |c: &reqwest::Client, url: &str| {
        let req = c.get(url);
        async move {
            let cat: Vec<ferry_api::node::CatalogEntry> =
                req.send().await.unwrap().json().await.unwrap();
            cat.len() == 1 && cat[0].verify.as_ref().is_some_and(|v| v.ok)
        }
    };
    // No schedule at start: nothing verifies the point.
    assert!(!verified(&c1, &url).await);

    w.write_config(&format!("{CONFIG}\n[schedule]\nverify = \"* * * * * *\"\n"));
    node.hup();
    log_says(&log, &["reloaded", "job schedules or retention changed"]).await;
    let (c, u) = (&c1, url.as_str());
    eventually("the scheduled verify of the point", || verified(c, u)).await;
}
