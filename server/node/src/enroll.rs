//! Enrollment with the management server: the agent flow of `ferry-mgmt`
//! (`POST /v1/enroll` with a one-time token `ID.SECRET.CA_SHA256`), run by an admin on the
//! node. The node generates its key, sends a CSR, and stores the certificate the management
//! CA signed and the CA itself in its state directory, with the management server's address
//! (`mgmt.url`, where the node fetches the revocation list).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ferry_api::v1::{AgentHello, EnrollRequest, EnrollResponse};
use ferry_tls::trust::{client_config, ServerTrust};

use crate::{tls_files, NodeError};

fn write_file(path: &Path, data: &str, mode: u32) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| NodeError::Io(format!("{}: {e}", tmp.display())))?;
    f.write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| NodeError::Io(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| NodeError::Io(format!("{}: {e}", path.display())))
}

/// Stores a certificate chain, key and CA as the node's TLS identity.
pub fn install_identity(
    state: &Path,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<(), NodeError> {
    std::fs::create_dir_all(state)
        .map_err(|e| NodeError::Io(format!("{}: {e}", state.display())))?;
    let (cert, key, ca) = tls_files(state);
    write_file(&key, key_pem, 0o600)?;
    write_file(&cert, &format!("{cert_pem}{ca_pem}"), 0o644)?;
    write_file(&ca, ca_pem, 0o644)
}

/// Enrolls with the management server at `mgmt` (`host:port` or `https://host:port`) using
/// `token`; returns the node id the server gave.
pub async fn enroll(
    state: &Path,
    mgmt: &str,
    token: &str,
    hostname: &str,
    port: u16,
) -> Result<String, NodeError> {
    let mut parts = token.trim().split('.');
    let (Some(id), Some(secret), Some(pin), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NodeError::Invalid(
            "the token must be ID.SECRET.CA_SHA256 (as `ferry mgmt token create` prints it)".into(),
        ));
    };
    let (key_pem, csr_pem) = ferry_tls::pki::new_key_and_csr(&format!("ferry node {hostname}"))?;
    let cfg = client_config(
        ServerTrust::CaPin {
            sha256: pin.to_string(),
            name: ferry_api::MGMT_SERVER_NAME.into(),
        },
        None,
    )?;
    let client = ferry_tls::http_client(cfg)?;
    let base = if mgmt.starts_with("https://") {
        mgmt.trim_end_matches('/').to_string()
    } else {
        format!("https://{mgmt}")
    };
    let req = EnrollRequest {
        token: format!("{id}.{secret}"),
        csr_pem,
        hello: AgentHello {
            hostname: hostname.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            addresses: Vec::new(),
            port,
            advertise: None,
            role: ferry_api::v1::PeerRole::Node,
        },
    };
    let resp = client
        .post(format!("{base}/v1/enroll"))
        .json(&req)
        .send()
        .await
        .map_err(|e| NodeError::Io(format!("cannot reach {base}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(NodeError::Invalid(format!(
            "enrollment refused ({status}): {text}"
        )));
    }
    let r: EnrollResponse = resp
        .json()
        .await
        .map_err(|e| NodeError::Invalid(format!("enrollment answer: {e}")))?;
    install_identity(state, &r.cert_pem, &key_pem, &r.ca_pem)?;
    write_file(
        &state.join(crate::MGMT_URL_FILE),
        &format!("{base}\n"),
        0o644,
    )?;
    Ok(r.agent_id)
}
