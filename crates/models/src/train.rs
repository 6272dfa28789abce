//! The training loop, evaluation, and checkpoints that resume bit for bit.
//!
//! A [`Trainer`] owns the model and its optimizer. Everything an epoch depends on is either
//! in the saved files or derived from them: the weights (model file), the optimizer's buffers
//! and step counts (the `.optim.safetensors` file beside it), the epoch counter and the
//! recipe (both files' metadata). The shuffling order of epoch `e` is a function of the seed
//! and `e` only ([`crate::data::shuffle_rng`]), so there is no generator state to carry, and
//! a resumed run continues exactly as the uninterrupted one would have.
//!
//! Batches are prepared on the training thread: building one (64 images through a lookup
//! table) takes about 1% of a training step, so a loader thread would not pay for itself.

use std::path::{Path, PathBuf};
use std::time::Instant;

use convkit_autograd::Tape;
use convkit_nn::checkpoint::{self, Metadata};
use convkit_nn::{LrSchedule, Module, Optimizer, params};
use convkit_tensor::{Rng, Tensor};

use crate::data::{Dataset, Normalization};
use crate::error::{ModelError, Result, invalid};
use crate::lenet::{CLASSES, LeNet5};

pub use convkit_nn::{OptimizerKind, ScheduleKind};

/// The recipe of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Total number of epochs (a resumed run stops at this count too).
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// SGD or Adam.
    pub optimizer: OptimizerKind,
    /// Base learning rate.
    pub lr: f32,
    /// SGD momentum (ignored by Adam).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Seed of the initialization and of the shuffling.
    pub seed: u64,
    /// Learning-rate schedule; a cosine runs over all the steps of `epochs` epochs.
    pub schedule: ScheduleKind,
    /// Randomly mirror training images left-right (sensible for Fashion-MNIST, not digits).
    pub hflip: bool,
    /// Train on the first `limit` training images only.
    pub limit: Option<usize>,
}

impl Default for TrainConfig {
    /// The reference recipe: SGD lr 0.01, momentum 0.9, batch 64, 10 epochs, seed 0.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 0,
            schedule: ScheduleKind::Constant,
            hflip: false,
            limit: None,
        }
    }
}

/// A named recipe: the base [`TrainConfig`] of `lenet train --recipe NAME` and `cargo xtask
/// train`, which explicit options then override (the one place these defaults are written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// [`TrainConfig::default`]: SGD lr 0.01, momentum 0.9, batch 64, 10 epochs, seed 0.
    Reference,
    /// Adam lr 0.002 with a cosine schedule over 15 epochs of batch 64, random left-right
    /// flips, seed 0: about 91.5% on Fashion-MNIST (`docs/training.md`).
    FashionMnist,
}

impl Recipe {
    /// Every recipe, in the order a help text lists them.
    pub const ALL: [Recipe; 2] = [Recipe::Reference, Recipe::FashionMnist];

    /// `reference` or `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Reference => "reference",
            Recipe::FashionMnist => "fashion-mnist",
        }
    }

    /// The recipe's configuration.
    pub fn config(self) -> TrainConfig {
        match self {
            Recipe::Reference => TrainConfig::default(),
            Recipe::FashionMnist => TrainConfig {
                epochs: 15,
                optimizer: OptimizerKind::Adam,
                lr: 0.002,
                schedule: ScheduleKind::Cosine,
                hflip: true,
                ..TrainConfig::default()
            },
        }
    }
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Recipe {
    type Err = ModelError;

    /// Parses a [`Recipe::name`]; the error lists the valid names.
    fn from_str(s: &str) -> Result<Self> {
        Recipe::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let names = Recipe::ALL.map(Recipe::name).join(" or ");
            invalid("recipe", format!("unknown recipe {s:?}; expected {names}"))
        })
    }
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(invalid("batch size", "must be at least 1"));
        }
        if self.limit == Some(0) {
            return Err(invalid("limit", "--limit 0 leaves no training images"));
        }
        if self.epochs == 0 {
            return Err(invalid("epochs", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid(
                "learning rate",
                format!("must be positive and finite, got {}", self.lr),
            ));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(invalid("momentum", format!("must be in [0, 1), got {}", self.momentum)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(invalid(
                "weight decay",
                format!("must be non-negative, got {}", self.weight_decay),
            ));
        }
        Ok(())
    }

    /// The learning rate of batch `batch` of `n_batches` in epoch `epoch` (both 0-based): the
    /// [`ScheduleKind`] stepped once per batch over the run's `epochs · n_batches` steps.
    pub fn lr_at(&self, epoch: usize, batch: usize, n_batches: usize) -> f32 {
        self.lr_schedule(n_batches).lr_at(epoch * n_batches.max(1) + batch)
    }

    /// The run's schedule over `epochs · n_batches` steps, one step per batch (see
    /// [`TrainConfig::lr_at`]).
    pub fn lr_schedule(&self, n_batches: usize) -> Box<dyn LrSchedule> {
        self.schedule.schedule(self.lr, self.epochs * n_batches.max(1))
    }

    fn to_metadata(self, meta: &mut Metadata) {
        meta.insert("train.optimizer".into(), self.optimizer.name().into());
        meta.insert("train.lr".into(), checkpoint::format_f32(self.lr));
        meta.insert("train.momentum".into(), checkpoint::format_f32(self.momentum));
        meta.insert("train.weight_decay".into(), checkpoint::format_f32(self.weight_decay));
        meta.insert("train.batch_size".into(), self.batch_size.to_string());
        meta.insert("train.seed".into(), self.seed.to_string());
        meta.insert("train.schedule".into(), self.schedule.name().into());
        meta.insert("train.epochs".into(), self.epochs.to_string());
        meta.insert("train.hflip".into(), self.hflip.to_string());
        meta.insert("train.limit".into(), self.limit.map_or("all".to_owned(), |l| l.to_string()));
    }

    fn from_metadata(meta: &Metadata, path: &Path) -> Result<Self> {
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| ModelError::Invalid {
                what: "resume",
                msg: format!(
                    "{}: metadata has no {k}; not a checkpoint written by lenet train",
                    path.display()
                ),
            })
        };
        let bad = |k: &str| ModelError::Invalid {
            what: "resume",
            msg: format!("{}: bad metadata {k}", path.display()),
        };
        let f = |k: &str| -> Result<f32> { checkpoint::parse_f32(get(k)?).ok_or_else(|| bad(k)) };
        let u = |k: &str| -> Result<u64> { get(k)?.parse::<u64>().map_err(|_| bad(k)) };
        Ok(Self {
            epochs: u("train.epochs")? as usize,
            batch_size: u("train.batch_size")? as usize,
            optimizer: get("train.optimizer")?.parse().map_err(|_| bad("train.optimizer"))?,
            lr: f("train.lr")?,
            momentum: f("train.momentum")?,
            weight_decay: f("train.weight_decay")?,
            seed: u("train.seed")?,
            schedule: get("train.schedule")?.parse().map_err(|_| bad("train.schedule"))?,
            hflip: get("train.hflip")? == "true",
            limit: match get("train.limit")?.as_str() {
                "all" => None,
                v => Some(v.parse::<usize>().map_err(|_| bad("train.limit"))?),
            },
        })
    }
}

/// The numbers of one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches, weighted by batch size.
    pub train_loss: f64,
    /// Training accuracy (on the fly, while the weights change).
    pub train_acc: f64,
    /// Test accuracy after the epoch.
    pub test_acc: f64,
    /// Wall time of the training part of the epoch.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// The learning rate at the start of the epoch.
    pub lr: f32,
}

impl EpochMetrics {
    /// One JSON object (what `--json` prints and the metrics file holds).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"epoch\":{},\"train_loss\":{:.6},\"train_acc\":{:.6},\"test_acc\":{:.6},\"seconds\":{:.3},\"images_per_sec\":{:.1},\"lr\":{}}}",
            self.epoch,
            self.train_loss,
            self.train_acc,
            self.test_acc,
            self.seconds,
            self.images_per_sec,
            self.lr
        )
    }
}

/// What one [`Trainer::train_step`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The batch's mean cross-entropy loss, before the update.
    pub loss: f32,
    /// Correct predictions in the batch, before the update.
    pub correct: usize,
}

/// Accuracy, per-class accuracy and confusion matrix on a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Number of examples.
    pub n: usize,
    /// Accuracy of each class (0 for a class without examples).
    pub per_class: [f64; CLASSES],
    /// `confusion[true][predicted]` counts.
    pub confusion: [[usize; CLASSES]; CLASSES],
}

/// Evaluates `model` on every example of `data`, 1,000 at a time.
pub fn evaluate(model: &LeNet5, data: &Dataset) -> Result<Evaluation> {
    let mut confusion = [[0usize; CLASSES]; CLASSES];
    let order: Vec<usize> = (0..data.len()).collect();
    for batch in data.batches(&order, 1000)? {
        let batch = batch?;
        let pred = model.logits(&batch.images)?.argmax_axis(1)?;
        for (&t, &p) in batch.labels.iter().zip(&pred) {
            confusion[t][p] += 1;
        }
    }
    let correct: usize = (0..CLASSES).map(|c| confusion[c][c]).sum();
    let mut per_class = [0.0; CLASSES];
    for (c, row) in confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        per_class[c] = if total == 0 { 0.0 } else { row[c] as f64 / total as f64 };
    }
    Ok(Evaluation {
        accuracy: correct as f64 / data.len() as f64,
        n: data.len(),
        per_class,
        confusion,
    })
}

/// The optimizer-state file beside a checkpoint: `model.safetensors` →
/// `model.optim.safetensors`.
pub fn optimizer_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("optim.safetensors")
}

/// The metrics file beside a checkpoint: `model.safetensors` → `model.metrics.jsonl`.
pub fn metrics_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("metrics.jsonl")
}

/// A model, its optimizer and the position in the run.
pub struct Trainer {
    /// The model being trained.
    pub model: LeNet5,
    opt: Box<dyn Optimizer>,
    cfg: TrainConfig,
    norm: Normalization,
    epochs_done: usize,
}

impl Trainer {
    /// A fresh run: the model initialized from `cfg.seed`.
    pub fn new(cfg: TrainConfig, norm: Normalization) -> Result<Self> {
        cfg.validate()?;
        let model = LeNet5::new(&mut Rng::new(cfg.seed))?;
        let opt = make_optimizer(&model, &cfg)?;
        Ok(Self { model, opt, cfg, norm, epochs_done: 0 })
    }

    /// A fresh run from a given model (e.g. [`LeNet5::with_init`]); the seed still drives the
    /// shuffling.
    pub fn with_model(cfg: TrainConfig, norm: Normalization, model: LeNet5) -> Result<Self> {
        cfg.validate()?;
        let opt = make_optimizer(&model, &cfg)?;
        Ok(Self { model, opt, cfg, norm, epochs_done: 0 })
    }

    /// Continues the run saved at `checkpoint` (and its optimizer file). The recipe comes
    /// from the checkpoint (including `limit`); `epochs`, when given, replaces the total
    /// number of epochs (with a cosine schedule this changes the remaining rates).
    pub fn resume(checkpoint: &Path, epochs: Option<usize>) -> Result<Self> {
        let (model, norm, meta) = LeNet5::load(checkpoint)?;
        let mut cfg = TrainConfig::from_metadata(&meta, checkpoint)?;
        if let Some(e) = epochs {
            cfg.epochs = e;
        }
        cfg.validate()?;
        let done = meta.get("train.epochs_done").and_then(|v| v.parse::<usize>().ok()).ok_or_else(
            || {
                invalid(
                    "resume",
                    format!("{}: metadata has no train.epochs_done", checkpoint.display()),
                )
            },
        )?;
        let opath = optimizer_path(checkpoint);
        let (state, ometa) = checkpoint::load_optimizer(&opath)?;
        if ometa.get("train.epochs_done") != meta.get("train.epochs_done") {
            return Err(invalid(
                "resume",
                format!(
                    "{} is not from the same epoch as {}",
                    opath.display(),
                    checkpoint.display()
                ),
            ));
        }
        let mut opt = make_optimizer(&model, &cfg)?;
        opt.load_state(&state)?;
        Ok(Self { model, opt, cfg, norm, epochs_done: done })
    }

    /// The recipe.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The normalization the model is trained with.
    pub fn normalization(&self) -> Normalization {
        self.norm
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Trains one epoch on `train`, then measures accuracy on `test`. `on_batch` gets the
    /// batch index (0-based), the number of batches and the batch's loss.
    pub fn train_epoch(
        &mut self,
        train: &Dataset,
        test: &Dataset,
        on_batch: &mut dyn FnMut(usize, usize, f32),
    ) -> Result<EpochMetrics> {
        let epoch = self.epochs_done;
        let order = train.epoch_order(self.cfg.seed, epoch);
        let n_batches = order.len().div_ceil(self.cfg.batch_size);
        let lr = self.cfg.lr_at(epoch, 0, n_batches);
        // One schedule for the epoch, stepped per batch (what `lr_at` computes).
        let (schedule, first_step) = (self.cfg.lr_schedule(n_batches), epoch * n_batches.max(1));
        let mut flip_rng = crate::data::shuffle_rng(self.cfg.seed ^ 0xF11F, epoch);
        let start = Instant::now();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for (b, batch) in train.batches(&order, self.cfg.batch_size)?.enumerate() {
            let mut batch = batch?;
            self.opt.set_lr(schedule.lr_at(first_step + b));
            if self.cfg.hflip {
                crate::data::random_hflip(&mut batch.images, &mut flip_rng)?;
            }
            let step = self.step(batch.images, &batch.labels, b)?;
            correct += step.correct;
            loss_sum += f64::from(step.loss) * batch.labels.len() as f64;
            on_batch(b, n_batches, step.loss);
        }
        let seconds = start.elapsed().as_secs_f64();
        let eval = evaluate(&self.model, test)?;
        self.epochs_done += 1;
        let n = train.len() as f64;
        Ok(EpochMetrics {
            epoch: self.epochs_done,
            train_loss: loss_sum / n,
            train_acc: correct as f64 / n,
            test_acc: eval.accuracy,
            seconds,
            images_per_sec: n / seconds.max(1e-9),
            lr,
        })
    }

    /// One optimization step on a batch of preprocessed `images` `[n, 1, 32, 32]` with their
    /// `labels`: forward on a fresh tape, cross-entropy, backward, the optimizer's update at
    /// learning rate `lr`, gradients cleared. This is the step [`Trainer::train_epoch`] runs
    /// for every batch (which sets `lr` from the schedule); it does not count epochs.
    ///
    /// A non-finite loss is an error ([`ModelError::NonFiniteLoss`], batch 1 of the current
    /// epoch) and leaves the weights unchanged.
    pub fn train_step(&mut self, images: Tensor, labels: &[usize], lr: f32) -> Result<StepOutput> {
        self.opt.set_lr(lr);
        self.step(images, labels, 0)
    }

    /// [`Trainer::train_step`] at the optimizer's current learning rate; `batch` (0-based)
    /// names the batch in the error for a non-finite loss.
    fn step(&mut self, images: Tensor, labels: &[usize], batch: usize) -> Result<StepOutput> {
        let tape = Tape::new();
        let logits = self.model.forward(&tape.input(images))?;
        let loss = logits.cross_entropy(labels)?;
        let lv = loss.value().as_slice()[0];
        if !lv.is_finite() {
            self.opt.zero_grad();
            return Err(ModelError::NonFiniteLoss {
                epoch: self.epochs_done + 1,
                batch: batch + 1,
                loss: lv,
            });
        }
        loss.backward()?;
        self.opt.step()?;
        self.opt.zero_grad();
        let pred = logits.value().argmax_axis(1)?;
        let correct = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok(StepOutput { loss: lv, correct })
    }

    /// Saves the model (with the normalization, the recipe and the epoch in its metadata)
    /// and the optimizer state beside it, both atomically.
    pub fn save(&self, path: &Path, extra: &Metadata) -> Result<()> {
        let mut meta = extra.clone();
        self.cfg.to_metadata(&mut meta);
        meta.insert("train.epochs_done".into(), self.epochs_done.to_string());
        self.model.save(path, self.norm, &meta)?;
        let mut ometa = Metadata::new();
        ometa.insert("train.epochs_done".into(), self.epochs_done.to_string());
        checkpoint::save_optimizer(optimizer_path(path), &self.opt.state(), &ometa)?;
        Ok(())
    }
}

fn make_optimizer(model: &LeNet5, cfg: &TrainConfig) -> Result<Box<dyn Optimizer>> {
    Ok(cfg.optimizer.build(params(model), cfg.lr, cfg.momentum, cfg.weight_decay)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recipes_round_trip_and_unknown_names_are_errors() {
        for r in Recipe::ALL {
            assert_eq!(r.name().parse::<Recipe>().unwrap(), r);
            r.config().validate().unwrap();
        }
        let e = "fashion".parse::<Recipe>().unwrap_err().to_string();
        assert!(e.contains("unknown recipe \"fashion\"") && e.contains("fashion-mnist"), "{e}");
        assert_eq!(Recipe::Reference.config(), TrainConfig::default());
        let f = Recipe::FashionMnist.config();
        assert_eq!(
            (f.optimizer, f.lr, f.schedule, f.epochs, f.batch_size, f.hflip, f.seed),
            (OptimizerKind::Adam, 0.002, ScheduleKind::Cosine, 15, 64, true, 0)
        );
    }

    #[test]
    fn cosine_schedule_is_the_per_step_formula_bit_for_bit() {
        let cfg = Recipe::FashionMnist.config();
        let n = 938;
        for (epoch, batch) in [(0, 0), (0, 1), (3, 417), (14, 937), (7, 0)] {
            let total = (cfg.epochs * n) as f64;
            let t = (epoch * n + batch) as f64;
            let c = (std::f64::consts::PI * t / total).cos();
            let want = (f64::from(cfg.lr) * (1.0 + c) / 2.0) as f32;
            assert_eq!(cfg.lr_at(epoch, batch, n).to_bits(), want.to_bits(), "{epoch} {batch}");
        }
        let constant = TrainConfig::default();
        assert_eq!(constant.lr_at(5, 10, n), constant.lr);
    }
}
