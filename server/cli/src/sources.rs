//! Turns a `--source` argument into a disk for the engine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use ferry_archive::{DiskInput, FileSource};

/// Opens a source: a raw image or block device path.
pub async fn open(spec: &str) -> anyhow::Result<DiskInput> {
    let path = Path::new(spec);
    let src = FileSource::open(path).with_context(|| format!("cannot read source {spec}"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string());
    Ok(DiskInput {
        name,
        source: Arc::new(src),
        changed: None,
        change_id: None,
        meta: BTreeMap::from([("source".to_string(), spec.to_string())]),
    })
}
