//! # convkit-data — datasets as NCHW tensors
//!
//! Loading a user's own images, and MNIST-format files, for `convkit-nn` models, independent
//! of any model.
//!
//! ## Layout
//! - [`idx`]: MNIST-format IDX image and label files, raw or gzip, every size checked before
//!   allocating; [`IdxSplit::to_dataset`](idx::IdxSplit::to_dataset) gives `[n, 1, h, w]`
//!   images in `[0, 1]` for any model.
//! - [`folder`]: [`ImageFolder`], a folder with one sub-folder of PNG/JPEG images per class
//!   (`root/<class>/*.png`), as torchvision's `ImageFolder`: classes sorted by name, files in
//!   sorted path order, decoded in parallel, resized to one size, grayscale or RGB, values in
//!   `[0, 1]`; [`ImageFolder::channel_stats`] and [`ImageFolder::normalize`] for
//!   `(x − mean) / std`.
//! - [`decode`]: [`decode_picture`], PNG/JPEG bytes with bounded sizes (also behind
//!   `convkit-models`' picture preprocessing).
//! - [`loader`]: the [`Dataset`] trait (implemented by [`ImageFolder`] and the in-memory
//!   [`TensorDataset`]), [`epoch_order`] (a permutation of the seed and the epoch only),
//!   [`Augment`] (random flips and crops) and [`Loader`], which builds an epoch's batches a few
//!   ahead on a background thread — the same batches as without prefetching.
//! - [`error`]: [`DataError`], whose messages name the file or folder at fault.
//!
//! ## Untrusted files
//! A file that is not a PNG or JPEG, is corrupt, or declares a side above
//! [`ImageFolderConfig::max_side`] (a decompression bomb) is an error naming it, or with
//! [`BadFile::Skip`] a warning and an entry of [`ImageFolder::skipped`]; never a panic.
//!
//! ## Example
//! ```no_run
//! use convkit_data::{ImageFolder, ImageFolderConfig};
//!
//! let mut train = ImageFolder::load("photos/train", &ImageFolderConfig::default())?;
//! let (mean, std) = train.channel_stats();
//! train.normalize(&mean, &std)?;
//! println!("{} images of {} classes: {:?}", train.len(), train.classes.len(), train.images.dims());
//! # Ok::<(), convkit_data::DataError>(())
//! ```

pub mod decode;
pub mod error;
pub mod folder;
pub mod idx;
pub mod loader;

pub use decode::{PictureError, decode_picture};
pub use error::{DataError, Result};
pub use folder::{BadFile, ImageFolder, ImageFolderConfig, picture_values};
pub use loader::{Augment, Batch, Dataset, Loader, TensorDataset, epoch_order};

/// This crate's README, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
