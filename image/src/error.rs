//! The error type of the image library.

/// What can go wrong while assembling the UKI, the disk, the OVF or the OVA.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O error, with what was being done.
    #[error("{what}: {error}")]
    Io {
        what: String,
        /// Shown in the message, so not also returned by `source()`.
        error: std::io::Error,
    },
    /// The EFI stub is not a PE image we can extend.
    #[error("PE image: {0}")]
    Pe(String),
    /// Partitioning failed.
    #[error("GPT: {0}")]
    Gpt(String),
    /// The OVF template could not be rendered.
    #[error("OVF template: {0}")]
    Template(String),
    /// The VMDK writer failed.
    #[error("VMDK: {0}")]
    Vmdk(ferry_vmdk::VmdkError),
}

// By hand rather than `#[from]`, which would also return the error from `source()` while
// the message already shows it.
impl From<ferry_vmdk::VmdkError> for ImageError {
    fn from(e: ferry_vmdk::VmdkError) -> Self {
        ImageError::Vmdk(e)
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ImageError>;

/// Wraps an I/O error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |error| ImageError::Io { what, error }
}
