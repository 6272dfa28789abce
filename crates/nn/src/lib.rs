//! # convkit-nn — layers, losses, optimizers and checkpoints
//!
//! The layer API a PyTorch user expects, on top of `convkit-autograd`.
//!
//! ## Layout
//! - [`module`]: the [`Module`] trait (forward, named parameters and buffers, train/eval
//!   mode, a [`describe`](Module::describe)d kind), [`Sequential`], [`Residual`], helpers to
//!   list parameters by their dotted names, and [`Layer`], the plain description of a
//!   module's kind, configuration and parameters, for exporters, summaries and fused
//!   inference.
//! - [`layers`]: [`Linear`], [`ReLU`], [`Tanh`], [`Sigmoid`], [`Flatten`], [`Dropout`];
//!   [`conv`]: [`Conv2d`], [`MaxPool2d`], [`AvgPool2d`], [`GlobalAvgPool2d`];
//!   [`norm`]: [`BatchNorm2d`].
//!   Options are plain structs with `Default` (`LinearConfig`, `Conv2dConfig`, …).
//! - [`init`]: PyTorch's default initialization and the Kaiming / Xavier variants.
//! - [`loss`]: cross-entropy (with label smoothing), NLL, MSE.
//! - [`optim`]: [`Sgd`] (momentum, Nesterov, weight decay), [`Adam`] and AdamW, with
//!   savable state; [`sched`]: step, cosine and linear warm-up schedules.
//! - [`summary`]: a layer table of any model (shapes, parameters, FLOPs, the conv
//!   algorithm each layer runs in training and evaluation).
//! - [`checkpoint`]: safetensors with PyTorch `state_dict` names, atomic writes, strict loads.
//!
//! ## Training and evaluation
//! A forward pass on a [`Tape::input`](convkit_autograd::Tape::input) records the graph (each
//! layer attaches its parameters to the input's tape); a forward pass on a
//! [`Var::constant`](convkit_autograd::Var::constant) records nothing. In a [`Sequential`], a
//! [`Conv2d`], a [`BatchNorm2d`] or a [`Residual`] followed by a [`ReLU`] runs as one op in
//! both modes ([`Module::forward_relu`]): the same values and gradients, bit for bit, without
//! the ReLU's own activation buffer and passes.
//!
//! ```
//! use convkit_autograd::Tape;
//! use convkit_nn::{Linear, Module, Optimizer, ReLU, Sequential, Sgd, SgdConfig, loss, params};
//! use convkit_tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::new(0);
//! let model = Sequential::new()
//!     .push(Linear::new(4, 8, &mut rng)?)
//!     .push(ReLU)
//!     .push(Linear::new(8, 3, &mut rng)?);
//! let mut opt = Sgd::new(params(&model), SgdConfig { lr: 0.1, ..Default::default() })?;
//! let x = Tensor::rand_uniform(&[16, 4], -1.0, 1.0, &mut rng)?;
//! let labels: Vec<usize> = (0..16).map(|i| i % 3).collect();
//!
//! let tape = Tape::new();
//! let logits = model.forward(&tape.input(x))?;
//! let loss = loss::cross_entropy(&logits, &labels, 0.0)?;
//! loss.backward()?;
//! opt.step()?;
//! opt.zero_grad();
//! # Ok::<(), convkit_nn::NnError>(())
//! ```

pub mod checkpoint;
pub mod conv;
pub mod error;
pub mod init;
pub mod layers;
pub mod loss;
pub mod module;
pub mod norm;
pub mod optim;
pub mod prepared;
pub mod sched;
pub mod summary;

pub use conv::{AvgPool2d, Conv2d, Conv2dConfig, GlobalAvgPool2d, MaxPool2d};
// Re-exported from convkit-conv because layer configurations and `Layer` descriptions carry
// them: a user of nn (or of convkit-onnx) needs no direct dependency on the kernels.
pub use convkit_conv::{Conv2dParams, PoolParams, out_size};
pub use error::{NnError, Result};
pub use init::Init;
pub use layers::{Dropout, Flatten, Linear, LinearConfig, ReLU, Sigmoid, Tanh};
pub use module::{
    Layer, Module, Residual, Sequential, bind, named_buffers, named_params, num_params, params,
};
pub use norm::{BatchNorm2d, BatchNormConfig};
pub use optim::{Adam, AdamConfig, Optimizer, OptimizerKind, OptimizerState, Sgd, SgdConfig};
pub use prepared::PreparedModel;
pub use sched::{Constant, CosineAnnealing, LinearWarmup, LrSchedule, ScheduleKind, StepLr, Then};

/// This crate's README, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
