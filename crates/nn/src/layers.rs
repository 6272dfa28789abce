//! Fully-connected, activation, flatten and dropout layers.

use std::sync::Mutex;

use convkit_autograd::{Param, Var};
use convkit_tensor::Rng;

use crate::error::{NnError, Result, config};
use crate::init::{Init, default_bias};
use crate::module::Layer;
use crate::module::{Module, bind, join};

/// Options of a [`Linear`] layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearConfig {
    /// Whether the layer adds a bias (default `true`).
    pub bias: bool,
    /// Weight initialization (default: PyTorch's).
    pub init: Init,
}

impl Default for LinearConfig {
    fn default() -> Self {
        Self { bias: true, init: Init::PyTorchDefault }
    }
}

/// `y = x·Wᵀ + b`, with `W` `[out, in]` and `b` `[out]` (PyTorch's `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: Param,
    /// Bias `[out]`, if any.
    pub bias: Option<Param>,
}

impl Linear {
    /// A layer with PyTorch's default initialization.
    pub fn new(in_features: usize, out_features: usize, rng: &mut Rng) -> Result<Self> {
        Self::with_config(in_features, out_features, LinearConfig::default(), rng)
    }

    /// A layer with explicit options.
    pub fn with_config(
        in_features: usize,
        out_features: usize,
        cfg: LinearConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        if in_features == 0 || out_features == 0 {
            return Err(config(
                "Linear",
                format!("sizes must be positive, got {in_features} → {out_features}"),
            ));
        }
        let weight = Param::new(cfg.init.weight(&[out_features, in_features], rng)?);
        let bias = if cfg.bias {
            Some(Param::new(default_bias(out_features, in_features, rng)?))
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var) -> Result<Var> {
        let in_features = self.weight.dims()[1];
        if x.dims().len() != 2 || x.dims()[1] != in_features {
            return Err(NnError::Input {
                layer: "Linear",
                got: x.dims().to_vec(),
                msg: format!("expected [batch, {in_features}]"),
            });
        }
        let b = self.bias.as_ref().map(|b| bind(b, x));
        Ok(x.linear(&bind(&self.weight, x), b.as_ref())?)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }

    fn describe(&self) -> Layer<'_> {
        Layer::Linear { weight: &self.weight, bias: self.bias.as_ref() }
    }
}

/// Declares a parameter-free layer that applies one infallible `Var` method.
macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl Module for $name {
            fn forward(&self, x: &Var) -> Result<Var> {
                Ok(x.$method())
            }

            fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &Param)) {}

            fn describe(&self) -> Layer<'_> {
                Layer::$name
            }
        }
    };
}

activation!(
    /// `max(x, 0)`.
    ReLU,
    relu
);
activation!(
    /// `tanh x`.
    Tanh,
    tanh
);
activation!(
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    sigmoid
);

/// Flattens every axis after the first: `[n, c, h, w]` → `[n, c·h·w]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Var) -> Result<Var> {
        if x.dims().len() < 2 {
            return Err(NnError::Input {
                layer: "Flatten",
                got: x.dims().to_vec(),
                msg: "needs a batch axis and at least one more".into(),
            });
        }
        Ok(x.flatten(1, x.dims().len() - 1)?)
    }

    fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &Param)) {}

    fn describe(&self) -> Layer<'_> {
        Layer::Flatten
    }
}

/// Inverted dropout: in training mode zeroes each element with probability `p` and scales
/// the rest by `1/(1−p)`; identity in evaluation mode. Masks come from the layer's own seeded
/// generator, so a run is reproducible.
#[derive(Debug)]
pub struct Dropout {
    p: f32,
    training: bool,
    rng: Mutex<Rng>,
}

impl Dropout {
    /// A dropout layer with drop probability `p` in `[0, 1)`, in training mode.
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(config("Dropout", format!("probability must be in [0, 1), got {p}")));
        }
        Ok(Self { p, training: true, rng: Mutex::new(Rng::new(seed)) })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Var) -> Result<Var> {
        let mut rng = self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(x.dropout(self.p, self.training, &mut rng)?)
    }

    fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &Param)) {}

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn reseed(&mut self, seed: u64) {
        *self.rng.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()) = Rng::new(seed);
    }

    fn describe(&self) -> Layer<'_> {
        Layer::Dropout { p: self.p }
    }
}
