//! [`TrainConfig`]: the recipe of a run, and its round trip through checkpoint metadata.

use std::path::Path;

use convkit_data::Augment;
use convkit_nn::checkpoint::{self, Metadata};
use convkit_nn::{LrSchedule, OptimizerKind, ScheduleKind};

use crate::error::{Result, TrainError, invalid};

/// Everything a run's results depend on besides the model and the data.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Total number of epochs (a resumed run stops at this count too).
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Base learning rate.
    pub lr: f32,
    /// SGD momentum (ignored by Adam).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Learning-rate schedule over all the steps of `epochs` epochs, stepped per batch.
    pub schedule: ScheduleKind,
    /// Seed of the shuffling and the augmentations.
    pub seed: u64,
    /// Random changes to each training batch, in order.
    pub augment: Vec<Augment>,
    /// Batches built ahead on a background thread (does not change results).
    pub prefetch: usize,
    /// Examples per forward pass when evaluating (does not change results).
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    /// Adam at PyTorch's learning rate 0.001, batch 64, 10 epochs, constant rate, seed 0,
    /// no augmentation, two batches prefetched.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerKind::Adam,
            lr: OptimizerKind::Adam.default_lr(),
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: ScheduleKind::Constant,
            seed: 0,
            augment: Vec::new(),
            prefetch: 2,
            eval_batch_size: 256,
        }
    }
}

/// `hflip` or `crop:PAD`.
fn augment_name(a: Augment) -> String {
    match a {
        Augment::HorizontalFlip => "hflip".into(),
        Augment::RandomCrop { pad } => format!("crop:{pad}"),
    }
}

/// Parses one name written by [`TrainConfig::to_metadata`] (`hflip`, `crop:4`).
pub fn parse_augment(s: &str) -> Result<Augment> {
    if s == "hflip" {
        return Ok(Augment::HorizontalFlip);
    }
    if let Some(pad) = s.strip_prefix("crop:").and_then(|p| p.parse().ok()) {
        return Ok(Augment::RandomCrop { pad });
    }
    Err(invalid("augment", format!("unknown augmentation {s:?}; expected hflip or crop:PAD")))
}

impl TrainConfig {
    /// Checks every value: at least one epoch and one example per batch, a positive finite
    /// learning rate, momentum in `[0, 1)`, a finite non-negative weight decay.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(invalid("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err(invalid("batch size", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid(
                "learning rate",
                format!("must be positive and finite, got {}", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid("momentum", format!("must be in [0, 1), got {}", self.momentum)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(invalid(
                "weight decay",
                format!("must be finite and not negative, got {}", self.weight_decay),
            ));
        }
        Ok(())
    }

    /// The schedule of a run whose epochs have `n_batches` batches each.
    pub fn lr_schedule(&self, n_batches: usize) -> Box<dyn LrSchedule> {
        self.schedule.schedule(self.lr, self.epochs * n_batches.max(1))
    }

    /// Writes the recipe into `meta` under `train.*` keys (numbers read back bit for bit).
    pub fn to_metadata(&self, meta: &mut Metadata) {
        let augment: Vec<String> = self.augment.iter().map(|&a| augment_name(a)).collect();
        for (k, v) in [
            ("epochs", self.epochs.to_string()),
            ("batch_size", self.batch_size.to_string()),
            ("optimizer", self.optimizer.name().to_owned()),
            ("lr", checkpoint::format_f32(self.lr)),
            ("momentum", checkpoint::format_f32(self.momentum)),
            ("weight_decay", checkpoint::format_f32(self.weight_decay)),
            ("schedule", self.schedule.name().to_owned()),
            ("seed", self.seed.to_string()),
            ("augment", augment.join(",")),
            ("prefetch", self.prefetch.to_string()),
            ("eval_batch_size", self.eval_batch_size.to_string()),
        ] {
            meta.insert(format!("train.{k}"), v);
        }
    }

    /// Reads a recipe written by [`TrainConfig::to_metadata`]; `path` names the file in
    /// errors.
    pub fn from_metadata(meta: &Metadata, path: &Path) -> Result<Self> {
        let get = |k: &str| {
            meta.get(&format!("train.{k}")).ok_or_else(|| TrainError::Invalid {
                what: "resume",
                msg: format!("{}: metadata has no train.{k}", path.display()),
            })
        };
        let bad = |k: &str| TrainError::Invalid {
            what: "resume",
            msg: format!("{}: bad metadata train.{k}", path.display()),
        };
        let f = |k: &str| checkpoint::parse_f32(get(k)?).ok_or_else(|| bad(k));
        let u = |k: &str| get(k)?.parse::<u64>().map_err(|_| bad(k));
        // Checkpoints of `lenet train` before this crate existed say `train.hflip` where
        // later ones list `train.augment`, and lack the two settings that do not change
        // results; they resume with those settings' defaults.
        let augment = match meta.get("train.augment") {
            Some(a) if a.is_empty() => Vec::new(),
            Some(a) => a.split(',').map(parse_augment).collect::<Result<_>>()?,
            None => match meta.get("train.hflip").map(String::as_str) {
                Some("true") => vec![Augment::HorizontalFlip],
                Some(_) => Vec::new(),
                None => return Err(get("augment").err().unwrap_or_else(|| bad("augment"))),
            },
        };
        let defaults = Self::default();
        let or_default = |k: &str, d: usize| match meta.get(&format!("train.{k}")) {
            Some(v) => v.parse::<usize>().map_err(|_| bad(k)),
            None => Ok(d),
        };
        Ok(Self {
            epochs: u("epochs")? as usize,
            batch_size: u("batch_size")? as usize,
            optimizer: get("optimizer")?.parse().map_err(|_| bad("optimizer"))?,
            lr: f("lr")?,
            momentum: f("momentum")?,
            weight_decay: f("weight_decay")?,
            schedule: get("schedule")?.parse().map_err(|_| bad("schedule"))?,
            seed: u("seed")?,
            augment,
            prefetch: or_default("prefetch", defaults.prefetch)?,
            eval_batch_size: or_default("eval_batch_size", defaults.eval_batch_size)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recipes_round_trip_through_metadata_bit_for_bit() {
        let cfg = TrainConfig {
            lr: 0.002,
            weight_decay: 1e-4,
            schedule: ScheduleKind::Cosine,
            augment: vec![Augment::RandomCrop { pad: 4 }, Augment::HorizontalFlip],
            seed: u64::MAX,
            ..TrainConfig::default()
        };
        let mut meta = Metadata::new();
        cfg.to_metadata(&mut meta);
        assert_eq!(TrainConfig::from_metadata(&meta, Path::new("m")).unwrap(), cfg);
        meta.insert("train.augment".into(), "rotate".into());
        let e = TrainConfig::from_metadata(&meta, Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("unknown augmentation \"rotate\""), "{e}");
        meta.insert("train.augment".into(), String::new());
        meta.remove("train.lr");
        let e = TrainConfig::from_metadata(&meta, Path::new("m.st")).unwrap_err().to_string();
        assert!(e.contains("m.st: metadata has no train.lr"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (cfg, what) in [
            (TrainConfig { epochs: 0, ..Default::default() }, "epochs"),
            (TrainConfig { batch_size: 0, ..Default::default() }, "batch size"),
            (TrainConfig { lr: f32::NAN, ..Default::default() }, "learning rate"),
            (TrainConfig { momentum: 1.0, ..Default::default() }, "momentum"),
            (TrainConfig { weight_decay: -1.0, ..Default::default() }, "weight decay"),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.starts_with(what), "{e}");
        }
        TrainConfig::default().validate().unwrap();
    }
}
