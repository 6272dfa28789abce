//! Optimizers with the update rules of PyTorch's documentation, and their saved state.
//!
//! Each optimizer holds the [`Param`] handles it updates, in a fixed order, and per-parameter
//! state (momentum buffers, Adam's moments and step counts). Parameters without a gradient are
//! skipped, as in PyTorch. [`Optimizer::state`] / [`Optimizer::load_state`] save and restore
//! everything a resumed run needs.

use std::collections::BTreeMap;

use convkit_autograd::Param;
use convkit_tensor::Tensor;
use rayon::prelude::*;

use crate::error::{NnError, Result, config};

/// The saved state of an optimizer: named tensors and named numbers (hyper-parameters, step
/// counts), so it can be stored next to a checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizerState {
    /// Per-parameter buffers, named `"{index}.{buffer}"` (e.g. `"3.exp_avg"`).
    pub tensors: BTreeMap<String, Tensor>,
    /// Hyper-parameters and counters (e.g. `"lr"`, `"3.step"`).
    pub scalars: BTreeMap<String, f64>,
}

/// What every optimizer offers. `Send`, so that a training step can run on rayon's pool
/// ([`convkit_tensor::parallel::warm`]).
pub trait Optimizer: Send {
    /// Updates every parameter that has a gradient.
    fn step(&mut self) -> Result<()>;
    /// The parameters it updates, in order.
    fn params(&self) -> &[Param];
    /// Forgets the gradients of all parameters.
    fn zero_grad(&self) {
        self.params().iter().for_each(Param::zero_grad);
    }
    /// The current learning rate.
    fn lr(&self) -> f32;
    /// Sets the learning rate (what an LR schedule does between epochs).
    fn set_lr(&mut self, lr: f32);
    /// The full state, for saving.
    fn state(&self) -> OptimizerState;
    /// Restores a saved state; errors if it does not fit the parameters.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

/// Which optimizer a training run uses: the one description the library, the command line and
/// the checkpoints share (by [`OptimizerKind::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// SGD with momentum ([`Sgd`], PyTorch's `SGD`).
    Sgd,
    /// Adam with L2 weight decay ([`Adam`], PyTorch's `Adam`).
    Adam,
}

impl OptimizerKind {
    /// Every optimizer, in the order a help text lists them.
    pub const ALL: [OptimizerKind; 2] = [OptimizerKind::Sgd, OptimizerKind::Adam];

    /// `sgd` or `adam`.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }

    /// The learning rate a run uses when none is given: SGD 0.01 ([`SgdConfig`]'s default),
    /// Adam 0.001 (PyTorch's).
    pub fn default_lr(self) -> f32 {
        match self {
            OptimizerKind::Sgd => SgdConfig::default().lr,
            OptimizerKind::Adam => AdamConfig::default().lr,
        }
    }

    /// The optimizer over `params` with learning rate `lr`, L2 weight decay `weight_decay`
    /// and, for SGD, `momentum` (Adam keeps PyTorch's betas and eps).
    pub fn build(
        self,
        params: Vec<Param>,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<Box<dyn Optimizer>> {
        Ok(match self {
            OptimizerKind::Sgd => Box::new(Sgd::new(
                params,
                SgdConfig { lr, momentum, weight_decay, ..Default::default() },
            )?),
            OptimizerKind::Adam => {
                Box::new(Adam::new(params, AdamConfig { lr, weight_decay, ..Default::default() })?)
            }
        })
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = NnError;

    /// Parses a [`OptimizerKind::name`]; the error lists the valid names.
    fn from_str(s: &str) -> Result<Self> {
        OptimizerKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names = OptimizerKind::ALL.map(OptimizerKind::name).join(" or ");
            config("optimizer", format!("unknown optimizer {s:?}; expected {names}"))
        })
    }
}

/// Options of [`Sgd`], with PyTorch's defaults except `lr`, which has none there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor `μ` (0 disables momentum).
    pub momentum: f32,
    /// Dampening `τ` of the momentum.
    pub dampening: f32,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// L2 penalty `λ`, added to the gradient.
    pub weight_decay: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { lr: 0.01, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }
}

/// Stochastic gradient descent (PyTorch's `torch.optim.SGD`):
///
/// ```text
/// g ← g + λθ                              (weight decay)
/// b ← g at the first step, else μb + (1 − τ)g
/// g ← g + μb if nesterov, else b           (with momentum)
/// θ ← θ − lr·g
/// ```
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Param>,
    cfg: SgdConfig,
    momentum: Vec<Option<Tensor>>,
}

impl Sgd {
    /// An optimizer over `params` (usually [`crate::params`] of a model).
    pub fn new(params: Vec<Param>, cfg: SgdConfig) -> Result<Self> {
        check_lr("SGD", cfg.lr)?;
        if cfg.momentum < 0.0 || cfg.weight_decay < 0.0 {
            return Err(config("SGD", "momentum and weight_decay must be non-negative"));
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return Err(config("SGD", "Nesterov momentum requires a momentum and zero dampening"));
        }
        let momentum = vec![None; params.len()];
        Ok(Self { params, cfg, momentum })
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

/// One SGD step over a parameter's elements, in one pass with no temporary: per element,
/// `d = g + wd·w`; with momentum `b = μ·b + (1 − dampening)·d` (`b = d` on the `first` step)
/// and `d = d + μ·b` (Nesterov) or `d = b`; then `w = w − lr·d` (PyTorch's `SGD`). Large
/// parameters are split into chunks over threads; every element's arithmetic is the same.
fn sgd_update(c: &SgdConfig, first: bool, w: &mut [f32], g: &[f32], b: Option<&mut [f32]>) {
    const CHUNK: usize = 1 << 15;
    let run = |w: &mut [f32], g: &[f32], b: Option<&mut [f32]>| match b {
        Some(b) => {
            for ((w, &g), b) in w.iter_mut().zip(g).zip(b) {
                let mut d = g;
                if c.weight_decay != 0.0 {
                    d += c.weight_decay * *w;
                }
                *b = if first { d } else { c.momentum * *b + (1.0 - c.dampening) * d };
                d = if c.nesterov { d + c.momentum * *b } else { *b };
                *w += (-c.lr) * d;
            }
        }
        None => {
            for (w, &g) in w.iter_mut().zip(g) {
                let mut d = g;
                if c.weight_decay != 0.0 {
                    d += c.weight_decay * *w;
                }
                *w += (-c.lr) * d;
            }
        }
    };
    if w.len() < 4 * CHUNK || rayon::current_num_threads() < 2 {
        return run(w, g, b);
    }
    let chunks = w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK));
    match b {
        Some(b) => chunks.zip(b.par_chunks_mut(CHUNK)).for_each(|((w, g), b)| run(w, g, Some(b))),
        None => chunks.for_each(|(w, g)| run(w, g, None)),
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        let c = self.cfg;
        for (p, buf) in self.params.iter().zip(&mut self.momentum) {
            p.update(|value, grad| -> Result<()> {
                let Some(grad) = grad else { return Ok(()) };
                if grad.dims() != value.dims() {
                    let msg = format!(
                        "gradient {:?} does not fit parameter {:?}",
                        grad.dims(),
                        value.dims()
                    );
                    return Err(config("SGD", msg));
                }
                // The momentum buffer starts as the first step's update direction.
                let first = buf.is_none();
                if c.momentum != 0.0 && first {
                    *buf = Some(grad.zeros_like());
                }
                let momentum = buf.as_mut().filter(|_| c.momentum != 0.0).map(Tensor::data_mut);
                sgd_update(&c, first, value.data_mut(), grad.as_slice(), momentum);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn lr(&self) -> f32 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.cfg.lr = lr;
    }

    fn state(&self) -> OptimizerState {
        let mut s = OptimizerState::default();
        s.scalars.insert("lr".into(), f64::from(self.cfg.lr));
        for (i, b) in self.momentum.iter().enumerate() {
            if let Some(b) = b {
                s.tensors.insert(format!("{i}.momentum_buffer"), b.clone());
            }
        }
        s
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let mut momentum = vec![None; self.params.len()];
        load_buffers(&self.params, state, &["momentum_buffer"], |i, _, t| momentum[i] = Some(t))?;
        self.momentum = momentum;
        if let Some(&lr) = state.scalars.get("lr") {
            self.cfg.lr = lr as f32;
        }
        Ok(())
    }
}

/// Options of [`Adam`] (and AdamW), with PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// Decay rates of the first and second moment estimates (default (0.9, 0.999)).
    pub betas: (f32, f32),
    /// Added to the denominator for stability (default 1e-8).
    pub eps: f32,
    /// Weight decay `λ`: an L2 term added to the gradient for Adam, a decoupled shrinking of
    /// the weights for AdamW (default 0 for Adam; PyTorch's AdamW uses 0.01).
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Adam and AdamW (PyTorch's `torch.optim.Adam` / `AdamW`), per parameter with step `t`:
///
/// ```text
/// Adam:  g ← g + λθ          AdamW: θ ← θ(1 − lr·λ)
/// m ← β₁m + (1 − β₁)g        v ← β₂v + (1 − β₂)g²
/// θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
#[derive(Debug)]
pub struct Adam {
    params: Vec<Param>,
    cfg: AdamConfig,
    decoupled: bool,
    steps: Vec<u64>,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
}

impl Adam {
    /// Adam with L2 weight decay.
    pub fn new(params: Vec<Param>, cfg: AdamConfig) -> Result<Self> {
        Self::build(params, cfg, false)
    }

    /// AdamW: Adam with decoupled weight decay.
    pub fn adamw(params: Vec<Param>, cfg: AdamConfig) -> Result<Self> {
        Self::build(params, cfg, true)
    }

    fn build(params: Vec<Param>, cfg: AdamConfig, decoupled: bool) -> Result<Self> {
        let what = if decoupled { "AdamW" } else { "Adam" };
        check_lr(what, cfg.lr)?;
        let (b1, b2) = cfg.betas;
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
            return Err(config(what, format!("betas must be in [0, 1), got {:?}", cfg.betas)));
        }
        if cfg.eps < 0.0 || cfg.weight_decay < 0.0 {
            return Err(config(what, "eps and weight_decay must be non-negative"));
        }
        let n = params.len();
        Ok(Self { params, cfg, decoupled, steps: vec![0; n], m: vec![None; n], v: vec![None; n] })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }
}

impl Optimizer for Adam {
    fn step(&mut self) -> Result<()> {
        let c = self.cfg;
        let (b1, b2) = c.betas;
        for (i, p) in self.params.iter().enumerate() {
            let (m, v, t) = (&mut self.m[i], &mut self.v[i], &mut self.steps[i]);
            p.update(|value, grad| -> Result<()> {
                let Some(grad) = grad else { return Ok(()) };
                *t += 1;
                let mut g = grad.clone();
                if c.weight_decay != 0.0 {
                    if self.decoupled {
                        value.map_inplace(|x| x * (1.0 - c.lr * c.weight_decay));
                    } else {
                        g.axpy(c.weight_decay, value)?;
                    }
                }
                let m = m.get_or_insert_with(|| g.zeros_like());
                let v = v.get_or_insert_with(|| g.zeros_like());
                let bc1 = 1.0 - f64::from(b1).powi(*t as i32);
                let bc2_sqrt = (1.0 - f64::from(b2).powi(*t as i32)).sqrt();
                let step_size = (f64::from(c.lr) / bc1) as f32;
                let bc2_sqrt = bc2_sqrt as f32;
                let (ms, vs, gs) = (m.data_mut(), v.data_mut(), g.as_slice());
                for ((m, v), &g) in ms.iter_mut().zip(vs.iter_mut()).zip(gs) {
                    // PyTorch: exp_avg.lerp_(g, 1 − β₁); exp_avg_sq.mul_(β₂).addcmul_(g, g, 1 − β₂)
                    *m += (1.0 - b1) * (g - *m);
                    *v = *v * b2 + (1.0 - b2) * g * g;
                }
                let (ms, vs) = (m.as_slice(), v.as_slice());
                for ((x, &m), &v) in value.data_mut().iter_mut().zip(ms).zip(vs) {
                    *x -= step_size * m / (v.sqrt() / bc2_sqrt + c.eps);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn lr(&self) -> f32 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.cfg.lr = lr;
    }

    fn state(&self) -> OptimizerState {
        let mut s = OptimizerState::default();
        s.scalars.insert("lr".into(), f64::from(self.cfg.lr));
        for i in 0..self.params.len() {
            if let (Some(m), Some(v)) = (&self.m[i], &self.v[i]) {
                s.tensors.insert(format!("{i}.exp_avg"), m.clone());
                s.tensors.insert(format!("{i}.exp_avg_sq"), v.clone());
                s.scalars.insert(format!("{i}.step"), self.steps[i] as f64);
            }
        }
        s
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let n = self.params.len();
        let (mut m, mut v, mut steps) = (vec![None; n], vec![None; n], vec![0; n]);
        load_buffers(&self.params, state, &["exp_avg", "exp_avg_sq"], |i, name, t| {
            if name == "exp_avg" { m[i] = Some(t) } else { v[i] = Some(t) }
        })?;
        for i in 0..n {
            if m[i].is_some() != v[i].is_some() {
                return Err(config("Adam", format!("state of parameter {i} has only one moment")));
            }
            if m[i].is_some() {
                let step = state.scalars.get(&format!("{i}.step")).copied().unwrap_or(-1.0);
                if step < 1.0 || step.fract() != 0.0 {
                    return Err(config("Adam", format!("state of parameter {i}: bad step {step}")));
                }
                steps[i] = step as u64;
            }
        }
        (self.m, self.v, self.steps) = (m, v, steps);
        if let Some(&lr) = state.scalars.get("lr") {
            self.cfg.lr = lr as f32;
        }
        Ok(())
    }
}

fn check_lr(what: &'static str, lr: f32) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(config(what, format!("learning rate must be finite and non-negative, got {lr}")))
    }
}

/// Reads `"{i}.{name}"` buffers from a saved state, checking names and shapes.
fn load_buffers(
    params: &[Param],
    state: &OptimizerState,
    names: &[&str],
    mut put: impl FnMut(usize, &str, Tensor),
) -> Result<()> {
    let mut problems = Vec::new();
    for (key, t) in &state.tensors {
        let parsed = key.split_once('.').and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n)));
        match parsed {
            Some((i, name)) if i < params.len() && names.contains(&name) => {
                let dims = params[i].dims();
                if t.dims() == dims.as_slice() {
                    put(i, name, t.clone());
                } else {
                    problems.push(format!("{key}: shape {:?}, parameter has {dims:?}", t.dims()));
                }
            }
            _ => problems.push(format!("unexpected entry {key}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(NnError::Config { what: "optimizer state", msg: problems.join("; ") })
    }
}
