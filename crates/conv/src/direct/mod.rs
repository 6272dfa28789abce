//! Direct convolution with explicit SIMD: the loops of the definition, vectorized over the
//! output width (or the output channels) and blocked in registers.
//!
//! When the GEMM depth `C/g·R·S` is small (LeNet's first layer: 25; depthwise: 9), im2col
//! copies every input pixel `R·S` times and the GEMM spends its time packing; this kernel
//! reads each input row straight from a zero-padded, stride-phase-split copy of the work
//! item's planes, so eight consecutive outputs read eight consecutive floats for every tap,
//! stride and dilation. Every stride, padding, dilation and group count is supported; bias
//! initializes the accumulators. Work items are `(image, chunk of output channels)` pairs
//! whose split depends only on the shape, so results are bit-identical for any thread count.
//! The blocking is written up in `docs/convolution.md`, section 5.
//!
//! ## Layout
//! | file | what |
//! |---|---|
//! | `mod.rs` | entry points, the per-call `Plan`, the work item (`Chunk`) |
//! | `tiles.rs` | the register tiles: width × channels, width × rows, channels × columns |
//! | `depthwise.rs` | the depthwise 3x3 path (forward, and the input and weight gradients) |
//! | `wide.rs` | the AVX-512 channel-path and width-path tiles (16 lanes) |
//! | `backward/` | the direct input, weight and bias gradients |

use rayon::prelude::*;

use crate::error::Result;
use crate::params::ConvGeometry;
use crate::scratch::{self, Slot};
use crate::simd::{self, LANES, Simd, SimdLevel, WithSimd};
use depthwise::Dw3Plan;
use tiles::{Reads, TileAt, copy_row, kpath_dispatch, rows_dispatch, tile_dispatch};

/// `match (a, b)` over the listed constant pairs, each arm calling the register tile
/// monomorphized for that pair, and `fallback` for any other pair: `kernel::<S>(args…)` calls
/// `kernel::<S, A, B>(args…)`; `kernel(args…)` and `recv.kernel(args…)`, for tiles whose only
/// generics are the pair, call `kernel::<A, B>(args…)`. Every tile family of the direct
/// kernels (forward, AVX-512, depthwise, backward) dispatches through it.
macro_rules! tile_table {
    (($a:expr, $b:expr), $kernel:ident::<$s:ty; $k:ident> $args:tt, [$(($x:literal, $y:literal)),* $(,)?], $fallback:expr) => {
        match ($a, $b) {
            $(($x, $y) => $kernel::<$s, $x, $y, $k> $args,)*
            _ => $fallback,
        }
    };
    (($a:expr, $b:expr), $kernel:ident::<$s:ty> $args:tt, [$(($x:literal, $y:literal)),* $(,)?], $fallback:expr) => {
        match ($a, $b) {
            $(($x, $y) => $kernel::<$s, $x, $y> $args,)*
            _ => $fallback,
        }
    };
    (($a:expr, $b:expr), $kernel:ident $args:tt, [$(($x:literal, $y:literal)),* $(,)?], $fallback:expr) => {
        match ($a, $b) {
            $(($x, $y) => $kernel::<$x, $y> $args,)*
            _ => $fallback,
        }
    };
    (($a:expr, $b:expr), $recv:ident.$kernel:ident $args:tt, [$(($x:literal, $y:literal)),* $(,)?], $fallback:expr) => {
        match ($a, $b) {
            $(($x, $y) => $recv.$kernel::<$x, $y> $args,)*
            _ => $fallback,
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod wide;

pub(crate) mod backward;
mod depthwise;
mod tiles;

pub(crate) use depthwise::{depthwise3_input_grad, depthwise3_weight_grad};

const OP: &str = "conv2d_direct";

/// Below this many FLOPs the work runs on the calling thread: rayon's fork/join costs more.
pub(crate) const PARALLEL_MIN_FLOPS: u64 = 4_000_000;

/// Whether [`conv2d_direct`] can run `g`: always (every stride, padding, dilation and group
/// count). The function exists so an algorithm dispatcher can ask every kernel the same way.
pub fn direct_supports(_g: &ConvGeometry) -> bool {
    true
}

/// Direct convolution with the [`simd::active`] instruction set. `output` is overwritten.
///
/// Slices are NCHW input `[n, c_in, h, w]`, weight `[c_out, c_in/groups, kh, kw]`, optional
/// bias `[c_out]`, output `[n, c_out, oh, ow]`; their lengths are checked.
pub fn conv2d_direct(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    conv2d_direct_with(simd::active(), g, input, weight, bias, output)
}

/// [`conv2d_direct`] with an explicit instruction set, so tests and benchmarks can run the
/// AVX2 and portable kernels side by side. Returns [`ConvError::Unsupported`] when this CPU
/// cannot run `level`.
///
/// [`ConvError::Unsupported`]: crate::ConvError::Unsupported
pub fn conv2d_direct_with(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    conv2d_direct_act(level, g, input, weight, bias, output, false)
}

/// [`conv2d_direct_with`], followed by a ReLU (`v < 0 → 0`, NaN and `−0.0` kept, as
/// `Tensor::relu`) when `relu`: each work item applies it to its outputs as soon as they are
/// written, while they are still in cache.
pub(crate) fn conv2d_direct_act(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    relu: bool,
) -> Result<()> {
    g.check_forward(OP, input, weight, bias, output)?;
    level.require(OP, "direct")?;
    if let Some(dw) = Dw3Plan::new(g) {
        dw.run(level, input, weight, bias, output);
        if relu {
            crate::algo::relu_in_place(output);
        }
        return Ok(());
    }
    let plan = Plan::new(g);
    let chunk_len = plan.kc * g.oh * g.ow;
    let chunks_per_image = g.c_out / plan.kc;
    // Tap-major weights, once per call for every channel chunk:
    // packed[chunk][(c·kh·kw + tap)·ks + k], zero for `kc ≤ k < ks`.
    let w_len = plan.cpg * g.kh * g.kw;
    // On a 64-byte boundary: the kernels load `ks` channels of a tap as one vector.
    let mut packed_buf = Vec::new();
    let packed = scratch::aligned(&mut packed_buf, chunks_per_image * w_len * plan.ks);
    packed.fill(0.0);
    for (chunk, dst) in packed.chunks_exact_mut(w_len * plan.ks).enumerate() {
        for k in 0..plan.kc {
            let src = &weight[(chunk * plan.kc + k) * w_len..][..w_len];
            for (ct, &v) in src.iter().enumerate() {
                dst[ct * plan.ks + k] = v;
            }
        }
    }
    let run = |scratch: &mut Vec<f32>, (idx, out): (usize, &mut [f32])| {
        let (b, chunk) = (idx / chunks_per_image, idx % chunks_per_image);
        let k0 = chunk * plan.kc;
        let grp = k0 / plan.kpg;
        let img_len = plan.cpg * g.h * g.w;
        let in_start = (b * g.c_in + grp * plan.cpg) * g.h * g.w;
        let kernel = Chunk {
            plan: &plan,
            input: &input[in_start..in_start + img_len],
            wp: &packed[chunk * w_len * plan.ks..][..w_len * plan.ks],
            bias: bias.map(|b| &b[k0..k0 + plan.kc]),
            out,
            scratch,
            relu,
        };
        // `level` was checked above, so dispatch cannot decline.
        let _ = simd::dispatch(level, kernel);
    };
    if g.flops() < PARALLEL_MIN_FLOPS || output.len() == chunk_len {
        let chunks = output.chunks_mut(chunk_len).enumerate();
        scratch::with(Slot::Tiles, |s| chunks.for_each(|item| run(s, item)));
    } else {
        output
            .par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|item| scratch::with(Slot::Tiles, |s| run(s, item)));
    }
    Ok(())
}

/// Sizes derived once per call; the geometry's own (`h`, `ow`, …) through `Deref`.
struct Plan<'g> {
    g: &'g ConvGeometry,
    cpg: usize,
    kpg: usize,
    /// Output channels per work item; divides `kpg`.
    kc: usize,
    /// Whether to vectorize over output channels instead of output columns.
    kpath: bool,
    /// Row stride of the repacked weights: `kc` rounded up to 8 on the channel path, else `kc`.
    ks: usize,
    /// Whether the tiles read the input planes in place (no padded copy; see [`Plan::new`]).
    in_place: bool,
    /// Padded rows per plane.
    hp: usize,
    /// Length of one stride phase of a padded row.
    lph: usize,
    /// `sw · lph`: one padded row.
    row_len: usize,
    /// Offset inside a padded row of tap `j` for output column 0.
    tap_off: Vec<usize>,
    /// Largest entry of `tap_off`.
    max_off: usize,
    /// Vectors per output row.
    nv: usize,
}

impl std::ops::Deref for Plan<'_> {
    type Target = ConvGeometry;

    fn deref(&self) -> &ConvGeometry {
        self.g
    }
}

impl<'g> Plan<'g> {
    fn new(g: &'g ConvGeometry) -> Plan<'g> {
        let (sw, ph, pw, dw) = (g.sw(), g.ph(), g.pw(), g.dw());
        let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
        // Split a group's output channels until there are enough work items for the threads
        // of a typical machine; depends on the shape only, never on the thread count.
        let mut kc = kpg;
        while g.n * (g.c_out / kc) < 8 && kc % 2 == 0 && kc >= 8 {
            kc /= 2;
        }
        let nv = g.ow.div_ceil(LANES);
        // A whole number of vectors, so that a stride-1 row is zeroed by vector stores.
        let lph = (g.w + 2 * pw)
            .div_ceil(sw)
            .max(nv * LANES + (g.kw - 1) * dw / sw)
            .next_multiple_of(LANES);
        let tap_off: Vec<usize> = (0..g.kw).map(|j| (j * dw % sw) * lph + j * dw / sw).collect();
        let max_off = tap_off.iter().copied().max().unwrap_or(0);
        // Lane utilization of the two vectorizations: output columns fill `ow / (8·nv)` of the
        // lanes, output channels `kc / (8·⌈kc/8⌉)`. LeNet conv2 (ow = 10, 16 channels) wastes
        // 37% of the lanes along the width and none along the channels.
        let ks_pad = kc.next_multiple_of(LANES);
        let kpath = kc >= LANES && kc * nv * LANES > g.ow * ks_pad;
        let ks = if kpath { ks_pad } else { kc };
        // The channel path reads single floats, never past a row's last tap: without padding
        // or a column stride it reads the input rows where they are.
        let in_place = kpath && ph == 0 && pw == 0 && sw == 1;
        let lph = if in_place { g.w } else { lph };
        Plan {
            g,
            cpg,
            kpg,
            kc,
            kpath,
            ks,
            in_place,
            hp: g.h + 2 * ph,
            lph,
            row_len: sw * lph,
            tap_off,
            max_off,
            nv,
        }
    }

    /// The kernel size when the kernel is a square 3x3 or 5x5 whose taps are consecutive
    /// columns (no column stride or dilation), so that tiles can unroll its tap loops at
    /// compile time; 0 otherwise.
    fn unrolled_taps(&self) -> usize {
        let unit = self.tap_off.iter().enumerate().all(|(j, &off)| off == j);
        if unit && self.kh == self.kw && matches!(self.kw, 3 | 5) { self.kw } else { 0 }
    }

    /// Checks the input a tile reads against the planes, once per tile instead of once per
    /// load: its end is one past the farthest float of output row `y_last`'s footprint (last
    /// channel, last kernel row, farthest tap) up to column `x_end`.
    ///
    /// # Panics
    /// When that footprint reaches past `planes_len` or past the padded row (a kernel bug).
    #[inline]
    fn check_reads(&self, planes_len: usize, y_last: usize, x_end: usize) {
        let last_in = ((self.cpg - 1) * self.hp + y_last * self.sh() + (self.kh - 1) * self.dh())
            * self.row_len
            + self.max_off
            + x_end;
        assert!(last_in <= planes_len && self.max_off + x_end <= self.row_len);
    }

    /// Largest channel block for a register tile of `xb` vectors (at most 12 accumulators).
    fn kb_max(xb: usize) -> usize {
        match xb {
            1 | 2 => 6,
            3 => 4,
            _ => 3,
        }
    }
}

/// One work item: an image's output channels `k0..k0+kc` of one group.
struct Chunk<'a> {
    plan: &'a Plan<'a>,
    /// The group's input channels of the image, `[cpg, h, w]`.
    input: &'a [f32],
    /// The chunk's filters, tap-major: `[cpg·kh·kw][ks]`.
    wp: &'a [f32],
    bias: Option<&'a [f32]>,
    /// `[kc, oh, ow]`.
    out: &'a mut [f32],
    scratch: &'a mut Vec<f32>,
    /// Whether a ReLU follows (applied to `out` once it is written).
    relu: bool,
}

impl WithSimd for Chunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Chunk { plan: p, input, wp, bias, out, scratch, relu } = self;
        chunk_outputs(s, p, input, wp, bias, out, scratch);
        if relu {
            relu_in_cache(s, out);
        }
    }
}

/// `v < 0 → 0` on every float of `out` (NaN and `−0.0` kept): `max(0, v)`, whose second
/// operand is the result when the lanes compare equal or unordered.
#[inline(always)]
fn relu_in_cache<S: Simd>(s: S, out: &mut [f32]) {
    let whole = out.len() - out.len() % LANES;
    for j in (0..whole).step_by(LANES) {
        let v = s.max(s.zero(), s.load(&out[j..]));
        s.store(v, &mut out[j..]);
    }
    for v in &mut out[whole..] {
        *v = if *v < 0.0 { 0.0 } else { *v };
    }
}

/// Writes every output of one work item (`out`, `[kc, oh, ow]`).
#[inline(always)]
fn chunk_outputs<S: Simd>(
    s: S,
    p: &Plan<'_>,
    input: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    if p.in_place {
        kpath(s, p, Reads { planes: input, wp, bias }, out);
        return;
    }
    let plane_len = p.hp * p.row_len;
    let planes_len = p.cpg * plane_len;
    if p.sw() == 1 {
        // Reused without clearing: every float outside the copied rows is zeroed below.
        if scratch.len() < planes_len {
            scratch.resize(planes_len, 0.0);
        }
    } else {
        scratch.clear();
        scratch.resize(planes_len, 0.0);
    }
    let planes = &mut scratch[..planes_len];

    // Padded, phase-split copy of the input planes.
    for c in 0..p.cpg {
        let pl = &mut planes[c * plane_len..][..plane_len];
        if p.sw() == 1 {
            pl[..p.ph() * p.row_len].fill(0.0);
            pl[(p.ph() + p.h) * p.row_len..].fill(0.0);
        }
        for r in 0..p.h {
            let src = &input[(c * p.h + r) * p.w..][..p.w];
            let row = &mut pl[(r + p.ph()) * p.row_len..][..p.row_len];
            if p.sw() == 1 {
                copy_row(s, row, src, p.pw());
            } else {
                for (x, &v) in src.iter().enumerate() {
                    let xp = x + p.pw();
                    row[(xp % p.sw()) * p.lph + xp / p.sw()] = v;
                }
            }
        }
    }
    let r = Reads { planes: &*planes, wp, bias };

    let xb_main = p.nv.min(4);
    if p.kpath {
        kpath(s, p, r, out);
        return;
    }
    if p.kc == 1 {
        // One output channel (depthwise other than stride-1 3x3): block over output rows
        // instead of channels.
        let yb_main = (12 / xb_main).min(3);
        let mut y = 0;
        while y < p.oh {
            let yb = yb_main.min(p.oh - y);
            let mut xv0 = 0;
            while xv0 < p.nv {
                let xb = xb_main.min(p.nv - xv0);
                rows_dispatch(s, p, r, out, TileAt { k0: 0, y, xv0 }, yb, xb);
                xv0 += xb;
            }
            y += yb;
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(w) = s.avx512() {
        // SAFETY: the token `w` proves the CPU has the features `width` is compiled for.
        unsafe { wide::width(w, p, r, out) };
        return;
    }
    let kb_main = Plan::kb_max(xb_main);
    for y in 0..p.oh {
        let mut k0 = 0;
        while k0 < p.kc {
            let kb = kb_main.min(p.kc - k0);
            let mut xv0 = 0;
            while xv0 < p.nv {
                let xb = xb_main.min(p.nv - xv0);
                let t = TileAt { k0, y, xv0 };
                tile_dispatch(s, p, r, out, t, kb, xb);
                xv0 += xb;
            }
            k0 += kb;
        }
    }
}

/// Every output of a work item on the channel path (vectorized over output channels: 16
/// channels × 6 columns or 8 × 8, 16 × up to 12 at the AVX-512 level).
#[inline(always)]
fn kpath<S: Simd>(s: S, p: &Plan<'_>, r: Reads<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(w) = s.avx512() {
        // SAFETY: the token `w` proves the CPU has the features `kpath` is compiled for.
        unsafe { wide::kpath(w, p, r, out) };
        return;
    }
    let unrolled = p.unrolled_taps();
    for y in 0..p.oh {
        let mut k0 = 0;
        while k0 < p.kc {
            let kv = if p.kc - k0 > LANES { 2 } else { 1 };
            let xp_main = if kv == 2 { 6 } else { 8 };
            let mut x0 = 0;
            while x0 < p.ow {
                let xp = xp_main.min(p.ow - x0);
                let t = TileAt { k0, y, xv0: x0 };
                // 5x5 stays a loop here: unrolled, its 8-lane tiles measured 5–9% slower
                // (lenet_c2 at the AVX2 level), against 16% faster for 3x3.
                match unrolled {
                    3 => kpath_dispatch::<S, 3>(s, p, r, out, t, kv, xp),
                    _ => kpath_dispatch::<S, 0>(s, p, r, out, t, kv, xp),
                }
                x0 += xp;
            }
            k0 += kv * LANES;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Conv2dParams, conv2d_naive};

    #[test]
    fn small_strided_dilated_grouped_matches_naive() {
        let p = Conv2dParams { stride: (2, 3), padding: (1, 2), dilation: (2, 1), groups: 2 };
        let g = ConvGeometry::new([2, 4, 11, 13], [6, 2, 3, 2], p).unwrap();
        let input: Vec<f32> = (0..g.input_len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let weight: Vec<f32> = (0..g.weight_len()).map(|i| (i % 5) as f32 - 2.0).collect();
        let bias: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut want = vec![0.0; g.output_len()];
        conv2d_naive(&g, &input, &weight, Some(&bias), &mut want).unwrap();
        for level in SimdLevel::ALL {
            if !level.available() {
                eprintln!("skipping {level}: not available on this CPU");
                continue;
            }
            let mut got = vec![f32::NAN; g.output_len()];
            conv2d_direct_with(level, &g, &input, &weight, Some(&bias), &mut got).unwrap();
            // Small integers: every sum is exact.
            assert_eq!(got, want, "{level}");
        }
    }

    /// The depthwise 3x3 path: every padding up to 3, widths around whole vectors, 1–4 rows,
    /// with and without bias, on both instruction sets; small integers, so sums are exact.
    /// The SIMD levels add each output's products in the same order, fused, so they agree bit
    /// for bit on real-valued data: the channel path (16 and 24 channels: a masked tail of
    /// 8 at AVX-512; rows of 10 and 13 columns) and the width path (rows of 28 and 67
    /// columns: 2 and 5 vectors of 16, the last masked).
    #[test]
    fn simd_levels_are_bit_identical() {
        let simd: Vec<SimdLevel> = SimdLevel::available_levels()
            .into_iter()
            .filter(|&l| l != SimdLevel::Fallback)
            .collect();
        if simd.len() < 2 {
            eprintln!("skipping: fewer than two SIMD levels on this CPU");
            return;
        }
        let p = Conv2dParams::default();
        for (input, weight) in [
            ([8, 6, 14, 14], [16, 6, 5, 5]),
            ([8, 5, 15, 15], [24, 5, 3, 3]),
            ([8, 3, 17, 15], [40, 3, 3, 3]),
            ([2, 1, 32, 32], [6, 1, 5, 5]),
            ([2, 4, 40, 69], [10, 4, 3, 3]),
        ] {
            let g = ConvGeometry::new(input, weight, p).unwrap();
            let x: Vec<f32> =
                (0..g.input_len()).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
            let w: Vec<f32> =
                (0..g.weight_len()).map(|i| ((i * 53) % 97) as f32 / 97.0 - 0.5).collect();
            let b: Vec<f32> = (0..g.c_out).map(|i| i as f32 / 7.0).collect();
            let mut want = vec![0.0; g.output_len()];
            conv2d_naive(&g, &x, &w, Some(&b), &mut want).unwrap();
            let runs: Vec<Vec<f32>> = simd
                .iter()
                .map(|&level| {
                    let mut got = vec![f32::NAN; g.output_len()];
                    conv2d_direct_with(level, &g, &x, &w, Some(&b), &mut got).unwrap();
                    got
                })
                .collect();
            for (a, e) in runs[0].iter().zip(&want) {
                assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{input:?}: {a} vs {e}");
            }
            for (level, got) in simd.iter().zip(&runs).skip(1) {
                assert_eq!(got, &runs[0], "{level} differs from {} on {input:?}", simd[0]);
            }
        }
    }

    #[test]
    fn depthwise3_matches_naive() {
        for (pad, h, w) in (0..=3).flat_map(|p| {
            [(1, 9), (2, 8), (4, 10), (7, 15), (5, 16), (3, 17), (6, 28), (9, 37)]
                .map(|(h, w)| (p, h, w))
        }) {
            let p = Conv2dParams {
                padding: (pad, pad.saturating_sub(1)),
                groups: 3,
                ..Default::default()
            };
            let Ok(g) = ConvGeometry::new([2, 3, h, w], [3, 1, 3, 3], p) else { continue };
            let input: Vec<f32> = (0..g.input_len()).map(|i| (i * 7 % 11) as f32 - 5.0).collect();
            let weight: Vec<f32> = (0..g.weight_len()).map(|i| (i % 5) as f32 - 2.0).collect();
            let bias: Vec<f32> = (0..3).map(|i| i as f32 - 1.0).collect();
            for b in [None, Some(&bias[..])] {
                let mut want = vec![0.0; g.output_len()];
                conv2d_naive(&g, &input, &weight, b, &mut want).unwrap();
                for level in SimdLevel::ALL {
                    if !level.available() {
                        continue;
                    }
                    let mut got = vec![f32::NAN; g.output_len()];
                    conv2d_direct_with(level, &g, &input, &weight, b, &mut got).unwrap();
                    assert_eq!(got, want, "{level} {g:?}");
                }
            }
        }
    }
}
