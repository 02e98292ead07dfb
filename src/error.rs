//! The crate's single error type.
//!
//! Every message names what it is about: the file, the tensor (canonical and source key), and the
//! expected and actual shapes, so a user can act on it without a debugger.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `effnet`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value makes no sense (zero repeats, even kernel, ...).
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// An input tensor of the wrong shape or type for the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A model name that no constructor knows.
    #[error("unknown model name `{name}`; known names: {known}")]
    UnknownModel { name: String, known: String },

    /// A tensor the model needs is not in the weight file.
    #[error("{file}: tensor `{canonical}` (looked up as `{source_key}`) is missing")]
    MissingTensor {
        file: String,
        canonical: String,
        source_key: String,
    },

    /// Tensors in the weight file that no model tensor and no explicit skip rule claims.
    #[error("{file}: {} tensor(s) not used by the model: {}", names.len(), names.join(", "))]
    UnusedTensors { file: String, names: Vec<String> },

    /// A tensor has the wrong shape.
    #[error(
        "{file}: tensor `{canonical}` (source key `{source_key}`) has shape {actual:?}, expected {expected:?}"
    )]
    ShapeMismatch {
        file: String,
        canonical: String,
        source_key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// A tensor is stored with an element type the loader cannot use.
    #[error("{file}: tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedDType {
        file: String,
        tensor: String,
        dtype: String,
    },

    /// A file is not in the format it claims to be, or is damaged.
    #[error("{file}: {message}")]
    Format { file: String, message: String },

    /// A checksum (CRC32C of a TF block or tensor, SHA-256 of a download) does not match.
    #[error("{file}: checksum mismatch for {what}: expected {expected}, got {actual}")]
    Checksum {
        file: String,
        what: String,
        expected: String,
        actual: String,
    },

    /// A download failed (HTTP error, dropped connection, offline without a cached copy).
    #[error("download of {url} failed: {message}")]
    Download { url: String, message: String },

    /// An I/O error, with the path it happened on.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An error from candle (tensor shapes in ops, device errors, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Shorthand for [`Error::Format`].
    pub fn format(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format {
            file: file.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
