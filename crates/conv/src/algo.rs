//! Choosing a convolution algorithm: [`ConvAlgo`], the [`select`] rule, [`supports`], the
//! `CONVKIT_CONV_ALGO` override, and the dispatchers [`conv2d_forward`] / [`conv2d_backward`].
//!
//! # Precedence
//! 1. An explicit algorithm (anything but [`ConvAlgo::Auto`]) runs as asked, or fails with
//!    [`ConvError::Unsupported`] when it cannot handle the shape.
//! 2. With `Auto`, `CONVKIT_CONV_ALGO=<name>` forces `<name>` on every shape it supports;
//!    shapes it does not support fall back to rule 3, so one variable can steer a whole
//!    network that mixes, say, 3x3 and 5x5 layers.
//! 3. Otherwise [`select`] picks from the geometry.
//!
//! The variable is read once per process. Accepted values (case-insensitive): `auto`,
//! `naive`, `im2col`, `winograd2` (`winograd-f2`), `winograd4` (`winograd`, `winograd-f4`),
//! `winograds2` (`winograd-s2`), `direct`. An unknown value is ignored, with one warning on
//! stderr: a typo must not stop a training run, and the warning says it had no effect.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use rayon::prelude::*;

use convkit_tensor::buffer;

use crate::direct::backward::{conv2d_backward_direct, conv2d_relu_backward_direct};
use crate::direct::{conv2d_direct, conv2d_direct_act, direct_supports};
use crate::error::{ConvError, Result};
use crate::im2col::{conv2d_backward_im2col, conv2d_im2col};
use crate::naive::{conv2d_backward_naive, conv2d_naive};
use crate::params::{BackwardInputs, ConvGeometry, GradBuffers, check_len};
use crate::simd;
use crate::winograd::{
    WinogradVariant, conv2d_input_grad_winograd, conv2d_weight_grad_winograd, conv2d_winograd,
    winograd_supports,
};

/// A convolution algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConvAlgo {
    /// Let [`select`] (or `CONVKIT_CONV_ALGO`) decide per shape.
    #[default]
    Auto,
    /// The literal loops of the definition, accumulating in f64: the reference.
    Naive,
    /// im2col + `sgemm`: every shape.
    Im2col,
    /// Winograd F(2x2,3x3): 3x3 kernels, stride 1, dilation 1.
    Winograd2,
    /// Winograd F(4x4,3x3): 3x3 kernels, stride 1, dilation 1.
    Winograd4,
    /// Winograd F(2x2,3x3) at stride 2: 3x3 kernels, stride 2, dilation 1 (the gradients run
    /// on im2col).
    WinogradS2,
    /// SIMD direct convolution: few input channels, depthwise, 5x5 kernels.
    Direct,
}

impl ConvAlgo {
    /// Every variant, `Auto` first, then the registered algorithms in registration order
    /// (benches, tests and the bench report iterate over this).
    pub const ALL: [ConvAlgo; REGISTRY.len() + 1] = {
        let mut all = [ConvAlgo::Auto; REGISTRY.len() + 1];
        let mut i = 0;
        while i < REGISTRY.len() {
            all[i + 1] = REGISTRY[i].algo;
            i += 1;
        }
        all
    };

    /// The Winograd variant this algorithm runs, if it is one of the Winograd algorithms.
    pub fn winograd_variant(self) -> Option<WinogradVariant> {
        match self {
            ConvAlgo::Winograd2 => Some(WinogradVariant::F2x2_3x3),
            ConvAlgo::Winograd4 => Some(WinogradVariant::F4x4_3x3),
            ConvAlgo::WinogradS2 => Some(WinogradVariant::F2x2_3x3S2),
            _ => None,
        }
    }

    /// The canonical lower-case name, as accepted by [`FromStr`] and `CONVKIT_CONV_ALGO`.
    pub fn name(self) -> &'static str {
        match registration(self) {
            Some(r) => r.names[0],
            None => "auto",
        }
    }
}

/// What the dispatchers need of one algorithm: its one registration point. A new algorithm
/// is a `ConvAlgo` variant and an entry of [`REGISTRY`]; names, parsing, [`supports`],
/// [`conv2d_forward`] and [`conv2d_backward`] all read the table.
struct Registration {
    algo: ConvAlgo,
    /// The canonical name first, then aliases [`FromStr`] also accepts.
    names: &'static [&'static str],
    /// Whether it can run a shape (forward and backward).
    supports: fn(&ConvGeometry) -> bool,
    /// The forward kernel; same buffer contract as [`conv2d_naive`].
    forward: ForwardKernel,
    /// The gradients after a forward that ran this algorithm.
    backward: fn(&ConvGeometry, BackwardInputs<'_>, GradBuffers<'_>) -> Result<()>,
}

/// A forward kernel: geometry, input, weight, optional bias, output.
type ForwardKernel = fn(&ConvGeometry, &[f32], &[f32], Option<&[f32]>, &mut [f32]) -> Result<()>;

/// Every algorithm but `Auto`, in [`ConvAlgo::ALL`] order.
const REGISTRY: [Registration; 6] = [
    Registration {
        algo: ConvAlgo::Naive,
        names: &["naive"],
        supports: |_| true,
        forward: conv2d_naive,
        backward: conv2d_backward_naive,
    },
    Registration {
        algo: ConvAlgo::Im2col,
        names: &["im2col"],
        supports: |_| true,
        forward: conv2d_im2col,
        backward: conv2d_backward_im2col,
    },
    Registration {
        algo: ConvAlgo::Winograd2,
        names: &["winograd2", "winograd-f2"],
        supports: |g| winograd_supports(g, WinogradVariant::F2x2_3x3),
        forward: |g, x, w, b, y| conv2d_winograd(g, x, w, b, y, WinogradVariant::F2x2_3x3),
        backward: |g, x, grads| backward_winograd(g, x, grads, WinogradVariant::F2x2_3x3),
    },
    Registration {
        algo: ConvAlgo::Winograd4,
        names: &["winograd4", "winograd", "winograd-f4"],
        supports: |g| winograd_supports(g, WinogradVariant::F4x4_3x3),
        forward: |g, x, w, b, y| conv2d_winograd(g, x, w, b, y, WinogradVariant::F4x4_3x3),
        backward: |g, x, grads| backward_winograd(g, x, grads, WinogradVariant::F4x4_3x3),
    },
    Registration {
        algo: ConvAlgo::WinogradS2,
        names: &["winograds2", "winograd-s2"],
        supports: |g| winograd_supports(g, WinogradVariant::F2x2_3x3S2),
        forward: |g, x, w, b, y| conv2d_winograd(g, x, w, b, y, WinogradVariant::F2x2_3x3S2),
        backward: conv2d_backward_im2col,
    },
    Registration {
        algo: ConvAlgo::Direct,
        names: &["direct"],
        supports: direct_supports,
        forward: conv2d_direct,
        backward: |g, x, grads| match backward_kernel(ConvAlgo::Direct, g) {
            ConvAlgo::Direct => conv2d_backward_direct(g, x, grads),
            _ => conv2d_backward_im2col(g, x, grads),
        },
    },
];

/// The registration of `algo`; `None` for `Auto`.
fn registration(algo: ConvAlgo) -> Option<&'static Registration> {
    REGISTRY.iter().find(|r| r.algo == algo)
}

/// Every accepted name, `auto` first, as "a, b or c".
fn name_list() -> String {
    let names: Vec<&str> =
        std::iter::once("auto").chain(REGISTRY.iter().map(|r| r.names[0])).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

impl fmt::Display for ConvAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an unknown algorithm name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAlgo(pub String);

impl fmt::Display for UnknownAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown convolution algorithm {:?} (expected {})", self.0, name_list())
    }
}

impl std::error::Error for UnknownAlgo {}

impl FromStr for ConvAlgo {
    type Err = UnknownAlgo;

    /// Parses a name, ignoring case and surrounding blanks. `winograd` means F(4x4,3x3).
    ///
    /// ```
    /// use convkit_conv::ConvAlgo;
    /// assert_eq!("Im2Col".parse(), Ok(ConvAlgo::Im2col));
    /// assert_eq!(" winograd ".parse(), Ok(ConvAlgo::Winograd4));
    /// assert!("fft".parse::<ConvAlgo>().is_err());
    /// ```
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        if name == "auto" {
            return Ok(ConvAlgo::Auto);
        }
        REGISTRY
            .iter()
            .find(|r| r.names.contains(&name.as_str()))
            .map(|r| r.algo)
            .ok_or_else(|| UnknownAlgo(s.to_string()))
    }
}

/// The name of the environment variable that forces an algorithm.
pub const ALGO_ENV: &str = "CONVKIT_CONV_ALGO";

/// Interprets a value of `CONVKIT_CONV_ALGO`: `None` for unset, empty or `auto`; `Err` for an
/// unknown name. (Pure, so the rule is testable without touching the environment.)
pub fn parse_env_algo(value: Option<&str>) -> std::result::Result<Option<ConvAlgo>, UnknownAlgo> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(|a| if a == ConvAlgo::Auto { None } else { Some(a) }),
    }
}

/// The algorithm forced by `CONVKIT_CONV_ALGO`, read once and cached for the process.
/// An unknown value is reported once on stderr and then ignored.
pub fn env_algo() -> Option<ConvAlgo> {
    static ENV: OnceLock<Option<ConvAlgo>> = OnceLock::new();
    *ENV.get_or_init(|| {
        let value = std::env::var(ALGO_ENV).ok();
        parse_env_algo(value.as_deref()).unwrap_or_else(|e| {
            eprintln!("convkit-conv: warning: {ALGO_ENV}: {e}; ignored, choosing automatically");
            None
        })
    })
}

/// Whether `algo` can run the convolution `g` (forward and backward). `Auto` always can.
///
/// After a Winograd forward, the input gradient is a Winograd convolution too (where the shape
/// allows, see `conv2d_input_grad_winograd`), the weight gradient runs in the Winograd
/// transform domain on layers with at least 196 output pixels per channel over the batch
/// (`conv2d_weight_grad_winograd`; im2col below; the direct kernel's on layers with few
/// channels), and the bias gradient on im2col. Direct
/// has a backward kernel of its own, used where `backward_kernel` says it beats im2col.
pub fn supports(algo: ConvAlgo, g: &ConvGeometry) -> bool {
    registration(algo).is_none_or(|r| (r.supports)(g))
}

/// The automatic choice for `g`: the fastest available algorithm by benchmark evidence.
///
/// The rule, in order (naive never wins; the timings behind it are in `docs/convolution.md`,
/// section 8):
///
/// 1. one input channel per group (LeNet's first layer, depthwise), or 5x5-and-larger kernels
///    with at most 16 outputs per group (LeNet's second layer): `Direct` — GEMM rows are too
///    short or too few to feed the GEMM's 6x16 micro-kernel;
/// 2. 3x3, stride 1, at least 16 input channels per group, and at least 1024 output pixels
///    per channel over the batch: `Winograd4` (a dilated layer is split into subsampled grids,
///    see `crate::winograd`);
/// 3. the same with fewer pixels but at least 32 F(2x2) tiles (two 16-tile panels of the
///    GEMM; vgg3x3_14, one 14x14 image, has 49): `Winograd2`, whose 2x2 tiles waste less of
///    the panels on small planes than F(4x4)'s 4x4 ones and whose filter transform is cheaper;
/// 4. 3x3, stride 2, no dilation, at least 64 input channels per group, at most 384 input and
///    output channels per group together, and at least 256 F(2x2) tiles over the batch:
///    `WinogradS2`. Its transforms cost in proportion to `C' + K'` per output pixel against
///    the products' `C'·K'`, so few channels do not pay for them (32 → 64 channels lose at 2
///    threads), and past 384 channels its transformed filters (`16·C'·K'` floats) no longer
///    stay in cache for the small tile blocks it can hold (256 → 512 lost on the Zen 4,
///    measured when all 25 planes were stored; on the Zen 5, with its 1 MiB L2 and the 16
///    distinct planes, it wins 1.1–1.2x at batch 8 and ties at batch 2, so the limit stays
///    for the smaller caches); one image's tiles are too few;
/// 5. everything else (1x1, other strides, few channels, tiny planes): `Im2col`.
pub fn select(g: &ConvGeometry) -> ConvAlgo {
    let p = g.params;
    let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
    if cpg == 1 || (g.kh * g.kw >= 25 && kpg <= 16) {
        return ConvAlgo::Direct;
    }
    let three = g.kh == 3 && g.kw == 3 && p.stride == (1, 1);
    if three && cpg >= 16 {
        // F(2x2,3x3) tiles over the batch (dilation phases ignored: a lower bound).
        let tiles_f2 = g.n * g.oh.div_ceil(2) * g.ow.div_ceil(2);
        let algo = if g.n * g.oh * g.ow >= 1024 {
            Some(ConvAlgo::Winograd4)
        } else if tiles_f2 >= 2 * crate::gemm::NR {
            Some(ConvAlgo::Winograd2)
        } else {
            None
        };
        if let Some(algo) = algo
            && supports(algo, g)
        {
            return algo;
        }
    }
    let three_s2 = g.kh == 3 && g.kw == 3 && p.stride == (2, 2) && p.dilation == (1, 1);
    if three_s2 && cpg >= 64 && cpg + kpg <= 384 && g.n * g.oh.div_ceil(2) * g.ow.div_ceil(2) >= 256
    {
        return ConvAlgo::WinogradS2;
    }
    ConvAlgo::Im2col
}

/// Winograd F(m×m, 3x3) tiles of one image of `g`, over its dilation phases (see
/// [`crate::winograd`]): `Σ ⌈ohᵣ/m⌉ · Σ ⌈owᵣ/m⌉`.
fn tiles_per_image(g: &ConvGeometry, m: usize) -> usize {
    let axis = |out: usize, d: usize| -> usize {
        (0..d.min(out)).map(|r| (out - r).div_ceil(d).div_ceil(m)).sum()
    };
    axis(g.oh, g.params.dilation.0) * axis(g.ow, g.params.dilation.1)
}

/// The automatic choice for `g` when the Winograd filter transform is already done — a layer
/// that caches it ([`WinogradFilter`](crate::WinogradFilter), as `convkit-nn`'s `Conv2d`
/// does at inference) runs only the input transform, the products and the output transform.
///
/// Without the filter transform to pay for, Winograd wins on smaller planes than [`select`]
/// allows (evidence in `docs/convolution.md`, section 8). On the
/// shapes where [`select`] would consider Winograd (3x3, stride 1, at least 16 input channels
/// per group), `Winograd4` when its tiles over the batch fill at least one 16-column panel and
/// its transform-domain work, `α² · ⌈tiles / 16⌉ · 16`, is below F(2x2)'s; otherwise
/// `Winograd2`. With fewer than 16 F(4x4) tiles, the products' panels are mostly padding and
/// each transformed filter plane (2.25x larger than F(2x2)'s) is read for very little work.
/// Every other shape gets [`select`]'s choice.
pub fn select_prepared(g: &ConvGeometry) -> ConvAlgo {
    let p = g.params;
    let three = g.kh == 3 && g.kw == 3 && p.stride == (1, 1);
    if three && g.c_in_per_group() >= 16 && select(g) != ConvAlgo::Direct {
        let nr = crate::gemm::NR;
        let (t2, t4) = (g.n * tiles_per_image(g, 2), g.n * tiles_per_image(g, 4));
        let f4 = t4 >= nr && 36 * t4.next_multiple_of(nr) < 16 * t2.next_multiple_of(nr);
        let algo = if f4 { ConvAlgo::Winograd4 } else { ConvAlgo::Winograd2 };
        if supports(algo, g) {
            return algo;
        }
    }
    select(g)
}

/// [`resolve`] for a layer whose Winograd filter transform is cached: `Auto` runs
/// [`select_prepared`]'s choice (or `CONVKIT_CONV_ALGO`'s, as for [`resolve`]).
pub fn resolve_prepared(requested: ConvAlgo, g: &ConvGeometry) -> Result<ConvAlgo> {
    resolve_by(requested, env_algo(), g, select_prepared)
}

/// The algorithm that will run for `requested` on `g`, after `CONVKIT_CONV_ALGO` and
/// [`select`]; an explicit algorithm that cannot run `g` is an [`ConvError::Unsupported`].
pub fn resolve(requested: ConvAlgo, g: &ConvGeometry) -> Result<ConvAlgo> {
    resolve_with(requested, env_algo(), g)
}

/// [`resolve`] with the environment override given explicitly (testable).
pub fn resolve_with(
    requested: ConvAlgo,
    env: Option<ConvAlgo>,
    g: &ConvGeometry,
) -> Result<ConvAlgo> {
    resolve_by(requested, env, g, select)
}

/// `requested` itself when it can run `g`; for `Auto`, the forced `env` algorithm when it can,
/// otherwise `auto`'s choice.
fn resolve_by(
    requested: ConvAlgo,
    env: Option<ConvAlgo>,
    g: &ConvGeometry,
    auto: fn(&ConvGeometry) -> ConvAlgo,
) -> Result<ConvAlgo> {
    match requested {
        ConvAlgo::Auto => Ok(match env {
            Some(forced) if supports(forced, g) => forced,
            _ => auto(g),
        }),
        algo if supports(algo, g) => Ok(algo),
        algo => Err(unsupported(algo, g)),
    }
}

fn unsupported(algo: ConvAlgo, g: &ConvGeometry) -> ConvError {
    ConvError::Unsupported {
        op: "conv2d",
        algo: algo.name(),
        msg: format!(
            "input {:?}, weight {:?} with {:?} (not available for this shape in this build)",
            g.input_dims(),
            g.weight_dims(),
            g.params
        ),
    }
}

/// Forward convolution with the algorithm `algo` (after [`resolve`]); returns the algorithm
/// that ran. Same buffer contract as [`conv2d_naive`].
pub fn conv2d_forward(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    algo: ConvAlgo,
) -> Result<ConvAlgo> {
    let algo = resolve(algo, g)?;
    // `resolve` never returns `Auto`; im2col runs every shape.
    let forward = registration(algo).map_or(conv2d_im2col as _, |r| r.forward);
    forward(g, input, weight, bias, output)?;
    Ok(algo)
}

/// The kernel that computes the gradients of a convolution whose forward pass ran `algo`
/// (already resolved, never `Auto`): `Naive`, `Im2col` or `Direct`.
///
/// Winograd: im2col, except that [`conv2d_backward`] computes the input gradient with
/// [`conv2d_input_grad_winograd`] when the shape allows, and the weight gradient with
/// [`conv2d_weight_grad_winograd`] on layers of at least 196 output pixels per channel over
/// the batch — F(4x4,3x3) from 1024 pixels without dilation where its tiles fit, F(2x2,3x3)
/// otherwise, whatever variant the forward ran — or, on such layers with few channels, with
/// the direct kernel ([`conv2d_backward_direct`]; the rule is `direct_weight_grad_pays`).
/// The bias gradient always runs on im2col. `Direct` keeps its own backward
/// ([`conv2d_backward_direct`]) on stride-1 shapes, where it reads the operands in place;
/// with a stride its input gradient runs over the zero-stuffed output gradient and loses to
/// col2im, so strided shapes run im2col.
///
/// The evidence for each choice is in `docs/convolution.md`, section 8.
pub fn backward_kernel(algo: ConvAlgo, g: &ConvGeometry) -> ConvAlgo {
    match algo {
        ConvAlgo::Naive => ConvAlgo::Naive,
        ConvAlgo::Direct if g.params.stride == (1, 1) => ConvAlgo::Direct,
        _ => ConvAlgo::Im2col,
    }
}

/// Backward convolution with the algorithm `algo` (after [`resolve`]): writes each requested
/// gradient; returns the algorithm that ran the forward pass (the gradients come from the
/// kernel `backward_kernel` picks for it; after a Winograd forward, the input and weight
/// gradients run on Winograd where `backward_kernel` says so). Same contract as
/// [`conv2d_backward_naive`]; every gradient is bit-identical for any number of threads.
pub fn conv2d_backward(
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    grads: GradBuffers<'_>,
    algo: ConvAlgo,
) -> Result<ConvAlgo> {
    let algo = resolve(algo, g)?;
    let backward = registration(algo).map_or(conv2d_backward_im2col as _, |r| r.backward);
    backward(g, x, grads)?;
    Ok(algo)
}

/// [`conv2d_backward`] of a convolution followed by a ReLU, given the ReLU's output
/// `relu_output` (`[n, c_out, oh, ow]`, like `x.grad_output`, which is the gradient with
/// respect to that output): the gradient passes back only where `relu_output` is above zero
/// (not where it is NaN), as a separate ReLU node's backward would pass it. The gradients are
/// bit-identical to masking `grad_output` first and calling [`conv2d_backward`]; the direct
/// kernel applies the mask image by image as it reads the gradient, with no masked copy of
/// the whole tensor, and the other kernels run on such a copy.
///
/// ```
/// use convkit_conv::{BackwardInputs, ConvAlgo, ConvGeometry, Conv2dParams, GradBuffers};
/// use convkit_conv::{conv2d_backward, conv2d_relu_backward};
///
/// # fn main() -> convkit_conv::Result<()> {
/// let g = ConvGeometry::new([1, 1, 3, 3], [1, 1, 2, 2], Conv2dParams::default())?;
/// let (x, w) = ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], [1.0, -1.0, 0.5, 0.25]);
/// let (relu_out, dy) = ([0.0, 1.5, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]);
/// let mut gw = [0.0; 4];
/// let inputs = BackwardInputs { input: &x, weight: &w, grad_output: &dy };
/// let grads = GradBuffers { weight: Some(&mut gw), ..Default::default() };
/// conv2d_relu_backward(&g, inputs, &relu_out, grads, ConvAlgo::Direct)?;
/// // The same as the plain backward of the masked gradient.
/// let mut expected = [0.0; 4];
/// let masked = [0.0, 1.0, 1.0, 0.0];
/// let inputs = BackwardInputs { input: &x, weight: &w, grad_output: &masked };
/// let grads = GradBuffers { weight: Some(&mut expected), ..Default::default() };
/// conv2d_backward(&g, inputs, grads, ConvAlgo::Direct)?;
/// assert_eq!(gw, expected);
/// # Ok(())
/// # }
/// ```
pub fn conv2d_relu_backward(
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    relu_output: &[f32],
    grads: GradBuffers<'_>,
    algo: ConvAlgo,
) -> Result<ConvAlgo> {
    const OP: &str = "conv2d_relu_backward";
    check_len(OP, "relu_output", &g.output_dims(), relu_output.len())?;
    g.check_backward(OP, &x, &grads)?;
    let algo = resolve(algo, g)?;
    if backward_kernel(algo, g) == ConvAlgo::Direct {
        conv2d_relu_backward_direct(simd::active(), g, x, relu_output, grads)?;
    } else {
        let masked = relu_masked(x.grad_output, relu_output);
        conv2d_backward(g, BackwardInputs { grad_output: &masked, ..x }, grads, algo)?;
    }
    Ok(algo)
}

/// [`conv2d_forward`] followed by a ReLU (`v < 0 → 0`; NaN and `−0.0` are kept, as
/// `Tensor::relu` keeps them): `output` receives `relu(conv(input))`, bit for bit the two
/// passes one after the other. The direct kernel applies the ReLU to each work item's outputs
/// as soon as they are written, while they are in cache; the other kernels are followed by
/// one pass over the output.
///
/// ```
/// use convkit_conv::{ConvAlgo, ConvGeometry, Conv2dParams, conv2d_relu_forward};
///
/// # fn main() -> convkit_conv::Result<()> {
/// let g = ConvGeometry::new([1, 1, 2, 2], [2, 1, 1, 1], Conv2dParams::default())?;
/// let mut y = [0.0; 8];
/// conv2d_relu_forward(&g, &[1.0, -2.0, 3.0, -4.0], &[1.0, -1.0], None, &mut y, ConvAlgo::Direct)?;
/// assert_eq!(y, [1.0, 0.0, 3.0, 0.0, 0.0, 2.0, 0.0, 4.0]);
/// # Ok(())
/// # }
/// ```
pub fn conv2d_relu_forward(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    algo: ConvAlgo,
) -> Result<ConvAlgo> {
    let algo = resolve(algo, g)?;
    if algo == ConvAlgo::Direct {
        conv2d_direct_act(simd::active(), g, input, weight, bias, output, true)?;
        return Ok(algo);
    }
    let ran = conv2d_forward(g, input, weight, bias, output, algo)?;
    relu_in_place(output);
    Ok(ran)
}

/// `v < 0 → 0` on every float of `out` (NaN and `−0.0` kept: `Tensor::relu`'s rule), in
/// parallel when large.
pub(crate) fn relu_in_place(out: &mut [f32]) {
    // A select, not a conditional store: it vectorizes and has no branch to mispredict.
    convkit_tensor::map_slice_inplace(out, |v| if v < 0.0 { 0.0 } else { v });
}

/// `grad` where `relu_output > 0`, `+0.0` elsewhere (NaN included): ReLU's backward, in a
/// buffer from the tensor crate's cache, in parallel when large.
pub(crate) fn relu_masked(grad: &[f32], relu_output: &[f32]) -> Vec<f32> {
    let mut out = buffer::take(grad.len());
    let mask = |(o, (g, y)): (&mut [f32], (&[f32], &[f32]))| {
        for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
            *o = if y > 0.0 { g } else { 0.0 };
        }
    };
    const CHUNK: usize = 1 << 14;
    if grad.len() >= 4 * CHUNK && rayon::current_num_threads() > 1 {
        let operands = grad.par_chunks(CHUNK).zip(relu_output.par_chunks(CHUNK));
        out.par_chunks_mut(CHUNK).zip(operands).for_each(mask);
    } else {
        mask((&mut out, (grad, relu_output)));
    }
    out
}

/// The gradients after a Winograd forward of `variant`: the input gradient is a Winograd
/// convolution (of the same variant) where the shape allows (`conv2d_input_grad_winograd`), the weight gradient
/// runs in the transform domain on large enough layers (`conv2d_weight_grad_winograd`; on the
/// direct kernel where they have few channels), and what is left (the bias gradient, and the others where Winograd does not pay) on im2col.
fn backward_winograd(
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    grads: GradBuffers<'_>,
    variant: WinogradVariant,
) -> Result<()> {
    if grads.input.is_some() || grads.weight.is_some() {
        g.check_backward("conv2d_backward", &x, &grads)?;
    }
    let BackwardInputs { input, weight, grad_output } = x;
    let GradBuffers { input: mut grad_input, weight: mut grad_weight, bias: grad_bias } = grads;
    if let Some(gx) = grad_input.as_deref_mut()
        && conv2d_input_grad_winograd(g, weight, grad_output, gx, variant)?
    {
        grad_input = None;
    }
    if let Some(gw) = grad_weight.as_deref_mut()
        && let Some(wvariant) = winograd_weight_grad_variant(g)
    {
        if direct_weight_grad_pays(g, wvariant) {
            let only_weight = GradBuffers { input: None, weight: Some(gw), bias: None };
            conv2d_backward_direct(g, x, only_weight)?;
            grad_weight = None;
        } else if conv2d_weight_grad_winograd(g, input, grad_output, gw, wvariant)? {
            grad_weight = None;
        }
    }
    conv2d_backward_im2col(
        g,
        x,
        GradBuffers { input: grad_input, weight: grad_weight, bias: grad_bias },
    )
}

/// The Winograd variant that computes the weight gradient after a Winograd forward, or `None`
/// where im2col's is faster: from 1024 output pixels per channel over the batch, F(4x4,3x3)
/// without dilation where its 4x4 tiles cover the output with no more padding than F(2x2)'s
/// (28x28 and 7x7 planes, not 14x14: at batch 64, 64 channels, 14x14, F(2x2) took 3.4–3.7 ms
/// against F(4x4)'s 4.0–4.2), F(2x2,3x3) otherwise (the subsampled grids of `dilated` are
/// 14x14, which F(2x2)'s tiles cover exactly); F(2x2,3x3) from 196 output pixels
/// (`vgg3x3_14`, whose 16 F(4x4) tiles make products too short, but whose 49 F(2x2) tiles
/// beat one im2col product); im2col below.
fn winograd_weight_grad_variant(g: &ConvGeometry) -> Option<WinogradVariant> {
    let pixels = g.n * g.oh * g.ow;
    if pixels < 196 {
        return None;
    }
    // F(4x4)'s transforms cost about twice F(2x2)'s per tile element, so F(4x4) pays only where
    // its tiles cover no more padding than F(2x2)'s.
    let f4_fits = tiles_per_image(g, 4) * 16 <= tiles_per_image(g, 2) * 4;
    Some(if g.params.dilation == (1, 1) && pixels >= 1024 && f4_fits {
        WinogradVariant::F4x4_3x3
    } else {
        WinogradVariant::F2x2_3x3
    })
}

/// Whether the direct kernel's weight gradient beats the Winograd one of `variant` on `g`.
/// The transform domain saves multiply-adds in proportion to `C'·K' / (C' + K')` (products
/// against transforms per output pixel), and its transforms cost F(2x2) more per saved
/// product than F(4x4): so direct from `C'·K' ≤ 4 (C' + K')` with F(4x4), `≤ 12 (C' + K')`
/// with F(2x2). Batch 64, 2 threads, Xeon, weight gradient alone, milliseconds (direct /
/// F(4x4) / F(2x2)), at AVX-512 (16-lane transforms) and AVX2: 16→16 28x28 1.33–1.42 /
/// 1.16–1.18 / 1.62–1.71 and 1.35–1.56 / 1.28–1.32 / 1.81–2.04 keep Winograd; 32→32 14x14
/// (F(2x2) by its plane) 1.28–1.31 / – / 1.11–1.13 and 1.28–1.33 / – / 1.34–1.36 keep
/// Winograd (faster at AVX-512, within 5% on AVX2; the rule is the same on every level, so
/// every level runs the same kernels); 16→32 14x14 0.67 / – / 0.74 and 0.67–0.69 / – /
/// 0.87–0.92 take direct; 32→32 28x28 5.0 / 2.8 / 4.1, 64→64 7x7 1.40–1.48 / 0.85–0.88 /
/// 0.99–1.05, 32→64 14x14 F2 2.45–2.61 / – / 1.64–1.71 and 64→64 14x14 F2 4.7–4.9 / – /
/// 2.54–2.63 keep Winograd.
fn direct_weight_grad_pays(g: &ConvGeometry, variant: WinogradVariant) -> bool {
    let (c, k) = (g.c_in_per_group(), g.c_out_per_group());
    let per_transform = match variant {
        WinogradVariant::F4x4_3x3 => 4,
        WinogradVariant::F2x2_3x3 | WinogradVariant::F2x2_3x3S2 => 12,
    };
    c * k <= per_transform * (c + k) && direct_supports(g)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Conv2dParams;

    fn geom(input: [usize; 4], weight: [usize; 4], p: Conv2dParams) -> ConvGeometry {
        ConvGeometry::new(input, weight, p).unwrap()
    }

    #[test]
    fn winograd_weight_gradient_variant_by_size() {
        let p = Conv2dParams::default().with_padding(1);
        let (f2, f4) = (WinogradVariant::F2x2_3x3, WinogradVariant::F4x4_3x3);
        let wv =
            |x: [usize; 4], k: usize, p| winograd_weight_grad_variant(&geom(x, [k, x[1], 3, 3], p));
        assert_eq!(wv([1, 64, 56, 56], 64, p), Some(f4));
        assert_eq!(wv([8, 128, 28, 28], 128, p), Some(f4));
        assert_eq!(wv([1, 256, 14, 14], 256, p), Some(f2));
        assert_eq!(
            wv([8, 64, 28, 28], 64, Conv2dParams::default().with_padding(2).with_dilation(2)),
            Some(f2)
        );
        assert_eq!(wv([64, 64, 14, 14], 64, p), Some(f2));
        assert_eq!(wv([64, 64, 7, 7], 64, p), Some(f4));
        assert_eq!(wv([64, 32, 28, 28], 32, p), Some(f4));
        assert_eq!(wv([1, 64, 13, 13], 64, p), None);
        // Few channels: the direct kernel's weight gradient instead.
        let direct = |x: [usize; 4], k: usize| {
            let g = geom(x, [k, x[1], 3, 3], p);
            direct_weight_grad_pays(&g, winograd_weight_grad_variant(&g).unwrap())
        };
        assert!(direct([64, 8, 28, 28], 8));
        assert!(!direct([64, 16, 28, 28], 16));
        assert!(!direct([64, 32, 14, 14], 32));
        assert!(direct([64, 16, 14, 14], 32));
        assert!(!direct([64, 32, 28, 28], 32));
        assert!(!direct([64, 32, 14, 14], 64));
        assert!(!direct([64, 64, 7, 7], 64));
        assert!(!direct([8, 128, 28, 28], 128));
        assert_eq!(wv([2, 64, 7, 7], 64, p), None);
    }

    #[test]
    fn names_round_trip() {
        for a in ConvAlgo::ALL {
            assert_eq!(a.name().parse::<ConvAlgo>(), Ok(a));
            assert_eq!(a.to_string(), a.name());
        }
        assert_eq!("WINOGRAD-F2".parse(), Ok(ConvAlgo::Winograd2));
        let e = "fft".parse::<ConvAlgo>().unwrap_err().to_string();
        assert!(
            e.ends_with(
                "(expected auto, naive, im2col, winograd2, winograd4, winograds2 or direct)"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_registry_is_the_one_list_of_algorithms() {
        // Every variant but Auto is registered exactly once, in ALL's order, with unique names.
        assert_eq!(ConvAlgo::ALL[0], ConvAlgo::Auto);
        let registered: Vec<ConvAlgo> = REGISTRY.iter().map(|r| r.algo).collect();
        assert_eq!(registered, ConvAlgo::ALL[1..]);
        let mut names: Vec<&str> = REGISTRY.iter().flat_map(|r| r.names.iter().copied()).collect();
        names.push("auto");
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "no name is claimed twice");
        // What each registration says it supports is what `supports` and `resolve` answer.
        let g = ConvGeometry::new([1, 16, 8, 8], [16, 16, 5, 5], Conv2dParams::default()).unwrap();
        for r in &REGISTRY {
            assert_eq!(supports(r.algo, &g), (r.supports)(&g), "{}", r.names[0]);
            assert_eq!(resolve_with(r.algo, None, &g).is_ok(), (r.supports)(&g));
        }
    }

    #[test]
    fn env_values() {
        assert_eq!(parse_env_algo(None), Ok(None));
        assert_eq!(parse_env_algo(Some("")), Ok(None));
        assert_eq!(parse_env_algo(Some("auto")), Ok(None));
        assert_eq!(parse_env_algo(Some("Naive")), Ok(Some(ConvAlgo::Naive)));
        assert!(parse_env_algo(Some("fast")).is_err());
    }

    #[test]
    fn select_prepared_rule() {
        let p = Conv2dParams::default().with_padding(1);
        let sq = |n: usize, c: usize, hw: usize| geom([n, c, hw, hw], [c, c, 3, 3], p);
        let cases = [
            // The evidence table of `select_prepared`.
            (sq(1, 512, 3), ConvAlgo::Winograd2),
            (sq(1, 256, 4), ConvAlgo::Winograd2),
            (sq(1, 64, 6), ConvAlgo::Winograd2),
            (sq(1, 512, 7), ConvAlgo::Winograd2),
            (sq(2, 512, 7), ConvAlgo::Winograd2),
            (sq(1, 16, 8), ConvAlgo::Winograd2),
            (sq(1, 128, 10), ConvAlgo::Winograd2),
            // 9 F(4x4) tiles: under one panel (measured 0.122 against 0.135 ms, a near tie).
            (sq(1, 64, 12), ConvAlgo::Winograd2),
            (sq(8, 64, 6), ConvAlgo::Winograd4),
            (sq(4, 64, 12), ConvAlgo::Winograd4),
            (sq(1, 256, 14), ConvAlgo::Winograd4),
            (sq(2, 32, 16), ConvAlgo::Winograd4),
            (sq(1, 128, 28), ConvAlgo::Winograd4),
            // Suite shapes: Winograd4 wherever Winograd runs, the rest as `select`.
            (geom([1, 64, 56, 56], [64, 64, 3, 3], p), ConvAlgo::Winograd4),
            (
                geom([8, 64, 28, 28], [64, 64, 3, 3], p.with_padding(2).with_dilation(2)),
                ConvAlgo::Winograd4,
            ),
            (geom([8, 64, 56, 56], [128, 64, 3, 3], p.with_stride(2)), ConvAlgo::WinogradS2),
            (geom([8, 128, 28, 28], [128, 1, 3, 3], p.with_groups(128)), ConvAlgo::Direct),
            (geom([8, 256, 14, 14], [256, 256, 1, 1], Conv2dParams::default()), ConvAlgo::Im2col),
            // Few input channels: as `select`.
            (sq(1, 8, 28), ConvAlgo::Im2col),
        ];
        for (g, want) in cases {
            assert_eq!(select_prepared(&g), want, "{:?} {:?}", g.input_dims(), g.params);
        }
        // An explicit algorithm is kept; Auto follows the prepared rule.
        let vgg = sq(1, 256, 14);
        assert_eq!(resolve_prepared(ConvAlgo::Im2col, &vgg).unwrap(), ConvAlgo::Im2col);
        if env_algo().is_none() {
            assert_eq!(resolve_prepared(ConvAlgo::Auto, &vgg).unwrap(), ConvAlgo::Winograd4);
        }
        assert!(
            resolve_prepared(ConvAlgo::Winograd4, &geom([1, 8, 9, 9], [4, 8, 1, 1], p)).is_err()
        );
    }

    #[test]
    fn select_rule() {
        let p = Conv2dParams::default();
        let s2 =
            |x: [usize; 4], k: usize| geom(x, [k, x[1], 3, 3], p.with_stride(2).with_padding(1));
        let cases = [
            // The suite, in the order of the reference tables.
            (geom([64, 1, 32, 32], [6, 1, 5, 5], p), ConvAlgo::Direct),
            (geom([64, 6, 14, 14], [16, 6, 5, 5], p), ConvAlgo::Direct),
            (geom([1, 64, 56, 56], [64, 64, 3, 3], p.with_padding(1)), ConvAlgo::Winograd4),
            (geom([8, 128, 28, 28], [128, 128, 3, 3], p.with_padding(1)), ConvAlgo::Winograd4),
            (geom([1, 256, 14, 14], [256, 256, 3, 3], p.with_padding(1)), ConvAlgo::Winograd2),
            (
                geom([8, 64, 56, 56], [128, 64, 3, 3], p.with_stride(2).with_padding(1)),
                ConvAlgo::WinogradS2,
            ),
            (geom([8, 256, 14, 14], [256, 256, 1, 1], p), ConvAlgo::Im2col),
            (
                geom([8, 128, 28, 28], [128, 1, 3, 3], p.with_padding(1).with_groups(128)),
                ConvAlgo::Direct,
            ),
            (
                geom([8, 64, 28, 28], [64, 64, 3, 3], p.with_padding(2).with_dilation(2)),
                ConvAlgo::Winograd4,
            ),
            // Corners: a 1x1 image, few channels.
            (geom([1, 1, 1, 1], [1, 1, 1, 1], p), ConvAlgo::Direct),
            (geom([2, 3, 9, 9], [4, 3, 3, 3], p), ConvAlgo::Im2col),
            // Small planes: F(2x2) once there are two panels of tiles, im2col below.
            (geom([1, 64, 12, 12], [64, 64, 3, 3], p.with_padding(1)), ConvAlgo::Winograd2),
            (geom([1, 64, 7, 7], [64, 64, 3, 3], p.with_padding(1)), ConvAlgo::Im2col),
            // Stride 2: the transforms pay from 64 channels, up to 384 together, with enough
            // tiles (the evidence of rule 4).
            (s2([8, 128, 28, 28], 256), ConvAlgo::WinogradS2),
            (s2([16, 64, 28, 28], 128), ConvAlgo::WinogradS2),
            (s2([8, 96, 28, 28], 192), ConvAlgo::WinogradS2),
            (s2([4, 128, 56, 56], 256), ConvAlgo::WinogradS2),
            (s2([64, 32, 14, 14], 64), ConvAlgo::Im2col),
            (s2([64, 16, 28, 28], 32), ConvAlgo::Im2col),
            (s2([8, 256, 14, 14], 512), ConvAlgo::Im2col),
            (s2([2, 256, 28, 28], 512), ConvAlgo::Im2col),
            (s2([1, 128, 28, 28], 256), ConvAlgo::Im2col),
            (s2([1, 64, 56, 56], 128), ConvAlgo::Im2col),
            (
                geom([8, 128, 28, 28], [256, 128, 3, 3], p.with_stride(2).with_dilation(2)),
                ConvAlgo::Im2col,
            ),
        ];
        for (g, want) in &cases {
            let a = select(g);
            assert_eq!(a, *want, "{g:?}");
            assert!(supports(a, g), "select must pick a supported algorithm: {g:?}");
        }
    }

    #[test]
    fn resolve_precedence() {
        let g = geom([1, 2, 8, 8], [3, 2, 3, 3], Conv2dParams::default());
        assert_eq!(resolve_with(ConvAlgo::Auto, None, &g).unwrap(), select(&g));
        assert_eq!(
            resolve_with(ConvAlgo::Auto, Some(ConvAlgo::Naive), &g).unwrap(),
            ConvAlgo::Naive
        );
        // The environment only steers Auto.
        assert_eq!(
            resolve_with(ConvAlgo::Im2col, Some(ConvAlgo::Naive), &g).unwrap(),
            ConvAlgo::Im2col
        );
        // A forced algorithm that cannot run the shape falls back to the rule under Auto…
        if !supports(ConvAlgo::Direct, &g) {
            assert_eq!(
                resolve_with(ConvAlgo::Auto, Some(ConvAlgo::Direct), &g).unwrap(),
                select(&g)
            );
            // …and is an error when asked for explicitly.
            let e = resolve_with(ConvAlgo::Direct, None, &g).unwrap_err();
            assert!(matches!(e, ConvError::Unsupported { algo: "direct", .. }), "{e}");
            assert!(e.to_string().contains("[1, 2, 8, 8]"), "{e}");
        }
    }

    #[test]
    fn dispatch_reports_the_algorithm() {
        let g = geom([1, 1, 3, 3], [1, 1, 2, 2], Conv2dParams::default());
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut out = vec![0.0; 4];
        let ran = conv2d_forward(&g, &x, &[1.0; 4], None, &mut out, ConvAlgo::Naive).unwrap();
        assert_eq!(ran, ConvAlgo::Naive);
        assert_eq!(out, [12., 16., 24., 28.]);
        let ran = conv2d_forward(&g, &x, &[1.0; 4], None, &mut out, ConvAlgo::Im2col).unwrap();
        assert_eq!(ran, ConvAlgo::Im2col);
        assert_eq!(out, [12., 16., 24., 28.]);
        let mut gw = vec![0.0; 4];
        let ran = conv2d_backward(
            &g,
            BackwardInputs { input: &x, weight: &[1.0; 4], grad_output: &[1.0; 4] },
            GradBuffers { input: None, weight: Some(&mut gw), bias: None },
            ConvAlgo::Im2col,
        )
        .unwrap();
        assert_eq!(ran, ConvAlgo::Im2col);
        assert_eq!(gw, [12., 16., 24., 28.]);
    }
}
