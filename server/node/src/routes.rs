//! The HTTPS API of the node (table and wire types in `ferry_api::node`): authorization by
//! grant, body limits, and the mapping of [`NodeError`] to status codes.
//!
//! Order of checks in every handler that takes a body: the caller's grant (403), the
//! declared length against the route's limit (413) and, for commits, the vault's room (507),
//! then admission through the per-grantee [`Gates`] (429), and only then is the body read,
//! never more than the limit. Every key, list prefix, lock name, point id and digest in a
//! path or query is checked before it reaches the store (`ferry_storage::validate_key` and
//! `validate_prefix`, the one rule for object names).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use ferry_api::node::{
    CatalogEntry, JobReport, MissingRequest, MissingResponse, ObjectEntry, PruneDecision,
    PruneRequest, PutResponse, VaultInfo, MAX_CHUNK_BODY, MAX_LOCK_BODY, MAX_MISSING_BATCH,
};
use ferry_api::v1::ApiError;
use ferry_archive::format::{self, Kind};
use ferry_archive::lock::{LockInfo, LockKind};
use ferry_archive::repo::chunk_key;
use ferry_archive::{ArchiveError, Manifest};
use ferry_storage::StoreError;
use ferry_tls::revocation::{RevocationError, RevocationState, SignedRevocations};
use ferry_tls::serve::Peer;
use serde::Deserialize;

use crate::limits::{Busy, Gates};
use crate::vault::locks::LockError;
use crate::{jobs, Access, Node, NodeError, Vault};

/// An error answer.
#[derive(Debug)]
pub struct Fail(pub StatusCode, pub String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<NodeError> for Fail {
    fn from(e: NodeError) -> Self {
        let code = match &e {
            NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            NodeError::Poisoned(_) => StatusCode::UNPROCESSABLE_ENTITY,
            NodeError::MissingChunks { .. } => StatusCode::CONFLICT,
            NodeError::Quota { .. } => StatusCode::INSUFFICIENT_STORAGE,
            NodeError::Archive(ArchiveError::Locked(_)) => StatusCode::LOCKED,
            NodeError::Archive(ArchiveError::NotFound(_))
            | NodeError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
            NodeError::Store(StoreError::InvalidKey(_)) => StatusCode::BAD_REQUEST,
            NodeError::Store(StoreError::NoSpace { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code.is_server_error() {
            tracing::warn!("{e}");
        }
        Fail(code, e.to_string())
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        NodeError::from(e).into()
    }
}

impl From<ArchiveError> for Fail {
    fn from(e: ArchiveError) -> Self {
        NodeError::from(e).into()
    }
}

type R<T> = Result<Json<T>, Fail>;

fn bad(msg: impl Into<String>) -> Fail {
    Fail(StatusCode::BAD_REQUEST, msg.into())
}

fn forbidden(msg: impl Into<String>) -> Fail {
    Fail(StatusCode::FORBIDDEN, msg.into())
}

impl From<Busy> for Fail {
    fn from(e: Busy) -> Self {
        Fail(StatusCode::TOO_MANY_REQUESTS, e.to_string())
    }
}

fn too_large(len: u64, limit: usize) -> Fail {
    Fail(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is {len} bytes; the limit here is {limit}"),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads a body of at most `limit` bytes. Called only once the caller is authorized and
/// admitted: a declared length over the limit is refused before a byte is read, an
/// undeclared one when the limit is crossed.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Fail> {
    if let Some(n) = content_length(headers) {
        if n > limit as u64 {
            return Err(too_large(n, limit));
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.to_string().contains("length limit exceeded") {
                return Fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over the limit here ({limit} bytes)"),
                );
            }
            src = s.source();
        }
        bad(format!("reading the request body: {e}"))
    })
}

/// Checks a list prefix: the same rule as keys (400 otherwise).
fn check_prefix(p: &str) -> Result<(), Fail> {
    ferry_storage::validate_prefix(p).map_err(|e| bad(e.to_string()))
}

/// The management server's identity (`mgmt.ferry.internal`): it may read the catalog of
/// every vault (`GET /v1/catalog`) and nothing else unless `node.toml` grants it more.
pub const MGMT_IDENTITY: &str = "mgmt";

/// The caller's identity: its certificate's DNS name without `.ferry.internal`.
pub fn identity(peer: &Peer) -> Result<String, Fail> {
    peer.names
        .iter()
        .find_map(|n| n.strip_suffix(".ferry.internal"))
        .map(str::to_string)
        .ok_or_else(|| forbidden("the client certificate names no Ferry identity"))
}

struct Ctx {
    who: String,
    vault: Arc<Vault>,
    access: Access,
}

impl Ctx {
    fn admin(&self) -> bool {
        self.access == Access::Admin
    }

    fn may_read(&self, m: &Manifest) -> bool {
        self.admin() || Vault::owner(m) == self.who
    }

    fn need_admin(&self) -> Result<(), Fail> {
        if self.admin() {
            Ok(())
        } else {
            Err(forbidden(format!(
                "{} has no admin grant on vault {}",
                self.who, self.vault.name
            )))
        }
    }
}

fn ctx(node: &Node, peer: &Peer, vault: &str) -> Result<Ctx, Fail> {
    let who = identity(peer)?;
    // The config in force now (a reload swaps it whole).
    let live = node.live();
    let access = live.config.access(&who, vault);
    let v = live.vaults.get(vault);
    match (v, access) {
        (Some(v), a) if a != Access::None => Ok(Ctx {
            who,
            vault: v.clone(),
            access: a,
        }),
        _ => {
            tracing::info!("refused {who} on vault {vault:?}: no grant");
            Err(forbidden(format!("{who} has no grant on vault {vault:?}")))
        }
    }
}

/// Refuses every client certificate on the management CA's revocation list, before any
/// route runs.
async fn gate(State(n): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if let Some(peer) = req.extensions().get::<Peer>() {
        if let Some(fp) = &peer.cert_sha256 {
            if n.revoked.is_revoked(fp) {
                tracing::warn!(
                    "refused a revoked certificate ({}, sha256 {fp}) from {}",
                    peer.names.join(","),
                    peer.addr
                );
                return forbidden(
                    "this client certificate is revoked (on the management server's revocation list)",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

/// The routes. Handlers read their bodies themselves ([`read_body`]), after authorization.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/vaults", get(vaults))
        .route("/v1/catalog", get(catalog_all))
        .route("/v1/revocations", get(revocations_get).put(revocations_put))
        .route("/v1/vaults/{v}/chunks/missing", post(missing))
        .route(
            "/v1/vaults/{v}/chunks/{digest}",
            put(chunk_put).get(chunk_get).head(chunk_head),
        )
        .route("/v1/vaults/{v}/points/{id}/commit", post(commit))
        .route("/v1/vaults/{v}/points/{id}", delete(point_delete))
        .route("/v1/vaults/{v}/catalog", get(catalog))
        .route("/v1/vaults/{v}/catalog/{id}", get(catalog_one))
        .route("/v1/vaults/{v}/prune", post(prune))
        .route("/v1/vaults/{v}/jobs/{job}", post(job))
        .route("/v1/vaults/{v}/objects", get(objects_list))
        .route(
            "/v1/vaults/{v}/objects/{*key}",
            get(object_get).head(object_head),
        )
        .route(
            "/v1/vaults/{v}/locks/{name}",
            put(lock_put).delete(lock_delete),
        )
        .layer(Extension(Arc::new(Gates::default())))
        .layer(middleware::from_fn_with_state(node.clone(), gate))
        .with_state(node)
}

async fn vaults(State(n): State<Arc<Node>>, Extension(peer): Extension<Peer>) -> R<Vec<VaultInfo>> {
    let who = identity(&peer)?;
    let live = n.live();
    Ok(Json(
        live.vaults
            .values()
            .filter_map(|v| {
                let a = live.config.access(&who, &v.name);
                (a != Access::None).then(|| VaultInfo {
                    name: v.name.clone(),
                    quota: v.quota(),
                    used: v.used(),
                    admin: a == Access::Admin,
                })
            })
            .collect(),
    ))
}

async fn missing(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> R<MissingResponse> {
    let c = ctx(&n, &peer, &v)?;
    let b = read_body(&headers, body, ferry_api::MAX_BODY).await?;
    let req: MissingRequest = ferry_api::parse_body(&b).map_err(|e| bad(e.to_string()))?;
    if req.digests.len() > MAX_MISSING_BATCH {
        return Err(bad(format!(
            "{} digests in one request; the limit is {MAX_MISSING_BATCH}",
            req.digests.len()
        )));
    }
    Ok(Json(MissingResponse {
        missing: c.vault.missing(&req.digests).await?,
    }))
}

async fn chunk_put(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Extension(gates): Extension<Arc<Gates>>,
    Path((v, digest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> R<PutResponse> {
    let c = ctx(&n, &peer, &v)?;
    digest_key(&digest)?;
    if let Some(len) = content_length(&headers).filter(|l| *l > MAX_CHUNK_BODY as u64) {
        return Err(too_large(len, MAX_CHUNK_BODY));
    }
    let _permit = gates.uploads.enter(&c.who, 1).await?;
    let b = read_body(&headers, body, MAX_CHUNK_BODY).await?;
    match c.vault.put_chunk(&digest, b).await {
        Ok(created) => Ok(Json(PutResponse { created })),
        Err(e) => {
            if matches!(e, NodeError::Poisoned(_)) {
                tracing::warn!("vault {v}: refused chunk {digest} from {}: {e}", c.who);
            }
            Err(e.into())
        }
    }
}

fn digest_key(digest: &str) -> Result<String, Fail> {
    format::parse_digest(digest)
        .map(|d| chunk_key(&d))
        .ok_or_else(|| bad(format!("{digest:?} is not a SHA-256 digest")))
}

async fn chunk_get(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, digest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let c = ctx(&n, &peer, &v)?;
    let key = digest_key(&digest)?;
    let data = c.vault.store().get(&key).await?;
    Ok(ranged(data, &headers))
}

async fn chunk_head(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, digest)): Path<(String, String)>,
) -> Result<StatusCode, Fail> {
    let c = ctx(&n, &peer, &v)?;
    let key = digest_key(&digest)?;
    if c.vault.store().exists(&key).await? {
        Ok(StatusCode::OK)
    } else {
        Ok(StatusCode::NOT_FOUND)
    }
}

/// The whole object, or the part a single `Range: bytes=A-B` / `bytes=A-` asks for.
fn ranged(data: Bytes, headers: &HeaderMap) -> Response {
    let len = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.strip_prefix("bytes="))
        .and_then(|s| s.split_once('-'))
        .and_then(|(a, b)| {
            let a: u64 = a.trim().parse().ok()?;
            let b: u64 = if b.trim().is_empty() {
                len.checked_sub(1)?
            } else {
                b.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?)
            };
            (a <= b).then_some((a, b))
        });
    match range {
        Some((a, b)) => {
            // a <= b < len, which fits in usize since data is in memory.
            let part = data.slice(a as usize..=b as usize);
            (
                StatusCode::PARTIAL_CONTENT,
                [(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"))],
                Body::from(part),
            )
                .into_response()
        }
        None if headers.contains_key(header::RANGE) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response(),
        None => Body::from(data).into_response(),
    }
}

async fn commit(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Extension(gates): Extension<Arc<Gates>>,
    Path((v, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> R<PutResponse> {
    let c = ctx(&n, &peer, &v)?;
    ferry_archive::repo::validate_point_id(&id).map_err(|_| bad(format!("bad point id {id:?}")))?;
    // The length first: the cap of this vault, and what its quota still allows (the indexes
    // and manifest are stored; header and owner stamp differ by less than MAX_BODY).
    let cap = c.vault.commit_cap();
    let len = content_length(&headers).ok_or_else(|| {
        Fail(
            StatusCode::LENGTH_REQUIRED,
            "a commit must declare its Content-Length".into(),
        )
    })?;
    if len > cap as u64 {
        return Err(too_large(len, cap));
    }
    let room = c.vault.room();
    if len > room.saturating_add(ferry_api::MAX_BODY as u64) {
        return Err(NodeError::Quota {
            vault: v.clone(),
            used: c.vault.used(),
            quota: c.vault.quota(),
            need: len,
        }
        .into());
    }
    let _permit = gates
        .commits
        .enter(&c.who, crate::limits::commit_weight(len))
        .await?;
    let b = read_body(&headers, body, cap).await?;
    let objects = ferry_api::node::split_commit(&b).map_err(bad)?;
    let created = c.vault.commit(&id, &c.who, objects).await?;
    if created {
        tracing::info!("vault {v}: {} committed restore point {id}", c.who);
    }
    Ok(Json(PutResponse { created }))
}

async fn readable_point(c: &Ctx, id: &str) -> Result<Manifest, Fail> {
    let m = c.vault.repo().load_manifest(id).await?;
    if c.may_read(&m) {
        Ok(m)
    } else {
        // Same answer as a missing point: others' point ids are not revealed.
        Err(Fail(
            StatusCode::NOT_FOUND,
            format!("not found: restore point {id}"),
        ))
    }
}

async fn point_delete(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, id)): Path<(String, String)>,
) -> Result<StatusCode, Fail> {
    let c = ctx(&n, &peer, &v)?;
    ferry_archive::repo::validate_point_id(&id).map_err(|_| bad(format!("bad point id {id:?}")))?;
    match readable_point(&c, &id).await {
        Ok(m) => {
            c.vault.delete_point(&m).await?;
            tracing::info!("vault {v}: {} deleted restore point {id}", c.who);
            Ok(StatusCode::NO_CONTENT)
        }
        // Idempotent: deleting a point that is gone succeeds.
        Err(Fail(StatusCode::NOT_FOUND, _)) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e),
    }
}

async fn catalog(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path(v): Path<String>,
) -> R<Vec<CatalogEntry>> {
    let c = ctx(&n, &peer, &v)?;
    let points = c.vault.points().await?;
    Ok(Json(
        points
            .iter()
            .filter(|m| c.may_read(m))
            .map(|m| c.vault.catalog_entry(m))
            .collect(),
    ))
}

async fn catalog_all(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
) -> R<Vec<CatalogEntry>> {
    let who = identity(&peer)?;
    // The management server's catalog view: read-only, every vault, every point. Only
    // the management CA issues certificates, and only to itself with this name.
    let live = n.live();
    if who == MGMT_IDENTITY {
        let mut out = Vec::new();
        for v in live.vaults.values() {
            out.extend(v.points().await?.iter().map(|m| v.catalog_entry(m)));
        }
        return Ok(Json(out));
    }
    let mut out = Vec::new();
    for name in live.vaults.keys() {
        if live.config.access(&who, name) == Access::None {
            continue;
        }
        // A reload between the two reads may have removed the vault or the grant.
        let Ok(c) = ctx(&n, &peer, name) else {
            continue;
        };
        for m in c.vault.points().await? {
            if c.may_read(&m) {
                out.push(c.vault.catalog_entry(&m));
            }
        }
    }
    Ok(Json(out))
}

async fn catalog_one(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, id)): Path<(String, String)>,
) -> R<CatalogEntry> {
    let c = ctx(&n, &peer, &v)?;
    let m = readable_point(&c, &id).await?;
    Ok(Json(c.vault.catalog_entry(&m)))
}

async fn prune(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> R<Vec<PruneDecision>> {
    let c = ctx(&n, &peer, &v)?;
    let b = read_body(&headers, body, ferry_api::MAX_BODY).await?;
    let req: PruneRequest = ferry_api::parse_body(&b).map_err(|e| bad(e.to_string()))?;
    let out = c.vault.prune(&req, |m| c.may_read(m)).await?;
    tracing::info!(
        "vault {v}: {} pruned {} restore point(s){}",
        c.who,
        out.iter().filter(|d| !d.keep).count(),
        if req.dry_run { " (dry run)" } else { "" }
    );
    Ok(Json(out))
}

async fn job(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, job)): Path<(String, String)>,
) -> R<JobReport> {
    let c = ctx(&n, &peer, &v)?;
    c.need_admin()?;
    let report = match job.as_str() {
        "verify" => jobs::verify(&c.vault).await,
        "gc" => jobs::gc(&c.vault).await,
        other => return Err(bad(format!("unknown job {other:?} (verify, gc)"))),
    };
    Ok(Json(report))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

async fn objects_list(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path(v): Path<String>,
    Query(q): Query<ListQuery>,
) -> R<Vec<ObjectEntry>> {
    let c = ctx(&n, &peer, &v)?;
    let p = q.prefix.as_str();
    check_prefix(p)?;
    let is_locks = p.starts_with("locks/") || p == "locks";
    let is_points = p.starts_with("points/") || p == "points";
    if !(c.admin() || is_locks || is_points) {
        return Err(forbidden(format!(
            "{} may list only locks/ and points/ of vault {v}",
            c.who
        )));
    }
    let objs = c.vault.store().list(p).await?;
    let mut owners: HashMap<String, bool> = HashMap::new();
    let mut out = Vec::with_capacity(objs.len());
    for o in objs {
        if !c.admin() && is_points {
            let Some(id) = o
                .key
                .strip_prefix("points/")
                .and_then(|r| r.split_once('/'))
                .map(|(id, _)| id.to_string())
            else {
                continue;
            };
            let ok = match owners.get(&id) {
                Some(ok) => *ok,
                None => {
                    let ok = match c.vault.repo().load_manifest(&id).await {
                        Ok(m) => c.may_read(&m),
                        Err(_) => false,
                    };
                    owners.insert(id, ok);
                    ok
                }
            };
            if !ok {
                continue;
            }
        }
        out.push(ObjectEntry {
            key: o.key,
            size: o.size,
            modified: o.modified,
        });
    }
    Ok(Json(out))
}

/// Checks that the caller may read `key`.
async fn may_read_key(c: &Ctx, key: &str) -> Result<(), Fail> {
    ferry_storage::validate_key(key).map_err(|e| bad(e.to_string()))?;
    if c.admin() || key == "config" || key.starts_with("chunks/") || key.starts_with("locks/") {
        return Ok(());
    }
    if let Some(id) = key
        .strip_prefix("points/")
        .and_then(|r| r.split_once('/'))
        .map(|(id, _)| id)
    {
        readable_point(c, id).await?;
        return Ok(());
    }
    Err(forbidden(format!("{} may not read {key}", c.who)))
}

async fn object_get(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let c = ctx(&n, &peer, &v)?;
    may_read_key(&c, &key).await?;
    let data = c.vault.store().get(&key).await?;
    Ok(ranged(data, &headers))
}

async fn object_head(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, key)): Path<(String, String)>,
) -> Result<StatusCode, Fail> {
    let c = ctx(&n, &peer, &v)?;
    match may_read_key(&c, &key).await {
        Ok(()) => {}
        Err(Fail(StatusCode::NOT_FOUND, _)) => return Ok(StatusCode::NOT_FOUND),
        Err(e) => return Err(e),
    }
    if c.vault.store().exists(&key).await? {
        Ok(StatusCode::OK)
    } else {
        Ok(StatusCode::NOT_FOUND)
    }
}

#[derive(Debug, Deserialize)]
struct LockQuery {
    #[serde(default)]
    new: Option<String>,
}

async fn lock_put(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, name)): Path<(String, String)>,
    Query(q): Query<LockQuery>,
    headers: HeaderMap,
    body: Body,
) -> R<PutResponse> {
    let c = ctx(&n, &peer, &v)?;
    let key = format!("locks/{name}");
    ferry_storage::validate_key(&key).map_err(|e| bad(e.to_string()))?;
    let b = read_body(&headers, body, MAX_LOCK_BODY).await?;
    // Only real lock records: the lock directory is not free storage.
    let info =
        format::decode_json::<LockInfo>(Kind::Lock, &b, &key).map_err(|e| bad(e.to_string()))?;
    // An exclusive lock stops every backup of the vault, and GC (the one user of exclusive
    // locks) is the node's: a grantee holding one could starve the other tenants forever.
    // 409, not 403: the archive reads 403 as a read-only store and would go on unlocked.
    if info.kind == LockKind::Exclusive && !c.admin() {
        tracing::warn!("vault {v}: refused an exclusive lock from {}", c.who);
        return Err(Fail(
            StatusCode::CONFLICT,
            format!(
                "only an admin of vault {v} may take an exclusive lock; {} may take shared \
                 locks (GC runs on the node: POST /v1/vaults/{v}/jobs/gc as an admin)",
                c.who
            ),
        ));
    }
    let created = c
        .vault
        .put_lock(&name, &c.who, c.admin(), b, q.new.as_deref() == Some("1"))
        .await
        .map_err(lock_fail)?;
    Ok(Json(PutResponse { created }))
}

/// A refused lock write is 409 Conflict (not 403: the archive reads 403 as a read-only
/// store and would go on without its lock).
fn lock_fail(e: LockError) -> Fail {
    match e {
        e @ LockError::Held { .. } => Fail(StatusCode::CONFLICT, e.to_string()),
        LockError::Store(e) => e.into(),
    }
}

async fn lock_delete(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path((v, name)): Path<(String, String)>,
) -> Result<StatusCode, Fail> {
    let c = ctx(&n, &peer, &v)?;
    let key = format!("locks/{name}");
    ferry_storage::validate_key(&key).map_err(|e| bad(e.to_string()))?;
    c.vault
        .delete_lock(&name, &c.who, c.admin())
        .await
        .map_err(lock_fail)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The revocation list in force (version, time, count).
async fn revocations_get(State(n): State<Arc<Node>>) -> Json<RevocationState> {
    Json(n.revoked.state())
}

/// A revocation list pushed by the management server (its own certificate only), installed
/// with the same checks as a fetched one: the management CA's signature, and a version not
/// older than the one held.
async fn revocations_put(
    State(n): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> R<RevocationState> {
    let who = identity(&peer)?;
    if who != MGMT_IDENTITY {
        tracing::warn!(
            "refused a revocation list pushed by {who} from {}",
            peer.addr
        );
        return Err(forbidden(
            "only the management server sends revocation lists",
        ));
    }
    let b = read_body(&headers, body, ferry_api::MAX_BODY).await?;
    let l: SignedRevocations = ferry_api::parse_body(&b).map_err(|e| bad(e.to_string()))?;
    match n.revoked.install(l) {
        Ok(s) => {
            tracing::info!(
                "revocation list version {} pushed by the management server",
                s.version
            );
            Ok(Json(s))
        }
        Err(e) => {
            tracing::warn!("revocation list pushed by the management server refused: {e}");
            let code = match e {
                RevocationError::Older { .. } => StatusCode::CONFLICT,
                RevocationError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                RevocationError::NoCa { .. } | RevocationError::Io(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            Err(Fail(code, e.to_string()))
        }
    }
}
