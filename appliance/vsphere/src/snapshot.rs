//! Snapshots (create with quiesce fallback, remove, stale cleanup) and CBT (enable,
//! `QueryChangedDiskAreas` into the engine's changed-extent map).

use std::time::Duration;

use ferry_archive::ChangedExtents;

use crate::client::{shape, Client};
use crate::error::{Result, VsphereError};
use crate::soap::{el, MoRef};

/// Name prefix of every snapshot Ferry takes; anything with it left over is stale.
pub const SNAPSHOT_PREFIX: &str = "ferry-";

/// A snapshot that was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenSnapshot {
    /// The snapshot.
    pub snapshot: MoRef,
    /// Its name.
    pub name: String,
    /// True when quiesced; false when crash-consistent (asked for, or a fallback).
    pub quiesced: bool,
    /// Why quiescing was not used, when it was asked for and failed.
    pub quiesce_error: Option<String>,
}

impl Client {
    /// `CreateSnapshot_Task` without memory. With `quiesce`, a quiescing failure falls back
    /// to a crash-consistent snapshot, reported in the result.
    pub async fn create_snapshot(
        &self,
        vm: &MoRef,
        name: &str,
        description: &str,
        quiesce: bool,
        timeout: Duration,
    ) -> Result<TakenSnapshot> {
        let attempt = |q: bool| async move {
            let params = format!(
                "{}{}{}<memory>false</memory><quiesce>{q}</quiesce>",
                vm.xml("_this"),
                el("name", name),
                el("description", description)
            );
            let task = self.start_task("CreateSnapshot_Task", &params).await?;
            let r = self
                .wait_task(&task, "CreateSnapshot_Task", timeout, |_| {})
                .await?;
            r.as_ref()
                .and_then(MoRef::from_node)
                .ok_or_else(|| shape("CreateSnapshot_Task", "no snapshot in the task result"))
        };
        if quiesce {
            match attempt(true).await {
                Ok(s) => {
                    return Ok(TakenSnapshot {
                        snapshot: s,
                        name: name.to_string(),
                        quiesced: true,
                        quiesce_error: None,
                    })
                }
                Err(e @ VsphereError::Fault { .. }) => {
                    tracing::warn!(vm = %vm, error = %e, "quiesced snapshot failed; taking a crash-consistent one");
                    let s = attempt(false).await?;
                    return Ok(TakenSnapshot {
                        snapshot: s,
                        name: name.to_string(),
                        quiesced: false,
                        quiesce_error: Some(e.to_string()),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(TakenSnapshot {
            snapshot: attempt(false).await?,
            name: name.to_string(),
            quiesced: false,
            quiesce_error: None,
        })
    }

    /// `RemoveSnapshot_Task` (children kept, disks consolidated).
    pub async fn remove_snapshot(&self, snapshot: &MoRef, timeout: Duration) -> Result<()> {
        let params = format!(
            "{}<removeChildren>false</removeChildren><consolidate>true</consolidate>",
            snapshot.xml("_this")
        );
        let task = self.start_task("RemoveSnapshot_Task", &params).await?;
        self.wait_task(&task, "RemoveSnapshot_Task", timeout, |_| {})
            .await
            .map(|_| ())
    }

    /// Removes every snapshot of `vm` whose name starts with [`SNAPSHOT_PREFIX`] (left by
    /// an earlier run that crashed or could not clean up); returns their names.
    pub async fn remove_stale_snapshots(
        &self,
        vm: &MoRef,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let info = self.vm_info(vm).await?;
        let mut removed = Vec::new();
        for s in info.all_snapshots() {
            if s.name.starts_with(SNAPSHOT_PREFIX) {
                tracing::warn!(vm = %info.name, snapshot = %s.name, "removing a stale Ferry snapshot");
                self.remove_snapshot(&s.snapshot, timeout).await?;
                removed.push(s.name.clone());
            }
        }
        Ok(removed)
    }

    /// Turns on changed block tracking (`ReconfigVM_Task`). It takes effect for disks at
    /// the next snapshot, power cycle or stun.
    pub async fn enable_cbt(&self, vm: &MoRef, timeout: Duration) -> Result<()> {
        let params = format!(
            "{}<spec><changeTrackingEnabled>true</changeTrackingEnabled></spec>",
            vm.xml("_this")
        );
        let task = self.start_task("ReconfigVM_Task", &params).await?;
        self.wait_task(&task, "ReconfigVM_Task", timeout, |_| {})
            .await
            .map(|_| ())
    }

    /// `QueryChangedDiskAreas` from offset 0 until `capacity` is covered. `change_id` `*`
    /// gives the allocated areas.
    pub async fn query_changed_areas(
        &self,
        vm: &MoRef,
        snapshot: &MoRef,
        device_key: i32,
        capacity: u64,
        change_id: &str,
    ) -> Result<ChangedExtents> {
        let mut ranges = Vec::new();
        let mut start: u64 = 0;
        while start < capacity {
            let params = format!(
                "{}{}{}{}{}",
                vm.xml("_this"),
                snapshot.xml("snapshot"),
                el("deviceKey", &device_key.to_string()),
                el("startOffset", &start.to_string()),
                el("changeId", change_id)
            );
            let r = self.invoke("QueryChangedDiskAreas", &params).await?;
            let rv = r
                .child("returnval")
                .ok_or_else(|| shape("QueryChangedDiskAreas", "no returnval"))?;
            let so: u64 = rv.parse_at(&["startOffset"]).unwrap_or(start);
            let len: u64 = rv
                .parse_at(&["length"])
                .ok_or_else(|| shape("QueryChangedDiskAreas", "no length"))?;
            for a in rv.children_named("changedArea") {
                let (Some(s), Some(l)) = (
                    a.parse_at::<u64>(&["start"]),
                    a.parse_at::<u64>(&["length"]),
                ) else {
                    return Err(shape(
                        "QueryChangedDiskAreas",
                        "changedArea without start/length",
                    ));
                };
                let end = s.checked_add(l).filter(|e| *e <= capacity).ok_or_else(|| {
                    shape(
                        "QueryChangedDiskAreas",
                        "changed area past the end of the disk",
                    )
                })?;
                ranges.push(s..end);
            }
            let next = so.saturating_add(len);
            // The answer must move forward, or a broken server would loop forever.
            if next <= start {
                return Err(shape("QueryChangedDiskAreas", "answer does not advance"));
            }
            start = next;
        }
        Ok(ChangedExtents::new(ranges))
    }
}
