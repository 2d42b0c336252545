//! The FTP backend: `ftp://user@host:port/path` and `ftps://…` (explicit TLS, `AUTH TLS`).
//!
//! suppaftp on tokio, with rustls on ring for FTPS (roots from `ca=` / `FERRY_STORE_CA_FILE`
//! or the system bundle; the certificate must match the host name). Passive mode, binary type.
//!
//! - **Atomic put:** `STOR .tmp-<random>`, then `RNFR`/`RNTO` onto the key; servers on POSIX
//!   (vsftpd, pyftpdlib, proftpd) replace an existing target atomically with rename(2).
//! - **put_new:** FTP has no create-if-absent: `SIZE`, then put. Two writers of the same key
//!   race harmlessly for the archive (content-addressed chunks; `config` is written once).
//! - **Connections:** a pool of up to `connections=N` (default 4) logged-in control
//!   connections; one that failed is dropped, and the retry layer retries on a new one.
//!   421/425/426/450/451 and dropped data connections are transient.
//! - **Not yet:** implicit FTPS (port 990; suppaftp has it only behind its `deprecated`
//!   feature), and resuming a partial `STOR` with `REST` (objects are at most a chunk or an
//!   index, so a failed upload is simply sent again).

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
use suppaftp::FtpError;
use tokio::io::AsyncReadExt;

use crate::limit::Backend;
use crate::{validate_key, ObjectInfo, Store, StoreError, StoreOptions};

enum Conn {
    Plain(AsyncFtpStream),
    Tls(AsyncRustlsFtpStream),
}

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
                    source: std::io::Error::other(detail),
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

async fn put_on<T: TokioTlsStream + Send>(
    ftp: &mut ImplAsyncFtpStream<T>,
    tmp: &str,
    path: &str,
    key: &str,
    data: &[u8],
) -> Result<(), StoreError> {
    let mut reader = data;
    if let Err(e) = ftp.put_file(tmp, &mut reader).await {
        return Err(ftp_err("store", key, e));
    }
    if let Err(e) = ftp.rename(tmp, path).await {
        let _ = ftp.rm(tmp).await;
        return Err(ftp_err("rename", key, e));
    }
    Ok(())
}

async fn get_on<T: TokioTlsStream + Send>(
    ftp: &mut ImplAsyncFtpStream<T>,
    path: &str,
    key: &str,
) -> Result<Vec<u8>, StoreError> {
    let mut s = ftp
        .retr_as_stream(path)
        .await
        .map_err(|e| ftp_err("get", key, e))?;
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf).await;
    let fin = s.finish().await;
    read.map_err(|e| StoreError::Transient {
        op: "get",
        key: key.to_string(),
        detail: format!("data connection: {e}"),
    })?;
    fin.map_err(|e| ftp_err("get", key, e))?;
    Ok(buf)
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
        let tls = match url.scheme() {
            "ftp" => None,
            "ftps" => Some(Arc::new(crate::s3::tls_config(
                opts.secrets.ca_file.as_deref(),
            )?)),
            s => return Err(StoreError::BadLocation(format!("not an FTP scheme: {s}"))),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| StoreError::BadLocation("ftp:// URL without a host".into()))?
            .to_string();
        let port = url.port().unwrap_or(21);
        let user = if url.username().is_empty() {
            "anonymous".to_string()
        } else {
            url.username().to_string()
        };
        let password = opts.secrets.password.clone().unwrap_or_default();
        let mut max_idle = opts.parallel.clamp(1, 4);
        for (k, v) in url.query_pairs() {
            match &*k {
                "connections" => {
                    max_idle = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        StoreError::BadLocation(format!("bad connections value {v:?}"))
                    })?;
                }
                "parallel" | "bwlimit" | "retries" | "timeout" | "probe" | "ca" => {}
                other => {
                    return Err(StoreError::BadLocation(format!(
                        "unknown ftp:// parameter {other:?}"
                    )))
                }
            }
        }
        let path = url.path().trim_end_matches('/');
        let root = if path.is_empty() { "/" } else { path }.to_string();
        Ok(FtpStore {
            location: format!("{}://{user}@{host}:{port}{root}", url.scheme()),
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
            on!(&mut c, f => put_on(f, &tmp, &path, key, &data).await)?;
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
        let key = key.to_string();
        let data = self
            .with(move |c| Box::pin(async move { on!(c, f => get_on(f, &path, &key).await) }))
            .await?;
        Ok(Bytes::from(data))
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
                let mut stack = vec![dir];
                while let Some(rel) = stack.pop() {
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
                        if file.is_directory() {
                            stack.push(key);
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
