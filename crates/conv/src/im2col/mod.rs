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
//! How `col` is built depends on the output width. Rows of 64 pixels or more (20 on AMD Zen,
//! whose gathers are microcoded) are copied as runs (one per output row and tap). Narrower
//! outputs, where those runs are short and split at every panel edge, are built by masked
//! gathers: a [`GatherPlan`], made once per call from the geometry alone, holds for each
//! 16-pixel panel and tap the 16 input offsets and which of them lie inside the image, so each
//! 16-float step of the matrix is two 8-lane gathers whatever the stride, padding or dilation.
//! The forward and the weight gradient use it.
//!
//! A 1x1 kernel with stride 1 and no padding needs no column matrix: the input plane block
//! `[C', H·W]` *is* `col`, and `d in` is the product itself; its backward takes the images one
//! at a time, each chunk of the batch a task that computes the bias sums, `d in` and the
//! weight-gradient product of an image while its `dY` is in cache (the same sums in the same
//! order as three separate passes, 1–3% faster on the suite's `pointwise` shape). When a group
//! has at most [`SMALL_DIM`] output channels (depthwise), the products skip `sgemm` for
//! scaled-row updates and dot products ([`gemm_rows`], [`gemm_abt_dots`]); the choice depends
//! on the shape only.
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
//! summed in a fixed pairwise order (`params::fill_and_sum_partials`: each half of the chunks,
//! then the halves). Every gradient is therefore bit-identical for any number of threads.
//!
//! ## Layout
//! | file | what |
//! |---|---|
//! | `mod.rs` | the lowering: column-matrix rows (copies or gathers), packed-B panels, col2im, the shared `Dims` |
//! | `forward.rs` | the forward: weights packed once per call, one product per image and group |
//! | `backward.rs` | the bias, input (product + col2im) and weight (fixed-order sum) gradients |
//!
//! [`PackedA`]: crate::gemm::PackedA
//! [`sgemm_packed_ab`]: crate::gemm::sgemm_packed_ab
//! [`sgemm`]: crate::gemm::sgemm
//! [`SMALL_DIM`]: crate::gemm::SMALL_DIM
//! [`gemm_rows`]: crate::gemm::gemm_rows
//! [`gemm_abt_dots`]: crate::gemm::gemm_abt_dots
//! [`WEIGHT_GRAD_PARTIALS`]: crate::params::WEIGHT_GRAD_PARTIALS

use rayon::prelude::*;

use crate::gemm::{MR, MatRef, NR, PackedA, SMALL_DIM, packed_b_len, sgemm_packed_a};
use crate::params::ConvGeometry;
use crate::scratch;
use crate::simd::{self, LANES, Simd, WithSimd};

mod backward;
mod forward;

pub use backward::conv2d_backward_im2col;
pub use forward::conv2d_im2col;
use forward::{put_packs, take_packs};

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
/// (the adjoint of [`im2col_plane`]), in a fixed order: each input element receives its taps
/// in increasing tap order.
///
/// A strided layer's taps land on every `s`-th input column, so adding them in place would be
/// an element-by-element scatter. Instead each tap's rows are added as contiguous runs into
/// `phases` (scratch, resized): the padded input split into its `sh·sw` stride phases, where
/// output `(y, x)` of tap `(i, j)` is element `(y + i·dh / sh, x + j·dw / sw)` of phase
/// `(i·dh mod sh, j·dw mod sw)`. The phases are then interleaved back onto `plane` in one
/// pass. Every element gets the same additions in the same order as in place, so the bits
/// are those of the in-place loop.
#[inline(always)]
fn col2im_plane_add<S: Simd>(
    s: S,
    g: &ConvGeometry,
    rows: &[f32],
    plane: &mut [f32],
    phases: &mut Vec<f32>,
) {
    let p = g.params;
    let (ow, ohw) = (g.ow, g.oh * g.ow);
    let (sh, sw) = p.stride;
    if (sh, sw) == (1, 1) {
        for (t, row) in rows.chunks_exact(ohw).enumerate() {
            let (i, j) = (t / g.kw, t % g.kw);
            let (y0, y1) = valid_range(g.oh, g.h, 1, i * p.dilation.0, p.padding.0);
            let (x0, x1) = valid_range(ow, g.w, 1, j * p.dilation.1, p.padding.1);
            if x1 == x0 {
                continue;
            }
            let sx = x0 + j * p.dilation.1 - p.padding.1;
            for (y, src) in (y0..y1).zip(row[y0 * ow..y1 * ow].chunks_exact(ow)) {
                let iy = y + i * p.dilation.0 - p.padding.0;
                add_run(s, &mut plane[iy * g.w + sx..][..x1 - x0], &src[x0..x1]);
            }
        }
        return;
    }
    // Phase planes of `ph × pw` elements, `sh·sw` of them, phase `(qy, qx)` at `qy·sw + qx`.
    let ph = g.oh + (g.kh - 1) * p.dilation.0 / sh;
    let pw = ow + (g.kw - 1) * p.dilation.1 / sw;
    let len = ph * pw;
    phases.clear();
    phases.resize(sh * sw * len, 0.0);
    for (t, row) in rows.chunks_exact(ohw).enumerate() {
        let (oy, ox) = ((t / g.kw) * p.dilation.0, (t % g.kw) * p.dilation.1);
        let phase = &mut phases[((oy % sh) * sw + ox % sw) * len..][..len];
        let (ay, ax) = (oy / sh, ox / sw);
        for (y, src) in row.chunks_exact(ow).enumerate() {
            add_run(s, &mut phase[(y + ay) * pw + ax..][..ow], src);
        }
    }
    // Input element (iy, ix) is padded element (iy + padding), in phase (py mod sh, px mod sw)
    // at (py / sh, px / sw); those past the phase planes were read by no tap. Each row takes
    // its `sw` phase rows in turn, every `sw`-th element from one of them.
    let pad = p.padding.1;
    for (iy, out) in plane.chunks_exact_mut(g.w).enumerate() {
        let py = iy + p.padding.0;
        let (qy, ry) = (py % sh, py / sh);
        if ry >= ph {
            continue;
        }
        let row = |qx: usize| &phases[(qy * sw + qx) * len + ry * pw..][..pw];
        let mut done = 0;
        if sw == 2 {
            // Even input columns from one phase, odd ones from the other, as pairs (vector
            // loads and shuffles).
            let (even, odd) = (&row(pad % 2)[pad / 2..], &row((pad + 1) % 2)[pad.div_ceil(2)..]);
            for (pair, (e, o)) in out.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                pair[0] += *e;
                pair[1] += *o;
                done += 2;
            }
        }
        for (ix, v) in out.iter_mut().enumerate().skip(done) {
            let px = ix + pad;
            let rx = px / sw;
            if rx < pw {
                *v += row(px % sw)[rx];
            }
        }
    }
}

/// `dst[k] += src[k]` (equal lengths), eight at a time.
#[inline(always)]
fn add_run<S: Simd>(s: S, dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    let mut k = 0;
    while k + LANES <= n {
        s.store(s.add(s.load(&dst[k..]), s.load(&src[k..])), &mut dst[k..]);
        k += LANES;
    }
    for (d, x) in dst[k..n].iter_mut().zip(&src[k..n]) {
        *d += *x;
    }
}

/// Zeroes `planes` (whole input planes) and adds the column-matrix rows `col` (`kh·kw` rows
/// per plane) back onto them: [`col2im_plane_add`] per plane, compiled for the active
/// instruction set.
fn col2im(g: &ConvGeometry, col: &[f32], planes: &mut [f32]) {
    simd::dispatch_active(Col2im { g, col, planes });
}

/// [`col2im`] for the SIMD dispatcher.
struct Col2im<'a> {
    g: &'a ConvGeometry,
    col: &'a [f32],
    planes: &'a mut [f32],
}

impl WithSimd for Col2im<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self { g, col, planes } = self;
        // Each plane's `kh·kw` rows of `oh·ow` floats.
        let (hw, per_plane) = (g.h * g.w, g.kh * g.kw * g.oh * g.ow);
        planes.fill(0.0);
        let mut phases = Vec::new();
        for (rows, plane) in col.chunks_exact(per_plane).zip(planes.chunks_exact_mut(hw)) {
            col2im_plane_add(s, g, rows, plane, &mut phases);
        }
    }
}

/// Builds the column matrix of `planes` (`C'` channels of one image) straight into the packed-B
/// layout and returns it (the front of `buf`): [`im2col_packed_in`] compiled for the active
/// instruction set, whose wide moves the many short copies of small planes need.
fn im2col_packed<'a>(g: &ConvGeometry, planes: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    let (start, len) = simd::dispatch_active(PackColumns { g, planes, buf: &mut *buf });
    &buf[start..start + len]
}

/// [`im2col_packed_in`] for the SIMD dispatcher; returns where in `buf` the matrix is.
struct PackColumns<'a> {
    g: &'a ConvGeometry,
    planes: &'a [f32],
    buf: &'a mut Vec<f32>,
}

impl WithSimd for PackColumns<'_> {
    type Output = (usize, usize);

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> (usize, usize) {
        let packed = im2col_packed_in(self.g, self.planes, self.buf);
        let (at, len) = (packed.as_ptr() as usize, packed.len());
        ((at - self.buf.as_ptr() as usize) / std::mem::size_of::<f32>(), len)
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
/// layout of [`sgemm_packed_ab`](crate::gemm::sgemm_packed_ab) (panels of [`NR`] output
/// pixels, each `C'RS` steps of `NR` floats) and returns it (the front of `buf`).
///
/// Row `(c, i, j)` of the matrix at output row `y` reads input row `y·sh + i·dh − ph` at
/// padded columns `x·sw + j·dw` for `x < ow`. The input row is copied once into a small
/// zero-padded buffer and split into its `sw` phases (phase `q` holds padded columns
/// `q + sw·k`); every tap `j` of the row is then the contiguous run of `ow` values that starts
/// at `k = j·dw / sw` of phase `j·dw mod sw`, copied straight into its panels. A strided layer
/// thus gathers each input row once instead of once per tap, and the large matrix is written
/// once and never re-read for packing.
#[inline(always)]
fn im2col_packed_in<'a>(g: &ConvGeometry, planes: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    let p = g.params;
    let (hw, ohw, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let crs = g.c_in_per_group() * taps;
    let plen = packed_b_len(crs, ohw);
    let (sw, dw, pw) = (p.stride.1, p.dilation.1, p.padding.1);
    // Padded columns read by a row, and the length of each of its `sw` phases.
    let span = (g.ow - 1) * sw + (g.kw - 1) * dw + 1;
    let phase_len = span.div_ceil(sw);
    let all = scratch::aligned(buf, plen + span.next_multiple_of(sw) + sw * phase_len);
    let (packed, rest) = all.split_at_mut(plen);
    let (padded, phases) = rest.split_at_mut(span.next_multiple_of(sw));
    // The last panel's lanes past the last pixel must be zero.
    if !ohw.is_multiple_of(NR) {
        packed[plen - crs * NR..].fill(0.0);
    }
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
                            put_run(packed, crs, r0 + j, p0 + chunk, &zeros[..n]);
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
                    put_run(packed, crs, r0 + j, p0, &row[start..start + g.ow]);
                }
            }
        }
    }
    &*packed
}

/// Copies `src`, pixels `p0..p0 + src.len()` of row `r` of a column matrix with `crs` rows,
/// into its packed-B panels.
#[inline(always)]
fn put_run(packed: &mut [f32], crs: usize, r: usize, p0: usize, src: &[f32]) {
    let mut pix = p0;
    let mut src = src;
    while !src.is_empty() {
        let lane = pix % NR;
        let n = (NR - lane).min(src.len());
        copy_short(&mut packed[(pix / NR) * crs * NR + r * NR + lane..][..n], &src[..n]);
        src = &src[n..];
        pix += n;
    }
}

/// `dst.copy_from_slice(src)` for runs of at most 16 floats (a row of a small output plane
/// into a panel): two possibly overlapping fixed-size moves of 8 or 4 floats, which compile to
/// a pair of vector loads and stores, instead of a call to `memcpy` or an element loop.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = src.len();
    debug_assert!(n <= 16 && dst.len() == n);
    fn pair<const W: usize>(dst: &mut [f32], src: &[f32]) {
        // Constant lengths: vector moves, not calls.
        let n = src.len();
        dst[..W].copy_from_slice(&src[..W]);
        dst[n - W..].copy_from_slice(&src[n - W..]);
    }
    if n >= 8 {
        pair::<8>(dst, src);
    } else if n >= 4 {
        pair::<4>(dst, src);
    } else {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = *v;
        }
    }
}

/// Output rows of this many pixels or more build the packed column matrix with row copies
/// ([`im2col_packed`]); narrower ones by gathers ([`im2col_gather`]). The weight gradient's
/// row-major matrix follows the same rule. Where the CPU's gathers are microcoded
/// ([`simd::slow_gathers`]: AMD Zen), [`SLOW_GATHER_MAX_WIDTH`] replaces it.
///
/// Gathers cost about the same per float at any width, while the copies pay per run: a run
/// per output row and tap, split again at each panel edge. Measured on the Xeon (2 threads,
/// AVX-512, forward time, copies against gathers): 64x16x28x28 → 32 stride 2 (rows of 14)
/// 1.08–1.13 against 0.71–0.90 ms; 8x64x56x56 → 64 (rows of 56) 9.9–10.0 against 8.4–8.6 ms;
/// but 8x3x112x112 → 32 (rows of 112) 1.20–1.29 against 1.43–1.49 ms and 8x3x224x224 → 64,
/// 7x7 stride 2 (rows of 112) 9.8–10.0 against 10.8–11.5 ms.
const GATHER_MAX_WIDTH: usize = 64;

/// [`GATHER_MAX_WIDTH`] on CPUs with slow gathers. Measured on a Zen 4 (AVX-512, median of 3–5
/// interleaved rounds, gathers ÷ copies, forward and backward): rows of 7 and 14 gather
/// faster (forward 0.81–0.89), rows of 28 copy faster (`strided`, 8x64x56x56 → 128 stride 2:
/// forward 1.28–1.30, backward 1.07; 64x8x28x28 → 32: forward 1.14, backward 1.24). Zen 5's
/// gathers are as slow (`strided`, one process alternating, medians of 60 calls: forward 8.14
/// against 5.17 ms, backward 11.38 against 10.25 ms on one thread).
const SLOW_GATHER_MAX_WIDTH: usize = 20;

/// The output width from which this CPU builds column matrices by copies.
fn gather_max_width() -> usize {
    if simd::slow_gathers() { SLOW_GATHER_MAX_WIDTH } else { GATHER_MAX_WIDTH }
}

/// Where every lane of the packed column matrix reads the input, for [`im2col_gather`]: for
/// each 16-pixel panel and each filter tap `(i, j)`, the offset in an input channel's plane of
/// each pixel's tap, and a bit per lane that is set when the tap lies inside the image (clear
/// in the padding and past the last pixel, where the lane is zero).
///
/// It depends on the geometry only, so a call builds it once for all its images and channels.
pub(super) struct GatherPlan {
    /// `[panel][tap]` rows of [`NR`] offsets (0 in lanes that read nothing).
    offsets: Vec<[i32; NR]>,
    /// `[panel][tap]` lane masks.
    valid: Vec<u16>,
    /// The plane length every valid offset is below (`h·w`).
    plane: usize,
    /// Filter taps per channel (`kh·kw`).
    taps: usize,
}

impl GatherPlan {
    /// The plan of `g`, or `None` when the copies of [`im2col_packed`] are faster (output rows
    /// of [`gather_max_width`] pixels or more) or a plane is too large for 32-bit offsets.
    pub(super) fn new(g: &ConvGeometry) -> Option<GatherPlan> {
        if g.ow >= gather_max_width() { None } else { Self::build(g) }
    }

    /// The plan of `g` whatever its width (`None` when a plane is too large for 32-bit
    /// offsets).
    fn build(g: &ConvGeometry) -> Option<GatherPlan> {
        let p = g.params;
        let plane = g.h * g.w;
        i32::try_from(plane).ok()?;
        let (ohw, taps) = (g.oh * g.ow, g.kh * g.kw);
        let panels = ohw.div_ceil(NR);
        let mut offsets = vec![[0i32; NR]; panels * taps];
        let mut valid = vec![0u16; panels * taps];
        for pj in 0..panels {
            for t in 0..taps {
                let (i, j) = (t / g.kw, t % g.kw);
                let (row, bits) = (&mut offsets[pj * taps + t], &mut valid[pj * taps + t]);
                for (l, off) in row.iter_mut().enumerate() {
                    let pix = pj * NR + l;
                    if pix >= ohw {
                        break;
                    }
                    let (y, x) = (pix / g.ow, pix % g.ow);
                    let iy = (y * p.stride.0 + i * p.dilation.0).checked_sub(p.padding.0);
                    let ix = (x * p.stride.1 + j * p.dilation.1).checked_sub(p.padding.1);
                    if let (Some(iy), Some(ix)) = (iy, ix)
                        && iy < g.h
                        && ix < g.w
                    {
                        // Below `plane`, which fits in an i32 (checked above).
                        *off = (iy * g.w + ix) as i32;
                        *bits |= 1 << l;
                    }
                }
            }
        }
        Some(GatherPlan { offsets, valid, plane, taps })
    }
}

/// [`im2col_packed`] by gathers: builds the column matrix of `planes` (`C'` channels of one
/// image) into the packed-B layout panel by panel, each 16-float step of a panel two masked
/// 8-lane gathers through `plan`, and returns it (the front of `buf`). Every step is written
/// whole and in order, so no run arithmetic, zero fill or second pass is needed, whatever the
/// stride, padding or dilation. With `parallel`, the panels are split over the threads.
fn im2col_gather<'a>(
    g: &ConvGeometry,
    plan: &GatherPlan,
    planes: &[f32],
    buf: &'a mut Vec<f32>,
    parallel: bool,
) -> &'a [f32] {
    let crs = g.c_in_per_group() * g.kh * g.kw;
    let packed = scratch::aligned(buf, packed_b_len(crs, g.oh * g.ow));
    let fill = |first: usize, out: &mut [f32]| {
        simd::dispatch_active(GatherPanels { g, plan, planes, first, out });
    };
    if parallel {
        packed.par_chunks_mut(crs * NR).enumerate().for_each(|(pj, out)| fill(pj, out));
    } else {
        fill(0, packed);
    }
    packed
}

/// `dst[l] = plane[offs[l]]` for the 16 lanes `l` whose bit is set in `bits`, zero for the
/// others: two masked 8-lane gathers.
///
/// # Panics
/// When `dst` is shorter than 16 floats or `plane` is not the plane of a [`GatherPlan`]
/// whose row `offs`, `bits` are: the caller asserts `plan.plane == plane.len()`.
#[inline(always)]
fn gather_step<S: Simd>(s: S, plane: &[f32], offs: &[i32; NR], bits: u16, dst: &mut [f32]) {
    for (h, half) in dst[..NR].chunks_exact_mut(LANES).enumerate() {
        let idx: &[i32; LANES] = offs[h * LANES..][..LANES].try_into().expect("8 offsets");
        let lanes = (bits >> (h * LANES)) as u8;
        // SAFETY: the plan holding `offs` and `bits` was built for a plane of `plane.len()`
        // floats (asserted by the callers): every lane whose bit is set has an offset below
        // it, so it reads inside `plane`; clear lanes read nothing.
        let v = unsafe { s.gather_ptr(plane.as_ptr(), idx, lanes) };
        s.store(v, half);
    }
}

/// The row-major column matrix of `planes` (`C'` channels of one image) by gathers through
/// `plan`, into `col` (resized): `C'RS` rows of `⌈OH·OW / 16⌉·16` floats (the row stride,
/// returned), the lanes past the last pixel zero.
fn im2col_gather_rows(
    g: &ConvGeometry,
    plan: &GatherPlan,
    planes: &[f32],
    col: &mut Vec<f32>,
) -> usize {
    let ld = (g.oh * g.ow).next_multiple_of(NR);
    col.resize(g.c_in_per_group() * g.kh * g.kw * ld, 0.0);
    simd::dispatch_active(GatherRows { g, plan, planes, col, ld });
    ld
}

/// [`im2col_gather_rows`] for the SIMD dispatcher.
struct GatherRows<'a> {
    g: &'a ConvGeometry,
    plan: &'a GatherPlan,
    planes: &'a [f32],
    col: &'a mut [f32],
    ld: usize,
}

impl WithSimd for GatherRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self { g, plan, planes, col, ld } = self;
        let (hw, taps) = (g.h * g.w, g.kh * g.kw);
        assert!(
            plan.plane == hw && plan.taps == taps && planes.len() * taps == col.len() / ld * hw
        );
        for (rows, plane) in col.chunks_exact_mut(taps * ld).zip(planes.chunks_exact(hw)) {
            for (t, row) in rows.chunks_exact_mut(ld).enumerate() {
                for (pj, step) in row.chunks_exact_mut(NR).enumerate() {
                    let k = pj * taps + t;
                    gather_step(s, plane, &plan.offsets[k], plan.valid[k], step);
                }
            }
        }
    }
}

/// Panels `first..` of [`im2col_gather`]'s matrix into `out` (whole panels), for the SIMD
/// dispatcher.
struct GatherPanels<'a> {
    g: &'a ConvGeometry,
    plan: &'a GatherPlan,
    planes: &'a [f32],
    first: usize,
    out: &'a mut [f32],
}

impl WithSimd for GatherPanels<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self { g, plan, planes, first, out } = self;
        let (hw, taps) = (g.h * g.w, g.kh * g.kw);
        let crs = g.c_in_per_group() * taps;
        assert!(plan.plane == hw && plan.taps == taps && planes.len() == crs / taps * hw);
        let rows = &plan.offsets[first * taps..];
        let bits = &plan.valid[first * taps..];
        for ((panel, offsets), valid) in
            out.chunks_exact_mut(crs * NR).zip(rows.chunks_exact(taps)).zip(bits.chunks_exact(taps))
        {
            for (steps, plane) in panel.chunks_exact_mut(taps * NR).zip(planes.chunks_exact(hw)) {
                for ((step, offs), &bits) in steps.chunks_exact_mut(NR).zip(offsets).zip(valid) {
                    gather_step(s, plane, offs, bits, step);
                }
            }
        }
    }
}

/// [`im2col_packed`] for one large image on all threads: the row-major column matrix is built
/// in parallel (at the front of `buf`), then packed panel by panel in parallel behind it.
fn im2col_packed_par<'a>(g: &ConvGeometry, planes: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    let ohw = g.oh * g.ow;
    let crs = g.c_in_per_group() * g.kh * g.kw;
    let (clen, plen) = (crs * ohw, packed_b_len(crs, ohw));
    let mut col = std::mem::take(buf);
    // Room for the panels to start on a 64-byte boundary, so that no vector load of them
    // straddles two cache lines; `im2col` resizes within it.
    col.reserve(clen + plen + scratch::LINE_FLOATS);
    im2col(g, planes, &mut col, true);
    let start = clen + scratch::line_gap(col[clen..].as_ptr());
    col.resize(start + plen, 0.0);
    let (rows, packed) = col.split_at_mut(start);
    let rows = &rows[..clen];
    packed.par_chunks_mut(crs * NR).enumerate().for_each(|(jp, panel)| {
        let j0 = jp * NR;
        let n = NR.min(ohw - j0);
        for (dst, row) in panel.chunks_exact_mut(NR).zip(rows.chunks_exact(ohw)) {
            dst[..n].copy_from_slice(&row[j0..j0 + n]);
            dst[n..].fill(0.0);
        }
    });
    *buf = col;
    &buf[start..start + plen]
}

/// The columns of a pointwise layer's planes past their last whole 16-column panel, when the
/// layer's products share them between images ([`edge_columns`]): a plane that is not a
/// multiple of 16 pays for a last B panel that is partly padding (a 14x14 plane is 12 panels
/// and 4 columns), which one product over the last columns of every image avoids. 0 where they
/// are not shared: one image, several groups, layers other than 1x1 at stride 1, whole panels,
/// or at most [`SMALL_DIM`] output channels (whose products skip the packed kernel).
fn shared_edge(g: &ConvGeometry, d: &Dims) -> usize {
    let packed = d.kpg > SMALL_DIM;
    if packed && d.pointwise && d.groups == 1 && g.n > 1 && d.ohw > NR { d.ohw % NR } else { 0 }
}

/// The last columns of every image's product in a pointwise layer (see [`shared_edge`]).
struct Edges<'a> {
    d: &'a Dims,
    /// The packed left factor of every image's product (one group).
    pack: &'a PackedA,
    /// One value per row of the products, added as they store.
    bias: Option<&'a [f32]>,
    /// The right factors, `[n][depth][ohw]`: the input (forward) or `dY` (input gradient).
    src: &'a [f32],
    depth: usize,
    /// Columns per image: the plane's last `rem` of `ohw`.
    rem: usize,
}

/// Columns `ohw − rem..` of every image's product as one: the images' last columns of `src`
/// side by side (`n · rem` columns), times the packed factor, copied back into each image's
/// rows of `output` (`[n][rows][ohw]`). Every output is still the sum of the same products in
/// the same order (columns of a product are independent, and the depth blocks depend only on
/// the depth), so the bits are those of each image's whole product.
fn edge_columns(e: &Edges<'_>, buf: &mut Vec<f32>, output: &mut [f32]) {
    let (d, rem, depth) = (e.d, e.rem, e.depth);
    let ohw = d.ohw;
    let n = e.src.len() / (depth * ohw);
    let rows = output.len() / (n * ohw);
    let cols = n * rem;
    let first = ohw - rem;
    let buf = scratch::aligned(buf, (depth + rows) * cols);
    let (be, ce) = buf.split_at_mut(depth * cols);
    // `be[k][b·rem + j]` = column `first + j` of row `k` of image `b`.
    for (b, x) in e.src.chunks_exact(depth * ohw).enumerate() {
        for (dst, row) in be.chunks_exact_mut(cols).zip(x.chunks_exact(ohw)) {
            dst[b * rem..][..rem].copy_from_slice(&row[first..]);
        }
    }
    let bm = MatRef::row_major(be, depth, cols);
    let product = |k0: usize, out: &mut [f32]| {
        let r = out.len() / cols;
        let bias = e.bias.map(|b| &b[k0..][..r]);
        sgemm_packed_a(1.0, e.pack, k0..k0 + r, bm, 0.0, bias, out, cols);
    };
    if d.par {
        let per = d.rows_per_block(rows).next_multiple_of(MR);
        ce.par_chunks_mut(per * cols).enumerate().for_each(|(r, out)| product(r * per, out));
    } else {
        product(0, ce);
    }
    for (b, out) in output.chunks_exact_mut(rows * ohw).enumerate() {
        for (row, src) in out.chunks_exact_mut(ohw).zip(ce.chunks_exact(cols)) {
            row[first..].copy_from_slice(&src[b * rem..][..rem]);
        }
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{BackwardInputs, Conv2dParams, GradBuffers, conv2d_backward_naive, conv2d_naive};

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
        let t = convkit_tensor::testing::Tolerance::absolute(0.0);
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

    /// The pointwise backward computing all three gradients at once (image by image) gives the
    /// bits of the separate passes that run when only one gradient is wanted, on one thread
    /// and on two (chunks of the batch in parallel), with one group and with two.
    #[test]
    fn fused_pointwise_backward_matches_separate_passes() {
        let p = Conv2dParams::default();
        for (input, weight, groups) in
            [([9, 24, 13, 11], [40, 24, 1, 1], 1), ([4, 16, 9, 9], [20, 8, 1, 1], 2)]
        {
            let g = ConvGeometry::new(input, weight, p.with_groups(groups)).unwrap();
            let x = crate::suite::sample_data(g.input_len(), 1);
            let w = crate::suite::sample_data(g.weight_len(), 2);
            let dy = crate::suite::sample_data(g.output_len(), 3);
            let inputs = BackwardInputs { input: &x, weight: &w, grad_output: &dy };
            let (mut gx, mut gw, mut gb) =
                (vec![0.0; g.input_len()], vec![0.0; g.weight_len()], vec![0.0; g.c_out]);
            let one = |gx: Option<&mut [f32]>, gw: Option<&mut [f32]>, gb: Option<&mut [f32]>| {
                let grads = GradBuffers { input: gx, weight: gw, bias: gb };
                conv2d_backward_im2col(&g, inputs, grads).unwrap();
            };
            one(Some(&mut gx), None, None);
            one(None, Some(&mut gw), None);
            one(None, None, Some(&mut gb));
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (mut fx, mut fw, mut fb) =
                    (vec![0.0; g.input_len()], vec![0.0; g.weight_len()], vec![0.0; g.c_out]);
                pool.install(|| one(Some(&mut fx), Some(&mut fw), Some(&mut fb)));
                assert!(fx == gx && fw == gw && fb == gb, "{g:?}, {threads} threads");
            }
        }
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

    /// The packed-B panels of a row-major column matrix `col` (`crs` rows, `ohw` columns).
    fn pack_panels(col: &[f32], crs: usize, ohw: usize) -> Vec<f32> {
        let mut out = vec![0.0; packed_b_len(crs, ohw)];
        for (pj, panel) in out.chunks_exact_mut(crs * NR).enumerate() {
            for (r, step) in panel.chunks_exact_mut(NR).enumerate() {
                for (l, v) in step.iter_mut().enumerate() {
                    if pj * NR + l < ohw {
                        *v = col[r * ohw + pj * NR + l];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_column_builder_gives_the_same_matrix() {
        // The row-major reference (`im2col`), its packing by hand, the run copies
        // (`im2col_packed`), and the gathers (packed, on one thread and on all, and
        // row-major), at the active SIMD level, on narrow and wide (≥ `gather_max_width()`)
        // outputs with every stride, padding and dilation parity.
        let p = Conv2dParams::default();
        let cases = [
            ([3, 7, 9], [3, 3], p),
            ([2, 28, 28], [3, 3], p.with_stride(2).with_padding(1)),
            ([2, 13, 11], [3, 3], Conv2dParams { stride: (2, 3), padding: (1, 2), ..p }),
            ([1, 9, 12], [3, 3], p.with_dilation(2).with_padding(3)),
            ([2, 5, 70], [3, 3], p.with_padding(1)),
            ([1, 6, 140], [5, 5], p.with_padding(2).with_stride(2)),
            ([2, 4, 4], [7, 7], p.with_padding(3)),
            ([2, 6, 6], [1, 1], p.with_stride(2)),
        ];
        for (chw, khw, params) in cases {
            let [c, h, w] = chw;
            let g = ConvGeometry::new([1, c, h, w], [8, c, khw[0], khw[1]], params).unwrap();
            let x = data(g.input_len(), 7);
            let (crs, ohw) = (c * khw[0] * khw[1], g.oh * g.ow);
            let mut col = Vec::new();
            im2col(&g, &x, &mut col, false);
            let want = pack_panels(&col, crs, ohw);
            let mut buf = Vec::new();
            assert_eq!(im2col_packed(&g, &x, &mut buf), want.as_slice(), "copies {g:?}");
            let plan = GatherPlan::build(&g).unwrap();
            for parallel in [false, true] {
                let got = im2col_gather(&g, &plan, &x, &mut buf, parallel);
                assert_eq!(got, want.as_slice(), "gathers {g:?}, parallel {parallel}");
            }
            let ld = im2col_gather_rows(&g, &plan, &x, &mut buf);
            for (r, row) in buf.chunks_exact(ld).enumerate() {
                assert_eq!(&row[..ohw], &col[r * ohw..(r + 1) * ohw], "row {r} of {g:?}");
                assert!(row[ohw..].iter().all(|&v| v == 0.0));
            }
            assert_eq!(GatherPlan::new(&g).is_some(), g.ow < gather_max_width());
        }
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
