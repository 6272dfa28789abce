//! `conv2d_relu_backward` (the backward of a convolution followed by a ReLU, masked inside the
//! kernel) against masking the gradient first and running `conv2d_backward`: bit-identical
//! gradients for every algorithm, on shapes that take each path of the direct kernel (pixel
//! lanes, output channels in vectors, depthwise 3x3, the im2col fallback of strided shapes),
//! with ties (outputs exactly zero) and NaNs in the mask, and for pools of 1 and 2 threads.
//! `conv2d_relu_forward` (the ReLU applied by the kernel) against the forward followed by
//! `Tensor::relu`'s rule, on the same shapes, NaN and `−0.0` outputs included.
#![allow(clippy::unwrap_used)]

mod common;

use common::{data, geom};
use convkit_conv::{
    BackwardInputs, Conv2dParams, ConvAlgo, ConvError, ConvGeometry, GradBuffers, conv2d_backward,
    conv2d_forward, conv2d_relu_backward, conv2d_relu_forward, supports,
};
use rayon::ThreadPoolBuilder;

/// Shapes for every backward path; see the module comment.
fn geometries() -> Vec<ConvGeometry> {
    let p = Conv2dParams::default();
    vec![
        // LeNet's layers: pixel lanes (6 output channels), then 16 (channels in vectors).
        geom([3, 1, 32, 32], [6, 1, 5, 5], p),
        geom([3, 6, 14, 14], [16, 6, 5, 5], p),
        // 3x3 with padding: 8 output channels; 3 per group of 2.
        geom([2, 4, 9, 11], [8, 4, 3, 3], p.with_padding(1)),
        geom([2, 6, 7, 7], [6, 3, 3, 3], p.with_padding(1).with_groups(2)),
        // Depthwise 3x3: the depthwise kernels read the gradient in place.
        geom([2, 8, 10, 10], [8, 1, 3, 3], p.with_padding(1).with_groups(8)),
        // Strided: the direct forward's backward runs on im2col.
        geom([2, 3, 11, 11], [5, 3, 3, 3], p.with_stride(2).with_padding(1)),
        // Winograd-sized.
        geom([2, 16, 12, 12], [16, 16, 3, 3], p.with_padding(1)),
    ]
}

/// The three gradients, as vectors.
type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Runs `f` with fresh gradient buffers for `g` and returns them.
fn grads_of(g: &ConvGeometry, f: impl FnOnce(GradBuffers<'_>)) -> Grads {
    let (mut gx, mut gw, mut gb) =
        (vec![f32::NAN; g.input_len()], vec![f32::NAN; g.weight_len()], vec![f32::NAN; g.c_out]);
    f(GradBuffers { input: Some(&mut gx), weight: Some(&mut gw), bias: Some(&mut gb) });
    (gx, gw, gb)
}

/// Operands for `g`: input, weight, the ReLU of the forward output (with exact zeros and a
/// NaN among them), and an output gradient.
fn operands(g: &ConvGeometry, seed: u64) -> [Vec<f32>; 4] {
    let x = data(g.input_len(), seed);
    let w = data(g.weight_len(), seed + 1);
    let mut y = vec![0.0; g.output_len()];
    conv2d_forward(g, &x, &w, None, &mut y, ConvAlgo::Naive).unwrap();
    for v in &mut y {
        *v = v.max(0.0);
    }
    y[g.output_len() / 3] = f32::NAN;
    let dy = data(g.output_len(), seed + 2);
    [x, w, y, dy]
}

/// Panics naming the first element where `got` and `expected` differ in their bits.
fn same_bits(got: &[f32], expected: &[f32], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    if let Some(j) = got.iter().zip(expected).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!("{what}: element {j} is {} instead of {}", got[j], expected[j]);
    }
}

#[test]
fn fused_mask_matches_masking_first() {
    let pools = [1, 2].map(|t| ThreadPoolBuilder::new().num_threads(t).build().unwrap());
    for (i, g) in geometries().iter().enumerate() {
        let [x, w, y, dy] = operands(g, 10 * i as u64);
        let masked: Vec<f32> =
            dy.iter().zip(&y).map(|(&d, &v)| if v > 0.0 { d } else { 0.0 }).collect();
        assert!(masked.iter().zip(&dy).any(|(m, d)| m != d), "case {i}: the mask masks nothing");
        for algo in ConvAlgo::ALL.into_iter().filter(|&a| a == ConvAlgo::Auto || supports(a, g)) {
            let expected = grads_of(g, |grads| {
                let inputs = BackwardInputs { input: &x, weight: &w, grad_output: &masked };
                conv2d_backward(g, inputs, grads, algo).unwrap();
            });
            for pool in &pools {
                let got = pool.install(|| {
                    grads_of(g, |grads| {
                        let inputs = BackwardInputs { input: &x, weight: &w, grad_output: &dy };
                        conv2d_relu_backward(g, inputs, &y, grads, algo).unwrap();
                    })
                });
                let what =
                    format!("case {i} {g:?}, {algo}, {} threads", pool.current_num_threads());
                same_bits(&got.0, &expected.0, &format!("input gradient, {what}"));
                same_bits(&got.1, &expected.1, &format!("weight gradient, {what}"));
                same_bits(&got.2, &expected.2, &format!("bias gradient, {what}"));
            }
        }
    }
}

#[test]
fn a_mask_of_the_wrong_length_is_an_error() {
    let g = &geometries()[0];
    let [x, w, y, dy] = operands(g, 1);
    for algo in [ConvAlgo::Direct, ConvAlgo::Im2col] {
        let e = grads_of(g, |grads| {
            let inputs = BackwardInputs { input: &x, weight: &w, grad_output: &dy };
            let e = conv2d_relu_backward(g, inputs, &y[1..], grads, algo).unwrap_err();
            assert!(
                matches!(e, ConvError::BufferLength { what: "relu_output", .. }),
                "{algo}: {e}"
            );
        });
        drop(e);
    }
}

#[test]
fn fused_relu_forward_matches_the_forward_then_relu() {
    let pools = [1, 2].map(|t| ThreadPoolBuilder::new().num_threads(t).build().unwrap());
    let p = Conv2dParams::default();
    let mut shapes = geometries();
    // All-negative input, channel 0's filter zero and its bias −0.0: that channel's outputs
    // are −0.0 on the direct kernel, which the ReLU keeps.
    shapes.push(geom([2, 2, 7, 9], [3, 2, 3, 3], p));
    let mut signed_zeros = 0;
    for (i, g) in shapes.iter().enumerate() {
        let last = i == shapes.len() - 1;
        let mut x = data(g.input_len(), 30 + i as u64);
        let mut w = data(g.weight_len(), 31 + i as u64);
        let mut b = data(g.c_out, 32 + i as u64);
        if last {
            x.iter_mut().for_each(|v| *v = -1.0 - v.abs());
            w[..g.weight_len() / g.c_out].fill(0.0);
            b[0] = -0.0;
        } else {
            // A NaN in the last image: its outputs near it are NaN, which the ReLU keeps.
            x[g.input_len() - 5] = f32::NAN;
        }
        for algo in ConvAlgo::ALL.into_iter().filter(|&a| a == ConvAlgo::Auto || supports(a, g)) {
            let mut expected = vec![0.0; g.output_len()];
            conv2d_forward(g, &x, &w, Some(&b), &mut expected, algo).unwrap();
            for v in &mut expected {
                *v = if *v < 0.0 { 0.0 } else { *v };
            }
            signed_zeros += expected.iter().filter(|v| **v == 0.0 && v.is_sign_negative()).count();
            for pool in &pools {
                let mut got = vec![f32::NAN; g.output_len()];
                pool.install(|| conv2d_relu_forward(g, &x, &w, Some(&b), &mut got, algo)).unwrap();
                let what =
                    format!("case {i} {g:?}, {algo}, {} threads", pool.current_num_threads());
                same_bits(&got, &expected, &format!("output, {what}"));
            }
            assert!(last || expected.iter().any(|v| v.is_nan()), "case {i} {algo}: no NaN");
        }
    }
    assert!(signed_zeros > 0, "no −0.0 output was kept");
}
