//! The im2col forward: each group's weights packed once per call, then one product per image
//! and group (or per row block of one product when there are fewer blocks than threads).

use rayon::prelude::*;

use super::{
    Dims, Edges, GatherPlan, edge_columns, im2col, im2col_gather, im2col_packed, im2col_packed_par,
    shared_edge,
};
use crate::error::Result;
use crate::gemm::{MR, MatRef, PackedA, SMALL_DIM, gemm_rows, sgemm_packed_a, sgemm_packed_ab};
use crate::params::ConvGeometry;
use crate::scratch::{self, Slot};

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
    g.check_forward("conv2d_im2col", input, weight, bias, output)?;
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

    // A pointwise layer whose planes end in a partial panel: each image's product covers its
    // whole panels only, and the columns past them are multiplied for all images at once at
    // the end ([`edge_columns`]).
    let rem = shared_edge(g, &d);
    let n_main = d.ohw - rem;
    // The bias of output rows `k0..k0+rows` of group `gi`: the packed products add it as they
    // store their first depth block (the bits of filling `C` with it first, without the pass).
    let row_bias = |gi: usize, k0: usize, rows: usize| bias.map(|b| &b[gi * d.kpg + k0..][..rows]);
    // Output rows `k0..` of image `b`, group `gi`, from the group's column matrix `col`.
    let product = |gi: usize, k0: usize, col: &[f32], out: &mut [f32]| {
        let rows = out.len() / d.ohw;
        // Columns `..n_main` of the plane (all but the shared edge columns, if any).
        let b = MatRef { data: col, rows: d.crs, cols: n_main, row_stride: d.ohw, col_stride: 1 };
        if d.kpg <= SMALL_DIM {
            // Row updates: the rows start as the bias.
            let beta = match row_bias(gi, k0, rows) {
                Some(bias) => {
                    for (row, &v) in out.chunks_exact_mut(d.ohw).zip(bias) {
                        row.fill(v);
                    }
                    1.0
                }
                None => 0.0,
            };
            let wg = &d.weight_block(weight, gi)[k0 * d.crs..(k0 + rows) * d.crs];
            gemm_rows(MatRef::row_major(wg, rows, d.crs), col, d.ohw, beta, out);
        } else {
            let (pack, bias) = (&packs_ref[gi], row_bias(gi, k0, rows));
            sgemm_packed_a(1.0, pack, k0..k0 + rows, b, 0.0, bias, out, d.ohw);
        }
    };
    // The same product from a column matrix already in the packed-B layout.
    let product_packed = |gi: usize, k0: usize, colp: &[f32], out: &mut [f32]| {
        let rows = out.len() / d.ohw;
        let (pack, bias) = (&packs_ref[gi], row_bias(gi, k0, rows));
        sgemm_packed_ab(pack, k0..k0 + rows, colp, d.ohw, 0.0, bias, out, d.ohw);
    };
    // Whether the column matrix is built straight into the GEMM's panels.
    let packed_col = !d.pointwise && d.kpg > SMALL_DIM;
    let gather = if packed_col { GatherPlan::new(g) } else { None };
    let block = |t: usize, out: &mut [f32], col: &mut Vec<f32>| {
        let (b, gi) = (t / d.groups, t % d.groups);
        let x = d.input_block(g, input, b, gi);
        if d.pointwise {
            product(gi, 0, x, out);
        } else if let Some(plan) = &gather {
            product_packed(gi, 0, im2col_gather(g, plan, x, col, false), out);
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
                    let colp = match &gather {
                        Some(plan) => im2col_gather(g, plan, x, col, true),
                        None => im2col_packed_par(g, x, col),
                    };
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
    if rem > 0 {
        let edges = Edges { d: &d, pack: &packs[0], bias, src: input, depth: d.crs, rem };
        scratch::with(Slot::Columns, |buf| edge_columns(&edges, buf, output));
    }
    put_packs(packs);
    Ok(())
}

/// Takes this thread's packed-weight buffers (empty when another call on this thread holds
/// them).
pub(super) fn take_packs() -> Vec<PackedA> {
    scratch::take_list().into_iter().map(PackedA::from_buffer).collect()
}

/// Returns packed-weight buffers for the next call (see [`scratch::put_list`]).
pub(super) fn put_packs(packs: Vec<PackedA>) {
    scratch::put_list(packs.into_iter().map(PackedA::into_buffer).collect());
}
