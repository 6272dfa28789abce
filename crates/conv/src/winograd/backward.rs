//! The Winograd input gradient (a forward with flipped filters) and weight gradient.

use rayon::prelude::*;

use super::forward::{Tile, tile_grid};
use super::transforms::{F2, F4, S2, Transforms, grad_2d, input_2d};
use super::{
    G2, G4, GS2, PARALLEL_MIN_FLOPS, WinogradVariant, plane_stride, unsupported, winograd_call,
};
use crate::error::Result;
use crate::gemm::{MatRef, sgemm};
use crate::layout::ChannelLast;
use crate::params::{ConvGeometry, check_len, fill_and_sum_partials};
use crate::scratch::{self, Slot};
use crate::simd::{self, LANES, Lanes, Simd, WithSimd};

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
    if variant.stride() > 1 || unsupported(g, variant).is_some() || ph > 2 * dh || pw > 2 * dw {
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

/// How large the weight gradient's tile blocks are: at most `floats` transformed floats, but
/// at least `min_tiles` tiles (the depth of the block's products).
#[derive(Clone, Copy)]
struct Blocks {
    floats: usize,
    min_tiles: usize,
}

/// Blocks when one block's products are split across threads: 4 MiB.
const SPLIT_BLOCKS: Blocks = Blocks { floats: 1 << 20, min_tiles: 8 };

/// Blocks when each thread runs whole ranges of images: a task transforms a block and
/// multiplies it at once, so the block and its images' copies should stay in a core's L2
/// (1 MiB of transforms), yet give products up to 64 deep. Batch 64, 2 threads, Xeon,
/// milliseconds, blocks of 512 KiB / 1 MiB / 2 MiB: 32→32 channels 28x28 3.5–3.7 / 3.7–3.8 /
/// 6.6; 16→16 28x28 1.4–1.6 / 1.5–1.9 / 2.5–3.3; 64→64 14x14 3.4–3.9 / 3.2–3.5 / 3.9–4.0.
/// With 128→128 channels (batch 8) 1 MiB holds only 28 tiles: 4.0–4.2 ms with one block of
/// an image's 49 tiles, 4.6–4.7 with two of 25, 5.5–5.6 with blocks of 14.
const TASK_BLOCKS: Blocks = Blocks { floats: 1 << 18, min_tiles: 64 };

/// Most image ranges the weight gradient is split into, each with its own `dU` partial sum.
const WGRAD_MAX_RANGES: usize = 8;

/// Floats all the `dU` partial sums of the image ranges may take (16 MiB).
const WGRAD_PARTIALS_FLOATS: usize = 1 << 22;

/// The weight gradient of a 3x3 convolution, computed by Winograd (stride 1, or stride 2
/// with [`WinogradVariant::F2x2_3x3S2`]).
///
/// With `Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` per tile, the gradient of the transformed filter is
/// `dU = Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)` over every image and tile, and `dg = Gᵀ dU G`. Summed
/// over channels, each transform position `ξ` is one product,
/// `dU[ξ] [K', C'] += dŶ[ξ] [K', tiles] · V[ξ] [C', tiles]ᵀ`, accumulated over blocks of tiles
/// taken in a fixed order (image by image).
///
/// The work is split in one of two ways, both chosen by the shape alone, so the result does
/// not depend on the number of threads:
/// - by images: up to 8 ranges of images (as many as the batch has and the partial sums'
///   16 MiB allow), each accumulating its own `dU` (channel-last copies, transforms and
///   products of one range on one thread, in cache), the partials then summed in a fixed
///   pairwise order;
/// - with fewer than two ranges (one image, or very wide layers): block by block, each
///   block's transforms in parallel parts and its `α²` products in parallel, each on its own
///   `dU[ξ]`.
///
/// The input tiles, edge tiles, dilation (subsampled grids) and groups are handled as in
/// [`conv2d_winograd`](super::conv2d_winograd); output-gradient values outside the output read as zero.
///
/// `variant` need not be the one the forward pass ran. Returns `Ok(false)` without writing
/// when `variant` cannot run `g` (a kernel other than 3x3, or another stride).
/// `grad_weight` (`[c_out, c_in/groups, 3, 3]`) is overwritten.
///
/// At stride 2 it is correct (`stride2_weight_gradient` in `tests/winograd_backward.rs`) but
/// not used by [`conv2d_backward`](crate::conv2d_backward): on the Zen 4 it lost to im2col's
/// weight gradient on every shape `select` gives `WinogradS2` (8x64x56x56 → 128, 2 threads:
/// 6.98–8.39 against 6.35–7.18 ms; 8x128x28x28 → 256 7.67–10.40 against 7.08–9.49).
pub fn conv2d_weight_grad_winograd(
    g: &ConvGeometry,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    variant: WinogradVariant,
) -> Result<bool> {
    const OP_W: &str = "conv2d_weight_grad_winograd";
    if unsupported(g, variant).is_some() {
        return Ok(false);
    }
    check_len(OP_W, "input", &g.input_dims(), input.len())?;
    check_len(OP_W, "grad_output", &g.output_dims(), grad_output.len())?;
    check_len(OP_W, "grad_weight", &g.weight_dims(), grad_weight.len())?;
    let plan = GradPlan::new(g, variant);
    let (cpg, kpg) = (plan.cpg, plan.kpg);
    let du_len = plan.a2 * plan.ds;
    let ranges = (WGRAD_PARTIALS_FLOATS / du_len).min(WGRAD_MAX_RANGES).min(g.n);
    let parallel = g.flops() >= PARALLEL_MIN_FLOPS && rayon::current_num_threads() > 1;
    let ops = GradOperands { input, grad_output };
    if ranges >= 2 {
        // Ranges of `per` images, none empty; each partial is overwritten by its range's
        // first block.
        let per = g.n.div_ceil(ranges);
        let ranges = g.n.div_ceil(per);
        let mut partials = scratch::take(Slot::Filters);
        if partials.len() < ranges * du_len {
            partials.resize(ranges * du_len, 0.0);
        }
        let partials_len = ranges * du_len;
        for grp in 0..g.params.groups {
            let fill = |r: usize, du: &mut [f32]| {
                let images = r * per..((r + 1) * per).min(g.n);
                plan.accumulate(ops, grp, images, du, false, TASK_BLOCKS, 1);
            };
            // dU = Σ partials, in `fill_and_sum_partials`' fixed order, into the first.
            let (du, rest) = partials[..partials_len].split_at_mut(du_len);
            fill_and_sum_partials(du, rest, (0..ranges).collect(), parallel, &fill);
            let gw = &mut grad_weight[grp * kpg * cpg * 9..][..kpg * cpg * 9];
            filter_grad_transform(du, gw, (kpg, cpg, plan.ds), variant);
        }
        scratch::put(Slot::Filters, partials);
        return Ok(true);
    }
    let mut du = scratch::take(Slot::Filters);
    du.resize(du_len, 0.0);
    for grp in 0..g.params.groups {
        // `dU` is overwritten (beta 0) by the first block before it is read.
        plan.accumulate(ops, grp, 0..g.n, &mut du[..du_len], parallel, SPLIT_BLOCKS, GRAD_PARTS);
        let gw = &mut grad_weight[grp * kpg * cpg * 9..][..kpg * cpg * 9];
        filter_grad_transform(&du[..du_len], gw, (kpg, cpg, plan.ds), variant);
    }
    scratch::put(Slot::Filters, du);
    Ok(true)
}

/// The operands of a weight gradient, `[n, c_in, h, w]` and `[n, c_out, oh, ow]`.
#[derive(Clone, Copy)]
struct GradOperands<'a> {
    input: &'a [f32],
    grad_output: &'a [f32],
}

/// The shape-derived constants of a weight gradient: tiles of one image, padded extents of
/// the channel-last copies, channels per group and their vector-padded counts.
struct GradPlan<'g> {
    g: &'g ConvGeometry,
    variant: WinogradVariant,
    image_tiles: Vec<Tile>,
    hp: usize,
    wp: usize,
    ohp: usize,
    owp: usize,
    cpg: usize,
    kpg: usize,
    cv: usize,
    kv: usize,
    a2: usize,
    /// Floats from one `dU[ξ]` (`kpg × cpg`) to the next ([`plane_stride`]: the inverse
    /// transform reads the same element of every plane in turn).
    ds: usize,
    /// Dilation `(dh, dw)`: the step between a tile's elements.
    dh: usize,
    dw: usize,
}

impl<'g> GradPlan<'g> {
    fn new(g: &'g ConvGeometry, variant: WinogradVariant) -> Self {
        let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
        let m = variant.m();
        let (dh, dw) = g.params.dilation;
        let (image_tiles, hp, wp) = tile_grid(g, variant);
        // The output-gradient extent the tiles' m×m blocks cover (zeros past the output).
        let (ohp, owp) = image_tiles.iter().fold((g.oh, g.ow), |(eh, ew), t| {
            (eh.max(t.oy + dh * (m - 1) + 1), ew.max(t.ox + dw * (m - 1) + 1))
        });
        GradPlan {
            g,
            variant,
            image_tiles,
            hp,
            wp,
            ohp,
            owp,
            cpg,
            kpg,
            // Channels padded to whole vectors in the channel-last copies and transform
            // buffers.
            cv: cpg.next_multiple_of(LANES),
            kv: kpg.next_multiple_of(LANES),
            a2: variant.alpha().pow(2),
            ds: plane_stride(kpg * cpg),
            dh,
            dw,
        }
    }

    /// `du` = `dU` of group `grp` summed over `images` (overwritten), in `blocks`, each cut
    /// into `parts` (transforms and depth blocks
    /// of the products; `parallel`: the parts' transforms and the products run on the pool).
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &self,
        ops: GradOperands<'_>,
        grp: usize,
        images: std::ops::Range<usize>,
        du: &mut [f32],
        parallel: bool,
        blocks: Blocks,
        parts: usize,
    ) {
        let GradPlan { g, hp, wp, ohp, owp, cpg, kpg, cv, kv, a2, .. } = *self;
        // Images are taken `nb` at a time (as many as one block of tiles holds, at least
        // one): their channel-last copies are made just before their tiles are transformed,
        // so both stay in cache.
        let per_image = self.image_tiles.len();
        let tb_max = (blocks.floats / (a2 * (cv + kv))).clamp(blocks.min_tiles, 512);
        let nb = (tb_max / per_image).clamp(1, images.len().max(1));
        let tiles: Vec<Tile> = (0..nb)
            .flat_map(|img| self.image_tiles.iter().map(move |t| Tile { img, ..*t }))
            .collect();
        let nblocks = tiles.len().div_ceil(tb_max);
        let tb = tiles.len().div_ceil(nblocks);
        let (x_len, y_len) = (nb * hp * wp * cv, nb * ohp * owp * kv);
        let (v_len, w_len) = (tb * a2 * cv, tb * a2 * kv);
        let (ph, pw) = g.params.padding;
        scratch::with(Slot::Tiles, |scratch| {
            // Every float a product reads is written first: the channel-last copies with
            // their zero borders (padding, and the output gradient past the output) by
            // `ChannelLast::copy`, the transform buffers tile by tile.
            // Each buffer starts on a cache line, so that 16-lane loads and stores of
            // whole channel vectors never straddle two lines.
            let line = |n: usize| n.next_multiple_of(scratch::LINE_FLOATS);
            let total = line(x_len) + line(y_len) + line(v_len) + w_len;
            let scratch = scratch::aligned(scratch, total);
            let (xcl, rest) = scratch.split_at_mut(line(x_len));
            let (ycl, rest) = rest.split_at_mut(line(y_len));
            let (vbuf, rest) = rest.split_at_mut(line(v_len));
            let wbuf = &mut rest[..w_len];
            let x_at = ChannelLast { h: g.h, w: g.w, y0: ph, x0: pw, hp, wp, channels: cpg, cv };
            let y_at = ChannelLast {
                h: g.oh,
                w: g.ow,
                y0: 0,
                x0: 0,
                hp: ohp,
                wp: owp,
                channels: kpg,
                cv: kv,
            };
            let mut first = true;
            for b0 in images.clone().step_by(nb) {
                let imgs = nb.min(images.end - b0);
                // The channel-last copies of the block's images, one task per image and
                // operand (each writes its own image's buffer).
                let copy_x = |(b, dst): (usize, &mut [f32])| {
                    let start = ((b0 + b) * g.c_in + grp * cpg) * g.h * g.w;
                    x_at.copy(&ops.input[start..][..cpg * g.h * g.w], dst);
                };
                let copy_y = |(b, dst): (usize, &mut [f32])| {
                    let start = ((b0 + b) * g.c_out + grp * kpg) * g.oh * g.ow;
                    y_at.copy(&ops.grad_output[start..][..kpg * g.oh * g.ow], dst);
                };
                let xs = &mut xcl[..imgs * hp * wp * cv];
                let ys = &mut ycl[..imgs * ohp * owp * kv];
                if parallel && imgs > 1 {
                    rayon::join(
                        || xs.par_chunks_exact_mut(hp * wp * cv).enumerate().for_each(copy_x),
                        || ys.par_chunks_exact_mut(ohp * owp * kv).enumerate().for_each(copy_y),
                    );
                } else {
                    xs.chunks_exact_mut(hp * wp * cv).enumerate().for_each(copy_x);
                    ys.chunks_exact_mut(ohp * owp * kv).enumerate().for_each(copy_y);
                }
                let src = GradSource { plan: self, x: &*xcl, y: &*ycl };
                for block in tiles[..imgs * per_image].chunks(tb) {
                    let beta = if first { 0.0 } else { 1.0 };
                    first = false;
                    let bufs = (&mut *vbuf, &mut *wbuf);
                    grad_block_products(&src, block, bufs, beta, du, parallel, parts);
                }
            }
        });
    }
}

/// Parts a block of tiles is cut into when one block's work is split across threads: each
/// part's transforms are one task, and its tiles one depth block of every product. A constant
/// (not the number of threads), so that the sums are taken in the same order on any pool.
const GRAD_PARTS: usize = 4;

/// One block of tiles of the weight gradient: both transforms of every tile, in up to
/// `parts` parts (in parallel when `parallel`), then for every transform position `ξ`
/// `dU[ξ] (+)= Σ_parts dŶ[ξ] · V[ξ]ᵀ` (`beta` 0 overwrites `du` at the first part, 1
/// accumulates), the positions split across threads.
pub(super) fn grad_block_products(
    src: &GradSource<'_>,
    block: &[Tile],
    (vbuf, wbuf): (&mut [f32], &mut [f32]),
    beta: f32,
    du: &mut [f32],
    parallel: bool,
    parts: usize,
) {
    let GradPlan { cpg, kpg, cv, kv, ds, .. } = *src.plan;
    let a = src.plan.variant.alpha();
    let a2 = a * a;
    let nt = block.len();
    // Parts of at least 16 tiles (one B panel's depth is no constraint; a short part only
    // costs a pass over the small `dU[ξ]`).
    let per = nt.div_ceil(parts).max(16);
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
    // dU[ξ] (K' × C') (+)= dŶ[ξ] (K' × tiles) · V[ξ]ᵀ (tiles × C'), part by part; each part's
    // buffers are position-major, `[ξ][t][channel]`, so both operands of a product are read
    // sequentially.
    let product = |(xi, c): (usize, &mut [f32])| {
        for (p, t0) in (0..nt).step_by(per).enumerate() {
            let len = per.min(nt - t0);
            let dyt = MatRef {
                data: &wb[t0 * a2 * kv + xi * len * kv..],
                rows: kpg,
                cols: len,
                row_stride: 1,
                col_stride: kv,
            };
            let vt = MatRef {
                data: &vb[t0 * a2 * cv + xi * len * cv..],
                rows: len,
                cols: cpg,
                row_stride: cv,
                col_stride: 1,
            };
            sgemm(1.0, dyt, vt, if p == 0 { beta } else { 1.0 }, &mut c[..kpg * cpg], cpg);
        }
    };
    if parallel {
        du.par_chunks_mut(ds).enumerate().for_each(product);
    } else {
        du.chunks_mut(ds).enumerate().for_each(product);
    }
}

/// The channel-last operands of the weight gradient of one group; `plan` says how tiles
/// read them.
pub(super) struct GradSource<'a> {
    plan: &'a GradPlan<'a>,
    /// Padded input, `[img][hp][wp][cv]`.
    x: &'a [f32],
    /// Output gradient, `[img][ohp][owp][kv]`.
    y: &'a [f32],
}

/// Transforms of a run of tiles of the weight gradient: `V = Bᵀ d B` into `v[ξ][t][c]` and
/// `A dY Aᵀ` into `w[ξ][t][k]` (`t` counting the run's tiles).
pub(super) struct GradBlock<'a> {
    src: &'a GradSource<'a>,
    tiles: &'a [Tile],
    v: &'a mut [f32],
    w: &'a mut [f32],
}

impl WithSimd for GradBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.src.plan.variant {
            WinogradVariant::F2x2_3x3 => grad_block::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => grad_block::<S, F4, 6, 4>(s, self),
            WinogradVariant::F2x2_3x3S2 => grad_block::<S, S2, 5, 2>(s, self),
        }
    }
}

/// Both transforms of the weight gradient, vectorized over channels (16 at a time where the
/// level has 16-lane vectors, then 8): every tile element is one contiguous load from the
/// channel-last operands, and every transformed value one contiguous store.
#[inline(always)]
pub(super) fn grad_block<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    b: GradBlock<'_>,
) {
    let GradBlock { src, tiles, v, w } = b;
    let p = src.plan;
    let nt = tiles.len();
    let wide = s.wide();
    let wn = <S::Wide as Lanes>::N;
    // Channels `..cw` (`..kw`) in wide vectors, the rest in 8-lane ones.
    let (cw, kw) = (p.cpg / wn * wn, p.kpg / wn * wn);
    for (ti, t) in tiles.iter().enumerate() {
        let xo = ((t.img * p.hp + t.py) * p.wp + t.px) * p.cv;
        for c0 in (0..cw).step_by(wn) {
            input_tile::<S::Wide, T, A, M>(wide, src, xo + c0, v, (ti, nt, c0));
        }
        for c0 in (cw..p.cpg).step_by(LANES) {
            input_tile::<S, T, A, M>(s, src, xo + c0, v, (ti, nt, c0));
        }
        let yo = ((t.img * p.ohp + t.oy) * p.owp + t.ox) * p.kv;
        for k0 in (0..kw).step_by(wn) {
            grad_tile::<S::Wide, T, A, M>(wide, src, yo + k0, w, (ti, nt, k0));
        }
        for k0 in (kw..p.kpg).step_by(LANES) {
            grad_tile::<S, T, A, M>(s, src, yo + k0, w, (ti, nt, k0));
        }
    }
}

/// `Bᵀ d B` of `L::N` channels of one tile whose patch starts at `xo` in the channel-last
/// input copy, into `v[ξ][ti][c0..]` (`at` = `(ti, nt, c0)`).
#[inline(always)]
fn input_tile<L: Lanes, T: Transforms<A, M>, const A: usize, const M: usize>(
    l: L,
    src: &GradSource<'_>,
    xo: usize,
    v: &mut [f32],
    (ti, nt, c0): (usize, usize, usize),
) {
    let p = src.plan;
    let mut d = [[l.zero(); A]; A];
    for (r, dr) in d.iter_mut().enumerate() {
        for (col, dv) in dr.iter_mut().enumerate() {
            *dv = l.load(&src.x[xo + (r * p.dh * p.wp + col * p.dw) * p.cv..]);
        }
    }
    let tv = input_2d::<L, T, A, M>(l, &d);
    for (xi, row) in tv.iter().enumerate() {
        for (xj, &val) in row.iter().enumerate() {
            l.store(val, &mut v[((xi * A + xj) * nt + ti) * p.cv + c0..]);
        }
    }
}

/// `A y Aᵀ` of `L::N` output-gradient channels of one tile whose block starts at `yo` in the
/// channel-last copy, into `w[ξ][ti][k0..]` (`at` = `(ti, nt, k0)`).
#[inline(always)]
fn grad_tile<L: Lanes, T: Transforms<A, M>, const A: usize, const M: usize>(
    l: L,
    src: &GradSource<'_>,
    yo: usize,
    w: &mut [f32],
    (ti, nt, k0): (usize, usize, usize),
) {
    let p = src.plan;
    let mut y = [[l.zero(); M]; M];
    for (i, yr) in y.iter_mut().enumerate() {
        for (j, yv) in yr.iter_mut().enumerate() {
            *yv = l.load(&src.y[yo + (i * p.dh * p.owp + j * p.dw) * p.kv..]);
        }
    }
    let tw = grad_2d::<L, T, A, M>(l, &y);
    for (xi, row) in tw.iter().enumerate() {
        for (xj, &val) in row.iter().enumerate() {
            l.store(val, &mut w[((xi * A + xj) * nt + ti) * p.kv + k0..]);
        }
    }
}

/// `dg = Gᵀ dU G` for every filter: `dU` is `[ξ][k][c]` (planes `ds` floats apart, the
/// last of `dims = (kpg, cpg, ds)`), `gw` is `[k][c][3][3]`. Separable
/// (`dU G` on the rows, then `Gᵀ ·` on the columns), eight filters `c..c+8` per vector, the
/// constant entries of `G` unrolled. Output channels split across threads for large layers;
/// each filter is computed the same way either way.
pub(super) fn filter_grad_transform(
    du: &[f32],
    gw: &mut [f32],
    (kpg, cpg, ds): (usize, usize, usize),
    variant: WinogradVariant,
) {
    let per_k = cpg * 9;
    // Output channels per task: about 64k floats of `dU` read each.
    let kc = (65_536 / (variant.alpha().pow(2) * cpg)).clamp(1, kpg);
    let run = |(t, gw): (usize, &mut [f32])| {
        simd::dispatch_active(FilterGrad { du, gw, k0: t * kc, cpg, ds, variant });
    };
    if kpg * per_k >= 1 << 18 && rayon::current_num_threads() > 1 {
        gw.par_chunks_mut(kc * per_k).enumerate().for_each(run);
    } else {
        gw.chunks_mut(kc * per_k).enumerate().for_each(run);
    }
}

/// [`filter_grad_transform`] of output channels `k0..k0 + gw.len() / (cpg·9)`.
pub(super) struct FilterGrad<'a> {
    du: &'a [f32],
    gw: &'a mut [f32],
    k0: usize,
    cpg: usize,
    /// Floats from one `dU[ξ]` to the next.
    ds: usize,
    variant: WinogradVariant,
}

impl WithSimd for FilterGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.variant {
            WinogradVariant::F2x2_3x3 => filter_grad::<S, 4>(s, self, &G2),
            WinogradVariant::F4x4_3x3 => filter_grad::<S, 6>(s, self, &G4),
            WinogradVariant::F2x2_3x3S2 => filter_grad::<S, 5>(s, self, &GS2),
        }
    }
}

#[inline(always)]
pub(super) fn filter_grad<S: Simd, const A: usize>(s: S, f: FilterGrad<'_>, gm: &[[f64; 3]; A]) {
    let FilterGrad { du, gw, k0, cpg, ds, .. } = f;
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
                    let at = (xi * A + xj) * ds + k * cpg + c0;
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
            // out[r][s] = Σ_ξi G[ξi][r] · tmp[ξi][s], tap `3r + s` of every lane's filter.
            let mut out = [s.zero(); 9];
            for (r, orow) in out.chunks_exact_mut(3).enumerate() {
                for (sc, o) in orow.iter_mut().enumerate() {
                    let mut acc = s.zero();
                    for (xi, grow) in gm.iter().enumerate() {
                        if grow[r] != 0.0 {
                            acc = s.fma(gs[xi][r], tmp[xi][sc], acc);
                        }
                    }
                    *o = acc;
                }
            }
            // Each lane's nine taps are one filter's: taps 0–7 transposed in registers into
            // one vector per filter (stored whole), tap 8 one float each.
            let head =
                s.transpose8([out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]]);
            let tap8 = s.to_array(out[8]);
            for (l, filt) in gw_k[c0 * 9..][..n * 9].chunks_exact_mut(9).enumerate() {
                s.store(head[l], &mut filt[..8]);
                filt[8] = tap8[l];
            }
        }
    }
}
