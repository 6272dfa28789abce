//! Preprocessing and batching: 28x28 `u8` images → padded, normalized `f32` tensors.
//!
//! Each image is zero-padded by 2 pixels to 32x32 *before* scaling, then scaled to `[0, 1]`
//! and normalized, `x = (p/255 − mean)/std`, all in `f32` — the same operations, in the same
//! order, as the PyTorch reference, so the inputs agree bit for bit (the padding becomes
//! `−mean/std`, −0.4242 with the default MNIST constants).
//!
//! A [`Dataset`] keeps the raw bytes (47 MB for 60,000 images, where preprocessed `f32`s
//! would take 245 MB of the 400 MB budget) and preprocesses each batch through a 256-entry
//! lookup table holding exactly the values [`Normalization::apply`] gives. It is a
//! [`convkit_data::Dataset`], so the generic loader shuffles and batches it.

use convkit_nn::checkpoint::{self, Metadata};
use convkit_tensor::Tensor;

use crate::error::{ModelError, Result, invalid};
use crate::idx::IdxSplit;

/// Side of the raw images.
pub const IMAGE_SIZE: usize = 28;
/// Pixels added on each side.
pub const PAD: usize = 2;
/// Side of a padded image, the network's input: `IMAGE_SIZE + 2·PAD` = 32.
pub const PADDED_SIZE: usize = IMAGE_SIZE + 2 * PAD;
/// Number of classes (the ten digits, or Fashion-MNIST's ten kinds of clothing).
pub const CLASSES: usize = 10;
/// The padded side under its local name.
const INPUT_SIZE: usize = PADDED_SIZE;

/// The constants of `x = (p/255 − mean)/std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Subtracted after scaling to `[0, 1]`.
    pub mean: f32,
    /// Divides after subtracting the mean.
    pub std: f32,
}

impl Default for Normalization {
    /// The customary MNIST constants (0.1307, 0.3081), used for Fashion-MNIST too.
    fn default() -> Self {
        Self { mean: 0.1307, std: 0.3081 }
    }
}

impl Normalization {
    /// Checks that `std` is positive and both are finite.
    pub fn new(mean: f32, std: f32) -> Result<Self> {
        if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
            return Err(invalid(
                "normalization",
                format!("mean {mean}, std {std}: need a finite mean and std > 0"),
            ));
        }
        Ok(Self { mean, std })
    }

    /// The normalized value of a pixel.
    #[inline]
    pub fn apply(&self, pixel: u8) -> f32 {
        (f32::from(pixel) / 255.0 - self.mean) / self.std
    }

    /// Writes `norm.mean` and `norm.std` as decimals that read back exactly
    /// ([`checkpoint::format_f32`]).
    pub fn to_metadata(&self, meta: &mut Metadata) {
        meta.insert("norm.mean".into(), checkpoint::format_f32(self.mean));
        meta.insert("norm.std".into(), checkpoint::format_f32(self.std));
    }

    /// Reads the constants written by [`Normalization::to_metadata`]; the default when
    /// absent (a PyTorch `state_dict` has no metadata).
    pub fn from_metadata(meta: &Metadata) -> Result<Self> {
        let get = |key: &str, default: f32| -> Result<f32> {
            match meta.get(key) {
                None => Ok(default),
                Some(v) => checkpoint::parse_f32(v).ok_or_else(|| {
                    invalid("checkpoint metadata", format!("{key} = {v:?} is not a number"))
                }),
            }
        };
        let d = Self::default();
        Self::new(get("norm.mean", d.mean)?, get("norm.std", d.std)?)
    }
}

/// Pads one 28x28 image to 32x32 with zeros and normalizes it into `out` (1024 values).
pub fn preprocess_into(pixels: &[u8], norm: Normalization, out: &mut [f32]) -> Result<()> {
    if pixels.len() != IMAGE_SIZE * IMAGE_SIZE || out.len() != INPUT_SIZE * INPUT_SIZE {
        return Err(invalid(
            "preprocess",
            format!("{} pixels into {} values, expected 784 into 1024", pixels.len(), out.len()),
        ));
    }
    out.fill(norm.apply(0));
    for (r, row) in pixels.chunks_exact(IMAGE_SIZE).enumerate() {
        let o = (r + PAD) * INPUT_SIZE + PAD;
        for (dst, &p) in out[o..o + IMAGE_SIZE].iter_mut().zip(row) {
            *dst = norm.apply(p);
        }
    }
    Ok(())
}

/// Preprocesses images (each 784 bytes) into a `[n, 1, 32, 32]` tensor.
pub fn preprocess(images: &[&[u8]], norm: Normalization) -> Result<Tensor> {
    let size = INPUT_SIZE * INPUT_SIZE;
    let mut data = vec![0.0; images.len() * size];
    for (img, out) in images.iter().zip(data.chunks_exact_mut(size)) {
        preprocess_into(img, norm, out)?;
    }
    Ok(Tensor::from_vec(&[images.len(), 1, INPUT_SIZE, INPUT_SIZE], data)?)
}

/// Images and labels of one split, ready for batching.
///
/// The raw 28x28 bytes are kept (47 MB for 60,000 images instead of 245 MB of `f32`) and a
/// 256-entry lookup table turns them into normalized values per batch, which costs far less
/// than one convolution.
#[derive(Debug, Clone)]
pub struct Dataset {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    norm: Normalization,
    table: [f32; 256],
}

pub use convkit_data::Batch;

impl Dataset {
    /// A dataset over the first `limit` examples of `split` (all when `None`).
    pub fn new(split: &IdxSplit, norm: Normalization, limit: Option<usize>) -> Result<Self> {
        let (rows, cols) = (split.images.rows, split.images.cols);
        if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE) {
            return Err(invalid("dataset", format!("images are {rows}x{cols}, expected 28x28")));
        }
        let n = limit.map_or(split.len(), |l| l.min(split.len()));
        if n == 0 {
            return Err(invalid("dataset", "no examples (empty split or --limit 0)"));
        }
        let size = IMAGE_SIZE * IMAGE_SIZE;
        let pixels = split.images.pixels[..n * size].to_vec();
        let labels = split.labels.labels[..n].to_vec();
        Ok(Self::from_parts(pixels, labels, norm))
    }

    /// A dataset from raw 28x28 images (784 bytes each, concatenated) and labels.
    pub fn from_raw(pixels: Vec<u8>, labels: Vec<u8>, norm: Normalization) -> Result<Self> {
        if pixels.len() != labels.len() * IMAGE_SIZE * IMAGE_SIZE || labels.is_empty() {
            return Err(invalid(
                "dataset",
                format!(
                    "{} pixel bytes for {} labels (need 784 per label, at least one)",
                    pixels.len(),
                    labels.len()
                ),
            ));
        }
        Ok(Self::from_parts(pixels, labels, norm))
    }

    fn from_parts(pixels: Vec<u8>, labels: Vec<u8>, norm: Normalization) -> Self {
        let mut table = [0.0; 256];
        for (p, t) in table.iter_mut().enumerate() {
            *t = norm.apply(p as u8);
        }
        Self { pixels, labels, norm, table }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples (never true for a constructed dataset).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The normalization applied.
    pub fn normalization(&self) -> Normalization {
        self.norm
    }

    /// The labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The raw pixels of example `i`.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = IMAGE_SIZE * IMAGE_SIZE;
        self.pixels.get(i * size..(i + 1) * size)
    }

    /// The examples at `indices`, preprocessed, as one batch: inputs `[n, 1, 32, 32]`.
    pub fn batch(&self, indices: &[usize]) -> convkit_data::Result<Batch> {
        let (size, in_size) = (IMAGE_SIZE * IMAGE_SIZE, INPUT_SIZE * INPUT_SIZE);
        let mut data = vec![self.table[0]; indices.len() * in_size];
        let mut labels = Vec::with_capacity(indices.len());
        for (&i, out) in indices.iter().zip(data.chunks_exact_mut(in_size)) {
            let img = self.pixels.get(i * size..(i + 1) * size).ok_or_else(|| {
                convkit_data::DataError::Invalid {
                    what: "batch",
                    msg: format!("index {i} out of range for {} examples", self.len()),
                }
            })?;
            for (r, row) in img.chunks_exact(IMAGE_SIZE).enumerate() {
                let o = (r + PAD) * INPUT_SIZE + PAD;
                for (dst, &p) in out[o..o + IMAGE_SIZE].iter_mut().zip(row) {
                    *dst = self.table[usize::from(p)];
                }
            }
            labels.push(usize::from(self.labels[i]));
        }
        let images = Tensor::from_vec(&[indices.len(), 1, INPUT_SIZE, INPUT_SIZE], data)?;
        Ok(Batch { images, labels })
    }
}

impl convkit_data::Dataset for Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn batch(&self, indices: &[usize]) -> convkit_data::Result<Batch> {
        Dataset::batch(self, indices)
    }
}

/// Checks a label vector for a [`ModelError`]-free range (all below `classes`).
pub fn check_labels(labels: &[u8], classes: usize) -> Result<()> {
    match labels.iter().position(|&l| usize::from(l) >= classes) {
        Some(i) => Err(ModelError::Invalid {
            what: "labels",
            msg: format!("label {} at index {i} is not below {classes}", labels[i]),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn toy(n: usize) -> Dataset {
        let pixels: Vec<u8> = (0..n * 784).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        Dataset::from_raw(pixels, labels, Normalization::default()).unwrap()
    }

    #[test]
    fn padding_is_minus_mean_over_std_and_pixels_land_inside() {
        let mut img = vec![0u8; 784];
        img[0] = 255; // top-left pixel of the image → (2, 2) of the input
        img[783] = 51;
        let x = preprocess(&[&img], Normalization::default()).unwrap();
        let v = x.as_slice();
        assert_eq!(x.dims(), [1, 1, 32, 32]);
        assert_eq!(v[0], (0.0 - 0.1307f32) / 0.3081);
        assert!((v[0] + 0.4242).abs() < 1e-4);
        assert_eq!(v[2 * 32 + 2], (1.0 - 0.1307f32) / 0.3081);
        assert_eq!(v[29 * 32 + 29], (51.0f32 / 255.0 - 0.1307) / 0.3081);
        assert_eq!(v[29 * 32 + 30], v[0]);
    }

    #[test]
    fn batch_matches_preprocess() {
        let d = toy(5);
        let b = d.batch(&[3, 1]).unwrap();
        let x = preprocess(&[d.image(3).unwrap(), d.image(1).unwrap()], d.normalization()).unwrap();
        assert_eq!(b.images.as_slice(), x.as_slice());
        assert_eq!(b.labels, vec![3, 1]);
        assert!(d.batch(&[5]).is_err());
    }

    #[test]
    fn normalization_round_trips_through_metadata() {
        let n = Normalization::new(0.2860, 0.3530).unwrap();
        let mut m = Metadata::new();
        n.to_metadata(&mut m);
        assert_eq!(Normalization::from_metadata(&m).unwrap(), n);
        assert_eq!(
            Normalization::from_metadata(&Metadata::new()).unwrap(),
            Normalization::default()
        );
        m.insert("norm.std".into(), "zero".into());
        assert!(Normalization::from_metadata(&m).is_err());
        assert!(Normalization::new(0.1, 0.0).is_err());
    }

    #[test]
    fn bad_raw_sizes_are_errors() {
        assert!(Dataset::from_raw(vec![0; 783], vec![1], Normalization::default()).is_err());
        assert!(Dataset::from_raw(vec![], vec![], Normalization::default()).is_err());
        assert!(check_labels(&[1, 10], 10).is_err());
    }
}
