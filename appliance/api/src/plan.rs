//! Backup plans: declarative TOML or JSON.
//!
//! ```toml
//! name = "nightly"
//! schedule = "0 30 2 * * *"     # cron (croner): 5 fields, or 6 with seconds first
//! run_missed = true             # run once at boot when a run was missed while off
//! verify = true                 # re-read the new restore points after the backup
//!
//! [vcenter]
//! url = "https://vcenter.example"
//! credential = "vc"             # a name in the credentials pushed with the plan
//! thumbprint = "AB:CD:..."      # SHA-256 of its certificate
//! # or: ca = """-----BEGIN CERTIFICATE-----..."""   # PEM CA(s) that signed its certificate
//! # or: trust_on_first_use = true  # keep the first certificate seen (not recommended)
//!
//! [vms]                         # the union of everything given; `all = true` for all
//! names = ["web-1"]
//! globs = ["db-*"]
//! folders = ["/DC0/vm/prod"]
//! tags = ["backup-gold", "tier/silver"]  # vSphere tags: "tag" or "category/tag"
//!
//! [destination]
//! url = "sftp://backup@nas:22/ferry"
//! credential = "nas"
//!
//! [retention]                   # PBS rules, per VM
//! keep_last = 7
//! keep_daily = 14
//!
//! [options]
//! compression_level = 3
//! cbt = true                    # changed-block incrementals where possible
//! bwlimit = "50M"               # bytes per second to the storage
//! parallel_vms = 1
//! parallel_disks = 8            # datastore reads in flight per VM
//! ```
//!
//! Unknown fields are refused, and every error names the field (`vcenter.url: ...`).
//!
//! **vCenter trust.** The job sends the vCenter password to whatever answers at
//! `vcenter.url`, so a plan must say how that certificate is checked: `thumbprint` (pin the
//! certificate's SHA-256), or `ca` (verify the chain and host name against these PEM
//! certificates), or, explicitly, `trust_on_first_use = true` (keep the thumbprint of the
//! first certificate seen on the agent and refuse any other later; whoever answers first,
//! an attacker included, is trusted). Exactly one of the three; a plan with none is refused
//! by `ferry plan check`, by the management server and by the agent.
//!
//! A cleartext destination (`ftp://`, or `s3://` with an `http://` endpoint) is refused
//! unless its URL says `insecure=1`, as the storage layer refuses it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A plan error: the field, and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// Dotted path of the field (`.` for the document).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> PlanError {
    PlanError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A backup plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Unique on an agent: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Cron expression (croner): 5 fields, or 6 with seconds first. UTC.
    pub schedule: String,
    /// Run once at boot when a scheduled run was missed while the agent was off.
    #[serde(default)]
    pub run_missed: bool,
    /// Verify the new restore points after the backup.
    #[serde(default)]
    pub verify: bool,
    /// Where the VMs are.
    pub vcenter: VcenterRef,
    /// Which VMs.
    pub vms: VmSelection,
    /// Where the backups go.
    pub destination: Destination,
    /// Retention, applied per VM after each job.
    #[serde(default)]
    pub retention: Retention,
    /// Tuning.
    #[serde(default)]
    pub options: PlanOptions,
}

/// vCenter or ESXi.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VcenterRef {
    /// `https://host` or `host`.
    pub url: String,
    /// Name of the credential (user and password).
    pub credential: String,
    /// SHA-256 thumbprint of its certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// PEM certificates of the CA(s) that signed its certificate (chain and name checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Keep the first certificate seen and refuse any other later. Only when set: without a
    /// thumbprint or a CA, the plan is refused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trust_on_first_use: bool,
}

/// How a plan trusts its vCenter's certificate (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcenterTrust<'a> {
    /// Pin this SHA-256 thumbprint.
    Thumbprint(&'a str),
    /// Verify against these PEM CA certificates.
    Ca(&'a str),
    /// Keep the first certificate seen.
    TrustOnFirstUse,
}

impl VcenterRef {
    /// The one trust rule the plan gives, or why there is none.
    pub fn trust(&self) -> Result<VcenterTrust<'_>, PlanError> {
        match (&self.thumbprint, &self.ca, self.trust_on_first_use) {
            (Some(t), None, false) => Ok(VcenterTrust::Thumbprint(t)),
            (None, Some(c), false) => Ok(VcenterTrust::Ca(c)),
            (None, None, true) => Ok(VcenterTrust::TrustOnFirstUse),
            (None, None, false) => Err(err(
                "vcenter",
                "say how to trust the vCenter certificate: thumbprint = \"SHA-256\", \
                 ca = \"PEM\", or trust_on_first_use = true; without one the agent would send \
                 the vCenter password to whatever answers at the address",
            )),
            _ => Err(err(
                "vcenter",
                "give only one of thumbprint, ca and trust_on_first_use",
            )),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which VMs: the union of every list, or all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmSelection {
    /// Every VM of the inventory.
    #[serde(default)]
    pub all: bool,
    /// Exact names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Name patterns with `*` and `?`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub globs: Vec<String>,
    /// Inventory folders (`/DC/vm/folder`): every VM below them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
    /// vSphere tags: `tag`, or `category/tag` when the name is in several categories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Names or patterns to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// The storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// A storage location as `ferry --repo` takes it (path, file://, sftp://, ftp(s)://, s3://).
    pub url: String,
    /// Name of the credential with its secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Create the repository when the location is empty.
    #[serde(default = "yes")]
    pub create: bool,
}

fn yes() -> bool {
    true
}

/// PBS-style retention; nothing set keeps everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// One per hour for N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// One per day for N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// One per week for N weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// One per month for N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// One per year for N years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    /// True when at least one rule is set.
    pub fn any(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// Tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanOptions {
    /// zstd level 1..=19; the repository's when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Use CBT incrementals where possible.
    #[serde(default = "yes")]
    pub cbt: bool,
    /// Turn CBT on where it is off.
    #[serde(default)]
    pub enable_cbt: bool,
    /// Ask for quiesced snapshots.
    #[serde(default)]
    pub quiesce: bool,
    /// Bytes per second to the storage (`k`, `M`, `G` suffixes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<String>,
    /// VMs backed up at the same time.
    #[serde(default = "one")]
    pub parallel_vms: usize,
    /// Datastore reads in flight per VM.
    #[serde(default = "eight")]
    pub parallel_disks: usize,
}

fn one() -> usize {
    1
}
fn eight() -> usize {
    8
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            compression_level: None,
            cbt: true,
            enable_cbt: false,
            quiesce: false,
            bwlimit: None,
            parallel_vms: 1,
            parallel_disks: 8,
        }
    }
}

/// Parses a cron expression as plans use it: 5 fields, or 6 with seconds first.
pub fn parse_schedule(s: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(s)
        .map_err(|e| e.to_string())
}

/// The next run strictly after `after` (Unix seconds), UTC.
pub fn next_run(cron: &croner::Cron, after: i64) -> Option<i64> {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp(after, 0)?;
    cron.find_next_occurrence(&t, false)
        .ok()
        .map(|n| n.timestamp())
}

/// Parses a bandwidth (`50M`, `800k`, `1G`, plain bytes) in bytes per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, mul) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// True when `name` matches the glob (`*` any run, `?` one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl Plan {
    /// Parses TOML and validates.
    pub fn from_toml(s: &str) -> Result<Plan, PlanError> {
        let de = toml::Deserializer::parse(s).map_err(|e| err(".", e.to_string()))?;
        let plan: Plan = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(&path, first_line(&e.into_inner().to_string()))
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// Parses JSON and validates.
    pub fn from_json(s: &str) -> Result<Plan, PlanError> {
        let mut de = serde_json::Deserializer::from_str(s);
        let plan: Plan = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| err(&e.path().to_string(), e.inner().to_string()))?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks everything serde cannot: names, cron, URLs, ranges, references.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            return Err(err(
                "name",
                "use 1 to 64 letters, digits, '-', '_' or '.' (not first)",
            ));
        }
        parse_schedule(&self.schedule)
            .map_err(|e| err("schedule", format!("not a cron expression: {e}")))?;
        if self.vcenter.url.trim().is_empty() {
            return Err(err("vcenter.url", "empty"));
        }
        let u = if self.vcenter.url.contains("://") {
            self.vcenter.url.clone()
        } else {
            format!("https://{}", self.vcenter.url)
        };
        let parsed = url::Url::parse(&u).map_err(|e| err("vcenter.url", e.to_string()))?;
        if parsed.scheme() != "https" {
            return Err(err("vcenter.url", "must be https"));
        }
        if self.vcenter.credential.is_empty() {
            return Err(err("vcenter.credential", "empty"));
        }
        match self.vcenter.trust()? {
            VcenterTrust::Thumbprint(t) => {
                let hex: String = t.chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(err(
                        "vcenter.thumbprint",
                        "expected a SHA-256 thumbprint (64 hex digits, ':' allowed)",
                    ));
                }
            }
            VcenterTrust::Ca(pem) => {
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(err(
                        "vcenter.ca",
                        "expected PEM certificates (-----BEGIN CERTIFICATE-----)",
                    ));
                }
            }
            VcenterTrust::TrustOnFirstUse => {}
        }
        let v = &self.vms;
        if !v.all
            && v.names.is_empty()
            && v.globs.is_empty()
            && v.folders.is_empty()
            && v.tags.is_empty()
        {
            return Err(err(
                "vms",
                "select VMs with names, globs, folders or tags, or set all = true",
            ));
        }
        for (i, t) in v.tags.iter().enumerate() {
            let name = t.split_once('/').map_or(t.as_str(), |(_, n)| n);
            if name.trim().is_empty() || t.starts_with('/') {
                return Err(err(
                    &format!("vms.tags[{i}]"),
                    "a tag name, or CATEGORY/TAG",
                ));
            }
        }
        for (i, f) in v.folders.iter().enumerate() {
            if !f.starts_with('/') {
                return Err(err(
                    &format!("vms.folders[{i}]"),
                    "an inventory path such as /DC0/vm/prod",
                ));
            }
        }
        if self.destination.url.trim().is_empty() {
            return Err(err("destination.url", "empty"));
        }
        if let Some((scheme, _)) = self.destination.url.split_once("://") {
            const SCHEMES: [&str; 10] = [
                "file",
                "sftp",
                "ftp",
                "ftps",
                "ftps-implicit",
                "s3",
                "smb",
                "cifs",
                "nfs",
                "node",
            ];
            if !SCHEMES.contains(&scheme) {
                return Err(err(
                    "destination.url",
                    format!("unsupported scheme {scheme:?} ({})", SCHEMES.join(", ")),
                ));
            }
            let u = url::Url::parse(&self.destination.url)
                .map_err(|e| err("destination.url", e.to_string()))?;
            // As ferry-storage refuses them when the job opens the store; said at deploy time.
            let param = |k: &str| u.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v);
            let insecure =
                param("insecure").is_some_and(|v| matches!(&*v, "1" | "true" | "yes" | "on"));
            let cleartext = scheme == "ftp"
                || (scheme == "s3"
                    && param("endpoint").is_some_and(|e| {
                        e.get(..7)
                            .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
                    }));
            if cleartext && !insecure {
                return Err(err(
                    "destination.url",
                    "credentials and backup data would cross the network in clear: use ftps:// \
                     or an https:// endpoint, or add insecure=1 to the URL to accept that",
                ));
            }
        } else if !self.destination.url.starts_with('/') {
            return Err(err("destination.url", "a local path must be absolute"));
        }
        let o = &self.options;
        if let Some(l) = o.compression_level {
            if !(1..=19).contains(&l) {
                return Err(err("options.compression_level", "must be 1 to 19"));
            }
        }
        if let Some(b) = &o.bwlimit {
            if parse_rate(b).is_none_or(|r| r == 0) {
                return Err(err(
                    "options.bwlimit",
                    "a rate such as 50M, 800k or 1G (bytes per second)",
                ));
            }
        }
        if !(1..=16).contains(&o.parallel_vms) {
            return Err(err("options.parallel_vms", "must be 1 to 16"));
        }
        if !(1..=64).contains(&o.parallel_disks) {
            return Err(err("options.parallel_disks", "must be 1 to 64"));
        }
        for (f, val) in [
            ("retention.keep_last", self.retention.keep_last),
            ("retention.keep_hourly", self.retention.keep_hourly),
            ("retention.keep_daily", self.retention.keep_daily),
            ("retention.keep_weekly", self.retention.keep_weekly),
            ("retention.keep_monthly", self.retention.keep_monthly),
            ("retention.keep_yearly", self.retention.keep_yearly),
        ] {
            if val == Some(0) {
                return Err(err(f, "0 would keep nothing; leave it out instead"));
            }
        }
        Ok(())
    }

    /// Names of the credentials the plan refers to.
    pub fn credential_names(&self) -> BTreeSet<String> {
        let mut s = BTreeSet::new();
        s.insert(self.vcenter.credential.clone());
        if let Some(c) = &self.destination.credential {
            s.insert(c.clone());
        }
        s
    }
}

fn first_line(s: &str) -> String {
    // toml errors carry a multi-line source excerpt; the path already says where.
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('|'))
        .unwrap_or(s)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "nightly"
schedule = "*/5 * * * * *"
verify = true
[vcenter]
url = "https://127.0.0.1:8989"
credential = "vc"
thumbprint = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89"
[vms]
names = ["DC0_H0_VM0"]
[destination]
url = "/srv/backup"
[retention]
keep_last = 3
"#;

    #[test]
    fn good_plan_parses_in_toml_and_json() {
        let p = Plan::from_toml(GOOD).unwrap();
        assert_eq!(p.name, "nightly");
        assert!(p.options.cbt);
        assert_eq!(p.options.parallel_vms, 1);
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(Plan::from_json(&j).unwrap(), p);
        let c = parse_schedule(&p.schedule).unwrap();
        let n = next_run(&c, 1_000_000_000).unwrap();
        assert_eq!(n, 1_000_000_005);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("url = \"https://127.0.0.1:8989\"\n", ""),
                "vcenter",
            ),
            (GOOD.replace("*/5 * * * * *", "every day"), "schedule"),
            (
                GOOD.replace("keep_last = 3", "keep_last = \"x\""),
                "retention.keep_last",
            ),
            (GOOD.replace("keep_last = 3", "keep_lats = 3"), "retention"),
            (
                GOOD.replace("/srv/backup", "gopher://x/"),
                "destination.url",
            ),
            (GOOD.replace("verify = true", "verify = 3"), "verify"),
            (
                GOOD.replace("names = [\"DC0_H0_VM0\"]", "tags = [\"tier/\"]"),
                "vms.tags[0]",
            ),
            (
                format!("{GOOD}[options]\nparallel_vms = 0\n"),
                "options.parallel_vms",
            ),
            (
                format!("{GOOD}[options]\nbwlimit = \"fast\"\n"),
                "options.bwlimit",
            ),
        ];
        for (text, field) in cases {
            let e = Plan::from_toml(&text).unwrap_err();
            assert!(e.field.starts_with(field), "{field}: got {e}");
        }
        let tagged = Plan::from_toml(&GOOD.replace(
            "names = [\"DC0_H0_VM0\"]",
            "tags = [\"gold\", \"tier/silver\"]",
        ))
        .unwrap();
        assert_eq!(tagged.vms.tags, ["gold", "tier/silver"]);
        let e = Plan::from_toml(&GOOD.replace("keep_last = 3", "keep_lats = 3")).unwrap_err();
        assert!(e.message.contains("keep_lats"), "{e}");
    }

    #[test]
    fn vcenter_trust_is_explicit() {
        let thumb = "thumbprint = \"ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89\"\n";
        let none = GOOD.replace(thumb, "");
        let e = Plan::from_toml(&none).unwrap_err();
        assert_eq!(e.field, "vcenter");
        assert!(e.message.contains("password"), "{e}");
        let tofu = Plan::from_toml(&GOOD.replace(thumb, "trust_on_first_use = true\n")).unwrap();
        assert_eq!(tofu.vcenter.trust(), Ok(VcenterTrust::TrustOnFirstUse));
        let j = serde_json::to_string(&tofu).unwrap();
        assert!(j.contains("\"trust_on_first_use\":true"), "{j}");
        assert_eq!(Plan::from_json(&j).unwrap(), tofu);
        let ca =
            "ca = \"\"\"\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\"\"\"\n";
        let p = Plan::from_toml(&GOOD.replace(thumb, ca)).unwrap();
        assert!(matches!(p.vcenter.trust(), Ok(VcenterTrust::Ca(_))));
        let e = Plan::from_toml(&GOOD.replace(thumb, "ca = \"x\"\n")).unwrap_err();
        assert_eq!(e.field, "vcenter.ca");
        let both = GOOD.replace(thumb, &format!("{thumb}trust_on_first_use = true\n"));
        let e = Plan::from_toml(&both).unwrap_err();
        assert!(e.message.contains("only one"), "{e}");
        // The JSON an agent gets is checked the same way.
        let mut v: serde_json::Value =
            serde_json::to_value(Plan::from_toml(GOOD).unwrap()).unwrap();
        v["vcenter"].as_object_mut().unwrap().remove("thumbprint");
        assert_eq!(
            Plan::from_json(&v.to_string()).unwrap_err().field,
            "vcenter"
        );
    }

    #[test]
    fn cleartext_destinations_need_insecure() {
        for url in [
            "ftp://u@nas/ferry",
            "s3://b/p?endpoint=http://minio:9000",
            "s3://b/p?endpoint=HTTP://minio:9000&insecure=0",
        ] {
            let e = Plan::from_toml(&GOOD.replace("/srv/backup", url)).unwrap_err();
            assert_eq!(e.field, "destination.url", "{url}: {e}");
            assert!(e.message.contains("in clear"), "{url}: {e}");
        }
        for url in [
            "ftp://u@nas/ferry?insecure=1",
            "s3://b/p?endpoint=http://minio:9000&insecure=1",
            "s3://b/p?endpoint=https://minio:9000",
            "ftps://u@nas/ferry",
        ] {
            Plan::from_toml(&GOOD.replace("/srv/backup", url)).unwrap();
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("db-*", "db-1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("db-*", "web-1"));
        assert!(glob_match("*VM0", "DC0_H0_VM0"));
    }
}
