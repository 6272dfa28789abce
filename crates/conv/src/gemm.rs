//! A safe, bounds-checked wrapper over `matrixmultiply::sgemm`.
//!
//! `matrixmultiply` takes raw pointers and strides; this module checks once, before the call,
//! that every element the strides can reach lies inside the slices, so the kernels above it
//! never write `unsafe` for a GEMM.

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
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "sgemm: inner dimensions {m}x{k} · {}x{n}", b.rows);
    assert!(fits(a.data.len(), m, k, a.row_stride, a.col_stride), "sgemm: A out of bounds");
    assert!(fits(b.data.len(), k, n, b.row_stride, b.col_stride), "sgemm: B out of bounds");
    assert!(fits(c.len(), m, n, ldc, 1), "sgemm: C out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    assert!(m == 1 || ldc >= n, "sgemm: C rows overlap");
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    #[should_panic(expected = "out of bounds")]
    fn bounds_are_checked() {
        let a = [0.0; 5];
        let mut c = [0.0; 4];
        sgemm(1.0, MatRef::row_major(&a, 2, 3), MatRef::row_major(&a, 3, 2), 0.0, &mut c, 2);
    }
}
