//! Inventory: the property collector (through container views), finding VMs, and the typed
//! view of a VM that a backup needs (disks, CBT state, power state, snapshot tree, host,
//! datastore and datacenter names).

use std::collections::BTreeMap;

use crate::client::{shape, Client};
use crate::error::{FaultKind, Result, VsphereError};
use crate::soap::{el, MoRef};
use crate::xml::Node;

/// One object and the properties that were asked for.
#[derive(Debug, Clone)]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// Property path → value node (`<val>`).
    pub props: BTreeMap<String, Node>,
}

impl ObjectContent {
    /// Text of a simple property.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.props.get(path).map(|n| n.text.trim())
    }
}

/// Which VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmSelector {
    /// By display name (must be unique).
    Name(String),
    /// By managed object id (`vm-42`).
    MoRef(String),
    /// By `config.instanceUuid`.
    InstanceUuid(String),
    /// By inventory path (`DC0/vm/folder/name`).
    InventoryPath(String),
}

impl std::fmt::Display for VmSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmSelector::Name(n) => write!(f, "VM named {n:?}"),
            VmSelector::MoRef(m) => write!(f, "VM {m}"),
            VmSelector::InstanceUuid(u) => write!(f, "VM with instance UUID {u}"),
            VmSelector::InventoryPath(p) => write!(f, "VM at {p:?}"),
        }
    }
}

/// A virtual disk of a VM (or of a snapshot's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDisk {
    /// Device key (stable across snapshots; CBT is queried by it).
    pub key: i32,
    /// Label (`Hard disk 1`).
    pub label: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Backing type (`VirtualDiskFlatVer2BackingInfo`, ...).
    pub backing_type: String,
    /// Datastore path of the descriptor (`[ds] vm/disk.vmdk`).
    pub file_name: String,
    /// The backing datastore.
    pub datastore: Option<MoRef>,
    /// CBT change id, when tracking is on.
    pub change_id: Option<String>,
    /// Controller key and unit number.
    pub controller_key: i32,
    /// Unit number on the controller.
    pub unit_number: i32,
    /// The controller's type (`ParaVirtualSCSIController`, `VirtualLsiLogicController`, ...),
    /// empty when the device list does not hold it.
    pub controller_type: String,
    /// The controller's bus number.
    pub controller_bus: i32,
}

/// A node of the snapshot tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotNode {
    /// The snapshot.
    pub snapshot: MoRef,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Creation time (as the server wrote it).
    pub create_time: String,
    /// Whether it was quiesced.
    pub quiesced: bool,
    /// Children.
    pub children: Vec<SnapshotNode>,
}

impl SnapshotNode {
    /// This node and all descendants.
    pub fn flatten<'a>(&'a self, out: &mut Vec<&'a SnapshotNode>) {
        out.push(self);
        for c in &self.children {
            c.flatten(out);
        }
    }
}

/// What a backup needs to know about a VM.
#[derive(Debug, Clone)]
pub struct VmInfo {
    /// The VM.
    pub moref: MoRef,
    /// Display name.
    pub name: String,
    /// vCenter instance UUID.
    pub instance_uuid: String,
    /// BIOS UUID.
    pub bios_uuid: String,
    /// Disks in device order.
    pub disks: Vec<VirtualDisk>,
    /// `config.changeTrackingEnabled`.
    pub cbt_enabled: bool,
    /// `runtime.powerState`.
    pub power_state: String,
    /// `runtime.host`.
    pub host: Option<MoRef>,
    /// Root snapshots.
    pub snapshots: Vec<SnapshotNode>,
    /// The current snapshot.
    pub current_snapshot: Option<MoRef>,
    /// Datacenter name (for datastore URLs).
    pub datacenter: String,
    /// Datastore moref value → name.
    pub datastore_names: BTreeMap<String, String>,
    /// `config.guestId` (`otherGuest64`, ...).
    pub guest_id: String,
    /// `config.hardware.numCPU`.
    pub num_cpu: u32,
    /// `config.hardware.memoryMB`.
    pub memory_mb: u64,
    /// `config.firmware` (`bios` or `efi`).
    pub firmware: String,
}

impl VmInfo {
    /// Every snapshot, depth first.
    pub fn all_snapshots(&self) -> Vec<&SnapshotNode> {
        let mut out = Vec::new();
        for s in &self.snapshots {
            s.flatten(&mut out);
        }
        out
    }
}

/// Properties read for [`VmInfo`].
const VM_PROPS: &[&str] = &[
    "name",
    "config.instanceUuid",
    "config.uuid",
    "config.hardware.device",
    "config.changeTrackingEnabled",
    "config.guestId",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.firmware",
    "runtime.powerState",
    "runtime.host",
    "snapshot",
    "parent",
];

fn prop_spec(kind: &str, paths: &[&str]) -> String {
    let mut s = format!("<propSet>{}<all>false</all>", el("type", kind));
    for p in paths {
        s.push_str(&el("pathSet", p));
    }
    s.push_str("</propSet>");
    s
}

impl Client {
    /// `RetrievePropertiesEx` + `ContinueRetrievePropertiesEx` over `spec_set` (the inner
    /// XML of a `PropertyFilterSpec`).
    pub async fn retrieve(&self, spec_set: &str) -> Result<Vec<ObjectContent>> {
        let pc = self.service_content().property_collector.clone();
        let params = format!(
            "{}<specSet>{spec_set}</specSet><options><maxObjects>500</maxObjects></options>",
            pc.xml("_this")
        );
        let mut out = Vec::new();
        let mut resp = self.invoke("RetrievePropertiesEx", &params).await?;
        // Each page names the next; a hostile server could loop, so pages are bounded.
        for _ in 0..100_000 {
            let Some(rv) = resp.child("returnval") else {
                break;
            };
            for o in rv.children_named("objects") {
                out.push(object_content(o)?);
            }
            let Some(token) = rv.text_at(&["token"]).filter(|t| !t.is_empty()) else {
                break;
            };
            let p = format!("{}{}", pc.xml("_this"), el("token", token));
            resp = self.invoke("ContinueRetrievePropertiesEx", &p).await?;
        }
        Ok(out)
    }

    /// Properties of one object.
    pub async fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent> {
        let spec = format!(
            "{}<objectSet>{}<skip>false</skip></objectSet>",
            prop_spec(&obj.kind, paths),
            obj.xml("obj")
        );
        self.retrieve(&spec)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| VsphereError::NotFound(obj.to_string()))
    }

    /// Properties of every object of `kind` under the root folder, through a container view.
    pub async fn list(&self, kind: &str, paths: &[&str]) -> Result<Vec<ObjectContent>> {
        let sc = self.service_content().clone();
        let vm = sc
            .view_manager
            .ok_or_else(|| VsphereError::Invalid("the server has no ViewManager".into()))?;
        let params = format!(
            "{}{}{}<recursive>true</recursive>",
            vm.xml("_this"),
            sc.root_folder.xml("container"),
            el("type", kind)
        );
        let r = self.invoke("CreateContainerView", &params).await?;
        let view = r
            .child("returnval")
            .and_then(MoRef::from_node)
            .ok_or_else(|| shape("CreateContainerView", "no view"))?;
        let spec = format!(
            "{}<objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>",
            prop_spec(kind, paths),
            view.xml("obj")
        );
        let res = self.retrieve(&spec).await;
        if let Err(e) = self.invoke("DestroyView", &view.xml("_this")).await {
            tracing::debug!(error = %e, "DestroyView failed");
        }
        res
    }

    /// Finds a VM.
    pub async fn find_vm(&self, sel: &VmSelector) -> Result<MoRef> {
        let not_found = || VsphereError::NotFound(sel.to_string());
        match sel {
            VmSelector::MoRef(id) => {
                let m = MoRef::new("VirtualMachine", id);
                match self.properties(&m, &["name"]).await {
                    Ok(o) if o.props.contains_key("name") => Ok(m),
                    Ok(_) => Err(not_found()),
                    Err(e)
                        if matches!(e.fault(), Some(FaultKind::ManagedObjectNotFound { .. })) =>
                    {
                        Err(not_found())
                    }
                    Err(e) => Err(e),
                }
            }
            VmSelector::Name(name) => {
                let all = self.list("VirtualMachine", &["name"]).await?;
                let hits: Vec<_> = all
                    .into_iter()
                    .filter(|o| o.text("name") == Some(name.as_str()))
                    .collect();
                match hits.len() {
                    0 => Err(not_found()),
                    1 => Ok(hits[0].obj.clone()),
                    n => Err(VsphereError::Invalid(format!(
                        "{n} VMs are named {name:?}; select by moref, instance UUID or inventory path"
                    ))),
                }
            }
            VmSelector::InstanceUuid(u) => {
                let all = self
                    .list("VirtualMachine", &["config.instanceUuid"])
                    .await?;
                all.into_iter()
                    .find(|o| {
                        o.text("config.instanceUuid")
                            .is_some_and(|x| x.eq_ignore_ascii_case(u))
                    })
                    .map(|o| o.obj)
                    .ok_or_else(not_found)
            }
            VmSelector::InventoryPath(p) => {
                let si =
                    self.service_content().search_index.clone().ok_or_else(|| {
                        VsphereError::Invalid("the server has no SearchIndex".into())
                    })?;
                let r = self
                    .invoke(
                        "FindByInventoryPath",
                        &format!("{}{}", si.xml("_this"), el("inventoryPath", p)),
                    )
                    .await?;
                r.child("returnval")
                    .and_then(MoRef::from_node)
                    .filter(|m| m.kind == "VirtualMachine")
                    .ok_or_else(not_found)
            }
        }
    }

    /// Reads what a backup needs about a VM.
    pub async fn vm_info(&self, vm: &MoRef) -> Result<VmInfo> {
        let o = self.properties(vm, VM_PROPS).await?;
        let name = o
            .text("name")
            .ok_or_else(|| VsphereError::NotFound(vm.to_string()))?
            .to_string();
        let disks = o
            .props
            .get("config.hardware.device")
            .map(parse_disks)
            .unwrap_or_default();
        let (snapshots, current_snapshot) = match o.props.get("snapshot") {
            Some(s) => (
                s.children_named("rootSnapshotList")
                    .filter_map(parse_snapshot)
                    .collect(),
                s.child("currentSnapshot").and_then(MoRef::from_node),
            ),
            None => (Vec::new(), None),
        };
        let datacenter = match o.props.get("parent").and_then(MoRef::from_node) {
            Some(p) => self.datacenter_of(p).await?,
            None => String::new(),
        };
        let mut datastore_names = BTreeMap::new();
        for d in &disks {
            if let Some(ds) = &d.datastore {
                if !datastore_names.contains_key(&ds.value) {
                    let n = self.properties(ds, &["name"]).await?;
                    datastore_names.insert(
                        ds.value.clone(),
                        n.text("name").unwrap_or_default().to_string(),
                    );
                }
            }
        }
        Ok(VmInfo {
            moref: vm.clone(),
            name,
            instance_uuid: o.text("config.instanceUuid").unwrap_or("").to_string(),
            bios_uuid: o.text("config.uuid").unwrap_or("").to_string(),
            disks,
            cbt_enabled: o.text("config.changeTrackingEnabled") == Some("true"),
            power_state: o.text("runtime.powerState").unwrap_or("").to_string(),
            host: o.props.get("runtime.host").and_then(MoRef::from_node),
            snapshots,
            current_snapshot,
            datacenter,
            datastore_names,
            guest_id: o.text("config.guestId").unwrap_or("").to_string(),
            num_cpu: o
                .text("config.hardware.numCPU")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            memory_mb: o
                .text("config.hardware.memoryMB")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            firmware: o.text("config.firmware").unwrap_or("").to_string(),
        })
    }

    /// The disks as a snapshot recorded them (with the changeIds at snapshot time).
    pub async fn snapshot_disks(&self, snapshot: &MoRef) -> Result<Vec<VirtualDisk>> {
        let o = self
            .properties(snapshot, &["config.hardware.device"])
            .await?;
        o.props
            .get("config.hardware.device")
            .map(parse_disks)
            .ok_or_else(|| shape("snapshot config", "no config.hardware.device"))
    }

    /// Name of the datacenter above `start` (empty when there is none).
    pub async fn datacenter_name_of(&self, start: MoRef) -> Result<String> {
        self.datacenter_of(start).await
    }

    /// Name of the datacenter above `start`.
    async fn datacenter_of(&self, start: MoRef) -> Result<String> {
        let mut cur = start;
        for _ in 0..64 {
            if cur.kind == "Datacenter" {
                let o = self.properties(&cur, &["name"]).await?;
                return Ok(o.text("name").unwrap_or("").to_string());
            }
            let o = self.properties(&cur, &["parent"]).await?;
            match o.props.get("parent").and_then(MoRef::from_node) {
                Some(p) => cur = p,
                None => return Ok(String::new()),
            }
        }
        Err(shape("inventory", "folder nesting too deep"))
    }
}

fn object_content(o: &Node) -> Result<ObjectContent> {
    let obj = o
        .child("obj")
        .and_then(MoRef::from_node)
        .ok_or_else(|| shape("RetrievePropertiesEx", "object without obj"))?;
    if let Some(m) = o.child("missingSet") {
        if let Some(f) = m.path(&["fault", "fault"]) {
            if f.xsi_type.as_deref() == Some("ManagedObjectNotFound") {
                return Err(VsphereError::Fault {
                    method: "RetrievePropertiesEx".into(),
                    kind: FaultKind::ManagedObjectNotFound {
                        obj: obj.to_string(),
                    },
                    message: "object not found".into(),
                });
            }
        }
    }
    let mut props = BTreeMap::new();
    for p in o.children_named("propSet") {
        if let (Some(name), Some(val)) = (p.text_at(&["name"]), p.child("val")) {
            props.insert(name.to_string(), val.clone());
        }
    }
    Ok(ObjectContent { obj, props })
}

/// Virtual disks from an `ArrayOfVirtualDevice` value.
pub fn parse_disks(devices: &Node) -> Vec<VirtualDisk> {
    // Controllers by key: a restore as a new VM recreates them.
    let controllers: BTreeMap<i32, (String, i32)> = devices
        .children
        .iter()
        .filter_map(|d| {
            let ty = d.xsi_type.as_deref()?;
            let bus = d.parse_at::<i32>(&["busNumber"])?;
            Some((d.parse_at::<i32>(&["key"])?, (ty.to_string(), bus)))
        })
        .collect();
    let mut found = Vec::new();
    devices.descendants_of_type("VirtualDisk", &mut found);
    found
        .into_iter()
        .filter_map(|d| {
            let key = d.parse_at::<i32>(&["key"])?;
            let backing = d.child("backing")?;
            let controller_key = d.parse_at::<i32>(&["controllerKey"]);
            let controller = controller_key.and_then(|k| controllers.get(&k));
            let capacity = d
                .parse_at::<u64>(&["capacityInBytes"])
                .filter(|c| *c > 0)
                .or_else(|| d.parse_at::<u64>(&["capacityInKB"]).map(|k| k * 1024))?;
            Some(VirtualDisk {
                key,
                label: d
                    .text_at(&["deviceInfo", "label"])
                    .unwrap_or("")
                    .to_string(),
                capacity,
                backing_type: backing.xsi_type.clone().unwrap_or_default(),
                file_name: backing.text_at(&["fileName"]).unwrap_or("").to_string(),
                datastore: backing.child("datastore").and_then(MoRef::from_node),
                change_id: backing
                    .text_at(&["changeId"])
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
                controller_key: controller_key.unwrap_or(-1),
                unit_number: d.parse_at(&["unitNumber"]).unwrap_or(-1),
                controller_type: controller.map(|c| c.0.clone()).unwrap_or_default(),
                controller_bus: controller.map_or(-1, |c| c.1),
            })
        })
        .collect()
}

fn parse_snapshot(n: &Node) -> Option<SnapshotNode> {
    Some(SnapshotNode {
        snapshot: n.child("snapshot").and_then(MoRef::from_node)?,
        name: n.text_at(&["name"]).unwrap_or("").to_string(),
        description: n.text_at(&["description"]).unwrap_or("").to_string(),
        create_time: n.text_at(&["createTime"]).unwrap_or("").to_string(),
        quiesced: n.text_at(&["quiesced"]) == Some("true"),
        children: n
            .children_named("childSnapshotList")
            .filter_map(parse_snapshot)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml;

    #[test]
    fn disks_from_device_array() {
        let doc = br#"<val xmlns:x="http://www.w3.org/2001/XMLSchema-instance" x:type="ArrayOfVirtualDevice">
<VirtualDevice x:type="VirtualLsiLogicController"><key>1000</key><busNumber>0</busNumber></VirtualDevice>
<VirtualDevice x:type="VirtualDisk"><key>2000</key><deviceInfo><label>Hard disk 1</label></deviceInfo>
<backing x:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/vm.vmdk</fileName><datastore type="Datastore">datastore-1</datastore><changeId>52 a/3</changeId></backing>
<controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>1024</capacityInKB><capacityInBytes>0</capacityInBytes></VirtualDevice>
</val>"#;
        let d = parse_disks(&xml::parse(doc).unwrap());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].key, 2000);
        assert_eq!(d[0].capacity, 1 << 20);
        assert_eq!(d[0].file_name, "[ds1] vm/vm.vmdk");
        assert_eq!(d[0].change_id.as_deref(), Some("52 a/3"));
        assert_eq!(d[0].datastore, Some(MoRef::new("Datastore", "datastore-1")));
        assert_eq!(d[0].controller_type, "VirtualLsiLogicController");
        assert_eq!(d[0].controller_bus, 0);
    }
}
