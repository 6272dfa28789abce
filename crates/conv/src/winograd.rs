//! Winograd minimal-filtering convolution, F(2x2,3x3) and F(4x4,3x3).
//!
//! # The algorithm
//!
//! F(m×m, 3×3) computes an `m×m` block of outputs of a 3x3 convolution from an `α×α` input
//! tile, `α = m + 2`, with
//!
//! ```text
//! Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! ```
//!
//! where `g` is the 3x3 filter, `d` the input tile, `⊙` the element-wise product, and the
//! matrices are those of Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"
//! (2016). Summed over input channels, the element-wise products become `α²` independent
//! matrix products: for every transform position `ξ`, `M[ξ] = U[ξ] · V[ξ]` with `U[ξ]` the
//! `[K, C]` transformed filters and `V[ξ]` the `[C, tiles]` transformed inputs — done with
//! the crate's packed GEMM micro-kernel ([`crate::gemm`]), with both operands produced directly in
//! its panel layouts so that no product packs anything.
//!
//! F(2x2,3x3), `α = 4`:
//!
//! ```text
//!      ⎡1  0 −1  0⎤        ⎡ 1    0    0 ⎤
//! Bᵀ = ⎢0  1  1  0⎥    G = ⎢ 1/2  1/2  1/2⎥    Aᵀ = ⎡1 1  1  0⎤
//!      ⎢0 −1  1  0⎥        ⎢ 1/2 −1/2  1/2⎥         ⎣0 1 −1 −1⎦
//!      ⎣0  1  0 −1⎦        ⎣ 0    0    1 ⎦
//! ```
//!
//! F(4x4,3x3), `α = 6`:
//!
//! ```text
//!      ⎡4  0 −5  0  1  0⎤        ⎡ 1/4     0     0  ⎤
//!      ⎢0 −4 −4  1  1  0⎥        ⎢−1/6  −1/6  −1/6  ⎥        ⎡1 1  1 1  1 0⎤
//! Bᵀ = ⎢0  4 −4 −1  1  0⎥    G = ⎢−1/6   1/6  −1/6  ⎥   Aᵀ = ⎢0 1 −1 2 −2 0⎥
//!      ⎢0 −2 −1  2  1  0⎥        ⎢ 1/24  1/12  1/6  ⎥        ⎢0 1  1 4  4 0⎥
//!      ⎢0  2 −1 −2  1  0⎥        ⎢ 1/24 −1/12  1/6  ⎥        ⎣0 1 −1 8 −8 1⎦
//!      ⎣0  4  0 −5  0  1⎦        ⎣ 0       0     1  ⎦
//! ```
//!
//! **Arithmetic saving.** A direct 3x3 convolution spends 9 multiply-adds per output and input
//! channel. Winograd spends `α²/m²` in the GEMMs: 16/4 = 4 for F(2x2,3x3) (2.25x fewer) and
//! 36/16 = 2.25 for F(4x4,3x3) (4x fewer). The transforms cost `O(α³)` additions per tile and
//! channel, small next to the GEMMs once `K` and `C` are in the tens. The price is accuracy:
//! F(4x4,3x3)'s matrices hold 1/6, 1/24 and entries up to 8, which amplify rounding error (see
//! below and [`crate::Tolerance::WINOGRAD_F4`]).
//!
//! # Implementation
//!
//! - **Filter transform** `U = G g Gᵀ` is stored as `[group][ξ]` × a packed `[k][c]` matrix in a
//!   [`WinogradFilter`] that a layer can build once and reuse through
//!   [`conv2d_winograd_prepared`]. Each plane `ξ` is a fixed combination of the nine taps, so
//!   the transform runs as unit-stride SIMD multiply-adds over chunks of 1,024 filters (taps
//!   transposed to `[tap][filter]` first), in parallel for large layers. The per-call path
//!   ([`conv2d_winograd`]) keeps the transformed filters in a per-thread buffer between calls.
//! - **Input gradient.** After a Winograd forward, [`conv2d_input_grad_winograd`] computes `dX`
//!   as the Winograd convolution of `dY` with the filters flipped and their channels swapped.
//! - **Weight gradient.** [`conv2d_weight_grad_winograd`] differentiates the tile formula: the
//!   transformed filter's gradient is `dU = Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)` and `dg = Gᵀ dU G`.
//!   Per transform position `ξ` it is one product `dU[ξ] [K', C'] += dŶ[ξ] [K', tiles] ·
//!   V[ξ] [C', tiles]ᵀ` (`sgemm`, the tiles as the inner dimension), with the same tiles,
//!   padding, dilation phases and groups as the forward; output-gradient values of edge tiles
//!   outside the output read as zero. Both operands are first copied channel-last (`[y][x][c]`,
//!   8×8 transposes in registers) a few images at a time, so that both transforms run on 8
//!   channels per vector with contiguous loads, and write tile-major buffers (`[t][ξ][c]`) that
//!   the products read as ordinary strided matrices. The tiles of the whole batch are taken
//!   image by image in blocks of at most 4 MiB of transform-domain scratch, and each `dU[ξ]`
//!   accumulates the blocks in that order, so the batch reduction is the same for every thread
//!   count (threads split the tiles' transforms and the `α²` products of a block, never the
//!   sum).
//! - **Work items** are `(images, group, chunk of output channels)`, each writing its own
//!   contiguous output slice (`par_chunks_mut`). An item takes several images (at most 256
//!   tiles, leaving at least two items) when there is one group, so that the GEMMs are wide.
//!   One image with one group is split in two so that two threads have work: undilated with
//!   at least 64 tiles, into two bands of tile rows, each computing every output channel
//!   straight into its rows of the output planes, so no input transform is repeated
//!   (res3x3_56 went from 1.5x to 1.9x on 2 threads); undilated with fewer tiles
//!   (vgg3x3_14: 49), one item whose stages are each split in two — the input transform by
//!   tile panels, the products by transform position `ξ` (each transformed filter plane is
//!   read by one thread; bands would read all of them twice and pad each band's products to
//!   whole panels), the output transform by output channel (vgg3x3_14, min of 25 in one
//!   sitting: 1.45 ms on 2 threads before this split and the parallel filter transform,
//!   1.27–1.31 ms after, 2.2 ms on one thread); dilated, into two chunks of output channels
//!   starting on 6-row panels. Splits depend on the shape only, so results are bit-identical
//!   for every thread count. Each item copies its input channels into zero-padded planes
//!   (per-thread scratch, reused across calls) so tile gathers need no edge tests; edge tiles
//!   read zeros and only their in-range outputs are written.
//! - **Tile blocks.** Tiles are processed in blocks of at most a fixed amount of transform-domain
//!   scratch (`α²·(C + K)·tiles` floats, 2 MiB; blocks much smaller than an image's tiles
//!   make the products too narrow to run at speed; a multiple of 16 tiles): input transform
//!   into `V[ξ]`, `α²` products, output transform from `M[ξ][k][t]`. The filter transform
//!   writes each `U[ξ]` in the GEMM's packed-A layout (6-row panels) and the input transform
//!   writes each `V[ξ]` in its packed-B layout (panels of 16 tiles, `[t/16][c][t%16]`), so each
//!   product is the 6x16 micro-kernel run over ready panels ([`crate::gemm::gemm_packed_ab`]):
//!   no packing, which had cost as much as the products on narrow blocks (one 14x14 image has
//!   16 F(4x4,3x3) tiles). The transforms run on 8 tiles at once in structure-of-arrays
//!   form with the [`crate::simd`] vectors (AVX2 when available): 8 consecutive tiles of
//!   `V[ξ]` and `M[ξ][k]` are contiguous, so each transform position is one vector load or
//!   store.
//! - **Dilation.** A convolution with dilation `(dh, dw)` and stride 1 splits into `dh·dw`
//!   undilated convolutions on subsampled grids: outputs `y ≡ ry (mod dh)` only read padded
//!   input rows `≡ ry (mod dh)`. Tiles of every phase `(ry, rx)` are gathered and scattered with
//!   steps `dh`, `dw`, so dilated 3x3 layers run on the same code.
//! - **Groups** loop over the per-group filters. Anything else (kernel not 3x3, stride ≠ 1)
//!   returns [`ConvError::Unsupported`].
//!
//! # Measured accuracy
//!
//! Max relative error (`max |x − y| / max |y|`, [`crate::max_rel_error`]) against the f64
//! naive reference, inputs and weights uniform in [−1, 1] (test
//! `winograd_error_on_suite_shapes` in `tests/winograd_direct.rs`, which asserts the bounds):
//!
//! | shape | F(2x2,3x3) | F(4x4,3x3) |
//! |---|---|---|
//! | res3x3_28b8 8,128,28,28→128 3x3 p1 (output channels 0..16, all 8 images) | 4.1e-7 | 8.0e-6 |
//! | vgg3x3_14 1,256,14,14→256 3x3 p1 | 7.7e-7 | 1.0e-5 |
//!
//! F(4x4,3x3) loses about one decimal digit against F(2x2,3x3), well under the 1e-3 budget.
//!
//! The weight gradient ([`conv2d_weight_grad_winograd`], whole tensor, all images; input and
//! output gradient uniform in [−1, 1], against `conv2d_backward_naive`; im2col's for scale):
//!
//! | shape | im2col | F(2x2,3x3) | F(4x4,3x3) |
//! |---|---|---|---|
//! | res3x3_56 1,64,56,56→64 3x3 p1 | 3.1e-7 | 6.3e-7 | 8.5e-6 |
//! | res3x3_28b8 8,128,28,28→128 3x3 p1 | 3.2e-7 | 5.4e-7 | 6.0e-6 |
//! | vgg3x3_14 1,256,14,14→256 3x3 p1 | 5.0e-7 | 4.0e-7 | 2.8e-6 |

use rayon::prelude::*;

use crate::error::{ConvError, Result};
use crate::gemm::{MR, MatRef, NR, PackedARef, gemm_packed_ab, kblock, packed_a_len, sgemm};
use crate::params::{ConvGeometry, check_len};
use crate::simd::{self, LANES, Simd, SimdLevel, WithSimd};

const OP: &str = "conv2d_winograd";

/// Below this many FLOPs the work runs on the calling thread.
const PARALLEL_MIN_FLOPS: u64 = 4_000_000;

/// Transform-domain scratch per tile block, in floats (2 MiB); 1, 4 and 8 MiB measured no
/// faster on `res3x3_28b8` (within the noise of a shared machine).
const BLOCK_FLOATS: usize = 1 << 19;

/// Which Winograd algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WinogradVariant {
    /// F(2x2,3x3): 4x4 input tiles, 2x2 outputs each; 2.25x fewer multiplies, nearly exact.
    F2x2_3x3,
    /// F(4x4,3x3): 6x6 input tiles, 4x4 outputs each; 4x fewer multiplies, looser accuracy.
    F4x4_3x3,
}

impl WinogradVariant {
    /// Output tile size `m`.
    pub fn m(self) -> usize {
        match self {
            WinogradVariant::F2x2_3x3 => 2,
            WinogradVariant::F4x4_3x3 => 4,
        }
    }
    /// Input tile size `α = m + 2`.
    pub fn alpha(self) -> usize {
        self.m() + 2
    }
    /// Name for messages and reports (`"winograd_f2"`, `"winograd_f4"`).
    pub fn name(self) -> &'static str {
        match self {
            WinogradVariant::F2x2_3x3 => "winograd_f2",
            WinogradVariant::F4x4_3x3 => "winograd_f4",
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

/// Why Winograd cannot run `g`, or `None` when it can.
fn unsupported(g: &ConvGeometry) -> Option<String> {
    if (g.kh, g.kw) != (3, 3) {
        return Some(format!("a {}x{} kernel (only 3x3)", g.kh, g.kw));
    }
    if g.params.stride != (1, 1) {
        return Some(format!("stride {:?} (only 1)", g.params.stride));
    }
    None
}

/// Whether [`conv2d_winograd`] can run `g` with `variant`: 3x3 kernels with stride 1; any
/// padding, dilation, group count and input size.
pub fn winograd_supports(g: &ConvGeometry, variant: WinogradVariant) -> bool {
    let _ = variant;
    unsupported(g).is_none()
}

/// Transformed 3x3 filters `U = G g Gᵀ`, ready for [`conv2d_winograd_prepared`].
///
/// Build it once per weight update and reuse it across calls (and input sizes).
#[derive(Debug, Clone, PartialEq)]
pub struct WinogradFilter {
    variant: WinogradVariant,
    c_out: usize,
    cpg: usize,
    groups: usize,
    /// `[group][ξ]` × one packed `kpg × cpg` plane (see [`transform_filters`]).
    u: Vec<f32>,
}

impl WinogradFilter {
    /// Transforms `weight` of dims `[c_out, c_in/groups, 3, 3]`.
    ///
    /// Errors when the dims are not 3x3, `groups` is zero or does not divide `c_out`, or the
    /// slice length does not match the dims.
    pub fn new(
        weight: &[f32],
        weight_dims: [usize; 4],
        groups: usize,
        variant: WinogradVariant,
    ) -> Result<Self> {
        const OP_F: &str = "WinogradFilter::new";
        let [c_out, cpg, kh, kw] = weight_dims;
        if (kh, kw) != (3, 3) {
            return Err(ConvError::Unsupported {
                op: OP_F,
                algo: variant.name(),
                msg: format!("weight {weight_dims:?}: a {kh}x{kw} kernel (only 3x3)"),
            });
        }
        if groups == 0 || c_out % groups != 0 || c_out == 0 || cpg == 0 {
            return Err(ConvError::ShapeMismatch {
                op: OP_F,
                msg: format!("weight {weight_dims:?} cannot be split into {groups} groups"),
            });
        }
        check_len(OP_F, "weight", &weight_dims, weight.len())?;
        let u = transform_filters(Vec::new(), weight, c_out / groups, cpg, groups, variant, false);
        Ok(WinogradFilter { variant, c_out, cpg, groups, u })
    }

    /// The variant the filter was transformed for.
    pub fn variant(&self) -> WinogradVariant {
        self.variant
    }
}

/// One depth block of the packed planes for [`transform_filters`]: input channels
/// `k0..k0+kcb` of every output channel, as `⌈kpg/6⌉` panels of 6 output channels × `kcb`.
struct FilterChunk<'a> {
    /// The group's filters, `[k][c][9]`.
    weights: &'a [f32],
    /// Output and input channels per group (the packed plane is a `kpg × cpg` matrix).
    kpg: usize,
    cpg: usize,
    /// The block's first input channel and depth.
    k0: usize,
    kcb: usize,
    /// Index of the first row panel (of `MR` output channels) in `pieces`.
    pi0: usize,
    /// `weights` are those of the convolution whose input gradient this one is: filter `(k, c)`
    /// is `W[c][k]` rotated 180° (see [`conv2d_input_grad_winograd`]).
    flipped: bool,
    /// One slice per plane `ξ`: a run of the block's panels.
    pieces: Vec<&'a mut [f32]>,
    variant: WinogradVariant,
}

impl WithSimd for FilterChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.variant {
            WinogradVariant::F2x2_3x3 => filter_chunk::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => filter_chunk::<S, F4, 6, 4>(s, self),
        }
    }
}

/// `U = G g Gᵀ` for the filters of one chunk, eight at a time: `G` on the three columns of the
/// taps, then on the `α` rows of the result, with the constant matrices of `T` unrolled.
#[inline(always)]
fn filter_chunk<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    chunk: FilterChunk<'_>,
) {
    let FilterChunk { weights, kpg, cpg, k0, kcb, pi0, flipped, mut pieces, .. } = chunk;
    let panel = MR * kcb;
    assert!(panel <= FILTER_CHUNK && pieces.iter().all(|p| p.len() == pieces[0].len()));
    let panels = pieces.first().map_or(0, |p| p.len() / panel);
    // One panel's taps, transposed to [tap][position] in the panel's order (row fastest).
    let mut taps = [[0f32; FILTER_CHUNK]; 9];
    for pi in 0..panels {
        for r in 0..MR {
            let k = (pi0 + pi) * MR + r;
            for p in 0..kcb {
                let i = p * MR + r;
                if k < kpg && flipped {
                    let f = &weights[((k0 + p) * kpg + k) * 9..][..9];
                    for (row, &v) in taps.iter_mut().zip(f.iter().rev()) {
                        row[i] = v;
                    }
                } else if k < kpg {
                    let f = &weights[(k * cpg + k0 + p) * 9..][..9];
                    for (row, &v) in taps.iter_mut().zip(f) {
                        row[i] = v;
                    }
                } else {
                    for row in &mut taps {
                        row[i] = 0.0;
                    }
                }
            }
        }
        filter_panel::<S, T, A, M>(s, &taps, panel, pi * panel, &mut pieces);
    }
}

/// The transform of one gathered panel (`len` positions of `taps`) into positions
/// `at..at+len` of every plane piece.
#[inline(always)]
fn filter_panel<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    taps: &[[f32; FILTER_CHUNK]; 9],
    len: usize,
    at: usize,
    pieces: &mut [&mut [f32]],
) {
    let mut i = 0;
    while i < len {
        // cols[s] = G · (column s of the 3x3 filter), α values each.
        let mut cols = [[s.zero(); A]; 3];
        for (sc, col) in cols.iter_mut().enumerate() {
            let t =
                [s.load(&taps[sc][i..]), s.load(&taps[3 + sc][i..]), s.load(&taps[6 + sc][i..])];
            *col = T::g(s, t);
        }
        for a in 0..A {
            let u = T::g(s, [cols[0][a], cols[1][a], cols[2][a]]);
            for (b, &v) in u.iter().enumerate() {
                let piece = &mut pieces[a * A + b][at + i..at + len];
                if piece.len() >= LANES {
                    s.store(v, piece);
                } else {
                    let n = piece.len();
                    piece.copy_from_slice(&s.to_array(v)[..n]);
                }
            }
        }
        i += LANES;
    }
}

/// The input gradient of a Winograd-eligible convolution, computed by Winograd: for stride 1,
/// `dX` is the convolution of `dY` with the filters flipped 180° and their input and output
/// channels swapped (per group), padded by `d·(k−1) − p` — again a 3x3, stride-1 convolution,
/// with `dX`'s shape. Returns `Ok(false)` without writing when `g` has no such form (stride
/// above 1, a kernel other than 3x3, or padding above `2·dilation`), so the caller falls back to
/// im2col. `grad_input` is overwritten.
pub fn conv2d_input_grad_winograd(
    g: &ConvGeometry,
    weight: &[f32],
    grad_output: &[f32],
    grad_input: &mut [f32],
    variant: WinogradVariant,
) -> Result<bool> {
    const OP_G: &str = "conv2d_input_grad_winograd";
    let (dh, dw) = g.params.dilation;
    let (ph, pw) = g.params.padding;
    if unsupported(g).is_some() || ph > 2 * dh || pw > 2 * dw {
        return Ok(false);
    }
    check_len(OP_G, "weight", &g.weight_dims(), weight.len())?;
    check_len(OP_G, "grad_output", &g.output_dims(), grad_output.len())?;
    check_len(OP_G, "grad_input", &g.input_dims(), grad_input.len())?;
    let Some(gt) = g.input_grad_geometry() else {
        return Ok(false);
    };
    winograd_call(simd::active(), &gt, grad_output, weight, true, None, grad_input, variant)?;
    Ok(true)
}

/// Transform-domain scratch per tile block of the weight gradient, in floats (4 MiB).
const WGRAD_BLOCK_FLOATS: usize = 1 << 20;

/// The weight gradient of a 3x3, stride-1 convolution, computed by Winograd.
///
/// With `Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` per tile, the gradient of the transformed filter is
/// `dU = Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)` over every image and tile, and `dg = Gᵀ dU G`. Summed
/// over channels, each transform position `ξ` is one product,
/// `dU[ξ] [K', C'] += dŶ[ξ] [K', tiles] · V[ξ] [C', tiles]ᵀ`, accumulated over blocks of tiles
/// taken in a fixed order (image by image), so the result does not depend on the number of
/// threads (the `α²` products of a block run in parallel, each one on its own `dU[ξ]`).
/// The input tiles, edge tiles, dilation (subsampled grids) and groups are handled as in
/// [`conv2d_winograd`]; output-gradient values outside the output read as zero.
///
/// `variant` need not be the one the forward pass ran. Returns `Ok(false)` without writing
/// when `g` is not a 3x3 stride-1 convolution. `grad_weight` (`[c_out, c_in/groups, 3, 3]`)
/// is overwritten.
pub fn conv2d_weight_grad_winograd(
    g: &ConvGeometry,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    variant: WinogradVariant,
) -> Result<bool> {
    const OP_W: &str = "conv2d_weight_grad_winograd";
    if unsupported(g).is_some() {
        return Ok(false);
    }
    check_len(OP_W, "input", &g.input_dims(), input.len())?;
    check_len(OP_W, "grad_output", &g.output_dims(), grad_output.len())?;
    check_len(OP_W, "grad_weight", &g.weight_dims(), grad_weight.len())?;
    let (cpg, kpg, groups) = (g.c_in_per_group(), g.c_out_per_group(), g.params.groups);
    // Channels padded to whole vectors in the channel-last copies and transform buffers.
    let (cv, kv) = (cpg.next_multiple_of(LANES), kpg.next_multiple_of(LANES));
    let (a, m) = (variant.alpha(), variant.m());
    let a2 = a * a;
    let (dh, dw) = g.params.dilation;
    let (image_tiles, hp, wp) = tile_grid(g, variant);
    // The output-gradient extent the tiles' m×m blocks cover (zeros past the output).
    let (ohp, owp) = image_tiles.iter().fold((g.oh, g.ow), |(eh, ew), t| {
        (eh.max(t.oy + dh * (m - 1) + 1), ew.max(t.ox + dw * (m - 1) + 1))
    });
    // Images are taken `nb` at a time (as many as one block of tiles holds, at least one):
    // their channel-last copies are made just before their tiles are transformed, so both
    // stay in cache.
    let per_image = image_tiles.len();
    let tb_max = (WGRAD_BLOCK_FLOATS / (a2 * (cv + kv))).clamp(8, 512);
    let nb = (tb_max / per_image).clamp(1, g.n);
    let tiles: Vec<Tile> =
        (0..nb).flat_map(|img| image_tiles.iter().map(move |t| Tile { img, ..*t })).collect();
    let nblocks = tiles.len().div_ceil(tb_max);
    let tb = tiles.len().div_ceil(nblocks);
    let (x_len, y_len) = (nb * hp * wp * cv, nb * ohp * owp * kv);
    let (v_len, w_len) = (tb * a2 * cv, tb * a2 * kv);
    let parallel = g.flops() >= PARALLEL_MIN_FLOPS && rayon::current_num_threads() > 1;
    let (ph, pw) = g.params.padding;
    let du_len = a2 * kpg * cpg;
    crate::direct::with_thread_scratch(|scratch| {
        // Every float a product reads is written first: the channel-last copies with their
        // zero borders (padding, and the output gradient past the output) by
        // `ChannelLast::copy`, the transform buffers tile by tile.
        // `dU` too is overwritten (beta 0) by each group's first block before it is read.
        let total = x_len + y_len + v_len + w_len + du_len;
        if scratch.len() < total {
            scratch.resize(total, 0.0);
        }
        let (xcl, rest) = scratch.split_at_mut(x_len);
        let (ycl, rest) = rest.split_at_mut(y_len);
        let (vbuf, rest) = rest.split_at_mut(v_len);
        let (wbuf, rest) = rest.split_at_mut(w_len);
        let du = &mut rest[..du_len];
        let x_at = ChannelLast { h: g.h, w: g.w, y0: ph, x0: pw, hp, wp, channels: cpg, cv };
        let y_at =
            ChannelLast { h: g.oh, w: g.ow, y0: 0, x0: 0, hp: ohp, wp: owp, channels: kpg, cv: kv };
        for grp in 0..groups {
            let mut first = true;
            for b0 in (0..g.n).step_by(nb) {
                let imgs = nb.min(g.n - b0);
                for (b, dst) in xcl.chunks_exact_mut(hp * wp * cv).take(imgs).enumerate() {
                    let start = ((b0 + b) * g.c_in + grp * cpg) * g.h * g.w;
                    x_at.copy(&input[start..][..cpg * g.h * g.w], dst);
                }
                for (b, dst) in ycl.chunks_exact_mut(ohp * owp * kv).take(imgs).enumerate() {
                    let start = ((b0 + b) * g.c_out + grp * kpg) * g.oh * g.ow;
                    y_at.copy(&grad_output[start..][..kpg * g.oh * g.ow], dst);
                }
                let src = GradSource {
                    variant,
                    x: &*xcl,
                    y: &*ycl,
                    hp,
                    wp,
                    ohp,
                    owp,
                    cpg,
                    kpg,
                    cv,
                    kv,
                    dh,
                    dw,
                };
                for block in tiles[..imgs * per_image].chunks(tb) {
                    let beta = if first { 0.0 } else { 1.0 };
                    first = false;
                    grad_block_products(
                        &src, block, &mut *vbuf, &mut *wbuf, beta, &mut *du, parallel,
                    );
                }
            }
            let gw = &mut grad_weight[grp * kpg * cpg * 9..][..kpg * cpg * 9];
            filter_grad_transform(du, gw, kpg, cpg, variant);
        }
    });
    Ok(true)
}

/// One block of tiles of the weight gradient: both transforms of every tile (split across
/// threads when `parallel`), then `dU[ξ] (+)= dŶ[ξ] · V[ξ]ᵀ` for every transform position `ξ`
/// (`beta` 0 overwrites `du`, 1 accumulates), the positions split across threads.
fn grad_block_products(
    src: &GradSource<'_>,
    block: &[Tile],
    vbuf: &mut [f32],
    wbuf: &mut [f32],
    beta: f32,
    du: &mut [f32],
    parallel: bool,
) {
    let (cpg, kpg, cv, kv) = (src.cpg, src.kpg, src.cv, src.kv);
    let a = src.variant.alpha();
    let a2 = a * a;
    let nt = block.len();
    // Each tile's transforms are written to its own rows: split across threads.
    let per = if parallel { nt.div_ceil(2) } else { nt };
    let parts: Vec<GradBlock<'_>> = block
        .chunks(per)
        .zip(vbuf.chunks_mut(per * a2 * cv))
        .zip(wbuf.chunks_mut(per * a2 * kv))
        .map(|((tiles, v), w)| GradBlock { src, tiles, v, w })
        .collect();
    if parallel {
        parts.into_par_iter().for_each(simd::dispatch_active);
    } else {
        parts.into_iter().for_each(simd::dispatch_active);
    }
    let (vb, wb) = (&*vbuf, &*wbuf);
    // dU[ξ] (K' × C') (+)= dŶ[ξ] (K' × tiles) · V[ξ]ᵀ (tiles × C'), both read from the
    // tile-major buffers `[t][ξ][channel]`.
    let product = |(xi, c): (usize, &mut [f32])| {
        let dyt = MatRef {
            data: &wb[xi * kv..],
            rows: kpg,
            cols: nt,
            row_stride: 1,
            col_stride: a2 * kv,
        };
        let vt = MatRef {
            data: &vb[xi * cv..],
            rows: nt,
            cols: cpg,
            row_stride: a2 * cv,
            col_stride: 1,
        };
        sgemm(1.0, dyt, vt, beta, c, cpg);
    };
    if parallel {
        du.par_chunks_mut(kpg * cpg).enumerate().for_each(product);
    } else {
        du.chunks_mut(kpg * cpg).enumerate().for_each(product);
    }
}

/// Where [`ChannelLast::copy`] puts `channels` planes of `h × w`: at `(y0, x0)` of an
/// `hp × wp` grid of pixels, each pixel `cv` floats (channels innermost). Also the pixel-major
/// output gradient of the direct weight gradient ([`crate::direct_backward`]).
pub(crate) struct ChannelLast {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) y0: usize,
    pub(crate) x0: usize,
    pub(crate) hp: usize,
    pub(crate) wp: usize,
    pub(crate) channels: usize,
    pub(crate) cv: usize,
}

impl ChannelLast {
    /// Copies the planes `src` (`[channels][h][w]`) into `dst` (`[hp][wp][cv]`), zeroing the
    /// pixels around them; channels `channels..cv` of each pixel are left as they are.
    fn copy(&self, src: &[f32], dst: &mut [f32]) {
        simd::dispatch_active(ChannelLastCopy { at: self, src, dst });
    }

    /// [`ChannelLast::copy`] with the instruction set of the caller's kernel: blocks of 8
    /// channels × 8 pixels, eight row loads, one 8×8 transpose in registers, eight pixel
    /// stores.
    #[inline(always)]
    pub(crate) fn copy_with<S: Simd>(&self, s: S, src: &[f32], dst: &mut [f32]) {
        let p = self;
        let (hw, cv, wp) = (p.h * p.w, p.cv, p.wp);
        assert!(p.y0 + p.h <= p.hp && p.x0 + p.w <= wp && p.channels <= cv);
        let zero_px = |px: &mut [f32]| px[..p.channels].fill(0.0);
        // (The hot loop below uses no closure: one would be compiled without `S`'s target
        // features.)
        dst[..p.y0 * wp * cv].chunks_exact_mut(cv).for_each(zero_px);
        dst[(p.y0 + p.h) * wp * cv..p.hp * wp * cv].chunks_exact_mut(cv).for_each(zero_px);
        let (full_c, full_x) = (p.channels / LANES * LANES, p.w / LANES * LANES);
        for y in 0..p.h {
            let line = &mut dst[(y + p.y0) * wp * cv..][..wp * cv];
            line[..p.x0 * cv].chunks_exact_mut(cv).for_each(zero_px);
            line[(p.x0 + p.w) * cv..].chunks_exact_mut(cv).for_each(zero_px);
        }
        // Bands of rows: each plane's rows of a band are one contiguous read, and the band's
        // pixels (`YB · wp · cv` floats) stay in cache while every channel block fills them.
        const YB: usize = 4;
        for yb in (0..p.h).step_by(YB) {
            let rows = YB.min(p.h - yb);
            for c0 in (0..full_c).step_by(LANES) {
                for y in yb..yb + rows {
                    let row = &mut dst[((y + p.y0) * wp + p.x0) * cv..][..p.w * cv];
                    for x0 in (0..full_x).step_by(LANES) {
                        let mut v = [s.zero(); LANES];
                        for (j, vj) in v.iter_mut().enumerate() {
                            *vj = s.load(&src[(c0 + j) * hw + y * p.w + x0..]);
                        }
                        for (i, t) in s.transpose8(v).into_iter().enumerate() {
                            s.store(t, &mut row[(x0 + i) * cv + c0..]);
                        }
                    }
                    for x in full_x..p.w {
                        for j in 0..LANES {
                            row[x * cv + c0 + j] = src[(c0 + j) * hw + y * p.w + x];
                        }
                    }
                }
            }
            for c in full_c..p.channels {
                for y in yb..yb + rows {
                    let row = &mut dst[((y + p.y0) * wp + p.x0) * cv..][..p.w * cv];
                    for (px, &v) in row.chunks_exact_mut(cv).zip(&src[c * hw + y * p.w..][..p.w]) {
                        px[c] = v;
                    }
                }
            }
        }
    }
}

/// [`ChannelLast::copy`] for the SIMD dispatcher.
struct ChannelLastCopy<'a> {
    at: &'a ChannelLast,
    src: &'a [f32],
    dst: &'a mut [f32],
}

impl WithSimd for ChannelLastCopy<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        self.at.copy_with(s, self.src, self.dst);
    }
}

/// The channel-last operands of the weight gradient of one group and how tiles read them.
struct GradSource<'a> {
    variant: WinogradVariant,
    /// Padded input, `[img][hp][wp][cv]`.
    x: &'a [f32],
    /// Output gradient, `[img][ohp][owp][kv]`.
    y: &'a [f32],
    hp: usize,
    wp: usize,
    ohp: usize,
    owp: usize,
    cpg: usize,
    kpg: usize,
    cv: usize,
    kv: usize,
    dh: usize,
    dw: usize,
}

/// Transforms of a run of tiles of the weight gradient: `V = Bᵀ d B` into `v[t][ξ][c]` and
/// `A dY Aᵀ` into `w[t][ξ][k]`.
struct GradBlock<'a> {
    src: &'a GradSource<'a>,
    tiles: &'a [Tile],
    v: &'a mut [f32],
    w: &'a mut [f32],
}

impl WithSimd for GradBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.src.variant {
            WinogradVariant::F2x2_3x3 => grad_block::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => grad_block::<S, F4, 6, 4>(s, self),
        }
    }
}

/// Both transforms of the weight gradient, vectorized over 8 channels: every tile element is
/// one contiguous load from the channel-last operands, and every transformed value one
/// contiguous store.
#[inline(always)]
fn grad_block<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    b: GradBlock<'_>,
) {
    let GradBlock { src: p, tiles, v, w } = b;
    let a2 = A * A;
    for ((t, vt), wt) in
        tiles.iter().zip(v.chunks_exact_mut(a2 * p.cv)).zip(w.chunks_exact_mut(a2 * p.kv))
    {
        let xo = ((t.img * p.hp + t.py) * p.wp + t.px) * p.cv;
        for c0 in (0..p.cpg).step_by(LANES) {
            let mut d = [[s.zero(); A]; A];
            for (r, dr) in d.iter_mut().enumerate() {
                for (col, dv) in dr.iter_mut().enumerate() {
                    *dv = s.load(&p.x[xo + (r * p.dh * p.wp + col * p.dw) * p.cv + c0..]);
                }
            }
            let tv = input_2d::<S, T, A, M>(s, &d);
            for (xi, row) in tv.iter().enumerate() {
                for (xj, &val) in row.iter().enumerate() {
                    s.store(val, &mut vt[(xi * A + xj) * p.cv + c0..]);
                }
            }
        }
        let yo = ((t.img * p.ohp + t.oy) * p.owp + t.ox) * p.kv;
        for k0 in (0..p.kpg).step_by(LANES) {
            let mut y = [[s.zero(); M]; M];
            for (i, yr) in y.iter_mut().enumerate() {
                for (j, yv) in yr.iter_mut().enumerate() {
                    *yv = s.load(&p.y[yo + (i * p.dh * p.owp + j * p.dw) * p.kv + k0..]);
                }
            }
            let tw = grad_2d::<S, T, A, M>(s, &y);
            for (xi, row) in tw.iter().enumerate() {
                for (xj, &val) in row.iter().enumerate() {
                    s.store(val, &mut wt[(xi * A + xj) * p.kv + k0..]);
                }
            }
        }
    }
}

/// `dg = Gᵀ dU G` for every filter: `dU` is `[ξ][k][c]`, `gw` is `[k][c][3][3]`. Separable
/// (`dU G` on the rows, then `Gᵀ ·` on the columns), eight filters `c..c+8` per vector, the
/// constant entries of `G` unrolled. Output channels split across threads for large layers;
/// each filter is computed the same way either way.
fn filter_grad_transform(
    du: &[f32],
    gw: &mut [f32],
    kpg: usize,
    cpg: usize,
    variant: WinogradVariant,
) {
    let per_k = cpg * 9;
    // Output channels per task: about 64k floats of `dU` read each.
    let kc = (65_536 / (variant.alpha().pow(2) * cpg)).clamp(1, kpg);
    let run = |(t, gw): (usize, &mut [f32])| {
        simd::dispatch_active(FilterGrad { du, gw, k0: t * kc, kpg, cpg, variant });
    };
    if kpg * per_k >= 1 << 18 && rayon::current_num_threads() > 1 {
        gw.par_chunks_mut(kc * per_k).enumerate().for_each(run);
    } else {
        gw.chunks_mut(kc * per_k).enumerate().for_each(run);
    }
}

/// [`filter_grad_transform`] of output channels `k0..k0 + gw.len() / (cpg·9)`.
struct FilterGrad<'a> {
    du: &'a [f32],
    gw: &'a mut [f32],
    k0: usize,
    kpg: usize,
    cpg: usize,
    variant: WinogradVariant,
}

impl WithSimd for FilterGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.variant {
            WinogradVariant::F2x2_3x3 => filter_grad::<S, 4>(s, self, &G2),
            WinogradVariant::F4x4_3x3 => filter_grad::<S, 6>(s, self, &G4),
        }
    }
}

#[inline(always)]
fn filter_grad<S: Simd, const A: usize>(s: S, f: FilterGrad<'_>, gm: &[[f64; 3]; A]) {
    let FilterGrad { du, gw, k0, kpg, cpg, .. } = f;
    let mut gs = [[s.zero(); 3]; A];
    for (row, grow) in gs.iter_mut().zip(gm) {
        for (v, &coef) in row.iter_mut().zip(grow) {
            *v = s.splat(coef as f32);
        }
    }
    for (kk, gw_k) in gw.chunks_exact_mut(cpg * 9).enumerate() {
        let k = k0 + kk;
        for c0 in (0..cpg).step_by(LANES) {
            let n = LANES.min(cpg - c0);
            // tmp[ξi][s] = Σ_ξj dU[ξi, ξj] · G[ξj][s]
            let mut tmp = [[s.zero(); 3]; A];
            for (xi, trow) in tmp.iter_mut().enumerate() {
                for (xj, grow) in gm.iter().enumerate() {
                    let at = ((xi * A + xj) * kpg + k) * cpg + c0;
                    let v = if n == LANES {
                        s.load(&du[at..])
                    } else {
                        let mut lanes = [0f32; LANES];
                        lanes[..n].copy_from_slice(&du[at..at + n]);
                        s.load(&lanes)
                    };
                    for (sc, t) in trow.iter_mut().enumerate() {
                        if grow[sc] != 0.0 {
                            *t = s.fma(gs[xj][sc], v, *t);
                        }
                    }
                }
            }
            // out[r][s] = Σ_ξi G[ξi][r] · tmp[ξi][s]
            let mut out = [[0f32; LANES]; 9];
            for (r, orow) in out.chunks_exact_mut(3).enumerate() {
                for (sc, o) in orow.iter_mut().enumerate() {
                    let mut acc = s.zero();
                    for (xi, grow) in gm.iter().enumerate() {
                        if grow[r] != 0.0 {
                            acc = s.fma(gs[xi][r], tmp[xi][sc], acc);
                        }
                    }
                    s.store(acc, o);
                }
            }
            for (l, filt) in gw_k[c0 * 9..][..n * 9].chunks_exact_mut(9).enumerate() {
                for (f, o) in filt.iter_mut().zip(&out) {
                    *f = o[l];
                }
            }
        }
    }
}

/// Positions of one staged panel of the filter transform: 6 output channels × a depth block of
/// at most 256 input channels (the GEMM's panel shape).
const FILTER_CHUNK: usize = MR * 256;

/// `U = G g Gᵀ` for every 3x3 filter, laid out `[group][ξ]` × one `kpg × cpg` matrix per plane
/// in the packed layout of the GEMM's left operand ([`PackedARef`]), so the products read it
/// without packing.
///
/// Each of the `α²` planes `ξ = (ξi, ξj)` is a fixed combination of the nine taps,
/// `U = G (G g)ᵀ` computed separably for eight filters at a time, in vector registers: `G` on
/// the three tap columns, then on the `α` rows, with the constant entries of `G` unrolled
/// (`Transforms::g`), each result stored straight into its plane. A chunk's taps are first
/// transposed to `[tap][position]` in a stack buffer, in the packed order of the planes.
/// Chunks (a depth block × a run of row panels, so that even one depth block gives every
/// thread work) run in parallel for large layers (VGG's 256x256 filters: 65,536 of them);
/// every value is computed the same way whatever the chunking, so the result does not depend
/// on threads.
fn transform_filters(
    buf: Vec<f32>,
    weight: &[f32],
    kpg: usize,
    cpg: usize,
    groups: usize,
    variant: WinogradVariant,
    flipped: bool,
) -> Vec<f32> {
    let a = variant.alpha();
    let a2 = a * a;
    let per_group = kpg * cpg;
    let plen = packed_a_len(kpg, cpg);
    // Every element is written below, so a recycled buffer of the right length needs no zeroing.
    let len = groups * a2 * plen;
    let mut u = buf;
    if u.len() != len {
        u.clear();
        u.resize(len, 0.0);
    }
    for (grp, ug) in u.chunks_exact_mut(a2 * plen).enumerate() {
        let wg = &weight[grp * per_group * 9..][..per_group * 9];
        // tasks[t]: depth block t of every plane (see `PackedARef` for the layout).
        let (kb, mp) = (kblock(cpg), kpg.next_multiple_of(MR));
        let nblocks = cpg.div_ceil(kb);
        let mut tasks: Vec<Vec<&mut [f32]>> =
            (0..nblocks).map(|_| Vec::with_capacity(a2)).collect();
        for plane in ug.chunks_exact_mut(plen) {
            let mut rest = plane;
            for (t, task) in tasks.iter_mut().enumerate() {
                let kcb = kb.min(cpg - t * kb);
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(mp * kcb);
                task.push(head);
                rest = tail;
            }
        }
        // Large layers: every depth block is also cut into runs of row panels, so that one
        // depth block (VGG's 256 input channels) still gives every thread work.
        let parallel = plen * a2 >= 64 * FILTER_CHUNK && rayon::current_num_threads() > 1;
        let panels = mp / MR;
        let runs = if parallel { rayon::current_num_threads().min(panels) } else { 1 };
        let per_run = panels.div_ceil(runs);
        let mut chunks = Vec::with_capacity(nblocks * runs);
        for (t, pieces) in tasks.into_iter().enumerate() {
            let (k0, kcb) = (t * kb, kb.min(cpg - t * kb));
            let mut parts: Vec<Vec<&mut [f32]>> =
                (0..runs).map(|_| Vec::with_capacity(a2)).collect();
            for piece in pieces {
                for (part, run) in parts.iter_mut().zip(piece.chunks_mut(per_run * MR * kcb)) {
                    part.push(run);
                }
            }
            for (r, pieces) in parts.into_iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                let pi0 = r * per_run;
                let chunk =
                    FilterChunk { weights: wg, kpg, cpg, k0, kcb, pi0, pieces, variant, flipped };
                chunks.push(chunk);
            }
        }
        if parallel {
            chunks.into_par_iter().for_each(simd::dispatch_active);
        } else {
            chunks.into_iter().for_each(simd::dispatch_active);
        }
    }
    u
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
    g.check_buffers(OP, input.len(), weight.len(), bias.map(<[f32]>::len), output.len())?;
    if let Some(msg) = unsupported(g) {
        return Err(ConvError::Unsupported { op: OP, algo: variant.name(), msg });
    }
    // The transformed filters (4x the weights for F(4x4,3x3): 9.4 MB on `vgg3x3_14`) go into
    // a per-thread buffer kept between calls: a fresh allocation of that size is page-faulted
    // in on every call, which cost as much as the transform itself.
    let (c_out, cpg, groups) = (g.c_out, g.c_in_per_group(), g.params.groups);
    let buf = FILTER_BUF.with(|b| b.take());
    let u = transform_filters(buf, weight, c_out / groups, cpg, groups, variant, flipped);
    let filter = WinogradFilter { variant, c_out, cpg, groups, u };
    let result = prepared_with(level, g, input, &filter, bias, output);
    FILTER_BUF.with(|b| b.replace(filter.u));
    result
}

thread_local! {
    /// Reused storage of the filters [`conv2d_winograd_with`] transforms on every call.
    static FILTER_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
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
    prepared_with(simd::active(), g, input, filter, bias, output)
}

fn prepared_with(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    filter: &WinogradFilter,
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    let variant = filter.variant;
    if !level.available() {
        return Err(ConvError::Unsupported {
            op: OP,
            algo: variant.name(),
            msg: format!("SIMD level {level} on this CPU"),
        });
    }
    if let Some(msg) = unsupported(g) {
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
    let plan = Plan::new(g, variant);
    let ohw = g.oh * g.ow;
    let chunk_len = plan.nb * plan.kc * ohw;
    // A group's chunks: all `kc` channels but the last (only one image and one group are ever
    // split unevenly, so every item's output is one contiguous `chunk_len` slice or the tail).
    let chunks_per_group = plan.kpg.div_ceil(plan.kc);
    let chunks_per_image = g.params.groups * chunks_per_group;
    let plen = packed_a_len(plan.kpg, plan.cpg);
    let run = |scratch: &mut Vec<f32>, (idx, out): (usize, &mut [f32])| {
        let b = idx / chunks_per_image * plan.nb;
        let grp = idx % chunks_per_image / chunks_per_group;
        let kl = idx % chunks_per_group * plan.kc;
        let kc = out.len() / (plan.nb * ohw);
        let k0 = grp * plan.kpg + kl;
        // With `nb > 1` there is one group and one chunk per image, so the images' channels
        // are contiguous.
        let img_len = plan.nb * plan.cpg * g.h * g.w;
        let in_start = (b * g.c_in + grp * plan.cpg) * g.h * g.w;
        let a2 = plan.a * plan.a;
        let item = Item {
            plan: &plan,
            input: &input[in_start..in_start + img_len],
            u: &filter.u[grp * a2 * plen..][..a2 * plen],
            kl,
            kc,
            bias: bias.map(|b| &b[k0..k0 + kc]),
            tiles: &plan.tiles,
            y0: 0,
            out: out.chunks_exact_mut(ohw).collect(),
            scratch,
        };
        // `level` was checked above, so dispatch cannot decline.
        let _ = simd::dispatch(level, item);
    };
    if let Some((top, y1)) = plan.row_split {
        // Two bands of output rows, each writing its rows of every output plane.
        let a2 = plan.a * plan.a;
        let (mut top_rows, mut bottom_rows) = (Vec::new(), Vec::new());
        for plane in output.chunks_exact_mut(ohw) {
            let (t, b) = plane.split_at_mut(y1 * g.ow);
            top_rows.push(t);
            bottom_rows.push(b);
        }
        let bands = [(&plan.tiles[..top], 0, top_rows), (&plan.tiles[top..], y1, bottom_rows)];
        let band = |(tiles, y0, out): (&[Tile], usize, Vec<&mut [f32]>)| {
            crate::direct::with_thread_scratch(|scratch| {
                let item = Item {
                    plan: &plan,
                    input,
                    u: &filter.u[..a2 * plen],
                    kl: 0,
                    kc: plan.kpg,
                    bias,
                    tiles,
                    y0,
                    out,
                    scratch,
                };
                // `level` was checked above, so dispatch cannot decline.
                let _ = simd::dispatch(level, item);
            });
        };
        let [first, second] = bands;
        if g.flops() < PARALLEL_MIN_FLOPS {
            band(first);
            band(second);
        } else {
            rayon::join(|| band(first), || band(second));
        }
        return Ok(());
    }
    if g.flops() < PARALLEL_MIN_FLOPS || output.len() == chunk_len {
        let chunks = output.chunks_mut(chunk_len).enumerate();
        crate::direct::with_thread_scratch(|s| chunks.for_each(|it| run(s, it)));
    } else {
        output
            .par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|it| crate::direct::with_thread_scratch(|s| run(s, it)));
    }
    Ok(())
}

/// One tile: the top-left corner of its `α×α` input patch in padded coordinates and of its
/// `m×m` output block; both advance by the dilation.
#[derive(Debug, Clone, Copy)]
struct Tile {
    /// Image within the work item.
    img: usize,
    py: usize,
    px: usize,
    oy: usize,
    ox: usize,
}

/// Sizes and the tile list, derived once per call.
struct Plan {
    variant: WinogradVariant,
    a: usize,
    cpg: usize,
    kpg: usize,
    kc: usize,
    /// Images per work item.
    nb: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
    /// Padded plane size (covers every tile's patch).
    hp: usize,
    wp: usize,
    tiles: Vec<Tile>,
    /// Tiles per block (a multiple of [`NR`], the GEMM's panel width).
    tb: usize,
    /// For one undilated image: the tiles of the top band and the band's output rows, each
    /// band one work item with every output channel.
    row_split: Option<(usize, usize)>,
    /// For one image with few tiles: its single work item splits its transform-domain products
    /// (by transform position `ξ`) and its output transform (by output channel) between two
    /// threads, so that each transformed filter plane is read by one thread only.
    xi_split: bool,
}

/// The tiles of one image (`img` 0) for `g` and `variant`, phase by phase for a dilated
/// layer, and the padded plane size `(hp, wp)` that covers every tile's patch.
fn tile_grid(g: &ConvGeometry, variant: WinogradVariant) -> (Vec<Tile>, usize, usize) {
    let (m, a) = (variant.m(), variant.alpha());
    let (dh, dw) = g.params.dilation;
    let (ph, pw) = g.params.padding;
    let mut tiles = Vec::new();
    let (mut hp, mut wp) = (g.h + ph, g.w + pw);
    for ry in 0..dh.min(g.oh) {
        let ohr = (g.oh - ry).div_ceil(dh);
        for rx in 0..dw.min(g.ow) {
            let owr = (g.ow - rx).div_ceil(dw);
            let (th, tw) = (ohr.div_ceil(m), owr.div_ceil(m));
            hp = hp.max(ry + dh * ((th - 1) * m + a - 1) + 1);
            wp = wp.max(rx + dw * ((tw - 1) * m + a - 1) + 1);
            for ty in 0..th {
                for tx in 0..tw {
                    let (oy, ox) = (ry + dh * ty * m, rx + dw * tx * m);
                    tiles.push(Tile { img: 0, py: oy, px: ox, oy, ox });
                }
            }
        }
    }
    (tiles, hp, wp)
}

impl Plan {
    fn new(g: &ConvGeometry, variant: WinogradVariant) -> Plan {
        let a = variant.alpha();
        let (dh, dw) = g.params.dilation;
        let (ph, pw) = g.params.padding;
        let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
        let (mut tiles, hp, wp) = tile_grid(g, variant);
        let mut kc = kpg;
        let mut row_split = None;
        let mut xi_split = false;
        // One image and one group give two threads work by splitting. Undilated: the tiles, in
        // two bands of tile rows, each with every output channel (no work is repeated).
        // Dilated: the output channels, in chunks starting on panels of the packed filters
        // (multiples of `MR` rows; the last one may be shorter), each repeating the input
        // transform.
        if g.n * g.params.groups < 2 && kpg >= 32 {
            let m = variant.m();
            let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
            if (dh, dw) == (1, 1) && tiles.len() < 4 * NR {
                // Bands of fewer than two 16-tile panels would each pad their products to
                // whole panels and read every transformed filter plane again.
                xi_split = true;
            } else if (dh, dw) == (1, 1) && th >= 2 {
                let top = th.div_ceil(2);
                row_split = Some((top * tw, (top * m).min(g.oh)));
            } else {
                kc = kpg.div_ceil(2).next_multiple_of(MR);
            }
        }
        // Several images per work item when a single image has few tiles: wider products keep
        // the micro-kernel's B panels full and amortize the per-block work.
        // Only with one group and unsplit channels, where the images' outputs are contiguous.
        let per_image = tiles.len();
        let mut nb = 1;
        if g.params.groups == 1 && kc == kpg {
            nb = (1..=g.n)
                .rev()
                .find(|&d| g.n.is_multiple_of(d) && g.n / d >= 2 && d * per_image <= 256)
                .unwrap_or(1);
        }
        tiles = (0..nb).flat_map(|img| tiles.iter().map(move |t| Tile { img, ..*t })).collect();
        let a2 = a * a;
        let tb_max = (BLOCK_FLOATS / (a2 * (cpg + kc))).clamp(NR, 256) / NR * NR;
        let per_item = row_split.map_or(tiles.len(), |(top, _)| top.max(tiles.len() - top));
        let nblocks = per_item.div_ceil(tb_max);
        let tb = per_item.div_ceil(nblocks).next_multiple_of(NR);
        Plan {
            variant,
            a,
            cpg,
            kpg,
            kc,
            nb,
            h: g.h,
            w: g.w,
            oh: g.oh,
            ow: g.ow,
            ph,
            pw,
            dh,
            dw,
            hp,
            wp,
            tiles,
            tb,
            row_split,
            xi_split,
        }
    }
}

/// One work item: output channels `kl..kl+kc` (within the group) of one group, for `nb`
/// consecutive images.
struct Item<'a> {
    plan: &'a Plan,
    /// The group's input channels of the images, `[nb, cpg, h, w]`.
    input: &'a [f32],
    /// The group's transformed filters: `α²` packed `kpg × cpg` planes.
    u: &'a [f32],
    /// First output channel of the chunk within the group (a multiple of [`MR`]).
    kl: usize,
    /// Output channels in the chunk.
    kc: usize,
    bias: Option<&'a [f32]>,
    /// The tiles of the item.
    tiles: &'a [Tile],
    /// First output row written (0 except in the second band of [`Plan::row_split`]).
    y0: usize,
    /// The item's output planes (`[nb·kc]`) from row `y0`: all rows, or a band's.
    out: Vec<&'a mut [f32]>,
    scratch: &'a mut Vec<f32>,
}

impl WithSimd for Item<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.plan.variant {
            WinogradVariant::F2x2_3x3 => run_item::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => run_item::<S, F4, 6, 4>(s, self),
        }
    }
}

/// Processes one work item with tile size `A = α`, output block `M = m` and the transforms of
/// `T`.
#[inline(always)]
fn run_item<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(s: S, item: Item<'_>) {
    let Item { plan: p, input, u, kl, kc, bias, tiles, y0, mut out, scratch, .. } = item;
    let a2 = A * A;
    let plane = p.hp * p.wp;
    let planes = p.nb * p.cpg;
    let plen = packed_a_len(p.kpg, p.cpg);
    let (padded_len, v_len, m_len) = (planes * plane, a2 * p.cpg * p.tb, a2 * kc * p.tb);
    // Grown once per worker, never cleared: V and M are written before they are read (stale
    // values only reach lanes that are discarded), and the padding is zeroed below.
    let total = padded_len + v_len + m_len;
    if scratch.len() < total {
        scratch.resize(total, 0.0);
    }
    let (padded, rest) = scratch.split_at_mut(padded_len);
    let (vbuf, rest) = rest.split_at_mut(v_len);
    let mbuf = &mut rest[..m_len];
    let planes_in = input.chunks_exact(p.h * p.w);
    let pads = Pads { h: p.h, w: p.w, ph: p.ph, pw: p.pw, wp: p.wp };
    pad_planes(&pads, planes_in, padded.chunks_exact_mut(plane));
    let padded = &*padded;
    let patches = Patches { padded, plane, wp: p.wp, dh: p.dh, dw: p.dw, cpg: p.cpg };

    let split = p.xi_split && rayon::current_num_threads() > 1;
    for block in tiles.chunks(p.tb) {
        let nt = block.len();
        // Input transform, 8 tiles at a time: V[ξ] in panels of 16 tiles. Split mode: the
        // tiles of the first half of the panels on one thread, the rest on the other.
        let panels = nt.div_ceil(NR);
        if split && panels >= 2 {
            let cut = panels / 2 * NR;
            let (mut lo, mut hi) = (Vec::with_capacity(a2), Vec::with_capacity(a2));
            for plane in vbuf.chunks_exact_mut(p.cpg * p.tb) {
                let (a, b) = plane.split_at_mut(cut * p.cpg);
                lo.push(a);
                hi.push(b);
            }
            let (patches, variant) = (&patches, p.variant);
            let (tl, th) = block.split_at(cut);
            rayon::join(
                || simd::dispatch(S::LEVEL, InputJob { variant, patches, tiles: tl, planes: lo }),
                || simd::dispatch(S::LEVEL, InputJob { variant, patches, tiles: th, planes: hi }),
            );
        } else {
            let mut planes: Vec<&mut [f32]> = vbuf.chunks_exact_mut(p.cpg * p.tb).collect();
            input_transform_block::<S, T, A, M>(s, &patches, block, &mut planes);
        }
        // Transform-domain products: M[ξ] = U[ξ][kl..kl+kc] · V[ξ], both operands already in
        // panel form. Whole panels: columns past `nt` hold stale values that are never stored.
        let n = nt.next_multiple_of(NR);
        let products = Products {
            u,
            plen,
            kpg: p.kpg,
            cpg: p.cpg,
            ks: (kl, kl + kc),
            v: &*vbuf,
            n,
            tb: p.tb,
            xi0: 0,
            m: &mut [],
        };
        // Output transform, bias, and scatter of the in-range outputs of channels `ks`.
        let outputs =
            OutputBlock { plan: p, block, m: &[], kc, bias, ks: (0, kc), y0, out: &mut [] };
        if split {
            // Half of the transform positions each, then half of the output channels each
            // (one image: the channels' planes are contiguous). Each half is dispatched again:
            // a closure is compiled without `S`'s target features.
            let half = a2 / 2 * kc * p.tb;
            let (lo, hi) = mbuf.split_at_mut(half);
            rayon::join(
                || simd::dispatch(S::LEVEL, Products { m: lo, ..products }),
                || simd::dispatch(S::LEVEL, Products { xi0: a2 / 2, m: hi, ..products }),
            );
            let kh = kc.div_ceil(2);
            let (out_lo, out_hi) = out.split_at_mut(kh);
            let (m, b) = (&*mbuf, bias);
            let lo = OutputBlock { m, ks: (0, kh), out: out_lo, ..outputs };
            let hi =
                OutputBlock { m, ks: (kh, kc), bias: b.map(|b| &b[kh..]), out: out_hi, ..outputs };
            rayon::join(|| simd::dispatch(S::LEVEL, lo), || simd::dispatch(S::LEVEL, hi));
        } else {
            Products { m: &mut *mbuf, ..products }.with_simd(s);
            OutputBlock { m: &*mbuf, out: &mut out, ..outputs }.with_simd(s);
        }
    }
}

/// [`input_transform_block`] of a run of tiles, for the SIMD dispatcher.
struct InputJob<'a> {
    variant: WinogradVariant,
    patches: &'a Patches<'a>,
    tiles: &'a [Tile],
    planes: Vec<&'a mut [f32]>,
}

impl WithSimd for InputJob<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let InputJob { variant, patches, tiles, mut planes } = self;
        match variant {
            WinogradVariant::F2x2_3x3 => {
                input_transform_block::<S, F2, 4, 2>(s, patches, tiles, &mut planes);
            }
            WinogradVariant::F4x4_3x3 => {
                input_transform_block::<S, F4, 6, 4>(s, patches, tiles, &mut planes);
            }
        }
    }
}

/// Transform-domain products `M[ξ] = U[ξ][ks] · V[ξ]` for `ξ = xi0..` (as many as `m` holds).
struct Products<'a> {
    /// The group's packed filter planes, `plen` floats each.
    u: &'a [f32],
    plen: usize,
    kpg: usize,
    cpg: usize,
    /// Output channels `ks.0..ks.1` (rows of the planes) of the products.
    ks: (usize, usize),
    /// Input-transform planes, `cpg · tb` floats each, in panel form.
    v: &'a [f32],
    /// Columns computed (whole panels).
    n: usize,
    tb: usize,
    xi0: usize,
    /// `M[ξ]` for the positions from `xi0`, `ks.len() · tb` floats each.
    m: &'a mut [f32],
}

impl WithSimd for Products<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Products { u, plen, kpg, cpg, ks, v, n, tb, xi0, m } = self;
        for (i, c_xi) in m.chunks_exact_mut((ks.1 - ks.0) * tb).enumerate() {
            let xi = xi0 + i;
            let a_xi = PackedARef::new(&u[xi * plen..][..plen], kpg, cpg);
            let b_xi = &v[xi * cpg * tb..][..cpg * tb];
            gemm_packed_ab(s, a_xi, ks.0..ks.1, b_xi, n, 0.0, c_xi, tb);
        }
    }
}

/// The output transform of one block of tiles for output channels `ks` of an item's `kc`.
struct OutputBlock<'a, 'o> {
    plan: &'a Plan,
    block: &'a [Tile],
    /// `M[ξ]`, `kc · tb` floats each.
    m: &'a [f32],
    kc: usize,
    /// Bias of the channels from `ks.0`.
    bias: Option<&'a [f32]>,
    /// Output channels `ks.0..ks.1` of the item's.
    ks: (usize, usize),
    y0: usize,
    /// The planes of the channels `ks` of each image (`[img][ks]`), from output row `y0`.
    out: &'a mut [&'o mut [f32]],
}

impl WithSimd for OutputBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.plan.variant {
            WinogradVariant::F2x2_3x3 => output_block::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => output_block::<S, F4, 6, 4>(s, self),
        }
    }
}

#[inline(always)]
fn output_block<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    o: OutputBlock<'_, '_>,
) {
    let OutputBlock { plan: p, block, m: mbuf, kc, bias, ks, y0, out } = o;
    let nk = ks.1 - ks.0;
    // Output values of 8 tiles, lane-major for the scatter; hoisted so it is zeroed once.
    let mut vals = [[0f32; LANES]; 16];
    for (kk, k) in (ks.0..ks.1).enumerate() {
        let bk = s.splat(bias.map_or(0.0, |b| b[kk]));
        for (lg, group) in block.chunks(LANES).enumerate() {
            let t0 = lg * LANES;
            let mut mv = [[s.zero(); A]; A];
            for (xi, mr) in mv.iter_mut().enumerate() {
                for (xj, m) in mr.iter_mut().enumerate() {
                    *m = s.load(&mbuf[((xi * A + xj) * kc + k) * p.tb + t0..]);
                }
            }
            let y = output_2d::<S, T, A, M>(s, &mv);
            for (i, row) in y.iter().enumerate() {
                for (j, &val) in row.iter().enumerate() {
                    vals[i * M + j] = s.to_array(s.add(val, bk));
                }
            }
            for (l, t) in group.iter().enumerate() {
                // In-range rows and columns of this tile's m×m block.
                let mi = M.min((p.oh - t.oy).div_ceil(p.dh));
                let mj = M.min((p.ow - t.ox).div_ceil(p.dw));
                let plane = &mut *out[t.img * nk + kk];
                for i in 0..mi {
                    let orow = &mut plane[(t.oy + i * p.dh - y0) * p.ow + t.ox..];
                    for j in 0..mj {
                        orow[j * p.dw] = vals[i * M + j][l];
                    }
                }
            }
        }
    }
}

/// Sizes for [`pad_planes`].
struct Pads {
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    /// Padded row length.
    wp: usize,
}

/// Copies each `h × w` plane of `src` into the matching padded plane of `dst` at offset
/// `(ph, pw)`, zeroing the rest of every padded plane.
fn pad_planes<'a>(
    p: &Pads,
    src: impl Iterator<Item = &'a [f32]>,
    dst: impl Iterator<Item = &'a mut [f32]>,
) {
    for (input, pl) in src.zip(dst) {
        pl[..p.ph * p.wp].fill(0.0);
        pl[(p.ph + p.h) * p.wp..].fill(0.0);
        for r in 0..p.h {
            let row = &mut pl[(r + p.ph) * p.wp..][..p.wp];
            row[..p.pw].fill(0.0);
            row[p.pw..p.pw + p.w].copy_from_slice(&input[r * p.w..][..p.w]);
            row[p.pw + p.w..].fill(0.0);
        }
    }
}

/// Zero-padded input planes `[img][c][hp][wp]` and how the tiles read them.
struct Patches<'a> {
    padded: &'a [f32],
    /// `hp · wp`.
    plane: usize,
    wp: usize,
    dh: usize,
    dw: usize,
    /// Channels per image in `padded`.
    cpg: usize,
}

/// The input transform `V = Bᵀ d B` of a run of tiles, 8 at a time, into `planes[ξ]`: each
/// plane in the packed-B layout of the GEMM (panels of [`NR`] tiles, each `cpg` steps of `NR`
/// floats), from the panel of the run's first tile (which starts a panel).
#[inline(always)]
fn input_transform_block<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    p: &Patches<'_>,
    block: &[Tile],
    planes: &mut [&mut [f32]],
) {
    let padded = p.padded;
    for (lg, group) in block.chunks(LANES).enumerate() {
        let t0 = lg * LANES;
        // Lanes past the block's end repeat its last tile; their results are never stored.
        let lanes: [Tile; LANES] = std::array::from_fn(|l| group[l.min(group.len() - 1)]);
        for c in 0..p.cpg {
            // Top-left corner of each lane's patch in `padded`.
            let base: [usize; LANES] = std::array::from_fn(|l| {
                let t = lanes[l];
                (t.img * p.cpg + c) * p.plane + t.py * p.wp + t.px
            });
            // One bounds check for the whole gather: the farthest element of any patch.
            let far = base.iter().copied().max().unwrap_or(0) + (A - 1) * (p.dh * p.wp + p.dw);
            assert!(far < padded.len());
            let mut d = [[s.zero(); A]; A];
            // Where a patch row fits in one vector (`(α−1)·dw < 8`) and 8 floats can be read
            // from every row start: load each lane's patch row as a vector and transpose, so
            // that vector `q` holds element `q` of every lane's row (8 loads and a transpose
            // instead of `α·8` scalar loads per row). The values are the same either way.
            let rows_fit = (A - 1) * p.dw < LANES && far - (A - 1) * p.dw + LANES <= padded.len();
            for (r, dr) in d.iter_mut().enumerate() {
                if rows_fit {
                    let rows: [S::V; LANES] = std::array::from_fn(|l| {
                        // SAFETY: `base[l] + r·dh·wp + 8 ≤ far − (α−1)·dw + 8 ≤ padded.len()`
                        // (checked in `rows_fit`).
                        unsafe { s.load_ptr(padded.as_ptr().add(base[l] + r * p.dh * p.wp)) }
                    });
                    let cols = s.transpose8(rows);
                    for (col, dv) in dr.iter_mut().enumerate() {
                        *dv = cols[col * p.dw];
                    }
                    continue;
                }
                for (col, dv) in dr.iter_mut().enumerate() {
                    let off = r * p.dh * p.wp + col * p.dw;
                    let mut gathered = [0f32; LANES];
                    for (g, &b) in gathered.iter_mut().zip(&base) {
                        // SAFETY: `b + off ≤ far < padded.len()` (asserted above).
                        *g = unsafe { *padded.get_unchecked(b + off) };
                    }
                    *dv = s.load(&gathered);
                }
            }
            let v = input_2d::<S, T, A, M>(s, &d);
            let at = (t0 / NR * p.cpg + c) * NR + t0 % NR;
            for (xi, row) in v.iter().enumerate() {
                for (xj, &val) in row.iter().enumerate() {
                    s.store(val, &mut planes[xi * A + xj][at..]);
                }
            }
        }
    }
}

/// The 1-D transforms of one variant, `α = A`, `m = M`. Static functions rather than closures:
/// a closure body would be compiled without the caller's `#[target_feature]`s.
trait Transforms<const A: usize, const M: usize> {
    /// `Bᵀ d`.
    fn bt<S: Simd>(s: S, d: [S::V; A]) -> [S::V; A];
    /// `Aᵀ m`.
    fn at<S: Simd>(s: S, m: [S::V; A]) -> [S::V; M];
    /// `G t`: the filter transform of one column (or row) of three taps.
    fn g<S: Simd>(s: S, t: [S::V; 3]) -> [S::V; A];
    /// `A y`: the transpose of the output transform, for the weight gradient.
    fn a<S: Simd>(s: S, y: [S::V; M]) -> [S::V; A];
}

/// F(2x2,3x3).
struct F2;
/// F(4x4,3x3).
struct F4;

impl Transforms<4, 2> for F2 {
    #[inline(always)]
    fn g<S: Simd>(s: S, t: [S::V; 3]) -> [S::V; 4] {
        // [t0, (t0 + t1 + t2)/2, (t0 − t1 + t2)/2, t2]
        let half = s.splat(0.5);
        let e = s.mul(half, s.add(t[0], t[2]));
        let o = s.mul(half, t[1]);
        [t[0], s.add(e, o), s.sub(e, o), t[2]]
    }
    #[inline(always)]
    fn bt<S: Simd>(s: S, d: [S::V; 4]) -> [S::V; 4] {
        bt4(s, d)
    }
    #[inline(always)]
    fn at<S: Simd>(s: S, m: [S::V; 4]) -> [S::V; 2] {
        at4(s, m)
    }
    #[inline(always)]
    fn a<S: Simd>(s: S, y: [S::V; 2]) -> [S::V; 4] {
        [y[0], s.add(y[0], y[1]), s.sub(y[0], y[1]), s.sub(s.zero(), y[1])]
    }
}

impl Transforms<6, 4> for F4 {
    #[inline(always)]
    fn g<S: Simd>(s: S, t: [S::V; 3]) -> [S::V; 6] {
        // [t0/4, −(t0 + t1 + t2)/6, −(t0 − t1 + t2)/6, t0/24 + t1/12 + t2/6,
        //  t0/24 − t1/12 + t2/6, t2]
        let e = s.add(t[0], t[2]);
        let m6 = s.splat(-1.0 / 6.0);
        let (a1, a2) = (s.mul(m6, s.add(e, t[1])), s.mul(m6, s.sub(e, t[1])));
        let e2 = s.fma(s.splat(1.0 / 24.0), t[0], s.mul(s.splat(1.0 / 6.0), t[2]));
        let o2 = s.mul(s.splat(1.0 / 12.0), t[1]);
        [s.mul(s.splat(0.25), t[0]), a1, a2, s.add(e2, o2), s.sub(e2, o2), t[2]]
    }
    #[inline(always)]
    fn bt<S: Simd>(s: S, d: [S::V; 6]) -> [S::V; 6] {
        bt6(s, d)
    }
    #[inline(always)]
    fn at<S: Simd>(s: S, m: [S::V; 6]) -> [S::V; 4] {
        at6(s, m)
    }
    #[inline(always)]
    fn a<S: Simd>(s: S, y: [S::V; 4]) -> [S::V; 6] {
        // [y0, e + o, e − o, e2 + o2, e2 − o2, y3] with e = y0 + y2, o = y1 + y3,
        // e2 = y0 + 4 y2, o2 = 2 y1 + 8 y3.
        let e = s.add(y[0], y[2]);
        let o = s.add(y[1], y[3]);
        let e2 = s.fma(s.splat(4.0), y[2], y[0]);
        let o2 = s.fma(s.splat(8.0), y[3], s.mul(s.splat(2.0), y[1]));
        [y[0], s.add(e, o), s.sub(e, o), s.add(e2, o2), s.sub(e2, o2), y[3]]
    }
}

/// `Bᵀ d B`: the 1-D transform on the columns, then on the rows.
#[inline(always)]
fn input_2d<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    d: &[[S::V; A]; A],
) -> [[S::V; A]; A] {
    let mut t = [[s.zero(); A]; A];
    for col in 0..A {
        let mut c = [s.zero(); A];
        for r in 0..A {
            c[r] = d[r][col];
        }
        let v = T::bt(s, c);
        for r in 0..A {
            t[r][col] = v[r];
        }
    }
    let mut o = [[s.zero(); A]; A];
    for r in 0..A {
        o[r] = T::bt(s, t[r]);
    }
    o
}

/// `Aᵀ m A`: the 1-D transform on the columns, then on the rows.
#[inline(always)]
fn output_2d<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    d: &[[S::V; A]; A],
) -> [[S::V; M]; M] {
    let mut t = [[s.zero(); A]; M];
    for col in 0..A {
        let mut c = [s.zero(); A];
        for r in 0..A {
            c[r] = d[r][col];
        }
        let v = T::at(s, c);
        for r in 0..M {
            t[r][col] = v[r];
        }
    }
    let mut o = [[s.zero(); M]; M];
    for r in 0..M {
        o[r] = T::at(s, t[r]);
    }
    o
}

/// `A y Aᵀ` for an `m×m` block `y`: the 1-D transform on the columns, then on the rows.
#[inline(always)]
fn grad_2d<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    y: &[[S::V; M]; M],
) -> [[S::V; A]; A] {
    let mut t = [[s.zero(); M]; A];
    for col in 0..M {
        let mut c = [s.zero(); M];
        for r in 0..M {
            c[r] = y[r][col];
        }
        let v = T::a(s, c);
        for r in 0..A {
            t[r][col] = v[r];
        }
    }
    let mut o = [[s.zero(); A]; A];
    for r in 0..A {
        o[r] = T::a(s, t[r]);
    }
    o
}

/// `Bᵀ d` for F(2x2,3x3).
#[inline(always)]
fn bt4<S: Simd>(s: S, d: [S::V; 4]) -> [S::V; 4] {
    [s.sub(d[0], d[2]), s.add(d[1], d[2]), s.sub(d[2], d[1]), s.sub(d[1], d[3])]
}

/// `Aᵀ m` for F(2x2,3x3).
#[inline(always)]
fn at4<S: Simd>(s: S, m: [S::V; 4]) -> [S::V; 2] {
    [s.add(s.add(m[0], m[1]), m[2]), s.sub(s.sub(m[1], m[2]), m[3])]
}

/// `Bᵀ d` for F(4x4,3x3), sharing the common sub-expressions.
#[inline(always)]
fn bt6<S: Simd>(s: S, d: [S::V; 6]) -> [S::V; 6] {
    let (four, five, two) = (s.splat(4.0), s.splat(5.0), s.splat(2.0));
    // r1, r2 = ±4(d1) − 4 d2 ± d3 + d4 ;  r3, r4 = ∓2 d1 − d2 ± 2 d3 + d4
    let a = s.sub(d[4], s.mul(four, d[2])); // d4 − 4 d2
    let b = s.sub(d[3], s.mul(four, d[1])); // d3 − 4 d1
    let c = s.sub(d[4], d[2]); // d4 − d2
    let e = s.mul(two, s.sub(d[3], d[1])); // 2 (d3 − d1)
    [
        s.sub(s.fma(four, d[0], d[4]), s.mul(five, d[2])),
        s.add(a, b),
        s.sub(a, b),
        s.add(c, e),
        s.sub(c, e),
        s.sub(s.fma(four, d[1], d[5]), s.mul(five, d[3])),
    ]
}

/// `Aᵀ m` for F(4x4,3x3).
#[inline(always)]
fn at6<S: Simd>(s: S, m: [S::V; 6]) -> [S::V; 4] {
    let p12 = s.add(m[1], m[2]);
    let m12 = s.sub(m[1], m[2]);
    let p34 = s.add(m[3], m[4]);
    let m34 = s.sub(m[3], m[4]);
    [
        s.add(s.add(m[0], p12), p34),
        s.fma(s.splat(2.0), m34, m12),
        s.fma(s.splat(4.0), p34, p12),
        s.add(s.fma(s.splat(8.0), m34, m12), m[5]),
    ]
}
