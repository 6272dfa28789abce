//! The AVX-512 micro-kernels of the direct convolution, 16 lanes per vector:
//!
//! - the *channel path*: 16 output channels in one `__m512` per output column, up to 12
//!   columns of one output row per tile (the 8-lane kernel holds 16 channels in two vectors
//!   × 6 columns); per tap one weight vector (a masked load when fewer than 16 channels remain)
//!   and one broadcast per column;
//! - the *width path*: up to 8 output channels × up to 4 vectors of 16 output columns (24 of
//!   the 32 registers accumulate); the last vector of a row is loaded and stored with a mask,
//!   so a 28-column row is two vectors.
//!
//! Accumulators start at the bias and add the taps in the same order as the 8-lane kernels,
//! fused, so the results are the same bits.

use std::arch::x86_64::*;

use super::{Plan, Reads, TileAt};
use crate::simd::Avx512;
use crate::simd::transpose16;

/// Output channels per vector.
const KL: usize = 16;
/// Most output columns per tile (12 of the 32 registers accumulate).
const XP_MAX: usize = 12;

/// Every output of a work item on the width path (more than one output channel, not the channel
/// path): tiles of `kb` channels × `xb` vectors of 16 columns.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) fn width(w: Avx512, p: &Plan<'_>, r: Reads<'_>, out: &mut [f32]) {
    let nv = p.ow.div_ceil(KL);
    let xb_main = nv.min(4);
    let kb_main = if xb_main <= 2 { 8 } else { 6 };
    for y in 0..p.oh {
        let mut k0 = 0;
        while k0 < p.kc {
            let kb = kb_main.min(p.kc - k0);
            let mut xv0 = 0;
            while xv0 < nv {
                let xb = xb_main.min(nv - xv0);
                let t = TileAt { k0, y, xv0 };
                tile_table! {
                    (kb, xb),
                    tile_w(w, p, r, out, t),
                    [
                        (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1),
                        (1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (7, 2), (8, 2),
                        (1, 3), (2, 3), (3, 3), (4, 3), (5, 3), (6, 3), (1, 4), (2, 4),
                        (3, 4), (4, 4), (5, 4), (6, 4),
                    ],
                    // Not produced by the blocking above.
                    unreachable!("direct: no {kb}x{xb} AVX-512 tile")
                }
                xv0 += xb;
            }
            k0 += kb;
        }
    }
}

/// Output channels `k0..k0+KB` × `XB` vectors of 16 output columns from vector `t.xv0` of row
/// `t.y`; lanes past the row's end are masked off on load and store.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn tile_w<const KB: usize, const XB: usize>(
    _: Avx512,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
) {
    let Reads { planes, wp, bias } = r;
    let TileAt { k0, y, xv0 } = t;
    let x0 = xv0 * KL;
    let mut acc = [[_mm512_setzero_ps(); XB]; KB];
    if let Some(b) = bias {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = [_mm512_set1_ps(b[k0 + k]); XB];
        }
    }
    // Lanes of each vector inside the row: all 16 but in the row's last vector.
    let masks: [__mmask16; XB] = std::array::from_fn(|v| {
        let lanes = (p.ow - (x0 + v * KL).min(p.ow)).min(KL);
        if lanes == KL { !0 } else { (1u16 << lanes) - 1 }
    });
    let cols = (p.ow - x0).min(XB * KL);
    p.check_reads(planes.len(), y, x0 + cols);
    assert!((p.cpg * p.kh * p.kw - 1) * p.ks + k0 + KB <= wp.len());
    let (pin, pw) = (planes.as_ptr(), wp.as_ptr());
    for c in 0..p.cpg {
        for i in 0..p.kh {
            let row = (c * p.hp + y * p.sh() + i * p.dh()) * p.row_len + x0;
            let wrow = (c * p.kh + i) * p.kw * p.ks + k0;
            for (j, &off) in p.tap_off.iter().enumerate() {
                let mut xs = [_mm512_setzero_ps(); XB];
                for (v, x) in xs.iter_mut().enumerate() {
                    // SAFETY: the mask keeps the load to the lanes of columns below `x0 + cols`,
                    // so it reads at most up to `row + off + cols`, the end `check_reads`
                    // asserted above (`c`, `i` and `off` are at most the values it was given).
                    *x = unsafe { _mm512_maskz_loadu_ps(masks[v], pin.add(row + off + v * KL)) };
                }
                for (kk, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `wrow + j·ks + kk < (cpg·kh·kw − 1)·ks + k0 + KB ≤ wp.len()`
                    // (asserted above).
                    let wv = _mm512_set1_ps(unsafe { *pw.add(wrow + j * p.ks + kk) });
                    for (av, &xv) in a.iter_mut().zip(&xs) {
                        *av = _mm512_fmadd_ps(xv, wv, *av);
                    }
                }
            }
        }
    }
    for (k, a) in acc.iter().enumerate() {
        let orow = &mut out[((k0 + k) * p.oh + y) * p.ow..][..p.ow];
        for (v, &av) in a.iter().enumerate() {
            // SAFETY: the mask keeps the store to columns `x0 + v·16 ..` below `ow`, inside
            // `orow`.
            unsafe { _mm512_mask_storeu_ps(orow.as_mut_ptr().add(x0 + v * KL), masks[v], av) };
        }
    }
}

/// Every output of a work item on the channel path (see [`Plan::kpath`]).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) fn kpath(w: Avx512, p: &Plan<'_>, r: Reads<'_>, out: &mut [f32]) {
    let k = p.unrolled_taps();
    for y in 0..p.oh {
        let mut k0 = 0;
        while k0 < p.kc {
            let mut x0 = 0;
            while x0 < p.ow {
                let xp = XP_MAX.min(p.ow - x0);
                let t = TileAt { k0, y, xv0: x0 };
                match k {
                    3 => columns::<3>(w, p, r, out, t, xp),
                    5 => columns::<5>(w, p, r, out, t, xp),
                    _ => columns::<0>(w, p, r, out, t, xp),
                }
                x0 += xp;
            }
            k0 += KL;
        }
    }
}

/// [`tile_k`] for `xp` columns (1 to 12).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn columns<const K: usize>(
    w: Avx512,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
    xp: usize,
) {
    by_columns!(xp, XP_MAX, tile_k::<_, K>(w, p, r, out, t))
}

/// Output channels `k0..min(k0+16, kc)` × `XP` output columns from `t.xv0` of row `t.y`.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn tile_k<const XP: usize, const K: usize>(
    w: Avx512,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
) {
    let Reads { planes, wp, bias } = r;
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
    p.check_reads(planes.len(), y, x0 + XP);
    assert!(k0 + lanes <= p.ks && (p.cpg * p.kh * p.kw - 1) * p.ks + p.ks <= wp.len());
    let (pin, pw) = (planes.as_ptr(), wp.as_ptr());
    // `K > 0`: a K×K kernel whose tap `j` is at column offset `j` (`Plan::unrolled_taps`).
    let (kh, kw) = if K > 0 { (K, K) } else { (p.kh, p.kw) };
    for c in 0..p.cpg {
        for i in 0..kh {
            let row = (c * p.hp + y * p.sh() + i * p.dh()) * p.row_len + x0;
            let wrow = (c * kh + i) * kw * p.ks + k0;
            for j in 0..kw {
                let off = if K > 0 { j } else { p.tap_off[j] };
                // SAFETY: the mask keeps the load to `lanes` floats from `wrow + j·ks`, and
                // `wrow + j·ks + lanes ≤ (cpg·kh·kw − 1)·ks + ks ≤ wp.len()` because
                // `k0 + lanes ≤ ks` (asserted above); masked-off lanes are not read.
                let wv = unsafe { _mm512_maskz_loadu_ps(mask, pw.add(wrow + j * p.ks)) };
                for (x, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `row + off + x` is below the end `check_reads` asserted above.
                    let xb = _mm512_set1_ps(unsafe { *pin.add(row + off + x) });
                    *a = _mm512_fmadd_ps(xb, wv, *a);
                }
            }
        }
    }
    // Column `x` of the tile holds channels `k0..k0+16` in `acc[x]`; transposed, vector `l`
    // holds channel `k0 + l` at columns `x0..x0+XP`, stored as one masked run of its row.
    let mut rows = [_mm512_setzero_ps(); KL];
    rows[..XP].copy_from_slice(&acc);
    let cols = transpose16(w, rows);
    let plane = p.oh * p.ow;
    let valid = lanes.min(p.kc - k0);
    let cmask: __mmask16 = (1 << XP) - 1;
    for (l, &v) in cols.iter().enumerate().take(valid) {
        let run = &mut out[(k0 + l) * plane + y * p.ow + x0..][..XP];
        // SAFETY: the mask keeps the store to the first `XP` floats at `run`, which holds them.
        unsafe { _mm512_mask_storeu_ps(run.as_mut_ptr(), cmask, v) };
    }
}
