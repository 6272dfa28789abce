//! # convkit-train — train any `convkit-nn` model
//!
//! A [`Trainer`] trains any [`Module`](convkit_nn::Module) on any
//! [`Dataset`](convkit_data::Dataset) with cross-entropy, SGD or Adam and a learning-rate
//! schedule stepped per batch: a hook after each batch (for a progress bar), an evaluation
//! in eval mode after each epoch, JSON metrics, atomic checkpoints after each epoch that
//! resume bit for bit, and a clear stop on a non-finite loss that keeps the last good
//! checkpoint. Batches are built ahead on a background thread
//! ([`Loader`](convkit_data::Loader)) without changing any result.
//!
//! ## Layout
//! - [`config`]: [`TrainConfig`], the recipe, checked by [`TrainConfig::validate`] and
//!   stored in the checkpoint's metadata.
//! - [`trainer`]: [`Trainer`] ([`Trainer::fit`], [`Trainer::train_epoch`],
//!   [`Trainer::evaluate`], [`Trainer::save`], [`Trainer::resume`]) and [`evaluate`].
//! - [`error`]: [`TrainError`], whose messages name the epoch, batch, setting or file.
//!
//! ## Example
//! ```
//! use convkit_data::TensorDataset;
//! use convkit_nn::{BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, ReLU, Sequential};
//! use convkit_tensor::{Rng, Tensor};
//! use convkit_train::{TrainConfig, Trainer};
//!
//! let mut rng = Rng::new(0);
//! let model = Sequential::new()
//!     .push(Conv2d::new(1, 4, 3, &mut rng)?)
//!     .push(BatchNorm2d::new(4)?)
//!     .push(ReLU)
//!     .push(GlobalAvgPool2d)
//!     .push(Flatten)
//!     .push(Linear::new(4, 2, &mut rng)?);
//! // Class 1 images are bright, class 0 dark.
//! let labels: Vec<usize> = (0..64).map(|i| i % 2).collect();
//! let pixels = labels.iter().flat_map(|&l| vec![l as f32; 36]).collect();
//! let data = TensorDataset::new(Tensor::from_vec(&[64, 1, 6, 6], pixels)?, labels, 2)?;
//! let cfg = TrainConfig { epochs: 5, batch_size: 16, lr: 0.05, ..TrainConfig::default() };
//! let mut trainer = Trainer::new(model, cfg)?;
//! let metrics = trainer.fit(&data, Some(&data), None, &mut |_| {}, &mut |_| {})?;
//! assert_eq!(metrics.len(), 5);
//! assert!(metrics[4].test.unwrap().accuracy > 0.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod error;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{
    BatchEvent, EpochMetrics, Evaluation, StepOutput, Trainer, evaluate, metrics_path,
    optimizer_path,
};

/// This crate's README, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
