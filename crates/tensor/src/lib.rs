//! # convkit-tensor — f32 tensors and the core math
//!
//! (The full manual arrives with the operations.)

pub mod error;
pub mod tensor;

pub use error::{Result, TensorError};
pub use tensor::{Tensor, numel, strides};
