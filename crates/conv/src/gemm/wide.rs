//! The AVX-512 micro-kernel: one 6-row A panel times `P` consecutive 16-column B panels, in
//! `6·P` 16-lane accumulators, with masked stores for edge columns. For a sum of products
//! ([`Piece`]s: the stride-2 Winograd groups) the accumulators carry on from one product to
//! the next and each tile is stored once.
//!
//! The packed layouts are those of the 8-lane kernel (a B panel step is 16 floats, one
//! `__m512`), so the same packing serves both levels. Each step loads `P` vectors of B,
//! broadcasts six elements of A and issues `6·P` fused multiply-adds; with `P = 3` that is 18
//! accumulators of the 32 registers, and 9 loads per 18 FMAs instead of the 8-lane kernel's 8
//! per 12. Every output is still the sum of its products in increasing `k`, fused, so results
//! are bit-identical to the 8-lane kernel's.
//!
//! A last B panel with at most 8 columns of `C` runs 8-lane multiply-adds on its first half
//! ([`half`]): on Zen 4 a 16-lane one costs two 8-lane issues, so a panel that is mostly
//! padding (a 14x14 plane: 12 panels and 4 columns) costs half as much (pointwise forward on a
//! Zen 4, one process alternating: 2.02 → 1.97 ms at one thread, 1.05 → 1.03 at two).
//!
//! Likewise the last A panel of a product whose row count is not a multiple of 6 multiplies
//! only the rows of `C` it has (`micro::<N, R>`, chosen by `tile::with_rows`): 128 output
//! channels are 21 whole panels and one of 2 rows, which the full kernel ran as 6, 3% of the
//! products wasted on padding. The Winograd products of `strided` (128 output channels) went
//! from 8.21–8.51 to 8.07–8.14 ms at one thread on the Zen 4, old and new binaries alternated
//! (min of 40 calls).

use std::arch::x86_64::*;

use super::tile::{Dest, MAX_PIECES, MR, NR, Piece, with_rows};
use crate::simd::Avx512;

/// B panels per micro-tile at the AVX-512 level (see `docs/benchmarks.md` for the choice).
pub(super) const P: usize = 3;

/// Every tile of one block: all A panels against all B panels of the pieces, `P` B panels at
/// a time (the last group may be narrower); with several pieces (one depth block each, the
/// same panel counts) each tile is the sum of their products, accumulated in registers and
/// stored once.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) fn tiles(w: Avx512, pieces: &[Piece<'_>], blk: Dest<'_>, c: &mut [f32]) {
    let count = pieces[0].b.count;
    let mut pj = 0;
    while pj < count {
        let np = P.min(count - pj);
        match np {
            3 => group::<3>(w, pieces, pj, blk, c),
            2 => group::<2>(w, pieces, pj, blk, c),
            _ if blk.n - (blk.j + pj * NR) <= NR / 2 => half(w, pieces, pj, blk, c),
            _ => group::<1>(w, pieces, pj, blk, c),
        }
        pj += np;
    }
}

/// The last B panel when it holds at most 8 columns of `C`: 8-lane multiply-adds on the
/// panel's first 8 columns. A 16-lane multiply-add on Zen 4 issues as two 8-lane halves, so
/// this halves the cost of a panel that is mostly padding (a 14x14 plane is 12 whole panels
/// and 4 columns). The same products in the same order: the same bits.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn half(w: Avx512, pieces: &[Piece<'_>], pj: usize, blk: Dest<'_>, c: &mut [f32]) {
    let kc = pieces[0].b.kcb;
    let j = blk.j + pj * NR;
    for pi in 0..pieces[0].a.len() / (MR * kc) {
        let t = blk.at(blk.i + pi * MR, j);
        let mut acc = [_mm256_setzero_ps(); MR];
        for piece in pieces {
            let (a, bp) = (&piece.a[pi * MR * kc..], piece.b.panel(pj));
            assert!(a.len() >= kc * MR && bp.len() >= kc * NR && piece.b.kcb == kc);
            let (pa, pb) = (a.as_ptr(), bp.as_ptr());
            for p in 0..kc {
                // SAFETY: `p < kc`, and the assert above shows that the A panel holds `kc`
                // steps of 6 floats and the B panel `kc` steps of 16 (of which the first 8 are
                // read).
                unsafe {
                    let bv = _mm256_loadu_ps(pb.add(p * NR));
                    for (r, x) in acc.iter_mut().enumerate() {
                        *x = _mm256_fmadd_ps(_mm256_set1_ps(*pa.add(p * MR + r)), bv, *x);
                    }
                }
            }
        }
        // Widened to 16 lanes (the upper 8 zero) for the common store: `C` has at most 8
        // columns here, so its mask keeps every access to the low half. (A loop, not `map`: a
        // closure body is compiled without this function's target features.)
        let mut wide = [[_mm512_setzero_ps()]; MR];
        for (wv, &x) in wide.iter_mut().zip(&acc) {
            wv[0] = _mm512_zextps256_ps512(x);
        }
        store(w, &wide, t, c);
    }
}

/// The tiles of B panels `pj..pj+N` against every A panel, summed over the pieces.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn group<const N: usize>(w: Avx512, pieces: &[Piece<'_>], pj: usize, blk: Dest<'_>, c: &mut [f32]) {
    let kc = pieces[0].b.kcb;
    // Each piece's B panels, sliced once for all A panels (loops, not `from_fn`: a closure
    // body is compiled without this function's target features, and is a call).
    let mut bps: [[&[f32]; N]; MAX_PIECES] = [[&[]; N]; MAX_PIECES];
    for (bq, piece) in bps.iter_mut().zip(pieces) {
        assert_eq!(piece.b.kcb, kc, "wide::group: pieces of different depths");
        for (h, b) in bq.iter_mut().enumerate() {
            *b = piece.b.panel(pj + h);
        }
    }
    let bps = &bps[..pieces.len()];
    let j = blk.j + pj * NR;
    for pi in 0..pieces[0].a.len() / (MR * kc) {
        let t = blk.at(blk.i + pi * MR, j);
        // Only the rows of `C` the panel has (the last may hold padding rows).
        let acc = with_rows!(t.rows(), R => micro::<N, R>(w, kc, pieces, pi, bps));
        store(w, &acc, t, c);
    }
}

/// `Σ_q A_q panel pi (6 × kc) · [B panels of q] (kc × 16·N)` for the panel's first `R` rows:
/// `acc[r][h]` holds row `r`, panel `h` (rows from `R` on stay zero).
///
/// # Panics
/// When a panel holds fewer than `kc` steps (an internal bug).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
pub(super) fn micro<const N: usize, const R: usize>(
    _: Avx512,
    kc: usize,
    pieces: &[Piece<'_>],
    pi: usize,
    bps: &[[&[f32]; N]],
) -> [[__m512; N]; MR] {
    let mut acc = [[_mm512_setzero_ps(); N]; MR];
    for (piece, bq) in pieces.iter().zip(bps) {
        let ap = &piece.a[pi * MR * kc..];
        assert!(ap.len() >= kc * MR && bq.iter().all(|b| b.len() >= kc * NR));
        let a = ap.as_ptr();
        let mut b = [a; N];
        for (ptr, panel) in b.iter_mut().zip(bq) {
            *ptr = panel.as_ptr();
        }
        for p in 0..kc {
            // SAFETY: `p < kc`, and the assert above shows that `ap` holds `kc` steps of 6
            // floats and each B panel `kc` steps of 16, so every read is inside its slice;
            // the token passed in proves the CPU has the features this function is compiled
            // for.
            unsafe {
                let mut bv = [_mm512_setzero_ps(); N];
                for (v, ptr) in bv.iter_mut().zip(b) {
                    *v = _mm512_loadu_ps(ptr.add(p * NR));
                }
                for (r, acc_r) in acc.iter_mut().enumerate().take(R) {
                    let av = _mm512_set1_ps(*a.add(p * MR + r));
                    for (x, &bh) in acc_r.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, bh, *x);
                    }
                }
            }
        }
    }
    acc
}

/// `C[tile] = alpha · acc + bias + beta · C[tile]` for the tile at `t`, up to `16·N` columns
/// wide (`nr`, fewer at the right edge of `C`), each 16-column part written with a masked load
/// and store so that no column past `nr` is touched.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
pub(super) fn store<const N: usize>(
    _: Avx512,
    acc: &[[__m512; N]; MR],
    t: Dest<'_>,
    c: &mut [f32],
) {
    let (mr, nr) = (t.rows(), t.cols(N * NR));
    for (r, acc_r) in acc.iter().enumerate().take(mr) {
        let bias = t.row_bias(r).map(|v| _mm512_set1_ps(v));
        let row = &mut c[(t.i + r) * t.ldc + t.j..][..nr];
        for (h, &x) in acc_r.iter().enumerate() {
            let cols = nr.saturating_sub(h * NR).min(NR);
            if cols == 0 {
                break;
            }
            let mask: __mmask16 = if cols == NR { !0 } else { (1 << cols) - 1 };
            let dst = row[h * NR..].as_mut_ptr();
            // SAFETY: `row` holds `nr` floats and `dst` is at `h·16 < nr`; the mask keeps the
            // load and the store to the first `cols = min(16, nr − h·16)` lanes, all inside
            // `row` (masked-off lanes are neither read nor written, and do not fault).
            unsafe {
                let x = if t.alpha == 1.0 { x } else { _mm512_mul_ps(_mm512_set1_ps(t.alpha), x) };
                // With `beta == 0`, `x + bias` is the sum (and the bits) of storing the bias
                // first and adding with `beta == 1`.
                let x = match bias {
                    Some(b) => _mm512_add_ps(x, b),
                    None => x,
                };
                let v = if t.beta == 0.0 {
                    x
                } else {
                    let old = _mm512_maskz_loadu_ps(mask, dst);
                    if t.beta == 1.0 {
                        _mm512_add_ps(x, old)
                    } else {
                        _mm512_fmadd_ps(_mm512_set1_ps(t.beta), old, x)
                    }
                };
                _mm512_mask_storeu_ps(dst, mask, v);
            }
        }
    }
}
