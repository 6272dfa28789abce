//! Matrix products for the convolution kernels: a packed AVX2 GEMM ([`packed`]), a safe,
//! bounds-checked wrapper over `matrixmultiply::sgemm`, and two small-shape paths.
//!
//! [`sgemm`] runs the packed 6x16 kernel of [`packed`] when the active SIMD level is AVX2+FMA
//! and `matrixmultiply::sgemm` otherwise (the portable fallback, which `CONVKIT_SIMD=off`
//! selects). Both take raw pointers and strides underneath; this module checks once, before
//! the call, that every element the strides can reach lies inside the slices, so the kernels
//! above it never write `unsafe` for a GEMM.
//!
//! Why a kernel of our own: `matrixmultiply` packs both operands for every call and runs an
//! 8x8 micro-kernel. A convolution multiplies one weight matrix by a column matrix per image,
//! so packing the weights once ([`PackedA`]) and using a 6x16 tile (12 accumulators instead
//! of 8) lifts im2col on the suite's big layers from 60–74 to the figures in `docs/benchmarks.md`.

mod pack;
pub mod packed;
mod tile;
#[cfg(target_arch = "x86_64")]
mod wide;

#[cfg(feature = "testing")]
pub use pack::packed_a_position;
pub use pack::{PackedA, PackedARef, packed_a_len, packed_b_len};
pub use packed::{
    RowBias, gemm_packed_ab, gemm_packed_ab_sum, sgemm_packed_a_with, sgemm_packed_ab, sgemm_with,
};
pub use tile::{MAX_PIECES, MR, NR, kblock};

use crate::simd::{self, SimdLevel};

/// A read-only matrix view: `rows × cols` elements of `data`, element `(i, j)` at
/// `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// The backing slice.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between two rows.
    pub row_stride: usize,
    /// Distance between two columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix (`row_stride = cols`, `col_stride = 1`).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose: the same memory read with the strides swapped.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// Whether every index `i * rs + j * cs` for `i < rows`, `j < cols` is below `len`.
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1).checked_mul(rs).and_then(|a| (cols - 1).checked_mul(cs)?.checked_add(a));
    matches!(last, Some(l) if l < len) && rs <= isize::MAX as usize && cs <= isize::MAX as usize
}

/// `C ← alpha · A · B + beta · C` for a row-major `C` of `a.rows × b.cols` stored in `c` with
/// row stride `ldc`. With `beta == 0` the previous contents of `C` are ignored (even NaN).
///
/// # Panics
/// When the inner dimensions differ or a view reaches outside its slice. Callers derive all
/// sizes from a validated [`ConvGeometry`](crate::ConvGeometry), so a panic here is a bug in
/// this crate, never a consequence of user input.
pub fn sgemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: &mut [f32], ldc: usize) {
    let level = simd::active();
    if level != SimdLevel::Fallback && sgemm_with(level, alpha, a, b, beta, c, ldc).is_some() {
        return;
    }
    sgemm_matrixmultiply(alpha, a, b, beta, c, ldc);
}

/// [`sgemm`] through `matrixmultiply::sgemm`, whatever the SIMD level (the portable path).
///
/// # Panics
/// As [`sgemm`].
pub fn sgemm_matrixmultiply(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    check_a(a);
    let (m, k, n) = check_bc(a.rows, a.cols, b, c, ldc);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above prove that every element A (m×k), B (k×n) and C (m×n) reach
    // through their strides lies inside the corresponding slice and that the strides fit in
    // `isize`. C has column stride 1 and, when it has several rows, `ldc ≥ n`, so no two of its
    // elements alias; it is borrowed mutably, so it aliases neither A nor B.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// Checks that the left operand `a` lies inside its slice.
fn check_a(a: MatRef<'_>) {
    assert!(
        fits(a.data.len(), a.rows, a.cols, a.row_stride, a.col_stride),
        "sgemm: A out of bounds"
    );
}

/// Checks the right operand and the result of an `m × k` by `b` product (inner dimensions,
/// bounds, non-overlapping rows of `C`) and returns `(m, k, n)`.
fn check_bc(m: usize, k: usize, b: MatRef<'_>, c: &[f32], ldc: usize) -> (usize, usize, usize) {
    let n = b.cols;
    assert_eq!(k, b.rows, "sgemm: inner dimensions {m}x{k} · {}x{n}", b.rows);
    assert!(fits(b.data.len(), k, n, b.row_stride, b.col_stride), "sgemm: B out of bounds");
    assert!(fits(c.len(), m, n, ldc, 1), "sgemm: C out of bounds");
    assert!(m <= 1 || n == 0 || ldc >= n, "sgemm: C rows overlap");
    (m, k, n)
}

/// `C ← alpha · A[rows] · B + bias + beta · C` for rows of a prepacked `A` at the
/// [`simd::active`] level (the portable build of the packed kernel when SIMD is off); see
/// [`sgemm_packed_a_with`].
///
/// # Panics
/// As [`sgemm_packed_a_with`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_a(
    alpha: f32,
    a: &PackedA,
    rows: std::ops::Range<usize>,
    b: MatRef<'_>,
    beta: f32,
    bias: RowBias<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    let level = simd::active();
    let done = sgemm_packed_a_with(level, alpha, a, rows.clone(), b, beta, bias, c, ldc);
    if done.is_none() {
        // The active level is always available; the fallback cannot fail.
        sgemm_packed_a_with(SimdLevel::Fallback, alpha, a, rows, b, beta, bias, c, ldc);
    }
}

/// Products with at most this many rows on the short side skip `sgemm`: its 8-row micro-kernel
/// and packing cost more than they save there (a depthwise 3x3 forward is a `1×9 · 9×784`
/// product per channel: 1.9 GFLOP/s through `sgemm`, several times that as 9 row updates).
pub const SMALL_DIM: usize = 4;

impl MatRef<'_> {
    #[inline]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// `C ← A · B + beta · C` (`beta` 0 or 1) computed row by row as scaled-row updates
/// (`C[i,:] += A[i,k] · B[k,:]`), for products where A has few rows or few columns. `b` is
/// row-major `a.cols × n`, `c` row-major `a.rows × n`. Results differ from [`sgemm`] in the
/// last bits (another summation order), so a caller must choose between the two from sizes
/// that do not depend on how the work is split.
///
/// # Panics
/// When a slice is too short for the sizes (an internal bug, as for [`sgemm`]).
pub fn gemm_rows(a: MatRef<'_>, b: &[f32], n: usize, beta: f32, c: &mut [f32]) {
    let (m, k) = (a.rows, a.cols);
    assert!(fits(a.data.len(), m, k, a.row_stride, a.col_stride), "gemm_rows: A out of bounds");
    assert!(b.len() >= k * n && c.len() >= m * n, "gemm_rows: B or C too short");
    if n == 0 {
        return;
    }
    for (i, row) in c.chunks_exact_mut(n).take(m).enumerate() {
        if beta == 0.0 {
            row.fill(0.0);
        }
        for (kk, brow) in b.chunks_exact(n).take(k).enumerate() {
            let s = a.at(i, kk);
            for (o, &v) in row.iter_mut().zip(brow) {
                *o += s * v;
            }
        }
    }
}

/// `C ← A · Bᵀ + beta · C` (`beta` 0 or 1) as dot products, for few rows of A: `a` is
/// row-major `m × p`, `b` row-major `n × p`, `c` row-major `m × n`. Each dot product runs
/// eight partial sums in a fixed order, so the compiler can vectorize it.
///
/// # Panics
/// When a slice is too short for the sizes (an internal bug).
pub fn gemm_abt_dots(a: &[f32], b: &[f32], m: usize, n: usize, p: usize, beta: f32, c: &mut [f32]) {
    assert!(a.len() >= m * p && b.len() >= n * p && c.len() >= m * n, "gemm_abt_dots: too short");
    if p == 0 {
        if beta == 0.0 {
            c[..m * n].fill(0.0);
        }
        return;
    }
    for (arow, crow) in a.chunks_exact(p).zip(c.chunks_exact_mut(n.max(1))).take(m) {
        for (brow, cv) in b.chunks_exact(p).zip(crow.iter_mut()).take(n) {
            let mut acc = [0f32; 8];
            let (a8, b8) = (arow.chunks_exact(8), brow.chunks_exact(8));
            let (ar, br) = (a8.remainder(), b8.remainder());
            for (x, y) in a8.zip(b8) {
                for l in 0..8 {
                    acc[l] += x[l] * y[l];
                }
            }
            let mut sum =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for (x, y) in ar.iter().zip(br) {
                sum += x * y;
            }
            *cv = if beta == 0.0 { sum } else { *cv + sum };
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::simd::{Simd, WithSimd};

    /// Repacking into a buffer that held a larger matrix (garbage for this one) gives the
    /// same panels as packing into a fresh one, the zero rows of a partial panel included.
    #[test]
    fn repack_overwrites_a_recycled_buffer() {
        let (m, k) = (7, 300);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let mut fresh = PackedA::empty();
        fresh.repack(MatRef::row_major(&a, m, k));
        let mut reused = PackedA::from_buffer(vec![f32::NAN; 20 * k]);
        reused.repack(MatRef::row_major(&a, m, k));
        assert_eq!(reused.data.len(), fresh.data.len());
        assert!(reused.data.iter().zip(&fresh.data).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    /// A matrix large enough to be packed by several threads (a partial last panel, several
    /// depth blocks, row-major and transposed) packs to the same panels as on one thread.
    #[test]
    fn parallel_repack_matches_one_thread() {
        let (m, k) = (50, 700);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        for view in [MatRef::row_major(&a, m, k), MatRef::row_major(&a, k, m).t()] {
            let pack = |threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut p = PackedA::from_buffer(vec![f32::NAN; 3]);
                pool.install(|| p.repack(view));
                p.data
            };
            let (one, two) = (pack(1), pack(2));
            assert!(one.len() == two.len() && one.iter().zip(&two).all(|(x, y)| x == y));
            assert!(one.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn small_products_and_transposes() {
        // A = [[1,2,3],[4,5,6]], B = [[1,0],[0,1],[1,1]]
        let a = [1., 2., 3., 4., 5., 6.];
        let b = [1., 0., 0., 1., 1., 1.];
        let mut c = [f32::NAN; 4];
        sgemm(1.0, MatRef::row_major(&a, 2, 3), MatRef::row_major(&b, 3, 2), 0.0, &mut c, 2);
        assert_eq!(c, [4., 5., 10., 11.]);
        // Aᵀ·A = 3x3
        let mut c = [1.0; 9];
        let at = MatRef::row_major(&a, 2, 3).t();
        sgemm(1.0, at, MatRef::row_major(&a, 2, 3), 1.0, &mut c, 3);
        assert_eq!(c, [18., 23., 28., 23., 30., 37., 28., 37., 46.]);
    }

    #[test]
    fn small_paths_agree_with_sgemm() {
        let a: Vec<f32> = (0..3 * 19).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..19 * 5).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut want = vec![0.0; 15];
        sgemm(1.0, MatRef::row_major(&a, 3, 19), MatRef::row_major(&b, 19, 5), 0.0, &mut want, 5);
        let mut got = vec![f32::NAN; 15];
        gemm_rows(MatRef::row_major(&a, 3, 19), &b, 5, 0.0, &mut got);
        assert_eq!(got, want);
        // A · Bᵀ with B given as its transpose (5 × 19).
        let mut bt = vec![0.0; 95];
        for r in 0..19 {
            for c in 0..5 {
                bt[c * 19 + r] = b[r * 5 + c];
            }
        }
        let mut got = vec![1.0; 15];
        gemm_abt_dots(&a, &bt, 3, 5, 19, 1.0, &mut got);
        assert_eq!(got, want.iter().map(|v| v + 1.0).collect::<Vec<_>>());
    }

    /// `B` (`k × n`, row-major) in the packed-B layout.
    fn packed_b(b: &[f32], k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; packed_b_len(k, n)];
        for p in 0..k {
            for j in 0..n {
                out[(j / NR) * k * NR + p * NR + j % NR] = b[p * n + j];
            }
        }
        out
    }

    /// `gemm_packed_ab_sum` on one to four products at every level: on small integers it is
    /// the exact sum, with rows past a whole panel (13), two depth blocks (300 → 150 + 150),
    /// a last column panel of 5 (AVX-512's 8-lane path) or 11, `beta` 1 and a bias; on
    /// random values within the sum's tolerance of an f64 reference.
    #[test]
    fn sums_of_packed_products() {
        struct Job<'a> {
            pieces: &'a [(PackedARef<'a>, &'a [f32])],
            n: usize,
            bias: &'a [f32],
            c: &'a mut [f32],
        }
        impl WithSimd for Job<'_> {
            type Output = ();
            fn with_simd<S: Simd>(self, s: S) {
                let m = self.bias.len();
                gemm_packed_ab_sum(
                    s,
                    self.pieces,
                    0..m,
                    self.n,
                    1.0,
                    Some(self.bias),
                    self.c,
                    self.n,
                );
            }
        }
        let (m, k) = (13, 300);
        for (n, count, ints) in [(37, 1, true), (37, 4, true), (43, 3, true), (37, 2, false)] {
            let value = |i: usize, salt: usize| {
                let h = (i * 7919 + salt * 104_729) % 1009;
                if ints { (h % 7) as f32 - 3.0 } else { h as f32 / 1009.0 - 0.5 }
            };
            let a: Vec<Vec<f32>> =
                (0..count).map(|q| (0..m * k).map(|i| value(i, 2 * q)).collect()).collect();
            let b: Vec<Vec<f32>> =
                (0..count).map(|q| (0..k * n).map(|i| value(i, 2 * q + 1)).collect()).collect();
            let packs: Vec<PackedA> =
                a.iter().map(|a| PackedA::new(MatRef::row_major(a, m, k))).collect();
            let bp: Vec<Vec<f32>> = b.iter().map(|b| packed_b(b, k, n)).collect();
            let pieces: Vec<(PackedARef<'_>, &[f32])> =
                packs.iter().zip(&bp).map(|(a, b)| (a.view(), &b[..])).collect();
            let bias: Vec<f32> = (0..m).map(|i| i as f32 - 6.0).collect();
            let c0: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    let (a, b) = (&a, &b);
                    let dot = |q: usize| {
                        (0..k).map(move |p| a[q][i * k + p] as f64 * b[q][p * n + j] as f64)
                    };
                    (0..count).flat_map(dot).sum::<f64>() + bias[i] as f64 + c0[e] as f64
                })
                .collect();
            for level in SimdLevel::available_levels() {
                let mut c = c0.clone();
                simd::dispatch(level, Job { pieces: &pieces, n, bias: &bias, c: &mut c }).unwrap();
                for (e, (&got, &w)) in c.iter().zip(&want).enumerate() {
                    let tol = if ints { 0.0 } else { 1e-4 * (count * k) as f64 };
                    assert!(
                        (got as f64 - w).abs() <= tol,
                        "{level:?} n {n} x{count}: {e} {got} {w}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn bounds_are_checked() {
        let a = [0.0; 5];
        let mut c = [0.0; 4];
        sgemm(1.0, MatRef::row_major(&a, 2, 3), MatRef::row_major(&a, 3, 2), 0.0, &mut c, 2);
    }
}
