//! The Winograd input gradient (a forward with flipped filters) and weight gradient.

use rayon::prelude::*;

use super::forward::{Tile, tile_grid};
use super::transforms::{F2, F4, Transforms, grad_2d, input_2d};
use super::{G2, G4, PARALLEL_MIN_FLOPS, WinogradVariant, unsupported, winograd_call};
use crate::error::Result;
use crate::gemm::{MatRef, sgemm};
use crate::layout::ChannelLast;
use crate::params::{ConvGeometry, check_len};
use crate::scratch::{self, Slot};
use crate::simd::{self, LANES, Simd, WithSimd};

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
pub(super) const WGRAD_BLOCK_FLOATS: usize = 1 << 20;

/// The weight gradient of a 3x3, stride-1 convolution, computed by Winograd.
///
/// With `Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` per tile, the gradient of the transformed filter is
/// `dU = Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)` over every image and tile, and `dg = Gᵀ dU G`. Summed
/// over channels, each transform position `ξ` is one product,
/// `dU[ξ] [K', C'] += dŶ[ξ] [K', tiles] · V[ξ] [C', tiles]ᵀ`, accumulated over blocks of tiles
/// taken in a fixed order (image by image), so the result does not depend on the number of
/// threads (the `α²` products of a block run in parallel, each one on its own `dU[ξ]`).
/// The input tiles, edge tiles, dilation (subsampled grids) and groups are handled as in
/// [`conv2d_winograd`](super::conv2d_winograd); output-gradient values outside the output read as zero.
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
    scratch::with(Slot::Tiles, |scratch| {
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
pub(super) fn grad_block_products(
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

/// The channel-last operands of the weight gradient of one group and how tiles read them.
pub(super) struct GradSource<'a> {
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
pub(super) fn grad_block<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
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
pub(super) fn filter_grad_transform(
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
pub(super) struct FilterGrad<'a> {
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
pub(super) fn filter_grad<S: Simd, const A: usize>(s: S, f: FilterGrad<'_>, gm: &[[f64; 3]; A]) {
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
