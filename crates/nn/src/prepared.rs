//! Any model prepared once for inference: [`PreparedModel`].
//!
//! [`PreparedModel::new`] walks a model's description ([`Module::describe`]) and turns each
//! convolution into a [`PreparedConv`]: a batch normalization right after it is folded into
//! its weights and bias (with the running statistics, as evaluation mode uses them), a ReLU
//! right after that is applied in the same call, a 2x2 pool after those joins the layer
//! ([`PreparedConv::with_pool`]: one pass per image where the direct kernel runs), and
//! Winograd filter transforms are built on first use and kept. A batch normalization elsewhere becomes the per-channel affine map
//! its evaluation mode runs;
//! dropout, the identity at inference, disappears; residual blocks are prepared branch by
//! branch. A linear layer becomes a [`PreparedLinear`] (a matrix-vector product at batch 1),
//! with a ReLU right after it fused. Every other layer (pooling, activations, flatten, modules that do not
//! describe themselves) runs its own forward on the prepared activations.
//!
//! The result is the model's evaluation-mode function whatever mode the model is in, equal to
//! the layer-by-layer forward within float rounding (folding reorders the arithmetic, and a
//! cached transform lets more shapes run Winograd). The model is borrowed: prepare again
//! after the weights change.
//!
//! ```
//! use convkit_nn::{BatchNorm2d, Conv2d, Conv2dConfig, Module, PreparedModel, ReLU, Sequential};
//! use convkit_nn::Conv2dParams;
//! use convkit_autograd::Var;
//! use convkit_tensor::{Rng, Tensor};
//!
//! # fn main() -> Result<(), convkit_nn::NnError> {
//! let mut rng = Rng::new(0);
//! let cfg = Conv2dConfig { params: Conv2dParams::default().with_padding(1), ..Default::default() };
//! let mut model = Sequential::new()
//!     .push_named("conv", Conv2d::with_config(1, 8, (3, 3), cfg, &mut rng)?)
//!     .push_named("bn", BatchNorm2d::new(8)?)
//!     .push_named("relu", ReLU);
//! model.set_training(false);
//! let fast = PreparedModel::new(&model)?;
//! assert_eq!(fast.stages(), ["conv+bn+relu"]);
//! let x = Tensor::rand_uniform(&[2, 1, 12, 12], -1.0, 1.0, &mut rng)?;
//! let y = fast.forward(&x)?;
//! let want = model.forward(&Var::constant(x))?;
//! assert_eq!(y.dims(), want.value().dims());
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use convkit_autograd::Var;
use convkit_conv::batchnorm::{batch_norm2d_affine, batch_norm2d_apply};
use convkit_conv::{PoolKind, PreparedConv, PreparedLinear};
use convkit_tensor::Tensor;

use crate::error::{NnError, Result};
use crate::module::Layer;
use crate::module::{Module, join};

/// One step of a prepared model.
enum Stage<'m> {
    /// A convolution with what was fused into it; the name lists the fused layers.
    Conv(Box<PreparedConv>, String),
    /// A dense layer, with a following ReLU fused in when there is one.
    Linear(Box<PreparedLinear>, String),
    /// `x·scale[c] + shift[c]` per channel of NCHW activations (a batch norm on its own).
    Affine { scale: Vec<f32>, shift: Vec<f32>, name: String },
    /// `body(x) + shortcut(x)`, the shortcut the identity when `None`.
    Residual { body: PreparedModel<'m>, shortcut: Option<PreparedModel<'m>>, name: String },
    /// A layer that runs its own forward.
    Module(&'m dyn Module, String),
}

/// A model prepared for inference (see the [module docs](self)).
pub struct PreparedModel<'m> {
    stages: Vec<Stage<'m>>,
    /// How long the last [`PreparedModel::forward`] took, in nanoseconds (0 before the
    /// first): a forward shorter than [`WARM_MIN`] runs without keeping the pool awake.
    last_nanos: AtomicU64,
}

/// The shortest forward worth running with rayon's pool kept awake
/// ([`convkit_tensor::parallel::warm`]): moving a call onto the pool and back costs a few
/// microseconds, which a LeNet-5 image (about 12 µs) would feel and a larger model does not.
const WARM_MIN: Duration = Duration::from_micros(100);

impl<'m> PreparedModel<'m> {
    /// Prepares `model` (any [`Module`]; containers are walked through their descriptions).
    pub fn new(model: &'m dyn Module) -> Result<Self> {
        let mut stages = Vec::new();
        push(&mut stages, "", model)?;
        Ok(Self { stages, last_nanos: AtomicU64::new(0) })
    }

    /// The stages in order, each named by its layers' names joined with `+` (a convolution
    /// with its folded batch norm and fused ReLU is one stage).
    pub fn stages(&self) -> Vec<&str> {
        self.stages
            .iter()
            .map(|s| match s {
                Stage::Conv(_, n) | Stage::Linear(_, n) | Stage::Module(_, n) => n.as_str(),
                Stage::Affine { name, .. } | Stage::Residual { name, .. } => name.as_str(),
            })
            .collect()
    }

    /// Runs the prepared model on `x`, recording nothing. When the previous call took at
    /// least 100 µs, rayon's pool is kept awake between the layers
    /// ([`convkit_tensor::parallel::warm`]); either way the result is the same.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let start = Instant::now();
        let y = if self.last_nanos.load(Ordering::Relaxed) >= WARM_MIN.as_nanos() as u64 {
            convkit_tensor::parallel::warm(|| self.run(x))
        } else {
            self.run(x)
        };
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
        y
    }

    /// The forward on the calling thread's pool as it is.
    fn run(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for stage in &self.stages {
            h = match stage {
                Stage::Conv(conv, _) => conv.forward_tensor(&h)?.0,
                Stage::Linear(linear, _) => linear.forward_tensor(&h)?,
                Stage::Affine { scale, shift, name } => affine(&h, scale, shift, name)?,
                Stage::Residual { body, shortcut, .. } => {
                    let a = body.run(&h)?;
                    let b = match shortcut {
                        Some(s) => s.run(&h)?,
                        None => h,
                    };
                    if a.dims() != b.dims() {
                        return Err(NnError::Input {
                            layer: "Residual",
                            got: a.dims().to_vec(),
                            msg: format!("the shortcut gives {:?}", b.dims()),
                        });
                    }
                    a.add(&b)?
                }
                Stage::Module(m, _) => m.forward(&Var::constant(h))?.into_value(),
            };
        }
        Ok(h)
    }
}

/// Appends the stages of `module` (named `name`) to `stages`.
fn push<'m>(stages: &mut Vec<Stage<'m>>, name: &str, module: &'m dyn Module) -> Result<()> {
    match module.describe() {
        Layer::Sequential(children) => {
            let mut i = 0;
            while i < children.len() {
                let (child, m) = children[i];
                let full = join(name, child);
                if let Layer::Conv2d { weight, bias, params, algo } = m.describe() {
                    let w = weight.value();
                    let b = bias.map(|b| b.value());
                    let mut conv = PreparedConv::from_tensors(&w, b.as_ref(), params, algo)?;
                    let mut label = full;
                    if let Some((bn_name, bn)) = children.get(i + 1)
                        && let Layer::BatchNorm2d {
                            weight,
                            bias,
                            running_mean,
                            running_var,
                            eps,
                            ..
                        } = bn.describe()
                    {
                        conv = conv.fold_batch_norm(
                            weight.value().as_slice(),
                            bias.value().as_slice(),
                            running_mean.value().as_slice(),
                            running_var.value().as_slice(),
                            eps,
                        )?;
                        label = format!("{label}+{}", join(name, bn_name));
                        i += 1;
                    }
                    if let Some((relu_name, relu)) = children.get(i + 1)
                        && matches!(relu.describe(), Layer::ReLU)
                    {
                        conv = conv.with_relu();
                        label = format!("{label}+{}", join(name, relu_name));
                        i += 1;
                    }
                    if let Some((pool_name, pool)) = children.get(i + 1)
                        && let Some((kind, p)) = match pool.describe() {
                            Layer::MaxPool2d(p) => Some((PoolKind::Max, p)),
                            Layer::AvgPool2d(p) => Some((PoolKind::Avg, p)),
                            _ => None,
                        }
                        && PreparedConv::can_fuse_pool(&params, &p)
                    {
                        conv = conv.with_pool(kind, p)?;
                        label = format!("{label}+{}", join(name, pool_name));
                        i += 1;
                    }
                    stages.push(Stage::Conv(Box::new(conv), label));
                } else if let Layer::Linear { weight, bias } = m.describe() {
                    let b = bias.map(|b| b.value());
                    let mut linear = PreparedLinear::from_tensors(&weight.value(), b.as_ref())?;
                    let mut label = full;
                    if let Some((relu_name, relu)) = children.get(i + 1)
                        && matches!(relu.describe(), Layer::ReLU)
                    {
                        linear = linear.with_relu();
                        label = format!("{label}+{}", join(name, relu_name));
                        i += 1;
                    }
                    stages.push(Stage::Linear(Box::new(linear), label));
                } else {
                    push(stages, &full, m)?;
                }
                i += 1;
            }
        }
        Layer::Conv2d { weight, bias, params, algo } => {
            let b = bias.map(|b| b.value());
            let conv = PreparedConv::from_tensors(&weight.value(), b.as_ref(), params, algo)?;
            stages.push(Stage::Conv(Box::new(conv), label(name, "conv")));
        }
        Layer::Linear { weight, bias } => {
            let b = bias.map(|b| b.value());
            let linear = PreparedLinear::from_tensors(&weight.value(), b.as_ref())?;
            stages.push(Stage::Linear(Box::new(linear), label(name, "linear")));
        }
        Layer::BatchNorm2d { weight, bias, running_mean, running_var, eps, .. } => {
            // The evaluation-mode layer's own affine map, so this stage gives its bits.
            let (scale, shift) = batch_norm2d_affine(
                weight.value().as_slice(),
                bias.value().as_slice(),
                running_mean.value().as_slice(),
                running_var.value().as_slice(),
                eps,
            );
            stages.push(Stage::Affine { scale, shift, name: label(name, "batch_norm") });
        }
        Layer::Dropout { .. } => {}
        Layer::Residual { body, shortcut } => {
            let body = PreparedModel::new(body)?;
            let shortcut = shortcut.map(PreparedModel::new).transpose()?;
            stages.push(Stage::Residual { body, shortcut, name: label(name, "residual") });
        }
        _ => stages.push(Stage::Module(module, label(name, module.describe().kind()))),
    }
    Ok(())
}

/// A stage's name: the module's own, or its kind for an unnamed top-level module.
fn label(name: &str, kind: &str) -> String {
    if name.is_empty() { kind.to_owned() } else { name.to_owned() }
}

/// `x·scale[c] + shift[c]` on NCHW activations.
fn affine(x: &Tensor, scale: &[f32], shift: &[f32], name: &str) -> Result<Tensor> {
    let dims = match <[usize; 4]>::try_from(x.dims()) {
        Ok(d) if d[1] == scale.len() => d,
        _ => {
            return Err(NnError::Input {
                layer: "BatchNorm2d",
                got: x.dims().to_vec(),
                msg: format!("{name} expects [batch, {}, height, width]", scale.len()),
            });
        }
    };
    let mut out = convkit_tensor::buffer::take(x.numel());
    batch_norm2d_apply(dims, x.as_slice(), scale, shift, &mut out)?;
    Ok(Tensor::from_vec(&dims, out)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{BatchNorm2d, Dropout, ReLU, Sequential};
    use convkit_autograd::Tape;
    use convkit_tensor::Rng;

    #[test]
    fn a_lone_batch_norm_gives_the_evaluation_layers_bits_and_dropout_disappears() {
        let mut rng = Rng::new(5);
        let mut model = Sequential::new()
            .push_named("act", ReLU)
            .push_named("bn", BatchNorm2d::new(3).unwrap())
            .push_named("drop", Dropout::new(0.5, 1).unwrap());
        // A training step moves the running statistics away from 0 and 1.
        let batch = Tensor::rand_uniform(&[4, 3, 5, 5], -1.0, 3.0, &mut rng).unwrap();
        model.forward(&Tape::new().input(batch)).unwrap();
        model.set_training(false);
        let x = Tensor::rand_uniform(&[2, 3, 5, 5], -2.0, 2.0, &mut rng).unwrap();
        let want = model.forward(&Var::constant(x.clone())).unwrap().into_value();
        // Prepared in training mode: still the evaluation-mode function.
        model.set_training(true);
        let prepared = PreparedModel::new(&model).unwrap();
        assert_eq!(prepared.stages(), ["act", "bn"]);
        assert_eq!(prepared.forward(&x).unwrap().as_slice(), want.as_slice());
        let e = prepared.forward(&Tensor::zeros(&[2, 4, 5, 5])).unwrap_err().to_string();
        assert!(e.contains("bn expects [batch, 3, height, width]"), "{e}");
    }

    #[test]
    fn a_pool_after_conv_bn_relu_joins_the_stage_and_keeps_the_outputs() {
        use crate::{AvgPool2d, Conv2d, Conv2dConfig, Conv2dParams, MaxPool2d, PoolParams};
        use convkit_tensor::testing::{Tolerance, assert_close, max_abs};
        let mut rng = Rng::new(9);
        // (c_in, c_out, kernel, padding, input side, max pool): both fused tilings, odd sides.
        for (c_in, c_out, k, pad, side, max) in
            [(1, 6, 5, 0, 32, false), (3, 16, 3, 1, 15, true), (4, 24, 3, 1, 12, true)]
        {
            let cfg = Conv2dConfig {
                params: Conv2dParams::default().with_padding(pad),
                ..Default::default()
            };
            let pool = PoolParams::new(2);
            let mut model = Sequential::new()
                .push_named(
                    "conv",
                    Conv2d::with_config(c_in, c_out, (k, k), cfg, &mut rng).unwrap(),
                )
                .push_named("bn", BatchNorm2d::new(c_out).unwrap())
                .push_named("relu", ReLU);
            model = if max {
                model.push_named("pool", MaxPool2d(pool))
            } else {
                model.push_named("pool", AvgPool2d(pool))
            };
            let batch = Tensor::rand_uniform(&[4, c_in, side, side], -1.0, 1.0, &mut rng).unwrap();
            model.forward(&Tape::new().input(batch)).unwrap();
            model.set_training(false);
            let prepared = PreparedModel::new(&model).unwrap();
            assert_eq!(prepared.stages(), ["conv+bn+relu+pool"]);
            let x = Tensor::rand_uniform(&[3, c_in, side, side], -1.0, 1.0, &mut rng).unwrap();
            let want = model.forward(&Var::constant(x.clone())).unwrap().into_value();
            let got = prepared.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let tol = Tolerance::absolute(1e-5).scale_atol(max_abs(want.as_slice()).max(1.0));
            assert_close("prepared conv+bn+relu+pool", got.as_slice(), want.as_slice(), tol);
        }
    }
}
