//! What a module is: [`Layer`], a plain description of a layer's kind, configuration and
//! parameter handles, returned by [`Module::describe`].
//!
//! A description borrows from the module, so reading it copies nothing. It is what tools
//! that look at a model rather than run it need: exporters (ONNX), model summaries, and the
//! preparation of fused inference (folding a batch norm into the convolution before it).
//! Containers describe their children as modules, so a walk recurses with
//! `child.describe()`; parameter names follow the same dotted paths as
//! [`Module::visit_params`] (a child's name, then `weight`, `bias`, …).
//!
//! ```
//! use convkit_nn::{Conv2d, Layer, Module, ReLU, Sequential};
//! use convkit_tensor::Rng;
//!
//! let mut rng = Rng::new(0);
//! let model = Sequential::new().push_named("conv1", Conv2d::new(1, 6, 5, &mut rng)?).push(ReLU);
//! let Layer::Sequential(children) = model.describe() else { unreachable!() };
//! let kinds: Vec<(&str, &str)> = children.iter().map(|(n, m)| (*n, m.describe().kind())).collect();
//! assert_eq!(kinds, [("conv1", "Conv2d"), ("1", "ReLU")]);
//! # Ok::<(), convkit_nn::NnError>(())
//! ```

use convkit_autograd::Param;
use convkit_conv::{Conv2dParams, ConvAlgo, PoolParams};

use crate::module::Module;

/// A description of one module. Unknown modules are [`Layer::Opaque`] (the default of
/// [`Module::describe`]), so a tool can name what it does not support.
#[derive(Clone)]
pub enum Layer<'a> {
    /// 2-D convolution; the kernel size is the weight's last two dims.
    Conv2d {
        /// Filters `[c_out, c_in/groups, kh, kw]`.
        weight: &'a Param,
        /// Bias `[c_out]`, if any.
        bias: Option<&'a Param>,
        /// Stride, padding, dilation and groups.
        params: Conv2dParams,
        /// The algorithm asked for ([`ConvAlgo::Auto`] unless the layer's config forces one).
        algo: ConvAlgo,
    },
    /// `y = x·Wᵀ + b` on `[batch, in]`.
    Linear {
        /// Weight `[out, in]`.
        weight: &'a Param,
        /// Bias `[out]`, if any.
        bias: Option<&'a Param>,
    },
    /// Max pooling (no ceil mode, no dilation; padding never wins the max).
    MaxPool2d(PoolParams),
    /// Average pooling; `count_include_pad` says whether padding counts in the divisor.
    AvgPool2d(PoolParams),
    /// Mean over each channel's plane: `[n, c, h, w]` → `[n, c, 1, 1]`.
    GlobalAvgPool2d,
    /// `max(x, 0)`.
    ReLU,
    /// `tanh x`.
    Tanh,
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    /// `[n, …]` → `[n, product of the rest]`.
    Flatten,
    /// Inverted dropout with drop probability `p` (identity in evaluation mode).
    Dropout {
        /// Drop probability in `[0, 1)`.
        p: f32,
    },
    /// Batch normalization over the channels of NCHW activations.
    BatchNorm2d {
        /// Scale `γ` `[c]`.
        weight: &'a Param,
        /// Shift `β` `[c]`.
        bias: &'a Param,
        /// Running mean `[c]` (the statistics evaluation mode uses).
        running_mean: &'a Param,
        /// Running variance `[c]`.
        running_var: &'a Param,
        /// Added to the variance before the square root.
        eps: f32,
        /// Weight of a new batch in the running statistics.
        momentum: f32,
    },
    /// `y = body(x) + shortcut(x)`; no shortcut module means the identity. The children's
    /// parameter names start with `body.` and `shortcut.`.
    Residual {
        /// The main branch.
        body: &'a dyn Module,
        /// The shortcut branch, `None` for the identity.
        shortcut: Option<&'a dyn Module>,
    },
    /// Children applied in order, with their names (the first segment of their parameters'
    /// dotted names).
    Sequential(Vec<(&'a str, &'a dyn Module)>),
    /// A module that does not describe itself; the string is its type name.
    Opaque(&'static str),
}

impl Layer<'_> {
    /// The kind's name, as in the variant (`"Conv2d"`, `"Sequential"`); for an opaque module,
    /// its type name.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "Conv2d",
            Layer::Linear { .. } => "Linear",
            Layer::MaxPool2d(_) => "MaxPool2d",
            Layer::AvgPool2d(_) => "AvgPool2d",
            Layer::GlobalAvgPool2d => "GlobalAvgPool2d",
            Layer::ReLU => "ReLU",
            Layer::Tanh => "Tanh",
            Layer::Sigmoid => "Sigmoid",
            Layer::Flatten => "Flatten",
            Layer::Dropout { .. } => "Dropout",
            Layer::BatchNorm2d { .. } => "BatchNorm2d",
            Layer::Residual { .. } => "Residual",
            Layer::Sequential(_) => "Sequential",
            Layer::Opaque(name) => name,
        }
    }
}

impl std::fmt::Debug for Layer<'_> {
    /// The kind and configuration; parameters as their dims, children by name and kind.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims = |p: Option<&Param>| p.map(Param::dims);
        match self {
            Layer::Conv2d { weight, bias, params, algo } => f
                .debug_struct("Conv2d")
                .field("weight", &weight.dims())
                .field("bias", &dims(*bias))
                .field("params", params)
                .field("algo", algo)
                .finish(),
            Layer::Linear { weight, bias } => f
                .debug_struct("Linear")
                .field("weight", &weight.dims())
                .field("bias", &dims(*bias))
                .finish(),
            Layer::MaxPool2d(p) => f.debug_tuple("MaxPool2d").field(p).finish(),
            Layer::AvgPool2d(p) => f.debug_tuple("AvgPool2d").field(p).finish(),
            Layer::Dropout { p } => f.debug_struct("Dropout").field("p", p).finish(),
            Layer::BatchNorm2d { weight, eps, momentum, .. } => f
                .debug_struct("BatchNorm2d")
                .field("channels", &weight.dims())
                .field("eps", eps)
                .field("momentum", momentum)
                .finish(),
            Layer::Residual { body, shortcut } => f
                .debug_struct("Residual")
                .field("body", &body.describe())
                .field("shortcut", &shortcut.map(|s| s.describe()))
                .finish(),
            Layer::Sequential(children) => f
                .debug_map()
                .entries(children.iter().map(|(name, m)| (name, m.describe())))
                .finish(),
            Layer::Opaque(name) => f.debug_tuple("Opaque").field(name).finish(),
            other => f.write_str(other.kind()),
        }
    }
}
