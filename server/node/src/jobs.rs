//! Node jobs: verify, prune and GC of each vault, on demand and on the cron schedules of
//! `node.toml`. They run under the archive's repository locks (verify and prune shared, GC
//! exclusive), so they are safe against backups running at the same time. The scheduler
//! reads the config in force at every tick and wakes up at every reload, so new schedules,
//! retention and vaults apply without a restart; a job already running finishes as it began.

use std::sync::Arc;
use std::time::Duration;

use ferry_api::node::JobReport;
use ferry_archive::progress::Progress;

use crate::{Node, Vault};

/// How long GC waits for running backups before giving up until its next run.
const GC_LOCK_WAIT: Duration = Duration::from_secs(1800);

fn report(job: &str, v: &Vault, ok: bool, detail: serde_json::Value) -> JobReport {
    JobReport {
        job: job.into(),
        vault: v.name.clone(),
        ok,
        detail,
    }
}

fn failed(job: &str, v: &Vault, e: impl std::fmt::Display) -> JobReport {
    tracing::warn!("vault {}: {job} failed: {e}", v.name);
    report(job, v, false, serde_json::json!({ "error": e.to_string() }))
}

/// Verifies every point of the vault and records the result for the catalog.
pub async fn verify(v: &Vault) -> JobReport {
    let ids = match v.repo().list_point_ids().await {
        Ok(ids) => ids,
        Err(e) => return failed("verify", v, e),
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    match ferry_archive::verify::verify(v.repo(), &ids, cores * 2, Arc::new(Progress::default()))
        .await
    {
        Ok(r) => {
            let damaged: Vec<(String, String)> = r
                .damaged
                .iter()
                .map(|d| (d.point.clone(), d.error.clone()))
                .collect();
            v.record_verify(&ids, &damaged);
            tracing::info!(
                "vault {}: verify of {} point(s): {}",
                v.name,
                r.points,
                if r.ok() { "ok" } else { "DAMAGED" }
            );
            report(
                "verify",
                v,
                r.ok(),
                serde_json::to_value(&r).unwrap_or_default(),
            )
        }
        Err(e) => failed("verify", v, e),
    }
}

/// Deletes chunks no point references (waits for running backups).
pub async fn gc(v: &Vault) -> JobReport {
    match ferry_archive::gc::gc(v.repo(), GC_LOCK_WAIT).await {
        Ok(r) => {
            v.recount().await;
            tracing::info!(
                "vault {}: gc removed {} chunk(s), {} bytes",
                v.name,
                r.removed_chunks,
                r.removed_bytes
            );
            report("gc", v, true, serde_json::to_value(&r).unwrap_or_default())
        }
        Err(e) => failed("gc", v, e),
    }
}

/// Applies the node's retention to every point of the vault.
pub async fn prune(node: &Node, v: &Vault) -> JobReport {
    let live = node.live();
    let Some(req) = &live.config.retention else {
        return failed("prune", v, "no [retention] in node.toml");
    };
    match v.prune(req, |_| true).await {
        Ok(d) => report(
            "prune",
            v,
            true,
            serde_json::to_value(&d).unwrap_or_default(),
        ),
        Err(e) => failed("prune", v, e),
    }
}

/// Runs the scheduled jobs forever, on the schedules in force (re-read at every reload).
pub async fn scheduler(node: Arc<Node>) {
    let mut reloads = node.reloads();
    loop {
        let schedule = node.live().config.schedule.clone();
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|c| ferry_api::plan::parse_schedule(c).ok())
        };
        let jobs = [
            ("prune", parse(&schedule.prune)),
            ("gc", parse(&schedule.gc)),
            ("verify", parse(&schedule.verify)),
        ];
        let now = ferry_api::now_unix();
        let next: Vec<(i64, &str)> = jobs
            .iter()
            .filter_map(|(name, c)| {
                c.as_ref()
                    .and_then(|c| ferry_api::plan::next_run(c, now))
                    .map(|t| (t, *name))
            })
            .collect();
        let Some(at) = next.iter().map(|(t, _)| *t).min() else {
            // Nothing scheduled: wait for a reload that may schedule something.
            if reloads.changed().await.is_err() {
                return;
            }
            continue;
        };
        let wait = u64::try_from(at - now).unwrap_or(0);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            r = reloads.changed() => {
                if r.is_err() {
                    return;
                }
                // The schedule may have changed: compute the next run again.
                continue;
            }
        }
        // Every job due at that time, in the order prune, GC (frees what prune left), verify,
        // over the vaults in force now.
        let live = node.live();
        for (_, name) in next.iter().filter(|(t, _)| *t == at) {
            for v in live.vaults.values() {
                let r = match *name {
                    "verify" => verify(v).await,
                    "prune" => prune(&node, v).await,
                    _ => gc(v).await,
                };
                tracing::info!(
                    "scheduled {name} of vault {}: {}",
                    v.name,
                    if r.ok { "ok" } else { "failed" }
                );
            }
        }
    }
}
