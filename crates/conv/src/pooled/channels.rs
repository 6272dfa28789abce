//! The channels tiling: vectors over 16 output channels, tiles of five output pixels.

use super::{CHANNEL_PATH_MIN as GROUP, ImageDims, PooledConv, PooledLayout, combine};
use crate::simd::{LANES, Simd};

/// Output pixels per register tile (5 × 2 accumulators, 2 weight vectors, 1 broadcast).
const TILE: usize = 5;

/// `weight [c_out][c_in][kh][kw]` → `[group][(c·kh + i)·kw + j][16]`, zero past `c_out`.
pub(super) fn pack(weight: &[f32], [c_out, c_in, kh, kw]: [usize; 4]) -> Vec<f32> {
    let per = c_in * kh * kw;
    let mut packed = vec![0f32; c_out.div_ceil(GROUP) * per * GROUP];
    for (k, filter) in weight.chunks_exact(per).enumerate() {
        let dst = &mut packed[(k / GROUP) * per * GROUP..][..per * GROUP];
        for (t, &v) in filter.iter().enumerate() {
            dst[t * GROUP + k % GROUP] = v;
        }
    }
    packed
}

/// [`PooledConv::image`] for 16 or more output channels.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn image<S: Simd>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    input: &[f32],
    out: &mut [f32],
    layout: PooledLayout,
    mut conv: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
) {
    let (oh, ow) = (2 * d.ph, 2 * d.pw);
    let padded = pk.pad != (0, 0);
    let (plane_len, conv_len) = (d.hp * d.wp, oh * ow * GROUP);
    scratch.resize(conv_len + if padded { pk.c_in * plane_len } else { 0 }, 0.0);
    let (cbuf, planes) = scratch.split_at_mut(conv_len);
    let planes: &[f32] = if padded {
        planes.fill(0.0);
        for (src, dst) in input.chunks_exact(d.h * d.w).zip(planes.chunks_exact_mut(plane_len)) {
            for (y, row) in src.chunks_exact(d.w).enumerate() {
                dst[(y + pk.pad.0) * d.wp + pk.pad.1..][..d.w].copy_from_slice(row);
            }
        }
        planes
    } else {
        input
    };
    let per = pk.c_in * pk.kh * pk.kw;
    for g in 0..pk.c_out.div_ceil(GROUP) {
        let w = &pk.weight[g * per * GROUP..][..per * GROUP];
        let b = &pk.bias[g * GROUP..][..GROUP];
        group(s, pk, d, planes, w, b, cbuf);
        let k0 = g * GROUP;
        let kn = (pk.c_out - k0).min(GROUP);
        if let Some(map) = conv.as_deref_mut() {
            for (pixel, channels) in cbuf.chunks_exact(GROUP).enumerate() {
                for (k, &v) in channels[..kn].iter().enumerate() {
                    map[(k0 + k) * oh * ow + pixel] = v;
                }
            }
        }
        for py in 0..d.ph {
            for px in 0..d.pw {
                let top = ((2 * py) * ow + 2 * px) * GROUP;
                let bottom = top + ow * GROUP;
                for v in [0, LANES] {
                    let four = [
                        s.load(&cbuf[top + v..]),
                        s.load(&cbuf[top + GROUP + v..]),
                        s.load(&cbuf[bottom + v..]),
                        s.load(&cbuf[bottom + GROUP + v..]),
                    ];
                    let pooled = combine(s, pk.kind, pk.relu, four);
                    let n = kn.saturating_sub(v).min(LANES);
                    let pixel = py * d.pw + px;
                    match layout {
                        PooledLayout::ChannelsLast => {
                            let at = pixel * pk.c_out + k0 + v;
                            if n == LANES {
                                s.store(pooled, &mut out[at..]);
                            } else if n > 0 {
                                out[at..at + n].copy_from_slice(&s.to_array(pooled)[..n]);
                            }
                        }
                        PooledLayout::Planes => {
                            let plane = d.ph * d.pw;
                            for (l, x) in s.to_array(pooled).into_iter().take(n).enumerate() {
                                out[(k0 + v + l) * plane + pixel] = x;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The convolution output of one group of 16 channels, `[oh][ow][16]` into `cbuf`, in tiles
/// of [`TILE`] columns (at the AVX-512 level, `wide.rs`'s tiles): `w` is the group's packed
/// weights, `b` its 16 biases.
#[inline(always)]
fn group<S: Simd>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    planes: &[f32],
    w: &[f32],
    b: &[f32],
    cbuf: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = s.avx512() {
        // SAFETY: the token `t` proves the CPU has the features `group` is compiled for.
        unsafe { super::wide::group(t, pk, d, planes, w, b, cbuf) };
        return;
    }
    let ow = 2 * d.pw;
    let bias = [s.load(b), s.load(&b[LANES..])];
    for y in 0..2 * d.ph {
        for x0 in (0..ow).step_by(TILE) {
            let at = &mut cbuf[(y * ow + x0) * GROUP..];
            match (pk.kh, pk.kw) {
                (3, 3) => tiles::<S, 3>(s, pk, d, planes, w, bias, (y, x0), at, ow - x0),
                (5, 5) => tiles::<S, 5>(s, pk, d, planes, w, bias, (y, x0), at, ow - x0),
                _ => tiles::<S, 0>(s, pk, d, planes, w, bias, (y, x0), at, ow - x0),
            }
        }
    }
}

/// [`tile`] for the `rest` pixels left in the row, up to [`TILE`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tiles<S: Simd, const K: usize>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    planes: &[f32],
    w: &[f32],
    bias: [S::V; 2],
    at: (usize, usize),
    out: &mut [f32],
    rest: usize,
) {
    match rest {
        1 => tile::<S, 1, K>(s, pk, d, planes, w, bias, at, out),
        2 => tile::<S, 2, K>(s, pk, d, planes, w, bias, at, out),
        3 => tile::<S, 3, K>(s, pk, d, planes, w, bias, at, out),
        4 => tile::<S, 4, K>(s, pk, d, planes, w, bias, at, out),
        _ => tile::<S, TILE, K>(s, pk, d, planes, w, bias, at, out),
    }
}

/// Output pixels `x0 .. x0 + X` of row `y` for one group of 16 channels into `out`
/// (`[X][16]`, channels last): bias, then every input channel, kernel row and column. `K` is
/// the kernel size when it is a compile-time square (so the tap loops unroll), 0 otherwise.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<S: Simd, const X: usize, const K: usize>(
    s: S,
    pk: &PooledConv,
    d: &ImageDims,
    planes: &[f32],
    w: &[f32],
    bias: [S::V; 2],
    (y, x0): (usize, usize),
    out: &mut [f32],
) {
    let (kh, kw) = if K > 0 { (K, K) } else { (pk.kh, pk.kw) };
    let mut acc = [bias; X];
    for c in 0..pk.c_in {
        for i in 0..kh {
            let rb = (c * d.hp + y + i) * d.wp + x0;
            let row = &planes[rb..rb + X + kw - 1];
            let wr = &w[(c * kh + i) * kw * GROUP..][..kw * GROUP];
            for j in 0..kw {
                let w0 = s.load(&wr[j * GROUP..]);
                let w1 = s.load(&wr[j * GROUP + LANES..]);
                for (x, a) in acc.iter_mut().enumerate() {
                    let xb = s.splat(row[j + x]);
                    a[0] = s.fma(xb, w0, a[0]);
                    a[1] = s.fma(xb, w1, a[1]);
                }
            }
        }
    }
    for (x, a) in acc.iter().enumerate() {
        s.store(a[0], &mut out[x * GROUP..]);
        s.store(a[1], &mut out[x * GROUP + LANES..]);
    }
}
