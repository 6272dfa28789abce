//! Batch normalization over the channels of NCHW activations (PyTorch's `BatchNorm2d`).

use convkit_autograd::{Param, Var};
use convkit_tensor::Tensor;

use crate::error::{NnError, Result, config};
use crate::module::Layer;
use crate::module::{Module, bind, join};

/// Options of [`BatchNorm2d`], with PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root (default 1e-5).
    pub eps: f32,
    /// Weight of the new batch in the running statistics (default 0.1).
    pub momentum: f32,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self { eps: 1e-5, momentum: 0.1 }
    }
}

/// `y = (x − μ) / √(σ² + ε) · γ + β` per channel.
///
/// In training mode `μ`, `σ²` are the batch's (biased) statistics over `(n, h, w)`, and the
/// running statistics move towards them by `momentum` (the running variance uses the unbiased
/// estimate, as PyTorch does). In evaluation mode the running statistics are used.
///
/// Checkpoint names: `weight`, `bias` (parameters), `running_mean`, `running_var` (buffers).
/// PyTorch also stores an integer `num_batches_tracked`, which convkit neither needs nor writes.
#[derive(Debug)]
pub struct BatchNorm2d {
    /// Scale `γ` `[c]`, initialized to 1.
    pub weight: Param,
    /// Shift `β` `[c]`, initialized to 0.
    pub bias: Param,
    /// Running mean `[c]`, initialized to 0.
    pub running_mean: Param,
    /// Running variance `[c]`, initialized to 1.
    pub running_var: Param,
    cfg: BatchNormConfig,
    training: bool,
}

impl BatchNorm2d {
    /// A layer for `channels` channels with PyTorch's defaults (ε = 1e-5, momentum 0.1), in
    /// training mode: `BatchNorm2d::new(16)` is PyTorch's `nn.BatchNorm2d(16)`.
    pub fn new(channels: usize) -> Result<Self> {
        Self::with_config(channels, BatchNormConfig::default())
    }

    /// A layer for `channels` channels with the given ε and momentum, in training mode.
    pub fn with_config(channels: usize, cfg: BatchNormConfig) -> Result<Self> {
        if channels == 0 {
            return Err(config("BatchNorm2d", "channels must be positive"));
        }
        if cfg.eps.is_nan() || cfg.eps <= 0.0 || !(0.0..=1.0).contains(&cfg.momentum) {
            return Err(config("BatchNorm2d", format!("invalid eps/momentum {cfg:?}")));
        }
        Ok(Self {
            weight: Param::new(Tensor::ones(&[channels])),
            bias: Param::new(Tensor::zeros(&[channels])),
            running_mean: Param::new(Tensor::zeros(&[channels])),
            running_var: Param::new(Tensor::ones(&[channels])),
            cfg,
            training: true,
        })
    }

    /// The layer's forward, followed by a ReLU in the same op when `relu`.
    fn forward_with(&self, x: &Var, relu: bool) -> Result<Var> {
        let c = self.weight.dims()[0];
        let &[n, xc, h, w] = x.dims() else {
            return Err(NnError::Input {
                layer: "BatchNorm2d",
                got: x.dims().to_vec(),
                msg: format!("expected [batch, {c}, height, width]"),
            });
        };
        if xc != c {
            return Err(NnError::Input {
                layer: "BatchNorm2d",
                got: x.dims().to_vec(),
                msg: format!("expected {c} channels"),
            });
        }
        let gamma = bind(&self.weight, x);
        let beta = bind(&self.bias, x);
        if !self.training {
            let (mean, var) = (self.running_mean.value(), self.running_var.value());
            let eps = self.cfg.eps;
            return Ok(if relu {
                x.batch_norm2d_eval_relu(&gamma, &beta, &mean, &var, eps)?
            } else {
                x.batch_norm2d_eval(&gamma, &beta, &mean, &var, eps)?
            });
        }
        if n * h * w < 2 {
            return Err(NnError::Input {
                layer: "BatchNorm2d",
                got: x.dims().to_vec(),
                msg: "training needs more than one value per channel".into(),
            });
        }
        let (y, stats) = if relu {
            x.batch_norm2d_relu(&gamma, &beta, self.cfg.eps)?
        } else {
            x.batch_norm2d(&gamma, &beta, self.cfg.eps)?
        };
        let m = self.cfg.momentum;
        let unbias = stats.count as f32 / (stats.count - 1) as f32;
        for (running, batch, scale) in
            [(&self.running_mean, &stats.mean, 1.0), (&self.running_var, &stats.var, unbias)]
        {
            running.update(|r, _| -> Result<()> {
                r.map_inplace(|v| v * (1.0 - m));
                r.axpy(m * scale, batch)?;
                Ok(())
            })?;
        }
        Ok(y)
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_with(x, false)
    }

    /// Batch norm and ReLU in one op ([`Var::batch_norm2d_relu`]): the same values and
    /// gradients as the two layers, without the ReLU's passes over the activations.
    fn forward_relu(&self, x: &Var) -> Option<Result<Var>> {
        Some(self.forward_with(x, true))
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "running_mean"), &self.running_mean);
        f(join(prefix, "running_var"), &self.running_var);
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn describe(&self) -> Layer<'_> {
        Layer::BatchNorm2d {
            weight: &self.weight,
            bias: &self.bias,
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            eps: self.cfg.eps,
            momentum: self.cfg.momentum,
        }
    }
}
