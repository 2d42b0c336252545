//! Ferry's management protocol on TCP 9876: the versioned (`/v1`) wire types that the
//! agent, the management server, the storage node and the CLI share, and backup plans.
//!
//! # What this crate owns
//! - [`v1`]: every request and response body, as serde types (JSON on the wire);
//! - [`plan`]: the declarative backup plan (TOML or JSON), its parser and validation, with
//!   errors that name the field;
//! - [`parse_body`]: the one bounded entry point the servers use to decode a request body
//!   (also the fuzz target's entry point).
//!
//! It deliberately has no networking, TLS or storage code: the agent (`ferry-agent`), the
//! management server (`ferry-mgmt`) and the TLS helpers (`ferry-tls`) own those.
//!
//! # Transport
//! Every connection is TLS 1.3 (rustls, ring). Bodies are JSON (`application/json`) unless
//! said otherwise, at most [`MAX_BODY`] bytes; a larger body gets 413, a malformed one 400
//! or 422, always with an [`v1::ApiError`] body, and the service stays up. Times are Unix
//! seconds (UTC) unless the field name says `_ms`. Certificates and CSRs are PEM.
//!
//! # Agent endpoints (`ferry-agent`, port 9876)
//! Before registration the agent serves with a self-signed certificate and asks for no
//! client certificate. After registration it serves with its management-signed certificate
//! and accepts only clients whose certificate the management CA signed (the management
//! server itself and admins' CLI certificates).
//!
//! | method and path | body → answer | notes |
//! |---|---|---|
//! | `GET /v1/status` | → JSON status | version, uptime, addresses, network/time state, settings (secrets redacted), `registration` ([`v1::Registration`]), `license` ([`v1::LicenseState`]) |
//! | `GET /v1/logs?lines=N` | → text | the console log ring (init and agent) |
//! | `POST /v1/pair/csr` | [`v1::PairCsrRequest`] → [`v1::PairCsrResponse`] | unregistered only; the code shown on the console; 403 on a wrong code |
//! | `POST /v1/pair/complete` | [`v1::PairCompleteRequest`] → [`v1::Registration`] | unregistered only; installs the certificate, the CA, the agent id |
//! | `GET /v1/plans` | → `[`[`v1::PlanSummary`]`]` | plans without credentials |
//! | `PUT /v1/plans/{name}` | [`v1::PlanPush`] → [`v1::PlanSummary`] | stores plan and credentials (0600) and schedules it |
//! | `DELETE /v1/plans/{name}` | → 204 | |
//! | `POST /v1/plans/{name}/run` | → [`v1::JobStarted`] | runs the plan now |
//! | `GET /v1/jobs?after=SEQ&limit=N` | → [`v1::JobPage`] | finished job records with `seq > after`, oldest first |
//! | `GET /v1/jobs/{id}/progress` | → NDJSON of [`v1::ProgressEvent`] | streams until the job ends; ends with `done` |
//! | `GET /v1/events?after=SEQ&limit=N` | → [`v1::LogPage`] | the agent's persistent log, by cursor |
//! | `PUT /v1/license` | [`v1::License`] → [`v1::LicenseState`] | installs a signed license |
//! | `PUT /v1/revocations` | `ferry_tls::revocation::SignedRevocations` → version held, count | the management server only; CA-signed, not older than the list held; kept in the state dir; certificates on it get 403 |
//! | `GET /v1/revocations` | → version held, count | |
//!
//! # Management server endpoints (`ferry-mgmt`)
//! The server presents a certificate signed by its own CA for the name [`MGMT_SERVER_NAME`].
//! A client certificate is optional at the TLS layer; each route checks the caller's role
//! by the SHA-256 of its certificate in the server's registry (agent, admin, or none).
//!
//! | method and path | caller | body → answer |
//! |---|---|---|
//! | `POST /v1/enroll` | anyone with a token | [`v1::EnrollRequest`] → [`v1::EnrollResponse`]; 403 for a wrong, spent or expired token |
//! | `POST /v1/agent/hello` | agent | [`v1::AgentHello`] → [`v1::HelloResponse`]; online or address change; 403 when revoked |
//! | `GET /v1/agent/license` | agent | → [`v1::License`] (renewal) |
//! | `POST /v1/tokens` | admin | [`v1::TokenCreate`] → [`v1::TokenCreated`] |
//! | `GET /v1/agents` | admin | → `[`[`v1::AgentInfo`]`]` |
//! | `POST /v1/agents/pair` | admin | [`v1::PairRequest`] → [`v1::AgentInfo`]; the server connects to the agent |
//! | `POST /v1/agents/{id}/revoke` | admin | → [`v1::AgentInfo`]; the revocation list is pushed to agents |
//! | `GET /v1/agent/revocations` | agent | → `ferry_tls::revocation::SignedRevocations` (fetched after each hello) |
//! | `GET /v1/admins` | admin | → `[ferry_mgmt::wire::AdminInfo]` |
//! | `POST /v1/admins` | admin | `ferry_mgmt::wire::AdminCreate` (name, CSR) → `AdminCreated` (certificate, CA) |
//! | `POST /v1/admins/{name}/revoke` | admin | → `AdminInfo`; refused for the last active admin; the list is pushed to agents |
//! | `PUT /v1/agents/{id}/plans/{name}` | admin | [`v1::PlanPush`] → [`v1::PlanSummary`]; stored, then pushed to the agent |
//! | `GET /v1/agents/{id}/plans` | admin | → `[`[`v1::PlanSummary`]`]` |
//! | `POST /v1/agents/{id}/plans/{name}/run` | admin | → NDJSON of [`v1::ProgressEvent`], proxied from the agent |
//! | `POST /v1/agents/{id}/collect` | admin | → [`v1::CollectReport`]; pulls jobs and logs now |
//! | `GET /v1/jobs?agent=ID&limit=N` | admin | → `[`[`v1::CollectedJob`]`]`, newest first |
//! | `GET /v1/jobs/{agent}/{id}` | admin | → [`v1::CollectedJob`] |
//! | `GET /v1/logs?agent=ID&after=N&limit=N` | admin | → `[`[`v1::CollectedLog`]`]` |
//! | `GET /v1/catalog?node=ID&group=NAME` | admin | → [`v1::Catalog`]: every active storage node's `GET /v1/catalog`, asked with the server's certificate (per-node timeout); nodes that fail are listed in `errors` |
//!
//! Enrollment and hello carry a `role` ([`v1::PeerRole`]: `agent`, the default, or `node`);
//! storage nodes are registered like agents, listed with `role: node`, and revoked the same
//! way. The server does not push plans or collect jobs from nodes.
//!
//! # Storage node endpoints (`ferry-node`)
//! Vaults, chunks, commits, the catalog and node jobs: see [`node`].

pub mod node;
pub mod plan;
pub mod v1;

pub use plan::{Plan, PlanError};

/// Largest request body any endpoint accepts.
pub const MAX_BODY: usize = 1 << 20;

/// TLS server name in the management server's certificate; clients connect with it
/// whatever address they use.
pub const MGMT_SERVER_NAME: &str = "mgmt.ferry.internal";

/// TLS server name in an agent's certificate.
pub fn agent_server_name(agent_id: &str) -> String {
    format!("agent-{agent_id}.ferry.internal")
}

/// Errors decoding a request body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than [`MAX_BODY`].
    #[error("request body is {0} bytes; the limit is {MAX_BODY}")]
    TooLarge(usize),
    /// The body is not the expected JSON.
    #[error("malformed request body at {path}: {message}")]
    Malformed {
        /// Where in the document.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Decodes a JSON request body, bounded, naming the path of the first bad field.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    if body.len() > MAX_BODY {
        return Err(BodyError::TooLarge(body.len()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| BodyError::Malformed {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    de.end().map_err(|e| BodyError::Malformed {
        path: ".".into(),
        message: e.to_string(),
    })?;
    Ok(v)
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_bounded_and_errors_name_the_path() {
        let big = vec![b' '; MAX_BODY + 1];
        assert!(matches!(
            parse_body::<v1::TokenCreate>(&big),
            Err(BodyError::TooLarge(_))
        ));
        let e = parse_body::<v1::TokenCreate>(br#"{"ttl_seconds": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("ttl_seconds"), "{e}");
        let t: v1::TokenCreate = parse_body(br#"{"ttl_seconds": 60}"#).unwrap();
        assert_eq!(t.ttl_seconds, 60);
        assert!(parse_body::<v1::TokenCreate>(br#"{"ttl_seconds": 60} x"#).is_err());
    }
}
