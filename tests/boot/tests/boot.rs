//! Boots the real appliance in QEMU (TCG) and checks what an admin sees.
//!
//! These tests need the image (`cargo run -p ferry-image`) and QEMU
//! (`apt-get install qemu-system-x86`), and take about a minute each, so they
//! are `#[ignore]`d in a plain `cargo test`; `tests/boot.sh` builds the image
//! and runs them with `--ignored`. They fail, never skip, when something is
//! missing.

// An integration-test file is itself the test module.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use ferry_boot_tests::{manifest, BootOpts, SntpServer, Vm};
use serde_json::Value;

const READY: &str = "agent ready";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn has_address(status: &Value, ip: &str) -> bool {
    status["addresses"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["address"] == ip))
}

#[test]
#[ignore = "boot test: run tests/boot.sh"]
fn image_sizes_within_targets() {
    ferry_boot_tests::preflight().unwrap();
    let m = manifest().unwrap();
    let kernel = m["files"]["vmlinuz"]["size"].as_u64().unwrap();
    let initrd = m["files"]["initramfs.cpio.zst"]["size"].as_u64().unwrap();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "image: kernel {:.2} MiB, initramfs {:.2} MiB, total {:.2} MiB ({} modules, {})",
        mib(kernel),
        mib(initrd),
        mib(kernel + initrd),
        m["modules"].as_array().map(|a| a.len()).unwrap_or(0),
        m["kernel_package"]
    );
    assert!(initrd < 24 << 20, "initramfs over 24 MiB");
    assert!(kernel + initrd < 40 << 20, "kernel + initramfs over 40 MiB");
}

/// DHCP from slirp, status over TLS 1.3, no pairing code in any answer before
/// registration, pairing, logs and an agent restart over mTLS, and a clean ACPI
/// power-off: one VM, to keep TCG time down.
#[test]
#[ignore = "boot test: run tests/boot.sh"]
fn dhcp_boot_status_restart_powerdown() {
    let mut vm = Vm::boot(&BootOpts::default()).unwrap();
    let ready = vm.wait_console(READY, BOOT_TIMEOUT).unwrap();
    println!("boot to \"{READY}\": {ready:.1} s (TCG, e1000, DHCP)");

    let leased = vm
        .wait_console("dhcp: leased 10.0.2.15/24", Duration::from_secs(60))
        .unwrap();
    println!("DHCP lease from slirp: {leased:.1} s");
    let st = vm
        .wait_status("the DHCP lease", Duration::from_secs(60), |s| {
            s["network"]["state"] == "bound" && has_address(s, "10.0.2.15")
        })
        .unwrap();
    for line in vm
        .console()
        .lines()
        .filter(|l| l.contains("INFO ferry_init"))
    {
        println!("  console: {}", line.trim_end());
    }
    assert_eq!(st["network"]["address"], "10.0.2.15/24");
    assert_eq!(st["network"]["mode"], "dhcp");
    assert_eq!(st["network"]["gateway"], "10.0.2.2");
    assert_eq!(st["hostname"], "ferry");
    assert_eq!(st["config"]["hostname"]["source"], "default");
    assert_eq!(st["config"]["debug"]["source"], "cmdline");
    assert_eq!(
        st["config_errors"].as_array().map(Vec::len),
        Some(0),
        "{st:#}"
    );
    assert!(st["time"]["state"].is_string(), "{st:#}");
    assert!(
        st["modules_loaded"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "e1000")),
        "{st:#}"
    );
    assert_eq!(st["agent"]["start"], 1);

    let r = vm.https("GET", "/v1/status").unwrap();
    assert!(r.tls13, "the agent must speak TLS 1.3");
    ferry_boot_tests::tls12_is_refused(vm.port).unwrap();
    assert_eq!(r.cert_sha256, st["tls"]["sha256"].as_str().unwrap());

    // Before registration: the pairing code is on the serial console (/dev/console) with
    // the certificate's SHA-256, and in no answer of any endpoint; only status and pairing
    // answer, the log ring and the debug hooks are refused.
    let console = vm.console();
    let code = ferry_boot_tests::pairing_code(&console).expect("a pairing code on the console");
    let served = st["tls"]["sha256"].as_str().unwrap();
    assert!(
        console.contains(&format!("appliance certificate sha256 {served}")),
        "{console}"
    );
    for (method, path, want) in [
        ("GET", "/v1/status", 200),
        ("GET", "/v1/logs", 403),
        ("GET", "/v1/logs?lines=100000", 403),
        ("POST", "/v1/debug/crash", 403),
        ("POST", "/v1/debug/storage-check", 403),
        ("GET", "/v1/events", 403),
        ("GET", "/v1/plans", 403),
        ("GET", "/v1/revocations", 403),
        ("GET", "/v1/nope", 403),
        ("POST", "/v1/pair/csr", 400),
        ("POST", "/v1/pair/complete", 400),
    ] {
        let r = vm.https(method, path).unwrap();
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        for spelled in [code.clone(), code.replace('-', "")] {
            assert!(
                !r.body.contains(&spelled),
                "{method} {path} served the pairing code"
            );
        }
    }

    // Registered (the pairing code from the console, a CA made by the test): the admin
    // certificate gets the log ring and the debug hooks.
    vm.pair_with_test_ca().unwrap();
    let st = vm
        .wait_status("registration", Duration::from_secs(30), |s| {
            s["registration"]["registered"] == true
        })
        .unwrap();
    let logs = vm.https("GET", "/v1/logs").unwrap();
    assert_eq!(logs.status, 200);
    assert!(logs.body.contains("ferry-init"), "{}", logs.body);
    assert!(logs.body.contains(READY), "{}", logs.body);
    assert!(
        !logs.body.contains(&code),
        "the pairing code in the log ring"
    );

    // Kill the agent: init must restart it.
    let old_pid = st["agent"]["pid"].clone();
    let r = vm.https("POST", "/v1/debug/crash").unwrap();
    assert_eq!(r.status, 202);
    let st2 = vm
        .wait_status("a restarted agent", Duration::from_secs(30), |s| {
            s["agent"]["start"] == 2
        })
        .unwrap();
    assert_ne!(st2["agent"]["pid"], old_pid);
    assert!(
        st2["agent"]["supervisor"]["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("SIGABRT")),
        "{st2:#}"
    );
    assert_eq!(
        st2["tls"]["sha256"], st["tls"]["sha256"],
        "the identity is kept across restarts"
    );
    assert_eq!(st2["registration"]["registered"], true, "{st2:#}");
    assert_eq!(vm.console_count(READY), 2);

    // ACPI power button.
    let t = std::time::Instant::now();
    vm.qmp("system_powerdown").unwrap();
    let exit = vm.wait_exit(Duration::from_secs(30)).unwrap();
    println!(
        "system_powerdown to QEMU exit: {:.1} s ({exit})",
        t.elapsed().as_secs_f64()
    );
    let console = vm.console();
    assert!(
        console.contains("shutdown: power-off requested by power button"),
        "{console}"
    );
    assert!(console.contains("ferry-agent stopped"), "{console}");
    assert!(console.contains("clean unmount"), "{console}");
    assert!(console.contains("power-off now"), "{console}");
}

#[test]
#[ignore = "boot test: run tests/boot.sh"]
fn static_address_and_sntp_from_cmdline() {
    // The guest reaches the host's 127.0.0.1:123 as 10.0.2.2:123.
    const AHEAD: i64 = 3600;
    let _sntp = SntpServer::start(AHEAD).unwrap();
    let opts = BootOpts {
        cmdline: "ferry.ip=10.0.2.50/24 ferry.gateway=10.0.2.2 ferry.dns=10.0.2.3 ferry.hostname=ferry-static ferry.ntp=10.0.2.2".into(),
        nic: "virtio-net-pci",
        guest_ip: "10.0.2.50".into(),
        disk: None,
        ..BootOpts::default()
    };
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_console(READY, BOOT_TIMEOUT).unwrap();
    println!("boot to \"{READY}\": {ready:.1} s (TCG, virtio-net, static)");
    let st = vm
        .wait_status("the static address", Duration::from_secs(60), |s| {
            has_address(s, "10.0.2.50")
        })
        .unwrap();
    assert_eq!(st["network"]["mode"], "static");
    assert_eq!(st["network"]["state"], "static");
    assert_eq!(st["network"]["address"], "10.0.2.50/24");
    assert_eq!(st["config"]["ip"]["source"], "cmdline");
    assert_eq!(st["config"]["ip"]["value"], "10.0.2.50/24");
    assert_eq!(st["hostname"], "ferry-static");
    assert!(
        !has_address(&st, "10.0.2.15"),
        "no DHCP address expected: {st:#}"
    );
    assert!(
        st["modules_loaded"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "virtio_net")),
        "{st:#}"
    );
}

#[test]
#[ignore = "boot test: run tests/boot.sh"]
fn bad_config_is_reported_and_dhcp_still_works() {
    let opts = BootOpts {
        cmdline: "ferry.bogus=1 ferry.ip=10.0.2.300/24 ferry.token=sekrit-token ferry.mgmt=mgmt.example:9876".into(),
        ..BootOpts::default()
    };
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_console(READY, BOOT_TIMEOUT).unwrap();
    println!("boot to \"{READY}\" with a bad config: {ready:.1} s");
    let console = vm.console();
    assert!(
        console.contains("config error: cmdline: unknown key ferry.bogus"),
        "{console}"
    );
    assert!(
        console.contains("config error: cmdline: ferry.ip=10.0.2.300/24"),
        "{console}"
    );
    assert!(
        !console.contains("sekrit-token"),
        "the token must never be logged"
    );

    let st = vm
        .wait_status("the DHCP fallback", Duration::from_secs(60), |s| {
            has_address(s, "10.0.2.15")
        })
        .unwrap();
    let errors = st["config_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("unknown key ferry.bogus")),
        "{st:#}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("ferry.ip=10.0.2.300/24")),
        "{st:#}"
    );
    assert_eq!(st["network"]["mode"], "dhcp");
    assert_eq!(st["config"]["token"]["value"], "<redacted>");
    assert_eq!(st["config"]["token"]["source"], "cmdline");
    assert_eq!(st["config"]["mgmt"]["value"], "mgmt.example:9876");
    assert!(
        !st.to_string().contains("sekrit-token"),
        "the token must never be served"
    );
    let logs = vm.https("GET", "/v1/logs").unwrap();
    assert_eq!(logs.status, 403, "no log ring before registration");
    assert!(!logs.body.contains("sekrit-token"));
}
