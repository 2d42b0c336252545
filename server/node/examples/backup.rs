//! A minimal backup client for benchmarks (`tests/bench/node.sh`): backs up one raw file
//! into the repository at a location (a path, or `node://…`) with the archive engine, and
//! prints the wall time and the stats as JSON (`BENCH_CONCURRENCY=N` sets the chunks in
//! flight). Not part of the product: `ferry` is.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use ferry_archive::{BackupOptions, DiskInput, FileSource, Progress, Repository};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(location), Some(file)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: backup LOCATION FILE [--init]");
    };
    let init = args.next().as_deref() == Some("--init");
    let store = ferry_storage::open_store(&location).context("opening the store")?;
    let repo = if init {
        Repository::init(store, 4 << 20, 3).await.context("init")?
    } else {
        Repository::open(store).await.context("open")?
    };
    let input = DiskInput {
        name: "disk0".into(),
        source: Arc::new(FileSource::open(std::path::Path::new(&file)).context("source")?),
        changed: None,
        change_id: None,
        meta: BTreeMap::new(),
    };
    let mut opts = BackupOptions::new("bench");
    if let Some(n) = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.concurrency = n;
    }
    let t = std::time::Instant::now();
    let m = ferry_archive::backup(&repo, vec![input], &opts, Arc::new(Progress::default()))
        .await
        .context("backup")?;
    println!(
        "{}",
        serde_json::json!({
            "seconds": t.elapsed().as_secs_f64(),
            "point": m.id,
            "stats": m.stats(),
        })
    );
    Ok(())
}
