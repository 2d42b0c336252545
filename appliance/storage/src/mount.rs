//! SMB and NFS through the kernel: `smb://[domain;]user@host[:port]/share/path` and
//! `nfs://host[:port]/export/path`, mounted with `mount(2)` (through `nix`) and then used as
//! a [`LocalStore`] on the mount point. Linux only, and it needs root (`CAP_SYS_ADMIN`): this
//! is the appliance's path. The `ferry` CLI on a workstation mounts with the OS instead and
//! passes the local path.
//!
//! - **SMB:** `cifs` with `vers=3.1.1` (`vers=3.0|3.02|3.1.1` in the query), `sec=ntlmssp`,
//!   `seal` (SMB3 encryption; `seal=0` turns it off), `port=` (default 445). The share is the
//!   first path segment; the rest is a directory inside it, created on the first `put`.
//!   The user name comes from the URL (`domain;user@` or `?domain=`), the password from
//!   [`crate::Secrets::password`] (`FERRY_STORE_PASSWORD` or the secrets file), never from
//!   the URL.
//! - **NFS:** `nfs4` with `vers=4.1` (`vers=4.0|4.1|4.2`), TCP, `port=` (default 2049),
//!   `soft` with `timeo=`/`retrans=` so that a dead server fails an operation instead of
//!   hanging the agent forever. The whole path is mounted (NFSv4 can mount any directory
//!   below an export); when it does not exist yet, its parent is mounted and the rest is
//!   created on the first `put`.
//! - **Query parameters:** `vers=`, `seal=0` (SMB), `domain=` (SMB), `timeo=` and `retrans=`
//!   (NFS, defaults 150 and 3), `mountdir=DIR` (default [`DEFAULT_MOUNT_DIR`]), and the
//!   tuning parameters every remote store takes (`parallel`, `bwlimit`, `probe`, …).
//! - **Credentials** go to the kernel only in the `mount(2)` data argument: never on a
//!   command line (no `mount.cifs` helper runs), never in `/proc/mounts` (cifs does not show
//!   the password), never in a log or an error ([`MountSpec`]'s `Debug` redacts the data).
//! - **Errors** are mapped from the `mount(2)` errno to what an admin can act on: a wrong
//!   user name or password, an unreachable host, a missing share or export, no root, no
//!   kernel support.
//! - **Server restarts:** while the kernel client reconnects, calls fail with EAGAIN,
//!   EHOSTDOWN, ETIMEDOUT…; those become [`StoreError::Transient`], so the retry layer
//!   ([`crate::Limited`]) backs off and retries instead of failing the backup at once.
//! - **Unmount:** the [`MountedStore`] unmounts and removes its mount point when it is
//!   dropped (a lazy detach when something still holds it busy). A store opened from a URL
//!   is dropped when the last `Arc` of it (and of any repository on it) goes.
//!
//! Atomicity is the local backend's: temp + fsync + rename for `put`, `link(2)` for
//! `put_new`. Both kernel clients map them to the protocol (SMB2 FileRenameInformation and
//! FileLinkInformation; NFS RENAME and LINK), and `fsync` to SMB2 FLUSH and NFS COMMIT.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::limit::Backend;
use crate::{LocalStore, ObjectInfo, Store, StoreError, StoreOptions};

/// Where mount points go unless the caller says otherwise (`?mountdir=`).
pub const DEFAULT_MOUNT_DIR: &str = "/run/ferry/mnt";

/// The two kernel filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SMB 3 through `cifs`.
    Smb,
    /// NFS v4 through `nfs4`.
    Nfs,
}

/// Everything `mount(2)` needs, parsed from a URL. `Debug` never prints the mount data.
#[derive(Clone)]
pub struct MountSpec {
    /// Which filesystem.
    pub kind: Kind,
    /// Secret-free URL for logs and errors.
    pub location: String,
    /// Server address (resolved when the URL names a host).
    pub addr: IpAddr,
    /// Host as written in the URL.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// SMB share, or the NFS path that is mounted.
    pub share: String,
    /// Directory inside the mount that is the repository root (may be empty).
    pub subdir: String,
    /// Where the mount point is created.
    pub mount_dir: PathBuf,
    options: String,
    password: Option<String>,
}

impl std::fmt::Debug for MountSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSpec")
            .field("location", &self.location)
            .field("options", &self.options)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::BadLocation(msg.into())
}

/// Percent-decodes a URL component.
fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// A value for a cifs text option: cifs splits on `,`, so commas are refused (a password
/// may contain them: it is escaped as `,,`, which cifs understands for `password=`).
fn plain_value(name: &str, v: &str) -> Result<String, StoreError> {
    if v.contains(',') || v.contains('\0') {
        return Err(bad(format!(
            "{name} must not contain ',' for a kernel mount"
        )));
    }
    Ok(v.to_string())
}

impl MountSpec {
    /// Parses `smb://…` or `nfs://…` and resolves the host (no mount is made here).
    pub fn parse(url: &url::Url, opts: &StoreOptions) -> Result<MountSpec, StoreError> {
        let kind = match url.scheme() {
            "smb" | "cifs" => Kind::Smb,
            "nfs" => Kind::Nfs,
            s => return Err(bad(format!("not a mount scheme: {s}"))),
        };
        if url.password().is_some() {
            return Err(bad(format!(
                "{}:// URLs must not carry a password: use FERRY_STORE_PASSWORD or a secrets file",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad(format!("{}:// URL without a host", url.scheme())))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port()
            .unwrap_or(if kind == Kind::Smb { 445 } else { 2049 });
        let addr = match host.parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => (host.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| a.ip())
                .ok_or_else(|| StoreError::Mount {
                    location: format!("{}://{host}", url.scheme()),
                    detail: format!("cannot resolve host name {host:?}"),
                })?,
        };
        let segments: Vec<String> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(decode).collect())
            .unwrap_or_default();
        if segments
            .iter()
            .any(|s| s == "." || s == ".." || s.contains(',') || s.contains('\0'))
        {
            return Err(bad("share path must not contain '.', '..' or ','"));
        }
        let mut mount_dir = PathBuf::from(DEFAULT_MOUNT_DIR);
        let mut vers = None;
        let mut seal = true;
        let mut domain = None;
        let (mut timeo, mut retrans) = (150u32, 3u32);
        for (k, v) in url.query_pairs() {
            match &*k {
                "vers" => vers = Some(plain_value("vers", &v)?),
                "seal" => seal = matches!(&*v, "1" | "true" | "yes" | "on"),
                "domain" => domain = Some(plain_value("domain", &v)?),
                "mountdir" => mount_dir = PathBuf::from(&*v),
                "timeo" => timeo = v.parse().map_err(|_| bad("bad timeo"))?,
                "retrans" => retrans = v.parse().map_err(|_| bad("bad retrans"))?,
                "parallel" | "bwlimit" | "retries" | "timeout" | "probe" => {}
                other => {
                    return Err(bad(format!(
                        "unknown {}:// parameter {other:?}",
                        url.scheme()
                    )))
                }
            }
        }
        let addr_s = addr.to_string();
        let (share, subdir, options, password, location) = match kind {
            Kind::Smb => {
                let Some((share, rest)) = segments.split_first() else {
                    return Err(bad(
                        "smb:// URL without a share: smb://user@host/share/path",
                    ));
                };
                let raw_user = decode(url.username());
                let (dom, user) = match raw_user.split_once(';') {
                    Some((d, u)) => (Some(d.to_string()), u.to_string()),
                    None => (domain, raw_user),
                };
                let vers = vers.unwrap_or_else(|| "3.1.1".into());
                if !matches!(vers.as_str(), "3" | "3.0" | "3.02" | "3.1.1" | "3.11") {
                    return Err(bad(format!(
                        "smb:// vers={vers} is not SMB 3 (3.0, 3.02, 3.1.1)"
                    )));
                }
                let mut o = format!(
                    "vers={vers},sec=ntlmssp,port={port},ip={addr_s},\
                     uid=0,gid=0,file_mode=0600,dir_mode=0700,nounix,noperm,nosharesock"
                );
                if seal {
                    o.push_str(",seal");
                }
                if user.is_empty() {
                    return Err(bad("smb:// URL without a user name: smb://user@host/share"));
                }
                o.push_str(&format!(",username={}", plain_value("user name", &user)?));
                if let Some(d) = &dom {
                    o.push_str(&format!(",domain={}", plain_value("domain", d)?));
                }
                let pw = opts
                    .secrets
                    .password
                    .clone()
                    .ok_or_else(|| StoreError::Auth {
                        location: format!("smb://{user}@{host}:{port}/{share}"),
                        detail:
                            "no password: set FERRY_STORE_PASSWORD or password= in the secrets \
                             file"
                                .into(),
                    })?;
                let who = match &dom {
                    Some(d) => format!("{d};{user}"),
                    None => user.clone(),
                };
                let loc = format!("smb://{who}@{host}:{port}/{}", segments.join("/"));
                (share.clone(), rest.join("/"), o, Some(pw), loc)
            }
            Kind::Nfs => {
                if segments.is_empty() {
                    return Err(bad(
                        "nfs:// URL without an export path: nfs://host/export/path",
                    ));
                }
                let vers = vers.unwrap_or_else(|| "4.1".into());
                let minor = match vers.as_str() {
                    "4" | "4.0" => "4.0",
                    "4.1" => "4.1",
                    "4.2" => "4.2",
                    v => return Err(bad(format!("nfs:// vers={v} is not NFS 4.x"))),
                };
                let o = format!(
                    "vers={minor},proto=tcp,port={port},addr={addr_s},soft,timeo={timeo},\
                     retrans={retrans}"
                );
                let loc = format!("nfs://{host}:{port}/{}", segments.join("/"));
                (
                    format!("/{}", segments.join("/")),
                    String::new(),
                    o,
                    None,
                    loc,
                )
            }
        };
        Ok(MountSpec {
            kind,
            location,
            addr,
            host,
            port,
            share,
            subdir,
            mount_dir,
            options,
            password,
        })
    }

    fn source(&self, share: &str) -> String {
        let host = match self.addr {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        match self.kind {
            Kind::Smb => format!("//{host}/{share}"),
            Kind::Nfs => format!("{host}:{share}"),
        }
    }

    fn fstype(&self) -> &'static str {
        match self.kind {
            Kind::Smb => "cifs",
            Kind::Nfs => "nfs4",
        }
    }

    /// The option string with the secret, for `mount(2)` only.
    fn data(&self) -> String {
        match &self.password {
            // cifs reads ",," inside password= as a literal comma.
            Some(pw) => format!("{},password={}", self.options, pw.replace(',', ",,")),
            None => self.options.clone(),
        }
    }

    /// Turns a `mount(2)` errno into an error an admin can act on.
    fn error(&self, e: Errno, share: &str) -> StoreError {
        let location = self.location.clone();
        let what = match self.kind {
            Kind::Smb => "SMB",
            Kind::Nfs => "NFS",
        };
        let target = format!("{}:{}", self.host, self.port);
        let detail = match (self.kind, e) {
            (_, Errno::ENODEV) => format!(
                "the kernel has no {} filesystem (module {} not available)",
                self.fstype(),
                self.fstype()
            ),
            (_, Errno::EPERM) => "the kernel refused the mount (EPERM): this process lacks \
                                  CAP_SYS_ADMIN, or the server refused access"
                .to_string(),
            (Kind::Smb, Errno::EACCES | Errno::EKEYREJECTED) => {
                return StoreError::Auth {
                    location,
                    detail: "the SMB server refused the login: wrong user name, domain or \
                             password"
                        .into(),
                }
            }
            (Kind::Nfs, Errno::EACCES) => {
                format!(
                    "the NFS server refused access to {share} (check the export's client rules)"
                )
            }
            (Kind::Smb, Errno::ENOENT | Errno::ENXIO) => {
                format!(
                    "share {share:?} does not exist on {target} (or the kernel lacks a \
                     crypto module the dialect needs: see the kernel log)"
                )
            }
            (Kind::Nfs, Errno::ENOENT) => format!("export path {share} does not exist on {target}"),
            (
                _,
                Errno::ECONNREFUSED
                | Errno::EHOSTUNREACH
                | Errno::ENETUNREACH
                | Errno::EHOSTDOWN
                | Errno::ETIMEDOUT
                | Errno::ECONNRESET
                | Errno::EIO,
            ) => format!("cannot reach the {what} server at {target}: {}", e.desc()),
            (Kind::Smb, Errno::EOPNOTSUPP | Errno::EPROTO | Errno::ENOSYS) => format!(
                "the SMB server does not support the requested dialect or security \
                 ({}): {}",
                self.options.split(',').next().unwrap_or(""),
                e.desc()
            ),
            (Kind::Nfs, Errno::EPROTONOSUPPORT | Errno::EOPNOTSUPP) => {
                format!(
                    "the NFS server does not offer this NFS version: {}",
                    e.desc()
                )
            }
            (_, e) => format!("mount failed: {} ({e})", e.desc()),
        };
        StoreError::Mount { location, detail }
    }
}

/// A mounted share used as a local directory; unmounted when dropped.
#[derive(Debug)]
pub struct MountedStore {
    local: LocalStore,
    mountpoint: PathBuf,
    location: String,
}

/// Removes the mount point directory and the mount, best effort.
fn unmount_path(mp: &Path) -> Result<(), Errno> {
    let r = match nix::mount::umount2(mp, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => nix::mount::umount2(mp, MntFlags::MNT_DETACH),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir(mp);
    r
}

impl MountedStore {
    /// Mounts the share of `spec` on a new directory below its mount directory.
    pub fn mount(spec: &MountSpec) -> Result<MountedStore, StoreError> {
        let location = spec.location.clone();
        if !nix::unistd::geteuid().is_root() {
            return Err(StoreError::Mount {
                location,
                detail: format!(
                    "mounting {} needs root (CAP_SYS_ADMIN); this process runs as uid {}. \
                     On a workstation, mount the share yourself and use its local path",
                    spec.fstype(),
                    nix::unistd::geteuid()
                ),
            });
        }
        std::fs::create_dir_all(&spec.mount_dir)
            .map_err(|e| StoreError::from_io("create mount directory", &location, e))?;
        let mp = spec
            .mount_dir
            .join(format!("{}-{:016x}", spec.fstype(), rand::random::<u64>()));
        std::fs::create_dir(&mp)
            .map_err(|e| StoreError::from_io("create mount point", &location, e))?;
        // NFS: the repository directory may not exist yet; mount the deepest existing
        // ancestor (never the pseudo-root) and create the rest on the first put.
        let mut share = spec.share.clone();
        let mut subdir = spec.subdir.clone();
        let data = spec.data();
        loop {
            let source = spec.source(&share);
            tracing::debug!(store = %location, %source, "mounting {}", spec.fstype());
            match nix::mount::mount(
                Some(source.as_str()),
                &mp,
                Some(spec.fstype()),
                MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some(data.as_str()),
            ) {
                Ok(()) => break,
                Err(Errno::ENOENT) if spec.kind == Kind::Nfs && share.matches('/').count() > 1 => {
                    let Some((parent, last)) = share.rsplit_once('/') else {
                        break;
                    };
                    subdir = if subdir.is_empty() {
                        last.to_string()
                    } else {
                        format!("{last}/{subdir}")
                    };
                    share = parent.to_string();
                }
                Err(e) => {
                    let _ = std::fs::remove_dir(&mp);
                    return Err(spec.error(e, &spec.share));
                }
            }
        }
        tracing::info!(store = %location, mountpoint = %mp.display(), "mounted");
        let root = if subdir.is_empty() {
            mp.clone()
        } else {
            mp.join(&subdir)
        };
        Ok(MountedStore {
            local: LocalStore::new(root),
            mountpoint: mp,
            location,
        })
    }

    /// The directory the share is mounted on.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for MountedStore {
    fn drop(&mut self) {
        match unmount_path(&self.mountpoint) {
            Ok(()) => tracing::info!(store = %self.location, "unmounted"),
            Err(e) => tracing::warn!(
                store = %self.location,
                mountpoint = %self.mountpoint.display(),
                "unmount failed: {e}"
            ),
        }
    }
}

/// While the kernel client reconnects to a server that went away, calls fail with EAGAIN,
/// EHOSTDOWN, ETIMEDOUT and the like: those are transient here, so the retry layer waits
/// and tries again instead of failing the backup.
fn net<T>(r: Result<T, StoreError>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        StoreError::Io {
            op,
            key,
            error: source,
        } if matches!(
            source.raw_os_error().map(Errno::from_raw),
            Some(
                Errno::EAGAIN
                    | Errno::EHOSTDOWN
                    | Errno::EHOSTUNREACH
                    | Errno::ENETUNREACH
                    | Errno::ETIMEDOUT
                    | Errno::ECONNRESET
                    | Errno::ECONNABORTED
                    | Errno::ECONNREFUSED
                    | Errno::ENOTCONN
            )
        ) =>
        {
            StoreError::Transient {
                op,
                key,
                detail: format!("share unavailable: {source}"),
            }
        }
        e => e,
    })
}

#[async_trait]
impl Store for MountedStore {
    fn location(&self) -> String {
        self.location.clone()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        net(self.local.put(key, data).await)
    }
    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        net(self.local.put_new(key, data).await)
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        net(self.local.get(key).await)
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        net(self.local.exists(key).await)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        net(self.local.list(prefix).await)
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        net(self.local.delete(key).await)
    }
    async fn sync(&self) -> Result<(), StoreError> {
        net(self.local.sync().await)
    }
    async fn clean_temporaries(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        net(self.local.clean_temporaries(min_age_secs).await)
    }
}

impl Backend for MountedStore {}

/// Parses and mounts; the caller wraps the result in [`crate::Limited`].
pub fn open(url: &url::Url, opts: &StoreOptions) -> Result<MountedStore, StoreError> {
    MountedStore::mount(&MountSpec::parse(url, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pw: Option<&str>) -> StoreOptions {
        let mut o = StoreOptions::default();
        o.secrets.password = pw.map(str::to_string);
        o
    }

    #[test]
    fn smb_urls_parse_without_leaking_the_password() {
        let u = url::Url::parse("smb://CORP;backup@10.0.2.2:1445/share/ferry/repo").unwrap();
        let s = MountSpec::parse(&u, &opts(Some("pa,ss"))).unwrap();
        assert_eq!(s.kind, Kind::Smb);
        assert_eq!(s.share, "share");
        assert_eq!(s.subdir, "ferry/repo");
        assert_eq!(s.source("share"), "//10.0.2.2/share");
        assert_eq!(
            s.location,
            "smb://CORP;backup@10.0.2.2:1445/share/ferry/repo"
        );
        let d = s.data();
        for want in [
            "vers=3.1.1",
            "sec=ntlmssp",
            "port=1445",
            "ip=10.0.2.2",
            "username=backup",
            "domain=CORP",
            "seal",
            "password=pa,,ss",
        ] {
            assert!(d.contains(want), "{want} missing in mount data");
        }
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("pa,ss") && !dbg.contains("pa,,ss"), "{dbg}");
        assert!(!s.location.contains("pa"), "{}", s.location);
        let no_seal = url::Url::parse("smb://u@h.invalid:1/s?seal=0&domain=D").unwrap();
        // Name resolution fails for .invalid: a clear mount error, not a panic.
        assert!(matches!(
            MountSpec::parse(&no_seal, &opts(Some("x"))),
            Err(StoreError::Mount { .. })
        ));
        let u = url::Url::parse("smb://u@127.0.0.1/s?seal=0&domain=D&vers=3.0").unwrap();
        let s = MountSpec::parse(&u, &opts(Some("x"))).unwrap();
        assert!(!s.data().contains("seal") && s.data().contains("domain=D"));
        assert!(s.data().contains("vers=3.0") && s.data().contains("port=445"));
    }

    #[test]
    fn smb_urls_are_checked() {
        for (u, pw) in [
            ("smb://u:pw@127.0.0.1/s", Some("x")),
            ("smb://u@127.0.0.1/", Some("x")),
            ("smb://127.0.0.1/s", Some("x")),
            ("smb://u@127.0.0.1/s?vers=2.0", Some("x")),
            ("smb://u@127.0.0.1/s?bogus=1", Some("x")),
        ] {
            let url = url::Url::parse(u).unwrap();
            assert!(MountSpec::parse(&url, &opts(pw)).is_err(), "{u} accepted");
        }
        let url = url::Url::parse("smb://u@127.0.0.1/s").unwrap();
        assert!(matches!(
            MountSpec::parse(&url, &opts(None)),
            Err(StoreError::Auth { .. })
        ));
    }

    #[test]
    fn nfs_urls_parse() {
        let u = url::Url::parse("nfs://10.0.2.2:20490/export/repo?vers=4.2").unwrap();
        let s = MountSpec::parse(&u, &opts(Some("unused"))).unwrap();
        assert_eq!(s.kind, Kind::Nfs);
        assert_eq!(s.source(&s.share), "10.0.2.2:/export/repo");
        assert!(s.subdir.is_empty());
        let d = s.data();
        assert!(d.contains("vers=4.2") && d.contains("port=20490") && d.contains("addr=10.0.2.2"));
        assert!(!d.contains("unused"), "NFS must not send a password");
        let u = url::Url::parse("nfs://[::1]/e").unwrap();
        let s = MountSpec::parse(&u, &opts(None)).unwrap();
        assert_eq!(s.source(&s.share), "[::1]:/e");
        assert!(s.data().contains("port=2049"));
        for bad in ["nfs://127.0.0.1/", "nfs://127.0.0.1/e?vers=3"] {
            let url = url::Url::parse(bad).unwrap();
            assert!(MountSpec::parse(&url, &opts(None)).is_err(), "{bad}");
        }
    }

    #[test]
    fn reconnect_errors_are_transient() {
        let io = |errno: Errno| -> Result<(), StoreError> {
            Err(StoreError::Io {
                op: "write",
                key: "k".into(),
                error: std::io::Error::from_raw_os_error(errno as i32),
            })
        };
        assert!(net(io(Errno::EAGAIN)).unwrap_err().is_transient());
        assert!(net(io(Errno::EHOSTDOWN)).unwrap_err().is_transient());
        assert!(!net(io(Errno::EINVAL)).unwrap_err().is_transient());
    }

    #[test]
    fn errors_are_actionable() {
        let u = url::Url::parse("smb://u@127.0.0.1:1445/s").unwrap();
        let s = MountSpec::parse(&u, &opts(Some("secret-pw"))).unwrap();
        let e = s.error(Errno::EACCES, "s");
        assert!(matches!(e, StoreError::Auth { .. }));
        assert!(e.to_string().contains("wrong user name"), "{e}");
        assert!(s
            .error(Errno::ENOENT, "s")
            .to_string()
            .contains("does not exist"));
        assert!(s
            .error(Errno::ECONNREFUSED, "s")
            .to_string()
            .contains("cannot reach the SMB server at 127.0.0.1:1445"));
        assert!(s.error(Errno::ENODEV, "s").to_string().contains("no cifs"));
        for e in [Errno::EACCES, Errno::ENOENT, Errno::EIO, Errno::EINVAL] {
            assert!(!s.error(e, "s").to_string().contains("secret-pw"));
        }
    }
}
