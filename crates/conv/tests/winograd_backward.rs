//! Backward after a Winograd forward: the input gradient runs as a Winograd convolution of
//! `dY` with the flipped, channel-swapped filters (`conv2d_input_grad_winograd`); the weight
//! and bias gradients run on im2col. Every gradient is checked against the f64 naive reference
//! on random 3x3 stride-1 shapes (padding, dilation, groups, odd sizes), on a large layer, and
//! the shapes without such a form (padding above twice the dilation) fall back to im2col.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Operands, compare, geom, run};
use convkit_conv::winograd::conv2d_input_grad_winograd;
use convkit_conv::{Conv2dParams, ConvAlgo, ConvGeometry, Tolerance, WinogradVariant};
use proptest::prelude::*;

const ALGOS: [(ConvAlgo, WinogradVariant, Tolerance); 2] = [
    (ConvAlgo::Winograd2, WinogradVariant::F2x2_3x3, Tolerance::WINOGRAD_F2),
    (ConvAlgo::Winograd4, WinogradVariant::F4x4_3x3, Tolerance::WINOGRAD_F4),
];

fn check(g: &ConvGeometry, seed: u64, bias: bool) -> Result<(), String> {
    let o = Operands::new(g, seed, bias);
    let reference = run(g, &o, ConvAlgo::Naive);
    for (algo, _, tol) in ALGOS {
        let got = run(g, &o, algo);
        compare(g, &o, tol, &got, &reference).map_err(|e| format!("{algo}: {e}"))?;
    }
    Ok(())
}

/// A random 3x3 stride-1 convolution: channels 1..=16 with groups among the divisors of
/// `c_in`, batch 1..=3, sizes 1..=30, padding 0..=3, dilation 1..=3.
fn case() -> impl Strategy<Value = (ConvGeometry, u64, bool)> {
    (1usize..=16)
        .prop_flat_map(|c_in| {
            let divisors: Vec<usize> = (1..=c_in).filter(|d| c_in % d == 0).collect();
            (Just(c_in), prop::sample::select(divisors))
        })
        .prop_flat_map(|(c_in, groups)| {
            (
                (Just(c_in), Just(groups), 1..=(16 / groups).max(1), 1usize..=3),
                (1usize..=30, 1usize..=30, 0usize..=3, 0usize..=3, 1usize..=3, 1usize..=3),
                (any::<u64>(), any::<bool>()),
            )
        })
        .prop_filter_map(
            "kernel larger than the padded input",
            |((c_in, groups, kpg, n), (h, w, ph, pw, dh, dw), (seed, bias))| {
                let params =
                    Conv2dParams { stride: (1, 1), padding: (ph, pw), dilation: (dh, dw), groups };
                let g =
                    ConvGeometry::new([n, c_in, h, w], [kpg * groups, c_in / groups, 3, 3], params)
                        .ok()?;
                Some((g, seed, bias))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::cases(128),
        max_global_rejects: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn winograd_backward_matches_naive((g, seed, bias) in case()) {
        check(&g, seed, bias).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn large_layer_and_edge_tiles() {
    let p = Conv2dParams::default();
    // 64 → 96 channels, 29x31: partial tiles on both edges, several GEMM blocks.
    check(&geom([2, 64, 29, 31], [96, 64, 3, 3], p.with_padding(1)), 11, true).unwrap();
    // Dilated and grouped.
    let pd = Conv2dParams { padding: (2, 2), dilation: (2, 2), groups: 4, ..p };
    check(&geom([2, 32, 20, 17], [32, 8, 3, 3], pd), 12, false).unwrap();
}

#[test]
fn only_eligible_shapes_take_the_winograd_input_gradient() {
    let p = Conv2dParams::default();
    let mut gx = vec![0f32; 2 * 4 * 8 * 8];
    let run_on = |g: &ConvGeometry, gx: &mut Vec<f32>| {
        gx.resize(g.input_len(), 0.0);
        let o = Operands::new(g, 1, false);
        conv2d_input_grad_winograd(g, &o.w, &o.dy, gx, WinogradVariant::F2x2_3x3).unwrap()
    };
    assert!(run_on(&geom([2, 4, 8, 8], [4, 4, 3, 3], p.with_padding(2)), &mut gx));
    // Padding 3 with dilation 1 would need a negative padding: declined (im2col runs).
    assert!(!run_on(&geom([2, 4, 8, 8], [4, 4, 3, 3], p.with_padding(3)), &mut gx));
    let strided = Conv2dParams { stride: (2, 2), ..p };
    assert!(!run_on(&geom([2, 4, 8, 8], [4, 4, 3, 3], strided), &mut gx));
    assert!(!run_on(&geom([2, 4, 8, 8], [4, 4, 5, 5], p), &mut gx));
    // Those shapes still give correct gradients through `conv2d_backward`.
    check(&geom([2, 4, 8, 8], [4, 4, 3, 3], p.with_padding(3)), 5, true).unwrap();
}
