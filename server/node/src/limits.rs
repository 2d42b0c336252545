//! Per-grantee admission of the requests that hold large bodies in memory (chunk uploads,
//! commits): so that one tenant cannot exhaust the node's memory for the others.
//!
//! A [`Gate`] lets each identity run a few requests of its kind at once and queue a few more
//! (waiting costs a connection, no body: the body is read only once admitted); beyond that
//! the request gets 429, which the `node://` client retries with backoff. A node-wide budget
//! caps what all identities together hold: a number of uploads, and for commits their bytes
//! (a commit waiting for a GC's lock on one vault then holds back only as much as it weighs,
//! and small commits of other vaults go on).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Chunk uploads one identity may run at once (the `node://` client's default parallelism).
pub const UPLOADS_RUNNING: usize = 16;
/// Chunk uploads one identity may have waiting beyond those.
pub const UPLOADS_QUEUED: usize = 48;
/// Chunk uploads running node-wide (each holds at most `MAX_CHUNK_BODY`).
pub const UPLOADS_GLOBAL: u32 = 64;
/// Commits one identity may run at once.
pub const COMMITS_RUNNING: usize = 2;
/// Commits one identity may have waiting.
pub const COMMITS_QUEUED: usize = 4;
/// KiB of commits in memory node-wide: a commit weighs twice its body (the body, then its
/// decoded indexes), so the largest commit (512 MiB) runs alone and small ones side by side.
pub const COMMITS_GLOBAL_KIB: u32 = 1 << 20;

/// What a commit of `len` body bytes weighs against [`COMMITS_GLOBAL_KIB`].
pub fn commit_weight(len: u64) -> u32 {
    u32::try_from(len.saturating_mul(2).div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, COMMITS_GLOBAL_KIB)
}

/// One identity's places (running) and its count of requests admitted (running or waiting).
type PerIdentity = (Arc<Semaphore>, Arc<AtomicUsize>);

/// One kind of request, limited per identity and node-wide.
#[derive(Debug)]
pub struct Gate {
    what: &'static str,
    running: usize,
    queued: usize,
    global: Arc<Semaphore>,
    global_total: u32,
    per: Mutex<HashMap<String, PerIdentity>>,
}

/// Admission of one request; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _own: OwnedSemaphorePermit,
    _slot: Slot,
}

/// Counts a request admitted (running or waiting) for one identity.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Too many requests of this kind from one identity.
#[derive(Debug, thiserror::Error)]
#[error(
    "{who} has {limit} {what} in progress or waiting (at most {running} at once, {queued} \
     more queued); retry later"
)]
pub struct Busy {
    /// Identity.
    pub who: String,
    /// Kind of request.
    pub what: &'static str,
    /// Running + queued.
    pub limit: usize,
    /// At once.
    pub running: usize,
    /// Queued.
    pub queued: usize,
}

impl Gate {
    /// A gate of `running` requests at once per identity, `queued` more waiting, and a
    /// node-wide budget of `global` (in the weight units [`Gate::enter`] is given).
    pub fn new(what: &'static str, running: usize, queued: usize, global: u32) -> Gate {
        Gate {
            what,
            running,
            queued,
            global: Arc::new(Semaphore::new(global as usize)),
            global_total: global,
            per: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a request of `who` weighing `weight` of the node-wide budget: waits for its
    /// turn, or refuses at once when `who` already has `running + queued` requests admitted.
    pub async fn enter(&self, who: &str, weight: u32) -> Result<Permit, Busy> {
        let (own, count) = {
            let mut per = self.per.lock().unwrap_or_else(|e| e.into_inner());
            per.entry(who.to_string())
                .or_insert_with(|| {
                    (
                        Arc::new(Semaphore::new(self.running)),
                        Arc::new(AtomicUsize::new(0)),
                    )
                })
                .clone()
        };
        let limit = self.running + self.queued;
        if count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            tracing::warn!("refused {who}: {limit} {} already admitted", self.what);
            return Err(Busy {
                who: who.to_string(),
                what: self.what,
                limit,
                running: self.running,
                queued: self.queued,
            });
        }
        let slot = Slot(count);
        // The semaphores are never closed: acquire fails only on a closed semaphore.
        let busy = || Busy {
            who: who.to_string(),
            what: self.what,
            limit,
            running: self.running,
            queued: self.queued,
        };
        let own = own.acquire_owned().await.map_err(|_| busy())?;
        let global = self
            .global
            .clone()
            .acquire_many_owned(weight.clamp(1, self.global_total))
            .await
            .map_err(|_| busy())?;
        Ok(Permit {
            _global: global,
            _own: own,
            _slot: slot,
        })
    }
}

/// The node's gates.
#[derive(Debug)]
pub struct Gates {
    /// `PUT .../chunks/{digest}`.
    pub uploads: Gate,
    /// `POST .../points/{id}/commit`.
    pub commits: Gate,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            uploads: Gate::new(
                "chunk uploads",
                UPLOADS_RUNNING,
                UPLOADS_QUEUED,
                UPLOADS_GLOBAL,
            ),
            commits: Gate::new(
                "commits",
                COMMITS_RUNNING,
                COMMITS_QUEUED,
                COMMITS_GLOBAL_KIB,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn one_identity_is_bounded_and_the_others_go_on() {
        let g = Arc::new(Gate::new("commits", 1, 2, 2));
        let first = g.enter("a", 1).await.unwrap();
        // Two more of a wait; a fourth is refused at once.
        let w1 = tokio::spawn({
            let g = g.clone();
            async move { g.enter("a", 1).await.map(|_| ()) }
        });
        let w2 = tokio::spawn({
            let g = g.clone();
            async move { g.enter("a", 1).await.map(|_| ()) }
        });
        // Single-threaded runtime: both waiters run up to their wait before this resumes.
        tokio::task::yield_now().await;
        let e = g.enter("a", 1).await.unwrap_err();
        assert!(e.to_string().contains("retry later"), "{e}");
        // Another identity is served meanwhile.
        drop(g.enter("b", 1).await.unwrap());
        drop(first);
        w1.await.unwrap().unwrap();
        w2.await.unwrap().unwrap();
        drop(g.enter("a", 1).await.unwrap());
    }

    #[tokio::test]
    async fn a_heavy_request_waits_for_the_budget_and_light_ones_share_it() {
        let g = Arc::new(Gate::new("commits", 2, 2, 100));
        let light = g.enter("a", 10).await.unwrap();
        let other = g.enter("b", 10).await.unwrap();
        // Heavier than the whole budget: clamped, so it runs once the others are done.
        let heavy = tokio::spawn({
            let g = g.clone();
            async move { g.enter("c", 1000).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert!(!heavy.is_finished());
        drop(light);
        drop(other);
        heavy.await.unwrap().unwrap();
        assert_eq!(commit_weight(0), 1);
        assert_eq!(commit_weight(512 << 20), COMMITS_GLOBAL_KIB);
        assert_eq!(commit_weight(4096), 8);
    }
}
