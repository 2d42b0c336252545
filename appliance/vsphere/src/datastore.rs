//! Datastore HTTPS: `/folder/<path>?dcPath=…&dsName=…`. GET with `Range` as the VMDK
//! reader's positional [`ByteSource`] (bounded requests in flight, retry on a dropped
//! connection, re-login on an expired session), and PUT for restores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_vmdk::{ByteSource, Resolver};
use tokio::sync::{OnceCell, Semaphore};

use crate::client::Client;
use crate::error::{Result, VsphereError};

/// A `[datastore] path/in/datastore` reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatastorePath {
    /// Datastore name.
    pub datastore: String,
    /// Path inside the datastore, `/`-separated, no leading slash.
    pub path: String,
}

impl DatastorePath {
    /// Parses `[ds] dir/file.vmdk`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            VsphereError::Invalid(format!(
                "{s:?} is not a datastore path like \"[ds] dir/file.vmdk\""
            ))
        };
        let rest = s.trim().strip_prefix('[').ok_or_else(bad)?;
        let (ds, path) = rest.split_once(']').ok_or_else(bad)?;
        let path = path.trim().trim_start_matches('/');
        if ds.is_empty() || path.is_empty() || path.split('/').any(|c| c == "..") {
            return Err(bad());
        }
        Ok(DatastorePath {
            datastore: ds.to_string(),
            path: path.to_string(),
        })
    }

    /// The directory part (may be empty).
    pub fn dir(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(d, _)| d)
    }

    /// A sibling path in the same directory.
    pub fn sibling(&self, name: &str) -> DatastorePath {
        let path = match self.dir() {
            "" => name.to_string(),
            d => format!("{d}/{name}"),
        };
        DatastorePath {
            datastore: self.datastore.clone(),
            path,
        }
    }
}

impl std::fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.path)
    }
}

/// Counters of a datastore transport, shared by every file it opens.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Body bytes received by GETs.
    pub bytes_fetched: AtomicU64,
    /// GET requests made (retries included).
    pub requests: AtomicU64,
    /// Retries after a failure.
    pub retries: AtomicU64,
}

/// Datastore file access for one datacenter.
#[derive(Debug, Clone)]
pub struct Datastore {
    client: Client,
    datacenter: String,
    in_flight: Arc<Semaphore>,
    stats: Arc<TransferStats>,
    attempts: u32,
}

impl Datastore {
    /// Files of `datacenter`'s datastores, with at most `in_flight` requests at once.
    pub fn new(client: &Client, datacenter: &str, in_flight: usize) -> Self {
        Datastore {
            client: client.clone(),
            datacenter: datacenter.to_string(),
            in_flight: Arc::new(Semaphore::new(in_flight.max(1))),
            stats: Arc::new(TransferStats::default()),
            attempts: 4,
        }
    }

    /// The transfer counters.
    pub fn stats(&self) -> &Arc<TransferStats> {
        &self.stats
    }

    /// The HTTPS URL of a datastore file.
    pub fn url(&self, p: &DatastorePath) -> url::Url {
        let mut u = self.client.url().clone();
        u.set_path("/folder");
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.extend(p.path.split('/'));
        }
        u.query_pairs_mut()
            .clear()
            .append_pair("dcPath", &self.datacenter)
            .append_pair("dsName", &p.datastore);
        u
    }

    /// Opens a file for positional reads.
    pub fn open(&self, p: &DatastorePath) -> DatastoreFile {
        DatastoreFile {
            ds: self.clone(),
            path: p.clone(),
            name: p.to_string(),
            url: self.url(p),
            len: Arc::new(OnceCell::new()),
        }
    }

    /// A [`Resolver`] for a disk whose descriptor is `descriptor`: plain names are paths in
    /// its datastore, `[ds] path` names anywhere, ESXi `/vmfs/volumes/...` names in its
    /// directory.
    pub fn resolver(&self, descriptor: &DatastorePath) -> DatastoreResolver {
        DatastoreResolver {
            ds: self.clone(),
            base: descriptor.clone(),
        }
    }

    /// Sends a request built by `build` (with the session cookie), re-logging in on 401/403
    /// and retrying dropped connections and 5xx answers.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut last: Option<VsphereError> = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 << (2 * (attempt - 1).min(4)))).await;
            }
            let (cookie, gen) = self.client.cookie();
            let mut req = build();
            if let Some(c) = cookie {
                req = req.header("Cookie", c);
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status().as_u16() == 401 || r.status().as_u16() == 403 => {
                    self.client.relogin(gen).await?;
                    last = Some(VsphereError::Status {
                        what: what.to_string(),
                        status: r.status().as_u16(),
                    });
                }
                Ok(r) if r.status().is_server_error() => {
                    last = Some(VsphereError::Status {
                        what: what.to_string(),
                        status: r.status().as_u16(),
                    });
                }
                Ok(r) => {
                    return Err(VsphereError::Status {
                        what: what.to_string(),
                        status: r.status().as_u16(),
                    })
                }
                Err(e) => {
                    let e = self.client.map_http_error(what, e);
                    if matches!(e, VsphereError::ThumbprintMismatch { .. }) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, attempt, "datastore request failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| VsphereError::Invalid(format!("{what}: no attempt made"))))
    }

    /// Uploads `len` bytes from `body` to `p` (creating or replacing the file).
    pub async fn put(&self, p: &DatastorePath, body: reqwest::Body, len: u64) -> Result<()> {
        let url = self.url(p);
        let (cookie, gen) = self.client.cookie();
        let mut req = self
            .client
            .http()
            .put(url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .timeout(Duration::from_secs(24 * 3600))
            .body(body);
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        // A streamed body cannot be replayed, so a PUT is not retried; an expired session
        // gets a fresh login for the caller's next attempt.
        let r = req
            .send()
            .await
            .map_err(|e| self.client.map_http_error(&format!("PUT {p}"), e))?;
        let status = r.status().as_u16();
        if status == 401 || status == 403 {
            self.client.relogin(gen).await?;
        }
        if !r.status().is_success() {
            return Err(VsphereError::Status {
                what: format!("PUT {p}"),
                status,
            });
        }
        Ok(())
    }

    /// Uploads a small file from memory (retried, since the body can be replayed).
    pub async fn put_bytes(&self, p: &DatastorePath, data: Vec<u8>) -> Result<()> {
        let url = self.url(p);
        let data = bytes::Bytes::from(data);
        self.send(&format!("PUT {p}"), || {
            self.client
                .http()
                .put(url.clone())
                .header("Content-Type", "application/octet-stream")
                .body(data.clone())
        })
        .await
        .map(|_| ())
    }
}

/// One datastore file read by ranges.
#[derive(Debug, Clone)]
pub struct DatastoreFile {
    ds: Datastore,
    path: DatastorePath,
    name: String,
    url: url::Url,
    len: Arc<OnceCell<u64>>,
}

impl DatastoreFile {
    /// The file's datastore path.
    pub fn path(&self) -> &DatastorePath {
        &self.path
    }

    async fn fetch_len(&self) -> Result<u64> {
        let what = format!("HEAD {}", self.path);
        let r = self
            .ds
            .send(&what, || self.ds.client.http().head(self.url.clone()))
            .await?;
        r.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| VsphereError::Invalid(format!("{what}: no Content-Length")))
    }

    async fn get_range(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let what = format!("GET {}", self.path);
        let end = offset + len as u64 - 1;
        let range = format!("bytes={offset}-{end}");
        let _permit = self
            .ds
            .in_flight
            .acquire()
            .await
            .map_err(|_| VsphereError::Invalid("datastore transport closed".into()))?;
        let mut last = None;
        // The body can drop mid-way too, so the whole request-and-read is retried.
        for attempt in 0..self.ds.attempts {
            if attempt > 0 {
                self.ds.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 << (2 * (attempt - 1).min(4)))).await;
            }
            let mut resp = self
                .ds
                .send(&what, || {
                    self.ds
                        .client
                        .http()
                        .get(self.url.clone())
                        .header("Range", range.clone())
                })
                .await?;
            let status = resp.status().as_u16();
            if status != 206 && !(status == 200 && offset == 0) {
                return Err(VsphereError::Status { what, status });
            }
            let mut buf = Vec::with_capacity(len);
            let res: std::result::Result<(), reqwest::Error> = async {
                while let Some(c) = resp.chunk().await? {
                    let take = c.len().min(len - buf.len());
                    buf.extend_from_slice(&c[..take]);
                    self.ds
                        .stats
                        .bytes_fetched
                        .fetch_add(c.len() as u64, Ordering::Relaxed);
                    if buf.len() == len {
                        break;
                    }
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) if buf.len() == len => return Ok(buf),
                Ok(()) => {
                    return Err(VsphereError::Invalid(format!(
                        "{what}: {} bytes at {offset} where {len} were asked for",
                        buf.len()
                    )))
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "datastore read dropped");
                    last = Some(self.ds.client.map_http_error(&what, e));
                }
            }
        }
        Err(last.unwrap_or_else(|| VsphereError::Invalid(format!("{what}: no attempt made"))))
    }
}

fn io_err(e: VsphereError) -> std::io::Error {
    std::io::Error::other(e)
}

#[async_trait]
impl ByteSource for DatastoreFile {
    fn name(&self) -> &str {
        &self.name
    }

    async fn len(&self) -> std::io::Result<u64> {
        self.len
            .get_or_try_init(|| self.fetch_len())
            .await
            .copied()
            .map_err(io_err)
    }

    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let size = self.len().await?;
        if offset.checked_add(len as u64).is_none_or(|e| e > size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} past the end of {} ({size} bytes)",
                    self.name
                ),
            ));
        }
        self.get_range(offset, len).await.map_err(io_err)
    }
}

/// Resolves the names a descriptor gives (extents, parents) to datastore files.
#[derive(Debug, Clone)]
pub struct DatastoreResolver {
    ds: Datastore,
    base: DatastorePath,
}

impl DatastoreResolver {
    fn resolve(&self, name: &str) -> std::io::Result<DatastorePath> {
        if name.starts_with('[') {
            return DatastorePath::parse(name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()));
        }
        if name.contains("..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?}: parent directory references are refused"),
            ));
        }
        if let Some(rest) = name.strip_prefix("/vmfs/volumes/") {
            // An ESXi path of a parent: /vmfs/volumes/<ds>/<dir>/<file>. The datastore is
            // named by UUID or name; files of one chain sit in the VM's directory, so the
            // name is taken relative to the descriptor's directory.
            let file = rest.rsplit('/').next().unwrap_or(rest);
            return Ok(self.base.sibling(file));
        }
        // The VMDK reader already joins a descriptor's relative names to its directory,
        // so a plain name is a path from the datastore root.
        Ok(DatastorePath {
            datastore: self.base.datastore.clone(),
            path: name.trim_start_matches('/').to_string(),
        })
    }
}

#[async_trait]
impl Resolver for DatastoreResolver {
    async fn open(&self, name: &str) -> std::io::Result<Arc<dyn ByteSource>> {
        let p = if name == self.base.path || name == self.base.to_string() {
            self.base.clone()
        } else {
            self.resolve(name)?
        };
        Ok(Arc::new(self.ds.open(&p)))
    }

    fn identity(&self, name: &str) -> String {
        self.resolve(name)
            .map(|p| p.to_string())
            .unwrap_or_else(|_| name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_paths() {
        let p = DatastorePath::parse("[LocalDS_0] vm 1/disk.vmdk").unwrap();
        assert_eq!(p.datastore, "LocalDS_0");
        assert_eq!(p.path, "vm 1/disk.vmdk");
        assert_eq!(
            p.sibling("disk-flat.vmdk").to_string(),
            "[LocalDS_0] vm 1/disk-flat.vmdk"
        );
        for bad in ["disk.vmdk", "[ds]", "[] a", "[ds] ../etc/passwd"] {
            assert!(DatastorePath::parse(bad).is_err(), "{bad}");
        }
    }
}
