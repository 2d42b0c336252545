//! The S3 backend: `s3://bucket/prefix?endpoint=URL&region=R&path_style=true&ca=FILE`.
//!
//! Built on `object_store`'s S3 client with reqwest and rustls on ring (no aws-lc): the TLS
//! configuration is ours, with the roots from `ca=` / `FERRY_STORE_CA_FILE`, else the
//! system bundle (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`).
//!
//! - `put` is S3's own atomic PUT; objects above [`MULTIPART_THRESHOLD`] go up as a multipart
//!   upload in [`PART_SIZE`] parts, which S3 also makes visible atomically on completion.
//! - `put_new` uses a conditional PUT (`If-None-Match: *`). Not every S3-compatible server
//!   honours it: on first use the backend checks once (put an object, conditionally put it
//!   again, expect a refusal). A server that ignores or rejects the header gets HEAD + PUT
//!   instead, which has a race window between two writers of the same key; for the archive
//!   that is harmless (chunks are content-addressed, and `config` is written once at init).
//! - `sync` is a no-op: a PUT that returned is durable.
//! - `clean_temporaries` has nothing to clean: an interrupted multipart upload is aborted
//!   when it fails; one cut off by a crash is invisible and should be expired by a bucket
//!   lifecycle rule (`AbortIncompleteMultipartUpload`).
//! - object_store's own retries are off: the [`crate::Limited`] layer retries every backend
//!   the same way. Memory per operation is bounded by one object (at most a chunk or index).
//! - An `http://` endpoint sends the signed requests and every object in clear, so it is
//!   refused unless the URL also says `insecure=1` (loopback included).
//! - Credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`) or the
//!   secrets file; never in the URL. Without them the open fails (no instance metadata).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::limit::Backend;
use crate::{validate_key, ObjectInfo, Store, StoreError, StoreOptions};

/// Objects larger than this go up as multipart uploads.
pub const MULTIPART_THRESHOLD: usize = 64 * 1024 * 1024;
/// Part size of multipart uploads.
pub const PART_SIZE: usize = 16 * 1024 * 1024;

const COND_UNKNOWN: u8 = 0;
const COND_YES: u8 = 1;
const COND_NO: u8 = 2;

/// Hands object_store a reqwest client with our rustls (ring) configuration.
#[derive(Debug)]
struct Connector(reqwest::Client);

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}

/// A store in an S3 bucket under a prefix.
#[derive(Debug)]
pub struct S3Store {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    location: String,
    conditional: AtomicU8,
    cond_check: tokio::sync::Mutex<()>,
}

/// Builds the rustls client configuration (ring provider) from a CA file or the system bundle.
pub(crate) fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| StoreError::BadLocation(format!("CA bundle {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert
            .map_err(|e| StoreError::BadLocation(format!("CA bundle {}: {e}", path.display())))?;
        // Skip certificates rustls cannot use instead of failing on a large system bundle.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(StoreError::BadLocation(format!(
            "CA bundle {} holds no usable certificate",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::BadLocation(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

impl S3Store {
    /// Opens `s3://bucket/prefix?...` (no connection is made here).
    pub fn open(url: &url::Url, opts: &StoreOptions) -> Result<S3Store, StoreError> {
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| StoreError::BadLocation("s3:// URL without a bucket".into()))?
            .to_string();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(StoreError::BadLocation(
                "s3:// URLs take no credentials: use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
                 or a secrets file"
                    .into(),
            ));
        }
        let prefix = url.path().trim_matches('/').to_string();
        let mut endpoint = None;
        let mut region = "us-east-1".to_string();
        let mut path_style = false;
        let mut insecure = false;
        for (k, v) in url.query_pairs() {
            match &*k {
                "insecure" => insecure = matches!(&*v, "1" | "true" | "yes" | "on"),
                "endpoint" => endpoint = Some(v.to_string()),
                "region" => region = v.to_string(),
                "path_style" => path_style = matches!(&*v, "1" | "true" | "yes"),
                "parallel" | "bwlimit" | "retries" | "timeout" | "probe" | "ca" => {}
                other => {
                    return Err(StoreError::BadLocation(format!(
                        "unknown s3:// parameter {other:?}"
                    )))
                }
            }
        }
        let cleartext = endpoint.as_deref().is_some_and(|e| {
            e.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
        });
        if cleartext && !insecure {
            return Err(StoreError::BadLocation(
                "an http:// S3 endpoint sends the backup data (and the request signatures) in \
                 clear over the network: use https://, or add insecure=1 to the URL to accept \
                 that"
                    .into(),
            ));
        }
        let s = &opts.secrets;
        let (Some(id), Some(secret)) = (&s.access_key_id, &s.secret_access_key) else {
            return Err(StoreError::BadLocation(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                 access_key_id/secret_access_key in the secrets file"
                    .into(),
            ));
        };
        let tls = tls_config(s.ca_file.as_deref())?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .pool_max_idle_per_host(opts.parallel.max(1))
            .connect_timeout(std::time::Duration::from_secs(15))
            .timeout(opts.op_timeout)
            .build()
            .map_err(|e| StoreError::BadLocation(format!("HTTP client: {e}")))?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_access_key_id(id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!path_style)
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .with_http_connector(Connector(client));
        if let Some(t) = &s.session_token {
            b = b.with_token(t);
        }
        let shown_endpoint = match &endpoint {
            Some(ep) => {
                b = b.with_endpoint(ep).with_allow_http(cleartext);
                format!("&endpoint={ep}")
            }
            None => String::new(),
        };
        let store = b
            .build()
            .map_err(|e| StoreError::BadLocation(format!("S3 client: {e}")))?;
        Ok(S3Store {
            store: Arc::new(store),
            location: format!("s3://{bucket}/{prefix}?region={region}{shown_endpoint}"),
            bucket,
            prefix,
            conditional: AtomicU8::new(COND_UNKNOWN),
            cond_check: tokio::sync::Mutex::new(()),
        })
    }

    fn path(&self, key: &str) -> Result<Path, StoreError> {
        validate_key(key)?;
        self.raw_path(key)
    }

    fn raw_path(&self, key: &str) -> Result<Path, StoreError> {
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(&full).map_err(|_| StoreError::InvalidKey(key.to_string()))
    }

    async fn put_path(&self, path: &Path, key: &str, data: Bytes) -> Result<(), StoreError> {
        if data.len() > MULTIPART_THRESHOLD {
            let upload = self
                .store
                .put_multipart(path)
                .await
                .map_err(|e| map_err("start multipart upload", key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            w.put(data);
            return w
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| map_err("multipart upload", key, e));
        }
        self.store
            .put(path, PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| map_err("put", key, e))
    }

    /// Conditional create; `Ok(None)` when the server does not support it.
    async fn put_create(
        &self,
        path: &Path,
        key: &str,
        data: Bytes,
    ) -> Result<Option<bool>, StoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(data), opts)
            .await
        {
            Ok(_) => Ok(Some(true)),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Some(false)),
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => Ok(None),
            Err(e) => {
                let se = map_err("conditional put", key, e);
                match &se {
                    // 501 Not Implemented, or a 400 about the header: not supported.
                    StoreError::Remote { detail, .. }
                        if detail.contains("501") || detail.contains("If-None-Match") =>
                    {
                        Ok(None)
                    }
                    _ => Err(se),
                }
            }
        }
    }

    /// Learns once whether the server honours `If-None-Match: *`.
    async fn conditional_supported(&self) -> Result<bool, StoreError> {
        match self.conditional.load(Ordering::Acquire) {
            COND_YES => return Ok(true),
            COND_NO => return Ok(false),
            _ => {}
        }
        let _guard = self.cond_check.lock().await;
        match self.conditional.load(Ordering::Acquire) {
            COND_YES => return Ok(true),
            COND_NO => return Ok(false),
            _ => {}
        }
        let key = format!("ferry-condput-{:016x}", rand::random::<u64>());
        let path = self.raw_path(&key)?;
        let data = Bytes::from_static(b"ferry conditional put check\n");
        self.put_path(&path, &key, data.clone()).await?;
        let res = self.put_create(&path, &key, data).await;
        let _ = self.store.delete(&path).await;
        let ok = matches!(res?, Some(false));
        if !ok {
            tracing::info!(
                store = %self.location,
                "server ignores conditional PUT; put_new falls back to HEAD + PUT"
            );
        }
        self.conditional
            .store(if ok { COND_YES } else { COND_NO }, Ordering::Release);
        Ok(ok)
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// Maps an object_store error: 404 to NotFound, 401/403 to Auth/PermissionDenied, network
/// faults and 5xx/408/429 to Transient, other statuses to Remote.
fn map_err(op: &'static str, key: &str, e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound(key.to_string()),
        object_store::Error::PermissionDenied { source, .. } => StoreError::PermissionDenied {
            key: key.to_string(),
            error: std::io::Error::new(std::io::ErrorKind::PermissionDenied, source.to_string()),
        },
        object_store::Error::Unauthenticated { source, .. } => StoreError::Auth {
            location: "the S3 endpoint".to_string(),
            detail: format!("{op} {key}: {source}"),
        },
        other => {
            let mut detail = other.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&other);
            while let Some(s) = src {
                let t = s.to_string();
                if !detail.contains(&t) {
                    detail.push_str(": ");
                    detail.push_str(&t);
                }
                src = s.source();
            }
            let status = status_of(&detail);
            let tls = detail.contains("certificate") || detail.contains("InvalidCertificate");
            match status {
                _ if tls => StoreError::Auth {
                    location: "the S3 endpoint".to_string(),
                    detail: format!("TLS certificate refused during {op} {key}: {detail}"),
                },
                Some(s) if s >= 500 || s == 408 || s == 429 => StoreError::Transient {
                    op,
                    key: key.to_string(),
                    detail,
                },
                Some(507) => StoreError::NoSpace {
                    key: key.to_string(),
                    error: std::io::Error::other(detail),
                },
                Some(_) => {
                    if detail.contains("EntityTooLarge") || detail.contains("QuotaExceeded") {
                        StoreError::NoSpace {
                            key: key.to_string(),
                            error: std::io::Error::other(detail),
                        }
                    } else {
                        StoreError::Remote {
                            op,
                            key: key.to_string(),
                            detail,
                        }
                    }
                }
                // No HTTP status: the request did not complete (connect, reset, timeout).
                None => StoreError::Transient {
                    op,
                    key: key.to_string(),
                    detail,
                },
            }
        }
    }
}

/// Finds "status code: NNN" in an error text.
fn status_of(text: &str) -> Option<u16> {
    let i = text.find("status code: ")? + "status code: ".len();
    text.get(i..i + 3)?.parse().ok()
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.put_path(&path, key, data).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        if data.len() <= MULTIPART_THRESHOLD && self.conditional_supported().await? {
            if let Some(created) = self.put_create(&path, key, data.clone()).await? {
                return Ok(created);
            }
            self.conditional.store(COND_NO, Ordering::Release);
        }
        if self.exists(key).await? {
            return Ok(false);
        }
        self.put_path(&path, key, data).await?;
        Ok(true)
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let r = self
            .store
            .get(&path)
            .await
            .map_err(|e| map_err("get", key, e))?;
        r.bytes().await.map_err(|e| map_err("get", key, e))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(map_err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // object_store lists whole path segments: list the directory part, filter the rest.
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let base = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, _) => dir.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{dir}", self.prefix),
        };
        let base_path = if base.is_empty() {
            None
        } else {
            Some(Path::parse(&base).map_err(|_| StoreError::InvalidKey(prefix.to_string()))?)
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(base_path.as_ref())
            .try_collect()
            .await
            .map_err(|e| map_err("list", prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let key = full.strip_prefix(&strip)?.to_string();
                (key.starts_with(prefix) && !key.starts_with("ferry-condput-")).then(|| {
                    ObjectInfo {
                        key,
                        size: m.size,
                        modified: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
                    }
                })
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete", key, e)),
        }
    }

    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Backend for S3Store {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_found() {
        assert_eq!(
            status_of("Server returned non-2xx status code: 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(status_of("connection reset"), None);
    }

    #[test]
    fn urls_parse_without_secrets_in_location() {
        let mut o = StoreOptions::default();
        o.secrets.access_key_id = Some("AKID".into());
        o.secrets.secret_access_key = Some("SECRET".into());
        let u = url::Url::parse(
            "s3://bkt/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true",
        )
        .unwrap();
        let e = S3Store::open(&u, &o).unwrap_err().to_string();
        assert!(e.contains("in clear") && e.contains("insecure=1"), "{e}");
        let u = url::Url::parse(&format!("{u}&insecure=1")).unwrap();
        let s = S3Store::open(&u, &o).unwrap();
        assert_eq!(s.bucket(), "bkt");
        assert_eq!(s.prefix, "some/prefix");
        let loc = s.location();
        assert!(!loc.contains("SECRET") && !loc.contains("AKID"), "{loc}");
        let u = url::Url::parse("s3://bkt/p?nope=1").unwrap();
        assert!(S3Store::open(&u, &o).is_err());
        let u = url::Url::parse("s3://bkt/p").unwrap();
        assert!(S3Store::open(&u, &StoreOptions::default()).is_err());
    }
}
