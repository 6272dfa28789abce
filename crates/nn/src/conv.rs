//! Convolution and pooling layers.

use convkit_autograd::{Param, Var};
use convkit_conv::{Conv2dParams, ConvAlgo, PoolParams};
use convkit_tensor::{Rng, Tensor};

use crate::error::{NnError, Result, config};
use crate::init::{Init, default_bias, fans};
use crate::module::Layer;
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
/// A plain layer: its forward is the recorded convolution, on a tape or not. For repeated
/// inference, prepare the model once ([`PreparedModel`](crate::PreparedModel), which keeps
/// each convolution's filter transforms as a [`PreparedConv`](convkit_conv::PreparedConv)).
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Filters `[c_out, c_in/groups, kh, kw]`.
    pub weight: Param,
    /// Bias `[c_out]`, if any.
    pub bias: Option<Param>,
    /// Stride, padding, dilation, groups and algorithm.
    pub cfg: Conv2dConfig,
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
        Ok(Self { weight, bias, cfg })
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
        Ok(Self { weight: Param::new(weight), bias: bias.map(Param::new), cfg })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        let b = self.bias.as_ref().map(|b| bind(b, x));
        Ok(x.conv2d(&bind(&self.weight, x), b.as_ref(), &self.cfg.params, self.cfg.algo)?)
    }

    /// The convolution and the ReLU after it as one node ([`Var::conv2d_relu`]).
    fn forward_relu(&self, x: &Var) -> Option<Result<Var>> {
        let b = self.bias.as_ref().map(|b| bind(b, x));
        Some(
            x.conv2d_relu(&bind(&self.weight, x), b.as_ref(), &self.cfg.params, self.cfg.algo)
                .map_err(Into::into),
        )
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
