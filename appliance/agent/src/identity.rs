//! TLS identity: owns the agent's key and certificate in the state directory.
//!
//! On first boot the agent creates a P-256 key and a self-signed certificate
//! and keeps them in `<state>/tls/` (key 0600), so the identity survives
//! restarts (and reboots, once the state partition exists). Registration
//! with a management server replaces the certificate with one its CA signed for
//! the same key (see registration.rs); the self-signed one is kept as
//! `self-signed.pem`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The key, certificate and its SHA-256 fingerprint.
#[derive(Debug)]
pub struct Identity {
    pub sha256: String,
    pub created: bool,
}

/// (key, certificate) paths.
pub fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("tls");
    (dir.join("key.pem"), dir.join("cert.pem"))
}

/// Loads the identity, creating it on first boot.
pub fn load_or_create(state_dir: &Path, hostname: &str) -> anyhow::Result<Identity> {
    let (key_path, cert_path) = paths(state_dir);
    let mut created = false;
    if !key_path.exists() || !cert_path.exists() {
        create(&key_path, &cert_path, hostname)?;
        created = true;
    }
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("open {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", cert_path.display()))?;
    PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("parse {}", key_path.display()))?;
    let first = certs
        .first()
        .context("the certificate file holds no certificate")?;
    let sha256 = hex::encode(Sha256::digest(first.as_ref()));
    Ok(Identity { sha256, created })
}

fn create(key_path: &Path, cert_path: &Path, hostname: &str) -> anyhow::Result<()> {
    let dir = key_path.parent().context("key path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let names = vec![hostname.to_string(), "ferry-agent".to_string()];
    let ck = rcgen::generate_simple_self_signed(names)
        .context("generate the self-signed certificate")?;
    write_private(key_path, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, ck.cert.pem())
        .with_context(|| format!("write {}", cert_path.display()))?;
    Ok(())
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "ferry").unwrap();
        assert!(a.created);
        let b = load_or_create(dir.path(), "ferry").unwrap();
        assert!(!b.created);
        assert_eq!(a.sha256, b.sha256);
        let mode = std::fs::metadata(dir.path().join("tls/key.pem")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
