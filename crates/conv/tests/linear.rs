//! The dense layer's training kernels (`linear_forward`, `linear_backward`) against an f64
//! reference, bit-identical results for pools of 1, 2 and 3 threads on products large enough
//! to be split, and the errors for buffers that do not fit.
#![allow(clippy::unwrap_used)]

mod common;

use common::data;
use convkit_conv::{ConvError, GradBuffers, LinearDims, linear_backward, linear_forward};
use rayon::ThreadPoolBuilder;

/// `Σ_p a(i, p)·b(p, j)` in f64 for every `(i, j)` of an `m × n` result.
fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| f64::from(a(i, p)) * f64::from(b(p, j))).sum();
        }
    }
    c
}

/// Every element of `got` within a relative 1e-5 of the sum's scale `terms` from `want`.
fn close(got: &[f32], want: &[f64], terms: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * (terms as f64 + 1.0);
        assert!((f64::from(g) - w).abs() <= tol, "{what}: element {j} is {g}, expected {w}");
    }
}

/// Forward and all three gradients of `d` with seeded operands.
fn run(d: LinearDims, seed: u64) -> [Vec<f32>; 4] {
    let LinearDims { batch, inp, out } = d;
    let (x, w, b, dy) = (
        data(batch * inp, seed),
        data(out * inp, seed + 1),
        data(out, seed + 2),
        data(batch * out, seed + 3),
    );
    let mut y = vec![f32::NAN; batch * out];
    linear_forward(d, &x, &w, Some(&b), &mut y).unwrap();
    let (mut gx, mut gw, mut gb) =
        (vec![f32::NAN; batch * inp], vec![f32::NAN; out * inp], vec![f32::NAN; out]);
    let grads = GradBuffers { input: Some(&mut gx), weight: Some(&mut gw), bias: Some(&mut gb) };
    linear_backward(d, &x, &w, &dy, grads).unwrap();
    [y, gx, gw, gb]
}

#[test]
fn matches_the_f64_reference() {
    let sizes = [(1, 1, 1), (1, 400, 120), (3, 5, 7), (17, 33, 9), (64, 120, 84), (70, 130, 90)];
    for (i, &(batch, inp, out)) in sizes.iter().enumerate() {
        let d = LinearDims { batch, inp, out };
        let seed = 10 * i as u64;
        let (x, w, b, dy) = (
            data(batch * inp, seed),
            data(out * inp, seed + 1),
            data(out, seed + 2),
            data(batch * out, seed + 3),
        );
        let [y, gx, gw, gb] = run(d, seed);
        let what = format!("{d:?}");
        let mut want_y = reference(batch, out, inp, |r, p| x[r * inp + p], |p, o| w[o * inp + p]);
        for (v, bv) in want_y.iter_mut().zip(b.iter().cycle()) {
            *v += f64::from(*bv);
        }
        close(&y, &want_y, inp, &format!("output {what}"));
        let want_gx = reference(batch, inp, out, |r, o| dy[r * out + o], |o, p| w[o * inp + p]);
        close(&gx, &want_gx, out, &format!("grad input {what}"));
        let want_gw = reference(out, inp, batch, |o, r| dy[r * out + o], |r, p| x[r * inp + p]);
        close(&gw, &want_gw, batch, &format!("grad weight {what}"));
        let want_gb = reference(out, 1, batch, |o, r| dy[r * out + o], |_, _| 1.0);
        close(&gb, &want_gb, batch, &format!("grad bias {what}"));
    }
}

#[test]
fn bit_identical_for_any_thread_count() {
    // LeNet-5's dense layers at batch 64 and an odd size, all above the split threshold.
    for (batch, inp, out) in [(64, 400, 120), (64, 120, 84), (75, 257, 131)] {
        let d = LinearDims { batch, inp, out };
        let runs: Vec<[Vec<f32>; 4]> = [1, 2, 3]
            .map(|t| ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| run(d, 7)))
            .into();
        for r in &runs[1..] {
            for (k, name) in ["output", "grad input", "grad weight", "grad bias"].iter().enumerate()
            {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(bits(&r[k]) == bits(&runs[0][k]), "{name} of {d:?} depends on the threads");
            }
        }
    }
}

#[test]
fn an_empty_batch_gives_zero_weight_gradients() {
    let d = LinearDims { batch: 0, inp: 3, out: 2 };
    let (mut gw, mut gb) = ([f32::NAN; 6], [f32::NAN; 2]);
    let grads = GradBuffers { input: Some(&mut []), weight: Some(&mut gw), bias: Some(&mut gb) };
    linear_backward(d, &[], &[0.5; 6], &[], grads).unwrap();
    assert_eq!((gw, gb), ([0.0; 6], [0.0; 2]));
}

#[test]
fn buffers_that_do_not_fit_are_errors() {
    let d = LinearDims { batch: 2, inp: 3, out: 4 };
    let (x, w, dy) = ([0.0; 6], [0.0; 12], [0.0; 8]);
    let what = |e: ConvError| match e {
        ConvError::BufferLength { what, .. } => what,
        e => panic!("unexpected {e}"),
    };
    let mut y = [0.0; 8];
    assert_eq!(what(linear_forward(d, &x[1..], &w, None, &mut y).unwrap_err()), "input");
    assert_eq!(what(linear_forward(d, &x, &w, Some(&[0.0; 3]), &mut y).unwrap_err()), "bias");
    assert_eq!(what(linear_forward(d, &x, &w, None, &mut y[1..]).unwrap_err()), "output");
    let mut gw = [0.0; 11];
    let grads = GradBuffers { weight: Some(&mut gw), ..Default::default() };
    assert_eq!(what(linear_backward(d, &x, &w, &dy, grads).unwrap_err()), "grad_weight");
    let grads = GradBuffers::default();
    assert_eq!(what(linear_backward(d, &x, &w, &dy[1..], grads).unwrap_err()), "grad_output");
}
