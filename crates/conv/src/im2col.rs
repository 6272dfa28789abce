//! Convolution as a matrix product: im2col + GEMM, and its backward (GEMM + col2im).
//!
//! For one image and one group, the *column matrix* `col` has one row per filter tap
//! `(c, i, j)` (`C' · R · S` rows, `C' = c_in / groups`) and one column per output pixel
//! (`OH · OW` columns): `col[(c,i,j), (y,x)] = in[c, y·sh − ph + i·dh, x·sw − pw + j·dw]` (zero
//! in the padding). The group's weights are a `K' × C'RS` row-major matrix already
//! (`K' = c_out / groups`), so the output block is one product:
//!
//! ```text
//! out_g [K', OH·OW] = W_g [K', C'RS] · col [C'RS, OH·OW]          (+ bias, per row)
//! d col [C'RS, OH·OW] = W_gᵀ · dY_g,    d in = col2im(d col)      (scatter-add of the rows)
//! d W_g [K', C'RS] = Σ_images dY_g · colᵀ
//! ```
//!
//! The products run on the crate's packed GEMM ([`crate::gemm`]): the forward packs each
//! group's weights once per call ([`PackedA`], shared by every image) and builds `col` straight
//! into the kernel's 16-pixel panels ([`sgemm_packed_ab`]), so nothing is packed per image; the
//! backward products go through [`sgemm`]. With SIMD off, [`sgemm`] is `matrixmultiply::sgemm`
//! and the forward runs the portable build of the packed kernel.
//!
//! A 1x1 kernel with stride 1 and no padding needs no column matrix: the input plane block
//! `[C', H·W]` *is* `col`, and `d in` is the product itself. When a group has at most
//! [`SMALL_DIM`] output channels (depthwise), the products skip
//! `sgemm` for scaled-row updates and dot products ([`gemm_rows`],
//! [`gemm_abt_dots`]); the choice depends on the shape only.
//!
//! # Memory and threads
//! The column matrix is built per image and group (`C'RS · OH·OW` floats) in a thread-local
//! scratch buffer that each thread allocates once and reuses across calls (up to 16 MiB is
//! kept between calls); nothing is sized by the batch except the weight-gradient partials
//! described below. Work is split over disjoint output slices with
//! `par_chunks_mut`: over `(image, group)` blocks when there are at least as many as threads,
//! otherwise over row blocks of one product (output channels forward, input channels for the
//! input gradient; forward blocks start on the packed weights' 6-row panels), which gives the
//! same bits because both GEMMs compute each row of `C` with the same sequence of operations
//! whatever the number of rows around it.
//!
//! The weight gradient is a sum over the batch. The batch is cut into at most
//! [`WEIGHT_GRAD_PARTIALS`] fixed chunks (depending only on `n`, never on the thread count);
//! each chunk's partial gradient is accumulated image by image in order, and the partials are
//! added in chunk order. Every gradient is therefore bit-identical for any number of threads.

use rayon::prelude::*;

use crate::error::Result;
use crate::gemm::{
    MR, MatRef, NR, PackedA, SMALL_DIM, gemm_abt_dots, gemm_rows, packed_b_len, sgemm,
    sgemm_packed_a, sgemm_packed_ab,
};
use crate::params::{BackwardInputs, ConvGeometry, GradBuffers, WEIGHT_GRAD_PARTIALS};
use crate::scratch::{self, Slot};
use crate::simd;

/// Below this many forward FLOPs a convolution runs on the calling thread: splitting it costs
/// more than it saves (a rayon task costs a few microseconds; 1 MFLOP takes ~15 µs here).
const PAR_MIN_FLOPS: u64 = 1 << 20;

/// Whether the column matrix equals the input (1x1 kernel, stride 1, no padding).
fn is_pointwise(g: &ConvGeometry) -> bool {
    let p = g.params;
    g.kh == 1 && g.kw == 1 && p.stride == (1, 1) && p.padding == (0, 0)
}

/// Output positions `o` in `lo..hi` (`hi ≤ out`) whose input coordinate `o·stride + off − pad`
/// lies in `0..size`.
fn valid_range(out: usize, size: usize, stride: usize, off: usize, pad: usize) -> (usize, usize) {
    let lo = if pad > off { (pad - off).div_ceil(stride) } else { 0 };
    let hi = if size + pad > off { (size + pad - off).div_ceil(stride) } else { 0 };
    let lo = lo.min(out);
    (lo, hi.min(out).max(lo))
}

/// Fills the `kh·kw` rows of the column matrix that come from one input channel `plane`
/// (`h·w`); `rows` holds `kh·kw·oh·ow` floats. Each output row is a zero prefix, a contiguous
/// (or strided) copy of one input row and a zero suffix, so the copy runs at memory speed.
fn im2col_plane(g: &ConvGeometry, plane: &[f32], rows: &mut [f32]) {
    let p = g.params;
    let (ow, ohw) = (g.ow, g.oh * g.ow);
    for (t, row) in rows.chunks_exact_mut(ohw).enumerate() {
        let (i, j) = (t / g.kw, t % g.kw);
        let (y0, y1) = valid_range(g.oh, g.h, p.stride.0, i * p.dilation.0, p.padding.0);
        let (x0, x1) = valid_range(ow, g.w, p.stride.1, j * p.dilation.1, p.padding.1);
        row[..y0 * ow].fill(0.0);
        row[y1 * ow..].fill(0.0);
        if x1 == x0 || y1 == y0 {
            row[y0 * ow..y1 * ow].fill(0.0);
            continue;
        }
        let sx = x0 * p.stride.1 + j * p.dilation.1 - p.padding.1;
        if p.stride == (1, 1) && ow == g.w {
            // Output and input rows have the same length, so output (y, x) reads input
            // element `y·w + x + shift` for one constant shift: copy the whole band at once,
            // then zero the few positions between rows whose tap falls into the padding
            // (they received the neighbouring row's pixels). One memcpy instead of `oh`.
            let (start, end) = (y0 * ow + x0, (y1 - 1) * ow + x1);
            let src = (y0 + i * p.dilation.0 - p.padding.0) * g.w + sx;
            row[start..end].copy_from_slice(&plane[src..src + (end - start)]);
            row[..start].fill(0.0);
            row[end..].fill(0.0);
            for y in y0..y1 - 1 {
                row[y * ow + x1..(y + 1) * ow + x0].fill(0.0);
            }
            continue;
        }
        for (y, dst) in (y0..y1).zip(row[y0 * ow..y1 * ow].chunks_exact_mut(ow)) {
            let iy = y * p.stride.0 + i * p.dilation.0 - p.padding.0;
            let src = &plane[iy * g.w + sx..(iy + 1) * g.w];
            dst[..x0].fill(0.0);
            dst[x1..].fill(0.0);
            let n = x1 - x0;
            if p.stride.1 == 1 {
                dst[x0..x1].copy_from_slice(&src[..n]);
            } else if p.stride.1 == 2 && n > 0 {
                // Pairs: the compiler turns this into vector loads and shuffles, where
                // `step_by` stays a scalar loop.
                let (dst, src) = (&mut dst[x0..x1], &src[..2 * n - 1]);
                let (pairs, last) = src.split_at(2 * (n - 1));
                for (d, pair) in dst.iter_mut().zip(pairs.chunks_exact(2)) {
                    *d = pair[0];
                }
                dst[n - 1] = last[0];
            } else {
                for (d, s) in dst[x0..x1].iter_mut().zip(src.iter().step_by(p.stride.1)) {
                    *d = *s;
                }
            }
        }
    }
}

/// Adds the `kh·kw` column-matrix rows of one input channel back onto its gradient `plane`
/// (the adjoint of [`im2col_plane`]), in a fixed order.
fn col2im_plane_add(g: &ConvGeometry, rows: &[f32], plane: &mut [f32]) {
    let p = g.params;
    let (ow, ohw) = (g.ow, g.oh * g.ow);
    for (t, row) in rows.chunks_exact(ohw).enumerate() {
        let (i, j) = (t / g.kw, t % g.kw);
        let (y0, y1) = valid_range(g.oh, g.h, p.stride.0, i * p.dilation.0, p.padding.0);
        let (x0, x1) = valid_range(ow, g.w, p.stride.1, j * p.dilation.1, p.padding.1);
        if x1 == x0 {
            continue;
        }
        let sx = x0 * p.stride.1 + j * p.dilation.1 - p.padding.1;
        for (y, src) in (y0..y1).zip(row[y0 * ow..y1 * ow].chunks_exact(ow)) {
            let iy = y * p.stride.0 + i * p.dilation.0 - p.padding.0;
            let dst = &mut plane[iy * g.w + sx..(iy + 1) * g.w];
            if p.stride.1 == 1 {
                for (d, s) in dst[..x1 - x0].iter_mut().zip(&src[x0..x1]) {
                    *d += *s;
                }
            } else {
                for (d, s) in dst.iter_mut().step_by(p.stride.1).zip(&src[x0..x1]) {
                    *d += *s;
                }
            }
        }
    }
}

/// Builds the column matrix of `planes` (`C'` channels of one image) into `col`, resizing it.
fn im2col(g: &ConvGeometry, planes: &[f32], col: &mut Vec<f32>, parallel: bool) {
    let (hw, taps) = (g.h * g.w, g.kh * g.kw * g.oh * g.ow);
    col.resize(g.c_in_per_group() * taps, 0.0);
    if parallel {
        col.par_chunks_mut(taps)
            .zip(planes.par_chunks(hw))
            .for_each(|(rows, plane)| im2col_plane(g, plane, rows));
    } else {
        for (rows, plane) in col.chunks_mut(taps).zip(planes.chunks(hw)) {
            im2col_plane(g, plane, rows);
        }
    }
}

/// Builds the column matrix of `planes` (`C'` channels of one image) straight into the packed-B
/// layout of [`sgemm_packed_ab`] (panels of [`NR`] output pixels, each `C'RS` steps of `NR`
/// floats) and returns it (the front of `buf`).
///
/// Row `(c, i, j)` of the matrix at output row `y` reads input row `y·sh + i·dh − ph` at
/// padded columns `x·sw + j·dw` for `x < ow`. The input row is copied once into a small
/// zero-padded buffer and split into its `sw` phases (phase `q` holds padded columns
/// `q + sw·k`); every tap `j` of the row is then the contiguous run of `ow` values that starts
/// at `k = j·dw / sw` of phase `j·dw mod sw`, copied straight into its panels. A strided layer
/// thus gathers each input row once instead of once per tap, and the large matrix is written
/// once and never re-read for packing.
fn im2col_packed<'a>(g: &ConvGeometry, planes: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    let p = g.params;
    let (hw, ohw, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let crs = g.c_in_per_group() * taps;
    let plen = packed_b_len(crs, ohw);
    let (sw, dw, pw) = (p.stride.1, p.dilation.1, p.padding.1);
    // Padded columns read by a row, and the length of each of its `sw` phases.
    let span = (g.ow - 1) * sw + (g.kw - 1) * dw + 1;
    let phase_len = span.div_ceil(sw);
    buf.resize(plen + span.next_multiple_of(sw) + sw * phase_len, 0.0);
    let (packed, rest) = buf.split_at_mut(plen);
    let (padded, phases) = rest.split_at_mut(span.next_multiple_of(sw));
    // The last panel's lanes past the last pixel must be zero.
    if !ohw.is_multiple_of(NR) {
        packed[plen - crs * NR..].fill(0.0);
    }
    // Copies `src` (pixels `p0..p0 + src.len()` of row `r`) into the panels.
    let put = |packed: &mut [f32], r: usize, p0: usize, src: &[f32]| {
        let mut pix = p0;
        let mut src = src;
        while !src.is_empty() {
            let lane = pix % NR;
            let n = (NR - lane).min(src.len());
            let dst = &mut packed[(pix / NR) * crs * NR + r * NR + lane..][..n];
            for (d, v) in dst.iter_mut().zip(&src[..n]) {
                *d = *v;
            }
            src = &src[n..];
            pix += n;
        }
    };
    let zeros = [0.0f32; 64];
    // Input columns `x0..x1` land at padded columns `x0 + pw..x1 + pw` (within `span`).
    let x0 = pw.min(span);
    let x1 = (g.w + pw).min(span);
    for (c, plane) in planes.chunks_exact(hw).enumerate() {
        for i in 0..g.kh {
            let r0 = c * taps + i * g.kw;
            for y in 0..g.oh {
                let p0 = y * g.ow;
                let iy = (y * p.stride.0 + i * p.dilation.0).checked_sub(p.padding.0);
                let Some(iy) = iy.filter(|&iy| iy < g.h) else {
                    // The whole row of taps falls into the padding.
                    for j in 0..g.kw {
                        for chunk in (0..g.ow).step_by(zeros.len()) {
                            let n = zeros.len().min(g.ow - chunk);
                            put(packed, r0 + j, p0 + chunk, &zeros[..n]);
                        }
                    }
                    continue;
                };
                let src = &plane[iy * g.w..(iy + 1) * g.w];
                let row: &[f32] = if sw == 2 {
                    // Input column `x` is padded column `x + pw`: even columns go to phase
                    // `pw mod 2` at `x/2 + pw/2`, odd ones to the other phase at
                    // `x/2 + (pw+1)/2`. Pairs are split straight from the input row (vector
                    // loads and shuffles), the padding written as zeros around them.
                    let n = g.w.min(span.saturating_sub(pw));
                    let (first, second) = phases.split_at_mut(phase_len);
                    let (ev, od) = if pw % 2 == 0 { (first, second) } else { (second, first) };
                    let (oe, oo) = (pw / 2, pw.div_ceil(2));
                    ev[..oe].fill(0.0);
                    od[..oo].fill(0.0);
                    for ((e, o), pair) in
                        ev[oe..].iter_mut().zip(od[oo..].iter_mut()).zip(src[..n].chunks_exact(2))
                    {
                        *e = pair[0];
                        *o = pair[1];
                    }
                    if n % 2 == 1 {
                        ev[oe + n / 2] = src[n - 1];
                    }
                    ev[oe + n.div_ceil(2)..].fill(0.0);
                    od[oo + n / 2..].fill(0.0);
                    phases
                } else {
                    padded[..x0].fill(0.0);
                    if x1 > x0 {
                        padded[x0..x1].copy_from_slice(&src[..x1 - x0]);
                    }
                    padded[x1.max(x0)..].fill(0.0);
                    if sw == 1 {
                        padded
                    } else {
                        for (k, v) in padded.iter().enumerate() {
                            phases[(k % sw) * phase_len + k / sw] = *v;
                        }
                        phases
                    }
                };
                for j in 0..g.kw {
                    let o = j * dw;
                    let start = (o % sw) * phase_len + o / sw;
                    put(packed, r0 + j, p0, &row[start..start + g.ow]);
                }
            }
        }
    }
    &buf[..plen]
}

/// [`im2col_packed`] for one large image on all threads: the row-major column matrix is built
/// in parallel (at the front of `buf`), then packed panel by panel in parallel behind it.
fn im2col_packed_par<'a>(g: &ConvGeometry, planes: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    let ohw = g.oh * g.ow;
    let crs = g.c_in_per_group() * g.kh * g.kw;
    let (clen, plen) = (crs * ohw, packed_b_len(crs, ohw));
    let mut col = std::mem::take(buf);
    im2col(g, planes, &mut col, true);
    col.resize(clen + plen, 0.0);
    let (rows, packed) = col.split_at_mut(clen);
    packed.par_chunks_mut(crs * NR).enumerate().for_each(|(jp, panel)| {
        let j0 = jp * NR;
        let n = NR.min(ohw - j0);
        for (dst, row) in panel.chunks_exact_mut(NR).zip(rows.chunks_exact(ohw)) {
            dst[..n].copy_from_slice(&row[j0..j0 + n]);
            dst[n..].fill(0.0);
        }
    });
    *buf = col;
    &buf[clen..clen + plen]
}

/// Sizes shared by the forward and backward passes.
#[derive(Clone, Copy)]
struct Dims {
    groups: usize,
    cpg: usize,
    kpg: usize,
    /// `C'·R·S`: rows of the column matrix.
    crs: usize,
    hw: usize,
    ohw: usize,
    pointwise: bool,
    /// Whether the problem is large enough for rayon.
    par: bool,
    threads: usize,
}

impl Dims {
    fn new(g: &ConvGeometry) -> Self {
        let threads = rayon::current_num_threads();
        Self {
            groups: g.params.groups,
            cpg: g.c_in_per_group(),
            kpg: g.c_out_per_group(),
            crs: g.c_in_per_group() * g.kh * g.kw,
            hw: g.h * g.w,
            ohw: g.oh * g.ow,
            pointwise: is_pointwise(g),
            par: threads > 1 && g.flops() >= PAR_MIN_FLOPS,
            threads,
        }
    }
    /// Input block of image `b`, group `gi`: `C'` planes.
    fn input_block<'a>(
        &self,
        g: &ConvGeometry,
        input: &'a [f32],
        b: usize,
        gi: usize,
    ) -> &'a [f32] {
        let start = (b * g.c_in + gi * self.cpg) * self.hw;
        &input[start..start + self.cpg * self.hw]
    }
    /// Output (or output-gradient) block of image `b`, group `gi`: `K' × OH·OW`.
    fn output_block<'a>(&self, g: &ConvGeometry, out: &'a [f32], b: usize, gi: usize) -> &'a [f32] {
        let start = (b * g.c_out + gi * self.kpg) * self.ohw;
        &out[start..start + self.kpg * self.ohw]
    }
    /// Weights of group `gi` as a `K' × C'RS` matrix.
    fn weight_block<'a>(&self, weight: &'a [f32], gi: usize) -> &'a [f32] {
        let len = self.kpg * self.crs;
        &weight[gi * len..(gi + 1) * len]
    }
    /// Rows per block when one product is split over the threads.
    fn rows_per_block(&self, rows: usize) -> usize {
        rows.div_ceil(self.threads).max(1)
    }
}

/// Forward convolution by im2col + GEMM, for every stride, padding, dilation and group count.
///
/// Same contract as [`conv2d_naive`](crate::conv2d_naive): NCHW `input`, weight
/// `[c_out, c_in/groups, kh, kw]`, optional `bias [c_out]`, `output [n, c_out, oh, ow]`
/// (overwritten); lengths are checked.
pub fn conv2d_im2col(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    g.check_buffers(
        "conv2d_im2col",
        input.len(),
        weight.len(),
        bias.map(<[f32]>::len),
        output.len(),
    )?;
    let d = Dims::new(g);
    let out_block = d.kpg * d.ohw;
    let tasks = g.n * d.groups;
    // Each group's weight matrix, packed once for every image (see `gemm::PackedA`).
    let mut packs = Vec::new();
    if d.kpg > SMALL_DIM {
        packs = take_packs();
        packs.resize_with(d.groups, PackedA::empty);
        for (gi, pack) in packs.iter_mut().enumerate() {
            pack.repack(MatRef::row_major(d.weight_block(weight, gi), d.kpg, d.crs));
        }
    }
    let packs_ref = &packs;

    // Output rows `k0..` of group `gi` start as the bias; returns the products' `beta`.
    let init = |gi: usize, k0: usize, out: &mut [f32]| match bias {
        Some(bias) => {
            for (k, row) in out.chunks_exact_mut(d.ohw).enumerate() {
                row.fill(bias[gi * d.kpg + k0 + k]);
            }
            1.0
        }
        None => 0.0,
    };
    // Output rows `k0..` of image `b`, group `gi`, from the group's column matrix `col`.
    let product = |gi: usize, k0: usize, col: &[f32], out: &mut [f32]| {
        let rows = out.len() / d.ohw;
        let beta = init(gi, k0, out);
        let b = MatRef::row_major(col, d.crs, d.ohw);
        if d.kpg <= SMALL_DIM {
            let wg = &d.weight_block(weight, gi)[k0 * d.crs..(k0 + rows) * d.crs];
            gemm_rows(MatRef::row_major(wg, rows, d.crs), col, d.ohw, beta, out);
        } else {
            sgemm_packed_a(1.0, &packs_ref[gi], k0..k0 + rows, b, beta, out, d.ohw);
        }
    };
    // The same product from a column matrix already in the packed-B layout.
    let product_packed = |gi: usize, k0: usize, colp: &[f32], out: &mut [f32]| {
        let rows = out.len() / d.ohw;
        let beta = init(gi, k0, out);
        sgemm_packed_ab(&packs_ref[gi], k0..k0 + rows, colp, d.ohw, beta, out, d.ohw);
    };
    // Whether the column matrix is built straight into the GEMM's panels.
    let packed_col = !d.pointwise && d.kpg > SMALL_DIM;
    let block = |t: usize, out: &mut [f32], col: &mut Vec<f32>| {
        let (b, gi) = (t / d.groups, t % d.groups);
        let x = d.input_block(g, input, b, gi);
        if d.pointwise {
            product(gi, 0, x, out);
        } else if packed_col {
            product_packed(gi, 0, im2col_packed(g, x, col), out);
        } else {
            im2col(g, x, col, false);
            product(gi, 0, col, out);
        }
    };

    if !d.par {
        scratch::with(Slot::Columns, |col| {
            for (t, out) in output.chunks_mut(out_block).enumerate() {
                block(t, out, col);
            }
        });
    } else if tasks >= d.threads {
        output
            .par_chunks_mut(out_block)
            .enumerate()
            .for_each(|(t, out)| scratch::with(Slot::Columns, |col| block(t, out, col)));
    } else {
        // Fewer blocks than threads (batch 1, one group): split each product by output rows,
        // in whole panels of the packed weights.
        let rows = d.rows_per_block(d.kpg).next_multiple_of(MR);
        scratch::with(Slot::Columns, |col| {
            for (t, out) in output.chunks_mut(out_block).enumerate() {
                let (b, gi) = (t / d.groups, t % d.groups);
                let x = d.input_block(g, input, b, gi);
                if packed_col {
                    let colp = im2col_packed_par(g, x, col);
                    out.par_chunks_mut(rows * d.ohw)
                        .enumerate()
                        .for_each(|(r, out)| product_packed(gi, r * rows, colp, out));
                    continue;
                }
                let col: &[f32] = if d.pointwise {
                    x
                } else {
                    im2col(g, x, col, true);
                    col
                };
                out.par_chunks_mut(rows * d.ohw)
                    .enumerate()
                    .for_each(|(r, out)| product(gi, r * rows, col, out));
            }
        });
    }
    put_packs(packs);
    Ok(())
}

/// Takes this thread's packed-weight buffers (empty when another call on this thread holds
/// them).
fn take_packs() -> Vec<PackedA> {
    scratch::take_list().into_iter().map(PackedA::from_buffer).collect()
}

/// Returns packed-weight buffers for the next call (see [`scratch::put_list`]).
fn put_packs(packs: Vec<PackedA>) {
    scratch::put_list(packs.into_iter().map(PackedA::into_buffer).collect());
}

/// Backward convolution by GEMM + col2im: writes (overwrites) each requested gradient.
///
/// Same contract as [`conv2d_backward_naive`](crate::conv2d_backward_naive). The weight
/// gradient is reduced over the batch in a fixed order (see the [module docs](self)), so all
/// three gradients are bit-identical for any number of threads.
pub fn conv2d_backward_im2col(
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    grads: GradBuffers<'_>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_im2col";
    g.check_backward(OP, &x, &grads)?;
    let BackwardInputs { input, weight, grad_output } = x;
    let GradBuffers { input: grad_input, weight: grad_weight, bias: grad_bias } = grads;
    let d = Dims::new(g);
    if let Some(gb) = grad_bias {
        bias_grad(g, &d, grad_output, gb);
    }
    if let Some(gx) = grad_input {
        input_grad(g, &d, weight, grad_output, gx);
    }
    if let Some(gw) = grad_weight {
        weight_grad(g, &d, input, grad_output, gw);
    }
    Ok(())
}

/// `grad_bias[k] = Σ_{b,y,x} dY[b,k,y,x]`, accumulated in f64 in a fixed order (image by
/// image, each plane by [`simd::sum_f64`]).
fn bias_grad(g: &ConvGeometry, d: &Dims, dy: &[f32], gb: &mut [f32]) {
    let sum = |k: usize, gb: &mut f32| {
        let mut acc = 0f64;
        for b in 0..g.n {
            let start = (b * g.c_out + k) * d.ohw;
            acc += simd::sum_f64(&dy[start..start + d.ohw]);
        }
        *gb = acc as f32;
    };
    if d.par {
        gb.par_iter_mut().enumerate().for_each(|(k, v)| sum(k, v));
    } else {
        gb.iter_mut().enumerate().for_each(|(k, v)| sum(k, v));
    }
}

/// Input gradient of the input channels `c0..` of image `b`, group `gi`, into `gx` (a whole
/// number of planes): `W_gᵀ[rows of those channels] · dY_g`, then col2im.
#[allow(clippy::too_many_arguments)]
fn input_grad_block(
    g: &ConvGeometry,
    d: &Dims,
    weight: &[f32],
    dy: &[f32],
    b: usize,
    gi: usize,
    c0: usize,
    gx: &mut [f32],
    col: &mut Vec<f32>,
) {
    let taps = g.kh * g.kw;
    let channels = gx.len() / d.hw;
    let wg = d.weight_block(weight, gi);
    // Rows (c0·RS ..) of W_gᵀ: column block of the row-major K' × C'RS matrix.
    let wt = MatRef {
        data: &wg[c0 * taps..],
        rows: channels * taps,
        cols: d.kpg,
        row_stride: 1,
        col_stride: d.crs,
    };
    let dy_block = d.output_block(g, dy, b, gi);
    // Few output channels per group (depthwise): K' scaled-row updates per row instead.
    let product = |c: &mut [f32]| {
        if d.kpg <= SMALL_DIM {
            gemm_rows(wt, dy_block, d.ohw, 0.0, c);
        } else {
            sgemm(1.0, wt, MatRef::row_major(dy_block, d.kpg, d.ohw), 0.0, c, d.ohw);
        }
    };
    if d.pointwise {
        product(gx);
        return;
    }
    let ct = taps * d.ohw;
    col.resize(channels * ct, 0.0);
    product(col);
    gx.fill(0.0);
    for (rows, plane) in col.chunks_exact(ct).zip(gx.chunks_exact_mut(d.hw)) {
        col2im_plane_add(g, rows, plane);
    }
}

fn input_grad(g: &ConvGeometry, d: &Dims, weight: &[f32], dy: &[f32], gx: &mut [f32]) {
    let in_block = d.cpg * d.hw;
    let tasks = g.n * d.groups;
    let block = |t: usize, gx: &mut [f32], col: &mut Vec<f32>| {
        input_grad_block(g, d, weight, dy, t / d.groups, t % d.groups, 0, gx, col);
    };
    if !d.par {
        scratch::with(Slot::Columns, |col| {
            for (t, gx) in gx.chunks_mut(in_block).enumerate() {
                block(t, gx, col);
            }
        });
    } else if tasks >= d.threads {
        gx.par_chunks_mut(in_block)
            .enumerate()
            .for_each(|(t, gx)| scratch::with(Slot::Columns, |col| block(t, gx, col)));
    } else {
        // Few blocks: split each block by input channels (col2im never crosses channels).
        let per = d.rows_per_block(d.cpg);
        for (t, gx) in gx.chunks_mut(in_block).enumerate() {
            gx.par_chunks_mut(per * d.hw).enumerate().for_each(|(r, gx)| {
                scratch::with(Slot::Columns, |col| {
                    let (b, gi) = (t / d.groups, t % d.groups);
                    input_grad_block(g, d, weight, dy, b, gi, r * per, gx, col);
                });
            });
        }
    }
}

/// `gw_block (rows of K') (+)= dY_g[rows] · colᵀ`; `beta` 0 overwrites, 1 accumulates.
fn weight_grad_product(d: &Dims, dyg: &[f32], col: &[f32], beta: f32, gw: &mut [f32]) {
    let rows = gw.len() / d.crs;
    if d.kpg <= SMALL_DIM {
        gemm_abt_dots(dyg, col, rows, d.crs, d.ohw, beta, gw);
        return;
    }
    sgemm(
        1.0,
        MatRef::row_major(dyg, rows, d.ohw),
        MatRef::row_major(col, d.crs, d.ohw).t(),
        beta,
        gw,
        d.crs,
    );
}

fn weight_grad(g: &ConvGeometry, d: &Dims, input: &[f32], dy: &[f32], gw: &mut [f32]) {
    let wlen = gw.len();
    let w_block = d.kpg * d.crs;
    let parts = g.n.min(WEIGHT_GRAD_PARTIALS);
    // Images of chunk `p`: a split of 0..n that depends only on n.
    let chunk = |p: usize| (p * g.n / parts)..((p + 1) * g.n / parts);
    // Partial `p`, group `gi`: Σ over the chunk's images, in order.
    let block = |t: usize, out: &mut [f32], col: &mut Vec<f32>| {
        let (p, gi) = (t / d.groups, t % d.groups);
        for (i, b) in chunk(p).enumerate() {
            let x = d.input_block(g, input, b, gi);
            let colm: &[f32] = if d.pointwise {
                x
            } else {
                im2col(g, x, col, false);
                col
            };
            let beta = if i == 0 { 0.0 } else { 1.0 };
            weight_grad_product(d, d.output_block(g, dy, b, gi), colm, beta, out);
        }
    };
    let tasks = parts * d.groups;
    let mut partials = vec![0f32; if parts > 1 { parts * wlen } else { 0 }];
    let target: &mut [f32] = if parts > 1 { &mut partials } else { &mut *gw };
    if !d.par {
        scratch::with(Slot::Columns, |col| {
            for (t, out) in target.chunks_mut(w_block).enumerate() {
                block(t, out, col);
            }
        });
    } else if tasks >= d.threads {
        target
            .par_chunks_mut(w_block)
            .enumerate()
            .for_each(|(t, out)| scratch::with(Slot::Columns, |col| block(t, out, col)));
    } else {
        // Batch 1 and one group, or few of each: split each product by output-channel rows;
        // every row is computed exactly as in the unsplit product.
        let rows = d.rows_per_block(d.kpg);
        scratch::with(Slot::Columns, |col| {
            for (t, out) in target.chunks_mut(w_block).enumerate() {
                let (p, gi) = (t / d.groups, t % d.groups);
                for (i, b) in chunk(p).enumerate() {
                    let x = d.input_block(g, input, b, gi);
                    let colm: &[f32] = if d.pointwise {
                        x
                    } else {
                        im2col(g, x, col, true);
                        col
                    };
                    let dyg = d.output_block(g, dy, b, gi);
                    let beta = if i == 0 { 0.0 } else { 1.0 };
                    out.par_chunks_mut(rows * d.crs).enumerate().for_each(|(r, out)| {
                        let dy_rows = &dyg[r * rows * d.ohw..];
                        weight_grad_product(d, dy_rows, colm, beta, out);
                    });
                }
            }
        });
    }
    if parts > 1 {
        // Fixed order: partial 0 + partial 1 + … (elementwise, so splitting the elements over
        // threads would not change a bit; the sum is too cheap to bother).
        let mut it = partials.chunks_exact(wlen);
        if let Some(first) = it.next() {
            gw.copy_from_slice(first);
        }
        for part in it {
            for (a, b) in gw.iter_mut().zip(part) {
                *a += *b;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Conv2dParams, Tolerance, conv2d_backward_naive, conv2d_naive};

    fn data(len: usize, seed: u32) -> Vec<f32> {
        // Small integers: every product and sum is exact in f32.
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 7) as f32 - 3.0)
            .collect()
    }

    fn check(input: [usize; 4], weight: [usize; 4], p: Conv2dParams) {
        let g = ConvGeometry::new(input, weight, p).unwrap();
        let x = data(g.input_len(), 1);
        let w = data(g.weight_len(), 2);
        let bias = data(g.c_out, 3);
        let dy = data(g.output_len(), 4);
        let mut a = vec![0.0; g.output_len()];
        let mut r = vec![0.0; g.output_len()];
        conv2d_im2col(&g, &x, &w, Some(&bias), &mut a).unwrap();
        conv2d_naive(&g, &x, &w, Some(&bias), &mut r).unwrap();
        assert_eq!(a, r, "forward {g:?}");
        let mut ga = (vec![0.0; g.input_len()], vec![0.0; g.weight_len()], vec![0.0; g.c_out]);
        let mut gr = ga.clone();
        conv2d_backward_im2col(
            &g,
            BackwardInputs { input: &x, weight: &w, grad_output: &dy },
            GradBuffers { input: Some(&mut ga.0), weight: Some(&mut ga.1), bias: Some(&mut ga.2) },
        )
        .unwrap();
        conv2d_backward_naive(
            &g,
            BackwardInputs { input: &x, weight: &w, grad_output: &dy },
            GradBuffers { input: Some(&mut gr.0), weight: Some(&mut gr.1), bias: Some(&mut gr.2) },
        )
        .unwrap();
        let t = Tolerance { atol: 0.0, rtol: 0.0 };
        t.check(&ga.0, &gr.0).unwrap();
        t.check(&ga.1, &gr.1).unwrap();
        t.check(&ga.2, &gr.2).unwrap();
    }

    #[test]
    fn exact_on_small_integers() {
        let p = Conv2dParams::default();
        check([2, 3, 7, 9], [4, 3, 3, 3], p);
        // Same-size outputs (stride 1, ow == w) take the one-copy band path.
        check([2, 3, 7, 9], [4, 3, 3, 3], p.with_padding(1));
        check([1, 2, 6, 5], [3, 2, 3, 5], Conv2dParams { padding: (2, 4), dilation: (2, 2), ..p });
        check([1, 1, 4, 4], [1, 1, 7, 7], p.with_padding(3));
        check([2, 3, 7, 9], [4, 3, 3, 2], p.with_padding(2).with_stride(2));
        check([1, 4, 17, 5], [6, 2, 2, 3], p.with_groups(2).with_dilation(2).with_padding(1));
        check([3, 5, 6, 6], [7, 5, 1, 1], p);
        check([3, 4, 6, 6], [4, 1, 3, 3], p.with_groups(4).with_padding(3));
        check(
            [1, 2, 9, 11],
            [2, 2, 2, 3],
            Conv2dParams { stride: (3, 2), padding: (1, 3), dilation: (2, 3), groups: 1 },
        );
    }

    #[test]
    fn packed_columns_exact_for_every_stride_padding_and_width() {
        // More than `SMALL_DIM` output channels: the column matrix is built straight into the
        // GEMM's panels, each input row split into its stride phases. Odd and even widths,
        // padding of either parity, dilated taps, a tap row wholly in the padding, and output
        // rows that straddle panels.
        let p = Conv2dParams::default();
        for (w, pad, stride, dil) in [
            (9, 0, 2, 1),
            (10, 1, 2, 1),
            (11, 2, 2, 1),
            (12, 3, 2, 2),
            (7, 1, 3, 1),
            (13, 2, 3, 2),
            (8, 4, 2, 1),
            (6, 1, 1, 2),
        ] {
            let params = Conv2dParams {
                stride: (stride, stride),
                padding: (pad, pad),
                dilation: (dil, dil),
                groups: 1,
            };
            check([2, 3, 7, w], [6, 3, 3, 3], params);
        }
        check([1, 2, 5, 37], [8, 2, 1, 3], p.with_stride(2));
    }

    #[test]
    fn valid_ranges() {
        // out 5, size 5, stride 1, tap offset 0, pad 2: x in 2..5 read 0..3.
        assert_eq!(valid_range(5, 5, 1, 0, 2), (2, 5));
        assert_eq!(valid_range(5, 5, 1, 4, 2), (0, 3));
        // Stride 2: positions 0,2,4,6 minus pad 1 → -1,1,3,5 with size 5: x in 1..3.
        assert_eq!(valid_range(4, 5, 2, 0, 1), (1, 3));
        // A tap entirely in the padding.
        assert_eq!(valid_range(2, 1, 1, 0, 3), (2, 2));
    }
}
