//! Backward of the direct convolution: input, weight and bias gradients computed straight
//! from padded copies of the operands with explicit SIMD, no column matrix.
//!
//! When `C/g·R·S` and `K/g` are small (LeNet's layers, depthwise) im2col/col2im's products are
//! thin and the column matrix is copied `R·S` times per pixel; these kernels read the operands
//! in place. The weight gradient is a correlation of the padded input with the output
//! gradient, the input gradient a "full" correlation of the stride-stuffed output gradient
//! with the 180°-rotated filters (`docs/convolution.md`, section 6, with the blocking).
//!
//! The batch is cut into at most [`WEIGHT_GRAD_PARTIALS`] fixed chunks of consecutive images
//! (depending only on `n`); each task accumulates its own partial weight and bias gradients
//! and the partials are summed in a fixed pairwise order (`params::fill_and_sum_partials`),
//! so every gradient is bit-identical for any number of threads. At the AVX-512 level the
//! input-gradient tiles and the channel-vectorized weight-gradient tiles run 16-lane vectors
//! where a tile spans two 8-lane ones; a lane's sum is the same there, so the bits are those
//! of the AVX2 level. The pixel-vectorized weight gradient (`kpg` not a multiple of 8, such as
//! lenet_c1's 6) runs pairs of output channels in one 16-lane accumulator there, each half
//! the 8 lane sums of one channel (the same bits again). Input-gradient tiles of 4 to 6 channels take two such vectors there, for
//! enough independent sums to hide the multiply-add latency; when a row is one vector the two
//! are the same vector of two rows, over the taps either row needs, and the taps only one row
//! needs add products of the zero padding (`+0`), which leave the sums unchanged for finite
//! weights (lenet_c2's input gradient: 0.29 → 0.23 ms on one Zen 5 core).
//!
//! ## Layout
//! | file | what |
//! |---|---|
//! | `mod.rs` | entry points, the per-call `Plan`, the per-chunk task, operand copies |
//! | `weight.rs` | the weight-gradient tiles (vectorized over pixels or over output channels) |
//! | `input.rs` | the input-gradient tiles (flat planes or row by row) |

use crate::error::Result;
use crate::layout::ChannelLast;
use crate::params::{
    BackwardInputs, ConvGeometry, GradBuffers, WEIGHT_GRAD_PARTIALS, fill_and_sum_partials,
};
use crate::simd::{self, LANES, Simd, SimdLevel, WithSimd};

mod input;
mod weight;

use input::input_grad_image;
use weight::{weight_grad_image, weight_grad_image_kvec};

const OP: &str = "conv2d_backward_direct";

/// Below this many forward FLOPs the work runs on the calling thread.
const PARALLEL_MIN_FLOPS: u64 = 4_000_000;

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
    x: BackwardInputs<'_>,
    grads: GradBuffers<'_>,
) -> Result<()> {
    conv2d_backward_direct_with(simd::active(), g, x, grads)
}

/// [`conv2d_backward_direct`] with an explicit instruction set, so tests and benchmarks can run
/// the AVX2 and portable kernels side by side. Returns [`ConvError::Unsupported`] when this CPU
/// cannot run `level`.
///
/// [`ConvError::Unsupported`]: crate::ConvError::Unsupported
pub fn conv2d_backward_direct_with(
    level: SimdLevel,
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    grads: GradBuffers<'_>,
) -> Result<()> {
    backward_direct(level, g, x, None, grads)
}

/// [`conv2d_backward_direct_with`] of a convolution followed by a ReLU: the gradient passes
/// only where `relu_output` (the ReLU's output, `grad_output`'s shape, length checked by the
/// caller) is above zero. Each task masks an image's output gradient into a scratch plane as
/// it starts on it, so no masked copy of the whole gradient is made; the gradients are those
/// of the masked gradient, bit for bit.
pub(crate) fn conv2d_relu_backward_direct(
    level: SimdLevel,
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    relu_output: &[f32],
    grads: GradBuffers<'_>,
) -> Result<()> {
    if is_depthwise3(g) {
        // The depthwise kernels read the gradient in place: mask it first.
        let masked = crate::algo::relu_masked(x.grad_output, relu_output);
        return backward_direct(
            level,
            g,
            BackwardInputs { grad_output: &masked, ..x },
            None,
            grads,
        );
    }
    backward_direct(level, g, x, Some(relu_output), grads)
}

/// Whether the depthwise 3x3 kernels may take a gradient (`crate::direct::depthwise3_*`,
/// which check the rest).
fn is_depthwise3(g: &ConvGeometry) -> bool {
    let p = g.params;
    let one = p.stride == (1, 1) && p.dilation == (1, 1);
    g.c_in_per_group() == 1 && g.c_out_per_group() == 1 && g.kh == 3 && g.kw == 3 && one
}

/// The backward, with the output gradient masked by `relu_output > 0` when it is given.
fn backward_direct(
    level: SimdLevel,
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    relu_output: Option<&[f32]>,
    grads: GradBuffers<'_>,
) -> Result<()> {
    g.check_backward(OP, &x, &grads)?;
    let BackwardInputs { input, weight, grad_output } = x;
    let GradBuffers { input: grad_input, weight: grad_weight, bias: grad_bias } = grads;
    level.require(OP, "direct")?;
    debug_assert!(relu_output.is_none_or(|y| y.len() == grad_output.len()));
    debug_assert!(relu_output.is_none() || !is_depthwise3(g));
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
    // Partials are at least one element long so that `chunks_mut` has a non-zero size;
    // partial 0 of the weight gradient is `gw` itself (a stand-in when it is not wanted).
    let wl = if plan.want_gw { g.weight_len() } else { 1 };
    let bl = if plan.want_gb { g.c_out } else { 1 };
    let mut spare = vec![0f32; (parts - 1) * wl];
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
    let tasks: Vec<_> = pb.chunks_mut(bl).zip(gx_parts).enumerate().collect();
    let (plan, wr) = (&plan, &wr[..]);
    let fill = |(p, (gb, gx)): (usize, (&mut [f64], Option<&mut [f32]>)), gw: &mut [f32]| {
        let task =
            Task { plan, input, dy: grad_output, relu_output, wr, images: chunk(p), gx, gw, gb };
        // `level` was checked above, so dispatch cannot decline.
        let _ = simd::dispatch(level, task);
    };
    let parallel = g.flops() >= PARALLEL_MIN_FLOPS;
    // The partial weight gradients, summed in `fill_and_sum_partials`' fixed order.
    let mut stand_in = [0f32];
    let gw = grad_weight.unwrap_or(&mut stand_in);
    fill_and_sum_partials(gw, &mut spare, tasks, parallel, &fill);
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
struct Plan<'g> {
    /// The geometry's own sizes (`h`, `ow`, …) come through `Deref`.
    g: &'g ConvGeometry,
    want_gx: bool,
    want_gw: bool,
    want_gb: bool,
    n_c_in: usize,
    cpg: usize,
    kpg: usize,
    groups: usize,
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
    ///
    /// [`wk_tile`]: weight::wk_tile
    kvec: bool,
    /// [`wk_tile`]'s rows `m = c·taps + t` of one group: offset of `Xp[c]`'s tap `t`.
    ///
    /// [`wk_tile`]: weight::wk_tile
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

impl std::ops::Deref for Plan<'_> {
    type Target = ConvGeometry;

    fn deref(&self) -> &ConvGeometry {
        self.g
    }
}

impl<'g> Plan<'g> {
    fn new(g: &'g ConvGeometry, want_gx: bool, want_gw: bool, want_gb: bool) -> Plan<'g> {
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
            g,
            want_gx,
            want_gw,
            want_gb,
            n_c_in: g.c_in,
            cpg: g.c_in_per_group(),
            kpg: g.c_out_per_group(),
            groups: p.groups,
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
    plan: &'a Plan<'a>,
    input: &'a [f32],
    dy: &'a [f32],
    /// The ReLU output that masks `dy`, when the convolution was followed by one.
    relu_output: Option<&'a [f32]>,
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
        let Task { plan: p, input, dy, relu_output, wr, images, mut gx, gw, gb } = self;
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
        // One image's masked output gradient, when a ReLU masks it.
        let mut dym = vec![0f32; if relu_output.is_some() { dy_len } else { 0 }];
        let first = images.start;
        for b in images {
            let x_img = &input[b * img_len..][..img_len];
            let mut dy_img = &dy[b * dy_len..][..dy_len];
            if let Some(y) = relu_output {
                mask_where_positive(s, &y[b * dy_len..][..dy_len], dy_img, &mut dym);
                dy_img = &dym;
            }
            if p.want_gb {
                simd::add_plane_sums_f64(dy_img, ohw, gb);
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

/// `out[i] = v[i]` where `z[i] > 0`, `+0.0` elsewhere (NaN in `z` included): ReLU's backward,
/// `z` being its output. The three slices have one length.
#[inline(always)]
fn mask_where_positive<S: Simd>(s: S, z: &[f32], v: &[f32], out: &mut [f32]) {
    let n = out.len();
    let whole = n - n % LANES;
    for j in (0..whole).step_by(LANES) {
        s.store(s.keep_where_positive(s.load(&z[j..]), s.load(&v[j..])), &mut out[j..]);
    }
    for ((o, &zv), &vv) in out[whole..].iter_mut().zip(&z[whole..n]).zip(&v[whole..n]) {
        *o = if zv > 0.0 { vv } else { 0.0 };
    }
}

/// Copies one image's input channels into the padded (phase-split when strided) planes.
#[inline(always)]
fn fill_padded_input(p: &Plan<'_>, x_img: &[f32], xp: &mut [f32]) {
    for (plane, src) in xp.chunks_exact_mut(p.xp_plane).zip(x_img.chunks_exact(p.h * p.w)) {
        for (r, s_row) in src.chunks_exact(p.w).enumerate() {
            let row = &mut plane[(r + p.ph()) * p.row_len..][..p.row_len];
            if p.sw() == 1 {
                row[p.pw()..p.pw() + p.w].copy_from_slice(s_row);
            } else {
                for (x, &v) in s_row.iter().enumerate() {
                    let xq = x + p.pw();
                    row[(xq % p.sw()) * p.lph + xq / p.sw()] = v;
                }
            }
        }
    }
}

/// Copies one image's output gradient into the zero-stuffed, padded planes.
#[inline(always)]
fn fill_stuffed(p: &Plan<'_>, dy_img: &[f32], dys: &mut [f32]) {
    for (plane, src) in dys.chunks_exact_mut(p.g_plane).zip(dy_img.chunks_exact(p.oh * p.ow)) {
        for (y, s_row) in src.chunks_exact(p.ow).enumerate() {
            let start = p.g_origin + y * p.sh() * p.lg;
            if p.sw() == 1 {
                plane[start..start + p.ow].copy_from_slice(s_row);
            } else {
                for (x, &v) in s_row.iter().enumerate() {
                    plane[start + x * p.sw()] = v;
                }
            }
        }
    }
}

/// Copies one image's output gradient pixel-major within each group:
/// `dyt[(grp·oh·ow + q)·kpg + k] = dY[grp·kpg + k, q]` (`kpg` a multiple of 8): each group's
/// planes copied channel-last by 8×8 register transposes.
#[inline(always)]
fn fill_pixel_major<S: Simd>(s: S, p: &Plan<'_>, dy_img: &[f32], dyt: &mut [f32]) {
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
                BackwardInputs { input: &x, weight: &w, grad_output: &dy },
                GradBuffers {
                    input: Some(&mut want.0),
                    weight: Some(&mut want.1),
                    bias: Some(&mut want.2),
                },
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
                    BackwardInputs { input: &x, weight: &w, grad_output: &dy },
                    GradBuffers {
                        input: Some(&mut got.0),
                        weight: Some(&mut got.1),
                        bias: Some(&mut got.2),
                    },
                )
                .unwrap();
                assert_eq!(got.0, want.0, "grad_input {level} {g:?}");
                assert_eq!(got.1, want.1, "grad_weight {level} {g:?}");
                assert_eq!(got.2, want.2, "grad_bias {level} {g:?}");
            }
        }
    }
}
