//! The layer every remote backend sits behind: retries, parallelism, bandwidth, probe.
//!
//! [`Limited`] wraps a [`Backend`] and gives it:
//! - **bounded retries** with exponential backoff and jitter for [`StoreError::is_transient`]
//!   faults and for attempts that exceed the per-operation time limit. Before each retry the
//!   backend is told to [`Backend::reset`] its connection, so a server that was restarted is
//!   reached again. Every operation of the trait is idempotent, so retrying is safe; the one
//!   subtlety is `put_new`, whose retry after a lost reply reports "already existed", which
//!   the archive treats as a dedup hit of the same content-addressed object.
//! - **a parallel-operation limit**: a semaphore around every attempt.
//! - **a bandwidth limit** in bytes per second over object data (`put` and `get`), shared by
//!   all operations of the store.
//! - **a capability probe** before the first operation (or at [`Store::check`]): write a probe
//!   object, read it back, `put_new` it again (must report "exists"), delete it, and check it
//!   is gone. A read-only share or a bucket without delete rights fails there, with a message
//!   naming the step, instead of half-way through a backup.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore};

use crate::{ObjectInfo, Store, StoreError, StoreOptions};

/// A remote backend: a [`Store`] whose connection can be dropped and re-established.
pub trait Backend: Store {
    /// Drops cached connections so that the next operation reconnects.
    fn reset(&self) {}
}

/// Shared byte-rate limiter: each transfer reserves its share of the timeline.
#[derive(Debug)]
struct Throttle {
    rate: u64,
    next: Mutex<Instant>,
}

impl Throttle {
    async fn take(&self, bytes: usize) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let wait = {
            // A poisoned lock only means another task panicked while holding an Instant.
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A backend behind retries, a parallelism limit, a bandwidth limit and a capability probe.
#[derive(Debug)]
pub struct Limited<B> {
    inner: B,
    permits: Semaphore,
    throttle: Option<Throttle>,
    retries: u32,
    backoff: Duration,
    op_timeout: Duration,
    probe: bool,
    probed: OnceCell<()>,
}

impl<B: Backend> Limited<B> {
    /// Wraps `inner` with the limits of `opts`.
    pub fn new(inner: B, opts: &StoreOptions) -> Self {
        Limited {
            inner,
            permits: Semaphore::new(opts.parallel.max(1)),
            throttle: opts.bandwidth.map(|rate| Throttle {
                rate: rate.max(1),
                next: Mutex::new(Instant::now()),
            }),
            retries: opts.retries,
            backoff: opts.backoff,
            op_timeout: opts.op_timeout,
            probe: opts.probe,
            probed: OnceCell::new(),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Runs one operation with the permit, the time limit and the retries.
    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0u32;
        loop {
            let res = {
                let _permit = self.permits.acquire().await.map_err(|_| StoreError::Io {
                    op,
                    key: key.to_string(),
                    error: std::io::Error::other("store closed"),
                })?;
                match tokio::time::timeout(self.op_timeout, f()).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Transient {
                        op,
                        key: key.to_string(),
                        detail: format!("no answer within {:?}", self.op_timeout),
                    }),
                }
            };
            match res {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    let exp = self.backoff.saturating_mul(1 << attempt.min(10));
                    let delay = exp.min(Duration::from_secs(30));
                    let jitter = delay.mul_f64(rand::random::<f64>() * 0.5);
                    tracing::warn!(
                        store = %self.inner.location(), op, key, attempt, error = %e,
                        "transient storage error, retrying in {:?}", delay + jitter
                    );
                    self.inner.reset();
                    tokio::time::sleep(delay + jitter).await;
                }
                other => return other,
            }
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if !self.probe {
            return Ok(());
        }
        self.probed.get_or_try_init(|| self.run_probe()).await?;
        Ok(())
    }

    async fn run_probe(&self) -> Result<(), StoreError> {
        let location = self.inner.location();
        let key = format!("ferry-probe-{:016x}", rand::random::<u64>());
        let data = Bytes::from(format!("ferry capability probe {key}\n"));
        let fail = |step: &str, e: Option<StoreError>| StoreError::Capability {
            location: location.clone(),
            detail: match e {
                Some(e) => format!("{step}: {e}"),
                None => step.to_string(),
            },
        };
        // Authentication and connection errors pass through as they are: they are clearer.
        let pass = |e: &StoreError| {
            matches!(e, StoreError::Auth { .. } | StoreError::Transient { .. }) || e.is_transient()
        };
        let r = self.run("probe put", &key, || self.inner.put(&key, data.clone()));
        match r.await {
            Ok(()) => {}
            Err(e) if pass(&e) => return Err(e),
            Err(e) => {
                return Err(fail(
                    "cannot write a probe object (read-only share or bucket?)",
                    Some(e),
                ))
            }
        }
        let back = self.run("probe get", &key, || self.inner.get(&key)).await;
        match back {
            Ok(b) if b == data => {}
            Ok(_) => return Err(fail("the probe object read back differs", None)),
            Err(e) => return Err(fail("cannot read back the probe object", Some(e))),
        }
        match self
            .run("probe put_new", &key, || {
                self.inner.put_new(&key, data.clone())
            })
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                return Err(fail(
                    "create-if-absent replaced an existing probe object",
                    None,
                ))
            }
            Err(e) => return Err(fail("cannot create-if-absent (put_new)", Some(e))),
        }
        if let Err(e) = self
            .run("probe delete", &key, || self.inner.delete(&key))
            .await
        {
            return Err(fail(
                "cannot delete the probe object (no delete rights? prune and GC need them)",
                Some(e),
            ));
        }
        match self
            .run("probe exists", &key, || self.inner.exists(&key))
            .await
        {
            Ok(false) => {}
            Ok(true) => return Err(fail("the deleted probe object is still there", None)),
            Err(e) => return Err(fail("cannot stat the probe object", Some(e))),
        }
        tracing::debug!(store = %location, "capability probe passed");
        Ok(())
    }
}

#[async_trait]
impl<B: Backend> Store for Limited<B> {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        crate::validate_key(key)?;
        self.ready().await?;
        if let Some(t) = &self.throttle {
            t.take(data.len()).await;
        }
        self.run("put", key, || self.inner.put(key, data.clone()))
            .await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        crate::validate_key(key)?;
        self.ready().await?;
        if let Some(t) = &self.throttle {
            t.take(data.len()).await;
        }
        self.run("put_new", key, || self.inner.put_new(key, data.clone()))
            .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        crate::validate_key(key)?;
        self.ready().await?;
        let data = self.run("get", key, || self.inner.get(key)).await?;
        if let Some(t) = &self.throttle {
            t.take(data.len()).await;
        }
        Ok(data)
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        crate::validate_key(key)?;
        self.ready().await?;
        self.run("exists", key, || self.inner.exists(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // Remote backends build paths from keys and prefixes: checked once here for all.
        crate::validate_prefix(prefix)?;
        self.ready().await?;
        self.run("list", prefix, || self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        crate::validate_key(key)?;
        self.ready().await?;
        self.run("delete", key, || self.inner.delete(key)).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.ready().await?;
        self.run("sync", "", || self.inner.sync()).await
    }

    async fn missing(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        self.ready().await?;
        let first = keys.first().map(String::as_str).unwrap_or("");
        self.run("missing", first, || self.inner.missing(keys))
            .await
    }

    fn batch_hint(&self) -> usize {
        self.inner.batch_hint()
    }

    async fn clean_temporaries(&self, min_age_secs: u64) -> Result<u64, StoreError> {
        self.ready().await?;
        self.run("clean temporaries", "", || {
            self.inner.clean_temporaries(min_age_secs)
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.ready().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::LocalStore;

    /// A local store that fails the first `fail` operations with a connection reset, and can
    /// refuse deletes.
    #[derive(Debug)]
    struct Flaky {
        local: LocalStore,
        fail: AtomicU32,
        resets: AtomicU32,
        no_delete: bool,
    }

    impl Flaky {
        fn trip(&self) -> Result<(), StoreError> {
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StoreError::Io {
                    op: "test",
                    key: String::new(),
                    error: std::io::ErrorKind::ConnectionReset.into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Store for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
            self.trip()?;
            self.local.put(key, data).await
        }
        async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
            self.trip()?;
            self.local.put_new(key, data).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.trip()?;
            self.local.get(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, StoreError> {
            self.local.exists(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            self.local.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            if self.no_delete {
                return Err(StoreError::PermissionDenied {
                    key: key.into(),
                    error: std::io::ErrorKind::PermissionDenied.into(),
                });
            }
            self.local.delete(key).await
        }
        async fn sync(&self) -> Result<(), StoreError> {
            self.local.sync().await
        }
    }

    impl Backend for Flaky {
        fn reset(&self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flaky(dir: &std::path::Path, fail: u32, no_delete: bool) -> Flaky {
        Flaky {
            local: LocalStore::new(dir.to_path_buf()),
            fail: AtomicU32::new(fail),
            resets: AtomicU32::new(0),
            no_delete,
        }
    }

    fn opts(retries: u32) -> StoreOptions {
        StoreOptions {
            retries,
            backoff: Duration::from_millis(1),
            ..StoreOptions::default()
        }
    }

    #[tokio::test]
    async fn transient_faults_are_retried_with_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let s = Limited::new(flaky(dir.path(), 3, false), &opts(5));
        s.put("a/b", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(s.get("a/b").await.unwrap(), Bytes::from_static(b"x"));
        assert_eq!(s.inner().resets.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(2);
        o.probe = false;
        let s = Limited::new(flaky(dir.path(), 10, false), &o);
        let e = s.put("a", Bytes::new()).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert_eq!(s.inner().resets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn probe_refuses_store_without_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Limited::new(flaky(dir.path(), 0, true), &opts(0));
        let e = s.check().await.unwrap_err();
        assert!(matches!(e, StoreError::Capability { .. }), "{e}");
        assert!(e.to_string().contains("delete"), "{e}");
        // Nothing else runs either.
        assert!(s.put("a", Bytes::new()).await.is_err());
    }

    #[tokio::test]
    async fn probe_refuses_read_only_store() {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        let mut perm = std::fs::metadata(&ro).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
        std::fs::set_permissions(&ro, perm).unwrap();
        if nix_is_root() {
            // root ignores directory permissions; the delete test covers the probe path.
            return;
        }
        let s = Limited::new(flaky(&ro, 0, false), &opts(0));
        let e = s.check().await.unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[tokio::test]
    async fn probe_passes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Limited::new(flaky(dir.path(), 0, false), &opts(0));
        s.check().await.unwrap();
        assert!(s.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn bandwidth_is_limited() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(0);
        o.probe = false;
        o.bandwidth = Some(1024 * 1024);
        let s = Limited::new(flaky(dir.path(), 0, false), &o);
        let t = Instant::now();
        for i in 0..4 {
            s.put(&format!("k{i}"), Bytes::from(vec![0u8; 256 * 1024]))
                .await
                .unwrap();
        }
        // 1 MiB at 1 MiB/s: the first 256 KiB go at once, the rest waits about 0.75 s.
        let el = t.elapsed();
        assert!(el >= Duration::from_millis(700), "{el:?}");
        assert!(el < Duration::from_secs(3), "{el:?}");
    }

    #[tokio::test]
    async fn parallelism_is_limited() {
        #[derive(Debug, Default)]
        struct Counting {
            now: AtomicU32,
            max: AtomicU32,
        }
        #[async_trait]
        impl Store for Counting {
            fn location(&self) -> String {
                "counting".into()
            }
            async fn put(&self, _: &str, _: Bytes) -> Result<(), StoreError> {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
            async fn put_new(&self, _: &str, _: Bytes) -> Result<bool, StoreError> {
                Ok(true)
            }
            async fn get(&self, k: &str) -> Result<Bytes, StoreError> {
                Err(StoreError::NotFound(k.into()))
            }
            async fn exists(&self, _: &str) -> Result<bool, StoreError> {
                Ok(false)
            }
            async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>, StoreError> {
                Ok(vec![])
            }
            async fn delete(&self, _: &str) -> Result<(), StoreError> {
                Ok(())
            }
            async fn sync(&self) -> Result<(), StoreError> {
                Ok(())
            }
        }
        impl Backend for Counting {}
        let mut o = opts(0);
        o.probe = false;
        o.parallel = 3;
        let s = std::sync::Arc::new(Limited::new(Counting::default(), &o));
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.put(&format!("k{i}"), Bytes::new()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.inner().max.load(Ordering::SeqCst), 3);
    }
}
