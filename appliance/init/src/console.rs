//! Console and log ring: owns where init's log lines go.
//!
//! Every tracing event is written to the console (the kernel's `/dev/console`
//! until `/dev` is mounted, then every active console device, so serial and
//! VGA both show it) and to the log ring under `/run/ferry`, which the agent
//! serves as `GET /v1/logs`. The ring is two files, `log` and `log.1`: when
//! `log` passes [`RING_FILE_MAX`] it is renamed to `log.1`, so at most twice
//! that much is kept and readers concatenate `log.1` then `log`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

/// Directory of the log ring; the agent reads it from the same path.
pub const RING_DIR: &str = "/run/ferry";
/// Size at which the current ring file is rotated.
pub const RING_FILE_MAX: u64 = 512 * 1024;

#[derive(Debug, Default)]
struct Sinks {
    /// Console devices opened after `/dev` is mounted; empty means stderr.
    consoles: Vec<File>,
    ring: Option<Ring>,
}

#[derive(Debug)]
struct Ring {
    dir: PathBuf,
    file: File,
    len: u64,
}

impl Ring {
    fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            len,
        })
    }

    fn write(&mut self, buf: &[u8]) {
        if self.len >= RING_FILE_MAX {
            let _ = std::fs::rename(self.dir.join("log"), self.dir.join("log.1"));
            if let Ok(file) = OpenOptions::new()
                .create(true)
                .append(true)
                .truncate(false)
                .open(self.dir.join("log"))
            {
                self.file = file;
                self.len = 0;
            }
        }
        if self.file.write_all(buf).is_ok() {
            self.len += buf.len() as u64;
        }
    }
}

/// Handle to the log sinks and the runtime log level.
#[derive(Clone)]
pub struct Console {
    sinks: Arc<Mutex<Sinks>>,
    level: reload::Handle<LevelFilter, Registry>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// One event's writer: holds the lock so lines from threads never interleave.
pub struct TeeWriter<'a> {
    sinks: MutexGuard<'a, Sinks>,
}

impl Write for TeeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.sinks.consoles.is_empty() {
            let _ = io::stderr().write_all(buf);
        } else {
            for c in &mut self.sinks.consoles {
                let _ = c.write_all(buf);
            }
        }
        if let Some(ring) = self.sinks.ring.as_mut() {
            ring.write(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
struct Maker(Arc<Mutex<Sinks>>);

impl<'a> MakeWriter<'a> for Maker {
    type Writer = TeeWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        // A poisoned lock only means another thread panicked mid-write; the
        // sinks are still usable.
        let sinks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        TeeWriter { sinks }
    }
}

impl Console {
    /// Installs the global tracing subscriber, logging to stderr (the kernel
    /// console) at `info` until [`Console::attach_devices`] is called.
    pub fn init() -> Self {
        let sinks = Arc::new(Mutex::new(Sinks::default()));
        let (filter, level) = reload::Layer::new(LevelFilter::INFO);
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_writer(Maker(sinks.clone()));
        // try_init fails only if a subscriber exists already; then keep it.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
        Self { sinks, level }
    }

    fn lock(&self) -> MutexGuard<'_, Sinks> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens every active console device (serial and VGA) and the log ring.
    /// Called once `/dev`, `/sys` and `/run` are mounted.
    pub fn attach_devices(&self) {
        let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
        let mut consoles = Vec::new();
        for name in active.split_whitespace() {
            match OpenOptions::new()
                .write(true)
                .custom_flags_noctty()
                .open(format!("/dev/{name}"))
            {
                Ok(f) => consoles.push(f),
                Err(e) => eprintln!("ferry-init: cannot open console /dev/{name}: {e}"),
            }
        }
        let ring = Ring::open(Path::new(RING_DIR));
        let mut sinks = self.lock();
        sinks.consoles = consoles;
        match ring {
            Ok(r) => sinks.ring = Some(r),
            Err(e) => eprintln!("ferry-init: cannot open the log ring in {RING_DIR}: {e}"),
        }
    }

    /// Closes console devices and the ring, falling back to stderr, so that
    /// `/dev` and `/run` can be unmounted at shutdown.
    pub fn detach_devices(&self) {
        let mut sinks = self.lock();
        sinks.consoles.clear();
        sinks.ring = None;
    }

    /// Changes the log level at run time (from config).
    pub fn set_level(&self, level: LevelFilter) {
        if let Err(e) = self.level.modify(|l| *l = level) {
            tracing::warn!("cannot change the log level: {e}");
        }
    }
}

/// Small extension so console opens never make a tty our controlling tty.
trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// Prints a message straight to the console, bypassing tracing; used for
/// fatal errors when the subscriber may be unusable.
pub fn emergency(msg: &str) {
    let text = format!("\n*** ferry-init: {msg}\n");
    let _ = io::stderr().write_all(text.as_bytes());
}
