//! Convolution and pooling on the tape, using `convkit-conv`'s kernels for both directions.
//!
//! The forward pass runs the algorithm chosen by `algo` (normally [`ConvAlgo::Auto`]); the
//! backward rule calls [`convkit_conv::api::conv2d_backward`] with the algorithm the forward
//! actually ran, for just the gradients that are needed — the first layer of a network, whose input is data, never computes `∂input`.
//! A convolution with a fused ReLU ([`Var::conv2d_relu`]) passes the ReLU's output to
//! [`convkit_conv::api::conv2d_relu_backward`], which masks the gradient as it reads it
//! instead of making a masked copy first.

use convkit_conv::api::{
    GradsWanted, avg_pool2d, avg_pool2d_backward, conv2d, conv2d_backward, conv2d_relu,
    conv2d_relu_backward, max_pool2d, max_pool2d_backward,
};
use convkit_conv::{Conv2dParams, ConvAlgo, PoolParams};

use crate::error::Result;
use crate::tape::Var;

impl Var {
    /// 2-D convolution of `self` `[n, c_in, h, w]` with `weight` `[c_out, c_in/groups, kh, kw]`
    /// and an optional `bias` `[c_out]` (see [`convkit_conv::api::conv2d`]).
    pub fn conv2d(
        &self,
        weight: &Var,
        bias: Option<&Var>,
        params: &Conv2dParams,
        algo: ConvAlgo,
    ) -> Result<Var> {
        self.conv2d_act(weight, bias, params, algo, false)
    }

    /// `self.conv2d(weight, bias, params, algo)?.relu()` as one node of the tape: the ReLU
    /// runs inside the convolution ([`convkit_conv::api::conv2d_relu`]), and the backward
    /// masks the incoming gradient with the output (`y > 0` exactly where the pre-activation
    /// is) as the convolution's backward reads it. Values and gradients are bit-identical to
    /// the two separate nodes; what is saved is one activation buffer and one pass over it in
    /// each direction.
    ///
    /// ```
    /// use convkit_autograd::Tape;
    /// use convkit_conv::{Conv2dParams, ConvAlgo};
    /// use convkit_tensor::Tensor;
    ///
    /// let tape = Tape::new();
    /// let x = tape.input(Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, -2.0, 3.0, -4.0])?);
    /// let w = tape.var(Tensor::from_vec(&[1, 1, 1, 1], vec![1.0])?);
    /// let y = x.conv2d_relu(&w, None, &Conv2dParams::default(), ConvAlgo::Auto)?;
    /// assert_eq!(y.value().as_slice(), &[1.0, 0.0, 3.0, 0.0]);
    /// // ∂Σy/∂w: the inputs where the output is positive.
    /// let grads = y.sum()?.backward()?;
    /// assert_eq!(grads.wrt(&w)?.as_slice(), &[4.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn conv2d_relu(
        &self,
        weight: &Var,
        bias: Option<&Var>,
        params: &Conv2dParams,
        algo: ConvAlgo,
    ) -> Result<Var> {
        self.conv2d_act(weight, bias, params, algo, true)
    }

    /// [`Var::conv2d`], followed by a ReLU in the same node when `relu`.
    fn conv2d_act(
        &self,
        weight: &Var,
        bias: Option<&Var>,
        params: &Conv2dParams,
        algo: ConvAlgo,
        relu: bool,
    ) -> Result<Var> {
        // The backward follows the algorithm the forward ran, not a new resolution of `algo`.
        // With `relu`, the kernel applies it (the rule of `Tensor::relu`: NaN stays NaN).
        let forward = if relu { conv2d_relu } else { conv2d };
        let (value, algo) =
            forward(self.value(), weight.value(), bias.map(Var::value), params, algo)?;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        if !Var::any_requires_grad(&inputs) {
            return Var::untracked(&inputs, value);
        }
        let (x, w, p) = (self.value().clone(), weight.value().clone(), *params);
        // The output, to mask the gradient by (a shared buffer, not a copy).
        let y = relu.then(|| value.clone());
        let has_bias = bias.is_some();
        Var::from_op(
            &inputs,
            value,
            Box::new(move |g, needs| {
                let wanted =
                    GradsWanted { input: needs[0], weight: needs[1], bias: has_bias && needs[2] };
                let grads = match &y {
                    // ReLU's backward (the gradient passes where the output is positive),
                    // applied by the convolution's backward as it reads the gradient.
                    Some(y) => conv2d_relu_backward(&x, &w, y, g, &p, wanted, algo)?,
                    None => conv2d_backward(&x, &w, g, &p, wanted, algo)?,
                };
                let mut out = vec![grads.input, grads.weight];
                if has_bias {
                    out.push(grads.bias);
                }
                Ok(out)
            }),
        )
    }

    /// Max pooling of `self` `[n, c, h, w]`; the gradient goes to each window's maximum.
    pub fn max_pool2d(&self, params: &PoolParams) -> Result<Var> {
        let pooled = max_pool2d(self.value(), params)?;
        if !self.requires_grad() {
            return Var::untracked(&[self], pooled.output);
        }
        let (indices, dims, p) = (Indices(pooled.indices), self.dims().to_vec(), *params);
        Var::from_op(
            &[self],
            pooled.output,
            Box::new(move |g, _| Ok(vec![Some(max_pool2d_backward(g, &indices.0, &dims, &p)?)])),
        )
    }

    /// Average pooling of `self` `[n, c, h, w]`; each window shares its gradient equally.
    pub fn avg_pool2d(&self, params: &PoolParams) -> Result<Var> {
        let value = avg_pool2d(self.value(), params)?;
        if !self.requires_grad() {
            return Var::untracked(&[self], value);
        }
        let (dims, p) = (self.dims().to_vec(), *params);
        Var::from_op(
            &[self],
            value,
            Box::new(move |g, _| Ok(vec![Some(avg_pool2d_backward(g, &dims, &p)?)])),
        )
    }
}

/// Max pooling's argmax positions, handed back to the buffer cache when the tape drops them
/// (the next step's pooling takes them again instead of page-faulting a fresh buffer).
struct Indices(Vec<usize>);

impl Drop for Indices {
    fn drop(&mut self) {
        convkit_tensor::buffer::recycle_indices(std::mem::take(&mut self.0));
    }
}
