//! [`Trainer`]: the training loop for any [`Module`], its evaluation and its checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use convkit_autograd::{Tape, Var};
use convkit_data::{Batch, Dataset, Loader};
use convkit_nn::checkpoint::{self, Metadata};
use convkit_nn::{Module, Optimizer, params};
use convkit_tensor::Tensor;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError, invalid};

/// What the per-batch hook of [`Trainer::train_epoch`] is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchEvent {
    /// The epoch being trained (1-based).
    pub epoch: usize,
    /// The batch within the epoch (0-based).
    pub batch: usize,
    /// The number of batches of the epoch.
    pub batches: usize,
    /// The batch's mean loss.
    pub loss: f32,
    /// The learning rate of the step.
    pub lr: f32,
}

/// Loss and accuracy over a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy per example.
    pub loss: f64,
    /// Fraction of examples whose largest logit is their class.
    pub accuracy: f64,
    /// Examples classified correctly.
    pub correct: usize,
    /// Examples seen.
    pub total: usize,
}

/// What one [`Trainer::train_step`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The batch's mean cross-entropy loss, before the update.
    pub loss: f32,
    /// Correct predictions in the batch, before the update.
    pub correct: usize,
}

/// The record of one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochMetrics {
    /// Epochs done after this one (1-based).
    pub epoch: usize,
    /// Mean training loss per example.
    pub train_loss: f64,
    /// Training accuracy (in training mode, before each step's update).
    pub train_acc: f64,
    /// The evaluation on held-out data after the epoch, when given.
    pub test: Option<Evaluation>,
    /// Wall time of the training pass.
    pub seconds: f64,
    /// Training examples per second.
    pub images_per_sec: f64,
    /// The learning rate of the epoch's first step.
    pub lr: f32,
}

impl EpochMetrics {
    /// One line of JSON (the metrics file holds one per epoch).
    pub fn to_json(&self) -> String {
        let (test_loss, test_acc) = match self.test {
            Some(t) => (t.loss.to_string(), t.accuracy.to_string()),
            None => ("null".into(), "null".into()),
        };
        format!(
            "{{\"epoch\":{},\"train_loss\":{},\"train_acc\":{},\"test_loss\":{test_loss},\
             \"test_acc\":{test_acc},\"seconds\":{},\"images_per_sec\":{},\"lr\":{}}}",
            self.epoch, self.train_loss, self.train_acc, self.seconds, self.images_per_sec, self.lr
        )
    }
}

/// The purpose of the [`convkit_data::loader::stream`] that reseeds the model's dropout.
const DROPOUT: u64 = 3;

/// The optimizer file beside a checkpoint: `run.safetensors` → `run.optim.safetensors`.
pub fn optimizer_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("optim.safetensors")
}

/// The metrics file beside a checkpoint: `run.safetensors` → `run.metrics.jsonl`.
pub fn metrics_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("metrics.jsonl")
}

/// Loss and accuracy of `model` on `data`, `batch_size` examples per forward pass, with the
/// model in whatever mode it is (call `set_training(false)` first for BatchNorm's running
/// statistics; [`Trainer::evaluate`] does).
pub fn evaluate(model: &dyn Module, data: &dyn Dataset, batch_size: usize) -> Result<Evaluation> {
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    Loader::new(data, batch_size)?.shuffle(false).for_each(|_, batch| {
        let (loss, right) = convkit_tensor::parallel::warm(|| {
            let logits = model.forward(&Var::constant(batch.images))?;
            let loss = logits.cross_entropy(&batch.labels)?.value().as_slice()[0];
            Ok::<_, TrainError>((loss, count_correct(logits.value(), &batch.labels)?))
        })?;
        loss_sum += f64::from(loss) * batch.labels.len() as f64;
        correct += right;
        Ok::<_, TrainError>(())
    })?;
    let total = data.len();
    let per = |x: f64| if total == 0 { 0.0 } else { x / total as f64 };
    Ok(Evaluation { loss: per(loss_sum), accuracy: per(correct as f64), correct, total })
}

fn count_correct(logits: &Tensor, labels: &[usize]) -> Result<usize> {
    let pred = logits.argmax_axis(1)?;
    Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count())
}

/// A model, its optimizer and the position in the run.
///
/// Everything an epoch depends on is in the checkpoint or derived from it: the parameters
/// and buffers (the model file), the optimizer's buffers and step counts (the
/// `.optim.safetensors` file beside it), the recipe and the epoch counter (their metadata).
/// The order, the augmentations and the dropout masks of epoch `e` are functions of the seed
/// and `e` ([`convkit_data::epoch_order`]; the model is [reseeded](Module::reseed) at the
/// start of each epoch), so a resumed run continues exactly as the uninterrupted one would
/// have.
pub struct Trainer<M: Module> {
    /// The model being trained.
    pub model: M,
    opt: Box<dyn Optimizer>,
    cfg: TrainConfig,
    epochs_done: usize,
    metadata: Metadata,
}

impl<M: Module> Trainer<M> {
    /// A fresh run of `model` with the recipe `cfg`.
    pub fn new(model: M, cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let opt = cfg.optimizer.build(params(&model), cfg.lr, cfg.momentum, cfg.weight_decay)?;
        Ok(Self { model, opt, cfg, epochs_done: 0, metadata: Metadata::new() })
    }

    /// Continues the run saved at `checkpoint` (see [`Trainer::save`]) with `model`, which
    /// must have the saved architecture (every parameter and buffer name and shape; its
    /// values are replaced). The recipe comes from the checkpoint; `epochs`, when given,
    /// replaces the total number of epochs (with a cosine schedule this changes the
    /// remaining rates). The checkpoint's metadata becomes the run's [`Trainer::metadata`].
    pub fn resume(model: M, checkpoint: &Path, epochs: Option<usize>) -> Result<Self> {
        let meta = checkpoint::load(checkpoint, &model, true)?;
        let mut cfg = TrainConfig::from_metadata(&meta, checkpoint)?;
        if let Some(e) = epochs {
            cfg.epochs = e;
        }
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
        let mut trainer = Self::new(model, cfg)?;
        trainer.opt.load_state(&state)?;
        trainer.epochs_done = done;
        trainer.metadata = meta;
        Ok(trainer)
    }

    /// The recipe.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// What the run's checkpoints carry besides the recipe and the epoch counter (the model's
    /// name, the data's normalization, …): written by [`Trainer::save`], read back by
    /// [`Trainer::resume`]. [`Trainer::save`] rewrites the `train.*` keys of the recipe and the
    /// epoch counter.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The run's metadata, to add entries to (see [`Trainer::metadata`]).
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Whether the run has done all of its epochs.
    pub fn finished(&self) -> bool {
        self.epochs_done >= self.cfg.epochs
    }

    /// Trains one epoch on `train` in training mode, calling `on_batch` after each step.
    ///
    /// A non-finite loss stops the epoch with [`TrainError::NonFiniteLoss`]; that step is not
    /// applied, and the epoch counter stays where it was.
    pub fn train_epoch(
        &mut self,
        train: &dyn Dataset,
        on_batch: &mut dyn FnMut(&BatchEvent),
    ) -> Result<EpochMetrics> {
        if train.is_empty() {
            return Err(invalid("train", "the training set is empty"));
        }
        self.model.set_training(true);
        let epoch = self.epochs_done;
        // Dropout masks restart from the seed and the epoch, so a resumed run draws them as
        // the uninterrupted run did.
        self.model
            .reseed(convkit_data::loader::stream(self.cfg.seed, DROPOUT, epoch, 0).next_u64());
        let loader = Loader::new(train, self.cfg.batch_size)?
            .seed(self.cfg.seed)
            .epoch(epoch)
            .augment(&self.cfg.augment)
            .prefetch(self.cfg.prefetch);
        let batches = loader.len();
        let (schedule, first_step) = (self.cfg.lr_schedule(batches), epoch * batches);
        let first_lr = schedule.lr_at(first_step);
        let start = Instant::now();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        loader.for_each(|b, batch| {
            let lr = schedule.lr_at(first_step + b);
            let n = batch.labels.len();
            let step = self.step(batch, lr, b)?;
            correct += step.correct;
            loss_sum += f64::from(step.loss) * n as f64;
            on_batch(&BatchEvent { epoch: epoch + 1, batch: b, batches, loss: step.loss, lr });
            Ok::<_, TrainError>(())
        })?;
        let seconds = start.elapsed().as_secs_f64();
        self.epochs_done += 1;
        let n = train.len() as f64;
        Ok(EpochMetrics {
            epoch: self.epochs_done,
            train_loss: loss_sum / n,
            train_acc: correct as f64 / n,
            test: None,
            seconds,
            images_per_sec: n / seconds.max(1e-9),
            lr: first_lr,
        })
    }

    /// One optimization step on `batch` at learning rate `lr`, in whatever mode the model is:
    /// forward on a fresh tape, cross-entropy, backward, the optimizer's update, gradients
    /// cleared. This is the step [`Trainer::train_epoch`] runs for every batch; it does not
    /// count epochs. A non-finite loss is [`TrainError::NonFiniteLoss`] (batch 1 of the
    /// current epoch) and leaves the parameters unchanged.
    pub fn train_step(&mut self, batch: Batch, lr: f32) -> Result<StepOutput> {
        self.step(batch, lr, 0)
    }

    fn step(&mut self, batch: Batch, lr: f32, b: usize) -> Result<StepOutput> {
        let (model, opt, epoch) = (&self.model, &mut self.opt, self.epochs_done + 1);
        // The step's kernels run back to back: keep the pool awake between them.
        convkit_tensor::parallel::warm(move || {
            opt.set_lr(lr);
            let tape = Tape::new();
            let logits = model.forward(&tape.input(batch.images))?;
            let loss = logits.cross_entropy(&batch.labels)?;
            let lv = loss.value().as_slice()[0];
            if !lv.is_finite() {
                opt.zero_grad();
                return Err(TrainError::NonFiniteLoss { epoch, batch: b + 1, loss: lv });
            }
            loss.backward()?;
            opt.step()?;
            opt.zero_grad();
            let correct = count_correct(logits.value(), &batch.labels)?;
            Ok(StepOutput { loss: lv, correct })
        })
    }

    /// Loss and accuracy on `data` in eval mode (BatchNorm's running statistics); the model
    /// is back in training mode afterwards.
    pub fn evaluate(&mut self, data: &dyn Dataset) -> Result<Evaluation> {
        self.model.set_training(false);
        let result = evaluate(&self.model, data, self.cfg.eval_batch_size);
        self.model.set_training(true);
        result
    }

    /// Runs the remaining epochs with [`Trainer::fit_epoch`], calling `on_epoch` after each.
    /// On an error (such as [`TrainError::NonFiniteLoss`]) the checkpoint holds the last
    /// finished epoch.
    pub fn fit(
        &mut self,
        train: &dyn Dataset,
        test: Option<&dyn Dataset>,
        checkpoint: Option<&Path>,
        on_batch: &mut dyn FnMut(&BatchEvent),
        on_epoch: &mut dyn FnMut(&EpochMetrics),
    ) -> Result<Vec<EpochMetrics>> {
        let mut all = Vec::new();
        while !self.finished() {
            let m = self.fit_epoch(train, test, checkpoint, on_batch)?;
            on_epoch(&m);
            all.push(m);
        }
        Ok(all)
    }

    /// One epoch of [`Trainer::fit`]: [`Trainer::train_epoch`], the evaluation on `test`
    /// (when given), then, with a `checkpoint` path, the model and optimizer saved atomically
    /// (see [`Trainer::save`]) and the epoch's metrics appended to [`metrics_path`]. On an
    /// error the checkpoint is left as it was.
    pub fn fit_epoch(
        &mut self,
        train: &dyn Dataset,
        test: Option<&dyn Dataset>,
        checkpoint: Option<&Path>,
        on_batch: &mut dyn FnMut(&BatchEvent),
    ) -> Result<EpochMetrics> {
        let mut m = self.train_epoch(train, on_batch)?;
        if let Some(test) = test {
            m.test = Some(self.evaluate(test)?);
        }
        if let Some(path) = checkpoint {
            self.save(path, &Metadata::new())?;
            append_line(&metrics_path(path), &m.to_json())?;
        }
        Ok(m)
    }

    /// Saves the model (its `state_dict`, with the recipe, the epoch counter, the run's
    /// [`Trainer::metadata`] and `extra` in the metadata) at `path` and the optimizer state at
    /// [`optimizer_path`], each atomically.
    pub fn save(&self, path: &Path, extra: &Metadata) -> Result<()> {
        let mut meta = self.metadata.clone();
        meta.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.cfg.to_metadata(&mut meta);
        let done = self.epochs_done.to_string();
        meta.insert("train.epochs_done".into(), done.clone());
        let ometa = Metadata::from([("train.epochs_done".to_owned(), done)]);
        checkpoint::save_optimizer(optimizer_path(path), &self.opt.state(), &ometa)?;
        checkpoint::save(path, &self.model, &meta)?;
        Ok(())
    }
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let io =
        |e: std::io::Error| TrainError::Io { path: path.display().to_string(), msg: e.to_string() };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    writeln!(f, "{line}").map_err(io)
}
