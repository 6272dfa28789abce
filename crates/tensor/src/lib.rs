//! # convkit-tensor — f32 tensors and the core math
//!
//! The bottom of the convkit stack: an `f32` n-dimensional [`Tensor`], the math a CNN needs
//! around its convolutions, a seeded portable random generator, and safetensors I/O; and
//! [`testing`], the tolerance rule and seeded data the workspace's tests share. The conv,
//! autograd and nn crates build on this and nothing else.
//!
//! ## The tensor
//!
//! * **Layout.** Always contiguous and row-major (the last axis varies fastest); activations
//!   are NCHW, linear weights `[out, in]`, as in PyTorch. Shapes are checked at construction
//!   ([`Tensor::from_vec`] fails on a length mismatch).
//! * **Sharing.** The buffer lives behind an `Arc`: `clone()`, [`Tensor::reshape`],
//!   [`Tensor::flatten`], `squeeze`/`unsqueeze` are free and share it. Writes
//!   ([`Tensor::data_mut`], the `*_assign` methods) are copy-on-write, so one handle never sees
//!   another's writes. Every other operation returns a fresh tensor.
//! * **Memory.** A dropped tensor of 64 KiB or more hands its buffer to [`buffer`]'s cache
//!   (at most 512 MiB by default, [`buffer::set_cache_limit`]), and the next tensor of that
//!   length reuses it, so a training loop stops paying page faults and zeroing every step.
//! * **Errors.** Everything that takes user data returns [`Result`]; a [`TensorError`] names
//!   the operation and the shapes (`add: incompatible shapes [2, 3] and [4]: …`). The only
//!   panics are for shapes whose element count overflows `usize` in the infallible
//!   constructors ([`Tensor::zeros`] and friends).
//!
//! ## Modules
//!
//! | module | contents |
//! |---|---|
//! | [`tensor`] | the type, constructors (`zeros`, `ones`, `full`, `arange`, `from_fn`, `eye`) |
//! | [`rng`] | [`Rng`] (SplitMix64), `rand_uniform`, `rand_normal`, shuffling |
//! | [`ops`] | add/sub/mul/div with NumPy broadcasting, scalar ops, unary maps |
//! | [`reduce`] | sum/mean/max/min/argmax (whole or per axis), `sum_to`, softmax/log-softmax |
//! | [`shape_ops`] | reshape, flatten, permute/transpose, narrow, index_select, concat/stack, pad2d |
//! | [`matmul`](mod@matmul) | checked slice-level [`gemm`], [`matmul`](fn@matmul)/[`matmul_t`] 2-D and batched |
//! | [`io`] | safetensors save/load (F32), to/from bytes, atomic file writes |
//! | [`parallel`] | [`warm`](parallel::warm): a burst of parallel operations on a pool kept awake |
//! | [`buffer`] | the cache that hands large buffers of dropped tensors to the next tensor of their length |
//! | [`testing`] | test support: the [`Tolerance`](testing::Tolerance) rule, [`assert_close`](testing::assert_close), seeded random data |
//! | [`error`] | [`TensorError`] and [`Result`] |
//!
//! ## Math conventions
//!
//! Matrix products compute `C ← α·op(A)·op(B) + β·C` on [`matrixmultiply::sgemm`]; a transpose
//! is a swap of strides, never a copy. Sums accumulate in `f64`. Softmax subtracts the maximum
//! first. Random numbers are reproducible bit for bit on every platform for a given seed.
//!
//! ## Threads
//!
//! Batched matmul runs the items of a batch on rayon's pool when the product has at least
//! [`PAR_MIN_FLOPS`] flops, each item writing its own output chunk; a product of at most
//! [`DOT_MAX_ROWS`] rows splits its outputs the same way. Elementwise operations (`map`,
//! same-shape and scalar arithmetic, `axpy`, the in-place forms, [`map_slice_inplace`] on a
//! plain slice) split tensors of at least [`PAR_MIN_ELEMENTS`] elements into chunks.
//! Reductions are single-threaded and visit elements in a fixed order. Every result is
//! therefore bit-identical whatever the number of threads (`RAYON_NUM_THREADS` sets the pool
//! size).
//! There are no environment variables or cargo features of this crate's own.
//!
//! ## Example
//!
//! ```
//! use convkit_tensor::{Rng, Tensor, matmul_t};
//!
//! // A tiny linear classifier on a batch of 4 flattened 2x2 images.
//! let mut rng = Rng::new(0);
//! let images = Tensor::rand_uniform(&[4, 1, 2, 2], 0.0, 1.0, &mut rng)?;
//! let x = images.flatten_2d()?; // [4, 4], shares the buffer
//! let w = Tensor::rand_normal(&[3, 4], 0.0, 0.5, &mut rng)?; // [out, in]
//! let b = Tensor::zeros(&[3]);
//! let logits = matmul_t(&x, false, &w, true)?.add(&b)?; // x·Wᵀ + b, [4, 3]
//! let probs = logits.softmax(1)?;
//! let predicted = logits.argmax_axis(1)?;
//! assert_eq!(probs.dims(), &[4, 3]);
//! assert_eq!(predicted.len(), 4);
//! assert!((probs.sum_axis(1, false)?.sum() - 4.0).abs() < 1e-5);
//!
//! // Mismatched shapes are errors that say what went wrong.
//! let err = x.add(&Tensor::zeros(&[3])).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "add: incompatible shapes [4, 4] and [3]: axis 1 of the broadcast has sizes 4 and 3"
//! );
//! # Ok::<(), convkit_tensor::TensorError>(())
//! ```
pub mod buffer;
pub mod error;
pub mod io;
pub mod matmul;
pub mod ops;
pub mod parallel;
pub mod reduce;
pub mod rng;
pub mod shape_ops;
pub mod tensor;
pub mod testing;

pub use error::{Result, TensorError};
pub use io::{
    from_safetensors_bytes, from_safetensors_bytes_with_metadata, load_safetensors,
    load_safetensors_with_metadata, save_safetensors, to_safetensors_bytes, write_atomic,
};
pub use matmul::{DOT_MAX_ROWS, PAR_MIN_FLOPS, gemm, matmul, matmul_t};
pub use ops::{PAR_MIN_ELEMENTS, broadcast_shapes, map_slice_inplace};
pub use rng::Rng;
pub use tensor::{Tensor, numel, strides};

/// This crate's README, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
