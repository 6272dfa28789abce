//! The error type of every fallible tensor operation.

use thiserror::Error;

/// Errors returned by tensor operations. Each variant names the operation and the shapes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TensorError {
    /// The data length does not match the product of the shape.
    #[error("{op}: shape {shape:?} needs {expected} elements, got {got}")]
    LengthMismatch {
        /// The operation, e.g. `"from_vec"`.
        op: &'static str,
        /// The requested shape.
        shape: Vec<usize>,
        /// Number of elements the shape implies.
        expected: usize,
        /// Number of elements supplied.
        got: usize,
    },
    /// Two operand shapes are incompatible.
    #[error("{op}: incompatible shapes {lhs:?} and {rhs:?}{}", if .msg.is_empty() { String::new() } else { format!(": {}", .msg) })]
    ShapeMismatch {
        /// The operation, e.g. `"add"` or `"matmul"`.
        op: &'static str,
        /// Shape of the left operand.
        lhs: Vec<usize>,
        /// Shape of the right operand.
        rhs: Vec<usize>,
        /// Extra explanation (may be empty).
        msg: String,
    },
    /// An axis or index is out of range, or a shape argument is invalid for the tensor.
    #[error("{op}: {msg} (tensor shape {shape:?})")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// What is wrong.
        msg: String,
    },
    /// A safetensors file or buffer could not be read or written.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// An I/O error, with the path involved.
    #[error("{op} {path}: {msg}")]
    Io {
        /// `"reading"` or `"writing"`.
        op: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        msg: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = TensorError> = std::result::Result<T, E>;
