//! Turns a `--source` argument into a disk for the engine: a raw image or block device, a
//! VMDK file (any format the vmdk crate reads, snapshot chains included), or an NBD URI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ferry_archive::{BlockSource, DiskInput, FileSource};

/// Options for NBD sources.
#[derive(Debug, Default, Clone)]
pub struct SourceOptions {
    /// `qemu:dirty-bitmap:<name>` to use as the changed-extent map.
    pub nbd_bitmap: Option<String>,
    /// Directory with `ca-cert.pem` (and optionally `client-cert.pem`/`client-key.pem`).
    pub nbd_tls_dir: Option<PathBuf>,
    /// SHA-256 of the server certificate to pin instead of a CA.
    pub nbd_tls_pin: Option<String>,
}

fn is_nbd(spec: &str) -> bool {
    ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
        .iter()
        .any(|p| spec.starts_with(p))
}

/// Opens a source.
pub async fn open(spec: &str, opts: &SourceOptions) -> anyhow::Result<DiskInput> {
    let (source, name): (Arc<dyn BlockSource>, String) = if is_nbd(spec) {
        let mut copts = ferry_nbd::ClientOptions::default();
        if let Some(pin) = &opts.nbd_tls_pin {
            let pin = ferry_nbd::ClientTls::parse_pin(pin)?;
            copts.tls = Some(ferry_nbd::ClientTls::new(
                ferry_nbd::ServerTrust::Pin(pin),
                None,
            )?);
        } else if let Some(dir) = &opts.nbd_tls_dir {
            copts.tls = Some(ferry_nbd::ClientTls::from_dir(dir)?);
        }
        let src = ferry_nbd::NbdSource::connect(spec, opts.nbd_bitmap.as_deref(), copts)
            .await
            .with_context(|| format!("cannot read NBD source {spec}"))?;
        let uri = ferry_nbd::NbdUri::parse(spec)?;
        let name = match uri.export.as_str() {
            "" => "nbd-disk".to_string(),
            e => e.rsplit('/').next().unwrap_or(e).to_string(),
        };
        (Arc::new(src), name)
    } else {
        let path = Path::new(spec);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string());
        let is_vmdk = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("vmdk"));
        if is_vmdk {
            let src = ferry_vmdk::VmdkSource::open_path(path)
                .await
                .with_context(|| format!("cannot read VMDK source {spec}"))?;
            (Arc::new(src), name)
        } else {
            let src =
                FileSource::open(path).with_context(|| format!("cannot read source {spec}"))?;
            (Arc::new(src), name)
        }
    };
    Ok(DiskInput {
        name,
        source,
        changed: None,
        change_id: None,
        meta: BTreeMap::from([("source".to_string(), spec.to_string())]),
    })
}
