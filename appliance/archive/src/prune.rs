//! Retention: which restore points to keep, per backup group, and their removal.
//!
//! The rules behave as Proxmox Backup Server's: points are walked newest first; `keep-last`
//! keeps the newest N; each periodic rule then keeps the newest point of each of its N most
//! recent periods that no earlier rule already covered. Periods are in UTC. With no rule
//! at all, everything is kept. Prune removes manifests (the point disappears at once), then
//! their indexes; the chunks are left to GC.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::lock::{LockKind, RepoLock};
use crate::repo::{manifest_key, Manifest};
use crate::{ArchiveError, Repository};

/// Retention rules; `None` disables a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepOptions {
    /// Keep the newest N points.
    pub last: Option<u32>,
    /// Keep one per hour for N hours.
    pub hourly: Option<u32>,
    /// One per day.
    pub daily: Option<u32>,
    /// One per ISO week.
    pub weekly: Option<u32>,
    /// One per month.
    pub monthly: Option<u32>,
    /// One per year.
    pub yearly: Option<u32>,
}

impl KeepOptions {
    /// True when at least one rule is set.
    pub fn any(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// The decision for one restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Restore point id.
    pub id: String,
    /// Backup group.
    pub group: String,
    /// Creation time.
    pub created: i64,
    /// Kept or removed.
    pub keep: bool,
}

fn period(t: i64, rule: usize) -> String {
    let d = OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    match rule {
        0 => format!("{}", t),
        1 => format!(
            "{}-{:02}-{:02}T{:02}",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour()
        ),
        2 => format!("{}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        3 => {
            let (y, w, _) = d.to_iso_week_date();
            format!("{y}-W{w:02}")
        }
        4 => format!("{}-{:02}", d.year(), u8::from(d.month())),
        _ => format!("{}", d.year()),
    }
}

/// Decides which of `points` (any order, one group) to keep. Returns newest first.
pub fn select(points: &[(String, i64)], opts: &KeepOptions) -> Vec<(String, bool)> {
    let mut sorted: Vec<&(String, i64)> = points.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    if !opts.any() {
        return sorted.iter().map(|(id, _)| (id.clone(), true)).collect();
    }
    let mut keep: HashSet<&str> = HashSet::new();
    let rules = [
        opts.last,
        opts.hourly,
        opts.daily,
        opts.weekly,
        opts.monthly,
        opts.yearly,
    ];
    for (rule, n) in rules.iter().enumerate() {
        let Some(n) = *n else { continue };
        // Periods already represented by a kept point do not consume this rule's budget.
        let mut covered: HashSet<String> = sorted
            .iter()
            .filter(|(id, _)| keep.contains(id.as_str()))
            .map(|(_, t)| period(*t, rule))
            .collect();
        let mut used = 0u32;
        for (id, t) in &sorted {
            if used >= n {
                break;
            }
            if keep.contains(id.as_str()) {
                continue;
            }
            let p = period(*t, rule);
            if covered.insert(p) {
                keep.insert(id.as_str());
                used += 1;
            }
        }
    }
    sorted
        .iter()
        .map(|(id, _)| (id.clone(), keep.contains(id.as_str())))
        .collect()
}

/// Applies `opts` to every group (or only `group`); removes unless `dry_run`.
pub async fn prune(
    repo: &Repository,
    group: Option<&str>,
    opts: &KeepOptions,
    dry_run: bool,
) -> Result<Vec<Decision>, ArchiveError> {
    let lock = if dry_run {
        None
    } else {
        Some(
            RepoLock::acquire(
                repo.store().clone(),
                LockKind::Shared,
                "prune",
                Duration::from_secs(600),
            )
            .await?,
        )
    };
    let res = prune_locked(repo, group, opts, dry_run).await;
    if let Some(l) = lock {
        l.release().await?;
    }
    res
}

async fn prune_locked(
    repo: &Repository,
    group: Option<&str>,
    opts: &KeepOptions,
    dry_run: bool,
) -> Result<Vec<Decision>, ArchiveError> {
    let points: Vec<Manifest> = repo
        .list_points()
        .await?
        .into_iter()
        .filter(|m| group.is_none_or(|g| m.group == g))
        .collect();
    let mut groups: Vec<&str> = points.iter().map(|m| m.group.as_str()).collect();
    groups.sort();
    groups.dedup();
    let mut out = Vec::new();
    for g in groups {
        let members: Vec<(String, i64)> = points
            .iter()
            .filter(|m| m.group == g)
            .map(|m| (m.id.clone(), m.created))
            .collect();
        for (id, keep) in select(&members, opts) {
            let m = points
                .iter()
                .find(|m| m.id == id)
                .ok_or_else(|| ArchiveError::NotFound(id.clone()))?;
            if !keep && !dry_run {
                repo.store().delete(&manifest_key(&id)).await?;
                repo.store().sync().await?;
                for d in &m.disks {
                    repo.store().delete(&d.index).await?;
                }
            }
            out.push(Decision {
                id,
                group: g.to_string(),
                created: m.created,
                keep,
            });
        }
    }
    repo.store().sync().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        let f = time::format_description::well_known::Rfc3339;
        OffsetDateTime::parse(s, &f).unwrap().unix_timestamp()
    }

    fn kept(points: &[(&str, &str)], o: KeepOptions) -> Vec<String> {
        let p: Vec<(String, i64)> = points.iter().map(|(i, t)| (i.to_string(), ts(t))).collect();
        select(&p, &o)
            .into_iter()
            .filter(|(_, k)| *k)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn keep_last_and_daily() {
        let pts = [
            ("a", "2026-11-01T10:00:00Z"),
            ("b", "2026-11-01T20:00:00Z"),
            ("c", "2026-11-02T10:00:00Z"),
            ("d", "2026-11-03T10:00:00Z"),
            ("e", "2026-11-03T11:00:00Z"),
        ];
        assert_eq!(
            kept(
                &pts,
                KeepOptions {
                    last: Some(2),
                    ..Default::default()
                }
            ),
            vec!["e", "d"]
        );
        // Newest of each of the last 2 days.
        assert_eq!(
            kept(
                &pts,
                KeepOptions {
                    daily: Some(2),
                    ..Default::default()
                }
            ),
            vec!["e", "c"]
        );
        // keep-last covers 11-03, so daily keeps 11-02 and 11-01.
        assert_eq!(
            kept(
                &pts,
                KeepOptions {
                    last: Some(1),
                    daily: Some(2),
                    ..Default::default()
                }
            ),
            vec!["e", "c", "b"]
        );
        assert_eq!(kept(&pts, KeepOptions::default()).len(), 5);
    }

    #[test]
    fn weekly_monthly_yearly() {
        let pts = [
            ("2024", "2024-06-01T00:00:00Z"),
            ("2025a", "2025-01-15T00:00:00Z"),
            ("2025b", "2025-12-30T00:00:00Z"),
            ("w1", "2026-11-16T00:00:00Z"),
            ("w2", "2026-11-23T00:00:00Z"),
            ("w2b", "2026-11-24T00:00:00Z"),
        ];
        assert_eq!(
            kept(
                &pts,
                KeepOptions {
                    weekly: Some(2),
                    ..Default::default()
                }
            ),
            vec!["w2b", "w1"]
        );
        assert_eq!(
            kept(
                &pts,
                KeepOptions {
                    monthly: Some(2),
                    ..Default::default()
                }
            ),
            vec!["w2b", "2025b"]
        );
        assert_eq!(
            kept(
                &pts,
                KeepOptions {
                    yearly: Some(5),
                    ..Default::default()
                }
            ),
            vec!["w2b", "2025b", "2024"]
        );
    }
}
