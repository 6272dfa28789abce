//! The error type of the datasets and the model.

use std::path::PathBuf;

use thiserror::Error;

/// Errors from reading datasets.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{}: {msg}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        msg: String,
    },
    /// The file is not a valid IDX file of the expected kind.
    #[error("{}: {msg}", path.display())]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A dataset directory lacks some of the standard files.
    #[error("{}: missing {}", dir.display(), missing.join(", "))]
    MissingFiles {
        /// The directory searched.
        dir: PathBuf,
        /// The files not found there.
        missing: Vec<String>,
    },
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
