//! Import: ONNX protobuf → a convkit [`Sequential`] in evaluation mode.
//!
//! The graph must be a chain from its one input to its one output of single-input
//! operators, where a value may fork into two branches that an `Add` joins again (a residual
//! block, built as [`Residual`]). Torch's `Linear` patterns (`Gemm`, or `MatMul` then `Add` of
//! a bias) become [`Linear`]; `Reshape` becomes [`Flatten`] where it is one.
//!
//! ## Hostile input
//! Every size in the file is checked before anything is allocated from it: tensor dims are
//! multiplied with `checked_mul` and compared with the length of the data actually present,
//! so an allocation never exceeds what the file holds. prost bounds message nesting (100
//! levels), the walk over residual forks is bounded in depth and in work, and every
//! attribute is type-checked. Errors, never panics.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use convkit_autograd::Param;
use convkit_nn::{
    AvgPool2d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dParams, Dropout, Flatten,
    GlobalAvgPool2d, Linear, MaxPool2d, Module, PoolParams, ReLU, Residual, Sequential, Sigmoid,
    Tanh,
};
use convkit_tensor::Tensor;
use prost::Message;

use crate::error::{OnnxError, Result};
use crate::proto::{
    AttributeProto, DATA_TYPE_FLOAT, DATA_TYPE_INT64, DimensionValue, GraphProto, ModelProto,
    NodeProto, TensorProto, attribute_type,
};

/// The op types import turns into layers, as named in errors.
pub const SUPPORTED_OPS: &str = "Conv, Gemm, MatMul (+ Add of a bias), MaxPool, AveragePool, \
     GlobalAveragePool, Relu, Tanh, Sigmoid, Flatten, Reshape (as a flatten), \
     BatchNormalization, Dropout, Identity, Add (residual join), Constant";

/// Deepest nesting of residual blocks import follows.
const MAX_RESIDUAL_DEPTH: usize = 64;

/// Most node visits the search for residual joins may make (a bound on hostile graphs).
const MAX_JOIN_WORK: usize = 10_000_000;

/// Decodes an ONNX model and builds the equivalent [`Sequential`], in evaluation mode.
///
/// Parameters are named after the initializers where those carry module names
/// (`conv1.weight` makes a child `conv1`), otherwise after the node's scope (`/conv1/Conv`
/// → `conv1`), otherwise by position.
///
/// Errors: bytes that are not an ONNX protobuf, malformed tensors, an op type or attribute
/// import does not support ([`OnnxError::UnsupportedOp`] and
/// [`OnnxError::UnsupportedAttribute`] name the node and list what is supported), and graphs
/// that are not chains with residual joins.
pub fn import(bytes: &[u8]) -> Result<Sequential> {
    let model = ModelProto::decode(bytes)?;
    let graph =
        model.graph.as_ref().ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max();
    let Some(opset) = opset else {
        return Err(OnnxError::Graph("the model imports no default-domain operator set".into()));
    };
    if !(7..=30).contains(&opset) {
        return Err(OnnxError::Graph(format!(
            "operator set {opset} is not supported (7 to 30 are)"
        )));
    }
    let mut builder = Builder::new(graph)?;
    let layers = builder.build()?;
    let mut model = into_sequential(layers);
    model.set_training(false);
    Ok(model)
}

/// Reads an ONNX file and [`import`]s it.
pub fn load(path: impl AsRef<Path>) -> Result<Sequential> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .map_err(|source| OnnxError::Io { path: path.display().to_string(), source })?;
    import(&bytes)
}

/// A layer under construction, with its name in the enclosing sequence.
type Named = (String, Box<dyn Module + Send>);

/// The sequence of `layers`; an empty or repeated name becomes the layer's position (as in
/// PyTorch's `nn.Sequential`), or `name_position` when that is taken too.
fn into_sequential(layers: Vec<Named>) -> Sequential {
    let mut taken = HashSet::new();
    let mut seq = Sequential::new();
    for (i, (name, m)) in layers.into_iter().enumerate() {
        let name = if !name.is_empty() && !taken.contains(&name) {
            name
        } else if !taken.contains(&i.to_string()) {
            i.to_string()
        } else {
            format!("{name}_{i}")
        };
        seq = seq.push_boxed(&name, m);
        taken.insert(name);
    }
    seq
}

/// Shape knowledge along the chain: the dims after the batch axis, when known.
type Dims = Option<Vec<usize>>;

struct Builder<'g> {
    graph: &'g GraphProto,
    /// Initializers and `Constant` outputs by name.
    constants: HashMap<&'g str, &'g TensorProto>,
    /// For each value, the nodes that read it (once per node).
    consumers: HashMap<&'g str, Vec<usize>>,
    used: Vec<bool>,
    input: &'g str,
    input_dims: Dims,
    output: &'g str,
    join_work: usize,
}

impl<'g> Builder<'g> {
    fn new(graph: &'g GraphProto) -> Result<Self> {
        let mut constants: HashMap<&str, &TensorProto> =
            graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        for n in &graph.node {
            if is_constant(n) {
                let value = match n.attribute.as_slice() {
                    [a] if a.name == "value" && a.r#type == attribute_type::TENSOR => a.t.as_ref(),
                    _ => None,
                };
                let (Some(t), [out]) = (value, n.output.as_slice()) else {
                    return Err(unsupported_attr(
                        n,
                        "only a `value` tensor attribute with one output is supported",
                    ));
                };
                constants.insert(out.as_str(), t);
            }
        }
        let data_inputs: Vec<_> =
            graph.input.iter().filter(|v| !constants.contains_key(v.name.as_str())).collect();
        let [input] = data_inputs.as_slice() else {
            return Err(OnnxError::Graph(format!(
                "the graph needs exactly one data input, it has {}",
                data_inputs.len()
            )));
        };
        let [output] = graph.output.as_slice() else {
            return Err(OnnxError::Graph(format!(
                "the graph needs exactly one output, it has {}",
                graph.output.len()
            )));
        };
        let input_dims = input
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
            .and_then(|s| {
                s.dim
                    .iter()
                    .skip(1)
                    .map(|d| match d.value {
                        Some(DimensionValue::DimValue(v)) => usize::try_from(v).ok(),
                        _ => None,
                    })
                    .collect::<Option<Vec<usize>>>()
            });
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            let mut seen = HashSet::new();
            for v in &n.input {
                if !v.is_empty() && !constants.contains_key(v.as_str()) && seen.insert(v.as_str()) {
                    consumers.entry(v.as_str()).or_default().push(i);
                }
            }
        }
        Ok(Self {
            graph,
            constants,
            consumers,
            used: vec![false; graph.node.len()],
            input: input.name.as_str(),
            input_dims,
            output: output.name.as_str(),
            join_work: 0,
        })
    }

    fn build(&mut self) -> Result<Vec<Named>> {
        let (layers, end, _) = self.chain(self.input, None, None, self.input_dims.clone(), 0)?;
        if end != self.output {
            return Err(OnnxError::Graph(format!(
                "the chain from `{}` ends at `{end}`, not at the output `{}`",
                self.input, self.output
            )));
        }
        let unused: Vec<&str> = self
            .graph
            .node
            .iter()
            .zip(&self.used)
            .filter(|(n, used)| !(**used || is_constant(n)))
            .map(|(n, _)| node_name(n))
            .collect();
        if !unused.is_empty() {
            return Err(OnnxError::Graph(format!(
                "nodes off the path from input to output: {}",
                unused.join(", ")
            )));
        }
        Ok(layers)
    }

    fn node(&self, i: usize) -> &'g NodeProto {
        &self.graph.node[i]
    }

    fn consumers_of(&self, v: &str) -> Vec<usize> {
        self.consumers.get(v).cloned().unwrap_or_default()
    }

    /// Follows the graph from value `from` until value `until` (or a value nobody reads),
    /// taking `first` as the first node when given. Returns the layers, the last value and
    /// its dims.
    fn chain(
        &mut self,
        from: &'g str,
        until: Option<&'g str>,
        first: Option<usize>,
        mut dims: Dims,
        depth: usize,
    ) -> Result<(Vec<Named>, &'g str, Dims)> {
        if depth > MAX_RESIDUAL_DEPTH {
            return Err(OnnxError::Graph(format!(
                "residual blocks nest deeper than {MAX_RESIDUAL_DEPTH}"
            )));
        }
        let mut layers: Vec<Named> = Vec::new();
        let mut cur = from;
        let mut next = first;
        // Each step uses at least one node, so this bounds the walk.
        for _ in 0..=self.graph.node.len() {
            if Some(cur) == until {
                return Ok((layers, cur, dims));
            }
            let i = match next.take() {
                Some(i) => i,
                None => match self.consumers_of(cur).as_slice() {
                    [] => return Ok((layers, cur, dims)),
                    &[i] => i,
                    &[a, b] => {
                        let (name, block, out, out_dims) =
                            self.residual(cur, a, b, &dims, depth)?;
                        layers.push((name, block));
                        cur = out;
                        dims = out_dims;
                        continue;
                    }
                    many => {
                        return Err(OnnxError::Graph(format!(
                            "value `{cur}` is read by {} nodes; only two-way forks joined by \
                             an Add are supported",
                            many.len()
                        )));
                    }
                },
            };
            if self.used[i] {
                return Err(OnnxError::Graph(format!(
                    "node `{}` is reached twice",
                    node_name(self.node(i))
                )));
            }
            self.used[i] = true;
            let n = self.node(i);
            if n.op_type == "Add"
                && n.domain.is_empty()
                && n.input.len() == 2
                && n.input[0] == n.input[1]
            {
                // x + x: a residual block whose body is the identity.
                layers.push((scope_name(n), Box::new(Residual::new(Sequential::new()))));
                cur = single_output(n)?;
                continue;
            }
            if n.input.first().map(String::as_str) != Some(cur) {
                return Err(OnnxError::Graph(format!(
                    "node `{}` reads `{cur}` other than as its first input",
                    node_name(n)
                )));
            }
            let (layer, out, out_dims) = self.layer(i, &dims)?;
            if let Some(layer) = layer {
                layers.push(layer);
            }
            cur = out;
            dims = out_dims;
        }
        Err(OnnxError::Graph("the walk over the graph does not end".into()))
    }

    /// The residual block that starts where `cur` forks into nodes `a` and `b`.
    fn residual(
        &mut self,
        cur: &'g str,
        a: usize,
        b: usize,
        dims: &Dims,
        depth: usize,
    ) -> Result<(String, Box<dyn Module + Send>, &'g str, Dims)> {
        let reach_a = self.reach(a)?;
        let reach_b = self.reach(b)?;
        // The join: the first Add both branches reach (nodes are in topological order).
        let join = (a.max(b)..self.graph.node.len()).find(|&j| {
            let n = self.node(j);
            n.op_type == "Add"
                && n.domain.is_empty()
                && reach_a.contains(&j)
                && reach_b.contains(&j)
        });
        let Some(j) = join else {
            return Err(OnnxError::Graph(format!(
                "value `{cur}` forks into `{}` and `{}`, which no Add joins",
                node_name(self.node(a)),
                node_name(self.node(b))
            )));
        };
        let add = self.node(j);
        let [lhs, rhs] = add.input.as_slice() else {
            return Err(unsupported_attr(add, "Add needs exactly two inputs"));
        };
        let mut branches = Vec::new();
        for operand in [lhs.as_str(), rhs.as_str()] {
            if operand == cur {
                branches.push((Vec::new(), dims.clone()));
                continue;
            }
            // The branch through the fork's consumer that leads to this operand.
            let start = [a, b].into_iter().find(|&c| c != j && self.produces_towards(c, operand));
            let Some(start) = start else {
                return Err(OnnxError::Graph(format!(
                    "Add `{}`: operand `{operand}` does not come from `{cur}`",
                    node_name(add)
                )));
            };
            let (layers, end, d) =
                self.chain(cur, Some(operand), Some(start), dims.clone(), depth + 1)?;
            if end != operand {
                return Err(OnnxError::Graph(format!(
                    "Add `{}`: the branch from `{cur}` ends at `{end}`, not at `{operand}`",
                    node_name(add)
                )));
            }
            branches.push((layers, d));
        }
        if self.used[j] {
            return Err(OnnxError::Graph(format!("node `{}` is reached twice", node_name(add))));
        }
        self.used[j] = true;
        let out = single_output(add)?;
        let name = scope_name(add);
        let (shortcut, s_dims) = branches.pop().unwrap_or_default();
        let (body, b_dims) = branches.pop().unwrap_or_default();
        if let (Some(x), Some(y)) = (&b_dims, &s_dims)
            && x != y
        {
            return Err(OnnxError::Graph(format!(
                "Add `{}` joins shapes {x:?} and {y:?}; only equal shapes are supported",
                node_name(add)
            )));
        }
        let out_dims = b_dims.or(s_dims);
        // Children named inside the block (`layer1.conv1`, or `layer1.body.conv1` as convkit
        // exports them) lose the block's prefix.
        let strip = |layers: Vec<Named>, branch: &str| -> Sequential {
            let prefixes = [format!("{name}.{branch}."), format!("{name}.")];
            into_sequential(
                layers
                    .into_iter()
                    .map(|(n, m)| {
                        let short = prefixes
                            .iter()
                            .find_map(|p| n.strip_prefix(p.as_str()))
                            .filter(|rest| !name.is_empty() && !rest.is_empty());
                        (short.map_or(n.clone(), str::to_owned), m)
                    })
                    .collect(),
            )
        };
        let block: Box<dyn Module + Send> = match (body.is_empty(), shortcut.is_empty()) {
            (_, true) => Box::new(Residual::new(strip(body, "body"))),
            (true, false) => Box::new(Residual::new(strip(shortcut, "shortcut"))),
            (false, false) => {
                Box::new(Residual::with_shortcut(strip(body, "body"), strip(shortcut, "shortcut")))
            }
        };
        Ok((name, block, out, out_dims))
    }

    /// The nodes reachable from node `start` (itself included), by data edges.
    fn reach(&mut self, start: usize) -> Result<HashSet<usize>> {
        let mut seen = HashSet::from([start]);
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            self.join_work += 1;
            if self.join_work > MAX_JOIN_WORK {
                return Err(OnnxError::Graph("the graph has too many forks to analyse".into()));
            }
            for out in &self.node(i).output {
                for &c in self.consumers.get(out.as_str()).map(Vec::as_slice).unwrap_or_default() {
                    if seen.insert(c) {
                        stack.push(c);
                    }
                }
            }
        }
        Ok(seen)
    }

    /// Whether node `c` produces `value` or something `value` is computed from.
    fn produces_towards(&mut self, c: usize, value: &str) -> bool {
        if self.node(c).output.iter().any(|o| o == value) {
            return true;
        }
        match self.reach(c) {
            Ok(r) => r.iter().any(|&i| self.node(i).output.iter().any(|o| o == value)),
            Err(_) => false,
        }
    }

    /// Builds the layer for node `i` applied to `cur`; `None` for nodes that vanish
    /// (identity, or a bias `Add` fused into the `MatMul` before it). Marks every node used.
    fn layer(&mut self, i: usize, dims: &Dims) -> Result<(Option<Named>, &'g str, Dims)> {
        let n = self.node(i);
        let op = n.op_type.as_str();
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(unsupported_op(n));
        }
        let a = Attrs::new(n)?;
        let mut out = first_output(n)?;
        let (name, layer, out_dims): (String, Box<dyn Module + Send>, Dims) = match op {
            "Conv" => {
                a.allow(&["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"])?;
                self.no_extra_outputs(n)?;
                let w = self.tensor(n, 1)?;
                let bias = self.optional_tensor(n, 2)?;
                let &[c_out, _, kh, kw] = w.dims() else {
                    return Err(unsupported_attr(
                        n,
                        format!(
                            "weight {:?} is not a 2-D convolution's [c_out, c_in/groups, kh, kw]",
                            w.dims()
                        ),
                    ));
                };
                a.auto_pad_notset()?;
                if let Some(k) = a.ints("kernel_shape")?
                    && k != [kh, kw]
                {
                    return Err(unsupported_attr(
                        n,
                        format!("kernel_shape {k:?} does not match weight {:?}", w.dims()),
                    ));
                }
                let params = Conv2dParams {
                    stride: a.pair("strides", 1)?,
                    padding: a.pads()?,
                    dilation: a.pair("dilations", 1)?,
                    groups: a.int("group", 1)?,
                };
                let conv = Conv2d::from_tensors(w, bias, params)?;
                let out_dims = dims.as_ref().and_then(|d| match d.as_slice() {
                    &[_, h, wd] => Some(vec![
                        c_out,
                        conv_out(h, kh, params.stride.0, params.padding.0, params.dilation.0)?,
                        conv_out(wd, kw, params.stride.1, params.padding.1, params.dilation.1)?,
                    ]),
                    _ => None,
                });
                (self.param_name(n, 1), Box::new(conv), out_dims)
            }
            "Gemm" => {
                a.allow(&["alpha", "beta", "transA", "transB"])?;
                self.no_extra_outputs(n)?;
                if a.float("alpha", 1.0)? != 1.0
                    || a.float("beta", 1.0)? != 1.0
                    || a.int("transA", 0)? != 0
                {
                    return Err(unsupported_attr(
                        n,
                        "only alpha = 1, beta = 1, transA = 0 are supported",
                    ));
                }
                let w = self.tensor(n, 1)?;
                let w = match a.int("transB", 0)? {
                    1 => w,
                    0 => transpose(n, &w)?,
                    t => return Err(unsupported_attr(n, format!("transB = {t}"))),
                };
                let bias = self.optional_tensor(n, 2)?;
                let linear = linear(n, w, bias)?;
                let out_dims = Some(vec![linear.weight.dims()[0]]);
                (self.param_name(n, 1), Box::new(linear), out_dims)
            }
            "MatMul" => {
                a.allow(&[])?;
                let w = transpose(n, &self.tensor(n, 1)?)?;
                // A bias Add right after (torch's Linear on inputs of more than two dims).
                let mut bias = None;
                if let &[j] = self.consumers_of(out).as_slice() {
                    let add = self.node(j);
                    if add.op_type == "Add" && add.domain.is_empty() && !self.used[j] {
                        let other = add.input.iter().find(|v| v.as_str() != out);
                        if let Some(t) = other.and_then(|v| self.constants.get(v.as_str())) {
                            bias = Some(to_tensor(t)?);
                            self.used[j] = true;
                            out = single_output(add)?;
                        }
                    }
                }
                let linear = linear(n, w, bias)?;
                let out_dims = Some(vec![linear.weight.dims()[0]]);
                (self.param_name(n, 1), Box::new(linear), out_dims)
            }
            "MaxPool" | "AveragePool" => {
                let avg = op == "AveragePool";
                if avg {
                    a.allow(&[
                        "auto_pad",
                        "ceil_mode",
                        "count_include_pad",
                        "kernel_shape",
                        "pads",
                        "strides",
                        "dilations",
                    ])?;
                } else {
                    a.allow(&[
                        "auto_pad",
                        "ceil_mode",
                        "dilations",
                        "kernel_shape",
                        "pads",
                        "storage_order",
                        "strides",
                    ])?;
                }
                self.no_extra_outputs(n)?;
                a.auto_pad_notset()?;
                if a.int("ceil_mode", 0)? != 0 {
                    return Err(unsupported_attr(n, "ceil_mode = 1 is not supported (only 0)"));
                }
                if a.pair("dilations", 1)? != (1, 1) {
                    return Err(unsupported_attr(n, "dilations other than 1 are not supported"));
                }
                if a.int("storage_order", 0)? != 0 {
                    return Err(unsupported_attr(n, "storage_order = 1 is not supported"));
                }
                let Some(kernel) = a.ints("kernel_shape")? else {
                    return Err(unsupported_attr(n, "kernel_shape is required"));
                };
                let &[kh, kw] = kernel.as_slice() else {
                    return Err(unsupported_attr(n, format!("kernel_shape {kernel:?} is not 2-D")));
                };
                let p = PoolParams {
                    kernel: (kh, kw),
                    stride: a.pair("strides", 1)?,
                    padding: a.pads()?,
                    count_include_pad: a.int("count_include_pad", 0)? != 0,
                };
                let out_dims = dims.as_ref().and_then(|d| match d.as_slice() {
                    &[c, h, w] => Some(vec![
                        c,
                        conv_out(h, kh, p.stride.0, p.padding.0, 1)?,
                        conv_out(w, kw, p.stride.1, p.padding.1, 1)?,
                    ]),
                    _ => None,
                });
                let layer: Box<dyn Module + Send> =
                    if avg { Box::new(AvgPool2d(p)) } else { Box::new(MaxPool2d(p)) };
                (scope_name(n), layer, out_dims)
            }
            "GlobalAveragePool" => {
                a.allow(&[])?;
                let out_dims = dims.as_ref().and_then(|d| d.first().map(|&c| vec![c, 1, 1]));
                (scope_name(n), Box::new(GlobalAvgPool2d), out_dims)
            }
            "Relu" | "Tanh" | "Sigmoid" => {
                a.allow(&[])?;
                let layer: Box<dyn Module + Send> = match op {
                    "Relu" => Box::new(ReLU),
                    "Tanh" => Box::new(Tanh),
                    _ => Box::new(Sigmoid),
                };
                (scope_name(n), layer, dims.clone())
            }
            "Flatten" => {
                a.allow(&["axis"])?;
                let axis = a.signed_int("axis", 1)?;
                let rank = dims.as_ref().map(|d| d.len() + 1);
                if axis != 1 && rank.is_none_or(|r| i64::try_from(r).map(|r| axis + r) != Ok(1)) {
                    return Err(unsupported_attr(
                        n,
                        format!("axis = {axis} (only 1 is supported)"),
                    ));
                }
                (scope_name(n), Box::new(Flatten), flat(dims))
            }
            "Reshape" => {
                a.allow(&["allowzero"])?;
                let shape = self.tensor_i64(n, 1)?;
                let features = flat(dims).and_then(|d| d.first().copied());
                let is_flatten = match shape.as_slice() {
                    [0, -1] => a.int("allowzero", 0)? == 0,
                    [-1, k] => features.is_some_and(|f| usize::try_from(*k) == Ok(f)),
                    _ => false,
                };
                if !is_flatten {
                    return Err(unsupported_attr(
                        n,
                        format!(
                            "shape {shape:?} with input dims [batch, {dims:?}] is not a flatten; only [0, -1] or [-1, features] are supported"
                        ),
                    ));
                }
                (scope_name(n), Box::new(Flatten), flat(dims))
            }
            "BatchNormalization" => {
                a.allow(&["epsilon", "momentum", "training_mode", "spatial"])?;
                self.no_extra_outputs(n)?;
                if a.int("training_mode", 0)? != 0 {
                    return Err(unsupported_attr(
                        n,
                        "training_mode = 1 is not supported (only inference)",
                    ));
                }
                if a.int("spatial", 1)? != 1 {
                    return Err(unsupported_attr(n, "spatial = 0 is not supported"));
                }
                let [scale, b, mean, var] = [1, 2, 3, 4].map(|k| self.tensor(n, k));
                let (scale, b, mean, var) = (scale?, b?, mean?, var?);
                let c = scale.numel();
                if [&scale, &b, &mean, &var].iter().any(|t| t.dims() != [c]) {
                    return Err(unsupported_attr(
                        n,
                        format!(
                            "scale, bias, mean and variance must all be [c]; got {:?}, {:?}, {:?}, {:?}",
                            scale.dims(),
                            b.dims(),
                            mean.dims(),
                            var.dims()
                        ),
                    ));
                }
                let eps = a.float("epsilon", 1e-5)?;
                let momentum = 1.0 - a.float("momentum", 0.9)?;
                let mut bn = BatchNorm2d::with_config(c, BatchNormConfig { eps, momentum })?;
                bn.weight = Param::new(scale);
                bn.bias = Param::new(b);
                bn.running_mean = Param::new(mean);
                bn.running_var = Param::new(var);
                (self.param_name(n, 1), Box::new(bn), dims.clone())
            }
            "Dropout" => {
                a.allow(&["ratio", "seed"])?;
                self.no_extra_outputs(n)?;
                let ratio = match self.optional_tensor(n, 1)? {
                    Some(t) if t.numel() == 1 => t.as_slice()[0],
                    Some(t) => {
                        return Err(unsupported_attr(
                            n,
                            format!("ratio {:?} is not a scalar", t.dims()),
                        ));
                    }
                    None => a.float("ratio", 0.5)?,
                };
                if let Some(t) = self.optional_tensor_any(n, 2)?
                    && t.iter().any(|&v| v != 0)
                {
                    return Err(unsupported_attr(n, "training_mode = true is not supported"));
                }
                (scope_name(n), Box::new(Dropout::new(ratio, 0)?), dims.clone())
            }
            "Identity" => {
                a.allow(&[])?;
                return Ok((None, out, dims.clone()));
            }
            "Add" => {
                return Err(unsupported_attr(
                    n,
                    "an Add is supported only as a residual join of two branches or as the \
                     bias after a MatMul",
                ));
            }
            _ => return Err(unsupported_op(n)),
        };
        Ok((Some((name, layer)), out, out_dims))
    }

    /// A node's extra outputs (MaxPool's indices, Dropout's mask, BatchNormalization's
    /// training statistics) must be absent or unread.
    fn no_extra_outputs(&self, n: &NodeProto) -> Result<()> {
        for o in n.output.iter().skip(1) {
            if !o.is_empty() && (self.consumers.contains_key(o.as_str()) || o == self.output) {
                return Err(unsupported_attr(
                    n,
                    format!("its extra output `{o}` is used; only the first output is supported"),
                ));
            }
        }
        Ok(())
    }

    /// The constant float tensor at input `k` of `n`.
    fn tensor(&self, n: &NodeProto, k: usize) -> Result<Tensor> {
        self.optional_tensor(n, k)?.ok_or_else(|| {
            unsupported_attr(n, format!("input {k} must be an initializer or constant"))
        })
    }

    fn optional_tensor(&self, n: &NodeProto, k: usize) -> Result<Option<Tensor>> {
        match n.input.get(k).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => match self.constants.get(v) {
                Some(t) => Ok(Some(to_tensor(t)?)),
                None => Err(unsupported_attr(
                    n,
                    format!("input `{v}` must be an initializer or constant"),
                )),
            },
        }
    }

    /// An optional constant of any numeric type, as integers (Dropout's `training_mode`).
    fn optional_tensor_any(&self, n: &NodeProto, k: usize) -> Result<Option<Vec<i64>>> {
        match n.input.get(k).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => match self.constants.get(v) {
                Some(t) => Ok(Some(to_ints(t)?)),
                None => Err(unsupported_attr(n, format!("input `{v}` must be a constant"))),
            },
        }
    }

    fn tensor_i64(&self, n: &NodeProto, k: usize) -> Result<Vec<i64>> {
        match n.input.get(k).and_then(|v| self.constants.get(v.as_str())) {
            Some(t) => to_ints(t),
            None => Err(unsupported_attr(n, format!("input {k} must be a constant"))),
        }
    }

    /// The child name for a layer with parameters: the initializer's module path
    /// (`conv1.weight` → `conv1`), else the node's scope.
    fn param_name(&self, n: &NodeProto, k: usize) -> String {
        n.input
            .get(k)
            .and_then(|v| v.strip_suffix(".weight"))
            .filter(|s| !s.is_empty())
            .map_or_else(|| scope_name(n), str::to_owned)
    }
}

/// The module path of a node named as torch's exporter names them: the scope segments
/// before the op, where a segment that extends the one before it (`stem` then `stem.0`,
/// children of a `Sequential`) replaces it: `/layer2/downsample/downsample.0/Conv` →
/// `layer2.downsample.0`. Empty for a node outside any module (`/Relu_1`).
fn scope_name(n: &NodeProto) -> String {
    let segments: Vec<&str> = n.name.split('/').filter(|s| !s.is_empty()).collect();
    let Some((_op, scopes)) = segments.split_last() else { return String::new() };
    let mut path: Vec<&str> = Vec::new();
    for &seg in scopes {
        match path.last() {
            Some(prev) if seg.strip_prefix(prev).is_some_and(|rest| rest.starts_with('.')) => {
                if let Some(last) = path.last_mut() {
                    *last = seg;
                }
            }
            _ => path.push(seg),
        }
    }
    path.join(".")
}

fn is_constant(n: &NodeProto) -> bool {
    n.op_type == "Constant" && n.domain.is_empty()
}

fn node_name(n: &NodeProto) -> &str {
    if n.name.is_empty() { n.output.first().map_or("<unnamed>", String::as_str) } else { &n.name }
}

fn unsupported_op(n: &NodeProto) -> OnnxError {
    let op = if n.domain.is_empty() {
        n.op_type.clone()
    } else {
        format!("{}::{}", n.domain, n.op_type)
    };
    OnnxError::UnsupportedOp { op, node: node_name(n).to_owned(), supported: SUPPORTED_OPS }
}

fn unsupported_attr(n: &NodeProto, msg: impl Into<String>) -> OnnxError {
    OnnxError::UnsupportedAttribute {
        op: n.op_type.clone(),
        node: node_name(n).to_owned(),
        msg: msg.into(),
    }
}

fn first_output(n: &NodeProto) -> Result<&str> {
    match n.output.first() {
        Some(o) if !o.is_empty() => Ok(o),
        _ => Err(unsupported_attr(n, "the node has no output")),
    }
}

fn single_output(n: &NodeProto) -> Result<&str> {
    match n.output.as_slice() {
        [o] if !o.is_empty() => Ok(o),
        _ => Err(unsupported_attr(n, "the node must have exactly one output")),
    }
}

fn conv_out(input: usize, k: usize, stride: usize, pad: usize, dilation: usize) -> Option<usize> {
    convkit_nn::out_size(input, k, stride, pad, dilation)
}

fn flat(dims: &Dims) -> Dims {
    dims.as_ref().and_then(|d| d.iter().try_fold(1usize, |a, &x| a.checked_mul(x))).map(|f| vec![f])
}

fn transpose(n: &NodeProto, w: &Tensor) -> Result<Tensor> {
    let &[rows, cols] = w.dims() else {
        return Err(unsupported_attr(n, format!("weight {:?} is not a matrix", w.dims())));
    };
    let src = w.as_slice();
    let mut out = vec![0f32; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    Ok(Tensor::from_vec(&[cols, rows], out)?)
}

/// A linear layer from a weight `[out, in]` and an optional bias of `out` elements.
fn linear(n: &NodeProto, w: Tensor, bias: Option<Tensor>) -> Result<Linear> {
    let &[out, _] = w.dims() else {
        return Err(unsupported_attr(n, format!("weight {:?} is not a matrix", w.dims())));
    };
    if w.numel() == 0 {
        return Err(unsupported_attr(n, format!("weight {:?} is empty", w.dims())));
    }
    let bias = match bias {
        Some(b) if b.numel() == out => Some(Param::new(b.reshape(&[out])?)),
        Some(b) => {
            return Err(unsupported_attr(
                n,
                format!("bias {:?} does not fit weight {:?}", b.dims(), w.dims()),
            ));
        }
        None => None,
    };
    Ok(Linear { weight: Param::new(w), bias })
}

/// The dims of a tensor, checked: non-negative, and a product that fits. Returns the dims
/// and the element count.
fn checked_dims(t: &TensorProto) -> Result<(Vec<usize>, usize)> {
    let bad = |msg: String| OnnxError::Tensor { name: t.name.clone(), msg };
    if t.data_location != 0 || !t.external_data.is_empty() {
        return Err(bad("external data is not supported".into()));
    }
    let mut numel = 1usize;
    let mut dims = Vec::with_capacity(t.dims.len().min(16));
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| bad(format!("negative dim in {:?}", t.dims)))?;
        numel = numel.checked_mul(d).ok_or_else(|| bad(format!("dims {:?} overflow", t.dims)))?;
        dims.push(d);
    }
    Ok((dims, numel))
}

/// A float tensor from its proto. The data length is compared with the dims before anything
/// is allocated, so the allocation is what the file holds.
fn to_tensor(t: &TensorProto) -> Result<Tensor> {
    let bad = |msg: String| OnnxError::Tensor { name: t.name.clone(), msg };
    if t.data_type != DATA_TYPE_FLOAT {
        return Err(bad(format!("element type {} is not float32 (1)", t.data_type)));
    }
    let (dims, numel) = checked_dims(t)?;
    let data = if !t.raw_data.is_empty() {
        let want = numel.checked_mul(4).ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
        if t.raw_data.len() != want {
            return Err(bad(format!(
                "dims {dims:?} need {want} bytes of raw data, the file has {}",
                t.raw_data.len()
            )));
        }
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        if t.float_data.len() != numel {
            return Err(bad(format!(
                "dims {dims:?} need {numel} floats, the file has {}",
                t.float_data.len()
            )));
        }
        t.float_data.clone()
    };
    Ok(Tensor::from_vec(&dims, data)?)
}

/// An integer tensor (int64, int32 or bool-like) as `i64`s, length checked against dims.
fn to_ints(t: &TensorProto) -> Result<Vec<i64>> {
    let bad = |msg: String| OnnxError::Tensor { name: t.name.clone(), msg };
    let (_, numel) = checked_dims(t)?;
    let width = match t.data_type {
        DATA_TYPE_INT64 => 8,
        6 => 4,     // INT32
        9 | 2 => 1, // BOOL, UINT8
        other => return Err(bad(format!("element type {other} is not an integer type"))),
    };
    if !t.raw_data.is_empty() {
        let want = numel.checked_mul(width).ok_or_else(|| bad("dims overflow".into()))?;
        if t.raw_data.len() != want {
            return Err(bad(format!(
                "needs {want} bytes of raw data, the file has {}",
                t.raw_data.len()
            )));
        }
        return Ok(t
            .raw_data
            .chunks_exact(width)
            .map(|b| match b {
                &[a, b, c, d, e, f, g, h] => i64::from_le_bytes([a, b, c, d, e, f, g, h]),
                &[a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
                bytes => i64::from(bytes.first().copied().unwrap_or(0)),
            })
            .collect());
    }
    let data: Vec<i64> = if t.data_type == DATA_TYPE_INT64 {
        t.int64_data.clone()
    } else {
        t.int32_data.iter().map(|&v| i64::from(v)).collect()
    };
    if data.len() != numel {
        return Err(bad(format!("needs {numel} values, the file has {}", data.len())));
    }
    Ok(data)
}

/// Typed access to a node's attributes.
struct Attrs<'n> {
    node: &'n NodeProto,
}

impl<'n> Attrs<'n> {
    fn new(node: &'n NodeProto) -> Result<Self> {
        let mut seen = HashSet::new();
        for a in &node.attribute {
            if !seen.insert(a.name.as_str()) {
                return Err(unsupported_attr(
                    node,
                    format!("attribute `{}` appears twice", a.name),
                ));
            }
            if !a.ref_attr_name.is_empty() {
                return Err(unsupported_attr(node, "attribute references are not supported"));
            }
        }
        Ok(Self { node })
    }

    fn allow(&self, names: &[&str]) -> Result<()> {
        match self.node.attribute.iter().find(|a| !names.contains(&a.name.as_str())) {
            Some(a) => Err(unsupported_attr(
                self.node,
                format!(
                    "attribute `{}` is not supported; supported: {}",
                    a.name,
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ),
            )),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str, ty: i32) -> Result<Option<&'n AttributeProto>> {
        match self.node.attribute.iter().find(|a| a.name == name) {
            Some(a) if a.r#type == ty => Ok(Some(a)),
            Some(a) => Err(unsupported_attr(
                self.node,
                format!("attribute `{name}` has type {}, expected {ty}", a.r#type),
            )),
            None => Ok(None),
        }
    }

    fn signed_int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.get(name, attribute_type::INT)?.map_or(default, |a| a.i))
    }

    /// A non-negative integer attribute.
    fn int(&self, name: &str, default: usize) -> Result<usize> {
        match self.get(name, attribute_type::INT)? {
            Some(a) => to_usize(self.node, name, a.i),
            None => Ok(default),
        }
    }

    fn float(&self, name: &str, default: f32) -> Result<f32> {
        let f = self.get(name, attribute_type::FLOAT)?.map_or(default, |a| a.f);
        if f.is_finite() {
            Ok(f)
        } else {
            Err(unsupported_attr(self.node, format!("attribute `{name}` = {f}")))
        }
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<usize>>> {
        match self.get(name, attribute_type::INTS)? {
            Some(a) => Ok(Some(
                a.ints.iter().map(|&v| to_usize(self.node, name, v)).collect::<Result<_>>()?,
            )),
            None => Ok(None),
        }
    }

    /// A two-element attribute (`strides`, `dilations`), `(default, default)` when absent.
    fn pair(&self, name: &str, default: usize) -> Result<(usize, usize)> {
        match self.ints(name)?.as_deref() {
            None => Ok((default, default)),
            Some(&[h, w]) => Ok((h, w)),
            Some(other) => {
                Err(unsupported_attr(self.node, format!("{name} = {other:?} is not 2-D")))
            }
        }
    }

    /// `pads = [top, left, bottom, right]`, which convkit supports when symmetric.
    fn pads(&self) -> Result<(usize, usize)> {
        match self.ints("pads")?.as_deref() {
            None => Ok((0, 0)),
            Some(&[t, l, b, r]) if t == b && l == r => Ok((t, l)),
            Some(other) => Err(unsupported_attr(
                self.node,
                format!("pads = {other:?}: only symmetric 2-D padding [h, w, h, w] is supported"),
            )),
        }
    }

    fn auto_pad_notset(&self) -> Result<()> {
        match self.get("auto_pad", attribute_type::STRING)? {
            None => Ok(()),
            Some(a) if a.s == b"NOTSET" || a.s.is_empty() => Ok(()),
            Some(a)
                if a.s == b"VALID"
                    && self.ints("pads")?.is_none_or(|p| p.iter().all(|&v| v == 0)) =>
            {
                Ok(())
            }
            Some(a) => Err(unsupported_attr(
                self.node,
                format!(
                    "auto_pad = {:?} is not supported (only NOTSET with explicit pads, or VALID)",
                    String::from_utf8_lossy(&a.s)
                ),
            )),
        }
    }
}

/// Attribute values become sizes only up to 2^31, far beyond any real layer, so arithmetic
/// on them cannot overflow.
fn to_usize(n: &NodeProto, name: &str, v: i64) -> Result<usize> {
    match usize::try_from(v) {
        Ok(u) if u <= 1 << 31 => Ok(u),
        _ => Err(unsupported_attr(n, format!("attribute `{name}` = {v} is out of range"))),
    }
}
