//! A convolution prepared once for many inference calls: [`PreparedConv`].
//!
//! A trained layer's weights do not change between inference calls, so whatever depends only
//! on them is computed once: the Winograd filter transform of each variant the input shapes
//! call for (built on first use, then shared by every call and thread), a batch normalization
//! that follows the convolution (folded into the weights and bias), and a ReLU applied to the
//! output in the same call. The algorithm is chosen per input shape by
//! [`resolve_prepared`], which knows the filter transform is paid.
//!
//! A 2x2 pool after the convolution (and its ReLU) can be made part of the layer too
//! ([`PreparedConv::with_pool`]): where the direct kernel is the choice for the shape, each
//! image is then convolved and pooled in one pass (module `pooled`), and the full-size output
//! is never written; elsewhere the chosen algorithm runs and the pool follows it.

use std::sync::OnceLock;

use convkit_tensor::Tensor;
use rayon::prelude::*;

use crate::algo::{ConvAlgo, conv2d_forward, resolve_prepared};
use crate::direct::PARALLEL_MIN_FLOPS;
use crate::error::{ConvError, Result};
use crate::params::{Conv2dParams, ConvGeometry, check_len, layer_dims, rank_shape_first};
use crate::pool::{PoolGeometry, PoolParams, avg_pool2d, max_pool2d};
use crate::pooled::{ImageDims, PoolKind, PooledConv, PooledLayout};
use crate::scratch::{self, Slot};
use crate::simd::{self, Simd, WithSimd};
use crate::winograd::{WinogradFilter, WinogradVariant, conv2d_winograd_prepared};

const OP: &str = "PreparedConv";

/// A convolution's weights, bias and options, prepared for inference.
///
/// ```
/// use convkit_conv::{Conv2dParams, ConvAlgo, PreparedConv};
///
/// # fn main() -> Result<(), convkit_conv::ConvError> {
/// // 3x3, 16 → 16 channels, padding 1, then ReLU.
/// let weight = vec![0.01; 16 * 16 * 9];
/// let conv = PreparedConv::new(&weight, [16, 16, 3, 3], None, Conv2dParams::default().with_padding(1), ConvAlgo::Auto)?
///     .with_relu();
/// let x = vec![1.0; 2 * 16 * 28 * 28];
/// let dims = conv.output_dims([2, 16, 28, 28])?;
/// let mut y = vec![0.0; dims.iter().product()];
/// let ran = conv.forward(&x, [2, 16, 28, 28], &mut y)?;
/// assert_eq!(ran, conv.algo_for([2, 16, 28, 28])?); // Winograd F(4x4) unless overridden
/// assert!(y.iter().all(|&v| v >= 0.0));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PreparedConv {
    weight: Vec<f32>,
    dims: [usize; 4],
    bias: Option<Vec<f32>>,
    params: Conv2dParams,
    algo: ConvAlgo,
    relu: bool,
    pool: Option<PoolKind>,
    f2: OnceLock<WinogradFilter>,
    f4: OnceLock<WinogradFilter>,
    s2: OnceLock<WinogradFilter>,
    /// The weights repacked for the fused convolution and pool, built on first use.
    fused: OnceLock<PooledConv>,
}

/// One image for [`PreparedConv::pooled_image_with`].
#[derive(Debug)]
pub struct PooledImage<'a> {
    /// The image, `[c_in][height][width]`.
    pub input: &'a [f32],
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// The pooled output, `[c_out][ph][pw]` or channels last (`layout`).
    pub output: &'a mut [f32],
    /// How `output` is laid out.
    pub layout: PooledLayout,
    /// Where to keep the convolution's output before the ReLU, `[c_out][2·ph][2·pw]` (the
    /// rows and columns the pool reads), if wanted.
    pub conv_map: Option<&'a mut [f32]>,
}

/// Images per rayon task of the fused convolution and pool.
const POOLED_BLOCK: usize = 8;

impl PreparedConv {
    /// Prepares `weight` `[c_out, c_in/groups, kh, kw]` (`dims`) and an optional `bias`
    /// `[c_out]` for convolutions with `params`, run by `algo` (`Auto` chooses per input shape).
    /// Errors name the shapes when the buffers do not fit `dims` or `groups` does not divide
    /// the output channels.
    pub fn new(
        weight: &[f32],
        dims: [usize; 4],
        bias: Option<&[f32]>,
        params: Conv2dParams,
        algo: ConvAlgo,
    ) -> Result<Self> {
        if dims.contains(&0) {
            return Err(ConvError::ShapeMismatch {
                op: OP,
                msg: format!("weight {dims:?} is empty"),
            });
        }
        if params.groups == 0 || !dims[0].is_multiple_of(params.groups) {
            return Err(ConvError::ShapeMismatch {
                op: OP,
                msg: format!(
                    "groups = {} must divide weight {dims:?}'s output channels",
                    params.groups
                ),
            });
        }
        check_len(OP, "weight", &dims, weight.len())?;
        if let Some(b) = bias {
            check_len(OP, "bias", &[dims[0]], b.len())?;
        }
        Ok(Self {
            weight: weight.to_vec(),
            dims,
            bias: bias.map(<[f32]>::to_vec),
            params,
            algo,
            relu: false,
            pool: None,
            f2: OnceLock::new(),
            f4: OnceLock::new(),
            s2: OnceLock::new(),
            fused: OnceLock::new(),
        })
    }

    /// [`PreparedConv::new`] from tensors (`weight` 4-D, `bias` `[c_out]`).
    pub fn from_tensors(
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
        algo: ConvAlgo,
    ) -> Result<Self> {
        let layout = "[c_out, c_in/groups, kh, kw]";
        let dims = layer_dims(OP, layout, weight.dims(), bias.map(Tensor::dims))?;
        Self::new(weight.as_slice(), dims, bias.map(Tensor::as_slice), params, algo)
    }

    /// The same convolution followed by `max(0, ·)` on every output.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self.fused = OnceLock::new();
        self
    }

    /// Whether a convolution with `params` and a following pool with `pool` can be prepared
    /// as one layer ([`PreparedConv::with_pool`]): stride 1, dilation 1 and one group, and a
    /// 2x2 pool with stride 2 and no padding.
    pub fn can_fuse_pool(params: &Conv2dParams, pool: &PoolParams) -> bool {
        PooledConv::supports(params, pool)
    }

    /// The same convolution (and ReLU, if any) followed by the 2x2 pool `pool` of `kind`: the
    /// output is the pooled map. An error when [`PreparedConv::can_fuse_pool`] says no.
    pub fn with_pool(mut self, kind: PoolKind, pool: PoolParams) -> Result<Self> {
        if !Self::can_fuse_pool(&self.params, &pool) {
            return Err(ConvError::Unsupported {
                op: OP,
                algo: "conv+pool",
                msg: format!(
                    "a pool is fused only after a convolution with stride 1, dilation 1 and one \
                     group, and only a 2x2 pool with stride 2 and no padding; got {:?} and {pool:?}",
                    self.params
                ),
            });
        }
        self.pool = Some(kind);
        self.fused = OnceLock::new();
        Ok(self)
    }

    /// The pool fused into this layer, if any.
    pub fn pool(&self) -> Option<PoolKind> {
        self.pool
    }

    /// Folds an inference-mode batch normalization that follows this convolution into its
    /// weights and bias: `γ·(y − μ)/√(σ² + ε) + β` per output channel becomes `y` of the
    /// scaled weights `w·s` plus the bias `(b − μ)·s + β`, `s = γ/√(σ² + ε)`, computed in f64.
    /// Every slice has one value per output channel; `eps` must be positive and the running
    /// variances non-negative.
    pub fn fold_batch_norm(
        mut self,
        gamma: &[f32],
        beta: &[f32],
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Result<Self> {
        const FOLD: &str = "PreparedConv::fold_batch_norm";
        let k = self.dims[0];
        for (what, v) in
            [("gamma", gamma), ("beta", beta), ("running_mean", mean), ("running_var", var)]
        {
            check_len(FOLD, what, &[k], v.len())?;
        }
        if !(eps > 0.0 && eps.is_finite()) || var.iter().any(|&v| !(v >= 0.0 && v.is_finite())) {
            return Err(ConvError::ShapeMismatch {
                op: FOLD,
                msg: format!(
                    "eps {eps} must be positive and every running variance finite and ≥ 0"
                ),
            });
        }
        let per_out = self.weight.len() / k;
        let mut bias = self.bias.take().unwrap_or_else(|| vec![0.0; k]);
        for (c, (w, b)) in self.weight.chunks_exact_mut(per_out).zip(bias.iter_mut()).enumerate() {
            let s = f64::from(gamma[c]) / (f64::from(var[c]) + f64::from(eps)).sqrt();
            for x in w.iter_mut() {
                *x = (f64::from(*x) * s) as f32;
            }
            *b = ((f64::from(*b) - f64::from(mean[c])) * s + f64::from(beta[c])) as f32;
        }
        self.bias = Some(bias);
        // The weights changed: transforms made before the fold are stale.
        self.f2 = OnceLock::new();
        self.f4 = OnceLock::new();
        self.s2 = OnceLock::new();
        self.fused = OnceLock::new();
        Ok(self)
    }

    /// The weight's dims `[c_out, c_in/groups, kh, kw]`.
    pub fn weight_dims(&self) -> [usize; 4] {
        self.dims
    }

    /// The (possibly folded) weights and bias.
    pub fn weights(&self) -> (&[f32], Option<&[f32]>) {
        (&self.weight, self.bias.as_deref())
    }

    /// The geometry of a call on an input of `input_dims` (every shape error, named).
    pub fn geometry(&self, input_dims: [usize; 4]) -> Result<ConvGeometry> {
        ConvGeometry::new(input_dims, self.dims, self.params)
    }

    /// The output dims of a call on an input of `input_dims` (pooled, with a fused pool).
    pub fn output_dims(&self, input_dims: [usize; 4]) -> Result<[usize; 4]> {
        let g = self.geometry(input_dims)?;
        match self.pool {
            Some(_) => {
                let d = self.pooled().dims(OP, input_dims[2], input_dims[3])?;
                Ok([g.n, g.c_out, d.ph, d.pw])
            }
            None => Ok(g.output_dims()),
        }
    }

    /// The algorithm a call on `input_dims` runs.
    pub fn algo_for(&self, input_dims: [usize; 4]) -> Result<ConvAlgo> {
        resolve_prepared(self.algo, &self.geometry(input_dims)?)
    }

    /// Convolves `input` (NCHW, `input_dims`) into `output` (overwritten; its length is that
    /// of [`PreparedConv::output_dims`]) and returns the algorithm that ran. The first call
    /// that runs a Winograd variant transforms the filters for it; later calls reuse them.
    pub fn forward(
        &self,
        input: &[f32],
        input_dims: [usize; 4],
        output: &mut [f32],
    ) -> Result<ConvAlgo> {
        let g = self.geometry(input_dims)?;
        let algo = resolve_prepared(self.algo, &g)?;
        if self.pool.is_some() {
            return self.forward_pooled(&g, algo, input, output);
        }
        self.forward_full(&g, algo, input, output)
    }

    /// The convolution (and ReLU) without a pool, into `output` of the full size.
    fn forward_full(
        &self,
        g: &ConvGeometry,
        algo: ConvAlgo,
        input: &[f32],
        output: &mut [f32],
    ) -> Result<ConvAlgo> {
        let bias = self.bias.as_deref();
        let ran = match algo.winograd_variant() {
            Some(variant) => {
                let filter = self.filter(variant)?;
                conv2d_winograd_prepared(g, input, filter, bias, output)?;
                algo
            }
            None => conv2d_forward(g, input, &self.weight, bias, output, algo)?,
        };
        if self.relu {
            for v in output.iter_mut() {
                *v = v.max(0.0);
            }
        }
        Ok(ran)
    }

    /// [`PreparedConv::forward`] on a tensor `[n, c_in, h, w]`.
    pub fn forward_tensor(&self, input: &Tensor) -> Result<(Tensor, ConvAlgo)> {
        let dims = rank_shape_first(OP, "input", "[n, c, h, w]", input.dims())?;
        let out_dims = self.output_dims(dims)?;
        let mut out = convkit_tensor::buffer::take(out_dims.iter().product());
        let ran = self.forward(input.as_slice(), dims, &mut out)?;
        Ok((Tensor::from_vec(&out_dims, out)?, ran))
    }

    /// The convolution, ReLU and pool: one pass per image where the direct kernel is `algo`,
    /// else `algo` into a full-size buffer and the pool kernel after it.
    fn forward_pooled(
        &self,
        g: &ConvGeometry,
        algo: ConvAlgo,
        input: &[f32],
        output: &mut [f32],
    ) -> Result<ConvAlgo> {
        let pk = self.pooled();
        let d = pk.dims(OP, g.h, g.w)?;
        let (in_len, out_len) = pk.image_lens(&d);
        check_len(OP, "input", &g.input_dims(), input.len())?;
        check_len(OP, "output", &[g.n, g.c_out, d.ph, d.pw], output.len())?;
        if algo != ConvAlgo::Direct {
            let mut full = convkit_tensor::buffer::take(g.output_len());
            let ran = self.forward_full(g, algo, input, &mut full)?;
            let params = PoolParams::new(2);
            let pg = PoolGeometry::new(OP, g.output_dims(), params)?;
            match self.pool {
                Some(PoolKind::Max) => {
                    let mut argmax = convkit_tensor::buffer::take_indices(pg.output_len());
                    max_pool2d(&pg, &full, output, &mut argmax)?;
                    convkit_tensor::buffer::recycle_indices(argmax);
                }
                _ => avg_pool2d(&pg, &full, output)?,
            }
            convkit_tensor::buffer::recycle(full);
            return Ok(ran);
        }
        let run = |(x, y): (&[f32], &mut [f32])| {
            simd::dispatch_active(PooledBatch { pk, d, input: x, output: y, in_len, out_len });
        };
        if g.n <= POOLED_BLOCK || g.flops() < PARALLEL_MIN_FLOPS {
            run((input, output));
        } else {
            input
                .par_chunks(POOLED_BLOCK * in_len)
                .zip(output.par_chunks_mut(POOLED_BLOCK * out_len))
                .for_each(run);
        }
        Ok(ConvAlgo::Direct)
    }

    /// One image through the fused convolution and pool with the instruction set `s`, for
    /// kernels that run this layer inside their own [`WithSimd`] body (a whole network image
    /// by image). `scratch` is reused between calls. An error when no pool is fused or the
    /// slices do not fit the layer and `image`'s sizes.
    #[inline(always)]
    pub fn pooled_image_with<S: Simd>(
        &self,
        s: S,
        image: PooledImage<'_>,
        scratch: &mut Vec<f32>,
    ) -> Result<()> {
        if self.pool.is_none() {
            return Err(ConvError::Unsupported {
                op: OP,
                algo: "conv+pool",
                msg: "this layer has no fused pool (PreparedConv::with_pool)".to_owned(),
            });
        }
        let pk = self.pooled();
        let d = pk.dims(OP, image.height, image.width)?;
        let [c_out, c_in, ..] = self.dims;
        check_len(OP, "input", &[c_in, d.h, d.w], image.input.len())?;
        check_len(OP, "output", &[c_out, d.ph, d.pw], image.output.len())?;
        if let Some(map) = &image.conv_map {
            check_len(OP, "conv_map", &[c_out, 2 * d.ph, 2 * d.pw], map.len())?;
        }
        pk.image(s, &d, image.input, image.output, image.layout, image.conv_map, scratch);
        Ok(())
    }

    /// The fused convolution and pool's packed weights, built on first use.
    pub(crate) fn pooled(&self) -> &PooledConv {
        self.fused.get_or_init(|| {
            PooledConv::new(
                &self.weight,
                self.dims,
                self.bias.as_deref(),
                self.params.padding,
                self.pool.unwrap_or(PoolKind::Avg),
                self.relu,
            )
        })
    }

    /// The transformed filters for `variant`, built on first use.
    fn filter(&self, variant: WinogradVariant) -> Result<&WinogradFilter> {
        let cell = match variant {
            WinogradVariant::F2x2_3x3 => &self.f2,
            WinogradVariant::F4x4_3x3 => &self.f4,
            WinogradVariant::F2x2_3x3S2 => &self.s2,
        };
        if let Some(f) = cell.get() {
            return Ok(f);
        }
        let f = WinogradFilter::new(&self.weight, self.dims, self.params.groups, variant)?;
        // Another thread may have set it meanwhile; both computed the same values.
        let _ = cell.set(f);
        cell.get().ok_or(ConvError::Unsupported {
            op: OP,
            algo: variant.name(),
            msg: "the filter cache could not be filled".to_owned(),
        })
    }
}

/// A few images through the fused convolution and pool, for [`simd::dispatch_active`].
struct PooledBatch<'a> {
    pk: &'a PooledConv,
    d: ImageDims,
    input: &'a [f32],
    output: &'a mut [f32],
    in_len: usize,
    out_len: usize,
}

impl WithSimd for PooledBatch<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let mut buf = scratch::take(Slot::Tiles);
        for (x, y) in
            self.input.chunks_exact(self.in_len).zip(self.output.chunks_exact_mut(self.out_len))
        {
            self.pk.image(s, &self.d, x, y, PooledLayout::Planes, None, &mut buf);
        }
        scratch::put(Slot::Tiles, buf);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{conv2d_naive, max_rel_error};
    use convkit_tensor::Rng;
    use convkit_tensor::testing::random_vec;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        random_vec(len, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn matches_the_stateless_call_for_every_algorithm_and_caches_winograd() {
        let (xd, wd) = ([2, 16, 12, 12], [24, 16, 3, 3]);
        let (x, w, b) = (data(2 * 16 * 144, 1), data(24 * 16 * 9, 2), data(24, 3));
        for p in [1, 2].map(|s| Conv2dParams::default().with_padding(1).with_stride(s)) {
            let g = ConvGeometry::new(xd, wd, p).unwrap();
            let mut want = vec![0.0; g.output_len()];
            conv2d_naive(&g, &x, &w, Some(&b), &mut want).unwrap();
            for algo in ConvAlgo::ALL.into_iter().filter(|&a| crate::supports(a, &g)) {
                let conv = PreparedConv::new(&w, wd, Some(&b), p, algo).unwrap();
                let mut y = vec![0.0; g.output_len()];
                let ran = conv.forward(&x, xd, &mut y).unwrap();
                assert!(max_rel_error(&y, &want) < 1e-4, "{algo} ran {ran}");
                // A second call reuses the cached transform and gives the same bits.
                let mut again = vec![0.0; g.output_len()];
                conv.forward(&x, xd, &mut again).unwrap();
                assert_eq!(y, again);
                let cached = [&conv.f2, &conv.f4, &conv.s2].map(|c| c.get().is_some());
                assert_eq!(cached.iter().any(|&c| c), ran.winograd_variant().is_some(), "{ran}");
            }
        }
    }

    #[test]
    fn relu_and_folded_batch_norm_equal_the_separate_layers() {
        let p = Conv2dParams::default().with_padding(1);
        let (xd, wd) = ([1, 3, 9, 9], [4, 3, 3, 3]);
        let (x, w) = (data(3 * 81, 4), data(4 * 27, 5));
        let (gamma, beta, mean) = (data(4, 6), data(4, 7), data(4, 8));
        let var: Vec<f32> = data(4, 9).iter().map(|v| v.abs() + 0.1).collect();
        let eps = 1e-5;
        let g = ConvGeometry::new(xd, wd, p).unwrap();
        let mut y = vec![0.0; g.output_len()];
        conv2d_naive(&g, &x, &w, None, &mut y).unwrap();
        let hw = g.oh * g.ow;
        let want: Vec<f32> = y
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = i / hw;
                let n = (f64::from(v) - f64::from(mean[c])) / (f64::from(var[c]) + 1e-5).sqrt();
                ((n * f64::from(gamma[c]) + f64::from(beta[c])) as f32).max(0.0)
            })
            .collect();
        let conv = PreparedConv::new(&w, wd, None, p, ConvAlgo::Auto)
            .unwrap()
            .fold_batch_norm(&gamma, &beta, &mean, &var, eps)
            .unwrap()
            .with_relu();
        let (got, _) = conv.forward_tensor(&Tensor::from_vec(&xd, x).unwrap()).unwrap();
        assert!(max_rel_error(got.as_slice(), &want) < 1e-5);
        assert!(got.as_slice().iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn bad_shapes_are_errors_that_name_them() {
        let p = Conv2dParams::default();
        let e = PreparedConv::new(&[0.0; 7], [2, 1, 2, 2], None, p, ConvAlgo::Auto).unwrap_err();
        assert!(e.to_string().contains("weight"), "{e}");
        let e = PreparedConv::new(&[0.0; 8], [2, 1, 2, 2], Some(&[0.0; 3]), p, ConvAlgo::Auto)
            .err()
            .unwrap();
        assert!(e.to_string().contains("bias"), "{e}");
        let grouped = Conv2dParams { groups: 3, ..p };
        assert!(PreparedConv::new(&[0.0; 8], [2, 1, 2, 2], None, grouped, ConvAlgo::Auto).is_err());
        let conv = PreparedConv::new(&[0.0; 8], [2, 1, 2, 2], None, p, ConvAlgo::Auto).unwrap();
        let e = conv.output_dims([1, 3, 4, 4]).unwrap_err();
        assert!(e.to_string().contains("[1, 3, 4, 4]"), "{e}");
        let e =
            conv.fold_batch_norm(&[1.0; 2], &[0.0; 2], &[0.0; 2], &[-1.0; 2], 1e-5).unwrap_err();
        assert!(e.to_string().contains("variance"), "{e}");
    }
}
