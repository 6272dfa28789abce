//! The [`Module`] trait, parameter naming, [`Sequential`], [`Residual`], and [`Layer`]:
//! what a module is, a plain description of its kind, configuration and parameter handles,
//! returned by [`Module::describe`].
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

use convkit_autograd::{Param, Var};
use convkit_conv::{Conv2dParams, ConvAlgo, PoolParams};

use crate::error::{NnError, Result};

/// A layer or a model: a forward function with named parameters and a train/eval mode.
///
/// Parameters are [`Param`] handles; a layer attaches them to the tape of its input
/// ([`bind`]), so running `forward` on a [`convkit_autograd::Tape::input`] records what
/// backward needs, and running it on a constant records nothing (inference).
///
/// Names are dotted paths, as in a PyTorch `state_dict`: a model visits its children with
/// their field name as prefix (`conv1.` + `weight` → `conv1.weight`).
///
/// A module is `Send + Sync` (parameters are shared handles, a tape lives only inside one
/// forward), so a whole forward or training step can run on a worker of rayon's pool with the
/// pool kept awake ([`convkit_tensor::parallel::warm`]).
pub trait Module: Send + Sync {
    /// Computes the output for `x`.
    fn forward(&self, x: &Var) -> Result<Var>;
    /// Computes `relu(self.forward(x))` as one fused op, where the module can: the same
    /// values and gradients, fewer passes over memory. [`Sequential`] calls it for a layer
    /// followed by a [`crate::ReLU`] (batch norm, convolution and [`Residual`] do it). `None`
    /// (the default) when the module has no fused form; the caller then runs the two layers.
    fn forward_relu(&self, _x: &Var) -> Option<Result<Var>> {
        None
    }

    /// Calls `f` with the full dotted name and the handle of every trainable parameter, in a
    /// fixed order (the order optimizers and checkpoints use).
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param));

    /// Calls `f` for every buffer: state saved in checkpoints but not trained (BatchNorm's
    /// running statistics). None by default.
    fn visit_buffers(&self, _prefix: &str, _f: &mut dyn FnMut(String, &Param)) {}

    /// Switches between training (`true`) and evaluation mode. Layers whose behaviour
    /// differs (dropout, batch norm) override it; containers pass it to their children.
    fn set_training(&mut self, _training: bool) {}

    /// Restarts the module's own random draws (dropout masks) from `seed`. A trainer calls it
    /// at the start of each epoch with a seed of the run's seed and the epoch, so a run resumed
    /// from a checkpoint draws what the uninterrupted run drew. Nothing by default; containers
    /// pass each child a seed of its own ([`child_seed`]).
    fn reseed(&mut self, _seed: u64) {}

    /// What this module is: its kind, configuration and parameters ([`Layer`]), for tools
    /// that inspect a model (exporters, summaries, fused inference). Modules that do not
    /// override it are [`Layer::Opaque`] with their type name.
    fn describe(&self) -> Layer<'_> {
        Layer::Opaque(std::any::type_name::<Self>())
    }
}

/// The seed a container passes to its child number `index` from its own `seed` (a mix, so
/// that siblings draw independent streams).
pub fn child_seed(seed: u64, index: usize) -> u64 {
    let mut h = (seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 31;
    h
}

/// All parameters of a module with their dotted names, in visiting order.
pub fn named_params(m: &dyn Module) -> Vec<(String, Param)> {
    let mut out = Vec::new();
    m.visit_params("", &mut |name, p| out.push((name, p.clone())));
    out
}

/// All parameters of a module, in visiting order (what an optimizer takes).
pub fn params(m: &dyn Module) -> Vec<Param> {
    named_params(m).into_iter().map(|(_, p)| p).collect()
}

/// All buffers of a module with their dotted names.
pub fn named_buffers(m: &dyn Module) -> Vec<(String, Param)> {
    let mut out = Vec::new();
    m.visit_buffers("", &mut |name, p| out.push((name, p.clone())));
    out
}

/// Total number of trainable scalars.
pub fn num_params(m: &dyn Module) -> usize {
    named_params(m).iter().map(|(_, p)| p.dims().iter().product::<usize>()).sum()
}

/// Joins a prefix and a name with a dot (`"conv1"`, `"weight"` → `"conv1.weight"`).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

/// The parameter as a variable for an op on `x`: on `x`'s tape when it has one (so the
/// gradient reaches the parameter), a constant otherwise (inference).
pub fn bind(p: &Param, x: &Var) -> Var {
    match x.tape() {
        Some(tape) => tape.param(p),
        None => Var::constant(p.value()),
    }
}

/// Modules applied one after another; children are named `"0"`, `"1"`, … like PyTorch's
/// `nn.Sequential`, or by the names given to [`Sequential::push_named`].
#[derive(Default)]
pub struct Sequential {
    layers: Vec<(String, Box<dyn Module>)>,
}

impl Sequential {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer named by its position.
    pub fn push(mut self, layer: impl Module + 'static) -> Self {
        let name = self.layers.len().to_string();
        self.layers.push((name, Box::new(layer)));
        self
    }

    /// Appends a layer under a name.
    pub fn push_named(mut self, name: &str, layer: impl Module + 'static) -> Self {
        self.layers.push((name.to_owned(), Box::new(layer)));
        self
    }

    /// Appends an already boxed layer under a name (for builders that choose layer types at
    /// run time, such as importers).
    pub fn push_boxed(mut self, name: &str, layer: Box<dyn Module>) -> Self {
        self.layers.push((name.to_owned(), layer));
        self
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Runs the layers in order, calling `inspect` with each layer's name and output (for
    /// visualizing feature maps or debugging shapes).
    pub fn forward_inspect(&self, x: &Var, inspect: &mut dyn FnMut(&str, &Var)) -> Result<Var> {
        let mut h = x.clone();
        for (name, layer) in &self.layers {
            h = layer.forward(&h)?;
            inspect(name, &h);
        }
        Ok(h)
    }
}

impl Module for Sequential {
    /// The layers in order; a layer followed by a ReLU runs both as one op where it has a
    /// fused form ([`Module::forward_relu`]), with the same result.
    /// ([`Sequential::forward_inspect`] runs every layer on its own, to show each output.)
    fn forward(&self, x: &Var) -> Result<Var> {
        let mut h = x.clone();
        let mut i = 0;
        while let Some((_, layer)) = self.layers.get(i) {
            let relu_next =
                self.layers.get(i + 1).is_some_and(|(_, l)| matches!(l.describe(), Layer::ReLU));
            if relu_next && let Some(fused) = layer.forward_relu(&h) {
                h = fused?;
                i += 2;
            } else {
                h = layer.forward(&h)?;
                i += 1;
            }
        }
        Ok(h)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        for (name, layer) in &self.layers {
            layer.visit_params(&join(prefix, name), f);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        for (name, layer) in &self.layers {
            layer.visit_buffers(&join(prefix, name), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        for (_, layer) in &mut self.layers {
            layer.set_training(training);
        }
    }

    fn reseed(&mut self, seed: u64) {
        for (i, (_, layer)) in self.layers.iter_mut().enumerate() {
            layer.reseed(child_seed(seed, i));
        }
    }

    fn describe(&self) -> Layer<'_> {
        Layer::Sequential(
            self.layers
                .iter()
                .map(|(name, layer)| (name.as_str(), &**layer as &dyn Module))
                .collect(),
        )
    }
}

impl std::fmt::Debug for Sequential {
    /// The children by name and kind, with their configuration ([`Layer`]'s `Debug`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sequential {:?}", self.describe())
    }
}

impl std::fmt::Debug for Residual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.describe().fmt(f)
    }
}

/// A residual block: `y = body(x) + shortcut(x)`, the shortcut being the identity unless a
/// module is given (a strided 1x1 convolution when the body changes the shape). Both
/// branches must produce the same dims; no broadcasting is done.
///
/// Parameter names: `body.…` and `shortcut.…`.
pub struct Residual {
    body: Box<dyn Module>,
    shortcut: Option<Box<dyn Module>>,
}

impl Residual {
    /// `y = body(x) + x`.
    pub fn new(body: impl Module + 'static) -> Self {
        Self { body: Box::new(body), shortcut: None }
    }

    /// `y = body(x) + shortcut(x)`.
    pub fn with_shortcut(body: impl Module + 'static, shortcut: impl Module + 'static) -> Self {
        Self { body: Box::new(body), shortcut: Some(Box::new(shortcut)) }
    }
}

impl Residual {
    /// `body(x) + shortcut(x)`, then a ReLU in the same op when `relu`.
    fn forward_with(&self, x: &Var, relu: bool) -> Result<Var> {
        let y = self.body.forward(x)?;
        let s = match &self.shortcut {
            Some(m) => m.forward(x)?,
            None => x.clone(),
        };
        if y.dims() != s.dims() {
            return Err(NnError::Input {
                layer: "Residual",
                got: x.dims().to_vec(),
                msg: format!("body gives {:?} but shortcut gives {:?}", y.dims(), s.dims()),
            });
        }
        Ok(if relu { y.add_relu(&s)? } else { y.add(&s)? })
    }
}

impl Module for Residual {
    fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_with(x, false)
    }

    /// The sum and the ReLU after it as one op ([`Var::add_relu`]), with the same result.
    fn forward_relu(&self, x: &Var) -> Option<Result<Var>> {
        Some(self.forward_with(x, true))
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.body.visit_params(&join(prefix, "body"), f);
        if let Some(m) = &self.shortcut {
            m.visit_params(&join(prefix, "shortcut"), f);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.body.visit_buffers(&join(prefix, "body"), f);
        if let Some(m) = &self.shortcut {
            m.visit_buffers(&join(prefix, "shortcut"), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.body.set_training(training);
        if let Some(m) = &mut self.shortcut {
            m.set_training(training);
        }
    }

    fn reseed(&mut self, seed: u64) {
        self.body.reseed(child_seed(seed, 0));
        if let Some(m) = &mut self.shortcut {
            m.reseed(child_seed(seed, 1));
        }
    }

    fn describe(&self) -> Layer<'_> {
        Layer::Residual {
            body: &*self.body,
            shortcut: self.shortcut.as_deref().map(|m| m as &dyn Module),
        }
    }
}

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
