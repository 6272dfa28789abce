//! Backward of the direct convolution: input, weight and bias gradients computed straight from
//! padded copies of the operands with explicit SIMD, no column matrix.
//!
//! # Why
//!
//! im2col/col2im turns the backward pass into two matrix products of depth `K/g` (input
//! gradient) and `OH·OW` (weight gradient) around a column matrix of `C/g·R·S` rows. When
//! `C/g·R·S` and `K/g` are small — LeNet's layers, depthwise — the products are thin, the
//! column matrix is copied (and scattered back by col2im) `R·S` times per pixel, and the GEMM
//! spends its time packing. These kernels read the operands in place.
//!
//! # The math (see `docs/convolution.md`, section 6)
//!
//! With `Ah = (kh−1)·dh`, `Aw = (kw−1)·dw` and `Xp` the zero-padded input:
//!
//! ```text
//! dW[k,c,i,j] = Σ_b Σ_{y,x} dY[b,k,y,x] · Xp[b,c, y·sh + i·dh, x·sw + j·dw]
//! dX[b,c,u,v] = Σ_k Σ_{i',j'} dYs[b,k, u + ph + i'·dh, v + pw + j'·dw] · W[k,c, kh−1−i', kw−1−j']
//! dB[k]       = Σ_b Σ_{y,x} dY[b,k,y,x]
//! ```
//!
//! where `dYs` is the output gradient zero-stuffed by the stride (`dYs[Ah + y·sh, Aw + x·sw] =
//! dY[y, x]`, zero elsewhere): the input gradient is a "full" correlation of the output
//! gradient with the 180°-rotated filters, channels swapped.
//!
//! # Layout and vectorization
//!
//! - **Weight gradient.** Each image's input channels are copied into zero-padded planes. With
//!   stride 1 the padded rows (width `wp = w + 2·pw`) are contiguous and so is the output
//!   gradient once stored with the same row pitch `wp` (zeros in columns `ow..wp`): output
//!   pixel `q = y·wp + x` and tap `(i, j)` read `Xp[q + i·dh·wp + j·dw]`. The whole plane is
//!   then *one* flat loop over `q` in vectors of 8, whatever the width — LeNet's 10-wide rows
//!   do not waste half a vector. With a stride the rows are stored phase-split as in the
//!   forward kernel ([`crate::direct`]) and the loop runs row by row. The micro-kernel keeps
//!   `KB × TB` vector accumulators (`KB ≤ 3` output channels × `TB ≤ 12/KB` taps of one input
//!   channel), loads `KB + TB` vectors and issues `KB·TB` fused multiply-adds per step, and
//!   reduces the lanes once per image.
//!
//!   When the output channels per group are a multiple of 8 (LeNet's second layer, most wide
//!   layers), the weight gradient is instead a matrix product `dWᵀ[c·taps + t, k] = Σ_q
//!   X[c, q + off(t)] · dY[k, q]` over output pixels `q`, vectorized over output channels: the
//!   output gradient is stored pixel-major (`[q][k]`) and the micro-kernel keeps `6 × 2` (or
//!   `12 × 1`) vector accumulators for 6 (12) rows `c·taps + t` by 16 (8) channels, broadcasts
//!   the 6 (12) input floats — the column matrix's entries, read in place from the padded
//!   planes — and loads 2 (1) gradient vectors per pixel. Every step is a real pixel (no row
//!   padding in the vectors) and no lanes are reduced; on `lenet_c2` this halves the weight
//!   gradient's time.
//! - **Input gradient.** The output gradient is copied into zero-stuffed, zero-padded planes
//!   of row pitch `Lg = w + pw + max(pw, Aw)`, so every input pixel `q = u·Lg + v` reads
//!   `dYs[q + off(i', j')]`: again one flat loop per plane. The micro-kernel keeps `CB × XB`
//!   accumulators (up to 6 input channels × 2 vectors, or 1 channel × 8 vectors), broadcasts
//!   `CB` rotated weights and loads `XB` gradient vectors per tap. Columns `w..Lg` of the flat
//!   result are discarded when it is copied out. When the padding of the rows would waste more
//!   vectors than rounding each row up to whole vectors (`lenet_c2`: 14-wide rows of pitch 18),
//!   the plane is computed row by row instead, each row summing only the rotated filter rows
//!   `i'` that reach an output-gradient row — the full correlation's rows of zeros are skipped
//!   (on `lenet_c2` 50 of 70 row × filter-row pairs remain). A stride wastes `1 − 1/(sh·sw)`
//!   of the work on the stuffed zeros: strided shapes are correct here but belong to im2col (see
//!   [`crate::algo::backward_kernel`]).
//!
//!   Depthwise 3x3 with stride 1, no dilation and padding `p ≤ 2` (input rows of at least 8
//!   columns) skips this kernel: its input gradient is a depthwise 3x3 forward convolution of
//!   the output gradient with the 180°-rotated filters under padding `2 − p`, run by the
//!   forward kernel's dedicated depthwise path ([`crate::direct`]).
//! - **Depthwise 3x3 weight gradient** (stride 1, no dilation, any padding) also skips the
//!   blocking above: work items are runs of whole channels, each copying one padded input
//!   plane and one output-gradient plane (rows of whole vectors, zeros past `ow`) per image
//!   into a buffer zeroed once per item, and summing the nine taps in nine vector
//!   accumulators per channel over every image in order (images outer, so that the item's
//!   planes of one image, contiguous in memory, are read in order). A channel's filter
//!   gradient depends on that channel only, so this needs no per-chunk partials and is the
//!   same for any thread count.
//! - **Bias gradient.** Sums of each output-gradient plane in f64 (eight running sums,
//!   `simd::sum_f64`).
//!
//! # Threads and determinism
//!
//! The batch is cut into at most [`WEIGHT_GRAD_PARTIALS`] fixed chunks of consecutive images
//! (the chunking depends only on `n`). One task per chunk writes its images' input gradients
//! (disjoint slices) and accumulates its own partial weight and bias gradients image by image
//! in order; the partials are then added in chunk order. Every gradient is therefore
//! bit-identical for any number of threads. Problems under ~4 MFLOP run on the calling thread.
//! Scratch is per task and sized by one image (padded input, two padded copies of its output
//! gradient, one flat input-gradient plane block).

use rayon::prelude::*;

use crate::error::{ConvError, Result};
use crate::layout::ChannelLast;
use crate::params::ConvGeometry;
use crate::simd::{self, LANES, Simd, SimdLevel, WithSimd};

const OP: &str = "conv2d_backward_direct";

/// Below this many forward FLOPs the work runs on the calling thread.
const PARALLEL_MIN_FLOPS: u64 = 4_000_000;

/// Maximum number of batch chunks, hence of partial weight gradients kept in memory.
pub const WEIGHT_GRAD_PARTIALS: usize = 8;

/// Backward direct convolution with the [`simd::active`] instruction set: writes (overwrites)
/// each requested gradient.
///
/// Same contract as [`conv2d_backward_naive`](crate::conv2d_backward_naive): NCHW `input`
/// `[n, c_in, h, w]`, `weight` `[c_out, c_in/groups, kh, kw]`, `grad_output`
/// `[n, c_out, oh, ow]`; `grad_input`, `grad_weight`, `grad_bias` have the shapes of the
/// input, the weight and `[c_out]`. Every length is checked. Every stride, padding, dilation
/// and group count is supported; stride 1 is the fast case.
pub fn conv2d_backward_direct(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    grad_output: &[f32],
    grad_input: Option<&mut [f32]>,
    grad_weight: Option<&mut [f32]>,
    grad_bias: Option<&mut [f32]>,
) -> Result<()> {
    conv2d_backward_direct_with(
        simd::active(),
        g,
        input,
        weight,
        grad_output,
        grad_input,
        grad_weight,
        grad_bias,
    )
}

/// [`conv2d_backward_direct`] with an explicit instruction set, so tests and benchmarks can run
/// the AVX2 and portable kernels side by side. Returns [`ConvError::Unsupported`] when this CPU
/// cannot run `level`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_direct_with(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    grad_output: &[f32],
    grad_input: Option<&mut [f32]>,
    grad_weight: Option<&mut [f32]>,
    grad_bias: Option<&mut [f32]>,
) -> Result<()> {
    g.check_backward_buffers(
        OP,
        [input.len(), weight.len(), grad_output.len()],
        [grad_input.as_deref(), grad_weight.as_deref(), grad_bias.as_deref()]
            .map(|b| b.map(<[f32]>::len)),
    )?;
    if !level.available() {
        return Err(ConvError::Unsupported {
            op: OP,
            algo: "direct",
            msg: format!("SIMD level {level} on this CPU"),
        });
    }
    // Depthwise 3x3, stride 1: the input gradient is a forward depthwise convolution, which
    // the forward kernel's dedicated path runs faster than the general one below.
    let mut grad_input = grad_input;
    if let Some(gx) = grad_input.as_deref_mut()
        && crate::direct::depthwise3_input_grad(level, g, weight, grad_output, gx)
    {
        grad_input = None;
    }
    let mut grad_weight = grad_weight;
    if let Some(gw) = grad_weight.as_deref_mut()
        && crate::direct::depthwise3_weight_grad(level, g, input, grad_output, gw)
    {
        grad_weight = None;
    }
    let plan = Plan::new(g, grad_input.is_some(), grad_weight.is_some(), grad_bias.is_some());
    // Rotated, channel-minor weights for the input gradient: wr[grp][k][t'][c].
    let wr = if plan.want_gx { rotate_weights(g, weight) } else { Vec::new() };

    let parts = g.n.min(WEIGHT_GRAD_PARTIALS);
    let chunk = |p: usize| (p * g.n / parts)..((p + 1) * g.n / parts);
    // Partials are at least one element long so that `chunks_mut` has a non-zero size.
    let wl = if plan.want_gw { g.weight_len() } else { 1 };
    let bl = if plan.want_gb { g.c_out } else { 1 };
    let mut pw = vec![0f32; parts * wl];
    let mut pb = vec![0f64; parts * bl];
    let img_len = g.c_in * g.h * g.w;
    let mut gx_parts: Vec<Option<&mut [f32]>> = Vec::with_capacity(parts);
    match grad_input {
        Some(gx) => {
            let mut rest = gx;
            for p in 0..parts {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(chunk(p).len() * img_len);
                gx_parts.push(Some(head));
                rest = tail;
            }
        }
        None => gx_parts.resize_with(parts, || None),
    }
    let tasks: Vec<_> = pw
        .chunks_mut(wl)
        .zip(pb.chunks_mut(bl))
        .zip(gx_parts)
        .enumerate()
        .map(|(p, ((gw, gb), gx))| Task {
            plan: &plan,
            input,
            dy: grad_output,
            wr: &wr,
            images: chunk(p),
            gx,
            gw,
            gb,
        })
        .collect();
    let run = |task: Task<'_>| {
        // `level` was checked above, so dispatch cannot decline.
        let _ = simd::dispatch(level, task);
    };
    if g.flops() < PARALLEL_MIN_FLOPS || parts == 1 {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }

    // Fixed order: partial 0 + partial 1 + …
    if let Some(gw) = grad_weight {
        let mut it = pw.chunks_exact(wl);
        if let Some(first) = it.next() {
            gw.copy_from_slice(first);
        }
        for part in it {
            for (a, b) in gw.iter_mut().zip(part) {
                *a += *b;
            }
        }
    }
    if let Some(gb) = grad_bias {
        for (k, v) in gb.iter_mut().enumerate() {
            *v = pb.chunks_exact(bl).map(|part| part[k]).sum::<f64>() as f32;
        }
    }
    Ok(())
}

/// `wr[((grp·kpg + k)·taps + t')·cpg + c] = W[grp·kpg + k, c, kh−1−i', kw−1−j']` with
/// `t' = i'·kw + j'`: the rotated filters, input channels innermost so that a register block of
/// channels broadcasts adjacent floats.
fn rotate_weights(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let (cpg, taps) = (g.c_in_per_group(), g.kh * g.kw);
    let mut wr = vec![0f32; weight.len()];
    for k in 0..g.c_out {
        for c in 0..cpg {
            for t in 0..taps {
                wr[(k * taps + t) * cpg + c] = weight[(k * cpg + c) * taps + (taps - 1 - t)];
            }
        }
    }
    wr
}

/// Sizes derived once per call.
struct Plan {
    want_gx: bool,
    want_gw: bool,
    want_gb: bool,
    n_c_in: usize,
    c_out: usize,
    cpg: usize,
    kpg: usize,
    groups: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    // --- weight gradient: padded input planes and output-gradient planes ---
    /// Length of one stride phase of a padded input row (`wp` with stride 1).
    lph: usize,
    /// One padded input row: `sw · lph`.
    row_len: usize,
    /// Distance between two padded input planes.
    xp_plane: usize,
    /// Rows of the weight-gradient loop (1 with stride 1: one flat loop per plane).
    w_rows: usize,
    /// Vectors per row of the weight-gradient loop.
    w_nvec: usize,
    /// Row pitch of the stored output gradient (`wp` with stride 1, `⌈ow/8⌉·8` otherwise).
    dy_pitch: usize,
    /// Loop row step in the output-gradient plane and in the padded input plane.
    dy_rs: usize,
    x_rs: usize,
    /// Distance between two output-gradient planes.
    dy_plane: usize,
    /// Offset in a padded input plane of each tap `(i, j)` for the first output pixel.
    w_offs: Vec<usize>,
    /// Weight gradient with output channels in vectors ([`wk_tile`]): `kpg` is a multiple of 8.
    kvec: bool,
    /// [`wk_tile`]'s rows `m = c·taps + t` of one group: offset of `Xp[c]`'s tap `t`.
    m_offs: Vec<usize>,
    /// Distance between two output rows in a padded input plane (`sh · row_len`).
    x_row: usize,
    // --- input gradient: zero-stuffed, padded output-gradient planes ---
    /// Row pitch of the stuffed planes and of the flat input-gradient planes.
    lg: usize,
    /// Distance between two stuffed planes.
    g_plane: usize,
    /// Vectors of one flat input-gradient plane (`⌈h·lg/8⌉`).
    g_nvec: usize,
    /// Row mode: each input row is computed as `⌈w/8⌉` vectors from its start instead of the
    /// plane as one flat run (fewer vectors when `lg` pads rows far past `w`).
    g_rowwise: bool,
    /// Vectors per row in row mode.
    g_row_nvec: usize,
    /// Distance between two flat input-gradient planes.
    g_flat: usize,
    /// Input-gradient channel block and vector block of the micro-kernel.
    g_cb: usize,
    g_xb: usize,
    /// Offset in a stuffed plane of each rotated tap `(i', j')` for input pixel 0.
    g_offs: Vec<usize>,
    /// Where `dY[0, 0]` goes in a stuffed plane: `Ah·lg + Aw`.
    g_origin: usize,
}

impl Plan {
    fn new(g: &ConvGeometry, want_gx: bool, want_gw: bool, want_gb: bool) -> Plan {
        let p = g.params;
        let (sh, sw) = p.stride;
        let (ph, pw) = p.padding;
        let (dh, dw) = p.dilation;
        let (ah, aw) = ((g.kh - 1) * dh, (g.kw - 1) * dw);
        let (hp, wp) = (g.h + 2 * ph, g.w + 2 * pw);

        // Weight gradient.
        let flat = sh == 1 && sw == 1;
        let nv = g.ow.div_ceil(LANES);
        let (lph, w_rows, w_nvec, dy_pitch) = if flat {
            (wp, 1, (g.oh * wp).div_ceil(LANES), wp)
        } else {
            (wp.div_ceil(sw).max(nv * LANES + aw / sw), g.oh, nv, nv * LANES)
        };
        let row_len = sw * lph;
        let w_offs: Vec<usize> = (0..g.kh * g.kw)
            .map(|t| {
                let (i, j) = (t / g.kw, t % g.kw);
                i * dh * row_len + (j * dw % sw) * lph + j * dw / sw
            })
            .collect();
        let (dy_rs, x_rs) = if flat { (0, 0) } else { (dy_pitch, sh * row_len) };
        let w_max_off = w_offs.iter().copied().max().unwrap_or(0);
        let w_extent = (w_rows - 1) * x_rs + w_nvec * LANES + w_max_off;
        let xp_plane = (hp * row_len).max(w_extent);
        let dy_plane = if flat { w_nvec * LANES } else { g.oh * dy_pitch };

        let kvec = g.c_out_per_group().is_multiple_of(LANES);
        let m_offs = (0..g.c_in_per_group())
            .flat_map(|c| w_offs.iter().map(move |&o| c * xp_plane + o))
            .collect();

        // Input gradient.
        let g_cb = g.c_in_per_group().min(6);
        let g_xb = match g_cb {
            1 => 8,
            2 => 6,
            3 => 4,
            _ => 2,
        };
        let g_row_nvec = g.w.div_ceil(LANES);
        let lg0 = g.w + pw + pw.max(aw);
        let g_rowwise =
            g_row_nvec.is_multiple_of(g_xb) && g.h * g_row_nvec < (g.h * lg0).div_ceil(LANES);
        let lg = if g_rowwise { lg0.max(g_row_nvec * LANES) } else { lg0 };
        let rg = g.h + ph + ph.max(ah);
        let g_nvec = (g.h * lg).div_ceil(LANES);
        let g_flat = if g_rowwise { g.h * lg } else { g_nvec * LANES };
        let g_extent = if g_rowwise { (g.h - 1) * lg + g_row_nvec * LANES } else { g_nvec * LANES };
        let g_offs: Vec<usize> = (0..g.kh * g.kw)
            .map(|t| {
                let (i, j) = (t / g.kw, t % g.kw);
                (ph + i * dh) * lg + pw + j * dw
            })
            .collect();
        let g_max_off = g_offs.iter().copied().max().unwrap_or(0);
        let g_plane = (rg * lg).max(g_extent + g_max_off);

        Plan {
            want_gx,
            want_gw,
            want_gb,
            n_c_in: g.c_in,
            c_out: g.c_out,
            cpg: g.c_in_per_group(),
            kpg: g.c_out_per_group(),
            groups: p.groups,
            h: g.h,
            w: g.w,
            kh: g.kh,
            kw: g.kw,
            oh: g.oh,
            ow: g.ow,
            sh,
            sw,
            ph,
            pw,
            dh,
            lph,
            row_len,
            xp_plane,
            w_rows,
            w_nvec,
            dy_pitch,
            dy_rs,
            x_rs,
            dy_plane,
            w_offs,
            kvec,
            m_offs,
            x_row: sh * row_len,
            lg,
            g_plane,
            g_nvec,
            g_rowwise,
            g_row_nvec,
            g_flat,
            g_cb,
            g_xb,
            g_offs,
            g_origin: ah * lg + aw,
        }
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }
}

/// One task: the images of one batch chunk.
struct Task<'a> {
    plan: &'a Plan,
    input: &'a [f32],
    dy: &'a [f32],
    /// Rotated weights (empty when the input gradient is not wanted).
    wr: &'a [f32],
    images: std::ops::Range<usize>,
    /// Input gradients of the chunk's images.
    gx: Option<&'a mut [f32]>,
    /// The chunk's partial weight gradient (accumulated).
    gw: &'a mut [f32],
    /// The chunk's partial bias gradient (accumulated).
    gb: &'a mut [f64],
}

impl WithSimd for Task<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Task { plan: p, input, dy, wr, images, mut gx, gw, gb } = self;
        let (hw, ohw) = (p.h * p.w, p.oh * p.ow);
        let img_len = p.n_c_in * hw;
        let dy_len = p.c_out * ohw;
        // Scratch: zero once; each image overwrites exactly the same (interior) positions, so
        // the padding stays zero.
        let mut xp = vec![0f32; if p.want_gw { p.n_c_in * p.xp_plane } else { 0 }];
        let (gw_lanes, gw_kvec) = (p.want_gw && !p.kvec, p.want_gw && p.kvec);
        let mut dyf = vec![0f32; if gw_lanes { p.c_out * p.dy_plane } else { 0 }];
        // Output gradient pixel-major and the chunk's transposed weight gradient, for `kvec`.
        let mut dyt = vec![0f32; if gw_kvec { dy_len } else { 0 }];
        let mut gwt = vec![0f32; if gw_kvec { gw.len() } else { 0 }];
        let mut dys = vec![0f32; if p.want_gx { p.c_out * p.g_plane } else { 0 }];
        let mut dxf = vec![0f32; if p.want_gx { p.cpg * p.g_flat } else { 0 }];
        // The chunk's weight gradient as 8 lanes per element, reduced once at the end.
        let mut gwv = vec![0f32; if gw_lanes { gw.len() * LANES } else { 0 }];
        let first = images.start;
        for b in images {
            let x_img = &input[b * img_len..][..img_len];
            let dy_img = &dy[b * dy_len..][..dy_len];
            if p.want_gb {
                for (acc, plane) in gb.iter_mut().zip(dy_img.chunks_exact(ohw)) {
                    *acc += simd::sum_f64(plane);
                }
            }
            if p.want_gw {
                fill_padded_input(p, x_img, &mut xp);
            }
            if gw_kvec {
                fill_pixel_major(s, p, dy_img, &mut dyt);
                weight_grad_image_kvec(s, p, &xp, &dyt, &mut gwt);
            }
            if gw_lanes {
                for (dst, src) in dyf.chunks_exact_mut(p.dy_plane).zip(dy_img.chunks_exact(ohw)) {
                    for (row, s_row) in dst.chunks_mut(p.dy_pitch).zip(src.chunks_exact(p.ow)) {
                        row[..p.ow].copy_from_slice(s_row);
                    }
                }
                weight_grad_image(s, p, &xp, &dyf, &mut gwv);
            }
            if let Some(gx) = gx.as_deref_mut() {
                fill_stuffed(p, dy_img, &mut dys);
                let gx_img = &mut gx[(b - first) * img_len..][..img_len];
                input_grad_image(s, p, &dys, wr, &mut dxf, gx_img);
            }
        }
        if gw_lanes {
            for (g, lanes) in gw.iter_mut().zip(gwv.chunks_exact(LANES)) {
                *g = lanes.iter().sum();
            }
        }
        if gw_kvec {
            // gwt[grp][m][k] → gw[grp·kpg + k][m].
            let rows = p.cpg * p.taps();
            for (gw_g, gwt_g) in
                gw.chunks_exact_mut(p.kpg * rows).zip(gwt.chunks_exact(rows * p.kpg))
            {
                for (m, src) in gwt_g.chunks_exact(p.kpg).enumerate() {
                    for (k, &v) in src.iter().enumerate() {
                        gw_g[k * rows + m] = v;
                    }
                }
            }
        }
    }
}

/// Copies one image's input channels into the padded (phase-split when strided) planes.
#[inline(always)]
fn fill_padded_input(p: &Plan, x_img: &[f32], xp: &mut [f32]) {
    for (plane, src) in xp.chunks_exact_mut(p.xp_plane).zip(x_img.chunks_exact(p.h * p.w)) {
        for (r, s_row) in src.chunks_exact(p.w).enumerate() {
            let row = &mut plane[(r + p.ph) * p.row_len..][..p.row_len];
            if p.sw == 1 {
                row[p.pw..p.pw + p.w].copy_from_slice(s_row);
            } else {
                for (x, &v) in s_row.iter().enumerate() {
                    let xq = x + p.pw;
                    row[(xq % p.sw) * p.lph + xq / p.sw] = v;
                }
            }
        }
    }
}

/// Copies one image's output gradient into the zero-stuffed, padded planes.
#[inline(always)]
fn fill_stuffed(p: &Plan, dy_img: &[f32], dys: &mut [f32]) {
    for (plane, src) in dys.chunks_exact_mut(p.g_plane).zip(dy_img.chunks_exact(p.oh * p.ow)) {
        for (y, s_row) in src.chunks_exact(p.ow).enumerate() {
            let start = p.g_origin + y * p.sh * p.lg;
            if p.sw == 1 {
                plane[start..start + p.ow].copy_from_slice(s_row);
            } else {
                for (x, &v) in s_row.iter().enumerate() {
                    plane[start + x * p.sw] = v;
                }
            }
        }
    }
}

/// Copies one image's output gradient pixel-major within each group:
/// `dyt[(grp·oh·ow + q)·kpg + k] = dY[grp·kpg + k, q]` (`kpg` a multiple of 8): each group's
/// planes copied channel-last by 8×8 register transposes.
#[inline(always)]
fn fill_pixel_major<S: Simd>(s: S, p: &Plan, dy_img: &[f32], dyt: &mut [f32]) {
    let ohw = p.oh * p.ow;
    let at = ChannelLast {
        h: p.oh,
        w: p.ow,
        y0: 0,
        x0: 0,
        hp: p.oh,
        wp: p.ow,
        channels: p.kpg,
        cv: p.kpg,
    };
    for (dst, src) in dyt.chunks_exact_mut(ohw * p.kpg).zip(dy_img.chunks_exact(p.kpg * ohw)) {
        at.copy_with(s, src, dst);
    }
}

/// Adds one image's weight gradient to `gwt` (`[grp][c·taps + t][k]`, output channels
/// innermost) with [`wk_tile`]: a matrix product of the column matrix, read in place from the
/// padded planes by broadcasts, and the pixel-major output gradient, read in vectors of
/// output channels. No lane reduction and no padding lanes: every output pixel is one step.
#[inline(always)]
fn weight_grad_image_kvec<S: Simd>(s: S, p: &Plan, xp: &[f32], dyt: &[f32], gwt: &mut [f32]) {
    let rows = p.cpg * p.taps();
    let ohw = p.oh * p.ow;
    for grp in 0..p.groups {
        let x = &xp[grp * p.cpg * p.xp_plane..];
        let dy = &dyt[grp * ohw * p.kpg..][..ohw * p.kpg];
        let acc = &mut gwt[grp * rows * p.kpg..][..rows * p.kpg];
        let mut k0 = 0;
        while k0 < p.kpg {
            let kv = if p.kpg - k0 >= 2 * LANES { 2 } else { 1 };
            let mb_main = 12 / kv;
            let mut m0 = 0;
            while m0 < rows {
                let mb = mb_main.min(rows - m0);
                wk_dispatch(s, p, x, dy, acc, WkAt { m0, k0 }, mb, kv);
                m0 += mb;
            }
            k0 += kv * LANES;
        }
    }
}

/// A [`wk_tile`]: rows `m0..` (input channel × tap) and output channels `k0..` of one group.
#[derive(Clone, Copy)]
struct WkAt {
    m0: usize,
    k0: usize,
}

/// Picks the monomorphized [`wk_tile`] for `mb` rows × `kv` vectors of output channels.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn wk_dispatch<S: Simd>(
    s: S,
    p: &Plan,
    x: &[f32],
    dy: &[f32],
    acc: &mut [f32],
    at: WkAt,
    mb: usize,
    kv: usize,
) {
    match (mb, kv) {
        (1, 2) => wk_tile::<S, 1, 2>(s, p, x, dy, acc, at),
        (2, 2) => wk_tile::<S, 2, 2>(s, p, x, dy, acc, at),
        (3, 2) => wk_tile::<S, 3, 2>(s, p, x, dy, acc, at),
        (4, 2) => wk_tile::<S, 4, 2>(s, p, x, dy, acc, at),
        (5, 2) => wk_tile::<S, 5, 2>(s, p, x, dy, acc, at),
        (6, 2) => wk_tile::<S, 6, 2>(s, p, x, dy, acc, at),
        (1, _) => wk_tile::<S, 1, 1>(s, p, x, dy, acc, at),
        (2, _) => wk_tile::<S, 2, 1>(s, p, x, dy, acc, at),
        (3, _) => wk_tile::<S, 3, 1>(s, p, x, dy, acc, at),
        (4, _) => wk_tile::<S, 4, 1>(s, p, x, dy, acc, at),
        (5, _) => wk_tile::<S, 5, 1>(s, p, x, dy, acc, at),
        (6, _) => wk_tile::<S, 6, 1>(s, p, x, dy, acc, at),
        (7, _) => wk_tile::<S, 7, 1>(s, p, x, dy, acc, at),
        (8, _) => wk_tile::<S, 8, 1>(s, p, x, dy, acc, at),
        (9, _) => wk_tile::<S, 9, 1>(s, p, x, dy, acc, at),
        (10, _) => wk_tile::<S, 10, 1>(s, p, x, dy, acc, at),
        (11, _) => wk_tile::<S, 11, 1>(s, p, x, dy, acc, at),
        _ => wk_tile::<S, 12, 1>(s, p, x, dy, acc, at),
    }
}

/// Weight-gradient micro-kernel with output channels in vectors: `MB` rows `m = c·taps + t`
/// × `KV·8` output channels, accumulated in `acc` (`[m][k]`) over one image's output pixels.
/// Each pixel loads `KV` gradient vectors and broadcasts `MB` input floats (the column
/// matrix's entries, read in place at `m_offs[m] + y·x_row + x`) for `MB·KV` fused
/// multiply-adds.
#[inline(always)]
fn wk_tile<S: Simd, const MB: usize, const KV: usize>(
    s: S,
    p: &Plan,
    x: &[f32],
    dy: &[f32],
    acc: &mut [f32],
    at: WkAt,
) {
    let WkAt { m0, k0 } = at;
    let kpg = p.kpg;
    let mut a = [[s.zero(); KV]; MB];
    for (mm, row) in a.iter_mut().enumerate() {
        for (v, av) in row.iter_mut().enumerate() {
            *av = s.load(&acc[(m0 + mm) * kpg + k0 + v * LANES..]);
        }
    }
    let mut off = [0usize; MB];
    off.copy_from_slice(&p.m_offs[m0..m0 + MB]);
    let max_off = off.iter().copied().max().unwrap_or(0);
    // One bounds check per tile: the farthest input float and gradient vector read below.
    assert!(p.oh > 0 && p.ow > 0);
    assert!(max_off + (p.oh - 1) * p.x_row + p.ow <= x.len());
    assert!(k0 + KV * LANES <= kpg && p.oh * p.ow * kpg <= dy.len());
    let (px, pd) = (x.as_ptr(), dy.as_ptr());
    for y in 0..p.oh {
        let xr = y * p.x_row;
        let dr = y * p.ow * kpg + k0;
        for xo in 0..p.ow {
            let mut d = [s.zero(); KV];
            for (v, dv) in d.iter_mut().enumerate() {
                // SAFETY: `dr + xo·kpg + v·8 + 8 ≤ (oh·ow − 1)·kpg + k0 + KV·8 ≤ oh·ow·kpg ≤
                // dy.len()` (asserted above).
                *dv = unsafe { s.load_ptr(pd.add(dr + xo * kpg + v * LANES)) };
            }
            for (row, &o) in a.iter_mut().zip(&off) {
                // SAFETY: `o + xr + xo < max_off + (oh−1)·x_row + ow ≤ x.len()` (asserted
                // above).
                let xv = s.splat(unsafe { *px.add(o + xr + xo) });
                for (av, &dv) in row.iter_mut().zip(&d) {
                    *av = s.fma(dv, xv, *av);
                }
            }
        }
    }
    for (mm, row) in a.iter().enumerate() {
        for (v, &av) in row.iter().enumerate() {
            s.store(av, &mut acc[(m0 + mm) * kpg + k0 + v * LANES..]);
        }
    }
}

/// Adds one image's weight gradient to the lane-wise accumulators `gwv` (8 floats per
/// weight element).
#[inline(always)]
fn weight_grad_image<S: Simd>(s: S, p: &Plan, xp: &[f32], dyf: &[f32], gwv: &mut [f32]) {
    let taps = p.taps();
    // Channel blocks that divide the group's channels, so that no thin tail block runs.
    let kb_main = if p.kpg.is_multiple_of(3) {
        3
    } else if p.kpg.is_multiple_of(2) {
        2
    } else {
        p.kpg.min(3)
    };
    let tb_main = taps.min(12 / kb_main);
    for grp in 0..p.groups {
        for c in 0..p.cpg {
            let ci = grp * p.cpg + c;
            let x_plane = &xp[ci * p.xp_plane..];
            let mut k = 0;
            while k < p.kpg {
                let kb = kb_main.min(p.kpg - k);
                let ko = grp * p.kpg + k;
                let dy_planes = &dyf[ko * p.dy_plane..];
                let mut t0 = 0;
                while t0 < taps {
                    let tb = tb_main.min(taps - t0);
                    let at = WgAt { t0, tb, acc0: ((ko * p.cpg + c) * taps + t0) * LANES };
                    wg_dispatch(s, p, x_plane, dy_planes, gwv, at, kb);
                    t0 += tb;
                }
                k += kb;
            }
        }
    }
}

/// A weight-gradient tile: taps `t0..t0+tb` of one input channel; `acc0` is the index in the
/// lane accumulators of its first channel's first tap.
#[derive(Clone, Copy)]
struct WgAt {
    t0: usize,
    tb: usize,
    acc0: usize,
}

/// Picks the monomorphized weight-gradient micro-kernel for `kb` channels × `at.tb` taps.
#[inline(always)]
fn wg_dispatch<S: Simd>(
    s: S,
    p: &Plan,
    x: &[f32],
    dy: &[f32],
    gwv: &mut [f32],
    at: WgAt,
    kb: usize,
) {
    match (kb, at.tb) {
        (1, 1) => wg_tile::<S, 1, 1>(s, p, x, dy, gwv, at),
        (1, 2) => wg_tile::<S, 1, 2>(s, p, x, dy, gwv, at),
        (1, 3) => wg_tile::<S, 1, 3>(s, p, x, dy, gwv, at),
        (1, 4) => wg_tile::<S, 1, 4>(s, p, x, dy, gwv, at),
        (1, 5) => wg_tile::<S, 1, 5>(s, p, x, dy, gwv, at),
        (1, 6) => wg_tile::<S, 1, 6>(s, p, x, dy, gwv, at),
        (1, 7) => wg_tile::<S, 1, 7>(s, p, x, dy, gwv, at),
        (1, 8) => wg_tile::<S, 1, 8>(s, p, x, dy, gwv, at),
        (1, 9) => wg_tile::<S, 1, 9>(s, p, x, dy, gwv, at),
        (1, 10) => wg_tile::<S, 1, 10>(s, p, x, dy, gwv, at),
        (1, 11) => wg_tile::<S, 1, 11>(s, p, x, dy, gwv, at),
        (1, 12) => wg_tile::<S, 1, 12>(s, p, x, dy, gwv, at),
        (2, 1) => wg_tile::<S, 2, 1>(s, p, x, dy, gwv, at),
        (2, 2) => wg_tile::<S, 2, 2>(s, p, x, dy, gwv, at),
        (2, 3) => wg_tile::<S, 2, 3>(s, p, x, dy, gwv, at),
        (2, 4) => wg_tile::<S, 2, 4>(s, p, x, dy, gwv, at),
        (2, 5) => wg_tile::<S, 2, 5>(s, p, x, dy, gwv, at),
        (2, 6) => wg_tile::<S, 2, 6>(s, p, x, dy, gwv, at),
        (3, 1) => wg_tile::<S, 3, 1>(s, p, x, dy, gwv, at),
        (3, 2) => wg_tile::<S, 3, 2>(s, p, x, dy, gwv, at),
        (3, 3) => wg_tile::<S, 3, 3>(s, p, x, dy, gwv, at),
        (3, 4) => wg_tile::<S, 3, 4>(s, p, x, dy, gwv, at),
        // Not produced by the blocking above; one channel and one tap at a time covers it.
        (kb, tb) => {
            let per_k = p.cpg * p.taps() * LANES;
            for kk in 0..kb {
                for t in 0..tb {
                    let one = WgAt { t0: at.t0 + t, tb: 1, acc0: at.acc0 + kk * per_k + t * LANES };
                    wg_tile::<S, 1, 1>(s, p, x, &dy[kk * p.dy_plane..], gwv, one);
                }
            }
        }
    }
}

/// Weight-gradient micro-kernel: `KB` output channels (planes of `dy`, `dy_plane` apart) ×
/// `TB` taps of one input channel (padded plane `x`) over one image, added to the lane
/// accumulators `gwv` (channel `kk`, tap `t` at `acc0 + (kk·cpg·taps + t)·8`).
#[inline(always)]
fn wg_tile<S: Simd, const KB: usize, const TB: usize>(
    s: S,
    p: &Plan,
    x: &[f32],
    dy: &[f32],
    gwv: &mut [f32],
    at: WgAt,
) {
    let per_k = p.cpg * p.taps() * LANES;
    let mut acc = [[s.zero(); TB]; KB];
    for (kk, a) in acc.iter_mut().enumerate() {
        for (t, av) in a.iter_mut().enumerate() {
            *av = s.load(&gwv[at.acc0 + kk * per_k + t * LANES..]);
        }
    }
    let mut off = [0usize; TB];
    off.copy_from_slice(&p.w_offs[at.t0..at.t0 + TB]);
    let max_off = off.iter().copied().max().unwrap_or(0);
    let span = p.w_nvec * LANES;
    // One bounds check per tile: the farthest float any load below reads.
    assert!((p.w_rows - 1) * p.x_rs + span + max_off <= x.len());
    assert!((KB - 1) * p.dy_plane + (p.w_rows - 1) * p.dy_rs + span <= dy.len());
    let (px, pd) = (x.as_ptr(), dy.as_ptr());
    for r in 0..p.w_rows {
        let (xr, dr) = (r * p.x_rs, r * p.dy_rs);
        for v in 0..p.w_nvec {
            let q = v * LANES;
            let mut dv = [s.zero(); KB];
            for (kk, d) in dv.iter_mut().enumerate() {
                // SAFETY: `kk·dy_plane + dr + q + 8 ≤ (KB−1)·dy_plane + (rows−1)·dy_rs + span
                // ≤ dy.len()` (asserted above).
                *d = unsafe { s.load_ptr(pd.add(kk * p.dy_plane + dr + q)) };
            }
            for (t, &o) in off.iter().enumerate() {
                // SAFETY: `xr + q + o + 8 ≤ (rows−1)·x_rs + span + max_off ≤ x.len()`
                // (asserted above).
                let xv = unsafe { s.load_ptr(px.add(xr + q + o)) };
                for (a, &d) in acc.iter_mut().zip(&dv) {
                    a[t] = s.fma(d, xv, a[t]);
                }
            }
        }
    }
    for (kk, a) in acc.iter().enumerate() {
        for (t, &av) in a.iter().enumerate() {
            s.store(av, &mut gwv[at.acc0 + kk * per_k + t * LANES..]);
        }
    }
}

/// Writes one image's input gradient `gx_img` (`[c_in, h, w]`) from its stuffed output
/// gradient planes `dys`; `dxf` is the flat scratch of one group's channels.
#[inline(always)]
fn input_grad_image<S: Simd>(
    s: S,
    p: &Plan,
    dys: &[f32],
    wr: &[f32],
    dxf: &mut [f32],
    gx_img: &mut [f32],
) {
    let taps = p.taps();
    let (cb_main, xb_main) = (p.g_cb, p.g_xb);
    // Runs of vectors: each row from its start (row mode), or the whole plane as one.
    let (runs, run_pitch, run_nvec) =
        if p.g_rowwise { (p.h, p.lg, p.g_row_nvec) } else { (1, 0, p.g_nvec) };
    for grp in 0..p.groups {
        let dy_g = &dys[grp * p.kpg * p.g_plane..];
        let wr_g = &wr[grp * p.kpg * taps * p.cpg..][..p.kpg * taps * p.cpg];
        let mut c0 = 0;
        while c0 < p.cpg {
            let cb = cb_main.min(p.cpg - c0);
            for run in 0..runs {
                let taps = if p.g_rowwise { row_taps(p, run) } else { (0, taps) };
                let mut v0 = 0;
                while v0 < run_nvec {
                    let xb = xb_main.min(run_nvec - v0);
                    let at = GiAt { c0, q0: run * run_pitch + v0 * LANES, taps };
                    gi_dispatch(s, p, dy_g, wr_g, dxf, at, cb, xb);
                    v0 += xb;
                }
            }
            c0 += cb;
        }
        let gx_g = &mut gx_img[grp * p.cpg * p.h * p.w..][..p.cpg * p.h * p.w];
        for (dst, src) in gx_g.chunks_exact_mut(p.h * p.w).zip(dxf.chunks_exact(p.g_flat)) {
            for (u, row) in dst.chunks_exact_mut(p.w).enumerate() {
                row.copy_from_slice(&src[u * p.lg..][..p.w]);
            }
        }
    }
}

/// The rotated taps that input row `u` needs: rows `i'` whose stuffed gradient row
/// `u + ph + i'·dh` lies within the rows `Ah ..= Ah + (oh−1)·sh` that hold the output
/// gradient (the others are zero padding), as a range of taps `i'·kw + j'`.
fn row_taps(p: &Plan, u: usize) -> (usize, usize) {
    let (lo, hi) = (p.g_origin / p.lg, p.g_origin / p.lg + (p.oh - 1) * p.sh);
    let r0 = u + p.ph;
    // First i' with r0 + i'·dh ≥ lo, and one past the last with r0 + i'·dh ≤ hi.
    let i_lo = lo.saturating_sub(r0).div_ceil(p.dh).min(p.kh);
    let i_hi = if r0 > hi { 0 } else { ((hi - r0) / p.dh + 1).min(p.kh) };
    let i_hi = i_hi.max(i_lo);
    (i_lo * p.kw, i_hi * p.kw)
}

/// Where an input-gradient tile sits: channels from `c0`, vectors from float `q0` of the flat
/// planes.
#[derive(Clone, Copy)]
struct GiAt {
    c0: usize,
    q0: usize,
    /// Rotated taps `taps.start..taps.end` (row `i'` major) that can read a non-zero gradient.
    taps: (usize, usize),
}

/// Picks the monomorphized input-gradient micro-kernel for `cb` channels × `xb` vectors.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gi_dispatch<S: Simd>(
    s: S,
    p: &Plan,
    dy: &[f32],
    wr: &[f32],
    out: &mut [f32],
    t: GiAt,
    cb: usize,
    xb: usize,
) {
    match (cb, xb) {
        (1, 1) => gi_tile::<S, 1, 1>(s, p, dy, wr, out, t),
        (1, 2) => gi_tile::<S, 1, 2>(s, p, dy, wr, out, t),
        (1, 3) => gi_tile::<S, 1, 3>(s, p, dy, wr, out, t),
        (1, 4) => gi_tile::<S, 1, 4>(s, p, dy, wr, out, t),
        (1, 5) => gi_tile::<S, 1, 5>(s, p, dy, wr, out, t),
        (1, 6) => gi_tile::<S, 1, 6>(s, p, dy, wr, out, t),
        (1, 7) => gi_tile::<S, 1, 7>(s, p, dy, wr, out, t),
        (1, 8) => gi_tile::<S, 1, 8>(s, p, dy, wr, out, t),
        (2, 1) => gi_tile::<S, 2, 1>(s, p, dy, wr, out, t),
        (2, 2) => gi_tile::<S, 2, 2>(s, p, dy, wr, out, t),
        (2, 3) => gi_tile::<S, 2, 3>(s, p, dy, wr, out, t),
        (2, 4) => gi_tile::<S, 2, 4>(s, p, dy, wr, out, t),
        (2, 5) => gi_tile::<S, 2, 5>(s, p, dy, wr, out, t),
        (2, 6) => gi_tile::<S, 2, 6>(s, p, dy, wr, out, t),
        (3, 1) => gi_tile::<S, 3, 1>(s, p, dy, wr, out, t),
        (3, 2) => gi_tile::<S, 3, 2>(s, p, dy, wr, out, t),
        (3, 3) => gi_tile::<S, 3, 3>(s, p, dy, wr, out, t),
        (3, 4) => gi_tile::<S, 3, 4>(s, p, dy, wr, out, t),
        (4, 1) => gi_tile::<S, 4, 1>(s, p, dy, wr, out, t),
        (4, 2) => gi_tile::<S, 4, 2>(s, p, dy, wr, out, t),
        (5, 1) => gi_tile::<S, 5, 1>(s, p, dy, wr, out, t),
        (5, 2) => gi_tile::<S, 5, 2>(s, p, dy, wr, out, t),
        (6, 1) => gi_tile::<S, 6, 1>(s, p, dy, wr, out, t),
        (6, 2) => gi_tile::<S, 6, 2>(s, p, dy, wr, out, t),
        // Not produced by the blocking above; single-channel, single-vector tiles cover it.
        (cb, xb) => {
            for cc in 0..cb {
                for v in 0..xb {
                    let t1 = GiAt { c0: t.c0 + cc, q0: t.q0 + v * LANES, taps: t.taps };
                    gi_tile::<S, 1, 1>(s, p, dy, wr, out, t1);
                }
            }
        }
    }
}

/// Input-gradient micro-kernel: `CB` input channels from `c0` × `XB` vectors of the flat
/// input-gradient plane from float `q0`, summed over the group's output channels (stuffed
/// planes of `dy`) and rotated taps. Stores into the flat planes `out`.
#[inline(always)]
fn gi_tile<S: Simd, const CB: usize, const XB: usize>(
    s: S,
    p: &Plan,
    dy: &[f32],
    wr: &[f32],
    out: &mut [f32],
    t: GiAt,
) {
    let GiAt { c0, q0, taps: (t_lo, t_hi) } = t;
    let taps = p.taps();
    let mut acc = [[s.zero(); XB]; CB];
    let max_off = p.g_offs.iter().copied().max().unwrap_or(0);
    // One bounds check per tile: the farthest gradient float and the last weight read below.
    assert!((p.kpg - 1) * p.g_plane + max_off + q0 + XB * LANES <= dy.len());
    assert!(c0 + CB <= p.cpg && p.kpg * taps * p.cpg <= wr.len());
    assert!(t_lo <= t_hi && t_hi <= taps);
    let (pd, pw) = (dy.as_ptr(), wr.as_ptr());
    for k in 0..p.kpg {
        let plane = k * p.g_plane + q0;
        let mut wrow = (k * taps + t_lo) * p.cpg + c0;
        for &off in &p.g_offs[t_lo..t_hi] {
            let mut xs = [s.zero(); XB];
            for (v, xv) in xs.iter_mut().enumerate() {
                // SAFETY: `plane + off + v·8 + 8 ≤ (kpg−1)·g_plane + max_off + q0 + XB·8 ≤
                // dy.len()` (asserted above).
                *xv = unsafe { s.load_ptr(pd.add(plane + off + v * LANES)) };
            }
            for (cc, a) in acc.iter_mut().enumerate() {
                // SAFETY: `wrow = (k·taps + tap)·cpg + c0` with `tap < t_hi ≤ taps`, so
                // `wrow + cc < (kpg·taps)·cpg ≤ wr.len()` because `c0 + CB ≤ cpg` (asserted
                // above).
                let wv = s.splat(unsafe { *pw.add(wrow + cc) });
                for (av, &xv) in a.iter_mut().zip(&xs) {
                    *av = s.fma(xv, wv, *av);
                }
            }
            wrow += p.cpg;
        }
    }
    for (cc, a) in acc.iter().enumerate() {
        let dst = &mut out[(c0 + cc) * p.g_flat + q0..];
        for (v, &av) in a.iter().enumerate() {
            s.store(av, &mut dst[v * LANES..]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Conv2dParams, conv2d_backward_naive};

    fn ints(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7 + seed * 3) % 5) as f32 - 2.0).collect()
    }

    /// Shapes on the output-channel-vector weight gradient (`kpg` a multiple of 8) and on the
    /// row-by-row input gradient, with the paths they take asserted.
    fn kvec_and_row_cases() -> Vec<(Conv2dParams, [usize; 4], [usize; 4])> {
        let p = Conv2dParams::default();
        let cases = vec![
            // LeNet's second layer, smaller batch: both paths.
            (p, [2, 6, 14, 14], [16, 6, 5, 5]),
            (p.with_padding(1), [2, 6, 13, 15], [16, 6, 5, 5]),
            (p.with_dilation(2).with_padding(2), [1, 5, 14, 16], [24, 5, 3, 3]),
            (Conv2dParams { padding: (1, 3), ..p }, [1, 3, 9, 30], [8, 3, 5, 5]),
            (p.with_groups(2).with_padding(1), [2, 8, 10, 9], [16, 4, 3, 3]),
            (p.with_stride(2).with_padding(1), [1, 4, 11, 12], [8, 4, 3, 3]),
            (Conv2dParams { stride: (1, 3), dilation: (2, 1), ..p }, [1, 2, 12, 17], [8, 2, 3, 4]),
        ];
        for &(params, xd, wd) in &cases {
            let g = ConvGeometry::new(xd, wd, params).unwrap();
            assert!(Plan::new(&g, true, true, true).kvec, "{g:?}");
        }
        for &(params, xd, wd) in &cases[..4] {
            let g = ConvGeometry::new(xd, wd, params).unwrap();
            assert!(Plan::new(&g, true, true, true).g_rowwise, "{g:?}");
        }
        cases
    }

    /// Small integers: every product and sum is exact, so the gradients equal the reference.
    #[test]
    fn exact_on_small_integers() {
        let p = Conv2dParams::default();
        let cases = [
            (p, [2, 3, 7, 9], [4, 3, 3, 3]),
            (p.with_padding(2), [1, 1, 12, 12], [6, 1, 5, 5]),
            (
                Conv2dParams { stride: (2, 3), padding: (1, 2), dilation: (2, 1), groups: 2 },
                [2, 4, 11, 13],
                [6, 2, 3, 2],
            ),
            (p.with_groups(4).with_padding(1), [3, 4, 6, 6], [4, 1, 3, 3]),
            (p.with_dilation(2).with_padding(3), [1, 2, 5, 9], [3, 2, 3, 4]),
            // Depthwise 3x3 stride 1: the input gradient runs the forward depthwise path.
            (p.with_groups(3).with_padding(1), [2, 3, 9, 10], [3, 1, 3, 3]),
            (p.with_groups(3).with_padding(1), [2, 3, 5, 8], [3, 1, 3, 3]),
            (p.with_groups(2), [1, 2, 10, 12], [2, 1, 3, 3]),
            (p.with_groups(2).with_padding(2), [1, 2, 8, 9], [2, 1, 3, 3]),
            (Conv2dParams { padding: (2, 0), ..p.with_groups(2) }, [1, 2, 6, 11], [2, 1, 3, 3]),
            (Conv2dParams { padding: (0, 2), ..p.with_groups(2) }, [1, 2, 6, 11], [2, 1, 3, 3]),
        ];
        for (params, xd, wd) in cases.into_iter().chain(kvec_and_row_cases()) {
            let g = ConvGeometry::new(xd, wd, params).unwrap();
            let (x, w, dy) =
                (ints(g.input_len(), 1), ints(g.weight_len(), 2), ints(g.output_len(), 3));
            let mut want =
                (vec![0.0; g.input_len()], vec![0.0; g.weight_len()], vec![0.0; g.c_out]);
            conv2d_backward_naive(
                &g,
                &x,
                &w,
                &dy,
                Some(&mut want.0),
                Some(&mut want.1),
                Some(&mut want.2),
            )
            .unwrap();
            for level in SimdLevel::ALL {
                if !level.available() {
                    eprintln!("skipping {level}: not available on this CPU");
                    continue;
                }
                let mut got = (
                    vec![f32::NAN; g.input_len()],
                    vec![f32::NAN; g.weight_len()],
                    vec![f32::NAN; g.c_out],
                );
                conv2d_backward_direct_with(
                    level,
                    &g,
                    &x,
                    &w,
                    &dy,
                    Some(&mut got.0),
                    Some(&mut got.1),
                    Some(&mut got.2),
                )
                .unwrap();
                assert_eq!(got.0, want.0, "grad_input {level} {g:?}");
                assert_eq!(got.1, want.1, "grad_weight {level} {g:?}");
                assert_eq!(got.2, want.2, "grad_bias {level} {g:?}");
            }
        }
    }
}
