//! Licensing (optional): a signed license from the management server's license service
//! (acquired at registration, renewed at a hello once past half its life) or given in the config
//! (`FERRY_LICENSE`: the license JSON, with `FERRY_LICENSE_ISSUER`: the issuer's public key
//! in hex). Licensing is required as soon as an issuer is trusted; then jobs without a
//! valid license are refused with the reason. Kept in `<state>/license/`.
//!
//! A license issued to an agent (`terms.agent_id`) is valid only on the agent of that id, as
//! the saved registration names it: one copied from another appliance is refused when
//! installed and reported invalid when found on disk or in the config.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_api::v1::{License, LicenseState, LicenseTerms};

#[derive(Debug, Default)]
struct Inner {
    trusted: Vec<String>,
    license: Option<License>,
}

/// The license state.
#[derive(Debug)]
pub struct LicenseStore {
    dir: PathBuf,
    state_dir: PathBuf,
    inner: Mutex<Inner>,
}

impl LicenseStore {
    /// Loads persisted state plus the config's license and issuer.
    pub fn open(state_dir: &Path) -> LicenseStore {
        let dir = state_dir.join("license");
        let mut inner = Inner::default();
        if let Ok(t) = std::fs::read_to_string(dir.join("issuers")) {
            inner.trusted = t
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
        }
        if let Ok(b) = std::fs::read(dir.join("license.json")) {
            inner.license = serde_json::from_slice(&b).ok();
        }
        if let Ok(k) = std::env::var("FERRY_LICENSE_ISSUER") {
            let k = k.trim().to_lowercase();
            if !k.is_empty() && !inner.trusted.contains(&k) {
                inner.trusted.push(k);
            }
        }
        if let Ok(l) = std::env::var("FERRY_LICENSE") {
            match serde_json::from_str::<License>(&l) {
                Ok(l) => inner.license = Some(l),
                Err(e) => tracing::warn!("the configured license does not parse: {e}"),
            }
        }
        LicenseStore {
            dir,
            state_dir: state_dir.to_path_buf(),
            inner: Mutex::new(inner),
        }
    }

    /// This agent's id from its saved registration (read each time: registration happens
    /// while the agent runs).
    fn own_id(&self) -> Option<String> {
        crate::registration::load(&self.state_dir).map(|(s, _)| s.agent_id)
    }

    fn verify(&self, l: &License, trusted: &[String], now: i64) -> Result<LicenseTerms, String> {
        ferry_tls::license::verify(l, trusted, now, self.own_id().as_deref())
    }

    fn save(&self, i: &Inner) {
        let _ = std::fs::create_dir_all(&self.dir);
        let _ = std::fs::write(self.dir.join("issuers"), i.trusted.join("\n"));
        if let Some(l) = &i.license {
            if let Ok(b) = serde_json::to_vec(l) {
                let _ = std::fs::write(self.dir.join("license.json"), b);
            }
        }
    }

    /// Trusts the issuer of a license that came from the management server over mTLS,
    /// and installs it.
    pub fn install_from_mgmt(&self, l: License) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = l.issuer_key.to_lowercase();
        if !g.trusted.contains(&k) {
            g.trusted.push(k);
        }
        g.license = Some(l);
        self.save(&g);
    }

    /// Installs a license if it verifies against a trusted issuer.
    pub fn install(&self, l: License) -> Result<LicenseState, String> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.verify(&l, &g.trusted, ferry_api::now_unix())?;
        g.license = Some(l);
        self.save(&g);
        drop(g);
        Ok(self.state())
    }

    /// True when the license is from the management server and is past half its life, or
    /// no longer verifies. Hellos come every few minutes; renewing on each would re-issue
    /// licenses that have months to run.
    pub fn wants_renewal(&self) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = g.license.as_ref().filter(|l| l.terms.agent_id.is_some()) else {
            return false;
        };
        let now = ferry_api::now_unix();
        let t = &l.terms;
        let half = t
            .issued_unix
            .saturating_add(t.expires_unix.saturating_sub(t.issued_unix) / 2);
        now >= half || self.verify(l, &g.trusted, now).is_err()
    }

    /// The state for status and for the job gate.
    pub fn state(&self) -> LicenseState {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.trusted.is_empty() {
            return LicenseState {
                required: false,
                valid: false,
                reason: None,
                terms: g.license.as_ref().map(|l| l.terms.clone()),
            };
        }
        match &g.license {
            None => LicenseState {
                required: true,
                valid: false,
                reason: Some("no license installed".into()),
                terms: None,
            },
            Some(l) => match self.verify(l, &g.trusted, ferry_api::now_unix()) {
                Ok(t) => LicenseState {
                    required: true,
                    valid: true,
                    reason: None,
                    terms: Some(t),
                },
                Err(e) => LicenseState {
                    required: true,
                    valid: false,
                    reason: Some(e),
                    terms: Some(l.terms.clone()),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saves a registration as agent `id`, as registration does.
    fn register(state: &Path, id: &str) {
        let d = state.join("mgmt");
        std::fs::create_dir_all(&d).unwrap();
        let saved = crate::registration::Saved {
            agent_id: id.into(),
            mgmt_url: None,
            ca_sha256: String::new(),
            registered_unix: 0,
        };
        std::fs::write(
            d.join("registration.json"),
            serde_json::to_vec(&saved).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("ca.pem"), "").unwrap();
    }

    fn terms(issued: i64, expires: i64) -> LicenseTerms {
        LicenseTerms {
            id: "l1".into(),
            licensee: "test".into(),
            hosts: 1,
            sockets: 2,
            issued_unix: issued,
            expires_unix: expires,
            agent_id: Some("agent-1".into()),
        }
    }

    #[test]
    fn renews_only_past_half_life_or_when_invalid() {
        let dir = tempfile::tempdir().unwrap();
        register(dir.path(), "agent-1");
        let store = LicenseStore::open(dir.path());
        let issuer = ferry_tls::license::Issuer::generate();
        let now = ferry_api::now_unix();
        let day = 86_400;

        store.install_from_mgmt(issuer.sign(terms(now - day, now + 364 * day)).unwrap());
        assert!(!store.wants_renewal(), "a fresh license is not renewed");

        store.install_from_mgmt(issuer.sign(terms(now - 300 * day, now + 65 * day)).unwrap());
        assert!(store.wants_renewal(), "past half its life");

        let mut forged = issuer.sign(terms(now - day, now + 364 * day)).unwrap();
        forged.terms.hosts = 99;
        store.install_from_mgmt(forged);
        assert!(store.wants_renewal(), "a license that does not verify");

        let mut local = issuer.sign(terms(now - 300 * day, now + day)).unwrap();
        local.terms.agent_id = None;
        store.install_from_mgmt(local);
        assert!(
            !store.wants_renewal(),
            "a license from the config has no service"
        );
    }

    #[test]
    fn a_license_of_another_agent_is_not_valid_here() {
        let dir = tempfile::tempdir().unwrap();
        let store = LicenseStore::open(dir.path());
        let issuer = ferry_tls::license::Issuer::generate();
        let now = ferry_api::now_unix();
        store.install_from_mgmt(issuer.sign(terms(now - 60, now + 86_400)).unwrap());
        let st = store.state();
        assert!(!st.valid, "not registered yet: {st:?}");
        register(dir.path(), "agent-2");
        let st = store.state();
        assert!(!st.valid && st.reason.as_deref().unwrap_or("").contains("agent-1"));
        assert!(store.wants_renewal());
        let mut mine = terms(now - 60, now + 86_400);
        mine.agent_id = Some("agent-2".into());
        store.install(issuer.sign(mine).unwrap()).unwrap();
        assert!(store.state().valid);
        let e = store
            .install(issuer.sign(terms(now - 60, now + 86_400)).unwrap())
            .unwrap_err();
        assert!(e.contains("issued to agent agent-1"), "{e}");
        assert_eq!(
            store.state().terms.unwrap().agent_id.as_deref(),
            Some("agent-2")
        );
    }
}
