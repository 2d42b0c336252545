//! Debug hook `POST /v1/debug/storage-check` (only with `ferry.debug=1`): proves a storage
//! location end to end from inside the appliance, where SMB and NFS are kernel mounts.
//!
//! Body: `{"url": "smb://user@host:port/share/dir", "password": "…", "size_mib": 24}`
//! (`password` optional, `size_mib` default 16). The handler opens the store (mounting the
//! share), runs the capability probe, opens or creates a repository, backs up a generated
//! disk image with ferry-archive, verifies the repository, restores the restore point and
//! compares SHA-256, then drops the store (which unmounts it). The answer is JSON:
//! `{"ok": true, "location", "point", "source_sha256", "restored_sha256", "new_chunks",
//! "verify_ok", "mount_entries", "mounts_after"}` or `{"ok": false, "stage", "error"}` with
//! HTTP 502. The password never reaches a log line or the answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use ferry_archive::restore::Target;
use ferry_archive::{BackupOptions, DiskInput, FileSource, Progress, Repository};
use ferry_storage::{Store, StoreOptions};

/// Where the generated disk and the restored copy live (tmpfs in the appliance).
const WORK_DIR: &str = "/run/ferry/storage-check";

#[derive(Deserialize)]
pub struct Request {
    url: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    size_mib: Option<u64>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("size_mib", &self.size_mib)
            .finish()
    }
}

/// A failed step: which one, and the error chain.
struct Failed {
    stage: &'static str,
    error: anyhow::Error,
}

fn at<T>(stage: &'static str, r: anyhow::Result<T>) -> Result<T, Failed> {
    r.map_err(|error| Failed { stage, error })
}

pub async fn handler(Json(req): Json<Request>) -> impl IntoResponse {
    let size = req.size_mib.unwrap_or(16).clamp(1, 256) << 20;
    tracing::info!("debug: storage check of {} ({} MiB)", req.url, size >> 20);
    let work = PathBuf::from(WORK_DIR).join(format!("{:016x}", rand_u64()));
    // The archive's restore future is not Send (it may hold a stdout lock for `-` targets),
    // so the check runs on its own thread with a current-thread runtime.
    let w = work.clone();
    let res = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start a runtime for the check");
        match rt {
            Ok(rt) => rt.block_on(run(&req, size, &w)),
            Err(error) => Err(Failed {
                stage: "prepare",
                error,
            }),
        }
    })
    .await
    .unwrap_or_else(|e| {
        Err(Failed {
            stage: "prepare",
            error: anyhow::anyhow!("check task failed: {e}"),
        })
    });
    let _ = std::fs::remove_dir_all(&work);
    match res {
        Ok(v) => {
            tracing::info!("debug: storage check passed");
            (StatusCode::OK, Json(v))
        }
        Err(f) => {
            let error = format!("{:#}", f.error);
            tracing::warn!("debug: storage check failed at {}: {error}", f.stage);
            (
                StatusCode::BAD_GATEWAY,
                Json(json!({ "ok": false, "stage": f.stage, "error": error })),
            )
        }
    }
}

fn rand_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    // Only names and the generated data depend on it: the clock is a fine fallback.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

async fn run(req: &Request, size: u64, work: &Path) -> Result<Value, Failed> {
    at(
        "prepare",
        std::fs::create_dir_all(work).with_context(|| format!("create {}", work.display())),
    )?;
    let src = work.join("source.raw");
    let source_sha = at("prepare", generate(&src, size, rand_u64()))?;

    let mut opts = StoreOptions::default();
    opts.secrets.password = req.password.clone();
    let url = req.url.clone();
    let store = at(
        "mount",
        tokio::task::spawn_blocking(move || ferry_storage::open_store_with(&url, opts))
            .await
            .context("open task")
            .and_then(|r| r.context("open the store")),
    )?;
    let location = store.location();
    let result = with_store(store.clone(), &src, work, &source_sha).await;
    // Dropping the last reference unmounts; do it off the async threads.
    let drop_res = tokio::task::spawn_blocking(move || drop(store)).await;
    let mut v = result?;
    at("unmount", drop_res.context("unmount task"))?;
    let after = mount_entries();
    if let Some(o) = v.as_object_mut() {
        o.insert("location".into(), json!(location));
        o.insert("source_sha256".into(), json!(source_sha));
        o.insert("mounts_after".into(), json!(after));
    }
    Ok(v)
}

async fn with_store(
    store: Arc<dyn Store>,
    src: &Path,
    work: &Path,
    source_sha: &str,
) -> Result<Value, Failed> {
    at("probe", store.check().await.context("capability probe"))?;
    let mounted = mount_entries();
    let exists = at(
        "open",
        store
            .exists("config")
            .await
            .context("look for a repository"),
    )?;
    let repo = if exists {
        at(
            "open",
            Repository::open(store.clone())
                .await
                .context("open the repository"),
        )?
    } else {
        at(
            "init",
            Repository::init(store.clone(), 1 << 20, 3)
                .await
                .context("create the repository"),
        )?
    };
    let input = DiskInput {
        name: "disk0".into(),
        source: Arc::new(at(
            "backup",
            FileSource::open(src).context("open the generated disk"),
        )?),
        changed: None,
        change_id: None,
        meta: Default::default(),
    };
    let progress = Arc::new(Progress::default());
    let m = at(
        "backup",
        ferry_archive::backup(
            &repo,
            vec![input],
            &BackupOptions::new("storage-check"),
            progress.clone(),
        )
        .await
        .context("back up"),
    )?;
    let report = at(
        "verify",
        ferry_archive::verify::verify(&repo, std::slice::from_ref(&m.id), 4, progress.clone())
            .await
            .context("verify"),
    )?;
    // The appliance's tmpfs is small: the source is hashed already, so make room.
    let _ = std::fs::remove_file(src);
    let out = work.join("restored.raw");
    at(
        "restore",
        ferry_archive::restore::restore(&repo, &m, 0, &Target::File(out.clone()), 4, progress)
            .await
            .context("restore"),
    )?;
    let restored_sha = at("restore", sha256_file(&out))?;
    if restored_sha != source_sha {
        return Err(Failed {
            stage: "compare",
            error: anyhow::anyhow!("restored sha256 {restored_sha} != source {source_sha}"),
        });
    }
    let new_chunks: u64 = m.disks.iter().map(|d| d.stats.new_chunks).sum();
    Ok(json!({
        "ok": true,
        "point": m.id,
        "restored_sha256": restored_sha,
        "new_chunks": new_chunks,
        "verify_ok": report.ok(),
        "verify_chunks": report.chunks,
        "mount_entries": mounted,
    }))
}

/// `/proc/mounts` lines of network filesystems (so the test can check that the password is
/// not shown there, and that nothing stays mounted).
fn mount_entries() -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let fs = l.split_whitespace().nth(2).unwrap_or("");
            matches!(fs, "cifs" | "smb3" | "nfs" | "nfs4")
        })
        .map(str::to_string)
        .collect()
}

/// Writes a disk image of `size` bytes that has random, zero and repeated 64 KiB blocks,
/// and returns its SHA-256.
fn generate(path: &Path, size: u64, seed: u64) -> anyhow::Result<String> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    let mut h = Sha256::new();
    let mut x = seed | 1;
    let mut block = vec![0u8; 64 << 10];
    for i in 0..size.div_ceil(64 << 10) {
        match i % 7 {
            3 => block.fill(0),
            5 => block.fill((i % 251) as u8),
            _ => {
                for w in block.chunks_exact_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
            }
        }
        let n = (size - i * (64 << 10)).min(64 << 10) as usize;
        f.write_all(&block[..n])
            .context("write the generated disk")?;
        h.update(&block[..n]);
    }
    f.flush().context("write the generated disk")?;
    Ok(hex::encode(h.finalize()))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).context("read the restored disk")?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
