//! # convkit-conv — 2-D convolution and pooling kernels
//!
//! (The full manual arrives with the kernels.)

pub mod error;
pub mod naive;
pub mod params;
pub mod tolerance;

pub use error::{ConvError, Result};
pub use naive::{conv2d_backward_naive, conv2d_naive};
pub use params::{Conv2dParams, ConvGeometry, check_len, out_size};
pub use tolerance::{Tolerance, max_rel_error};

/// The README's examples, compiled and run as doctests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
