//! Writes an MNIST-format dataset as an image folder, to try `convkit` on folders of PNGs:
//! `OUT/train/<class>/NNNNN.png` and `OUT/test/<class>/NNNNN.png`, 28x28 grayscale, the first
//! `TRAIN` (`TEST`) images of each split (all when left out).
//!
//! ```text
//! cargo run --release -p convkit-cli --example idx_to_folder -- \
//!     fashion-mnist /usr/share/datasets/fashion-mnist fashion-png 5000 1000
//! ```
//!
//! The writing is [`convkit_models::idx::write_image_folder`]'s: class folders are named
//! after the dataset's classes (`T-shirt/top` becomes `T-shirt_top`), so `convkit` sorts them
//! by name, as torchvision's `ImageFolder` does, and each split's folder appears complete or
//! not at all.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use convkit_models::fetch::DatasetKind;
use convkit_models::idx::{IdxFiles, IdxSplit, write_image_folder};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, idx_dir, out) = match args.as_slice() {
        [kind, idx_dir, out, ..] if args.len() <= 5 => {
            (kind.parse::<DatasetKind>()?, PathBuf::from(idx_dir), PathBuf::from(out))
        }
        _ => bail!("usage: idx_to_folder mnist|fashion-mnist IDX_DIR OUT_DIR [TRAIN [TEST]]"),
    };
    let count = |i: usize| -> Result<Option<usize>> {
        args.get(i).map(|v| v.parse().with_context(|| format!("bad count {v:?}"))).transpose()
    };
    let (train_limit, test_limit) = (count(3)?, count(4)?);
    let files = IdxFiles::find(&idx_dir)?;
    let names = kind.class_names();
    for (split, images, labels, limit) in [
        ("train", &files.train_images, &files.train_labels, train_limit),
        ("test", &files.test_images, &files.test_labels, test_limit),
    ] {
        let data = IdxSplit::read(images, labels, 28, 28, 10)?;
        let written = write_image_folder(&data, &names, &out.join(split), limit)?;
        println!(
            "{}: {} images in {} class folders ({} per class)",
            written.root.display(),
            written.total(),
            written.class_dirs.len(),
            written.counts.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
