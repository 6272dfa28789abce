//! Batch normalization over the channels of NCHW activations: the kernels behind
//! `BatchNorm2d`, on plain slices.
//!
//! Channel `k` of `x [n, c, h, w]` is `n` contiguous planes of `h·w` values, one per image.
//! Every per-channel quantity is a sum over those planes, taken by one thread in a fixed
//! order (four chains of eight `f32` vector lanes over blocks of 512 values, then `f64`), so
//! results are bit-identical for any number of threads at a given SIMD level; the elementwise
//! passes run over planes. The loops are written once over [`Simd`] and run at the active
//! level (AVX-512 and AVX2+FMA run the same 8-lane code and agree bit for bit; the portable
//! fallback may differ in the last bits).
//!
//! - [`batch_norm2d_stats`]: the batch mean and biased variance of each channel in one pass
//!   over the deviations from the channel's first value (a shift inside the data, so a large
//!   mean against a small spread does not cancel).
//! - [`batch_norm2d_apply`]: `y = x·scale[k] + shift[k]`, the one elementwise pass of both
//!   training (`scale = γ/√(σ²+ε)`, `shift = β − μ·scale`) and evaluation (running statistics).
//! - [`batch_norm2d_backward`]: `∂β = Σ∂y`, `∂γ = Σ∂y·x̂` and `∂x`, from one pass of sums
//!   over each channel and one elementwise pass, for batch (training) or running
//!   (evaluation) statistics.
//! - [`batch_norm2d_apply_relu`] and [`batch_norm2d_relu_backward`]: the same passes with a
//!   ReLU fused after the batch norm, bit for bit the two layers' results, without the
//!   ReLU's own passes over the activations.
//!
//! Work of at least 2^15 elements runs on rayon's pool: the sums split over
//! channels, the elementwise passes over planes.

use rayon::prelude::*;

use crate::error::{ConvError, Result};
use crate::params::check_len;
use crate::simd::{self, LANES, Simd, WithSimd, dispatch_active};

/// Values summed in `f32` vector lanes before the partial sums move to `f64`: short enough
/// that the `f32` partial sums lose nothing that matters, long enough to amortize the move.
const BLOCK: usize = 512;

/// Adds the lanes of `v` to `acc` in `f64`.
#[inline(always)]
fn flush<S: Simd>(s: S, v: S::V, acc: &mut f64) {
    *acc += simd::sum_f64(&s.to_array(v));
}

/// `Σ(a − shift)` and `Σ(a − shift)²` of one plane (`b` unused), or `Σa` and `Σa·(b − shift)`
/// (the backward's sums, `a` = ∂y, `b` = x), in `f32` lanes per [`BLOCK`] ([`CHAINS`]
/// accumulators, summed pairwise), then `f64`. With `z` (a fused ReLU's output), `a` counts
/// only where `z > 0`.
struct PlaneSums<'a> {
    a: &'a [f32],
    b: Option<&'a [f32]>,
    z: Option<&'a [f32]>,
    shift: f32,
}

impl WithSimd for PlaneSums<'_> {
    type Output = (f64, f64);

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> (f64, f64) {
        let (mut s1, mut s2) = (0f64, 0f64);
        let shift = s.splat(self.shift);
        for (i, block) in self.a.chunks(BLOCK).enumerate() {
            let other = self.b.map(|b| &b[i * BLOCK..i * BLOCK + block.len()]);
            let mask = self.z.map(|z| &z[i * BLOCK..i * BLOCK + block.len()]);
            let at = Operands { a: block, b: other, z: mask };
            // Vector `q` of the block goes to accumulator `q % CHAINS`: independent chains,
            // so the adds do not wait on each other's latency.
            let (mut v1, mut v2) = ([s.zero(); CHAINS], [s.zero(); CHAINS]);
            let mut j = 0;
            while j + CHAINS * LANES <= block.len() {
                for (q, (v1, v2)) in v1.iter_mut().zip(&mut v2).enumerate() {
                    at.accumulate(s, j + q * LANES, shift, v1, v2);
                }
                j += CHAINS * LANES;
            }
            let mut q = 0;
            while j + LANES <= block.len() {
                at.accumulate(s, j, shift, &mut v1[q], &mut v2[q]);
                (j, q) = (j + LANES, q + 1);
            }
            flush(s, chains_sum(s, v1), &mut s1);
            flush(s, chains_sum(s, v2), &mut s2);
            for j in j..block.len() {
                let a = match mask {
                    Some(z) if z[j] > 0.0 => block[j],
                    Some(_) => 0.0,
                    None => block[j],
                };
                match other {
                    None => {
                        let d = f64::from(a - self.shift);
                        s1 += d;
                        s2 += d * d;
                    }
                    Some(b) => {
                        let (g, d) = (f64::from(a), f64::from(b[j] - self.shift));
                        s1 += g;
                        s2 += g * d;
                    }
                }
            }
        }
        (s1, s2)
    }
}

/// Accumulator chains of [`PlaneSums`].
const CHAINS: usize = 4;

/// The sum of a block's chains, `(c0 + c1) + (c2 + c3)`.
#[inline(always)]
fn chains_sum<S: Simd>(s: S, c: [S::V; CHAINS]) -> S::V {
    const _: () = assert!(CHAINS == 4, "chains_sum adds four chains");
    s.add(s.add(c[0], c[1]), s.add(c[2], c[3]))
}

/// One block of [`PlaneSums`]'s operands.
#[derive(Clone, Copy)]
struct Operands<'a> {
    a: &'a [f32],
    b: Option<&'a [f32]>,
    z: Option<&'a [f32]>,
}

impl Operands<'_> {
    /// Adds the 8 values at `j` to the sums `v1`, `v2` (see [`PlaneSums`]).
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, j: usize, shift: S::V, v1: &mut S::V, v2: &mut S::V) {
        let mut va = s.load(&self.a[j..]);
        if let Some(z) = self.z {
            va = s.keep_where_positive(s.load(&z[j..]), va);
        }
        match self.b {
            None => {
                let d = s.sub(va, shift);
                *v1 = s.add(*v1, d);
                *v2 = s.fma(d, d, *v2);
            }
            Some(b) => {
                let d = s.sub(s.load(&b[j..]), shift);
                *v1 = s.add(*v1, va);
                *v2 = s.fma(va, d, *v2);
            }
        }
    }
}

/// `out = x·scale + shift` (then `max(0, ·)` with `relu`), or with `g` the training input
/// gradient `out = scale·((g − shift) − (x − mu)·c1)`, `g` counting only where `z > 0` when
/// a fused ReLU's output `z` is given.
struct PlaneMap<'a> {
    out: &'a mut [f32],
    x: &'a [f32],
    g: Option<&'a [f32]>,
    z: Option<&'a [f32]>,
    relu: bool,
    scale: f32,
    shift: f32,
    mu: f32,
    c1: f32,
}

impl WithSimd for PlaneMap<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let PlaneMap { out, x, g, z, relu, scale, shift, mu, c1 } = self;
        let full = out.len() / LANES * LANES;
        let (vs, vh, vm, vc) = (s.splat(scale), s.splat(shift), s.splat(mu), s.splat(c1));
        let mut j = 0;
        while j < full {
            let vx = s.load(&x[j..]);
            let r = match g {
                // `max(0, y)` is `0 > y ? 0 : y`: a ReLU that keeps NaN and −0.0, as
                // `Tensor::relu` does.
                None if relu => s.max(s.zero(), s.fma(vx, vs, vh)),
                None => s.fma(vx, vs, vh),
                Some(g) => {
                    let mut vg = s.load(&g[j..]);
                    if let Some(z) = z {
                        vg = s.keep_where_positive(s.load(&z[j..]), vg);
                    }
                    let t = s.sub(vg, vh);
                    s.mul(vs, s.sub(t, s.mul(s.sub(vx, vm), vc)))
                }
            };
            s.store(r, &mut out[j..]);
            j += LANES;
        }
        for j in full..out.len() {
            out[j] = match g {
                // The same operations as the vector lanes on the fallback.
                None => {
                    let y = x[j] * scale + shift;
                    if relu && y < 0.0 { 0.0 } else { y }
                }
                Some(g) => {
                    let g = match z {
                        Some(z) if z[j] > 0.0 => g[j],
                        Some(_) => 0.0,
                        None => g[j],
                    };
                    scale * ((g - shift) - (x[j] - mu) * c1)
                }
            };
        }
    }
}

/// Smallest tensor (elements) whose passes run in parallel; below it one thread is faster.
pub(crate) const PAR_MIN_WORK: usize = 1 << 15;

fn check_dims(
    op: &'static str,
    dims: [usize; 4],
    per_channel: &[(&'static str, usize)],
) -> Result<()> {
    let [_, c, _, _] = dims;
    for &(what, len) in per_channel {
        if len != c {
            return Err(ConvError::ShapeMismatch {
                op,
                msg: format!("{what} has {len} values, input {dims:?} has {c} channels"),
            });
        }
    }
    Ok(())
}

/// Runs `f(k)` for every channel `k`, in parallel when the tensor is large, collecting the
/// results in channel order.
fn per_channel<T: Send>(dims: [usize; 4], f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    let [n, c, h, w] = dims;
    if n * c * h * w >= PAR_MIN_WORK && c > 1 {
        (0..c).into_par_iter().map(f).collect()
    } else {
        (0..c).map(f).collect()
    }
}

/// Runs `f(k, plane_out, plane_index)` over the planes of `out` (`plane_index` = image·c + k).
fn per_plane(
    dims: [usize; 4],
    out: &mut [f32],
    f: impl Fn(usize, &mut [f32], usize) + Sync + Send,
) {
    let [n, c, h, w] = dims;
    let hw = h * w;
    if hw == 0 {
        return;
    }
    if n * c * hw >= PAR_MIN_WORK {
        let min_planes = (PAR_MIN_WORK / 8 / hw).max(1);
        out.par_chunks_mut(hw)
            .with_min_len(min_planes)
            .enumerate()
            .for_each(|(p, o)| f(p % c, o, p));
    } else {
        out.chunks_mut(hw).enumerate().for_each(|(p, o)| f(p % c, o, p));
    }
}

/// The batch mean and biased variance (`Σ(x−μ)²/(n·h·w)`) of each channel of `x [n, c, h, w]`,
/// into `mean [c]` and `var [c]`.
pub fn batch_norm2d_stats(
    dims: [usize; 4],
    x: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) -> Result<()> {
    const OP: &str = "batch_norm2d";
    check_len(OP, "input", &dims, x.len())?;
    check_dims(OP, dims, &[("mean", mean.len()), ("var", var.len())])?;
    let [n, c, h, w] = dims;
    let hw = h * w;
    let count = n * hw;
    if count == 0 {
        return Err(ConvError::ShapeMismatch {
            op: OP,
            msg: format!("input {dims:?} has no values per channel"),
        });
    }
    let stats = per_channel(dims, |k| {
        // Sums of the deviations from the channel's first value, one pass: with a shift
        // inside the data, `E[d²] − E[d]²` does not cancel the way `E[x²] − E[x]²` does.
        let shift = x[k * hw];
        let (mut s1, mut s2) = (0f64, 0f64);
        for i in 0..n {
            let plane = &x[(i * c + k) * hw..(i * c + k + 1) * hw];
            let (a, b) = dispatch_active(PlaneSums { a: plane, b: None, z: None, shift });
            s1 += a;
            s2 += b;
        }
        let m = s1 / count as f64;
        (f64::from(shift) + m, (s2 / count as f64 - m * m).max(0.0))
    });
    for (k, (m, v)) in stats.into_iter().enumerate() {
        mean[k] = m as f32;
        var[k] = v as f32;
    }
    Ok(())
}

/// `y = x·scale[k] + shift[k]` for every value of channel `k` of `x [n, c, h, w]`.
pub fn batch_norm2d_apply(
    dims: [usize; 4],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    y: &mut [f32],
) -> Result<()> {
    apply(dims, x, scale, shift, y, false)
}

/// [`batch_norm2d_apply`] followed by a ReLU in the same pass: `y = max(0, x·scale[k] +
/// shift[k])`, bit for bit what the two passes give (NaN and −0.0 pass through, as in
/// `Tensor::relu`).
pub fn batch_norm2d_apply_relu(
    dims: [usize; 4],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    y: &mut [f32],
) -> Result<()> {
    apply(dims, x, scale, shift, y, true)
}

fn apply(
    dims: [usize; 4],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    y: &mut [f32],
    relu: bool,
) -> Result<()> {
    const OP: &str = "batch_norm2d";
    check_len(OP, "input", &dims, x.len())?;
    check_len(OP, "output", &dims, y.len())?;
    check_dims(OP, dims, &[("scale", scale.len()), ("shift", shift.len())])?;
    let hw = dims[2] * dims[3];
    per_plane(dims, y, |k, out, p| {
        let x = &x[p * hw..(p + 1) * hw];
        let (scale, shift) = (scale[k], shift[k]);
        dispatch_active(PlaneMap {
            out,
            x,
            g: None,
            z: None,
            relu,
            scale,
            shift,
            mu: 0.0,
            c1: 0.0,
        });
    });
    Ok(())
}

/// The per-channel affine map of batch normalization: `scale = γ/√(var+ε)`,
/// `shift = β − mean·scale` (with the batch statistics in training, the running ones in
/// evaluation).
pub fn batch_norm2d_affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(var).map(|(&g, &v)| g / (v + eps).sqrt()).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((&b, &m), &s)| b - m * s).collect();
    (scale, shift)
}

/// Gradients of batch normalization ([`batch_norm2d_backward`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormGrads {
    /// `∂x [n, c, h, w]`, when asked for.
    pub input: Option<Vec<f32>>,
    /// `∂γ [c]`.
    pub gamma: Vec<f32>,
    /// `∂β [c]`.
    pub beta: Vec<f32>,
}

/// The per-channel statistics a batch normalization used: the batch's (training) or the
/// running ones (evaluation), and `ε`.
#[derive(Debug, Clone, Copy)]
pub struct ChannelStats<'a> {
    /// Mean of each channel `[c]`.
    pub mean: &'a [f32],
    /// (Biased) variance of each channel `[c]`.
    pub var: &'a [f32],
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// Backward of `y = (x−μ)/√(σ²+ε)·γ + β` for `x [n, c, h, w]`: `∂γ = Σ∂y·x̂`, `∂β = Σ∂y` and,
/// when `want_input`, `∂x`. With `batch_stats` the statistics are the batch's own
/// ([`batch_norm2d_stats`], training mode), so they depend on `x` and
/// `∂x = γ/√(σ²+ε)·(∂y − mean(∂y) − x̂·mean(∂y·x̂))`; otherwise (evaluation, running statistics)
/// they are constants and `∂x = ∂y·γ/√(σ²+ε)`.
pub fn batch_norm2d_backward(
    dims: [usize; 4],
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    stats: ChannelStats<'_>,
    batch_stats: bool,
    want_input: bool,
) -> Result<BatchNormGrads> {
    backward(dims, (dy, None), x, gamma, stats, batch_stats, want_input)
}

/// The backward of [`batch_norm2d_apply_relu`]'s fused batch norm and ReLU: as
/// [`batch_norm2d_backward`] with `∂y` taken as zero where the fused output `out` is not above
/// zero, in the same passes. Bit for bit what the ReLU's backward followed by
/// [`batch_norm2d_backward`] gives.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_relu_backward(
    dims: [usize; 4],
    dy: &[f32],
    out: &[f32],
    x: &[f32],
    gamma: &[f32],
    stats: ChannelStats<'_>,
    batch_stats: bool,
    want_input: bool,
) -> Result<BatchNormGrads> {
    check_len("batch_norm2d_relu_backward", "output", &dims, out.len())?;
    backward(dims, (dy, Some(out)), x, gamma, stats, batch_stats, want_input)
}

fn backward(
    dims: [usize; 4],
    (dy, z): (&[f32], Option<&[f32]>),
    x: &[f32],
    gamma: &[f32],
    stats: ChannelStats<'_>,
    batch_stats: bool,
    want_input: bool,
) -> Result<BatchNormGrads> {
    const OP: &str = "batch_norm2d_backward";
    let ChannelStats { mean, var, eps } = stats;
    check_len(OP, "input", &dims, x.len())?;
    check_len(OP, "grad_output", &dims, dy.len())?;
    check_dims(OP, dims, &[("gamma", gamma.len()), ("mean", mean.len()), ("var", var.len())])?;
    let [n, c, h, w] = dims;
    let hw = h * w;
    let count = (n * hw).max(1) as f64;
    let invstd: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    // Σ∂y and Σ∂y·(x−μ) per channel.
    let sums = per_channel(dims, |k| {
        let mu = mean[k];
        let (mut s_dy, mut s_dyx) = (0f64, 0f64);
        for i in 0..n {
            let at = (i * c + k) * hw;
            let z = z.map(|z| &z[at..at + hw]);
            let (a, b) = dispatch_active(PlaneSums {
                a: &dy[at..at + hw],
                b: Some(&x[at..at + hw]),
                z,
                shift: mu,
            });
            s_dy += a;
            s_dyx += b;
        }
        (s_dy, s_dyx)
    });
    let beta_grad: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let gamma_grad: Vec<f32> =
        sums.iter().zip(&invstd).map(|(s, &is)| (s.1 * f64::from(is)) as f32).collect();
    let input = want_input.then(|| {
        // ∂x = kk·((∂y − mdy) − (x−μ)·c1) with kk = γ·invstd; in training mdy = mean(∂y) and
        // c1 = invstd²·Σ∂y(x−μ)/count, in evaluation both are zero.
        let coef: Vec<(f32, f32, f32, f32)> = (0..c)
            .map(|k| {
                let is = f64::from(invstd[k]);
                let kk = (f64::from(gamma[k]) * is) as f32;
                if batch_stats {
                    let mdy = (sums[k].0 / count) as f32;
                    let c1 = (is * is * sums[k].1 / count) as f32;
                    (kk, mdy, c1, mean[k])
                } else {
                    (kk, 0.0, 0.0, 0.0)
                }
            })
            .collect();
        let mut dx = convkit_tensor::buffer::take(dy.len());
        per_plane(dims, &mut dx, |k, out, p| {
            let (scale, shift, c1, mu) = coef[k];
            let (g, x) = (&dy[p * hw..(p + 1) * hw], &x[p * hw..(p + 1) * hw]);
            let z = z.map(|z| &z[p * hw..(p + 1) * hw]);
            dispatch_active(PlaneMap { out, x, g: Some(g), z, relu: false, scale, shift, mu, c1 });
        });
        dx
    });
    Ok(BatchNormGrads { input, gamma: gamma_grad, beta: beta_grad })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Deterministic values with a large common offset per channel (the case that breaks a
    /// one-pass `Σx² − (Σx)²/n` variance in f32).
    fn data(dims: [usize; 4], seed: u32) -> Vec<f32> {
        let values = crate::suite::sample_data(dims.iter().product(), seed);
        let plane = dims[2] * dims[3];
        let k = |i: usize| ((i / plane) % dims[1]) as f32;
        values.iter().enumerate().map(|(i, v)| v * (1.0 + k(i)) + 100.0 * k(i)).collect()
    }

    /// Reference in f64 straight from the definition.
    fn reference(dims: [usize; 4], x: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let mut mean = vec![0f64; c];
        let mut var = vec![0f64; c];
        for k in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| {
                    x[(i * c + k) * hw..(i * c + k + 1) * hw].iter().map(|&v| f64::from(v))
                })
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            mean[k] = m;
            var[k] = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
        }
        (mean, var)
    }

    #[test]
    fn stats_match_the_definition_on_odd_shapes() {
        for dims in [[1, 1, 1, 2], [3, 5, 7, 1], [2, 3, 17, 9], [8, 4, 13, 13], [64, 3, 16, 16]] {
            let x = data(dims, 7);
            let (rm, rv) = reference(dims, &x);
            let mut mean = vec![0.0; dims[1]];
            let mut var = vec![0.0; dims[1]];
            batch_norm2d_stats(dims, &x, &mut mean, &mut var).unwrap();
            for k in 0..dims[1] {
                assert!(
                    (f64::from(mean[k]) - rm[k]).abs() <= 1e-6 * (1.0 + rm[k].abs()),
                    "{dims:?} mean"
                );
                assert!(
                    (f64::from(var[k]) - rv[k]).abs() <= 1e-6 * (1.0 + rv[k]),
                    "{dims:?} var {} vs {}",
                    var[k],
                    rv[k]
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences_of_a_weighted_sum() {
        let dims = [3, 2, 4, 5];
        let eps = 1e-5;
        let x = data(dims, 3);
        let dy = data(dims, 9).iter().map(|v| v.fract()).collect::<Vec<_>>();
        let gamma = [0.7f32, -1.3];
        let beta = [0.2f32, 0.5];
        // L(x, γ, β) = Σ dy·y, in f64 from the definition.
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let (m, v) = reference(dims, x);
            let hw = 20;
            (0..x.len())
                .map(|i| {
                    let k = (i / hw) % 2;
                    let y = (f64::from(x[i]) - m[k]) / (v[k] + f64::from(eps)).sqrt()
                        * f64::from(gamma[k])
                        + f64::from(beta[k]);
                    y * f64::from(dy[i])
                })
                .sum()
        };
        let mut mean = [0.0; 2];
        let mut var = [0.0; 2];
        batch_norm2d_stats(dims, &x, &mut mean, &mut var).unwrap();
        let stats = ChannelStats { mean: &mean, var: &var, eps };
        let g = batch_norm2d_backward(dims, &dy, &x, &gamma, stats, true, true).unwrap();
        let dx = g.input.unwrap();
        for i in [0, 7, 33, 59, 119] {
            let h = 1e-3f32;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd =
                (loss(&xp, &gamma, &beta) - loss(&xm, &gamma, &beta)) / f64::from(xp[i] - xm[i]);
            assert!(
                (fd - f64::from(dx[i])).abs() < 2e-3 * (1.0 + fd.abs()),
                "dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }
        for k in 0..2 {
            let h = 1e-3;
            let (mut gp, mut gm) = (gamma, gamma);
            gp[k] += h;
            gm[k] -= h;
            let fd = (loss(&x, &gp, &beta) - loss(&x, &gm, &beta)) / f64::from(2.0 * h);
            assert!(
                (fd - f64::from(g.gamma[k])).abs() < 1e-3 * (1.0 + fd.abs()),
                "dgamma {fd} vs {}",
                g.gamma[k]
            );
            let sum_dy: f64 =
                (0..x.len()).filter(|i| (i / 20) % 2 == k).map(|i| f64::from(dy[i])).sum();
            assert!((sum_dy - f64::from(g.beta[k])).abs() < 1e-4, "dbeta");
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let dims = [16, 8, 32, 32];
        let x = data(dims, 1);
        let dy = data(dims, 2);
        let gamma: Vec<f32> = (0..8).map(|k| 0.5 + k as f32).collect();
        let run = || {
            let mut mean = vec![0.0; 8];
            let mut var = vec![0.0; 8];
            batch_norm2d_stats(dims, &x, &mut mean, &mut var).unwrap();
            let stats = ChannelStats { mean: &mean, var: &var, eps: 1e-5 };
            let g = batch_norm2d_backward(dims, &dy, &x, &gamma, stats, true, true).unwrap();
            (mean, var, g)
        };
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(run);
        assert_eq!(one, three);
    }

    #[test]
    fn fused_relu_is_bit_for_bit_the_two_layers() {
        // Odd planes (vector tails), channels whose outputs are all negative, all positive
        // and mixed; a NaN and values that map to −0.0, which a ReLU passes through.
        let dims = [3, 4, 5, 7];
        let mut x = data(dims, 3);
        x[0] = f32::NAN;
        x[36] = 0.0;
        let scale = [1.5, -1.0, 0.25, 2.0];
        let shift = [-0.0, -0.0, -5.0, 5.0];
        let mut y = vec![0.0; x.len()];
        batch_norm2d_apply(dims, &x, &scale, &shift, &mut y).unwrap();
        let relu: Vec<f32> = y.iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect();
        let mut z = vec![1.0; x.len()];
        batch_norm2d_apply_relu(dims, &x, &scale, &shift, &mut z).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&z), bits(&relu));
        assert!(z[0].is_nan() && z[36].to_bits() == (-0.0f32).to_bits());

        // Backward, in training and evaluation: the ReLU's gradient, then the batch norm's.
        let x = data(dims, 4);
        let dy = data(dims, 5);
        let gamma = [0.5, -1.5, 2.0, 1.0];
        let mut mean = vec![0.0; 4];
        let mut var = vec![0.0; 4];
        batch_norm2d_stats(dims, &x, &mut mean, &mut var).unwrap();
        let beta = [0.1, 0.0, -3.0, 3.0];
        let (scale, shift) = batch_norm2d_affine(&gamma, &beta, &mean, &var, 1e-5);
        let mut y = vec![0.0; x.len()];
        batch_norm2d_apply(dims, &x, &scale, &shift, &mut y).unwrap();
        let mut z = vec![0.0; x.len()];
        batch_norm2d_apply_relu(dims, &x, &scale, &shift, &mut z).unwrap();
        let masked: Vec<f32> =
            dy.iter().zip(&y).map(|(&g, &y)| if y > 0.0 { g } else { 0.0 }).collect();
        for batch_stats in [true, false] {
            let stats = ChannelStats { mean: &mean, var: &var, eps: 1e-5 };
            let two = batch_norm2d_backward(dims, &masked, &x, &gamma, stats, batch_stats, true);
            let fused =
                batch_norm2d_relu_backward(dims, &dy, &z, &x, &gamma, stats, batch_stats, true);
            assert_eq!(fused.unwrap(), two.unwrap());
        }
        let stats = ChannelStats { mean: &mean, var: &var, eps: 1e-5 };
        let short = batch_norm2d_relu_backward(dims, &dy, &z[1..], &x, &gamma, stats, true, true);
        assert!(short.is_err());
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let x = vec![0.0; 2 * 3 * 4];
        let mut m = vec![0.0; 2];
        let mut v = vec![0.0; 3];
        let e = batch_norm2d_stats([2, 3, 2, 2], &x, &mut m, &mut v).unwrap_err().to_string();
        assert!(e.contains("mean has 2 values") && e.contains("3 channels"), "{e}");
        let e =
            batch_norm2d_stats([2, 3, 2, 3], &x, &mut v.clone(), &mut v).unwrap_err().to_string();
        assert!(e.contains("input"), "{e}");
    }
}
