//! Helpers for the tests against the simulator peer (`ferry_testkit::vcsim`): connecting to
//! it, disk contents, a repository.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ferry_archive::Repository;
use ferry_testkit::vcsim::Vcsim;
use ferry_vsphere::{Client, ConnectOptions, Credentials, Trust};

/// The simulator, with its pinned thumbprint and a 30 s request timeout.
pub fn options(sim: &Vcsim) -> ConnectOptions {
    let mut o = ConnectOptions::new(
        &sim.url,
        Credentials::new(&sim.user, &sim.password),
        Trust::Thumbprint(sim.thumbprint.clone()),
    );
    o.request_timeout = Duration::from_secs(30);
    o
}

pub async fn connect(sim: &Vcsim) -> Client {
    Client::connect(&options(sim)).await.unwrap()
}

/// Deterministic disk content: per MiB, zeros, random bytes or compressible text.
pub fn disk_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x = seed | 1;
    for (i, mib) in v.chunks_mut(1 << 20).enumerate() {
        match (i as u64 + seed) % 4 {
            0 => {}
            1 | 2 => {
                for b in mib.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            _ => {
                for (j, b) in mib.iter_mut().enumerate() {
                    *b = b"ferry text block "[j % 17];
                }
            }
        }
    }
    v
}

pub async fn new_repo(dir: &std::path::Path) -> Repository {
    let store = ferry_storage::open_store(dir.to_str().unwrap()).unwrap();
    Repository::init(store, 1 << 20, 3).await.unwrap()
}

pub fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn progress() -> Arc<ferry_archive::Progress> {
    Arc::new(ferry_archive::Progress::default())
}
