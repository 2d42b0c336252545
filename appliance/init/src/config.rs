//! Config: owns the appliance settings, where each came from, and what was
//! wrong with them.
//!
//! Sources, highest precedence first (the source of each setting is shown
//! in `/v1/status`):
//! 1. `cmdline`: the kernel command line, `ferry.<key>=<value>` (tests and
//!    rescue);
//! 2. `ovf-env`: the OVF environment's properties `ferry.<key>`, from the
//!    CD-ROM (`iso` transport) or `guestinfo.ovfEnv`
//!    (`com.vmware.guestInfo` transport); empty values count as unset;
//! 3. `guestinfo`: VMware guestinfo variables `guestinfo.ferry.<key>`;
//! 4. `state`: the persisted state directory, `<state>/config.json`, a flat
//!    JSON object of the same keys with string values, and
//!    `<state>/secrets.json` for the secrets;
//! 5. built-in defaults.
//!
//! Secrets (`token`, `vcenter_password`) are never logged or served. Init
//! writes them, whatever their source, to `<state>/secrets.json` (0600 on
//! the state partition) for the agent, and nowhere else.
//!
//! A bad entry never stops the boot: an unknown key or a malformed value is
//! recorded in [`Config::errors`] (printed on the console and served in
//! `/v1/status`) and that entry is ignored, so a lower-precedence value or the
//! default applies. A static network without a valid address falls back to
//! DHCP.
//!
//! Keys: `hostname`, `net` (`dhcp` | `static`), `ip` (`A.B.C.D[/prefix]`,
//! implies static), `netmask` (`255.255.255.0` or `24`, for an `ip` without
//! prefix), `gateway`, `dns` and `ntp` (comma-separated), `mgmt`
//! (`host[:port]`), `token` (secret), `vcenter` (`host[:port]`),
//! `vcenter_user`, `vcenter_password` (secret), `vcenter_thumbprint`
//! (SHA-256, hex, colons optional), `log` (`error`..`trace`), `debug`
//! (`0`/`1`, enables test hooks in the agent).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::Serialize;

/// Prefix of our keys on the kernel command line.
pub const CMDLINE_PREFIX: &str = "ferry.";
/// File name of the persisted config inside the state directory.
pub const STATE_CONFIG_FILE: &str = "config.json";
/// File name of the persisted secrets inside the state directory (0600).
pub const STATE_SECRETS_FILE: &str = "secrets.json";
/// Prefix of our keys among guestinfo variables.
pub const GUESTINFO_PREFIX: &str = "guestinfo.ferry.";
/// Default state directory (the state partition is mounted here later).
pub const STATE_DIR: &str = "/var/lib/ferry";

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Cmdline,
    OvfEnv,
    Guestinfo,
    State,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cmdline => "cmdline",
            Source::OvfEnv => "ovf-env",
            Source::Guestinfo => "guestinfo",
            Source::State => "state",
            Source::Default => "default",
        })
    }
}

/// A key the appliance understands, with its validator.
struct Key {
    name: &'static str,
    secret: bool,
    validate: fn(&str) -> Result<(), String>,
}

const KEYS: &[Key] = &[
    Key {
        name: "hostname",
        secret: false,
        validate: validate_hostname,
    },
    Key {
        name: "net",
        secret: false,
        validate: validate_net,
    },
    Key {
        name: "ip",
        secret: false,
        validate: |v| parse_cidr(v).map(|_| ()),
    },
    Key {
        name: "netmask",
        secret: false,
        validate: |v| parse_netmask(v).map(|_| ()),
    },
    Key {
        name: "gateway",
        secret: false,
        validate: |v| parse_ipv4(v).map(|_| ()),
    },
    Key {
        name: "dns",
        secret: false,
        validate: |v| parse_ip_list(v).map(|_| ()),
    },
    Key {
        name: "ntp",
        secret: false,
        validate: |v| parse_host_list(v).map(|_| ()),
    },
    Key {
        name: "mgmt",
        secret: false,
        validate: validate_mgmt,
    },
    Key {
        name: "token",
        secret: true,
        validate: validate_token,
    },
    Key {
        name: "vcenter",
        secret: false,
        validate: validate_mgmt,
    },
    Key {
        name: "vcenter_user",
        secret: false,
        validate: validate_user,
    },
    Key {
        name: "vcenter_password",
        secret: true,
        validate: validate_password,
    },
    Key {
        name: "vcenter_thumbprint",
        secret: false,
        validate: |v| parse_thumbprint(v).map(|_| ()),
    },
    Key {
        name: "log",
        secret: false,
        validate: |v| parse_level(v).map(|_| ()),
    },
    Key {
        name: "debug",
        secret: false,
        validate: |v| parse_bool(v).map(|_| ()),
    },
];

/// A validated raw value and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub source: Source,
}

/// Static IPv4 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// How the network is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetMode {
    Dhcp,
    Static(StaticNet),
}

/// The merged config.
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: BTreeMap<&'static str, Entry>,
    /// Problems found while reading the sources; the boot goes on.
    pub errors: Vec<String>,
    /// Set when a static network was asked for but cannot be applied.
    net_fallback: bool,
    /// Where the OVF environment came from (`/dev/sr0`, `guestinfo.ovfEnv`).
    ovf_env_origin: Option<String>,
}

/// The deployment-time sources read before the config is merged.
#[derive(Debug, Clone, Default)]
pub struct DeploySources {
    /// An OVF environment document and its origin.
    pub ovf_env: Option<EnvDocument>,
    /// `guestinfo.ferry.<key>` values by key.
    pub guestinfo: BTreeMap<String, String>,
    /// Problems reading the sources.
    pub errors: Vec<String>,
}

/// An `ovf-env.xml` document as read.
#[derive(Debug, Clone)]
pub struct EnvDocument {
    pub origin: String,
    pub bytes: Vec<u8>,
}

impl Config {
    /// Reads every source, lowest precedence first.
    pub fn load(cmdline: &str, state_dir: &Path, deploy: &DeploySources) -> Self {
        let mut cfg = Config {
            errors: deploy.errors.clone(),
            ..Config::default()
        };
        for file in [STATE_CONFIG_FILE, STATE_SECRETS_FILE] {
            let path = state_dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => cfg.merge_state_json(&text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => cfg
                    .errors
                    .push(format!("state: cannot read {}: {e}", path.display())),
            }
        }
        cfg.merge_guestinfo(&deploy.guestinfo);
        if let Some(env) = &deploy.ovf_env {
            cfg.merge_ovf_env(&env.origin, &env.bytes);
        }
        cfg.merge_cmdline(cmdline);
        cfg.finish();
        cfg
    }

    /// Merges the properties of an OVF environment document. A document that
    /// does not parse is reported and ignored as a whole.
    pub fn merge_ovf_env(&mut self, origin: &str, doc: &[u8]) {
        let env = match ferry_init::ovfenv::parse(doc) {
            Ok(env) => env,
            Err(e) => {
                self.errors.push(format!(
                    "ovf-env: {origin}: malformed ovf-env.xml ({e}); all its settings are ignored"
                ));
                return;
            }
        };
        self.ovf_env_origin = Some(origin.to_string());
        for (k, v) in &env.properties {
            // Other products' properties may share the environment.
            let Some(key) = k.strip_prefix(CMDLINE_PREFIX) else {
                continue;
            };
            if v.trim().is_empty() {
                continue;
            }
            self.set(Source::OvfEnv, key, v.trim());
        }
    }

    /// Merges `guestinfo.ferry.<key>` values (keys without the prefix).
    pub fn merge_guestinfo(&mut self, kv: &BTreeMap<String, String>) {
        for (k, v) in kv {
            if !v.trim().is_empty() {
                self.set(Source::Guestinfo, k, v.trim());
            }
        }
    }

    /// Where the OVF environment came from, when one was used.
    pub fn ovf_env_origin(&self) -> Option<&str> {
        self.ovf_env_origin.as_deref()
    }

    /// Every key name, for reading guestinfo.
    pub fn key_names() -> Vec<&'static str> {
        KEYS.iter().map(|k| k.name).collect()
    }

    /// The secrets with a value, for `secrets.json`.
    pub fn secrets(&self) -> BTreeMap<&'static str, String> {
        KEYS.iter()
            .filter(|k| k.secret)
            .filter_map(|k| self.get(k.name).map(|e| (k.name, e.value.clone())))
            .collect()
    }

    /// Writes the secrets to `<state_dir>/secrets.json` (0600, atomic) when
    /// they differ from what is there. Returns whether the file changed.
    pub fn persist_secrets(&self, state_dir: &Path) -> std::io::Result<bool> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = state_dir.join(STATE_SECRETS_FILE);
        let secrets = self.secrets();
        let old: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let same = old.len() == secrets.len()
            && secrets
                .iter()
                .all(|(k, v)| old.get(*k).is_some_and(|o| o == v));
        if same {
            return Ok(false);
        }
        let json = serde_json::to_vec(&secrets).map_err(std::io::Error::other)?;
        let tmp = state_dir.join(format!("{STATE_SECRETS_FILE}.tmp"));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(state_dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    }

    /// Merges `config.json` from the state directory (lower precedence than
    /// the command line, so it must be merged first).
    pub fn merge_state_json(&mut self, text: &str) {
        match serde_json::from_str::<BTreeMap<String, serde_json::Value>>(text) {
            Ok(map) => {
                for (k, v) in map {
                    match v {
                        serde_json::Value::String(s) => self.set(Source::State, &k, &s),
                        other => self.set(Source::State, &k, &other.to_string()),
                    }
                }
            }
            Err(e) => self.errors.push(format!(
                "state: {STATE_CONFIG_FILE} is not a JSON object of strings: {e}"
            )),
        }
    }

    /// Merges `ferry.*` keys from a kernel command line.
    pub fn merge_cmdline(&mut self, cmdline: &str) {
        for word in split_cmdline(cmdline) {
            let Some(rest) = word.strip_prefix(CMDLINE_PREFIX) else {
                continue;
            };
            match rest.split_once('=') {
                Some((k, v)) => self.set(Source::Cmdline, k, v),
                None => self
                    .errors
                    .push(format!("cmdline: {word}: missing '=value'")),
            }
        }
    }

    fn set(&mut self, source: Source, key: &str, value: &str) {
        let Some(k) = KEYS.iter().find(|k| k.name == key) else {
            self.errors
                .push(format!("{source}: unknown key {CMDLINE_PREFIX}{key}"));
            return;
        };
        if let Err(why) = (k.validate)(value) {
            let shown = if k.secret { "<redacted>" } else { value };
            self.errors.push(format!(
                "{source}: {CMDLINE_PREFIX}{key}={shown}: {why}; ignored"
            ));
            return;
        }
        self.entries.insert(
            k.name,
            Entry {
                value: value.to_string(),
                source,
            },
        );
    }

    /// Cross-field checks after all sources are merged.
    fn finish(&mut self) {
        let wants_static = self
            .get("net")
            .map(|e| e.value == "static")
            .unwrap_or(false);
        if wants_static && self.get("ip").is_none() {
            self.errors
                .push("net=static needs a valid ferry.ip=A.B.C.D/prefix; using DHCP".to_string());
            self.net_fallback = true;
        }
        if self.get("net").map(|e| e.value == "dhcp").unwrap_or(false) && self.get("ip").is_some() {
            self.errors
                .push("net=dhcp given together with ip; ip is ignored".to_string());
        }
    }

    fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|e| e.value.as_str())
    }

    pub fn hostname(&self) -> String {
        self.value("hostname").unwrap_or("ferry").to_string()
    }

    /// The effective network mode. `ip` alone implies static; `net=dhcp` wins.
    pub fn net_mode(&self) -> NetMode {
        if self.net_fallback || self.value("net") == Some("dhcp") {
            return NetMode::Dhcp;
        }
        let ip = self.value("ip");
        let explicit_prefix = ip.is_some_and(|v| v.contains('/'));
        match ip.and_then(|v| parse_cidr(v).ok()) {
            Some((address, prefix)) => NetMode::Static(StaticNet {
                prefix: match self.value("netmask").and_then(|m| parse_netmask(m).ok()) {
                    Some(p) if !explicit_prefix => p,
                    _ => prefix,
                },
                address,
                gateway: self.value("gateway").and_then(|v| parse_ipv4(v).ok()),
            }),
            None => NetMode::Dhcp,
        }
    }

    pub fn dns(&self) -> Vec<IpAddr> {
        self.value("dns")
            .and_then(|v| parse_ip_list(v).ok())
            .unwrap_or_default()
    }

    pub fn ntp(&self) -> Vec<String> {
        self.value("ntp")
            .and_then(|v| parse_host_list(v).ok())
            .unwrap_or_default()
    }

    pub fn log_level(&self) -> tracing_subscriber::filter::LevelFilter {
        self.value("log")
            .and_then(|v| parse_level(v).ok())
            .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO)
    }

    /// Settings the agent takes from the environment: `(variable, value)`.
    pub fn agent_env(&self) -> Vec<(&'static str, String)> {
        [("mgmt", "FERRY_MGMT"), ("token", "FERRY_TOKEN")]
            .into_iter()
            .filter_map(|(k, var)| self.value(k).map(|v| (var, v.to_string())))
            .collect()
    }

    pub fn debug(&self) -> bool {
        self.value("debug")
            .and_then(|v| parse_bool(v).ok())
            .unwrap_or(false)
    }

    /// The per-setting view for `/v1/status`: value and source, secrets
    /// redacted, defaults filled in.
    pub fn view(&self) -> BTreeMap<&'static str, SettingView> {
        let mut out = BTreeMap::new();
        for k in KEYS {
            let view = match self.get(k.name) {
                Some(e) => SettingView {
                    value: if k.secret {
                        Some("<redacted>".into())
                    } else {
                        Some(e.value.clone())
                    },
                    source: e.source,
                },
                None => SettingView {
                    value: default_value(k.name),
                    source: Source::Default,
                },
            };
            out.insert(k.name, view);
        }
        // Show the network mode actually used, not only what was asked for.
        if let Some(v) = out.get_mut("net") {
            let effective = match self.net_mode() {
                NetMode::Dhcp => "dhcp",
                NetMode::Static(_) => "static",
            };
            if v.value.as_deref() != Some(effective) {
                v.value = Some(effective.to_string());
                if self.net_fallback {
                    v.source = Source::Default;
                }
            }
        }
        out
    }
}

fn default_value(key: &str) -> Option<String> {
    match key {
        "hostname" => Some("ferry".into()),
        "net" => Some("dhcp".into()),
        "log" => Some("info".into()),
        "debug" => Some("0".into()),
        _ => None,
    }
}

/// One setting as shown in `/v1/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SettingView {
    pub value: Option<String>,
    pub source: Source,
}

/// Splits a kernel command line into words, honouring double quotes the way
/// the kernel does (`key="a b"`).
pub fn split_cmdline(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn validate_hostname(v: &str) -> Result<(), String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if v.len() <= 253 && v.split('.').all(ok_label) {
        Ok(())
    } else {
        Err("not a valid hostname".into())
    }
}

fn validate_net(v: &str) -> Result<(), String> {
    match v {
        "dhcp" | "static" => Ok(()),
        _ => Err("expected dhcp or static".into()),
    }
}

fn validate_mgmt(v: &str) -> Result<(), String> {
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (v, None),
    };
    if let Some(p) = port {
        p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_ok() || validate_hostname(host).is_ok() {
        Ok(())
    } else {
        Err("expected host[:port]".into())
    }
}

fn validate_user(v: &str) -> Result<(), String> {
    if !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control) {
        Ok(())
    } else {
        Err("expected 1 to 256 characters without control characters".into())
    }
}

fn validate_password(v: &str) -> Result<(), String> {
    // Never echo any part of the value.
    validate_user(v)
}

/// Parses `255.255.255.0` or `24` into a prefix length.
pub fn parse_netmask(v: &str) -> Result<u8, String> {
    if let Ok(p) = v.parse::<u8>() {
        return if (1..=32).contains(&p) {
            Ok(p)
        } else {
            Err(format!("prefix length {p} out of range 1..=32"))
        };
    }
    let m = u32::from(parse_ipv4(v)?);
    let ones = m.leading_ones();
    if ones == 0 || m.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(format!("{v} is not a contiguous netmask"));
    }
    u8::try_from(ones).map_err(|_| "bad netmask".into())
}

/// Parses a SHA-256 thumbprint (64 hex digits, colons optional).
pub fn parse_thumbprint(v: &str) -> Result<String, String> {
    let hex: String = v.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err("expected a SHA-256 thumbprint: 64 hex digits, colons optional".into())
    }
}

fn validate_token(v: &str) -> Result<(), String> {
    if !v.is_empty() && v.len() <= 512 && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("expected 1 to 512 printable characters".into())
    }
}

/// Parses a strict dotted-quad IPv4 address.
pub fn parse_ipv4(v: &str) -> Result<Ipv4Addr, String> {
    v.parse::<Ipv4Addr>()
        .map_err(|_| format!("{v:?} is not an IPv4 address"))
}

/// Parses `A.B.C.D/prefix`; a bare address gets /24.
pub fn parse_cidr(v: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = match v.split_once('/') {
        Some((a, p)) => (
            a,
            p.parse::<u8>()
                .map_err(|_| format!("bad prefix length {p:?}"))?,
        ),
        None => (v, 24),
    };
    let addr = parse_ipv4(a)?;
    if p == 0 || p > 32 {
        return Err(format!("prefix length {p} out of range 1..=32"));
    }
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err(format!("{addr} cannot be a host address"));
    }
    Ok((addr, p))
}

fn parse_ip_list(v: &str) -> Result<Vec<IpAddr>, String> {
    v.split(',')
        .map(|s| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IP address"))
        })
        .collect()
}

fn parse_host_list(v: &str) -> Result<Vec<String>, String> {
    v.split(',')
        .map(|s| {
            let s = s.trim();
            if s.parse::<IpAddr>().is_ok() || validate_hostname(s).is_ok() {
                Ok(s.to_string())
            } else {
                Err(format!("{s:?} is not a host name or address"))
            }
        })
        .collect()
}

fn parse_level(v: &str) -> Result<tracing_subscriber::filter::LevelFilter, String> {
    v.parse::<tracing_subscriber::filter::LevelFilter>()
        .map_err(|_| "expected off, error, warn, info, debug or trace".into())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 0 or 1".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(cmdline: &str, state: Option<&str>) -> Config {
        let mut cfg = Config::default();
        if let Some(s) = state {
            cfg.merge_state_json(s);
        }
        cfg.merge_cmdline(cmdline);
        cfg.finish();
        cfg
    }

    #[test]
    fn defaults_are_dhcp_and_ferry() {
        let cfg = load("console=ttyS0 quiet", None);
        assert_eq!(cfg.net_mode(), NetMode::Dhcp);
        assert_eq!(cfg.hostname(), "ferry");
        assert!(cfg.errors.is_empty());
        assert_eq!(cfg.view()["hostname"].source, Source::Default);
    }

    #[test]
    fn static_from_cmdline() {
        let cfg = load(
            "ferry.ip=10.0.2.77/24 ferry.gateway=10.0.2.2 ferry.dns=10.0.2.3",
            None,
        );
        assert_eq!(
            cfg.net_mode(),
            NetMode::Static(StaticNet {
                address: Ipv4Addr::new(10, 0, 2, 77),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            })
        );
        assert_eq!(cfg.view()["ip"].source, Source::Cmdline);
    }

    #[test]
    fn cmdline_beats_state() {
        let cfg = load(
            "ferry.hostname=cmd",
            Some(r#"{"hostname":"persisted","ntp":"pool.example"}"#),
        );
        assert_eq!(cfg.hostname(), "cmd");
        assert_eq!(cfg.view()["hostname"].source, Source::Cmdline);
        assert_eq!(cfg.view()["ntp"].source, Source::State);
        assert_eq!(cfg.ntp(), vec!["pool.example".to_string()]);
    }

    #[test]
    fn bad_entries_are_reported_and_ignored() {
        let cfg = load(
            "ferry.bogus=1 ferry.ip=300.1.2.3/24 ferry.hostname=ok",
            None,
        );
        assert_eq!(cfg.net_mode(), NetMode::Dhcp);
        assert_eq!(cfg.hostname(), "ok");
        assert!(
            cfg.errors
                .iter()
                .any(|e| e.contains("unknown key ferry.bogus")),
            "{:?}",
            cfg.errors
        );
        assert!(
            cfg.errors
                .iter()
                .any(|e| e.contains("ferry.ip=300.1.2.3/24")),
            "{:?}",
            cfg.errors
        );
    }

    #[test]
    fn static_without_address_falls_back_to_dhcp() {
        let cfg = load("ferry.net=static ferry.ip=10.0.2.999", None);
        assert_eq!(cfg.net_mode(), NetMode::Dhcp);
        assert_eq!(cfg.errors.len(), 2, "{:?}", cfg.errors);
        assert_eq!(cfg.view()["net"].value.as_deref(), Some("dhcp"));
    }

    #[test]
    fn secrets_are_redacted() {
        let cfg = load("ferry.token=s3cret ferry.mgmt=mgmt.example:9876", None);
        let v = cfg.view();
        assert_eq!(v["token"].value.as_deref(), Some("<redacted>"));
        assert_eq!(v["mgmt"].value.as_deref(), Some("mgmt.example:9876"));
        let bad = load("ferry.token=", None);
        assert!(bad.errors.iter().all(|e| !e.contains("s3cret")));
    }

    #[test]
    fn quoted_words() {
        assert_eq!(
            split_cmdline(r#"a "b c"  ferry.x="1 2""#),
            vec!["a", "b c", "ferry.x=1 2"]
        );
    }

    #[test]
    fn broken_state_file_is_an_error_not_a_crash() {
        let cfg = load("", Some("[1,2"));
        assert_eq!(cfg.errors.len(), 1);
        assert_eq!(cfg.net_mode(), NetMode::Dhcp);
    }

    fn env_doc(props: &[(&str, &str)]) -> Vec<u8> {
        let mut d = String::from(
            r#"<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>"#,
        );
        for (k, v) in props {
            d.push_str(&format!(r#"<Property oe:key="{k}" oe:value="{v}"/>"#));
        }
        d.push_str("</PropertySection></Environment>");
        d.into_bytes()
    }

    #[test]
    fn precedence_cmdline_ovfenv_guestinfo_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_CONFIG_FILE),
            r#"{"hostname":"from-state","ntp":"ntp.state","dns":"10.0.0.53","log":"debug"}"#,
        )
        .unwrap();
        let deploy = DeploySources {
            ovf_env: Some(EnvDocument {
                origin: "/dev/sr0".into(),
                bytes: env_doc(&[
                    ("ferry.hostname", "from-ovf"),
                    ("ferry.ntp", "ntp.ovf"),
                    ("ferry.net", "static"),
                    ("ferry.ip", "192.0.2.10"),
                    ("ferry.netmask", "255.255.255.128"),
                    ("ferry.gateway", ""),
                    ("ferry.vcenter_password", "pa ss"),
                    ("other.product.key", "x"),
                ]),
            }),
            guestinfo: BTreeMap::from([
                ("hostname".to_string(), "from-guestinfo".to_string()),
                ("ntp".to_string(), "ntp.guestinfo".to_string()),
                ("dns".to_string(), "10.0.0.1".to_string()),
            ]),
            errors: Vec::new(),
        };
        let cfg = Config::load("ferry.hostname=from-cmdline", dir.path(), &deploy);
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let v = cfg.view();
        assert_eq!(cfg.hostname(), "from-cmdline");
        assert_eq!(v["hostname"].source, Source::Cmdline);
        assert_eq!(v["ntp"].value.as_deref(), Some("ntp.ovf"));
        assert_eq!(v["ntp"].source, Source::OvfEnv);
        assert_eq!(v["dns"].source, Source::Guestinfo);
        assert_eq!(v["log"].source, Source::State);
        assert_eq!(v["gateway"].source, Source::Default, "empty means unset");
        assert_eq!(v["vcenter_password"].value.as_deref(), Some("<redacted>"));
        assert_eq!(
            serde_json::to_value(v["ip"].source).unwrap(),
            serde_json::json!("ovf-env")
        );
        assert_eq!(
            cfg.net_mode(),
            NetMode::Static(StaticNet {
                address: Ipv4Addr::new(192, 0, 2, 10),
                prefix: 25,
                gateway: None,
            })
        );
        assert_eq!(cfg.ovf_env_origin(), Some("/dev/sr0"));
    }

    #[test]
    fn malformed_ovf_env_is_one_error_and_dhcp() {
        let deploy = DeploySources {
            ovf_env: Some(EnvDocument {
                origin: "/dev/sr0".into(),
                bytes: b"<Environment><PropertySection>".to_vec(),
            }),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load("", dir.path(), &deploy);
        assert_eq!(cfg.errors.len(), 1, "{:?}", cfg.errors);
        assert!(cfg.errors[0].contains("malformed ovf-env.xml"));
        assert_eq!(cfg.net_mode(), NetMode::Dhcp);
        assert_eq!(cfg.ovf_env_origin(), None);
    }

    #[test]
    fn secrets_persist_0600_and_reload_as_state() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let deploy = DeploySources {
            ovf_env: Some(EnvDocument {
                origin: "/dev/sr0".into(),
                bytes: env_doc(&[("ferry.token", "tok-123"), ("ferry.vcenter_password", "pw")]),
            }),
            ..Default::default()
        };
        let cfg = Config::load("", dir.path(), &deploy);
        assert!(cfg.persist_secrets(dir.path()).unwrap());
        assert!(!cfg.persist_secrets(dir.path()).unwrap(), "unchanged");
        let p = dir.path().join(STATE_SECRETS_FILE);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Next boot without the CD: the secrets come from the state.
        let again = Config::load("", dir.path(), &DeploySources::default());
        assert_eq!(again.view()["token"].source, Source::State);
        assert_eq!(again.secrets()["vcenter_password"], "pw");
        let shown = format!("{:?} {:?}", again.view(), again.errors);
        assert!(!shown.contains("tok-123") && !shown.contains("\"pw\""));
    }

    #[test]
    fn netmasks_and_thumbprints() {
        assert_eq!(parse_netmask("255.255.255.0"), Ok(24));
        assert_eq!(parse_netmask("16"), Ok(16));
        assert!(parse_netmask("255.0.255.0").is_err());
        assert!(parse_netmask("0.0.0.0").is_err());
        assert!(parse_netmask("33").is_err());
        let t = "AB:".repeat(31) + "AB";
        assert_eq!(parse_thumbprint(&t).unwrap(), "ab".repeat(32));
        assert!(parse_thumbprint("abcd").is_err());
        let cfg = load("ferry.ip=10.0.2.9/20 ferry.netmask=24", None);
        assert!(matches!(
            cfg.net_mode(),
            NetMode::Static(StaticNet { prefix: 20, .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_sources_never_panic_and_keep_only_valid_values(
            cmdline in "\\PC{0,120}",
            gi in proptest::collection::btree_map("[a-z_]{1,18}", "\\PC{0,40}", 0..6),
            state in "\\PC{0,80}",
        ) {
            let mut cfg = Config::default();
            cfg.merge_state_json(&state);
            cfg.merge_guestinfo(&gi);
            cfg.merge_cmdline(&cmdline);
            cfg.finish();
            for (name, e) in &cfg.entries {
                let k = KEYS.iter().find(|k| k.name == *name).unwrap();
                proptest::prop_assert!((k.validate)(&e.value).is_ok());
            }
            if let NetMode::Static(s) = cfg.net_mode() {
                proptest::prop_assert!((1..=32).contains(&s.prefix));
            }
            let _ = (cfg.view(), cfg.dns(), cfg.ntp(), cfg.log_level(), cfg.agent_env());
        }

        #[test]
        fn rejected_secrets_are_never_echoed(
            key in "(token|vcenter_password)",
            // Invalid for both validators: a control character, or too long.
            secret in "S3CR3T[a-z]{0,8}(\u{1}|[a-z]{600})",
            via_guestinfo in proptest::bool::ANY,
        ) {
            let mut cfg = Config::default();
            if via_guestinfo {
                cfg.merge_guestinfo(&BTreeMap::from([(key.clone(), secret.clone())]));
            } else {
                cfg.merge_cmdline(&format!("ferry.{key}={secret}"));
            }
            cfg.finish();
            proptest::prop_assert!(cfg.get(&key).is_none());
            proptest::prop_assert!(!cfg.errors.is_empty());
            for e in &cfg.errors {
                proptest::prop_assert!(!e.contains("S3CR3T"), "{}", e);
            }
        }

        #[test]
        fn cmdline_words_round_trip(words in proptest::collection::vec("[!#-~]{1,12}( [!#-~]{1,6})?", 0..8)) {
            // Words with a space are quoted, as a boot loader writes `key="a b"`.
            let line: Vec<String> = words
                .iter()
                .map(|w| if w.contains(' ') { format!("\"{w}\"") } else { w.clone() })
                .collect();
            proptest::prop_assert_eq!(split_cmdline(&line.join("  ")), words);
        }
    }
}
