//! Winograd minimal-filtering convolution: F(2x2,3x3) and F(4x4,3x3), and F(2x2,3x3) at
//! stride 2.
//!
//! F(m×m, 3×3) computes an `m×m` block of outputs of a 3x3, stride-1 convolution from an
//! `α×α` input tile (`α = m + 2`) as `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` (Lavin & Gray, 2016).
//! Summed over input channels the element-wise products become `α²` matrix products
//! `M[ξ] = U[ξ] · V[ξ]`, run on the packed GEMM micro-kernel with both operands written
//! straight into its panel layouts, so no product packs anything. F(2x2,3x3) does 2.25x fewer
//! multiply-adds than the direct loops, F(4x4,3x3) 4x fewer, at the price of about one
//! decimal digit of accuracy (the `WINOGRAD_F4` tolerance of the tests).
//!
//! At stride 2 the two outputs of a 1-D block read five inputs `d0..d4`:
//! `y0 = g0 d0 + g1 d1 + g2 d2`, `y1 = g0 d2 + g1 d3 + g2 d4`. The taps `g0, g2` meet the even
//! inputs as a two-tap stride-1 filter, which F(2,2) computes in three products (`(d0 − d2) g0`,
//! `d2 (g0 + g2)`, `(d4 − d2) g2`); `g1` meets `d1` and `d3` alone. So
//! `Bᵀ d = [d0 − d2, d2, d4 − d2, d1, d3]`, `G g = [g0, g0 + g2, g2, g1, g1]` and
//! `Aᵀ = [[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]]`: 5x5 tiles, 25 products for a 2x2 block where
//! the direct loops take 36, and no transform multiplies ([`WinogradVariant::F2x2_3x3S2`]).
//!
//! The matrices, the work split, the tile blocks, the backward formulas and the measured
//! errors are written up in `docs/convolution.md`, section 4.
//!
//! ## Layout
//! | file | what |
//! |---|---|
//! | `mod.rs` | variants, support rule, the forward entry points and their checks |
//! | `filter.rs` | [`WinogradFilter`]: `U = G g Gᵀ` in the GEMM's packed-A layout |
//! | `forward.rs` | the tile plan, work items, input transform, products, output transform |
//! | `backward.rs` | the input gradient (a flipped-filter forward) and the weight gradient |
//! | `transforms.rs` | the 1-D transforms `Bᵀ`, `Aᵀ`, `G`, `A` of each variant, on vectors |
//!
//! Dilated 3x3 layers run on the same code (each dilation phase is an undilated convolution
//! on a subsampled grid); groups loop over the per-group filters; anything else returns
//! [`ConvError::Unsupported`]. Splits depend on the shape only, so results are bit-identical
//! for every thread count.

mod backward;
mod filter;
mod forward;
mod transforms;

pub use backward::{conv2d_input_grad_winograd, conv2d_weight_grad_winograd};
pub use filter::WinogradFilter;

use crate::error::{ConvError, Result};
use crate::params::{ConvGeometry, check_len};
use crate::scratch::{self, Slot};
use crate::simd::{self, SimdLevel};
use filter::transform_filters;

const OP: &str = "conv2d_winograd";

/// Below this many FLOPs the work runs on the calling thread.
const PARALLEL_MIN_FLOPS: u64 = 4_000_000;

/// Transform-domain scratch per tile block, in floats (2 MiB); 1, 4 and 8 MiB measured no
/// faster on `res3x3_28b8` (within the noise of a shared machine).
const BLOCK_FLOATS: usize = 1 << 19;

/// The distance between consecutive transform-domain planes holding `floats` each (the
/// filters' `U[ξ]`, the inputs' `V[ξ]`, the products' `M[ξ]`): whole cache lines, an odd
/// number of them. The transforms read or write the same element of all `α²` planes one after
/// the other; at a stride of a multiple of 4 KiB (`strided`'s `V[ξ]` is 20 KiB, its `M[ξ]` 40
/// KiB, vgg3x3_14's `U[ξ]` 256 KiB) all of them fall in one set of the 8-way L1 and evict each
/// other, while an odd number of lines puts them in `α²` different sets.
pub(super) fn plane_stride(floats: usize) -> usize {
    let lines = floats.div_ceil(crate::scratch::LINE_FLOATS);
    (lines | 1) * crate::scratch::LINE_FLOATS
}

/// Which Winograd algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WinogradVariant {
    /// F(2x2,3x3): 4x4 input tiles, 2x2 outputs each; 2.25x fewer multiplies, nearly exact.
    F2x2_3x3,
    /// F(4x4,3x3): 6x6 input tiles, 4x4 outputs each; 4x fewer multiplies, looser accuracy.
    F4x4_3x3,
    /// F(2x2,3x3) at stride 2: 5x5 input tiles, 2x2 outputs each, 25 products per tile where
    /// the direct loops take 36 (1.44x fewer multiplies); the transforms only add and
    /// subtract, so it is as accurate as F(2x2,3x3).
    F2x2_3x3S2,
}

impl WinogradVariant {
    /// Output tile size `m`.
    pub fn m(self) -> usize {
        match self {
            WinogradVariant::F2x2_3x3 | WinogradVariant::F2x2_3x3S2 => 2,
            WinogradVariant::F4x4_3x3 => 4,
        }
    }
    /// Input tile size `α`: `m + 2` at stride 1, `2m + 1` at stride 2.
    pub fn alpha(self) -> usize {
        self.stride() * self.m() + 3 - self.stride()
    }
    /// Distinct rows of `G` (and so of every transformed filter `U = G g Gᵀ`): `α`, except at
    /// stride 2, whose last two rows are both the middle tap `g1`. Rows and columns from
    /// `u_rows − 1` on are equal, so only `u_rows²` of the `α²` planes `U[ξ]` are distinct
    /// (16 of 25); those are the ones stored ([`WinogradVariant::u_plane`]).
    pub(crate) fn u_rows(self) -> usize {
        match self {
            WinogradVariant::F2x2_3x3S2 => 4,
            _ => self.alpha(),
        }
    }
    /// The stored filter plane that serves transform position `ξ = a·α + b`.
    pub(crate) fn u_plane(self, xi: usize) -> usize {
        let (a, r) = (self.alpha(), self.u_rows());
        (xi / a).min(r - 1) * r + (xi % a).min(r - 1)
    }
    /// Planes of products the forward pass stores per tile: one per transform position
    /// (`α²`), except at stride 2, whose positions are summed in 3 × 3 groups as they are
    /// multiplied (`transforms::S2Sums`): 9 instead of 25.
    pub(crate) fn out_planes(self) -> usize {
        match self {
            WinogradVariant::F2x2_3x3S2 => 9,
            _ => self.alpha() * self.alpha(),
        }
    }
    /// The transform positions `ξ = a·α + b` whose products are summed into stored plane `o`
    /// (of [`WinogradVariant::out_planes`]), in the order they are added: `o` alone, or at
    /// stride 2 the positions of row group `o / 3` and column group `o % 3` of {0, 3}, {1},
    /// {2, 4}.
    pub(crate) fn out_plane_positions(self, o: usize) -> impl Iterator<Item = usize> {
        /// Row and column groups of the stride-2 positions.
        static S2_GROUPS: [&[usize]; 3] = [&[0, 3], &[1], &[2, 4]];
        /// Each row (column) alone.
        static ALONE: [usize; 6] = [0, 1, 2, 3, 4, 5];
        let a = self.alpha();
        let (rows, cols): (&[usize], &[usize]) = match self {
            WinogradVariant::F2x2_3x3S2 => (S2_GROUPS[o / 3], S2_GROUPS[o % 3]),
            _ => (std::slice::from_ref(&ALONE[o / a]), std::slice::from_ref(&ALONE[o % a])),
        };
        rows.iter().flat_map(move |&i| cols.iter().map(move |&j| i * a + j))
    }
    /// The convolution stride the variant computes (the same on both axes).
    pub fn stride(self) -> usize {
        match self {
            WinogradVariant::F2x2_3x3S2 => 2,
            _ => 1,
        }
    }
    /// Name for messages and reports (`"winograd_f2"`, `"winograd_f4"`, `"winograd_s2"`).
    pub fn name(self) -> &'static str {
        match self {
            WinogradVariant::F2x2_3x3 => "winograd_f2",
            WinogradVariant::F4x4_3x3 => "winograd_f4",
            WinogradVariant::F2x2_3x3S2 => "winograd_s2",
        }
    }
}

const G2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
const GS2: [[f64; 3]; 5] =
    [[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]];

/// Why `variant` cannot run `g`, or `None` when it can.
fn unsupported(g: &ConvGeometry, variant: WinogradVariant) -> Option<String> {
    if (g.kh, g.kw) != (3, 3) {
        return Some(format!("a {}x{} kernel (only 3x3)", g.kh, g.kw));
    }
    let s = variant.stride();
    if g.params.stride != (s, s) {
        return Some(format!("stride {:?} (only {s})", g.params.stride));
    }
    if s > 1 && g.params.dilation != (1, 1) {
        return Some(format!("dilation {:?} with a stride (only 1)", g.params.dilation));
    }
    None
}

/// Whether [`conv2d_winograd`] can run `g` with `variant`: 3x3 kernels with the variant's
/// stride (1, or 2 for [`WinogradVariant::F2x2_3x3S2`]); any padding, group count and input
/// size; any dilation at stride 1.
pub fn winograd_supports(g: &ConvGeometry, variant: WinogradVariant) -> bool {
    unsupported(g, variant).is_none()
}

/// Winograd convolution: transforms the filter and runs [`conv2d_winograd_prepared`].
/// `output` is overwritten.
///
/// Slices are NCHW input `[n, c_in, h, w]`, weight `[c_out, c_in/groups, 3, 3]`, optional bias
/// `[c_out]`, output `[n, c_out, oh, ow]`. Returns [`ConvError::Unsupported`] unless the kernel
/// is 3x3 with stride 1.
pub fn conv2d_winograd(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    variant: WinogradVariant,
) -> Result<()> {
    conv2d_winograd_with(simd::active(), g, input, weight, bias, output, variant)
}

/// [`conv2d_winograd`] with an explicit instruction set for the transforms, so tests and
/// benchmarks can run the AVX2 and portable paths side by side. Returns
/// [`ConvError::Unsupported`] when this CPU cannot run `level`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_winograd_with(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    variant: WinogradVariant,
) -> Result<()> {
    winograd_call(level, g, input, weight, false, bias, output, variant)
}

/// [`conv2d_winograd_with`]; with `flipped`, `weight` holds the filters of the convolution
/// whose input gradient `g` computes, read rotated and channel-swapped in the filter transform
/// (no rotated copy is made).
#[allow(clippy::too_many_arguments)]
fn winograd_call(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    flipped: bool,
    bias: Option<&[f32]>,
    output: &mut [f32],
    variant: WinogradVariant,
) -> Result<()> {
    g.check_forward(OP, input, weight, bias, output)?;
    if let Some(msg) = unsupported(g, variant) {
        return Err(ConvError::Unsupported { op: OP, algo: variant.name(), msg });
    }
    // One image with few tiles on several threads: each row block of the transformed filters
    // is made right before it is multiplied (see `forward::Plan::fuses`). Not for
    // the input gradient's flipped filters: its backward ran slower fused (vgg3x3_14, two
    // threads, alternated in one process: 2.03-2.87 ms against 2.89-3.29).
    let plan = forward::Plan::new(g, variant);
    if !flipped && plan.fuses() {
        level.require(OP, variant.name())?;
        forward::run(level, &plan, input, forward::Filters::Raw(weight), bias, output);
        return Ok(());
    }
    // The transformed filters (4x the weights for F(4x4,3x3): 9.4 MB on `vgg3x3_14`) go into
    // a per-thread buffer kept between calls: a fresh allocation of that size is page-faulted
    // in on every call, which cost as much as the transform itself.
    let (c_out, cpg, groups) = (g.c_out, g.c_in_per_group(), g.params.groups);
    let buf = scratch::take(Slot::Filters);
    let u = transform_filters(buf, weight, c_out / groups, cpg, groups, variant, flipped);
    let filter = WinogradFilter { variant, c_out, cpg, groups, u };
    let checked = check_prepared(level, g, input, &filter, bias, output);
    if checked.is_ok() {
        let filters = forward::Filters::Transformed(&filter.u);
        forward::run(level, &plan, input, filters, bias, output);
    }
    scratch::put(Slot::Filters, filter.u);
    checked
}

/// Winograd convolution with a filter transformed beforehand by [`WinogradFilter::new`].
/// `output` is overwritten.
pub fn conv2d_winograd_prepared(
    g: &ConvGeometry,
    input: &[f32],
    filter: &WinogradFilter,
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    let level = simd::active();
    check_prepared(level, g, input, filter, bias, output)?;
    let plan = forward::Plan::new(g, filter.variant);
    forward::run(level, &plan, input, forward::Filters::Transformed(&filter.u), bias, output);
    Ok(())
}

/// The checks of a call with a prepared filter: the SIMD level, the geometry, the filter's
/// shape and the buffers' lengths.
fn check_prepared(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    filter: &WinogradFilter,
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    let variant = filter.variant;
    level.require(OP, variant.name())?;
    if let Some(msg) = unsupported(g, variant) {
        return Err(ConvError::Unsupported { op: OP, algo: variant.name(), msg });
    }
    if (filter.c_out, filter.cpg, filter.groups) != (g.c_out, g.c_in_per_group(), g.params.groups) {
        return Err(ConvError::ShapeMismatch {
            op: OP,
            msg: format!(
                "prepared filter for weight [{}, {}, 3, 3] with {} groups does not fit weight {:?} with {} groups",
                filter.c_out,
                filter.cpg,
                filter.groups,
                g.weight_dims(),
                g.params.groups
            ),
        });
    }
    check_len(OP, "input", &g.input_dims(), input.len())?;
    check_len(OP, "output", &g.output_dims(), output.len())?;
    if let Some(b) = bias {
        check_len(OP, "bias", &[g.c_out], b.len())?;
    }
    Ok(())
}
