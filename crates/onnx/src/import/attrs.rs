//! Typed, checked access to a node's attributes: [`Attrs`].

use std::collections::HashSet;

use super::nodes::unsupported_attr;
use crate::error::Result;
use crate::proto::{AttributeProto, NodeProto, attribute_type};

/// Typed access to a node's attributes.
pub(super) struct Attrs<'n> {
    node: &'n NodeProto,
}

impl<'n> Attrs<'n> {
    pub(super) fn new(node: &'n NodeProto) -> Result<Self> {
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

    pub(super) fn allow(&self, names: &[&str]) -> Result<()> {
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

    pub(super) fn signed_int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.get(name, attribute_type::INT)?.map_or(default, |a| a.i))
    }

    /// A non-negative integer attribute.
    pub(super) fn int(&self, name: &str, default: usize) -> Result<usize> {
        match self.get(name, attribute_type::INT)? {
            Some(a) => to_usize(self.node, name, a.i),
            None => Ok(default),
        }
    }

    pub(super) fn float(&self, name: &str, default: f32) -> Result<f32> {
        let f = self.get(name, attribute_type::FLOAT)?.map_or(default, |a| a.f);
        if f.is_finite() {
            Ok(f)
        } else {
            Err(unsupported_attr(self.node, format!("attribute `{name}` = {f}")))
        }
    }

    pub(super) fn ints(&self, name: &str) -> Result<Option<Vec<usize>>> {
        match self.get(name, attribute_type::INTS)? {
            Some(a) => Ok(Some(
                a.ints.iter().map(|&v| to_usize(self.node, name, v)).collect::<Result<_>>()?,
            )),
            None => Ok(None),
        }
    }

    /// A two-element attribute (`strides`, `dilations`), `(default, default)` when absent.
    pub(super) fn pair(&self, name: &str, default: usize) -> Result<(usize, usize)> {
        match self.ints(name)?.as_deref() {
            None => Ok((default, default)),
            Some(&[h, w]) => Ok((h, w)),
            Some(other) => {
                Err(unsupported_attr(self.node, format!("{name} = {other:?} is not 2-D")))
            }
        }
    }

    /// `pads = [top, left, bottom, right]`, which convkit supports when symmetric.
    pub(super) fn pads(&self) -> Result<(usize, usize)> {
        match self.ints("pads")?.as_deref() {
            None => Ok((0, 0)),
            Some(&[t, l, b, r]) if t == b && l == r => Ok((t, l)),
            Some(other) => Err(unsupported_attr(
                self.node,
                format!("pads = {other:?}: only symmetric 2-D padding [h, w, h, w] is supported"),
            )),
        }
    }

    pub(super) fn auto_pad_notset(&self) -> Result<()> {
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
