//! Options and secrets for opening a store.
//!
//! Non-secret tuning can come from the URL query (`?parallel=8&bwlimit=20M`), from
//! environment variables, or from code. Secrets come only from a secrets file or the
//! environment, never from the URL, and [`Secrets`] prints as `<redacted>`.
//!
//! Environment variables read by [`StoreOptions::from_env`]:
//!
//! | variable | meaning |
//! |---|---|
//! | `FERRY_STORE_SECRETS` | path of a secrets file (`name = value` lines, `#` comments) |
//! | `FERRY_STORE_PASSWORD` | SFTP / FTP / SMB password |
//! | `FERRY_STORE_KEY_FILE`, `FERRY_STORE_KEY_PASSPHRASE` | SFTP private key (OpenSSH format) |
//! | `FERRY_STORE_KNOWN_HOSTS` | SFTP known-hosts file |
//! | `FERRY_STORE_HOST_FINGERPRINT` | SFTP host key pin, `SHA256:…` as printed by `ssh-keygen -l` |
//! | `FERRY_STORE_ACCEPT_NEW_HOST_KEY=1` | trust on first use: record an unknown host key in the known-hosts file |
//! | `FERRY_STORE_CA_FILE` | PEM CA bundle for S3 HTTPS and FTPS |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | S3 credentials |
//! | `FERRY_STORE_PARALLEL`, `FERRY_STORE_BWLIMIT`, `FERRY_STORE_RETRIES` | tuning (see [`StoreOptions`]) |
//! | `FERRY_NODE_IDENTITY` | `node://`: PEM bundle of this client's certificate, its key and the management CA (or `identity=FILE` in the URL) |
//!
//! The secrets file uses the same names in lower case without the prefix: `password`,
//! `key_file`, `key_passphrase`, `known_hosts`, `host_fingerprint`, `accept_new_host_key`,
//! `ca_file`, `access_key_id`, `secret_access_key`, `session_token`. Environment variables
//! override the file.

use std::path::PathBuf;
use std::time::Duration;

use crate::StoreError;

/// Credentials and trust anchors. `Debug` never prints them.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Password (SFTP password auth, FTP login, SMB mount).
    pub password: Option<String>,
    /// SFTP private key file.
    pub key_file: Option<PathBuf>,
    /// Passphrase of the private key.
    pub key_passphrase: Option<String>,
    /// Known-hosts file for SFTP host key checking.
    pub known_hosts: Option<PathBuf>,
    /// Pinned SFTP host key fingerprint (`SHA256:base64`).
    pub host_fingerprint: Option<String>,
    /// Trust on first use: record an unknown SFTP host key in `known_hosts`.
    pub accept_new_host_key: bool,
    /// PEM CA bundle for TLS (S3 over HTTPS, FTPS). Without it the system bundle is used.
    pub ca_file: Option<PathBuf>,
    /// Client identity for a storage node (`node://`): this client's certificate, its key and
    /// the management CA in one PEM file.
    pub client_identity: Option<PathBuf>,
    /// S3 access key id.
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    pub secret_access_key: Option<String>,
    /// S3 session token.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    fn set(&mut self, name: &str, value: String) -> bool {
        match name {
            "password" => self.password = Some(value),
            "key_file" => self.key_file = Some(value.into()),
            "key_passphrase" => self.key_passphrase = Some(value),
            "known_hosts" => self.known_hosts = Some(value.into()),
            "host_fingerprint" => self.host_fingerprint = Some(value),
            "accept_new_host_key" => self.accept_new_host_key = truthy(&value),
            "ca_file" => self.ca_file = Some(value.into()),
            "identity_file" => self.client_identity = Some(value.into()),
            "access_key_id" => self.access_key_id = Some(value),
            "secret_access_key" => self.secret_access_key = Some(value),
            "session_token" => self.session_token = Some(value),
            _ => return false,
        }
        true
    }

    /// Reads a secrets file: `name = value` lines; blank lines and `#` comments are skipped.
    pub fn from_file(path: &std::path::Path) -> Result<Secrets, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::from_io("read secrets file", &path.to_string_lossy(), e))?;
        Secrets::parse(&text, path)
    }

    /// Parses the text of a secrets file; `path` only names it in errors, which never quote
    /// a value.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Secrets, StoreError> {
        let mut s = Secrets::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(StoreError::BadLocation(format!(
                    "secrets file {} line {}: expected name = value",
                    path.display(),
                    n + 1
                )));
            };
            let value = value.trim().trim_matches('"').to_string();
            if !s.set(name.trim(), value) {
                return Err(StoreError::BadLocation(format!(
                    "secrets file {} line {}: unknown name {:?}",
                    path.display(),
                    n + 1,
                    name.trim()
                )));
            }
        }
        Ok(s)
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.trim(), "1" | "true" | "yes" | "on")
}

/// How a store is opened: limits, retries, probe, secrets.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Operations in flight at once against a remote backend (uploads, downloads, lists).
    pub parallel: usize,
    /// Bandwidth limit in bytes per second for object data, both directions together.
    pub bandwidth: Option<u64>,
    /// Retries after the first attempt for transient faults.
    pub retries: u32,
    /// First backoff delay; doubles per retry, with jitter, capped at 30 s.
    pub backoff: Duration,
    /// Time limit of one attempt of one operation.
    pub op_timeout: Duration,
    /// Run the capability probe (write, read back, put_new, delete) before the first use.
    pub probe: bool,
    /// Credentials and trust anchors.
    pub secrets: Secrets,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            parallel: 16,
            bandwidth: None,
            retries: 6,
            backoff: Duration::from_millis(250),
            op_timeout: Duration::from_secs(120),
            probe: true,
            secrets: Secrets::default(),
        }
    }
}

/// Parses a byte rate: `1000000`, `500k`, `20M`, `1G` (powers of 1024), optional `/s`.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1024u64),
        'm' | 'M' => (&s[..s.len() - 1], 1024 * 1024),
        'g' | 'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult).filter(|v| *v > 0)
}

impl StoreOptions {
    /// Defaults, then the secrets file named by `FERRY_STORE_SECRETS`, then the environment.
    pub fn from_env() -> Result<StoreOptions, StoreError> {
        let mut o = StoreOptions::default();
        if let Some(path) = std::env::var_os("FERRY_STORE_SECRETS") {
            o.secrets = Secrets::from_file(std::path::Path::new(&path))?;
        }
        let env = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        for (var, name) in [
            ("FERRY_STORE_PASSWORD", "password"),
            ("FERRY_STORE_KEY_FILE", "key_file"),
            ("FERRY_STORE_KEY_PASSPHRASE", "key_passphrase"),
            ("FERRY_STORE_KNOWN_HOSTS", "known_hosts"),
            ("FERRY_STORE_HOST_FINGERPRINT", "host_fingerprint"),
            ("FERRY_STORE_ACCEPT_NEW_HOST_KEY", "accept_new_host_key"),
            ("FERRY_STORE_CA_FILE", "ca_file"),
            ("AWS_ACCESS_KEY_ID", "access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
            ("AWS_SESSION_TOKEN", "session_token"),
        ] {
            if let Some(v) = env(var) {
                o.secrets.set(name, v);
            }
        }
        if let Some(v) = env("FERRY_STORE_PARALLEL") {
            o.apply_param("parallel", &v)?;
        }
        if let Some(v) = env("FERRY_STORE_BWLIMIT") {
            o.apply_param("bwlimit", &v)?;
        }
        if let Some(v) = env("FERRY_STORE_RETRIES") {
            o.apply_param("retries", &v)?;
        }
        Ok(o)
    }

    /// Applies a non-secret tuning parameter from a URL query. Returns false for names that
    /// are not tuning parameters (the backend may know them).
    pub(crate) fn apply_param(&mut self, name: &str, value: &str) -> Result<bool, StoreError> {
        let bad = || StoreError::BadLocation(format!("bad value for {name}: {value:?}"));
        match name {
            "parallel" => {
                self.parallel = value.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
            }
            "bwlimit" => self.bandwidth = Some(parse_rate(value).ok_or_else(bad)?),
            "retries" => self.retries = value.parse().map_err(|_| bad())?,
            "timeout" => {
                self.op_timeout =
                    Duration::from_secs(value.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?);
            }
            "probe" => self.probe = truthy(value),
            // Not secret: paths and pins may sit in the URL.
            "known_hosts" => self.secrets.known_hosts = Some(value.into()),
            "fingerprint" => self.secrets.host_fingerprint = Some(value.to_string()),
            "accept_new_host_key" => self.secrets.accept_new_host_key = truthy(value),
            "ca" => self.secrets.ca_file = Some(value.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1000"), Some(1000));
        assert_eq!(parse_rate("500k"), Some(512_000));
        assert_eq!(parse_rate("20M/s"), Some(20 * 1024 * 1024));
        assert_eq!(parse_rate("0"), None);
        assert_eq!(parse_rate("x"), None);
    }

    #[test]
    fn secrets_file_parses_and_redacts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(
            &p,
            "# comment\npassword = hunter2\naccess_key_id=AK\naccept_new_host_key = yes\n",
        )
        .unwrap();
        let s = Secrets::from_file(&p).unwrap();
        assert_eq!(s.password.as_deref(), Some("hunter2"));
        assert_eq!(s.access_key_id.as_deref(), Some("AK"));
        assert!(s.accept_new_host_key);
        assert!(!format!("{s:?}").contains("hunter2"));
        std::fs::write(&p, "pasword = x\n").unwrap();
        assert!(Secrets::from_file(&p).is_err());
    }

    const NAMES: &[&str] = &[
        "password",
        "key_file",
        "key_passphrase",
        "known_hosts",
        "host_fingerprint",
        "ca_file",
        "identity_file",
        "access_key_id",
        "secret_access_key",
        "session_token",
    ];

    proptest::proptest! {
        #[test]
        fn any_secrets_text_parses_or_fails_without_quoting_values(
            lines in proptest::collection::vec("\\PC{0,30}", 0..8),
        ) {
            // Every line's value carries a marker; no error may quote it.
            let text: String = lines.iter().map(|l| format!("{l}SeCrEt\n")).collect();
            if let Err(e) = Secrets::parse(&text, std::path::Path::new("/s")) {
                proptest::prop_assert!(!e.to_string().contains("SeCrEt"), "{}", e);
            }
        }

        #[test]
        fn secrets_lines_round_trip(
            entries in proptest::collection::vec((0..NAMES.len(), "[!-~]([ -~]{0,20}[!-~])?", proptest::bool::ANY), 0..8),
        ) {
            let mut text = String::from("# secrets\n\n");
            let mut want = std::collections::BTreeMap::new();
            for (i, v, quoted) in &entries {
                let v = v.trim_matches('"');
                if v.is_empty() {
                    continue;
                }
                let shown = if *quoted { format!("\"{v}\"") } else { v.to_string() };
                text.push_str(&format!("  {} = {shown}\n", NAMES[*i]));
                want.insert(NAMES[*i], v.to_string());
            }
            let s = Secrets::parse(&text, std::path::Path::new("/s")).unwrap();
            let got = |n: &str| -> Option<String> {
                match n {
                    "password" => s.password.clone(),
                    "key_file" => s.key_file.as_ref().map(|p| p.display().to_string()),
                    "key_passphrase" => s.key_passphrase.clone(),
                    "known_hosts" => s.known_hosts.as_ref().map(|p| p.display().to_string()),
                    "host_fingerprint" => s.host_fingerprint.clone(),
                    "ca_file" => s.ca_file.as_ref().map(|p| p.display().to_string()),
                    "identity_file" => s.client_identity.as_ref().map(|p| p.display().to_string()),
                    "access_key_id" => s.access_key_id.clone(),
                    "secret_access_key" => s.secret_access_key.clone(),
                    _ => s.session_token.clone(),
                }
            };
            for (n, v) in want {
                proptest::prop_assert_eq!(got(n), Some(v));
            }
            proptest::prop_assert_eq!(format!("{s:?}"), "Secrets(<redacted>)");
        }

        #[test]
        fn rates_never_panic_and_scale(s in "\\PC{0,24}", n in 1u64..(1 << 40)) {
            let _ = parse_rate(&s);
            proptest::prop_assert_eq!(parse_rate(&format!("{n}k/s")), Some(n * 1024));
            proptest::prop_assert_eq!(parse_rate(&format!("{n}")), Some(n));
        }

        #[test]
        fn url_parameters_never_panic(name in "[a-z_]{1,20}", value in "\\PC{0,24}") {
            let mut o = StoreOptions::default();
            if o.apply_param(&name, &value).unwrap_or(false) {
                proptest::prop_assert!(o.parallel > 0 && o.op_timeout.as_secs() > 0);
            }
        }
    }
}
