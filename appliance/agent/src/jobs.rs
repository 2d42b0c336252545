//! Job records and the job runner.
//!
//! Finished jobs are appended to `<state>/jobs.jsonl`, numbered by `seq` (the collection
//! cursor). A running job publishes [`ProgressEvent`]s on a broadcast channel, which the
//! progress stream follows; the last event is `done` with the record.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_api::v1::{JobRecord, JobState, ProgressEvent, Trigger};
use tokio::sync::broadcast;

use crate::agent::Agent;

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    running: HashMap<String, (String, broadcast::Sender<ProgressEvent>)>,
    done: HashMap<String, JobRecord>,
}

/// Job records and running jobs.
#[derive(Debug)]
pub struct JobStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

fn read_all(path: &std::path::Path) -> Vec<JobRecord> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// What following a job gives.
#[derive(Debug)]
pub enum Follow {
    /// Still running: its plan and events.
    Running(String, broadcast::Receiver<ProgressEvent>),
    /// Already finished.
    Done(Box<JobRecord>),
}

impl JobStore {
    /// Opens the record file, continuing its numbering.
    pub fn open(state: &std::path::Path) -> JobStore {
        let path = state.join("jobs.jsonl");
        let last = read_all(&path).last().map(|r| r.seq).unwrap_or(0);
        JobStore {
            path,
            inner: Mutex::new(Inner {
                next_seq: last + 1,
                ..Inner::default()
            }),
        }
    }

    /// Records with `seq > after`, oldest first.
    pub fn page(&self, after: u64, limit: usize) -> Vec<JobRecord> {
        let _g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<JobRecord> = read_all(&self.path)
            .into_iter()
            .filter(|r| r.seq > after)
            .collect();
        v.truncate(limit);
        v
    }

    /// Registers a running job; `None` when the plan is already running.
    fn begin(&self, id: &str, plan: &str) -> Option<broadcast::Sender<ProgressEvent>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.running.values().any(|(p, _)| p == plan) {
            return None;
        }
        let (tx, _) = broadcast::channel(256);
        g.running
            .insert(id.to_string(), (plan.to_string(), tx.clone()));
        Some(tx)
    }

    /// Numbers, stores and publishes a finished record.
    fn finish(&self, mut rec: JobRecord) -> JobRecord {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        rec.seq = g.next_seq;
        g.next_seq += 1;
        let line = serde_json::to_string(&rec).unwrap_or_default();
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()
            });
        if let Err(e) = res {
            tracing::error!("cannot store job record {}: {e}", rec.id);
        }
        let tx = g.running.remove(&rec.id).map(|(_, tx)| tx);
        if g.done.len() > 64 {
            g.done.clear();
        }
        g.done.insert(rec.id.clone(), rec.clone());
        drop(g);
        if let Some(tx) = tx {
            let _ = tx.send(ProgressEvent::Done(rec.clone()));
        }
        rec
    }

    /// Follows a job by id.
    pub fn follow(&self, id: &str) -> Option<Follow> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = g.done.get(id) {
            return Some(Follow::Done(Box::new(r.clone())));
        }
        if let Some((plan, tx)) = g.running.get(id) {
            return Some(Follow::Running(plan.clone(), tx.subscribe()));
        }
        drop(g);
        read_all(&self.path)
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| Follow::Done(Box::new(r)))
    }
}

fn job_id() -> String {
    let mut b = [0u8; 4];
    rand::fill(&mut b);
    format!("{}-{}", ferry_api::now_unix(), hex::encode(b))
}

impl Agent {
    /// Starts a job of `plan` in the background; its id, or why not.
    pub fn start_job(
        self: &Arc<Self>,
        plan: &str,
        trigger: Trigger,
        scheduled: Option<i64>,
    ) -> Result<String, String> {
        let Some(stored) = self.plans.get(plan) else {
            return Err(format!("no plan {plan:?}"));
        };
        let id = job_id();
        let Some(tx) = self.jobs.begin(&id, plan) else {
            tracing::warn!("plan {plan}: still running; this run is skipped");
            return Err(format!("plan {plan} is already running"));
        };
        let agent = self.clone();
        let job = id.clone();
        tokio::spawn(async move {
            let started = ferry_api::now_unix();
            let mut rec = JobRecord {
                seq: 0,
                id: job.clone(),
                plan: stored.push.plan.name.clone(),
                trigger,
                scheduled_unix: scheduled,
                started_unix: started,
                finished_unix: None,
                state: JobState::Running,
                vms: Vec::new(),
                pruned: Vec::new(),
                verified: None,
                error: None,
            };
            let lic = agent.license.state();
            if lic.required && !lic.valid {
                let why = lic.reason.unwrap_or_else(|| "no license".into());
                tracing::error!("plan {}: job refused: no valid license: {why}", rec.plan);
                rec.state = JobState::Refused;
                rec.error = Some(format!("no valid license: {why}"));
                rec.finished_unix = Some(ferry_api::now_unix());
                agent.jobs.finish(rec);
                return;
            }
            tracing::info!("plan {}: job {job} started ({trigger:?})", rec.plan);
            let events: ferry_jobs::Events = {
                let tx = tx.clone();
                Arc::new(move |e| {
                    let _ = tx.send(e);
                })
            };
            let trust_dir = agent.state_dir.join("vcenter");
            let _ = std::fs::create_dir_all(&trust_dir);
            let out = ferry_jobs::run(
                &stored.push.plan,
                &stored.push.credentials,
                &trust_dir,
                events,
            )
            .await;
            let ok = out.vms.iter().filter(|v| v.ok).count();
            rec.state = if out.vms.is_empty() || ok == 0 {
                JobState::Failed
            } else if ok < out.vms.len() || out.error.is_some() {
                JobState::Partial
            } else {
                JobState::Succeeded
            };
            rec.vms = out.vms;
            rec.pruned = out.pruned;
            rec.verified = out.verified;
            rec.error = out.error;
            rec.finished_unix = Some(ferry_api::now_unix());
            let rec = agent.jobs.finish(rec);
            tracing::info!(
                "plan {}: job {} {:?}: {ok} of {} VMs backed up{}",
                rec.plan,
                rec.id,
                rec.state,
                rec.vms.len(),
                rec.error
                    .as_deref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            );
        });
        Ok(id)
    }
}
