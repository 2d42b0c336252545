//! The node's book of a vault's lock objects: who wrote each one, and when the node last
//! received a write of it, by the node's own clock.
//!
//! The archive's locks (`ferry_archive::lock`) are objects under `locks/`; the lock record
//! names a host and pid but no Ferry identity, and its `refreshed` time is the writer's
//! clock. The node sees every write, so it keeps its own facts beside the objects:
//!
//! - **owner**: the identity of the client certificate that wrote the lock (`agent-<id>`),
//!   or [`NODE_OWNER`] for the locks the node takes itself (commits, prunes, verify, GC);
//! - **received**: the node's clock at the last write it received.
//!
//! The book lives in memory and in `locks-<vault>.json` in the state directory (rewritten,
//! temp + rename, on every change), so owners survive a restart. Receive times from before
//! a restart are not trusted to mean anything about the outage: a lock the node has no
//! receive time for, or one received before the node started, counts from the node's start.
//! Node-owned entries of an earlier process are stale at once (that process is gone).
//!
//! Rules (enforced by [`LockBook::write`] and [`LockBook::remove`], for the API):
//! - the owner may always refresh (overwrite) and delete its lock;
//! - anyone else with a grant on the vault may do so only when the lock is **stale by the
//!   node's clock**: no write received for [`LockPolicy::stale_after`] (3 × the archive's
//!   `REFRESH_SECS`, 180 s). No clock-skew slack is needed: the node sees every refresh;
//! - an admin of the vault may always;
//! - a lock object the book does not know (written before the book existed) may be
//!   refreshed by any grantee, who becomes its owner (its real holder refreshes within a
//!   minute); deleting it follows the staleness rule, counted from the node's start.
//!
//! The node's own use of the vault goes through [`BookedStore`], which stamps the node's
//! lock writes, refuses the node's archive code the removal of a client lock that is fresh
//! by the book (the archive's own rule, a dead pid on the same host or 600 s by the
//! writer's clock, does not apply to other machines' locks), and, whenever `locks/` is
//! listed, first removes the locks that are stale by the node's clock. The archive's lock protocol lists `locks/` at every attempt, so the
//! node's GC, prune, verify and commits (and every client listing through the API) see a
//! lock of a dead backup disappear 180 s after its last refresh, instead of the archive's
//! own 600 s by the writer's clock. The node's own locks are refreshed by its own
//! refresher and go stale only after 3 × `REFRESH_SECS`, whatever the threshold for clients.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_archive::lock::REFRESH_SECS;
use ferry_storage::{ObjectInfo, Store, StoreError};
use serde::{Deserialize, Serialize};

/// The owner recorded for locks the node takes itself. Not a certificate name.
pub const NODE_OWNER: &str = "(node)";

/// Test knob: the staleness threshold of client locks in milliseconds (default 180 000).
/// Hidden: for tests that cannot wait three minutes.
pub const STALE_ENV: &str = "FERRY_NODE_LOCK_STALE_MS";

/// A lock not written for this long (by the node's clock) is stale: three missed refreshes.
pub const STALE_AFTER: Duration = Duration::from_secs(3 * REFRESH_SECS);

/// The node's clock, in milliseconds since the Unix epoch. Injectable for tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The clock and threshold the book judges staleness with.
#[derive(Debug, Clone)]
pub struct LockPolicy {
    /// The node's clock.
    pub clock: Arc<dyn Clock>,
    /// How long after the last received write a client lock is stale.
    pub stale_after: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            clock: Arc::new(SystemClock),
            stale_after: STALE_AFTER,
        }
    }
}

impl LockPolicy {
    /// The system clock, and [`STALE_AFTER`] unless [`STALE_ENV`] says otherwise.
    pub fn from_env() -> LockPolicy {
        let mut p = LockPolicy::default();
        if let Ok(v) = std::env::var(STALE_ENV) {
            match v.trim().parse::<u64>() {
                Ok(ms) => {
                    tracing::warn!("{STALE_ENV}={ms}: client locks are stale after {ms} ms");
                    p.stale_after = Duration::from_millis(ms);
                }
                Err(_) => tracing::warn!("{STALE_ENV}={v:?} is not a number of ms; ignored"),
            }
        }
        p
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What the book knows of one lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    /// The identity that wrote it, or [`NODE_OWNER`].
    owner: String,
    /// The node's clock at the last write received (ms since the epoch).
    received_ms: i64,
    /// For [`NODE_OWNER`]: the node process that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
}

/// A lock write or delete refused, or the store failing under it.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another identity holds the lock, and it is not stale.
    #[error(
        "lock {name} of vault {vault} is held by {owner} (last written {age_secs}s ago by the \
         node's clock; stale after {stale_secs}s without refresh): only its holder or an \
         admin of the vault may {op} it before then"
    )]
    Held {
        /// Vault.
        vault: String,
        /// Lock name (under `locks/`).
        name: String,
        /// Its owner.
        owner: String,
        /// What was refused ("replace", "delete").
        op: &'static str,
        /// Seconds since the node received its last write.
        age_secs: i64,
        /// The threshold, in seconds.
        stale_secs: u64,
    },
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who writes: a client through the API, or the node itself.
#[derive(Debug, Clone, Copy)]
pub enum Writer<'a> {
    /// A client identity, and whether it has admin access on the vault.
    Client {
        /// Identity (`agent-<id>`).
        who: &'a str,
        /// Admin of the vault.
        admin: bool,
    },
    /// The node process itself.
    Node,
}

impl Writer<'_> {
    fn owner(&self) -> &str {
        match self {
            Writer::Client { who, .. } => who,
            Writer::Node => NODE_OWNER,
        }
    }
}

/// The book of one vault's locks.
#[derive(Debug)]
pub struct LockBook {
    vault: String,
    file: PathBuf,
    policy: LockPolicy,
    started_ms: i64,
    /// Lock name (without `locks/`) to entry. Held across the store operation of every
    /// change, so that check and write are one step.
    entries: tokio::sync::Mutex<BTreeMap<String, Entry>>,
}

fn lock_key(name: &str) -> String {
    format!("locks/{name}")
}

impl LockBook {
    /// Opens the book of `vault`, kept in `file`.
    pub fn open(vault: &str, file: &Path, policy: LockPolicy) -> LockBook {
        let started_ms = policy.clock.now_ms();
        let mut entries: BTreeMap<String, Entry> = match std::fs::read(file) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: {e}; lock owners forgotten", file.display());
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!("{}: {e}; lock owners forgotten", file.display());
                BTreeMap::new()
            }
        };
        let me = std::process::id();
        let node_stale = ms(STALE_AFTER.max(policy.stale_after));
        for e in entries.values_mut() {
            if e.owner == NODE_OWNER && e.pid != Some(me) {
                // Taken by an earlier node process: nobody refreshes it any more.
                e.received_ms = started_ms.saturating_sub(node_stale).saturating_sub(1);
            } else {
                e.received_ms = e.received_ms.max(started_ms);
            }
        }
        LockBook {
            vault: vault.to_string(),
            file: file.to_path_buf(),
            policy,
            started_ms,
            entries: tokio::sync::Mutex::new(entries),
        }
    }

    /// The threshold for `owner`'s locks.
    fn stale_after(&self, owner: &str) -> Duration {
        if owner == NODE_OWNER {
            STALE_AFTER.max(self.policy.stale_after)
        } else {
            self.policy.stale_after
        }
    }

    /// Milliseconds since the last write of the lock, and whether that makes it stale.
    fn age(&self, e: Option<&Entry>, now: i64) -> (i64, bool) {
        let (since, owner) = match e {
            Some(e) => (e.received_ms, e.owner.as_str()),
            None => (self.started_ms, ""),
        };
        let age = now.saturating_sub(since);
        (age, age > ms(self.stale_after(owner)))
    }

    fn save(&self, entries: &BTreeMap<String, Entry>) {
        let res = serde_json::to_vec_pretty(entries)
            .map_err(std::io::Error::other)
            .and_then(|text| {
                let tmp = self.file.with_extension("json.tmp");
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &self.file)
            });
        if let Err(e) = res {
            tracing::warn!(
                "vault {}: cannot save lock owners to {}: {e}",
                self.vault,
                self.file.display()
            );
        }
    }

    /// Checks that `w` may replace or delete lock `name` (object present in `store`).
    async fn may_touch(
        &self,
        entries: &BTreeMap<String, Entry>,
        store: &dyn Store,
        name: &str,
        w: Writer<'_>,
        op: &'static str,
        now: i64,
    ) -> Result<(), LockError> {
        let (who, admin) = match w {
            Writer::Client { who, admin } => (who, admin),
            // The node's archive code removes locks it judges stale by their records (a dead
            // pid on this host, 600 s by the writer's clock); the book's judgement wins.
            Writer::Node => (NODE_OWNER, false),
        };
        let e = entries.get(name);
        if e.is_some_and(|e| e.owner == who) {
            return Ok(());
        }
        if !store.exists(&lock_key(name)).await? {
            return Ok(());
        }
        let (age, stale) = self.age(e, now);
        let owner = e.map_or("an unknown holder", |e| e.owner.as_str());
        if e.is_none() && op == "replace" {
            tracing::info!(
                "vault {}: lock {name} had no recorded owner; {who} refreshed it and owns it now",
                self.vault
            );
            return Ok(());
        }
        if stale || admin {
            tracing::warn!(
                "vault {}: {who} may {op} lock {name} of {owner}: {} ({}s since its last write)",
                self.vault,
                if stale { "stale" } else { "admin" },
                age / 1000
            );
            return Ok(());
        }
        tracing::info!(
            "vault {}: refused {who} to {op} lock {name} of {owner}",
            self.vault
        );
        Err(LockError::Held {
            vault: self.vault.clone(),
            name: name.to_string(),
            owner: owner.to_string(),
            op,
            age_secs: age / 1000,
            stale_secs: self.stale_after(owner).as_secs(),
        })
    }

    /// Writes lock `name` (replacing it, or only creating it when `new`) as `w`, and records
    /// `w` as its owner and now as its last write. Returns false when `new` and it existed.
    pub async fn write(
        &self,
        store: &dyn Store,
        name: &str,
        w: Writer<'_>,
        data: Bytes,
        new: bool,
    ) -> Result<bool, LockError> {
        let key = lock_key(name);
        let mut entries = self.entries.lock().await;
        let now = self.policy.clock.now_ms();
        let created = if new {
            store.put_new(&key, data).await?
        } else {
            self.may_touch(&entries, store, name, w, "replace", now)
                .await?;
            store.put(&key, data).await?;
            true
        };
        if created {
            let pid = matches!(w, Writer::Node).then(std::process::id);
            entries.insert(
                name.to_string(),
                Entry {
                    owner: w.owner().to_string(),
                    received_ms: now,
                    pid,
                },
            );
            self.save(&entries);
        }
        Ok(created)
    }

    /// Deletes lock `name` as `w`. Deleting a missing lock succeeds.
    pub async fn remove(
        &self,
        store: &dyn Store,
        name: &str,
        w: Writer<'_>,
    ) -> Result<(), LockError> {
        let mut entries = self.entries.lock().await;
        let now = self.policy.clock.now_ms();
        self.may_touch(&entries, store, name, w, "delete", now)
            .await?;
        store.delete(&lock_key(name)).await?;
        if entries.remove(name).is_some() {
            self.save(&entries);
        }
        Ok(())
    }

    /// Removes the locks that are stale by the node's clock, and forgets entries whose
    /// objects are gone. Returns the names removed.
    pub async fn reap(&self, store: &dyn Store) -> Result<Vec<String>, StoreError> {
        let mut entries = self.entries.lock().await;
        let now = self.policy.clock.now_ms();
        let mut present = std::collections::BTreeSet::new();
        let mut removed = Vec::new();
        for o in store.list("locks/").await? {
            let Some(name) = o.key.strip_prefix("locks/") else {
                continue;
            };
            let e = entries.get(name);
            let (age, stale) = self.age(e, now);
            if stale {
                tracing::warn!(
                    "vault {}: removing stale lock {name} of {}: no write received for {}s \
                     (node clock)",
                    self.vault,
                    e.map_or("an unknown holder", |e| e.owner.as_str()),
                    age / 1000
                );
                store.delete(&o.key).await?;
                removed.push(name.to_string());
            } else {
                present.insert(name.to_string());
            }
        }
        let before = entries.len();
        entries.retain(|n, _| present.contains(n));
        if entries.len() != before {
            self.save(&entries);
        }
        Ok(removed)
    }

    /// The recorded owner of lock `name`.
    pub async fn owner(&self, name: &str) -> Option<String> {
        self.entries.lock().await.get(name).map(|e| e.owner.clone())
    }
}

/// A vault's store as the node itself uses it: lock writes are the node's (recorded in the
/// book), and listing `locks/` first removes locks stale by the node's clock.
#[derive(Debug)]
pub struct BookedStore {
    inner: Arc<dyn Store>,
    book: Arc<LockBook>,
}

impl BookedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, book: Arc<LockBook>) -> BookedStore {
        BookedStore { inner, book }
    }
}

fn lock_name(key: &str) -> Option<&str> {
    key.strip_prefix("locks/").filter(|n| !n.is_empty())
}

/// A refusal is [`StoreError::Remote`], which the archive's lock code reads as "this lock
/// is live" when it tried to remove a lock it thought stale.
fn store_err(e: LockError) -> StoreError {
    match e {
        LockError::Store(e) => e,
        LockError::Held { ref name, .. } => StoreError::Remote {
            op: "delete",
            key: lock_key(name),
            detail: e.to_string(),
        },
    }
}

#[async_trait]
impl Store for BookedStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        match lock_name(key) {
            Some(name) => self
                .book
                .write(self.inner.as_ref(), name, Writer::Node, data, false)
                .await
                .map(|_| ())
                .map_err(store_err),
            None => self.inner.put(key, data).await,
        }
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        match lock_name(key) {
            Some(name) => self
                .book
                .write(self.inner.as_ref(), name, Writer::Node, data, true)
                .await
                .map_err(store_err),
            None => self.inner.put_new(key, data).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        if prefix.starts_with("locks/") || "locks/".starts_with(prefix) {
            self.book.reap(self.inner.as_ref()).await?;
        }
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match lock_name(key) {
            Some(name) => self
                .book
                .remove(self.inner.as_ref(), name, Writer::Node)
                .await
                .map_err(store_err),
            None => self.inner.delete(key).await,
        }
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync().await
    }

    async fn missing(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        self.inner.missing(keys).await
    }

    fn batch_hint(&self) -> usize {
        self.inner.batch_hint()
    }

    async fn clean_temporaries(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        self.inner.clean_temporaries(min_age_secs).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicI64, Ordering};

    use ferry_storage::LocalStore;

    use super::*;

    /// A clock the test moves.
    #[derive(Debug)]
    struct Manual(AtomicI64);

    impl Clock for Manual {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Manual {
        fn advance(&self, secs: i64) {
            self.0.fetch_add(secs * 1000, Ordering::SeqCst);
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        clock: Arc<Manual>,
        store: Arc<dyn Store>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("vault")));
            Fixture {
                dir,
                clock: Arc::new(Manual(AtomicI64::new(1_000_000_000_000))),
                store,
            }
        }

        fn book(&self, stale_after: Duration) -> Arc<LockBook> {
            Arc::new(LockBook::open(
                "v",
                &self.dir.path().join("locks-v.json"),
                LockPolicy {
                    clock: self.clock.clone(),
                    stale_after,
                },
            ))
        }
    }

    const A: Writer<'static> = Writer::Client {
        who: "agent-a",
        admin: false,
    };
    const B: Writer<'static> = Writer::Client {
        who: "agent-b",
        admin: false,
    };
    const ROOT: Writer<'static> = Writer::Client {
        who: "admin-root",
        admin: true,
    };

    fn body() -> Bytes {
        Bytes::from_static(b"lock")
    }

    fn held(r: Result<impl std::fmt::Debug, LockError>) -> String {
        match r {
            Err(e @ LockError::Held { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn others_wait_for_staleness_by_the_node_clock() {
        let f = Fixture::new();
        let book = f.book(STALE_AFTER);
        let s = f.store.as_ref();
        assert!(book.write(s, "l1", A, body(), false).await.unwrap());
        let msg = held(book.write(s, "l1", B, body(), false).await);
        assert!(msg.contains("held by agent-a"), "{msg}");
        held(book.remove(s, "l1", B).await);
        // The owner refreshes: two minutes later the lock is still fresh for B...
        f.clock.advance(120);
        book.write(s, "l1", A, body(), false).await.unwrap();
        f.clock.advance(120);
        held(book.remove(s, "l1", B).await);
        assert!(s.exists("locks/l1").await.unwrap());
        // ...until three refreshes are missed.
        f.clock.advance(61);
        book.remove(s, "l1", B).await.unwrap();
        assert!(!s.exists("locks/l1").await.unwrap());
        assert_eq!(book.owner("l1").await, None);
    }

    #[tokio::test]
    async fn the_owner_and_an_admin_always_may() {
        let f = Fixture::new();
        let book = f.book(STALE_AFTER);
        let s = f.store.as_ref();
        book.write(s, "l1", A, body(), false).await.unwrap();
        book.write(s, "l1", A, body(), false).await.unwrap();
        book.remove(s, "l1", A).await.unwrap();
        book.write(s, "l2", A, body(), false).await.unwrap();
        book.remove(s, "l2", ROOT).await.unwrap();
        assert!(!s.exists("locks/l2").await.unwrap());
        // put_new of an existing lock changes nothing, whoever asks.
        book.write(s, "l3", A, body(), true).await.unwrap();
        assert!(!book.write(s, "l3", B, body(), true).await.unwrap());
        assert_eq!(book.owner("l3").await.as_deref(), Some("agent-a"));
        // Deleting a missing lock succeeds.
        book.remove(s, "gone", B).await.unwrap();
    }

    #[tokio::test]
    async fn listing_removes_what_is_stale_and_spares_the_nodes_own_locks() {
        let f = Fixture::new();
        let book = f.book(Duration::from_secs(1));
        let booked = BookedStore::new(f.store.clone(), book.clone());
        book.write(f.store.as_ref(), "client", A, body(), false)
            .await
            .unwrap();
        booked.put("locks/mine", body()).await.unwrap();
        assert_eq!(book.owner("mine").await.as_deref(), Some(NODE_OWNER));
        // The node's archive code may not remove a client's fresh lock.
        let e = booked.delete("locks/client").await.unwrap_err();
        assert!(matches!(e, StoreError::Remote { .. }), "{e}");
        f.clock.advance(2);
        let left: Vec<String> = booked
            .list("locks/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(left, vec!["locks/mine".to_string()]);
        // The node's own locks go stale only after three refresh periods.
        f.clock.advance(3 * REFRESH_SECS as i64);
        assert!(booked.list("").await.unwrap().is_empty());
        // Other prefixes are not touched.
        booked.put("locks/again", body()).await.unwrap();
        f.clock.advance(1000);
        booked.list("chunks/").await.unwrap();
        assert!(f.store.exists("locks/again").await.unwrap());
    }

    #[tokio::test]
    async fn owners_survive_a_restart_and_ages_count_from_the_start() {
        let f = Fixture::new();
        let s = f.store.as_ref();
        {
            let book = f.book(STALE_AFTER);
            book.write(s, "l1", A, body(), false).await.unwrap();
        }
        // A lock object the book never saw (an older node wrote it).
        s.put("locks/old", body()).await.unwrap();
        // The node was down for an hour: ages count from its start, not the last write.
        f.clock.advance(3600);
        let book = f.book(STALE_AFTER);
        let msg = held(book.remove(s, "l1", B).await);
        assert!(msg.contains("agent-a"), "{msg}");
        let msg = held(book.remove(s, "old", B).await);
        assert!(msg.contains("unknown holder"), "{msg}");
        assert!(book.reap(s).await.unwrap().is_empty());
        f.clock.advance(181);
        book.remove(s, "l1", B).await.unwrap();
        let mut gone = book.reap(s).await.unwrap();
        gone.sort();
        assert_eq!(gone, vec!["old".to_string()]);
    }

    #[tokio::test]
    async fn an_unknown_lock_is_adopted_by_its_refresher() {
        let f = Fixture::new();
        let book = f.book(STALE_AFTER);
        let s = f.store.as_ref();
        s.put("locks/old", body()).await.unwrap();
        book.write(s, "old", A, body(), false).await.unwrap();
        assert_eq!(book.owner("old").await.as_deref(), Some("agent-a"));
        held(book.write(s, "old", B, body(), false).await);
    }

    #[tokio::test]
    async fn node_locks_of_an_earlier_process_are_stale_at_start() {
        let f = Fixture::new();
        let s = f.store.as_ref();
        s.put("locks/n", body()).await.unwrap();
        let mut m = BTreeMap::new();
        m.insert(
            "n".to_string(),
            Entry {
                owner: NODE_OWNER.into(),
                received_ms: f.clock.now_ms(),
                pid: Some(std::process::id().wrapping_add(1)),
            },
        );
        std::fs::write(
            f.dir.path().join("locks-v.json"),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        let book = f.book(STALE_AFTER);
        assert_eq!(book.reap(s).await.unwrap(), vec!["n".to_string()]);
    }
}
