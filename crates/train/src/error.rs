//! The error type of this crate.

use thiserror::Error;

/// Errors of a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The loss of a batch was NaN or infinite. The step was not applied, and the last
    /// checkpoint (written after the last finished epoch) is left as it was.
    #[error(
        "epoch {epoch}, batch {batch}: the loss is {loss}; stopping (lower the learning rate?)"
    )]
    NonFiniteLoss {
        /// The epoch (1-based).
        epoch: usize,
        /// The batch within the epoch (1-based).
        batch: usize,
        /// The loss value.
        loss: f32,
    },
    /// A recipe value is out of range, or a checkpoint's recipe cannot be read.
    #[error("{what}: {msg}")]
    Invalid {
        /// The setting or file.
        what: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Writing the metrics file failed.
    #[error("{path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// The system's message.
        msg: String,
    },
    /// A layer, optimizer or checkpoint operation failed.
    #[error(transparent)]
    Nn(#[from] convkit_nn::NnError),
    /// The forward or backward pass failed.
    #[error(transparent)]
    Autograd(#[from] convkit_autograd::AutogradError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] convkit_tensor::TensorError),
    /// Loading or batching the data failed.
    #[error(transparent)]
    Data(#[from] convkit_data::DataError),
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn invalid(what: &'static str, msg: impl Into<String>) -> TrainError {
    TrainError::Invalid { what, msg: msg.into() }
}
