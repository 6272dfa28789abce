//! The error type of layers, optimizers and checkpoints.

use thiserror::Error;

/// Errors from the nn layer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NnError {
    /// An operation failed in the autodiff tape (shapes are in the message).
    #[error(transparent)]
    Autograd(#[from] convkit_autograd::AutogradError),
    /// A convolution kernel failed (shapes are in the message).
    #[error(transparent)]
    Conv(#[from] convkit_conv::ConvError),
    /// A tensor operation or tensor I/O failed.
    #[error(transparent)]
    Tensor(#[from] convkit_tensor::TensorError),
    /// A layer, optimizer or schedule was configured with an invalid value.
    #[error("{what}: {msg}")]
    Config {
        /// The layer or optimizer.
        what: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// An input to a layer has the wrong shape.
    #[error("{layer}: input {got:?}: {msg}")]
    Input {
        /// The layer.
        layer: &'static str,
        /// The input's shape.
        got: Vec<usize>,
        /// What was expected.
        msg: String,
    },
    /// A checkpoint does not fit the model; every problem is listed.
    #[error("checkpoint {path}: {}", problems.join("; "))]
    Checkpoint {
        /// The file.
        path: String,
        /// Missing keys, unexpected keys, shape mismatches, bad metadata.
        problems: Vec<String>,
    },
}

/// Result alias of this crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;

pub(crate) fn config(what: &'static str, msg: impl Into<String>) -> NnError {
    NnError::Config { what, msg: msg.into() }
}
