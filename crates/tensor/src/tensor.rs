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
    data: Arc<Vec<f32>>,
}

impl Tensor {
    /// Builds a tensor from its dims and its row-major data; errors on a length mismatch.
    pub fn from_vec(dims: &[usize], data: Vec<f32>) -> Result<Self> {
        let expected = numel(dims);
        if expected != data.len() {
            return Err(TensorError::LengthMismatch {
                op: "from_vec",
                shape: dims.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Self { dims: dims.to_vec(), data: Arc::new(data) })
    }

    /// Builds a tensor from a slice, copying it.
    pub fn from_slice(dims: &[usize], data: &[f32]) -> Result<Self> {
        Self::from_vec(dims, data.to_vec())
    }

    /// A scalar (a tensor with no dims and one element).
    pub fn scalar(value: f32) -> Self {
        Self { dims: Vec::new(), data: Arc::new(vec![value]) }
    }

    /// The dims (sizes of each axis).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access to the elements (copy-on-write: copies if the buffer is shared).
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// Takes the elements out, copying only if the buffer is shared.
    pub fn into_vec(self) -> Vec<f32> {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Whether two tensors share one buffer (clones that neither has written to).
    pub fn shares_data_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// Row-major strides of the dims, in elements.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.dims)
    }

    /// The element at a multi-index, or `None` when the index is out of range.
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
        self.data.get(off).copied()
    }

    /// The single value of a one-element tensor (a scalar or any shape with one element).
    pub fn item(&self) -> Result<f32> {
        if self.data.len() == 1 {
            Ok(self.data[0])
        } else {
            Err(TensorError::InvalidArgument {
                op: "item",
                shape: self.dims.clone(),
                msg: format!("needs exactly one element, has {}", self.data.len()),
            })
        }
    }

    /// Size of an axis, with a clear error when the axis does not exist.
    pub fn dim(&self, axis: usize) -> Result<usize> {
        self.dims.get(axis).copied().ok_or_else(|| TensorError::InvalidArgument {
            op: "dim",
            shape: self.dims.clone(),
            msg: format!("axis {axis} out of range for rank {}", self.dims.len()),
        })
    }
}

/// Number of elements of a shape (1 for the empty shape of a scalar).
pub fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Row-major strides of a shape, in elements.
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
        for (i, v) in self.data.iter().take(SHOW).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{v}")?;
        }
        if self.data.len() > SHOW {
            write!(f, ", … {} more", self.data.len() - SHOW)?;
        }
        write!(f, "]")
    }
}
