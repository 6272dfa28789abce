//! The [`Tensor`] type: an f32 array with a shape, stored contiguously in row-major order.

use std::fmt;
use std::sync::Arc;

use crate::error::{Result, TensorError};

/// An n-dimensional array of `f32`, contiguous and row-major (the last axis varies fastest).
///
/// **Sharing.** The data lives behind an [`Arc`]: `clone()` is cheap (a reference count) and
/// clones share the same buffer. Writing through [`Tensor::data_mut`] is copy-on-write: it
/// copies the buffer first if another clone still holds it, so a clone never sees another's
/// writes. This is what lets an autodiff tape keep its inputs for backward at no cost.
///
/// **Shapes** are checked at construction: [`Tensor::from_vec`] fails when the data length is
/// not the product of the dims. A tensor with no dims is a scalar holding one element.
///
/// ```
/// use convkit_tensor::Tensor;
/// let t = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.])?;
/// assert_eq!(t.dims(), &[2, 3]);
/// assert_eq!(t.get(&[1, 2]), Some(6.0));
/// assert!(Tensor::from_vec(&[2, 3], vec![1.0; 5]).is_err());
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dims: Vec<usize>,
    data: Arc<Buf>,
}

/// A tensor's elements. When the last handle drops, a large buffer goes to the
/// [`buffer`](crate::buffer) cache for the next tensor of its length.
#[derive(PartialEq)]
pub(crate) struct Buf(Vec<f32>);

impl Buf {
    pub(crate) fn new(data: Vec<f32>) -> Self {
        Buf(data)
    }
}

impl Clone for Buf {
    fn clone(&self) -> Self {
        let mut v = crate::buffer::take(self.0.len());
        v.copy_from_slice(&self.0);
        Buf(v)
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        crate::buffer::recycle(std::mem::take(&mut self.0));
    }
}

impl Tensor {
    /// Builds a tensor from its dims and its row-major data; errors on a length mismatch.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::from_vec(&[2, 2], vec![1., 2., 3., 4.])?;
    /// assert_eq!(t.dims(), &[2, 2]);
    /// let e = Tensor::from_vec(&[2, 2], vec![1.]).unwrap_err();
    /// assert_eq!(e.to_string(), "from_vec: shape [2, 2] needs 4 elements, got 1");
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn from_vec(dims: &[usize], data: Vec<f32>) -> Result<Self> {
        let expected = checked_numel("from_vec", dims)?;
        if expected != data.len() {
            return Err(TensorError::LengthMismatch {
                op: "from_vec",
                shape: dims.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Self { dims: dims.to_vec(), data: Arc::new(Buf(data)) })
    }

    /// Builds a tensor from a slice, copying it.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::from_slice(&[2], &[1.0, 2.0])?;
    /// assert_eq!(t.as_slice(), &[1.0, 2.0]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn from_slice(dims: &[usize], data: &[f32]) -> Result<Self> {
        Self::from_vec(dims, data.to_vec())
    }

    /// A scalar (a tensor with no dims and one element).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::scalar(3.0).item()?, 3.0);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn scalar(value: f32) -> Self {
        Self { dims: Vec::new(), data: Arc::new(Buf(vec![value])) }
    }

    /// A tensor filled with `value`.
    ///
    /// # Panics
    /// When the element count of `dims` overflows `usize` (no such buffer could exist).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::full(&[2, 2], 0.5);
    /// assert_eq!(t.as_slice(), &[0.5; 4]);
    /// ```
    pub fn full(dims: &[usize], value: f32) -> Self {
        let n = checked_numel("full", dims).expect("shape element count overflows usize");
        let data = if value == 0.0 {
            crate::buffer::zeroed(n)
        } else {
            let mut v = crate::buffer::take(n);
            v.fill(value);
            v
        };
        Self { dims: dims.to_vec(), data: Arc::new(Buf(data)) }
    }

    /// A tensor of zeros. Panics only as [`Tensor::full`] does.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[3]).as_slice(), &[0.0; 3]);
    /// ```
    pub fn zeros(dims: &[usize]) -> Self {
        Self::full(dims, 0.0)
    }

    /// A tensor of ones. Panics only as [`Tensor::full`] does.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[1, 2]).as_slice(), &[1.0; 2]);
    /// ```
    pub fn ones(dims: &[usize]) -> Self {
        Self::full(dims, 1.0)
    }

    /// A tensor of zeros with the dims of `self`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::ones(&[2, 3]);
    /// assert_eq!(t.zeros_like().dims(), &[2, 3]);
    /// ```
    pub fn zeros_like(&self) -> Self {
        Self::zeros(&self.dims)
    }

    /// The 1-D tensor `start, start + step, …` of every value below `end` (above it when
    /// `step < 0`). Values are computed as `start + i·step` in `f64`. Errors when an argument
    /// is not finite or `step` is zero.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::arange(0.0, 3.0, 1.0)?.as_slice(), &[0.0, 1.0, 2.0]);
    /// assert_eq!(Tensor::arange(1.0, 0.0, -0.25)?.as_slice(), &[1.0, 0.75, 0.5, 0.25]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn arange(start: f32, end: f32, step: f32) -> Result<Self> {
        if !(start.is_finite() && end.is_finite() && step.is_finite() && step != 0.0) {
            return Err(TensorError::invalid(
                "arange",
                &[],
                format!(
                    "needs finite start, end and a non-zero step, got ({start}, {end}, {step})"
                ),
            ));
        }
        let (s, e, st) = (f64::from(start), f64::from(end), f64::from(step));
        let count = ((e - s) / st).ceil().max(0.0);
        if count > (isize::MAX as f64) / 4.0 {
            return Err(TensorError::invalid(
                "arange",
                &[],
                format!("({start}, {end}, {step}) gives too many elements"),
            ));
        }
        let count = count as usize;
        let data: Vec<f32> = (0..count).map(|i| (s + i as f64 * st) as f32).collect();
        Self::from_vec(&[count], data)
    }

    /// Builds a tensor by calling `f` with every multi-index, in row-major order.
    /// Panics only as [`Tensor::full`] does.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::from_fn(&[2, 3], |ix| (10 * ix[0] + ix[1]) as f32);
    /// assert_eq!(t.as_slice(), &[0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
    /// ```
    pub fn from_fn(dims: &[usize], mut f: impl FnMut(&[usize]) -> f32) -> Self {
        let n = checked_numel("from_fn", dims).expect("shape element count overflows usize");
        let mut data = Vec::with_capacity(n);
        let mut index = vec![0usize; dims.len()];
        for _ in 0..n {
            data.push(f(&index));
            for ax in (0..dims.len()).rev() {
                index[ax] += 1;
                if index[ax] < dims[ax] {
                    break;
                }
                index[ax] = 0;
            }
        }
        Self { dims: dims.to_vec(), data: Arc::new(Buf(data)) }
    }

    /// The `n × n` identity matrix.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::eye(2).as_slice(), &[1.0, 0.0, 0.0, 1.0]);
    /// ```
    pub fn eye(n: usize) -> Self {
        Self::from_fn(&[n, n], |ix| if ix[0] == ix[1] { 1.0 } else { 0.0 })
    }

    /// A tensor with these dims over an existing shared buffer (crate-internal: callers have
    /// checked the length).
    pub(crate) fn from_parts(dims: Vec<usize>, data: Arc<Buf>) -> Self {
        debug_assert_eq!(numel(&dims), data.0.len());
        Self { dims, data }
    }

    /// The shared buffer (crate-internal, for zero-copy reshapes).
    pub(crate) fn shared_data(&self) -> &Arc<Buf> {
        &self.data
    }

    /// The dims (sizes of each axis).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).dims(), &[2, 3]);
    /// ```
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Number of axes.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).rank(), 2);
    /// assert_eq!(Tensor::scalar(1.0).rank(), 0);
    /// ```
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Number of elements.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).numel(), 6);
    /// ```
    pub fn numel(&self) -> usize {
        self.data.0.len()
    }

    /// The elements in row-major order.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::from_fn(&[2, 2], |ix| (2 * ix[0] + ix[1]) as f32);
    /// assert_eq!(t.as_slice(), &[0., 1., 2., 3.]);
    /// ```
    pub fn as_slice(&self) -> &[f32] {
        &self.data.0
    }

    /// Mutable access to the elements (copy-on-write: copies if the buffer is shared).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let a = Tensor::zeros(&[2]);
    /// let mut b = a.clone();
    /// b.data_mut()[0] = 1.0; // copies: `a` still holds the buffer
    /// assert_eq!(a.as_slice(), &[0., 0.]);
    /// assert_eq!(b.as_slice(), &[1., 0.]);
    /// ```
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).0.as_mut_slice()
    }

    /// Takes the elements out, copying only if the buffer is shared.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::ones(&[2]).into_vec(), vec![1.0, 1.0]);
    /// ```
    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.data) {
            Ok(mut buf) => std::mem::take(&mut buf.0),
            Err(shared) => shared.0.clone(),
        }
    }

    /// Whether two tensors share one buffer (clones that neither has written to).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let a = Tensor::ones(&[3]);
    /// assert!(a.clone().shares_data_with(&a));
    /// assert!(!Tensor::ones(&[3]).shares_data_with(&a));
    /// ```
    pub fn shares_data_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// Row-major strides of the dims, in elements.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).strides(), vec![3, 1]);
    /// ```
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.dims)
    }

    /// The element at a multi-index, or `None` when the index is out of range.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::eye(2);
    /// assert_eq!(t.get(&[1, 1]), Some(1.0));
    /// assert_eq!(t.get(&[2, 0]), None);
    /// ```
    pub fn get(&self, index: &[usize]) -> Option<f32> {
        if index.len() != self.dims.len() {
            return None;
        }
        let mut off = 0;
        for (&i, &d) in index.iter().zip(&self.dims) {
            if i >= d {
                return None;
            }
            off = off * d + i;
        }
        self.data.0.get(off).copied()
    }

    /// The single value of a one-element tensor (a scalar or any shape with one element).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::full(&[1, 1], 4.0).item()?, 4.0);
    /// assert!(Tensor::zeros(&[2]).item().is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn item(&self) -> Result<f32> {
        if self.data.0.len() == 1 {
            Ok(self.data.0[0])
        } else {
            Err(TensorError::InvalidArgument {
                op: "item",
                shape: self.dims.clone(),
                msg: format!("needs exactly one element, has {}", self.data.0.len()),
            })
        }
    }

    /// Size of an axis, with a clear error when the axis does not exist.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let t = Tensor::zeros(&[2, 3]);
    /// assert_eq!(t.dim(1)?, 3);
    /// assert!(t.dim(2).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn dim(&self, axis: usize) -> Result<usize> {
        self.dims.get(axis).copied().ok_or_else(|| TensorError::InvalidArgument {
            op: "dim",
            shape: self.dims.clone(),
            msg: format!("axis {axis} out of range for rank {}", self.dims.len()),
        })
    }
}

/// The element count of `dims`, or an error naming `op` when it overflows `usize`.
pub(crate) fn checked_numel(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / std::mem::size_of::<f32>())
        .ok_or_else(|| TensorError::invalid(op, dims, "element count overflows"))
}

/// Number of elements of a shape (1 for the empty shape of a scalar).
///
/// ```
/// assert_eq!(convkit_tensor::numel(&[2, 3, 4]), 24);
/// assert_eq!(convkit_tensor::numel(&[]), 1);
/// ```
pub fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Row-major strides of a shape, in elements.
///
/// ```
/// assert_eq!(convkit_tensor::strides(&[2, 3, 4]), vec![12, 4, 1]);
/// ```
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOW: usize = 8;
        write!(f, "Tensor{:?} [", self.dims)?;
        for (i, v) in self.data.0.iter().take(SHOW).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{v}")?;
        }
        if self.data.0.len() > SHOW {
            write!(f, ", … {} more", self.data.0.len() - SHOW)?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn constructors() {
        assert_eq!(Tensor::zeros(&[2, 0]).numel(), 0);
        assert_eq!(Tensor::full(&[], 2.0).as_slice(), &[2.0]);
        assert_eq!(Tensor::arange(0.0, 0.0, 1.0).unwrap().dims(), &[0]);
        assert_eq!(Tensor::arange(0.0, 1.0, 0.3).unwrap().numel(), 4);
        assert!(Tensor::arange(0.0, 1.0, 0.0).is_err());
        let t = Tensor::from_fn(&[2, 2, 2], |ix| (ix[0] * 4 + ix[1] * 2 + ix[2]) as f32);
        assert_eq!(t.as_slice(), Tensor::arange(0.0, 8.0, 1.0).unwrap().as_slice());
        assert_eq!(Tensor::from_fn(&[], |_| 7.0).as_slice(), &[7.0]);
    }

    #[test]
    fn from_vec_length_error_names_shape() {
        let e = Tensor::from_vec(&[2, 3], vec![0.0; 5]).unwrap_err();
        assert_eq!(e.to_string(), "from_vec: shape [2, 3] needs 6 elements, got 5");
        let e = Tensor::from_vec(&[usize::MAX, 2], vec![]).unwrap_err();
        assert!(e.to_string().contains("overflows"));
    }

    #[test]
    fn tensor_is_send_and_sync() {
        // Autograd tapes and rayon closures hold tensors across threads.
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tensor>();
    }

    #[test]
    fn clones_share_until_written() {
        let a = Tensor::ones(&[4]);
        let mut b = a.clone();
        assert!(a.shares_data_with(&b));
        b.data_mut()[0] = 5.0;
        assert!(!a.shares_data_with(&b));
        assert_eq!(a.as_slice()[0], 1.0);
        assert_eq!(b.as_slice()[0], 5.0);
    }
}
