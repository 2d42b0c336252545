//! Per-grantee admission of the requests that hold large bodies in memory (chunk uploads,
//! commits): so that one tenant cannot exhaust the node's memory for the others.
//!
//! A [`Gate`] lets each identity run a few requests of its kind at once and queue a few more
//! (waiting costs a connection, no body: the body is read only once admitted); beyond that
//! the request gets 429, which the `node://` client retries with backoff. A node-wide limit
//! caps what all identities together hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Chunk uploads one identity may run at once (the `node://` client's default parallelism).
pub const UPLOADS_RUNNING: usize = 16;
/// Chunk uploads one identity may have waiting beyond those.
pub const UPLOADS_QUEUED: usize = 48;
/// Chunk uploads running node-wide (each holds at most `MAX_CHUNK_BODY`).
pub const UPLOADS_GLOBAL: usize = 64;
/// Commits one identity may run at once.
pub const COMMITS_RUNNING: usize = 1;
/// Commits one identity may have waiting.
pub const COMMITS_QUEUED: usize = 4;
/// Commits running node-wide (each holds its body and decoded indexes).
pub const COMMITS_GLOBAL: usize = 2;

/// One kind of request, limited per identity and node-wide.
#[derive(Debug)]
pub struct Gate {
    what: &'static str,
    running: usize,
    queued: usize,
    global: Arc<Semaphore>,
    per: Mutex<HashMap<String, (Arc<Semaphore>, Arc<AtomicUsize>)>>,
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
    /// A gate of `running` requests at once per identity, `queued` more waiting, `global`
    /// at once node-wide.
    pub fn new(what: &'static str, running: usize, queued: usize, global: usize) -> Gate {
        Gate {
            what,
            running,
            queued,
            global: Arc::new(Semaphore::new(global)),
            per: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a request of `who`: waits for its turn, or refuses at once when `who` already
    /// has `running + queued` requests admitted.
    pub async fn enter(&self, who: &str) -> Result<Permit, Busy> {
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
            tracing::warn!("refused a {} of {who}: {limit} already admitted", self.what);
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
            .acquire_owned()
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
            commits: Gate::new("commits", COMMITS_RUNNING, COMMITS_QUEUED, COMMITS_GLOBAL),
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
        let first = g.enter("a").await.unwrap();
        // Two more of a wait; a fourth is refused at once.
        let w1 = tokio::spawn({
            let g = g.clone();
            async move { g.enter("a").await.map(|_| ()) }
        });
        let w2 = tokio::spawn({
            let g = g.clone();
            async move { g.enter("a").await.map(|_| ()) }
        });
        // Single-threaded runtime: both waiters run up to their wait before this resumes.
        tokio::task::yield_now().await;
        let e = g.enter("a").await.unwrap_err();
        assert!(e.to_string().contains("retry later"), "{e}");
        // Another identity is served meanwhile.
        drop(g.enter("b").await.unwrap());
        drop(first);
        w1.await.unwrap().unwrap();
        w2.await.unwrap().unwrap();
        drop(g.enter("a").await.unwrap());
    }
}
