//! The plan job: what one run of a backup plan does, for the agent (and any other caller).
//!
//! # What this crate owns
//! - selecting the plan's VMs in the inventory: names, `*`/`?` globs, inventory folders
//!   (`/DC/vm/sub`), vSphere tags (`tag` or `category/tag`, through the vAPI REST API), or
//!   all, minus exclusions; a tag that does not exist fails the job, naming it;
//! - opening the plan's storage with the credential pushed with the plan (no environment),
//!   creating the repository when the location is empty and the plan allows it;
//! - backing each VM up with [`ferry_vsphere::backup_vm`] (snapshot, CBT incremental
//!   against the VM's latest restore point where possible, datastore HTTPS, snapshot always
//!   removed), `parallel_vms` at a time; a failing VM does not stop the others;
//! - retention per VM (PBS rules) and verifying the new restore points when asked;
//! - the per-VM result: point, bytes read, new and stored, duration, error.
//!
//! It does not schedule, persist or report anything: the agent does. vCenter trust is the
//! plan's thumbprint or CA, or trust on first use kept in the caller's directory when the
//! plan asks for it explicitly; a plan with none (stored before this was required) fails
//! before anything is sent to vCenter.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::plan::{glob_match, VcenterTrust};
use ferry_api::v1::{Credential, ProgressEvent, VmResult};
use ferry_api::Plan;
use ferry_archive::prune::KeepOptions;
use ferry_archive::{ArchiveError, Progress, Repository};
use ferry_storage::{Secrets, StoreOptions};
use ferry_vsphere::job::DiskRead;
use ferry_vsphere::{Client, ConnectOptions, Credentials, Trust, VmBackupOptions, VmSelector};
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// What a job did, besides per-VM results.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per VM, in selection order.
    pub vms: Vec<VmResult>,
    /// Restore points removed by retention.
    pub pruned: Vec<String>,
    /// Verify result, when asked.
    pub verified: Option<bool>,
    /// A job-level error (connection, storage, retention, verify).
    pub error: Option<String>,
}

/// Receives progress events.
pub type Events = Arc<dyn Fn(ProgressEvent) + Send + Sync>;

fn cred<'a>(
    creds: &'a BTreeMap<String, Credential>,
    name: &str,
    field: &str,
) -> Result<&'a Credential, String> {
    creds
        .get(name)
        .ok_or_else(|| format!("{field}: credential {name:?} was not pushed with the plan"))
}

/// Store options from a pushed credential.
pub fn store_options(plan: &Plan, c: Option<&Credential>) -> Result<StoreOptions, String> {
    let mut o = StoreOptions::default();
    if let Some(b) = &plan.options.bwlimit {
        o.bandwidth = ferry_api::plan::parse_rate(b);
    }
    let Some(c) = c else { return Ok(o) };
    let mut s = Secrets {
        password: c.password.clone(),
        ..Secrets::default()
    };
    for (k, v) in &c.secrets {
        match k.as_str() {
            "password" => s.password = Some(v.clone()),
            "key_file" => s.key_file = Some(v.into()),
            "key_passphrase" => s.key_passphrase = Some(v.clone()),
            "known_hosts" => s.known_hosts = Some(v.into()),
            "host_fingerprint" => s.host_fingerprint = Some(v.clone()),
            "accept_new_host_key" => s.accept_new_host_key = matches!(v.as_str(), "1" | "true"),
            "ca_file" => s.ca_file = Some(v.into()),
            "identity_file" => s.client_identity = Some(v.into()),
            "access_key_id" => s.access_key_id = Some(v.clone()),
            "secret_access_key" => s.secret_access_key = Some(v.clone()),
            "session_token" => s.session_token = Some(v.clone()),
            other => return Err(format!("destination credential: unknown secret {other:?}")),
        }
    }
    o.secrets = s;
    Ok(o)
}

async fn open_repo(
    plan: &Plan,
    creds: &BTreeMap<String, Credential>,
) -> Result<Repository, String> {
    let c = match &plan.destination.credential {
        Some(n) => Some(cred(creds, n, "destination.credential")?),
        None => None,
    };
    let opts = store_options(plan, c)?;
    let loc = &plan.destination.url;
    let store = ferry_storage::open_store_with(loc, opts).map_err(|e| e.to_string())?;
    match Repository::open(store.clone()).await {
        Ok(r) => Ok(r),
        Err(ArchiveError::NoRepository(_)) if plan.destination.create => {
            tracing::info!("creating a repository at {}", store.location());
            Repository::init(store, 4 << 20, plan.options.compression_level.unwrap_or(3))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Selects VMs: (label, moref) in inventory order.
pub async fn select_vms(client: &Client, plan: &Plan) -> Result<Vec<(String, String)>, String> {
    let e = |e: ferry_vsphere::VsphereError| e.to_string();
    let vms = client
        .list("VirtualMachine", &["name", "parent"])
        .await
        .map_err(e)?;
    let mut parents: HashMap<String, (String, Option<String>)> = HashMap::new();
    if !plan.vms.folders.is_empty() {
        for kind in ["Folder", "Datacenter"] {
            for o in client.list(kind, &["name", "parent"]).await.map_err(e)? {
                parents.insert(
                    o.obj.value.clone(),
                    (
                        o.text("name").unwrap_or_default().to_string(),
                        o.text("parent").map(str::to_string),
                    ),
                );
            }
        }
    }
    let folder_of = |mut p: Option<String>| {
        let mut names = Vec::new();
        while let Some(id) = p {
            let Some((n, up)) = parents.get(&id) else {
                break;
            };
            if up.is_none() {
                break; // the root folder is not part of inventory paths
            }
            names.push(n.clone());
            p = up.clone();
            if names.len() > 64 {
                break;
            }
        }
        names.reverse();
        format!("/{}", names.join("/"))
    };
    let s = &plan.vms;
    let mut tagged = std::collections::HashSet::new();
    for (tag, refs) in client.vms_with_tags(&s.tags).await.map_err(e)? {
        tracing::info!("plan {}: tag {tag:?} is on {} VMs", plan.name, refs.len());
        tagged.extend(refs.into_iter().map(|r| r.value));
    }
    let mut out = Vec::new();
    for o in vms {
        let name = o.text("name").unwrap_or_default().to_string();
        let folder = folder_of(o.text("parent").map(str::to_string));
        let chosen = s.all
            || tagged.contains(&o.obj.value)
            || s.names.iter().any(|n| n == &name)
            || s.globs.iter().any(|g| glob_match(g, &name))
            || s.folders.iter().any(|f| {
                let f = f.trim_end_matches('/');
                folder == f || folder.starts_with(&format!("{f}/"))
            });
        let excluded = s.exclude.iter().any(|x| glob_match(x, &name));
        if chosen && !excluded {
            out.push((name, o.obj.value));
        }
    }
    for n in &s.names {
        if !out.iter().any(|(name, _)| name == n) && !s.exclude.iter().any(|x| glob_match(x, n)) {
            // A named VM that is missing is a failure of that VM, reported as such.
            out.push((n.clone(), String::new()));
        }
    }
    Ok(out)
}

fn trust(plan: &Plan, trust_dir: &Path) -> Result<Trust, String> {
    Ok(match plan.vcenter.trust().map_err(|e| e.to_string())? {
        VcenterTrust::Thumbprint(t) => Trust::Thumbprint(t.to_string()),
        VcenterTrust::Ca(pem) => Trust::CaPem(pem.as_bytes().to_vec()),
        VcenterTrust::TrustOnFirstUse => {
            let h = hex::encode(Sha256::digest(plan.vcenter.url.as_bytes()));
            Trust::TrustOnFirstUse(trust_dir.join(format!("vcenter-{}.thumbprint", &h[..16])))
        }
    })
}

async fn one_vm(
    client: &Client,
    repo: &Repository,
    plan: &Plan,
    label: &str,
    moref: &str,
    events: &Events,
) -> VmResult {
    let started = Instant::now();
    let mut r = VmResult {
        vm: label.to_string(),
        ..VmResult::default()
    };
    if moref.is_empty() {
        r.error = Some(format!("no VM named {label:?} in the inventory"));
        return r;
    }
    let mut opts = VmBackupOptions::new(VmSelector::MoRef(moref.to_string()));
    opts.group = Some(label.to_string());
    opts.quiesce = plan.options.quiesce;
    opts.enable_cbt = plan.options.enable_cbt;
    opts.use_cbt = plan.options.cbt;
    opts.in_flight = plan.options.parallel_disks;
    opts.compression_level = plan.options.compression_level;
    let progress = Arc::new(Progress::default());
    let ticker = {
        let (p, ev, vm) = (progress.clone(), events.clone(), label.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = p.snapshot();
                ev(ProgressEvent::Progress {
                    vm: vm.clone(),
                    total: s.total,
                    done: s.done,
                    read: s.read,
                    stored: s.stored,
                });
            }
        })
    };
    let res = ferry_vsphere::backup_vm(client, repo, &opts, progress).await;
    ticker.abort();
    r.duration_seconds = started.elapsed().as_secs_f64();
    match res {
        Ok(rep) => {
            let st = rep.manifest.stats();
            r.ok = true;
            r.point = Some(rep.manifest.id.clone());
            r.bytes_read = st.read;
            r.bytes_new = st.new;
            r.bytes_stored = st.stored;
            r.notes = rep.notes.clone();
            for d in &rep.disks {
                match &d.read {
                    DiskRead::Incremental { changed_bytes, .. } => {
                        r.incremental = true;
                        r.notes.push(format!(
                            "{}: CBT incremental, {changed_bytes} bytes changed",
                            d.name
                        ));
                    }
                    // The report's notes already say why a read was full.
                    DiskRead::Full { .. } => {}
                }
            }
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// Runs one job of `plan`. Never fails as a whole: everything that goes wrong is in the
/// [`Outcome`].
pub async fn run(
    plan: &Plan,
    creds: &BTreeMap<String, Credential>,
    trust_dir: &Path,
    events: Events,
) -> Outcome {
    let mut out = Outcome::default();
    // First: no password goes anywhere without a trust rule.
    let trust = match trust(plan, trust_dir) {
        Ok(t) => t,
        Err(e) => {
            out.error = Some(format!("plan refused: {e}"));
            return out;
        }
    };
    let vc = match cred(creds, &plan.vcenter.credential, "vcenter.credential") {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let repo = match open_repo(plan, creds).await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(format!("storage {}: {e}", plan.destination.url));
            return out;
        }
    };
    let opts = ConnectOptions::new(
        &plan.vcenter.url,
        Credentials::new(
            vc.user.as_deref().unwrap_or_default(),
            vc.password.as_deref().unwrap_or_default(),
        ),
        trust,
    );
    let client = match Client::connect(&opts).await {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("vCenter {}: {e}", plan.vcenter.url));
            return out;
        }
    };
    let selected = match select_vms(&client, plan).await {
        Ok(v) => v,
        Err(e) => {
            out.error = Some(format!("listing VMs: {e}"));
            let _ = client.logout().await;
            return out;
        }
    };
    tracing::info!(
        "plan {}: {} VMs selected: {}",
        plan.name,
        selected.len(),
        selected
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (client_ref, repo_ref, events_ref) = (&client, &repo, &events);
    let results: Vec<VmResult> = futures::stream::iter(selected.clone())
        .map(move |(label, moref)| {
            async move {
                let r = one_vm(client_ref, repo_ref, plan, &label, &moref, events_ref).await;
                match &r.error {
                    None => tracing::info!(
                        "plan {}: VM {label} backed up to {} ({} bytes read, {} new, {} stored, {:.1}s)",
                        plan.name,
                        r.point.as_deref().unwrap_or("?"),
                        r.bytes_read,
                        r.bytes_new,
                        r.bytes_stored,
                        r.duration_seconds
                    ),
                    Some(e) => tracing::warn!("plan {}: VM {label} failed: {e}", plan.name),
                }
                events_ref(ProgressEvent::VmDone(r.clone()));
                r
            }
        })
        .buffered(plan.options.parallel_vms.max(1))
        .collect()
        .await;
    if let Err(e) = client.logout().await {
        tracing::debug!("logout: {e}");
    }
    let mut errors = Vec::new();
    if plan.retention.any() {
        let keep = KeepOptions {
            last: plan.retention.keep_last,
            hourly: plan.retention.keep_hourly,
            daily: plan.retention.keep_daily,
            weekly: plan.retention.keep_weekly,
            monthly: plan.retention.keep_monthly,
            yearly: plan.retention.keep_yearly,
        };
        for r in results.iter().filter(|r| r.ok) {
            match ferry_archive::prune::prune(&repo, Some(&r.vm), &keep, false).await {
                Ok(d) => out
                    .pruned
                    .extend(d.into_iter().filter(|d| !d.keep).map(|d| d.id)),
                Err(e) => errors.push(format!("retention for {}: {e}", r.vm)),
            }
        }
    }
    if plan.verify {
        let ids: Vec<String> = results.iter().filter_map(|r| r.point.clone()).collect();
        if !ids.is_empty() {
            match ferry_archive::verify::verify(&repo, &ids, 4, Arc::new(Progress::default())).await
            {
                Ok(v) => {
                    out.verified = Some(v.ok());
                    if !v.ok() {
                        errors.push(format!("verify found {} damaged chunks", v.damaged.len()));
                    }
                }
                Err(e) => {
                    out.verified = Some(false);
                    errors.push(format!("verify: {e}"));
                }
            }
        }
    }
    if !errors.is_empty() {
        out.error = Some(errors.join("; "));
    }
    out.vms = results;
    out
}
