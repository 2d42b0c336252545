//! Shutdown: owns the shutdown triggers and the ordered power-off/reboot.
//!
//! Triggers: SIGTERM and SIGPWR power off; SIGINT reboots (the kernel sends
//! it to PID 1 on Ctrl-Alt-Del once [`disable_cad`] has run); the ACPI power
//! button (VMware "Shut Down Guest" without tools, "Power Off" with a soft
//! power op, QEMU `system_powerdown`) powers off. It arrives as `KEY_POWER` on
//! the input device that the `button` module creates, read through evdev.
//!
//! Order: stop the agent (SIGTERM, then SIGKILL after a timeout), terminate
//! any other process, sync, unmount everything init mounted, sync, then
//! `reboot(2)`. A fatal error anywhere in init ends in [`fatal`], which
//! prints a clear message and reboots after a delay: PID 1 never exits.

use std::io::Read;
use std::time::Duration;

use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::console::{emergency, Console};

/// Seconds a fatal error stays on the console before the reboot.
pub const FATAL_REBOOT_DELAY: Duration = Duration::from_secs(15);

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: timeval (16) + type (2) + code (2) + value (4).
const INPUT_EVENT_SIZE: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
}

/// Makes the kernel send SIGINT to init on Ctrl-Alt-Del instead of
/// rebooting on the spot.
pub fn disable_cad() {
    if let Err(e) = set_cad_enabled(false) {
        tracing::warn!("cannot disable Ctrl-Alt-Del reboot: {e}");
    }
}

/// Shutdown requests from signals and power buttons.
#[derive(Debug)]
pub struct Triggers {
    rx: mpsc::Receiver<(Action, String)>,
    tx: mpsc::Sender<(Action, String)>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Triggers {
    /// Installs the signal handlers. Call early, before anything can send
    /// SIGTERM, so a signal is never lost.
    pub fn install() -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(8);
        for (kind, action, name) in [
            (SignalKind::terminate(), Action::PowerOff, "SIGTERM"),
            (
                SignalKind::from_raw(libc::SIGPWR),
                Action::PowerOff,
                "SIGPWR",
            ),
            (
                SignalKind::interrupt(),
                Action::Reboot,
                "SIGINT (Ctrl-Alt-Del)",
            ),
        ] {
            let mut s = signal(kind)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let _ = tx.send((action, name.to_string())).await;
                }
            });
        }
        Ok(Self {
            rx,
            tx,
            watchers: Vec::new(),
        })
    }

    /// Watches every evdev device that has KEY_POWER. Call after modules
    /// are loaded (`button` and `evdev` create the devices); waits up to 2 s
    /// for devtmpfs to show them.
    pub async fn watch_power_buttons(&mut self) {
        for _ in 0..20 {
            let found = power_button_devices();
            if !found.is_empty() {
                for path in found {
                    match watch_device(&path, self.tx.clone()) {
                        Ok(h) => self.watchers.push(h),
                        Err(e) => tracing::warn!("cannot watch {}: {e}", path.display()),
                    }
                }
                tracing::info!("watching {} power button device(s)", self.watchers.len());
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(
            "no input device reports KEY_POWER: the ACPI power button will not be handled"
        );
    }

    /// Stops the input watchers and closes their devices, so `/dev` can be
    /// unmounted.
    pub async fn stop_watchers(&mut self) {
        for h in self.watchers.drain(..) {
            h.abort();
            let _ = h.await;
        }
    }

    /// Waits for the next shutdown request.
    pub async fn next(&mut self) -> (Action, String) {
        match self.rx.recv().await {
            Some(x) => x,
            // Unreachable while self holds a sender; power off to be safe.
            None => (Action::PowerOff, "trigger channel closed".into()),
        }
    }
}

fn power_button_devices() -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir("/dev/input") else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("event") && has_power_key(&name)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Reads input events without blocking a thread, so the task can be aborted
/// (closing the device) at shutdown.
fn watch_device(
    path: &std::path::Path,
    tx: mpsc::Sender<(Action, String)>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: the AsyncFd owns the File, whose descriptor stays open and
    // unchanged until the AsyncFd (and with it the File) is dropped.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(file, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)?;
    let name = path.display().to_string();
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let n = match guard.try_io(|inner| inner.get_ref().read(&mut buf)) {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => n,
                Err(_would_block) => continue,
            };
            for ev in buf[..n].chunks_exact(INPUT_EVENT_SIZE) {
                let ty = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                if ty == EV_KEY && code == KEY_POWER && value == 1 {
                    let _ = tx
                        .send((Action::PowerOff, format!("power button ({name})")))
                        .await;
                }
            }
        }
    }))
}

/// Whether `/sys/class/input/<event>/device/capabilities/key` has KEY_POWER.
/// The bitmap is hex words, most significant first, 64 bits each.
fn has_power_key(event: &str) -> bool {
    let path = format!("/sys/class/input/{event}/device/capabilities/key");
    let Ok(s) = std::fs::read_to_string(path) else {
        return false;
    };
    key_bitmap_has(&s, KEY_POWER)
}

fn key_bitmap_has(bitmap: &str, key: u16) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let idx = usize::from(key / 64);
    let Some(word) = words.len().checked_sub(idx + 1).and_then(|i| words.get(i)) else {
        return false;
    };
    u64::from_str_radix(word, 16)
        .map(|w| w & (1u64 << (key % 64)) != 0)
        .unwrap_or(false)
}

/// Runs the shutdown sequence. Never returns.
pub async fn shutdown(
    action: Action,
    reason: &str,
    triggers: &mut Triggers,
    stop_agent: tokio::sync::watch::Sender<bool>,
    supervisor: tokio::task::JoinHandle<()>,
    console: &Console,
) -> ! {
    let what = match action {
        Action::PowerOff => "power-off",
        Action::Reboot => "reboot",
    };
    tracing::info!("shutdown: {what} requested by {reason}");
    let _ = stop_agent.send(true);
    let limit = crate::supervise::AGENT_STOP_TIMEOUT + Duration::from_secs(5);
    if tokio::time::timeout(limit, supervisor).await.is_err() {
        tracing::warn!(
            "shutdown: the agent supervisor did not finish in {}s",
            limit.as_secs()
        );
    }
    // Anything else still running (there should be nothing) gets a chance.
    if kill(Pid::from_raw(-1), Signal::SIGTERM).is_ok() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
    nix::unistd::sync();
    triggers.stop_watchers().await;
    tracing::info!("shutdown: unmounting filesystems");
    console.detach_devices();
    let busy = crate::mount::unmount_all();
    nix::unistd::sync();
    if busy.is_empty() {
        tracing::info!("shutdown: clean unmount, all filesystems unmounted");
    } else {
        tracing::warn!(
            "shutdown: unclean unmount, detached busy {}",
            busy.join(", ")
        );
    }
    tracing::info!("shutdown: {what} now");
    let mode = match action {
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let err = reboot(mode);
    emergency(&format!("reboot({mode:?}) failed: {err:?}"));
    halt_forever()
}

/// Reports a fatal error on the console and reboots after a delay.
/// Used for errors init cannot recover from and from the panic hook.
pub fn fatal(msg: &str) -> ! {
    emergency(&format!(
        "FATAL: {msg}\n*** The appliance cannot continue and will reboot in {} seconds.",
        FATAL_REBOOT_DELAY.as_secs()
    ));
    std::thread::sleep(FATAL_REBOOT_DELAY);
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_AUTOBOOT);
    emergency(&format!("reboot failed: {err:?}"));
    halt_forever()
}

fn halt_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_key_bitmap() {
        // A real ACPI power button: only KEY_POWER (bit 116) set.
        assert!(key_bitmap_has("10000000000000 0\n", KEY_POWER));
        assert!(!key_bitmap_has("0\n", KEY_POWER));
        assert!(!key_bitmap_has("", KEY_POWER));
    }
}
