//! # convkit-models — LeNet-5 and MNIST-format datasets
//!
//! The model most users come for, trained end to end on the CPU: [`LeNet5`] as in the
//! original write-up with ReLU and average pooling (conv 6@5x5 → ReLU → avg-pool → conv
//! 16@5x5 → ReLU → avg-pool → 120 → 84 → 10, 61,706 parameters, PyTorch `state_dict` names),
//! the MNIST / Fashion-MNIST IDX files it learns from, and a training loop whose runs resume bit
//! for bit through `convkit-train`'s generic trainer. The `lenet` command-line tool built on it (`train`, `eval`, `predict`, `info`,
//! `fetch`, `visualize`, `serve`) lives in `convkit-cli`, so that this library carries no
//! tool weight: no argument parser, progress bars, HTTP or plotting.
//!
//! ## Layout
//! - [`idx`]: IDX image and label files (`convkit-data`'s readers, re-exported);
//!   [`idx::write_image_folder`] writes a split as a folder of PNGs by class, the layout
//!   [`convkit_data::ImageFolder`] reads.
//! - [`data`]: preprocessing (pad 28→32, `/255`, `(x − mean)/std` with [`Normalization`],
//!   MNIST's 0.1307/0.3081 by default), [`Dataset`], seeded per-epoch shuffling, batches.
//! - [`fetch`]: where the data is ([`fetch::locate`]: `--data`, `$CONVKIT_DATA`,
//!   `data/<dataset>/`, Debian's `/usr/share/datasets/fashion-mnist`), and each dataset's
//!   mirrors and checksums (the download itself is `convkit-cli`'s).
//! - [`infer`]: fused inference (both convolutions with their ReLUs and pools in one pass per
//!   image on convkit-conv's [`PreparedConv::with_pool`](convkit_conv::PreparedConv::with_pool)
//!   kernels, then the dense layers as [`PreparedLinear`](convkit_conv::PreparedLinear)s),
//!   behind [`LeNet5::logits`] and [`LeNet5::inspect`] (the same kernels, keeping the feature
//!   maps). It is LeNet-5's one inference path: `lenet predict`, `eval`, `serve` and
//!   `visualize` all run it. Any other model is prepared with
//!   [`convkit_nn::PreparedModel`].
//! - [`lenet`]: the model, its layer table (shapes, parameters, FLOPs, conv algorithm), and
//!   checkpoints that carry the normalization in their metadata.
//! - [`train`]: LeNet-5 on `convkit-train`'s [`Trainer`](train::Trainer): the named
//!   [`Recipe`](train::Recipe)s, [`new_trainer`](train::new_trainer) and
//!   [`resume`](train::resume) (the normalization rides in the checkpoint), and [`evaluate`]
//!   (per-class accuracy and confusion matrix through the fused inference path).
//! - [`preprocess`]: pictures of any size → 28x28 the way MNIST was made (crop to the ink,
//!   scale to 20 pixels, centre by centre of mass).
//! - [`zoo`]: networks beyond LeNet-5 for small images — a VGG-style conv-BN-ReLU stack and
//!   a small ResNet — with the `state_dict` names of their PyTorch twins, and each one's
//!   training recipe for [`convkit_train::Trainer`] ([`zoo::ZooModel::recipe`]; vgg-small
//!   reaches 0.9225 on Fashion-MNIST read as PNGs, `examples/fashion_folder.rs`).
//! - [`error`]: [`ModelError`], whose messages name the file or argument at fault.
//!
//! ## Files
//! `lenet train --out model.safetensors` writes, after every epoch and atomically:
//! `model.safetensors` (weights with PyTorch names; metadata: normalization, recipe, epoch),
//! `model.optim.safetensors` (optimizer state, for `--resume`) and appends a line to
//! `model.metrics.jsonl`. A PyTorch `state_dict` saved with `safetensors.torch.save_file`
//! loads with [`LeNet5::load`] unchanged.
//!
//! ## Recipes and results (Fashion-MNIST, 60,000 / 10,000 images)
//! | recipe | test accuracy after the last epoch |
//! |---|---|
//! | reference: SGD lr 0.01, momentum 0.9, batch 64, 10 epochs, seed 0 | 0.9015 (PyTorch 0.8943) |
//! | the same over seeds 0–4 (PyTorch: seeds 0–2) | mean 0.8974 (PyTorch mean 0.8933) |
//! | fashion-mnist ([`train::Recipe`], `cargo xtask train`): Adam lr 0.002, cosine per step, batch 64, 15 epochs, hflip | 0.9167 |
//! | PyTorch's trained weights evaluated here (`lenet eval`) | 0.8943, identical |
//!
//! Reference recipe, final test accuracy per seed: 0.9015, 0.9002, 0.8924, 0.8969, 0.8961
//! (seeds 0–4); PyTorch with `shared/peers/lenet_torch.py train --seed S`: 0.8943, 0.8918,
//! 0.8938 (seeds 0–2). The seeds draw different initial weights and batch orders in the two
//! libraries, so single runs differ by up to a point; the means differ by 0.4 points.
//! `docs/training.md` has both recipes epoch by epoch (loss, accuracy, time), measured with
//! `lenet train --json` on a 2-core machine, and the commands that reproduce them; the
//! per-epoch metrics of any run are in `<out>.metrics.jsonl`.
//!
//! ## Threads and determinism
//! The kernels run on rayon's pool (`--threads N` installs a pool of N). The same seed gives
//! the same weights and metrics with any number of threads.
//!
//! ## Example
//! ```no_run
//! use convkit_models::fetch::{DatasetKind, locate};
//! use convkit_models::idx::IdxSplit;
//! use convkit_models::train::{Recipe, TrainConfig, new_trainer};
//! use convkit_models::{Dataset, Normalization};
//!
//! let found = locate(DatasetKind::FashionMnist, None, None, std::path::Path::new("."))?;
//! let f = &found.files;
//! let norm = Normalization::default();
//! let train = Dataset::new(&IdxSplit::read(&f.train_images, &f.train_labels, 28, 28, 10)?, norm, None)?;
//! let test = Dataset::new(&IdxSplit::read(&f.test_images, &f.test_labels, 28, 28, 10)?, norm, None)?;
//! let cfg = TrainConfig { epochs: 1, ..Recipe::Reference.config() };
//! let mut trainer = new_trainer(cfg, norm)?;
//! let m = trainer.fit_epoch(&train, Some(&test), Some("model.safetensors".as_ref()), &mut |_| {})?;
//! println!("test accuracy {:.4}", m.test.map_or(0.0, |t| t.accuracy));
//! # Ok::<(), convkit_models::ModelError>(())
//! ```

pub mod data;
pub mod error;
pub mod fetch;
pub mod idx;
pub mod infer;
pub mod lenet;
pub mod preprocess;
pub mod train;
pub mod zoo;

pub use data::{Batch, Dataset, Normalization};
pub use error::{ModelError, Result, in_file, invalid, io_err};
pub use infer::{INSPECTED_STAGES, Inspection};
pub use lenet::LeNet5;
pub use train::{Evaluation, evaluate};

/// This crate's README, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
