//! What the binaries share around their arguments: clap value parsers for the libraries'
//! enums and for sizes, the `--threads N` pool, and the training progress bar.
//!
//! These are the binaries' own plumbing, so their errors are `anyhow`'s, as in the binaries.

use anyhow::{Context, Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use convkit_data::Augment;
use convkit_models::zoo::ZooModel;
use convkit_nn::{OptimizerKind, ScheduleKind};
use convkit_train::TrainConfig;
use indicatif::{ProgressBar, ProgressStyle};

/// A value parser for a library enum: clap lists and checks `names` (the enum's `ALL`), and
/// the library's `FromStr` turns the chosen name into the value.
pub fn names_parser<T>(names: &[&'static str]) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(names.iter().copied()).try_map(|s| s.parse::<T>())
}

/// A value parser for `--model`: clap lists and checks the zoo's names.
pub fn zoo_model_parser() -> impl TypedValueParser<Value = ZooModel> {
    PossibleValuesParser::new(ZooModel::ALL.map(ZooModel::name)).try_map(|s| ZooModel::parse(&s))
}

/// A value parser for one augmentation (`hflip`, `crop:PAD`), as checkpoints name them.
pub fn parse_augment(s: &str) -> Result<Augment, String> {
    convkit_train::config::parse_augment(s).map_err(|e| e.to_string())
}

/// A comma-separated list of augmentations (`crop:2,hflip`), or `none` for an empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AugmentList(pub Vec<Augment>);

/// Parses an [`AugmentList`].
pub fn parse_augment_list(s: &str) -> Result<AugmentList, String> {
    if s == "none" {
        return Ok(AugmentList(Vec::new()));
    }
    s.split(',').map(parse_augment).collect::<Result<_, _>>().map(AugmentList)
}

/// Runs `f` with a rayon pool of `threads` workers (the global pool as it is when `None`).
///
/// The first call of a process makes that the global pool and runs `f` on the calling
/// thread, as a command does, so that the library's kernels and
/// [`convkit_tensor::parallel::warm`] (which keeps the workers awake through a training step
/// or a forward) see it from outside; a later call, once the global pool exists, runs `f`
/// inside a pool of its own.
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    match threads {
        None => f(),
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => match rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            Ok(()) => f(),
            Err(_) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .context("could not start the thread pool")?
                .install(f),
        },
    }
}

/// The progress bar of one training epoch over `images` images.
pub fn progress_bar(images: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(images as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:25}] {pos}/{len} images, loss {msg}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

/// Parses `N` or `HxW` (`28`, `32x48`): a height and a width, each at least 1.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let side = |v: &str| match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a size: expected N or HxW with positive whole numbers")),
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((side(h)?, side(w)?)),
        None => side(s).map(|n| (n, n)),
    }
}

/// Parses `CxHxW` (`1x28x28`, `3x32x32`): an input shape, each side at least 1.
pub fn parse_chw(s: &str) -> Result<[usize; 3], String> {
    let bad = || format!("{s:?} is not an input shape: expected CxHxW such as 1x28x28");
    let parts: Vec<usize> = s
        .split(['x', 'X'])
        .map(|v| v.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    <[usize; 3]>::try_from(parts).map_err(|_| bad())
}

/// The options of a training recipe that `lenet train` and `convkit train` share; each
/// overrides its recipe's value when given.
#[derive(Debug, Clone, clap::Args)]
pub struct RecipeArgs {
    /// Number of epochs in total, counting those done before a resume [default: the
    /// recipe's, or the resumed run's].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step [default: the recipe's].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Optimizer [default: the recipe's].
    #[arg(long, value_parser = names_parser::<OptimizerKind>(&OptimizerKind::ALL.map(OptimizerKind::name)))]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate [default: the recipe's; the optimizer's own (0.01 for sgd, 0.001 for
    /// adam) when --optimizer changes it].
    #[arg(long)]
    pub lr: Option<f32>,
    /// SGD momentum [default: the recipe's].
    #[arg(long)]
    pub momentum: Option<f32>,
    /// L2 weight decay [default: the recipe's].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Learning-rate schedule, stepped every batch [default: the recipe's].
    #[arg(long, value_parser = names_parser::<ScheduleKind>(&ScheduleKind::ALL.map(ScheduleKind::name)))]
    pub schedule: Option<ScheduleKind>,
    /// Seed of initialization, shuffling and augmentation [default: the recipe's].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl RecipeArgs {
    /// `base` with every option given in its place. A new optimizer without `--lr` takes its
    /// own default learning rate, not the recipe's.
    pub fn apply(&self, base: TrainConfig) -> TrainConfig {
        let optimizer = self.optimizer.unwrap_or(base.optimizer);
        let default_lr = if optimizer == base.optimizer { base.lr } else { optimizer.default_lr() };
        TrainConfig {
            epochs: self.epochs.unwrap_or(base.epochs),
            batch_size: self.batch_size.unwrap_or(base.batch_size),
            optimizer,
            lr: self.lr.unwrap_or(default_lr),
            momentum: self.momentum.unwrap_or(base.momentum),
            weight_decay: self.weight_decay.unwrap_or(base.weight_decay),
            schedule: self.schedule.unwrap_or(base.schedule),
            seed: self.seed.unwrap_or(base.seed),
            ..base
        }
    }

    /// The options given that a resumed run takes from its checkpoint instead (all but
    /// `--epochs`).
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--batch-size", self.batch_size.is_some()),
            ("--optimizer", self.optimizer.is_some()),
            ("--lr", self.lr.is_some()),
            ("--momentum", self.momentum.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--seed", self.seed.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_and_shapes_parse_or_say_what_is_expected() {
        assert_eq!(parse_size("12").unwrap(), (12, 12));
        assert_eq!(parse_size("32x48").unwrap(), (32, 48));
        for bad in ["0", "12x", "x12", "a", "-3", "1x2x3"] {
            assert!(parse_size(bad).unwrap_err().contains("expected N or HxW"), "{bad}");
        }
        assert_eq!(parse_chw("3x32x28").unwrap(), [3, 32, 28]);
        for bad in ["1x28", "0x28x28", "1x28x28x2", ""] {
            assert!(parse_chw(bad).unwrap_err().contains("expected CxHxW"), "{bad}");
        }
    }
}
