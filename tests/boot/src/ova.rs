//! Checks of an OVA package with real third-party tools: GNU `tar`,
//! `sha256sum -c`, `qemu-img check`/`info`/`compare`, `xmllint`, and the
//! govmomi simulator's `OvfManager.CreateImportSpec` (tests/ovfcheck), plus
//! the structural rules of the descriptor read with quick-xml (no Debian or
//! PyPI package ships the DMTF DSP8023 schema, so `xmllint` checks
//! well-formedness and these rules stand in for the schema).
//!
//! Used by the fast package test (built from a fake kernel) and by the slow
//! OVMF boot test (the real `target/appliance/` OVA).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

const OVF_NS: &str = "http://schemas.dmtf.org/ovf/envelope/1";
const VMW_NS: &str = "http://www.vmware.com/schema/ovf";

/// Runs a command, failing with its output (and an install hint) if it fails.
pub fn run(cmd: &mut Command, hint: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("run {cmd:?} ({hint})"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the package checks found.
#[derive(Debug)]
pub struct Package {
    pub dir: tempfile::TempDir,
    pub members: Vec<String>,
    pub ovf: PathBuf,
    pub vmdk: PathBuf,
    pub descriptor: Descriptor,
    pub import_spec: serde_json::Value,
}

/// Extracts `ova` with plain `tar` and checks everything in it.
pub fn check_ova(ova: &Path) -> anyhow::Result<Package> {
    let dir = tempfile::Builder::new().prefix("ferry-ova-").tempdir()?;
    let list = run(
        Command::new("tar").arg("-tvf").arg(ova),
        "GNU tar, apt-get install tar",
    )?;
    let members: Vec<String> = run(Command::new("tar").arg("-tf").arg(ova), "tar")?
        .lines()
        .map(str::to_string)
        .collect();
    ensure!(members.len() == 3, "expected 3 members:\n{list}");
    ensure!(
        members[0].ends_with(".ovf")
            && members[1].ends_with(".mf")
            && members[2].ends_with(".vmdk"),
        "expected .ovf, .mf, .vmdk in that order:\n{list}"
    );
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(ova)
            .arg("-C")
            .arg(dir.path()),
        "tar",
    )?;
    // ustar, not GNU or pax extensions: the format vCenter reads.
    let raw = std::fs::read(ova)?;
    ensure!(
        raw.get(257..263) == Some(&b"ustar\0"[..]),
        "first member header is not POSIX ustar"
    );
    for m in &members {
        ensure!(dir.path().join(m).is_file(), "{m} was not extracted");
    }
    let sums = run(
        Command::new("sha256sum")
            .arg("-c")
            .arg(&members[1])
            .current_dir(dir.path()),
        "coreutils sha256sum",
    )?;
    ensure!(
        sums.lines().count() == 2 && sums.lines().all(|l| l.ends_with(": OK")),
        "sha256sum -c: {sums}"
    );
    let ovf = dir.path().join(&members[0]);
    let vmdk = dir.path().join(&members[2]);
    check_vmdk(&vmdk)?;
    run(
        Command::new("xmllint").arg("--noout").arg(&ovf),
        "apt-get install libxml2-utils",
    )?;
    let text = std::fs::read_to_string(&ovf)?;
    ensure!(!text.contains("@@"), "a placeholder is left in the OVF");
    let descriptor = Descriptor::parse(&text)?;
    descriptor.check_rules()?;
    let vmdk_len = std::fs::metadata(&vmdk)?.len();
    ensure!(
        descriptor.file_href == members[2] && descriptor.file_size == vmdk_len,
        "References/File must name {} with ovf:size {vmdk_len}: {:?}",
        members[2],
        (&descriptor.file_href, descriptor.file_size)
    );
    let import_spec = import_spec(&ovf)?;
    check_import_spec(&import_spec, &descriptor)?;
    Ok(Package {
        dir,
        members,
        ovf,
        vmdk,
        descriptor,
        import_spec,
    })
}

/// `qemu-img check` is clean and `qemu-img info` says streamOptimized.
pub fn check_vmdk(vmdk: &Path) -> anyhow::Result<()> {
    run(
        Command::new("qemu-img").arg("check").arg(vmdk),
        "apt-get install qemu-utils",
    )?;
    let info: serde_json::Value = serde_json::from_str(&run(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(vmdk),
        "qemu-utils",
    )?)?;
    ensure!(info["format"] == "vmdk", "{info:#}");
    ensure!(
        info["format-specific"]["data"]["create-type"] == "streamOptimized",
        "{info:#}"
    );
    Ok(())
}

/// The parts of the descriptor the rules look at.
#[derive(Debug, Default, Clone)]
pub struct Descriptor {
    pub file_href: String,
    pub file_size: u64,
    pub capacity: u64,
    pub capacity_units: String,
    pub populated: u64,
    pub disk_format: String,
    pub transport: String,
    pub os_id: String,
    pub os_type: String,
    /// `vmw:key` -> `vmw:value` of `vmw:Config`.
    pub vmw_config: BTreeMap<String, String>,
    /// One map of rasd element -> text per Item, and the element order.
    pub items: Vec<(BTreeMap<String, String>, Vec<String>)>,
    pub properties: Vec<Property>,
    /// Direct children of ProductSection, in order.
    pub product_children: Vec<String>,
}

/// One ProductSection property.
#[derive(Debug, Default, Clone)]
pub struct Property {
    pub attrs: BTreeMap<String, String>,
    pub label: String,
    pub description: String,
}

fn attrs(
    r: &NsReader<&[u8]>,
    e: &quick_xml::events::BytesStart<'_>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in e.attributes() {
        let a = a?;
        let (ns, local) = r.resolver().resolve_attribute(a.key);
        let prefix = match ns {
            ResolveResult::Bound(n) if n.0 == OVF_NS => "ovf:",
            ResolveResult::Bound(n) if n.0 == VMW_NS => "vmw:",
            ResolveResult::Bound(_) => "other:",
            _ => "",
        };
        out.insert(
            format!("{prefix}{}", local.as_ref()),
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)?
                .into_owned(),
        );
    }
    Ok(out)
}

impl Descriptor {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut r = NsReader::from_str(text);
        let mut d = Descriptor::default();
        let mut path: Vec<String> = Vec::new();
        let mut text_buf = String::new();
        let mut item: Option<(BTreeMap<String, String>, Vec<String>)> = None;
        let mut prop: Option<Property> = None;
        loop {
            let (ns, ev) = r.read_resolved_event()?;
            let ns_uri = match ns {
                ResolveResult::Bound(n) => Some(n.0.to_string()),
                _ => None,
            };
            let ev = ev.into_owned();
            match ev {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let empty = matches!(ev, Event::Empty(_));
                    let local = e.local_name().as_ref().to_string();
                    let in_ovf = ns_uri.as_deref() == Some(OVF_NS);
                    let a = attrs(&r, e)?;
                    let parent = path.last().map(String::as_str).unwrap_or("");
                    if path.is_empty() {
                        ensure!(in_ovf && local == "Envelope", "root is not an OVF Envelope");
                    }
                    if parent == "ProductSection" {
                        d.product_children.push(local.clone());
                    }
                    match local.as_str() {
                        "File" if parent == "References" => {
                            d.file_href = a.get("ovf:href").cloned().unwrap_or_default();
                            d.file_size =
                                a.get("ovf:size").and_then(|s| s.parse().ok()).unwrap_or(0);
                        }
                        "Disk" if parent == "DiskSection" => {
                            d.capacity = a
                                .get("ovf:capacity")
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            d.capacity_units = a
                                .get("ovf:capacityAllocationUnits")
                                .cloned()
                                .unwrap_or_default();
                            d.populated = a
                                .get("ovf:populatedSize")
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            d.disk_format = a.get("ovf:format").cloned().unwrap_or_default();
                        }
                        "VirtualHardwareSection" => {
                            d.transport = a.get("ovf:transport").cloned().unwrap_or_default();
                        }
                        "OperatingSystemSection" => {
                            d.os_id = a.get("ovf:id").cloned().unwrap_or_default();
                            d.os_type = a.get("vmw:osType").cloned().unwrap_or_default();
                        }
                        "Config" if ns_uri.as_deref() == Some(VMW_NS) => {
                            ensure!(
                                a.get("ovf:required").map(String::as_str) == Some("false"),
                                "vmw:Config must be ovf:required=\"false\": {a:?}"
                            );
                            d.vmw_config.insert(
                                a.get("vmw:key").cloned().unwrap_or_default(),
                                a.get("vmw:value").cloned().unwrap_or_default(),
                            );
                        }
                        "Item" if parent == "VirtualHardwareSection" => {
                            item = Some(Default::default());
                        }
                        "Property" if parent == "ProductSection" => {
                            prop = Some(Property {
                                attrs: a,
                                ..Default::default()
                            });
                            if empty {
                                d.properties.extend(prop.take());
                            }
                        }
                        _ => {}
                    }
                    if !empty {
                        path.push(local);
                        text_buf.clear();
                    }
                }
                Event::Text(t) => {
                    text_buf.push_str(&t.xml_content(quick_xml::XmlVersion::Implicit1_0))
                }
                Event::GeneralRef(g) => {
                    let name = g.into_inner();
                    text_buf.push_str(match name.as_ref() {
                        "quot" => "\"",
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "apos" => "'",
                        other => bail!("unknown entity &{other};"),
                    });
                }
                Event::End(_) => {
                    let local = path.pop().unwrap_or_default();
                    let parent = path.last().map(String::as_str).unwrap_or("");
                    match (parent, local.as_str()) {
                        ("Item", el) => {
                            if let Some((m, order)) = item.as_mut() {
                                m.insert(el.to_string(), text_buf.trim().to_string());
                                order.push(el.to_string());
                            }
                        }
                        ("VirtualHardwareSection", "Item") => d.items.extend(item.take()),
                        ("Property", "Label") => {
                            if let Some(p) = prop.as_mut() {
                                p.label = text_buf.trim().to_string();
                            }
                        }
                        ("Property", "Description") => {
                            if let Some(p) = prop.as_mut() {
                                p.description = text_buf.trim().to_string();
                            }
                        }
                        ("ProductSection", "Property") => d.properties.extend(prop.take()),
                        _ => {}
                    }
                    text_buf.clear();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        Ok(d)
    }

    fn item(&self, resource_type: &str) -> Option<&BTreeMap<String, String>> {
        self.items
            .iter()
            .map(|(m, _)| m)
            .find(|m| m.get("ResourceType").map(String::as_str) == Some(resource_type))
    }

    /// The rules vCenter and DSP8023 impose that matter for us.
    pub fn check_rules(&self) -> anyhow::Result<()> {
        ensure!(
            self.capacity > 0 && self.capacity_units == "byte",
            "{self:?}"
        );
        ensure!(
            self.populated > 0 && self.populated <= self.capacity,
            "populatedSize {} must be in 1..={}",
            self.populated,
            self.capacity
        );
        ensure!(
            self.disk_format.ends_with("#streamOptimized"),
            "{}",
            self.disk_format
        );
        let transports: Vec<&str> = self.transport.split_whitespace().collect();
        ensure!(
            transports.contains(&"iso") && transports.contains(&"com.vmware.guestInfo"),
            "transport {:?}",
            self.transport
        );
        ensure!(self.os_id == "101" && self.os_type == "otherLinux64Guest");
        ensure!(
            self.vmw_config.get("firmware").map(String::as_str) == Some("efi"),
            "{:?}",
            self.vmw_config
        );
        let get = |rt: &str, k: &str| {
            self.item(rt)
                .and_then(|m| m.get(k))
                .cloned()
                .unwrap_or_default()
        };
        ensure!(get("3", "VirtualQuantity") == "2", "2 vCPUs");
        ensure!(
            get("4", "VirtualQuantity") == "2048" && get("4", "AllocationUnits") == "byte * 2^20",
            "2 GiB RAM"
        );
        ensure!(get("6", "ResourceSubType") == "VirtualSCSI", "pvscsi");
        ensure!(get("10", "ResourceSubType") == "VmxNet3", "vmxnet3");
        ensure!(
            get("17", "HostResource") == "ovf:/disk/vmdisk1",
            "disk item"
        );
        ensure!(
            get("17", "Parent") == get("6", "InstanceID"),
            "disk on the pvscsi controller"
        );
        ensure!(
            get("15", "Parent") == get("5", "InstanceID"),
            "CD-ROM on IDE"
        );
        // CIM schemas are xs:sequence in alphabetical order; IDs are unique.
        let mut ids = std::collections::BTreeSet::new();
        for (m, order) in &self.items {
            let mut sorted = order.clone();
            sorted.sort();
            ensure!(
                *order == sorted,
                "rasd elements out of schema order: {order:?}"
            );
            ensure!(
                ids.insert(m.get("InstanceID").cloned()),
                "duplicate InstanceID"
            );
        }
        // ProductSection: Info, Product, Vendor, Version, FullVersion, then
        // Category/Property.
        ensure!(
            self.product_children.get(..5)
                == Some(
                    &["Info", "Product", "Vendor", "Version", "FullVersion"].map(String::from)[..]
                ),
            "{:?}",
            self.product_children
        );
        ensure!(
            self.properties.len() >= 13,
            "{} properties",
            self.properties.len()
        );
        for p in &self.properties {
            let key = p.attrs.get("ovf:key").cloned().unwrap_or_default();
            ensure!(key.starts_with("ferry."), "{key}");
            ensure!(
                p.attrs.get("ovf:type").map(String::as_str) == Some("string"),
                "{key}: type"
            );
            ensure!(
                p.attrs.get("ovf:userConfigurable").map(String::as_str) == Some("true"),
                "{key}: userConfigurable"
            );
            ensure!(
                !p.label.is_empty() && !p.description.is_empty(),
                "{key}: label and description"
            );
            let secret = key == "ferry.token" || key.ends_with("password");
            ensure!(
                (p.attrs.get("ovf:password").map(String::as_str) == Some("true")) == secret,
                "{key}: ovf:password"
            );
        }
        Ok(())
    }

    /// Property keys.
    pub fn keys(&self) -> Vec<String> {
        self.properties
            .iter()
            .filter_map(|p| p.attrs.get("ovf:key").cloned())
            .collect()
    }
}

/// Builds (once per source change) and runs tests/ovfcheck against the
/// govmomi simulator.
pub fn import_spec(ovf: &Path) -> anyhow::Result<serde_json::Value> {
    let src = crate::workspace().join("tests/ovfcheck");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("target"))
        .join("ovfcheck");
    std::fs::create_dir_all(&target)?;
    let bin = target.join("ferry-ovfcheck");
    let stale = match (
        std::fs::metadata(&bin),
        std::fs::metadata(src.join("main.go")),
    ) {
        (Ok(b), Ok(s)) => s.modified()? > b.modified()?,
        _ => true,
    };
    if stale {
        let tmp = target.join(format!("ferry-ovfcheck.{}", std::process::id()));
        run(
            Command::new("go")
                .args(["build", "-o"])
                .arg(&tmp)
                .arg(".")
                .current_dir(&src)
                .env("GOPATH", "/usr/share/gocode")
                .env("GO111MODULE", "off")
                .env("GOCACHE", target.join("gocache")),
            "apt-get install golang-go golang-github-vmware-govmomi-dev",
        )?;
        std::fs::rename(&tmp, &bin)?;
    }
    let out = run(Command::new(&bin).arg(ovf), "ferry-ovfcheck")?;
    Ok(serde_json::from_str(&out)?)
}

fn check_import_spec(v: &serde_json::Value, d: &Descriptor) -> anyhow::Result<()> {
    ensure!(
        v["errors"] == serde_json::json!([]),
        "CreateImportSpec errors: {v:#}"
    );
    ensure!(
        v["warnings"] == serde_json::json!([]),
        "CreateImportSpec warnings: {v:#}"
    );
    ensure!(v["num_cpus"] == 2 && v["memory_mb"] == 2048, "{v:#}");
    ensure!(v["guest_id"] == "otherLinux64Guest", "{v:#}");
    let devices: Vec<&str> = v["devices"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    for want in ["pvscsi", "disk", "ide", "cdrom", "ethernet"] {
        ensure!(devices.contains(&want), "no {want} in {devices:?}");
    }
    ensure!(
        v["disk_capacity_kb"][0].as_u64() == Some(d.capacity / 1024),
        "disk capacity: {v:#}"
    );
    ensure!(v["transport"] == d.transport.as_str(), "{v:#}");
    let props = v["properties"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(
        props == d.properties.len(),
        "govmomi sees {props} properties"
    );
    Ok(())
}
