//! Learning-rate schedules, as functions of the epoch (or step) index, matching PyTorch's
//! `StepLR`, `CosineAnnealingLR`, `LinearLR` and `SequentialLR`.
//!
//! A schedule gives the learning rate for index `t = 0, 1, 2, …`; apply it with
//! [`crate::Optimizer::set_lr`] before each epoch (PyTorch's `scheduler.step()` after each
//! epoch gives the same sequence).

use crate::error::{Result, config};

/// A learning-rate schedule.
pub trait LrSchedule {
    /// The learning rate at index `t` (0-based).
    fn lr_at(&self, t: usize) -> f32;
}

/// Multiplies the rate by `gamma` every `step_size` epochs: `base·γ^⌊t/step⌋`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    /// Initial learning rate.
    pub base: f32,
    /// Epochs between decays (≥ 1).
    pub step_size: usize,
    /// Decay factor.
    pub gamma: f32,
}

impl StepLr {
    /// A validated step schedule.
    pub fn new(base: f32, step_size: usize, gamma: f32) -> Result<Self> {
        if step_size == 0 {
            return Err(config("StepLr", "step_size must be at least 1"));
        }
        Ok(Self { base, step_size, gamma })
    }
}

impl LrSchedule for StepLr {
    fn lr_at(&self, t: usize) -> f32 {
        (f64::from(self.base) * f64::from(self.gamma).powi((t / self.step_size) as i32)) as f32
    }
}

/// Cosine annealing from `base` to `eta_min` over `t_max` epochs:
/// `η_min + (base − η_min)(1 + cos(π·t/T))/2`, continuing the cosine past `T` as PyTorch does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineAnnealing {
    /// Initial learning rate.
    pub base: f32,
    /// Half-period in epochs (≥ 1).
    pub t_max: usize,
    /// Smallest learning rate.
    pub eta_min: f32,
}

impl CosineAnnealing {
    /// A validated cosine schedule.
    pub fn new(base: f32, t_max: usize, eta_min: f32) -> Result<Self> {
        if t_max == 0 {
            return Err(config("CosineAnnealing", "t_max must be at least 1"));
        }
        Ok(Self { base, t_max, eta_min })
    }
}

impl LrSchedule for CosineAnnealing {
    fn lr_at(&self, t: usize) -> f32 {
        let (b, m) = (f64::from(self.base), f64::from(self.eta_min));
        let c = (std::f64::consts::PI * t as f64 / self.t_max as f64).cos();
        (m + (b - m) * (1.0 + c) / 2.0) as f32
    }
}

/// Linear warm-up (PyTorch's `LinearLR`): the factor goes from `start_factor` to
/// `end_factor` over `total_iters` epochs, then stays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearWarmup {
    /// Target learning rate.
    pub base: f32,
    /// Factor at `t = 0` (in `(0, 1]`).
    pub start_factor: f32,
    /// Factor from `t = total_iters` on.
    pub end_factor: f32,
    /// Length of the ramp.
    pub total_iters: usize,
}

impl LinearWarmup {
    /// A validated warm-up from `start_factor·base` to `base` over `total_iters` epochs.
    pub fn new(base: f32, start_factor: f32, total_iters: usize) -> Result<Self> {
        if start_factor.is_nan() || start_factor <= 0.0 || start_factor > 1.0 {
            return Err(config(
                "LinearWarmup",
                format!("start_factor must be in (0, 1], got {start_factor}"),
            ));
        }
        Ok(Self { base, start_factor, end_factor: 1.0, total_iters })
    }
}

impl LrSchedule for LinearWarmup {
    fn lr_at(&self, t: usize) -> f32 {
        let frac = if self.total_iters == 0 {
            1.0
        } else {
            t.min(self.total_iters) as f64 / self.total_iters as f64
        };
        let (s, e) = (f64::from(self.start_factor), f64::from(self.end_factor));
        (f64::from(self.base) * (s + (e - s) * frac)) as f32
    }
}

/// One schedule until `milestone`, then another counted from 0 (PyTorch's `SequentialLR`
/// with two schedulers): e.g. a warm-up followed by cosine annealing.
pub struct Then<A, B> {
    /// The first schedule.
    pub first: A,
    /// The schedule from `milestone` on.
    pub second: B,
    /// Where the second takes over.
    pub milestone: usize,
}

impl<A: LrSchedule, B: LrSchedule> LrSchedule for Then<A, B> {
    fn lr_at(&self, t: usize) -> f32 {
        if t < self.milestone { self.first.lr_at(t) } else { self.second.lr_at(t - self.milestone) }
    }
}

/// A constant learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constant(pub f32);

impl LrSchedule for Constant {
    fn lr_at(&self, _: usize) -> f32 {
        self.0
    }
}

/// Which schedule a training run uses, stepped once per batch: the one description the
/// library, the command line and the checkpoints share (by [`ScheduleKind::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// The same rate at every step ([`Constant`]).
    Constant,
    /// Cosine annealing from the base rate to 0 over the run's steps ([`CosineAnnealing`]):
    /// `lr·(1 + cos(π·s/S))/2` at step `s` of `S`.
    Cosine,
}

impl ScheduleKind {
    /// Every schedule, in the order a help text lists them.
    pub const ALL: [ScheduleKind; 2] = [ScheduleKind::Constant, ScheduleKind::Cosine];

    /// `constant` or `cosine`.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Cosine => "cosine",
        }
    }

    /// The schedule from `base` over `total_steps` steps (at least 1 is used).
    pub fn schedule(self, base: f32, total_steps: usize) -> Box<dyn LrSchedule> {
        match self {
            ScheduleKind::Constant => Box::new(Constant(base)),
            ScheduleKind::Cosine => {
                Box::new(CosineAnnealing { base, t_max: total_steps.max(1), eta_min: 0.0 })
            }
        }
    }
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ScheduleKind {
    type Err = crate::NnError;

    /// Parses a [`ScheduleKind::name`]; the error lists the valid names.
    fn from_str(s: &str) -> Result<Self> {
        ScheduleKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names = ScheduleKind::ALL.map(ScheduleKind::name).join(" or ");
            config("schedule", format!("unknown schedule {s:?}; expected {names}"))
        })
    }
}
