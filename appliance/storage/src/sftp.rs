//! The SFTP backend: `sftp://user@host:port/path` (pure Rust: russh on ring + russh-sftp).
//!
//! - **Path:** the URL path is absolute (`sftp://u@h/srv/repo` is `/srv/repo`); start it with
//!   `/~/` for a path relative to the login directory (`sftp://u@h/~/repo`).
//! - **Auth:** a private key (`FERRY_STORE_KEY_FILE`, optional passphrase; ed25519 and ECDSA)
//!   and/or a password (`FERRY_STORE_PASSWORD`), from the environment or the secrets file.
//!   The key is tried first. A password in the URL is refused.
//! - **Host key:** pinned. Either a SHA-256 fingerprint (`fingerprint=SHA256:…` in the query
//!   or `host_fingerprint` secret, as `ssh-keygen -lf` prints it) or a known-hosts file
//!   (`known_hosts=`; `~/.ssh/known_hosts` otherwise). An unknown key is refused unless trust
//!   on first use is asked for (`accept_new_host_key=1`), which records it in the known-hosts
//!   file. A changed key is always refused.
//! - **Atomic put:** the object is written as `.tmp-<random>` in its directory, fsynced
//!   (`fsync@openssh.com` when offered), then renamed. SFTP v3 rename (what OpenSSH serves)
//!   refuses to replace an existing name, which makes `put_new` an atomic create-if-absent.
//!   `put` over an existing object removes the old one first and renames again: there is a
//!   short window where the key is missing (only lock records are ever replaced); russh-sftp
//!   does not expose `posix-rename@openssh.com`.
//! - **Connections:** `connections=N` SSH connections (default 4, at most `parallel`), each
//!   with one SFTP session that pipelines requests; operations are spread round-robin. A
//!   connection that failed is dropped by the retry layer's reset and re-established.
//! - **Full disk:** OpenSSH reports ENOSPC as a generic failure; a failed write checks
//!   `statvfs@openssh.com` and reports [`StoreError::NoSpace`] when no block is left.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{OpenFlags, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::limit::Backend;
use crate::{validate_key, ObjectInfo, Store, StoreError, StoreOptions};

/// How the server's host key is trusted.
#[derive(Debug, Clone)]
enum HostTrust {
    Fingerprint(String),
    KnownHosts { path: PathBuf, learn: bool },
}

#[derive(Clone)]
struct Auth {
    password: Option<String>,
    key_file: Option<PathBuf>,
    key_passphrase: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(<redacted>)")
    }
}

/// russh handler that checks the host key and remembers why it refused one.
struct Checker {
    host: String,
    port: u16,
    trust: HostTrust,
    refusal: Arc<Mutex<Option<String>>>,
}

impl Checker {
    fn refuse(&self, why: String) -> Result<bool, russh::Error> {
        tracing::error!(host = %self.host, port = self.port, "{why}");
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        Ok(false)
    }
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return self
                .refuse("the server offered a host certificate; pin a plain host key".into());
        };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        match &self.trust {
            HostTrust::Fingerprint(pin) => {
                if pin.trim() == fp {
                    Ok(true)
                } else {
                    self.refuse(format!(
                        "host key {fp} does not match the pinned fingerprint {pin}"
                    ))
                }
            }
            HostTrust::KnownHosts { path, learn } => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => Ok(true),
                    Ok(false) if *learn => {
                        match russh::keys::known_hosts::learn_known_hosts_path(
                            &self.host, self.port, key, path,
                        ) {
                            Ok(()) => {
                                tracing::warn!(
                                    host = %self.host, port = self.port,
                                    "trusting new host key {fp} on first use; recorded in {}",
                                    path.display()
                                );
                                Ok(true)
                            }
                            Err(e) => self.refuse(format!(
                                "cannot record host key {fp} in {}: {e}",
                                path.display()
                            )),
                        }
                    }
                    Ok(false) => self.refuse(format!(
                        "unknown host key {fp} (not in {}); pin it with fingerprint=… or \
                         accept it once with accept_new_host_key=1",
                        path.display()
                    )),
                    Err(russh::keys::Error::KeyChanged { line }) => self.refuse(format!(
                        "HOST KEY CHANGED: the server now presents {fp}, which differs from \
                         {} line {line}; refusing to connect",
                        path.display()
                    )),
                    Err(e) => self.refuse(format!(
                        "cannot check host key against {}: {e}",
                        path.display()
                    )),
                }
            }
        }
    }
}

struct Conn {
    handle: client::Handle<Checker>,
    sftp: SftpSession,
}

/// A store in a directory on an SFTP server.
pub struct SftpStore {
    host: String,
    port: u16,
    user: String,
    root: String,
    location: String,
    trust: HostTrust,
    auth: Auth,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    dirs: Mutex<HashSet<String>>,
    op_timeout: Duration,
}

impl std::fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

fn sftp_err(op: &'static str, key: &str, e: SftpError) -> StoreError {
    match e {
        SftpError::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => StoreError::NotFound(key.to_string()),
            StatusCode::PermissionDenied => StoreError::PermissionDenied {
                key: key.to_string(),
                error: std::io::Error::new(std::io::ErrorKind::PermissionDenied, s.error_message),
            },
            StatusCode::ConnectionLost | StatusCode::NoConnection => StoreError::Transient {
                op,
                key: key.to_string(),
                detail: s.error_message,
            },
            code => StoreError::Remote {
                op,
                key: key.to_string(),
                detail: format!("{code}: {}", s.error_message),
            },
        },
        SftpError::Limited(m) => StoreError::Remote {
            op,
            key: key.to_string(),
            detail: m,
        },
        other => StoreError::Transient {
            op,
            key: key.to_string(),
            detail: other.to_string(),
        },
    }
}

fn io_transient(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
    StoreError::Transient {
        op,
        key: key.to_string(),
        detail: e.to_string(),
    }
}

impl SftpStore {
    /// Parses `sftp://user@host:port/path?...` (no connection is made here).
    pub fn open(url: &url::Url, opts: &StoreOptions) -> Result<SftpStore, StoreError> {
        if url.password().is_some() {
            return Err(StoreError::BadLocation(
                "sftp:// URLs must not carry a password: use FERRY_STORE_PASSWORD or a \
                 secrets file"
                    .into(),
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| StoreError::BadLocation("sftp:// URL without a host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(22);
        let user = percent_decode(url.username());
        if user.is_empty() {
            return Err(StoreError::BadLocation(
                "sftp:// URL without a user (sftp://user@host/path)".into(),
            ));
        }
        let path = percent_decode(url.path());
        let root = match path.strip_prefix("/~/") {
            Some(rel) => rel.trim_end_matches('/').to_string(),
            None if path == "/~" => String::new(),
            None => {
                let p = path.trim_end_matches('/');
                if p.is_empty() {
                    "/".to_string()
                } else {
                    p.to_string()
                }
            }
        };
        let mut connections = opts.parallel.clamp(1, 4);
        for (k, v) in url.query_pairs() {
            match &*k {
                "connections" => {
                    connections = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        StoreError::BadLocation(format!("bad connections value {v:?}"))
                    })?;
                }
                "parallel"
                | "bwlimit"
                | "retries"
                | "timeout"
                | "probe"
                | "known_hosts"
                | "fingerprint"
                | "accept_new_host_key" => {}
                other => {
                    return Err(StoreError::BadLocation(format!(
                        "unknown sftp:// parameter {other:?}"
                    )))
                }
            }
        }
        let s = &opts.secrets;
        let trust = match (&s.host_fingerprint, &s.known_hosts) {
            (Some(fp), _) => HostTrust::Fingerprint(fp.clone()),
            (None, Some(p)) => HostTrust::KnownHosts {
                path: p.clone(),
                learn: s.accept_new_host_key,
            },
            (None, None) => {
                let home = std::env::var_os("HOME").ok_or_else(|| {
                    StoreError::BadLocation(
                        "no host key pin: give fingerprint= or known_hosts=".into(),
                    )
                })?;
                HostTrust::KnownHosts {
                    path: PathBuf::from(home).join(".ssh/known_hosts"),
                    learn: s.accept_new_host_key,
                }
            }
        };
        if s.password.is_none() && s.key_file.is_none() {
            return Err(StoreError::BadLocation(
                "no SFTP credentials: set FERRY_STORE_KEY_FILE or FERRY_STORE_PASSWORD (or \
                 key_file/password in the secrets file)"
                    .into(),
            ));
        }
        let shown_port = if port == 22 {
            String::new()
        } else {
            format!(":{port}")
        };
        Ok(SftpStore {
            location: format!("sftp://{user}@{host}{shown_port}{}", url.path()),
            host,
            port,
            user,
            root,
            trust,
            auth: Auth {
                password: s.password.clone(),
                key_file: s.key_file.clone(),
                key_passphrase: s.key_passphrase.clone(),
            },
            slots: (0..connections)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            dirs: Mutex::new(HashSet::new()),
            op_timeout: opts.op_timeout,
        })
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let refusal = Arc::new(Mutex::new(None));
        let checker = Checker {
            host: self.host.clone(),
            port: self.port,
            trust: self.trust.clone(),
            refusal: refusal.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(600)),
            keepalive_interval: Some(Duration::from_secs(30)),
            window_size: 16 * 1024 * 1024,
            maximum_packet_size: 65535,
            ..client::Config::default()
        });
        let connected = client::connect(config, (self.host.as_str(), self.port), checker).await;
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                if let Some(why) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return Err(StoreError::Auth {
                        location: self.location.clone(),
                        detail: why,
                    });
                }
                return Err(StoreError::Transient {
                    op: "connect",
                    key: self.location.clone(),
                    detail: e.to_string(),
                });
            }
        };
        let auth_err = |detail: String| StoreError::Auth {
            location: self.location.clone(),
            detail,
        };
        let ssh_transient = |e: russh::Error| StoreError::Transient {
            op: "ssh",
            key: self.location.clone(),
            detail: e.to_string(),
        };
        let mut ok = false;
        if let Some(kf) = &self.auth.key_file {
            let key = russh::keys::load_secret_key(kf, self.auth.key_passphrase.as_deref())
                .map_err(|e| auth_err(format!("cannot load key file {}: {e}", kf.display())))?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(ssh_transient)?
                .flatten();
            let r = handle
                .authenticate_publickey(&self.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(ssh_transient)?;
            ok = r.success();
        }
        if !ok {
            if let Some(pw) = &self.auth.password {
                let r = handle
                    .authenticate_password(&self.user, pw)
                    .await
                    .map_err(ssh_transient)?;
                ok = r.success();
            }
        }
        if !ok {
            return Err(auth_err(format!(
                "authentication as {:?} failed (wrong password or key not authorized)",
                self.user
            )));
        }
        let channel = handle.channel_open_session().await.map_err(ssh_transient)?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(ssh_transient)?;
        let cfg = russh_sftp::client::Config {
            max_concurrent_reads: 64,
            max_concurrent_writes: 64,
            max_write_packet_len: 255 * 1024,
            request_timeout_secs: self.op_timeout.as_secs().max(10),
            ..russh_sftp::client::Config::default()
        };
        let sftp = SftpSession::new_with_config(channel.into_stream(), cfg)
            .await
            .map_err(|e| sftp_err("start sftp", &self.location, e))?;
        tracing::debug!(store = %self.location, "sftp connected");
        Ok(Conn { handle, sftp })
    }

    async fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.handle.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(self.connect().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn full(&self, key: &str) -> String {
        if self.root.is_empty() {
            key.to_string()
        } else if self.root == "/" {
            format!("/{key}")
        } else {
            format!("{}/{key}", self.root)
        }
    }

    async fn ensure_dir(&self, c: &Conn, dir: &str) -> Result<(), StoreError> {
        if dir.is_empty() || dir == "/" || self.dirs_has(dir) {
            return Ok(());
        }
        let mut prefixes = Vec::new();
        let mut end = 0;
        for part in dir.split('/') {
            end += part.len();
            if !part.is_empty() {
                prefixes.push(&dir[..end]);
            }
            end += 1;
        }
        for p in prefixes {
            if self.dirs_has(p) {
                continue;
            }
            let made = c.sftp.create_dir(p).await;
            if let Err(e) = made {
                match c.sftp.metadata(p).await {
                    Ok(m) if m.is_dir() => {}
                    _ => return Err(sftp_err("create directory", p, e)),
                }
            }
            self.dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.to_string());
        }
        Ok(())
    }

    fn dirs_has(&self, d: &str) -> bool {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(d)
    }

    /// Writes a synced temporary beside `path` and returns its name.
    async fn write_temp(
        &self,
        c: &Conn,
        key: &str,
        path: &str,
        data: &[u8],
    ) -> Result<String, StoreError> {
        let dir = path.rfind('/').map_or("", |i| &path[..i]);
        self.ensure_dir(c, dir).await?;
        let tmp = if dir.is_empty() {
            format!(".tmp-{:016x}", rand::random::<u64>())
        } else {
            format!("{dir}/.tmp-{:016x}", rand::random::<u64>())
        };
        let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
        let res: Result<(), StoreError> = async {
            let mut f = c
                .sftp
                .open_with_flags(&tmp, flags)
                .await
                .map_err(|e| sftp_err("create", key, e))?;
            f.write_all(data)
                .await
                .map_err(|e| io_transient("write", key, e))?;
            f.flush().await.map_err(|e| io_transient("write", key, e))?;
            // A no-op when the server lacks fsync@openssh.com.
            f.sync_all().await.map_err(|e| sftp_err("fsync", key, e))?;
            f.shutdown()
                .await
                .map_err(|e| io_transient("close", key, e))?;
            Ok(())
        }
        .await;
        if let Err(e) = res {
            // Check for a full filesystem before the temporary frees its blocks again.
            let e = self.maybe_full(c, dir, key, data.len(), e).await;
            let _ = c.sftp.remove_file(&tmp).await;
            return Err(e);
        }
        Ok(tmp)
    }

    /// Turns a failed write into NoSpace when the filesystem has no block left.
    async fn maybe_full(
        &self,
        c: &Conn,
        dir: &str,
        key: &str,
        len: usize,
        e: StoreError,
    ) -> StoreError {
        if matches!(
            e,
            StoreError::NotFound(_) | StoreError::PermissionDenied { .. }
        ) {
            return e;
        }
        let probe_dir = if dir.is_empty() { "." } else { dir };
        if let Ok(Some(st)) = c.sftp.fs_info(probe_dir).await {
            let free = st.blocks_avail.saturating_mul(st.fragment_size.max(1));
            if free < len as u64 {
                return StoreError::NoSpace {
                    key: key.to_string(),
                    error: std::io::Error::other(format!("{e} (no space left on the server)")),
                };
            }
        }
        e
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl Store for SftpStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        validate_key(key)?;
        let c = self.conn().await?;
        let path = self.full(key);
        let tmp = self.write_temp(&c, key, &path, &data).await?;
        if c.sftp.rename(&tmp, &path).await.is_ok() {
            return Ok(());
        }
        // SFTP v3 rename does not replace: remove the old object and rename again.
        let _ = c.sftp.remove_file(&path).await;
        match c.sftp.rename(&tmp, &path).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = c.sftp.remove_file(&tmp).await;
                Err(sftp_err("rename", key, e))
            }
        }
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        validate_key(key)?;
        let c = self.conn().await?;
        let path = self.full(key);
        if c.sftp
            .try_exists(&path)
            .await
            .map_err(|e| sftp_err("stat", key, e))?
        {
            return Ok(false);
        }
        let tmp = self.write_temp(&c, key, &path, &data).await?;
        // rename refuses to replace an existing name: an atomic create-if-absent.
        match c.sftp.rename(&tmp, &path).await {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = c.sftp.remove_file(&tmp).await;
                match c.sftp.try_exists(&path).await {
                    Ok(true) => Ok(false),
                    _ => Err(sftp_err("rename", key, e)),
                }
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let c = self.conn().await?;
        let data = c
            .sftp
            .read(self.full(key))
            .await
            .map_err(|e| sftp_err("read", key, e))?;
        Ok(Bytes::from(data))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        validate_key(key)?;
        let c = self.conn().await?;
        c.sftp
            .try_exists(self.full(key))
            .await
            .map_err(|e| sftp_err("stat", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let c = self.conn().await?;
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut out = Vec::new();
        let mut stack = vec![dir.to_string()];
        while let Some(rel) = stack.pop() {
            let abs = if rel.is_empty() {
                if self.root.is_empty() {
                    ".".to_string()
                } else {
                    self.root.clone()
                }
            } else {
                self.full(&rel)
            };
            let rd = match c.sftp.read_dir(&abs).await {
                Ok(rd) => rd,
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => continue,
                Err(e) => return Err(sftp_err("list", &rel, e)),
            };
            for entry in rd {
                let name = entry.file_name();
                if name == "." || name == ".." || name.starts_with(".tmp") {
                    continue;
                }
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let meta = entry.metadata();
                if meta.is_dir() {
                    stack.push(key);
                    continue;
                }
                if key.starts_with(prefix) {
                    out.push(ObjectInfo {
                        key,
                        size: meta.size.unwrap_or(0),
                        modified: u64::from(meta.mtime.unwrap_or(0)),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let c = self.conn().await?;
        match c.sftp.remove_file(self.full(key)).await {
            Ok(()) => Ok(()),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(()),
            Err(e) => Err(sftp_err("delete", key, e)),
        }
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Every object was fsynced before its rename. Directory entries become durable with
        // the server's filesystem journal; SFTP has no directory fsync.
        Ok(())
    }

    async fn clean_temporaries(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut removed = 0;
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let abs = if rel.is_empty() {
                if self.root.is_empty() {
                    ".".to_string()
                } else {
                    self.root.clone()
                }
            } else {
                self.full(&rel)
            };
            let rd = match c.sftp.read_dir(&abs).await {
                Ok(rd) => rd,
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => continue,
                Err(e) => return Err(sftp_err("list", &rel, e)),
            };
            for entry in rd {
                let name = entry.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let meta = entry.metadata();
                if meta.is_dir() {
                    stack.push(key);
                } else if name.starts_with(".tmp")
                    && now.saturating_sub(u64::from(meta.mtime.unwrap_or(0))) >= min_age_secs
                    && c.sftp.remove_file(self.full(&key)).await.is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl Backend for SftpStore {
    fn reset(&self) {
        for slot in &self.slots {
            // A slot being (re)connected right now is fresh already.
            if let Ok(mut s) = slot.try_lock() {
                *s = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let mut o = StoreOptions::default();
        o.secrets.password = Some("pw".into());
        o.secrets.host_fingerprint = Some("SHA256:x".into());
        let u = url::Url::parse("sftp://bob@127.0.0.1:2222/srv/repo/").unwrap();
        let s = SftpStore::open(&u, &o).unwrap();
        assert_eq!(s.root, "/srv/repo");
        assert_eq!(s.port, 2222);
        assert_eq!(s.location(), "sftp://bob@127.0.0.1:2222/srv/repo/");
        assert_eq!(s.full("a/b"), "/srv/repo/a/b");
        let u = url::Url::parse("sftp://bob@h/~/repo").unwrap();
        let s = SftpStore::open(&u, &o).unwrap();
        assert_eq!(s.full("a"), "repo/a");
        let u = url::Url::parse("sftp://bob:pw@h/x").unwrap();
        let e = SftpStore::open(&u, &o).unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
        assert_eq!(percent_decode("a%20b%"), "a b%");
    }
}
