//! `convkit` — train, evaluate and use the zoo's CNNs on your own images.
//!
//! ```text
//! convkit train   --model vgg-small|resnet-small --data PATH [--test DIR] [--size 28] [--channels 1]
//!                 [--epochs 10] [--batch-size 64] [--optimizer adam] [--lr 0.001] [--schedule cosine]
//!                 [--augment hflip,crop:2] [--seed 0] [--out run.safetensors] [--resume CKPT] [--json]
//! convkit eval    --weights CKPT --data PATH [--json]
//! convkit predict --weights CKPT IMAGE… [--top 3] [--json]
//! convkit info    --model NAME [--input 1x28x28] [--classes 10] [--batch-size 64] | --weights CKPT
//! ```
//!
//! `--data PATH` is a folder with the four MNIST-format IDX files, an image-folder root with
//! `train/` and `test/` (or `val/`) sub-folders, or one image folder (`PATH/<class>/*.png`)
//! with the held-out images in `--test DIR`. The checkpoint carries the model's name, input
//! shape, class names and normalization, so `eval`, `predict`, `info` and `--resume` need
//! nothing else (see `convkit_cli::zoo`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use convkit_cli::args::{
    AugmentList, RecipeArgs, parse_augment_list, parse_chw, parse_size, with_threads,
    zoo_model_parser,
};
use convkit_cli::runs::{RunArgs, run_limit, set_limit, train_epochs};
use convkit_cli::zoo::{
    self, DataKind, IDX_SIDE, Source, ZooSpec, channel_stats, check_classes, layer_table,
    picture_input, subset, top_k,
};
use convkit_models::zoo::ZooModel;
use convkit_nn::checkpoint;
use convkit_nn::{PreparedModel, num_params};
use convkit_tensor::{Rng, Tensor};
use convkit_train::{TrainConfig, Trainer};

#[derive(Parser)]
#[command(
    name = "convkit",
    version,
    about = "Train, evaluate and use the zoo's CNNs (vgg-small, resnet-small) on IDX files or folders of images"
)]
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a zoo model, saving a checkpoint after every epoch.
    Train(TrainArgs),
    /// Loss, accuracy, per-class accuracy and confusion matrix on held-out images.
    Eval(EvalArgs),
    /// The most probable classes of PNG/JPEG images.
    Predict(PredictArgs),
    /// Layer table: output shapes, parameters, FLOPs, and the conv algorithm that runs.
    Info(InfoArgs),
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    opts: RecipeArgs,
    /// The zoo model [required unless --resume].
    #[arg(long, value_parser = zoo_model_parser())]
    model: Option<ZooModel>,
    /// A folder with the four IDX files (raw or .gz), an image-folder root with train/ and
    /// test/ (or val/), or one image folder (PATH/CLASS/*.png|jpg) [default with --resume:
    /// the resumed run's].
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// The held-out image folder (same class folders as the training one) [default with
    /// --resume: the resumed run's, when --data is left out too].
    #[arg(long, value_name = "DIR")]
    test: Option<PathBuf>,
    /// Height and width the images are resized to: N or HxW [default: 28].
    #[arg(long, value_name = "H[xW]", value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// 1 (grayscale) or 3 (RGB) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
    channels: Option<u8>,
    /// Random changes to each training image, comma-separated: hflip (mirror left-right),
    /// crop:PAD (pad by PAD zeros, cut a random window) [default: the recipe's, crop:2,hflip;
    /// `--augment none` for none].
    #[arg(long, value_parser = parse_augment_list)]
    augment: Option<AugmentList>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint written by `convkit train`.
    #[arg(long)]
    weights: PathBuf,
    /// IDX files (their test split), an image-folder root (its test/ or val/ folder) or one
    /// image folder.
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PredictArgs {
    /// A checkpoint written by `convkit train`.
    #[arg(long)]
    weights: PathBuf,
    /// PNG or JPEG images (any size; resized to the model's input).
    #[arg(value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InfoArgs {
    /// A zoo model.
    #[arg(long, value_parser = zoo_model_parser(), required_unless_present = "weights")]
    model: Option<ZooModel>,
    /// Input shape CxHxW.
    #[arg(long, value_parser = parse_chw, default_value = "1x28x28", conflicts_with = "weights")]
    input: [usize; 3],
    /// Number of classes.
    #[arg(long, default_value_t = 10, conflicts_with = "weights")]
    classes: usize,
    /// The model of a checkpoint written by `convkit train`, instead of --model.
    #[arg(long, conflicts_with = "model")]
    weights: Option<PathBuf>,
    /// Batch size the table (FLOPs, algorithm choice) is computed for.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => with_threads(a.run.threads, || train(&a)),
        Command::Eval(a) => with_threads(a.threads, || eval(&a)),
        Command::Predict(a) => with_threads(a.threads, || predict(&a)),
        Command::Info(a) => info(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convkit: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The recipe of a new run: the model's ([`ZooModel::recipe`]) with the options given.
fn recipe(a: &TrainArgs, model: ZooModel) -> TrainConfig {
    let mut cfg = a.opts.apply(model.recipe());
    if let Some(list) = &a.augment {
        cfg.augment = list.0.clone();
    }
    cfg
}

/// The options that a resumed run takes from its checkpoint, when given.
fn recipe_options_given(a: &TrainArgs) -> Vec<&'static str> {
    let mut given = a.opts.given();
    if a.augment.is_some() {
        given.push("--augment");
    }
    given
}

/// The metadata keys of the data a run trained on: `--data` and `--test` as absolute paths.
const DATA_PATH_KEY: &str = "data.path";
const TEST_PATH_KEY: &str = "data.test";

/// What a resumed run takes from its checkpoint.
struct Resumed {
    checkpoint: PathBuf,
    spec: ZooSpec,
    limit: Option<usize>,
    data: Option<PathBuf>,
    test: Option<PathBuf>,
}

/// A resumed run's spec, `--limit` and data, after checking that the options given agree.
fn resumed_run(a: &TrainArgs, ckpt: &Path) -> Result<Resumed> {
    let (_, meta) = checkpoint::read(ckpt)?;
    let spec = ZooSpec::from_metadata(&meta, ckpt)?;
    let given = recipe_options_given(a);
    if !given.is_empty() {
        bail!(
            "{}: the recipe comes from the resumed checkpoint {}; leave {} out when resuming \
             (only --epochs may change)",
            given.join(", "),
            ckpt.display(),
            if given.len() == 1 { "it" } else { "them" }
        );
    }
    let [c, h, w] = spec.input;
    if let Some(m) = a.model.filter(|&m| m != spec.model) {
        bail!("--model {}: the resumed run trains {}", m.name(), spec.model.name());
    }
    if let Some((sh, sw)) = a.size.filter(|&s| s != (h as u32, w as u32)) {
        bail!("--size {sh}x{sw}: the resumed run's images are {h}x{w}; leave it out when resuming");
    }
    if let Some(ch) = a.channels.filter(|&ch| usize::from(ch) != c) {
        bail!("--channels {ch}: the resumed run's images have {c}; leave it out when resuming");
    }
    let limit = run_limit(&meta, a.run.limit)?;
    let count = |k: &str| meta.get(k).and_then(|v| v.parse::<usize>().ok());
    if let (Some(done), Some(total)) =
        (count("train.epochs_done"), a.opts.epochs.or(count("train.epochs")))
        && done >= total
    {
        bail!("the checkpoint has {done} epochs done already; pass a larger --epochs");
    }
    let path = |k: &str| meta.get(k).map(PathBuf::from);
    Ok(Resumed {
        checkpoint: ckpt.to_path_buf(),
        spec,
        limit,
        data: path(DATA_PATH_KEY),
        test: path(TEST_PATH_KEY),
    })
}

/// `path` made absolute, so that a resume from another folder finds the data.
fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

fn train(a: &TrainArgs) -> Result<()> {
    a.run.check_limit()?;
    let resumed = match &a.run.resume {
        Some(ckpt) => Some(
            resumed_run(a, ckpt)
                .with_context(|| format!("cannot resume from {}", ckpt.display()))?,
        ),
        None => None,
    };
    let model = match (&resumed, a.model) {
        (Some(r), _) => r.spec.model,
        (None, Some(m)) => m,
        (None, None) => bail!(
            "--model is required (one of {}) unless --resume continues a run",
            ZooModel::ALL.map(ZooModel::name).join(", ")
        ),
    };
    // The data: as given, else (resuming) the resumed run's.
    let (data, test) = match (&a.data, &resumed) {
        (Some(d), _) => (d.clone(), a.test.clone()),
        (None, Some(Resumed { data: Some(d), test, .. })) => {
            (d.clone(), a.test.clone().or(test.clone()))
        }
        (None, _) => bail!("--data is required: the resumed checkpoint does not name its data"),
    };
    let source = Source::find(&data, test.as_deref())?;
    let (size, channels) = match &resumed {
        Some(Resumed { spec, .. }) => {
            if source.kind() != spec.data {
                bail!(
                    "the resumed run trained on {} data, {} is {}",
                    spec.data.name(),
                    data.display(),
                    source.kind().name()
                );
            }
            let [c, h, w] = spec.input;
            ((h as u32, w as u32), c)
        }
        None => {
            let side = IDX_SIDE;
            (a.size.unwrap_or((side, side)), a.channels.map_or(1, usize::from))
        }
    };
    let mut train_set = source.load_train(size, channels)?;
    let mut test_set = source.load_test(size, channels)?;
    if let (Some(test), Source::Folders { train: tdir, test: Some(hdir) }) = (&test_set, &source) {
        let want_from = format!("the training folder {}", tdir.display());
        check_classes(&train_set.classes, &want_from, &test.classes, &hdir.display().to_string())?;
    }
    let limit = resumed.as_ref().map_or(a.run.limit, |r| r.limit);
    if let Some(n) = limit {
        train_set = subset(&train_set, n)?;
    }
    let spec = match &resumed {
        Some(Resumed { spec, checkpoint, .. }) => {
            let from = format!("the resumed checkpoint {}", checkpoint.display());
            check_classes(&spec.class_names, &from, &train_set.classes, &source.describe())?;
            spec.clone()
        }
        None => {
            let (mean, std) = channel_stats(&train_set);
            let (h, w) = size;
            ZooSpec {
                model,
                input: [channels, h as usize, w as usize],
                class_names: train_set.classes.clone(),
                mean,
                std,
                data: source.kind(),
            }
        }
    };
    train_set.normalize(&spec.mean, &spec.std)?;
    if let Some(t) = &mut test_set {
        t.normalize(&spec.mean, &spec.std)?;
    }
    let mut trainer = match &resumed {
        Some(Resumed { checkpoint: ckpt, .. }) => {
            Trainer::resume(spec.build(&mut Rng::new(0))?, ckpt, a.opts.epochs)
                .with_context(|| format!("cannot resume from {}", ckpt.display()))?
        }
        None => {
            let cfg = recipe(a, spec.model);
            cfg.validate()?;
            let net = spec.build(&mut Rng::new(cfg.seed))?;
            let mut t = Trainer::new(net, cfg)?;
            spec.to_metadata(t.metadata_mut());
            let meta = t.metadata_mut();
            set_limit(meta, a.run.limit);
            meta.insert(DATA_PATH_KEY.into(), absolute(&data));
            if let Some(test) = &test {
                meta.insert(TEST_PATH_KEY.into(), absolute(test));
            }
            t
        }
    };
    if trainer.finished() {
        bail!(
            "the checkpoint has {} epochs done already; pass a larger --epochs",
            trainer.epochs_done()
        );
    }
    let cfg = trainer.config().clone();
    if !a.run.json {
        let [c, h, w] = spec.input;
        let held_out = test_set.as_ref().map_or(
            "no held-out images (give --test DIR, or a test/ folder beside train/)".to_owned(),
            |t| format!("{} test images", t.len()),
        );
        eprintln!(
            "training {} ({} parameters) on {}: {} training images, {held_out}; {} classes \
             ({}), {c}x{h}x{w}; {} lr {} ({}), batch {}, epochs {}..={}, {} threads",
            model.name(),
            num_params(&trainer.model),
            source.describe(),
            train_set.len(),
            spec.class_names.len(),
            spec.class_names.join(", "),
            cfg.optimizer.name(),
            cfg.lr,
            cfg.schedule.name(),
            cfg.batch_size,
            trainer.epochs_done() + 1,
            cfg.epochs,
            rayon::current_num_threads()
        );
    }
    let outputs = a.run.outputs("run.safetensors");
    outputs.prepare()?;
    let test = test_set.as_ref().map(|t| t as &dyn convkit_data::Dataset);
    train_epochs(&mut trainer, &train_set, test, &outputs, a.run.stop_after, a.run.json)
}

fn eval(a: &EvalArgs) -> Result<()> {
    let (spec, model) = ZooSpec::load(&a.weights)?;
    let source = Source::find(&a.data, None)?;
    let what = match &source {
        Source::Folders { test: None, train } => train.display().to_string(),
        Source::Folders { test: Some(t), .. } => t.display().to_string(),
        Source::Idx(_) => format!("the test split of {}", source.describe()),
    };
    let [c, h, w] = spec.input;
    let mut data = source.load_eval((h as u32, w as u32), c)?;
    let from = format!("the checkpoint {}", a.weights.display());
    check_classes(&spec.class_names, &from, &data.classes, &what)?;
    data.normalize(&spec.mean, &spec.std)?;
    let classes = spec.class_names.len();
    let r = zoo::evaluate(&model, &data, classes, 256)?;
    if a.json {
        let v = serde_json::json!({
            "n": r.n, "loss": r.loss, "accuracy": r.accuracy, "classes": spec.class_names,
            "per_class": r.per_class, "confusion": r.confusion,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} ({}): accuracy {:.4}, loss {:.4} on {} images of {what}",
        spec.model.name(),
        a.weights.display(),
        r.accuracy,
        r.loss,
        r.n
    );
    let width = spec.class_names.iter().map(String::len).max().unwrap_or(0).max(5);
    println!("\nper class:");
    for (k, (name, acc)) in spec.class_names.iter().zip(&r.per_class).enumerate() {
        let n: usize = r.confusion[k].iter().sum();
        let acc = acc.map_or("-".to_owned(), |x| format!("{x:.4}"));
        println!("  {k:>3} {name:<width$} {acc:>6}  ({n} images)");
    }
    println!("\nconfusion (rows: true class, columns: predicted):");
    print!("     ");
    for k in 0..classes {
        print!("{k:>6}");
    }
    println!();
    for (t, row) in r.confusion.iter().enumerate() {
        print!("  {t:>3}");
        for n in row {
            print!("{n:>6}");
        }
        println!();
    }
    Ok(())
}

fn predict(a: &PredictArgs) -> Result<()> {
    if a.images.is_empty() {
        bail!("give one or more PNG or JPEG files to classify");
    }
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let (spec, model) = ZooSpec::load(&a.weights)?;
    let [c, h, w] = spec.input;
    let mut values = Vec::with_capacity(a.images.len() * c * h * w);
    for p in &a.images {
        values.extend(picture_input(p, &spec)?);
    }
    let x = Tensor::from_vec(&[a.images.len(), c, h, w], values)?;
    let logits = PreparedModel::new(&model)?.forward(&x)?;
    let tops = top_k(&logits, a.top)?;
    if a.json {
        let out: Vec<serde_json::Value> = a
            .images
            .iter()
            .zip(&tops)
            .map(|(p, top)| {
                let top: Vec<serde_json::Value> = top
                    .iter()
                    .map(|&(k, prob)| {
                        serde_json::json!({"class": k, "name": spec.class_names[k], "probability": prob})
                    })
                    .collect();
                serde_json::json!({"input": p.display().to_string(), "top": top})
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
        return Ok(());
    }
    for (p, top) in a.images.iter().zip(&tops) {
        println!("{}:", p.display());
        for &(k, prob) in top {
            println!("  {k:>3} {:<16} {prob:.4}", spec.class_names[k]);
        }
    }
    Ok(())
}

fn info(a: &InfoArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(path) = &a.weights {
        let (_, meta) = checkpoint::read(path)?;
        let (spec, _) = ZooSpec::load(path)?;
        let epochs = meta.get("train.epochs_done").map_or("?", String::as_str);
        let kind = match spec.data {
            DataKind::Idx => "IDX files",
            DataKind::ImageFolder => "image folders",
        };
        println!(
            "{}: {} trained {epochs} epochs on {kind}; classes: {}",
            path.display(),
            spec.model.name(),
            spec.class_names.join(", ")
        );
        print!("{}", layer_table(spec.model, spec.input, spec.class_names.len(), a.batch_size)?);
        return Ok(());
    }
    let Some(model) = a.model else { bail!("give --model NAME or --weights CKPT") };
    print!("{}", layer_table(model, a.input, a.classes, a.batch_size)?);
    Ok(())
}
