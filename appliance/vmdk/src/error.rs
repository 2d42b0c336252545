//! The crate's error type.

/// Errors from reading or writing a VMDK.
#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    /// An I/O error on a file of the disk.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The text descriptor is malformed.
    #[error("descriptor {file}, line {line}: {msg}")]
    Descriptor {
        /// File holding the descriptor.
        file: String,
        /// 1-based line number (0 when not tied to a line).
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A binary header (KDMV, COWD, SESparse) is malformed or out of bounds.
    #[error("{file}: bad header: {msg}")]
    Header {
        /// File name.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// Metadata or grain pointers are inconsistent with the file.
    #[error("{file}: corrupt: {msg}")]
    Corrupt {
        /// File name.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// A compressed grain does not inflate.
    #[error("{file}: compressed grain at file offset {offset}: {msg}")]
    Inflate {
        /// File name.
        file: String,
        /// File offset of the grain.
        offset: u64,
        /// What zlib said.
        msg: String,
    },
    /// A parent link points back into the chain.
    #[error("snapshot chain loops back to {0}")]
    ChainLoop(String),
    /// The chain is deeper than we accept.
    #[error("snapshot chain deeper than {0} links")]
    ChainTooDeep(usize),
    /// A parent's CID is not the child's parentCID.
    #[error("{child}: parentCID {expected:08x} but parent {parent} has CID {found:08x}")]
    CidMismatch {
        /// Child file.
        child: String,
        /// Parent file.
        parent: String,
        /// The child's parentCID.
        expected: u32,
        /// The parent's CID.
        found: u32,
    },
    /// A valid but unsupported feature.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A read or query outside the disk.
    #[error("range of {len} bytes at {offset} is past the end of a {size}-byte disk")]
    OutOfRange {
        /// Offset requested.
        offset: u64,
        /// Length requested.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// The writer's input failed.
    #[error("input: {0}")]
    Input(String),
}

impl VmdkError {
    pub(crate) fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        VmdkError::Io {
            what: what.into(),
            error,
        }
    }
    pub(crate) fn corrupt(file: &str, msg: impl Into<String>) -> Self {
        VmdkError::Corrupt {
            file: file.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn header(file: &str, msg: impl Into<String>) -> Self {
        VmdkError::Header {
            file: file.to_string(),
            msg: msg.into(),
        }
    }
}

/// Result with [`VmdkError`].
pub type Result<T, E = VmdkError> = std::result::Result<T, E>;
