//! Published state: owns `/run/ferry/init.json`, init's view of the
//! appliance that the agent merges into `GET /v1/status`.
//!
//! Each subsystem updates its part; every update rewrites the file
//! atomically (write a temporary file, then rename), so the agent never reads
//! half a document.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::{Config, SettingView};

/// Path the agent reads.
pub const INIT_STATE_FILE: &str = "/run/ferry/init.json";

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetState {
    pub mode: String,
    pub interface: Option<String>,
    /// `configuring`, `bound`, `static`, `no-link`, `failed: ...`
    pub state: String,
    pub address: Option<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    pub ntp_from_dhcp: Vec<String>,
    pub lease_seconds: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TimeState {
    /// `unsynchronized`, `synchronized`, `no-servers`
    pub state: String,
    pub servers: Vec<String>,
    pub server: Option<String>,
    pub last_offset_ms: Option<f64>,
    pub last_sync_unix: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentState {
    pub starts: u32,
    pub pid: Option<i32>,
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Doc {
    config: BTreeMap<&'static str, SettingView>,
    config_errors: Vec<String>,
    modules_loaded: Vec<String>,
    network: NetState,
    time: TimeState,
    agent: AgentState,
    state_fs: crate::statefs::StateInfo,
}

/// Shared handle to the published document.
#[derive(Debug, Clone)]
pub struct Published {
    doc: Arc<Mutex<Doc>>,
    path: PathBuf,
}

impl Published {
    pub fn new(cfg: &Config) -> Self {
        let doc = Doc {
            config: cfg.view(),
            config_errors: cfg.errors.clone(),
            time: TimeState {
                state: "unsynchronized".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = Self {
            doc: Arc::new(Mutex::new(doc)),
            path: PathBuf::from(INIT_STATE_FILE),
        };
        p.write();
        p
    }

    fn update(&self, f: impl FnOnce(&mut Doc)) {
        {
            let mut doc = self.doc.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut doc);
        }
        self.write();
    }

    pub fn net(&self, f: impl FnOnce(&mut NetState)) {
        self.update(|d| f(&mut d.network));
    }

    pub fn time(&self, f: impl FnOnce(&mut TimeState)) {
        self.update(|d| f(&mut d.time));
    }

    pub fn agent(&self, f: impl FnOnce(&mut AgentState)) {
        self.update(|d| f(&mut d.agent));
    }

    pub fn state_fs(&self, info: crate::statefs::StateInfo) {
        self.update(|d| d.state_fs = info);
    }

    pub fn modules(&self, loaded: Vec<String>) {
        self.update(|d| d.modules_loaded = loaded);
    }

    fn write(&self) {
        let json = {
            let doc = self.doc.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec_pretty(&*doc)
        };
        let Ok(json) = json else { return };
        let tmp = self.path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.path))
        {
            tracing::debug!("cannot publish {}: {e}", self.path.display());
        }
    }
}
