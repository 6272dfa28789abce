//! Differentiable operations on [`Var`]: each computes its value with `convkit-tensor` and
//! records the rule for its gradient.
//!
//! Every rule receives `g = ∂L/∂out` and returns `∂L/∂input` for each input that needs one.
//! For broadcasting ops the gradient of an operand is summed back to its own shape
//! ([`Tensor::sum_to`]).

use convkit_conv::api::{GradsWanted, linear, linear_backward};
use convkit_tensor::{Rng, Tensor, matmul_t};

use crate::error::{AutogradError, Result};
use crate::tape::{BackwardFn, Var};

/// Records `value` as the output of an op on `inputs`, building the backward rule only when
/// some input is on a tape (so inference pays nothing for it).
fn record(inputs: &[&Var], value: Tensor, rule: impl FnOnce() -> BackwardFn) -> Result<Var> {
    if Var::any_requires_grad(inputs) {
        Var::from_op(inputs, value, rule())
    } else {
        Var::untracked(inputs, value)
    }
}

/// Gradient rule of an op with one input.
fn unary(f: impl FnOnce(&Tensor) -> Result<Tensor> + 'static) -> BackwardFn {
    Box::new(move |g, _| Ok(vec![Some(f(g)?)]))
}

/// Gradient rule of an op with two inputs; each closure runs only if that input needs it.
fn binary(
    fa: impl FnOnce(&Tensor) -> Result<Tensor> + 'static,
    fb: impl FnOnce(&Tensor) -> Result<Tensor> + 'static,
) -> BackwardFn {
    Box::new(move |g, needs| {
        let ga = if needs[0] { Some(fa(g)?) } else { None };
        let gb = if needs[1] { Some(fb(g)?) } else { None };
        Ok(vec![ga, gb])
    })
}

impl Var {
    /// `self + rhs`, broadcasting (NumPy rules).
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let value = self.value().add(rhs.value())?;
        let (da, db) = (self.dims().to_vec(), rhs.dims().to_vec());
        record(&[self, rhs], value, || {
            binary(move |g| Ok(g.sum_to(&da)?), move |g| Ok(g.sum_to(&db)?))
        })
    }

    /// `relu(self + rhs)` as one op (a residual block's sum and its ReLU): one pass forward
    /// and one backward instead of two each. Values and gradients are bit for bit those of
    /// `self.add(rhs)?.relu()`; operands of different dims take that path.
    pub fn add_relu(&self, rhs: &Var) -> Result<Var> {
        if self.dims() != rhs.dims() {
            return Ok(self.add(rhs)?.relu());
        }
        let value = self.value().zip_map(rhs.value(), |a, b| {
            let s = a + b;
            if s < 0.0 { 0.0 } else { s }
        })?;
        record(&[self, rhs], value.clone(), || {
            // The output is above zero exactly where the sum is: the ReLU's gradient mask.
            Box::new(move |g, needs| {
                let masked = g.zip_map(&value, |g, z| if z > 0.0 { g } else { 0.0 })?;
                Ok(vec![needs[0].then(|| masked.clone()), needs[1].then_some(masked)])
            })
        })
    }

    /// `self − rhs`, broadcasting.
    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let value = self.value().sub(rhs.value())?;
        let (da, db) = (self.dims().to_vec(), rhs.dims().to_vec());
        record(&[self, rhs], value, || {
            binary(move |g| Ok(g.sum_to(&da)?), move |g| Ok(g.neg().sum_to(&db)?))
        })
    }

    /// `self · rhs` elementwise, broadcasting.
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let value = self.value().mul(rhs.value())?;
        record(&[self, rhs], value, || {
            let (a, b) = (self.value().clone(), rhs.value().clone());
            let (da, db) = (a.dims().to_vec(), b.dims().to_vec());
            binary(move |g| Ok(g.mul(&b)?.sum_to(&da)?), move |g| Ok(g.mul(&a)?.sum_to(&db)?))
        })
    }

    /// `self / rhs` elementwise, broadcasting.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let value = self.value().div(rhs.value())?;
        record(&[self, rhs], value.clone(), || {
            let b = rhs.value().clone();
            let b2 = b.clone();
            let (da, db) = (self.dims().to_vec(), rhs.dims().to_vec());
            // ∂(a/b)/∂b = −(a/b)/b = −out/b.
            binary(
                move |g| Ok(g.div(&b)?.sum_to(&da)?),
                move |g| Ok(g.mul(&value)?.div(&b2)?.neg().sum_to(&db)?),
            )
        })
    }

    /// `self + c`.
    pub fn add_scalar(&self, c: f32) -> Var {
        let value = self.value().add_scalar(c);
        self.record_infallible(value, || unary(|g| Ok(g.clone())))
    }

    /// `self · c`.
    pub fn mul_scalar(&self, c: f32) -> Var {
        let value = self.value().mul_scalar(c);
        self.record_infallible(value, || unary(move |g| Ok(g.mul_scalar(c))))
    }

    /// `−self`.
    pub fn neg(&self) -> Var {
        self.mul_scalar(-1.0)
    }

    /// Records a one-input op (which cannot mix tapes, so cannot fail).
    fn record_infallible(&self, value: Tensor, rule: impl FnOnce() -> BackwardFn) -> Var {
        if self.requires_grad() { self.record_unary(value, rule()) } else { self.with_value(value) }
    }

    /// Matrix product `self · rhs` (2-D, or batched 3-D; see [`convkit_tensor::matmul_t`]).
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        self.matmul_t(false, rhs, false)
    }

    /// `op(self) · op(rhs)`, where `op` transposes the last two axes when its flag is set.
    ///
    /// With `C = A'·B'` (`A' = op(A)`, `B' = op(B)`): `∂A' = G·B'ᵀ` and `∂B' = A'ᵀ·G`, each
    /// transposed back when its operand was transposed — all through the strides of
    /// `matmul_t`, without copies. A 2-D operand shared by a batch gets the sum over the batch.
    pub fn matmul_t(&self, trans_a: bool, rhs: &Var, trans_b: bool) -> Result<Var> {
        let value = matmul_t(self.value(), trans_a, rhs.value(), trans_b)?;
        record(&[self, rhs], value, || {
            let (a, b) = (self.value().clone(), rhs.value().clone());
            let (a2, b2) = (a.clone(), b.clone());
            binary(
                move |g| {
                    let da = if trans_a {
                        matmul_t(&b, trans_b, g, true)?
                    } else {
                        matmul_t(g, false, &b, !trans_b)?
                    };
                    reduce_batch(da, a.dims())
                },
                move |g| {
                    let db = if trans_b {
                        matmul_t(g, true, &a2, trans_a)?
                    } else {
                        matmul_t(&a2, !trans_a, g, false)?
                    };
                    reduce_batch(db, b2.dims())
                },
            )
        })
    }

    /// A fully-connected layer: `self · wᵀ + b`, with `self` `[batch, in]`, `w` `[out, in]`
    /// (PyTorch's layout) and `b` `[out]`, as one node: both directions run on
    /// `convkit-conv`'s dense-layer kernels ([`convkit_conv::api::linear`]).
    ///
    /// ```
    /// use convkit_autograd::{Tape, Var};
    /// use convkit_tensor::Tensor;
    ///
    /// # fn main() -> convkit_autograd::Result<()> {
    /// let tape = Tape::new();
    /// let x = tape.var(Tensor::from_vec(&[1, 2], vec![1.0, 2.0])?);
    /// let w = tape.var(Tensor::from_vec(&[1, 2], vec![3.0, 4.0])?);
    /// let b = tape.var(Tensor::from_vec(&[1], vec![0.5])?);
    /// let y = x.linear(&w, Some(&b))?;
    /// assert_eq!(y.value().as_slice(), &[11.5]);
    /// let grads = y.sum()?.backward()?;
    /// assert_eq!(grads.wrt(&w)?.as_slice(), &[1.0, 2.0]);
    /// assert_eq!(grads.wrt(&x)?.as_slice(), &[3.0, 4.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn linear(&self, w: &Var, b: Option<&Var>) -> Result<Var> {
        let value = linear(self.value(), w.value(), b.map(Var::value))?;
        let mut inputs = vec![self, w];
        inputs.extend(b);
        let has_bias = b.is_some();
        record(&inputs, value, || {
            let (x, w) = (self.value().clone(), w.value().clone());
            Box::new(move |g, needs| {
                let wanted =
                    GradsWanted { input: needs[0], weight: needs[1], bias: has_bias && needs[2] };
                let grads = linear_backward(&x, &w, g, wanted)?;
                let mut out = vec![grads.input, grads.weight];
                if has_bias {
                    out.push(grads.bias);
                }
                Ok(out)
            })
        })
    }

    /// The same data with new dims.
    pub fn reshape(&self, dims: &[usize]) -> Result<Var> {
        let value = self.value().reshape(dims)?;
        let orig = self.dims().to_vec();
        record(&[self], value, || unary(move |g| Ok(g.reshape(&orig)?)))
    }

    /// Flattens axes `start..=end` into one (see [`Tensor::flatten`]).
    pub fn flatten(&self, start: usize, end: usize) -> Result<Var> {
        let value = self.value().flatten(start, end)?;
        let orig = self.dims().to_vec();
        record(&[self], value, || unary(move |g| Ok(g.reshape(&orig)?)))
    }

    /// Reorders the axes (materialized); the gradient is permuted back.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let value = self.value().permute(perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        record(&[self], value, || unary(move |g| Ok(g.permute(&inverse)?)))
    }

    /// Sum of all elements, as a one-element tensor of dims `[]`.
    pub fn sum(&self) -> Result<Var> {
        let value = Tensor::scalar(self.value().sum());
        let dims = self.dims().to_vec();
        record(&[self], value, || unary(move |g| Ok(Tensor::full(&dims, g.item()?))))
    }

    /// Mean of all elements, as a one-element tensor of dims `[]`.
    pub fn mean(&self) -> Result<Var> {
        let n = self.value().numel().max(1) as f32;
        Ok(self.sum()?.mul_scalar(1.0 / n))
    }

    /// Sum along `axis` (kept with size 1 when `keepdim`).
    pub fn sum_axis(&self, axis: usize, keepdim: bool) -> Result<Var> {
        let value = self.value().sum_axis(axis, keepdim)?;
        let dims = self.dims().to_vec();
        record(&[self], value, || unary(move |g| expand_axis(g, &dims, axis)))
    }

    /// Mean along `axis` (kept with size 1 when `keepdim`).
    pub fn mean_axis(&self, axis: usize, keepdim: bool) -> Result<Var> {
        let n = self.value().dim(axis)?.max(1) as f32;
        Ok(self.sum_axis(axis, keepdim)?.mul_scalar(1.0 / n))
    }

    /// `max(x, 0)`; the gradient passes where `x > 0`.
    pub fn relu(&self) -> Var {
        let value = self.value().relu();
        self.record_infallible(value, || {
            let x = self.value().clone();
            unary(move |g| Ok(g.zip_map(&x, |g, x| if x > 0.0 { g } else { 0.0 })?))
        })
    }

    /// `tanh x`; `∂ = 1 − y²`.
    pub fn tanh(&self) -> Var {
        let y = self.value().tanh();
        self.record_infallible(y.clone(), || {
            unary(move |g| Ok(g.zip_map(&y, |g, y| g * (1.0 - y * y))?))
        })
    }

    /// `1 / (1 + e^−x)`; `∂ = y(1 − y)`.
    pub fn sigmoid(&self) -> Var {
        let y = self.value().sigmoid();
        self.record_infallible(y.clone(), || {
            unary(move |g| Ok(g.zip_map(&y, |g, y| g * y * (1.0 - y))?))
        })
    }

    /// `e^x`; `∂ = y`.
    pub fn exp(&self) -> Var {
        let y = self.value().exp();
        self.record_infallible(y.clone(), || unary(move |g| Ok(g.mul(&y)?)))
    }

    /// `√x`; `∂ = 1/(2y)`.
    pub fn sqrt(&self) -> Var {
        let y = self.value().sqrt();
        self.record_infallible(y.clone(), || unary(move |g| Ok(g.zip_map(&y, |g, y| g * 0.5 / y)?)))
    }

    /// `ln x`; `∂ = 1/x`.
    pub fn ln(&self) -> Var {
        let y = self.value().ln();
        self.record_infallible(y, || {
            let x = self.value().clone();
            unary(move |g| Ok(g.div(&x)?))
        })
    }

    /// Log-softmax along `axis` (stable). `∂x = g − softmax(x)·Σ g` along the axis.
    pub fn log_softmax(&self, axis: usize) -> Result<Var> {
        let y = self.value().log_softmax(axis)?;
        record(&[self], y.clone(), || {
            unary(move |g| {
                let p = y.exp();
                let s = g.sum_axis(axis, true)?;
                Ok(g.sub(&p.mul(&s)?)?)
            })
        })
    }

    /// Softmax along `axis` (stable). `∂x = y·(g − Σ g·y)` along the axis.
    pub fn softmax(&self, axis: usize) -> Result<Var> {
        let y = self.value().softmax(axis)?;
        record(&[self], y.clone(), || {
            unary(move |g| {
                let s = g.mul(&y)?.sum_axis(axis, true)?;
                Ok(y.mul(&g.sub(&s)?)?)
            })
        })
    }

    /// Mean cross-entropy of logits `[batch, classes]` against integer labels, computed from
    /// the log-softmax (stable for any logits). `∂logits = (softmax − onehot) / batch`.
    pub fn cross_entropy(&self, labels: &[usize]) -> Result<Var> {
        const OP: &str = "cross_entropy";
        let [n, c] = *self.dims() else {
            return Err(AutogradError::InvalidArgument {
                op: OP,
                msg: format!("logits must be [batch, classes], got {:?}", self.dims()),
            });
        };
        if labels.len() != n {
            return Err(AutogradError::InvalidArgument {
                op: OP,
                msg: format!("{} labels for logits {:?}", labels.len(), self.dims()),
            });
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l >= c) {
            return Err(AutogradError::InvalidArgument {
                op: OP,
                msg: format!("label {l} at index {i} is out of range for {c} classes"),
            });
        }
        if n == 0 {
            return Err(AutogradError::InvalidArgument {
                op: OP,
                msg: "empty batch: the mean of no losses is undefined".into(),
            });
        }
        let logp = self.value().log_softmax(1)?;
        let lp = logp.as_slice();
        let total: f64 = labels.iter().enumerate().map(|(i, &l)| -f64::from(lp[i * c + l])).sum();
        let value = Tensor::scalar((total / n as f64) as f32);
        let labels = labels.to_vec();
        record(&[self], value, || {
            unary(move |g| {
                let scale = g.item()? / n as f32;
                let mut d = logp.exp();
                let dd = d.data_mut();
                for (i, &l) in labels.iter().enumerate() {
                    dd[i * c + l] -= 1.0;
                }
                Ok(d.mul_scalar(scale))
            })
        })
    }

    /// Mean squared error `mean((self − target)²)`; shapes must be equal.
    pub fn mse(&self, target: &Var) -> Result<Var> {
        if self.dims() != target.dims() {
            return Err(convkit_tensor::TensorError::ShapeMismatch {
                op: "mse",
                lhs: self.dims().to_vec(),
                rhs: target.dims().to_vec(),
                msg: "prediction and target must have the same shape".into(),
            }
            .into());
        }
        let diff = self.sub(target)?;
        diff.mul(&diff)?.mean()
    }

    /// Inverted dropout: in training, zeroes each element with probability `p` (drawn from
    /// `rng`) and scales the others by `1/(1−p)`; in evaluation (`train == false`), identity.
    pub fn dropout(&self, p: f32, train: bool, rng: &mut Rng) -> Result<Var> {
        if !(0.0..1.0).contains(&p) {
            return Err(AutogradError::InvalidArgument {
                op: "dropout",
                msg: format!("probability must be in [0, 1), got {p}"),
            });
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        let scale = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..self.value().numel())
            .map(|_| if rng.next_f32() < p { 0.0 } else { scale })
            .collect();
        let mask = Tensor::from_vec(self.dims(), mask)?;
        let value = self.value().mul(&mask)?;
        record(&[self], value, || unary(move |g| Ok(g.mul(&mask)?)))
    }
}

/// Sums a batched gradient over its leading axis when the operand was a shared 2-D matrix.
fn reduce_batch(grad: Tensor, dims: &[usize]) -> Result<Tensor> {
    if grad.rank() > dims.len() { Ok(grad.sum_axis(0, false)?) } else { Ok(grad) }
}

/// Broadcasts the gradient of a sum along `axis` back over that axis of `dims`.
fn expand_axis(g: &Tensor, dims: &[usize], axis: usize) -> Result<Tensor> {
    let mut kept = dims.to_vec();
    kept[axis] = 1;
    let g = g.reshape(&kept)?;
    Ok(Tensor::zeros(dims).add(&g)?)
}
