//! The crate's error type, including typed vim25 faults.

use crate::xml::XmlError;

/// A vim25 fault, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Wrong user name or password.
    InvalidLogin,
    /// No session, or it expired.
    NotAuthenticated,
    /// The object does not exist (any more).
    ManagedObjectNotFound {
        /// The object, as `Type:value`.
        obj: String,
    },
    /// Not allowed in the object's current state.
    InvalidState,
    /// Another task holds the object.
    TaskInProgress,
    /// A parameter was refused (for CBT: a stale or unknown changeId).
    InvalidArgument {
        /// The parameter named by the server.
        property: String,
    },
    /// Any other fault, by its `xsi:type`.
    Other(String),
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultKind::InvalidLogin => f.write_str("InvalidLogin"),
            FaultKind::NotAuthenticated => f.write_str("NotAuthenticated"),
            FaultKind::ManagedObjectNotFound { obj } => write!(f, "ManagedObjectNotFound({obj})"),
            FaultKind::InvalidState => f.write_str("InvalidState"),
            FaultKind::TaskInProgress => f.write_str("TaskInProgress"),
            FaultKind::InvalidArgument { property } => write!(f, "InvalidArgument({property})"),
            FaultKind::Other(t) => f.write_str(t),
        }
    }
}

/// Errors of the vSphere client and of VM-level jobs.
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    /// A SOAP fault from the server (or a failed task).
    #[error("vSphere fault {kind} in {method}: {message}")]
    Fault {
        /// The method (or task) that failed.
        method: String,
        /// The fault type.
        kind: FaultKind,
        /// The server's message.
        message: String,
    },
    /// The server's certificate does not match the pinned SHA-256 thumbprint.
    #[error("the certificate of {host} has SHA-256 thumbprint {got}, but {expected} is pinned; refusing to connect (if the certificate was replaced on purpose, pin the new thumbprint)")]
    ThumbprintMismatch {
        /// Host name.
        host: String,
        /// Pinned thumbprint.
        expected: String,
        /// Presented thumbprint.
        got: String,
    },
    /// A TLS configuration problem (bad CA bundle, bad thumbprint text).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Transport failure (connection refused or dropped, timeout).
    #[error("{what}: {}", chain(.error))]
    Http {
        /// What was being done.
        what: String,
        /// Underlying error; the message shows it with its causes, so it is not also
        /// returned from `source()`.
        error: reqwest::Error,
    },
    /// An unexpected HTTP status.
    #[error("{what}: HTTP status {status}")]
    Status {
        /// What was being done.
        what: String,
        /// The status.
        status: u16,
    },
    /// A response larger than allowed.
    #[error("{what}: response larger than {limit} bytes")]
    TooLarge {
        /// What was being read.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// A response that is not valid or not the expected shape.
    #[error("{what}: {error}")]
    Xml {
        /// What was being parsed.
        what: String,
        /// The parse error (in the message, so not also returned by `source()`).
        error: XmlError,
    },
    /// A vAPI (REST) answer that is not the expected shape.
    #[error("{what}: {message}")]
    Vapi {
        /// What was being done.
        what: String,
        /// What is wrong with the answer.
        message: String,
    },
    /// A VM (or other object) that the inventory does not have.
    #[error("{0} not found")]
    NotFound(String),
    /// A task that did not finish in time (it was cancelled).
    #[error("task {task} ({what}) did not finish within {secs} s; cancelled")]
    TaskTimeout {
        /// The task moref.
        task: String,
        /// What it was doing.
        what: String,
        /// The timeout.
        secs: u64,
    },
    /// Bad input from the caller (paths, thumbprints, credentials).
    #[error("{0}")]
    Invalid(String),
    /// Local I/O (credential or thumbprint files).
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error (in the message, so not also returned by `source()`).
        error: std::io::Error,
    },
    /// The backup engine or repository failed.
    #[error(transparent)]
    Archive(#[from] ferry_archive::ArchiveError),
    /// Reading the disk's VMDK failed.
    #[error(transparent)]
    Vmdk(#[from] ferry_vmdk::VmdkError),
    /// A job failed and, in addition, its snapshot could not be removed.
    #[error("{job}; in addition the snapshot {snapshot} could not be removed ({removal}); the next run removes it")]
    JobAndCleanup {
        /// The job's error.
        job: Box<VsphereError>,
        /// The snapshot left behind.
        snapshot: String,
        /// Why removal failed.
        removal: Box<VsphereError>,
    },
}

impl VsphereError {
    /// The fault kind, if this is a vim25 fault.
    pub fn fault(&self) -> Option<&FaultKind> {
        match self {
            VsphereError::Fault { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// True for a fault that means the session is gone.
    pub fn is_not_authenticated(&self) -> bool {
        matches!(self.fault(), Some(FaultKind::NotAuthenticated))
    }
}

/// Result alias.
pub type Result<T, E = VsphereError> = std::result::Result<T, E>;

/// An error and its causes, each once (reqwest's message leaves out the cause, such as
/// "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = c.source();
    }
    out
}
