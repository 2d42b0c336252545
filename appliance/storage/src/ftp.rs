//! The FTP backend: `ftp://user@host:port/path`, `ftps://…` (explicit TLS, `AUTH TLS`), and
//! `ftps-implicit://…` (implicit TLS from the first byte, port 990 by default; also
//! `ftps://…?implicit=1`).
//!
//! Plain `ftp://` sends the password and every object in clear over the network, so it is
//! refused unless the URL says `insecure=1` (loopback included: keep it simple and explicit).
//!
//! suppaftp on tokio, with rustls on ring for FTPS (roots from `ca=` / `FERRY_STORE_CA_FILE`
//! or the system bundle; the certificate must match the host name). Passive mode, binary type.
//! Data connections are protected too (`PBSZ 0`, `PROT P`) in both TLS modes.
//!
//! - **Atomic put:** `STOR .tmp-<random>`, then `RNFR`/`RNTO` onto the key; servers on POSIX
//!   (vsftpd, pyftpdlib, proftpd) replace an existing target atomically with rename(2).
//! - **Resume (`REST`):** when a data connection or the control connection drops in the
//!   middle of a transfer, the backend reconnects and continues where it stopped, up to
//!   [`RESUME_ATTEMPTS`] times per operation, before the error reaches the retry layer
//!   (which starts the operation over). An upload asks the server for the `SIZE` of its
//!   temporary and sends `REST n` + `STOR` of the rest into the *same* temporary, then
//!   renames it: the object still appears only whole. A download sends `REST n` + `RETR` and
//!   appends. Resuming never makes a partial object visible: the target name is only ever
//!   written by the rename.
//! - **put_new:** FTP has no create-if-absent: `SIZE`, then put. Two writers of the same key
//!   race harmlessly for the archive (content-addressed chunks; `config` is written once).
//! - **Connections:** a pool of up to `connections=N` (default 4) logged-in control
//!   connections; one that failed is dropped, and the retry layer retries on a new one.
//!   421/425/426/450/451 and dropped data connections are transient.
//! - **Not done:** resuming across a restart of the whole operation (a new attempt of the
//!   retry layer uses a new temporary name; the abandoned one stays hidden from `list`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use suppaftp::list::ListParser;
use suppaftp::tokio::{
    AsyncFtpStream, AsyncRustlsConnector, AsyncRustlsFtpStream, ImplAsyncFtpStream, TokioTlsStream,
};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::limit::Backend;
use crate::{validate_key, ObjectInfo, Store, StoreError, StoreOptions};

enum Conn {
    Plain(AsyncFtpStream),
    Tls(AsyncRustlsFtpStream),
}

/// Directories one `list` may walk before it gives up on the server.
const MAX_LIST_DIRS: usize = 100_000;
/// How deep `list` descends below the listed directory (a repository needs two).
const MAX_LIST_DEPTH: usize = 4;

/// Runs the same code on either connection type.
macro_rules! on {
    ($conn:expr, $f:ident => $body:expr) => {
        match $conn {
            Conn::Plain($f) => $body,
            Conn::Tls($f) => $body,
        }
    };
}

/// A store in a directory on an FTP(S) server.
pub struct FtpStore {
    host: String,
    port: u16,
    user: String,
    password: String,
    root: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    implicit: bool,
    location: String,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
    dirs: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for FtpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

fn ftp_err(op: &'static str, key: &str, e: FtpError) -> StoreError {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let code = r.status.code();
            let detail = format!(
                "{code} {}",
                String::from_utf8_lossy(&r.body).trim().replace('\n', " ")
            );
            match code {
                550 if op != "rename" && op != "create directory" => {
                    StoreError::NotFound(key.to_string())
                }
                421 | 425 | 426 | 450 | 451 => StoreError::Transient {
                    op,
                    key: key.to_string(),
                    detail,
                },
                452 | 552 => StoreError::NoSpace {
                    key: key.to_string(),
                    error: std::io::Error::other(detail),
                },
                530 | 532 => StoreError::Auth {
                    location: key.to_string(),
                    detail,
                },
                _ => StoreError::Remote {
                    op,
                    key: key.to_string(),
                    detail,
                },
            }
        }
        FtpError::SecureError(m) => StoreError::Auth {
            location: key.to_string(),
            detail: format!("TLS: {m}"),
        },
        other => StoreError::Transient {
            op,
            key: key.to_string(),
            detail: other.to_string(),
        },
    }
}

/// Reconnect-and-continue rounds of one transfer before the error goes to the retry layer.
pub const RESUME_ATTEMPTS: u32 = 3;

/// `STOR` of `data[offset..]` into `tmp`, with `REST offset` first when resuming.
async fn store_from<T: TokioTlsStream + Send>(
    ftp: &mut ImplAsyncFtpStream<T>,
    tmp: &str,
    key: &str,
    data: &[u8],
    offset: usize,
) -> Result<(), StoreError> {
    let cut = |e: std::io::Error| StoreError::Transient {
        op: "store",
        key: key.to_string(),
        detail: format!("data connection: {e}"),
    };
    if offset > 0 {
        ftp.resume_transfer(offset)
            .await
            .map_err(|e| ftp_err("store", key, e))?;
    }
    let mut s = ftp
        .put_with_stream(tmp)
        .await
        .map_err(|e| ftp_err("store", key, e))?;
    let wrote = async {
        s.write_all(&data[offset..]).await?;
        s.flush().await
    }
    .await;
    if let Err(e) = wrote {
        // The server may already have answered 426; read it if it is there.
        let _ = s.finish().await;
        return Err(cut(e));
    }
    s.finish().await.map_err(|e| ftp_err("store", key, e))
}

/// `RETR` of `path` from `buf.len()` on (with `REST` when resuming), appending to `buf`.
async fn retr_into<T: TokioTlsStream + Send>(
    ftp: &mut ImplAsyncFtpStream<T>,
    path: &str,
    key: &str,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    if !buf.is_empty() {
        ftp.resume_transfer(buf.len())
            .await
            .map_err(|e| ftp_err("get", key, e))?;
    }
    let mut s = ftp
        .retr_as_stream(path)
        .await
        .map_err(|e| ftp_err("get", key, e))?;
    let read = s.read_to_end(buf).await;
    let fin = s.finish().await;
    read.map_err(|e| StoreError::Transient {
        op: "get",
        key: key.to_string(),
        detail: format!("data connection: {e}"),
    })?;
    fin.map_err(|e| ftp_err("get", key, e))
}

async fn rename_on<T: TokioTlsStream + Send>(
    ftp: &mut ImplAsyncFtpStream<T>,
    tmp: &str,
    path: &str,
    key: &str,
) -> Result<(), StoreError> {
    if let Err(e) = ftp.rename(tmp, path).await {
        let _ = ftp.rm(tmp).await;
        return Err(ftp_err("rename", key, e));
    }
    Ok(())
}

impl FtpStore {
    /// Parses `ftp://user@host:port/path` or `ftps://…` (no connection is made here).
    pub fn open(url: &url::Url, opts: &StoreOptions) -> Result<FtpStore, StoreError> {
        if url.password().is_some() {
            return Err(StoreError::BadLocation(
                "ftp:// URLs must not carry a password: use FERRY_STORE_PASSWORD or a \
                 secrets file"
                    .into(),
            ));
        }
        let mut implicit = url.scheme() == "ftps-implicit"
            || url
                .query_pairs()
                .any(|(k, v)| k == "implicit" && matches!(&*v, "1" | "true" | "yes" | "on"));
        let tls = match url.scheme() {
            "ftp" => {
                implicit = false;
                None
            }
            "ftps" | "ftps-implicit" => Some(Arc::new(crate::s3::tls_config(
                opts.secrets.ca_file.as_deref(),
            )?)),
            s => return Err(StoreError::BadLocation(format!("not an FTP scheme: {s}"))),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| StoreError::BadLocation("ftp:// URL without a host".into()))?
            .to_string();
        let port = url.port().unwrap_or(if implicit { 990 } else { 21 });
        let user = if url.username().is_empty() {
            "anonymous".to_string()
        } else {
            url.username().to_string()
        };
        let password = opts.secrets.password.clone().unwrap_or_default();
        let mut max_idle = opts.parallel.clamp(1, 4);
        let mut insecure = false;
        for (k, v) in url.query_pairs() {
            match &*k {
                "insecure" => insecure = matches!(&*v, "1" | "true" | "yes" | "on"),
                "connections" => {
                    max_idle = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        StoreError::BadLocation(format!("bad connections value {v:?}"))
                    })?;
                }
                "parallel" | "bwlimit" | "retries" | "timeout" | "probe" | "ca" | "implicit" => {}
                other => {
                    return Err(StoreError::BadLocation(format!(
                        "unknown ftp:// parameter {other:?}"
                    )))
                }
            }
        }
        if tls.is_none() && !insecure {
            return Err(StoreError::BadLocation(
                "ftp:// sends the password and the backup data in clear over the network: \
                 use ftps:// (TLS), or add insecure=1 to the URL to accept that"
                    .into(),
            ));
        }
        let path = url.path().trim_end_matches('/');
        let root = if path.is_empty() { "/" } else { path }.to_string();
        let scheme = if implicit {
            "ftps-implicit"
        } else {
            url.scheme()
        };
        Ok(FtpStore {
            location: format!("{scheme}://{user}@{host}:{port}{root}"),
            implicit,
            host,
            port,
            user,
            password,
            root,
            tls,
            idle: Mutex::new(Vec::new()),
            max_idle,
            dirs: Mutex::new(HashSet::new()),
        })
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let addr = (self.host.as_str(), self.port);
        let loc = self.location.clone();
        let mut conn = match &self.tls {
            None => Conn::Plain(
                AsyncFtpStream::connect(addr)
                    .await
                    .map_err(|e| ftp_err("connect", &loc, e))?,
            ),
            Some(cfg) if self.implicit => {
                let connector =
                    AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(cfg.clone()));
                let secure =
                    AsyncRustlsFtpStream::connect_secure_implicit(addr, connector, &self.host)
                        .await
                        .map_err(|e| match e {
                            FtpError::SecureError(m) => StoreError::Auth {
                                location: loc.clone(),
                                detail: format!("TLS: {m}"),
                            },
                            e => ftp_err("connect", &loc, e),
                        })?;
                Conn::Tls(secure)
            }
            Some(cfg) => {
                let plain = AsyncRustlsFtpStream::connect(addr)
                    .await
                    .map_err(|e| ftp_err("connect", &loc, e))?;
                let connector =
                    AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(cfg.clone()));
                let secure = plain
                    .into_secure(connector, &self.host)
                    .await
                    .map_err(|e| StoreError::Auth {
                        location: loc.clone(),
                        detail: format!("TLS: {e}"),
                    })?;
                Conn::Tls(secure)
            }
        };
        let (user, pw) = (self.user.as_str(), self.password.as_str());
        on!(&mut conn, f => {
            f.login(user, pw).await.map_err(|e| match e {
                FtpError::UnexpectedResponse(r) if matches!(r.status.code(), 530 | 331 | 332) => {
                    StoreError::Auth {
                        location: loc.clone(),
                        detail: format!("login as {user:?} refused (wrong password?)"),
                    }
                }
                e => ftp_err("login", &loc, e),
            })?;
            f.transfer_type(FileType::Binary)
                .await
                .map_err(|e| ftp_err("type", &loc, e))?;
        });
        if let (true, Conn::Tls(f)) = (self.implicit, &mut conn) {
            // into_secure() does this for explicit TLS; implicit mode must ask for protected
            // data connections itself.
            f.custom_command("PBSZ 0", &[Status::CommandOk])
                .await
                .map_err(|e| ftp_err("PBSZ", &loc, e))?;
            f.custom_command("PROT P", &[Status::CommandOk])
                .await
                .map_err(|e| ftp_err("PROT", &loc, e))?;
        }
        Ok(conn)
    }

    async fn take(&self) -> Result<Conn, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => self.connect().await,
        }
    }

    fn give_back(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    fn full(&self, key: &str) -> String {
        if self.root == "/" {
            format!("/{key}")
        } else {
            format!("{}/{key}", self.root)
        }
    }

    async fn ensure_dir(&self, c: &mut Conn, dir: &str) -> Result<(), StoreError> {
        if self.dirs_has(dir) {
            return Ok(());
        }
        let mut end = 0;
        let mut prefixes = Vec::new();
        for part in dir.split('/') {
            end += part.len();
            if !part.is_empty() {
                prefixes.push(dir[..end].to_string());
            }
            end += 1;
        }
        for p in prefixes {
            if self.dirs_has(&p) {
                continue;
            }
            let made = on!(&mut *c, f => f.mkdir(&p).await);
            if let Err(e) = made {
                // Exists already (550/521)? Check by changing into it.
                let is_dir = on!(&mut *c, f => {
                    let ok = f.cwd(&p).await.is_ok();
                    let _ = f.cwd("/").await;
                    ok
                });
                if !is_dir {
                    return Err(ftp_err("create directory", &p, e));
                }
            }
            self.dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p);
        }
        Ok(())
    }

    fn dirs_has(&self, d: &str) -> bool {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(d)
    }

    /// Runs `f` on a pooled connection; the connection goes back only when `f` succeeded
    /// or failed with a plain server answer.
    async fn with<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a mut Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>,
        >,
    ) -> Result<T, StoreError> {
        let mut c = self.take().await?;
        let r = f(&mut c).await;
        match &r {
            Err(e) if e.is_transient() => {}
            _ => self.give_back(c),
        }
        r
    }

    async fn size_of(c: &mut Conn, path: &str, key: &str) -> Result<bool, StoreError> {
        match on!(c, f => f.size(path).await) {
            Ok(_) => Ok(true),
            Err(e) => match ftp_err("size", key, e) {
                StoreError::NotFound(_) => Ok(false),
                e => Err(e),
            },
        }
    }

    /// Uploads `data` into `tmp`, resuming with `REST` after a dropped connection.
    async fn upload(
        &self,
        c: &mut Conn,
        tmp: &str,
        key: &str,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let mut offset = 0usize;
        let mut round = 0;
        loop {
            let r = on!(&mut *c, f => store_from(f, tmp, key, data, offset).await);
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && round < RESUME_ATTEMPTS => {
                    round += 1;
                    *c = self.connect().await?;
                    // What reached the server survives in the temporary: continue after it.
                    let have = match on!(&mut *c, f => f.size(tmp).await) {
                        Ok(n) if n <= data.len() => n,
                        _ => 0,
                    };
                    tracing::info!(
                        store = %self.location, key, round, offset = have,
                        "upload interrupted ({e}); resuming with REST"
                    );
                    offset = have;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Downloads `path`, resuming with `REST` after a dropped connection.
    async fn download(&self, c: &mut Conn, path: &str, key: &str) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        let mut round = 0;
        loop {
            let r = on!(&mut *c, f => retr_into(f, path, key, &mut buf).await);
            match r {
                Ok(()) => return Ok(buf),
                Err(e) if e.is_transient() && round < RESUME_ATTEMPTS => {
                    round += 1;
                    tracing::info!(
                        store = %self.location, key, round, offset = buf.len(),
                        "download interrupted ({e}); resuming with REST"
                    );
                    *c = self.connect().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn put_inner(&self, key: &str, data: Bytes, only_new: bool) -> Result<bool, StoreError> {
        validate_key(key)?;
        let path = self.full(key);
        let dir = path
            .rfind('/')
            .map_or(String::new(), |i| path[..i].to_string());
        let tmp = format!("{dir}/.tmp-{:016x}", rand::random::<u64>());
        let mut c = self.take().await?;
        let r: Result<bool, StoreError> = async {
            if only_new && Self::size_of(&mut c, &path, key).await? {
                return Ok(false);
            }
            if !dir.is_empty() {
                self.ensure_dir(&mut c, &dir).await?;
            }
            self.upload(&mut c, &tmp, key, &data).await?;
            on!(&mut c, f => rename_on(f, &tmp, &path, key).await)?;
            Ok(true)
        }
        .await;
        match &r {
            Err(e) if e.is_transient() => {}
            _ => self.give_back(c),
        }
        r
    }
}

#[async_trait]
impl Store for FtpStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.put_inner(key, data, false).await.map(|_| ())
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.put_inner(key, data, true).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let path = self.full(key);
        let mut c = self.take().await?;
        let r = self.download(&mut c, &path, key).await;
        match &r {
            Err(e) if e.is_transient() => {}
            _ => self.give_back(c),
        }
        Ok(Bytes::from(r?))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        validate_key(key)?;
        let path = self.full(key);
        let key = key.to_string();
        self.with(move |c| Box::pin(async move { Self::size_of(c, &path, &key).await }))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]).to_string();
        let prefix = prefix.to_string();
        let root = self.root.clone();
        self.with(move |c| {
            Box::pin(async move {
                let mut out = Vec::new();
                let mut stack = vec![(dir, 0usize)];
                let mut dirs = 0usize;
                while let Some((rel, depth)) = stack.pop() {
                    // A hostile server could list directories forever: a repository is
                    // at most three levels deep, and has far fewer directories than this.
                    dirs += 1;
                    if dirs > MAX_LIST_DIRS {
                        return Err(StoreError::Remote {
                            op: "list",
                            key: prefix.clone(),
                            detail: format!(
                                "the server listed more than {MAX_LIST_DIRS} directories"
                            ),
                        });
                    }
                    let abs = if rel.is_empty() {
                        root.clone()
                    } else if root == "/" {
                        format!("/{rel}")
                    } else {
                        format!("{root}/{rel}")
                    };
                    let lines = match on!(&mut *c, f => f.mlsd(Some(&abs)).await) {
                        Ok(l) => l,
                        Err(e) => match ftp_err("list", &rel, e) {
                            StoreError::NotFound(_) => continue,
                            e => return Err(e),
                        },
                    };
                    for line in lines {
                        let Ok(file) = ListParser::parse_mlsd(&line) else {
                            continue;
                        };
                        let name = file.name().to_string();
                        if name == "." || name == ".." || name.starts_with(".tmp") {
                            continue;
                        }
                        let key = if rel.is_empty() {
                            name
                        } else {
                            format!("{rel}/{name}")
                        };
                        // A name the server made up ("../x", "a/b", NUL) is no object of
                        // ours: skip it rather than hand it to the archive.
                        if validate_key(&key).is_err() {
                            continue;
                        }
                        if file.is_directory() {
                            if depth < MAX_LIST_DEPTH {
                                stack.push((key, depth + 1));
                            }
                        } else if file.is_file() && key.starts_with(&prefix) {
                            out.push(ObjectInfo {
                                key,
                                size: file.size() as u64,
                                modified: file
                                    .modified()
                                    .duration_since(UNIX_EPOCH)
                                    .map_or(0, |d| d.as_secs()),
                            });
                        }
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let path = self.full(key);
        let key = key.to_string();
        self.with(move |c| {
            Box::pin(async move {
                match on!(c, f => f.rm(&path).await) {
                    Ok(()) => Ok(()),
                    Err(e) => match ftp_err("delete", &key, e) {
                        StoreError::NotFound(_) => Ok(()),
                        e => Err(e),
                    },
                }
            })
        })
        .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // FTP has no durability barrier: a completed STOR is on the server.
        Ok(())
    }
}

impl Backend for FtpStore {
    fn reset(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
