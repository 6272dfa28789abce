//! Dense layers: [`PreparedLinear`] for inference, [`linear_forward`] and [`linear_backward`]
//! for training.
//!
//! `y[b][o] = bias[o] + Σ_i x[b][i]·w[o][i]` (then `max(0, ·)` when asked) for a batch of
//! rows. The weight `[out, in]` is stored transposed, `[in][out]` with the outputs padded to
//! whole vectors, so that a register tile of up to 4 rows × 24 outputs broadcasts each input
//! once and loads each weight vector once per tile. At batch 1 this is a matrix-vector product
//! that reads the weights once, the case where a general matrix product spends most of its
//! time packing.
//!
//! Every output is the same sequence of fused multiply-adds (`i = 0, 1, …` from the bias)
//! whatever the batch size, the tile it lands in or the number of threads, so results are
//! bit-identical for any of them. Rows are split over rayon tasks of 16 when the product is
//! large enough to pay for a task; a single row always stays on the calling thread.
//!
//! ## Training
//! [`linear_forward`] (`x·wᵀ + bias`) and [`linear_backward`] (`∂x = ∂y·w`, `∂w = ∂yᵀ·x`,
//! `∂bias` the column sums of `∂y`) run on the crate's packed GEMM (the `gemm` module), which
//! beats `matrixmultiply` on these thin products (LeNet-5's 400 → 120 layer at batch 64, one
//! Zen 5 core: the forward 34 against 47 µs, each gradient 28 against 30 µs; 120 → 84: 7
//! against 8–11 µs). Each product is split into blocks of output rows, one per thread, from
//! [`PARALLEL_MIN_MACS`] multiply-adds; the GEMM sums every element in the same order however
//! its rows are split, so the results are bit-identical for any number of threads.

use convkit_tensor::Tensor;
use rayon::prelude::*;

use crate::error::{ConvError, Result};
use crate::gemm::{MatRef, sgemm};
use crate::params::{GradBuffers, check_len, layer_dims};
use crate::simd::{self, LANES, Simd, WithSimd};

const OP: &str = "linear";
/// Rows per rayon task.
const ROWS_PER_TASK: usize = 16;
/// Multiply-adds below which a batch (or a training product) stays on the calling thread.
pub const PARALLEL_MIN_MACS: usize = 1 << 18;

/// The sizes of a dense layer applied to a batch: `batch` rows of `inp` features mapped to
/// `out` features by a weight `[out, inp]` (PyTorch's layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearDims {
    /// Rows of the input and of the output.
    pub batch: usize,
    /// Input features.
    pub inp: usize,
    /// Output features.
    pub out: usize,
}

impl LinearDims {
    /// Checks that the buffers have the lengths these sizes imply (`bias`, `grad_output`
    /// when given); errors name the buffer and the shape.
    fn check(self, op: &'static str, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<()> {
        let LinearDims { batch, inp, out } = self;
        check_len(op, "input", &[batch, inp], x.len())?;
        check_len(op, "weight", &[out, inp], w.len())?;
        if let Some(b) = bias {
            check_len(op, "bias", &[out], b.len())?;
        }
        Ok(())
    }
}

/// `y [batch, out] = x [batch, inp] · wᵀ + bias` (`w` `[out, inp]`, `bias` `[out]`): a dense
/// layer's forward pass for training, on the packed GEMM, bit-identical for any number of
/// threads. Errors name the buffer whose length does not fit `d`.
///
/// ```
/// use convkit_conv::{LinearDims, linear_forward};
///
/// # fn main() -> convkit_conv::Result<()> {
/// let d = LinearDims { batch: 2, inp: 3, out: 2 };
/// let (x, w) = ([1.0, 2.0, 3.0, 0.0, 1.0, 0.0], [1.0, 0.0, -1.0, 0.5, 0.5, 0.5]);
/// let mut y = [0.0; 4];
/// linear_forward(d, &x, &w, Some(&[10.0, 0.0]), &mut y)?;
/// assert_eq!(y, [8.0, 3.0, 10.0, 0.5]);
/// # Ok(())
/// # }
/// ```
pub fn linear_forward(
    d: LinearDims,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "linear_forward";
    d.check(OP, x, w, bias)?;
    check_len(OP, "output", &[d.batch, d.out], y.len())?;
    let LinearDims { batch, inp, out } = d;
    product(MatRef::row_major(x, batch, inp), MatRef::row_major(w, out, inp).t(), y);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(out.max(1)) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    Ok(())
}

/// The gradients of [`linear_forward`] given `grad_output` `[batch, out]`: `∂x = ∂y·w`
/// `[batch, inp]`, `∂w = ∂yᵀ·x` `[out, inp]` and `∂bias` `[out]` (each row of `∂y` added in
/// order), each written (overwritten) where `grads` holds a buffer. Bit-identical for any
/// number of threads; errors name the buffer whose length does not fit `d`.
///
/// ```
/// use convkit_conv::GradBuffers;
/// use convkit_conv::{LinearDims, linear_backward};
///
/// # fn main() -> convkit_conv::Result<()> {
/// let d = LinearDims { batch: 2, inp: 3, out: 2 };
/// let (x, w) = ([1.0, 2.0, 3.0, 0.0, 1.0, 0.0], [1.0, 0.0, -1.0, 0.5, 0.5, 0.5]);
/// let dy = [1.0, 0.0, 0.0, 2.0];
/// let (mut gx, mut gw, mut gb) = ([0.0; 6], [0.0; 6], [0.0; 2]);
/// let grads = GradBuffers { input: Some(&mut gx), weight: Some(&mut gw), bias: Some(&mut gb) };
/// linear_backward(d, &x, &w, &dy, grads)?;
/// assert_eq!(gx, [1.0, 0.0, -1.0, 1.0, 1.0, 1.0]);
/// assert_eq!(gw, [1.0, 2.0, 3.0, 0.0, 2.0, 0.0]);
/// assert_eq!(gb, [1.0, 2.0]);
/// # Ok(())
/// # }
/// ```
pub fn linear_backward(
    d: LinearDims,
    x: &[f32],
    w: &[f32],
    grad_output: &[f32],
    grads: GradBuffers<'_>,
) -> Result<()> {
    const OP: &str = "linear_backward";
    d.check(OP, x, w, None)?;
    check_len(OP, "grad_output", &[d.batch, d.out], grad_output.len())?;
    let LinearDims { batch, inp, out } = d;
    let GradBuffers { input, weight, bias } = grads;
    if let Some(gx) = &input {
        check_len(OP, "grad_input", &[batch, inp], gx.len())?;
    }
    if let Some(gw) = &weight {
        check_len(OP, "grad_weight", &[out, inp], gw.len())?;
    }
    if let Some(gb) = &bias {
        check_len(OP, "grad_bias", &[out], gb.len())?;
    }
    let dy = MatRef::row_major(grad_output, batch, out);
    if let Some(gx) = input {
        product(dy, MatRef::row_major(w, out, inp), gx);
    }
    if let Some(gw) = weight {
        product(dy.t(), MatRef::row_major(x, batch, inp), gw);
    }
    if let Some(gb) = bias {
        gb.fill(0.0);
        for row in grad_output.chunks_exact(out.max(1)) {
            for (g, &v) in gb.iter_mut().zip(row) {
                *g += v;
            }
        }
    }
    Ok(())
}

/// `c = a · b` (row-major `c`, `a.rows × b.cols`, overwritten): one GEMM, or from
/// [`PARALLEL_MIN_MACS`] multiply-adds with several threads, one GEMM per block of rows of
/// `c` (the same bits: the GEMM sums each element in one order for any split). An empty
/// inner dimension writes zeros.
fn product(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    let rows = m.div_ceil(threads).next_multiple_of(LANES);
    if threads < 2 || m * n * k < PARALLEL_MIN_MACS || rows >= m {
        sgemm(1.0, a, b, 0.0, c, n);
        return;
    }
    c.par_chunks_mut(rows * n).enumerate().for_each(|(i, c)| {
        let block = MatRef { data: &a.data[i * rows * a.row_stride..], rows: c.len() / n, ..a };
        sgemm(1.0, block, b, 0.0, c, n);
    });
}

/// A dense layer `[out, in]` prepared for inference: transposed weights, register tiles of
/// up to 4 rows × 24 outputs, ReLU fused, results bit-identical for any batch split or thread
/// count.
///
/// ```
/// use convkit_conv::PreparedLinear;
///
/// # fn main() -> Result<(), convkit_conv::ConvError> {
/// // 3 inputs → 2 outputs, then ReLU.
/// let w = [1.0, 2.0, 3.0, -1.0, -1.0, -1.0];
/// let layer = PreparedLinear::new(&w, [2, 3], Some(&[0.5, 0.0]))?.with_relu();
/// let mut y = [0.0; 2];
/// layer.forward(&[1.0, 1.0, 1.0], &mut y)?;
/// assert_eq!(y, [6.5, 0.0]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PreparedLinear {
    inp: usize,
    out: usize,
    /// `out` rounded up to whole vectors.
    out_pad: usize,
    /// `[inp][out_pad]`, zero in the padding.
    w: Vec<f32>,
    /// `[out_pad]`, zero in the padding.
    b: Vec<f32>,
    relu: bool,
}

impl PreparedLinear {
    /// Prepares `weight` `[out, in]` (`dims`, PyTorch's layout) and an optional `bias`
    /// `[out]`. Errors name the shapes when a buffer does not fit `dims`.
    pub fn new(weight: &[f32], dims: [usize; 2], bias: Option<&[f32]>) -> Result<Self> {
        let [out, inp] = dims;
        if out == 0 || inp == 0 {
            return Err(ConvError::ShapeMismatch {
                op: OP,
                msg: format!("weight {dims:?} is empty"),
            });
        }
        check_len(OP, "weight", &dims, weight.len())?;
        if let Some(b) = bias {
            check_len(OP, "bias", &[out], b.len())?;
        }
        let out_pad = out.div_ceil(LANES) * LANES;
        let mut w = vec![0f32; inp * out_pad];
        for (o, row) in weight.chunks_exact(inp).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                w[i * out_pad + o] = v;
            }
        }
        let mut b = vec![0f32; out_pad];
        if let Some(bias) = bias {
            b[..out].copy_from_slice(bias);
        }
        Ok(Self { inp, out, out_pad, w, b, relu: false })
    }

    /// [`PreparedLinear::new`] from tensors (`weight` `[out, in]`, `bias` `[out]`).
    pub fn from_tensors(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let dims = layer_dims(OP, "[out, in]", weight.dims(), bias.map(Tensor::dims))?;
        Self::new(weight.as_slice(), dims, bias.map(Tensor::as_slice))
    }

    /// The same layer followed by `max(0, ·)` on every output.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    /// The same layer reading its input `i` from position `order[i]` of each row given to
    /// [`forward`](Self::forward), e.g. to take features in another flatten order without
    /// moving them. `order` must be a permutation of `0..in`. The sums then run in the order of
    /// the positions, so the bits can differ from the unpermuted layer's.
    pub fn with_input_order(mut self, order: &[usize]) -> Result<Self> {
        let mut seen = vec![false; self.inp];
        if order.len() != self.inp
            || !order.iter().all(|&p| p < self.inp && !std::mem::replace(&mut seen[p], true))
        {
            return Err(ConvError::ShapeMismatch {
                op: OP,
                msg: format!(
                    "input order of {} entries is not a permutation of 0..{}",
                    order.len(),
                    self.inp
                ),
            });
        }
        let mut w = vec![0f32; self.w.len()];
        for (i, &p) in order.iter().enumerate() {
            w[p * self.out_pad..][..self.out_pad]
                .copy_from_slice(&self.w[i * self.out_pad..][..self.out_pad]);
        }
        self.w = w;
        Ok(self)
    }

    /// Inputs per row.
    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// Outputs per row.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Whether a ReLU is applied to the outputs.
    pub fn has_relu(&self) -> bool {
        self.relu
    }

    /// `y [n][out] = layer(x [n][in])`, `n = x.len() / in`, with the active instruction set
    /// ([`simd::active`]).
    pub fn forward(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        let n = self.rows(x, y)?;
        if n > ROWS_PER_TASK && n * self.inp * self.out >= PARALLEL_MIN_MACS {
            x.par_chunks(ROWS_PER_TASK * self.inp)
                .zip(y.par_chunks_mut(ROWS_PER_TASK * self.out))
                .for_each(|(x, y)| simd::dispatch_active(Rows { layer: self, x, y }));
        } else {
            simd::dispatch_active(Rows { layer: self, x, y });
        }
        Ok(())
    }

    /// [`forward`](Self::forward) on a `[n, in]` tensor, giving `[n, out]`.
    pub fn forward_tensor(&self, x: &Tensor) -> Result<Tensor> {
        let n = match x.dims() {
            &[n, i] if i == self.inp => n,
            d => {
                return Err(ConvError::ShapeMismatch {
                    op: OP,
                    msg: format!("input {d:?} does not fit weight [{}, {}]", self.out, self.inp),
                });
            }
        };
        // Every output is written (bias plus products), so the buffer need not be zeroed.
        let mut y = convkit_tensor::buffer::take(n * self.out);
        self.forward(x.as_slice(), &mut y)?;
        Ok(Tensor::from_vec(&[n, self.out], y)?)
    }

    /// [`forward`](Self::forward) on the calling thread with the instruction set `s`, for
    /// kernels that run this layer inside their own [`WithSimd`] body.
    #[inline(always)]
    pub fn forward_with<S: Simd>(&self, s: S, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.rows(x, y)?;
        rows(s, self, x, y);
        Ok(())
    }

    /// The row count of `x` and `y`, checked against each other and the layer.
    fn rows(&self, x: &[f32], y: &mut [f32]) -> Result<usize> {
        if !x.len().is_multiple_of(self.inp) || x.len() / self.inp * self.out != y.len() {
            return Err(ConvError::ShapeMismatch {
                op: OP,
                msg: format!(
                    "input of {} and output of {} elements are not n rows of {} and {}",
                    x.len(),
                    y.len(),
                    self.inp,
                    self.out
                ),
            });
        }
        Ok(x.len() / self.inp)
    }
}

/// Some rows of a batch, for [`simd::dispatch_active`].
struct Rows<'a> {
    layer: &'a PreparedLinear,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        rows(s, self.layer, self.x, self.y);
    }
}

/// Every row of `x` through `layer` into `y`, in tiles of up to 4 rows × 3 vectors.
#[inline(always)]
fn rows<S: Simd>(s: S, layer: &PreparedLinear, x: &[f32], y: &mut [f32]) {
    let n = y.len() / layer.out;
    let mut b0 = 0;
    while b0 < n {
        let nb = (n - b0).min(4);
        let mut o0 = 0;
        while o0 < layer.out {
            let nv = (layer.out - o0).div_ceil(LANES).min(3);
            macro_rules! tile {
                ($($b:literal, $v:literal);*) => {
                    match (nb, nv) {
                        $(($b, $v) => tile::<S, $b, $v>(s, layer, x, y, b0, o0),)*
                        _ => tile::<S, 1, 1>(s, layer, x, y, b0, o0),
                    }
                };
            }
            tile!(4, 3; 4, 2; 4, 1; 3, 3; 3, 2; 3, 1; 2, 3; 2, 2; 2, 1; 1, 3; 1, 2);
            o0 += nv * LANES;
        }
        b0 += nb;
    }
}

/// `NB` rows from `b0` × `NV` vectors of outputs from `o0` (the last vector may run past
/// `out` into the zero padding; only real outputs are stored).
#[inline(always)]
fn tile<S: Simd, const NB: usize, const NV: usize>(
    s: S,
    layer: &PreparedLinear,
    x: &[f32],
    y: &mut [f32],
    b0: usize,
    o0: usize,
) {
    let (inp, out, pad) = (layer.inp, layer.out, layer.out_pad);
    let mut acc = [[s.zero(); NV]; NB];
    for a in acc.iter_mut() {
        for (v, av) in a.iter_mut().enumerate() {
            *av = s.load(&layer.b[o0 + v * LANES..]);
        }
    }
    let xs: [&[f32]; NB] = std::array::from_fn(|b| &x[(b0 + b) * inp..][..inp]);
    let w = &layer.w[..inp * pad];
    for i in 0..inp {
        let wr = &w[i * pad + o0..][..NV * LANES];
        // A loop, not `array::from_fn`: a closure would not be compiled with the caller's
        // target features.
        let mut wv = [s.zero(); NV];
        for (v, wvv) in wv.iter_mut().enumerate() {
            *wvv = s.load(&wr[v * LANES..]);
        }
        for (a, xr) in acc.iter_mut().zip(&xs) {
            let xb = s.splat(xr[i]);
            for (av, &wvv) in a.iter_mut().zip(&wv) {
                *av = s.fma(xb, wvv, *av);
            }
        }
    }
    let z = s.zero();
    let width = (out - o0).min(NV * LANES);
    for (b, a) in acc.iter().enumerate() {
        let dst = &mut y[(b0 + b) * out + o0..][..width];
        for (v, &av) in a.iter().enumerate() {
            let r = if layer.relu { s.max(av, z) } else { av };
            let at = v * LANES;
            if at + LANES <= width {
                s.store(r, &mut dst[at..]);
            } else {
                dst[at..].copy_from_slice(&s.to_array(r)[..width - at]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::simd::SimdLevel;
    use convkit_tensor::Rng;
    use convkit_tensor::testing::{Tolerance, assert_close};

    fn random_vec(len: usize, seed: u64) -> Vec<f32> {
        convkit_tensor::testing::random_vec(len, -1.0, 1.0, &mut Rng::new(seed))
    }

    /// The definition in f64.
    fn reference(w: &[f32], b: &[f32], x: &[f32], inp: usize, relu: bool) -> Vec<f32> {
        let out = b.len();
        x.chunks_exact(inp)
            .flat_map(|row| {
                (0..out).map(move |o| {
                    let s = f64::from(b[o])
                        + row
                            .iter()
                            .zip(&w[o * inp..][..inp])
                            .map(|(&a, &c)| f64::from(a) * f64::from(c))
                            .sum::<f64>();
                    let s = s as f32;
                    if relu { s.max(0.0) } else { s }
                })
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_at_every_level_and_shape() {
        for (n, inp, out) in
            [(1, 1, 1), (1, 400, 120), (3, 17, 9), (5, 84, 10), (37, 64, 33), (2, 3136, 128)]
        {
            let w = random_vec(out * inp, 1);
            let b = random_vec(out, 2);
            let x = random_vec(n * inp, 3);
            for relu in [false, true] {
                let mut layer = PreparedLinear::new(&w, [out, inp], Some(&b)).unwrap();
                if relu {
                    layer = layer.with_relu();
                }
                let want = reference(&w, &b, &x, inp, relu);
                // f32 sums of `inp` products of magnitude ≤ 1.
                let tol = Tolerance::absolute(1.2e-7 * (inp as f64 + 1.0));
                let mut y = vec![f32::NAN; n * out];
                layer.forward(&x, &mut y).unwrap();
                assert_close("linear", &y, &want, tol);
                for level in [SimdLevel::Avx512, SimdLevel::Avx2Fma, SimdLevel::Fallback] {
                    let mut z = vec![f32::NAN; n * out];
                    let ran = simd::dispatch(level, Rows { layer: &layer, x: &x, y: &mut z });
                    if ran.is_none() {
                        eprintln!("skipping {level:?}: not on this CPU");
                        continue;
                    }
                    assert_close("linear level", &z, &want, tol);
                }
            }
        }
    }

    #[test]
    fn same_bits_for_any_batch_split_and_thread_count() {
        let (n, inp, out) = (70, 300, 50);
        let layer = PreparedLinear::new(&random_vec(out * inp, 4), [out, inp], None).unwrap();
        let x = random_vec(n * inp, 5);
        let mut whole = vec![0f32; n * out];
        layer.forward(&x, &mut whole).unwrap();
        for (r, want) in x.chunks(inp).zip(whole.chunks(out)) {
            let mut one = vec![0f32; out];
            layer.forward(r, &mut one).unwrap();
            assert_eq!(one, want);
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let mut single = vec![0f32; n * out];
        pool.install(|| layer.forward(&x, &mut single)).unwrap();
        assert_eq!(single, whole);
    }

    #[test]
    fn input_order_reads_permuted_features() {
        let (inp, out) = (6, 3);
        let w = random_vec(out * inp, 6);
        let x = random_vec(inp, 7);
        let order = [3, 0, 5, 1, 4, 2];
        let moved: Vec<f32> = {
            let mut m = vec![0f32; inp];
            for (i, &p) in order.iter().enumerate() {
                m[p] = x[i];
            }
            m
        };
        let plain = PreparedLinear::new(&w, [out, inp], None).unwrap();
        let permuted = plain.clone().with_input_order(&order).unwrap();
        let (mut a, mut b) = (vec![0f32; out], vec![0f32; out]);
        plain.forward(&x, &mut a).unwrap();
        permuted.forward(&moved, &mut b).unwrap();
        // The products are the same; they are summed in the order of the positions.
        assert_close("permuted", &b, &a, Tolerance::absolute(1e-6));
        assert!(plain.clone().with_input_order(&[0, 0, 1, 2, 3, 4]).is_err());
        assert!(plain.with_input_order(&[0, 1]).is_err());
    }

    #[test]
    fn bad_shapes_are_named() {
        assert!(PreparedLinear::new(&[], [0, 3], None).is_err());
        let e = PreparedLinear::new(&[0.0; 5], [2, 3], None).unwrap_err().to_string();
        assert!(e.contains("weight") && e.contains("[2, 3]"), "{e}");
        let e = PreparedLinear::new(&[0.0; 6], [2, 3], Some(&[0.0])).unwrap_err().to_string();
        assert!(e.contains("bias"), "{e}");
        let layer = PreparedLinear::new(&[0.0; 6], [2, 3], None).unwrap();
        let e = layer.forward(&[0.0; 4], &mut [0.0; 2]).unwrap_err().to_string();
        assert!(e.contains("rows of 3 and 2"), "{e}");
        let e = layer.forward_tensor(&Tensor::zeros(&[2, 4])).unwrap_err().to_string();
        assert!(e.contains("[2, 4]"), "{e}");
        assert_eq!(layer.forward_tensor(&Tensor::zeros(&[0, 3])).unwrap().dims(), [0, 2]);
    }
}
