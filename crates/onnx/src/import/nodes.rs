//! Naming nodes, and the errors that name them: torch's scope paths, unsupported ops and
//! attributes, and the checks on a node's outputs.

use super::SUPPORTED_OPS;
use crate::error::{OnnxError, Result};
use crate::proto::NodeProto;

/// The module path of a node named as torch's exporter names them: the scope segments
/// before the op, where a segment that extends the one before it (`stem` then `stem.0`,
/// children of a `Sequential`) replaces it: `/layer2/downsample/downsample.0/Conv` →
/// `layer2.downsample.0`. Empty for a node outside any module (`/Relu_1`).
pub(super) fn scope_name(n: &NodeProto) -> String {
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

pub(super) fn is_constant(n: &NodeProto) -> bool {
    n.op_type == "Constant" && n.domain.is_empty()
}

pub(super) fn node_name(n: &NodeProto) -> &str {
    if n.name.is_empty() { n.output.first().map_or("<unnamed>", String::as_str) } else { &n.name }
}

pub(super) fn unsupported_op(n: &NodeProto) -> OnnxError {
    let op = if n.domain.is_empty() {
        n.op_type.clone()
    } else {
        format!("{}::{}", n.domain, n.op_type)
    };
    OnnxError::UnsupportedOp { op, node: node_name(n).to_owned(), supported: SUPPORTED_OPS }
}

pub(super) fn unsupported_attr(n: &NodeProto, msg: impl Into<String>) -> OnnxError {
    OnnxError::UnsupportedAttribute {
        op: n.op_type.clone(),
        node: node_name(n).to_owned(),
        msg: msg.into(),
    }
}

pub(super) fn first_output(n: &NodeProto) -> Result<&str> {
    match n.output.first() {
        Some(o) if !o.is_empty() => Ok(o),
        _ => Err(unsupported_attr(n, "the node has no output")),
    }
}

pub(super) fn single_output(n: &NodeProto) -> Result<&str> {
    match n.output.as_slice() {
        [o] if !o.is_empty() => Ok(o),
        _ => Err(unsupported_attr(n, "the node must have exactly one output")),
    }
}
