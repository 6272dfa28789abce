//! Export: a module's [`describe`](convkit_nn::Module::describe) tree → ONNX opset 17.
//!
//! Each layer becomes one node (dropout none), walking the tree in order; a trace of the
//! model on a zero batch of one image follows along, so shapes are checked by the layers
//! themselves and the output's dims are known. The trace never runs batch norm or dropout
//! (it would move running statistics or consume random numbers): export never changes the
//! model. The graph describes inference — batch norm uses the running statistics and dropout
//! is the identity, whatever mode the module is in.

use std::path::Path;

use convkit_autograd::{Param, Var};
use convkit_nn::{Conv2dParams, Layer, Module, PoolParams, module::join};
use convkit_tensor::Tensor;
use prost::Message;

use crate::error::{OnnxError, Result};
use crate::proto::{
    AttributeProto, DATA_TYPE_FLOAT, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
    attribute_type,
};

/// The ONNX operator set version export writes (default domain).
pub const OPSET_VERSION: i64 = 17;

/// The ONNX IR version export writes (8, the one that goes with opset 17).
pub const IR_VERSION: i64 = 8;

/// The layer kinds export translates, as named in errors.
pub const SUPPORTED_LAYERS: &str = "Conv2d, Linear, MaxPool2d, AvgPool2d, GlobalAvgPool2d, \
     ReLU, Tanh, Sigmoid, Flatten, Dropout (omitted), BatchNorm2d, Residual, Sequential";

/// Options of [`export`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Name of the graph input (default `"input"`).
    pub input_name: String,
    /// Name of the graph output (default `"logits"`).
    pub output_name: String,
    /// `Some(name)`: the batch axis is symbolic with that name (default `"batch"`), so any
    /// batch size runs; `None`: the batch is fixed to 1.
    pub batch_dim: Option<String>,
    /// The graph's name (default `"convkit"`).
    pub graph_name: String,
    /// Fold each batch norm that directly follows a convolution in a `Sequential` into that
    /// convolution's weight and bias (`w·γ/√(σ²+ε)`, `(b−μ)·γ/√(σ²+ε)+β`, computed in f64),
    /// as PyTorch's exporter does in eval mode: fewer nodes, the same function up to
    /// rounding. Default `false`: batch norms are `BatchNormalization` nodes, and import
    /// gives back the same layers and parameters.
    pub fold_batch_norm: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            input_name: "input".into(),
            output_name: "logits".into(),
            batch_dim: Some("batch".into()),
            graph_name: "convkit".into(),
            fold_batch_norm: false,
        }
    }
}

/// Encodes `module` as an ONNX model (protobuf bytes) for inputs `[batch, c, h, w]` with
/// `input_chw = [c, h, w]`.
///
/// Initializers are named by the parameters' dotted names (`conv1.weight`), nodes after
/// their layer's path (`/conv1/Conv`), as PyTorch's exporter does.
///
/// Errors: a layer kind without translation ([`OnnxError::UnsupportedLayer`], naming its
/// path and kind and listing [`SUPPORTED_LAYERS`]), an input shape the layers reject, or
/// invalid options.
pub fn export(module: &dyn Module, input_chw: [usize; 3], opts: &ExportOptions) -> Result<Vec<u8>> {
    Ok(export_model(module, input_chw, opts)?.encode_to_vec())
}

/// [`export`], then writes the bytes to `path` atomically (temporary sibling, `fsync`,
/// rename), so a crash never leaves a half-written model.
pub fn save(
    module: &dyn Module,
    input_chw: [usize; 3],
    opts: &ExportOptions,
    path: impl AsRef<Path>,
) -> Result<()> {
    let bytes = export(module, input_chw, opts)?;
    convkit_tensor::write_atomic(path.as_ref(), &bytes)?;
    Ok(())
}

/// Builds the model message (what [`export`] encodes).
pub(crate) fn export_model(
    module: &dyn Module,
    input_chw: [usize; 3],
    opts: &ExportOptions,
) -> Result<ModelProto> {
    if opts.input_name.is_empty() || opts.output_name.is_empty() {
        return Err(OnnxError::Invalid("export: input and output names must not be empty".into()));
    }
    if opts.input_name == opts.output_name {
        return Err(OnnxError::Invalid(format!(
            "export: input and output are both named `{}`",
            opts.input_name
        )));
    }
    if input_chw.contains(&0) {
        return Err(OnnxError::Invalid(format!(
            "export: input [c, h, w] = {input_chw:?} is empty"
        )));
    }
    let [c, h, w] = input_chw;
    let trace = Var::constant(Tensor::zeros(&[1, c, h, w]));
    let mut ex = Exporter { fold_batch_norm: opts.fold_batch_norm, ..Default::default() };
    let (out, mut out_name) = ex.emit(module, "", trace, opts.input_name.clone())?;
    if out_name == opts.input_name {
        // A model that is the identity at inference (empty, or only dropout).
        out_name = ex.push("", "Identity", vec![out_name], Vec::new());
    }
    // The last value takes the output's name wherever it appears.
    for n in &mut ex.nodes {
        for v in n.input.iter_mut().chain(n.output.iter_mut()) {
            if *v == out_name {
                v.clone_from(&opts.output_name);
            }
        }
    }
    let batch = match &opts.batch_dim {
        Some(name) => DimensionValue::DimParam(name.clone()),
        None => DimensionValue::DimValue(1),
    };
    let out_dims = out.dims().get(1..).unwrap_or_default().to_vec();
    let graph = GraphProto {
        node: ex.nodes,
        name: opts.graph_name.clone(),
        initializer: ex.initializers,
        input: vec![value_info(&opts.input_name, batch.clone(), &input_chw)?],
        output: vec![value_info(&opts.output_name, batch, &out_dims)?],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET_VERSION }],
        producer_name: "convkit".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    })
}

/// The nodes and initializers emitted so far.
#[derive(Default)]
struct Exporter {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    fold_batch_norm: bool,
}

impl Exporter {
    /// Emits `module` (at dotted `path`) applied to the value `x_name`, whose traced value is
    /// `x`; returns the traced output and its value name.
    fn emit(
        &mut self,
        module: &dyn Module,
        path: &str,
        x: Var,
        x_name: String,
    ) -> Result<(Var, String)> {
        let layer = module.describe();
        let (op, attrs, params): (&str, Vec<AttributeProto>, Vec<(&str, &Param)>) = match layer {
            Layer::Sequential(children) => {
                let (mut x, mut name) = (x, x_name);
                let mut i = 0;
                while let Some(&(child, m)) = children.get(i) {
                    let next = children.get(i + 1).map(|(_, bn)| bn.describe());
                    if self.fold_batch_norm
                        && let Layer::Conv2d { weight, bias, params, .. } = m.describe()
                        && let Some(bn @ Layer::BatchNorm2d { .. }) = next
                    {
                        let child_path = join(path, child);
                        (x, name) =
                            self.emit_folded(&child_path, m, (weight, bias, params), &bn, x, name)?;
                        i += 2;
                        continue;
                    }
                    (x, name) = self.emit(m, &join(path, child), x, name)?;
                    i += 1;
                }
                return Ok((x, name));
            }
            Layer::Residual { body, shortcut } => {
                let (yb, nb) = self.emit(body, &join(path, "body"), x.clone(), x_name.clone())?;
                let (ys, ns) = match shortcut {
                    Some(s) => self.emit(s, &join(path, "shortcut"), x, x_name)?,
                    None => (x, x_name),
                };
                if yb.dims() != ys.dims() {
                    return Err(OnnxError::Invalid(format!(
                        "export: residual `{path}`: body gives {:?}, shortcut {:?}",
                        yb.dims(),
                        ys.dims()
                    )));
                }
                let y = yb.add(&ys).map_err(convkit_nn::NnError::from)?;
                let name = self.push(path, "Add", vec![nb, ns], Vec::new());
                return Ok((y, name));
            }
            Layer::Dropout { .. } => return Ok((x, x_name)),
            Layer::BatchNorm2d { weight, bias, running_mean, running_var, eps, momentum } => {
                let c = weight.dims().first().copied().unwrap_or(0);
                if x.dims().len() != 4 || x.dims()[1] != c {
                    return Err(OnnxError::Invalid(format!(
                        "export: batch norm `{path}` over {c} channels gets input {:?}",
                        x.dims()
                    )));
                }
                let params = vec![
                    ("weight", weight),
                    ("bias", bias),
                    ("running_mean", running_mean),
                    ("running_var", running_var),
                ];
                let names = self.add_params(path, &params)?;
                // ONNX's momentum weighs the running statistic, PyTorch's the new batch.
                let attrs = vec![attr_f("epsilon", eps), attr_f("momentum", 1.0 - momentum)];
                let inputs = std::iter::once(x_name).chain(names).collect();
                let name = self.push(path, "BatchNormalization", inputs, attrs);
                return Ok((x, name));
            }
            Layer::Conv2d { weight, bias, params, .. } => {
                let attrs = conv_attrs(&weight.dims(), &params)?;
                let mut ps = vec![("weight", weight)];
                ps.extend(bias.map(|b| ("bias", b)));
                ("Conv", attrs, ps)
            }
            Layer::Linear { weight, bias } => {
                let attrs = vec![attr_f("alpha", 1.0), attr_f("beta", 1.0), attr_i("transB", 1)?];
                let mut ps = vec![("weight", weight)];
                ps.extend(bias.map(|b| ("bias", b)));
                ("Gemm", attrs, ps)
            }
            Layer::MaxPool2d(p) => ("MaxPool", pool_attrs(&p)?, Vec::new()),
            Layer::AvgPool2d(p) => {
                let mut attrs = pool_attrs(&p)?;
                attrs.push(attr_i("count_include_pad", usize::from(p.count_include_pad))?);
                ("AveragePool", attrs, Vec::new())
            }
            Layer::GlobalAvgPool2d => ("GlobalAveragePool", Vec::new(), Vec::new()),
            Layer::ReLU => ("Relu", Vec::new(), Vec::new()),
            Layer::Tanh => ("Tanh", Vec::new(), Vec::new()),
            Layer::Sigmoid => ("Sigmoid", Vec::new(), Vec::new()),
            Layer::Flatten => ("Flatten", vec![attr_i("axis", 1)?], Vec::new()),
            other => {
                return Err(OnnxError::UnsupportedLayer {
                    path: if path.is_empty() { "<root>".into() } else { path.into() },
                    kind: other.kind().into(),
                    supported: SUPPORTED_LAYERS,
                });
            }
        };
        // The layers without side effects check the shape themselves.
        let y = module.forward(&x)?;
        let names = self.add_params(path, &params)?;
        let inputs = std::iter::once(x_name).chain(names).collect();
        let name = self.push(path, op, inputs, attrs);
        Ok((y, name))
    }

    /// Emits the convolution at `path` with the batch norm `bn` folded in.
    fn emit_folded(
        &mut self,
        path: &str,
        conv: &dyn Module,
        (weight, bias, params): (&Param, Option<&Param>, Conv2dParams),
        bn: &Layer<'_>,
        x: Var,
        x_name: String,
    ) -> Result<(Var, String)> {
        let Layer::BatchNorm2d {
            weight: gamma, bias: beta, running_mean, running_var, eps, ..
        } = bn
        else {
            return Err(OnnxError::Invalid(format!(
                "export: `{path}` is not followed by a batch norm"
            )));
        };
        let y = conv.forward(&x)?;
        let w = weight.value();
        let c_out = w.dims().first().copied().unwrap_or(0);
        let stats = [gamma.value(), beta.value(), running_mean.value(), running_var.value()];
        let conv_bias = bias.map(Param::value);
        if y.dims().get(1) != Some(&c_out)
            || stats.iter().chain(&conv_bias).any(|t| t.dims() != [c_out])
        {
            return Err(OnnxError::Invalid(format!(
                "export: the batch norm after `{path}` does not have its {c_out} channels"
            )));
        }
        let [g, b, mean, var] = stats.each_ref().map(Tensor::as_slice);
        let scale: Vec<f64> = (0..c_out)
            .map(|o| f64::from(g[o]) / (f64::from(var[o]) + f64::from(*eps)).sqrt())
            .collect();
        let per_out = w.numel() / c_out.max(1);
        let folded_w: Vec<f32> = w
            .as_slice()
            .iter()
            .enumerate()
            .map(|(i, &v)| (f64::from(v) * scale[i / per_out]) as f32)
            .collect();
        let folded_b: Vec<f32> = (0..c_out)
            .map(|o| {
                let b0 = conv_bias.as_ref().map_or(0.0, |t| f64::from(t.as_slice()[o]));
                ((b0 - f64::from(mean[o])) * scale[o] + f64::from(b[o])) as f32
            })
            .collect();
        let w_name = join(path, "weight");
        let b_name = join(path, "bias");
        self.initializers.push(tensor_proto(&w_name, &Tensor::from_vec(w.dims(), folded_w)?)?);
        self.initializers.push(tensor_proto(&b_name, &Tensor::from_vec(&[c_out], folded_b)?)?);
        let attrs = conv_attrs(w.dims(), &params)?;
        let name = self.push(path, "Conv", vec![x_name, w_name, b_name], attrs);
        Ok((y, name))
    }

    /// Adds the parameters as initializers named `path.name`; returns their names.
    fn add_params(&mut self, path: &str, params: &[(&str, &Param)]) -> Result<Vec<String>> {
        let mut names = Vec::with_capacity(params.len());
        for (name, p) in params {
            let full = join(path, name);
            self.initializers.push(tensor_proto(&full, &p.value())?);
            names.push(full);
        }
        Ok(names)
    }

    /// Appends a node for the layer at `path`; returns its output's name.
    fn push(
        &mut self,
        path: &str,
        op: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let scope: String = path.split('.').map(|s| format!("/{s}")).collect();
        let scope = if path.is_empty() { String::new() } else { scope };
        let node_name = format!("{scope}/{op}");
        let out = format!("{node_name}_output_0");
        self.nodes.push(node(op, &node_name, inputs, vec![out.clone()], attrs));
        out
    }
}

fn node(
    op: &str,
    name: &str,
    input: Vec<String>,
    output: Vec<String>,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input,
        output,
        name: name.into(),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

/// ONNX convolution attributes for weight dims `[c_out, c_in/groups, kh, kw]`.
fn conv_attrs(wd: &[usize], p: &Conv2dParams) -> Result<Vec<AttributeProto>> {
    Ok(vec![
        attr_ints("dilations", &[p.dilation.0, p.dilation.1])?,
        attr_i("group", p.groups)?,
        attr_ints("kernel_shape", wd.get(2..).unwrap_or_default())?,
        attr_ints("pads", &[p.padding.0, p.padding.1, p.padding.0, p.padding.1])?,
        attr_ints("strides", &[p.stride.0, p.stride.1])?,
    ])
}

/// ONNX pooling attributes (no ceil mode; pads as `[top, left, bottom, right]`).
fn pool_attrs(p: &PoolParams) -> Result<Vec<AttributeProto>> {
    Ok(vec![
        attr_i("ceil_mode", 0)?,
        attr_ints("kernel_shape", &[p.kernel.0, p.kernel.1])?,
        attr_ints("pads", &[p.padding.0, p.padding.1, p.padding.0, p.padding.1])?,
        attr_ints("strides", &[p.stride.0, p.stride.1])?,
    ])
}

fn to_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| OnnxError::Invalid(format!("export: {v} does not fit in int64")))
}

fn attr_i(name: &str, v: usize) -> Result<AttributeProto> {
    Ok(AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: to_i64(v)?,
        ..Default::default()
    })
}

fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_type::FLOAT, f, ..Default::default() }
}

fn attr_ints(name: &str, vs: &[usize]) -> Result<AttributeProto> {
    Ok(AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: vs.iter().map(|&v| to_i64(v)).collect::<Result<_>>()?,
        ..Default::default()
    })
}

/// A float tensor as an initializer, data little-endian in `raw_data`.
fn tensor_proto(name: &str, t: &Tensor) -> Result<TensorProto> {
    Ok(TensorProto {
        dims: t.dims().iter().map(|&d| to_i64(d)).collect::<Result<_>>()?,
        data_type: DATA_TYPE_FLOAT,
        name: name.into(),
        raw_data: t.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    })
}

fn value_info(name: &str, batch: DimensionValue, rest: &[usize]) -> Result<ValueInfoProto> {
    let mut dim = vec![Dimension { value: Some(batch), ..Default::default() }];
    for &d in rest {
        dim.push(Dimension {
            value: Some(DimensionValue::DimValue(to_i64(d)?)),
            ..Default::default()
        });
    }
    Ok(ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: DATA_TYPE_FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}
