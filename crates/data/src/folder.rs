//! A folder of images sorted into one sub-folder per class, as torchvision's `ImageFolder`.

use std::fs;
use std::path::{Path, PathBuf};

use convkit_tensor::Tensor;
use image::imageops::FilterType;
use rayon::prelude::*;

use crate::decode::{PictureError, decode_picture};
use crate::error::{DataError, Result};

/// What to do with a file that cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadFile {
    /// Fail with an error naming the file (the default).
    #[default]
    Error,
    /// Leave it out, and list it in [`ImageFolder::skipped`] with the reason.
    Skip,
}

/// Options of [`ImageFolder::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolderConfig {
    /// Height and width every image is resized to (bilinear), `(28, 28)` by default.
    pub size: (u32, u32),
    /// One channel (luma) instead of three (RGB); `true` by default.
    pub grayscale: bool,
    /// Files that cannot be decoded: an error, or skipped with a warning.
    pub on_bad_file: BadFile,
    /// Largest side, in pixels, an image may declare; larger ones are refused before their
    /// pixels are decoded, so a small file cannot demand a huge allocation (8192 by default).
    pub max_side: u32,
}

impl Default for ImageFolderConfig {
    fn default() -> Self {
        Self { size: (28, 28), grayscale: true, on_bad_file: BadFile::Error, max_side: 8192 }
    }
}

/// Every image of a folder `root/<class>/…/*.png|jpg|jpeg`, decoded into one tensor.
///
/// Classes are the sub-folders of `root`, sorted by name; class `i` is the `i`-th. Files are
/// found recursively under each class folder and taken in sorted path order, so the same
/// folder always gives the same dataset. Other files are ignored, as torchvision does.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// Class names, sorted; a label is an index into this list.
    pub classes: Vec<String>,
    /// `[n, c, h, w]`, values in `[0, 1]` (the 8-bit pixels divided by 255).
    pub images: Tensor,
    /// The class of each image.
    pub labels: Vec<usize>,
    /// The file of each image.
    pub paths: Vec<PathBuf>,
    /// Files left out with [`BadFile::Skip`], with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

fn io_err(path: &Path, e: &std::io::Error) -> DataError {
    DataError::Io { path: path.to_path_buf(), msg: e.to_string() }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The image files under `dir`, recursively, in sorted order.
fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, &e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| io_err(dir, &e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            image_files(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Decodes one file into `c·h·w` planar values in `[0, 1]`.
fn decode(path: &Path, cfg: &ImageFolderConfig) -> std::result::Result<Vec<f32>, PictureError> {
    let bytes = fs::read(path)?;
    // Room for the largest allowed picture in 16-bit RGBA, and no more.
    let max_alloc = u64::from(cfg.max_side).pow(2) * 8;
    let picture = decode_picture(&bytes, cfg.max_side, max_alloc)?;
    Ok(picture_values(&picture, cfg.size, cfg.grayscale))
}

/// A decoded picture as the values [`ImageFolder::load`] gives each image: converted to
/// grayscale (one plane) or RGB (three planes), resized to `size` `(height, width)` when it
/// differs (triangle filter), planar `c·h·w` values `p / 255` in `[0, 1]`. Use it to prepare a
/// new picture exactly as a model's training images were.
pub fn picture_values(
    picture: &image::DynamicImage,
    size: (u32, u32),
    grayscale: bool,
) -> Vec<f32> {
    let (h, w) = size;
    let resize = |p: image::DynamicImage| {
        if p.width() == w && p.height() == h {
            p
        } else {
            p.resize_exact(w, h, FilterType::Triangle)
        }
    };
    let plane = (h * w) as usize;
    if grayscale {
        resize(image::DynamicImage::ImageLuma8(picture.to_luma8()))
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(|v| f32::from(v) / 255.0)
            .collect()
    } else {
        let rgb = resize(image::DynamicImage::ImageRgb8(picture.to_rgb8())).to_rgb8().into_raw();
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[ch * plane + i] = f32::from(v) / 255.0;
            }
        }
        out
    }
}

impl ImageFolder {
    /// Scans `root`, then decodes every image in parallel (rayon) into one tensor.
    ///
    /// Errors name what is at fault: a missing or unreadable folder, a root without class
    /// folders or without images, and — unless [`BadFile::Skip`] — the first file (in path
    /// order) that cannot be decoded or declares a side above [`ImageFolderConfig::max_side`].
    pub fn load(root: impl AsRef<Path>, cfg: &ImageFolderConfig) -> Result<ImageFolder> {
        let root = root.as_ref();
        let (h, w) = cfg.size;
        if h == 0 || w == 0 || cfg.max_side == 0 {
            return Err(DataError::Invalid {
                what: "ImageFolderConfig",
                msg: format!("size {:?} and max_side {} must be positive", cfg.size, cfg.max_side),
            });
        }
        let layout = |msg: String| DataError::Layout { path: root.to_path_buf(), msg };
        let mut class_dirs: Vec<PathBuf> = fs::read_dir(root)
            .map_err(|e| io_err(root, &e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| io_err(root, &e)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        class_dirs.sort();
        if class_dirs.is_empty() {
            return Err(layout("no class folders: expected root/<class>/<image>.png|jpg".into()));
        }
        let mut classes = Vec::new();
        let mut files = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            let name =
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            classes.push(name);
            let mut found = Vec::new();
            image_files(dir, &mut found)?;
            files.extend(found.into_iter().map(|p| (p, label)));
        }
        if files.is_empty() {
            return Err(layout(format!(
                "no .png, .jpg or .jpeg files in its {} class folders",
                classes.len()
            )));
        }
        let decoded: Vec<std::result::Result<Vec<f32>, PictureError>> =
            files.par_iter().map(|(path, _)| decode(path, cfg)).collect();
        let c = if cfg.grayscale { 1 } else { 3 };
        let per_image = c * (h * w) as usize;
        let (mut data, mut labels, mut paths, mut skipped) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((path, label), result) in files.into_iter().zip(decoded) {
            match result {
                Ok(values) => {
                    data.extend_from_slice(&values);
                    labels.push(label);
                    paths.push(path);
                }
                Err(e) if cfg.on_bad_file == BadFile::Skip => {
                    eprintln!("warning: skipping {}: {e}", path.display());
                    skipped.push((path, e.to_string()));
                }
                Err(source) => return Err(DataError::Image { path, source }),
            }
        }
        if labels.is_empty() {
            return Err(layout(format!(
                "none of its {} image files could be decoded",
                skipped.len()
            )));
        }
        let images = Tensor::from_vec(&[labels.len(), c, h as usize, w as usize], data)?;
        debug_assert_eq!(images.numel(), labels.len() * per_image);
        Ok(ImageFolder { classes, images, labels, paths, skipped })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images (never true for a loaded folder).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The mean and standard deviation of each channel over every image (f64 sums), for
    /// [`ImageFolder::normalize`] with the training set's statistics.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let d = self.images.dims();
        let (n, c, plane) = (d[0], d[1], d[2] * d[3]);
        let x = self.images.as_slice();
        let count = (n * plane) as f64;
        (0..c)
            .map(|k| {
                let vals =
                    (0..n).flat_map(|i| x[(i * c + k) * plane..(i * c + k + 1) * plane].iter());
                let (s, s2) = vals.fold((0f64, 0f64), |(s, s2), &v| {
                    (s + f64::from(v), s2 + f64::from(v) * f64::from(v))
                });
                let mean = s / count;
                (mean as f32, (s2 / count - mean * mean).max(0.0).sqrt() as f32)
            })
            .unzip()
    }

    /// `x ← (x − mean[c]) / std[c]` for every value of channel `c`.
    pub fn normalize(&mut self, mean: &[f32], std: &[f32]) -> Result<()> {
        let d = self.images.dims().to_vec();
        let (c, plane) = (d[1], d[2] * d[3]);
        if mean.len() != c || std.len() != c || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(DataError::Invalid {
                what: "normalize",
                msg: format!("needs {c} means and {c} positive stds, got {mean:?} and {std:?}"),
            });
        }
        let mut x = std::mem::replace(&mut self.images, Tensor::zeros(&[0])).into_vec();
        for (p, plane_vals) in x.chunks_mut(plane).enumerate() {
            let k = p % c;
            for v in plane_vals {
                *v = (*v - mean[k]) / std[k];
            }
        }
        self.images = Tensor::from_vec(&d, x)?;
        Ok(())
    }
}
