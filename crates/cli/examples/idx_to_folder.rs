//! Writes an MNIST-format dataset as an image folder, to try `convkit` on folders of PNGs:
//! `OUT/train/<class>/NNNNN.png` and `OUT/test/<class>/NNNNN.png`, 28x28 grayscale, the first
//! `TRAIN` (`TEST`) images of each class of each split (all when left out).
//!
//! ```text
//! cargo run --release -p convkit-cli --example idx_to_folder -- \
//!     fashion-mnist /usr/share/datasets/fashion-mnist fashion-png 500 100
//! ```
//!
//! Class folders are named after the dataset's classes (`T-shirt/top` becomes `T-shirt-top`),
//! so `convkit` sorts them by name, as torchvision's `ImageFolder` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use convkit_models::fetch::DatasetKind;
use convkit_models::idx::{IdxFiles, read_idx_images, read_idx_labels};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, idx_dir, out) = match args.as_slice() {
        [kind, idx_dir, out, ..] => {
            (kind.parse::<DatasetKind>()?, PathBuf::from(idx_dir), PathBuf::from(out))
        }
        _ => bail!("usage: idx_to_folder mnist|fashion-mnist IDX_DIR OUT_DIR [TRAIN [TEST]]"),
    };
    let count = |i: usize| -> Result<usize> {
        args.get(i)
            .map_or(Ok(usize::MAX), |v| v.parse().with_context(|| format!("bad count {v:?}")))
    };
    let files = IdxFiles::find(&idx_dir)?;
    let names: Vec<String> = kind.class_names().iter().map(|n| n.replace('/', "-")).collect();
    for (split, images, labels, per_class) in [
        ("train", &files.train_images, &files.train_labels, count(3)?),
        ("test", &files.test_images, &files.test_labels, count(4)?),
    ] {
        let written = write_split(&out.join(split), images, labels, &names, per_class)?;
        println!(
            "{}: {written} images in {} class folders",
            out.join(split).display(),
            names.len()
        );
    }
    Ok(())
}

/// Writes the first `per_class` images of each class of one split; returns how many.
fn write_split(
    dir: &Path,
    images: &Path,
    labels: &Path,
    names: &[String],
    per_class: usize,
) -> Result<usize> {
    let images = read_idx_images(images)?;
    let labels = read_idx_labels(labels)?;
    let mut done = vec![0usize; names.len()];
    for name in names {
        std::fs::create_dir_all(dir.join(name))
            .with_context(|| format!("cannot create {}", dir.join(name).display()))?;
    }
    for (i, &label) in labels.labels.iter().enumerate() {
        let c = usize::from(label);
        let (Some(name), Some(px)) = (names.get(c), images.image(i)) else { continue };
        if done[c] >= per_class {
            continue;
        }
        let img = image::GrayImage::from_raw(images.cols as u32, images.rows as u32, px.to_vec())
            .context("image size")?;
        let path = dir.join(name).join(format!("{i:05}.png"));
        img.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
        done[c] += 1;
    }
    Ok(done.iter().sum())
}
