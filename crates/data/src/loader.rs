//! Batches for training: the [`Dataset`] trait, seeded epoch orders, random augmentations and
//! a [`Loader`] that builds the next batches on a background thread while a step runs.
//!
//! Everything random is a function of `(seed, epoch, batch)` only, so an epoch's batches are
//! the same whether they are built ahead or not, on any thread, and a resumed run sees the
//! batches the uninterrupted run would have seen.

use std::sync::mpsc;

use convkit_tensor::{Rng, Tensor};

use crate::error::{DataError, Result};
use crate::folder::ImageFolder;

/// Images with their classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[n, c, h, w]`.
    pub images: Tensor,
    /// The class of each image.
    pub labels: Vec<usize>,
}

/// A labelled image collection that hands out batches by index.
///
/// `Sync` so that a [`Loader`] can build batches on another thread.
pub trait Dataset: Sync {
    /// The number of examples.
    fn len(&self) -> usize;

    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples `indices` (each below [`Dataset::len`]) as one batch, in that order.
    fn batch(&self, indices: &[usize]) -> Result<Batch>;
}

/// In-memory images `[n, c, h, w]` and their labels, e.g. decoded IDX files.
#[derive(Debug, Clone)]
pub struct TensorDataset {
    images: Tensor,
    labels: Vec<usize>,
}

impl TensorDataset {
    /// Pairs `images` `[n, c, h, w]` with `n` labels, each below `classes`.
    pub fn new(images: Tensor, labels: Vec<usize>, classes: usize) -> Result<Self> {
        check(&images, &labels, classes)?;
        Ok(Self { images, labels })
    }

    /// The images `[n, c, h, w]`.
    pub fn images(&self) -> &Tensor {
        &self.images
    }

    /// The labels.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }
}

fn check(images: &Tensor, labels: &[usize], classes: usize) -> Result<()> {
    let invalid = |msg: String| DataError::Invalid { what: "dataset", msg };
    let &[n, ..] = images.dims() else {
        return Err(invalid("images must be [n, c, h, w], got a scalar".into()));
    };
    if images.dims().len() != 4 {
        return Err(invalid(format!("images must be [n, c, h, w], got {:?}", images.dims())));
    }
    if labels.len() != n {
        return Err(invalid(format!("{n} images but {} labels", labels.len())));
    }
    if let Some(i) = labels.iter().position(|&l| l >= classes) {
        return Err(invalid(format!(
            "label {} of example {i} is not below the class count {classes}",
            labels[i]
        )));
    }
    Ok(())
}

/// Gathers the rows `indices` of `images` `[n, c, h, w]`.
fn gather(images: &Tensor, labels: &[usize], indices: &[usize]) -> Result<Batch> {
    let dims = images.dims();
    let (n, size) = (dims[0], dims[1..].iter().product::<usize>());
    let mut data = Vec::with_capacity(indices.len() * size);
    let mut out_labels = Vec::with_capacity(indices.len());
    for &i in indices {
        if i >= n {
            return Err(DataError::Invalid {
                what: "batch",
                msg: format!("index {i} is out of range for {n} examples"),
            });
        }
        data.extend_from_slice(&images.as_slice()[i * size..][..size]);
        out_labels.push(labels[i]);
    }
    let mut bdims = dims.to_vec();
    bdims[0] = indices.len();
    Ok(Batch { images: Tensor::from_vec(&bdims, data)?, labels: out_labels })
}

impl Dataset for TensorDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        gather(&self.images, &self.labels, indices)
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        gather(&self.images, &self.labels, indices)
    }
}

/// A stream of generator `purpose` for `(seed, epoch, batch)`: independent streams, each
/// computed directly (no replay of the streams before it).
pub fn stream(seed: u64, purpose: u64, epoch: usize, batch: usize) -> Rng {
    // SplitMix-style mixing of the coordinates into one seed.
    let mut h = seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for v in [epoch as u64, batch as u64] {
        h = (h ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    Rng::new(h)
}

const AUGMENT: u64 = 2;

/// The order of `len` examples in epoch `epoch` (0-based): a permutation that depends only on
/// `seed` and `epoch`.
///
/// The generator is the `epoch + 1`-th stream split off one seeded per run (`Rng::split`),
/// the order LeNet-5's runs have always used, so their results did not change when they
/// moved onto this loader.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    // "SHUFFLE!": apart from the streams that initialize weights from the same seed.
    let mut base = Rng::new(seed ^ 0x5348_5546_464C_4521);
    let mut rng = base.split();
    for _ in 0..epoch {
        rng = base.split();
    }
    let mut order: Vec<usize> = (0..len).collect();
    rng.shuffle(&mut order);
    order
}

/// A random change applied to each training image (torchvision's transforms of the same
/// names), drawn per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Augment {
    /// Mirror left-right with probability 1/2 (`RandomHorizontalFlip`).
    HorizontalFlip,
    /// Pad each side with `pad` zeros, then cut a random window of the original size
    /// (`RandomCrop(size, padding=pad)`).
    RandomCrop {
        /// Zeros added on each side.
        pad: usize,
    },
}

impl Augment {
    /// Applies the change to each image of `images` `[n, c, h, w]`.
    pub fn apply(self, images: &mut Tensor, rng: &mut Rng) -> Result<()> {
        let &[_, c, h, w] = images.dims() else {
            return Err(DataError::Invalid {
                what: "augment",
                msg: format!("expected [n, c, h, w], got {:?}", images.dims()),
            });
        };
        let size = c * h * w;
        if size == 0 {
            return Ok(());
        }
        match self {
            Augment::HorizontalFlip => {
                for img in images.data_mut().chunks_exact_mut(size) {
                    if rng.next_u64() >> 63 == 1 {
                        img.chunks_exact_mut(w).for_each(<[f32]>::reverse);
                    }
                }
            }
            Augment::RandomCrop { pad } => {
                let mut src = vec![0f32; size];
                for img in images.data_mut().chunks_exact_mut(size) {
                    // Window origin in padded coordinates, 0..=2·pad on each axis.
                    let dy = rng.below(2 * pad + 1) as isize - pad as isize;
                    let dx = rng.below(2 * pad + 1) as isize - pad as isize;
                    src.copy_from_slice(img);
                    for (plane_out, plane_in) in
                        img.chunks_exact_mut(h * w).zip(src.chunks_exact(h * w))
                    {
                        for (y, row) in plane_out.chunks_exact_mut(w).enumerate() {
                            let sy = y as isize + dy;
                            for (x, v) in row.iter_mut().enumerate() {
                                let sx = x as isize + dx;
                                let inside =
                                    (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                                *v = if inside {
                                    plane_in[sy as usize * w + sx as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// One epoch of batches of a [`Dataset`]: shuffled by `(seed, epoch)`, augmented, and built
/// `prefetch` batches ahead on a background thread.
///
/// ```
/// use convkit_data::{Dataset, Loader, TensorDataset};
/// use convkit_tensor::Tensor;
///
/// let data = TensorDataset::new(Tensor::zeros(&[10, 1, 4, 4]), vec![0; 10], 1)?;
/// let mut seen = 0;
/// Loader::new(&data, 4)?.seed(7).epoch(0).for_each(|i, batch| {
///     assert_eq!(batch.images.dims()[0], if i < 2 { 4 } else { 2 });
///     seen += batch.labels.len();
///     Ok::<_, convkit_data::DataError>(())
/// })?;
/// assert_eq!(seen, data.len());
/// # Ok::<(), convkit_data::DataError>(())
/// ```
pub struct Loader<'a, D: Dataset + ?Sized> {
    data: &'a D,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    shuffle: bool,
    augment: Vec<Augment>,
    prefetch: usize,
}

impl<'a, D: Dataset + ?Sized> Loader<'a, D> {
    /// Batches of `batch_size` (the last may be smaller), shuffled with seed 0, epoch 0, two
    /// batches built ahead, no augmentation.
    pub fn new(data: &'a D, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::Invalid {
                what: "batch size",
                msg: "must be at least 1".into(),
            });
        }
        Ok(Self {
            data,
            batch_size,
            seed: 0,
            epoch: 0,
            shuffle: true,
            augment: Vec::new(),
            prefetch: 2,
        })
    }

    /// The seed of the shuffling and the augmentations.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The epoch (0-based) whose order and augmentations to produce.
    pub fn epoch(mut self, epoch: usize) -> Self {
        self.epoch = epoch;
        self
    }

    /// Whether to shuffle (on by default; off for evaluation, in dataset order).
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// The augmentations, applied in order to every batch.
    pub fn augment(mut self, augment: &[Augment]) -> Self {
        self.augment = augment.to_vec();
        self
    }

    /// How many batches to build ahead on a background thread (0: build each on the calling
    /// thread when it is needed). The batches are the same either way.
    pub fn prefetch(mut self, batches: usize) -> Self {
        self.prefetch = batches;
        self
    }

    /// The number of batches of the epoch.
    pub fn len(&self) -> usize {
        self.data.len().div_ceil(self.batch_size)
    }

    /// Whether the epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The example indices of the epoch, in batch order.
    pub fn order(&self) -> Vec<usize> {
        if self.shuffle {
            epoch_order(self.data.len(), self.seed, self.epoch)
        } else {
            (0..self.data.len()).collect()
        }
    }

    /// Batch `b` of the epoch built from `order`.
    fn make(&self, order: &[usize], b: usize) -> Result<Batch> {
        let idx = &order[b * self.batch_size..order.len().min((b + 1) * self.batch_size)];
        let mut batch = self.data.batch(idx)?;
        if !self.augment.is_empty() {
            let mut rng = stream(self.seed, AUGMENT, self.epoch, b);
            for a in &self.augment {
                a.apply(&mut batch.images, &mut rng)?;
            }
        }
        Ok(batch)
    }

    /// Calls `f(b, batch)` for each batch `b` of the epoch in order, stopping at the first
    /// error (a dataset error becomes `E` through `From`). With prefetching, the next batches
    /// are built on a scoped thread while `f` runs; it stops when `f` fails.
    pub fn for_each<E: From<DataError>>(
        &self,
        mut f: impl FnMut(usize, Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let order = self.order();
        let n = self.len();
        if self.prefetch == 0 || n <= 1 {
            for b in 0..n {
                f(b, self.make(&order, b)?)?;
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(self.prefetch);
            let order = &order;
            scope.spawn(move || {
                for b in 0..n {
                    let batch = self.make(order, b);
                    let failed = batch.is_err();
                    // A closed channel means the consumer stopped: nothing more to build.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
            for b in 0..n {
                let batch = rx.recv().map_err(|_| DataError::Invalid {
                    what: "loader",
                    msg: "the batch-building thread stopped early".into(),
                })??;
                f(b, batch)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn numbered(n: usize, c: usize, h: usize, w: usize) -> TensorDataset {
        let data: Vec<f32> = (0..n * c * h * w).map(|i| i as f32).collect();
        let labels = (0..n).map(|i| i % 3).collect();
        TensorDataset::new(Tensor::from_vec(&[n, c, h, w], data).unwrap(), labels, 3).unwrap()
    }

    fn collect(loader: &Loader<'_, TensorDataset>) -> Vec<Batch> {
        let mut out = Vec::new();
        loader
            .for_each(|_, b| {
                out.push(b);
                Ok::<_, DataError>(())
            })
            .unwrap();
        out
    }

    #[test]
    fn orders_are_permutations_of_seed_and_epoch_only() {
        let a = epoch_order(100, 5, 3);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 5, 3));
        assert_ne!(a, epoch_order(100, 5, 4));
        assert_ne!(a, epoch_order(100, 6, 3));
    }

    #[test]
    fn prefetched_batches_are_the_batches_built_in_place() {
        let data = numbered(23, 2, 3, 4);
        let aug = [Augment::RandomCrop { pad: 1 }, Augment::HorizontalFlip];
        let base = Loader::new(&data, 5).unwrap().seed(9).epoch(2).augment(&aug);
        let inline = collect(&Loader { prefetch: 0, ..base.clone_cfg() });
        for ahead in [1, 2, 8] {
            assert_eq!(collect(&Loader { prefetch: ahead, ..base.clone_cfg() }), inline);
        }
        assert_eq!(inline.len(), 5);
        assert_eq!(inline[4].labels.len(), 3);
        let labels: Vec<usize> = inline.iter().flat_map(|b| b.labels.clone()).collect();
        let want: Vec<usize> = base.order().iter().map(|i| i % 3).collect();
        assert_eq!(labels, want);
    }

    impl<'a> Loader<'a, TensorDataset> {
        fn clone_cfg(&self) -> Self {
            Self { augment: self.augment.clone(), ..*self }
        }
    }

    #[test]
    fn unshuffled_batches_follow_the_dataset() {
        let data = numbered(7, 1, 2, 2);
        let batches = collect(&Loader::new(&data, 3).unwrap().shuffle(false));
        assert_eq!(batches[0].images.as_slice()[..4], [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(batches[2].images.dims(), [1, 1, 2, 2]);
        assert_eq!(batches[2].images.as_slice(), [24.0, 25.0, 26.0, 27.0]);
    }

    #[test]
    fn flip_mirrors_rows_and_crop_shifts_in_zeros() {
        let mut one = Tensor::from_vec(&[1, 1, 2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        // Find a seed whose first draw flips.
        let mut seed = 0;
        while stream(seed, 0, 0, 0).next_u64() >> 63 == 0 {
            seed += 1;
        }
        Augment::HorizontalFlip.apply(&mut one, &mut stream(seed, 0, 0, 0)).unwrap();
        assert_eq!(one.as_slice(), [3., 2., 1., 6., 5., 4.]);
        let data = numbered(50, 1, 4, 4);
        let mut imgs = data.images().clone();
        Augment::RandomCrop { pad: 2 }.apply(&mut imgs, &mut Rng::new(1)).unwrap();
        let mut shifted = 0;
        for (got, orig) in imgs.as_slice().chunks(16).zip(data.images().as_slice().chunks(16)) {
            // Every kept value is an original one; the rest are zeros.
            assert!(got.iter().all(|v| *v == 0.0 || orig.contains(v)));
            shifted += usize::from(got != orig);
        }
        assert!(shifted > 30, "most of 50 crops move: {shifted}");
        let mut flat = Tensor::zeros(&[4, 4]);
        let err = Augment::HorizontalFlip.apply(&mut flat, &mut Rng::new(0)).unwrap_err();
        assert!(err.to_string().contains("expected [n, c, h, w]"), "{err}");
    }

    #[test]
    fn bad_datasets_and_indices_are_named_errors() {
        let imgs = Tensor::zeros(&[3, 1, 2, 2]);
        let e = TensorDataset::new(imgs.clone(), vec![0, 1], 2).unwrap_err().to_string();
        assert!(e.contains("3 images but 2 labels"), "{e}");
        let e = TensorDataset::new(imgs.clone(), vec![0, 1, 2], 2).unwrap_err().to_string();
        assert!(e.contains("label 2 of example 2 is not below the class count 2"), "{e}");
        let e = TensorDataset::new(Tensor::zeros(&[3, 4]), vec![0; 3], 1).unwrap_err();
        assert!(e.to_string().contains("[n, c, h, w]"), "{e}");
        let data = TensorDataset::new(imgs, vec![0, 1, 1], 2).unwrap();
        assert!(data.batch(&[0, 3]).unwrap_err().to_string().contains("index 3 is out of range"));
        assert!(Loader::new(&data, 0).is_err());
    }

    #[test]
    fn a_failing_consumer_stops_the_builder() {
        let data = numbered(100, 1, 2, 2);
        let mut calls = 0;
        let r = Loader::new(&data, 1).unwrap().for_each(|b, _| {
            calls += 1;
            if b == 3 {
                Err(DataError::Invalid { what: "test", msg: "stop".into() })
            } else {
                Ok(())
            }
        });
        assert!(r.is_err());
        assert_eq!(calls, 4);
    }
}
