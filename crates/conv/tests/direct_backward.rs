//! The direct backward kernel against the naive f64 reference: random shapes (proptest) with
//! both instruction sets, the suite's LeNet and depthwise shapes, the dispatcher, and
//! bit-identical gradients for rayon pools of 1 and 2 threads.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Operands, Results, compare, geom};
use convkit_conv::suite::SHAPES;
use convkit_conv::testing::{
    backward_kernel, conv2d_backward_direct, conv2d_backward_direct_with, tolerance,
};
use convkit_conv::{
    BackwardInputs, Conv2dParams, ConvAlgo, ConvGeometry, GradBuffers, SimdLevel, conv2d_backward,
    conv2d_backward_naive,
};
use proptest::prelude::*;
use rayon::ThreadPoolBuilder;

/// A random convolution: channels 1..=20 with groups among the divisors of `c_in` (depthwise
/// included), batch 1..=4, sizes 1..=40, kernels 1..=7, stride 1..=3, padding 0..=3, dilation
/// 1..=3.
fn case() -> impl Strategy<Value = (ConvGeometry, u64)> {
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
                any::<u64>(),
            )
        })
        .prop_filter_map(
            "kernel larger than the padded input, or too slow for the naive reference",
            |((c_in, groups, kpg, n), (h, w, kh, kw), (sh, sw, ph, pw, dh, dw), seed)| {
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
                (g.flops() < 10_000_000).then_some((g, seed))
            },
        )
}

/// The three gradients of the reference (and its output slot left empty).
fn reference(g: &ConvGeometry, o: &Operands) -> Results {
    let mut r = Results {
        out: Vec::new(),
        gx: vec![0.0; g.input_len()],
        gw: vec![0.0; g.weight_len()],
        gb: vec![0.0; g.c_out],
    };
    conv2d_backward_naive(
        g,
        BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
        GradBuffers { input: Some(&mut r.gx), weight: Some(&mut r.gw), bias: Some(&mut r.gb) },
    )
    .unwrap();
    r
}

/// The three gradients of the direct kernel at `level` (NaN-filled first: overwrite semantics).
fn direct(g: &ConvGeometry, o: &Operands, level: SimdLevel) -> Results {
    let mut r = Results {
        out: Vec::new(),
        gx: vec![f32::NAN; g.input_len()],
        gw: vec![f32::NAN; g.weight_len()],
        gb: vec![f32::NAN; g.c_out],
    };
    conv2d_backward_direct_with(
        level,
        g,
        BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
        GradBuffers { input: Some(&mut r.gx), weight: Some(&mut r.gw), bias: Some(&mut r.gb) },
    )
    .unwrap();
    r
}

/// The levels this CPU can run; says which are skipped.
fn levels() -> Vec<SimdLevel> {
    let l = SimdLevel::available_levels();
    for missing in SimdLevel::ALL.into_iter().filter(|x| !l.contains(x)) {
        eprintln!("skipping the {missing} path: this CPU lacks it");
    }
    l
}

fn check(g: &ConvGeometry, seed: u64) -> Result<(), String> {
    let o = Operands::new(g, seed, false);
    let want = reference(g, &o);
    for level in levels() {
        let got = direct(g, &o, level);
        compare(g, &o, tolerance::F32_SUM, &got, &want).map_err(|e| format!("{level}: {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::cases(96),
        max_global_rejects: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// All three gradients match the reference on random shapes, with both instruction sets.
    #[test]
    fn direct_backward_matches_naive((g, seed) in case()) {
        if let Err(e) = check(&g, seed) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Edge shapes: 1x1 everything, a kernel as large as the padded input, taps entirely in the
/// padding, padding larger than the dilated kernel, one-pixel-wide rows and columns.
#[test]
fn edge_shapes() {
    let p = Conv2dParams::default();
    let cases = [
        geom([1, 1, 1, 1], [1, 1, 1, 1], p),
        geom([2, 3, 1, 1], [5, 3, 1, 1], p.with_padding(3).with_stride(3)),
        geom([1, 2, 3, 3], [4, 2, 5, 5], p.with_padding(1)),
        geom([1, 1, 2, 2], [1, 1, 3, 3], p.with_padding(3).with_dilation(3)),
        geom([1, 2, 4, 4], [3, 2, 2, 2], p.with_padding(3)),
        geom([3, 7, 1, 7], [17, 7, 1, 1], p),
        geom([1, 4, 1, 257], [10, 2, 1, 3], p.with_groups(2).with_padding(1)),
        geom([1, 3, 40, 1], [2, 3, 7, 1], p.with_stride(3)),
        geom([4, 20, 9, 9], [20, 1, 7, 7], p.with_groups(20).with_padding(3).with_dilation(2)),
        geom([2, 12, 9, 11], [7, 12, 3, 3], p.with_padding(1)),
    ];
    for (i, g) in cases.iter().enumerate() {
        check(g, i as u64).unwrap();
    }
}

/// The suite shapes the kernel is wired for: LeNet's two layers and the depthwise 3x3.
#[test]
fn suite_shapes() {
    for name in ["lenet_c1", "lenet_c2", "depthwise"] {
        let shape = SHAPES.iter().find(|s| s.name == name).unwrap();
        let g = shape.geometry().unwrap();
        check(&g, 7).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// LeNet-like layers (stride 1, one group, several input channels): every padding up to
/// `k − 1`, 3x3 and 5x5, odd sizes, one image and several; and neighbours with one input
/// channel, a narrow output, padding of `k` and groups.
#[test]
fn lenet_like_layers_every_padding() {
    let p = Conv2dParams::default();
    let mut cases = Vec::new();
    for (k, pad) in [(3, 0), (3, 1), (3, 2), (5, 0), (5, 2), (5, 4)] {
        cases.push(geom([3, 6, 14, 13], [16, 6, k, k], p.with_padding(pad)));
        cases.push(geom([1, 2, 9 + k, 8 + k], [5, 2, k, k], p.with_padding(pad)));
    }
    // Outside: one input channel, a 7-wide output, padding of k, groups.
    cases.push(geom([2, 1, 16, 16], [4, 1, 5, 5], p));
    cases.push(geom([2, 3, 11, 11], [4, 3, 5, 5], p));
    cases.push(geom([2, 3, 10, 10], [4, 3, 3, 3], p.with_padding(3)));
    cases.push(geom([2, 4, 12, 12], [4, 2, 3, 3], p.with_groups(2)));
    for (i, g) in cases.iter().enumerate() {
        check(g, 100 + i as u64).unwrap_or_else(|e| panic!("{g:?}: {e}"));
    }
}

/// Only the requested gradients are written; the others may be absent.
#[test]
fn partial_requests() {
    let g = geom([3, 4, 10, 10], [6, 2, 3, 3], Conv2dParams::default().with_groups(2));
    let o = Operands::new(&g, 3, false);
    let want = reference(&g, &o);
    let mut gw = vec![f32::NAN; g.weight_len()];
    conv2d_backward_direct(
        &g,
        BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
        GradBuffers { input: None, weight: Some(&mut gw), bias: None },
    )
    .unwrap();
    let mut gx = vec![f32::NAN; g.input_len()];
    conv2d_backward_direct(
        &g,
        BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
        GradBuffers { input: Some(&mut gx), weight: None, bias: None },
    )
    .unwrap();
    let mut gb = vec![f32::NAN; g.c_out];
    conv2d_backward_direct(
        &g,
        BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
        GradBuffers { input: None, weight: None, bias: Some(&mut gb) },
    )
    .unwrap();
    let got = Results { out: Vec::new(), gx, gw, gb };
    compare(&g, &o, tolerance::F32_SUM, &got, &want).unwrap();
    // Wrong lengths are errors that name the buffer.
    let mut short = vec![0.0; g.c_out - 1];
    let e = conv2d_backward_direct(
        &g,
        BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
        GradBuffers { input: None, weight: None, bias: Some(&mut short) },
    );
    assert!(e.unwrap_err().to_string().contains("grad_bias"));
}

/// `Auto` and `Direct` route the LeNet and depthwise gradients to the direct kernel (same
/// bits); strided shapes stay on im2col.
#[test]
fn dispatcher_uses_direct_where_it_wins() {
    for name in ["lenet_c1", "lenet_c2", "depthwise"] {
        let g = SHAPES.iter().find(|s| s.name == name).unwrap().geometry().unwrap();
        assert_eq!(backward_kernel(ConvAlgo::Direct, &g), ConvAlgo::Direct, "{name}");
        let o = Operands::new(&g, 11, false);
        let want = direct(&g, &o, convkit_conv::simd::active());
        let (mut gx, mut gw, mut gb) =
            (vec![0.0; g.input_len()], vec![0.0; g.weight_len()], vec![0.0; g.c_out]);
        let ran = conv2d_backward(
            &g,
            BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
            GradBuffers { input: Some(&mut gx), weight: Some(&mut gw), bias: Some(&mut gb) },
            ConvAlgo::Direct,
        )
        .unwrap();
        assert_eq!(ran, ConvAlgo::Direct);
        assert_eq!((gx, gw, gb), (want.gx, want.gw, want.gb), "{name}");
    }
    let strided = geom([2, 1, 9, 9], [4, 1, 3, 3], Conv2dParams::default().with_stride(2));
    assert_eq!(backward_kernel(ConvAlgo::Direct, &strided), ConvAlgo::Im2col);
    assert_eq!(backward_kernel(ConvAlgo::Winograd4, &strided), ConvAlgo::Im2col);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bit-identical gradients for rayon pools of 1 and 2 threads, on shapes above the size where
/// the kernel goes parallel: uneven batch chunks (n = 11), more images than chunks (n = 20),
/// depthwise, strided and dilated.
#[test]
fn same_bits_for_1_and_2_threads() {
    let p = Conv2dParams::default();
    let shapes = [
        geom([11, 6, 14, 14], [16, 6, 5, 5], p),
        geom([20, 1, 32, 32], [6, 1, 5, 5], p),
        geom([8, 64, 28, 28], [64, 1, 3, 3], p.with_padding(1).with_groups(64)),
        geom([6, 16, 31, 31], [24, 8, 3, 3], p.with_groups(2).with_stride(2).with_padding(1)),
        geom([8, 6, 30, 30], [6, 6, 3, 3], p.with_padding(2).with_dilation(2)),
    ];
    for (i, g) in shapes.iter().enumerate() {
        assert!(g.flops() >= 4_000_000, "shape {i} too small to go parallel: {g:?}");
        let o = Operands::new(g, 40 + i as u64, false);
        let in_pool = |threads: usize| {
            let pool = ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| direct(g, &o, convkit_conv::simd::active()))
        };
        let (one, two) = (in_pool(1), in_pool(2));
        assert_eq!(bits(&one.gx), bits(&two.gx), "grad_input {g:?}");
        assert_eq!(bits(&one.gw), bits(&two.gw), "grad_weight {g:?}");
        assert_eq!(bits(&one.gb), bits(&two.gb), "grad_bias {g:?}");
    }
}

/// The 16-lane tiles of the AVX-512 level give the AVX2 level's bits. A lane of the input
/// gradient's tiles is one input pixel, and a lane of the channel-vectorized weight gradient's
/// one output channel, each summed in the same order at any vector width: row mode (LeNet's
/// second layer), the flat planes (its first, one input channel), several channel blocks,
/// groups, stride and dilation; 16, 24 and 32 output channels per group (16-lane tiles, then an
/// 8-lane remainder); depthwise 3x3, whose input gradient runs the forward depthwise tiles
/// (16 lanes on rows of 16 columns or more).
#[test]
fn gradients_same_bits_at_avx512_and_avx2() {
    let l = SimdLevel::available_levels();
    if !l.contains(&SimdLevel::Avx512) {
        eprintln!("skipping: no avx512f");
        return;
    }
    let p = Conv2dParams::default();
    let mut shapes: Vec<ConvGeometry> = ["lenet_c1", "lenet_c2"]
        .iter()
        .map(|name| SHAPES.iter().find(|s| s.name == *name).unwrap().geometry().unwrap())
        .collect();
    shapes.extend([
        geom([3, 6, 14, 13], [16, 6, 5, 5], p.with_padding(2)),
        geom([2, 2, 21, 19], [5, 2, 3, 3], p.with_padding(1)),
        geom([2, 3, 40, 37], [4, 3, 5, 5], p),
        geom([2, 4, 12, 12], [4, 2, 3, 3], p.with_groups(2)),
        geom([2, 5, 23, 23], [6, 5, 3, 3], p.with_stride(2).with_padding(1)),
        geom([2, 6, 30, 30], [6, 6, 3, 3], p.with_padding(2).with_dilation(2)),
        geom([2, 5, 12, 12], [24, 5, 3, 3], p.with_padding(1)),
        geom([2, 8, 10, 10], [64, 4, 3, 3], p.with_groups(2)),
        geom([2, 6, 28, 28], [6, 1, 3, 3], p.with_padding(1).with_groups(6)),
        geom([1, 3, 11, 40], [3, 1, 3, 3], p.with_groups(3)),
    ]);
    for (i, g) in shapes.iter().enumerate() {
        let o = Operands::new(g, 60 + i as u64, false);
        let (wide, narrow) = (direct(g, &o, SimdLevel::Avx512), direct(g, &o, SimdLevel::Avx2Fma));
        assert_eq!(bits(&wide.gx), bits(&narrow.gx), "grad_input {g:?}");
        assert_eq!(bits(&wide.gw), bits(&narrow.gw), "grad_weight {g:?}");
    }
}
