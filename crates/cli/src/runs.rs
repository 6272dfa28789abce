//! A training run as the binaries drive it: where its files go ([`Outputs`]) and the loop
//! over its epochs ([`train_epochs`]) with a progress bar on a terminal, one line (or one JSON
//! object) per epoch, and on a non-finite loss the name of the last good checkpoint.
//!
//! `lenet train` and `convkit train` both run their [`Trainer`] through this module, so
//! their files, lines and stops are the same. Errors are `anyhow`'s, as in the binaries.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use convkit_data::Dataset;
use convkit_nn::Module;
use convkit_train::{TrainError, Trainer, metrics_path, optimizer_path};

use crate::args::progress_bar;
use convkit_nn::checkpoint::Metadata;

/// The options of a training run that `lenet train` and `convkit train` share: how long this
/// invocation trains, on how many threads and images, where it writes, what it resumes and
/// how it reports.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Stop after this many epochs of this invocation (continue later with --resume).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Train on N training images only (`lenet`: the first N; `convkit`: N evenly spaced
    /// through the set); a resumed run keeps the limit it was started with.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Checkpoint path (the optimizer state and metrics go beside it) [default: the resumed
    /// checkpoint, else model.safetensors for `lenet`, run.safetensors for `convkit`].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in CKPT (its recipe, weights, optimizer state, epoch, and for
    /// `convkit` its model and data preparation), writing to CKPT and appending to its
    /// metrics unless --out names another checkpoint.
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
    /// One JSON line per epoch on stdout, no progress bar.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// The run's files, with `default` as the checkpoint of a new run without `--out`.
    pub fn outputs(&self, default: &str) -> Outputs {
        Outputs::new(self.out.as_deref(), self.resume.as_deref(), default)
    }

    /// Refuses `--limit 0`, which would leave nothing to train on.
    pub fn check_limit(&self) -> Result<()> {
        if self.limit == Some(0) {
            bail!("limit: --limit 0 leaves no training images");
        }
        Ok(())
    }
}

/// The files of a run: the checkpoint, and the run it continues, if any. The optimizer state
/// ([`optimizer_path`]) and the metrics ([`metrics_path`]) go beside the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// The checkpoint written after every epoch.
    pub checkpoint: PathBuf,
    /// The checkpoint the run resumed from.
    pub resumed: Option<PathBuf>,
}

impl Outputs {
    /// The checkpoint is `out` when given, else the resumed checkpoint (resuming in place),
    /// else `default`.
    pub fn new(out: Option<&Path>, resume: Option<&Path>, default: &str) -> Self {
        let checkpoint = match (out, resume) {
            (Some(out), _) => out.to_path_buf(),
            (None, Some(resumed)) => resumed.to_path_buf(),
            (None, None) => PathBuf::from(default),
        };
        Self { checkpoint, resumed: resume.map(Path::to_path_buf) }
    }

    /// Makes the checkpoint's folder, before an epoch's work could be lost to a missing
    /// directory, and starts the metrics file: empty for a new run; for a run resumed into
    /// another checkpoint, a copy of the resumed run's history; a run resumed in place
    /// appends to its own.
    pub fn prepare(&self) -> Result<()> {
        let out = &self.checkpoint;
        let mpath = metrics_path(out);
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
        }
        match &self.resumed {
            None => std::fs::write(&mpath, b"")
                .with_context(|| format!("cannot write {}", mpath.display()))?,
            Some(resumed) => {
                let old = metrics_path(resumed);
                if old != mpath && old.is_file() {
                    std::fs::copy(&old, &mpath).with_context(|| {
                        format!("cannot copy {} to {}", old.display(), mpath.display())
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Trains the run's remaining epochs, or `stop_after` of them, saving the checkpoint after
/// each: a progress bar on a terminal (not with `json`), then one line per epoch on stdout
/// (with `json`, the epoch's metrics as one JSON object), and at the end the files written.
///
/// A non-finite loss stops the run with an error that names the last good checkpoint: this
/// run's when an epoch of it finished, else the resumed one, else none.
pub fn train_epochs<M: Module>(
    trainer: &mut Trainer<M>,
    train: &dyn Dataset,
    test: Option<&dyn Dataset>,
    outputs: &Outputs,
    stop_after: Option<usize>,
    json: bool,
) -> Result<()> {
    let out = &outputs.checkpoint;
    let cfg = trainer.config().clone();
    let first_epoch = trainer.epochs_done();
    let show_bar = !json && std::io::stderr().is_terminal();
    let stop_at = stop_after.map_or(cfg.epochs, |n| (first_epoch + n).min(cfg.epochs));
    while trainer.epochs_done() < stop_at {
        let epoch = trainer.epochs_done() + 1;
        let bar = show_bar.then(|| progress_bar(train.len(), epoch, cfg.epochs));
        let result = trainer.fit_epoch(train, test, Some(out), &mut |e| {
            if let Some(bar) = &bar {
                let left = bar.length().unwrap_or(0).saturating_sub(bar.position());
                bar.inc((cfg.batch_size as u64).min(left));
                let rate = bar.position() as f64 / bar.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{:.4}, {rate:.0} images/s", e.loss));
            }
        });
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let m = match result {
            Ok(m) => m,
            Err(e @ TrainError::NonFiniteLoss { .. }) => {
                let kept = match &outputs.resumed {
                    _ if trainer.epochs_done() > first_epoch => {
                        format!("the last good checkpoint is {}", out.display())
                    }
                    Some(resumed) => format!("the last good checkpoint is {}", resumed.display()),
                    None => "no checkpoint was written".to_owned(),
                };
                bail!("{e}; {kept}");
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("epoch {epoch} (checkpoint {})", out.display()));
            }
        };
        if json {
            println!("{}", m.to_json());
        } else {
            let test_acc =
                m.test.map_or(String::new(), |t| format!("  test acc {:.4}", t.accuracy));
            println!(
                "epoch {:>2}/{}: train loss {:.4}  train acc {:.4}{test_acc}  {:.1} s  {:.0} images/s",
                m.epoch, cfg.epochs, m.train_loss, m.train_acc, m.seconds, m.images_per_sec
            );
        }
    }
    if !json {
        println!(
            "checkpoint: {} (optimizer state {}, metrics {})",
            out.display(),
            optimizer_path(out).display(),
            metrics_path(out).display()
        );
    }
    Ok(())
}

/// The metadata key of `--limit` in a run's checkpoints (`all` or a count), in `lenet` and
/// `convkit` runs alike.
pub const LIMIT_KEY: &str = "train.limit";

/// Records a new run's `--limit` (`None`: every training image) in its metadata.
pub fn set_limit(meta: &mut Metadata, limit: Option<usize>) {
    meta.insert(LIMIT_KEY.into(), limit.map_or("all".to_owned(), |l| l.to_string()));
}

/// The `--limit` a run's metadata records (`None`: every training image, also for runs that
/// record none), checked against a `--limit` given again on resuming.
pub fn run_limit(meta: &Metadata, given: Option<usize>) -> Result<Option<usize>> {
    let limit = match meta.get(LIMIT_KEY).map(String::as_str) {
        None | Some("all") => None,
        Some(v) => Some(v.parse::<usize>().with_context(|| format!("bad {LIMIT_KEY} {v:?}"))?),
    };
    if given.is_some() && given != limit {
        bail!("--limit differs from the resumed run's ({limit:?}); leave it out when resuming");
    }
    Ok(limit)
}
