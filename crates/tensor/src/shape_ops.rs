//! Shape operations: reshape, flatten, squeeze/unsqueeze (all free: they share the buffer),
//! and permute/transpose, narrow, index_select, concat/stack and pad2d (all copy into a new
//! contiguous buffer — a [`Tensor`] is always contiguous row-major).

use std::borrow::Borrow;

use crate::error::{Result, TensorError, check_axis};
use crate::tensor::{Tensor, checked_numel, numel, strides};

impl Tensor {
    /// The same data under new dims with the same element count. Shares the buffer (no copy).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::arange(0.0, 6.0, 1.0)?;
    /// let y = x.reshape(&[2, 3])?;
    /// assert_eq!(y.dims(), &[2, 3]);
    /// assert!(y.shares_data_with(&x));
    /// assert!(x.reshape(&[4, 2]).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        let n = checked_numel("reshape", dims)?;
        if n != self.numel() {
            return Err(TensorError::mismatch(
                "reshape",
                self.dims(),
                dims,
                format!("{} elements cannot take a shape of {n}", self.numel()),
            ));
        }
        Ok(Tensor::from_parts(dims.to_vec(), self.shared_data().clone()))
    }

    /// Merges axes `start..=end` into one (as `torch.flatten(x, start, end)`). Shares the
    /// buffer. Errors when `start > end` or `end` is not an axis.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::zeros(&[2, 3, 4, 5]);
    /// assert_eq!(x.flatten(1, 2)?.dims(), &[2, 12, 5]);
    /// assert_eq!(x.flatten(0, 3)?.dims(), &[120]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn flatten(&self, start: usize, end: usize) -> Result<Tensor> {
        check_axis("flatten", self.dims(), end)?;
        if start > end {
            return Err(TensorError::invalid(
                "flatten",
                self.dims(),
                format!("start axis {start} is after end axis {end}"),
            ));
        }
        let d = self.dims();
        let mut dims = d[..start].to_vec();
        dims.push(numel(&d[start..=end]));
        dims.extend_from_slice(&d[end + 1..]);
        self.reshape(&dims)
    }

    /// Flattens to a matrix `[dims[0], product of the rest]` — the batch-first view a linear
    /// layer wants (`[64, 16, 5, 5]` → `[64, 400]`). A 1-D `[n]` becomes `[n, 1]`; a scalar
    /// is an error.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[64, 16, 5, 5]).flatten_2d()?.dims(), &[64, 400]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn flatten_2d(&self) -> Result<Tensor> {
        match self.dims() {
            [] => {
                Err(TensorError::invalid("flatten_2d", self.dims(), "a scalar has no first axis"))
            }
            [n, rest @ ..] => self.reshape(&[*n, numel(rest)]),
        }
    }

    /// Inserts an axis of size 1 at `axis` (`0..=rank`). Shares the buffer.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[3, 4]).unsqueeze(0)?.dims(), &[1, 3, 4]);
    /// assert_eq!(Tensor::zeros(&[3, 4]).unsqueeze(2)?.dims(), &[3, 4, 1]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        if axis > self.rank() {
            return Err(TensorError::invalid(
                "unsqueeze",
                self.dims(),
                format!("axis {axis} out of range 0..={}", self.rank()),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims.insert(axis, 1);
        self.reshape(&dims)
    }

    /// Removes `axis`, which must have size 1. Shares the buffer.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[3, 1]).squeeze(1)?.dims(), &[3]);
    /// assert!(Tensor::zeros(&[3, 1]).squeeze(0).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn squeeze(&self, axis: usize) -> Result<Tensor> {
        check_axis("squeeze", self.dims(), axis)?;
        if self.dims()[axis] != 1 {
            return Err(TensorError::invalid(
                "squeeze",
                self.dims(),
                format!("axis {axis} has size {}, not 1", self.dims()[axis]),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims.remove(axis);
        self.reshape(&dims)
    }

    /// Reorders the axes: axis `i` of the result is axis `perm[i]` of `self`. Copies into a new
    /// contiguous buffer. Errors unless `perm` is a permutation of `0..rank`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_fn(&[2, 3, 4], |ix| (100 * ix[0] + 10 * ix[1] + ix[2]) as f32);
    /// let y = x.permute(&[2, 0, 1])?;
    /// assert_eq!(y.dims(), &[4, 2, 3]);
    /// assert_eq!(y.get(&[3, 1, 2]), Some(123.0));
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank
            && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(TensorError::invalid(
                "permute",
                self.dims(),
                format!("{perm:?} is not a permutation of the {rank} axes"),
            ));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        let src_strides = strides(self.dims());
        let out_dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        let step: Vec<usize> = perm.iter().map(|&p| src_strides[p]).collect();
        let src = self.as_slice();
        let mut out = Vec::with_capacity(src.len());
        if !src.is_empty() {
            let row = out_dims[rank - 1];
            let inner = step[rank - 1];
            let mut index = vec![0usize; rank - 1];
            let mut off = 0usize;
            for _ in 0..src.len() / row {
                out.extend((0..row).map(|j| src[off + j * inner]));
                for ax in (0..rank - 1).rev() {
                    index[ax] += 1;
                    off += step[ax];
                    if index[ax] < out_dims[ax] {
                        break;
                    }
                    off -= step[ax] * out_dims[ax];
                    index[ax] = 0;
                }
            }
        }
        Tensor::from_vec(&out_dims, out)
    }

    /// Swaps two axes (materialized, see [`Tensor::permute`]).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.])?;
    /// assert_eq!(x.transpose(0, 1)?.as_slice(), &[1., 4., 2., 5., 3., 6.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn transpose(&self, axis0: usize, axis1: usize) -> Result<Tensor> {
        check_axis("transpose", self.dims(), axis0)?;
        check_axis("transpose", self.dims(), axis1)?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(axis0, axis1);
        self.permute(&perm)
    }

    /// The matrix transpose of a 2-D tensor (materialized). For matmul prefer the transpose
    /// flags of [`crate::matmul_t`], which cost nothing.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).t()?.dims(), &[3, 2]);
    /// assert!(Tensor::zeros(&[2, 3, 4]).t().is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(TensorError::invalid("t", self.dims(), "needs a 2-D tensor"));
        }
        self.permute(&[1, 0])
    }

    /// The slice `start..start + len` along `axis` (copied).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::arange(0.0, 12.0, 1.0)?.reshape(&[3, 4])?;
    /// assert_eq!(x.narrow(1, 1, 2)?.as_slice(), &[1., 2., 5., 6., 9., 10.]);
    /// assert!(x.narrow(0, 2, 2).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        check_axis("narrow", self.dims(), axis)?;
        let size = self.dims()[axis];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(TensorError::invalid(
                "narrow",
                self.dims(),
                format!("range {start}..{start}+{len} exceeds axis {axis} of size {size}"),
            ));
        }
        let outer: usize = self.dims()[..axis].iter().product();
        let inner: usize = self.dims()[axis + 1..].iter().product();
        let src = self.as_slice();
        let mut out = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = (o * size + start) * inner;
            out.extend_from_slice(&src[base..base + len * inner]);
        }
        let mut dims = self.dims().to_vec();
        dims[axis] = len;
        Tensor::from_vec(&dims, out)
    }

    /// Picks the given indices along `axis`, in order (repeats allowed) — e.g. a shuffled
    /// mini-batch out of a dataset tensor.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::arange(0.0, 6.0, 1.0)?.reshape(&[3, 2])?;
    /// assert_eq!(x.index_select(0, &[2, 0])?.as_slice(), &[4., 5., 0., 1.]);
    /// assert!(x.index_select(0, &[3]).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn index_select(&self, axis: usize, indices: &[usize]) -> Result<Tensor> {
        check_axis("index_select", self.dims(), axis)?;
        let size = self.dims()[axis];
        if let Some(&bad) = indices.iter().find(|&&i| i >= size) {
            return Err(TensorError::invalid(
                "index_select",
                self.dims(),
                format!("index {bad} out of range for axis {axis} of size {size}"),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[axis] = indices.len();
        checked_numel("index_select", &dims)?;
        let outer: usize = self.dims()[..axis].iter().product();
        let inner: usize = self.dims()[axis + 1..].iter().product();
        let src = self.as_slice();
        let mut out = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            for &i in indices {
                let base = (o * size + i) * inner;
                out.extend_from_slice(&src[base..base + inner]);
            }
        }
        Tensor::from_vec(&dims, out)
    }

    /// Joins tensors along `axis`; all other dims must match. Errors on an empty list.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let a = Tensor::ones(&[1, 2]);
    /// let b = Tensor::zeros(&[2, 2]);
    /// let c = Tensor::concat(&[&a, &b], 0)?;
    /// assert_eq!(c.dims(), &[3, 2]);
    /// assert_eq!(Tensor::concat(&[a.clone(), a.clone()], 1)?.dims(), &[1, 4]);
    /// assert!(Tensor::concat(&[&a, &Tensor::zeros(&[2, 3])], 0).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn concat<T: Borrow<Tensor>>(tensors: &[T], axis: usize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| TensorError::invalid("concat", &[], "needs at least one tensor"))?
            .borrow();
        check_axis("concat", first.dims(), axis)?;
        let mut total = 0usize;
        for t in tensors {
            let t = t.borrow();
            let same_rank = t.rank() == first.rank();
            if !same_rank
                || t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .any(|(i, (a, b))| i != axis && a != b)
            {
                return Err(TensorError::mismatch(
                    "concat",
                    first.dims(),
                    t.dims(),
                    format!("all dims except axis {axis} must match"),
                ));
            }
            total = total.checked_add(t.dims()[axis]).ok_or_else(|| {
                TensorError::invalid("concat", first.dims(), "element count overflows")
            })?;
        }
        let mut dims = first.dims().to_vec();
        dims[axis] = total;
        let n = checked_numel("concat", &dims)?;
        let outer: usize = first.dims()[..axis].iter().product();
        let inner: usize = first.dims()[axis + 1..].iter().product();
        let mut out = Vec::with_capacity(n);
        for o in 0..outer {
            for t in tensors {
                let t = t.borrow();
                let chunk = t.dims()[axis] * inner;
                out.extend_from_slice(&t.as_slice()[o * chunk..(o + 1) * chunk]);
            }
        }
        Tensor::from_vec(&dims, out)
    }

    /// Stacks tensors of one shape along a new `axis` (`0..=rank`).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let a = Tensor::ones(&[2, 3]);
    /// assert_eq!(Tensor::stack(&[&a, &a, &a], 0)?.dims(), &[3, 2, 3]);
    /// assert_eq!(Tensor::stack(&[&a, &a], 2)?.dims(), &[2, 3, 2]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn stack<T: Borrow<Tensor>>(tensors: &[T], axis: usize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| TensorError::invalid("stack", &[], "needs at least one tensor"))?
            .borrow();
        let mut expanded = Vec::with_capacity(tensors.len());
        for t in tensors {
            let t = t.borrow();
            if t.dims() != first.dims() {
                return Err(TensorError::mismatch(
                    "stack",
                    first.dims(),
                    t.dims(),
                    "all shapes must be equal",
                ));
            }
            expanded.push(t.unsqueeze(axis)?);
        }
        Tensor::concat(&expanded, axis)
    }

    /// Pads the last two dims (height, width) with `value`: `top`/`bottom` rows and
    /// `left`/`right` columns. `[n, c, 28, 28]` with 2 everywhere becomes `[n, c, 32, 32]`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::ones(&[1, 1, 2, 2]);
    /// let y = x.pad2d(1, 0, 0, 1, 0.0)?;
    /// assert_eq!(y.dims(), &[1, 1, 3, 3]);
    /// assert_eq!(y.as_slice(), &[0., 0., 0., 1., 1., 0., 1., 1., 0.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn pad2d(
        &self,
        top: usize,
        bottom: usize,
        left: usize,
        right: usize,
        value: f32,
    ) -> Result<Tensor> {
        let rank = self.rank();
        if rank < 2 {
            return Err(TensorError::invalid("pad2d", self.dims(), "needs at least 2 dims"));
        }
        let (h, w) = (self.dims()[rank - 2], self.dims()[rank - 1]);
        let too_big = || TensorError::invalid("pad2d", self.dims(), "padded size overflows");
        let oh = h.checked_add(top).and_then(|v| v.checked_add(bottom)).ok_or_else(too_big)?;
        let ow = w.checked_add(left).and_then(|v| v.checked_add(right)).ok_or_else(too_big)?;
        let mut dims = self.dims().to_vec();
        dims[rank - 2] = oh;
        dims[rank - 1] = ow;
        let n = checked_numel("pad2d", &dims)?;
        let planes: usize = self.dims()[..rank - 2].iter().product();
        let mut out = vec![value; n];
        if w > 0 {
            let src = self.as_slice();
            for p in 0..planes {
                for (y, row) in src[p * h * w..(p + 1) * h * w].chunks_exact(w).enumerate() {
                    let at = p * oh * ow + (top + y) * ow + left;
                    out[at..at + w].copy_from_slice(row);
                }
            }
        }
        Tensor::from_vec(&dims, out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn iota(dims: &[usize]) -> Tensor {
        let n = numel(dims);
        Tensor::from_vec(dims, (0..n).map(|i| i as f32).collect()).unwrap()
    }

    #[test]
    fn permute_matches_get() {
        let x = iota(&[2, 3, 4, 5]);
        let perm = [3, 1, 0, 2];
        let y = x.permute(&perm).unwrap();
        assert_eq!(y.dims(), &[5, 3, 2, 4]);
        for a in 0..2 {
            for b in 0..3 {
                for c in 0..4 {
                    for d in 0..5 {
                        assert_eq!(y.get(&[d, b, a, c]), x.get(&[a, b, c, d]));
                    }
                }
            }
        }
        assert_eq!(y.permute(&[2, 1, 3, 0]).unwrap(), x);
        let e = x.permute(&[0, 0, 1, 2]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "permute: [0, 0, 1, 2] is not a permutation of the 4 axes (tensor shape [2, 3, 4, 5])"
        );
        assert_eq!(Tensor::zeros(&[0, 3]).permute(&[1, 0]).unwrap().dims(), &[3, 0]);
    }

    #[test]
    fn narrow_concat_round_trip() {
        let x = iota(&[3, 4, 2]);
        for axis in 0..3 {
            let size = x.dims()[axis];
            let a = x.narrow(axis, 0, 1).unwrap();
            let b = x.narrow(axis, 1, size - 1).unwrap();
            assert_eq!(Tensor::concat(&[a, b], axis).unwrap(), x);
        }
        let e = x.narrow(1, 3, 2).unwrap_err();
        assert!(e.to_string().contains("[3, 4, 2]"), "{e}");
    }

    #[test]
    fn stack_and_errors() {
        let a = iota(&[2]);
        let s = Tensor::stack(&[&a, &a], 1).unwrap();
        assert_eq!(s.as_slice(), &[0., 0., 1., 1.]);
        let e = Tensor::stack(&[&a, &iota(&[3])], 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stack: incompatible shapes [2] and [3]: all shapes must be equal"
        );
        assert!(Tensor::stack::<Tensor>(&[], 0).is_err());
        let e = Tensor::concat(&[iota(&[2, 2]), iota(&[2, 3])], 0).unwrap_err();
        assert!(e.to_string().contains("[2, 2] and [2, 3]"));
    }

    #[test]
    fn reshape_error_names_shapes() {
        let e = iota(&[2, 3]).reshape(&[5]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "reshape: incompatible shapes [2, 3] and [5]: 6 elements cannot take a shape of 5"
        );
        assert!(iota(&[2, 3]).flatten(1, 0).is_err());
        assert!(Tensor::scalar(1.0).flatten_2d().is_err());
        assert_eq!(iota(&[4]).flatten_2d().unwrap().dims(), &[4, 1]);
    }

    #[test]
    fn pad2d_mnist_to_32() {
        let x = Tensor::ones(&[2, 1, 28, 28]);
        let y = x.pad2d(2, 2, 2, 2, 0.0).unwrap();
        assert_eq!(y.dims(), &[2, 1, 32, 32]);
        assert_eq!(y.sum(), 2.0 * 784.0);
        assert_eq!(y.get(&[1, 0, 2, 2]), Some(1.0));
        assert_eq!(y.get(&[1, 0, 1, 2]), Some(0.0));
        assert_eq!(y.narrow(2, 2, 28).unwrap().narrow(3, 2, 28).unwrap(), x);
        assert!(iota(&[3]).pad2d(1, 1, 1, 1, 0.0).is_err());
    }
}
