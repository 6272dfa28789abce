//! # convkit-conv — 2-D convolution and pooling kernels
//!
//! (The full manual arrives with the kernels.)

pub mod direct;
pub mod error;
pub mod naive;
pub mod params;
pub mod simd;
pub mod tolerance;
pub mod winograd;

pub use direct::{conv2d_direct, conv2d_direct_with, direct_supports};
pub use error::{ConvError, Result};
pub use naive::{conv2d_backward_naive, conv2d_naive};
pub use params::{Conv2dParams, ConvGeometry, check_len, out_size};
pub use simd::SimdLevel;
pub use tolerance::{Tolerance, max_rel_error};
pub use winograd::{
    WinogradFilter, WinogradVariant, conv2d_winograd, conv2d_winograd_prepared,
    conv2d_winograd_with, winograd_supports,
};
