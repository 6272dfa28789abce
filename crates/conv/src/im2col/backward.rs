//! The im2col backward: the bias gradient by sums, the input gradient by `W_gᵀ · dY_g` and
//! col2im, the weight gradient by `dY_g · colᵀ` summed over fixed chunks of the batch.

use rayon::prelude::*;

use super::{
    Dims, Edges, GatherPlan, col2im, edge_columns, im2col, im2col_gather_rows, put_packs,
    shared_edge, take_packs,
};
use crate::error::Result;
use crate::gemm::{MatRef, PackedA, SMALL_DIM, gemm_abt_dots, gemm_rows, sgemm, sgemm_packed_a};
use crate::params::{
    BackwardInputs, ConvGeometry, GradBuffers, WEIGHT_GRAD_PARTIALS, fill_and_sum_partials,
    sum_partials,
};
use crate::scratch::{self, Slot};
use crate::simd::{self, SimdLevel};

/// Backward convolution by GEMM + col2im: writes (overwrites) each requested gradient.
///
/// Same contract as [`conv2d_backward_naive`](crate::conv2d_backward_naive). The weight
/// gradient is reduced over the batch in a fixed order (see the [module docs](super)), so all
/// three gradients are bit-identical for any number of threads.
pub fn conv2d_backward_im2col(
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    grads: GradBuffers<'_>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_im2col";
    g.check_backward(OP, &x, &grads)?;
    let BackwardInputs { input, weight, grad_output } = x;
    let GradBuffers { input: mut grad_input, weight: mut grad_weight, bias: grad_bias } = grads;
    let d = Dims::new(g);
    if let (Some(gx), Some(gw)) = (grad_input.as_deref_mut(), grad_weight.as_deref_mut())
        && fuses(g, &d)
    {
        pointwise_fused(g, &d, x, gx, gw, grad_bias);
        return Ok(());
    }
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
        *gb = bias_in_image_order(g.n, |b| {
            let start = (b * g.c_out + k) * d.ohw;
            simd::sum_f64(&dy[start..start + d.ohw])
        });
    };
    if d.par {
        gb.par_iter_mut().enumerate().for_each(|(k, v)| sum(k, v));
    } else {
        gb.iter_mut().enumerate().for_each(|(k, v)| sum(k, v));
    }
}

/// One bias gradient from its per-image sums (`part(b)`: the f64 sum of image `b`'s plane of
/// `dY`), added in image order: the order the fused pointwise backward shares, hence its bits.
fn bias_in_image_order(n: usize, part: impl Fn(usize) -> f64) -> f32 {
    (0..n).fold(0f64, |acc, b| acc + part(b)) as f32
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
    packs: &[PackedA],
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
        } else if let Some(pack) = packs.get(gi).filter(|_| c0 == 0) {
            let dy = MatRef::row_major(dy_block, d.kpg, d.ohw);
            sgemm_packed_a(1.0, pack, 0..channels * taps, dy, 0.0, None, c, d.ohw);
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
    col2im(g, &col[..channels * ct], gx);
}

fn input_grad(g: &ConvGeometry, d: &Dims, weight: &[f32], dy: &[f32], gx: &mut [f32]) {
    let in_block = d.cpg * d.hw;
    let tasks = g.n * d.groups;
    // Each group's `W_gᵀ`, packed once for every image (see `gemm::PackedA`); the blocks of a
    // product split by channels (few images) pack their rows per call instead. Both run the
    // same packed kernel, hence the same bits, at the SIMD levels; with SIMD off `sgemm` is
    // matrixmultiply's, so every product takes it there.
    let packs = if d.kpg > SMALL_DIM && tasks >= d.threads && simd::active() != SimdLevel::Fallback
    {
        transposed_weight_packs(d, weight)
    } else {
        Vec::new()
    };
    let packs_ref = &packs[..];
    let block = |t: usize, gx: &mut [f32], col: &mut Vec<f32>| {
        input_grad_block(g, d, weight, dy, t / d.groups, t % d.groups, 0, gx, col, packs_ref);
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
                    input_grad_block(g, d, weight, dy, b, gi, r * per, gx, col, &[]);
                });
            });
        }
    }
    put_packs(packs);
}

/// Each group's `W_gᵀ` (`C'RS × K'`), packed once for every image's input-gradient product
/// (buffers recycled across calls; hand them back with `put_packs`).
fn transposed_weight_packs(d: &Dims, weight: &[f32]) -> Vec<PackedA> {
    let mut packs = take_packs();
    packs.resize_with(d.groups, PackedA::empty);
    for (gi, pack) in packs.iter_mut().enumerate() {
        let wg = d.weight_block(weight, gi);
        pack.repack(MatRef {
            data: wg,
            rows: d.crs,
            cols: d.kpg,
            row_stride: 1,
            col_stride: d.crs,
        });
    }
    packs
}

/// One chunk of the batch in [`pointwise_fused`]: chunk `p`'s partial weight gradient, its
/// images' input gradients and (when the bias is wanted) their bias sums.
struct ChunkTask<'a> {
    p: usize,
    gx: &'a mut [f32],
    sums: &'a mut [f64],
}

/// Whether [`pointwise_fused`] runs this backward: a 1x1 convolution with stride 1 and no
/// padding on the packed kernel (SIMD on, more than [`SMALL_DIM`] output channels per group),
/// with at least one chunk of images per thread.
fn fuses(g: &ConvGeometry, d: &Dims) -> bool {
    d.pointwise
        && d.kpg > SMALL_DIM
        && simd::active() != SimdLevel::Fallback
        && (!d.par || g.n.min(WEIGHT_GRAD_PARTIALS) >= d.threads)
}

/// The backward of a 1x1 convolution, image by image: each chunk of the batch (the weight
/// gradient's fixed chunks) is one task, which for each of its images takes the bias sums of
/// `dY_b`, then `dX_b = W_gᵀ · dY_b` and `partial += dY_b · X_bᵀ` for every group while `dY_b`
/// is still in the core's cache (the three passes of the unfused backward each read the whole
/// `dY` from memory). Every gradient is the same sum in the same order as the unfused passes',
/// so the bits are the same: the bias sums of each image are kept (in f64) and added in image
/// order afterwards, the partials in [`fill_and_sum_partials`]'s order. Where the planes end
/// in a partial panel ([`shared_edge`]), each image's `dX_b` stops at its last whole panel
/// and the remaining columns of all images are one product after the tasks
/// ([`edge_columns`]), with the same bits.
fn pointwise_fused(
    g: &ConvGeometry,
    d: &Dims,
    x: BackwardInputs<'_>,
    gx: &mut [f32],
    gw: &mut [f32],
    gb: Option<&mut [f32]>,
) {
    let BackwardInputs { input, weight, grad_output: dy } = x;
    let parts = g.n.min(WEIGHT_GRAD_PARTIALS);
    let chunk = |p: usize| (p * g.n / parts)..((p + 1) * g.n / parts);
    let packs = transposed_weight_packs(d, weight);
    // The input gradient's columns past the planes' last whole panels, shared between the
    // images (see `shared_edge`); the same bits as each image's whole product.
    let rem = shared_edge(g, d);
    let w_block = d.kpg * d.crs;
    let wlen = gw.len();
    // Partials 1.. (partial 0 is `gw` itself), each overwritten by its chunk's first image.
    let mut partials = convkit_tensor::buffer::take((parts - 1) * wlen);
    // Per image and output channel, `sum_f64` of its plane of `dY` (when the bias is wanted).
    let mut sums = vec![0f64; if gb.is_some() { g.n * g.c_out } else { 0 }];
    {
        let image_len = g.c_in * d.hw;
        let mut tasks = Vec::with_capacity(parts);
        let (mut gx_rest, mut sums_rest) = (&mut *gx, &mut sums[..]);
        for p in 0..parts {
            let images = chunk(p).len();
            let (gx_p, rest) = gx_rest.split_at_mut(images * image_len);
            gx_rest = rest;
            let (s_p, rest) =
                sums_rest.split_at_mut(if gb.is_some() { images * g.c_out } else { 0 });
            sums_rest = rest;
            tasks.push(ChunkTask { p, gx: gx_p, sums: s_p });
        }
        let packs = &packs[..];
        let run = |ChunkTask { p, gx: gx_p, sums: s_p }: ChunkTask<'_>, out: &mut [f32]| {
            for (i, b) in chunk(p).enumerate() {
                if !s_p.is_empty() {
                    let dyb = &dy[b * g.c_out * d.ohw..][..g.c_out * d.ohw];
                    for (s, plane) in
                        s_p[i * g.c_out..][..g.c_out].iter_mut().zip(dyb.chunks_exact(d.ohw))
                    {
                        *s = simd::sum_f64(plane);
                    }
                }
                let gx_b = &mut gx_p[i * image_len..][..image_len];
                if rem > 0 {
                    // One group: the plane's whole panels here, the rest after the tasks.
                    let dyb = MatRef {
                        data: d.output_block(g, dy, b, 0),
                        rows: d.kpg,
                        cols: d.ohw - rem,
                        row_stride: d.ohw,
                        col_stride: 1,
                    };
                    sgemm_packed_a(1.0, &packs[0], 0..d.cpg, dyb, 0.0, None, gx_b, d.ohw);
                } else {
                    for (gi, gx_g) in gx_b.chunks_mut(d.cpg * d.hw).enumerate() {
                        let mut col = Vec::new();
                        input_grad_block(g, d, weight, dy, b, gi, 0, gx_g, &mut col, packs);
                    }
                }
                let beta = if i == 0 { 0.0 } else { 1.0 };
                for (gi, out_g) in out.chunks_mut(w_block).enumerate() {
                    let (dyg, xg) = (d.output_block(g, dy, b, gi), d.input_block(g, input, b, gi));
                    weight_grad_product(d, dyg, xg, d.ohw, beta, out_g);
                }
            }
        };
        fill_and_sum_partials(gw, &mut partials, tasks, d.par, &run);
    }
    if rem > 0 {
        // The input gradient's last columns of every image in one product.
        let edges = Edges { d, pack: &packs[0], bias: None, src: dy, depth: d.kpg, rem };
        scratch::with(Slot::Columns, |buf| edge_columns(&edges, buf, gx));
    }
    put_packs(packs);
    convkit_tensor::buffer::recycle(partials);
    if let Some(gb) = gb {
        for (k, v) in gb.iter_mut().enumerate() {
            *v = bias_in_image_order(g.n, |b| sums[b * g.c_out + k]);
        }
    }
}

/// `gw_block (rows of K') (+)= dY_g[rows] · colᵀ` for `col` with row stride `ld`; `beta` 0
/// overwrites, 1 accumulates.
fn weight_grad_product(d: &Dims, dyg: &[f32], col: &[f32], ld: usize, beta: f32, gw: &mut [f32]) {
    let rows = gw.len() / d.crs;
    if d.kpg <= SMALL_DIM {
        debug_assert_eq!(ld, d.ohw);
        gemm_abt_dots(dyg, col, rows, d.crs, d.ohw, beta, gw);
        return;
    }
    sgemm(
        1.0,
        MatRef::row_major(dyg, rows, d.ohw),
        MatRef { data: col, rows: d.crs, cols: d.ohw, row_stride: ld, col_stride: 1 }.t(),
        beta,
        gw,
        d.crs,
    );
}

/// The column matrix of image `b`, group `gi`, and its row stride: the input block itself when
/// the convolution is pointwise, else built in `col` (by gathers when there is a `gather` plan).
#[allow(clippy::too_many_arguments)]
fn column_matrix<'a>(
    g: &ConvGeometry,
    d: &Dims,
    gather: Option<&GatherPlan>,
    input: &'a [f32],
    b: usize,
    gi: usize,
    col: &'a mut Vec<f32>,
    parallel: bool,
) -> (&'a [f32], usize) {
    let x = d.input_block(g, input, b, gi);
    if d.pointwise {
        return (x, d.ohw);
    }
    let ld = if let Some(plan) = gather {
        im2col_gather_rows(g, plan, x, col)
    } else {
        im2col(g, x, col, parallel);
        d.ohw
    };
    (col, ld)
}

fn weight_grad(g: &ConvGeometry, d: &Dims, input: &[f32], dy: &[f32], gw: &mut [f32]) {
    let wlen = gw.len();
    let w_block = d.kpg * d.crs;
    let parts = g.n.min(WEIGHT_GRAD_PARTIALS);
    // Narrow outputs build the column matrix by gathers (see `gather_max_width`).
    let gather = if d.pointwise || d.kpg <= SMALL_DIM { None } else { GatherPlan::new(g) };
    let gather = gather.as_ref();
    // Images of chunk `p`: a split of 0..n that depends only on n.
    let chunk = |p: usize| (p * g.n / parts)..((p + 1) * g.n / parts);
    // Partial `p`, group `gi`: Σ over the chunk's images, in order.
    let block = |t: usize, out: &mut [f32], col: &mut Vec<f32>| {
        let (p, gi) = (t / d.groups, t % d.groups);
        for (i, b) in chunk(p).enumerate() {
            let (colm, ld) = column_matrix(g, d, gather, input, b, gi, col, false);
            let beta = if i == 0 { 0.0 } else { 1.0 };
            weight_grad_product(d, d.output_block(g, dy, b, gi), colm, ld, beta, out);
        }
    };
    let tasks = parts * d.groups;
    // Partials 1.. (partial 0 is `gw` itself), each overwritten by its chunk's first image: a
    // cached buffer, so a training step does not page-fault a fresh one for each layer.
    let mut partials = convkit_tensor::buffer::take((parts - 1) * wlen);
    if !d.par || tasks >= d.threads {
        // Partial `p`: its groups in turn (or on every thread when there are few partials).
        let fill = |p: usize, out: &mut [f32]| {
            if d.par && parts < d.threads {
                out.par_chunks_mut(w_block).enumerate().for_each(|(gi, out)| {
                    scratch::with(Slot::Columns, |col| block(p * d.groups + gi, out, col))
                });
            } else {
                scratch::with(Slot::Columns, |col| {
                    for (gi, out) in out.chunks_mut(w_block).enumerate() {
                        block(p * d.groups + gi, out, col);
                    }
                });
            }
        };
        fill_and_sum_partials(gw, &mut partials, (0..parts).collect(), d.par, &fill);
    } else {
        // Batch 1 and one group, or few of each: split each product by output-channel rows;
        // every row is computed exactly as in the unsplit product.
        let rows = d.rows_per_block(d.kpg);
        scratch::with(Slot::Columns, |col| {
            let spare = partials.chunks_mut(wlen.max(1));
            for (p, target) in std::iter::once(&mut *gw).chain(spare).take(parts).enumerate() {
                for (gi, out) in target.chunks_mut(w_block).enumerate() {
                    for (i, b) in chunk(p).enumerate() {
                        let (colm, ld) = column_matrix(g, d, gather, input, b, gi, col, true);
                        let dyg = d.output_block(g, dy, b, gi);
                        let beta = if i == 0 { 0.0 } else { 1.0 };
                        out.par_chunks_mut(rows * d.crs).enumerate().for_each(|(r, out)| {
                            let dy_rows = &dyg[r * rows * d.ohw..];
                            weight_grad_product(d, dy_rows, colm, ld, beta, out);
                        });
                    }
                }
            }
        });
        // The same sum as the tasks' above, so the bits do not depend on the threads.
        sum_partials(gw, &mut partials, parts);
    }
    convkit_tensor::buffer::recycle(partials);
}
