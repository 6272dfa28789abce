//! The error type of the autodiff tape.

use thiserror::Error;

/// Errors from recording operations or running the backward pass.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AutogradError {
    /// An operation failed in the tensor layer (shapes are in the message).
    #[error(transparent)]
    Tensor(#[from] convkit_tensor::TensorError),
    /// A convolution or pooling operation failed (shapes are in the message).
    #[error(transparent)]
    Conv(#[from] convkit_conv::ConvError),
    /// `backward()` without a seed on a variable that is not a single number.
    #[error(
        "backward: the variable has shape {dims:?}; backward() needs a one-element value, use backward_with(seed) for others"
    )]
    NonScalarBackward {
        /// The variable's shape.
        dims: Vec<usize>,
    },
    /// A gradient has the wrong shape (a seed, or a custom op's backward rule).
    #[error("{op}: gradient has shape {got:?}, expected {expected:?}")]
    GradShape {
        /// Where the gradient came from.
        op: String,
        /// The shape of the value it is the gradient of.
        expected: Vec<usize>,
        /// The shape it has.
        got: Vec<usize>,
    },
    /// A constant was used where a variable on a tape is needed.
    #[error("{op}: the variable is a constant, not recorded on any tape")]
    NotOnTape {
        /// What was attempted.
        op: &'static str,
    },
    /// Variables from two different tapes met in one operation or query.
    #[error("variables from two different tapes cannot be combined")]
    MixedTapes,
    /// The objective does not depend on the variable whose gradient was asked for.
    #[error("no gradient: the objective does not depend on the variable of shape {dims:?}")]
    NoGradient {
        /// The variable's shape.
        dims: Vec<usize>,
    },
    /// `backward` ran a second time over a graph whose closures are already consumed.
    #[error("backward: this graph was already consumed by an earlier backward pass")]
    GraphConsumed,
    /// An argument is out of range (labels, probabilities, …).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong, with the shapes.
        msg: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = AutogradError> = std::result::Result<T, E>;
