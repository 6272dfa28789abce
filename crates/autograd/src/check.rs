//! Gradient checking by central finite differences.
//!
//! For a scalar function `f` of some tensors, [`check_gradients`] compares the gradient the
//! tape computes with `(f(x + ε·eᵢ) − f(x − ε·eᵢ)) / 2ε` for every element `i` of every input.
//! The forward passes run in f32 (the kernels' precision); the difference quotient is formed in
//! f64. With f32 evaluation the truncation error of the quotient is `O(ε²)` and its rounding
//! error about `ε_f32·|f| / ε`, so `ε` around `1e-2`–`1e-3` balances the two for values of
//! order one.

use convkit_tensor::Tensor;

use crate::error::{AutogradError, Result};
use crate::tape::{Tape, Var};

/// The worst element found by [`check_gradients`].
#[derive(Debug, Clone, PartialEq)]
pub struct GradMismatch {
    /// Which input (position in the `inputs` slice).
    pub input: usize,
    /// Flat index of the element within that input.
    pub index: usize,
    /// The gradient computed by the tape.
    pub analytic: f64,
    /// The finite-difference estimate.
    pub numeric: f64,
    /// `|analytic − numeric| / (atol + rtol·|numeric|)`: above 1 means out of tolerance.
    pub ratio: f64,
}

/// Result of a gradient check.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheck {
    /// The element with the largest error relative to the tolerance (`None` if no elements).
    pub worst: Option<GradMismatch>,
    /// Number of elements compared.
    pub checked: usize,
}

impl GradCheck {
    /// Whether every element was within tolerance.
    pub fn passed(&self) -> bool {
        self.worst.as_ref().is_none_or(|w| w.ratio <= 1.0)
    }
}

impl std::fmt::Display for GradCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.worst {
            None => write!(f, "no elements checked"),
            Some(w) => write!(
                f,
                "{} elements, worst: input {} element {}: analytic {:e}, numeric {:e} ({:.3} of the tolerance){}",
                self.checked,
                w.input,
                w.index,
                w.analytic,
                w.numeric,
                w.ratio,
                if w.ratio <= 1.0 { "" } else { " — FAILED" }
            ),
        }
    }
}

/// Checks the tape's gradients of the scalar `f(inputs)` against central differences.
///
/// `f` receives one variable per input and must return a one-element variable. An element
/// passes when `|analytic − numeric| ≤ atol + rtol·|numeric|`. Returns the worst element; use
/// [`GradCheck::passed`] (or `Display`, which says which element failed).
///
/// ```
/// use convkit_autograd::check_gradients;
/// use convkit_tensor::Tensor;
/// let x = Tensor::from_vec(&[3], vec![0.5, -1.0, 2.0])?;
/// let report = check_gradients(|v| v[0].tanh().sum(), &[x], 1e-2, 1e-3, 1e-3)?;
/// assert!(report.passed(), "{report}");
/// # Ok::<(), convkit_autograd::AutogradError>(())
/// ```
pub fn check_gradients(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
    eps: f64,
    atol: f64,
    rtol: f64,
) -> Result<GradCheck> {
    let tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.var(t.clone())).collect();
    let out = f(&vars)?;
    let grads = out.backward()?;
    let eval = |xs: &[Tensor]| -> Result<f64> {
        let consts: Vec<Var> = xs.iter().cloned().map(Var::constant).collect();
        let y = f(&consts)?;
        if y.value().numel() != 1 {
            return Err(AutogradError::NonScalarBackward { dims: y.dims().to_vec() });
        }
        Ok(f64::from(y.value().as_slice()[0]))
    };
    let mut worst: Option<GradMismatch> = None;
    let mut checked = 0;
    let mut xs: Vec<Tensor> = inputs.to_vec();
    for (input, var) in vars.iter().enumerate() {
        let analytic = grads.get(var)?.cloned().unwrap_or_else(|| var.value().zeros_like());
        for index in 0..inputs[input].numel() {
            let x0 = inputs[input].as_slice()[index];
            xs[input].data_mut()[index] = (f64::from(x0) + eps) as f32;
            let plus = eval(&xs)?;
            xs[input].data_mut()[index] = (f64::from(x0) - eps) as f32;
            let minus = eval(&xs)?;
            xs[input].data_mut()[index] = x0;
            // Divide by the step actually taken after rounding to f32.
            let step =
                f64::from((f64::from(x0) + eps) as f32) - f64::from((f64::from(x0) - eps) as f32);
            let numeric = (plus - minus) / step;
            let a = f64::from(analytic.as_slice()[index]);
            let ratio = (a - numeric).abs() / (atol + rtol * numeric.abs());
            checked += 1;
            if worst.as_ref().is_none_or(|w| ratio > w.ratio || ratio.is_nan()) {
                worst = Some(GradMismatch { input, index, analytic: a, numeric, ratio });
            }
        }
    }
    Ok(GradCheck { worst, checked })
}
