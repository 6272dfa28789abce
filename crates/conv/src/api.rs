//! The [`Tensor`] API: shape checks, allocation of results, then the slice kernels.
//!
//! Every function checks that its operands are rank 4 (NCHW activations, `[c_out, c_in/groups,
//! kh, kw]` weights) and names the shapes in its errors:
//!
//! ```
//! use convkit_conv::{ConvAlgo, Conv2dParams, api};
//! use convkit_tensor::Tensor;
//! let x = Tensor::from_vec(&[1, 3, 8, 8], vec![0.0; 192]).unwrap();
//! let w = Tensor::from_vec(&[4, 3, 3], vec![0.0; 36]).unwrap();
//! let e = api::conv2d(&x, &w, None, &Conv2dParams::default(), ConvAlgo::Auto).unwrap_err();
//! assert_eq!(e.to_string(), "conv2d: weight must be rank 4 [c_out, c_in/groups, kh, kw], got [4, 3, 3]");
//! ```

use convkit_tensor::{Tensor, buffer};

use crate::algo::{
    ConvAlgo, conv2d_backward as backward_slices, conv2d_forward,
    conv2d_relu_backward as relu_backward_slices, conv2d_relu_forward,
};
use crate::error::{ConvError, Result};
use crate::linear::{LinearDims, linear_backward as linear_backward_slices, linear_forward};
use crate::params::{
    BackwardInputs, Conv2dParams, ConvGeometry, GradBuffers, check_bias, layer_dims, rank,
};
use crate::pool::{
    PoolGeometry, PoolParams, avg_pool2d as avg_slices, avg_pool2d_backward as avg_back_slices,
    max_pool2d as max_slices, max_pool2d_backward as max_back_slices,
};

fn geometry(
    op: &'static str,
    input: &Tensor,
    weight: &Tensor,
    params: &Conv2dParams,
) -> Result<ConvGeometry> {
    let x = rank(op, "input", "[n, c_in, h, w]", input.dims())?;
    let w = rank(op, "weight", "[c_out, c_in/groups, kh, kw]", weight.dims())?;
    ConvGeometry::new(x, w, *params)
}

/// 2-D convolution of `input [n, c_in, h, w]` with `weight [c_out, c_in/groups, kh, kw]` and
/// an optional `bias [c_out]`; returns `[n, c_out, oh, ow]` and the algorithm that ran
/// (`algo` resolved as in [`conv2d_forward`], never `Auto`), which the backward pass should be
/// given so that it follows the forward's choice.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: &Conv2dParams,
    algo: ConvAlgo,
) -> Result<(Tensor, ConvAlgo)> {
    forward("conv2d", input, weight, bias, params, algo, false)
}

/// [`conv2d`] followed by a ReLU (`v < 0 → 0`, NaN and `−0.0` kept, as [`Tensor::relu`]):
/// bit for bit `conv2d(…)?.0.relu()`, with the ReLU applied by the direct kernel to each work
/// item's outputs while they are in cache (see [`conv2d_relu_forward`]).
///
/// ```
/// use convkit_conv::api::conv2d_relu;
/// use convkit_conv::{ConvAlgo, Conv2dParams};
/// use convkit_tensor::Tensor;
///
/// # fn main() -> convkit_conv::Result<()> {
/// let x = Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, -2.0, 3.0, -4.0])?;
/// let w = Tensor::from_vec(&[1, 1, 1, 1], vec![2.0])?;
/// let (y, _ran) = conv2d_relu(&x, &w, None, &Conv2dParams::default(), ConvAlgo::Auto)?;
/// assert_eq!(y.as_slice(), &[2.0, 0.0, 6.0, 0.0]);
/// # Ok(())
/// # }
/// ```
pub fn conv2d_relu(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: &Conv2dParams,
    algo: ConvAlgo,
) -> Result<(Tensor, ConvAlgo)> {
    forward("conv2d_relu", input, weight, bias, params, algo, true)
}

/// [`conv2d`], with a ReLU after it when `relu`.
fn forward(
    op: &'static str,
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: &Conv2dParams,
    algo: ConvAlgo,
    relu: bool,
) -> Result<(Tensor, ConvAlgo)> {
    let g = geometry(op, input, weight, params)?;
    if let Some(b) = bias {
        check_bias(op, b.dims(), &g.weight_dims())?;
    }
    let mut out = buffer::take(g.output_len());
    let run = if relu { conv2d_relu_forward } else { conv2d_forward };
    let ran =
        run(&g, input.as_slice(), weight.as_slice(), bias.map(Tensor::as_slice), &mut out, algo)?;
    Ok((Tensor::from_vec(&g.output_dims(), out)?, ran))
}

/// Which gradients [`conv2d_backward`] (or [`linear_backward`]) computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GradsWanted {
    /// `∂L/∂input`.
    pub input: bool,
    /// `∂L/∂weight`.
    pub weight: bool,
    /// `∂L/∂bias`.
    pub bias: bool,
}

impl GradsWanted {
    /// All three gradients.
    pub const ALL: GradsWanted = GradsWanted { input: true, weight: true, bias: true };
}

impl Default for GradsWanted {
    fn default() -> Self {
        Self::ALL
    }
}

/// The gradients of a convolution (or of a dense layer: [`linear_backward`]); each is `None`
/// unless it was asked for.
#[derive(Debug, Clone)]
pub struct Conv2dGrads {
    /// `∂L/∂input`, `[n, c_in, h, w]` (`[batch, in]` for a dense layer).
    pub input: Option<Tensor>,
    /// `∂L/∂weight`, `[c_out, c_in/groups, kh, kw]` (`[out, in]`).
    pub weight: Option<Tensor>,
    /// `∂L/∂bias`, `[c_out]`.
    pub bias: Option<Tensor>,
}

/// Backward of [`conv2d`]: given `grad_output = ∂L/∂out` of shape `[n, c_out, oh, ow]`,
/// computes the gradients selected by `wanted`.
pub fn conv2d_backward(
    input: &Tensor,
    weight: &Tensor,
    grad_output: &Tensor,
    params: &Conv2dParams,
    wanted: GradsWanted,
    algo: ConvAlgo,
) -> Result<Conv2dGrads> {
    backward("conv2d_backward", input, weight, None, grad_output, params, wanted, algo)
}

/// Backward of [`conv2d`] followed by a ReLU: `relu_output` is the ReLU's output (the
/// convolution's output with negatives set to zero) and `grad_output` the gradient with
/// respect to it, both `[n, c_out, oh, ow]`; the gradient passes back where `relu_output` is
/// above zero. Bit-identical to masking `grad_output` and calling [`conv2d_backward`]; the
/// direct kernel masks each image as it reads it (see
/// [`conv2d_relu_backward`](crate::conv2d_relu_backward)).
///
/// ```
/// use convkit_conv::api::{conv2d, conv2d_relu_backward};
/// use convkit_conv::{ConvAlgo, Conv2dParams, GradsWanted};
/// use convkit_tensor::Tensor;
///
/// # fn main() -> convkit_conv::Result<()> {
/// let x = Tensor::from_vec(&[1, 1, 3, 3], (0..9).map(|v| v as f32 - 4.0).collect())?;
/// let w = Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, 0.5, -0.5, 1.0])?;
/// let p = Conv2dParams::default();
/// let (y, ran) = conv2d(&x, &w, None, &p, ConvAlgo::Auto)?;
/// let relu = y.relu();
/// let dy = Tensor::ones(relu.dims());
/// let grads = conv2d_relu_backward(&x, &w, &relu, &dy, &p, GradsWanted::ALL, ran)?;
/// // Only outputs above zero pass their gradient: the bias gradient counts them.
/// let positive = relu.as_slice().iter().filter(|&&v| v > 0.0).count();
/// assert_eq!(grads.bias.unwrap().as_slice(), &[positive as f32]);
/// # Ok(())
/// # }
/// ```
pub fn conv2d_relu_backward(
    input: &Tensor,
    weight: &Tensor,
    relu_output: &Tensor,
    grad_output: &Tensor,
    params: &Conv2dParams,
    wanted: GradsWanted,
    algo: ConvAlgo,
) -> Result<Conv2dGrads> {
    let op = "conv2d_relu_backward";
    backward(op, input, weight, Some(relu_output), grad_output, params, wanted, algo)
}

/// [`conv2d_backward`], masked by `relu_output` when given.
#[allow(clippy::too_many_arguments)]
fn backward(
    op: &'static str,
    input: &Tensor,
    weight: &Tensor,
    relu_output: Option<&Tensor>,
    grad_output: &Tensor,
    params: &Conv2dParams,
    wanted: GradsWanted,
    algo: ConvAlgo,
) -> Result<Conv2dGrads> {
    let g = geometry(op, input, weight, params)?;
    for (what, t) in [("grad_output", Some(grad_output)), ("relu_output", relu_output)] {
        let Some(t) = t else { continue };
        if t.dims() != g.output_dims() {
            return Err(ConvError::ShapeMismatch {
                op,
                msg: format!(
                    "{what} {:?} must be {:?}, the output of input {:?} and weight {:?}",
                    t.dims(),
                    g.output_dims(),
                    g.input_dims(),
                    g.weight_dims()
                ),
            });
        }
    }
    let x = BackwardInputs {
        input: input.as_slice(),
        weight: weight.as_slice(),
        grad_output: grad_output.as_slice(),
    };
    let dims = [g.input_dims().to_vec(), g.weight_dims().to_vec(), vec![g.c_out]];
    with_grads(wanted, dims, |grads| {
        match relu_output {
            Some(y) => relu_backward_slices(&g, x, y.as_slice(), grads, algo)?,
            None => backward_slices(&g, x, grads, algo)?,
        };
        Ok(())
    })
}

/// Allocates the gradients `wanted` asks for, of shapes `dims` (input, weight, bias), lets
/// `fill` write them, and returns them as tensors.
fn with_grads(
    wanted: GradsWanted,
    dims: [Vec<usize>; 3],
    fill: impl FnOnce(GradBuffers<'_>) -> Result<()>,
) -> Result<Conv2dGrads> {
    let [di, dw, db] = dims;
    let buf = |want: bool, d: &[usize]| want.then(|| buffer::take(d.iter().product()));
    let mut gi = buf(wanted.input, &di);
    let mut gw = buf(wanted.weight, &dw);
    let mut gb = buf(wanted.bias, &db);
    fill(GradBuffers {
        input: gi.as_deref_mut(),
        weight: gw.as_deref_mut(),
        bias: gb.as_deref_mut(),
    })?;
    let wrap = |v: Option<Vec<f32>>, d: &[usize]| v.map(|v| Tensor::from_vec(d, v)).transpose();
    Ok(Conv2dGrads { input: wrap(gi, &di)?, weight: wrap(gw, &dw)?, bias: wrap(gb, &db)? })
}

/// The sizes of a dense layer with `weight` `[out, in]` (and `bias` `[out]`) on `input`
/// `[batch, in]`, shapes named in the errors.
fn linear_dims(
    op: &'static str,
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<LinearDims> {
    let [out, inp] = layer_dims(op, "[out, in]", weight.dims(), bias.map(Tensor::dims))?;
    match *input.dims() {
        [batch, i] if i == inp => Ok(LinearDims { batch, inp, out }),
        _ => Err(ConvError::ShapeMismatch {
            op,
            msg: format!(
                "input {:?} must be [batch, {inp}] for weight {:?}",
                input.dims(),
                [out, inp]
            ),
        }),
    }
}

/// A dense layer: `input [batch, in] · weightᵀ + bias`, with `weight` `[out, in]` (PyTorch's
/// layout) and `bias` `[out]`; returns `[batch, out]`. Runs
/// [`linear_forward`].
///
/// ```
/// use convkit_conv::api::linear;
/// use convkit_tensor::Tensor;
///
/// # fn main() -> convkit_conv::Result<()> {
/// let x = Tensor::from_vec(&[1, 2], vec![1.0, 2.0])?;
/// let w = Tensor::from_vec(&[3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0])?;
/// assert_eq!(linear(&x, &w, None)?.as_slice(), &[1.0, 2.0, 3.0]);
/// let e = linear(&Tensor::ones(&[2, 3]), &w, None).unwrap_err();
/// assert_eq!(e.to_string(), "linear: input [2, 3] must be [batch, 2] for weight [3, 2]");
/// # Ok(())
/// # }
/// ```
pub fn linear(input: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    let d = linear_dims(OP, input, weight, bias)?;
    let mut y = buffer::take(d.batch * d.out);
    let (x, w) = (input.as_slice(), weight.as_slice());
    linear_forward(d, x, w, bias.map(Tensor::as_slice), &mut y)?;
    Ok(Tensor::from_vec(&[d.batch, d.out], y)?)
}

/// Backward of [`linear`]: given `grad_output = ∂L/∂out` `[batch, out]`, the gradients
/// selected by `wanted` (see [`linear_backward`](crate::linear_backward)).
pub fn linear_backward(
    input: &Tensor,
    weight: &Tensor,
    grad_output: &Tensor,
    wanted: GradsWanted,
) -> Result<Conv2dGrads> {
    const OP: &str = "linear_backward";
    let d = linear_dims(OP, input, weight, None)?;
    if grad_output.dims() != [d.batch, d.out] {
        return Err(ConvError::ShapeMismatch {
            op: OP,
            msg: format!(
                "grad_output {:?} must be {:?}, the output of input {:?} and weight {:?}",
                grad_output.dims(),
                [d.batch, d.out],
                input.dims(),
                weight.dims()
            ),
        });
    }
    let (x, w) = (input.as_slice(), weight.as_slice());
    let dims = [vec![d.batch, d.inp], vec![d.out, d.inp], vec![d.out]];
    with_grads(wanted, dims, |grads| linear_backward_slices(d, x, w, grad_output.as_slice(), grads))
}

/// The result of [`max_pool2d`]: the pooled tensor and, per output element, the flat index of
/// its maximum within its input plane (what [`max_pool2d_backward`] needs).
#[derive(Debug, Clone)]
pub struct MaxPoolOutput {
    /// `[n, c, oh, ow]`.
    pub output: Tensor,
    /// `iy·w + ix` of each maximum, in output order.
    pub indices: Vec<usize>,
}

fn pool_geometry(
    op: &'static str,
    input_dims: &[usize],
    params: &PoolParams,
) -> Result<PoolGeometry> {
    PoolGeometry::new(op, rank(op, "input", "[n, c, h, w]", input_dims)?, *params)
}

fn check_grad_output(op: &'static str, grad_output: &Tensor, g: &PoolGeometry) -> Result<()> {
    if grad_output.dims() == g.output_dims() {
        Ok(())
    } else {
        Err(ConvError::ShapeMismatch {
            op,
            msg: format!(
                "grad_output {:?} must be {:?}, the pooled size of input {:?}",
                grad_output.dims(),
                g.output_dims(),
                g.input_dims()
            ),
        })
    }
}

/// Max pooling of `input [n, c, h, w]`.
pub fn max_pool2d(input: &Tensor, params: &PoolParams) -> Result<MaxPoolOutput> {
    let g = pool_geometry("max_pool2d", input.dims(), params)?;
    let mut out = buffer::take(g.output_len());
    let mut indices = buffer::take_indices(g.output_len());
    max_slices(&g, input.as_slice(), &mut out, &mut indices)?;
    Ok(MaxPoolOutput { output: Tensor::from_vec(&g.output_dims(), out)?, indices })
}

/// Backward of [`max_pool2d`] for an input of dims `input_dims`.
pub fn max_pool2d_backward(
    grad_output: &Tensor,
    indices: &[usize],
    input_dims: &[usize],
    params: &PoolParams,
) -> Result<Tensor> {
    const OP: &str = "max_pool2d_backward";
    let g = pool_geometry(OP, input_dims, params)?;
    check_grad_output(OP, grad_output, &g)?;
    let mut gx = buffer::take(g.input_len());
    max_back_slices(&g, grad_output.as_slice(), indices, &mut gx)?;
    Ok(Tensor::from_vec(&g.input_dims(), gx)?)
}

/// Average pooling of `input [n, c, h, w]`.
pub fn avg_pool2d(input: &Tensor, params: &PoolParams) -> Result<Tensor> {
    let g = pool_geometry("avg_pool2d", input.dims(), params)?;
    let mut out = buffer::take(g.output_len());
    avg_slices(&g, input.as_slice(), &mut out)?;
    Ok(Tensor::from_vec(&g.output_dims(), out)?)
}

/// Backward of [`avg_pool2d`] for an input of dims `input_dims`.
pub fn avg_pool2d_backward(
    grad_output: &Tensor,
    input_dims: &[usize],
    params: &PoolParams,
) -> Result<Tensor> {
    const OP: &str = "avg_pool2d_backward";
    let g = pool_geometry(OP, input_dims, params)?;
    check_grad_output(OP, grad_output, &g)?;
    let mut gx = buffer::take(g.input_len());
    avg_back_slices(&g, grad_output.as_slice(), &mut gx)?;
    Ok(Tensor::from_vec(&g.input_dims(), gx)?)
}
