//! What the CLI prints: JSON for scripts, text and progress for people.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_archive::prune::Decision;
use ferry_archive::verify::VerifyReport;
use ferry_archive::{Manifest, Progress, Repository};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Chooses JSON or text output.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    json: bool,
}

/// A running progress display; [`ProgressHandle::finish`] stops it.
#[derive(Debug)]
pub struct ProgressHandle {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl ProgressHandle {
    /// Stops the display.
    pub fn finish(self) {
        if let Some(t) = &self.task {
            t.abort();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Prints one line on stdout. A reader that went away (`ferry list | head`) ends the
/// process quietly with 0, as for other Unix tools: the work is done and only its report was
/// not wanted (`println!` would panic). Other write errors (a full disk) still say so.
fn print_line(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("ferry: cannot write the result: {e}");
        std::process::exit(1);
    }
}

impl Reporter {
    /// A reporter; `json` selects machine output.
    pub fn new(json: bool) -> Self {
        Reporter { json }
    }

    /// True when printing JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a result: JSON of `value`, or `text()`.
    pub fn result<T: Serialize + ?Sized>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => print_line(&s),
                Err(e) => eprintln!("ferry: cannot encode JSON: {e}"),
            }
        } else {
            print_line(&text());
        }
    }

    /// A bar on a terminal, a log line every 10 s otherwise, nothing with `--json`.
    pub fn progress_bar(
        &self,
        p: Arc<Progress>,
        label: &'static str,
        total: u64,
    ) -> ProgressHandle {
        if self.json {
            return ProgressHandle {
                task: None,
                bar: None,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total.max(1));
            let style = ProgressStyle::with_template(
                "{msg:8} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(label);
            let b = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    let s = p.snapshot();
                    if s.total > 0 {
                        b.set_length(s.total);
                    }
                    b.set_position(s.done);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            return ProgressHandle {
                task: Some(task),
                bar: Some(bar),
            };
        }
        let started = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let s = p.snapshot();
                let pct = if s.total > 0 {
                    s.done as f64 * 100.0 / s.total as f64
                } else {
                    0.0
                };
                eprintln!(
                    "{label}: {:.1}% ({} of {}), {}",
                    pct,
                    human_bytes(s.done),
                    human_bytes(s.total),
                    rate(s.done, started.elapsed())
                );
            }
        });
        ProgressHandle {
            task: Some(task),
            bar: None,
        }
    }
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `123.4 MB/s` (decimal MB, like most storage tools).
pub fn rate(bytes: u64, d: Duration) -> String {
    let s = d.as_secs_f64().max(1e-6);
    format!("{:.1} MB/s", bytes as f64 / s / 1e6)
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}x", a as f64 / b as f64)
    }
}

/// The final summary of a backup.
pub fn backup_summary(m: &Manifest) -> String {
    let s = m.stats();
    let secs = (m.finished - m.created).max(0);
    let logical = m.total_size();
    let mut out = format!(
        "restore point {} (group {}{})\n",
        m.id,
        m.group,
        m.parent
            .as_ref()
            .map(|p| format!(", parent {p}"))
            .unwrap_or_default()
    );
    for d in &m.disks {
        out.push_str(&format!(
            "  disk {}: {} read, {} new, {} reused, {} zero, {} unchanged\n",
            d.name,
            human_bytes(d.stats.read),
            human_bytes(d.stats.new),
            human_bytes(d.stats.reused),
            human_bytes(d.stats.zero),
            human_bytes(d.stats.inherited)
        ));
    }
    out.push_str(&format!(
        "  total {}: read {}, new {}, reused {}, zero {}, unchanged {}, stored {}\n",
        human_bytes(logical),
        human_bytes(s.read),
        human_bytes(s.new),
        human_bytes(s.reused),
        human_bytes(s.zero),
        human_bytes(s.inherited),
        human_bytes(s.stored)
    ));
    out.push_str(&format!(
        "  compression {}, dedup {}, {} s",
        ratio(s.new, s.stored),
        ratio(s.new + s.reused + s.inherited, s.new),
        secs
    ));
    out
}

/// The restore point table.
pub fn list_table(points: &[Manifest]) -> String {
    if points.is_empty() {
        return "no restore points".into();
    }
    let mut out = format!(
        "{:<30} {:<20} {:<20} {:>6} {:>11} {:>11}\n",
        "ID", "GROUP", "CREATED (UTC)", "DISKS", "SIZE", "NEW"
    );
    for m in points {
        let t = time::OffsetDateTime::from_unix_timestamp(m.created)
            .map(|t| {
                format!(
                    "{}-{:02}-{:02} {:02}:{:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<30} {:<20} {:<20} {:>6} {:>11} {:>11}\n",
            m.id,
            m.group,
            t,
            m.disks.len(),
            human_bytes(m.total_size()),
            human_bytes(m.stats().stored)
        ));
    }
    out.trim_end().to_string()
}

/// The verify report as text.
pub fn verify_text(r: &VerifyReport) -> String {
    let mut out = format!(
        "verified {} restore points: {} chunks, {} hashed",
        r.points,
        r.chunks,
        human_bytes(r.bytes)
    );
    if r.ok() {
        out.push_str(", no damage");
    } else {
        out.push_str(&format!(", {} DAMAGED places:", r.damaged.len()));
        for d in &r.damaged {
            out.push_str(&format!(
                "\n  {} disk {} offset {}: {}",
                d.point,
                d.disk.as_deref().unwrap_or("-"),
                d.offset
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.error
            ));
        }
    }
    out
}

/// The prune decisions as text.
pub fn prune_text(d: &[Decision], dry_run: bool) -> String {
    let removed = d.iter().filter(|x| !x.keep).count();
    let mut out = String::new();
    for x in d {
        out.push_str(&format!(
            "{} {} {}\n",
            if x.keep {
                "keep  "
            } else if dry_run {
                "would remove"
            } else {
                "remove"
            },
            x.group,
            x.id
        ));
    }
    out.push_str(&format!(
        "{} kept, {} {}",
        d.len() - removed,
        removed,
        if dry_run {
            "would be removed"
        } else {
            "removed (run `ferry gc` to free their chunks)"
        }
    ));
    out
}

/// Repository statistics.
#[derive(Debug, Serialize)]
pub struct RepoStats {
    /// Location.
    pub location: String,
    /// Repository id.
    pub id: String,
    /// Restore points.
    pub points: usize,
    /// Backup groups.
    pub groups: usize,
    /// Logical bytes over all points.
    pub logical_bytes: u64,
    /// Chunk objects.
    pub chunks: u64,
    /// Bytes of chunk objects.
    pub chunk_bytes: u64,
    /// Live locks.
    pub locks: usize,
}

impl std::fmt::Display for RepoStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "repository {} at {}\n  {} restore points in {} groups, {} logical\n  {} chunks, {} stored ({} of logical)\n  {} active locks",
            self.id,
            self.location,
            self.points,
            self.groups,
            human_bytes(self.logical_bytes),
            self.chunks,
            human_bytes(self.chunk_bytes),
            if self.logical_bytes > 0 {
                format!("{:.1}%", self.chunk_bytes as f64 * 100.0 / self.logical_bytes as f64)
            } else {
                "-".into()
            },
            self.locks
        )
    }
}

/// Gathers repository statistics.
pub async fn repo_stats(repo: &Repository) -> anyhow::Result<RepoStats> {
    let points = repo.list_points().await?;
    let mut groups: Vec<&str> = points.iter().map(|m| m.group.as_str()).collect();
    groups.sort();
    groups.dedup();
    let chunks = repo.store().list("chunks/").await?;
    let locks = ferry_archive::lock::live_locks(repo.store().as_ref(), None).await?;
    Ok(RepoStats {
        location: repo.store().location(),
        id: repo.config().id.clone(),
        points: points.len(),
        groups: groups.len(),
        logical_bytes: points.iter().map(Manifest::total_size).sum(),
        chunks: chunks.len() as u64,
        chunk_bytes: chunks.iter().map(|o| o.size).sum(),
        locks: locks.len(),
    })
}

/// An error and its causes on one line, outermost first, each cause once: a cause whose
/// text the message already ends with (an error that both shows its cause and returns it
/// from `source()`) is not repeated.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
