//! Reductions (sum, mean, max, min, argmax) over the whole tensor or along one axis, the
//! inverse of broadcasting ([`Tensor::sum_to`]), and softmax / log-softmax.
//!
//! Sums accumulate in `f64` in a fixed order (row-major), so they are accurate and do not
//! depend on threading. `max`/`argmax` propagate `NaN`: a `NaN` counts as larger than every
//! number (as in PyTorch); ties give the first index.

use rayon::prelude::*;

use crate::error::{Result, TensorError, check_axis};
use crate::ops::{PAR_MIN_ELEMENTS, broadcast_shape_for, broadcast_strides};
use crate::tensor::Tensor;

/// Splits `dims` around `axis` into `(outer, len, inner)`: the element at
/// `(o, l, i)` sits at `(o·len + l)·inner + i`.
fn split_at_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

/// The dims after reducing `axis`: kept as size 1 or removed.
fn reduced_dims(dims: &[usize], axis: usize, keepdim: bool) -> Vec<usize> {
    let mut out = dims.to_vec();
    if keepdim {
        out[axis] = 1;
    } else {
        out.remove(axis);
    }
    out
}

/// Whether `v` should replace `best` as the maximum (`NaN` wins, ties keep the first).
fn beats_max(v: f32, best: f32) -> bool {
    v > best || (v.is_nan() && !best.is_nan())
}

/// Whether `v` should replace `best` as the minimum (`NaN` wins, ties keep the first).
fn beats_min(v: f32, best: f32) -> bool {
    v < best || (v.is_nan() && !best.is_nan())
}

/// The `f64` sums of [`Tensor::sum_to`]: every element of `x` (dims `d`, row-major) added to
/// `acc[Σ index·strides]` (`strides` of the target over `d`'s axes, 0 on reduced axes), each
/// accumulator taking its elements in row-major order.
///
/// The work goes by rows of the last axis: a kept last axis adds a row elementwise into a run
/// of accumulators, a reduced one adds it into one. The outermost leading axis the target keeps
/// splits the accumulators into disjoint blocks, one per index of that axis; above
/// [`PAR_MIN_ELEMENTS`] the blocks are summed in parallel, each taking its rows in row-major
/// order, so every accumulator adds the same values in the same order on any number of
/// threads (bit-identical to a single element-by-element pass).
fn sum_rows_into(x: &[f32], d: &[usize], strides: &[usize], out_len: usize) -> Vec<f64> {
    let mut acc = vec![0.0f64; out_len];
    let Some((&len, leading)) = d.split_last() else {
        return acc;
    };
    if x.is_empty() || len == 0 {
        return acc;
    }
    let last = strides[d.len() - 1];
    // Axes before `split` are reduced (stride 0); `split` is the outermost kept leading axis.
    let split = (0..leading.len()).find(|&ax| strides[ax] != 0);
    let (outer, count, inner_axes, block) = match split {
        Some(ax) => (d[..ax].iter().product::<usize>(), d[ax], ax + 1..leading.len(), strides[ax]),
        None => (leading.iter().product::<usize>(), 1, leading.len()..leading.len(), out_len),
    };
    // Target offset (within a block) of each row of the axes after `split`, in row-major order.
    let mut inner_base = vec![0usize];
    for ax in inner_axes {
        inner_base =
            inner_base.iter().flat_map(|&b| (0..d[ax]).map(move |i| b + i * strides[ax])).collect();
    }
    let inner_rows = inner_base.len();
    let task = |(i, acc): (usize, &mut [f64])| {
        for o in 0..outer {
            let first = (o * count + i) * inner_rows;
            let rows = x[first * len..(first + inner_rows) * len].chunks_exact(len);
            for (row, &base) in rows.zip(&inner_base) {
                if last == 0 {
                    let mut a = acc[base];
                    for &v in row {
                        a += f64::from(v);
                    }
                    acc[base] = a;
                } else {
                    for (a, &v) in acc[base..base + len].iter_mut().zip(row) {
                        *a += f64::from(v);
                    }
                }
            }
        }
    };
    if x.len() >= PAR_MIN_ELEMENTS && count > 1 && rayon::current_num_threads() > 1 {
        acc.par_chunks_mut(block).enumerate().for_each(task);
    } else {
        acc.chunks_mut(block).enumerate().for_each(task);
    }
    acc
}

impl Tensor {
    /// Sum of all elements (0 for an empty tensor), accumulated in `f64`.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::arange(1.0, 5.0, 1.0)?.sum(), 10.0);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn sum(&self) -> f32 {
        self.as_slice().iter().map(|&x| f64::from(x)).sum::<f64>() as f32
    }

    /// Mean of all elements (`NaN` for an empty tensor, as in NumPy).
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// assert_eq!(Tensor::arange(1.0, 5.0, 1.0)?.mean(), 2.5);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn mean(&self) -> f32 {
        let s: f64 = self.as_slice().iter().map(|&x| f64::from(x)).sum();
        (s / self.numel() as f64) as f32
    }

    /// Largest element; errors on an empty tensor.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[3], vec![1., 5., 2.])?;
    /// assert_eq!(x.max()?, 5.0);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn max(&self) -> Result<f32> {
        let i = self.argmax_impl("max")?;
        Ok(self.as_slice()[i])
    }

    /// Smallest element; errors on an empty tensor.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[3], vec![1., 5., 2.])?;
    /// assert_eq!(x.min()?, 1.0);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn min(&self) -> Result<f32> {
        let data = self.as_slice();
        let first = *data
            .first()
            .ok_or_else(|| TensorError::invalid("min", self.dims(), "tensor is empty"))?;
        Ok(data.iter().fold(first, |best, &v| if beats_min(v, best) { v } else { best }))
    }

    /// Row-major index of the largest element (the first one on ties); errors when empty.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 2], vec![1., 7., 7., 2.])?;
    /// assert_eq!(x.argmax()?, 1);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn argmax(&self) -> Result<usize> {
        self.argmax_impl("argmax")
    }

    fn argmax_impl(&self, op: &'static str) -> Result<usize> {
        let data = self.as_slice();
        if data.is_empty() {
            return Err(TensorError::invalid(op, self.dims(), "tensor is empty"));
        }
        let mut best = 0;
        for (i, &v) in data.iter().enumerate().skip(1) {
            if beats_max(v, data[best]) {
                best = i;
            }
        }
        Ok(best)
    }

    /// Sum along `axis`; `keepdim` keeps it as size 1.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.])?;
    /// assert_eq!(x.sum_axis(0, false)?.as_slice(), &[5., 7., 9.]);
    /// assert_eq!(x.sum_axis(1, true)?.dims(), &[2, 1]);
    /// assert!(x.sum_axis(2, false).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn sum_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        check_axis("sum_axis", self.dims(), axis)?;
        let sums = self.axis_sums(axis);
        Tensor::from_vec(
            &reduced_dims(self.dims(), axis, keepdim),
            sums.into_iter().map(|s| s as f32).collect(),
        )
    }

    /// Mean along `axis` (`NaN` where the axis is empty); `keepdim` keeps it as size 1.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 2], vec![1., 2., 3., 4.])?;
    /// assert_eq!(x.mean_axis(1, false)?.as_slice(), &[1.5, 3.5]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn mean_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        check_axis("mean_axis", self.dims(), axis)?;
        let len = self.dims()[axis] as f64;
        let sums = self.axis_sums(axis);
        Tensor::from_vec(
            &reduced_dims(self.dims(), axis, keepdim),
            sums.into_iter().map(|s| (s / len) as f32).collect(),
        )
    }

    /// `f64` sums along `axis`, in the row-major order of the reduced shape.
    fn axis_sums(&self, axis: usize) -> Vec<f64> {
        let (outer, len, inner) = split_at_axis(self.dims(), axis);
        let data = self.as_slice();
        let mut sums = vec![0.0f64; outer * inner];
        // Walk the input in memory order; each output row of `inner` sums stays in cache.
        for o in 0..outer {
            let acc = &mut sums[o * inner..(o + 1) * inner];
            for l in 0..len {
                let src = &data[(o * len + l) * inner..(o * len + l + 1) * inner];
                for (a, &x) in acc.iter_mut().zip(src) {
                    *a += f64::from(x);
                }
            }
        }
        sums
    }

    /// Index along `axis` of the best element of every line, by `beats`.
    fn axis_arg(
        &self,
        op: &'static str,
        axis: usize,
        beats: fn(f32, f32) -> bool,
    ) -> Result<Vec<usize>> {
        check_axis(op, self.dims(), axis)?;
        let (outer, len, inner) = split_at_axis(self.dims(), axis);
        if len == 0 && outer * inner > 0 {
            return Err(TensorError::invalid(op, self.dims(), format!("axis {axis} is empty")));
        }
        let data = self.as_slice();
        let mut best = vec![0usize; outer * inner];
        for o in 0..outer {
            for l in 1..len {
                for i in 0..inner {
                    let b = &mut best[o * inner + i];
                    if beats(data[(o * len + l) * inner + i], data[(o * len + *b) * inner + i]) {
                        *b = l;
                    }
                }
            }
        }
        Ok(best)
    }

    /// Maximum along `axis`; errors when the axis is empty.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 2], vec![1., 4., 3., 2.])?;
    /// assert_eq!(x.max_axis(0, false)?.as_slice(), &[3., 4.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn max_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.gather_best("max_axis", axis, keepdim, beats_max)
    }

    /// Minimum along `axis`; errors when the axis is empty.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2, 2], vec![1., 4., 3., 2.])?;
    /// assert_eq!(x.min_axis(1, true)?.as_slice(), &[1., 2.]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn min_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.gather_best("min_axis", axis, keepdim, beats_min)
    }

    fn gather_best(
        &self,
        op: &'static str,
        axis: usize,
        keepdim: bool,
        beats: fn(f32, f32) -> bool,
    ) -> Result<Tensor> {
        let best = self.axis_arg(op, axis, beats)?;
        let (_, len, inner) = split_at_axis(self.dims(), axis);
        let data = self.as_slice();
        let values = best
            .iter()
            .enumerate()
            .map(|(j, &l)| data[((j / inner) * len + l) * inner + j % inner])
            .collect();
        Tensor::from_vec(&reduced_dims(self.dims(), axis, keepdim), values)
    }

    /// For every line along `axis`, the index of its maximum (first on ties), in row-major
    /// order of the shape with `axis` removed. Errors when the axis is empty.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// // Predicted classes of a batch of 2 logit rows.
    /// let logits = Tensor::from_vec(&[2, 3], vec![0.1, 0.7, 0.2, 0.9, 0.05, 0.05])?;
    /// assert_eq!(logits.argmax_axis(1)?, vec![1, 0]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn argmax_axis(&self, axis: usize) -> Result<Vec<usize>> {
        self.axis_arg("argmax_axis", axis, beats_max)
    }

    /// Sums a broadcast result back down to `dims` — the inverse of broadcasting, used for
    /// the gradient of a broadcast operand. `dims` must broadcast to the shape of `self`.
    /// Each sum accumulates in `f64`, its elements taken in row-major order, whole rows at a
    /// time; large tensors split over rayon's pool by the outermost axis the target keeps (a
    /// bias gradient's channels), with the same bits on any number of threads.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let grad = Tensor::ones(&[2, 3, 4]);
    /// let bias_grad = grad.sum_to(&[3, 1])?;
    /// assert_eq!(bias_grad.dims(), &[3, 1]);
    /// assert_eq!(bias_grad.as_slice(), &[8., 8., 8.]);
    /// assert!(grad.sum_to(&[2]).is_err());
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn sum_to(&self, dims: &[usize]) -> Result<Tensor> {
        let b = broadcast_shape_for("sum_to", dims, self.dims())?;
        if b != self.dims() {
            return Err(TensorError::mismatch(
                "sum_to",
                self.dims(),
                dims,
                "the target shape must broadcast to the tensor's shape",
            ));
        }
        if dims == self.dims() {
            return Ok(self.clone());
        }
        let strides = broadcast_strides(dims, self.dims());
        let acc = sum_rows_into(self.as_slice(), self.dims(), &strides, crate::tensor::numel(dims));
        Tensor::from_vec(dims, acc.into_iter().map(|s| s as f32).collect())
    }

    /// Softmax along `axis`: `exp(x − max) / Σ exp(x − max)`, stable for any magnitude.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[1, 3], vec![1000., 1000., 1000.])?;
    /// let p = x.softmax(1)?;
    /// assert!(p.as_slice().iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-6));
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn softmax(&self, axis: usize) -> Result<Tensor> {
        self.softmax_impl("softmax", axis, false)
    }

    /// Log-softmax along `axis`: `x − max − ln Σ exp(x − max)`, stable for any magnitude.
    ///
    /// ```
    /// use convkit_tensor::Tensor;
    /// let x = Tensor::from_vec(&[2], vec![0., -1000.])?;
    /// let l = x.log_softmax(0)?;
    /// assert_eq!(l.as_slice(), &[0.0, -1000.0]);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn log_softmax(&self, axis: usize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", axis, true)
    }

    fn softmax_impl(&self, op: &'static str, axis: usize, log: bool) -> Result<Tensor> {
        check_axis(op, self.dims(), axis)?;
        let (outer, len, inner) = split_at_axis(self.dims(), axis);
        let data = self.as_slice();
        let mut out = vec![0.0f32; data.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |l: usize| (o * len + l) * inner + i;
                let max = (0..len).map(|l| data[at(l)]).fold(f32::NEG_INFINITY, f32::max);
                // An all -inf line has no finite max; shifting by 0 keeps exp at 0 and the
                // result NaN-free except for the genuinely undefined 0/0.
                let shift = if max.is_finite() { max } else { 0.0 };
                let mut total = 0.0f64;
                for l in 0..len {
                    let e = (data[at(l)] - shift).exp();
                    out[at(l)] = e;
                    total += f64::from(e);
                }
                if log {
                    let log_total = total.ln() as f32;
                    for l in 0..len {
                        out[at(l)] = data[at(l)] - shift - log_total;
                    }
                } else {
                    let inv = (1.0 / total) as f32;
                    for l in 0..len {
                        out[at(l)] *= inv;
                    }
                }
            }
        }
        Tensor::from_vec(self.dims(), out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `sum_to` as it was first written: one element at a time through an odometer.
    fn sum_to_reference(x: &Tensor, dims: &[usize]) -> Vec<f32> {
        let strides = broadcast_strides(dims, x.dims());
        let mut acc = vec![0.0f64; crate::tensor::numel(dims)];
        let rank = x.rank();
        let mut index = vec![0usize; rank];
        let mut off = 0usize;
        for &v in x.as_slice() {
            acc[off] += f64::from(v);
            for ax in (0..rank).rev() {
                index[ax] += 1;
                off += strides[ax];
                if index[ax] < x.dims()[ax] {
                    break;
                }
                off -= strides[ax] * x.dims()[ax];
                index[ax] = 0;
            }
        }
        acc.into_iter().map(|s| s as f32).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    proptest::proptest! {
        #[test]
        fn sum_to_equals_the_element_by_element_sum(
            dims in proptest::collection::vec(0usize..5, 1..5),
            keep in proptest::collection::vec(proptest::bool::ANY, 4),
            drop in 0usize..3,
            seed in 0u64..1000,
        ) {
            let x = Tensor::rand_uniform(&dims, -3.0, 3.0, &mut crate::Rng::new(seed)).unwrap();
            let target: Vec<usize> = dims
                .iter()
                .enumerate()
                .map(|(ax, &n)| if keep[ax] { n } else { 1 })
                .collect();
            // Also a target of lower rank (leading axes dropped).
            let target = target[drop.min(target.len())..].to_vec();
            let got = x.sum_to(&target).unwrap();
            proptest::prop_assert_eq!(bits(got.as_slice()), bits(&sum_to_reference(&x, &target)));
        }
    }

    #[test]
    fn large_sum_to_is_bit_identical_on_any_number_of_threads() {
        let x =
            Tensor::rand_uniform(&[64, 32, 14, 14], -1.0, 1.0, &mut crate::Rng::new(7)).unwrap();
        assert!(x.numel() >= PAR_MIN_ELEMENTS);
        for target in [
            vec![1, 32, 1, 1],
            vec![32, 14, 14],
            vec![64, 1, 1, 1],
            vec![1, 1, 14, 14],
            vec![1, 1, 1, 14],
            vec![64, 32, 1, 14],
            vec![1],
        ] {
            let want = bits(&sum_to_reference(&x, &target));
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| x.sum_to(&target)).unwrap();
                assert_eq!(bits(got.as_slice()), want, "{target:?} on {threads} threads");
            }
        }
    }

    fn t(dims: &[usize], data: &[f32]) -> Tensor {
        Tensor::from_slice(dims, data).unwrap()
    }

    #[test]
    fn whole_reductions() {
        let x = t(&[2, 2], &[3., -1., 4., 1.]);
        assert_eq!(x.sum(), 7.0);
        assert_eq!(x.mean(), 1.75);
        assert_eq!(x.max().unwrap(), 4.0);
        assert_eq!(x.min().unwrap(), -1.0);
        assert_eq!(x.argmax().unwrap(), 2);
        let empty = Tensor::zeros(&[0, 3]);
        assert_eq!(empty.sum(), 0.0);
        assert!(empty.mean().is_nan());
        let e = empty.max().unwrap_err();
        assert_eq!(e.to_string(), "max: tensor is empty (tensor shape [0, 3])");
        assert!(t(&[3], &[1., f32::NAN, 2.]).max().unwrap().is_nan());
    }

    #[test]
    fn axis_reductions_of_rank3() {
        let x = Tensor::arange(0.0, 24.0, 1.0).unwrap().reshape(&[2, 3, 4]).unwrap();
        let s = x.sum_axis(1, false).unwrap();
        assert_eq!(s.dims(), &[2, 4]);
        assert_eq!(s.as_slice(), &[12., 15., 18., 21., 48., 51., 54., 57.]);
        let m = x.max_axis(2, true).unwrap();
        assert_eq!(m.dims(), &[2, 3, 1]);
        assert_eq!(m.as_slice(), &[3., 7., 11., 15., 19., 23.]);
        assert_eq!(x.argmax_axis(0).unwrap(), vec![1; 12]);
        assert_eq!(x.min_axis(0, false).unwrap().as_slice(), &x.as_slice()[..12]);
        assert_eq!(x.mean_axis(2, false).unwrap().as_slice(), &[1.5, 5.5, 9.5, 13.5, 17.5, 21.5]);
        let e = x.max_axis(3, false).unwrap_err();
        assert!(e.to_string().contains("axis 3 out of range for rank 3 (tensor shape [2, 3, 4])"));
        assert!(Tensor::zeros(&[2, 0]).argmax_axis(1).is_err());
        assert_eq!(Tensor::zeros(&[2, 0]).sum_axis(1, false).unwrap().as_slice(), &[0., 0.]);
    }

    #[test]
    fn sum_to_inverts_broadcast() {
        let g = Tensor::arange(0.0, 6.0, 1.0).unwrap().reshape(&[2, 3]).unwrap();
        assert_eq!(g.sum_to(&[3]).unwrap().as_slice(), &[3., 5., 7.]);
        assert_eq!(g.sum_to(&[2, 1]).unwrap().as_slice(), &[3., 12.]);
        assert_eq!(g.sum_to(&[]).unwrap().as_slice(), &[15.]);
        assert_eq!(g.sum_to(&[1, 1]).unwrap().dims(), &[1, 1]);
        let e = g.sum_to(&[4]).unwrap_err();
        assert!(e.to_string().contains("sum_to"));
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_log() {
        let x = t(&[2, 3], &[1., 2., 3., -50., 0., 50.]);
        let p = x.softmax(1).unwrap();
        for row in p.as_slice().chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let l = x.log_softmax(1).unwrap();
        for (a, b) in l.as_slice().iter().zip(p.as_slice()) {
            assert!((a.exp() - b).abs() < 1e-6);
        }
        // Along axis 0 of the same data.
        let p0 = x.softmax(0).unwrap();
        assert!((p0.as_slice()[0] + p0.as_slice()[3] - 1.0).abs() < 1e-6);
        let expect = (1.0f64).exp() / ((1.0f64).exp() + (2.0f64).exp() + (3.0f64).exp());
        assert!((f64::from(p.as_slice()[0]) - expect).abs() < 1e-7);
    }
}
