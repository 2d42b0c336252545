//! Boots the real OVA's disk the way vCenter does: OVMF (UEFI), the
//! streamOptimized VMDK as the only disk, a VMXNET3 NIC, and the OVF
//! environment on a CD-ROM. Needs `cargo run -p ferry-image` (the OVA), QEMU,
//! OVMF and xorriso; `tests/slow/ova.sh` builds the image and runs these.
//! They fail, never skip, when something is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::path::PathBuf;
use std::time::Duration;

use ferry_boot_tests::ova::check_ova;
use ferry_boot_tests::{appliance_dir, make_iso, manifest, BootOpts, DiskBoot, Vm};
use serde_json::Value;

const READY: &str = "agent ready";
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const TOKEN: &str = "enroll-7f3a9c-secret";
const VC_PASSWORD: &str = "vc-pa55-secret";

fn ova_path() -> PathBuf {
    let m = manifest().unwrap();
    let name = m["ova"]
        .as_str()
        .expect("manifest.json names no OVA: run `cargo run -p ferry-image` without --no-ova");
    appliance_dir().join(name)
}

fn ovf_env(props: &[(&str, &str)]) -> String {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-1001">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.3</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
"#,
    );
    for (k, v) in props {
        s.push_str(&format!(
            "         <Property oe:key=\"{k}\" oe:value=\"{v}\"/>\n"
        ));
    }
    s.push_str(
        r#"   </PropertySection>
   <ve:EthernetAdapterSection>
      <ve:Adapter ve:mac="00:50:56:8a:00:01" ve:network="VM Network" ve:unitNumber="7"/>
   </ve:EthernetAdapterSection>
</Environment>
"#,
    );
    s
}

fn has_address(status: &Value, ip: &str) -> bool {
    status["addresses"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["address"] == ip))
}

#[test]
#[ignore = "OVMF boot test: run tests/slow/ova.sh"]
fn ova_package_checks() {
    let ova = ova_path();
    let size = std::fs::metadata(&ova).unwrap().len();
    let pkg = check_ova(&ova).unwrap();
    println!(
        "OVA size: {:.2} MiB ({}; target < 40 MiB); disk {} MiB virtual, {:.1} MiB populated",
        size as f64 / 1048576.0,
        ova.display(),
        pkg.descriptor.capacity >> 20,
        pkg.descriptor.populated as f64 / 1048576.0
    );
    println!(
        "  members in order: {}; sha256sum -c, qemu-img check, xmllint and govmomi CreateImportSpec: clean",
        pkg.members.join(", ")
    );
    assert!(size < 40 << 20, "OVA over 40 MiB");
}

/// First boot from the OVA's disk with an OVF environment ISO: static
/// address, host name and management server from "ovf-env"; the state
/// partition is formatted; a clean reboot keeps the TLS identity.
#[test]
#[ignore = "OVMF boot test: run tests/slow/ova.sh"]
fn ovmf_boot_with_ovf_env_then_reboot_keeps_identity() {
    let ova = ova_path();
    let pkg = check_ova(&ova).unwrap();
    let iso = pkg.dir.path().join("ovf-env.iso");
    let env = ovf_env(&[
        ("ferry.hostname", "ferry-ova"),
        ("ferry.net", "static"),
        ("ferry.ip", "10.0.2.50"),
        ("ferry.netmask", "255.255.255.0"),
        ("ferry.gateway", "10.0.2.2"),
        ("ferry.dns", "10.0.2.3"),
        ("ferry.ntp", ""),
        ("ferry.mgmt", "mgmt.example.test:9876"),
        ("ferry.token", TOKEN),
        ("ferry.vcenter", "vcenter.example.test"),
        ("ferry.vcenter_user", "backup@vsphere.local"),
        ("ferry.vcenter_password", VC_PASSWORD),
        ("ferry.vcenter_thumbprint", ""),
    ]);
    make_iso(&iso, &[("ovf-env.xml", env.as_bytes())]).unwrap();
    let opts = BootOpts {
        nic: "vmxnet3",
        guest_ip: "10.0.2.50".into(),
        disk: Some(DiskBoot {
            vmdk: pkg.vmdk.clone(),
            cdrom: Some(iso),
            memory_mib: 2048,
            vmport: true,
        }),
        ..BootOpts::default()
    };
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_console(READY, BOOT_TIMEOUT).unwrap();
    println!(
        "boot to \"{READY}\" through OVMF: {ready:.1} s (TCG, VMDK on IDE, vmxnet3, target < 30 s)"
    );

    let st = vm
        .wait_status(
            "the static address from ovf-env",
            Duration::from_secs(60),
            |s| has_address(s, "10.0.2.50"),
        )
        .unwrap();
    for line in vm.console().lines().filter(|l| {
        l.contains("ferry_init")
            && (l.contains("state") || l.contains("config") || l.contains("ovf"))
    }) {
        println!("  console: {}", line.trim_end());
    }
    let cfg = &st["config"];
    for (key, value) in [
        ("hostname", "ferry-ova"),
        ("net", "static"),
        ("ip", "10.0.2.50"),
        ("netmask", "255.255.255.0"),
        ("gateway", "10.0.2.2"),
        ("mgmt", "mgmt.example.test:9876"),
    ] {
        assert_eq!(cfg[key]["value"], value, "{key}: {st:#}");
        assert_eq!(cfg[key]["source"], "ovf-env", "{key}: {st:#}");
    }
    // Before registration, status says nothing about vCenter (anyone can read it).
    for key in [
        "vcenter",
        "vcenter_user",
        "vcenter_password",
        "vcenter_thumbprint",
    ] {
        assert!(cfg[key].is_null(), "{key} before registration: {st:#}");
    }
    for hidden in ["vcenter.example.test", "backup@vsphere.local"] {
        assert!(!st.to_string().contains(hidden), "{hidden}: {st:#}");
    }
    assert_eq!(
        cfg["ntp"]["source"], "default",
        "an empty property is unset"
    );
    assert_eq!(cfg["token"]["value"], "<redacted>");
    assert_eq!(cfg["token"]["source"], "ovf-env");
    assert_eq!(st["hostname"], "ferry-ova");
    assert_eq!(st["network"]["mode"], "static");
    assert_eq!(st["network"]["address"], "10.0.2.50/24");
    assert_eq!(
        st["config_errors"].as_array().map(Vec::len),
        Some(0),
        "{st:#}"
    );
    assert!(
        st["modules_loaded"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "vmxnet3")),
        "{st:#}"
    );
    let console = vm.console();
    assert!(
        console.contains("OVF environment read from /dev/sr0"),
        "{console}"
    );
    assert!(console.contains("is blank; formatting it"), "{console}");
    assert!(console.contains("mounted on /var/lib/ferry"), "{console}");
    let logs = vm.https("GET", "/v1/logs").unwrap();
    assert_eq!(logs.status, 403, "no log ring before registration");
    let logs = logs.body;
    for secret in [TOKEN, VC_PASSWORD] {
        assert!(!console.contains(secret), "a secret reached the console");
        assert!(!logs.contains(secret), "a secret reached /v1/logs");
        assert!(
            !st.to_string().contains(secret),
            "a secret reached /v1/status"
        );
    }
    let cert = st["tls"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(vm.https("GET", "/v1/status").unwrap().cert_sha256, cert);

    // Clean reboot: firmware, UKI, init again, same disk.
    vm.ctrl_alt_del().unwrap();
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    while vm.console_count(READY) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second boot:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let console = vm.console();
    assert!(console.contains("clean unmount"), "{console}");
    assert_eq!(
        console.matches("is blank; formatting it").count(),
        1,
        "the state partition must be formatted once"
    );
    let st2 = vm
        .wait_status("the agent after the reboot", Duration::from_secs(60), |s| {
            has_address(s, "10.0.2.50") && s["agent"]["start"] == 1
        })
        .unwrap();
    assert_eq!(
        st2["tls"]["sha256"],
        cert.as_str(),
        "the identity survives a reboot"
    );
    assert_eq!(vm.https("GET", "/v1/status").unwrap().cert_sha256, cert);
    assert!(
        st2["uptime_seconds"].as_f64().unwrap() < st["uptime_seconds"].as_f64().unwrap() + 120.0
    );
    println!("reboot: same TLS certificate {}", &cert[..16]);
}

/// A malformed ovf-env.xml: a clear console error, DHCP, and the appliance
/// still comes up. QEMU runs without vmport here (and with it in the test
/// above): the VMware backdoor is never touched off VMware, so neither
/// crashes nor hangs.
#[test]
#[ignore = "OVMF boot test: run tests/slow/ova.sh"]
fn ovmf_boot_with_malformed_ovf_env_falls_back_to_dhcp() {
    let ova = ova_path();
    let pkg = check_ova(&ova).unwrap();
    let iso = pkg.dir.path().join("bad-env.iso");
    let mut env = ovf_env(&[("ferry.ip", "10.0.2.60"), ("ferry.net", "static")]);
    env.truncate(env.len() - 40);
    make_iso(&iso, &[("ovf-env.xml", env.as_bytes())]).unwrap();
    let opts = BootOpts {
        nic: "e1000",
        guest_ip: "10.0.2.15".into(),
        disk: Some(DiskBoot {
            vmdk: pkg.vmdk.clone(),
            cdrom: Some(iso),
            memory_mib: 1024,
            vmport: false,
        }),
        ..BootOpts::default()
    };
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_console(READY, BOOT_TIMEOUT).unwrap();
    println!("boot to \"{READY}\" through OVMF with a malformed ovf-env.xml: {ready:.1} s");
    let console = vm.console();
    assert!(
        console.contains("config error: ovf-env: /dev/sr0: malformed ovf-env.xml"),
        "{console}"
    );
    assert!(!console.contains("VMware detected"), "{console}");
    let st = vm
        .wait_status("the DHCP fallback", Duration::from_secs(60), |s| {
            has_address(s, "10.0.2.15")
        })
        .unwrap();
    assert_eq!(st["network"]["mode"], "dhcp");
    assert_eq!(st["config"]["ip"]["source"], "default");
    assert!(
        st["config_errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("malformed ovf-env.xml")),
        "{st:#}"
    );
    vm.qmp("system_powerdown").unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(vm.console().contains("clean unmount"));
}
