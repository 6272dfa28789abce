//! Import: ONNX protobuf → a convkit [`Sequential`] in evaluation mode.
//!
//! The graph must be a chain from its one input to its one output of single-input
//! operators, where a value may fork into two branches that an `Add` joins again (a residual
//! block, built as [`Residual`](convkit_nn::Residual)). Torch's `Linear` patterns (`Gemm`, or
//! `MatMul` then `Add` of a bias) become [`Linear`](convkit_nn::Linear); `Reshape` becomes
//! [`Flatten`](convkit_nn::Flatten) where it is one.
//!
//! ## Hostile input
//! Every size in the file is checked before anything is allocated from it: tensor dims are
//! multiplied with `checked_mul` and compared with the length of the data actually present,
//! so an allocation never exceeds what the file holds. prost bounds message nesting (100
//! levels), the walk over residual forks is bounded in depth and in work, and every
//! attribute is type-checked. Errors, never panics.
//!
//! ## Layout
//! `graph` walks the chain and finds residual joins, `layer` builds one node's layer,
//! `attrs` reads node attributes, `tensors` decodes `TensorProto`s, and `nodes` names nodes
//! and the errors about them.

mod attrs;
mod graph;
mod layer;
mod nodes;
mod tensors;

use std::collections::HashSet;
use std::path::Path;

use convkit_nn::{Module, Sequential};
use prost::Message;

use crate::error::{OnnxError, Result};
use crate::proto::ModelProto;
use graph::Builder;

/// The op types import turns into layers, as named in errors.
pub const SUPPORTED_OPS: &str = "Conv, Gemm, MatMul (+ Add of a bias), MaxPool, AveragePool, \
     GlobalAveragePool, Relu, Tanh, Sigmoid, Flatten, Reshape (as a flatten), \
     BatchNormalization, Dropout, Identity, Add (residual join), Constant";

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
type Named = (String, Box<dyn Module>);

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
