//! # convkit-onnx — ONNX export and import of convkit nn modules
//!
//! [`export`](fn@export) turns any module whose [`describe`](convkit_nn::Module::describe) tree is made
//! of supported layers into an ONNX model; [`import`](fn@import) turns an ONNX model — convkit's own or
//! PyTorch's `torch.onnx.export` — back into a [`convkit_nn::Sequential`]. Both sides speak
//! **opset 17** of the default ONNX domain (IR version 8); import also reads other opsets
//! from 7 on, for the operators below.
//!
//! ## Layout
//! - [`export`](mod@export): [`export`](fn@export), [`save`] (atomic write), [`ExportOptions`].
//! - [`import`](mod@import): [`import`](fn@import), [`load`].
//! - [`proto`]: the ONNX protobuf messages, hand-written with `prost` derives (no `protoc`,
//!   no build script), field numbers as in `onnx.proto3`.
//! - [`error`]: [`OnnxError`], one enum for both directions.
//!
//! ## What maps to what
//! | convkit layer        | ONNX                                                          |
//! |----------------------|---------------------------------------------------------------|
//! | `Conv2d`             | `Conv` (strides, pads, dilations, group, kernel_shape)        |
//! | `Linear`             | `Gemm` (transB = 1); import also reads `MatMul` + bias `Add`  |
//! | `MaxPool2d`          | `MaxPool` (symmetric pads, no ceil mode)                      |
//! | `AvgPool2d`          | `AveragePool`, `count_include_pad` as configured              |
//! | `GlobalAvgPool2d`    | `GlobalAveragePool`                                           |
//! | `ReLU`, `Tanh`, `Sigmoid` | `Relu`, `Tanh`, `Sigmoid`                                |
//! | `Flatten`            | `Flatten` (axis 1); import also reads a `Reshape` that flattens |
//! | `BatchNorm2d`        | `BatchNormalization` with the running statistics (inference)  |
//! | `Dropout`            | omitted on export (identity at inference); `Dropout` imports as one |
//! | `Residual`           | the two branches and an `Add`                                 |
//! | `Sequential`         | its children in order                                         |
//!
//! The graph has one input named `input`, `[batch, c, h, w]` with a symbolic batch, and one
//! output named `logits` (see [`ExportOptions`]). Initializers carry the parameters' dotted
//! names (`conv1.weight`, `1.running_mean`), as in a PyTorch `state_dict`; import names
//! layers after them, or after torch's node scopes when the exporter generated the names.
//!
//! ## Untrusted files
//! Import never panics on a file and never allocates much more than the file's size: tensor
//! sizes are checked (`checked_mul`) against the data actually present before anything is
//! allocated, prost bounds message nesting, and unsupported ops or attributes are errors that
//! name the node and list what is supported.
//!
//! ## Example
//! ```
//! use convkit_autograd::Var;
//! use convkit_nn::{Conv2d, Flatten, GlobalAvgPool2d, Linear, Module, ReLU, Sequential};
//! use convkit_onnx::{ExportOptions, export, import};
//! use convkit_tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::new(0);
//! let model = Sequential::new()
//!     .push_named("conv1", Conv2d::new(1, 4, 3, &mut rng)?)
//!     .push(ReLU)
//!     .push(GlobalAvgPool2d)
//!     .push(Flatten)
//!     .push_named("fc", Linear::new(4, 2, &mut rng)?);
//! let bytes = export(&model, [1, 8, 8], &ExportOptions::default())?;
//!
//! let back = import(&bytes)?;
//! let x = Var::constant(Tensor::rand_uniform(&[3, 1, 8, 8], -1.0, 1.0, &mut rng)?);
//! assert_eq!(back.forward(&x)?.value(), model.forward(&x)?.value());
//! assert_eq!(convkit_nn::named_params(&back)[0].0, "conv1.weight");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Checking against other runtimes
//! `scripts/make_fixtures.py` builds the PyTorch reference models of the tests;
//! `scripts/ort_run.py` runs a model in ONNX Runtime after `onnx.checker`. The ONNX Runtime
//! tests use the python in `CONVKIT_ONNX_PYTHON` (or `python3`), skip when it lacks onnx and
//! onnxruntime, and fail instead when `CONVKIT_REQUIRE_ONNXRUNTIME=1`;
//! `scripts/ci_venv.sh` makes such a python.

pub mod error;
pub mod export;
pub mod import;
pub mod proto;

pub use error::{OnnxError, Result};
pub use export::{ExportOptions, IR_VERSION, OPSET_VERSION, SUPPORTED_LAYERS, export, save};
pub use import::{SUPPORTED_OPS, import, load};

/// The README's example, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
