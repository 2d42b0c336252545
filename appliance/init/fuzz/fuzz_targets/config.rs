//! Fuzzes the settings parser: the kernel command line, `guestinfo.ferry.<key>` values and
//! the state directory's `config.json`, merged as at boot. Nothing panics, every accepted
//! value passes its validator again through the accessors, and a secret never shows in
//! the errors or the status view.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/config.rs"]
mod config;

use std::collections::BTreeMap;

use config::{Config, DeploySources, NetMode};
use libfuzzer_sys::fuzz_target;

const MARK: &str = "S3CR3T";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // cmdline NUL guestinfo lines ("key=value") NUL config.json
    let mut parts = text.splitn(3, '\0');
    let cmdline = parts.next().unwrap_or_default();
    let guestinfo: BTreeMap<String, String> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let state = parts.next();
    let deploy = DeploySources {
        guestinfo,
        ..DeploySources::default()
    };
    // No state directory: `load` finds no files and only merges the arguments.
    let mut cfg = Config::load(
        cmdline,
        std::path::Path::new("/nonexistent/ferry-fuzz"),
        &deploy,
    );
    if let Some(s) = state {
        cfg.merge_state_json(s);
    }
    let _ = (
        cfg.hostname(),
        cfg.dns(),
        cfg.ntp(),
        cfg.log_level(),
        cfg.debug(),
    );
    let _ = cfg.agent_env();
    if let NetMode::Static(s) = cfg.net_mode() {
        assert!((1..=32).contains(&s.prefix));
    }
    let view = cfg.view();
    for (k, v) in cfg.secrets() {
        assert_eq!(view[k].value.as_deref(), Some("<redacted>"));
    }
    // A secret value (marked with MARK so that it is rare) that appears once in the input
    // is never echoed in the errors or the view.
    let mut secrets: Vec<String> = config::split_cmdline(cmdline)
        .into_iter()
        .filter_map(|w| {
            w.strip_prefix("ferry.token=")
                .or_else(|| w.strip_prefix("ferry.vcenter_password="))
                .map(str::to_string)
        })
        .collect();
    secrets.extend(
        deploy
            .guestinfo
            .iter()
            .filter(|(k, _)| *k == "token" || *k == "vcenter_password")
            .map(|(_, v)| v.trim().to_string()),
    );
    for v in secrets {
        if !v.contains(MARK) || text.matches(v.as_str()).count() != 1 {
            continue;
        }
        for e in &cfg.errors {
            assert!(!e.contains(v.as_str()), "{e}");
        }
        for s in view.values() {
            assert!(!s.value.as_deref().unwrap_or_default().contains(v.as_str()));
        }
    }
});
