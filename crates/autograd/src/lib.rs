//! # convkit-autograd — reverse-mode automatic differentiation
//!
//! A tape you can read in one sitting. Each operation on a [`Var`] computes its value with
//! `convkit-tensor` or `convkit-conv` and, when an input is on a [`Tape`], records a closure
//! that turns the gradient of its output into gradients of its inputs. [`Var::backward`] walks
//! the tape in reverse, adding gradients where a value was used more than once, and hands
//! each leaf its gradient. Nothing is recorded for constants, so inference on constants costs
//! exactly the kernels.
//!
//! ## Layout
//! - [`tape`]: [`Tape`], [`Var`], [`Param`] (a trainable tensor with an accumulated `.grad`),
//!   [`Gradients`], and the reverse pass.
//! - [`ops`]: the differentiable operations — arithmetic with broadcasting, matmul, linear,
//!   shape ops, reductions, activations, softmax, cross-entropy, MSE, dropout.
//! - [`conv`]: conv2d and pooling on top of `convkit-conv`'s kernels; [`norm`]: batch
//!   normalization (training and evaluation) on its dedicated kernels.
//! - [`check`]: [`check_gradients`], the finite-difference checker every op is tested with.
//!
//! ## Example: one gradient step on `L = mean((x·wᵀ − y)²)`
//! ```
//! use convkit_autograd::{Param, Tape, Var};
//! use convkit_tensor::Tensor;
//!
//! let w = Param::new(Tensor::from_vec(&[1, 2], vec![0.0, 0.0])?);
//! let x = Var::constant(Tensor::from_vec(&[2, 2], vec![1., 2., 3., 4.])?);
//! let y = Var::constant(Tensor::from_vec(&[2, 1], vec![5., 11.])?);
//!
//! let tape = Tape::new();
//! let loss = x.linear(&tape.param(&w), None)?.mse(&y)?;
//! loss.backward()?;
//! let grad = w.grad().expect("w was used");
//! // ∂L/∂w = 2/N · Σ (x·wᵀ − y)·x = [−38, −54] at w = 0.
//! assert_eq!(grad.as_slice(), &[-38.0, -54.0]);
//! # Ok::<(), convkit_autograd::AutogradError>(())
//! ```
//!
//! ## Threads
//! A tape is single-threaded (`Rc`); the kernels underneath use rayon. [`Param`] is `Send +
//! Sync` so models can be moved between threads between steps.

pub mod check;
pub mod conv;
pub mod error;
pub mod norm;
pub mod ops;
pub mod tape;

pub use check::{GradCheck, GradMismatch, check_gradients};
pub use error::{AutogradError, Result};
pub use norm::BatchStats;
pub use tape::{BackwardFn, Gradients, Param, Tape, Var};

/// This crate's README, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
