//! # convkit-conv — 2-D convolution and pooling kernels
//!
//! (The full manual arrives with the kernels.)

pub mod algo;
pub mod api;
pub mod error;
pub mod gemm;
pub mod im2col;
pub mod naive;
pub mod params;
pub mod pool;
pub mod suite;
pub mod tolerance;

pub use algo::{ConvAlgo, conv2d_backward, conv2d_forward, select, supports};
pub use api::{Conv2dGrads, GradsWanted, MaxPoolOutput};
pub use error::{ConvError, Result};
pub use im2col::{conv2d_backward_im2col, conv2d_im2col};
pub use naive::{conv2d_backward_naive, conv2d_naive};
pub use params::{Conv2dParams, ConvGeometry, check_len, out_size};
pub use pool::{PoolGeometry, PoolParams};
pub use tolerance::{Tolerance, max_rel_error};
