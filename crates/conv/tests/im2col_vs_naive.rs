//! im2col + GEMM against the naive f64 reference: random shapes (proptest), named regression
//! cases, and large shapes where tiled GEMM code tends to break.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Operands, compare, geom, run};
use convkit_conv::testing::conv2d_im2col;
use convkit_conv::testing::tolerance;
use convkit_conv::{Conv2dParams, ConvAlgo, ConvGeometry, conv2d_naive};
use proptest::prelude::*;

/// A random convolution: channels 1..=20 with groups among the divisors of `c_in`, batch
/// 1..=4, sizes 1..=40, kernels 1..=7, stride 1..=3, padding 0..=3, dilation 1..=3.
fn case() -> impl Strategy<Value = (ConvGeometry, u64, bool)> {
    (1usize..=20)
        .prop_flat_map(|c_in| {
            let divisors: Vec<usize> = (1..=c_in).filter(|d| c_in % d == 0).collect();
            (Just(c_in), prop::sample::select(divisors))
        })
        .prop_flat_map(|(c_in, groups)| {
            (
                (Just(c_in), Just(groups), 1..=(20 / groups).max(1), 1usize..=4),
                (1usize..=40, 1usize..=40, 1usize..=7, 1usize..=7),
                (1usize..=3, 1usize..=3, 0usize..=3, 0usize..=3, 1usize..=3, 1usize..=3),
                (any::<u64>(), any::<bool>()),
            )
        })
        .prop_filter_map(
            "kernel larger than the padded input, or too slow for the naive reference",
            |((c_in, groups, kpg, n), (h, w, kh, kw), (sh, sw, ph, pw, dh, dw), (seed, bias))| {
                let params = Conv2dParams {
                    stride: (sh, sw),
                    padding: (ph, pw),
                    dilation: (dh, dw),
                    groups,
                };
                let g = ConvGeometry::new(
                    [n, c_in, h, w],
                    [kpg * groups, c_in / groups, kh, kw],
                    params,
                )
                .ok()?;
                (g.flops() < 40_000_000).then_some((g, seed, bias))
            },
        )
}

fn check(g: &ConvGeometry, seed: u64, bias: bool) -> Result<(), String> {
    let o = Operands::new(g, seed, bias);
    let reference = run(g, &o, ConvAlgo::Naive);
    let got = run(g, &o, ConvAlgo::Im2col);
    compare(g, &o, tolerance::F32_SUM, &got, &reference)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::cases(160),
        max_global_rejects: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Forward and all three gradients match the reference on random shapes.
    #[test]
    fn im2col_matches_naive((g, seed, bias) in case()) {
        if let Err(e) = check(&g, seed, bias) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Edge shapes: 1x1 everything, a kernel exactly as large as the padded input, taps that
/// land entirely in the padding, and odd GEMM sizes (1, 7, 17, 257 columns).
#[test]
fn edge_shapes() {
    let p = Conv2dParams::default();
    let cases = [
        geom([1, 1, 1, 1], [1, 1, 1, 1], p),
        geom([2, 3, 1, 1], [5, 3, 1, 1], p.with_padding(3).with_stride(3)),
        geom([1, 2, 3, 3], [4, 2, 5, 5], p.with_padding(1)),
        geom([1, 1, 2, 2], [1, 1, 3, 3], p.with_padding(3).with_dilation(3)),
        geom([3, 7, 1, 7], [17, 7, 1, 1], p),
        geom([1, 4, 1, 257], [10, 2, 1, 3], p.with_groups(2).with_padding(1)),
        geom([1, 3, 40, 1], [2, 3, 7, 1], p.with_stride(3)),
        geom([4, 20, 9, 9], [20, 1, 7, 7], p.with_groups(20).with_padding(3).with_dilation(2)),
    ];
    for (i, g) in cases.iter().enumerate() {
        check(g, i as u64, i % 2 == 0).unwrap();
    }
}

/// Output channels `rows` of a `[c_out, …]` weight, as a smaller weight.
fn weight_rows(w: &[f32], per_row: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
    w[rows.start * per_row..rows.end * per_row].to_vec()
}

/// 64 → 384 channels at 56x56: blocks of output channels at both ends and in the middle
/// (where GEMM micro-tiles and cache blocks meet) against the reference run on those
/// channels only. Output channel k depends only on weight row k, so this is exact coverage
/// of those rows without the cost of the full reference.
#[test]
fn large_forward_64_to_384() {
    let p = Conv2dParams::default().with_padding(1);
    let g = geom([1, 64, 56, 56], [384, 64, 3, 3], p);
    let o = Operands::new(&g, 7, true);
    let mut out = vec![0.0; g.output_len()];
    conv2d_im2col(&g, &o.x, &o.w, o.b.as_deref(), &mut out).unwrap();
    let per_row = 64 * 9;
    let plane = 56 * 56;
    for rows in [0..8, 190..197, 376..384] {
        let sub = geom([1, 64, 56, 56], [rows.len(), 64, 3, 3], p);
        let w = weight_rows(&o.w, per_row, rows.clone());
        let b = o.b.as_ref().map(|b| b[rows.clone()].to_vec());
        let mut reference = vec![0.0; sub.output_len()];
        conv2d_naive(&sub, &o.x, &w, b.as_deref(), &mut reference).unwrap();
        let tol = common::sum_tolerance(tolerance::F32_SUM, per_row + 1, 1.0);
        tol.check(&out[rows.start * plane..rows.end * plane], &reference).unwrap();
    }
}

/// Large backward: 64 → 96 channels at 56x56 (batch 2) and 384 → 64 channels at 28x28, all
/// gradients against the full reference.
#[test]
fn large_backward() {
    let p = Conv2dParams::default();
    for (i, g) in [
        geom([2, 64, 56, 56], [96, 64, 3, 3], p.with_padding(1)),
        geom([1, 384, 28, 28], [64, 384, 1, 1], p),
        geom([1, 384, 14, 14], [64, 384, 3, 3], p.with_padding(1).with_stride(2)),
    ]
    .iter()
    .enumerate()
    {
        check(g, 100 + i as u64, true).unwrap();
    }
}
