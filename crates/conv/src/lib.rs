//! # convkit-conv — 2-D convolution and pooling kernels
//!
//! (The full manual arrives with the kernels.)

pub mod error;
pub mod params;

pub use error::{ConvError, Result};
pub use params::{Conv2dParams, ConvGeometry, check_len, out_size};
