//! The error type of every fallible operation in this crate.

use thiserror::Error;

/// Errors returned by convolution and pooling operations.
///
/// Every variant names the operation and carries the shapes involved, so a message reads like
/// `conv2d: weight [6, 1, 5, 5] needs 1 input channel per group, input has [64, 3, 32, 32]`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvError {
    /// A parameter is out of range (zero stride, zero dilation, zero groups, zero kernel size).
    #[error("{op}: invalid parameter: {msg}")]
    InvalidParams {
        /// The operation, e.g. `"conv2d"`.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Shapes of the operands do not fit together.
    #[error("{op}: {msg}")]
    ShapeMismatch {
        /// The operation, e.g. `"conv2d"`.
        op: &'static str,
        /// A description that names every shape involved.
        msg: String,
    },
    /// A buffer does not have the length its shape implies.
    #[error("{op}: {what} has {got} elements, shape {shape:?} needs {expected}")]
    BufferLength {
        /// The operation.
        op: &'static str,
        /// Which buffer (`"input"`, `"weight"`, `"output"`…).
        what: &'static str,
        /// The shape the buffer should have.
        shape: Vec<usize>,
        /// Number of elements the shape implies.
        expected: usize,
        /// Number of elements the buffer has.
        got: usize,
    },
    /// The algorithm cannot run this shape (e.g. Winograd on a 5x5 kernel).
    #[error("{op}: algorithm {algo} does not support {msg}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The algorithm that was asked for.
        algo: &'static str,
        /// Why the shape is out of its reach.
        msg: String,
    },
    /// An error from the tensor layer (building the output tensor).
    #[error(transparent)]
    Tensor(#[from] convkit_tensor::TensorError),
}

/// Result alias of this crate.
pub type Result<T, E = ConvError> = std::result::Result<T, E>;
