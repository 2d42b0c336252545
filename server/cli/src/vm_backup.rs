//! `ferry backup --vcenter`: VM-level backups through vSphere. Each VM is snapshotted, its
//! disks are read at the snapshot over datastore HTTPS (CBT incremental against the group's
//! latest point where possible), and the snapshot is always removed. A failing VM does not
//! stop the others; the exit status is 1 when any failed.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use ferry_archive::{Progress, Repository};
use ferry_vsphere::job::DiskRead;
use ferry_vsphere::{VmBackupOptions, VmSelector};
use serde::Serialize;

use crate::output::{backup_summary, Reporter};
use crate::BackupArgs;

#[derive(Debug, Serialize)]
struct VmResult {
    vm: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    point: Option<ferry_archive::Manifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    notes: Vec<String>,
    bytes_fetched: u64,
}

fn selector(s: &str) -> VmSelector {
    if let Some(v) = s.strip_prefix("moref:") {
        VmSelector::MoRef(v.to_string())
    } else if let Some(v) = s.strip_prefix("uuid:") {
        VmSelector::InstanceUuid(v.to_string())
    } else if let Some(v) = s.strip_prefix("path:") {
        VmSelector::InventoryPath(v.to_string())
    } else {
        VmSelector::Name(s.to_string())
    }
}

pub async fn run(repo: &Repository, a: &BackupArgs, rep: &Reporter) -> anyhow::Result<ExitCode> {
    let v = &a.vsphere;
    let url = v.vcenter.as_deref().context("--vcenter is required")?;
    let client = crate::vcenter::connect(url, &v.conn).await?;
    let selectors: Vec<(String, VmSelector)> = if v.all {
        client
            .list("VirtualMachine", &["name"])
            .await?
            .into_iter()
            .map(|o| (o.obj.value.clone(), VmSelector::MoRef(o.obj.value)))
            .collect()
    } else if v.vms.is_empty() {
        bail!("name the VMs to back up with --vm NAME, or pass --all");
    } else {
        v.vms.iter().map(|s| (s.clone(), selector(s))).collect()
    };
    let mut results = Vec::new();
    for (label, sel) in selectors {
        let mut opts = VmBackupOptions::new(sel);
        opts.group = a.name.clone().filter(|_| v.vms.len() == 1);
        opts.quiesce = v.quiesce;
        opts.enable_cbt = v.enable_cbt;
        opts.use_cbt = !v.no_cbt;
        if let Some(cs) = &a.chunk_size {
            opts.chunk_size = Some(crate::chunk_size(cs)?);
        }
        opts.compression_level = a.compression_level;
        let progress = Arc::new(Progress::default());
        let bar = rep.progress_bar(progress.clone(), "backup", 0);
        let res = ferry_vsphere::backup_vm(&client, repo, &opts, progress).await;
        bar.finish();
        match res {
            Ok(r) => {
                let mut notes = r.notes.clone();
                for d in &r.disks {
                    notes.push(match &d.read {
                        DiskRead::Full { reason: Some(why) } => {
                            format!("{}: full read ({why})", d.name)
                        }
                        DiskRead::Full { reason: None } => format!("{}: full read", d.name),
                        DiskRead::Incremental { changed_bytes, .. } => {
                            format!("{}: CBT incremental, {changed_bytes} bytes changed", d.name)
                        }
                    });
                }
                if !rep.is_json() {
                    println!("VM {label}: {}", backup_summary(&r.manifest));
                    for n in &notes {
                        println!("  note: {n}");
                    }
                }
                results.push(VmResult {
                    vm: label,
                    ok: true,
                    point: Some(r.manifest),
                    error: None,
                    notes,
                    bytes_fetched: r.bytes_fetched,
                });
            }
            Err(e) => {
                eprintln!("ferry: VM {label} failed: {e}");
                results.push(VmResult {
                    vm: label,
                    ok: false,
                    point: None,
                    error: Some(e.to_string()),
                    notes: Vec::new(),
                    bytes_fetched: 0,
                });
            }
        }
    }
    if let Err(e) = client.logout().await {
        tracing::warn!("logout from {url} failed: {e}");
    }
    if rep.is_json() {
        rep.result(&results, String::new);
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
