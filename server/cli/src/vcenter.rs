//! Connecting to vCenter or ESXi from the command line: how to trust its certificate and
//! where the credentials come from (a file or the environment, never the command line).

use anyhow::{bail, Context};
use ferry_vsphere::{Client, ConnectOptions, Credentials, Trust};

use crate::VcenterConn;

/// Logs in to `url` as `conn` says.
pub async fn connect(url: &str, conn: &VcenterConn) -> anyhow::Result<Client> {
    let trust = match (&conn.thumbprint, &conn.ca, &conn.trust_on_first_use) {
        (Some(t), None, None) => Trust::Thumbprint(t.clone()),
        (None, Some(ca), None) => Trust::CaBundle(ca.clone()),
        (None, None, Some(f)) => Trust::TrustOnFirstUse(f.clone()),
        (None, None, None) => bail!(
            "say how to trust {url}: --thumbprint SHA256, --ca BUNDLE, or --trust-on-first-use FILE"
        ),
        _ => bail!("give only one of --thumbprint, --ca and --trust-on-first-use"),
    };
    let creds = match &conn.credentials {
        Some(f) => Credentials::from_file(f)?,
        None => Credentials::from_env("FERRY_VCENTER_USER", "FERRY_VCENTER_PASSWORD")?,
    };
    Client::connect(&ConnectOptions::new(url, creds, trust))
        .await
        .with_context(|| format!("connecting to {url}"))
}
