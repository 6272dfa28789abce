//! The layer for one node: each supported op's attributes and constant inputs become a
//! convkit layer, along with the dims it outputs.

use convkit_autograd::Param;
use convkit_nn::{
    AvgPool2d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dParams, Dropout, Flatten,
    GlobalAvgPool2d, Linear, MaxPool2d, Module, PoolParams, ReLU, Sigmoid, Tanh,
};
use convkit_tensor::Tensor;

use super::attrs::Attrs;
use super::graph::Builder;
use super::nodes::{first_output, scope_name, single_output, unsupported_attr, unsupported_op};
use super::tensors::{to_ints, to_tensor};
use super::{Dims, Named};
use crate::error::Result;
use crate::proto::NodeProto;

impl<'g> Builder<'g> {
    /// Builds the layer for node `i` applied to `cur`; `None` for nodes that vanish
    /// (identity, or a bias `Add` fused into the `MatMul` before it). Marks every node used.
    pub(super) fn layer(
        &mut self,
        i: usize,
        dims: &Dims,
    ) -> Result<(Option<Named>, &'g str, Dims)> {
        let n = self.node(i);
        let op = n.op_type.as_str();
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(unsupported_op(n));
        }
        let a = Attrs::new(n)?;
        let mut out = first_output(n)?;
        let (name, layer, out_dims): (String, Box<dyn Module>, Dims) = match op {
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
                let layer: Box<dyn Module> =
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
                let layer: Box<dyn Module> = match op {
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
