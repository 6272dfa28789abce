//! A packed single-precision GEMM with a 6x16 register-tiled micro-kernel.
//!
//! The structure is the classic one of high-performance GEMMs (Goto's algorithm, as in BLIS):
//!
//! ```text
//! for jc in 0..n step NC            B block: KC × NC, packed into 16-column panels (L3/L2)
//!   for pc in 0..k step KC
//!     pack B[pc.., jc..]
//!     for ic in 0..m step MC        A block: MC × KC, packed into 6-row panels (L2)
//!       pack A[ic.., pc..]          (or read a PackedA prepared once)
//!       for jr, ir: micro-kernel    C[6×16] += A panel · B panel, 12 vector accumulators
//! ```
//!
//! Each step of the micro-kernel loads two 8-lane vectors from the B panel and broadcasts six
//! elements of the A panel, then issues 12 fused multiply-adds: 12 of the 16 AVX2 registers
//! hold accumulators, enough independent chains to keep both FMA pipes of a Zen 3 or Skylake
//! core busy. Panels are zero-padded to whole tiles, so the loop has no edge cases; edge tiles
//! go through a small buffer before reaching `C`.
//!
//! [`PackedA`] packs the left operand once for many products: a convolution multiplies the same
//! weight matrix with one column matrix per image, and repacking it for each image costs
//! 5–10% of a pointwise layer.
//!
//! Depth blocks are as even as possible (at most `KC` = 256 deep). Every element of `C` is the
//! sum of its `k` products taken in the same order (the depth blocks
//! in increasing `k`, each accumulated in increasing `k`), whatever `m` and `n` are and however
//! a caller splits the rows or columns of `C` between threads: results are bit-identical for
//! any work split.

use std::ops::Range;

use super::pack::{PackedA, PackedARef, pack_a, pack_b, packed_b_len};
use super::tile::{BPanels, Dest, MAX_PIECES, MR, NR, Piece, kblock, with_rows};
use super::{MatRef, check_a, check_bc};
use crate::scratch::{self, Slot};
use crate::simd::{self, LANES, Simd, SimdLevel, WithSimd};

/// Rows of a packed A block (144 x 256 floats = 144 KiB, in a 512 KiB L2).
const MC: usize = 144;
/// Columns of a packed B block (256 x 4032 floats, 4 MiB at most): 252 panels, a multiple of
/// the AVX-512 kernel's panel group.
const NC: usize = 4032;

/// `C = A[rows] · B + bias + beta · C` (`beta` 0 or 1) for a packed `A` and a `B` already in
/// the packed-B layout (see [`packed_b_len`]) with `n` columns; `c` is row-major with row
/// stride `ldc ≥ n`; `bias`, when given, holds one value per row of `C` (see [`RowBias`]).
/// For kernels that produce `B` in panel form themselves (the Winograd input transform,
/// im2col), so the product packs nothing; this entry point runs inside a [`Simd`] dispatch,
/// [`sgemm_packed_ab`] dispatches itself.
///
/// # Panics
/// When `rows` does not start at a multiple of [`MR`], `beta` is neither 0 nor 1, or a slice
/// is too short (internal bugs).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn gemm_packed_ab<S: Simd>(
    s: S,
    a: PackedARef<'_>,
    rows: Range<usize>,
    b: &[f32],
    n: usize,
    beta: f32,
    bias: RowBias<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_packed_ab_sum(s, &[(a, b)], rows, n, beta, bias, c, ldc);
}

/// `C = Σ_q A_q[rows] · B_q + bias + beta · C`: [`gemm_packed_ab`] for a sum of up to
/// [`MAX_PIECES`] products of the same depth and shape, each `(A_q, B_q)` a packed `A` and a
/// `B` in the packed-B layout. Within each depth block every tile accumulates the products
/// in registers in the order given and is stored once, where separate products added into
/// `C` would store and reload it once per product.
///
/// # Panics
/// As [`gemm_packed_ab`], and when there are no pieces, more than [`MAX_PIECES`], or their
/// depths or row counts differ.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn gemm_packed_ab_sum<S: Simd>(
    s: S,
    pieces: &[(PackedARef<'_>, &[f32])],
    rows: Range<usize>,
    n: usize,
    beta: f32,
    bias: RowBias<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    let Some(&(a0, _)) = pieces.first() else { panic!("gemm_packed_ab_sum: no products") };
    let k = a0.k;
    assert!(pieces.len() <= MAX_PIECES, "gemm_packed_ab_sum: too many products");
    assert!(pieces.iter().all(|(a, _)| a.k == k && a.m == a0.m));
    assert!(rows.start.is_multiple_of(MR) && rows.end <= a0.m && (beta == 0.0 || beta == 1.0));
    assert!(pieces.iter().all(|(_, b)| b.len() >= packed_b_len(k, n)) && ldc >= n);
    let m = rows.len();
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm_packed_ab: C too short");
    assert!(bias.is_none_or(|b| b.len() >= m), "gemm_packed_ab: bias too short");
    if k == 0 {
        empty_product(beta, bias, c, m, n, ldc);
        return;
    }
    let np = n.next_multiple_of(NR);
    let kb = kblock(k);
    let mut pc = 0;
    while pc < k {
        let kcb = kb.min(k - pc);
        let (beta, bias) = if pc == 0 { (beta, bias) } else { (1.0, None) };
        let mut ic = 0;
        while ic < m {
            let mc = MC.min(m - ic);
            let empty = BPanels { data: &[], stride: 0, offset: 0, count: 0, kcb: 0 };
            let mut block = [Piece { a: &[], b: empty }; MAX_PIECES];
            for (piece, &(a, b)) in block.iter_mut().zip(pieces) {
                let apanels = &a.panels(pc, rows.start + ic)[..mc.next_multiple_of(MR) * kcb];
                let bpanels =
                    BPanels { data: b, stride: k * NR, offset: pc * NR, count: np / NR, kcb };
                *piece = Piece { a: apanels, b: bpanels };
            }
            let blk = Dest { i: ic, j: 0, m, n, alpha: 1.0, beta, bias, ldc };
            tiles(s, &block[..pieces.len()], blk, c);
            ic += mc;
        }
        pc += kcb;
    }
}
/// A value to add to each row of a product's `C` (a convolution's bias, one per output
/// channel), or `None`.
pub type RowBias<'a> = Option<&'a [f32]>;

/// `C ← bias + beta · C` on the `m × n` block of `c`: a product of depth 0 (`beta == 0`
/// ignores the old contents).
fn empty_product(beta: f32, bias: RowBias<'_>, c: &mut [f32], m: usize, n: usize, ldc: usize) {
    for (i, row) in c.chunks_mut(ldc.max(1)).take(m).enumerate() {
        let add = bias.map(|b| b[i]);
        for v in &mut row[..n] {
            *v = match (add, beta == 0.0) {
                (None, true) => 0.0,
                (None, false) => beta * *v,
                (Some(add), true) => add,
                (Some(add), false) => add + beta * *v,
            };
        }
    }
}

/// Where the A panels come from.
#[derive(Clone, Copy)]
enum ASrc<'a> {
    /// Pack from this matrix block by block.
    Plain(MatRef<'a>),
    /// Already packed: rows `r0..r0+rows` (`r0` a multiple of [`MR`]).
    Packed(PackedARef<'a>, usize, usize),
}

/// One product for the SIMD dispatcher.
struct Gemm<'a> {
    alpha: f32,
    a: ASrc<'a>,
    b: MatRef<'a>,
    beta: f32,
    bias: RowBias<'a>,
    c: &'a mut [f32],
    ldc: usize,
    /// Packing buffers (A block, B block).
    bufs: &'a mut (Vec<f32>, Vec<f32>),
}

impl WithSimd for Gemm<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        driver(s, self);
    }
}

/// Runs `g` (without its buffers) at `level` with this thread's packing buffers. The buffers
/// are taken out of the thread-local before the dispatch: a closure body would be compiled
/// without the kernel's `#[target_feature]`s.
#[allow(clippy::too_many_arguments)]
fn run(
    level: SimdLevel,
    alpha: f32,
    a: ASrc<'_>,
    b: MatRef<'_>,
    beta: f32,
    bias: RowBias<'_>,
    c: &mut [f32],
    ldc: usize,
) -> Option<()> {
    let mut bufs = (scratch::take(Slot::PackA), scratch::take(Slot::PackB));
    let out = simd::dispatch(level, Gemm { alpha, a, b, beta, bias, c, ldc, bufs: &mut bufs });
    scratch::put(Slot::PackA, bufs.0);
    scratch::put(Slot::PackB, bufs.1);
    out
}

/// The blocked loops around the micro-kernel (see the module docs).
#[inline(always)]
fn driver<S: Simd>(s: S, g: Gemm<'_>) {
    let Gemm { alpha, a, b, beta, bias, c, ldc, bufs } = g;
    let (apack, bpack) = (&mut bufs.0, &mut bufs.1);
    let (m, k, n) = match a {
        ASrc::Plain(a) => (a.rows, a.cols, b.cols),
        ASrc::Packed(a, _, rows) => (rows, a.k, b.cols),
    };
    assert!(bias.is_none_or(|b| b.len() >= m), "sgemm: bias too short");
    if k == 0 {
        empty_product(beta, bias, c, m, n, ldc);
        return;
    }
    let mut jc = 0;
    while jc < n {
        let nc = NC.min(n - jc);
        let ncp = nc.next_multiple_of(NR);
        let kb = kblock(k);
        let mut pc = 0;
        while pc < k {
            let kcb = kb.min(k - pc);
            let bblock = scratch::aligned(bpack, ncp * kcb);
            pack_b(s, b, pc, kcb, jc, nc, bblock);
            let bblock: &[f32] = bblock;
            let (beta_block, bias_block) = if pc == 0 { (beta, bias) } else { (1.0, None) };
            let mut ic = 0;
            while ic < m {
                let mc = MC.min(m - ic);
                let mcp = mc.next_multiple_of(MR);
                let apanels: &[f32] = match a {
                    ASrc::Plain(a) => {
                        let ablock = scratch::aligned(apack, mcp * kcb);
                        pack_a(a, ic, mc, pc, kcb, ablock);
                        ablock
                    }
                    ASrc::Packed(a, r0, _) => &a.panels(pc, r0 + ic)[..mcp * kcb],
                };
                let bpanels =
                    BPanels { data: bblock, stride: NR * kcb, offset: 0, count: ncp / NR, kcb };
                let blk =
                    Dest { i: ic, j: jc, m, n, alpha, beta: beta_block, bias: bias_block, ldc };
                tiles(s, &[Piece { a: apanels, b: bpanels }], blk, c);
                ic += mc;
            }
            pc += kcb;
        }
        jc += nc;
    }
}

/// Every tile of one block: each B panel against each A panel, summed over the pieces (one
/// depth block each, the same panel counts) in registers. At the AVX-512 level, the 16-lane
/// kernel of [`super::wide`] takes several B panels at a time.
#[inline(always)]
fn tiles<S: Simd>(s: S, pieces: &[Piece<'_>], blk: Dest<'_>, c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(w) = s.avx512() {
        // SAFETY: the token `w` proves the CPU has the features `tiles` is compiled for.
        unsafe { super::wide::tiles(w, pieces, blk, c) };
        return;
    }
    let kc = pieces[0].b.kcb;
    for pj in 0..pieces[0].b.count {
        let j = blk.j + pj * NR;
        for pi in 0..pieces[0].a.len() / (MR * kc) {
            let t = blk.at(blk.i + pi * MR, j);
            // Only the rows of `C` the panel has (the last may hold padding rows).
            let acc = with_rows!(t.rows(), R => {
                let mut acc = [[s.zero(); 2]; MR];
                for piece in pieces {
                    let (a, bp) = (&piece.a[pi * MR * kc..], piece.b.panel(pj));
                    acc = micro::<S, R>(s, piece.b.kcb, a, bp, acc);
                }
                acc
            });
            store_tile(s, &acc, t, c);
        }
    }
}

/// `acc + A panel (6 × kc) · B panel (kc × 16)` in 12 vector accumulators, for the panel's
/// first `R` rows (the accumulators of the others are returned as given).
#[inline(always)]
fn micro<S: Simd, const R: usize>(
    s: S,
    kc: usize,
    ap: &[f32],
    bp: &[f32],
    mut acc: [[S::V; 2]; MR],
) -> [[S::V; 2]; MR] {
    assert!(ap.len() >= kc * MR && bp.len() >= kc * NR);
    let (a, b) = (ap.as_ptr(), bp.as_ptr());
    for p in 0..kc {
        // SAFETY: `p < kc`, and the assert above shows the panels hold `kc` steps of 6 (A)
        // and 16 (B) floats, so every read below is inside `ap` or `bp`.
        unsafe {
            let b0 = s.load_ptr(b.add(p * NR));
            let b1 = s.load_ptr(b.add(p * NR + LANES));
            for (r, acc_r) in acc.iter_mut().enumerate().take(R) {
                let av = s.splat(*a.add(p * MR + r));
                acc_r[0] = s.fma(av, b0, acc_r[0]);
                acc_r[1] = s.fma(av, b1, acc_r[1]);
            }
        }
    }
    acc
}

/// `C[tile] = alpha · acc + bias + beta · C[tile]` for the tile at `t` (`beta == 0` ignores the
/// old contents).
#[inline(always)]
fn store_tile<S: Simd>(s: S, acc: &[[S::V; 2]; MR], t: Dest<'_>, c: &mut [f32]) {
    let (mr, nr) = (t.rows(), t.cols(NR));
    if nr == NR {
        for (r, acc_r) in acc.iter().enumerate().take(mr) {
            let bias = t.row_bias(r).map(|v| s.splat(v));
            let row = &mut c[(t.i + r) * t.ldc + t.j..][..NR];
            for (h, &x) in acc_r.iter().enumerate() {
                let dst = &mut row[h * LANES..];
                let old = if t.beta == 0.0 { s.zero() } else { s.load(dst) };
                s.store(combine(s, t, x, bias, old), dst);
            }
        }
    } else {
        let mut buf = [0f32; NR];
        for (r, acc_r) in acc.iter().enumerate().take(mr) {
            let bias = t.row_bias(r).map(|v| s.splat(v));
            let row = &mut c[(t.i + r) * t.ldc + t.j..][..nr];
            buf[..nr].copy_from_slice(row);
            for (h, &x) in acc_r.iter().enumerate() {
                let dst = &mut buf[h * LANES..];
                let old = if t.beta == 0.0 { s.zero() } else { s.load(dst) };
                s.store(combine(s, t, x, bias, old), dst);
            }
            row.copy_from_slice(&buf[..nr]);
        }
    }
}

/// `alpha · x + bias + beta · old` (`old` unused when `beta == 0`). With `beta == 0` this is
/// `alpha · x + bias`, the same sum (and bits) as storing the bias into `C` first and adding
/// with `beta == 1`.
#[inline(always)]
fn combine<S: Simd>(s: S, t: Dest<'_>, x: S::V, bias: Option<S::V>, old: S::V) -> S::V {
    let x = if t.alpha == 1.0 { x } else { s.mul(s.splat(t.alpha), x) };
    let x = match bias {
        Some(b) => s.add(x, b),
        None => x,
    };
    if t.beta == 0.0 {
        x
    } else if t.beta == 1.0 {
        s.add(x, old)
    } else {
        s.fma(s.splat(t.beta), old, x)
    }
}

/// [`gemm_packed_ab`] for rows of a [`PackedA`], dispatched at the [`simd::active`] level.
///
/// # Panics
/// As [`gemm_packed_ab`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_ab(
    a: &PackedA,
    rows: Range<usize>,
    b: &[f32],
    n: usize,
    beta: f32,
    bias: RowBias<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    struct Run<'a> {
        a: PackedARef<'a>,
        rows: Range<usize>,
        b: &'a [f32],
        n: usize,
        beta: f32,
        bias: RowBias<'a>,
        c: &'a mut [f32],
        ldc: usize,
    }
    impl WithSimd for Run<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, s: S) {
            let Run { a, rows, b, n, beta, bias, c, ldc } = self;
            gemm_packed_ab(s, a, rows, b, n, beta, bias, c, ldc);
        }
    }
    simd::dispatch_active(Run { a: a.view(), rows, b, n, beta, bias, c, ldc });
}

/// `C ← alpha · A · B + beta · C` with the packed kernel at SIMD level `level`; `None` when the
/// CPU cannot run that level. Same contract as [`super::sgemm`].
pub fn sgemm_with(
    level: SimdLevel,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> Option<()> {
    check_a(a);
    let (m, _, n) = check_bc(a.rows, a.cols, b, c, ldc);
    if m == 0 || n == 0 {
        return Some(());
    }
    run(level, alpha, ASrc::Plain(a), b, beta, None, c, ldc)
}

/// `C ← alpha · A[rows] · B + bias + beta · C` for the rows `rows` of a prepacked `A`, at SIMD
/// level `level` (`None` when the CPU cannot run it). `c` is row-major `rows.len() × b.cols`
/// with row stride `ldc`; `bias`, when given, holds one value per row of `c` (so a caller
/// passes the bias of rows `rows`): with `beta == 0` the result has the bits of storing the
/// bias into `C` and multiplying with `beta == 1`, without that pass over `C`. Splitting a
/// product by row ranges gives the same bits as computing it whole.
///
/// # Panics
/// When `rows` does not start at a multiple of [`MR`] or ends past `a.rows()`, or when the
/// sizes disagree or a view reaches outside its slice (internal bugs).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_a_with(
    level: SimdLevel,
    alpha: f32,
    a: &PackedA,
    rows: Range<usize>,
    b: MatRef<'_>,
    beta: f32,
    bias: RowBias<'_>,
    c: &mut [f32],
    ldc: usize,
) -> Option<()> {
    assert!(
        rows.start.is_multiple_of(MR) && rows.start <= rows.end && rows.end <= a.m,
        "sgemm: rows {rows:?} of a {}-row PackedA",
        a.m
    );
    let (m, _, n) = check_bc(rows.len(), a.k, b, c, ldc);
    if m == 0 || n == 0 {
        return Some(());
    }
    run(level, alpha, ASrc::Packed(a.view(), rows.start, m), b, beta, bias, c, ldc)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gemm::pack::{packed_a_len, packed_a_position};

    fn naive(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f64> {
        let mut c = vec![0f64; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0f64;
                for p in 0..a.cols {
                    s += f64::from(a.at(i, p)) * f64::from(b.at(p, j));
                }
                c[i * b.cols + j] = s;
            }
        }
        c
    }

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0).collect()
    }

    fn levels() -> Vec<SimdLevel> {
        SimdLevel::available_levels()
    }

    /// The SIMD levels add the same products in the same order with fused multiply-adds, so
    /// they agree bit for bit, across the AVX-512 kernel's column groups and a B block edge.
    #[test]
    fn simd_levels_are_bit_identical() {
        let simd: Vec<SimdLevel> =
            levels().into_iter().filter(|&l| l != SimdLevel::Fallback).collect();
        if simd.len() < 2 {
            eprintln!("skipping: fewer than two SIMD levels on this CPU");
            return;
        }
        for (m, k, n) in [
            (7, 300, 1),
            (13, 40, 33),
            (6, 17, 49),
            (20, 257, 80),
            (5, 9, 4100),
            (9, 64, 50),
            (16, 30, 100),
        ] {
            let (ad, bd) = (data(m * k, n), data(k * n, m));
            let (a, b) = (MatRef::row_major(&ad, m, k), MatRef::row_major(&bd, k, n));
            let old = data(m * (n + 2), k);
            let runs: Vec<Vec<f32>> = simd
                .iter()
                .map(|&level| {
                    let mut c = old.clone();
                    sgemm_with(level, 0.5, a, b, 1.0, &mut c, n + 2).unwrap();
                    c
                })
                .collect();
            for (level, c) in simd.iter().zip(&runs).skip(1) {
                assert_eq!(c, &runs[0], "{level} differs from {} at {m}x{k}x{n}", simd[0]);
            }
        }
    }

    /// Every size class: below, at and above one tile, one block in each dimension, and both
    /// storage orders of both operands, against an f64 reference.
    #[test]
    fn matches_reference_for_edge_sizes_and_strides() {
        let sizes = [1, 5, 6, 7, 15, 16, 17, 143, 145, 257];
        let mut case = 0;
        // Every remainder of m mod 6: the last A panel multiplies only the rows it has.
        for &m in &[1, 6, 7, 8, 9, 10, 11, 145] {
            for &k in &sizes {
                for &n in &[1, 15, 16, 33, 200] {
                    case += 1;
                    let (ad, bd) = (data(m * k, case), data(k * n, case + 1));
                    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                        let a = if ta {
                            MatRef::row_major(&ad, k, m).t()
                        } else {
                            MatRef::row_major(&ad, m, k)
                        };
                        let b = if tb {
                            MatRef::row_major(&bd, n, k).t()
                        } else {
                            MatRef::row_major(&bd, k, n)
                        };
                        let want = naive(a, b);
                        let old = data(m * (n + 3), case + 2);
                        for level in levels() {
                            for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (0.5, -2.0)] {
                                let mut c = old.clone();
                                sgemm_with(level, alpha, a, b, beta, &mut c, n + 3).unwrap();
                                let packed = PackedA::new(a);
                                let mut c2 = old.clone();
                                sgemm_packed_a_with(
                                    level,
                                    alpha,
                                    &packed,
                                    0..m,
                                    b,
                                    beta,
                                    None,
                                    &mut c2,
                                    n + 3,
                                )
                                .unwrap();
                                assert_eq!(c, c2, "packed A differs: {m}x{k}x{n}");
                                for i in 0..m {
                                    for j in 0..n + 3 {
                                        let got = c[i * (n + 3) + j];
                                        let o = f64::from(old[i * (n + 3) + j]);
                                        let w = if j < n {
                                            f64::from(alpha) * want[i * n + j] + f64::from(beta) * o
                                        } else {
                                            o
                                        };
                                        let tol = 1e-5 * (k as f64 + 1.0) * (1.0 + w.abs());
                                        assert!(
                                            (f64::from(got) - w).abs() <= tol,
                                            "{level} {m}x{k}x{n} ta={ta} tb={tb} ({i},{j}): {got} vs {w}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `beta == 0` ignores NaN in C; rows computed alone equal the same rows of a larger product.
    #[test]
    fn beta_zero_ignores_nan_and_rows_do_not_depend_on_neighbours() {
        let (m, k, n) = (20, 300, 40);
        let (ad, bd) = (data(m * k, 1), data(k * n, 2));
        let b = MatRef::row_major(&bd, k, n);
        for level in levels() {
            let mut full = vec![f32::NAN; m * n];
            sgemm_with(level, 1.0, MatRef::row_major(&ad, m, k), b, 0.0, &mut full, n).unwrap();
            assert!(full.iter().all(|v| v.is_finite()));
            for (r0, r1) in [(0, 7), (7, 13), (13, 20)] {
                let mut part = vec![0.0; (r1 - r0) * n];
                let a = MatRef::row_major(&ad[r0 * k..r1 * k], r1 - r0, k);
                sgemm_with(level, 1.0, a, b, 0.0, &mut part, n).unwrap();
                assert_eq!(part, full[r0 * n..r1 * n], "{level} rows {r0}..{r1}");
            }
            let packed = PackedA::new(MatRef::row_major(&ad, m, k));
            for (r0, r1) in [(0, 6), (6, 18), (18, 20)] {
                let mut part = vec![0.0; (r1 - r0) * n];
                sgemm_packed_a_with(level, 1.0, &packed, r0..r1, b, 0.0, None, &mut part, n)
                    .unwrap();
                assert_eq!(part, full[r0 * n..r1 * n], "{level} packed rows {r0}..{r1}");
            }
        }
    }

    /// A row bias gives the bits of filling `C` with it and adding the product with `beta == 1`,
    /// at every level, for one and several depth blocks, edge tiles, row ranges (the bias of
    /// the rows computed), depth 0, and B in the packed-B layout.
    #[test]
    fn row_bias_equals_filling_c_first() {
        for &(m, k, n) in &[(7, 0, 5), (13, 40, 33), (20, 300, 49), (6, 513, 16), (25, 9, 4100)] {
            let (ad, bd) = (data(m * k, 5), data(k * n, 6));
            let bias = data(m, 7);
            let packed = PackedA::new(MatRef::row_major(&ad, m, k));
            let b = MatRef::row_major(&bd, k, n);
            let mut bp = vec![0.0; packed_b_len(k, n)];
            for p in 0..k {
                for j in 0..n {
                    bp[(j / NR) * k * NR + p * NR + j % NR] = bd[p * n + j];
                }
            }
            for level in levels() {
                let mut want = vec![0.0; m * n];
                for (row, &v) in want.chunks_exact_mut(n).zip(&bias) {
                    row.fill(v);
                }
                sgemm_packed_a_with(level, 1.0, &packed, 0..m, b, 1.0, None, &mut want, n).unwrap();
                let mut got = vec![f32::NAN; m * n];
                sgemm_packed_a_with(level, 1.0, &packed, 0..m, b, 0.0, Some(&bias), &mut got, n)
                    .unwrap();
                assert_eq!(got, want, "{level} {m}x{k}x{n}");
                // Rows 6.. alone, with their bias.
                if m > MR {
                    let mut part = vec![f32::NAN; (m - MR) * n];
                    let bias = Some(&bias[MR..]);
                    sgemm_packed_a_with(level, 1.0, &packed, MR..m, b, 0.0, bias, &mut part, n)
                        .unwrap();
                    assert_eq!(part, want[MR * n..], "{level} {m}x{k}x{n} rows {MR}..");
                }
                struct Run<'a>(PackedARef<'a>, &'a [f32], &'a [f32], usize, &'a mut [f32]);
                impl WithSimd for Run<'_> {
                    type Output = ();
                    fn with_simd<S: Simd>(self, s: S) {
                        let Run(a, b, bias, n, c) = self;
                        gemm_packed_ab(s, a, 0..a.m, b, n, 0.0, Some(bias), c, n);
                    }
                }
                let mut got = vec![f32::NAN; m * n];
                simd::dispatch(level, Run(packed.view(), &bp, &bias, n, &mut got)).unwrap();
                assert_eq!(got, want, "{level} {m}x{k}x{n} packed B");
            }
        }
    }

    /// The layout helpers agree with `PackedA`, and a product from a hand-packed B equals the
    /// packing product.
    #[test]
    fn layout_helpers_and_prepacked_b() {
        for &(m, k, n) in &[(7, 3, 16), (13, 300, 32), (6, 513, 48), (8, 20, 21)] {
            let (ad, bd) = (data(m * k, 3), data(k * n, 4));
            let a = MatRef::row_major(&ad, m, k);
            let packed = PackedA::new(a);
            assert_eq!(packed.data.len(), packed_a_len(m, k));
            for (q, &v) in packed.data.iter().enumerate() {
                let (i, p) = packed_a_position(m, k, q);
                assert_eq!(v, if i < m { ad[i * k + p] } else { 0.0 }, "{m}x{k} q={q}");
            }
            let mut bp = vec![f32::NAN; packed_b_len(k, n)];
            for p in 0..k {
                for j in 0..n {
                    bp[(j / NR) * k * NR + p * NR + j % NR] = bd[p * n + j];
                }
            }
            let b = MatRef::row_major(&bd, k, n);
            for level in levels() {
                let mut want = vec![0.0; m * n];
                sgemm_packed_a_with(level, 1.0, &packed, 0..m, b, 0.0, None, &mut want, n).unwrap();
                struct Run<'a>(PackedARef<'a>, &'a [f32], usize, usize, &'a mut [f32]);
                impl WithSimd for Run<'_> {
                    type Output = ();
                    fn with_simd<S: Simd>(self, s: S) {
                        let Run(a, b, m, n, c) = self;
                        gemm_packed_ab(s, a, 0..m, b, n, 0.0, None, c, n);
                    }
                }
                let mut got = vec![f32::NAN; m * n];
                simd::dispatch(level, Run(packed.view(), &bp, m, n, &mut got)).unwrap();
                assert_eq!(got, want, "{level} {m}x{k}x{n}");
                if level == simd::active() {
                    let mut acc = want.clone();
                    sgemm_packed_ab(&packed, 0..m, &bp, n, 1.0, None, &mut acc, n);
                    // Blocks are added to C one by one, so compare with a rounding margin.
                    for (x, w) in acc.iter().zip(&want) {
                        assert!(
                            (x - 2.0 * w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{m}x{k}x{n} beta 1"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_depth_scales_c() {
        let mut c = vec![2.0; 6];
        let a = MatRef::row_major(&[], 2, 0);
        let b = MatRef::row_major(&[], 0, 3);
        for level in levels() {
            c.fill(2.0);
            sgemm_with(level, 1.0, a, b, 0.5, &mut c, 3).unwrap();
            assert_eq!(c, [1.0; 6]);
            sgemm_with(level, 1.0, a, b, 0.0, &mut c, 3).unwrap();
            assert_eq!(c, [0.0; 6]);
        }
    }
}
