//! Helpers shared by the integration tests: seeded data, the tolerance rule, and runners for
//! forward + all gradients.
#![allow(dead_code, clippy::unwrap_used)]

use convkit_conv::testing::tolerance;
use convkit_conv::{
    BackwardInputs, Conv2dParams, ConvAlgo, ConvGeometry, GradBuffers, conv2d_backward,
    conv2d_backward_naive, conv2d_forward, conv2d_naive,
};
use convkit_tensor::testing::Tolerance;

/// A validated geometry for a shape the test knows to be valid.
pub fn geom(input: [usize; 4], weight: [usize; 4], params: Conv2dParams) -> ConvGeometry {
    ConvGeometry::new(input, weight, params).unwrap()
}

/// 3x3 stride-2 convolutions for the stride-2 Winograd tests: odd sizes and tile edges,
/// padding 0 to 2, groups, one image (split between threads by tile rows or by transform
/// positions) or several (the weight gradient's image ranges).
pub fn stride2_geometries() -> Vec<ConvGeometry> {
    [
        ([2, 3, 9, 11], 5, 1, 1),
        ([1, 16, 9, 11], 45, 0, 1),
        ([1, 32, 29, 31], 40, 1, 1),
        ([3, 32, 29, 31], 40, 1, 1),
        ([4, 8, 16, 16], 17, 2, 1),
        ([3, 16, 14, 14], 32, 1, 2),
        ([8, 64, 12, 12], 64, 1, 1),
        // 196 tiles an image: two images per work item (their last panel fuller).
        ([4, 8, 56, 56], 8, 1, 1),
        ([1, 4, 3, 3], 3, 0, 1),
        ([1, 4, 4, 5], 3, 2, 1),
    ]
    .into_iter()
    .map(|(x, k, pad, groups): ([usize; 4], usize, usize, usize)| {
        let p = Conv2dParams::default().with_stride(2).with_padding(pad).with_groups(groups);
        geom(x, [k * groups, x[1] / groups, 3, 3], p)
    })
    .collect()
}

/// Number of proptest cases: `PROPTEST_CASES` when set (for long soak runs), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `len` values uniform in `[-1, 1)` from the workspace's test generator seeded by `seed`.
pub fn data(len: usize, seed: u64) -> Vec<f32> {
    convkit_tensor::testing::random_vec(len, -1.0, 1.0, &mut convkit_tensor::Rng::new(seed))
}

/// Largest magnitude in `v` (0 for empty).
pub fn max_abs(v: &[f32]) -> f64 {
    convkit_tensor::testing::max_abs(v)
}

/// **The tolerance rule of every comparison with the f64 reference.** An element that is a sum
/// of `terms` products, each at most `bound` in magnitude, gets `base` with `atol` scaled by
/// `terms · bound` (the size of the sum's terms, not of its possibly cancelled value):
///
/// | quantity    | terms                 | bound                |
/// |-------------|-----------------------|----------------------|
/// | output      | `C/g·kh·kw + 1` (bias)| `max|x|·max|w|`, `max|b|` |
/// | grad input  | `K/g·kh·kw`           | `max|dy|·max|w|`     |
/// | grad weight | `n·oh·ow`             | `max|dy|·max|x|`     |
/// | grad bias   | `n·oh·ow`             | `max|dy|`            |
pub fn sum_tolerance(base: Tolerance, terms: usize, bound: f64) -> Tolerance {
    tolerance::for_sum(base, terms as f64 * bound)
}

/// Operands of one convolution test case.
pub struct Operands {
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub dy: Vec<f32>,
}

impl Operands {
    pub fn new(g: &ConvGeometry, seed: u64, bias: bool) -> Self {
        Self {
            x: data(g.input_len(), seed),
            w: data(g.weight_len(), seed ^ 0xA5A5),
            b: bias.then(|| data(g.c_out, seed ^ 0x5A5A)),
            dy: data(g.output_len(), seed ^ 0x3C3C),
        }
    }
}

/// Output and the three gradients of one algorithm.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    pub out: Vec<f32>,
    pub gx: Vec<f32>,
    pub gw: Vec<f32>,
    pub gb: Vec<f32>,
}

/// Runs forward and backward (all gradients) with `algo` (`Naive` runs the reference directly).
pub fn run(g: &ConvGeometry, o: &Operands, algo: ConvAlgo) -> Results {
    let mut r = Results {
        out: vec![f32::NAN; g.output_len()],
        gx: vec![f32::NAN; g.input_len()],
        gw: vec![f32::NAN; g.weight_len()],
        gb: vec![f32::NAN; g.c_out],
    };
    let bias = o.b.as_deref();
    if algo == ConvAlgo::Naive {
        conv2d_naive(g, &o.x, &o.w, bias, &mut r.out).unwrap();
        conv2d_backward_naive(
            g,
            BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
            GradBuffers { input: Some(&mut r.gx), weight: Some(&mut r.gw), bias: Some(&mut r.gb) },
        )
        .unwrap();
    } else {
        let ran = conv2d_forward(g, &o.x, &o.w, bias, &mut r.out, algo).unwrap();
        assert_eq!(ran, algo);
        conv2d_backward(
            g,
            BackwardInputs { input: &o.x, weight: &o.w, grad_output: &o.dy },
            GradBuffers { input: Some(&mut r.gx), weight: Some(&mut r.gw), bias: Some(&mut r.gb) },
            algo,
        )
        .unwrap();
    }
    r
}

/// Compares `got` with the naive `reference` under [`sum_tolerance`] built on `base`.
pub fn compare(
    g: &ConvGeometry,
    o: &Operands,
    base: Tolerance,
    got: &Results,
    reference: &Results,
) -> Result<(), String> {
    let (mx, mw, mdy) = (max_abs(&o.x), max_abs(&o.w), max_abs(&o.dy));
    let mb = o.b.as_deref().map_or(0.0, max_abs);
    let taps = g.kh * g.kw;
    let pixels = g.n * g.oh * g.ow;
    let checks = [
        ("output", &got.out, &reference.out, g.c_in_per_group() * taps + 1, (mx * mw).max(mb)),
        ("grad_input", &got.gx, &reference.gx, g.c_out_per_group() * taps, mdy * mw),
        ("grad_weight", &got.gw, &reference.gw, pixels, mdy * mx),
        ("grad_bias", &got.gb, &reference.gb, pixels, mdy),
    ];
    for (what, a, r, terms, bound) in checks {
        sum_tolerance(base, terms, bound)
            .check(a, r)
            .map_err(|e| format!("{what}: {e} ({g:?})"))?;
    }
    Ok(())
}
