//! `ferry restore --vcenter`: a restore point back into vSphere, either as a new VM
//! (`--new-vm NAME --datastore DS`: every disk uploaded, then the VM registered) or one disk
//! as a monolithicFlat pair at a datastore path (`--to-datastore "[ds] dir/name.vmdk"`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use ferry_archive::{Manifest, Progress, Repository};
use ferry_vsphere::{DatastorePath, VmRestoreOptions};
use serde::Serialize;

use crate::output::{human_bytes, Reporter};
use crate::RestoreArgs;

#[derive(Debug, Serialize)]
struct Restored {
    point: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm: Option<String>,
    disks: Vec<String>,
    bytes: u64,
}

pub(crate) async fn run(
    repo: &Repository,
    m: &Manifest,
    a: &RestoreArgs,
    rep: &Reporter,
) -> anyhow::Result<ExitCode> {
    let v = &a.vsphere;
    let url = v.vcenter.as_deref().context("--vcenter is required")?;
    if v.new_vm.is_none() && v.to_datastore.is_none() {
        bail!("say where to restore in vSphere: --new-vm NAME --datastore DS, or --to-datastore \"[ds] dir/name.vmdk\"");
    }
    let client = crate::vcenter::connect(url, &v.conn).await?;
    let progress = Arc::new(Progress::default());
    let bar = rep.progress_bar(progress.clone(), "restore", m.total_size());
    let res = async {
        if let Some(name) = &v.new_vm {
            let ds = v.datastore.as_deref().context("--datastore is required")?;
            let mut o = VmRestoreOptions::new(name, ds);
            o.datacenter = v.datacenter.clone();
            o.compute = v.compute.clone();
            o.power_on = v.power_on;
            let r = ferry_vsphere::restore_vm(&client, repo, m, &o, progress.clone()).await?;
            Ok::<_, anyhow::Error>(Restored {
                point: m.id.clone(),
                vm: Some(r.vm.value),
                disks: r.disks,
                bytes: r.bytes,
            })
        } else {
            let path = v
                .to_datastore
                .as_deref()
                .context("--to-datastore is required")?;
            let target = DatastorePath::parse(path)?;
            let disk = crate::disk_index(m, a.disk.as_deref())?;
            let dc = match &v.datacenter {
                Some(d) => d.clone(),
                None => m
                    .meta
                    .get("datacenter")
                    .cloned()
                    .filter(|d| !d.is_empty())
                    .context("the restore point does not name a datacenter: pass --datacenter")?,
            };
            let bytes = ferry_vsphere::restore_disk_to_datastore(
                &client,
                repo,
                m,
                disk,
                &dc,
                &target,
                progress.clone(),
            )
            .await?;
            Ok(Restored {
                point: m.id.clone(),
                vm: None,
                disks: vec![target.to_string()],
                bytes,
            })
        }
    }
    .await;
    bar.finish();
    if let Err(e) = client.logout().await {
        tracing::debug!(error = %e, "logout failed");
    }
    let r = res?;
    rep.result(&r, || {
        let what = match &r.vm {
            Some(vm) => format!("as VM {} ({vm})", v.new_vm.as_deref().unwrap_or_default()),
            None => "to the datastore".into(),
        };
        format!(
            "restored {} {what}: {} uploaded\n{}",
            r.point,
            human_bytes(r.bytes),
            r.disks
                .iter()
                .map(|d| format!("  {d}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    Ok(ExitCode::SUCCESS)
}
