//! The plan store and the scheduler.
//!
//! Each plan lives in `<state>/plans/<name>.json` (0600: it holds the credentials pushed
//! with it), with the last schedule time that was run or skipped. The scheduler wakes
//! every second, fires each plan whose next cron time (UTC) has come, and never runs one
//! plan twice at once. At start, a plan whose schedule passed while the agent was off runs
//! once when it says `run_missed`, else the missed runs are skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::plan::{next_run, parse_schedule};
use ferry_api::v1::{PlanPush, PlanSummary, Trigger};
use serde::{Deserialize, Serialize};

use crate::agent::Agent;

/// A stored plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub push: PlanPush,
    pub updated_unix: i64,
    /// The last schedule time handled (run, or skipped at boot).
    pub last_scheduled: i64,
}

/// The plans.
#[derive(Debug)]
pub struct PlanStore {
    dir: PathBuf,
    plans: Mutex<BTreeMap<String, Stored>>,
}

impl PlanStore {
    /// Loads every plan.
    pub fn open(state: &std::path::Path) -> PlanStore {
        let dir = state.join("plans");
        let mut plans = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                        serde_json::from_slice::<Stored>(&b).map_err(|e| e.to_string())
                    }) {
                        Ok(s) => {
                            plans.insert(s.push.plan.name.clone(), s);
                        }
                        Err(e) => tracing::warn!("plan file {} unusable: {e}", p.display()),
                    }
                }
            }
        }
        PlanStore {
            dir,
            plans: Mutex::new(plans),
        }
    }

    fn save(&self, s: &Stored) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        crate::identity::write_private(
            &self.dir.join(format!("{}.json", s.push.plan.name)),
            &serde_json::to_vec(s)?,
        )
    }

    /// Stores a plan (validated by the caller); keeps the schedule position of an update.
    pub fn put(&self, push: PlanPush) -> anyhow::Result<PlanSummary> {
        let now = ferry_api::now_unix();
        let mut g = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let last = g
            .get(&push.plan.name)
            .map(|s| s.last_scheduled)
            .unwrap_or(now);
        let s = Stored {
            push,
            updated_unix: now,
            last_scheduled: last,
        };
        self.save(&s)?;
        let sum = summary(&s);
        g.insert(s.push.plan.name.clone(), s);
        Ok(sum)
    }

    /// Removes a plan.
    pub fn delete(&self, name: &str) -> bool {
        let mut g = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.json")));
        g.remove(name).is_some()
    }

    /// One plan.
    pub fn get(&self, name: &str) -> Option<Stored> {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Summaries, without credentials.
    pub fn list(&self) -> Vec<PlanSummary> {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(summary)
            .collect()
    }

    /// Moves a plan's schedule position.
    fn mark(&self, name: &str, t: i64) {
        let mut g = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.get_mut(name) {
            s.last_scheduled = t;
            let s = s.clone();
            drop(g);
            if let Err(e) = self.save(&s) {
                tracing::warn!("saving plan {name}: {e:#}");
            }
        }
    }

    /// Plans whose schedule time has come: (name, the latest due time, missed runs).
    fn due(&self, now: i64) -> Vec<(String, i64, bool)> {
        let g = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for s in g.values() {
            let Ok(cron) = parse_schedule(&s.push.plan.schedule) else {
                continue;
            };
            let mut t = s.last_scheduled;
            let mut latest = None;
            // Walk to the latest due time; cap the walk for very frequent schedules.
            for _ in 0..100_000 {
                match next_run(&cron, t) {
                    Some(n) if n <= now => {
                        latest = Some(n);
                        t = n;
                    }
                    _ => break,
                }
            }
            if let Some(l) = latest {
                out.push((s.push.plan.name.clone(), l, s.push.plan.run_missed));
            }
        }
        out
    }
}

fn summary(s: &Stored) -> PlanSummary {
    PlanSummary {
        plan: s.push.plan.clone(),
        credentials: s.push.credentials.keys().cloned().collect(),
        updated_unix: s.updated_unix,
        next_run_unix: parse_schedule(&s.push.plan.schedule)
            .ok()
            .and_then(|c| next_run(&c, s.last_scheduled.max(ferry_api::now_unix() - 1))),
        last_run_unix: Some(s.last_scheduled),
    }
}

/// Handles runs missed while the agent was off, then fires plans on schedule forever.
pub async fn scheduler(agent: Arc<Agent>) {
    let now = ferry_api::now_unix();
    for (name, t, run_missed) in agent.plans.due(now) {
        agent.plans.mark(&name, t);
        if run_missed {
            tracing::info!("plan {name}: the run due at {t} was missed while the agent was off; running it now");
            let _ = agent.start_job(&name, Trigger::Missed, Some(t));
        } else {
            tracing::info!(
                "plan {name}: skipping the run due at {t}, missed while the agent was off"
            );
        }
    }
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let now = ferry_api::now_unix();
        for (name, t, _) in agent.plans.due(now) {
            agent.plans.mark(&name, t);
            let _ = agent.start_job(&name, Trigger::Scheduled, Some(t));
        }
    }
}
