//! The columns tiling: vectors over pooled output columns, the input split by column parity.

use super::{ImageDims, PooledConv, PooledLayout, combine};
use crate::simd::{LANES, Simd};

/// Row stride of a parity plane: every vector a pooled row reads, plus the last odd column,
/// rounded up to whole vectors (rows then start 32-byte aligned within the plane).
fn plane_stride(pk: &PooledConv, d: &ImageDims) -> usize {
    (d.pw.div_ceil(LANES) * LANES + pk.kw / 2 + 1).next_multiple_of(LANES)
}

/// Splits each padded input row into its even and odd columns: plane `[c][parity][row]`,
/// zero where the padding and the row tails are.
fn split(pk: &PooledConv, d: &ImageDims, input: &[f32], planes: &mut [f32], stride: usize) {
    planes.fill(0.0);
    let plane = d.hp * stride;
    let (py, px) = pk.pad;
    for (c, image) in input.chunks_exact(d.h * d.w).enumerate() {
        let (even, odd) = planes[2 * c * plane..][..2 * plane].split_at_mut(plane);
        // Source column x lands in parity (x + px) mod 2 at index ⌊(x + px)/2⌋.
        let (first, second) = if px % 2 == 0 { (even, odd) } else { (odd, even) };
        for (y, row) in image.chunks_exact(d.w).enumerate() {
            let at = (y + py) * stride;
            let a = &mut first[at + px / 2..][..d.w.div_ceil(2)];
            let b = &mut second[at + px.div_ceil(2)..][..d.w / 2];
            let pairs = row.chunks_exact(2);
            if let ([v], Some(dst)) = (pairs.remainder(), a.last_mut()) {
                *dst = *v;
            }
            for ((pair, x), y) in pairs.zip(a.iter_mut()).zip(b.iter_mut()) {
                *x = pair[0];
                *y = pair[1];
            }
        }
    }
}

/// [`PooledConv::image`] for fewer than 16 output channels.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn image<S: Simd>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    input: &[f32],
    out: &mut [f32],
    layout: PooledLayout,
    conv: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
) {
    let stride = plane_stride(pk, d);
    scratch.resize(2 * pk.c_in * d.hp * stride, 0.0);
    split(pk, d, input, scratch, stride);
    let p = Planes { data: scratch, stride, plane: d.hp * stride };
    match (pk.kh, pk.kw) {
        (3, 3) => body::<S, 3>(s, pk, d, &p, out, layout, conv),
        (5, 5) => body::<S, 5>(s, pk, d, &p, out, layout, conv),
        _ => body::<S, 0>(s, pk, d, &p, out, layout, conv),
    }
}

/// The split input: `[c][parity][row][stride]`, each parity plane `plane` floats.
struct Planes<'a> {
    data: &'a [f32],
    stride: usize,
    plane: usize,
}

/// Every pooled vector of the image; `K` is the kernel size when it is a compile-time square
/// (so the tap loops unroll), 0 otherwise.
#[inline(always)]
fn body<S: Simd, const K: usize>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    p: &Planes<'_>,
    out: &mut [f32],
    layout: PooledLayout,
    mut conv: Option<&mut [f32]>,
) {
    let (kh, kw) = if K > 0 { (K, K) } else { (pk.kh, pk.kw) };
    // Every load of `taps` reads `pc[base + 8v .. base + 8v + 8]` of one channel's two planes
    // with `base + 8v ≤ plane + (2·py + kh)·stride + px0 + 8v + ⌊kw/2⌋`; this is its largest
    // value (last pooled row, last vector): one check for the whole image.
    let last_vector = (d.pw.div_ceil(LANES) - 1) * LANES;
    let last = p.plane + (2 * (d.ph - 1) + kh) * p.stride + last_vector + kw / 2 + LANES;
    assert!(last <= 2 * p.plane, "parity planes too short");
    assert!(p.data.len() >= 2 * pk.c_in * p.plane, "parity planes too short");
    let taps = kh * kw;
    for k in 0..pk.c_out {
        let w = &pk.weight[k * pk.c_in * taps..][..pk.c_in * taps];
        let bias = s.splat(pk.bias[k]);
        for py in 0..d.ph {
            for px0 in (0..d.pw).step_by(2 * LANES) {
                let at = (k, py, px0);
                if d.pw - px0 > LANES {
                    let acc = rows::<S, 2, K>(s, pk, p, w, bias, py, px0);
                    finish::<S, 2>(s, pk, d, acc, at, out, layout, &mut conv);
                } else {
                    let acc = rows::<S, 1, K>(s, pk, p, w, bias, py, px0);
                    finish::<S, 1>(s, pk, d, acc, at, out, layout, &mut conv);
                }
            }
        }
    }
}

/// Pools and stores `NV` vectors of channel `k`'s pooled row `py` from column `px0`, keeping
/// the convolution outputs in `conv` when asked.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn finish<S: Simd, const NV: usize>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    acc: [[[S::V; NV]; 2]; 2],
    (k, py, px0): (usize, usize, usize),
    out: &mut [f32],
    layout: PooledLayout,
    conv: &mut Option<&mut [f32]>,
) {
    // acc[r][b][v] lane l: output row 2·py + r, column 2·(px0 + 8v + l) + b.
    #[allow(clippy::needless_range_loop)] // v indexes four arrays at once
    for v in 0..NV {
        let x0 = px0 + v * LANES;
        let n = d.pw.saturating_sub(x0).min(LANES);
        if n == 0 {
            break;
        }
        let four = [acc[0][0][v], acc[0][1][v], acc[1][0][v], acc[1][1][v]];
        if let Some(map) = conv.as_deref_mut() {
            keep(s, map, d, k, py, x0, n, four);
        }
        let pooled = combine(s, pk.kind, pk.relu, four);
        store(s, pk, d, out, layout, k, py, x0, n, pooled);
    }
}

/// Accumulators for two output rows × two column parities × `NV` vectors of pooled columns
/// starting at `px0`: bias, then every input channel, kernel row and column. The bounds of
/// every load were checked by [`body`].
#[inline(always)]
fn rows<S: Simd, const NV: usize, const K: usize>(
    s: S,
    pk: &PooledConv,
    p: &Planes<'_>,
    w: &[f32],
    bias: S::V,
    py: usize,
    px0: usize,
) -> [[[S::V; NV]; 2]; 2] {
    let (kh, kw) = if K > 0 { (K, K) } else { (pk.kh, pk.kw) };
    let (stride, plane) = (p.stride, p.plane);
    let mut acc = [[[bias; NV]; 2]; 2];
    for c in 0..pk.c_in {
        let wc = &w[c * kh * kw..][..kh * kw];
        let pc = &p.data[2 * c * plane..][..2 * plane];
        // Input row r feeds output row 0 through kernel row r and output row 1 through
        // kernel row r − 1; the first and last rows feed one output row only.
        let first = 2 * py * stride + px0;
        taps::<S, NV, K>(s, pc, plane, first, kw, Some(&wc[..kw]), None, &mut acc);
        for r in 1..kh {
            let row = (2 * py + r) * stride + px0;
            let (w0, w1) = (&wc[r * kw..][..kw], &wc[(r - 1) * kw..][..kw]);
            taps::<S, NV, K>(s, pc, plane, row, kw, Some(w0), Some(w1), &mut acc);
        }
        let last = (2 * py + kh) * stride + px0;
        taps::<S, NV, K>(s, pc, plane, last, kw, None, Some(&wc[(kh - 1) * kw..][..kw]), &mut acc);
    }
    acc
}

/// One input row's taps: `x · w0[j]` into output row 0 and `x · w1[j]` into output row 1.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn taps<S: Simd, const NV: usize, const K: usize>(
    s: S,
    pc: &[f32],
    plane: usize,
    row: usize,
    kw: usize,
    w0: Option<&[f32]>,
    w1: Option<&[f32]>,
    acc: &mut [[[S::V; NV]; 2]; 2],
) {
    let kw = if K > 0 { K } else { kw };
    for j in 0..kw {
        let mut xv = [[s.zero(); NV]; 2];
        for (b, xb) in xv.iter_mut().enumerate() {
            let q = b + j;
            let base = (q & 1) * plane + row + q / 2;
            for (v, x) in xb.iter_mut().enumerate() {
                debug_assert!(base + v * LANES + LANES <= pc.len());
                // SAFETY: `body` asserted that every `base + 8v + 8` of the image is within
                // `pc` (one channel's two planes), and `pc` is a slice of initialized floats.
                *x = unsafe { s.load_ptr(pc.as_ptr().add(base + v * LANES)) };
            }
        }
        for (out, wr) in [(0, w0), (1, w1)] {
            if let Some(wr) = wr {
                let wv = s.splat(wr[j]);
                for (a, xb) in acc[out].iter_mut().zip(&xv) {
                    for (av, &x) in a.iter_mut().zip(xb) {
                        *av = s.fma(x, wv, *av);
                    }
                }
            }
        }
    }
}

/// Writes the convolution outputs behind one pooled vector into `map` `[c_out][2·ph][2·pw]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn keep<S: Simd>(
    s: S,
    map: &mut [f32],
    d: &ImageDims,
    k: usize,
    py: usize,
    x0: usize,
    n: usize,
    four: [S::V; 4],
) {
    let (oh, ow) = (2 * d.ph, 2 * d.pw);
    for (rb, a) in four.into_iter().enumerate() {
        let (r, b) = (rb / 2, rb % 2);
        let row = &mut map[(k * oh + 2 * py + r) * ow..][..ow];
        for (l, x) in s.to_array(a).into_iter().take(n).enumerate() {
            row[2 * (x0 + l) + b] = x;
        }
    }
}

/// Writes `n` pooled values of channel `k`, row `py`, from column `x0`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn store<S: Simd>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    out: &mut [f32],
    layout: PooledLayout,
    k: usize,
    py: usize,
    x0: usize,
    n: usize,
    v: S::V,
) {
    match layout {
        PooledLayout::Planes => {
            let at = (k * d.ph + py) * d.pw + x0;
            if at + LANES <= out.len() {
                // Lanes past the row land on outputs written later in this loop order.
                s.store(v, &mut out[at..]);
            } else {
                out[at..at + n].copy_from_slice(&s.to_array(v)[..n]);
            }
        }
        PooledLayout::ChannelsLast => {
            for (l, x) in s.to_array(v).into_iter().take(n).enumerate() {
                out[(py * d.pw + x0 + l) * pk.c_out + k] = x;
            }
        }
    }
}
