//! The direct and Winograd kernels against the f64 naive reference: random shapes (property
//! tests), both instruction sets, large channel counts, unsupported shapes, thread-count
//! independence, and the measured Winograd error.
#![allow(clippy::unwrap_used)]

mod common;

use convkit_conv::simd::{self, SimdLevel};
use convkit_conv::testing::tolerance::{self, for_sum};
use convkit_conv::testing::{
    conv2d_direct, conv2d_direct_with, conv2d_winograd, conv2d_winograd_with, winograd_supports,
};
use convkit_conv::{
    Conv2dParams, ConvError, ConvGeometry, WinogradFilter, WinogradVariant, conv2d_naive,
    conv2d_winograd_prepared, max_rel_error,
};
use convkit_tensor::testing::Tolerance;
use proptest::prelude::*;

const VARIANTS: [WinogradVariant; 2] = [WinogradVariant::F2x2_3x3, WinogradVariant::F4x4_3x3];

/// Deterministic values uniform in [-1, 1) from the workspace's test generator.
fn uniform(len: usize, seed: u64) -> Vec<f32> {
    convkit_tensor::testing::random_vec(len, -1.0, 1.0, &mut convkit_tensor::Rng::new(seed))
}

struct Case {
    g: ConvGeometry,
    input: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Case {
    fn new(g: ConvGeometry, seed: u64) -> Case {
        Case {
            input: uniform(g.input_len(), seed),
            weight: uniform(g.weight_len(), seed ^ 0x9e37),
            bias: uniform(g.c_out, seed ^ 0x51ed),
            g,
        }
    }
    fn naive(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.g.output_len()];
        conv2d_naive(&self.g, &self.input, &self.weight, Some(&self.bias), &mut out).unwrap();
        out
    }
    /// Magnitude of the summed terms: `C/g·R·S·max|x|·max|w|` (plus the bias).
    fn scale(&self) -> f64 {
        let max = |v: &[f32]| v.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
        let terms = (self.g.c_in_per_group() * self.g.kh * self.g.kw) as f64;
        terms * max(&self.input) * max(&self.weight) + max(&self.bias)
    }
    fn direct(&self, level: SimdLevel) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.g.output_len()];
        conv2d_direct_with(level, &self.g, &self.input, &self.weight, Some(&self.bias), &mut out)
            .unwrap();
        out
    }
    fn winograd(&self, level: SimdLevel, v: WinogradVariant) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.g.output_len()];
        let (i, w, b) = (&self.input, &self.weight, Some(self.bias.as_slice()));
        conv2d_winograd_with(level, &self.g, i, w, b, &mut out, v).unwrap();
        out
    }
}

fn levels() -> Vec<SimdLevel> {
    let l = SimdLevel::available_levels();
    for missing in SimdLevel::ALL.into_iter().filter(|x| !l.contains(x)) {
        eprintln!("skipping the {missing} path: this CPU lacks it");
    }
    l
}

fn tol(v: WinogradVariant) -> Tolerance {
    match v {
        WinogradVariant::F2x2_3x3 | WinogradVariant::F2x2_3x3S2 => tolerance::WINOGRAD_F2,
        WinogradVariant::F4x4_3x3 => tolerance::WINOGRAD_F4,
    }
}

/// Random convolution problems within the ranges of the issue; `None` when the kernel does not
/// fit the padded input.
#[allow(clippy::type_complexity)]
fn geometry(
    kernel: std::ops::RangeInclusive<usize>,
    stride: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Option<ConvGeometry>> {
    (
        (1usize..=4, 1usize..=4, 1usize..=5, 1usize..=20, any::<bool>()),
        (1usize..=40, 1usize..=40, kernel.clone(), kernel),
        (stride.clone(), stride, 0usize..=3, 0usize..=3, 1usize..=3, 1usize..=3),
    )
        .prop_map(
            |((n, groups, cpg, kpg, depthwise), (h, w, kh, kw), (sh, sw, ph, pw, dh, dw))| {
                // Depthwise: one input and one output channel per group, up to 20 groups.
                let (groups, cpg, kpg) =
                    if depthwise { (groups * cpg, 1, 1) } else { (groups, cpg, kpg) };
                let p = Conv2dParams {
                    stride: (sh, sw),
                    padding: (ph, pw),
                    dilation: (dh, dw),
                    groups,
                };
                ConvGeometry::new([n, groups * cpg, h, w], [groups * kpg, cpg, kh, kw], p).ok()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn direct_matches_naive(g in geometry(1..=7, 1..=3), seed in any::<u64>()) {
        let Some(g) = g else { return Ok(()) };
        let case = Case::new(g, seed);
        let want = case.naive();
        let t = for_sum(tolerance::F32_SUM, case.scale());
        for level in levels() {
            if let Err(e) = t.check(&case.direct(level), &want) {
                return Err(TestCaseError::fail(format!("{level} {g:?}: {e}")));
            }
        }
    }

    #[test]
    fn winograd_matches_naive(g in geometry(3..=3, 1..=1), seed in any::<u64>()) {
        let Some(g) = g else { return Ok(()) };
        let case = Case::new(g, seed);
        let want = case.naive();
        for v in VARIANTS {
            prop_assert!(winograd_supports(&g, v));
            let t = for_sum(tol(v), case.scale());
            for level in levels() {
                if let Err(e) = t.check(&case.winograd(level, v), &want) {
                    return Err(TestCaseError::fail(format!("{v:?} {level} {g:?}: {e}")));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Stride 2: every padding, group count and odd size; dilated shapes are refused.
    #[test]
    fn winograd_stride2_matches_naive(g in geometry(3..=3, 2..=2), seed in any::<u64>()) {
        let Some(g) = g else { return Ok(()) };
        let v = WinogradVariant::F2x2_3x3S2;
        prop_assert_eq!(winograd_supports(&g, v), g.params.dilation == (1, 1));
        if g.params.dilation != (1, 1) {
            return Ok(());
        }
        let case = Case::new(g, seed);
        let want = case.naive();
        let t = for_sum(tol(v), case.scale());
        for level in levels() {
            if let Err(e) = t.check(&case.winograd(level, v), &want) {
                return Err(TestCaseError::fail(format!("{level} {g:?}: {e}")));
            }
        }
    }
}

/// Stride 2 on small integers: its transforms only add and subtract, so every sum is exact and
/// the result matches the reference bit for bit, at every level, on odd sizes and tile edges,
/// with one image (split by tile rows or by transform positions between threads) or several,
/// on one and two threads; a prepared filter gives the same bits; stride 1, dilation and
/// other kernels are refused.
#[test]
fn winograd_stride2_exact_and_thread_independent() {
    let v = WinogradVariant::F2x2_3x3S2;
    for g in common::stride2_geometries() {
        let x: Vec<f32> = (0..g.input_len()).map(|i| (i % 5) as f32 - 2.0).collect();
        let w: Vec<f32> = (0..g.weight_len()).map(|i| (i % 3) as f32 - 1.0).collect();
        let b: Vec<f32> = (0..g.c_out).map(|i| (i % 4) as f32).collect();
        let mut want = vec![0.0; g.output_len()];
        conv2d_naive(&g, &x, &w, Some(&b), &mut want).unwrap();
        for level in levels() {
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut got = vec![f32::NAN; g.output_len()];
                pool.install(|| conv2d_winograd_with(level, &g, &x, &w, Some(&b), &mut got, v))
                    .unwrap();
                assert_eq!(got, want, "{level} {threads} threads {g:?}");
            }
        }
        let filter = WinogradFilter::new(&w, g.weight_dims(), g.params.groups, v).unwrap();
        let mut got = vec![f32::NAN; g.output_len()];
        conv2d_winograd_prepared(&g, &x, &filter, Some(&b), &mut got).unwrap();
        assert_eq!(got, want, "prepared {g:?}");
    }
    let p = Conv2dParams::default().with_padding(1);
    for (weight, params) in [
        ([4, 3, 3, 3], p),
        ([4, 3, 3, 3], p.with_stride(2).with_dilation(2)),
        ([4, 3, 3, 3], p.with_stride(3)),
        ([4, 3, 5, 5], p.with_stride(2)),
    ] {
        let g = ConvGeometry::new([1, 3, 12, 12], weight, params).unwrap();
        assert!(!winograd_supports(&g, v));
        let case = Case::new(g, 1);
        let mut out = vec![0.0; g.output_len()];
        let e = conv2d_winograd(&g, &case.input, &case.weight, None, &mut out, v).unwrap_err();
        assert!(matches!(e, ConvError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("winograd_s2"), "{e}");
    }
}

/// The best level the CPU has must really run, unless `CONVKIT_SIMD` caps it. With
/// `CONVKIT_REQUIRE_AVX512=1` (set by `.ci/run`) a CPU that reports avx512f must run the
/// AVX-512 level unless `CONVKIT_SIMD` caps it.
#[test]
fn best_simd_level_is_active() {
    let cap = simd::cap_from_env();
    let best = SimdLevel::available_levels()[0];
    let rank = |l: SimdLevel| SimdLevel::ALL.iter().position(|&x| x == l).unwrap();
    let want = if rank(best) >= rank(cap) { best } else { cap };
    assert_eq!(simd::active(), want, "best available {best}, CONVKIT_SIMD cap {cap}");
    #[cfg(target_arch = "x86_64")]
    let has_avx512f = is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let has_avx512f = false;
    let required = std::env::var("CONVKIT_REQUIRE_AVX512").is_ok_and(|v| v == "1");
    if required && has_avx512f && cap == SimdLevel::Avx512 {
        assert_eq!(
            simd::active(),
            SimdLevel::Avx512,
            "the CPU reports avx512f but the AVX-512 path is not active"
        );
    }
    if !has_avx512f {
        eprintln!("skipping the AVX-512 check: no avx512f");
    }
}

/// Asking for AVX2 where it is missing is an error, not undefined behaviour.
#[test]
fn unavailable_level_is_an_error() {
    if SimdLevel::Avx2Fma.available() {
        eprintln!("skipping: avx2 present, nothing to refuse");
        return;
    }
    let g = ConvGeometry::new([1, 1, 4, 4], [1, 1, 3, 3], Conv2dParams::default()).unwrap();
    let mut out = vec![0.0; g.output_len()];
    let e = conv2d_direct_with(SimdLevel::Avx2Fma, &g, &[0.0; 16], &[0.0; 9], None, &mut out);
    assert!(matches!(e, Err(ConvError::Unsupported { .. })));
}

/// Odd sizes around the vector width and tile edges, small integers: every sum is exact, so the
/// fast kernels must match the reference bit for bit.
#[test]
fn exact_small_integer_cases() {
    // 5 output channels run the width-vectorized kernel, 17 the channel-vectorized one on
    // narrow rows (16 + a partial vector of 1).
    for (h, w, k) in [(1, 1, 5), (3, 7, 5), (7, 9, 5), (9, 17, 5), (17, 8, 5), (5, 33, 5)]
        .into_iter()
        .chain([(6, 5, 17), (9, 12, 17), (4, 3, 9)])
    {
        for pad in [0, 1, 2] {
            let p = Conv2dParams::default().with_padding(pad);
            let Ok(g) = ConvGeometry::new([2, 3, h, w], [k, 3, 3, 3], p) else { continue };
            let input: Vec<f32> = (0..g.input_len()).map(|i| (i % 5) as f32 - 2.0).collect();
            let weight: Vec<f32> = (0..g.weight_len()).map(|i| (i % 3) as f32 - 1.0).collect();
            let mut want = vec![0.0; g.output_len()];
            conv2d_naive(&g, &input, &weight, None, &mut want).unwrap();
            for level in levels() {
                let mut got = vec![f32::NAN; g.output_len()];
                conv2d_direct_with(level, &g, &input, &weight, None, &mut got).unwrap();
                assert_eq!(got, want, "direct {level} {g:?}");
                // F(2x2,3x3) only multiplies by 1/2: exact on small integers too.
                let mut got = vec![f32::NAN; g.output_len()];
                let v = WinogradVariant::F2x2_3x3;
                conv2d_winograd_with(level, &g, &input, &weight, None, &mut got, v).unwrap();
                assert_eq!(got, want, "winograd f2 {level} {g:?}");
            }
        }
    }
}

/// 64 → 384 channels at 56x56 (and a grouped variant): the fast kernels against each other in
/// full and against the naive reference on the first and last output channels (the reference
/// on all 384 channels would dominate the suite's run time).
#[test]
fn large_channel_counts() {
    for (params, c_in) in [
        (Conv2dParams::default().with_padding(1), 64),
        (Conv2dParams::default().with_padding(1).with_groups(2), 64),
        (Conv2dParams::default().with_padding(2).with_dilation(2), 64),
    ] {
        let cpg = c_in / params.groups;
        let g = ConvGeometry::new([1, c_in, 56, 56], [384, cpg, 3, 3], params).unwrap();
        let case = Case::new(g, 7);
        let direct = {
            let mut out = vec![f32::NAN; g.output_len()];
            conv2d_direct(&g, &case.input, &case.weight, Some(&case.bias), &mut out).unwrap();
            out
        };
        let wino: Vec<Vec<f32>> = VARIANTS
            .iter()
            .map(|&v| {
                let mut out = vec![f32::NAN; g.output_len()];
                let b = Some(case.bias.as_slice());
                conv2d_winograd(&g, &case.input, &case.weight, b, &mut out, v).unwrap();
                out
            })
            .collect();
        let plane = g.oh * g.ow;
        // Reference on output channels [0, 8) and [376, 384) of group 0 / the last group.
        for k0 in [0, 376] {
            let sub_g = ConvGeometry::new(
                [1, cpg, 56, 56],
                [8, cpg, 3, 3],
                Conv2dParams { groups: 1, ..params },
            )
            .unwrap();
            let grp = k0 / g.c_out_per_group();
            let sub_in = &case.input[grp * cpg * 56 * 56..][..cpg * 56 * 56];
            let sub_w = &case.weight[k0 * cpg * 9..][..8 * cpg * 9];
            let mut want = vec![0.0; sub_g.output_len()];
            conv2d_naive(&sub_g, sub_in, sub_w, Some(&case.bias[k0..k0 + 8]), &mut want).unwrap();
            let pick = |v: &[f32]| v[k0 * plane..(k0 + 8) * plane].to_vec();
            let s = case.scale();
            for_sum(tolerance::F32_SUM, s).check(&pick(&direct), &want).unwrap();
            for (v, out) in VARIANTS.iter().zip(&wino) {
                for_sum(tol(*v), s).check(&pick(out), &want).unwrap();
            }
        }
        for (v, out) in VARIANTS.iter().zip(&wino) {
            // Everything else: Winograd against the direct kernel.
            for_sum(tol(*v), case.scale()).check(out, &direct).unwrap();
        }
    }
}

#[test]
fn unsupported_shapes_are_errors() {
    let p = Conv2dParams::default();
    for (weight, params) in [([4, 3, 5, 5], p), ([4, 3, 3, 3], p.with_stride(2)), ([4, 3, 1, 1], p)]
    {
        let g = ConvGeometry::new([1, 3, 12, 12], weight, params).unwrap();
        let case = Case::new(g, 1);
        for v in VARIANTS {
            assert!(!winograd_supports(&g, v));
            let mut out = vec![0.0; g.output_len()];
            let e = conv2d_winograd(&g, &case.input, &case.weight, None, &mut out, v).unwrap_err();
            assert!(matches!(e, ConvError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains(v.name()), "{e}");
        }
    }
    let e = WinogradFilter::new(&[0.0; 25], [1, 1, 5, 5], 1, WinogradVariant::F4x4_3x3);
    assert!(matches!(e, Err(ConvError::Unsupported { .. })));
    // A prepared filter for other channel counts is refused.
    let filter =
        WinogradFilter::new(&[0.0; 18], [2, 1, 3, 3], 1, WinogradVariant::F2x2_3x3).unwrap();
    let g = ConvGeometry::new([1, 2, 8, 8], [2, 2, 3, 3], p).unwrap();
    let mut out = vec![0.0; g.output_len()];
    let e = conv2d_winograd_prepared(&g, &[0.0; 128], &filter, None, &mut out).unwrap_err();
    assert!(matches!(e, ConvError::ShapeMismatch { .. }), "{e}");
    // Wrong buffer lengths are errors too.
    let e = conv2d_direct(&g, &[0.0; 127], &[0.0; 36], None, &mut out).unwrap_err();
    assert!(matches!(e, ConvError::BufferLength { .. }), "{e}");
}

/// A prepared filter gives the same result as the one-shot call.
#[test]
fn prepared_filter_is_reusable() {
    let g =
        ConvGeometry::new([2, 8, 13, 11], [16, 8, 3, 3], Conv2dParams::default().with_padding(1))
            .unwrap();
    let case = Case::new(g, 3);
    for v in VARIANTS {
        let filter = WinogradFilter::new(&case.weight, g.weight_dims(), 1, v).unwrap();
        assert_eq!(filter.variant(), v);
        let b = Some(case.bias.as_slice());
        let mut a = vec![0.0; g.output_len()];
        conv2d_winograd(&g, &case.input, &case.weight, b, &mut a, v).unwrap();
        for _ in 0..2 {
            let mut p = vec![0.0; g.output_len()];
            conv2d_winograd_prepared(&g, &case.input, &filter, b, &mut p).unwrap();
            assert_eq!(a, p);
        }
    }
}

/// Results do not depend on the number of threads, and match the reference on two threads
/// too. One image splits its work between the threads: few tiles by transform position and
/// output channel (`[1, 128, 14, 14]`, `[1, 16, 9, 11]` with an odd channel count,
/// `[1, 300, 6, 6]` with two depth blocks), more in two bands of tile rows (`[1, 32, 40, 40]`),
/// dilated by output channel (`[1, 32, 17, 15]`). Split by transform position, each thread
/// transforms the filters of its planes a block of rows at a time and multiplies them at once
/// (three blocks on `[1, 128, 14, 14]` for F(2x2), seven for F(4x4)); one thread transforms
/// every filter first.
#[test]
fn bit_identical_for_one_and_two_threads() {
    let shapes = [
        ([1, 16, 9, 11], [45, 16, 3, 3], Conv2dParams::default().with_padding(1)),
        ([1, 32, 40, 40], [32, 32, 3, 3], Conv2dParams::default().with_padding(1)),
        ([1, 32, 17, 15], [40, 32, 3, 3], Conv2dParams::default().with_padding(2).with_dilation(2)),
        ([8, 16, 28, 28], [16, 16, 3, 3], Conv2dParams::default().with_padding(1)),
        ([4, 32, 20, 20], [32, 1, 3, 3], Conv2dParams::default().with_padding(1).with_groups(32)),
        ([4, 96, 28, 28], [96, 1, 3, 3], Conv2dParams::default().with_padding(1).with_groups(96)),
        ([16, 1, 32, 32], [6, 1, 5, 5], Conv2dParams::default()),
        ([1, 128, 14, 14], [128, 128, 3, 3], Conv2dParams::default().with_padding(1)),
        ([1, 300, 6, 6], [40, 300, 3, 3], Conv2dParams::default().with_padding(1)),
    ];
    for (input, weight, p) in shapes {
        let g = ConvGeometry::new(input, weight, p).unwrap();
        let case = Case::new(g, 11);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut outs = vec![case.direct(simd::active())];
                if winograd_supports(&g, WinogradVariant::F4x4_3x3) {
                    for v in VARIANTS {
                        outs.push(case.winograd(simd::active(), v));
                    }
                }
                outs
            })
        };
        let (one, two) = (run(1), run(2));
        for (a, b) in one.iter().zip(&two) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{g:?}");
        }
        if two.len() > 1 {
            let want = case.naive();
            for (v, got) in VARIANTS.into_iter().zip(&two[1..]) {
                for_sum(tol(v), case.scale()).check(got, &want).unwrap();
            }
        }
    }
}

/// The depthwise 3x3 path's 16-lane tiles (AVX-512, output rows of 16 columns or more) give
/// the AVX2 level's bits: a lane is one output pixel, the bias plus its nine taps in order at
/// either width. Rows of 8 to 15 columns (8-lane tiles at both levels), of exactly one and of
/// two wide vectors, 28 columns (two overlapping vectors, 6-row tiles), and rows of three and
/// four vectors; padding 0, 1 and 2; odd heights so the last tile has fewer rows.
#[test]
fn depthwise_same_bits_at_avx512_and_avx2() {
    if !SimdLevel::available_levels().contains(&SimdLevel::Avx512) {
        eprintln!("skipping: no avx512f");
        return;
    }
    let p = Conv2dParams::default();
    let shapes = [
        ([2, 5, 11, 12], 1),
        ([1, 3, 17, 17], 0),
        ([2, 4, 16, 16], 1),
        ([1, 6, 9, 30], 2),
        ([2, 8, 28, 28], 1),
        ([1, 3, 13, 45], 1),
        ([1, 2, 7, 56], 1),
        ([1, 2, 31, 62], 0),
    ];
    for (i, (input, pad)) in shapes.into_iter().enumerate() {
        let c = input[1];
        let g = ConvGeometry::new(input, [c, 1, 3, 3], p.with_padding(pad).with_groups(c)).unwrap();
        let case = Case::new(g, 70 + i as u64);
        let (wide, narrow) = (case.direct(SimdLevel::Avx512), case.direct(SimdLevel::Avx2Fma));
        assert!(wide.iter().zip(&narrow).all(|(a, b)| a.to_bits() == b.to_bits()), "{g:?}");
        for_sum(tolerance::F32_SUM, case.scale()).check(&wide, &case.naive()).unwrap();
    }
}

/// The Winograd forward gives the AVX2 level's bits at AVX-512: its transforms are lane-wise
/// at either width, and its products are the GEMM's, whose kernels sum in the same order. The
/// shapes put runs of side-by-side tiles at every offset of a 16-tile group, across rows and
/// images (the 2x2-output store path), for F(2x2), F(4x4) and stride 2, with padding, bias and
/// one image split between threads.
#[test]
fn winograd_same_bits_at_avx512_and_avx2() {
    if !SimdLevel::available_levels().contains(&SimdLevel::Avx512) {
        eprintln!("skipping: no avx512f");
        return;
    }
    let p = Conv2dParams::default();
    let shapes = [
        ([2, 5, 14, 14], [7, 5, 3, 3], p.with_padding(1)),
        ([3, 4, 11, 23], [9, 4, 3, 3], p.with_padding(1)),
        ([1, 16, 37, 9], [12, 16, 3, 3], p),
        ([2, 3, 30, 30], [8, 3, 3, 3], p.with_padding(2).with_dilation(2)),
        ([1, 40, 20, 20], [40, 40, 3, 3], p.with_padding(1)),
    ];
    let variants =
        [WinogradVariant::F2x2_3x3, WinogradVariant::F4x4_3x3, WinogradVariant::F2x2_3x3S2];
    for (i, (input, weight, params)) in shapes.into_iter().enumerate() {
        for v in variants {
            let params = if v == WinogradVariant::F2x2_3x3S2 {
                if params.dilation != (1, 1) {
                    continue;
                }
                params.with_stride(2)
            } else {
                params
            };
            let g = ConvGeometry::new(input, weight, params).unwrap();
            let case = Case::new(g, 90 + i as u64);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (wide, narrow) = pool.install(|| {
                    (case.winograd(SimdLevel::Avx512, v), case.winograd(SimdLevel::Avx2Fma, v))
                });
                let same = wide.iter().zip(&narrow).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{v:?} {threads} threads {g:?}");
            }
        }
    }
}

/// The figures quoted in the `winograd` module docs: max relative error against f64 naive on
/// the suite's 3x3 shapes. For `res3x3_28b8` the reference covers 16 of the 128 output
/// channels (all 8 images) to keep the debug suite fast.
#[test]
fn winograd_error_on_suite_shapes() {
    let p = Conv2dParams::default().with_padding(1);
    for (name, input, weight, kref) in [
        ("res3x3_28b8", [8, 128, 28, 28], [128, 128, 3, 3], 16),
        ("vgg3x3_14", [1, 256, 14, 14], [256, 256, 3, 3], 256),
    ] {
        let g = ConvGeometry::new(input, weight, p).unwrap();
        let case = Case::new(g, 2024);
        let sub_g = ConvGeometry::new(input, [kref, weight[1], 3, 3], p).unwrap();
        let mut want = vec![0.0; sub_g.output_len()];
        let w = &case.weight[..kref * weight[1] * 9];
        conv2d_naive(&sub_g, &case.input, w, Some(&case.bias[..kref]), &mut want).unwrap();
        let plane = g.oh * g.ow;
        for (v, bound) in VARIANTS.into_iter().zip([1e-5, 1e-4]) {
            let full = case.winograd(simd::active(), v);
            let got: Vec<f32> = (0..g.n)
                .flat_map(|b| full[b * g.c_out * plane..][..kref * plane].iter().copied())
                .collect();
            let err = max_rel_error(&got, &want);
            eprintln!("{name} {v:?}: max relative error {err:.2e}");
            assert!(err < bound, "{name} {v:?}: {err:e} ≥ {bound:e}");
            assert!(err < 1e-3);
        }
    }
}
