//! # convkit-models — LeNet-5, MNIST-format datasets and the `lenet` tool
//!
//! This crate provides readers for the IDX files of MNIST and Fashion-MNIST ([`idx`]), and
//! will provide `LeNet5` (conv 6@5x5 → ReLU → avg-pool → conv 16@5x5 → ReLU → avg-pool → 120 →
//! 84 → 10, 61,706 parameters) and the `lenet` command-line tool (train, eval, predict, info)
//! once `convkit-nn` lands.
//!
//! ## Layout
//! - [`idx`]: IDX image and label files, raw or gzip, validated before allocating.
//! - [`error`]: [`DataError`], whose messages name the file.
//!
//! ## Example
//! ```no_run
//! use convkit_models::idx::{IdxFiles, IdxSplit};
//! let files = IdxFiles::find("/usr/share/datasets/fashion-mnist")?;
//! let test = IdxSplit::read(&files.test_images, &files.test_labels, 28, 28, 10)?;
//! println!("{} test images", test.len());
//! # Ok::<(), convkit_models::DataError>(())
//! ```

pub mod error;
pub mod idx;

pub use error::{DataError, Result};
