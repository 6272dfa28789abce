//! # convkit-cli — the command-line tools and what only they need
//!
//! Two binaries and the pieces of them that carry tool weight, kept out of the library crates
//! so that a program depending on `convkit-models` compiles no argument parser, HTTP stack or
//! plotting library:
//! - `convkit` (`train`, `eval`, `predict`, `info`): any zoo model (`vgg-small`,
//!   `resnet-small`) on a user's data — four IDX files or folders of PNG/JPEG images, one
//!   folder per class — with checkpoints that carry everything needed to use the model;
//! - `lenet` (`train`, `eval`, `predict`, `info`, `fetch`, `visualize`, `serve`, `export`):
//!   LeNet-5 on MNIST and Fashion-MNIST.
//!
//! ## Layout
//! - [`zoo`]: `convkit`'s data ([`zoo::Source`]), the checkpoint metadata that rebuilds a
//!   model ([`zoo::ZooSpec`]), pictures as model inputs, evaluation with a confusion matrix,
//!   and the layer table that `convkit info` and `lenet info --model` print.
//! - [`runs`]: a training run's files and its loop over epochs (progress bar, one line or
//!   JSON object per epoch, the last good checkpoint on a non-finite loss), for both binaries.
//! - [`args`]: value parsers for the libraries' enums and for sizes, the `--threads` pool.
//! - [`download`]: `lenet fetch`: the four IDX files of a dataset from its public mirrors,
//!   each checked against its published SHA-256 before it is renamed into place.
//! - [`serve`]: the HTTP server of `lenet serve`: a page to draw on and watch the network,
//!   and a JSON prediction API.
//! - [`visualize`]: conv1's filters, feature maps and training curves as images, on a
//!   blue–white–red colour map.
//!
//! ## Example
//! ```no_run
//! use convkit_cli::serve::{Predictor, Server};
//! use convkit_models::LeNet5;
//! use convkit_models::fetch::DatasetKind;
//!
//! let (model, norm, _metadata) = LeNet5::load("model.safetensors")?;
//! let predictor = Predictor::new(model, norm, DatasetKind::FashionMnist.class_names());
//! let server = Server::bind("127.0.0.1:8080", predictor)?;
//! println!("serving on {}", server.url());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod args;
pub mod download;
pub mod runs;
pub mod serve;
pub mod visualize;
pub mod zoo;

/// The workspace README's examples, compiled and run as doctests so the README stays true
/// (this crate depends on every crate they use).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
