//! `ferry-gen-disk`: writes the deterministic test disks used by tests and benchmarks.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Writes a deterministic sparse test disk, and optionally a modified copy.
#[derive(Parser, Debug)]
struct Args {
    /// Output raw image.
    #[arg(long)]
    out: PathBuf,
    /// Size, with an optional K/M/G/T suffix (binary units).
    #[arg(long, default_value = "4G")]
    size: String,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write a copy with 2% of its 1 MiB blocks rewritten here.
    #[arg(long)]
    modified: Option<PathBuf>,
    /// Where to write the changed-extent map of the modified copy (`OFFSET LENGTH` lines).
    #[arg(long)]
    changed_map: Option<PathBuf>,
    /// Percentage of 1 MiB blocks to rewrite in the modified copy.
    #[arg(long, default_value_t = 2.0)]
    change_percent: f64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let size = ferry_testkit::parse_size(&a.size).context("--size")?;
    let layout = ferry_testkit::MixedDisk::new(size, a.seed);
    layout
        .write(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let s = layout.summary();
    println!(
        "{}: {} bytes: hole {} zero {} random {} text {} records {}",
        a.out.display(),
        size,
        s[0],
        s[1],
        s[2],
        s[3],
        s[4]
    );
    if let Some(m) = &a.modified {
        let changed = layout
            .write_modified(&a.out, m, a.change_percent)
            .with_context(|| format!("writing {}", m.display()))?;
        println!(
            "{}: {} blocks of 1 MiB rewritten",
            m.display(),
            changed.len()
        );
        if let Some(p) = &a.changed_map {
            let text: String = changed.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    Ok(())
}
