//! The persistent event log: every info-or-above line the agent logs, numbered, in
//! `<state>/events.jsonl` (rotated to `events.1.jsonl` past 4 MiB). The number (`seq`) is
//! the management server's collection cursor, so it only grows, across restarts too.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_api::v1::LogEntry;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

const ROTATE_AT: u64 = 4 << 20;

#[derive(Debug)]
struct Inner {
    file: Option<std::fs::File>,
    size: u64,
    next: u64,
}

/// The log.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn read_entries(path: &Path) -> Vec<LogEntry> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

impl EventLog {
    /// Opens the log in `dir`, continuing its numbering.
    pub fn open(dir: &Path) -> Arc<EventLog> {
        let cur = dir.join("events.jsonl");
        let last = read_entries(&cur)
            .last()
            .map(|e| e.seq)
            .or_else(|| {
                read_entries(&dir.join("events.1.jsonl"))
                    .last()
                    .map(|e| e.seq)
            })
            .unwrap_or(0);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cur)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        Arc::new(EventLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                size,
                next: last + 1,
            }),
        })
    }

    /// Appends a line.
    pub fn append(&self, level: &str, message: String) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let e = LogEntry {
            seq: g.next,
            time_ms,
            level: level.to_string(),
            message,
        };
        let Ok(mut line) = serde_json::to_vec(&e) else {
            return;
        };
        line.push(b'\n');
        if g.size + line.len() as u64 > ROTATE_AT {
            let cur = self.dir.join("events.jsonl");
            let _ = std::fs::rename(&cur, self.dir.join("events.1.jsonl"));
            g.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&cur)
                .ok();
            g.size = 0;
        }
        let len = line.len() as u64;
        if let Some(f) = g.file.as_mut() {
            if f.write_all(&line).is_ok() {
                g.size += len;
            }
        }
        g.next += 1;
    }

    /// Entries with `seq > after`, oldest first, at most `limit`.
    pub fn page(&self, after: u64, limit: usize) -> Vec<LogEntry> {
        // Hold the lock so a rotation does not happen between the two reads.
        let _g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<LogEntry> = read_entries(&self.dir.join("events.1.jsonl"))
            .into_iter()
            .chain(read_entries(&self.dir.join("events.jsonl")))
            .filter(|e| e.seq > after)
            .collect();
        out.truncate(limit);
        out
    }
}

/// A tracing layer that appends info-or-above events to the log.
#[derive(Debug)]
pub struct EventLayer(pub Arc<EventLog>);

struct Msg(String);

impl Visit for Msg {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for EventLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let target = event.metadata().target();
        if !target.starts_with("ferry") {
            return;
        }
        let mut m = Msg(String::new());
        event.record(&mut m);
        self.0.append(&level.as_str().to_lowercase(), m.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_survives_reopen_and_pages_by_cursor() {
        let d = tempfile::tempdir().unwrap();
        let l = EventLog::open(d.path());
        for i in 0..5 {
            l.append("info", format!("line {i}"));
        }
        let l = EventLog::open(d.path());
        l.append("warn", "after restart".into());
        let all = l.page(0, 100);
        assert_eq!(all.len(), 6);
        assert_eq!(all[5].seq, 6);
        let p = l.page(4, 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].message, "line 4");
    }
}
