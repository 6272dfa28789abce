//! The error type of export and import.

use thiserror::Error;

/// Errors from ONNX export and import. Messages name the layer path or the node and say
/// what is supported.
#[derive(Debug, Error)]
pub enum OnnxError {
    /// Export met a module kind it cannot translate.
    #[error(
        "export: layer `{path}` is a {kind}, which has no ONNX translation; supported: {supported}"
    )]
    UnsupportedLayer {
        /// The layer's dotted path in the model (`""` for the root).
        path: String,
        /// Its kind ([`convkit_nn::Layer::kind`]).
        kind: String,
        /// The kinds export supports.
        supported: &'static str,
    },
    /// Import met an operator it cannot build a layer for.
    #[error(
        "import: node `{node}` has op type `{op}`, which is not supported; supported: {supported}"
    )]
    UnsupportedOp {
        /// The op type (with its domain when not the default one).
        op: String,
        /// The node's name (or its first output when it has none).
        node: String,
        /// The op types import supports.
        supported: &'static str,
    },
    /// Import met an attribute value (or input) of a supported operator that it cannot honour.
    #[error("import: node `{node}` ({op}): {msg}")]
    UnsupportedAttribute {
        /// The op type.
        op: String,
        /// The node's name.
        node: String,
        /// Which attribute, its value, and what is supported.
        msg: String,
    },
    /// The graph's structure is not one import can turn into layers (not a chain of
    /// single-input ops with residual additions).
    #[error("import: {0}")]
    Graph(String),
    /// The bytes are not a valid ONNX protobuf.
    #[error("import: not a valid ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A tensor in the file is malformed (element type, dims, data length).
    #[error("import: tensor `{name}`: {msg}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The model's input shape or the export options are invalid.
    #[error("{0}")]
    Invalid(String),
    /// A layer failed while export traced shapes, or while import built it.
    #[error(transparent)]
    Nn(#[from] convkit_nn::NnError),
    /// A tensor operation failed.
    #[error(transparent)]
    TensorOp(#[from] convkit_tensor::TensorError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
