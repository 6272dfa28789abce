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
    /// A safetensors tensor has a dtype other than F32.
    #[error(
        "safetensors: tensor `{name}` has dtype {dtype} with shape {shape:?}; only F32 is supported"
    )]
    UnsupportedDtype {
        /// The tensor's name in the file.
        name: String,
        /// The dtype found, as spelled in the safetensors header (e.g. `F16`).
        dtype: String,
        /// The tensor's shape.
        shape: Vec<usize>,
    },
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

impl TensorError {
    /// A [`TensorError::ShapeMismatch`] between two operand shapes.
    pub(crate) fn mismatch(
        op: &'static str,
        lhs: &[usize],
        rhs: &[usize],
        msg: impl Into<String>,
    ) -> Self {
        Self::ShapeMismatch { op, lhs: lhs.to_vec(), rhs: rhs.to_vec(), msg: msg.into() }
    }

    /// A [`TensorError::InvalidArgument`] about a tensor of shape `shape`.
    pub(crate) fn invalid(op: &'static str, shape: &[usize], msg: impl Into<String>) -> Self {
        Self::InvalidArgument { op, shape: shape.to_vec(), msg: msg.into() }
    }
}

/// Checks that `axis` exists in `dims`, naming `op` in the error.
pub(crate) fn check_axis(op: &'static str, dims: &[usize], axis: usize) -> Result<()> {
    if axis < dims.len() {
        Ok(())
    } else {
        Err(TensorError::invalid(
            op,
            dims,
            format!("axis {axis} out of range for rank {}", dims.len()),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_op_and_shapes() {
        let e = TensorError::mismatch("add", &[2, 3], &[4], "");
        assert_eq!(e.to_string(), "add: incompatible shapes [2, 3] and [4]");
        let e = TensorError::mismatch("matmul", &[2, 3], &[4, 5], "inner dims 3 and 4 differ");
        assert_eq!(
            e.to_string(),
            "matmul: incompatible shapes [2, 3] and [4, 5]: inner dims 3 and 4 differ"
        );
        let e = check_axis("sum_axis", &[2, 3], 2).unwrap_err();
        assert_eq!(e.to_string(), "sum_axis: axis 2 out of range for rank 2 (tensor shape [2, 3])");
    }
}
