//! Repository locks, as objects in the store so that they work on every backend.
//!
//! Protocol: a process writes its own lock object under `locks/`, then lists all locks. If it
//! sees a conflicting live lock (an exclusive one, or any other lock when it wants exclusive),
//! it deletes its own and retries after a random backoff until its wait time runs out. Two
//! contenders may both back off, but they can never both proceed.
//!
//! Backups and prunes take **shared** locks (content-addressed chunks make concurrent writers
//! safe); GC takes an **exclusive** one, which is how GC never deletes a chunk that a running
//! backup has just written or decided to reuse.
//!
//! Locks are refreshed every [`REFRESH_SECS`]. A lock is stale when its process is gone (same
//! host, dead pid) or it has not been refreshed for [`STALE_SECS`]; stale locks are removed
//! with a warning that names their owner. A store may refuse that removal with
//! [`StoreError::Remote`] (the storage node does, for a lock it received a refresh of
//! recently): the lock is then taken as live.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_storage::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::format::{self, Kind};
use crate::{now_secs, ArchiveError};

/// How often a held lock is refreshed.
pub const REFRESH_SECS: u64 = 60;
/// A lock not refreshed for this long is stale.
pub const STALE_SECS: i64 = 600;

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Backups, prunes.
    Shared,
    /// GC.
    Exclusive,
}

/// The content of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// Shared or exclusive.
    pub kind: LockKind,
    /// What holds it ("backup", "gc", ...).
    pub purpose: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When taken.
    pub created: i64,
    /// Last refresh.
    pub refreshed: i64,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
        };
        write!(
            f,
            "{kind} lock for {} by pid {} on {}, taken {}s ago",
            self.purpose,
            self.pid,
            self.host,
            now_secs() - self.created
        )
    }
}

/// A held lock. Call [`RepoLock::release`] when done; dropping it only stops the refresher,
/// leaving a lock that becomes stale.
#[derive(Debug)]
pub struct RepoLock {
    store: Arc<dyn Store>,
    key: String,
    refresher: tokio::task::JoinHandle<()>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Why a lock is stale, if it is.
pub fn staleness(info: &LockInfo, now: i64) -> Option<String> {
    if info.host == hostname() && info.pid != std::process::id() && !pid_alive(info.pid) {
        return Some(format!("process {} no longer exists", info.pid));
    }
    if now - info.refreshed > STALE_SECS {
        return Some(format!("not refreshed for {}s", now - info.refreshed));
    }
    None
}

async fn read_lock(store: &dyn Store, key: &str) -> Result<Option<LockInfo>, ArchiveError> {
    match store.get(key).await {
        Ok(d) => match format::decode_json::<LockInfo>(Kind::Lock, &d, key) {
            Ok(i) => Ok(Some(i)),
            // A damaged lock object is treated like a stale one by the caller.
            Err(_) => Ok(None),
        },
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Lists the live locks other than `own`, removing stale and damaged ones.
pub async fn live_locks(
    store: &dyn Store,
    own: Option<&str>,
) -> Result<Vec<(String, LockInfo)>, ArchiveError> {
    let mut out = Vec::new();
    let now = now_secs();
    for obj in store.list("locks/").await? {
        if Some(obj.key.as_str()) == own {
            continue;
        }
        match read_lock(store, &obj.key).await? {
            Some(info) => {
                if let Some(why) = staleness(&info, now) {
                    tracing::warn!("removing stale {info}: {why}");
                    match store.delete(&obj.key).await {
                        Ok(()) => {}
                        // A store that judges locks itself (a storage node, which sees every
                        // refresh) refuses to remove a lock it knows is live: it is.
                        Err(e @ StoreError::Remote { .. }) => {
                            tracing::warn!("{e}: keeping it as live");
                            out.push((obj.key, info));
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    out.push((obj.key, info));
                }
            }
            None => {
                // Unreadable: either just deleted, or damaged and older than a refresh period.
                let age = now - i64::try_from(obj.modified).unwrap_or(now);
                if age > STALE_SECS {
                    tracing::warn!("removing unreadable lock object {}", obj.key);
                    store.delete(&obj.key).await?;
                }
            }
        }
    }
    Ok(out)
}

impl RepoLock {
    /// Takes a lock, waiting up to `wait` for conflicting holders to finish.
    pub async fn acquire(
        store: Arc<dyn Store>,
        kind: LockKind,
        purpose: &str,
        wait: Duration,
    ) -> Result<RepoLock, ArchiveError> {
        let started = tokio::time::Instant::now();
        let mut logged = false;
        loop {
            let now = now_secs();
            let info = LockInfo {
                kind,
                purpose: purpose.to_string(),
                host: hostname(),
                pid: std::process::id(),
                created: now,
                refreshed: now,
            };
            let key = format!("locks/{now:012}-{:016x}", rand::random::<u64>());
            store
                .put(&key, Bytes::from(format::encode_json(Kind::Lock, &info)?))
                .await?;
            let others = live_locks(store.as_ref(), Some(&key)).await?;
            let conflict = others
                .iter()
                .find(|(_, o)| kind == LockKind::Exclusive || o.kind == LockKind::Exclusive);
            let Some((_, holder)) = conflict else {
                let refresher = tokio::spawn(refresh_loop(store.clone(), key.clone(), info));
                return Ok(RepoLock {
                    store,
                    key,
                    refresher,
                });
            };
            let holder = holder.to_string();
            store.delete(&key).await?;
            if started.elapsed() >= wait {
                return Err(ArchiveError::Locked(format!(
                    "{holder}. Wait for it to finish; if that process is gone, `ferry repo unlock` removes stale locks"
                )));
            }
            if !logged {
                tracing::info!("waiting for {holder}");
                logged = true;
            }
            let backoff = Duration::from_millis(200 + rand::random::<u64>() % 800);
            tokio::time::sleep(backoff.min(wait.saturating_sub(started.elapsed()))).await;
        }
    }

    /// Releases the lock.
    pub async fn release(self) -> Result<(), ArchiveError> {
        self.refresher.abort();
        self.store.delete(&self.key).await?;
        Ok(())
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn refresh_loop(store: Arc<dyn Store>, key: String, mut info: LockInfo) {
    loop {
        tokio::time::sleep(Duration::from_secs(REFRESH_SECS)).await;
        info.refreshed = now_secs();
        let Ok(data) = format::encode_json(Kind::Lock, &info) else {
            continue;
        };
        if let Err(e) = store.put(&key, Bytes::from(data)).await {
            tracing::warn!("could not refresh repository lock: {e}");
        }
    }
}

/// Removes locks: stale ones always, live ones too when `force` is set. Returns their
/// descriptions.
pub async fn unlock(store: &dyn Store, force: bool) -> Result<Vec<String>, ArchiveError> {
    let mut removed = Vec::new();
    let now = now_secs();
    for obj in store.list("locks/").await? {
        match read_lock(store, &obj.key).await? {
            Some(info) => {
                if let Some(why) = staleness(&info, now) {
                    store.delete(&obj.key).await?;
                    removed.push(format!("{info} (stale: {why})"));
                } else if force {
                    store.delete(&obj.key).await?;
                    removed.push(format!("{info} (forced)"));
                }
            }
            None => {
                store.delete(&obj.key).await?;
                removed.push(format!("unreadable lock object {}", obj.key));
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_storage::LocalStore;

    #[tokio::test]
    async fn shared_locks_coexist_and_exclusive_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        let a = RepoLock::acquire(store.clone(), LockKind::Shared, "a", Duration::ZERO)
            .await
            .unwrap();
        let b = RepoLock::acquire(store.clone(), LockKind::Shared, "b", Duration::ZERO)
            .await
            .unwrap();
        let err = RepoLock::acquire(store.clone(), LockKind::Exclusive, "gc", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("shared lock for"), "{err}");
        a.release().await.unwrap();
        b.release().await.unwrap();
        let x = RepoLock::acquire(store.clone(), LockKind::Exclusive, "gc", Duration::ZERO)
            .await
            .unwrap();
        assert!(RepoLock::acquire(
            store.clone(),
            LockKind::Shared,
            "c",
            Duration::from_millis(300)
        )
        .await
        .is_err());
        x.release().await.unwrap();
        assert!(store.list("locks/").await.unwrap().is_empty());
    }

    /// Writes `locks/dead`: a fresh lock of this host held by a pid that cannot exist
    /// (far above pid_max), so only the dead-process rule makes it stale.
    async fn put_dead_lock(store: &dyn Store, kind: LockKind, purpose: &str) {
        let info = LockInfo {
            kind,
            purpose: purpose.into(),
            host: hostname(),
            pid: 999_999_999,
            created: now_secs(),
            refreshed: now_secs(),
        };
        store
            .put(
                "locks/dead",
                Bytes::from(format::encode_json(Kind::Lock, &info).unwrap()),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn lock_of_dead_process_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        put_dead_lock(store.as_ref(), LockKind::Exclusive, "gc").await;
        let l = RepoLock::acquire(store.clone(), LockKind::Shared, "b", Duration::ZERO)
            .await
            .unwrap();
        assert!(!store.exists("locks/dead").await.unwrap());
        l.release().await.unwrap();
    }

    /// A store that refuses to delete one key, as a storage node does for a lock it knows
    /// is fresh.
    #[derive(Debug)]
    struct Refusing(LocalStore, &'static str);

    #[async_trait::async_trait]
    impl Store for Refusing {
        fn location(&self) -> String {
            self.0.location()
        }
        async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
            self.0.put(key, data).await
        }
        async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
            self.0.put_new(key, data).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.0.get(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StoreError> {
            self.0.exists(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ferry_storage::ObjectInfo>, StoreError> {
            self.0.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            if key == self.1 {
                return Err(StoreError::Remote {
                    op: "delete",
                    key: key.into(),
                    detail: "held by someone else (409 Conflict)".into(),
                });
            }
            self.0.delete(key).await
        }
        async fn sync(&self) -> Result<(), StoreError> {
            self.0.sync().await
        }
    }

    #[tokio::test]
    async fn a_stale_looking_lock_the_store_keeps_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(Refusing(
            LocalStore::new(dir.path().to_path_buf()),
            "locks/dead",
        ));
        put_dead_lock(store.as_ref(), LockKind::Shared, "backup").await;
        // Shared with shared: no conflict, and no error for the refused removal.
        let l = RepoLock::acquire(store.clone(), LockKind::Shared, "b", Duration::ZERO)
            .await
            .unwrap();
        l.release().await.unwrap();
        assert!(store.exists("locks/dead").await.unwrap());
        // Exclusive: it is a holder to wait for.
        let err = RepoLock::acquire(store.clone(), LockKind::Exclusive, "gc", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("pid 999999999"), "{err}");
    }
}
