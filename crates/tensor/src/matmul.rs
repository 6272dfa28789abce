//! Matrix multiplication on [`matrixmultiply::sgemm`]: a checked slice-level [`gemm`], and
//! tensor-level [`matmul`] / [`matmul_t`] for 2-D and batched (3-D) operands.
//!
//! **Transposes cost nothing.** `matmul_t(a, true, b, false)` multiplies `aᵀ·b` by handing
//! sgemm the row and column strides of the transposed view; nothing is copied. A linear layer
//! with weights stored `[out, in]` computes `x·Wᵀ` as `matmul_t(&x, false, &w, true)`.
//!
//! **Batching.** Shapes `[b, m, k] × [b, k, n] → [b, m, n]`; either side may instead be 2-D and
//! is then shared by every batch item. When the left side is `[b, m, k]` (not transposed) and
//! the right side is 2-D, the batch folds into the rows: one `[b·m, k] × [k, n]` sgemm.
//!
//! **Threads.** matrixmultiply runs single-threaded here (its `threading` feature is off);
//! batch items run in parallel with rayon when there are at least two and the whole product
//! has at least [`PAR_MIN_FLOPS`] floating point operations. Each item writes its own disjoint
//! output chunk (`par_chunks_mut`) with the same sgemm call it would make sequentially, so the
//! result is bit-identical whatever the number of threads. A single product of that size (a
//! linear layer at batch 64, forward and backward) is split into blocks of output rows
//! instead, one sgemm each; a row is computed the same way in any block.
//!
//! **Few rows.** A product with at most [`DOT_MAX_ROWS`] rows whose operands are both
//! contiguous along the inner dimension — a linear layer `x·Wᵀ` at batch 1 to 4 — skips
//! sgemm's packing of the whole right operand (the weight matrix, copied on every call) and
//! computes each output as a dot product of two contiguous rows, in eight running sums. Its
//! outputs split over threads above [`PAR_MIN_FLOPS`], each computed by one thread in the same
//! order, so it too is bit-identical for any number of threads. Its sums run in another
//! order than sgemm's, so a row's result can differ in the last bits from the same row inside
//! a larger batch.

use rayon::prelude::*;

use crate::error::{Result, TensorError};
use crate::tensor::{Tensor, checked_numel};

/// Work (in flops, `2·b·m·n·k`) below which a batched matmul stays on one thread.
///
/// 2²¹ ≈ 2 MFLOP is roughly 100 µs of single-core sgemm; the rayon fork/join of a batch costs
/// a few µs per item, so below this the overhead is a visible fraction and above it the
/// split pays off (batch 4 of 64×64×64 is exactly at the threshold).
pub const PAR_MIN_FLOPS: usize = 1 << 21;

/// Most rows of a product that [`matmul_t`] computes as dot products instead of with sgemm.
pub const DOT_MAX_ROWS: usize = 4;

/// `Σ a[i]·b[i]` in eight running sums (element `i` to sum `i mod 8`) added pairwise at the
/// end: a fixed order the compiler vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[j] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `out [m, n] = a [m, k] · b [k, n]` (`n = out.len() / m`) where row `i` of `a` starts at
/// `i·a_rs` and column `j` of `b` at `j·b_cs`, both contiguous along `k`: one dot product per
/// output.
fn matmul_dots(
    m: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_cs: usize,
    out: &mut [f32],
) {
    let n = out.len() / m.max(1);
    let column = |j: usize| &b[j * b_cs..j * b_cs + k];
    let fill =
        |(j, o): (usize, &mut f32), i: usize| *o = dot(&a[i * a_rs..i * a_rs + k], column(j));
    for (i, row) in out.chunks_mut(n).enumerate().take(m) {
        if 2 * k * n >= PAR_MIN_FLOPS && rayon::current_num_threads() > 1 {
            // Chunks of outputs large enough that the fork/join is a small part of each.
            let min_len = (PAR_MIN_FLOPS / 8 / (2 * k).max(1)).max(1);
            row.par_iter_mut().enumerate().with_min_len(min_len).for_each(|jo| fill(jo, i));
        } else {
            row.iter_mut().enumerate().for_each(|jo| fill(jo, i));
        }
    }
}

/// Index one past the last element a `rows × cols` matrix with these strides touches
/// (0 for an empty matrix), or `None` on overflow.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(rs)?.checked_add((cols - 1).checked_mul(cs)?)?.checked_add(1)
}

/// Whether distinct `(i, j)` of a `rows × cols` matrix map to distinct offsets: one stride
/// must step over a whole line of the other (the layouts sgemm writes safely).
fn no_self_alias(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    match (rows > 1, cols > 1) {
        (false, false) => true,
        (true, false) => rs >= 1,
        (false, true) => cs >= 1,
        (true, true) => {
            (cs >= 1 && rs >= (cols - 1).saturating_mul(cs).saturating_add(1))
                || (rs >= 1 && cs >= (rows - 1).saturating_mul(rs).saturating_add(1))
        }
    }
}

/// Checked, safe `C ← α·A·B + β·C` on slices with arbitrary (non-negative) strides, where `A`
/// is `m × k` with row stride `rsa` and column stride `csa` (element `(i, p)` at
/// `a[i·rsa + p·csa]`), `B` is `k × n`, `C` is `m × n`. A transposed operand is the same
/// slice with its two strides swapped. When `beta` is 0, `C` is only written, never read (so
/// `NaN`s in it do not leak).
///
/// Errors, naming the sizes and strides, when a slice is too short for its matrix, a stride
/// does not fit in `isize`, or `C`'s strides would make two elements overlap.
///
/// ```
/// use convkit_tensor::gemm;
/// // [2x3] · [3x2], both row-major.
/// let a = [1., 2., 3., 4., 5., 6.];
/// let b = [1., 0., 0., 1., 1., 1.];
/// let mut c = [0.0; 4];
/// gemm(2, 3, 2, 1.0, &a, 3, 1, &b, 2, 1, 0.0, &mut c, 2, 1)?;
/// assert_eq!(c, [4., 5., 10., 11.]);
/// // Aᵀ·A with A read transposed through its strides: [3x2]·[2x3].
/// let mut g = [0.0; 9];
/// gemm(3, 2, 3, 1.0, &a, 1, 3, &a, 3, 1, 0.0, &mut g, 3, 1)?;
/// assert_eq!(g[0], 17.0);
/// assert!(gemm(2, 3, 2, 1.0, &a[..5], 3, 1, &b, 2, 1, 0.0, &mut c, 2, 1).is_err());
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
#[allow(clippy::too_many_arguments)] // The BLAS signature, in BLAS order, is the point.
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) -> Result<()> {
    let dims = [m, k, n];
    let check = |name: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize| {
        let need = extent(rows, cols, rs, cs).ok_or_else(|| {
            TensorError::invalid("gemm", &dims, format!("{name}: strides ({rs}, {cs}) overflow"))
        })?;
        if need > len {
            return Err(TensorError::invalid(
                "gemm",
                &dims,
                format!(
                    "{name} is {rows}x{cols} with strides ({rs}, {cs}) and needs {need} \
                     elements, the slice has {len}"
                ),
            ));
        }
        if isize::try_from(rs).is_err() || isize::try_from(cs).is_err() {
            return Err(TensorError::invalid(
                "gemm",
                &dims,
                format!("{name}: strides ({rs}, {cs}) do not fit in isize"),
            ));
        }
        Ok(())
    };
    check("a", a.len(), m, k, rsa, csa)?;
    check("b", b.len(), k, n, rsb, csb)?;
    check("c", c.len(), m, n, rsc, csc)?;
    if !no_self_alias(m, n, rsc, csc) {
        return Err(TensorError::invalid(
            "gemm",
            &dims,
            format!("c strides ({rsc}, {csc}) make elements of the {m}x{n} output overlap"),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: every element sgemm reads or writes lies inside its slice: for A the largest
    // offset is (m-1)·rsa + (k-1)·csa < a.len() (checked by `extent` above, likewise B and
    // C; with k == 0 sgemm reads neither A nor B). All strides are non-negative and fit in
    // isize. C is borrowed mutably, so it cannot alias A or B, and `no_self_alias` guarantees
    // distinct (i, j) of C map to distinct offsets, as sgemm requires.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
    Ok(())
}

/// One operand of a matmul: its batch size (if 3-D), its logical rows × cols after the
/// optional transpose, and the strides of that logical matrix in the stored buffer.
struct Operand {
    batch: Option<usize>,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl Operand {
    fn of(t: &Tensor, trans: bool) -> Option<Operand> {
        let (batch, r, c) = match *t.dims() {
            [r, c] => (None, r, c),
            [b, r, c] => (Some(b), r, c),
            _ => return None,
        };
        // Stored row-major r × c: (row stride, col stride) = (c, 1); transposing swaps them.
        Some(if trans {
            Operand { batch, rows: c, cols: r, rs: 1, cs: c }
        } else {
            Operand { batch, rows: r, cols: c, rs: c, cs: 1 }
        })
    }

    /// Elements per batch item.
    fn item_len(&self) -> usize {
        self.rows * self.cols
    }
}

/// `a · b` for 2-D or batched 3-D operands; see [`matmul_t`].
///
/// ```
/// use convkit_tensor::{matmul, Tensor};
/// let a = Tensor::from_vec(&[2, 2], vec![1., 2., 3., 4.])?;
/// assert_eq!(matmul(&a, &Tensor::eye(2))?, a);
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t(a, false, b, false)
}

/// `op(a) · op(b)`, where `op` transposes the last two axes when its flag is set — through
/// strides, without copying.
///
/// * 2-D × 2-D: `[m, k] × [k, n] → [m, n]`.
/// * 3-D × 3-D: `[b, m, k] × [b, k, n] → [b, m, n]` (equal batch sizes).
/// * 3-D × 2-D or 2-D × 3-D: the 2-D side is shared by every batch item.
///
/// Errors name both shapes and the transpose flags when a rank is not 2 or 3, the inner
/// sizes differ, or the batch sizes differ.
///
/// ```
/// use convkit_tensor::{matmul_t, Tensor};
/// // A linear layer: x [batch, in] · Wᵀ with W stored [out, in].
/// let x = Tensor::ones(&[4, 3]);
/// let w = Tensor::from_vec(&[2, 3], vec![1., 1., 1., 0., 1., 2.])?;
/// let y = matmul_t(&x, false, &w, true)?;
/// assert_eq!(y.dims(), &[4, 2]);
/// assert_eq!(&y.as_slice()[..2], &[3., 3.]);
/// let e = matmul_t(&x, false, &w, false).unwrap_err();
/// assert!(e.to_string().contains("[4, 3] and [2, 3]"));
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn matmul_t(a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Result<Tensor> {
    let flags = format!("(trans_a={trans_a}, trans_b={trans_b})");
    let (Some(oa), Some(ob)) = (Operand::of(a, trans_a), Operand::of(b, trans_b)) else {
        return Err(TensorError::mismatch(
            "matmul",
            a.dims(),
            b.dims(),
            format!("operands must be 2-D or 3-D {flags}"),
        ));
    };
    if oa.cols != ob.rows {
        return Err(TensorError::mismatch(
            "matmul",
            a.dims(),
            b.dims(),
            format!("inner sizes differ: {} vs {} {flags}", oa.cols, ob.rows),
        ));
    }
    let batch = match (oa.batch, ob.batch) {
        (Some(x), Some(y)) if x != y => {
            return Err(TensorError::mismatch(
                "matmul",
                a.dims(),
                b.dims(),
                format!("batch sizes differ: {x} vs {y}"),
            ));
        }
        (x, y) => x.or(y),
    };
    let (m, k, n) = (oa.rows, oa.cols, ob.cols);
    let out_dims: Vec<usize> = match batch {
        Some(bs) => vec![bs, m, n],
        None => vec![m, n],
    };
    let total = checked_numel("matmul", &out_dims)?;
    let mut out = crate::buffer::zeroed(total);
    if total == 0 {
        return Tensor::from_vec(&out_dims, out);
    }
    let (xa, xb) = (a.as_slice(), b.as_slice());

    if batch.is_none() && m <= DOT_MAX_ROWS && oa.cs == 1 && ob.rs == 1 && k > 0 {
        matmul_dots(m, k, xa, oa.rs, xb, ob.cs, &mut out);
        return Tensor::from_vec(&out_dims, out);
    }

    // One product: 2-D, or the batch folded into the rows ([b, m, k] row-major, not
    // transposed, is [b·m, k]); `total / n` rows either way.
    if batch.is_none() || (oa.batch.is_some() && ob.batch.is_none() && !trans_a) {
        gemm_row_blocks(total / n, k, n, xa, (oa.rs, oa.cs), xb, (ob.rs, ob.cs), &mut out)?;
        return Tensor::from_vec(&out_dims, out);
    }

    let bs = batch.unwrap_or(1);
    let step_a = if oa.batch.is_some() { oa.item_len() } else { 0 };
    let step_b = if ob.batch.is_some() { ob.item_len() } else { 0 };
    let item = |i: usize, c: &mut [f32]| {
        let a_i = &xa[i * step_a..i * step_a + oa.item_len()];
        let b_i = &xb[i * step_b..i * step_b + ob.item_len()];
        gemm(m, k, n, 1.0, a_i, oa.rs, oa.cs, b_i, ob.rs, ob.cs, 0.0, c, n, 1)
    };
    let flops = 2usize.saturating_mul(total).saturating_mul(k);
    if bs >= 2 && flops >= PAR_MIN_FLOPS {
        out.par_chunks_mut(m * n).enumerate().try_for_each(|(i, c)| item(i, c))?;
    } else {
        out.chunks_mut(m * n).enumerate().try_for_each(|(i, c)| item(i, c))?;
    }
    Tensor::from_vec(&out_dims, out)
}

/// `C = A·B` for a row-major `C` (`m × n`, contiguous in `c`) and strided `A` (`m × k`) and
/// `B` (`k × n`): one sgemm, or, when the product has at least [`PAR_MIN_FLOPS`] and there are
/// several threads, one sgemm per block of rows of `C` in parallel.
///
/// Row blocks give the same bits as the whole product: sgemm sums each element over `k` in
/// blocks chosen from `k` alone, and a row's products do not depend on the rows around it.
#[allow(clippy::too_many_arguments)]
fn gemm_row_blocks(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
) -> Result<()> {
    let threads = rayon::current_num_threads();
    let flops = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    // Blocks of whole 8-row micro-panels, at least two of them per block.
    let rows = m.div_ceil(threads.max(1)).next_multiple_of(8).max(16);
    if threads < 2 || flops < PAR_MIN_FLOPS || rows >= m {
        return gemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, n, 1);
    }
    c.par_chunks_mut(rows * n).enumerate().try_for_each(|(i, c)| {
        let r0 = i * rows;
        gemm(c.len() / n, k, n, 1.0, &a[r0 * rsa..], rsa, csa, b, rsb, csb, 0.0, c, n, 1)
    })
}

impl Tensor {
    /// `self · rhs`; see [`matmul_t`] for shapes and batching.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let a = Tensor::ones(&[2, 3]);
    /// assert_eq!(a.matmul(&Tensor::ones(&[3, 4]))?.as_slice(), &[3.0; 8]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        matmul_t(self, false, rhs, false)
    }

    /// `op(self) · op(rhs)` with optional transposes; see [`matmul_t`].
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let a = Tensor::ones(&[3, 2]);
    /// assert_eq!(a.matmul_t(true, &a, false)?.dims(), &[2, 2]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn matmul_t(&self, trans_a: bool, rhs: &Tensor, trans_b: bool) -> Result<Tensor> {
        matmul_t(self, trans_a, rhs, trans_b)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn small_exact_products() {
        let a = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let b = Tensor::from_vec(&[3, 2], vec![7., 8., 9., 10., 11., 12.]).unwrap();
        assert_eq!(matmul(&a, &b).unwrap().as_slice(), &[58., 64., 139., 154.]);
        // aᵀ·bᵀ: (3x2)·(2x3), against materialized transposes.
        let c = matmul_t(&a, true, &b, true).unwrap();
        assert_eq!(c.dims(), &[3, 3]);
        assert_eq!(c, a.t().unwrap().matmul(&b.t().unwrap()).unwrap());
    }

    #[test]
    fn large_products_split_into_row_blocks_with_the_same_bits() {
        // A linear layer 3136 → 128 at batch 67 (row blocks that are not all full): forward
        // x·Wᵀ, input gradient dy·W and weight gradient dyᵀ·x, on 1, 2 and 3 threads.
        let mut rng = Rng::new(5);
        let x = Tensor::rand_uniform(&[67, 3136], -1.0, 1.0, &mut rng).unwrap();
        let w = Tensor::rand_uniform(&[128, 3136], -0.05, 0.05, &mut rng).unwrap();
        let dy = Tensor::rand_uniform(&[67, 128], -1.0, 1.0, &mut rng).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                [
                    matmul_t(&x, false, &w, true).unwrap(),
                    matmul_t(&dy, false, &w, false).unwrap(),
                    matmul_t(&dy, true, &x, false).unwrap(),
                ]
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            for (a, b) in one.iter().zip(run(threads).iter()) {
                assert_eq!(a.as_slice(), b.as_slice(), "1 vs {threads} threads");
            }
        }
        // Spot checks against f64 sums.
        let (xs, ws) = (x.as_slice(), w.as_slice());
        for (i, j) in [(0, 0), (33, 77), (66, 127)] {
            let want: f64 =
                (0..3136).map(|t| f64::from(xs[i * 3136 + t]) * f64::from(ws[j * 3136 + t])).sum();
            assert!((f64::from(one[0].as_slice()[i * 128 + j]) - want).abs() < 1e-3);
        }
    }

    #[test]
    fn few_rows_take_dot_products_that_match_f64_and_any_thread_count() {
        let mut rng = Rng::new(4);
        // A linear layer at batch 1 and 3, large enough to split over threads.
        for m in [1, 3] {
            let x = Tensor::rand_uniform(&[m, 3136], -1.0, 1.0, &mut rng).unwrap();
            let w = Tensor::rand_uniform(&[128, 3136], -0.05, 0.05, &mut rng).unwrap();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| matmul_t(&x, false, &w, true).unwrap())
            };
            let one = run(1);
            assert_eq!(one.as_slice(), run(2).as_slice(), "1 vs 2 threads");
            assert_eq!(one.as_slice(), run(3).as_slice(), "1 vs 3 threads");
            for i in 0..m {
                for j in 0..128 {
                    let want: f64 = (0..3136)
                        .map(|t| {
                            f64::from(x.as_slice()[i * 3136 + t])
                                * f64::from(w.as_slice()[j * 3136 + t])
                        })
                        .sum();
                    let got = f64::from(one.as_slice()[i * 128 + j]);
                    assert!((got - want).abs() < 1e-4, "[{i},{j}]: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn gemm_rejects_unsound_calls() {
        let a = [1.0f32; 6];
        let mut c = [0.0f32; 4];
        // C strides that would alias.
        let e = gemm(2, 3, 2, 1.0, &a, 3, 1, &a, 2, 1, 0.0, &mut c, 1, 1).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // B too short.
        let e = gemm(2, 3, 2, 1.0, &a, 3, 1, &a[..5], 2, 1, 0.0, &mut c, 2, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "gemm: b is 3x2 with strides (2, 1) and needs 6 elements, the slice has 5 \
             (tensor shape [2, 3, 2])"
        );
        // Overflowing strides.
        assert!(gemm(2, 3, 2, 1.0, &a, usize::MAX, 1, &a, 2, 1, 0.0, &mut c, 2, 1).is_err());
        // k = 0 scales C by beta.
        let mut c = [2.0f32; 4];
        gemm(2, 0, 2, 1.0, &[], 0, 0, &[], 0, 0, 0.5, &mut c, 2, 1).unwrap();
        assert_eq!(c, [1.0; 4]);
        // Empty output is a no-op even with empty slices.
        gemm(0, 3, 2, 1.0, &[], 3, 1, &a, 2, 1, 0.0, &mut [], 2, 1).unwrap();
    }

    #[test]
    fn beta_zero_ignores_nan_in_c() {
        let mut c = [f32::NAN; 1];
        gemm(1, 1, 1, 1.0, &[2.0], 1, 1, &[3.0], 1, 1, 0.0, &mut c, 1, 1).unwrap();
        assert_eq!(c, [6.0]);
    }

    #[test]
    fn batched_parallel_equals_sequential_bitwise() {
        // 4 × 2·64³ flops = PAR_MIN_FLOPS: this call takes the parallel path.
        let mut rng = Rng::new(1);
        let a = Tensor::rand_uniform(&[4, 64, 64], -1.0, 1.0, &mut rng).unwrap();
        let b = Tensor::rand_uniform(&[4, 64, 64], -1.0, 1.0, &mut rng).unwrap();
        const { assert!(2 * 4 * 64 * 64 * 64 >= PAR_MIN_FLOPS) };
        let c = matmul(&a, &b).unwrap();
        for i in 0..4 {
            let ai = a.narrow(0, i, 1).unwrap().reshape(&[64, 64]).unwrap();
            let bi = b.narrow(0, i, 1).unwrap().reshape(&[64, 64]).unwrap();
            let ci = c.narrow(0, i, 1).unwrap().reshape(&[64, 64]).unwrap();
            assert_eq!(matmul(&ai, &bi).unwrap().as_slice(), ci.as_slice());
        }
    }

    #[test]
    fn broadcast_rhs_fold_and_lhs_shared() {
        let mut rng = Rng::new(2);
        let a = Tensor::rand_uniform(&[3, 4, 5], -1.0, 1.0, &mut rng).unwrap();
        let w = Tensor::rand_uniform(&[5, 6], -1.0, 1.0, &mut rng).unwrap();
        let folded = matmul(&a, &w).unwrap();
        assert_eq!(folded.dims(), &[3, 4, 6]);
        let expect = matmul(&a.reshape(&[12, 5]).unwrap(), &w).unwrap();
        assert_eq!(folded.as_slice(), expect.as_slice());
        // The 2-D side on the left is shared too.
        let l = Tensor::rand_uniform(&[2, 3], -1.0, 1.0, &mut rng).unwrap();
        let r = Tensor::rand_uniform(&[5, 3, 4], -1.0, 1.0, &mut rng).unwrap();
        let y = matmul(&l, &r).unwrap();
        assert_eq!(y.dims(), &[5, 2, 4]);
        let r1 = r.narrow(0, 1, 1).unwrap().reshape(&[3, 4]).unwrap();
        assert_eq!(&y.as_slice()[8..16], matmul(&l, &r1).unwrap().as_slice());
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let a = Tensor::zeros(&[2, 3]);
        let e = matmul(&a, &Tensor::zeros(&[4, 5])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "matmul: incompatible shapes [2, 3] and [4, 5]: inner sizes differ: 3 vs 4 \
             (trans_a=false, trans_b=false)"
        );
        let e = matmul(&Tensor::zeros(&[2, 2, 3]), &Tensor::zeros(&[3, 3, 4])).unwrap_err();
        assert!(e.to_string().contains("batch sizes differ: 2 vs 3"), "{e}");
        let e = matmul(&Tensor::zeros(&[3]), &a).unwrap_err();
        assert!(e.to_string().contains("[3] and [2, 3]"), "{e}");
        // Empty results are fine.
        assert_eq!(
            matmul(&Tensor::zeros(&[0, 3]), &Tensor::zeros(&[3, 2])).unwrap().dims(),
            &[0, 2]
        );
        assert_eq!(
            matmul(&Tensor::zeros(&[2, 0]), &Tensor::zeros(&[0, 2])).unwrap().as_slice(),
            &[0.0; 4]
        );
    }
}
