//! Convolution and pooling layers.

use std::sync::{Arc, Mutex};

use convkit_autograd::{Param, Var};
use convkit_conv::resolve_prepared;
use convkit_conv::{Conv2dParams, ConvAlgo, PoolParams, PreparedConv};
use convkit_tensor::{Rng, Tensor};

use crate::describe::Layer;
use crate::error::{NnError, Result, config};
use crate::init::{Init, default_bias, fans};
use crate::module::{Module, bind, join};

/// Options of a [`Conv2d`] layer; the defaults are PyTorch's (stride 1, no padding, no
/// dilation, one group, a bias, its default initialization) and automatic algorithm choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dConfig {
    /// Stride, padding, dilation and groups.
    pub params: Conv2dParams,
    /// Whether the layer adds a bias.
    pub bias: bool,
    /// Weight initialization.
    pub init: Init,
    /// The convolution algorithm ([`ConvAlgo::Auto`] picks per shape).
    pub algo: ConvAlgo,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            params: Conv2dParams::default(),
            bias: true,
            init: Init::default(),
            algo: ConvAlgo::Auto,
        }
    }
}

/// 2-D convolution layer (PyTorch's `nn.Conv2d`): weight `[c_out, c_in/groups, kh, kw]`,
/// bias `[c_out]`.
///
/// In inference (an input that is not on a tape) with a shape the algorithm choice sends to
/// Winograd, the layer runs a [`PreparedConv`] of its weights, kept until the weight or the
/// bias changes, so repeated evaluation skips the filter transform.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Filters `[c_out, c_in/groups, kh, kw]`.
    pub weight: Param,
    /// Bias `[c_out]`, if any.
    pub bias: Option<Param>,
    /// Stride, padding, dilation, groups and algorithm.
    pub cfg: Conv2dConfig,
    prepared: Arc<Mutex<Option<Cached>>>,
}

/// The prepared convolution and the weight and bias buffers it was prepared from.
#[derive(Debug)]
struct Cached {
    weight: Tensor,
    bias: Option<Tensor>,
    conv: Arc<PreparedConv>,
}

impl Conv2d {
    /// A square-kernel layer with PyTorch's defaults.
    pub fn new(c_in: usize, c_out: usize, kernel: usize, rng: &mut Rng) -> Result<Self> {
        Self::with_config(c_in, c_out, (kernel, kernel), Conv2dConfig::default(), rng)
    }

    /// A layer with explicit options.
    pub fn with_config(
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        cfg: Conv2dConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        let g = cfg.params.groups;
        if c_in == 0 || c_out == 0 || kernel.0 == 0 || kernel.1 == 0 {
            return Err(config(
                "Conv2d",
                format!("sizes must be positive: {c_in} → {c_out}, kernel {kernel:?}"),
            ));
        }
        if g == 0 || !c_in.is_multiple_of(g) || !c_out.is_multiple_of(g) {
            return Err(config(
                "Conv2d",
                format!("groups = {g} must divide {c_in} input and {c_out} output channels"),
            ));
        }
        let dims = [c_out, c_in / g, kernel.0, kernel.1];
        let weight = Param::new(cfg.init.weight(&dims, rng)?);
        let bias = if cfg.bias {
            Some(Param::new(default_bias(c_out, fans(&dims).0, rng)?))
        } else {
            None
        };
        Ok(Self { weight, bias, cfg, prepared: Arc::default() })
    }

    /// A layer with given filters `[c_out, c_in/groups, kh, kw]` and optional bias `[c_out]`
    /// (loading a model from another framework), automatic algorithm choice.
    pub fn from_tensors(
        weight: Tensor,
        bias: Option<Tensor>,
        params: Conv2dParams,
    ) -> Result<Self> {
        let &[c_out, _, kh, kw] = weight.dims() else {
            return Err(config("Conv2d", format!("weight {:?} is not 4-D", weight.dims())));
        };
        if weight.numel() == 0 {
            return Err(config("Conv2d", format!("weight {:?} is empty", weight.dims())));
        }
        if params.groups == 0 || !c_out.is_multiple_of(params.groups) {
            return Err(config(
                "Conv2d",
                format!("groups = {} must divide {c_out} output channels", params.groups),
            ));
        }
        if let Some(b) = &bias
            && b.dims() != [c_out]
        {
            return Err(config(
                "Conv2d",
                format!("bias {:?} does not fit weight [{c_out}, _, {kh}, {kw}]", b.dims()),
            ));
        }
        let cfg = Conv2dConfig { params, bias: bias.is_some(), ..Default::default() };
        Ok(Self {
            weight: Param::new(weight),
            bias: bias.map(Param::new),
            cfg,
            prepared: Arc::default(),
        })
    }

    /// The layer prepared for inference, from the cache when the weight and bias are
    /// unchanged. A parameter that changed — replaced, or updated in place, which copies a
    /// buffer the cache shares — no longer shares its buffer with the cached one, so identity
    /// of the buffers is the version check.
    fn prepared(&self) -> Result<Arc<PreparedConv>> {
        let weight = self.weight.value();
        let bias = self.bias.as_ref().map(Param::value);
        let mut cache = self.prepared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(c) = cache.as_ref()
            && c.weight.shares_data_with(&weight)
            && match (&c.bias, &bias) {
                (Some(a), Some(b)) => a.shares_data_with(b),
                (None, None) => true,
                _ => false,
            }
        {
            return Ok(c.conv.clone());
        }
        let conv = Arc::new(PreparedConv::from_tensors(
            &weight,
            bias.as_ref(),
            self.cfg.params,
            self.cfg.algo,
        )?);
        *cache = Some(Cached { weight, bias, conv: conv.clone() });
        Ok(conv)
    }

    /// Inference through the prepared convolution, when the shape resolves to Winograd with
    /// the filter transform already paid for ([`resolve_prepared`]: F(4x4) on more shapes, and
    /// Winograd on smaller planes, than a call that transforms its filters).
    fn forward_cached(&self, x: &Var) -> Result<Option<Var>> {
        let Ok(dims) = <[usize; 4]>::try_from(x.dims()) else { return Ok(None) };
        let Ok(wdims) = <[usize; 4]>::try_from(self.weight.dims().as_slice()) else {
            return Ok(None);
        };
        let Ok(g) = convkit_conv::ConvGeometry::new(dims, wdims, self.cfg.params) else {
            return Ok(None);
        };
        if !matches!(
            resolve_prepared(self.cfg.algo, &g),
            Ok(ConvAlgo::Winograd2 | ConvAlgo::Winograd4)
        ) {
            return Ok(None);
        }
        let (y, _) = self.prepared()?.forward_tensor(x.value())?;
        Ok(Some(Var::constant(y)))
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        if x.tape().is_none()
            && let Some(y) = self.forward_cached(x)?
        {
            return Ok(y);
        }
        let b = self.bias.as_ref().map(|b| bind(b, x));
        Ok(x.conv2d(&bind(&self.weight, x), b.as_ref(), &self.cfg.params, self.cfg.algo)?)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }

    fn describe(&self) -> Layer<'_> {
        Layer::Conv2d {
            weight: &self.weight,
            bias: self.bias.as_ref(),
            params: self.cfg.params,
            algo: self.cfg.algo,
        }
    }
}

/// Max pooling layer (PyTorch's `nn.MaxPool2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d(pub PoolParams);

/// Average pooling layer (PyTorch's `nn.AvgPool2d`, `count_include_pad` as configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d(pub PoolParams);

impl MaxPool2d {
    /// A `k x k` window with stride `k` (PyTorch's defaults).
    pub fn new(k: usize) -> Self {
        Self(PoolParams::new(k))
    }
}

impl AvgPool2d {
    /// A `k x k` window with stride `k`, padding counted (PyTorch's defaults).
    pub fn new(k: usize) -> Self {
        Self(PoolParams::new(k))
    }
}

fn rank4(layer: &'static str, x: &Var) -> Result<()> {
    if x.dims().len() == 4 {
        Ok(())
    } else {
        Err(NnError::Input {
            layer,
            got: x.dims().to_vec(),
            msg: "expected [batch, channels, height, width]".into(),
        })
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        rank4("MaxPool2d", x)?;
        Ok(x.max_pool2d(&self.0)?)
    }

    fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &Param)) {}

    fn describe(&self) -> Layer<'_> {
        Layer::MaxPool2d(self.0)
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        rank4("AvgPool2d", x)?;
        Ok(x.avg_pool2d(&self.0)?)
    }

    fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &Param)) {}

    fn describe(&self) -> Layer<'_> {
        Layer::AvgPool2d(self.0)
    }
}

/// Global average pooling (PyTorch's `nn.AdaptiveAvgPool2d(1)`): the mean of each channel's
/// plane, `[n, c, h, w]` → `[n, c, 1, 1]`. Follow it with [`Flatten`](crate::Flatten) to
/// feed a linear layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalAvgPool2d;

impl Module for GlobalAvgPool2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        let (&[n, c, h, w], true) = (x.dims(), x.value().numel() > 0) else {
            return Err(NnError::Input {
                layer: "GlobalAvgPool2d",
                got: x.dims().to_vec(),
                msg: "expected a non-empty [batch, channels, height, width]".into(),
            });
        };
        Ok(x.reshape(&[n, c, h * w])?.mean_axis(2, false)?.reshape(&[n, c, 1, 1])?)
    }

    fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &Param)) {}

    fn describe(&self) -> Layer<'_> {
        Layer::GlobalAvgPool2d
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use convkit_autograd::Tape;
    use convkit_conv::resolve;
    use convkit_conv::{ConvGeometry, Tolerance};

    #[test]
    fn inference_reuses_winograd_filters_until_the_weight_changes() {
        let mut rng = Rng::new(3);
        let cfg =
            Conv2dConfig { params: Conv2dParams::default().with_padding(1), ..Default::default() };
        let conv = Conv2d::with_config(32, 32, (3, 3), cfg, &mut rng).unwrap();
        let x = Tensor::rand_uniform(&[4, 32, 20, 20], -1.0, 1.0, &mut rng).unwrap();
        let g = ConvGeometry::new([4, 32, 20, 20], [32, 32, 3, 3], cfg.params).unwrap();
        assert!(matches!(
            resolve(ConvAlgo::Auto, &g).unwrap(),
            ConvAlgo::Winograd2 | ConvAlgo::Winograd4
        ));
        // With the transform cached, F(4x4) (100 tiles over the batch).
        if convkit_conv::env_algo().is_none() {
            assert_eq!(resolve_prepared(ConvAlgo::Auto, &g).unwrap(), ConvAlgo::Winograd4);
        }

        let eval = conv.forward(&Var::constant(x.clone())).unwrap();
        let cached = || conv.prepared.lock().unwrap().as_ref().unwrap().conv.clone();
        let first = cached();
        if convkit_conv::env_algo().is_none() {
            assert_eq!(first.algo_for([4, 32, 20, 20]).unwrap(), ConvAlgo::Winograd4);
        }
        let again = conv.forward(&Var::constant(x.clone())).unwrap();
        let second = cached();
        assert!(Arc::ptr_eq(&first, &second), "the cached transform is reused");
        assert_eq!(eval.value(), again.value());

        // The recorded (training) path computes the same convolution.
        let tape = Tape::new();
        let train = conv.forward(&tape.input(x.clone())).unwrap();
        let scale = 32.0 * 9.0;
        Tolerance::WINOGRAD_F4
            .for_sum(scale)
            .check(eval.value().as_slice(), train.value().as_slice())
            .unwrap();

        // An optimizer-style in-place update invalidates the cache.
        conv.weight.update(|w, _| w.map_inplace(|v| v * 0.5));
        let halved = conv.forward(&Var::constant(x)).unwrap();
        let third = cached();
        assert!(!Arc::ptr_eq(&first, &third), "a changed weight is transformed again");
        let bias = conv.bias.as_ref().unwrap().value();
        let c = 32;
        // (y − b)·0.5 + b: the convolution part halves.
        let want: Vec<f32> = eval
            .value()
            .as_slice()
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let b = bias.as_slice()[(i / 400) % c];
                (y - b) * 0.5 + b
            })
            .collect();
        Tolerance::WINOGRAD_F4.for_sum(scale).check(halved.value().as_slice(), &want).unwrap();
    }
}
