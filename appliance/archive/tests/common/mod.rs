//! Helpers shared by the archive integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_archive::restore::Target;
use ferry_archive::{
    BackupOptions, ChangedExtents, DiskInput, FileSource, Manifest, Progress, Repository,
};
use sha2::{Digest as _, Sha256};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
}

impl Env {
    pub async fn new(chunk_size: u32) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = ferry_storage::open_store(&dir.path().join("repo").to_string_lossy()).unwrap();
        let repo = Repository::init(store, chunk_size, 3).await.unwrap();
        Env { dir, repo }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn backup(
        &self,
        disks: &[&Path],
        parent: Option<&str>,
        changed: Option<ChangedExtents>,
    ) -> Manifest {
        let inputs = disks.iter().map(|p| input(p, changed.clone())).collect();
        let mut opts = BackupOptions::new("vm");
        opts.parent = parent.map(str::to_string);
        ferry_archive::backup(&self.repo, inputs, &opts, Arc::new(Progress::default()))
            .await
            .unwrap()
    }

    pub async fn restore(&self, m: &Manifest, disk: usize) -> PathBuf {
        let out = self.path(&format!("restored-{}-{disk}", m.id));
        ferry_archive::restore::restore(
            &self.repo,
            m,
            disk,
            &Target::File(out.clone()),
            4,
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
        out
    }
}

pub fn input(p: &Path, changed: Option<ChangedExtents>) -> DiskInput {
    DiskInput {
        name: p.file_name().unwrap().to_string_lossy().into_owned(),
        source: Arc::new(FileSource::open(p).unwrap()),
        changed,
        change_id: None,
        meta: BTreeMap::new(),
    }
}

pub fn sha256_file(p: &Path) -> String {
    let data = std::fs::read(p).unwrap();
    hex::encode(Sha256::digest(&data))
}

/// Writes `len` bytes of deterministic random data at `off`.
pub fn write_random(p: &Path, off: u64, len: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap();
    let mut buf = vec![0u8; len];
    ferry_testkit::Rng::new(seed).fill(&mut buf);
    f.write_all_at(&buf, off).unwrap();
}

pub fn sparse_file(p: &Path, size: u64) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(size).unwrap();
}
