//! LeNet-5's recipes and evaluation on top of the generic trainer of `convkit-train`.
//!
//! LeNet-5 trains like any other model: a [`Trainer<LeNet5>`](Trainer) over the
//! [`Dataset`] of padded, normalized IDX images (which implements
//! [`convkit_data::Dataset`]). What is LeNet's own is here: the named [`Recipe`]s of `lenet
//! train` and `cargo xtask train`, [`new_trainer`] and [`resume`], which keep the
//! [`Normalization`] in the checkpoint's metadata, and [`evaluate`], the per-class accuracy and
//! confusion matrix of `lenet eval` through the fused inference path ([`LeNet5::logits`]).

use std::path::Path;

use convkit_data::Augment;
use convkit_tensor::Rng;

use crate::data::{Dataset, Normalization};
use crate::error::{ModelError, Result, invalid};
use crate::lenet::{CLASSES, LeNet5};

pub use convkit_nn::{OptimizerKind, ScheduleKind};
pub use convkit_train::{
    BatchEvent, EpochMetrics, StepOutput, TrainConfig, TrainError, Trainer, metrics_path,
    optimizer_path,
};

/// A named recipe: the base [`TrainConfig`] of `lenet train --recipe NAME` and `cargo xtask
/// train`, which explicit options then override (the one place these defaults are written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// The write-up's recipe: SGD lr 0.01, momentum 0.9, batch 64, 10 epochs, seed 0.
    Reference,
    /// Adam lr 0.002 with a cosine schedule over 15 epochs of batch 64, random left-right
    /// flips, seed 0: about 91.7% on Fashion-MNIST (`docs/training.md`).
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
        let reference = TrainConfig {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerKind::Sgd,
            lr: OptimizerKind::Sgd.default_lr(),
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: ScheduleKind::Constant,
            seed: 0,
            augment: Vec::new(),
            ..TrainConfig::default()
        };
        match self {
            Recipe::Reference => reference,
            Recipe::FashionMnist => TrainConfig {
                epochs: 15,
                optimizer: OptimizerKind::Adam,
                lr: 0.002,
                schedule: ScheduleKind::Cosine,
                augment: vec![Augment::HorizontalFlip],
                ..reference
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
    for indices in order.chunks(1000) {
        let batch = data.batch(indices)?;
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

/// A fresh run of LeNet-5 initialized from `cfg.seed`, its checkpoints carrying `norm`
/// (see [`resume`]).
pub fn new_trainer(cfg: TrainConfig, norm: Normalization) -> Result<Trainer<LeNet5>> {
    let model = LeNet5::new(&mut Rng::new(cfg.seed))?;
    with_model(model, cfg, norm)
}

/// A fresh run from a given model (e.g. [`LeNet5::with_init`]); the seed still drives the
/// shuffling.
pub fn with_model(model: LeNet5, cfg: TrainConfig, norm: Normalization) -> Result<Trainer<LeNet5>> {
    let mut trainer = Trainer::new(model, cfg)?;
    let meta = trainer.metadata_mut();
    meta.insert("model".into(), "lenet5".into());
    norm.to_metadata(meta);
    Ok(trainer)
}

/// Continues the run saved at `checkpoint` (and its optimizer file), with the normalization
/// it was trained with. The recipe comes from the checkpoint; `epochs`, when given, replaces
/// the total number of epochs.
pub fn resume(
    checkpoint: &Path,
    epochs: Option<usize>,
) -> Result<(Trainer<LeNet5>, Normalization)> {
    let trainer = Trainer::resume(LeNet5::new(&mut Rng::new(0))?, checkpoint, epochs)?;
    let norm = Normalization::from_metadata(trainer.metadata())?;
    Ok((trainer, norm))
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
        let r = Recipe::Reference.config();
        assert_eq!(
            (r.optimizer, r.lr, r.momentum, r.schedule, r.epochs, r.batch_size, r.seed),
            (OptimizerKind::Sgd, 0.01, 0.9, ScheduleKind::Constant, 10, 64, 0)
        );
        assert!(r.augment.is_empty());
        let f = Recipe::FashionMnist.config();
        assert_eq!(
            (f.optimizer, f.lr, f.schedule, f.epochs, f.batch_size, f.seed),
            (OptimizerKind::Adam, 0.002, ScheduleKind::Cosine, 15, 64, 0)
        );
        assert_eq!(f.augment, [Augment::HorizontalFlip]);
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
            let got = cfg.lr_schedule(n).lr_at(epoch * n + batch);
            assert_eq!(got.to_bits(), want.to_bits(), "{epoch} {batch}");
        }
        let constant = Recipe::Reference.config();
        assert_eq!(constant.lr_schedule(n).lr_at(5 * n + 10), constant.lr);
    }
}
