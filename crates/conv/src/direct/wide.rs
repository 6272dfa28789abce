//! The AVX-512 channel-vectorized micro-kernel: 16 output channels in one `__m512` per output
//! column, up to 12 columns of one output row per tile.
//!
//! It replaces the 8-lane channel path (two `__m256` of channels × 6 columns) at the AVX-512
//! level: per filter tap one weight vector (a masked load when fewer than 16 channels remain)
//! and one broadcast per column feed 16-lane multiply-adds. Accumulators start at the bias and
//! add the taps in the same order as the 8-lane kernel, fused, so the results are the same
//! bits.

use std::arch::x86_64::*;

use super::{Plan, TileAt};
use crate::simd::Avx512;

/// Output channels per vector.
const KL: usize = 16;
/// Most output columns per tile (12 of the 32 registers accumulate).
const XP_MAX: usize = 12;

/// Every output of a work item on the channel path (see [`Plan::kpath`]).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) fn kpath(
    w: Avx512,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    for y in 0..p.oh {
        let mut k0 = 0;
        while k0 < p.kc {
            let mut x0 = 0;
            while x0 < p.ow {
                let xp = XP_MAX.min(p.ow - x0);
                let t = TileAt { k0, y, xv0: x0 };
                match xp {
                    1 => tile_k::<1>(w, p, planes, wp, bias, out, t),
                    2 => tile_k::<2>(w, p, planes, wp, bias, out, t),
                    3 => tile_k::<3>(w, p, planes, wp, bias, out, t),
                    4 => tile_k::<4>(w, p, planes, wp, bias, out, t),
                    5 => tile_k::<5>(w, p, planes, wp, bias, out, t),
                    6 => tile_k::<6>(w, p, planes, wp, bias, out, t),
                    7 => tile_k::<7>(w, p, planes, wp, bias, out, t),
                    8 => tile_k::<8>(w, p, planes, wp, bias, out, t),
                    9 => tile_k::<9>(w, p, planes, wp, bias, out, t),
                    10 => tile_k::<10>(w, p, planes, wp, bias, out, t),
                    11 => tile_k::<11>(w, p, planes, wp, bias, out, t),
                    _ => tile_k::<12>(w, p, planes, wp, bias, out, t),
                }
                x0 += xp;
            }
            k0 += KL;
        }
    }
}

/// Output channels `k0..min(k0+16, kc)` × `XP` output columns from `t.xv0` of row `t.y`.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn tile_k<const XP: usize>(
    _: Avx512,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    t: TileAt,
) {
    let TileAt { k0, y, xv0: x0 } = t;
    // `ks` is `kc` rounded up to 8, so 8 or 16 weights of each tap row are readable from `k0`.
    let lanes = (p.ks - k0).min(KL);
    let mask: __mmask16 = if lanes == KL { !0 } else { (1 << lanes) - 1 };
    let mut bl = [0f32; KL];
    if let Some(b) = bias {
        for (l, bv) in bl.iter_mut().enumerate() {
            if k0 + l < p.kc {
                *bv = b[k0 + l];
            }
        }
    }
    // SAFETY: `bl` holds 16 floats; the token passed in proves AVX-512F.
    let mut acc = [unsafe { _mm512_loadu_ps(bl.as_ptr()) }; XP];
    let last_in =
        ((p.cpg - 1) * p.hp + y * p.sh + (p.kh - 1) * p.dh) * p.row_len + p.max_off + x0 + XP;
    assert!(last_in <= planes.len() && p.max_off + x0 + XP <= p.row_len);
    assert!(k0 + lanes <= p.ks && (p.cpg * p.kh * p.kw - 1) * p.ks + p.ks <= wp.len());
    let (pin, pw) = (planes.as_ptr(), wp.as_ptr());
    for c in 0..p.cpg {
        for i in 0..p.kh {
            let row = (c * p.hp + y * p.sh + i * p.dh) * p.row_len + x0;
            let wrow = (c * p.kh + i) * p.kw * p.ks + k0;
            for (j, &off) in p.tap_off.iter().enumerate() {
                // SAFETY: the mask keeps the load to `lanes` floats from `wrow + j·ks`, and
                // `wrow + j·ks + lanes ≤ (cpg·kh·kw − 1)·ks + ks ≤ wp.len()` because
                // `k0 + lanes ≤ ks` (asserted above); masked-off lanes are not read.
                let wv = unsafe { _mm512_maskz_loadu_ps(mask, pw.add(wrow + j * p.ks)) };
                for (x, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `row + off + x < last_in ≤ planes.len()` (asserted above).
                    let xb = _mm512_set1_ps(unsafe { *pin.add(row + off + x) });
                    *a = _mm512_fmadd_ps(xb, wv, *a);
                }
            }
        }
    }
    let plane = p.oh * p.ow;
    for (x, &a) in acc.iter().enumerate() {
        let mut lanes_out = [0f32; KL];
        // SAFETY: `lanes_out` holds 16 writable floats.
        unsafe { _mm512_storeu_ps(lanes_out.as_mut_ptr(), a) };
        for (l, &val) in lanes_out.iter().enumerate() {
            let k = k0 + l;
            if k < p.kc {
                out[k * plane + y * p.ow + x0 + x] = val;
            }
        }
    }
}
