//! Loss functions, each returning the mean over the batch as a one-element [`Var`].

use convkit_autograd::Var;
use convkit_tensor::Tensor;

use crate::error::{NnError, Result, config};

/// Cross-entropy of logits `[batch, classes]` against integer labels, with optional label
/// smoothing `ε` (PyTorch's `label_smoothing`): the target distribution is
/// `(1 − ε)·onehot + ε/classes`, and the loss `−Σ target·log_softmax(logits)`, averaged over
/// the batch. With `ε = 0` this is the fused, stable [`Var::cross_entropy`].
pub fn cross_entropy(logits: &Var, labels: &[usize], label_smoothing: f32) -> Result<Var> {
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(config(
            "cross_entropy",
            format!("label_smoothing must be in [0, 1], got {label_smoothing}"),
        ));
    }
    if label_smoothing == 0.0 {
        return Ok(logits.cross_entropy(labels)?);
    }
    let targets = smoothed_targets(logits.dims(), labels, label_smoothing)?;
    soft_targets(&logits.log_softmax(1)?, &targets)
}

/// Negative log-likelihood of log-probabilities `[batch, classes]` (e.g. the output of
/// `log_softmax`) against integer labels, averaged over the batch.
pub fn nll(log_probs: &Var, labels: &[usize]) -> Result<Var> {
    let targets = smoothed_targets(log_probs.dims(), labels, 0.0)?;
    soft_targets(log_probs, &targets)
}

/// Mean squared error between equally shaped prediction and target.
pub fn mse(prediction: &Var, target: &Var) -> Result<Var> {
    Ok(prediction.mse(target)?)
}

/// `−Σ targets·log_probs / batch`.
fn soft_targets(log_probs: &Var, targets: &Tensor) -> Result<Var> {
    let batch = log_probs.dims()[0] as f32;
    Ok(log_probs.mul(&Var::constant(targets.clone()))?.sum()?.mul_scalar(-1.0 / batch))
}

/// `(1 − ε)·onehot(labels) + ε/classes`, validated against `[batch, classes]`.
fn smoothed_targets(dims: &[usize], labels: &[usize], eps: f32) -> Result<Tensor> {
    let &[n, c] = dims else {
        return Err(NnError::Input {
            layer: "loss",
            got: dims.to_vec(),
            msg: "expected [batch, classes]".into(),
        });
    };
    if labels.len() != n || n == 0 {
        return Err(NnError::Input {
            layer: "loss",
            got: dims.to_vec(),
            msg: format!("{} labels for a batch of {n}", labels.len()),
        });
    }
    let mut t = vec![eps / c as f32; n * c];
    for (i, &l) in labels.iter().enumerate() {
        if l >= c {
            return Err(NnError::Input {
                layer: "loss",
                got: dims.to_vec(),
                msg: format!("label {l} at index {i} is out of range for {c} classes"),
            });
        }
        t[i * c + l] += 1.0 - eps;
    }
    Ok(Tensor::from_vec(dims, t)?)
}
