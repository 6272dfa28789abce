//! The error type of this crate.

use std::path::PathBuf;

use thiserror::Error;

/// Errors of dataset loading; each names the file or folder at fault.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{path}: {msg}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system's message.
        msg: String,
    },
    /// An image could not be decoded, or is refused (format, size).
    #[error("{}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: crate::decode::PictureError,
    },
    /// The file is not a valid IDX file of the expected kind.
    #[error("{}: {msg}", path.display())]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A dataset folder lacks some of the standard IDX files.
    #[error("{}: missing {}", dir.display(), missing.join(", "))]
    MissingFiles {
        /// The folder searched.
        dir: PathBuf,
        /// The files not found there.
        missing: Vec<String>,
    },
    /// The folder does not hold a dataset in the expected layout.
    #[error("{path}: {msg}")]
    Layout {
        /// The root folder.
        path: PathBuf,
        /// What is missing.
        msg: String,
    },
    /// An option is out of range.
    #[error("{what}: {msg}")]
    Invalid {
        /// The option.
        what: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Building a tensor failed.
    #[error(transparent)]
    Tensor(#[from] convkit_tensor::TensorError),
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
