//! The crate's error type.
//!
//! Errors are `Clone` so that one fatal connection error (a bad magic, a closed socket) can
//! be handed to every request that was in flight on that connection.

use std::sync::Arc;
use std::time::Duration;

/// A violation of the NBD protocol by the peer. The connection is closed after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A magic number that is not the one the protocol requires here.
    #[error("bad magic in {what}: 0x{found:x}")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// What arrived.
        found: u64,
    },
    /// A message longer than it may be.
    #[error("{what} of {len} bytes is larger than the {max} allowed")]
    Oversized {
        /// Which message.
        what: &'static str,
        /// Length announced by the peer.
        len: u64,
        /// Largest length accepted.
        max: u64,
    },
    /// A message shorter than its fixed fields.
    #[error("{what} of {len} bytes is too short")]
    Truncated {
        /// Which message.
        what: &'static str,
        /// Length announced by the peer.
        len: u64,
    },
    /// A reply to a request we did not send, or that already completed.
    #[error("reply for unknown handle 0x{0:x}")]
    UnknownHandle(u64),
    /// A reply to an option we did not send.
    #[error("option reply for option {got}, expected {expected}")]
    WrongOption {
        /// Option being negotiated.
        expected: u32,
        /// Option the reply names.
        got: u32,
    },
    /// A reply chunk describing bytes outside the request, or overlapping earlier bytes.
    #[error("reply chunk for [{offset}, +{len}) is outside request [{req_offset}, +{req_len}) or overlaps earlier data")]
    ChunkRange {
        /// Chunk offset.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Request offset.
        req_offset: u64,
        /// Request length.
        req_len: u64,
    },
    /// A successful read reply that did not cover every requested byte.
    #[error("read reply covers {covered} of {len} bytes")]
    ShortRead {
        /// Bytes the reply covered.
        covered: u64,
        /// Bytes requested.
        len: u64,
    },
    /// Block status that covers no bytes, more bytes than asked, or a context we did not ask for.
    #[error("block status for context {context}: {why}")]
    BlockStatus {
        /// Context id of the reply.
        context: u32,
        /// What is wrong.
        why: String,
    },
    /// A reply type that is unknown or not allowed here.
    #[error("unexpected {what} type {typ}")]
    UnexpectedType {
        /// Which message.
        what: &'static str,
        /// Type found.
        typ: u32,
    },
    /// Anything else that breaks a MUST of the protocol.
    #[error("{0}")]
    Other(String),
}

/// Errors of the NBD client and server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NbdError {
    /// A socket error.
    #[error("{during}: {error}")]
    Io {
        /// What was happening.
        during: &'static str,
        /// Underlying error (in the message, so not also returned by `source()`).
        error: Arc<std::io::Error>,
    },
    /// The peer closed the connection.
    #[error("{during}: connection closed by peer")]
    Closed {
        /// What was happening.
        during: &'static str,
    },
    /// A network wait took too long.
    #[error("{during}: no answer within {after:?}")]
    Timeout {
        /// What was happening.
        during: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(ProtocolError),
    /// The server refused an option during the handshake.
    #[error("server refused {option}: {reply} {message}")]
    Refused {
        /// Option name.
        option: &'static str,
        /// Reply name (NBD_REP_ERR_*).
        reply: &'static str,
        /// Server message, if any.
        message: String,
    },
    /// The server answered a command with an error.
    #[error("server error {} ({errno}) on {command}: {message}", errno_name(*.errno))]
    Server {
        /// Command name.
        command: &'static str,
        /// NBD error value.
        errno: u32,
        /// Server message, if any.
        message: String,
    },
    /// The server lacks a feature we need.
    #[error("server does not support {0}")]
    Unsupported(String),
    /// TLS set-up or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A bad NBD URI.
    #[error("bad NBD URI {uri:?}: {why}")]
    Uri {
        /// The URI.
        uri: String,
        /// What is wrong.
        why: String,
    },
    /// A request outside the export.
    #[error("request of {len} bytes at {offset} is past the end of a {size}-byte export")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Export size.
        size: u64,
    },
    /// A bad argument or configuration.
    #[error("{0}")]
    Invalid(String),
    /// The connection was shut down earlier (after an error or a disconnect).
    #[error("connection is closed: {0}")]
    Dead(Arc<NbdError>),
    /// The repository behind a served export failed.
    #[error("repository: {0}")]
    Archive(String),
}

// By hand rather than `#[from]`, which would also return the error from `source()` while
// the message already shows it.
impl From<ProtocolError> for NbdError {
    fn from(e: ProtocolError) -> Self {
        NbdError::Protocol(e)
    }
}

impl NbdError {
    pub(crate) fn io(during: &'static str, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            NbdError::Closed { during }
        } else {
            NbdError::Io {
                during,
                error: Arc::new(e),
            }
        }
    }

    /// The protocol error behind this error, looking through [`NbdError::Dead`].
    pub fn protocol(&self) -> Option<&ProtocolError> {
        match self {
            NbdError::Protocol(p) => Some(p),
            NbdError::Dead(inner) => inner.protocol(),
            _ => None,
        }
    }

    /// The root error, looking through [`NbdError::Dead`].
    pub fn root(&self) -> &NbdError {
        match self {
            NbdError::Dead(inner) => inner.root(),
            e => e,
        }
    }
}

/// The name of an NBD error value.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown error",
    }
}

impl From<NbdError> for ferry_archive::SourceError {
    fn from(e: NbdError) -> Self {
        match e {
            NbdError::OutOfRange { offset, len, size } => {
                ferry_archive::SourceError::OutOfRange { offset, len, size }
            }
            e => ferry_archive::SourceError::Transport(Box::new(e)),
        }
    }
}
