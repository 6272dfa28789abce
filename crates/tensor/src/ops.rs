//! Elementwise math: binary operations with NumPy broadcasting, scalar operations and unary
//! maps.
//!
//! **Broadcasting** follows NumPy: align the shapes at their last axis; two sizes are
//! compatible when they are equal or one of them is 1; a missing leading axis counts as 1.
//! The result has the larger size on every axis. `[64, 6, 28, 28] + [6, 1, 1]` adds a per-channel
//! bias; `[3, 1] * [1, 4]` is an outer product.
//!
//! All operations here return a new tensor except the `*_assign` forms, [`Tensor::axpy`] and
//! [`Tensor::map_inplace`], which write into `self` (copy-on-write, see [`Tensor`]). Same-shape,
//! scalar and unary operations on at least [`PAR_MIN_ELEMENTS`] elements split into chunks on
//! rayon's pool; general broadcasts run on one thread. Every element is computed the same way
//! either way, so results never depend on the thread count.

use rayon::prelude::*;

use crate::error::{Result, TensorError};
use crate::tensor::{Tensor, checked_numel, strides};

/// The broadcast shape of two shapes (NumPy rules), or a [`TensorError::ShapeMismatch`]
/// naming both.
///
/// ```
/// use convkit_tensor::broadcast_shapes;
/// assert_eq!(broadcast_shapes(&[8, 1, 6, 1], &[7, 1, 5])?, vec![8, 7, 6, 5]);
/// assert!(broadcast_shapes(&[2, 3], &[4]).is_err());
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn broadcast_shapes(lhs: &[usize], rhs: &[usize]) -> Result<Vec<usize>> {
    broadcast_shape_for("broadcast", lhs, rhs)
}

pub(crate) fn broadcast_shape_for(
    op: &'static str,
    lhs: &[usize],
    rhs: &[usize],
) -> Result<Vec<usize>> {
    let rank = lhs.len().max(rhs.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        // Axis i of the output is axis i - (rank - len) of each operand, or 1 when missing.
        let l = (i + lhs.len()).checked_sub(rank).map_or(1, |j| lhs[j]);
        let r = (i + rhs.len()).checked_sub(rank).map_or(1, |j| rhs[j]);
        *o = if l == r || r == 1 {
            l
        } else if l == 1 {
            r
        } else {
            return Err(TensorError::mismatch(
                op,
                lhs,
                rhs,
                format!("axis {i} of the broadcast has sizes {l} and {r}"),
            ));
        };
    }
    checked_numel(op, &out)?;
    Ok(out)
}

/// Strides (in elements) for reading a tensor of shape `dims` as if it had the broadcast shape
/// `out`: 0 on broadcast axes.
pub(crate) fn broadcast_strides(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides(dims);
    let lead = out.len() - dims.len();
    (0..out.len())
        .map(|i| if i < lead || dims[i - lead] == 1 { 0 } else { own[i - lead] })
        .collect()
}

/// Calls `f(out_offset_of_row, a_offset, b_offset)` for every row (last axis) of `out`, with
/// `a` and `b` read through the given strides. The caller loops over the row.
fn for_each_row(out: &[usize], sa: &[usize], sb: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let rank = out.len();
    let row = out.last().copied().unwrap_or(1);
    let rows = out.iter().product::<usize>().checked_div(row).unwrap_or(0);
    let outer = rank.saturating_sub(1);
    let mut index = vec![0usize; outer];
    let (mut oa, mut ob) = (0usize, 0usize);
    for r in 0..rows {
        f(r * row, oa, ob);
        // Advance the odometer over the outer axes, keeping the operand offsets in step.
        for ax in (0..outer).rev() {
            index[ax] += 1;
            oa += sa[ax];
            ob += sb[ax];
            if index[ax] < out[ax] {
                break;
            }
            oa -= sa[ax] * out[ax];
            ob -= sb[ax] * out[ax];
            index[ax] = 0;
        }
    }
}

/// Tensors of at least this many elements are processed elementwise on rayon's pool (in
/// chunks of at least 16K elements); below it, one thread is faster than the fork and join.
/// Each element is computed the same way on any thread, so results do not depend on the
/// number of threads.
pub const PAR_MIN_ELEMENTS: usize = 1 << 17;

/// The smallest chunk of elements one rayon task takes.
const PAR_CHUNK: usize = 1 << 14;

/// `f(x)` for every element of `src`, on rayon's pool when the slice is large, into a
/// buffer from the [`buffer`](crate::buffer) cache.
fn map_slice(src: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut out = crate::buffer::take(src.len());
    if src.len() >= PAR_MIN_ELEMENTS {
        out.par_iter_mut().zip(src).with_min_len(PAR_CHUNK).for_each(|(o, &x)| *o = f(x));
    } else {
        out.iter_mut().zip(src).for_each(|(o, &x)| *o = f(x));
    }
    out
}

/// `d[i] = f(d[i])` for every element of a slice, on rayon's pool when it is large (from
/// [`PAR_MIN_ELEMENTS`]): [`Tensor::map_inplace`] on a plain buffer, for kernels that write
/// slices.
///
/// ```
/// let mut d = [1.0, -2.0, 3.0];
/// convkit_tensor::map_slice_inplace(&mut d, |v| if v < 0.0 { 0.0 } else { v });
/// assert_eq!(d, [1.0, 0.0, 3.0]);
/// ```
pub fn map_slice_inplace(d: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    if d.len() >= PAR_MIN_ELEMENTS {
        d.par_iter_mut().with_min_len(PAR_CHUNK).for_each(|v| *v = f(*v));
    } else {
        d.iter_mut().for_each(|v| *v = f(*v));
    }
}

/// `f(a[i], b[i])` for slices of equal length, on rayon's pool when they are large, into a
/// buffer from the [`buffer`](crate::buffer) cache.
fn zip_slices(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    debug_assert_eq!(a.len(), b.len());
    let mut out = crate::buffer::take(a.len());
    if a.len() >= PAR_MIN_ELEMENTS {
        out.par_iter_mut()
            .zip(a)
            .zip(b)
            .with_min_len(PAR_CHUNK)
            .for_each(|((o, &x), &y)| *o = f(x, y));
    } else {
        out.iter_mut().zip(a).zip(b).for_each(|((o, &x), &y)| *o = f(x, y));
    }
    out
}

/// `d[i] = f(d[i], b[i])` for slices of equal length, on rayon's pool when they are large.
fn zip_assign(d: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    if d.len() >= PAR_MIN_ELEMENTS {
        d.par_iter_mut().zip(b).with_min_len(PAR_CHUNK).for_each(|(d, &y)| *d = f(*d, y));
    } else {
        d.iter_mut().zip(b).for_each(|(d, &y)| *d = f(*d, y));
    }
}

/// `out[i] = f(a[i], b[i])` over the broadcast of two tensors.
fn broadcast_zip(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) -> Result<Tensor> {
    if a.dims() == b.dims() {
        return Tensor::from_vec(a.dims(), zip_slices(a.as_slice(), b.as_slice(), f));
    }
    let out_dims = broadcast_shape_for(op, a.dims(), b.dims())?;
    let n = checked_numel(op, &out_dims)?;
    if b.numel() == 1 && out_dims == a.dims() {
        let y = b.as_slice()[0];
        return Tensor::from_vec(&out_dims, map_slice(a.as_slice(), |x| f(x, y)));
    }
    if a.numel() == 1 && out_dims == b.dims() {
        let x = a.as_slice()[0];
        return Tensor::from_vec(&out_dims, map_slice(b.as_slice(), |y| f(x, y)));
    }
    let sa = broadcast_strides(a.dims(), &out_dims);
    let sb = broadcast_strides(b.dims(), &out_dims);
    let row = out_dims.last().copied().unwrap_or(1);
    let (ra, rb) = (sa.last().copied().unwrap_or(0), sb.last().copied().unwrap_or(0));
    let (xa, xb) = (a.as_slice(), b.as_slice());
    let mut out = crate::buffer::take(n);
    for_each_row(&out_dims, &sa, &sb, |o, oa, ob| {
        let dst = &mut out[o..o + row];
        // The four row cases keep the inner loop free of stride multiplications.
        match (ra, rb) {
            (0, 0) => dst.fill(f(xa[oa], xb[ob])),
            (0, _) => {
                let x = xa[oa];
                for (d, &y) in dst.iter_mut().zip(&xb[ob..ob + row]) {
                    *d = f(x, y);
                }
            }
            (_, 0) => {
                let y = xb[ob];
                for (d, &x) in dst.iter_mut().zip(&xa[oa..oa + row]) {
                    *d = f(x, y);
                }
            }
            _ => {
                for ((d, &x), &y) in dst.iter_mut().zip(&xa[oa..oa + row]).zip(&xb[ob..ob + row]) {
                    *d = f(x, y);
                }
            }
        }
    });
    Tensor::from_vec(&out_dims, out)
}

/// `self[i] = f(self[i], rhs[i])` with `rhs` broadcast to the shape of `self`.
fn broadcast_assign(
    op: &'static str,
    lhs: &mut Tensor,
    rhs: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) -> Result<()> {
    if lhs.dims() == rhs.dims() {
        zip_assign(lhs.data_mut(), rhs.as_slice(), f);
        return Ok(());
    }
    let out_dims = broadcast_shape_for(op, lhs.dims(), rhs.dims())?;
    if out_dims != lhs.dims() {
        return Err(TensorError::mismatch(
            op,
            lhs.dims(),
            rhs.dims(),
            format!(
                "the right side must broadcast to the left shape, the result would be {out_dims:?}"
            ),
        ));
    }
    let sb = broadcast_strides(rhs.dims(), &out_dims);
    let sa = vec![0; out_dims.len()];
    let row = out_dims.last().copied().unwrap_or(1);
    let rb = sb.last().copied().unwrap_or(0);
    let xb = rhs.as_slice();
    let dst_all = lhs.data_mut();
    for_each_row(&out_dims, &sa, &sb, |o, _, ob| {
        let dst = &mut dst_all[o..o + row];
        if rb == 0 {
            let y = xb[ob];
            dst.iter_mut().for_each(|d| *d = f(*d, y));
        } else {
            for (d, &y) in dst.iter_mut().zip(&xb[ob..ob + row]) {
                *d = f(*d, y);
            }
        }
    });
    Ok(())
}

/// Numerically stable logistic function: never evaluates `exp` of a large positive number.
pub(crate) fn sigmoid_f32(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl Tensor {
    /// Elementwise `self + rhs` with broadcasting.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 2], vec![1., 2., 3., 4.])?;
    /// let bias = Tensor::from_vec(&[2], vec![10., 20.])?;
    /// assert_eq!(x.add(&bias)?.as_slice(), &[11., 22., 13., 24.]);
    /// assert!(x.add(&Tensor::zeros(&[3])).is_err()); // [2, 2] and [3] do not broadcast
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        broadcast_zip("add", self, rhs, |x, y| x + y)
    }

    /// Elementwise `self − rhs` with broadcasting.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 1], vec![1., 2.])?;
    /// let y = Tensor::from_vec(&[3], vec![1., 2., 3.])?;
    /// assert_eq!(x.sub(&y)?.as_slice(), &[0., -1., -2., 1., 0., -1.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        broadcast_zip("sub", self, rhs, |x, y| x - y)
    }

    /// Elementwise `self × rhs` with broadcasting.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2], vec![2., 3.])?;
    /// assert_eq!(x.mul(&x)?.as_slice(), &[4., 9.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        broadcast_zip("mul", self, rhs, |x, y| x * y)
    }

    /// Elementwise `self ÷ rhs` with broadcasting (IEEE division: `1/0 = inf`).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2], vec![2., 3.])?;
    /// assert_eq!(x.div(&Tensor::scalar(2.0))?.as_slice(), &[1., 1.5]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        broadcast_zip("div", self, rhs, |x, y| x / y)
    }

    /// Elementwise maximum with broadcasting (`NaN` if either side is `NaN`).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[3], vec![-1., 0., 2.])?;
    /// assert_eq!(x.maximum(&Tensor::scalar(0.5))?.as_slice(), &[0.5, 0.5, 2.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        broadcast_zip("maximum", self, rhs, |x, y| if x.is_nan() || x > y { x } else { y })
    }

    /// Any binary function applied elementwise with broadcasting.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// // The ReLU gradient: pass the upstream gradient where the input was positive.
    /// let x = Tensor::from_vec(&[3], vec![-1., 2., 3.])?;
    /// let g = Tensor::from_vec(&[3], vec![5., 6., 7.])?;
    /// let dx = x.zip_map(&g, |x, g| if x > 0.0 { g } else { 0.0 })?;
    /// assert_eq!(dx.as_slice(), &[0., 6., 7.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn zip_map(
        &self,
        rhs: &Tensor,
        f: impl Fn(f32, f32) -> f32 + Sync + Send,
    ) -> Result<Tensor> {
        broadcast_zip("zip_map", self, rhs, f)
    }

    /// In place `self += rhs`, with `rhs` broadcast to the shape of `self` (which does not
    /// change). The way to accumulate gradients.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let mut acc = Tensor::zeros(&[2, 2]);
    /// acc.add_assign(&Tensor::from_vec(&[2], vec![1., 2.])?)?;
    /// assert_eq!(acc.as_slice(), &[1., 2., 1., 2.]);
    /// assert!(acc.add_assign(&Tensor::zeros(&[3, 2, 2])).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn add_assign(&mut self, rhs: &Tensor) -> Result<()> {
        broadcast_assign("add_assign", self, rhs, |x, y| x + y)
    }

    /// In place `self −= rhs`, `rhs` broadcast to the shape of `self`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let mut x = Tensor::ones(&[2]);
    /// x.sub_assign(&Tensor::scalar(1.0))?;
    /// assert_eq!(x.as_slice(), &[0., 0.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn sub_assign(&mut self, rhs: &Tensor) -> Result<()> {
        broadcast_assign("sub_assign", self, rhs, |x, y| x - y)
    }

    /// In place `self ×= rhs`, `rhs` broadcast to the shape of `self`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let mut x = Tensor::ones(&[2]);
    /// x.mul_assign(&Tensor::from_vec(&[2], vec![2., 3.])?)?;
    /// assert_eq!(x.as_slice(), &[2., 3.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn mul_assign(&mut self, rhs: &Tensor) -> Result<()> {
        broadcast_assign("mul_assign", self, rhs, |x, y| x * y)
    }

    /// In place `self += alpha · rhs` for two tensors of the same shape (an optimizer step).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let mut w = Tensor::ones(&[2]);
    /// w.axpy(-0.1, &Tensor::from_vec(&[2], vec![1., 2.])?)?;
    /// assert_eq!(w.as_slice(), &[0.9, 0.8]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn axpy(&mut self, alpha: f32, rhs: &Tensor) -> Result<()> {
        if self.dims() != rhs.dims() {
            return Err(TensorError::mismatch(
                "axpy",
                self.dims(),
                rhs.dims(),
                "shapes must be equal",
            ));
        }
        zip_assign(self.data_mut(), rhs.as_slice(), |d, y| d + alpha * y);
        Ok(())
    }

    /// Applies `f` to every element, returning a new tensor.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2], vec![1., 2.])?;
    /// assert_eq!(x.map(|v| v * 10.0).as_slice(), &[10., 20.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn map(&self, f: impl Fn(f32) -> f32 + Sync + Send) -> Tensor {
        let data = map_slice(self.as_slice(), f);
        Tensor::from_parts(self.dims().to_vec(), std::sync::Arc::new(crate::tensor::Buf::new(data)))
    }

    /// Applies `f` to every element in place (copy-on-write).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let mut x = Tensor::from_vec(&[2], vec![1., 2.])?;
    /// x.map_inplace(|v| -v);
    /// assert_eq!(x.as_slice(), &[-1., -2.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn map_inplace(&mut self, f: impl Fn(f32) -> f32 + Sync + Send) {
        map_slice_inplace(self.data_mut(), f);
    }

    /// `self + value` elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[2]).add_scalar(1.5).as_slice(), &[2.5, 2.5]);
    /// ```
    pub fn add_scalar(&self, value: f32) -> Tensor {
        self.map(|x| x + value)
    }

    /// `self − value` elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[1]).sub_scalar(3.0).as_slice(), &[-2.0]);
    /// ```
    pub fn sub_scalar(&self, value: f32) -> Tensor {
        self.map(|x| x - value)
    }

    /// `self × value` elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[1]).mul_scalar(3.0).as_slice(), &[3.0]);
    /// ```
    pub fn mul_scalar(&self, value: f32) -> Tensor {
        self.map(|x| x * value)
    }

    /// `self ÷ value` elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[1]).div_scalar(4.0).as_slice(), &[0.25]);
    /// ```
    pub fn div_scalar(&self, value: f32) -> Tensor {
        self.map(|x| x / value)
    }

    /// `self` raised to the power `exponent` elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::full(&[1], 3.0).powf(2.0).as_slice(), &[9.0]);
    /// ```
    pub fn powf(&self, exponent: f32) -> Tensor {
        self.map(|x| x.powf(exponent))
    }

    /// Clamps every element into `[min, max]`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[3], vec![-2., 0.5, 2.])?;
    /// assert_eq!(x.clamp(-1.0, 1.0).as_slice(), &[-1., 0.5, 1.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn clamp(&self, min: f32, max: f32) -> Tensor {
        self.map(|x| x.max(min).min(max))
    }

    /// `−self`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[1]).neg().as_slice(), &[-1.0]);
    /// ```
    pub fn neg(&self) -> Tensor {
        self.map(|x| -x)
    }

    /// `max(x, 0)` elementwise (`NaN` stays `NaN`).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[3], vec![-1., 0., 2.])?;
    /// assert_eq!(x.relu().as_slice(), &[0., 0., 2.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn relu(&self) -> Tensor {
        self.map(|x| if x < 0.0 { 0.0 } else { x })
    }

    /// `eˣ` elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[1]).exp().as_slice(), &[1.0]);
    /// ```
    pub fn exp(&self) -> Tensor {
        self.map(f32::exp)
    }

    /// Natural logarithm elementwise (`ln 0 = −inf`, negative → `NaN`).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[1]).ln().as_slice(), &[0.0]);
    /// ```
    pub fn ln(&self) -> Tensor {
        self.map(f32::ln)
    }

    /// Hyperbolic tangent elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[1]).tanh().as_slice(), &[0.0]);
    /// ```
    pub fn tanh(&self) -> Tensor {
        self.map(f32::tanh)
    }

    /// The logistic function `1 / (1 + e⁻ˣ)`, computed without overflow for any input.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[3], vec![-1000., 0., 1000.])?;
    /// assert_eq!(x.sigmoid().as_slice(), &[0.0, 0.5, 1.0]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn sigmoid(&self) -> Tensor {
        self.map(sigmoid_f32)
    }

    /// Square root elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::full(&[1], 9.0).sqrt().as_slice(), &[3.0]);
    /// ```
    pub fn sqrt(&self) -> Tensor {
        self.map(f32::sqrt)
    }

    /// Absolute value elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::full(&[1], -2.0).abs().as_slice(), &[2.0]);
    /// ```
    pub fn abs(&self) -> Tensor {
        self.map(f32::abs)
    }

    /// `x²` elementwise.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::full(&[1], -3.0).square().as_slice(), &[9.0]);
    /// ```
    pub fn square(&self) -> Tensor {
        self.map(|x| x * x)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(dims: &[usize], data: &[f32]) -> Tensor {
        Tensor::from_slice(dims, data).unwrap()
    }

    #[test]
    fn broadcast_shapes_follow_numpy() {
        assert_eq!(broadcast_shapes(&[], &[3]).unwrap(), vec![3]);
        assert_eq!(broadcast_shapes(&[2, 1], &[1, 3]).unwrap(), vec![2, 3]);
        assert_eq!(broadcast_shapes(&[0, 1], &[1, 3]).unwrap(), vec![0, 3]);
        assert_eq!(broadcast_shapes(&[5, 4], &[1]).unwrap(), vec![5, 4]);
        let e = broadcast_shapes(&[2, 3], &[3, 3]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "broadcast: incompatible shapes [2, 3] and [3, 3]: axis 0 of the broadcast has sizes 2 and 3"
        );
    }

    #[test]
    fn bias_add_over_nchw() {
        let x = Tensor::zeros(&[2, 3, 2, 2]);
        let b = t(&[3, 1, 1], &[1., 2., 3.]);
        let y = x.add(&b).unwrap();
        assert_eq!(y.dims(), &[2, 3, 2, 2]);
        assert_eq!(&y.as_slice()[..12], &[1., 1., 1., 1., 2., 2., 2., 2., 3., 3., 3., 3.]);
        assert_eq!(&y.as_slice()[12..], &y.as_slice()[..12]);
    }

    #[test]
    fn outer_product_and_scalar_left() {
        let a = t(&[2, 1], &[1., 2.]);
        let b = t(&[1, 3], &[1., 10., 100.]);
        assert_eq!(a.mul(&b).unwrap().as_slice(), &[1., 10., 100., 2., 20., 200.]);
        let s = Tensor::scalar(1.0);
        assert_eq!(s.sub(&b).unwrap().as_slice(), &[0., -9., -99.]);
        assert_eq!(s.sub(&b).unwrap().dims(), &[1, 3]);
    }

    #[test]
    fn broadcast_error_names_both_shapes() {
        let e = t(&[2, 3], &[0.; 6]).mul(&t(&[2], &[0.; 2])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("mul: incompatible shapes [2, 3] and [2]"), "{msg}");
    }

    #[test]
    fn assign_forms() {
        let mut a = Tensor::ones(&[2, 3]);
        a.add_assign(&t(&[3], &[1., 2., 3.])).unwrap();
        assert_eq!(a.as_slice(), &[2., 3., 4., 2., 3., 4.]);
        a.mul_assign(&t(&[2, 1], &[1., 0.])).unwrap();
        assert_eq!(a.as_slice(), &[2., 3., 4., 0., 0., 0.]);
        let e = a.add_assign(&Tensor::ones(&[4, 2, 3])).unwrap_err();
        assert!(e.to_string().contains("[2, 3] and [4, 2, 3]"));
        assert!(a.axpy(1.0, &Tensor::ones(&[3])).is_err());
    }

    #[test]
    fn unary_values() {
        let x = t(&[4], &[-2., -0.5, 0., 3.]);
        assert_eq!(x.relu().as_slice(), &[0., 0., 0., 3.]);
        assert_eq!(x.abs().as_slice(), &[2., 0.5, 0., 3.]);
        assert_eq!(x.square().as_slice(), &[4., 0.25, 0., 9.]);
        let s = x.sigmoid();
        for (&v, &sv) in x.as_slice().iter().zip(s.as_slice()) {
            let expect = 1.0 / (1.0 + (-f64::from(v)).exp());
            assert!((f64::from(sv) - expect).abs() < 1e-7);
        }
        assert!(t(&[1], &[-200.0]).sigmoid().as_slice()[0] >= 0.0);
        assert!(t(&[1], &[f32::NAN]).relu().as_slice()[0].is_nan());
    }
}
