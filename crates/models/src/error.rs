//! The error type of the datasets, the model and training.

use std::path::PathBuf;

use thiserror::Error;

/// Errors from reading datasets, building or loading the model, and training.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The file could not be opened or read.
    #[error("{}: {msg}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        msg: String,
    },
    /// No directory with the dataset was found; the message lists where we looked and what
    /// to do.
    #[error("{dataset}: no data found (looked in {}); {hint}", searched.join(", "))]
    NotFound {
        /// The dataset's name.
        dataset: String,
        /// The places tried, in order.
        searched: Vec<String>,
        /// How to get the data.
        hint: String,
    },
    /// Downloading a dataset failed.
    #[error("fetch {url}: {msg}")]
    Fetch {
        /// The address tried last.
        url: String,
        /// What went wrong, with the alternatives.
        msg: String,
    },
    /// A file's SHA-256 digest is not the published one.
    #[error("{}: SHA-256 {got}, expected {expected}", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The digest computed.
        got: String,
        /// The published digest.
        expected: String,
    },
    /// An argument or setting is invalid (batch size 0, unknown dataset name …).
    #[error("{what}: {msg}")]
    Invalid {
        /// The argument.
        what: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A folder that must be written from scratch already holds files.
    #[error("{}: already exists and is not empty; remove it or choose another folder", path.display())]
    NotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// Reading or using one file failed: `source` says how (a picture refused by the decoder,
    /// a picture the model cannot take, …).
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What went wrong with it.
        #[source]
        source: Box<ModelError>,
    },
    /// Training failed (a non-finite loss, a checkpoint that cannot resume, …).
    #[error(transparent)]
    Train(#[from] convkit_train::TrainError),
    /// A picture was refused (not PNG/JPEG, corrupt, too large).
    #[error("image: {0}")]
    Picture(#[from] convkit_data::PictureError),
    /// Loading or batching data failed.
    #[error(transparent)]
    Data(#[from] convkit_data::DataError),
    /// A layer, optimizer or checkpoint operation failed.
    #[error(transparent)]
    Nn(#[from] convkit_nn::NnError),
    /// A convolution's shapes or buffers were rejected.
    #[error(transparent)]
    Conv(#[from] convkit_conv::ConvError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] convkit_tensor::TensorError),
    /// A differentiable operation failed.
    #[error(transparent)]
    Autograd(#[from] convkit_autograd::AutogradError),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// An [`ModelError::Io`] for `path`.
pub fn io_err(path: impl Into<PathBuf>, e: &std::io::Error) -> ModelError {
    ModelError::Io { path: path.into(), msg: e.to_string() }
}

/// A [`ModelError::InFile`]: `source` happened while reading or using `path`.
pub fn in_file(path: impl Into<PathBuf>, source: impl Into<ModelError>) -> ModelError {
    ModelError::InFile { path: path.into(), source: Box::new(source.into()) }
}

/// An [`ModelError::Invalid`].
pub fn invalid(what: &'static str, msg: impl Into<String>) -> ModelError {
    ModelError::Invalid { what, msg: msg.into() }
}
