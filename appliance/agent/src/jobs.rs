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
            let (plan, creds) = with_node_identity(&agent.state_dir, &stored.push);
            let out = ferry_jobs::run(&plan, &creds, &trust_dir, events).await;
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

/// Credential name the agent adds for a storage-node destination without one.
const NODE_IDENTITY_CRED: &str = "ferry-agent-identity";

/// For a `node://` destination, the agent's own registration is its identity at the storage
/// node: certificate, key and management CA go into `<state>/tls/node-client.pem` (0600), named
/// by the destination credential's `identity_file` unless the plan gives one. Other plans are
/// returned as they are.
fn with_node_identity(
    state_dir: &std::path::Path,
    push: &ferry_api::v1::PlanPush,
) -> (
    ferry_api::Plan,
    std::collections::BTreeMap<String, ferry_api::v1::Credential>,
) {
    let mut plan = push.plan.clone();
    let mut creds = push.credentials.clone();
    if !plan.destination.url.starts_with("node://") {
        return (plan, creds);
    }
    let bundle = match write_node_identity(state_dir) {
        Ok(p) => p,
        Err(e) => {
            // The store then says which identity it lacks.
            tracing::warn!("no identity for the storage node: {e:#}");
            return (plan, creds);
        }
    };
    let name = plan
        .destination
        .credential
        .get_or_insert_with(|| NODE_IDENTITY_CRED.to_string())
        .clone();
    creds
        .entry(name)
        .or_default()
        .secrets
        .entry("identity_file".into())
        .or_insert_with(|| bundle.display().to_string());
    (plan, creds)
}

fn write_node_identity(state_dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let (_, ca) = crate::registration::load(state_dir)
        .context("this agent is not registered with a management server")?;
    let (key, cert) = crate::identity::paths(state_dir);
    let key = std::fs::read_to_string(&key).context("read the TLS key")?;
    let cert = std::fs::read_to_string(&cert).context("read the TLS certificate")?;
    let path = state_dir.join("tls").join("node-client.pem");
    crate::identity::write_private(&path, format!("{cert}{ca}{key}").as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_tls::pki::{Ca, Role};

    /// A registered agent's plan to `node://` reaches a real ferry-node with the agent's own
    /// certificate: a backup through the plan's store restores to the same bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_destination_uses_the_agent_registration() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("test management CA").unwrap();

        // The agent's registration, as `registration::apply` leaves it.
        let state = dir.path().join("agent");
        let (cert, key) = ca.issue(Role::Agent, "a7", 30).unwrap();
        std::fs::create_dir_all(state.join("tls")).unwrap();
        std::fs::create_dir_all(state.join("mgmt")).unwrap();
        std::fs::write(state.join("tls/cert.pem"), &cert).unwrap();
        std::fs::write(state.join("tls/key.pem"), &key).unwrap();
        std::fs::write(state.join("mgmt/ca.pem"), ca.cert_pem()).unwrap();
        let saved = crate::registration::Saved {
            agent_id: "a7".into(),
            mgmt_url: None,
            ca_sha256: ca.sha256().to_string(),
            registered_unix: 0,
        };
        std::fs::write(
            state.join("mgmt/registration.json"),
            serde_json::to_vec(&saved).unwrap(),
        )
        .unwrap();

        // A node that grants agent-a7 the vault "main".
        let nstate = dir.path().join("node");
        let (nc, nk) = ca.issue(Role::Agent, "node1", 30).unwrap();
        ferry_node::enroll::install_identity(&nstate, &nc, &nk, ca.cert_pem()).unwrap();
        std::fs::write(
            nstate.join("node.toml"),
            "[[vault]]\nname = \"main\"\n\n[[grant]]\nidentity = \"agent-a7\"\nvaults = [\"main\"]\n",
        )
        .unwrap();
        let node = ferry_node::Node::open(&nstate).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(ferry_node::serve_on(node, listener));

        let plan = ferry_api::Plan::from_toml(&format!(
            "name = \"n\"\nschedule = \"0 0 1 1 *\"\n[vcenter]\nurl = \"https://vc\"\ncredential = \"vc\"\n\
             trust_on_first_use = true\n[vms]\nall = true\n[destination]\nurl = \"node://{addr}/main?node=node1\"\ncreate = true\n"
        ))
        .unwrap();
        let push = ferry_api::v1::PlanPush {
            plan,
            credentials: Default::default(),
        };
        let (plan, creds) = with_node_identity(&state, &push);
        let bundle = state.join("tls/node-client.pem");
        let mode = std::fs::metadata(&bundle).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let cred = creds.get(plan.destination.credential.as_deref().unwrap());
        let opts = ferry_jobs::store_options(&plan, cred).unwrap();
        let store = ferry_storage::open_store_with(&plan.destination.url, opts).unwrap();

        let repo = match ferry_archive::Repository::open(store.clone()).await {
            Ok(r) => r,
            Err(_) => ferry_archive::Repository::init(store, 1 << 20, 3)
                .await
                .unwrap(),
        };
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        let src = dir.path().join("disk.raw");
        std::fs::write(&src, &data).unwrap();
        let input = ferry_archive::DiskInput {
            name: "disk".into(),
            source: std::sync::Arc::new(ferry_archive::FileSource::open(&src).unwrap()),
            changed: None,
            change_id: None,
            meta: Default::default(),
        };
        let m = ferry_archive::backup::backup(
            &repo,
            vec![input],
            &ferry_archive::BackupOptions::new("vm"),
            std::sync::Arc::new(ferry_archive::Progress::default()),
        )
        .await
        .unwrap();
        let out = dir.path().join("restored.raw");
        ferry_archive::restore::restore(
            &repo,
            &m,
            0,
            &ferry_archive::restore::Target::File(out.clone()),
            4,
            std::sync::Arc::new(ferry_archive::Progress::default()),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }

    #[test]
    fn other_destinations_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let plan = ferry_api::Plan::from_toml(
            "name = \"n\"\nschedule = \"0 0 1 1 *\"\n[vcenter]\nurl = \"https://vc\"\ncredential = \"vc\"\n\
             trust_on_first_use = true\n[vms]\nall = true\n[destination]\nurl = \"/srv/repo\"\n",
        )
        .unwrap();
        let push = ferry_api::v1::PlanPush {
            plan,
            credentials: Default::default(),
        };
        let (plan, creds) = with_node_identity(dir.path(), &push);
        assert!(plan.destination.credential.is_none() && creds.is_empty());
        assert!(!dir.path().join("tls/node-client.pem").exists());
    }
}
