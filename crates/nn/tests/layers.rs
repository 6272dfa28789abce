//! Layers: BatchNorm2d against PyTorch, shapes and errors of every layer, train/eval modes.
//!
//! The BatchNorm2d numbers come from PyTorch 2.15 (float64) with this script:
//!
//! ```python
//! import torch
//! torch.set_default_dtype(torch.float64)
//! def r(*s): return (torch.arange(1, 1 + torch.tensor(s).prod().item(), dtype=torch.float64).reshape(*s) * 0.37 % 1.9 - 0.8)
//! def fmt(t): return "&[" + ", ".join(f"{v:.10}" for v in t.detach().flatten().tolist()) + "]"
//! bn = torch.nn.BatchNorm2d(3)
//! with torch.no_grad():
//!     bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0])); bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
//! x = r(2, 3, 2, 2).requires_grad_()
//! y = bn(x)
//! loss = (y * r(2, 3, 2, 2).flip(0)).sum()
//! loss.backward()
//! print("loss", loss.item())
//! print("grad_x", fmt(x.grad)); print("grad_w", fmt(bn.weight.grad)); print("grad_b", fmt(bn.bias.grad))
//! print("running_mean", fmt(bn.running_mean)); print("running_var", fmt(bn.running_var))
//! bn.eval()
//! print("eval_y", fmt(bn(r(1, 3, 1, 2))))
//! ```
#![allow(clippy::unwrap_used)]

use convkit_autograd::{Tape, Var};
use convkit_conv::Conv2dParams;
use convkit_nn::{
    AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Flatten, Linear, MaxPool2d, Module,
    ReLU, Residual, Sequential, Sigmoid, Tanh, named_params,
};
use convkit_tensor::testing::{Tolerance, assert_close};
use convkit_tensor::{Rng, Tensor};

fn r(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec(dims, (1..=n).map(|i| ((i as f64 * 0.37) % 1.9 - 0.8) as f32).collect())
        .unwrap()
}

/// f32 against PyTorch's float64: `5e-6 + 5e-6·|want|`, within `1e-5·max(|want|, 1)`.
const VS_PYTORCH: Tolerance = Tolerance::new(5e-6, 5e-6);

#[test]
fn batchnorm_matches_pytorch_in_both_modes() {
    let mut bn = BatchNorm2d::new(3).unwrap();
    bn.weight.set_value(Tensor::from_vec(&[3], vec![1.5, -0.5, 2.0]).unwrap()).unwrap();
    bn.bias.set_value(Tensor::from_vec(&[3], vec![0.1, 0.2, -0.3]).unwrap()).unwrap();
    let tape = Tape::new();
    let x = tape.var(r(&[2, 3, 2, 2]));
    let y = bn.forward(&x).unwrap();
    // r(2, 3, 2, 2).flip(0): the two images swapped.
    let probe = r(&[2, 3, 2, 2]);
    let flipped =
        Tensor::concat(&[probe.narrow(0, 1, 1).unwrap(), probe.narrow(0, 0, 1).unwrap()], 0)
            .unwrap();
    let loss = y.mul(&Var::constant(flipped)).unwrap().sum().unwrap();
    assert_close("loss", loss.value().as_slice(), &[-7.2084339426040325], VS_PYTORCH);
    let g = loss.backward().unwrap();
    assert_close(
        "grad_x",
        g.wrt(&x).unwrap().as_slice(),
        &[
            -0.739852388,
            0.7978180184,
            2.335488425,
            -1.795705404,
            0.162202542,
            0.3920727714,
            -0.1204840307,
            -0.6330408329,
            -1.210920623,
            1.096186368,
            -1.446578226,
            0.8605287648,
            -1.899122499,
            -0.3614520922,
            1.176218314,
            0.4866076259,
            -0.5985684681,
            0.7784961416,
            0.2659393395,
            -0.2466174627,
            0.2132527348,
            2.520359725,
            -2.169967867,
            0.1371391229,
        ],
        VS_PYTORCH,
    );
    assert_close(
        "grad_w",
        bn.weight.grad().unwrap().as_slice(),
        &[-1.580220769, -1.580220769, -3.011106587],
        VS_PYTORCH,
    );
    assert_close("grad_b", bn.bias.grad().unwrap().as_slice(), &[1.66, 2.1, 0.64], VS_PYTORCH);
    assert_close(
        "running_mean",
        bn.running_mean.value().as_slice(),
        &[0.02075, 0.02625, 0.008],
        VS_PYTORCH,
    );
    assert_close(
        "running_var",
        bn.running_var.value().as_slice(),
        &[0.928885, 0.928885, 0.9337028571],
        VS_PYTORCH,
    );
    bn.set_training(false);
    let y = bn.forward(&Var::constant(r(&[1, 3, 1, 2]))).unwrap();
    assert_close(
        "eval",
        y.value().as_slice(),
        &[-0.6015258552, -0.02567545825, 0.05279499988, -0.1391551324, 1.856706489, -1.31005064],
        VS_PYTORCH,
    );
}

#[test]
fn sequential_names_and_shapes() {
    let mut rng = Rng::new(0);
    let model = Sequential::new()
        .push(
            Conv2d::with_config(
                3,
                4,
                (3, 3),
                Conv2dConfig {
                    params: Conv2dParams::default().with_padding(1),
                    ..Default::default()
                },
                &mut rng,
            )
            .unwrap(),
        )
        .push(Tanh)
        .push(MaxPool2d::new(2))
        .push(Sigmoid)
        .push(Flatten)
        .push(Linear::new(16, 5, &mut rng).unwrap());
    let names: Vec<String> = named_params(&model).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "5.weight", "5.bias"]);
    let x = Var::constant(Tensor::ones(&[2, 3, 4, 4]));
    let mut seen = Vec::new();
    let y = model
        .forward_inspect(&x, &mut |name, v| seen.push((name.to_owned(), v.dims().to_vec())))
        .unwrap();
    assert_eq!(y.dims(), &[2, 5]);
    assert_eq!(seen[2], ("2".to_owned(), vec![2, 4, 2, 2]));
    assert!(!y.requires_grad(), "inference on a constant records nothing");
}

#[test]
fn layers_reject_bad_inputs_with_shapes() {
    let mut rng = Rng::new(1);
    let lin = Linear::new(4, 2, &mut rng).unwrap();
    let e = lin.forward(&Var::constant(Tensor::ones(&[3, 5]))).unwrap_err().to_string();
    assert!(e.contains("[3, 5]") && e.contains("[batch, 4]"), "{e}");
    let conv = Conv2d::new(3, 2, 3, &mut rng).unwrap();
    let e = conv.forward(&Var::constant(Tensor::ones(&[1, 2, 8, 8]))).unwrap_err().to_string();
    assert!(e.contains("[1, 2, 8, 8]") && e.contains("[2, 3, 3, 3]"), "{e}");
    let e =
        AvgPool2d::new(2).forward(&Var::constant(Tensor::ones(&[4, 4]))).unwrap_err().to_string();
    assert!(e.contains("[4, 4]"), "{e}");
    let bn = BatchNorm2d::new(3).unwrap();
    let e = bn.forward(&Var::constant(Tensor::ones(&[1, 2, 2, 2]))).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
    assert!(
        Conv2d::with_config(
            3,
            4,
            (3, 3),
            Conv2dConfig { params: Conv2dParams::default().with_groups(2), ..Default::default() },
            &mut rng
        )
        .is_err()
    );
    assert!(Dropout::new(1.0, 0).is_err());
    assert!(Linear::new(0, 2, &mut rng).is_err());
}

#[test]
fn dropout_trains_and_evaluates() {
    let mut d = Dropout::new(0.5, 3).unwrap();
    let x = Var::constant(Tensor::ones(&[1000]));
    let y = d.forward(&x).unwrap();
    let kept = y.value().as_slice().iter().filter(|&&v| v != 0.0).count();
    assert!((400..600).contains(&kept), "kept {kept} of 1000");
    assert!(y.value().as_slice().iter().all(|&v| v == 0.0 || v == 2.0));
    d.set_training(false);
    assert_eq!(d.forward(&x).unwrap().value(), x.value());
    let relu =
        ReLU.forward(&Var::constant(Tensor::from_vec(&[2], vec![-1.0, 2.0]).unwrap())).unwrap();
    assert_eq!(relu.value().as_slice(), &[0.0, 2.0]);
}

/// The bits of a tensor's values, for comparisons that must be exact.
fn bits(t: &Tensor) -> Vec<u32> {
    t.as_slice().iter().map(|v| v.to_bits()).collect()
}

/// One pass of `model` on a fresh tape, fused (`forward`) or layer by layer
/// (`forward_inspect`), backward from `Σ y · (r(y) − shift)`: the tape's node count, the
/// output's bits, and the bits of the input's and each parameter's gradient (the parameters'
/// gradients are cleared afterwards).
fn pass(
    model: &Sequential,
    x: &Tensor,
    fused: bool,
    shift: f32,
) -> (usize, Vec<u32>, Vec<Vec<u32>>) {
    let tape = Tape::new();
    let xv = tape.var(x.clone());
    let y = if fused {
        model.forward(&xv).unwrap()
    } else {
        model.forward_inspect(&xv, &mut |_, _| {}).unwrap()
    };
    let nodes = tape.len();
    let w = Var::constant(r(y.dims()).map(|v| v - shift));
    let g = y.mul(&w).unwrap().sum().unwrap().backward().unwrap();
    let mut grads = vec![bits(g.wrt(&xv).unwrap())];
    for (_, p) in named_params(model) {
        grads.push(bits(&p.grad().unwrap()));
        p.set_grad(None).unwrap();
    }
    (nodes, bits(y.value()), grads)
}

/// A convolution followed by a ReLU in a `Sequential` runs as one node
/// (`Var::conv2d_relu`); outputs and every gradient are bit for bit those of the two layers
/// run one by one (`forward_inspect`), with and without bias, strided and padded, over two
/// optimizer-free steps with different upstream gradients.
#[test]
fn fused_conv_relu_matches_the_two_layers_bit_for_bit() {
    let build = || {
        let mut rng = Rng::new(5);
        let strided = Conv2dConfig {
            params: Conv2dParams::default().with_stride(2).with_padding(1),
            bias: false,
            ..Default::default()
        };
        Sequential::new()
            .push(Conv2d::new(2, 5, 3, &mut rng).unwrap())
            .push(ReLU)
            .push(Conv2d::with_config(5, 4, (3, 3), strided, &mut rng).unwrap())
            .push(ReLU)
            .push(Conv2d::new(4, 3, 1, &mut rng).unwrap())
    };
    let (fused, layered) = (build(), build());
    let x = r(&[3, 2, 9, 8]).map(|v| 2.0 * v - 1.0);
    for step in 0..2 {
        let shift = 0.4 * step as f32;
        let (fused_nodes, fused_out, fused_grads) = pass(&fused, &x, true, shift);
        let (nodes, out, grads) = pass(&layered, &x, false, shift);
        // Two conv + ReLU pairs, one node each.
        assert_eq!(fused_nodes + 2, nodes);
        assert_eq!(fused_out, out, "output, step {step}");
        assert_eq!(fused_grads, grads, "gradients, step {step}");
    }
}

/// A batch norm or a residual block followed by a ReLU in a `Sequential` runs as one fused op; its outputs,
/// gradients and running statistics are bit for bit those of the two layers run one by one
/// (`forward_inspect`), in training and in evaluation.
#[test]
fn fused_batchnorm_relu_matches_the_two_layers_bit_for_bit() {
    let build = || {
        let mut rng = Rng::new(11);
        let pad =
            Conv2dConfig { params: Conv2dParams::default().with_padding(1), ..Default::default() };
        Sequential::new()
            .push(Conv2d::with_config(2, 4, (3, 3), pad, &mut rng).unwrap())
            .push(BatchNorm2d::new(4).unwrap())
            .push(ReLU)
            .push(Conv2d::new(4, 3, 2, &mut rng).unwrap())
            .push(BatchNorm2d::new(3).unwrap())
            .push(ReLU)
            .push(Residual::new(
                Sequential::new()
                    .push(Conv2d::with_config(3, 3, (3, 3), pad, &mut rng).unwrap())
                    .push(BatchNorm2d::new(3).unwrap()),
            ))
            .push(ReLU)
    };
    let (mut fused, mut layered) = (build(), build());
    let x = r(&[3, 2, 5, 6]);
    for step in 0..2 {
        let shift = 0.3 * step as f32;
        let (fused_nodes, fused_out, fused_grads) = pass(&fused, &x, true, shift);
        let (nodes, out, grads) = pass(&layered, &x, false, shift);
        // The fused model records one node fewer per fused pair (two batch norms, a residual).
        assert_eq!(fused_nodes + 3, nodes);
        assert_eq!(fused_out, out, "training output, step {step}");
        assert_eq!(fused_grads, grads, "gradients, step {step}");
    }
    let buffers = |m: &Sequential| {
        convkit_nn::named_buffers(m).iter().map(|(_, b)| bits(&b.value())).collect::<Vec<_>>()
    };
    assert_eq!(buffers(&fused), buffers(&layered));
    fused.set_training(false);
    layered.set_training(false);
    let x = r(&[2, 2, 4, 4]).map(|v| v * 3.0 - 0.5);
    let eval = |m: &Sequential, fuse: bool| {
        let xv = Var::constant(x.clone());
        let y = if fuse { m.forward(&xv) } else { m.forward_inspect(&xv, &mut |_, _| {}) };
        bits(y.unwrap().value())
    };
    assert_eq!(eval(&fused, true), eval(&layered, false));
}
