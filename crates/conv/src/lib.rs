//! # convkit-conv — 2-D convolution and pooling kernels
//!
//! Forward and backward 2-D convolution (every stride, padding, dilation and group count) and
//! max / average pooling for CNNs on the CPU, in f32, with an f64 reference to test against.
//! It depends only on `convkit-tensor`, `rayon` and `matrixmultiply`, so it can be used on its
//! own, on [`Tensor`](convkit_tensor::Tensor)s or on plain `&[f32]` buffers.
//!
//! ## Layout
//! Activations are NCHW (`[n, c, h, w]`, contiguous), convolution weights
//! `[c_out, c_in / groups, kh, kw]`, biases `[c_out]` — PyTorch's layouts, so weights move
//! between the two unchanged.
//!
//! ## The math
//! For output `(b, k, y, x)` in group `g = k / (c_out/groups)`:
//! `out[b,k,y,x] = bias[k] + Σ_{c,i,j} in[b, g·C' + c, y·sh − ph + i·dh, x·sw − pw + j·dw] ·
//! w[k,c,i,j]` with `C' = c_in/groups` and zeros outside the input (cross-correlation, as in
//! every CNN library). The output size is `floor((in + 2·pad − dil·(k−1) − 1)/stride) + 1`
//! ([`out_size`]). Backward, `∂L/∂in` scatters each output gradient through the same taps,
//! `∂L/∂w[k,c,i,j]` sums `dy · in` over the batch and output pixels, and `∂L/∂bias[k]` sums
//! `dy`. im2col rewrites all three as matrix products (see `im2col`).
//!
//! ## Public API
//! | item | what |
//! |---|---|
//! | [`conv2d_forward`], [`conv2d_backward`] | every algorithm on slices, chosen by a [`ConvAlgo`] |
//! | [`conv2d_relu_forward`] | a convolution followed by a ReLU, which the direct kernel applies to each work item's outputs while they are in cache |
//! | [`conv2d_relu_backward`] | the backward of a convolution followed by a ReLU, the mask applied as the kernel reads the gradient |
//! | [`ConvGeometry`], [`Conv2dParams`], [`out_size`] | shapes, stride/padding/dilation/groups, all validation |
//! | [`BackwardInputs`], [`GradBuffers`] | what a backward pass reads and the gradients it writes |
//! | [`select`], [`supports`], [`resolve`] | the automatic choice and what each algorithm runs |
//! | [`PreparedConv`], [`PooledImage`] | a layer prepared for inference: cached transforms, folded BN, ReLU, a fused 2x2 pool ([`PoolKind`]) |
//! | [`PreparedLinear`] | a dense layer prepared for inference (matrix-vector at batch 1) |
//! | [`linear_forward`], [`linear_backward`], [`LinearDims`] | a dense layer's training passes on the packed GEMM |
//! | [`WinogradFilter`], [`conv2d_winograd_prepared`] | a filter transformed once for many calls |
//! | [`conv2d_naive`], [`conv2d_backward_naive`] | the reference: the definition's loops in f64 |
//! | [`api`] | the same operations on [`Tensor`](convkit_tensor::Tensor)s, with pooling |
//! | [`pool`], [`batchnorm`] | max / average pooling and batch-normalization kernels on slices |
//! | [`simd`] | the run-time instruction-set ladder ([`SimdLevel`]) and its vector trait |
//! | [`max_rel_error`] | the error figure the docs quote for each algorithm against the reference |
//! | [`ConvError`] | every message names the operation and the shapes |
//!
//! Inside, each algorithm is a private module (`naive`, `im2col/`, `winograd/`, `direct/`) on a
//! shared packed GEMM (`gemm/`), scratch pool and layout helpers; `algo` registers them. The
//! `testing` feature exposes the per-algorithm entry points, the GEMM and the benchmark shape
//! suite to this workspace's tests and benches (`convkit_conv::testing`, `convkit_conv::suite`).
//!
//! ## Environment
//! - `CONVKIT_CONV_ALGO=<name>` (`naive`, `im2col`, `winograd2`, `winograd4`, `winograds2`,
//!   `direct`, `auto`) forces the algorithm [`ConvAlgo::Auto`] resolves to, on every shape
//!   that algorithm supports. Read once per process; an unknown name is ignored with one warning
//!   on stderr. Explicitly requested algorithms are never overridden (see [`resolve`]).
//! - `CONVKIT_SIMD=off` makes the SIMD kernels use their portable fallback (read by the
//!   SIMD-dispatching kernels, the packed GEMM included; the backward products then go through
//!   `matrixmultiply`, which does its own detection).
//!
//! ## Threads and determinism
//! Kernels run on the current rayon pool (install your own
//! [`ThreadPool`](rayon::ThreadPool) to bound them; `RAYON_NUM_THREADS` sets the global one).
//! Work is split over disjoint output slices — images and groups, or row blocks of one matrix
//! product when there are fewer of those than threads — and problems under about a megaflop
//! stay on the calling thread. The one reduction across tasks, the weight gradient over the
//! batch, uses chunks that depend only on the batch size and adds them in a fixed order, so
//! **every result is bit-identical for any number of threads**. Scratch memory (a column
//! matrix, packing panels, padded planes: one work item's worth) comes from one per-thread
//! pool whose buffers are kept between calls up to 16 MiB each and freed above that; nothing
//! scales with the batch except up to 8 partial weight gradients in the backward pass.
//!
//! ## Example
//! ```
//! use convkit_conv::api::{self, GradsWanted};
//! use convkit_conv::{ConvAlgo, Conv2dParams, ConvGeometry, PoolParams, conv2d_forward};
//! use convkit_tensor::Tensor;
//!
//! # fn main() -> Result<(), convkit_conv::ConvError> {
//! // Tensor API: LeNet-5's first layer and pooling on a batch of 2.
//! let x = Tensor::from_vec(&[2, 1, 32, 32], vec![0.5; 2 * 32 * 32])?;
//! let w = Tensor::from_vec(&[6, 1, 5, 5], vec![0.1; 6 * 25])?;
//! let b = Tensor::from_vec(&[6], vec![0.0; 6])?;
//! let params = Conv2dParams::default();
//! let (y, ran) = api::conv2d(&x, &w, Some(&b), &params, ConvAlgo::Auto)?;
//! assert_eq!(y.dims(), [2, 6, 28, 28]);
//! assert_ne!(ran, ConvAlgo::Auto); // the algorithm that ran, for the backward pass
//! assert!((y.as_slice()[0] - 1.25).abs() < 1e-6); // 25 taps · 0.5 · 0.1
//! let pooled = api::avg_pool2d(&y, &PoolParams::new(2))?;
//! assert_eq!(pooled.dims(), [2, 6, 14, 14]);
//! let dy = Tensor::from_vec(y.dims(), vec![1.0; y.numel()])?;
//! let grads = api::conv2d_backward(&x, &w, &dy, &params, GradsWanted::ALL, ran)?;
//! assert_eq!(grads.bias.map(|b| b.into_vec()), Some(vec![2.0 * 28.0 * 28.0; 6]));
//!
//! // Slice API: the same convolution on plain buffers, asking for im2col explicitly.
//! let g = ConvGeometry::new([2, 1, 32, 32], [6, 1, 5, 5], params)?;
//! let mut out = vec![0.0; g.output_len()];
//! let ran = conv2d_forward(&g, x.as_slice(), w.as_slice(), None, &mut out, ConvAlgo::Im2col)?;
//! assert_eq!(ran, ConvAlgo::Im2col);
//! assert_eq!(out, y.as_slice());
//! # Ok(())
//! # }
//! ```

/// `$kernel::<X, K>($args…)` for `X = $xp` output columns from 1 to 11, `X = $max` above: the
/// monomorphized tiles of the AVX-512 channel paths (`direct/wide.rs`, `pooled/wide.rs`),
/// whose widest tile, 12 columns, keeps 12 of the 32 registers accumulating.
#[cfg(target_arch = "x86_64")]
macro_rules! by_columns {
    ($xp:expr, $max:ident, $kernel:ident::<_, $k:ident> $args:tt) => {
        by_columns!(@ $xp, $max, $kernel, $k, $args, 1 2 3 4 5 6 7 8 9 10 11)
    };
    (@ $xp:expr, $max:ident, $kernel:ident, $k:ident, $args:tt, $($x:literal)*) => {
        match $xp {
            $($x => $kernel::<$x, $k> $args,)*
            _ => $kernel::<$max, $k> $args,
        }
    };
}

mod algo;
pub mod api;
pub mod batchnorm;
mod direct;
mod error;
mod gemm;
mod im2col;
mod layout;
mod linear;
mod naive;
mod params;
pub mod pool;
mod pooled;
mod prepared;
mod scratch;
pub mod simd;
#[cfg(any(test, feature = "testing"))]
pub mod suite;
#[cfg(feature = "testing")]
pub mod testing;
// The per-algorithm presets are read only by the tests and benches (feature `testing`).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
mod tolerance;
mod winograd;

pub use algo::{
    ALGO_ENV, ConvAlgo, UnknownAlgo, conv2d_backward, conv2d_forward, conv2d_relu_backward,
    conv2d_relu_forward, env_algo, resolve, resolve_prepared, select, select_prepared, supports,
};
pub use api::{Conv2dGrads, GradsWanted, MaxPoolOutput};
pub use error::{ConvError, Result};
pub use linear::{LinearDims, PreparedLinear, linear_backward, linear_forward};
pub use naive::{conv2d_backward_naive, conv2d_naive};
pub use params::{BackwardInputs, Conv2dParams, ConvGeometry, GradBuffers, out_size};
pub use pool::{PoolGeometry, PoolParams};
pub use pooled::{PoolKind, PooledLayout};
pub use prepared::{PooledImage, PreparedConv};
pub use simd::SimdLevel;
pub use tolerance::max_rel_error;
pub use winograd::{WinogradFilter, WinogradVariant, conv2d_winograd_prepared};

/// This crate's README, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
