//! # convkit-conv — 2-D convolution and pooling kernels
//!
//! (The full manual arrives with the kernels.)

pub mod error;
pub mod gemm;
pub mod im2col;
pub mod naive;
pub mod params;
pub mod tolerance;

pub use error::{ConvError, Result};
pub use im2col::{conv2d_backward_im2col, conv2d_im2col};
pub use naive::{conv2d_backward_naive, conv2d_naive};
pub use params::{Conv2dParams, ConvGeometry, check_len, out_size};
pub use tolerance::{Tolerance, max_rel_error};
