//! conv2d and pooling on the tape: against PyTorch, against finite differences over many
//! parameter combinations, and a tiny CNN that must overfit a batch.
//!
//! The PyTorch numbers (2.15, float64) come from this script:
//!
//! ```python
//! import torch
//! import torch.nn.functional as F
//! torch.set_default_dtype(torch.float64)
//! def r(*s): return (torch.arange(1, 1 + torch.tensor(s).prod().item(), dtype=torch.float64).reshape(*s) * 0.37 % 1.9 - 0.8)
//! def fmt(t): return "&[" + ", ".join(f"{v:.10}" for v in t.detach().flatten().tolist()) + "]"
//! x = r(2, 4, 5, 6).requires_grad_(); w = r(6, 2, 3, 2).requires_grad_(); b = r(6).requires_grad_()
//! y = F.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
//! p = F.max_pool2d(y, 2, stride=1, padding=1)
//! q = F.avg_pool2d(y, 3, stride=2, padding=1)
//! loss = (p * r(*p.shape)).sum() + (q * r(*q.shape).flip(0)).sum()
//! loss.backward()
//! print("y", list(y.shape), "p", list(p.shape), "q", list(q.shape))
//! print("loss", loss.item())
//! print("gx", fmt(x.grad)); print("gw", fmt(w.grad)); print("gb", fmt(b.grad))
//! ```
#![allow(clippy::unwrap_used)]

use convkit_autograd::{Param, Result, Tape, Var, check_gradients};
use convkit_conv::{Conv2dParams, ConvAlgo, PoolParams};
use convkit_tensor::testing::{Tolerance, assert_close, max_abs, random_tensor};
use convkit_tensor::{Rng, Tensor};

fn r(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec(dims, (1..=n).map(|i| ((i as f64 * 0.37) % 1.9 - 0.8) as f32).collect())
        .unwrap()
}

fn flip0(t: &Tensor) -> Tensor {
    let n = t.dims()[0];
    let parts: Vec<Tensor> = (0..n).rev().map(|i| t.narrow(0, i, 1).unwrap()).collect();
    Tensor::concat(&parts, 0).unwrap()
}

/// f32 against PyTorch's float64: 1e-5 of the tensor's largest |value| (absolute 1e-5 below
/// 1), since each value is a sum whose rounding error grows with the magnitude of its terms.
fn vs_pytorch(want: &[f64]) -> Tolerance {
    Tolerance::absolute(1e-5).scale_atol(max_abs(want).max(1.0))
}

#[test]
fn conv_and_pools_match_pytorch() {
    let params = Conv2dParams { stride: (2, 1), padding: (1, 2), dilation: (1, 2), groups: 2 };
    for algo in [ConvAlgo::Auto, ConvAlgo::Naive, ConvAlgo::Im2col] {
        let tape = Tape::new();
        let (x, w, b) = (tape.var(r(&[2, 4, 5, 6])), tape.var(r(&[6, 2, 3, 2])), tape.var(r(&[6])));
        let y = x.conv2d(&w, Some(&b), &params, algo).unwrap();
        assert_eq!(y.dims(), &[2, 6, 3, 8]);
        let p = y.max_pool2d(&PoolParams::new(2).with_stride(1).with_padding(1)).unwrap();
        let q = y.avg_pool2d(&PoolParams::new(3).with_stride(2).with_padding(1)).unwrap();
        let lp = p.mul(&Var::constant(r(p.dims()))).unwrap().sum().unwrap();
        let lq = q.mul(&Var::constant(flip0(&r(q.dims())))).unwrap().sum().unwrap();
        let loss = lp.add(&lq).unwrap();
        let want: &[f64] = &[61.051216000001176];
        assert_close("loss", loss.value().as_slice(), want, vs_pytorch(want));
        let g = loss.backward().unwrap();
        let want: &[f64] = &[
            -0.3238222222,
            1.494233333,
            0.7888555556,
            -0.8446666667,
            0.9889777778,
            0.5986777778,
            -1.056155556,
            2.628111111,
            2.522966667,
            1.033255556,
            0.6319888889,
            -0.4863888889,
            0.2895111111,
            -0.3823222222,
            1.758466667,
            -0.04796666667,
            -0.2124333333,
            0.2545555556,
            1.334788889,
            0.4410888889,
            -0.7476,
            1.227033333,
            0.8265333333,
            -1.640388889,
            -0.3627666667,
            -0.04265555556,
            -0.4022888889,
            0.6052,
            0.07158888889,
            0.6906777778,
            -0.4719111111,
            -0.09087777778,
            1.489233333,
            0.9278,
            2.619066667,
            -0.8040555556,
            -0.2606888889,
            0.08784444444,
            -0.6497666667,
            -1.6597,
            2.337166667,
            0.8304555556,
            1.477955556,
            -0.4487,
            -1.907755556,
            0.8361666667,
            -0.9606777778,
            0.008022222222,
            -1.378011111,
            3.093466667,
            -1.390822222,
            0.08234444444,
            -0.02753333333,
            -0.6845888889,
            2.001766667,
            0.5628777778,
            -0.1342888889,
            0.9492666667,
            -0.3593444444,
            2.532677778,
            1.447977778,
            0.1058444444,
            -0.9890333333,
            -0.4385777778,
            0.1985555556,
            0.6166777778,
            1.570211111,
            0.7111111111,
            0.2538,
            1.567366667,
            -1.376033333,
            0.9263111111,
            -1.687566667,
            0.09884444444,
            0.7304111111,
            0.9523,
            1.444188889,
            -0.8232333333,
            -1.183044444,
            0.01378888889,
            3.804233333,
            0.9695333333,
            0.9254,
            1.538522222,
            1.490855556,
            -0.0437,
            -0.7619555556,
            0.1972777778,
            0.1670333333,
            0.6674888889,
            -0.7706888889,
            0.3164888889,
            0.3020777778,
            -0.5138888889,
            -0.05226666667,
            -1.050588889,
            3.177366667,
            0.06491111111,
            -2.009355556,
            -0.06585555556,
            0.6891,
            0.9550666667,
            -0.6420777778,
            -0.06133333333,
            1.584144444,
            -0.5063888889,
            3.308366667,
            1.113455556,
            2.802933333,
            0.6387222222,
            0.5635888889,
            0.5746222222,
            -0.9246666667,
            -0.4879,
            0.3020111111,
            1.951077778,
            -1.265333333,
            0.1485,
            -0.3657666667,
            0.6500444444,
            0.3450888889,
            0.06295555556,
            1.968266667,
            -0.6236888889,
            -0.4577555556,
            1.039833333,
            0.1347666667,
            1.535588889,
            -0.9265777778,
            0.2085777778,
            -0.3543444444,
            1.911422222,
            0.7856333333,
            -0.7518777778,
            0.02008888889,
            0.4709333333,
            -0.7266555556,
            1.000655556,
            -0.7432,
            -1.654855556,
            -0.1324555556,
            4.671222222,
            0.3910777778,
            0.09367777778,
            0.07474444444,
            0.6662666667,
            0.5087222222,
            1.231622222,
            -0.0914,
            -1.184977778,
            0.1695333333,
            -0.6221777778,
            1.060688889,
            0.1776222222,
            -0.5058666667,
            0.06341111111,
            -0.1017,
            1.938344444,
            -0.8981555556,
            -0.7146888889,
            0.9035666667,
            0.141,
            0.7099444444,
            -0.9412111111,
            -0.2303555556,
            1.469688889,
            0.02414444444,
            2.824433333,
            0.5616,
            0.9093222222,
            1.040122222,
            -0.3140444444,
            -0.8121666667,
            1.944566667,
            0.5200111111,
            0.9096666667,
            0.7368555556,
            -2.611733333,
            1.024111111,
            -0.8939777778,
            0.9570444444,
            0.2222888889,
            -0.7691555556,
            -0.8180222222,
            -0.5823666667,
            2.113622222,
            1.402844444,
            1.579244444,
            0.7672,
            0.6416222222,
            0.2688222222,
            1.1968,
            -0.4236666667,
            1.602888889,
            0.3249555556,
            -0.6926,
            -0.6762555556,
            -0.2538666667,
            0.4443,
            -0.8020888889,
            -0.3630888889,
            -0.05177777778,
            3.198411111,
            -1.175366667,
            0.9281888889,
            1.1256,
            -0.2040888889,
            0.7704222222,
            0.9567111111,
            1.696411111,
            -0.2575777778,
            0.5675555556,
            0.3537333333,
            1.595333333,
            -1.2209,
            -0.03415555556,
            0.7542,
            -0.0852,
            -1.111,
            1.492155556,
            0.3437555556,
            0.2834444444,
            -1.025133333,
            -1.033822222,
            -0.6346888889,
            -0.2182,
            0.1089888889,
            -0.4275555556,
            1.305144444,
            0.8344444444,
            0.5396,
            0.5363777778,
            0.07047777778,
            1.188322222,
            2.664944444,
            1.233622222,
            -0.2354222222,
            1.205066667,
            -1.330911111,
            2.6589,
        ];
        assert_close("grad x", g.wrt(&x).unwrap().as_slice(), want, vs_pytorch(want));
        let want: &[f64] = &[
            0.8981111111,
            3.098133333,
            -0.3902888889,
            8.798666667,
            2.3441,
            -2.474044444,
            -0.276,
            0.2793555556,
            -0.3551777778,
            6.993888889,
            1.109655556,
            6.727288889,
            0.5212666667,
            -1.066288889,
            1.731788889,
            -2.131255556,
            0.04091111111,
            2.881744444,
            1.825155556,
            6.166266667,
            -0.6286555556,
            0.9249666667,
            1.298133333,
            -0.5065888889,
            3.369433333,
            -1.488966667,
            0.1210777778,
            -0.01846666667,
            3.003455556,
            2.298177778,
            1.329322222,
            0.1485888889,
            2.054411111,
            1.535311111,
            -0.6845444444,
            1.098733333,
            0.4090888889,
            5.420844444,
            0.4164888889,
            7.946166667,
            0.2681222222,
            -0.9597222222,
            -1.095022222,
            2.5674,
            0.01548888889,
            5.064166667,
            0.2159,
            -1.3485,
            1.768622222,
            -4.155555556,
            3.922455556,
            0.9795111111,
            1.756177778,
            0.1863222222,
            -0.9734888889,
            3.784555556,
            1.354455556,
            -4.015266667,
            4.126066667,
            -1.921011111,
            2.150611111,
            -0.8697666667,
            4.926688889,
            0.9486,
            0.9863666667,
            -0.2966888889,
            0.2255,
            2.7749,
            2.248466667,
            -1.806955556,
            4.029811111,
            -1.787688889,
        ];
        assert_close("grad w", g.wrt(&w).unwrap().as_slice(), want, vs_pytorch(want));
        let want: &[f64] =
            &[12.62666667, 12.60888889, 12.38, 11.30666667, 12.34444444, 11.69333333];
        assert_close("grad b", g.wrt(&b).unwrap().as_slice(), want, vs_pytorch(want));
    }
}

const EPS: f64 = 1e-2;

fn project(y: Var, seed: u64) -> Result<Var> {
    let probe = random_tensor(y.dims(), -1.0, 1.0, &mut Rng::new(seed));
    y.mul(&Var::constant(probe))?.sum()
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    let mut rng = Rng::new(21);
    let cases = [
        // (n, c_in, h, w, c_out, kh, kw, stride, pad, dilation, groups)
        (1, 1, 6, 6, 2, 3, 3, (1, 1), (0, 0), (1, 1), 1),
        (2, 2, 5, 7, 3, 2, 3, (2, 1), (1, 0), (1, 1), 1),
        (1, 4, 6, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), 4),
        (2, 4, 7, 6, 2, 3, 2, (1, 2), (2, 1), (2, 1), 2),
        (1, 3, 5, 5, 2, 1, 1, (1, 1), (0, 0), (1, 1), 1),
        (1, 2, 8, 8, 2, 5, 5, (3, 3), (2, 2), (1, 1), 1),
    ];
    for (i, &(n, c, h, w, k, kh, kw, stride, padding, dilation, groups)) in cases.iter().enumerate()
    {
        let params = Conv2dParams { stride, padding, dilation, groups };
        let x = Tensor::rand_uniform(&[n, c, h, w], -1.0, 1.0, &mut rng).unwrap();
        let wt = Tensor::rand_uniform(&[k, c / groups, kh, kw], -1.0, 1.0, &mut rng).unwrap();
        let b = Tensor::rand_uniform(&[k], -1.0, 1.0, &mut rng).unwrap();
        let report = check_gradients(
            |v| project(v[0].conv2d(&v[1], Some(&v[2]), &params, ConvAlgo::Auto)?, 5),
            &[x, wt, b],
            EPS,
            2e-3,
            2e-3,
        )
        .unwrap();
        assert!(report.passed(), "case {i}: {report}");
    }
}

#[test]
fn pooling_gradients_match_finite_differences() {
    let mut rng = Rng::new(22);
    for (i, p) in [
        PoolParams::new(2),
        PoolParams::new(3).with_stride(2).with_padding(1),
        PoolParams::new(3).with_stride(1).with_padding(1).with_count_include_pad(false),
        PoolParams { kernel: (2, 3), stride: (1, 2), padding: (1, 1), count_include_pad: true },
    ]
    .into_iter()
    .enumerate()
    {
        // A permutation of well-separated values: no ties within a finite-difference step, so
        // max pooling is differentiable at the test point.
        let mut vals: Vec<f32> = (0..2 * 2 * 6 * 7).map(|v| v as f32 * 0.05).collect();
        rng.shuffle(&mut vals);
        let x = Tensor::from_vec(&[2, 2, 6, 7], vals).unwrap();
        let avg = check_gradients(
            |v| project(v[0].avg_pool2d(&p)?, 6),
            std::slice::from_ref(&x),
            EPS,
            2e-3,
            2e-3,
        )
        .unwrap();
        assert!(avg.passed(), "avg case {i}: {avg}");
        let max =
            check_gradients(|v| project(v[0].max_pool2d(&p)?, 7), &[x], EPS, 2e-3, 2e-3).unwrap();
        assert!(max.passed(), "max case {i}: {max}");
    }
}

#[test]
fn tiny_cnn_overfits_a_batch_of_32() {
    let mut rng = Rng::new(5);
    // 32 random 1x8x8 "images" with random labels among 4 classes: only memorization fits them.
    let x = Tensor::rand_uniform(&[32, 1, 8, 8], -1.0, 1.0, &mut rng).unwrap();
    let labels: Vec<usize> = (0..32).map(|_| rng.below(4)).collect();
    let p = |dims: &[usize], scale: f32, rng: &mut Rng| {
        Param::new(Tensor::rand_uniform(dims, -scale, scale, rng).unwrap())
    };
    let conv_w = p(&[8, 1, 3, 3], 0.33, &mut rng);
    let conv_b = p(&[8], 0.1, &mut rng);
    let fc_w = p(&[4, 8 * 3 * 3], 0.17, &mut rng);
    let fc_b = p(&[4], 0.1, &mut rng);
    let params = [&conv_w, &conv_b, &fc_w, &fc_b];
    let forward = |tape: Option<&Tape>| -> Result<Var> {
        let bind = |p: &Param| tape.map_or_else(|| Var::constant(p.value()), |t| t.param(p));
        let input = tape.map_or_else(|| Var::constant(x.clone()), |t| t.input(x.clone()));
        let h = input.conv2d(
            &bind(&conv_w),
            Some(&bind(&conv_b)),
            &Conv2dParams::default(),
            ConvAlgo::Auto,
        )?;
        let h = h.relu().max_pool2d(&PoolParams::new(2))?.flatten(1, 3)?;
        h.linear(&bind(&fc_w), Some(&bind(&fc_b)))
    };
    for _ in 0..300 {
        let tape = Tape::new();
        let loss = forward(Some(&tape)).unwrap().cross_entropy(&labels).unwrap();
        loss.backward().unwrap();
        for p in params {
            p.update(|v, g| v.axpy(-0.5, g.unwrap()).unwrap());
            p.zero_grad();
        }
    }
    let logits = forward(None).unwrap();
    let predicted = logits.value().argmax_axis(1).unwrap();
    let correct = predicted.iter().zip(&labels).filter(|(a, b)| a == b).count();
    assert_eq!(correct, 32, "memorized {correct} of 32");
}
