//! The agent's shared state: registration, plans, jobs, license, event log, TLS config.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_api::v1::Registration;
use tokio::sync::{watch, Notify};

use crate::events::EventLog;
use crate::jobs::JobStore;
use crate::license::LicenseStore;
use crate::pairing::Pairing;
use crate::plans::PlanStore;
use crate::revocation::RevocationStore;

/// Everything the API handlers and background tasks share.
#[derive(Debug)]
pub struct Agent {
    pub state_dir: PathBuf,
    pub hostname: String,
    /// Port of the API (told to the management server).
    pub port: u16,
    /// `host:port` to tell the management server instead of the addresses (NAT).
    pub advertise: Option<String>,
    pub debug: bool,
    pub events: Arc<EventLog>,
    pub reg: Mutex<Registration>,
    /// The pairing code shown on the console, its expiry and the attempt counters.
    pub pairing: Pairing,
    pub tls_tx: watch::Sender<Arc<rustls::ServerConfig>>,
    pub plans: PlanStore,
    pub jobs: JobStore,
    pub license: LicenseStore,
    /// Certificates the management CA revoked.
    pub revoked: RevocationStore,
    /// Wakes the hello loop (after registration).
    pub hello_now: Notify,
}

impl Agent {
    /// True once registered.
    pub fn registered(&self) -> bool {
        self.reg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .registered
    }
}
