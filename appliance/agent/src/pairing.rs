//! Pairing codes: owns the code an unregistered agent shows on the console, its expiry,
//! its wrong-code count and the per-address limit on attempts.
//!
//! - The code goes to the console device only (`/dev/console`, the VM console in
//!   vCenter), written directly, never through stderr, tracing, the event log, the API or
//!   a file: init copies the agent's stderr into the log ring that `/v1/logs` serves.
//!   Next to it the console shows the SHA-256 of the certificate the agent serves before
//!   registration, which `ferry mgmt agents add` shows too.
//! - A code lasts [`DEFAULT_TTL`]; then, or after [`MAX_FAILURES`] wrong codes, a new one
//!   replaces it on the console.
//! - One source address (an IPv6 /64) gets [`ATTEMPTS_PER_WINDOW`] attempts per
//!   [`WINDOW`]; more get 429, so guessing costs time as well as codes.
//!
//! For tests only (init clears the agent's environment, so the appliance cannot set
//! them): `FERRY_CONSOLE` names the console device (a file in a temporary directory), and
//! `FERRY_PAIRING_TTL` the code's lifetime in seconds.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The console device in the appliance.
pub const CONSOLE: &str = "/dev/console";
/// How long a code is valid.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Wrong codes before the code is replaced.
pub const MAX_FAILURES: u32 = 5;
/// Attempts one address may make per [`WINDOW`].
pub const ATTEMPTS_PER_WINDOW: u32 = 5;
/// The rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past that (after dropping stale ones), new addresses wait.
const MAX_TRACKED: usize = 4096;

/// The outcome of a pairing attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// Wrong, expired, or no code shown.
    Wrong,
    /// Too many attempts from this address.
    Limited,
}

#[derive(Debug)]
struct Code {
    text: String,
    failures: u32,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    code: Option<Code>,
    /// Per address key: window start and attempts in it.
    attempts: HashMap<IpAddr, (Instant, u32)>,
}

/// The pairing code and the attempt counters.
#[derive(Debug)]
pub struct Pairing {
    console: PathBuf,
    ttl: Duration,
    port: u16,
    /// The certificate served before registration (its fingerprint is shown).
    cert_path: PathBuf,
    state: Mutex<State>,
}

impl Pairing {
    /// Console and lifetime from the environment (tests), or the appliance's defaults.
    pub fn from_env(port: u16, cert_path: PathBuf) -> Self {
        let console = std::env::var_os("FERRY_CONSOLE")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(CONSOLE), PathBuf::from);
        let ttl = std::env::var("FERRY_PAIRING_TTL")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(DEFAULT_TTL, Duration::from_secs_f64);
        Self {
            console,
            ttl,
            port,
            cert_path,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shows a new code on the console, replacing any other.
    pub fn renew(&self) {
        let mut st = self.lock();
        self.renew_locked(&mut st);
    }

    fn renew_locked(&self, st: &mut State) {
        let code = new_code();
        // Shown while the lock is held, so the console's last code is the valid one.
        self.show(&code);
        st.code = Some(Code {
            text: code,
            failures: 0,
            expires: Instant::now() + self.ttl,
        });
    }

    fn show(&self, code: &str) {
        let fingerprint = std::fs::read_to_string(&self.cert_path)
            .ok()
            .and_then(|pem| ferry_tls::pem_sha256(&pem).ok())
            .unwrap_or_else(|| "unknown".into());
        let ttl = self.ttl.as_secs();
        let valid = if ttl >= 60 && ttl.is_multiple_of(60) {
            format!("{} min", ttl / 60)
        } else {
            format!("{ttl} s")
        };
        let text = format!(
            "\nferry-agent: PAIRING CODE {code} (valid {valid}; a new code replaces it then, or after {MAX_FAILURES} wrong codes)\n\
             ferry-agent: pair with: ferry mgmt agents add ADDRESS:{} --pairing-code {code}\n\
             ferry-agent: appliance certificate sha256 {fingerprint}\n\
             ferry-agent: (`ferry mgmt agents add` must show the same figure)\n\n",
            self.port
        );
        if let Err(e) = write_console(&self.console, &text) {
            // Never the code itself: this line goes to the log ring.
            tracing::warn!(
                "cannot show the pairing code on {}: {e}; register with an enrollment token instead",
                self.console.display()
            );
        } else {
            tracing::info!(
                "a pairing code is shown on the console {} (certificate sha256 {fingerprint})",
                self.console.display()
            );
        }
    }

    /// Forgets the code (registered).
    pub fn clear(&self) {
        self.lock().code = None;
    }

    /// When the current code expires; `None` when no code is shown.
    pub fn expires(&self) -> Option<Instant> {
        self.lock().code.as_ref().map(|c| c.expires)
    }

    /// Replaces the code if it has expired; false when no code is shown.
    pub fn renew_if_expired(&self) -> bool {
        let mut st = self.lock();
        match &st.code {
            None => false,
            Some(c) => {
                if Instant::now() >= c.expires {
                    tracing::info!("the pairing code expired; a new one is on the console");
                    self.renew_locked(&mut st);
                }
                true
            }
        }
    }

    /// Checks a code from `ip`: the address limit first, then expiry and the code.
    pub fn check(&self, ip: IpAddr, code: &str) -> Check {
        let now = Instant::now();
        let mut st = self.lock();
        if !admit(&mut st.attempts, ferry_tls::serve::address_key(ip), now) {
            tracing::warn!("pairing attempts from {ip} over the limit; refused");
            return Check::Limited;
        }
        let Some(c) = st.code.as_mut() else {
            return Check::Wrong;
        };
        if now >= c.expires {
            tracing::info!(
                "pairing attempt from {ip} with an expired code; a new one is on the console"
            );
            self.renew_locked(&mut st);
            return Check::Wrong;
        }
        if ct_eq(&normalize(&c.text), &normalize(code)) {
            return Check::Ok;
        }
        c.failures += 1;
        let n = c.failures;
        tracing::warn!("wrong pairing code from {ip} ({n} of {MAX_FAILURES})");
        if n >= MAX_FAILURES {
            self.renew_locked(&mut st);
        }
        Check::Wrong
    }
}

/// Counts an attempt from `key`; false when it is over the limit.
fn admit(attempts: &mut HashMap<IpAddr, (Instant, u32)>, key: IpAddr, now: Instant) -> bool {
    if attempts.len() >= MAX_TRACKED {
        attempts.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
    }
    if !attempts.contains_key(&key) && attempts.len() >= MAX_TRACKED {
        return false;
    }
    let e = attempts.entry(key).or_insert((now, 0));
    if now.duration_since(e.0) >= WINDOW {
        *e = (now, 0);
    }
    if e.1 >= ATTEMPTS_PER_WINDOW {
        return false;
    }
    e.1 += 1;
    true
}

/// Writes to the console device directly (no create: a missing device must not turn
/// into a file holding the code).
fn write_console(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.flush()
}

/// A new pairing code: 8 characters that are hard to misread, shown as XXXX-XXXX.
pub fn new_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 8];
    rand::fill(&mut b);
    let s: String = b
        .iter()
        .map(|x| char::from(ALPHABET[usize::from(*x) % ALPHABET.len()]))
        .collect();
    format!("{}-{}", &s[..4], &s[4..])
}

fn normalize(c: &str) -> String {
    c.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_attempts_per_address_per_window() {
        let mut m = HashMap::new();
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..ATTEMPTS_PER_WINDOW {
            assert!(admit(&mut m, a, t));
        }
        assert!(!admit(&mut m, a, t));
        assert!(admit(&mut m, b, t), "another address is not limited");
        assert!(admit(&mut m, a, t + WINDOW), "a new window");
    }

    #[test]
    fn codes_compare_loosely() {
        assert!(ct_eq(&normalize("abcd-efgh"), &normalize("ABCDEFGH")));
        assert!(!ct_eq(&normalize("ABCD-EFGH"), &normalize("ABCD-EFGJ")));
        assert_eq!(new_code().len(), 9);
    }
}
