//! `lenet` — train, evaluate and use LeNet-5 on MNIST-format data.
//!
//! ```text
//! lenet train   [--dataset fashion-mnist] [--data DIR] [--epochs 10] [--optimizer sgd] …
//! lenet eval    --weights model.safetensors [--dataset …] [--data DIR] [--json]
//! lenet predict --weights model.safetensors IMAGE… | --idx FILE --index I   [--json]
//! lenet info    [--batch-size 64] [--model vgg-small|resnet-small]
//! lenet visualize --weights model.safetensors [--image PNG | --idx FILE --index I] --out DIR
//! lenet serve   --weights model.safetensors [--addr 127.0.0.1:8080] [--dataset …]
//! lenet fetch   mnist|fashion-mnist
//! lenet export  --weights model.safetensors --onnx model.onnx [--fixed-batch]
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use convkit_cli::args::{RecipeArgs, names_parser, with_threads};
use convkit_cli::runs::{RunArgs, run_limit, set_limit, train_epochs};
use convkit_cli::serve::{DEFAULT_ADDR, Predictor, Server};
use convkit_cli::visualize::{
    MAP_STAGES, conv1_filters, feature_grid, input_picture, read_metrics, training_curves,
};
use convkit_cli::zoo::layer_table;
use convkit_data::Augment;
use convkit_models::Dataset;
use convkit_models::data::{Normalization, preprocess};
use convkit_models::fetch::{self, DATA_ENV, DatasetKind};
use convkit_models::idx::{IdxSplit, read_idx_images};
use convkit_models::lenet::{INPUT_SIZE, LeNet5, NUM_PARAMS};
use convkit_models::preprocess::{decode_picture, picture_to_mnist};
use convkit_models::train::{self, Recipe, evaluate, metrics_path};
use convkit_models::zoo::ZooModel;
use convkit_tensor::Rng;

#[derive(Parser)]
#[command(name = "lenet", version, about = "Train, evaluate and use LeNet-5 on MNIST-format data")]
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train LeNet-5, saving a checkpoint after every epoch.
    Train(TrainArgs),
    /// Accuracy, per-class accuracy and confusion matrix on the test split.
    Eval(EvalArgs),
    /// Top-3 classes of images (PNG/JPEG of any size) or of one image of an IDX file.
    Predict(PredictArgs),
    /// Layer table: output shapes, parameters, FLOPs, and the conv algorithm that runs.
    Info(InfoArgs),
    /// Download a dataset's four files into data/DATASET/, checking their SHA-256.
    Fetch(FetchArgs),
    /// PNG pictures of conv1's filters, the feature maps of one input, and the training curves.
    Visualize(VisualizeArgs),
    /// A web page to draw on and watch the network classify the drawing, with a JSON API.
    Serve(ServeArgs),
    /// Write the model as ONNX (opset 17, input `input` [batch, 1, 32, 32], output `logits`).
    Export(ExportArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// Weights (ours or a PyTorch state_dict as safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// The ONNX file to write (atomically).
    #[arg(long, value_name = "FILE")]
    onnx: PathBuf,
    /// Fix the batch size to 1 instead of a dynamic `batch` axis.
    #[arg(long)]
    fixed_batch: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DatasetArg {
    Mnist,
    FashionMnist,
}

impl From<DatasetArg> for DatasetKind {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::Mnist => DatasetKind::Mnist,
            DatasetArg::FashionMnist => DatasetKind::FashionMnist,
        }
    }
}

#[derive(Args)]
struct DataArgs {
    /// Which dataset.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetArg,
    /// Directory with the four IDX files (raw or .gz); otherwise $CONVKIT_DATA, data/DATASET/,
    /// and for Fashion-MNIST /usr/share/datasets/fashion-mnist.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    opts: RecipeArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The base recipe, which the options below override: `reference` (SGD lr 0.01, momentum
    /// 0.9, batch 64, 10 epochs) or `fashion-mnist` (Adam lr 0.002, cosine, 15 epochs,
    /// --hflip).
    #[arg(long, default_value_t = Recipe::Reference, value_parser = names_parser::<Recipe>(&Recipe::ALL.map(Recipe::name)))]
    recipe: Recipe,
    /// Mirror training images left-right at random (for Fashion-MNIST, not digits; on in the
    /// fashion-mnist recipe).
    #[arg(long)]
    hflip: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Weights (ours or a PyTorch state_dict as safetensors).
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PredictArgs {
    /// Weights (ours or a PyTorch state_dict as safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// PNG or JPEG images.
    images: Vec<PathBuf>,
    /// An IDX image file (raw or .gz) instead of image files.
    #[arg(long, value_name = "FILE", conflicts_with = "images")]
    idx: Option<PathBuf>,
    /// The image of --idx to classify.
    #[arg(long, value_name = "I", requires = "idx")]
    index: Option<usize>,
    /// Class names of this dataset.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetArg,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VisualizeArgs {
    /// Weights (ours or a PyTorch state_dict as safetensors); training curves come from the
    /// metrics file beside them (model.metrics.jsonl) when there is one.
    #[arg(long)]
    weights: PathBuf,
    /// A PNG or JPEG picture whose feature maps to draw (28x28 as is; other sizes cropped,
    /// scaled and centred as MNIST was made).
    #[arg(long, value_name = "PNG", conflicts_with = "idx")]
    image: Option<PathBuf>,
    /// An IDX image file (raw or .gz) instead of a picture.
    #[arg(long, value_name = "FILE")]
    idx: Option<PathBuf>,
    /// The image of --idx to use.
    #[arg(long, value_name = "I", requires = "idx")]
    index: Option<usize>,
    /// Directory for the PNG files (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Weights (ours or a PyTorch state_dict as safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Address to listen on; the default is reachable from this machine only.
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: String,
    /// Class names of this dataset [default: from the checkpoint's metadata, else digits].
    #[arg(long, value_enum)]
    dataset: Option<DatasetArg>,
}

#[derive(Args)]
struct InfoArgs {
    /// Batch size the table (FLOPs, algorithm choice) is computed for.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// A zoo model (vgg-small, resnet-small) on 1x28x28 inputs with 10 classes, instead of
    /// LeNet-5: its layer table, with the conv algorithm of each layer in training and in
    /// evaluation.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

#[derive(Args)]
struct FetchArgs {
    /// Which dataset.
    #[arg(value_enum)]
    dataset: DatasetArg,
    /// Target directory [default: data/DATASET].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => with_threads(a.run.threads, || train(&a)),
        Command::Eval(a) => with_threads(a.threads, || eval(&a)),
        Command::Predict(a) => predict(&a),
        Command::Info(a) => info(&a),
        Command::Fetch(a) => fetch_cmd(&a),
        Command::Visualize(a) => visualize(&a),
        Command::Serve(a) => serve(&a),
        Command::Export(a) => export(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lenet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn export(a: &ExportArgs) -> Result<()> {
    let (model, norm, _) = LeNet5::load(&a.weights)
        .with_context(|| format!("cannot load the weights {}", a.weights.display()))?;
    let opts = convkit_onnx::ExportOptions {
        batch_dim: (!a.fixed_batch).then(|| "batch".to_owned()),
        ..Default::default()
    };
    convkit_onnx::save(&model, [1, INPUT_SIZE, INPUT_SIZE], &opts, &a.onnx)
        .with_context(|| format!("cannot export {}", a.onnx.display()))?;
    println!(
        "{}: LeNet-5 as ONNX opset {}, input `{}` [{}, 1, {INPUT_SIZE}, {INPUT_SIZE}] (28x28 images \
         padded by 2, /255, (x - {}) / {}), output `{}` [{}, 10]",
        a.onnx.display(),
        convkit_onnx::OPSET_VERSION,
        opts.input_name,
        opts.batch_dim.as_deref().unwrap_or("1"),
        norm.mean,
        norm.std,
        opts.output_name,
        opts.batch_dim.as_deref().unwrap_or("1"),
    );
    Ok(())
}

/// Finds the dataset and reads both splits.
fn load_splits(args: &DataArgs) -> Result<(IdxSplit, IdxSplit, DatasetKind, PathBuf)> {
    let kind = DatasetKind::from(args.dataset);
    let env = std::env::var_os(DATA_ENV).map(PathBuf::from);
    let cwd = std::env::current_dir().context("no working directory")?;
    let found = fetch::locate(kind, args.data.as_deref(), env.as_deref(), &cwd)?;
    let f = &found.files;
    let train = IdxSplit::read(&f.train_images, &f.train_labels, 28, 28, 10)?;
    let test = IdxSplit::read(&f.test_images, &f.test_labels, 28, 28, 10)?;
    Ok((train, test, kind, found.dir))
}

fn train(a: &TrainArgs) -> Result<()> {
    let (mut trainer, norm) = match &a.run.resume {
        Some(ckpt) => train::resume(ckpt, a.opts.epochs)
            .with_context(|| format!("cannot resume from {}", ckpt.display()))?,
        None => {
            let mut cfg = a.opts.apply(a.recipe.config());
            if a.hflip && !cfg.augment.contains(&Augment::HorizontalFlip) {
                cfg.augment.push(Augment::HorizontalFlip);
            }
            a.run.check_limit()?;
            let mut t = train::new_trainer(cfg, Normalization::default())?;
            set_limit(t.metadata_mut(), a.run.limit);
            (t, Normalization::default())
        }
    };
    let limit = run_limit(trainer.metadata(), a.run.limit)?;
    let (train_split, test_split, kind, dir) = load_splits(&a.data)?;
    let cfg = trainer.config().clone();
    let train_set = Dataset::new(&train_split, norm, limit)?;
    let test_set = Dataset::new(&test_split, norm, None)?;
    drop((train_split, test_split));
    if !a.run.json {
        eprintln!(
            "training LeNet-5 ({NUM_PARAMS} parameters) on {kind} from {}: {} training / {} test \
             images, {} lr {} ({}), batch {}, epochs {}..={}, {} threads",
            dir.display(),
            train_set.len(),
            test_set.len(),
            cfg.optimizer.name(),
            cfg.lr,
            cfg.schedule.name(),
            cfg.batch_size,
            trainer.epochs_done() + 1,
            cfg.epochs,
            rayon::current_num_threads()
        );
    }
    if trainer.finished() {
        bail!(
            "the checkpoint has {} epochs done already; pass a larger --epochs",
            trainer.epochs_done()
        );
    }
    let outputs = a.run.outputs("model.safetensors");
    outputs.prepare()?;
    trainer.metadata_mut().insert("dataset".into(), kind.name().into());
    train_epochs(
        &mut trainer,
        &train_set,
        Some(&test_set),
        &outputs,
        a.run.stop_after,
        a.run.json,
    )?;
    Ok(())
}

fn eval(a: &EvalArgs) -> Result<()> {
    let (model, norm, _) = LeNet5::load(&a.weights)?;
    let (_, test_split, kind, _) = load_splits(&a.data)?;
    let test = Dataset::new(&test_split, norm, None)?;
    let e = evaluate(&model, &test)?;
    if a.json {
        let v = serde_json::json!({
            "accuracy": e.accuracy, "n": e.n, "per_class": e.per_class, "confusion": e.confusion,
        });
        println!("{v}");
        return Ok(());
    }
    let names = kind.class_names();
    println!("accuracy {:.4} on {} {kind} test images ({})", e.accuracy, e.n, a.weights.display());
    println!("\nper class:");
    for (c, acc) in e.per_class.iter().enumerate() {
        println!("  {c} {:<12} {acc:.4}", names[c]);
    }
    println!("\nconfusion (rows: true class, columns: predicted):");
    print!("     ");
    for c in 0..10 {
        print!("{c:>6}");
    }
    println!();
    for (t, row) in e.confusion.iter().enumerate() {
        print!("  {t:>2} ");
        for n in row {
            print!("{n:>6}");
        }
        println!();
    }
    Ok(())
}

/// An image file as 28x28 bytes the way MNIST was made (light on dark, cropped to the ink,
/// scaled and centred): the preparation `predict`, `visualize` and `serve` share.
fn picture_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let img = decode_picture(&bytes).with_context(|| format!("{}", path.display()))?;
    picture_to_mnist(&img).with_context(|| format!("{}", path.display()))
}

fn predict(a: &PredictArgs) -> Result<()> {
    let (model, norm, _) = LeNet5::load(&a.weights)?;
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(idx) = &a.idx {
        inputs.push(idx_image(idx, a.index)?);
    } else {
        if a.images.is_empty() {
            bail!("give image files (PNG/JPEG) or --idx FILE --index I");
        }
        for p in &a.images {
            inputs.push((p.display().to_string(), picture_file(p)?));
        }
    }
    let refs: Vec<&[u8]> = inputs.iter().map(|(_, px)| px.as_slice()).collect();
    let probs = model.logits(&preprocess(&refs, norm)?)?.softmax(1)?;
    let names = DatasetKind::from(a.dataset).class_names();
    let mut out = Vec::new();
    for ((name, _), row) in inputs.iter().zip(probs.as_slice().chunks_exact(10)) {
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let top: Vec<(usize, f32)> = order[..3].iter().map(|&c| (c, row[c])).collect();
        if a.json {
            out.push(serde_json::json!({
                "input": name,
                "top3": top.iter().map(|&(c, p)| serde_json::json!({"class": c, "name": names[c], "probability": p})).collect::<Vec<_>>(),
            }));
        } else {
            println!("{name}:");
            for (c, p) in top {
                println!("  {c} {:<12} {:.4}", names[c], p);
            }
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(out));
    }
    Ok(())
}

/// Image `index` of an IDX file, with a name for messages.
fn idx_image(idx: &Path, index: Option<usize>) -> Result<(String, Vec<u8>)> {
    let Some(i) = index else { bail!("--idx needs --index I") };
    let images = read_idx_images(idx)?;
    if (images.rows, images.cols) != (28, 28) {
        bail!("{}: images are {}x{}, expected 28x28", idx.display(), images.rows, images.cols);
    }
    let Some(px) = images.image(i) else {
        bail!("{}: index {i} out of range ({} images)", idx.display(), images.count)
    };
    Ok((format!("{}[{i}]", idx.display()), px.to_vec()))
}

fn visualize(a: &VisualizeArgs) -> Result<()> {
    let (model, norm, _) = LeNet5::load(&a.weights)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create the output folder {}", a.out.display()))?;
    let save = |img: &image::RgbImage, name: &str| -> Result<()> {
        let path = a.out.join(name);
        img.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {} ({}x{})", path.display(), img.width(), img.height());
        Ok(())
    };
    save(&conv1_filters(&model)?, "conv1_filters.png")?;

    let input = match (&a.image, &a.idx) {
        (Some(p), _) => Some((p.display().to_string(), picture_file(p)?)),
        (None, Some(idx)) => Some(idx_image(idx, a.index)?),
        (None, None) => None,
    };
    match input {
        Some((name, px)) => {
            let ins = model.inspect(&preprocess(&[&px], norm)?)?;
            save(&input_picture(&px, 8)?, "input.png")?;
            for stage in MAP_STAGES {
                let maps = ins.stage(stage).context("missing stage output")?;
                save(&feature_grid(maps)?, &format!("feature_maps_{stage}.png"))?;
            }
            let c = ins.class();
            println!("{name}: class {c}, probability {:.4}", ins.probabilities[c]);
        }
        None => println!("feature maps: skipped (give --image PNG or --idx FILE --index I)"),
    }

    let mpath = metrics_path(&a.weights);
    if !mpath.is_file() {
        println!(
            "training curves: skipped, no metrics file {} beside the weights (lenet train \
             writes one)",
            mpath.display()
        );
        return Ok(());
    }
    let points = read_metrics(&mpath)?;
    match training_curves(&points) {
        Ok(img) => save(&img, "training_curves.png")?,
        Err(e) => println!("training curves: skipped, {e}"),
    }
    Ok(())
}

fn serve(a: &ServeArgs) -> Result<()> {
    let predictor = Predictor::from_checkpoint(&a.weights, a.dataset.map(DatasetKind::from))?;
    let labels = predictor.labels().join(", ");
    let server = Server::bind(a.addr.as_str(), predictor)?;
    if !server.addr().ip().is_loopback() {
        eprintln!(
            "lenet serve: warning: listening on {}, reachable from other machines",
            server.addr()
        );
    }
    println!(
        "LeNet-5 ({}) at {} (classes: {labels}); Ctrl-C to stop",
        a.weights.display(),
        server.url()
    );
    std::io::stdout().flush().context("cannot write to stdout")?;
    server.wait();
    Ok(())
}

fn info(a: &InfoArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(name) = &a.model {
        let which = ZooModel::parse(name)?;
        print!("{}", layer_table(which, [1, 28, 28], 10, a.batch_size)?);
        return Ok(());
    }
    let model = LeNet5::new(&mut Rng::new(0))?;
    let rows = model.layer_table(a.batch_size)?;
    println!("LeNet-5 at batch size {}", a.batch_size);
    println!("{:<8} {:<18} {:>8} {:>14}  conv algorithm", "layer", "output", "params", "FLOPs");
    let (mut params, mut flops) = (0, 0);
    for r in &rows {
        println!(
            "{:<8} {:<18} {:>8} {:>14}  {}",
            r.name,
            format!("{:?}", r.output),
            r.params,
            r.flops,
            r.algo.map(|x| x.name()).unwrap_or("")
        );
        params += r.params;
        flops += r.flops;
    }
    println!("{:<8} {:<18} {:>8} {:>14}", "total", "", params, flops);
    Ok(())
}

fn fetch_cmd(a: &FetchArgs) -> Result<()> {
    let kind = DatasetKind::from(a.dataset);
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => fetch::cache_dir(&std::env::current_dir().context("no working directory")?, kind),
    };
    let files = convkit_cli::download::fetch(kind, &dir, &mut |line| eprintln!("{line}"))?;
    println!("{kind} is in {}", files.train_images.parent().unwrap_or(&dir).display());
    Ok(())
}
