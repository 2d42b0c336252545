//! The node's config file (`node.toml` in the state directory): listen address, vaults with
//! their quotas, grants, schedules of the node jobs, and retention.
//!
//! ```toml
//! listen = "0.0.0.0:9876"
//! revocation_every = 300        # seconds between fetches of the revocation list
//! # mgmt = "mgmt.example:9876"  # only if enrolled before `mgmt.url` was recorded
//!
//! [[vault]]
//! name = "main"
//! quota = "2T"            # bytes, or with a k/M/G/T suffix (powers of 1024); 0 = none
//!
//! [[grant]]
//! identity = "agent-1a2b3c4d"   # certificate DNS name without .ferry.internal
//! vaults = ["main"]             # "*" for every vault
//! admin = false                 # true: read and delete every point, run jobs
//!
//! [schedule]                    # cron (5 fields, or 6 with seconds first), UTC
//! verify = "0 3 * * *"
//! prune = "0 4 * * *"
//! gc = "30 4 * * *"
//!
//! [retention]                   # what the scheduled prune keeps, per group
//! keep_last = 7
//! keep_daily = 14
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::NodeError;

/// Seconds between fetches of the revocation list, unless `revocation_every` says otherwise.
pub const DEFAULT_REVOCATION_EVERY: u64 = 300;

/// A quota: bytes, or a string with a suffix.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Quota {
    Bytes(u64),
    Text(String),
}

fn parse_quota(q: &Quota) -> Result<u64, String> {
    match q {
        Quota::Bytes(b) => Ok(*b),
        Quota::Text(t) => {
            let t = t.trim().trim_end_matches(['B', 'b']);
            let (num, mult) = match t.chars().last() {
                Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
                Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
                Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
                Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
                _ => (t, 1),
            };
            num.trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| format!("quota {t:?} is not a size"))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    name: String,
    #[serde(default)]
    quota: Option<Quota>,
    #[serde(default)]
    chunk_size: Option<u32>,
    #[serde(default)]
    compression_level: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    revocation_every: Option<u64>,
    #[serde(default)]
    mgmt: Option<String>,
    #[serde(default, rename = "vault")]
    vaults: Vec<RawVault>,
    #[serde(default, rename = "grant")]
    grants: Vec<Grant>,
    #[serde(default)]
    schedule: Schedule,
    #[serde(default)]
    retention: Option<ferry_api::node::PruneRequest>,
}

/// One vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Name (`[A-Za-z0-9_-]`, also its directory name).
    pub name: String,
    /// Quota in bytes; 0 means none.
    pub quota: u64,
    /// Chunk size of a new vault's repository.
    pub chunk_size: u32,
    /// zstd level of a new vault's repository.
    pub compression_level: i32,
}

/// Who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Certificate name without `.ferry.internal` (`agent-<id>`, `admin-<name>`).
    pub identity: String,
    /// Vault names, or `*`.
    #[serde(default)]
    pub vaults: Vec<String>,
    /// Admin: every point of those vaults, deletes, jobs.
    #[serde(default)]
    pub admin: bool,
}

/// Cron expressions of the node jobs; a missing one does not run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Verify every vault.
    pub verify: Option<String>,
    /// Prune every vault by `[retention]`.
    pub prune: Option<String>,
    /// GC every vault.
    pub gc: Option<String>,
}

/// The parsed config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Listen address.
    pub listen: String,
    /// Seconds between fetches of the revocation list from the management server.
    pub revocation_every: u64,
    /// The management server (`host:port` or `https://host:port`) when `mgmt.url`, written
    /// at enrollment, is missing.
    pub mgmt: Option<String>,
    /// Vaults.
    pub vaults: Vec<VaultConfig>,
    /// Grants.
    pub grants: Vec<Grant>,
    /// Job schedules.
    pub schedule: Schedule,
    /// Retention of the scheduled prune.
    pub retention: Option<ferry_api::node::PruneRequest>,
}

/// Access of one caller to one vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// No grant.
    None,
    /// Write, and read its own points.
    Write,
    /// Everything.
    Admin,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl NodeConfig {
    /// Parses a config text.
    pub fn parse(text: &str) -> Result<NodeConfig, NodeError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| NodeError::Config(e.to_string()))?;
        let mut vaults = Vec::new();
        for v in raw.vaults {
            if !valid_name(&v.name) {
                return Err(NodeError::Config(format!(
                    "vault name {:?}: use letters, digits, - and _",
                    v.name
                )));
            }
            if vaults.iter().any(|o: &VaultConfig| o.name == v.name) {
                return Err(NodeError::Config(format!("vault {} twice", v.name)));
            }
            let quota = match &v.quota {
                Some(q) => parse_quota(q)
                    .map_err(|e| NodeError::Config(format!("vault {}: {e}", v.name)))?,
                None => 0,
            };
            vaults.push(VaultConfig {
                name: v.name,
                quota,
                chunk_size: v.chunk_size.unwrap_or(4 << 20),
                compression_level: v.compression_level.unwrap_or(3),
            });
        }
        for g in &raw.grants {
            for v in &g.vaults {
                if v != "*" && !vaults.iter().any(|o| &o.name == v) {
                    return Err(NodeError::Config(format!(
                        "grant for {} names unknown vault {v}",
                        g.identity
                    )));
                }
            }
        }
        for (what, c) in [
            ("verify", &raw.schedule.verify),
            ("prune", &raw.schedule.prune),
            ("gc", &raw.schedule.gc),
        ] {
            if let Some(c) = c {
                ferry_api::plan::parse_schedule(c)
                    .map_err(|e| NodeError::Config(format!("schedule.{what} {c:?}: {e}")))?;
            }
        }
        if raw.schedule.prune.is_some() && raw.retention.is_none() {
            return Err(NodeError::Config(
                "schedule.prune needs a [retention] table".into(),
            ));
        }
        if raw.revocation_every == Some(0) {
            return Err(NodeError::Config(
                "revocation_every must be at least 1 (seconds)".into(),
            ));
        }
        Ok(NodeConfig {
            listen: raw.listen.unwrap_or_else(|| "0.0.0.0:9876".into()),
            revocation_every: raw.revocation_every.unwrap_or(DEFAULT_REVOCATION_EVERY),
            mgmt: raw.mgmt,
            vaults,
            grants: raw.grants,
            schedule: raw.schedule,
            retention: raw.retention,
        })
    }

    /// Reads `path`; an error names the file.
    pub fn load(path: &Path) -> Result<NodeConfig, NodeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
        NodeConfig::parse(&text).map_err(|e| match e {
            NodeError::Config(m) => NodeError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// A readable listing of the config for `ferry-node check-config`: vaults with their
    /// quotas, grants, schedules, retention; and vault directories under `state` that the
    /// file no longer names (kept on disk, not served).
    pub fn describe(&self, state: &Path) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let size = |q: u64| {
            if q == 0 {
                "no quota".to_string()
            } else {
                format!("quota {q} bytes")
            }
        };
        let _ = writeln!(out, "listen {}", self.listen);
        let _ = writeln!(out, "{} vault(s):", self.vaults.len());
        for v in &self.vaults {
            let dir = state.join("vaults").join(&v.name);
            let _ = writeln!(
                out,
                "  {} ({}){}",
                v.name,
                size(v.quota),
                if dir.is_dir() {
                    ""
                } else {
                    ", new: created at start or reload"
                }
            );
        }
        if let Ok(rd) = std::fs::read_dir(state.join("vaults")) {
            let mut orphans: Vec<String> = rd
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !self.vaults.iter().any(|v| &v.name == n))
                .collect();
            orphans.sort();
            for n in orphans {
                let _ = writeln!(out, "  {n}: on disk but not in the file (kept, not served)");
            }
        }
        let _ = writeln!(out, "{} grant(s):", self.grants.len());
        for g in &self.grants {
            let _ = writeln!(
                out,
                "  {} -> {}{}",
                g.identity,
                if g.vaults.is_empty() {
                    "(no vault)".to_string()
                } else {
                    g.vaults.join(", ")
                },
                if g.admin { " (admin)" } else { "" }
            );
        }
        for (what, c) in [
            ("verify", &self.schedule.verify),
            ("prune", &self.schedule.prune),
            ("gc", &self.schedule.gc),
        ] {
            if let Some(c) = c {
                let _ = writeln!(out, "schedule {what}: {c}");
            }
        }
        if let Some(r) = &self.retention {
            let _ = writeln!(
                out,
                "retention: {}",
                serde_json::to_string(r).unwrap_or_default()
            );
        }
        out
    }

    /// What `identity` may do in `vault`.
    pub fn access(&self, identity: &str, vault: &str) -> Access {
        self.grants
            .iter()
            .filter(|g| g.identity == identity && g.vaults.iter().any(|v| v == "*" || v == vault))
            .map(|g| {
                if g.admin {
                    Access::Admin
                } else {
                    Access::Write
                }
            })
            .max()
            .unwrap_or(Access::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_grants_apply() {
        let c = NodeConfig::parse(
            r#"
            [[vault]]
            name = "a"
            quota = "10M"
            [[vault]]
            name = "b"
            [[grant]]
            identity = "agent-x"
            vaults = ["a"]
            [[grant]]
            identity = "admin-root"
            vaults = ["*"]
            admin = true
            [schedule]
            gc = "0 4 * * *"
            "#,
        )
        .unwrap();
        assert_eq!(c.vaults[0].quota, 10 << 20);
        assert_eq!(c.revocation_every, DEFAULT_REVOCATION_EVERY);
        assert_eq!(c.vaults[1].quota, 0);
        assert_eq!(c.access("agent-x", "a"), Access::Write);
        assert_eq!(c.access("agent-x", "b"), Access::None);
        assert_eq!(c.access("admin-root", "b"), Access::Admin);
        assert_eq!(c.access("agent-y", "a"), Access::None);
        for bad in [
            "[[vault]]\nname = \"a/b\"",
            "[[vault]]\nname = \"a\"\nquota = \"lots\"",
            "[[grant]]\nidentity = \"x\"\nvaults = [\"nope\"]",
            "[schedule]\ngc = \"every day\"",
            "[schedule]\nprune = \"0 4 * * *\"",
            "lisen = \"x\"",
            "revocation_every = 0",
        ] {
            assert!(NodeConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_config_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "[[vault]]\nname = \"a\"\nquota = \"lots\"\n").unwrap();
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("quota \"lots\" is not a size"), "{e}");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("node.toml") && e.contains("lisen"), "{e}");

        std::fs::write(&path, "[[vault]]\nname = \"a\"\nquota = \"1M\"\n[[grant]]\nidentity = \"agent-x\"\nvaults = [\"a\"]\n").unwrap();
        std::fs::create_dir_all(dir.path().join("vaults/old")).unwrap();
        let text = NodeConfig::load(&path).unwrap().describe(dir.path());
        assert!(text.contains("a (quota 1048576 bytes)"), "{text}");
        assert!(text.contains("agent-x -> a"), "{text}");
        assert!(text.contains("old: on disk but not in the file"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_fails_cleanly(text in "\\PC{0,200}") {
            let _ = NodeConfig::parse(&text);
        }

        #[test]
        fn toml_shaped_text_parses_or_fails_cleanly(
            lines in proptest::collection::vec(
                "(\\[\\[vault\\]\\]|\\[\\[grant\\]\\]|\\[schedule\\]|\\[retention\\]|name = \"[a-z/]{0,5}\"|quota = (\"[0-9]{0,22}[kMGTb]?\"|[0-9]{1,20}|-1)|identity = \"[a-z]{1,3}\"|vaults = \\[\"(\\*|[a-z]{1,2})\"\\]|admin = true|gc = \"[0-9* ]{0,12}\"|keep_last = [0-9]{1,3}|revocation_every = [0-9]{1,3})",
                0..12,
            ),
        ) {
            if let Ok(c) = NodeConfig::parse(&lines.join("\n")) {
                proptest::prop_assert!(c.revocation_every >= 1);
                for v in &c.vaults {
                    proptest::prop_assert!(valid_name(&v.name));
                }
                let _ = c.access("a", "b");
            }
        }

        #[test]
        fn quotas_scale_or_fail_on_overflow(n in proptest::num::u64::ANY, s in 0usize..5) {
            let (suffix, shift) = [("", 0), ("k", 10), ("M", 20), ("G", 30), ("T", 40)][s];
            let text = format!("[[vault]]\nname = \"v\"\nquota = \"{n}{suffix}\"\n");
            match n.checked_mul(1 << shift) {
                Some(want) => proptest::prop_assert_eq!(NodeConfig::parse(&text).unwrap().vaults[0].quota, want),
                None => proptest::prop_assert!(NodeConfig::parse(&text).is_err()),
            }
        }
    }
}
