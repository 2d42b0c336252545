//! Restore a whole VM as a new VM: its disks go to a datastore through `/folder` PUT
//! (monolithicFlat pairs, as [`restore_disk_to_datastore`] writes them), then
//! `CreateVM_Task` registers a VM that uses those files, with the CPU count, memory,
//! firmware, guest OS and disk controllers the backup recorded.
//!
//! This is "a new VM registered from those files" rather than an `ImportVApp` + NFC upload:
//! it needs only the datastore HTTP access the backup already uses, and works on ESXi and
//! vCenter alike. Networks are not recreated (backups do not record port groups), so the
//! VM comes back without a NIC; the admin connects it to the right network, as Veeam asks
//! in its restore wizard. The restored VM gets a new BIOS and instance UUID.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_archive::{Manifest, Progress, Repository};

use crate::client::{shape, Client};
use crate::datastore::DatastorePath;
use crate::error::{Result, VsphereError};
use crate::inventory::VmSelector;
use crate::job::restore_disk_to_datastore;
use crate::soap::{el, MoRef};

/// Where and how to restore a VM.
#[derive(Debug, Clone)]
pub struct VmRestoreOptions {
    /// Name of the new VM; refused if a VM of that name exists.
    pub name: String,
    /// Target datastore name.
    pub datastore: String,
    /// Datacenter name; needed only when there are several.
    pub datacenter: Option<String>,
    /// Compute resource (host or cluster) name; the datacenter's first when `None`.
    pub compute: Option<String>,
    /// Power the VM on after it is registered.
    pub power_on: bool,
    /// Timeout of each vSphere task.
    pub task_timeout: Duration,
}

impl VmRestoreOptions {
    /// Defaults: first datacenter and compute resource, powered off, 30 min task timeout.
    pub fn new(name: &str, datastore: &str) -> Self {
        VmRestoreOptions {
            name: name.to_string(),
            datastore: datastore.to_string(),
            datacenter: None,
            compute: None,
            power_on: false,
            task_timeout: Duration::from_secs(1800),
        }
    }
}

/// What a VM restore did.
#[derive(Debug, Clone)]
pub struct VmRestoreReport {
    /// The new VM.
    pub vm: MoRef,
    /// Datastore paths of the restored disk descriptors, in manifest order.
    pub disks: Vec<String>,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// The hardware a restore recreates, from a restore point's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hardware {
    guest_id: String,
    num_cpu: u32,
    memory_mb: u64,
    firmware: Option<String>,
    /// Per disk: controller type and bus number.
    disks: Vec<(String, i32)>,
}

/// SCSI controller types vSphere accepts in a config spec; anything else (IDE, SATA,
/// NVMe, unknown) is restored on a paravirtual SCSI controller.
const SCSI_TYPES: &[&str] = &[
    "ParaVirtualSCSIController",
    "VirtualLsiLogicController",
    "VirtualLsiLogicSASController",
    "VirtualBusLogicController",
];

fn hardware(m: &Manifest) -> Hardware {
    let get = |k: &str| m.meta.get(k).filter(|v| !v.is_empty());
    Hardware {
        guest_id: get("vm.guest_id")
            .cloned()
            .unwrap_or_else(|| "otherGuest64".into()),
        num_cpu: get("vm.num_cpu")
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1),
        memory_mb: get("vm.memory_mb")
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1024),
        firmware: get("vm.firmware").cloned(),
        disks: m
            .disks
            .iter()
            .map(|d| {
                let ty = d
                    .meta
                    .get("controller_type")
                    .filter(|t| SCSI_TYPES.contains(&t.as_str()))
                    .cloned()
                    .unwrap_or_else(|| "ParaVirtualSCSIController".into());
                let bus = d
                    .meta
                    .get("controller_bus")
                    .and_then(|b| b.parse().ok())
                    .filter(|b| (0..4).contains(b))
                    .unwrap_or(0);
                (ty, bus)
            })
            .collect(),
    }
}

/// The `config` element of `CreateVM_Task`, fields in the schema's order (vCenter's
/// deserializer is strict about it).
fn config_spec(name: &str, ds: &str, hw: &Hardware, disks: &[(String, u64)]) -> String {
    let mut controllers: BTreeMap<i32, (&str, i32)> = BTreeMap::new();
    let mut devices = String::new();
    let mut next_unit: BTreeMap<i32, i32> = BTreeMap::new();
    for (i, ((ty, bus), (path, size))) in hw.disks.iter().zip(disks).enumerate() {
        // One controller per bus; the first disk's type wins for a shared bus.
        let ckey = -100 - bus;
        controllers.entry(ckey).or_insert((ty, *bus));
        let unit = next_unit.entry(ckey).or_insert(0);
        if *unit == 7 {
            *unit += 1; // the controller's own SCSI id
        }
        let key = -200 - i as i64;
        devices.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\"><key>{key}</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}</backing><controllerKey>{ckey}</controllerKey><unitNumber>{}</unitNumber><capacityInKB>{}</capacityInKB></device></deviceChange>",
            el("fileName", path),
            el("diskMode", "persistent"),
            *unit,
            size.div_ceil(1024)
        ));
        *unit += 1;
    }
    let mut ctrl = String::new();
    for (key, (ty, bus)) in &controllers {
        ctrl.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"{ty}\"><key>{key}</key><busNumber>{bus}</busNumber><sharedBus>noSharing</sharedBus></device></deviceChange>"
        ));
    }
    let firmware = hw
        .firmware
        .as_deref()
        .filter(|f| matches!(*f, "bios" | "efi"))
        .map(|f| el("firmware", f))
        .unwrap_or_default();
    format!(
        "<config>{}{}<files>{}</files><numCPUs>{}</numCPUs><memoryMB>{}</memoryMB>{ctrl}{devices}{firmware}</config>",
        el("name", name),
        el("guestId", &hw.guest_id),
        el("vmPathName", &format!("[{ds}] {name}/{name}.vmx")),
        hw.num_cpu,
        hw.memory_mb,
    )
}

/// A datacenter: its name, the object, and its `vmFolder`.
#[derive(Debug)]
struct Dc {
    name: String,
    obj: MoRef,
    vm_folder: MoRef,
}

/// The named datacenter, or the only one.
async fn datacenter(client: &Client, want: Option<&str>) -> Result<Dc> {
    let dcs = client.list("Datacenter", &["name", "vmFolder"]).await?;
    let mut found: Vec<Dc> = dcs
        .into_iter()
        .filter_map(|o| {
            Some(Dc {
                name: o.text("name")?.to_string(),
                vm_folder: o.props.get("vmFolder").and_then(MoRef::from_node)?,
                obj: o.obj,
            })
        })
        .collect();
    if let Some(w) = want {
        found.retain(|d| d.name == w);
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(VsphereError::NotFound(format!(
            "datacenter {}",
            want.unwrap_or("(any)")
        ))),
        _ => Err(VsphereError::Invalid(format!(
            "there are {} datacenters ({}): name one",
            found.len(),
            found
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The resource pool of the named (or first) compute resource in datacenter `dc`.
async fn resource_pool(client: &Client, dc: &str, want: Option<&str>) -> Result<MoRef> {
    let crs = client
        .list("ComputeResource", &["name", "resourcePool", "parent"])
        .await?;
    let mut names = Vec::new();
    for o in &crs {
        let name = o.text("name").unwrap_or("");
        if want.is_some_and(|w| w != name) {
            continue;
        }
        let Some(pool) = o.props.get("resourcePool").and_then(MoRef::from_node) else {
            continue;
        };
        let in_dc = match o.props.get("parent").and_then(MoRef::from_node) {
            Some(p) => client.datacenter_name_of(p).await? == dc,
            None => false,
        };
        if in_dc {
            return Ok(pool);
        }
        names.push(name.to_string());
    }
    Err(VsphereError::NotFound(match want {
        Some(w) => format!("compute resource {w} in datacenter {dc}"),
        None => format!("a host or cluster in datacenter {dc}"),
    }))
}

/// Restores every disk of `manifest` to datastore `opts.datastore` and registers a new VM
/// named `opts.name` that uses them. On failure the files uploaded so far are deleted.
pub async fn restore_vm(
    client: &Client,
    repo: &Repository,
    manifest: &Manifest,
    opts: &VmRestoreOptions,
    progress: Arc<Progress>,
) -> Result<VmRestoreReport> {
    if opts.name.is_empty() || opts.name.contains(['/', '[', ']']) {
        return Err(VsphereError::Invalid(format!(
            "{:?} cannot be a VM name here (no '/', '[' or ']')",
            opts.name
        )));
    }
    if manifest.disks.is_empty() {
        return Err(VsphereError::Invalid(format!(
            "restore point {} has no disks",
            manifest.id
        )));
    }
    match client.find_vm(&VmSelector::Name(opts.name.clone())).await {
        Ok(vm) => {
            return Err(VsphereError::Invalid(format!(
                "a VM named {:?} already exists ({vm}); choose another name",
                opts.name
            )))
        }
        Err(VsphereError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let dc = datacenter(client, opts.datacenter.as_deref()).await?;
    let pool = resource_pool(client, &dc.name, opts.compute.as_deref()).await?;
    let hw = hardware(manifest);
    let dir = DatastorePath {
        datastore: opts.datastore.clone(),
        path: opts.name.clone(),
    };
    make_directory(client, &dc, &dir).await?;
    let res = async {
        let mut disks = Vec::new();
        let mut bytes = 0;
        for (i, d) in manifest.disks.iter().enumerate() {
            let file = if i == 0 {
                format!("{}.vmdk", opts.name)
            } else {
                format!("{}_{i}.vmdk", opts.name)
            };
            let target = DatastorePath {
                datastore: opts.datastore.clone(),
                path: format!("{}/{file}", opts.name),
            };
            bytes += restore_disk_to_datastore(
                client,
                repo,
                manifest,
                i,
                &dc.name,
                &target,
                progress.clone(),
            )
            .await?;
            disks.push((target.to_string(), d.size));
        }
        let params = format!(
            "{}{}{}",
            dc.vm_folder.xml("_this"),
            config_spec(&opts.name, &opts.datastore, &hw, &disks),
            pool.xml("pool")
        );
        let task = client.start_task("CreateVM_Task", &params).await?;
        let vm = client
            .wait_task(&task, "CreateVM_Task", opts.task_timeout, |_| {})
            .await?
            .as_ref()
            .and_then(MoRef::from_node)
            .ok_or_else(|| shape("CreateVM_Task", "no VM in the task result"))?;
        Ok::<_, VsphereError>((vm, disks, bytes))
    }
    .await;
    let (vm, disks, bytes) = match res {
        Ok(r) => r,
        Err(e) => {
            if let Err(c) = delete_path(client, &dc, &dir, opts.task_timeout).await {
                tracing::warn!(dir = %dir, error = %c, "could not remove the partly restored files");
            }
            return Err(e);
        }
    };
    tracing::info!(point = %manifest.id, vm = %vm, name = %opts.name, "VM restored");
    if opts.power_on {
        let task = client
            .start_task("PowerOnVM_Task", &vm.xml("_this"))
            .await?;
        client
            .wait_task(&task, "PowerOnVM_Task", opts.task_timeout, |_| {})
            .await?;
    }
    Ok(VmRestoreReport {
        vm,
        disks: disks.into_iter().map(|d| d.0).collect(),
        bytes,
    })
}

fn file_manager(client: &Client) -> Result<MoRef> {
    client
        .service_content()
        .file_manager
        .clone()
        .ok_or_else(|| VsphereError::Invalid("the server has no FileManager".into()))
}

async fn make_directory(client: &Client, dc: &Dc, dir: &DatastorePath) -> Result<()> {
    let fm = file_manager(client)?;
    let params = format!(
        "{}{}{}<createParentDirectories>true</createParentDirectories>",
        fm.xml("_this"),
        el("name", &dir.to_string()),
        dc.obj.xml("datacenter"),
    );
    match client.invoke("MakeDirectory", &params).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("FileAlreadyExists") => Err(VsphereError::Invalid(
            format!("{dir} already exists on the datastore; choose another VM name"),
        )),
        Err(e) => Err(e),
    }
}

async fn delete_path(client: &Client, dc: &Dc, p: &DatastorePath, timeout: Duration) -> Result<()> {
    let fm = file_manager(client)?;
    let params = format!(
        "{}{}{}",
        fm.xml("_this"),
        el("name", &p.to_string()),
        dc.obj.xml("datacenter")
    );
    let task = client
        .start_task("DeleteDatastoreFile_Task", &params)
        .await?;
    client
        .wait_task(&task, "DeleteDatastoreFile_Task", timeout, |_| {})
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_archive::DiskEntry;

    fn manifest(meta: &[(&str, &str)], disks: &[&[(&str, &str)]]) -> Manifest {
        Manifest {
            format: 1,
            id: "p".into(),
            group: "g".into(),
            created: 0,
            finished: 0,
            parent: None,
            chunk_size: 1 << 22,
            compression: "zstd".into(),
            compression_level: 3,
            disks: disks
                .iter()
                .map(|m| DiskEntry {
                    name: "d".into(),
                    size: 1 << 20,
                    index: String::new(),
                    index_sha256: String::new(),
                    change_id: None,
                    stats: Default::default(),
                    meta: m
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                })
                .collect(),
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn hardware_from_metadata_with_safe_defaults() {
        let m = manifest(
            &[
                ("vm.guest_id", "ubuntu64Guest"),
                ("vm.num_cpu", "4"),
                ("vm.memory_mb", "8192"),
                ("vm.firmware", "efi"),
            ],
            &[
                &[
                    ("controller_type", "VirtualLsiLogicController"),
                    ("controller_bus", "0"),
                ],
                &[
                    ("controller_type", "VirtualIDEController"),
                    ("controller_bus", "9"),
                ],
            ],
        );
        let hw = hardware(&m);
        assert_eq!(hw.guest_id, "ubuntu64Guest");
        assert_eq!((hw.num_cpu, hw.memory_mb), (4, 8192));
        assert_eq!(hw.firmware.as_deref(), Some("efi"));
        assert_eq!(hw.disks[0], ("VirtualLsiLogicController".into(), 0));
        assert_eq!(hw.disks[1], ("ParaVirtualSCSIController".into(), 0));

        let bare = hardware(&manifest(&[("vm.num_cpu", "x")], &[&[]]));
        assert_eq!((bare.num_cpu, bare.memory_mb), (1, 1024));
        assert_eq!(bare.guest_id, "otherGuest64");
    }

    #[test]
    fn config_spec_skips_unit_seven_and_escapes() {
        let hw = Hardware {
            guest_id: "otherGuest64".into(),
            num_cpu: 2,
            memory_mb: 2048,
            firmware: Some("bios".into()),
            disks: vec![("ParaVirtualSCSIController".into(), 0); 9],
        };
        let disks: Vec<(String, u64)> = (0..9)
            .map(|i| (format!("[ds] a&b/d{i}.vmdk"), 1 << 20))
            .collect();
        let x = config_spec("a&b", "ds", &hw, &disks);
        assert!(x.contains("<name>a&amp;b</name>"), "{x}");
        assert_eq!(x.matches("<unitNumber>7</unitNumber>").count(), 0);
        assert!(x.contains("<unitNumber>9</unitNumber>"));
        assert_eq!(x.matches("ParaVirtualSCSIController").count(), 1);
        // firmware follows deviceChange in the schema's order
        assert!(x.find("<firmware>").unwrap() > x.rfind("</deviceChange>").unwrap());
        crate::xml::parse(
            format!("<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{x}</r>")
                .as_bytes(),
        )
        .unwrap();
    }
}
