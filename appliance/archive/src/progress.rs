//! Live progress of a long operation, shared between the engine and whoever displays it
//! (a terminal bar in the CLI, structured progress in the agent's API).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by the engine as it goes. All byte counts are logical disk bytes,
/// except `stored`.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes the operation will cover in total.
    pub total: AtomicU64,
    /// Bytes covered so far.
    pub done: AtomicU64,
    /// Bytes read from the source (backup) or written to the target (restore).
    pub read: AtomicU64,
    /// Bytes written to storage.
    pub stored: AtomicU64,
}

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgressSnapshot {
    /// Total bytes.
    pub total: u64,
    /// Bytes done.
    pub done: u64,
    /// Bytes read.
    pub read: u64,
    /// Bytes stored.
    pub stored: u64,
}

impl Progress {
    /// Reads all counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            total: self.total.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            read: self.read.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_stored(&self, n: u64) {
        self.stored.fetch_add(n, Ordering::Relaxed);
    }
}
