//! Backward after a Winograd forward: the input gradient runs as a Winograd convolution of
//! `dY` with the flipped, channel-swapped filters (`conv2d_input_grad_winograd`); the weight
//! gradient runs in the Winograd transform domain (`conv2d_weight_grad_winograd`) on layers
//! with at least 196 output pixels per channel, on im2col below; the bias gradient on
//! im2col. Every gradient is checked against the f64 naive reference on random 3x3 stride-1
//! shapes (padding, dilation, groups, odd sizes), with the Winograd weight gradient of both
//! variants also called directly (the random shapes are mostly below the 196-pixel rule), on
//! a large layer, and the shapes without such a form (padding above twice the dilation) fall
//! back to im2col. The Winograd weight gradient is bit-identical for 1, 2 and 3 threads.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Operands, compare, geom, max_abs, run, stride2_geometries, sum_tolerance};
use convkit_conv::testing::tolerance;
use convkit_conv::testing::{conv2d_input_grad_winograd, conv2d_weight_grad_winograd};
use convkit_conv::{Conv2dParams, ConvAlgo, ConvGeometry, WinogradVariant};
use convkit_tensor::testing::Tolerance;
use proptest::prelude::*;

const ALGOS: [(ConvAlgo, WinogradVariant, Tolerance); 2] = [
    (ConvAlgo::Winograd2, WinogradVariant::F2x2_3x3, tolerance::WINOGRAD_F2),
    (ConvAlgo::Winograd4, WinogradVariant::F4x4_3x3, tolerance::WINOGRAD_F4),
];

fn check(g: &ConvGeometry, seed: u64, bias: bool) -> Result<(), String> {
    let o = Operands::new(g, seed, bias);
    let reference = run(g, &o, ConvAlgo::Naive);
    for (algo, _, tol) in ALGOS {
        let got = run(g, &o, algo);
        compare(g, &o, tol, &got, &reference).map_err(|e| format!("{algo}: {e}"))?;
    }
    // The Winograd weight gradient of each variant, called directly.
    for (_, variant, tol) in ALGOS {
        let gw = weight_grad(g, &o, variant);
        let bound = max_abs(&o.dy) * max_abs(&o.x);
        sum_tolerance(tol, g.n * g.oh * g.ow, bound)
            .check(&gw, &reference.gw)
            .map_err(|e| format!("{} weight gradient: {e} ({g:?})", variant.name()))?;
    }
    Ok(())
}

/// `conv2d_weight_grad_winograd` on `o`, into a buffer of NaNs (every element must be written).
fn weight_grad(g: &ConvGeometry, o: &Operands, variant: WinogradVariant) -> Vec<f32> {
    let mut gw = vec![f32::NAN; g.weight_len()];
    assert!(conv2d_weight_grad_winograd(g, &o.x, &o.dy, &mut gw, variant).unwrap());
    gw
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

/// The stride-2 weight gradient against the reference: odd sizes, every padding, groups.
#[test]
fn stride2_weight_gradient() {
    let v = WinogradVariant::F2x2_3x3S2;
    for g in stride2_geometries() {
        let o = Operands::new(&g, 3, true);
        let reference = run(&g, &o, ConvAlgo::Naive);
        let gw = weight_grad(&g, &o, v);
        let bound = max_abs(&o.dy) * max_abs(&o.x);
        sum_tolerance(tolerance::WINOGRAD_F2, g.n * g.oh * g.ow, bound)
            .check(&gw, &reference.gw)
            .unwrap_or_else(|e| panic!("{g:?}: {e}"));
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

#[test]
fn weight_gradient_through_the_dispatcher() {
    // 2·24·24 = 1152 output pixels per channel: `conv2d_backward` takes the Winograd weight
    // gradient after either Winograd forward (F(4x4,3x3) here, F(2x2,3x3) when dilated).
    let p = Conv2dParams::default();
    check(&geom([2, 16, 24, 24], [24, 16, 3, 3], p.with_padding(1)), 21, true).unwrap();
    let pd = Conv2dParams { padding: (2, 2), dilation: (2, 2), groups: 2, ..p };
    check(&geom([2, 16, 25, 23], [8, 8, 3, 3], pd), 22, false).unwrap();
    // Shapes the weight gradient declines: written through im2col instead.
    let mut gw = vec![0f32; 4 * 4 * 25];
    let g5 = geom([2, 4, 8, 8], [4, 4, 5, 5], p);
    let o = Operands::new(&g5, 1, false);
    let f2 = WinogradVariant::F2x2_3x3;
    assert!(!conv2d_weight_grad_winograd(&g5, &o.x, &o.dy, &mut gw, f2).unwrap());
    let strided = geom([2, 4, 8, 8], [4, 4, 3, 3], Conv2dParams { stride: (2, 2), ..p });
    let o = Operands::new(&strided, 1, false);
    gw.truncate(4 * 4 * 9);
    assert!(!conv2d_weight_grad_winograd(&strided, &o.x, &o.dy, &mut gw, f2).unwrap());
}

#[test]
fn weight_gradient_same_bits_for_1_2_and_3_threads() {
    let p = Conv2dParams::default();
    // Several tile blocks (the accumulation chain), two groups, dilation, batch 1, and a
    // batch split into uneven image ranges (9 images: 5 ranges of 2, 2, 2, 2 and 1).
    let shapes = [
        geom([3, 64, 30, 30], [96, 64, 3, 3], p.with_padding(1)),
        geom([9, 16, 28, 28], [16, 16, 3, 3], p.with_padding(1)),
        geom([2, 32, 29, 27], [32, 16, 3, 3], p.with_padding(2).with_dilation(2).with_groups(2)),
        geom([1, 24, 40, 40], [24, 24, 3, 3], p),
    ];
    for (i, g) in shapes.iter().enumerate() {
        let o = Operands::new(g, 70 + i as u64, false);
        for (_, variant, _) in ALGOS {
            let in_pool = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let gw = pool.install(|| weight_grad(g, &o, variant));
                gw.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
            };
            let one = in_pool(1);
            assert_eq!(one, in_pool(2), "{} 2 threads {g:?}", variant.name());
            assert_eq!(one, in_pool(3), "{} 3 threads {g:?}", variant.name());
        }
    }
}

/// The input gradient of one image with few tiles: on two threads its products are split by
/// transform position (and its output transform by channel). The same bits as on one thread,
/// the reference's values within tolerance, with a partial last panel (46 input channels).
#[test]
fn input_gradient_of_one_image_same_bits_on_one_and_two_threads() {
    let g = geom([1, 46, 10, 10], [40, 46, 3, 3], Conv2dParams::default().with_padding(1));
    let o = Operands::new(&g, 21, true);
    let reference = run(&g, &o, ConvAlgo::Naive);
    for (algo, variant, tol) in ALGOS {
        let in_pool = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut gx = vec![f32::NAN; g.input_len()];
            let done =
                pool.install(|| conv2d_input_grad_winograd(&g, &o.w, &o.dy, &mut gx, variant));
            assert!(done.unwrap(), "{algo} declined {g:?}");
            gx
        };
        let (one, two) = (in_pool(1), in_pool(2));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&one), bits(&two), "{algo}: 1 and 2 threads differ");
        let mut got = reference.clone();
        got.gx = two;
        compare(&g, &o, tol, &got, &reference).unwrap_or_else(|e| panic!("{algo}: {e}"));
    }
}
