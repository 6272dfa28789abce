//! Fashion-MNIST as a folder of PNG images, trained with a zoo model through the generic
//! trainer: the recipe of `docs/training.md` ("Your own images").
//!
//! ```text
//! cargo run --release -p convkit-models --example fashion_folder -- \
//!     [--model vgg-small|resnet-small] [--epochs N] [--data IDX_DIR] [--out DIR] [--seed S]
//! ```
//!
//! Defaults: `vgg-small`, the model's [`ZooModel::recipe`] (its epochs and seed),
//! `--data /usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`),
//! `--out target/fashion-folder`.
//!
//! 1. Writes the IDX files once as `<out>/fashion-mnist-png/{train,test}/<class>/<index>.png`
//!    (60,000 and 10,000 8-bit grayscale PNGs); a later run finds them and skips this step.
//! 2. Reads both folders with `ImageFolder` (28x28 grayscale, `[0, 1]`) and normalizes them
//!    with the training folder's mean and standard deviation.
//! 3. Trains with `Trainer::fit`, printing one line per epoch (test accuracy, images/s) and
//!    saving `<out>/<model>.safetensors` (with `.optim.safetensors` and `.metrics.jsonl`
//!    beside it) after each epoch.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use convkit_data::{ImageFolder, ImageFolderConfig};
use convkit_models::fetch::{DEBIAN_FASHION_DIR, DatasetKind};
use convkit_models::idx::{IdxFiles, IdxSplit, write_image_folder};
use convkit_models::zoo::ZooModel;
use convkit_nn::checkpoint::Metadata;
use convkit_tensor::Rng;
use convkit_train::Trainer;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    model: ZooModel,
    epochs: Option<usize>,
    seed: Option<u64>,
    data: PathBuf,
    out: PathBuf,
}

fn parse_args() -> BoxResult<Args> {
    let mut args = Args {
        model: ZooModel::VggSmall,
        epochs: None,
        seed: None,
        data: PathBuf::from(DEBIAN_FASHION_DIR),
        out: PathBuf::from("target/fashion-folder"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = ZooModel::parse(&value()?)?,
            "--epochs" => args.epochs = Some(value()?.parse()?),
            "--seed" => args.seed = Some(value()?.parse()?),
            "--data" => args.data = value()?.into(),
            "--out" => args.out = value()?.into(),
            _ => {
                return Err(format!(
                    "unknown argument {flag:?}; expected --model, --epochs, --data, --out, --seed"
                )
                .into());
            }
        }
    }
    Ok(args)
}

/// Writes `split` as PNGs under `root` unless an earlier run did (the writer renames a
/// complete folder into place, so an existing `root` holds every image).
fn ensure_folder(split: &IdxSplit, root: &Path) -> BoxResult<()> {
    if root.is_dir() {
        println!("using the PNGs in {}", root.display());
        return Ok(());
    }
    let start = Instant::now();
    let names = DatasetKind::FashionMnist.class_names();
    let written = write_image_folder(split, &names, root, None)?;
    println!(
        "wrote {} PNGs to {} in {:.1} s",
        written.total(),
        root.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let files = IdxFiles::find(&args.data)?;
    let cache = args.out.join("fashion-mnist-png");
    std::fs::create_dir_all(&cache)?;
    let (train_dir, test_dir) = (cache.join("train"), cache.join("test"));
    if !(train_dir.is_dir() && test_dir.is_dir()) {
        let train = IdxSplit::read(&files.train_images, &files.train_labels, 28, 28, 10)?;
        ensure_folder(&train, &train_dir)?;
        let test = IdxSplit::read(&files.test_images, &files.test_labels, 28, 28, 10)?;
        ensure_folder(&test, &test_dir)?;
    }

    let load_start = Instant::now();
    let cfg = ImageFolderConfig::default();
    let mut train = ImageFolder::load(&train_dir, &cfg)?;
    let mut test = ImageFolder::load(&test_dir, &cfg)?;
    if train.classes != test.classes {
        return Err(
            format!("class folders differ: {:?} and {:?}", train.classes, test.classes).into()
        );
    }
    let (mean, std) = train.channel_stats();
    train.normalize(&mean, &std)?;
    test.normalize(&mean, &std)?;
    println!(
        "loaded {} training and {} test images in {:.1} s; mean {:.4}, std {:.4}",
        train.len(),
        test.len(),
        load_start.elapsed().as_secs_f64(),
        mean[0],
        std[0]
    );

    let mut recipe = args.model.recipe();
    recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
    recipe.seed = args.seed.unwrap_or(recipe.seed);
    println!("{}: {recipe:?}, {} rayon threads", args.model.name(), rayon::current_num_threads());
    let mut rng = Rng::new(recipe.seed);
    let model = args.model.build([1, 28, 28], train.classes.len(), &mut rng)?;
    let checkpoint = args.out.join(format!("{}.safetensors", args.model.name()));
    // A fresh run: the metrics file gets one line per epoch of this run only.
    let _ = std::fs::remove_file(convkit_train::metrics_path(&checkpoint));
    let mut trainer = Trainer::new(model, recipe)?;
    let train_start = Instant::now();
    let metrics = trainer.fit(&train, Some(&test), Some(&checkpoint), &mut |_| {}, &mut |m| {
        let t = m.test.unwrap();
        println!(
            "epoch {:>2}  lr {:.2e}  train loss {:.4} acc {:.4}  test loss {:.4} acc {:.4}  \
             {:.1} s  {:.0} images/s",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_acc,
            t.loss,
            t.accuracy,
            m.seconds,
            m.images_per_sec
        );
    })?;
    // The last checkpoint again, now with what inference needs to read it back.
    let mut meta = Metadata::new();
    meta.insert("model".into(), args.model.name().into());
    meta.insert("classes".into(), train.classes.join(","));
    meta.insert("normalize.mean".into(), format!("{:?}", mean[0]));
    meta.insert("normalize.std".into(), format!("{:?}", std[0]));
    trainer.save(&checkpoint, &meta)?;
    let last = metrics.last().and_then(|m| m.test).ok_or("no epoch was trained")?;
    println!(
        "final test accuracy {:.4} ({} / {}); training {:.1} s, total {:.1} s; saved {}",
        last.accuracy,
        last.correct,
        last.total,
        train_start.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        checkpoint.display()
    );
    Ok(())
}
