//! # convkit-cli — the command-line tools and what only they need
//!
//! The `lenet` binary (`train`, `eval`, `predict`, `info`, `fetch`, `visualize`, `serve`) and
//! the pieces of it that carry tool weight, kept out of the library crates so that a program
//! depending on `convkit-models` compiles no argument parser, HTTP stack or plotting library.
//!
//! ## Layout
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

pub mod download;
pub mod serve;
pub mod visualize;

/// The workspace README's examples, compiled and run as doctests so the README stays true
/// (this crate depends on every crate they use).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
