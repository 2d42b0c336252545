//! A pool of one thread per core for hashing, compression and decompression.
//!
//! tokio's blocking pool grows to hundreds of threads when chunks wait on I/O, so CPU work
//! sent there oversubscribes the cores and every thread keeps its own zstd context. Here
//! the CPU-bound steps queue for exactly `available_parallelism` threads; blocking I/O
//! (reads, fsync) stays on tokio's pool.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use crate::ArchiveError;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    tx: Mutex<Sender<Job>>,
}

static POOL: OnceLock<Option<Pool>> = OnceLock::new();

fn start() -> Option<Pool> {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ferry-cpu-{i}"))
            .spawn(move || loop {
                // The lock is held only while taking the next job.
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(p) => p.into_inner().recv(),
                };
                match job {
                    // A panicking job drops its result sender (the caller gets an error);
                    // the worker lives on.
                    Ok(job) => {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                    Err(_) => return,
                }
            });
        if spawned.is_err() {
            // No threads at all: callers fall back to tokio's blocking pool.
            if i == 0 {
                return None;
            }
            break;
        }
    }
    Some(Pool { tx: Mutex::new(tx) })
}

/// Runs `f` on the CPU pool and waits for its result.
pub(crate) async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ArchiveError> {
    let Some(pool) = POOL.get_or_init(start) else {
        return Ok(tokio::task::spawn_blocking(f).await?);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let sent = pool.tx.lock().unwrap_or_else(|p| p.into_inner()).send(job);
    let gone = || ArchiveError::Invalid {
        what: "CPU pool",
        why: "a job panicked or the pool stopped".into(),
    };
    // Workers exit only when the sender, which lives in a static, is dropped.
    sent.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}
