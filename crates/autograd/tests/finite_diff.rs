//! Every differentiable op against central finite differences, on random shapes and values.
//!
//! Each op's output is reduced to a scalar as `Σ op(x) · probe`, with a random constant
//! `probe`, so every element of the gradient matters. Inputs stay away from the kinks of relu
//! and the poles of ln and div, where a finite difference is not a derivative.
#![allow(clippy::unwrap_used)]

use convkit_autograd::{Result, Var, check_gradients};
use convkit_tensor::testing::random_tensor;
use convkit_tensor::{Rng, Tensor};

const EPS: f64 = 1e-2;
const ATOL: f64 = 2e-3;
const RTOL: f64 = 2e-3;

/// Values in ±[0.2, 1]: no element within a finite-difference step of 0.
fn away_from_zero(dims: &[usize], rng: &mut Rng) -> Tensor {
    random_tensor(dims, -1.0, 1.0, rng).map(|v| if v < 0.0 { v * 0.8 - 0.2 } else { v * 0.8 + 0.2 })
}

/// `Σ y · probe` for a fixed random probe shaped like `y`.
fn project(y: Var, seed: u64) -> Result<Var> {
    let probe = random_tensor(y.dims(), -1.0, 1.0, &mut Rng::new(seed));
    y.mul(&Var::constant(probe))?.sum()
}

fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Var]) -> Result<Var>) {
    let report = check_gradients(|v| project(f(v)?, 99), inputs, EPS, ATOL, RTOL).unwrap();
    assert!(report.passed(), "{name}: {report}");
    assert!(report.checked > 0, "{name}: nothing checked");
}

/// Random dims of the given rank, sizes 1..=4.
fn dims(rank: usize, rng: &mut Rng) -> Vec<usize> {
    (0..rank).map(|_| 1 + rng.below(4)).collect()
}

/// A shape that broadcasts against `d`: some axes set to 1, some leading axes dropped.
fn broadcastable(d: &[usize], rng: &mut Rng) -> Vec<usize> {
    let drop = rng.below(d.len() + 1);
    d[drop..].iter().map(|&s| if rng.below(2) == 0 { 1 } else { s }).collect()
}

#[test]
fn binary_ops_with_broadcasting() {
    let mut rng = Rng::new(1);
    for case in 0..12 {
        let da = dims(1 + case % 3, &mut rng);
        let db = broadcastable(&da, &mut rng);
        // Either operand may be the broadcast one.
        let (da, db) = if case % 2 == 0 { (da, db) } else { (db, da) };
        let a = random_tensor(&da, -1.0, 1.0, &mut rng);
        let b = away_from_zero(&db, &mut rng);
        let ins = [a, b];
        check("add", &ins, |v| v[0].add(&v[1]));
        check("sub", &ins, |v| v[0].sub(&v[1]));
        check("mul", &ins, |v| v[0].mul(&v[1]));
        check("div", &ins, |v| v[0].div(&v[1]));
    }
}

#[test]
fn scalar_ops() {
    let mut rng = Rng::new(2);
    let x = random_tensor(&[3, 4], -1.0, 1.0, &mut rng);
    check("add_scalar", std::slice::from_ref(&x), |v| Ok(v[0].add_scalar(0.7)));
    check("mul_scalar", std::slice::from_ref(&x), |v| Ok(v[0].mul_scalar(-1.3)));
    check("neg", &[x], |v| Ok(v[0].neg()));
}

#[test]
fn matmul_every_transpose_and_batch() {
    let mut rng = Rng::new(3);
    for case in 0..16 {
        let (ta, tb) = (case & 1 == 1, case & 2 == 2);
        let (m, k, n) = (1 + rng.below(5), 1 + rng.below(5), 1 + rng.below(5));
        let a_dims = if ta { [k, m] } else { [m, k] };
        let b_dims = if tb { [n, k] } else { [k, n] };
        // Cases 0..4: 2-D; 4..8: both batched; 8..12: shared 2-D rhs; 12..16: shared 2-D lhs.
        let batch = 1 + rng.below(3);
        let with_batch =
            |d: [usize; 2], on: bool| if on { vec![batch, d[0], d[1]] } else { d.to_vec() };
        let (ba, bb) = match case / 4 {
            0 => (false, false),
            1 => (true, true),
            2 => (true, false),
            _ => (false, true),
        };
        let a = random_tensor(&with_batch(a_dims, ba), -1.0, 1.0, &mut rng);
        let b = random_tensor(&with_batch(b_dims, bb), -1.0, 1.0, &mut rng);
        check(&format!("matmul_t({ta},{tb}) case {case}"), &[a, b], |v| {
            v[0].matmul_t(ta, &v[1], tb)
        });
    }
}

#[test]
fn linear_with_and_without_bias() {
    let mut rng = Rng::new(4);
    let (x, w, b) = (
        random_tensor(&[5, 3], -1.0, 1.0, &mut rng),
        random_tensor(&[2, 3], -1.0, 1.0, &mut rng),
        random_tensor(&[2], -1.0, 1.0, &mut rng),
    );
    check("linear", &[x.clone(), w.clone(), b], |v| v[0].linear(&v[1], Some(&v[2])));
    check("linear no bias", &[x, w], |v| v[0].linear(&v[1], None));
}

#[test]
fn shape_ops() {
    let mut rng = Rng::new(5);
    let x = random_tensor(&[2, 3, 4], -1.0, 1.0, &mut rng);
    check("reshape", std::slice::from_ref(&x), |v| v[0].reshape(&[4, 6]));
    check("flatten", std::slice::from_ref(&x), |v| v[0].flatten(1, 2));
    for perm in [[0, 2, 1], [2, 0, 1], [1, 2, 0], [2, 1, 0]] {
        check(&format!("permute {perm:?}"), std::slice::from_ref(&x), |v| v[0].permute(&perm));
    }
}

#[test]
fn reductions() {
    let mut rng = Rng::new(6);
    let x = random_tensor(&[2, 3, 4], -1.0, 1.0, &mut rng);
    check("sum", std::slice::from_ref(&x), |v| v[0].sum());
    check("mean", std::slice::from_ref(&x), |v| v[0].mean());
    for axis in 0..3 {
        for keepdim in [false, true] {
            check("sum_axis", std::slice::from_ref(&x), |v| v[0].sum_axis(axis, keepdim));
            check("mean_axis", std::slice::from_ref(&x), |v| v[0].mean_axis(axis, keepdim));
        }
    }
}

#[test]
fn elementwise_functions() {
    let mut rng = Rng::new(7);
    let x = random_tensor(&[3, 5], -1.0, 1.0, &mut rng);
    check("relu", &[away_from_zero(&[3, 5], &mut rng)], |v| Ok(v[0].relu()));
    check("tanh", std::slice::from_ref(&x), |v| Ok(v[0].tanh()));
    check("sigmoid", std::slice::from_ref(&x), |v| Ok(v[0].sigmoid()));
    check("exp", std::slice::from_ref(&x), |v| Ok(v[0].exp()));
    check("ln", &[x.abs().add_scalar(0.5)], |v| Ok(v[0].ln()));
    check("sqrt", &[x.abs().add_scalar(0.5)], |v| Ok(v[0].sqrt()));
}

#[test]
fn softmax_family_and_losses() {
    let mut rng = Rng::new(8);
    let x = random_tensor(&[4, 6], -1.0, 1.0, &mut rng).mul_scalar(3.0);
    for axis in 0..2 {
        check("softmax", std::slice::from_ref(&x), |v| v[0].softmax(axis));
        check("log_softmax", std::slice::from_ref(&x), |v| v[0].log_softmax(axis));
    }
    let labels = [5, 0, 2, 2];
    let report =
        check_gradients(|v| v[0].cross_entropy(&labels), std::slice::from_ref(&x), EPS, ATOL, RTOL)
            .unwrap();
    assert!(report.passed(), "cross_entropy: {report}");
    let target = random_tensor(&[4, 6], -1.0, 1.0, &mut rng);
    let report = check_gradients(|v| v[0].mse(&v[1]), &[x, target], EPS, ATOL, RTOL).unwrap();
    assert!(report.passed(), "mse: {report}");
}

#[test]
fn dropout_with_a_fixed_mask() {
    let mut rng = Rng::new(9);
    let x = random_tensor(&[4, 8], -1.0, 1.0, &mut rng);
    // The same seed on every evaluation: the finite differences see the same mask.
    check("dropout", std::slice::from_ref(&x), |v| v[0].dropout(0.3, true, &mut Rng::new(11)));
    check("dropout eval", &[x], |v| v[0].dropout(0.3, false, &mut Rng::new(11)));
}

#[test]
fn the_checker_catches_a_wrong_gradient() {
    // A deliberately wrong rule: claims ∂(2x)/∂x = 1.
    let wrong = |v: &[Var]| -> Result<Var> {
        let x = &v[0];
        let y = Var::from_op(
            &[x],
            x.value().mul_scalar(2.0),
            Box::new(|g: &Tensor, _: &[bool]| Ok(vec![Some(g.clone())])),
        )?;
        y.sum()
    };
    let report = check_gradients(wrong, &[Tensor::ones(&[3])], EPS, ATOL, RTOL).unwrap();
    assert!(!report.passed());
    let w = report.worst.unwrap();
    assert_eq!((w.analytic, w.input), (1.0, 0));
    assert!((w.numeric - 2.0).abs() < 1e-3, "{w:?}");
}

#[test]
fn batch_norm2d_training_and_evaluation() {
    let mut rng = Rng::new(21);
    for dims in [[2, 3, 3, 2], [1, 2, 4, 4], [5, 1, 1, 3]] {
        let x = random_tensor(&dims, -1.0, 1.0, &mut rng);
        let gamma = away_from_zero(&[dims[1]], &mut rng);
        let beta = random_tensor(&[dims[1]], -1.0, 1.0, &mut rng);
        check("batch_norm2d", &[x.clone(), gamma.clone(), beta.clone()], |v| {
            Ok(v[0].batch_norm2d(&v[1], &v[2], 1e-5)?.0)
        });
        let mean = random_tensor(&[dims[1]], -1.0, 1.0, &mut rng);
        let var = Tensor::rand_uniform(&[dims[1]], 0.5, 2.0, &mut rng).unwrap();
        check("batch_norm2d_eval", &[x, gamma, beta], |v| {
            v[0].batch_norm2d_eval(&v[1], &v[2], &mean, &var, 1e-5)
        });
    }
}
