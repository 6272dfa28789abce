//! LeNet-5 end to end, through the code paths of the `lenet` tool, on rayon's global pool
//! (all cores unless `RAYON_NUM_THREADS` says otherwise):
//!
//! - `lenet/train_step_b64`: one training step at batch 64 — [`Trainer::train_step`](convkit_models::train::Trainer::train_step), the
//!   step `lenet train` runs for every batch (forward on a tape, cross-entropy, backward, SGD
//!   with momentum 0.9 at lr 0.01, the reference recipe).
//! - `lenet/infer_b1`: the latency of [`LeNet5::logits`] on one image (what `lenet predict`
//!   calls).
//! - `lenet/infer_b256`: [`LeNet5::logits`] on 256 images at once.
//!
//! - `lenet_versus` (with `CONVKIT_VERSUS_PYTHON=<python with torch>`): the same three against
//!   the PyTorch twin, interleaved round by round (see [`versus`]); `cargo xtask bench
//!   --compare-peers` puts its table into `docs/benchmarks.md`.
//!
//! Throughput is `Throughput::Elements(batch)`, so criterion's "elem/s" reads as images per
//! second. The data is synthetic (seeded random 28x28 bytes and labels, preprocessed by
//! [`Dataset::batch`] as the real data is), so no dataset is needed. `cargo xtask bench`
//! lists the three in the "LeNet-5" section of `docs/benchmarks.md`. With
//! `CONVKIT_BENCH_QUICK=1` (set by `cargo xtask bench --quick`) each measurement is capped at
//! 0.5 s instead of 3 s.

use std::hint::black_box;

/// mimalloc, so that the step runs at the speed it has inside `lenet train`. Repeating one
/// training step in isolation, glibc's allocator hands its few-MB buffers back to the kernel
/// and page-faults them in again on every iteration: 7.9 ms per step, against 4.3 ms with
/// `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` raised and 4.0 ms on mimalloc. In
/// `lenet train`'s loop (glibc; the binary keeps it, mimalloc measured slower there: 11,900
/// against 15,800 images/s) the other live allocations keep the heap from shrinking, and a
/// Fashion-MNIST epoch runs at 4.06 ms per step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use convkit_conv::suite::publish_markdown;

use convkit_models::train::{Recipe, Trainer, new_trainer};
use convkit_models::{Batch, Dataset, LeNet5, ModelError, Normalization};
use convkit_tensor::Rng;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod common;
use common::{TABLE_HEAD, Twin};

/// Images per training step.
const TRAIN_BATCH: usize = 64;
/// Images per batch of the throughput measurement.
const INFER_BATCH: usize = 256;

/// `n` random 28x28 images with random labels, drawn from `seed`.
fn synthetic(n: usize, seed: u64) -> Result<Dataset, ModelError> {
    let mut rng = Rng::new(seed);
    let pixels = (0..n * 28 * 28).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|_| rng.below(10) as u8).collect();
    Dataset::from_raw(pixels, labels, Normalization::default())
}

/// The cap on each measurement: criterion's quick mode stops at it.
fn measurement_time() -> Duration {
    if std::env::var_os("CONVKIT_BENCH_QUICK").is_some_and(|v| v == "1") {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    }
}

/// What every timing of this file runs on: a training batch, one image, an inference batch,
/// a fresh trainer (the reference recipe) and a fresh model.
struct Setup {
    train: Batch,
    one: Batch,
    many: Batch,
    trainer: Trainer<LeNet5>,
    model: LeNet5,
}

/// The [`Setup`], or `None` (reported on stderr, prefixed by `bench`) when it cannot be made.
fn setup(bench: &str) -> Option<Setup> {
    let make = || -> Result<Setup, ModelError> {
        let data = synthetic(INFER_BATCH, 7)?;
        let all: Vec<usize> = (0..INFER_BATCH).collect();
        Ok(Setup {
            train: data.batch(&all[..TRAIN_BATCH])?,
            one: data.batch(&all[..1])?,
            many: data.batch(&all)?,
            trainer: new_trainer(Recipe::Reference.config(), Normalization::default())?,
            model: LeNet5::new(&mut Rng::new(1))?,
        })
    };
    make().map_err(|e| eprintln!("{bench}: setup failed: {e}")).ok()
}

fn lenet(c: &mut Criterion) {
    let Some(Setup { train, one, many, mut trainer, model }) = setup("lenet bench") else {
        return;
    };
    let lr = trainer.config().lr;

    let mut group = c.benchmark_group("lenet");
    group.sample_size(10).warm_up_time(Duration::from_millis(500));
    group.measurement_time(measurement_time());

    group.throughput(Throughput::Elements(TRAIN_BATCH as u64));
    group.bench_function(format!("train_step_b{TRAIN_BATCH}"), |b| {
        // The images tensor shares its buffer, so the clone is a reference count.
        b.iter(|| trainer.train_step(black_box(train.clone()), lr).ok());
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("infer_b1", |b| b.iter(|| model.logits(black_box(&one.images)).ok()));

    group.throughput(Throughput::Elements(INFER_BATCH as u64));
    group.bench_function(format!("infer_b{INFER_BATCH}"), |b| {
        b.iter(|| model.logits(black_box(&many.images)).ok())
    });
    let prepared = match convkit_nn::PreparedModel::new(&model) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lenet bench: prepare failed: {e}");
            return;
        }
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("prepared_b1", |b| {
        b.iter(|| prepared.forward(black_box(&one.images)).ok())
    });
    group.throughput(Throughput::Elements(INFER_BATCH as u64));
    group.bench_function(format!("prepared_b{INFER_BATCH}"), |b| {
        b.iter(|| prepared.forward(black_box(&many.images)).ok())
    });
    group.finish();
}

/// LeNet-5 against its PyTorch twin (`scripts/zoo_twin.py --serve`, model `lenet5`, SGD with
/// momentum 0.9 as the reference recipe, as many threads as rayon's pool), interleaved: in
/// each of 5 rounds (2 with `CONVKIT_BENCH_QUICK=1`) both sides take the fastest of a few
/// calls after 40 ms of untimed calls, one right after the other, and the median of the
/// per-round ratios `PyTorch time ÷ convkit time` is printed (> 1: convkit is faster). Runs
/// only with `CONVKIT_VERSUS_PYTHON=<python with torch>`. Unlike `lenet_torch.py`'s epoch,
/// which a minute of drift on a shared machine can move by half, both sides here see the
/// same moment.
fn versus(_: &mut Criterion) {
    let Some(mut twin) = Twin::spawn("lenet_versus") else {
        return;
    };
    let Some(Setup { train, one, many, mut trainer, model }) = setup("lenet_versus") else {
        return;
    };
    let lr = trainer.config().lr;
    let mut md = format!(
        "LeNet-5 (`crates/models/benches/lenet.rs`, `lenet_versus`), convkit against the \
         PyTorch {} twin (`scripts/zoo_twin.py`, SGD with momentum), {} threads, {} \
         rounds interleaved (median ratio PyTorch ms / convkit ms; > 1: convkit is faster). \
         `train` is one step of `Trainer::train_step`, `infer` is `LeNet5::logits` (the fused \
         inference kernels) against PyTorch's eval forward.\n\n{TABLE_HEAD}",
        twin.peer.version, twin.threads, twin.rounds
    );
    let ops: [(&str, usize, usize); 3] =
        [("train", TRAIN_BATCH, 10), ("infer", 1, 50), ("infer", INFER_BATCH, 10)];
    for (op, batch, calls) in ops {
        let mut f: Box<dyn FnMut()> = match (op, batch) {
            ("train", _) => Box::new(|| {
                black_box(trainer.train_step(train.clone(), lr).ok());
            }),
            (_, 1) => Box::new(|| {
                black_box(model.logits(&one.images).ok());
            }),
            _ => Box::new(|| {
                black_box(model.logits(&many.images).ok());
            }),
        };
        match twin.row("lenet5", (op, op), batch, calls, &mut f) {
            Ok(row) => md += &row,
            Err(e) => {
                eprintln!("lenet_versus: {e}");
                return;
            }
        }
    }
    publish_markdown("lenet", &md);
}

criterion_group!(benches, lenet, versus);
criterion_main!(benches);
