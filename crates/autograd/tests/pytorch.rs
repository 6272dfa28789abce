//! Values and gradients checked against PyTorch 2.15 (float64), produced by this script:
//!
//! ```python
//! import torch
//! torch.manual_seed(0)
//! def r(*s): return (torch.arange(1, 1 + torch.tensor(s).prod().item(), dtype=torch.float64).reshape(*s) * 0.37 % 1.9 - 0.8)
//! def fmt(t): return "&[" + ", ".join(f"{v:.9}" for v in t.detach().flatten().tolist()) + "]"
//! cases = {}
//! a = r(2, 3).requires_grad_(); b = (r(3) + 1.5).requires_grad_()
//! cases["broadcast_arith"] = ((a + b) * a / b - b).pow(1).sum() , [a, b]
//! x = r(2, 3).requires_grad_(); w = r(4, 3).requires_grad_(); bb = r(4).requires_grad_()
//! cases["linear_tanh_sigmoid"] = (torch.tanh(x @ w.T + bb) * torch.sigmoid(x.sum(1, keepdim=True))).sum(), [x, w, bb]
//! p = r(2, 3, 4).requires_grad_(); q = r(2, 5, 3).requires_grad_()
//! cases["batched_matmul_t"] = ((p.transpose(1, 2) @ q.transpose(1, 2)) ** 2).mean(), [p, q]
//! z = r(3, 5).requires_grad_()
//! cases["log_softmax_softmax"] = (torch.log_softmax(z, 1) * r(3, 5)).sum() + (torch.softmax(z, 0) * r(3, 5).flip(0)).sum(), [z]
//! l = (r(4, 10) * 3).requires_grad_()
//! cases["cross_entropy"] = torch.nn.functional.cross_entropy(l, torch.tensor([3, 0, 9, 5])), [l]
//! e = (r(2, 2, 3) + 1.0).requires_grad_()
//! cases["exp_ln_relu_permute"] = (torch.exp(e).permute(2, 0, 1).reshape(3, 4) * torch.log(e + 1).permute(2, 0, 1).reshape(3, 4)).relu().mean(0).sum() + torch.relu(e - 0.5).sum(), [e]
//! m = r(3, 4).requires_grad_(); t = r(3, 4).flip(1)
//! cases["mse"] = torch.nn.functional.mse_loss(m, t), [m]
//! for name, (loss, ins) in cases.items():
//!     loss.backward()
//!     print(f"// {name}")
//!     print(f"loss: {loss.item():.9}")
//!     for i, v in enumerate(ins):
//!         print(f"in{i} {list(v.shape)}: {fmt(v)}")
//!         print(f"grad{i}: {fmt(v.grad)}")
//! ```
#![allow(clippy::unwrap_used)]

use convkit_autograd::{Tape, Var};
use convkit_tensor::Tensor;
use convkit_tensor::testing::{Tolerance, assert_close, max_abs};

/// The script's `r(*s)`: `(1..=n)·0.37 mod 1.9 − 0.8`, reshaped.
fn r(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec(dims, (1..=n).map(|i| ((i as f64 * 0.37) % 1.9 - 0.8) as f32).collect())
        .unwrap()
}

fn c(t: Tensor) -> Var {
    Var::constant(t)
}

/// f32 results against PyTorch's float64: a few f32 ulps of the largest value involved
/// (`2e-6·max|want|`, that scale at least 1e-3) plus `1e-6·|want|`.
fn vs_pytorch(want: &[f64]) -> Tolerance {
    Tolerance::new(2e-6, 1e-6).scale_atol(max_abs(want).max(1e-3))
}

fn check(loss: &Var, want_loss: f64, vars: &[&Var], want: &[&[f64]]) {
    let want_loss = [want_loss];
    assert_close("loss", loss.value().as_slice(), &want_loss, vs_pytorch(&want_loss));
    let grads = loss.backward().unwrap();
    for (i, (v, w)) in vars.iter().zip(want).enumerate() {
        assert_close(&format!("grad{i}"), grads.wrt(v).unwrap().as_slice(), w, vs_pytorch(w));
    }
}

#[test]
fn broadcast_arith() {
    let tape = Tape::new();
    let a = tape.var(r(&[2, 3]));
    let b = tape.var(r(&[3]).add_scalar(1.5));
    let loss = a.add(&b).unwrap().mul(&a).unwrap().div(&b).unwrap().sub(&b).unwrap().sum().unwrap();
    check(
        &loss,
        -6.01653499,
        &[&a, &b],
        &[
            &[0.196261682, 0.916666667, 1.34254144, 2.27102804, 2.45833333, 0.46961326],
            &[-2.56537689, -2.53342014, -2.09966118],
        ],
    );
}

#[test]
fn linear_tanh_sigmoid() {
    let tape = Tape::new();
    let (x, w, b) = (tape.var(r(&[2, 3])), tape.var(r(&[4, 3])), tape.var(r(&[4])));
    let gate = x.sum_axis(1, true).unwrap().sigmoid();
    let loss = x.linear(&w, Some(&b)).unwrap().tanh().mul(&gate).unwrap().sum().unwrap();
    check(
        &loss,
        0.89680388,
        &[&x, &w, &b],
        &[
            &[0.446162132, 0.203199719, 0.141115942, 0.407520685, 0.254656643, 0.66855071],
            &[
                0.0533016335,
                0.351453413,
                -0.0347411727,
                -0.0827391357,
                0.07531948,
                0.0605797596,
                0.358217535,
                0.761818746,
                -0.250623668,
                0.0791649175,
                0.382815952,
                -0.053089459,
            ],
            &[0.805815621, 0.427185448, 1.09081408, 0.820678471],
        ],
    );
}

#[test]
fn batched_matmul_t() {
    let tape = Tape::new();
    let (p, q) = (tape.var(r(&[2, 3, 4])), tape.var(r(&[2, 5, 3])));
    let y = p.matmul_t(true, &q, true).unwrap();
    let loss = y.mul(&y).unwrap().mean().unwrap();
    check(
        &loss,
        0.322022717,
        &[&p, &q],
        &[
            &[
                -0.036137,
                -0.0368575,
                0.0377095,
                0.065774,
                0.0962385,
                -0.030043,
                -0.0124945,
                0.031369,
                0.077089,
                0.0773955,
                -0.0528755,
                -0.026254,
                0.038787,
                0.051034,
                0.063281,
                -0.058517,
                -0.01592325,
                0.012539,
                0.04100125,
                0.0677535,
                -0.0518805,
                -0.040244,
                -0.0286075,
                0.055894,
            ],
            &[
                -0.0245825, 0.0048543, 0.0387941, 0.025194, 0.0598847, -0.0510121, -0.0267745,
                0.0261471, 0.0595557, 0.049602, -0.0530195, -0.0490795, -0.0289665, 0.0474399,
                0.0803173, -0.0509357, -0.0084141, 0.0128085, 0.0586686, 0.0347258, -0.008236,
                -0.0318541, 0.0199347, 0.0261045, 0.0748812, -0.0471824, -0.050135, -0.0127725,
                0.0482835, 0.0394005,
            ],
        ],
    );
}

#[test]
fn log_softmax_softmax() {
    let tape = Tape::new();
    let z = tape.var(r(&[3, 5]));
    // r(3, 5).flip(0): the rows of r(3, 5) in reverse order.
    let probe = r(&[3, 5]);
    let flipped = Tensor::concat(
        &[
            probe.narrow(0, 2, 1).unwrap(),
            probe.narrow(0, 1, 1).unwrap(),
            probe.narrow(0, 0, 1).unwrap(),
        ],
        0,
    )
    .unwrap();
    let a = z.log_softmax(1).unwrap().mul(&c(probe)).unwrap().sum().unwrap();
    let b = z.softmax(0).unwrap().mul(&c(flipped)).unwrap().sum().unwrap();
    let loss = a.add(&b).unwrap();
    check(
        &loss,
        -1.39702099,
        &[&z],
        &[&[
            -0.576403138,
            -0.26437575,
            0.0216952912,
            0.270188433,
            0.464278749,
            -0.588041145,
            -0.266663337,
            0.0329446337,
            0.301035656,
            0.523498501,
            -0.601343738,
            -0.270615508,
            0.0425293909,
            0.330218293,
            0.581053669,
        ]],
    );
}

#[test]
fn cross_entropy() {
    let tape = Tape::new();
    let l = tape.var(r(&[4, 10]).mul_scalar(3.0));
    let loss = l.cross_entropy(&[3, 0, 9, 5]).unwrap();
    check(
        &loss,
        3.58938153,
        &[&l],
        &[&[
            0.00106671026,
            0.00323678123,
            0.00982155428,
            -0.220197884,
            0.0904302999,
            0.000918126027,
            0.00278592342,
            0.00845349011,
            0.0256509187,
            0.0778340804,
            -0.24893329,
            0.00323678123,
            0.00982155428,
            0.0298021157,
            0.0904302999,
            0.000918126027,
            0.00278592342,
            0.00845349011,
            0.0256509187,
            0.0778340804,
            0.00106671026,
            0.00323678123,
            0.00982155428,
            0.0298021157,
            0.0904302999,
            0.000918126027,
            0.00278592342,
            0.00845349011,
            0.0256509187,
            -0.17216592,
            0.00106671026,
            0.00323678123,
            0.00982155428,
            0.0298021157,
            0.0904302999,
            -0.249081874,
            0.00278592342,
            0.00845349011,
            0.0256509187,
            0.0778340804,
        ]],
    );
}

#[test]
fn exp_ln_relu_permute() {
    let tape = Tape::new();
    let e = tape.var(r(&[2, 2, 3]).add_scalar(1.0));
    let lhs = e.exp().permute(&[2, 0, 1]).unwrap().reshape(&[3, 4]).unwrap();
    let rhs = e.add_scalar(1.0).ln().permute(&[2, 0, 1]).unwrap().reshape(&[3, 4]).unwrap();
    let first = lhs.mul(&rhs).unwrap().relu().mean_axis(0, false).unwrap().sum().unwrap();
    let second = e.add_scalar(-0.5).relu().sum().unwrap();
    let loss = first.add(&second).unwrap();
    check(
        &loss,
        21.4432351,
        &[&e],
        &[&[
            1.6413023,
            2.00534898,
            2.56912966,
            3.43050944,
            4.73638747,
            1.6036265,
            1.94619183,
            2.47814188,
            3.29200039,
            4.52690884,
            0.568283009,
            1.89044531,
        ]],
    );
}

#[test]
fn mse() {
    let tape = Tape::new();
    let m = tape.var(r(&[3, 4]));
    // r(3, 4).flip(1): each row reversed.
    let t = r(&[3, 4]).permute(&[1, 0]).unwrap();
    let rev: Vec<Tensor> = (0..4).rev().map(|i| t.narrow(0, i, 1).unwrap()).collect();
    let target = Tensor::concat(&rev, 0).unwrap().permute(&[1, 0]).unwrap();
    let loss = m.mse(&c(target)).unwrap();
    check(
        &loss,
        0.849166667,
        &[&m],
        &[&[
            -0.185,
            -0.0616666667,
            0.0616666667,
            0.185,
            0.131666667,
            -0.0616666667,
            0.0616666667,
            -0.131666667,
            0.131666667,
            0.255,
            -0.255,
            -0.131666667,
        ]],
    );
}
