//! `ferry demo`: the main job on its embedded default. Generates a sample disk, backs it up
//! into a local repository, changes 2% of it and takes an incremental with a changed-extent
//! map, restores the latest point, checks the bytes, and verifies the repository.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use ferry_archive::restore::Target;
use ferry_archive::{BackupOptions, ChangedExtents, Progress, Repository};

use crate::output::{backup_summary, human_bytes, rate, verify_text, Reporter};

pub async fn run(dir: &Path, size: u64, rep: &Reporter) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let disk = dir.join("sample-disk.raw");
    let changed_disk = dir.join("sample-disk-changed.raw");
    let restored = dir.join("restored.raw");
    let repo_dir = dir.join("repo");

    eprintln!(
        "1/5 generating a {} sample disk in {}",
        human_bytes(size),
        dir.display()
    );
    let layout = ferry_testkit::MixedDisk::new(size, 1);
    let d2 = disk.clone();
    let c2 = changed_disk.clone();
    let changed = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        layout.write(&d2)?;
        layout.write_modified(&d2, &c2, 2.0)
    })
    .await??;

    let store = ferry_storage::open_store(&repo_dir.to_string_lossy())?;
    let repo = match Repository::open(store.clone()).await {
        Ok(r) => r,
        Err(ferry_archive::ArchiveError::NoRepository(_)) => {
            Repository::init(store, 4 << 20, 3).await?
        }
        Err(e) => return Err(e.into()),
    };

    eprintln!("2/5 full backup of {}", disk.display());
    let t = Instant::now();
    let full = backup_one(&repo, &disk, None, None, rep).await?;
    if !rep.is_json() {
        println!("{}\n  {}", backup_summary(&full), rate(size, t.elapsed()));
    }

    eprintln!("3/5 incremental backup of the changed disk, reading only changed chunks");
    let map = ChangedExtents::new(changed.iter().map(|&(o, l)| o..o + l).collect());
    let t = Instant::now();
    let inc = backup_one(&repo, &changed_disk, Some(full.id.clone()), Some(map), rep).await?;
    if !rep.is_json() {
        println!("{}\n  {}", backup_summary(&inc), rate(size, t.elapsed()));
    }

    eprintln!("4/5 restoring {} to {}", inc.id, restored.display());
    let t = Instant::now();
    ferry_archive::restore::restore(
        &repo,
        &inc,
        0,
        &Target::File(restored.clone()),
        8,
        Arc::new(Progress::default()),
    )
    .await?;
    let (a, b) = (changed_disk.clone(), restored.clone());
    let same = tokio::task::spawn_blocking(move || ferry_testkit::files_equal(&a, &b)).await??;
    if !same {
        bail!("restored disk differs from the source: this is a bug, please report it");
    }
    if !rep.is_json() {
        println!(
            "restored {} and compared: identical ({})",
            human_bytes(size),
            rate(size, t.elapsed())
        );
    }

    eprintln!("5/5 verifying every chunk of every restore point");
    let report =
        ferry_archive::verify::verify(&repo, &[], 8, Arc::new(Progress::default())).await?;
    rep.result(&report, || verify_text(&report));
    if !report.ok() {
        return Ok(ExitCode::from(3));
    }
    if !rep.is_json() {
        println!(
            "demo complete: repository in {}, try `ferry --repo {} list`",
            repo_dir.display(),
            repo_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn backup_one(
    repo: &Repository,
    path: &Path,
    parent: Option<String>,
    changed: Option<ChangedExtents>,
    rep: &Reporter,
) -> anyhow::Result<ferry_archive::Manifest> {
    let mut input = crate::sources::open(&path.to_string_lossy(), &Default::default()).await?;
    input.name = "sample-disk".into();
    input.changed = changed;
    let mut opts = BackupOptions::new("demo-vm");
    opts.parent = parent;
    let total = input.source.size();
    let progress = Arc::new(Progress::default());
    let bar = rep.progress_bar(progress.clone(), "backup", total);
    let res = ferry_archive::backup(repo, vec![input], &opts, progress).await;
    bar.finish();
    Ok(res?)
}
