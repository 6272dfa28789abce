//! Batch normalization on the tape, on `convkit-conv`'s dedicated kernels: one pass of
//! statistics per channel, one affine pass, and a backward of one pass of sums and one
//! elementwise pass (see [`convkit_conv::batchnorm`]).

use convkit_conv::batchnorm::{
    ChannelStats, batch_norm2d_affine, batch_norm2d_apply, batch_norm2d_apply_relu,
    batch_norm2d_backward, batch_norm2d_relu_backward, batch_norm2d_stats,
};
use convkit_tensor::Tensor;

use crate::error::{AutogradError, Result};
use crate::tape::Var;

/// The batch statistics a training-mode [`Var::batch_norm2d`] normalized with.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Mean of each channel over `(n, h, w)` `[c]`.
    pub mean: Tensor,
    /// Biased variance of each channel `[c]` (divided by `n·h·w`).
    pub var: Tensor,
    /// Values per channel, `n·h·w` (for the unbiased running variance).
    pub count: usize,
}

fn dims4(op: &'static str, x: &Var, c: usize) -> Result<[usize; 4]> {
    match *x.dims() {
        [n, xc, h, w] if xc == c => Ok([n, xc, h, w]),
        _ => Err(AutogradError::InvalidArgument {
            op,
            msg: format!("input {:?} is not [batch, {c}, height, width]", x.dims()),
        }),
    }
}

/// Checks that each named per-channel tensor holds `c` values.
fn check_channels(op: &'static str, c: usize, tensors: &[(&str, &Tensor)]) -> Result<()> {
    for (what, t) in tensors {
        if t.numel() != c {
            return Err(AutogradError::InvalidArgument {
                op,
                msg: format!("{what} has shape {:?}, expected [{c}] like the weight", t.dims()),
            });
        }
    }
    Ok(())
}

impl Var {
    /// Training-mode batch normalization of `self` `[n, c, h, w]` with the batch's own
    /// statistics: `y = (x − μ)/√(σ² + ε)·γ + β` per channel, `gamma` and `beta` `[c]`.
    /// Returns the output and the statistics used (for the running averages).
    pub fn batch_norm2d(&self, gamma: &Var, beta: &Var, eps: f32) -> Result<(Var, BatchStats)> {
        self.batch_norm2d_with(gamma, beta, eps, false)
    }

    /// [`Var::batch_norm2d`] followed by [`Var::relu`], as one op: the ReLU is applied in the
    /// batch norm's pass and its gradient mask in the batch norm's backward passes, so the
    /// activations are not read and written again. Values and gradients are bit for bit
    /// those of the two ops.
    pub fn batch_norm2d_relu(
        &self,
        gamma: &Var,
        beta: &Var,
        eps: f32,
    ) -> Result<(Var, BatchStats)> {
        self.batch_norm2d_with(gamma, beta, eps, true)
    }

    fn batch_norm2d_with(
        &self,
        gamma: &Var,
        beta: &Var,
        eps: f32,
        relu: bool,
    ) -> Result<(Var, BatchStats)> {
        const OP: &str = "batch_norm2d";
        let c = gamma.value().numel();
        let dims = dims4(OP, self, c)?;
        check_channels(OP, c, &[("bias", beta.value())])?;
        let mut mean = vec![0f32; c];
        let mut var = vec![0f32; c];
        batch_norm2d_stats(dims, self.value().as_slice(), &mut mean, &mut var)?;
        let stats = BatchStats {
            mean: Tensor::from_vec(&[c], mean)?,
            var: Tensor::from_vec(&[c], var)?,
            count: dims[0] * dims[2] * dims[3],
        };
        let out = self.normalize(gamma, beta, (&stats.mean, &stats.var, eps), true, relu)?;
        Ok((out, stats))
    }

    /// Evaluation-mode batch normalization with fixed statistics `running_mean`,
    /// `running_var` `[c]`: a per-channel affine map, `y = x·γ/√(var + ε) + (β − mean·γ/√(var + ε))`.
    pub fn batch_norm2d_eval(
        &self,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Var> {
        self.batch_norm2d_eval_with(gamma, beta, running_mean, running_var, eps, false)
    }

    /// [`Var::batch_norm2d_eval`] followed by [`Var::relu`], as one op (see
    /// [`Var::batch_norm2d_relu`]).
    pub fn batch_norm2d_eval_relu(
        &self,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Var> {
        self.batch_norm2d_eval_with(gamma, beta, running_mean, running_var, eps, true)
    }

    fn batch_norm2d_eval_with(
        &self,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        relu: bool,
    ) -> Result<Var> {
        const OP: &str = "batch_norm2d";
        let c = gamma.value().numel();
        dims4(OP, self, c)?;
        check_channels(
            OP,
            c,
            &[("bias", beta.value()), ("running_mean", running_mean), ("running_var", running_var)],
        )?;
        self.normalize(gamma, beta, (running_mean, running_var, eps), false, relu)
    }

    /// `y = x·scale + shift` per channel with `scale = γ/√(var+ε)`, `shift = β − mean·scale`
    /// (the checked `[n, c, h, w]` input), then `max(0, y)` with `relu`, recorded with its
    /// backward rule: with `batch_stats`, `mean` and `var` are the batch's own and depend on
    /// `x`.
    fn normalize(
        &self,
        gamma: &Var,
        beta: &Var,
        (mean, var, eps): (&Tensor, &Tensor, f32),
        batch_stats: bool,
        relu: bool,
    ) -> Result<Var> {
        let d = self.dims();
        let dims = [d[0], d[1], d[2], d[3]];
        let (scale, shift) = batch_norm2d_affine(
            gamma.value().as_slice(),
            beta.value().as_slice(),
            mean.as_slice(),
            var.as_slice(),
            eps,
        );
        let mut y = convkit_tensor::buffer::take(self.value().numel());
        let apply = if relu { batch_norm2d_apply_relu } else { batch_norm2d_apply };
        apply(dims, self.value().as_slice(), &scale, &shift, &mut y)?;
        let value = Tensor::from_vec(&dims, y)?;
        let inputs = [self, gamma, beta];
        if !Var::any_requires_grad(&inputs) {
            return Var::untracked(&inputs, value);
        }
        let (x, g, mean, var) =
            (self.value().clone(), gamma.value().clone(), mean.clone(), var.clone());
        // The fused ReLU's output: its gradient mask (a shared buffer, not a copy).
        let out = relu.then(|| value.clone());
        let c = g.numel();
        Var::from_op(
            &inputs,
            value,
            Box::new(move |dy, needs| {
                let stats = ChannelStats { mean: mean.as_slice(), var: var.as_slice(), eps };
                let (dy, x, g) = (dy.as_slice(), x.as_slice(), g.as_slice());
                let grads = match &out {
                    Some(z) => batch_norm2d_relu_backward(
                        dims,
                        dy,
                        z.as_slice(),
                        x,
                        g,
                        stats,
                        batch_stats,
                        needs[0],
                    )?,
                    None => batch_norm2d_backward(dims, dy, x, g, stats, batch_stats, needs[0])?,
                };
                let input = grads.input.map(|v| Tensor::from_vec(&dims, v)).transpose()?;
                Ok(vec![
                    input,
                    needs[1].then(|| Tensor::from_vec(&[c], grads.gamma)).transpose()?,
                    needs[2].then(|| Tensor::from_vec(&[c], grads.beta)).transpose()?,
                ])
            }),
        )
    }
}
