//! `/v1` request and response bodies. See the crate docs for which endpoint uses which.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, for a human.
    pub error: String,
}

// ---------------------------------------------------------------- registration

/// What an agent says about itself when it enrolls, comes online, or changes address.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentHello {
    /// Hostname of the appliance.
    pub hostname: String,
    /// Agent version.
    pub version: String,
    /// Non-loopback addresses of the appliance.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Port of the agent API.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `host:port` at which the management server should reach the agent, when the
    /// addresses are not reachable (NAT); overrides `addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// What kind of peer this is; older agents send none and are agents.
    #[serde(default)]
    pub role: PeerRole,
}

/// The kind of a registered peer: a backup agent (appliance) or a storage node.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PeerRole {
    /// A `ferry-agent` appliance.
    #[default]
    Agent,
    /// A `ferry-node` storage node.
    Node,
}

impl PeerRole {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Agent => "agent",
            PeerRole::Node => "node",
        }
    }
}

fn default_port() -> u16 {
    9876
}

/// `POST /v1/enroll`: agent-initiated registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnrollRequest {
    /// The one-time enrollment token (`ID.SECRET`, without the CA pin part).
    pub token: String,
    /// PKCS#10 request for the agent's key.
    pub csr_pem: String,
    /// The agent.
    pub hello: AgentHello,
}

/// The answer to a successful enrollment or pairing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnrollResponse {
    /// The id the management server gave the agent.
    pub agent_id: String,
    /// The agent's certificate, signed by the management CA.
    pub cert_pem: String,
    /// The management CA certificate.
    pub ca_pem: String,
    /// A license, when the management server has a license service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<License>,
}

/// `POST /v1/pair/csr` on the agent: management-initiated registration, step 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairCsrRequest {
    /// The pairing code shown on the appliance console.
    pub code: String,
}

/// The agent's CSR for pairing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairCsrResponse {
    /// PKCS#10 request for the agent's new key.
    pub csr_pem: String,
    /// The agent.
    pub hello: AgentHello,
}

/// `POST /v1/pair/complete` on the agent: step 2.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairCompleteRequest {
    /// The pairing code again.
    pub code: String,
    /// The signed certificate, CA and id.
    pub enrolled: EnrollResponse,
    /// Where the agent reaches the management server (`https://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_url: Option<String>,
}

/// The agent's registration state (in its status, and the answer to pairing).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registration {
    /// True once the agent holds a management-signed certificate.
    pub registered: bool,
    /// The id given by the management server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Where the agent reaches the management server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_url: Option<String>,
    /// SHA-256 of the management CA certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_ca_sha256: Option<String>,
    /// SHA-256 of the agent's own certificate (hex).
    pub cert_sha256: String,
    /// True while a pairing code is shown on the console (unregistered only).
    #[serde(default)]
    pub pairing: bool,
    /// The last registration error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `POST /v1/agent/hello` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloResponse {
    /// The agent id as the server knows it.
    pub agent_id: String,
    /// The address the server will use from now on.
    pub address: String,
}

// ---------------------------------------------------------------- admin

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenCreate {
    /// Lifetime.
    pub ttl_seconds: u64,
    /// Free text kept with the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A new enrollment token. The secret is shown once and stored only as a hash.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenCreated {
    /// Token id (not secret).
    pub id: String,
    /// What to give the appliance: `ID.SECRET.CA_SHA256`.
    pub token: String,
    /// Expiry.
    pub expires_unix: i64,
}

impl std::fmt::Debug for TokenCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCreated")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

/// State of an agent in the registry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Registered and allowed.
    Active,
    /// Revoked: the server refuses it.
    Revoked,
}

impl AgentState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::Revoked => "revoked",
        }
    }
}

/// An agent in the management server's registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// `host:port` the server uses to reach it.
    pub address: String,
    /// Addresses it reported.
    pub addresses: Vec<String>,
    /// Agent version.
    pub version: String,
    /// SHA-256 of its certificate.
    pub cert_sha256: String,
    /// Active or revoked.
    pub state: AgentState,
    /// When it registered.
    pub registered_unix: i64,
    /// Last contact either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_unix: Option<i64>,
    /// Agent or storage node.
    #[serde(default)]
    pub role: PeerRole,
}

/// `POST /v1/agent/renew` on the management server, over mTLS with the caller's current
/// certificate: a CSR for the key the renewed certificate is for (the same key, or a new one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenewRequest {
    /// PKCS#10 request (PEM); its subject is ignored, the CA names the holder.
    pub csr_pem: String,
}

/// The answer to [`RenewRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenewResponse {
    /// The new certificate (PEM), for the same id and role.
    pub cert_pem: String,
    /// The management CA (PEM).
    pub ca_pem: String,
}

/// `POST /v1/agents/pair`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairRequest {
    /// `host:port` of the agent.
    pub address: String,
    /// The code on its console.
    pub code: String,
}

// ---------------------------------------------------------------- plans

/// A credential referenced by name from a plan. Never returned by any endpoint and
/// never printed: `Debug` redacts it.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// User name (vCenter, SFTP/FTP user when not in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Storage secrets by the names of the storage secrets file (`access_key_id`,
    /// `secret_access_key`, `host_fingerprint`, `key_passphrase`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// `PUT /v1/plans/{name}` and `PUT /v1/agents/{id}/plans/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanPush {
    /// The plan.
    pub plan: Plan,
    /// Every credential the plan names.
    #[serde(default)]
    pub credentials: BTreeMap<String, Credential>,
}

/// A plan as listed: no credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanSummary {
    /// The plan (credential references only).
    pub plan: Plan,
    /// Names of the credentials held for it.
    pub credentials: Vec<String>,
    /// When it was stored.
    pub updated_unix: i64,
    /// Next scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_unix: Option<i64>,
    /// Last scheduled time that was run or recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_unix: Option<i64>,
}

// ---------------------------------------------------------------- jobs

/// Why a job ran.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// On schedule.
    Scheduled,
    /// At boot, for a run missed while the agent was off.
    Missed,
    /// `run-now`.
    Manual,
}

/// Outcome of a job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Still running.
    Running,
    /// Every VM backed up (and verified when asked).
    Succeeded,
    /// Some VMs failed.
    Partial,
    /// Nothing was backed up.
    Failed,
    /// Not started: no license, or the plan is unusable.
    Refused,
}

/// One VM of a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VmResult {
    /// VM name.
    pub vm: String,
    /// Backed up.
    pub ok: bool,
    /// The restore point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// True when at least one disk was read as a CBT incremental.
    #[serde(default)]
    pub incremental: bool,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Plain bytes of chunks new to the repository.
    pub bytes_new: u64,
    /// Bytes written to storage.
    pub bytes_stored: u64,
    /// Wall time.
    pub duration_seconds: f64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Fallbacks and facts worth a line in the job log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A job record. `seq` orders records on one agent and is the collection cursor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// Cursor: increases by one per finished job on the agent.
    pub seq: u64,
    /// Job id.
    pub id: String,
    /// Plan name.
    pub plan: String,
    /// Why it ran.
    pub trigger: Trigger,
    /// The schedule time it stands for (scheduled and missed runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_unix: Option<i64>,
    /// Start.
    pub started_unix: i64,
    /// End.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<i64>,
    /// Outcome.
    pub state: JobState,
    /// Per VM.
    #[serde(default)]
    pub vms: Vec<VmResult>,
    /// Restore points removed by retention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// Verify result, when the plan asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// A job-level error (connection, license, retention, verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/jobs` on the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobPage {
    /// Records with `seq > after`, oldest first.
    pub records: Vec<JobRecord>,
    /// Cursor for the next call.
    pub next: u64,
}

/// `POST /v1/plans/{name}/run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobStarted {
    /// The job.
    pub job_id: String,
}

/// One line of a progress stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// The job started with these VMs.
    Started {
        /// Job id.
        job_id: String,
        /// Plan.
        plan: String,
        /// VMs selected.
        vms: Vec<String>,
    },
    /// Byte counters of the VM being backed up.
    Progress {
        /// VM.
        vm: String,
        /// Bytes to cover.
        total: u64,
        /// Bytes covered.
        done: u64,
        /// Bytes read.
        read: u64,
        /// Bytes stored.
        stored: u64,
    },
    /// A VM finished.
    VmDone(VmResult),
    /// The job ended.
    Done(JobRecord),
}

/// `GET /v1/events` entry: one line of the agent's persistent log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogEntry {
    /// Cursor.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// `error`, `warn`, `info`, `debug`.
    pub level: String,
    /// The message.
    pub message: String,
}

/// `GET /v1/events` on the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogPage {
    /// Entries with `seq > after`, oldest first.
    pub entries: Vec<LogEntry>,
    /// Cursor for the next call.
    pub next: u64,
}

/// A job record as collected by the management server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CollectedJob {
    /// Agent.
    pub agent_id: String,
    /// The record.
    pub record: JobRecord,
}

/// A log line as collected by the management server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CollectedLog {
    /// Agent.
    pub agent_id: String,
    /// The line.
    pub entry: LogEntry,
}

/// `POST /v1/agents/{id}/collect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CollectReport {
    /// New job records stored.
    pub jobs: u64,
    /// New log lines stored.
    pub logs: u64,
}

// ---------------------------------------------------------------- licensing

/// What a license grants. Signed as its canonical JSON (this struct serialised by
/// serde_json, fields in this order).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LicenseTerms {
    /// License id.
    pub id: String,
    /// Who holds it.
    pub licensee: String,
    /// Protected ESX hosts.
    pub hosts: u32,
    /// Protected CPU sockets.
    pub sockets: u32,
    /// Issued.
    pub issued_unix: i64,
    /// Expiry.
    pub expires_unix: i64,
    /// The agent it was issued to, when issued by a license service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// A signed license (ed25519 over the canonical JSON of `terms`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct License {
    /// The terms.
    pub terms: LicenseTerms,
    /// Public key of the issuer (hex, 32 bytes).
    pub issuer_key: String,
    /// Signature (hex, 64 bytes).
    pub signature: String,
}

/// License state in the agent's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LicenseState {
    /// False when licensing is off: jobs need no license.
    pub required: bool,
    /// A valid license is installed.
    pub valid: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The terms of the installed license.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<LicenseTerms>,
}

// ---------------------------------------------------------------- catalog

/// One restore point in the management server's catalog: a node's
/// [`crate::node::CatalogEntry`] and the node it is on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogPoint {
    /// Id of the storage node in the registry.
    pub node_id: String,
    /// Its hostname.
    pub node_hostname: String,
    /// The point as the node lists it (vault, id, group, disks, sizes, verify state).
    #[serde(flatten)]
    pub entry: crate::node::CatalogEntry,
}

/// A node whose catalog could not be read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogNodeError {
    /// Node id.
    pub node_id: String,
    /// Its hostname.
    pub node_hostname: String,
    /// Where the server tried to reach it.
    pub address: String,
    /// What failed.
    pub error: String,
}

/// `GET /v1/catalog` on the management server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Catalog {
    /// Restore points of every node that answered, by node, vault, group and time.
    pub points: Vec<CatalogPoint>,
    /// Nodes that did not answer (down, refused, timed out).
    #[serde(default)]
    pub errors: Vec<CatalogNodeError>,
}
