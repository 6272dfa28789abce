//! What `convkit` needs to train and use a zoo model on a user's data: the data ([`Source`]:
//! four IDX files or folders of images), the checkpoint's description of the model
//! ([`ZooSpec`]: enough to rebuild it and prepare its inputs), pictures as its inputs
//! ([`picture_input`]), evaluation with per-class accuracy and a confusion matrix
//! ([`evaluate`]), and the layer table ([`layer_table`]).
//!
//! ## Data
//! `--data PATH` is one of
//! - a folder with the four MNIST-format IDX files (`train-images-idx3-ubyte[.gz]`, …): both
//!   splits, 28x28 grayscale, classes `0`…`9`;
//! - an image-folder root with `train/` and `test/` (or `val/`) sub-folders, each holding one
//!   folder of PNG/JPEG images per class;
//! - one image folder (`PATH/<class>/*.png`), the held-out images in another (`--test`).
//!
//! Every image is resized to the run's size (bilinear) and converted to its channels (luma
//! or RGB) with values in `[0, 1]`, then normalized per channel with the training set's
//! mean and standard deviation, which the checkpoint keeps for evaluation and prediction.
//!
//! ## Checkpoint metadata
//! Besides the trainer's `train.*` recipe, a `convkit train` checkpoint carries
//! `model` (`resnet-small`), `input` (`1x28x28`), `classes` (the count), `class_names` (a JSON
//! array), `norm.mean` and `norm.std` (one decimal per channel, comma-separated, read back bit
//! for bit) and `data.kind` (`idx` or `image-folder`, which decides how a picture is
//! prepared for prediction).

use std::path::{Path, PathBuf};

use convkit_autograd::Var;
use convkit_data::{Dataset, ImageFolder, ImageFolderConfig, Loader};
use convkit_models::idx::{IdxFiles, IdxSplit, STANDARD_NAMES};
use convkit_models::preprocess::picture_to_mnist;
use convkit_models::zoo::ZooModel;
use convkit_models::{ModelError, Result, in_file, invalid, io_err};
use convkit_nn::checkpoint::{self, Metadata};
use convkit_nn::{PreparedModel, Sequential};
use convkit_tensor::{Rng, Tensor};
use image::DynamicImage;

/// Side of the images in MNIST-format IDX files.
pub const IDX_SIDE: u32 = 28;

/// Largest side, in pixels, a picture given to `predict` may declare (as for image folders).
pub const MAX_PICTURE_SIDE: u32 = 8192;

/// Metadata keys of a zoo checkpoint, in the order [`ZooSpec::from_metadata`] reads them.
pub const KEYS: [&str; 7] =
    ["model", "input", "classes", "class_names", "norm.mean", "norm.std", "data.kind"];

/// Where the training images came from, which decides how `predict` prepares a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// MNIST-format IDX files: a picture is made light on dark, cropped to the ink and
    /// centred as MNIST's digits were, then resized.
    Idx,
    /// Folders of images: a picture is resized and converted as the training images were.
    ImageFolder,
}

impl DataKind {
    /// The name in the checkpoint (`idx`, `image-folder`).
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Idx => "idx",
            DataKind::ImageFolder => "image-folder",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [DataKind::Idx, DataKind::ImageFolder].into_iter().find(|k| k.name() == s)
    }
}

/// Everything needed to rebuild a trained zoo model and feed it: stored in its checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ZooSpec {
    /// The architecture.
    pub model: ZooModel,
    /// The input `[c, h, w]`.
    pub input: [usize; 3],
    /// Class names; the model has one output per name.
    pub class_names: Vec<String>,
    /// Per-channel mean subtracted from the `[0, 1]` pixels.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation the centred pixels are divided by.
    pub std: Vec<f32>,
    /// Where the training images came from.
    pub data: DataKind,
}

/// `[1.5, 2.0]` → `1.5,2.0` (each value reads back bit for bit).
fn join_f32(xs: &[f32]) -> String {
    xs.iter().map(|&x| checkpoint::format_f32(x)).collect::<Vec<_>>().join(",")
}

impl ZooSpec {
    /// Writes the spec under [`KEYS`] into `meta`.
    pub fn to_metadata(&self, meta: &mut Metadata) {
        let [c, h, w] = self.input;
        let names = serde_json::Value::from(self.class_names.clone()).to_string();
        for (k, v) in KEYS.into_iter().zip([
            self.model.name().to_owned(),
            format!("{c}x{h}x{w}"),
            self.class_names.len().to_string(),
            names,
            join_f32(&self.mean),
            join_f32(&self.std),
            self.data.name().to_owned(),
        ]) {
            meta.insert(k.to_owned(), v);
        }
    }

    /// Reads a spec written by [`ZooSpec::to_metadata`]; errors name `path` and the key that
    /// is missing or wrong.
    pub fn from_metadata(meta: &Metadata, path: &Path) -> Result<Self> {
        let not_zoo = |msg: String| {
            invalid(
                "checkpoint",
                format!("{} is not a convkit zoo checkpoint: {msg}", path.display()),
            )
        };
        let get = |k: &str| {
            meta.get(k).map(String::as_str).ok_or_else(|| {
                not_zoo(format!("its metadata has no `{k}` (convkit train writes it)"))
            })
        };
        let bad = |k: &str, v: &str| not_zoo(format!("bad metadata `{k}` = {v:?}"));
        let name = get("model")?;
        let model = ZooModel::parse(name).map_err(|_| match name {
            "lenet5" => not_zoo("it holds LeNet-5; use `lenet` with it".into()),
            _ => bad("model", name),
        })?;
        let input_s = get("input")?;
        let input = crate::args::parse_chw(input_s).map_err(|_| bad("input", input_s))?;
        let names_s = get("class_names")?;
        let class_names: Vec<String> =
            serde_json::from_str(names_s).map_err(|_| bad("class_names", names_s))?;
        let classes_s = get("classes")?;
        if classes_s.parse::<usize>().ok() != Some(class_names.len()) || class_names.is_empty() {
            return Err(not_zoo(format!(
                "`classes` = {classes_s:?} does not count the {} `class_names`",
                class_names.len()
            )));
        }
        let floats = |k: &str| -> Result<Vec<f32>> {
            let v = get(k)?;
            let xs: Option<Vec<f32>> = v.split(',').map(checkpoint::parse_f32).collect();
            match xs {
                Some(xs) if xs.len() == input[0] => Ok(xs),
                _ => Err(bad(k, v)),
            }
        };
        let (mean, std) = (floats("norm.mean")?, floats("norm.std")?);
        let kind_s = get("data.kind")?;
        let data = DataKind::parse(kind_s).ok_or_else(|| bad("data.kind", kind_s))?;
        Ok(Self { model, input, class_names, mean, std, data })
    }

    /// A freshly initialized model of this spec.
    pub fn build(&self, rng: &mut Rng) -> Result<Sequential> {
        let model = self.model.build(self.input, self.class_names.len(), rng)?;
        check_input(&model, self.model, self.input)?;
        Ok(model)
    }

    /// The spec and the trained model (in evaluation mode) of a `convkit train` checkpoint.
    pub fn load(path: &Path) -> Result<(ZooSpec, Sequential)> {
        let (_, meta) = checkpoint::read(path)?;
        let spec = ZooSpec::from_metadata(&meta, path)?;
        let mut model = spec.build(&mut Rng::new(0))?;
        checkpoint::load(path, &model, true)?;
        convkit_nn::Module::set_training(&mut model, false);
        Ok((spec, model))
    }
}

/// Checks, from the shapes alone, that `model` accepts `[c, h, w]` inputs, so that a size
/// too small for its strides and pools is an error before any work.
pub fn check_input(model: &Sequential, which: ZooModel, input: [usize; 3]) -> Result<()> {
    let [c, h, w] = input;
    convkit_nn::summary::summary(model, &[1, c, h, w]).map_err(|e| {
        invalid("input", format!("{} cannot take {c}x{h}x{w} inputs: {e}", which.name()))
    })?;
    Ok(())
}

/// The layer table of `which` built for `[c, h, w]` inputs and `classes` classes at batch
/// size `batch`: shapes, parameters, FLOPs and the conv algorithm each layer runs, under a
/// title line (`resnet-small on [64, 1, 28, 28], 10 classes`).
pub fn layer_table(
    which: ZooModel,
    input: [usize; 3],
    classes: usize,
    batch: usize,
) -> Result<String> {
    let [c, h, w] = input;
    let model = which.build(input, classes, &mut Rng::new(0))?;
    let rows = convkit_nn::summary::summary(&model, &[batch, c, h, w])?;
    Ok(format!(
        "{} on [{batch}, {c}, {h}, {w}], {classes} classes\n{}",
        which.name(),
        convkit_nn::summary::table(&rows)
    ))
}

/// Where the images of a run are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The four IDX files of a folder (both splits).
    Idx(IdxFiles),
    /// Image folders: the training one, and the held-out one when there is one.
    Folders {
        /// `root/<class>/*.png`.
        train: PathBuf,
        /// The held-out images, in the same class folders.
        test: Option<PathBuf>,
    },
}

/// The held-out sub-folder of an image-folder root: `test/`, else `val/`.
fn held_out_dir(root: &Path) -> Option<PathBuf> {
    ["test", "val"].into_iter().map(|d| root.join(d)).find(|d| d.is_dir())
}

fn has_idx_file(dir: &Path) -> bool {
    STANDARD_NAMES.iter().any(|n| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file())
}

impl Source {
    /// Finds the data of `--data path` (see the [module docs](self)); `test` (`--test`) names
    /// the held-out image folder, replacing a `test/` or `val/` sub-folder.
    pub fn find(path: &Path, test: Option<&Path>) -> Result<Source> {
        if !path.is_dir() {
            let why = if path.exists() { "not a folder" } else { "no such folder" };
            return Err(ModelError::Io { path: path.to_path_buf(), msg: why.into() });
        }
        if has_idx_file(path) {
            if let Some(t) = test {
                return Err(invalid(
                    "--test",
                    format!(
                        "{} holds IDX files with their own test split; --test {} is for image folders",
                        path.display(),
                        t.display()
                    ),
                ));
            }
            return Ok(Source::Idx(IdxFiles::find(path)?));
        }
        let split = path.join("train");
        Ok(if split.is_dir() {
            let test = test.map(Path::to_path_buf).or_else(|| held_out_dir(path));
            Source::Folders { train: split, test }
        } else {
            Source::Folders { train: path.to_path_buf(), test: test.map(Path::to_path_buf) }
        })
    }

    /// The kind of data.
    pub fn kind(&self) -> DataKind {
        match self {
            Source::Idx(_) => DataKind::Idx,
            Source::Folders { .. } => DataKind::ImageFolder,
        }
    }

    /// The training images, `size` (height, width) and `channels` (1 or 3), in `[0, 1]`.
    pub fn load_train(&self, size: (u32, u32), channels: usize) -> Result<ImageFolder> {
        match self {
            Source::Idx(f) => load_idx(&f.train_images, &f.train_labels, size, channels),
            Source::Folders { train, .. } => load_folder(train, size, channels),
        }
    }

    /// The held-out images, when there are any, as [`Source::load_train`] loads the others.
    pub fn load_test(&self, size: (u32, u32), channels: usize) -> Result<Option<ImageFolder>> {
        match self {
            Source::Folders { test: None, .. } => Ok(None),
            _ => self.load_eval(size, channels).map(Some),
        }
    }

    /// The images to evaluate on: the IDX test split, the held-out folder (`test/`, `val/`
    /// or `--test`), or for a single image folder, that folder.
    pub fn load_eval(&self, size: (u32, u32), channels: usize) -> Result<ImageFolder> {
        match self {
            Source::Idx(f) => load_idx(&f.test_images, &f.test_labels, size, channels),
            Source::Folders { test: Some(test), .. } => load_folder(test, size, channels),
            Source::Folders { train, test: None } => load_folder(train, size, channels),
        }
    }

    /// The folder or files, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Idx(f) => {
                let dir = f.train_images.parent().unwrap_or(Path::new("."));
                format!("the IDX files in {}", dir.display())
            }
            Source::Folders { train, test: Some(test) } => {
                format!("{} (held out: {})", train.display(), test.display())
            }
            Source::Folders { train, test: None } => train.display().to_string(),
        }
    }
}

/// An image folder at `size` with `channels` channels.
pub fn load_folder(root: &Path, size: (u32, u32), channels: usize) -> Result<ImageFolder> {
    let grayscale = match channels {
        1 => true,
        3 => false,
        c => return Err(invalid("--channels", format!("must be 1 or 3, got {c}"))),
    };
    let cfg = ImageFolderConfig { size, grayscale, ..ImageFolderConfig::default() };
    Ok(ImageFolder::load(root, &cfg)?)
}

/// 8-bit grayscale pixels `width x height` → `size` as values in `[0, 1]`, prepared as image
/// folders prepare theirs ([`convkit_data::picture_values`]).
fn gray_plane(pixels: Vec<u8>, width: u32, height: u32, size: (u32, u32)) -> Result<Vec<f32>> {
    let img = image::GrayImage::from_raw(width, height, pixels)
        .ok_or_else(|| invalid("image", format!("not {width}x{height} pixels")))?;
    Ok(convkit_data::picture_values(&DynamicImage::ImageLuma8(img), size, true))
}

/// An IDX split (28x28, grayscale, labels 0–9) as an image folder of classes `0`…`9` at
/// `size`; each image's path is the image file with its index (`train-images-idx3-ubyte[7]`).
pub fn load_idx(
    images: &Path,
    labels: &Path,
    size: (u32, u32),
    channels: usize,
) -> Result<ImageFolder> {
    if channels != 1 {
        return Err(invalid(
            "--channels",
            format!("IDX images have 1 channel; {} asks for {channels}", images.display()),
        ));
    }
    let split = IdxSplit::read(images, labels, IDX_SIDE as usize, IDX_SIDE as usize, 10)?;
    let (h, w) = size;
    let mut data = Vec::with_capacity(split.len() * (h * w) as usize);
    let mut paths = Vec::with_capacity(split.len());
    for i in 0..split.len() {
        let px = split
            .images
            .image(i)
            .ok_or_else(|| invalid("idx", format!("{}: no image {i}", images.display())))?;
        data.extend(gray_plane(px.to_vec(), IDX_SIDE, IDX_SIDE, size)?);
        paths.push(PathBuf::from(format!("{}[{i}]", images.display())));
    }
    Ok(ImageFolder {
        classes: (0..10).map(|c| c.to_string()).collect(),
        images: Tensor::from_vec(&[split.len(), 1, h as usize, w as usize], data)?,
        labels: split.labels.labels.iter().map(|&l| usize::from(l)).collect(),
        paths,
        skipped: Vec::new(),
    })
}

/// `n` images of `data` evenly spaced through it (so that every class of a folder sorted by
/// class keeps its share), or all of them when `n` is at least their number.
pub fn subset(data: &ImageFolder, n: usize) -> Result<ImageFolder> {
    let len = data.len();
    if n >= len {
        return Ok(data.clone());
    }
    let indices: Vec<usize> = (0..n).map(|i| i * len / n).collect();
    let batch = data.batch(&indices)?;
    Ok(ImageFolder {
        classes: data.classes.clone(),
        images: batch.images,
        labels: batch.labels,
        paths: indices.iter().map(|&i| data.paths[i].clone()).collect(),
        skipped: Vec::new(),
    })
}

/// The per-channel mean and standard deviation of `data`, a constant channel's deviation
/// taken as 1 (it is then only centred).
pub fn channel_stats(data: &ImageFolder) -> (Vec<f32>, Vec<f32>) {
    let (mean, std) = data.channel_stats();
    (mean, std.into_iter().map(|s| if s > 0.0 && s.is_finite() { s } else { 1.0 }).collect())
}

/// Checks that `got` (the classes of `what`) are `want`, naming both lists otherwise.
pub fn check_classes(want: &[String], want_from: &str, got: &[String], what: &str) -> Result<()> {
    if want == got {
        return Ok(());
    }
    Err(invalid(
        "classes",
        format!(
            "{what} has the classes {got:?}, but {want_from} has {want:?}; they must be the same folders"
        ),
    ))
}

/// A PNG or JPEG file as the `c·h·w` normalized input of the model of `spec`: pictures for a
/// model trained on IDX files are first made MNIST-like (light on dark, cropped to the ink,
/// centred, 28x28, as `lenet predict` does), then every picture is converted and resized as
/// the training images were. Errors name the file.
pub fn picture_input(path: &Path, spec: &ZooSpec) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, &e))?;
    let max_alloc = u64::from(MAX_PICTURE_SIDE).pow(2) * 8;
    let picture = convkit_data::decode_picture(&bytes, MAX_PICTURE_SIDE, max_alloc)
        .map_err(|e| in_file(path, e))?;
    let [c, h, w] = spec.input;
    let size = (h as u32, w as u32);
    let mut x = match spec.data {
        DataKind::Idx => {
            let px = picture_to_mnist(&picture).map_err(|e| in_file(path, e))?;
            gray_plane(px, IDX_SIDE, IDX_SIDE, size)?
        }
        DataKind::ImageFolder => convkit_data::picture_values(&picture, size, c == 1),
    };
    if x.len() != c * h * w {
        let msg = format!("gives {} values, the model takes {c}x{h}x{w}", x.len());
        return Err(in_file(path, invalid("picture", msg)));
    }
    for (k, plane) in x.chunks_mut(h * w).enumerate() {
        for v in plane {
            *v = (*v - spec.mean[k]) / spec.std[k];
        }
    }
    Ok(x)
}

/// Loss, accuracy, per-class accuracy and confusion matrix of a model on a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Examples evaluated.
    pub n: usize,
    /// Mean cross-entropy per example.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Accuracy on the examples of each class (`None` for a class without examples).
    pub per_class: Vec<Option<f64>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates `model` (prepared for inference: batch norms folded, its evaluation-mode
/// function) on `data`, `batch` examples per forward pass.
pub fn evaluate(
    model: &Sequential,
    data: &dyn Dataset,
    classes: usize,
    batch: usize,
) -> Result<Report> {
    let prepared = PreparedModel::new(model)?;
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut loss_sum = 0f64;
    Loader::new(data, batch)?.shuffle(false).for_each(|_, b| {
        let logits = prepared.forward(&b.images)?;
        let loss = Var::constant(logits.clone()).cross_entropy(&b.labels)?;
        loss_sum += f64::from(loss.value().as_slice()[0]) * b.labels.len() as f64;
        for (&t, p) in b.labels.iter().zip(logits.argmax_axis(1)?) {
            confusion[t][p] += 1;
        }
        Ok::<_, ModelError>(())
    })?;
    let n = data.len();
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: usize = row.iter().sum();
            (total > 0).then(|| row[c] as f64 / total as f64)
        })
        .collect();
    let per = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
    Ok(Report { n, loss: per(loss_sum), accuracy: per(correct as f64), per_class, confusion })
}

/// The `k` most probable classes of each row of `logits` `[n, classes]`, most probable first.
pub fn top_k(logits: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let probs = logits.softmax(1)?;
    let classes = logits.dims().get(1).copied().unwrap_or(0).max(1);
    Ok(probs
        .as_slice()
        .chunks_exact(classes)
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.into_iter().take(k).map(|c| (c, row[c])).collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> ZooSpec {
        ZooSpec {
            model: ZooModel::ResnetSmall,
            input: [3, 12, 16],
            class_names: vec!["cat".into(), "dog, big".into()],
            mean: vec![0.1, 0.2, f32::from_bits(0.3f32.to_bits() + 1)],
            std: vec![1.0, 0.5, 0.25],
            data: DataKind::ImageFolder,
        }
    }

    #[test]
    fn specs_round_trip_through_metadata_and_name_what_is_missing() {
        let mut meta = Metadata::new();
        spec().to_metadata(&mut meta);
        assert_eq!(ZooSpec::from_metadata(&meta, Path::new("m")).unwrap(), spec());
        for key in KEYS {
            let mut m = meta.clone();
            m.remove(key);
            let e = ZooSpec::from_metadata(&m, Path::new("m.st")).unwrap_err().to_string();
            assert!(e.contains("m.st is not a convkit zoo checkpoint") && e.contains(key), "{e}");
        }
        meta.insert("model".into(), "lenet5".into());
        let e = ZooSpec::from_metadata(&meta, Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("LeNet-5") && e.contains("lenet"), "{e}");
        let mut m = Metadata::new();
        spec().to_metadata(&mut m);
        m.insert("norm.std".into(), "1.0,2.0".into());
        let e = ZooSpec::from_metadata(&m, Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("norm.std"), "{e}");
    }

    #[test]
    fn top_k_orders_by_probability() {
        let logits = Tensor::from_vec(&[2, 3], vec![0.0, 2.0, 1.0, 5.0, 0.0, 0.0]).unwrap();
        let top = top_k(&logits, 2).unwrap();
        assert_eq!(top[0].iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(top[1][0].0, 0);
        assert!(top[1][0].1 > 0.98);
    }
}
