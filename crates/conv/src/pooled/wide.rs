//! The AVX-512 register tile of the channels tiling: one `__m512` holds a group's 16 output
//! channels, so a tile covers up to 12 output columns of a row (12 of the 32 registers
//! accumulate) where the 8-lane tile holds two vectors × 5 columns. Per tap: one weight
//! vector and one broadcast per column.
//!
//! Each lane starts at the bias and adds the taps in the 8-lane tile's order with fused
//! multiply-adds, so both give the same bits.

use std::arch::x86_64::*;

use super::{CHANNEL_PATH_MIN as GROUP, ImageDims, PooledConv};
use crate::simd::Avx512;

/// Most output columns per tile.
const XP_MAX: usize = 12;

/// The convolution output of one group of 16 channels, `[oh][ow][16]` into `cbuf`: `w` is the
/// group's packed weights (`[(c·kh + i)·kw + j][16]`), `bias` its 16 biases.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) fn group(
    t: Avx512,
    pk: &PooledConv,
    d: &ImageDims,
    planes: &[f32],
    w: &[f32],
    bias: &[f32],
    cbuf: &mut [f32],
) {
    let ow = 2 * d.pw;
    for y in 0..2 * d.ph {
        let mut x0 = 0;
        while x0 < ow {
            let xp = XP_MAX.min(ow - x0);
            let at = (y, x0);
            let out = &mut cbuf[(y * ow + x0) * GROUP..][..xp * GROUP];
            match (pk.kh, pk.kw) {
                (3, 3) => columns::<3>(t, pk, d, planes, w, bias, at, out, xp),
                (5, 5) => columns::<5>(t, pk, d, planes, w, bias, at, out, xp),
                _ => columns::<0>(t, pk, d, planes, w, bias, at, out, xp),
            }
            x0 += xp;
        }
    }
}

/// [`tile`] for `xp` columns (1 to 12).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn columns<const K: usize>(
    t: Avx512,
    pk: &PooledConv,
    d: &ImageDims,
    planes: &[f32],
    w: &[f32],
    bias: &[f32],
    at: (usize, usize),
    out: &mut [f32],
    xp: usize,
) {
    by_columns!(xp, XP_MAX, tile::<_, K>(t, pk, d, planes, w, bias, at, out))
}

/// Output columns `x0 .. x0 + X` of row `y` for the group into `out` (`[X][16]`): bias, then
/// every input channel, kernel row and column. `K` is the kernel size when it is a
/// compile-time square (so the tap loops unroll), 0 otherwise.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn tile<const X: usize, const K: usize>(
    _: Avx512,
    pk: &PooledConv,
    d: &ImageDims,
    planes: &[f32],
    w: &[f32],
    bias: &[f32],
    (y, x0): (usize, usize),
    out: &mut [f32],
) {
    let (kh, kw) = if K > 0 { (K, K) } else { (pk.kh, pk.kw) };
    let (bias, out) = (&bias[..GROUP], &mut out[..X * GROUP]);
    // SAFETY: `bias` holds 16 floats (sliced above).
    let mut acc = [unsafe { _mm512_loadu_ps(bias.as_ptr()) }; X];
    for c in 0..pk.c_in {
        for i in 0..kh {
            let rb = (c * d.hp + y + i) * d.wp + x0;
            let row = &planes[rb..rb + X + kw - 1];
            let wr = &w[(c * kh + i) * kw * GROUP..][..kw * GROUP];
            for j in 0..kw {
                // SAFETY: `j·16 + 16 ≤ kw·16 = wr.len()`.
                let wv = unsafe { _mm512_loadu_ps(wr.as_ptr().add(j * GROUP)) };
                for (x, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(row[j + x]), wv, *a);
                }
            }
        }
    }
    for (a, dst) in acc.iter().zip(out.chunks_exact_mut(GROUP)) {
        // SAFETY: `dst` holds 16 writable floats.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), *a) };
    }
}
