//! `node://host:9876/vault`: a vault on a Ferry storage node (`ferry-node`).
//!
//! The node speaks the archive format itself, so this backend maps the [`Store`] operations
//! on archive keys to the node's endpoints (`ferry_api::node`):
//!
//! | key | put / put_new | get, exists | delete |
//! |---|---|---|---|
//! | `chunks/..` | `PUT /chunks/{sha256}` (the node re-hashes the content) | `GET`/`HEAD /chunks/{sha256}` | refused: GC runs on the node |
//! | `points/{id}/disk-N.index` | kept here until the manifest | from here, else `GET /objects/{key}` | `DELETE /points/{id}` |
//! | `points/{id}/manifest` | `POST /points/{id}/commit` with the kept indexes, atomically | `GET /objects/{key}` | `DELETE /points/{id}` |
//! | `locks/{name}` | `PUT /locks/{name}` (`?new=1`) | `GET /objects/{key}` | `DELETE /locks/{name}` |
//! | `config` | refused (the node creates vaults) | `GET /objects/config` | refused |
//!
//! [`Store::missing`] asks `POST /chunks/missing` in batches, and [`Store::batch_hint`] tells
//! the backup engine to gather its dedup checks. `sync` is a no-op: the node syncs before it
//! answers a write.
//!
//! URL: `node://host[:9876]/vault?node=ID` (the node's id from its enrollment: its
//! certificate names `agent-ID.ferry.internal`), or `&name=DNSNAME` for another name. The
//! client identity is a PEM bundle (this agent's certificate, its key, and the management
//! CA, like `admin.pem`): `identity=FILE` in the URL, the `identity_file` secret (an agent
//! fills it with its own registration), or `FERRY_NODE_IDENTITY`. Only that CA
//! is trusted for the node.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_api::node::{MissingRequest, MissingResponse, ObjectEntry, PutResponse};

use crate::limit::Backend;
use crate::{ObjectInfo, Store, StoreError, StoreOptions};

/// Digests per missing-chunk request.
const BATCH: usize = 1024;

/// A vault on a storage node.
pub struct NodeStore {
    base: String,
    location: String,
    client: reqwest::Client,
    /// Indexes written but not yet committed, by key: they go with the manifest.
    pending: Mutex<HashMap<String, Bytes>>,
}

impl std::fmt::Debug for NodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStore")
            .field("location", &self.location)
            .finish()
    }
}

enum Class<'a> {
    Config,
    Chunk(&'a str),
    Index(&'a str),
    Manifest(&'a str),
    Lock(&'a str),
    Other,
}

fn classify(key: &str) -> Class<'_> {
    if key == "config" {
        return Class::Config;
    }
    if let Some(rest) = key.strip_prefix("chunks/") {
        if let Some((_, hex)) = rest.split_once('/') {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Class::Chunk(hex);
            }
        }
        return Class::Other;
    }
    if let Some(rest) = key.strip_prefix("points/") {
        if let Some((id, file)) = rest.split_once('/') {
            if file == "manifest" {
                return Class::Manifest(id);
            }
            return Class::Index(id);
        }
        return Class::Other;
    }
    if let Some(name) = key.strip_prefix("locks/") {
        return Class::Lock(name);
    }
    Class::Other
}

/// The PEM blocks of a bundle: (certificates, private key).
fn split_bundle(text: &str) -> (Vec<String>, Option<String>) {
    let mut certs = Vec::new();
    let mut key = None;
    let mut cur: Option<(String, String)> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(kind) = l
            .strip_prefix("-----BEGIN ")
            .and_then(|r| r.strip_suffix("-----"))
        {
            cur = Some((kind.to_string(), format!("{l}\n")));
            continue;
        }
        if let Some((kind, mut body)) = cur.take() {
            body.push_str(l);
            body.push('\n');
            if l.starts_with("-----END ") {
                if kind == "CERTIFICATE" {
                    certs.push(body);
                } else if kind.ends_with("PRIVATE KEY") {
                    key = Some(body);
                }
            } else {
                cur = Some((kind, body));
            }
        }
    }
    (certs, key)
}

impl NodeStore {
    /// Builds the store from its URL (no connection yet).
    pub fn open(url: &url::Url, opts: &StoreOptions) -> Result<NodeStore, StoreError> {
        let bad = |why: &str| StoreError::BadLocation(format!("node:// URL: {why}"));
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let port = url.port().unwrap_or(ferry_api::node::NODE_PORT);
        let vault = url.path().trim_matches('/');
        if vault.is_empty() || vault.contains('/') {
            return Err(bad(
                "the path must be one vault name (node://host:9876/vault)",
            ));
        }
        let mut name = None;
        let mut identity = opts
            .secrets
            .client_identity
            .clone()
            .or_else(|| std::env::var_os("FERRY_NODE_IDENTITY").map(std::path::PathBuf::from));
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "node" => name = Some(ferry_api::agent_server_name(&v)),
                "name" => name = Some(v.to_string()),
                "identity" => identity = Some(v.to_string().into()),
                _ => {}
            }
        }
        let name = name
            .ok_or_else(|| bad("say which node: ?node=ID (its enrollment id) or ?name=DNSNAME"))?;
        let identity = identity.ok_or_else(|| {
            bad("no client identity: ?identity=FILE or FERRY_NODE_IDENTITY (certificate, key and CA in one PEM file)")
        })?;
        let location = format!("node://{host}:{port}/{vault}");
        let auth = |detail: String| StoreError::Auth {
            location: location.clone(),
            detail,
        };
        let text = std::fs::read_to_string(&identity)
            .map_err(|e| auth(format!("identity {}: {e}", identity.display())))?;
        let (certs, key) = split_bundle(&text);
        let key =
            key.ok_or_else(|| auth(format!("{} holds no private key", identity.display())))?;
        let Some((leaf, cas)) = certs.split_first().filter(|(_, cas)| !cas.is_empty()) else {
            return Err(auth(format!(
                "{} must hold this client's certificate, then the management CA",
                identity.display()
            )));
        };
        let id = ferry_tls::trust::Identity::from_pem(leaf, &key)
            .map_err(|e| auth(format!("identity: {e}")))?;
        let cfg = ferry_tls::trust::client_config(
            ferry_tls::trust::ServerTrust::Ca {
                ca_pem: cas.concat(),
                name,
            },
            Some(id),
        )
        .map_err(|e| auth(e.to_string()))?;
        let client = ferry_tls::http_client(cfg).map_err(|e| auth(e.to_string()))?;
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(NodeStore {
            base: format!("https://{addr}/v1/vaults/{vault}"),
            location,
            client,
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        // A poisoned lock only means another task panicked while holding the map.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request and maps its failure.
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StoreError> {
        let resp = req.send().await.map_err(|e| StoreError::Transient {
            op,
            key: key.to_string(),
            detail: error_chain(&e),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<ferry_api::v1::ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        let detail = format!("{} ({status})", detail.trim());
        Err(match status.as_u16() {
            404 => StoreError::NotFound(key.to_string()),
            507 => StoreError::NoSpace {
                key: key.to_string(),
                error: std::io::Error::other(detail),
            },
            403 => StoreError::PermissionDenied {
                key: key.to_string(),
                error: std::io::Error::new(std::io::ErrorKind::PermissionDenied, detail),
            },
            408 | 429 | 500..=599 => StoreError::Transient {
                op,
                key: key.to_string(),
                detail,
            },
            _ => StoreError::Remote {
                op,
                key: key.to_string(),
                detail,
            },
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        op: &'static str,
        key: &str,
        resp: reqwest::Response,
    ) -> Result<T, StoreError> {
        let b = resp.bytes().await.map_err(|e| StoreError::Transient {
            op,
            key: key.to_string(),
            detail: error_chain(&e),
        })?;
        serde_json::from_slice(&b).map_err(|e| StoreError::Remote {
            op,
            key: key.to_string(),
            detail: format!("unexpected answer: {e}"),
        })
    }

    fn refused(op: &'static str, key: &str, why: &str) -> StoreError {
        StoreError::Remote {
            op,
            key: key.to_string(),
            detail: why.to_string(),
        }
    }

    async fn put_chunk(&self, key: &str, hex: &str, data: Bytes) -> Result<bool, StoreError> {
        let resp = self
            .send(
                "put chunk",
                key,
                self.client
                    .put(format!("{}/chunks/{hex}", self.base))
                    .body(data),
            )
            .await?;
        Ok(Self::json::<PutResponse>("put chunk", key, resp)
            .await?
            .created)
    }

    async fn commit(&self, key: &str, id: &str, manifest: Bytes) -> Result<bool, StoreError> {
        let prefix = format!("points/{id}/");
        let indexes: Vec<(String, Bytes)> = self
            .pending()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut objs: Vec<(String, &[u8])> = indexes
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref()))
            .collect();
        objs.push((key.to_string(), manifest.as_ref()));
        let body =
            ferry_api::node::join_commit(&objs).map_err(|e| Self::refused("commit", key, &e))?;
        let resp = self
            .send(
                "commit",
                key,
                self.client
                    .post(format!("{}/points/{id}/commit", self.base))
                    .body(body),
            )
            .await?;
        let created = Self::json::<PutResponse>("commit", key, resp)
            .await?
            .created;
        self.pending().retain(|k, _| !k.starts_with(&prefix));
        Ok(created)
    }

    async fn put_lock(
        &self,
        key: &str,
        name: &str,
        data: Bytes,
        new: bool,
    ) -> Result<bool, StoreError> {
        let url = format!(
            "{}/locks/{name}{}",
            self.base,
            if new { "?new=1" } else { "" }
        );
        let resp = self
            .send("put lock", key, self.client.put(url).body(data))
            .await?;
        Ok(Self::json::<PutResponse>("put lock", key, resp)
            .await?
            .created)
    }

    async fn write(&self, key: &str, data: Bytes, new: bool) -> Result<bool, StoreError> {
        crate::validate_key(key)?;
        match classify(key) {
            Class::Chunk(hex) => self.put_chunk(key, hex, data).await,
            Class::Index(_) => {
                self.pending().insert(key.to_string(), data);
                Ok(true)
            }
            Class::Manifest(id) => self.commit(key, id, data).await,
            Class::Lock(name) => self.put_lock(key, name, data, new).await,
            // The node created the vault's repository: `ferry repo init` finds it there.
            Class::Config if new => Ok(false),
            Class::Config | Class::Other => Err(Self::refused(
                "put",
                key,
                "the storage node does not take this object",
            )),
        }
    }

    fn object_url(&self, key: &str) -> String {
        match classify(key) {
            Class::Chunk(hex) => format!("{}/chunks/{hex}", self.base),
            _ => format!("{}/objects/{key}", self.base),
        }
    }

    async fn missing_chunks(&self, digests: Vec<String>) -> Result<Vec<String>, StoreError> {
        let first = digests.first().cloned().unwrap_or_default();
        let body = serde_json::to_vec(&MissingRequest { digests })
            .map_err(|e| Self::refused("missing", &first, &e.to_string()))?;
        let resp = self
            .send(
                "missing",
                &first,
                self.client
                    .post(format!("{}/chunks/missing", self.base))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
            .await?;
        Ok(Self::json::<MissingResponse>("missing", &first, resp)
            .await?
            .missing)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Backend for NodeStore {}

#[async_trait]
impl Store for NodeStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.write(key, data, false).await.map(|_| ())
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.write(key, data, true).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        crate::validate_key(key)?;
        if let Some(b) = self.pending().get(key) {
            return Ok(b.clone());
        }
        let resp = self
            .send("get", key, self.client.get(self.object_url(key)))
            .await?;
        resp.bytes().await.map_err(|e| StoreError::Transient {
            op: "get",
            key: key.to_string(),
            detail: error_chain(&e),
        })
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        crate::validate_key(key)?;
        if self.pending().contains_key(key) {
            return Ok(true);
        }
        match self
            .send("exists", key, self.client.head(self.object_url(key)))
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let resp = self
            .send(
                "list",
                prefix,
                self.client.get(format!(
                    "{}/objects?prefix={}",
                    self.base,
                    url::form_urlencoded::byte_serialize(prefix.as_bytes()).collect::<String>()
                )),
            )
            .await?;
        let entries: Vec<ObjectEntry> = Self::json("list", prefix, resp).await?;
        Ok(entries
            .into_iter()
            .map(|e| ObjectInfo {
                key: e.key,
                size: e.size,
                modified: e.modified,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        crate::validate_key(key)?;
        let url = match classify(key) {
            Class::Lock(name) => format!("{}/locks/{name}", self.base),
            Class::Manifest(id) | Class::Index(id) => {
                let prefix = format!("points/{id}/");
                self.pending().retain(|k, _| !k.starts_with(&prefix));
                format!("{}/points/{id}", self.base)
            }
            Class::Chunk(_) => {
                return Err(Self::refused(
                    "delete",
                    key,
                    "chunks are removed by the storage node's GC (run it on the node)",
                ))
            }
            Class::Config | Class::Other => {
                return Err(Self::refused(
                    "delete",
                    key,
                    "the storage node does not delete this object",
                ))
            }
        };
        match self.send("delete", key, self.client.delete(url)).await {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn missing(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        let mut by_digest: HashMap<String, usize> = HashMap::new();
        let mut absent = vec![false; keys.len()];
        for (i, k) in keys.iter().enumerate() {
            match classify(k) {
                Class::Chunk(hex) => {
                    by_digest.insert(hex.to_ascii_lowercase(), i);
                }
                _ => absent[i] = !self.exists(k).await?,
            }
        }
        let digests: Vec<String> = by_digest.keys().cloned().collect();
        for batch in digests.chunks(BATCH) {
            for d in self.missing_chunks(batch.to_vec()).await? {
                if let Some(i) = by_digest.get(&d) {
                    absent[*i] = true;
                }
            }
        }
        Ok(keys
            .iter()
            .zip(absent)
            .filter(|(_, a)| *a)
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn batch_hint(&self) -> usize {
        BATCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified() {
        let hex = "ab".repeat(32);
        assert!(matches!(classify(&format!("chunks/ab/{hex}")), Class::Chunk(h) if h == hex));
        assert!(matches!(classify("chunks/ab/xyz"), Class::Other));
        assert!(matches!(
            classify("points/p1/manifest"),
            Class::Manifest("p1")
        ));
        assert!(matches!(
            classify("points/p1/disk-0.index"),
            Class::Index("p1")
        ));
        assert!(matches!(classify("locks/l"), Class::Lock("l")));
        assert!(matches!(classify("config"), Class::Config));
        assert!(matches!(classify("ferry-probe-1"), Class::Other));
    }

    #[test]
    fn urls_need_a_node_name_and_an_identity() {
        let o = StoreOptions::default();
        let u = |s: &str| url::Url::parse(s).unwrap();
        let e = NodeStore::open(&u("node://h/v?identity=/nonexistent"), &o).unwrap_err();
        assert!(e.to_string().contains("?node=ID"), "{e}");
        let e = NodeStore::open(&u("node://h/a/b?node=x"), &o).unwrap_err();
        assert!(e.to_string().contains("one vault"), "{e}");
        let e = NodeStore::open(&u("node://h/v?node=x&identity=/nonexistent"), &o).unwrap_err();
        assert!(matches!(e, StoreError::Auth { .. }), "{e}");
    }

    #[test]
    fn bundles_split() {
        let text = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                    -----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n";
        let (c, k) = split_bundle(text);
        assert_eq!(c.len(), 2);
        assert!(c[1].contains("CCC"));
        assert!(k.unwrap().contains("BBB"));
    }
}
