//! 2-D max and average pooling, forward and backward, on NCHW slices.
//!
//! Windows follow PyTorch's `MaxPool2d` / `AvgPool2d` with `ceil_mode=False`: output size
//! `floor((in + 2·pad − kernel) / stride) + 1` (through [`out_size`]), and padding at most half
//! the kernel, so every window holds at least one real input element.
//!
//! - **Max** returns, for every output element, the flat index `iy·w + ix` of its maximum in
//!   the input plane (the first one in scan order on ties; the last NaN wins, as in PyTorch); the
//!   backward pass routes each output gradient to that index.
//! - **Average** divides by the window size including the padding (PyTorch's default
//!   `count_include_pad=True`), or by the number of real elements with
//!   [`PoolParams::with_count_include_pad`]`(false)`.
//!
//! Planes (`n·c` of them) are independent; above 2^16 elements they run in parallel, each
//! written by one task (the 2x2 window's loops take runs of planes per task), so results are
//! identical for any thread count.

use rayon::prelude::*;

use crate::error::{ConvError, Result};
use crate::params::{check_len, out_size};

/// Window reads (`n·c·oh·ow·kh·kw`) below which pooling stays on the calling thread.
pub(crate) const PAR_MIN_WORK: usize = 1 << 16;

/// Hyper-parameters of a 2-D pooling window, per axis `(h, w)`.
///
/// ```
/// use convkit_conv::PoolParams;
/// let p = PoolParams::new(2); // LeNet's 2x2, stride 2
/// assert_eq!((p.kernel, p.stride, p.padding), ((2, 2), (2, 2), (0, 0)));
/// let p = PoolParams::new(3).with_stride(1).with_padding(1).with_count_include_pad(false);
/// assert!(!p.count_include_pad);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolParams {
    /// Window size `(kh, kw)`, at least 1.
    pub kernel: (usize, usize),
    /// Step between windows, at least 1. PyTorch's default is the kernel size.
    pub stride: (usize, usize),
    /// Implicit padding on each side, at most half the kernel.
    pub padding: (usize, usize),
    /// Average pooling only: whether padded positions count in the divisor (PyTorch's default).
    pub count_include_pad: bool,
}

impl PoolParams {
    /// A square `k x k` window with stride `k`, no padding, `count_include_pad = true` — the
    /// defaults of PyTorch's pooling layers.
    pub fn new(k: usize) -> Self {
        Self { kernel: (k, k), stride: (k, k), padding: (0, 0), count_include_pad: true }
    }
    /// Sets the same stride on both axes.
    pub fn with_stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    /// Sets the same padding on both axes.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
    /// Sets whether average pooling counts the padding.
    pub fn with_count_include_pad(mut self, include: bool) -> Self {
        self.count_include_pad = include;
        self
    }
}

/// A validated pooling problem: input `[n, c, h, w]`, output `[n, c, oh, ow]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolGeometry {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// The parameters.
    pub params: PoolParams,
}

impl PoolGeometry {
    /// Validates the parameters against the input dims; `op` names the caller in errors.
    ///
    /// ```
    /// use convkit_conv::{PoolGeometry, PoolParams};
    /// let g = PoolGeometry::new("max_pool2d", [64, 6, 28, 28], PoolParams::new(2)).unwrap();
    /// assert_eq!(g.output_dims(), [64, 6, 14, 14]);
    /// let e = PoolGeometry::new("max_pool2d", [1, 1, 4, 4], PoolParams::new(2).with_padding(2));
    /// assert!(e.unwrap_err().to_string().contains("at most half"));
    /// ```
    pub fn new(op: &'static str, input: [usize; 4], params: PoolParams) -> Result<Self> {
        let PoolParams { kernel, stride, padding, .. } = params;
        let invalid = |msg: String| Err(ConvError::InvalidParams { op, msg });
        if kernel.0 == 0 || kernel.1 == 0 {
            return invalid(format!("kernel size must be at least 1, got {kernel:?}"));
        }
        if stride.0 == 0 || stride.1 == 0 {
            return invalid(format!("stride must be at least 1, got {stride:?}"));
        }
        if padding.0 > kernel.0 / 2 || padding.1 > kernel.1 / 2 {
            return invalid(format!(
                "padding {padding:?} must be at most half the kernel {kernel:?}"
            ));
        }
        let [n, c, h, w] = input;
        if n == 0 || c == 0 || h == 0 || w == 0 {
            return Err(ConvError::ShapeMismatch { op, msg: format!("input {input:?} is empty") });
        }
        let (Some(oh), Some(ow)) = (
            out_size(h, kernel.0, stride.0, padding.0, 1),
            out_size(w, kernel.1, stride.1, padding.1, 1),
        ) else {
            return Err(ConvError::ShapeMismatch {
                op,
                msg: format!(
                    "kernel {kernel:?} is larger than the padded input ({}x{}) of input {input:?} with padding {padding:?}",
                    h + 2 * padding.0,
                    w + 2 * padding.1
                ),
            });
        };
        let work = [n, c, oh, ow, kernel.0, kernel.1];
        let overflows =
            |dims: &[usize]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none();
        if overflows(&input) || overflows(&work) {
            return Err(ConvError::ShapeMismatch {
                op,
                msg: format!("size overflows for input {input:?} and kernel {kernel:?}"),
            });
        }
        Ok(Self { n, c, h, w, oh, ow, params })
    }
    /// Input dims `[n, c, h, w]`.
    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// Output dims `[n, c, oh, ow]`.
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }
    /// Number of input elements.
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    /// Number of output elements.
    pub fn output_len(&self) -> usize {
        self.n * self.c * self.oh * self.ow
    }
    /// The 2x2, stride-2, unpadded window of LeNet and most CNNs, which has a loop of its own.
    fn is_2x2(&self) -> bool {
        let p = self.params;
        p.kernel == (2, 2) && p.stride == (2, 2) && p.padding == (0, 0)
    }
    fn parallel(&self) -> bool {
        self.output_len() * self.params.kernel.0 * self.params.kernel.1 >= PAR_MIN_WORK
            && rayon::current_num_threads() > 1
    }
    /// The input window of output `(y, x)`, clipped to the input: rows `y0..y1`, cols `x0..x1`.
    fn window(&self, y: usize, x: usize) -> (usize, usize, usize, usize) {
        let p = self.params;
        let (ys, xs) = (y * p.stride.0, x * p.stride.1);
        let y0 = ys.saturating_sub(p.padding.0);
        let x0 = xs.saturating_sub(p.padding.1);
        let y1 = (ys + p.kernel.0).saturating_sub(p.padding.0).min(self.h);
        let x1 = (xs + p.kernel.1).saturating_sub(p.padding.1).min(self.w);
        (y0, y1, x0, x1)
    }
}

/// Runs `f(plane index, in-plane, out-plane)` over matching chunks, in parallel when large.
fn over_planes<A, B, F>(
    g: &PoolGeometry,
    a: &[A],
    a_plane: usize,
    b: &mut [B],
    b_plane: usize,
    f: F,
) where
    A: Sync,
    B: Send,
    F: Fn(&[A], &mut [B]) + Sync,
{
    if g.parallel() {
        b.par_chunks_mut(b_plane).zip(a.par_chunks(a_plane)).for_each(|(b, a)| f(a, b));
    } else {
        b.chunks_mut(b_plane).zip(a.chunks(a_plane)).for_each(|(b, a)| f(a, b));
    }
}

/// Like [`over_planes`], with runs of whole planes of about a quarter of [`PAR_MIN_WORK`] window
/// reads per call (all of them on one thread below it), for loops that walk the planes themselves.
fn over_plane_blocks<F>(
    g: &PoolGeometry,
    a: &[f32],
    a_plane: usize,
    b: &mut [f32],
    b_plane: usize,
    f: F,
) where
    F: Fn(&[f32], &mut [f32]) + Sync,
{
    if !g.parallel() {
        return f(a, b);
    }
    let work = g.oh * g.ow * g.params.kernel.0 * g.params.kernel.1;
    let planes = (PAR_MIN_WORK / 4 / work.max(1)).max(1);
    b.par_chunks_mut(planes * b_plane)
        .zip(a.par_chunks(planes * a_plane))
        .for_each(|(b, a)| f(a, b));
}

/// Max pooling: writes `output [n, c, oh, ow]` and, per output element, the flat index
/// `iy·w + ix` of the maximum within its input plane into `indices` (same length as output).
pub fn max_pool2d(
    g: &PoolGeometry,
    input: &[f32],
    output: &mut [f32],
    indices: &mut [usize],
) -> Result<()> {
    const OP: &str = "max_pool2d";
    check_len(OP, "input", &g.input_dims(), input.len())?;
    check_len(OP, "output", &g.output_dims(), output.len())?;
    check_len(OP, "indices", &g.output_dims(), indices.len())?;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let pool_plane = |plane: &[f32], out: &mut [f32], idx: &mut [usize]| {
        let w = g.w;
        if g.is_2x2() {
            // Same scan order and rule as the general loop below, unrolled.
            for (y, (out, idx)) in
                out.chunks_exact_mut(g.ow).zip(idx.chunks_exact_mut(g.ow)).enumerate()
            {
                let (b0, b1) = (2 * y * w, (2 * y + 1) * w);
                let (r0, r1) = (&plane[b0..b0 + 2 * g.ow], &plane[b1..b1 + 2 * g.ow]);
                for (x, (o, i)) in out.iter_mut().zip(idx.iter_mut()).enumerate() {
                    let (mut best, mut at) = (r0[2 * x], b0 + 2 * x);
                    for (v, k) in [
                        (r0[2 * x + 1], b0 + 2 * x + 1),
                        (r1[2 * x], b1 + 2 * x),
                        (r1[2 * x + 1], b1 + 2 * x + 1),
                    ] {
                        let take = v > best || v.is_nan();
                        best = if take { v } else { best };
                        at = if take { k } else { at };
                    }
                    *o = best;
                    *i = at;
                }
            }
            return;
        }
        for y in 0..g.oh {
            let (y0, y1, _, _) = g.window(y, 0);
            for x in 0..g.ow {
                let (_, _, x0, x1) = g.window(0, x);
                let (mut best, mut at) = (f32::NEG_INFINITY, y0 * w + x0);
                for iy in y0..y1 {
                    let base = iy * w;
                    for (ix, &v) in (x0..x1).zip(&plane[base + x0..base + x1]) {
                        // PyTorch's rule: a larger value or any NaN takes over (branch-free).
                        let take = v > best || v.is_nan();
                        best = if take { v } else { best };
                        at = if take { base + ix } else { at };
                    }
                }
                out[y * g.ow + x] = best;
                idx[y * g.ow + x] = at;
            }
        }
    };
    if g.parallel() {
        output
            .par_chunks_mut(ohw)
            .zip(indices.par_chunks_mut(ohw))
            .zip(input.par_chunks(hw))
            .for_each(|((out, idx), plane)| pool_plane(plane, out, idx));
    } else {
        for ((out, idx), plane) in
            output.chunks_mut(ohw).zip(indices.chunks_mut(ohw)).zip(input.chunks(hw))
        {
            pool_plane(plane, out, idx);
        }
    }
    Ok(())
}

/// Backward of [`max_pool2d`]: `grad_input` (overwritten) receives each output gradient at
/// the index its forward pass recorded; indices out of the plane are an error.
pub fn max_pool2d_backward(
    g: &PoolGeometry,
    grad_output: &[f32],
    indices: &[usize],
    grad_input: &mut [f32],
) -> Result<()> {
    const OP: &str = "max_pool2d_backward";
    check_len(OP, "grad_output", &g.output_dims(), grad_output.len())?;
    check_len(OP, "indices", &g.output_dims(), indices.len())?;
    check_len(OP, "grad_input", &g.input_dims(), grad_input.len())?;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    if let Some(bad) = indices.iter().find(|&&i| i >= hw) {
        return Err(ConvError::InvalidParams {
            op: OP,
            msg: format!("index {bad} is outside the {}x{} input plane", g.h, g.w),
        });
    }
    let scatter = |go: &[f32], idx: &[usize], plane: &mut [f32]| {
        plane.fill(0.0);
        for (&v, &i) in go.iter().zip(idx) {
            plane[i] += v;
        }
    };
    if g.parallel() {
        grad_input
            .par_chunks_mut(hw)
            .zip(grad_output.par_chunks(ohw))
            .zip(indices.par_chunks(ohw))
            .for_each(|((plane, go), idx)| scatter(go, idx, plane));
    } else {
        for ((plane, go), idx) in
            grad_input.chunks_mut(hw).zip(grad_output.chunks(ohw)).zip(indices.chunks(ohw))
        {
            scatter(go, idx, plane);
        }
    }
    Ok(())
}

/// The divisor of output `(y, x)`'s window.
fn divisor(g: &PoolGeometry, y: usize, x: usize) -> f32 {
    let p = g.params;
    if p.count_include_pad {
        // With padding ≤ kernel/2 and floor-mode sizes a window never passes the far padding,
        // so it always holds kh·kw positions.
        (p.kernel.0 * p.kernel.1) as f32
    } else {
        let (y0, y1, x0, x1) = g.window(y, x);
        ((y1 - y0) * (x1 - x0)) as f32
    }
}

/// Average pooling: writes `output [n, c, oh, ow]`, summing each window in scan order.
pub fn avg_pool2d(g: &PoolGeometry, input: &[f32], output: &mut [f32]) -> Result<()> {
    const OP: &str = "avg_pool2d";
    check_len(OP, "input", &g.input_dims(), input.len())?;
    check_len(OP, "output", &g.output_dims(), output.len())?;
    if g.is_2x2() {
        // (a + b) + (c + d): the same sums as the general loop, unrolled. (Vectors with pair
        // sums and masked tails were slower on the short rows of such layers: 25 against 22
        // µs on [64, 6, 28, 28], 323 against 154 on [64, 32, 28, 28], one Zen 5 core; so
        // were masked stores for the backward on the second shape, 215 against 161 µs.)
        over_plane_blocks(g, input, g.h * g.w, output, g.oh * g.ow, |planes, out| {
            for (plane, out) in
                planes.chunks_exact(g.h * g.w).zip(out.chunks_exact_mut(g.oh * g.ow))
            {
                for (y, out) in out.chunks_exact_mut(g.ow).enumerate() {
                    let r0 = &plane[2 * y * g.w..2 * y * g.w + 2 * g.ow];
                    let r1 = &plane[(2 * y + 1) * g.w..(2 * y + 1) * g.w + 2 * g.ow];
                    for ((o, a), b) in
                        out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2))
                    {
                        *o = ((a[0] + a[1]) + (b[0] + b[1])) / 4.0;
                    }
                }
            }
        });
        return Ok(());
    }
    over_planes(g, input, g.h * g.w, output, g.oh * g.ow, |plane, out| {
        for y in 0..g.oh {
            for x in 0..g.ow {
                let (y0, y1, x0, x1) = g.window(y, x);
                let mut acc = 0f32;
                for iy in y0..y1 {
                    acc += plane[iy * g.w + x0..iy * g.w + x1].iter().sum::<f32>();
                }
                out[y * g.ow + x] = acc / divisor(g, y, x);
            }
        }
    });
    Ok(())
}

/// Backward of [`avg_pool2d`]: `grad_input` (overwritten) receives `grad / divisor` at every
/// real position of each window.
pub fn avg_pool2d_backward(
    g: &PoolGeometry,
    grad_output: &[f32],
    grad_input: &mut [f32],
) -> Result<()> {
    const OP: &str = "avg_pool2d_backward";
    check_len(OP, "grad_output", &g.output_dims(), grad_output.len())?;
    check_len(OP, "grad_input", &g.input_dims(), grad_input.len())?;
    if g.is_2x2() {
        over_plane_blocks(g, grad_output, g.oh * g.ow, grad_input, g.h * g.w, |go, plane| {
            // Windows do not overlap: each covered input gets exactly one quarter, and only
            // what no window covers (the last row or column of an odd size) is zeroed.
            let planes = go.chunks_exact(g.oh * g.ow).zip(plane.chunks_exact_mut(g.h * g.w));
            for (go, plane) in planes {
                for (y, go) in go.chunks_exact(g.ow).enumerate() {
                    for dy in 0..2 {
                        let row = &mut plane[(2 * y + dy) * g.w..(2 * y + dy + 1) * g.w];
                        let (covered, rest) = row.split_at_mut(2 * g.ow);
                        for (pair, &v) in covered.chunks_exact_mut(2).zip(go) {
                            pair[0] = v / 4.0;
                            pair[1] = v / 4.0;
                        }
                        rest.fill(0.0);
                    }
                }
                plane[2 * g.oh * g.w..].fill(0.0);
            }
        });
        return Ok(());
    }
    over_planes(g, grad_output, g.oh * g.ow, grad_input, g.h * g.w, |go, plane| {
        plane.fill(0.0);
        for y in 0..g.oh {
            for x in 0..g.ow {
                let (y0, y1, x0, x1) = g.window(y, x);
                let v = go[y * g.ow + x] / divisor(g, y, x);
                for iy in y0..y1 {
                    for d in &mut plane[iy * g.w + x0..iy * g.w + x1] {
                        *d += v;
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn geom(input: [usize; 4], p: PoolParams) -> PoolGeometry {
        PoolGeometry::new("test", input, p).unwrap()
    }

    #[test]
    fn max_pool_hand_computed() {
        let g = geom([1, 1, 4, 4], PoolParams::new(2));
        #[rustfmt::skip]
        let x = [
            1., 2., 5., 3.,
            4., 0., 1., 1.,
            -1., -2., 7., 7.,
            -3., -4., 7., 6.,
        ];
        let (mut out, mut idx) = (vec![0.0; 4], vec![0; 4]);
        max_pool2d(&g, &x, &mut out, &mut idx).unwrap();
        assert_eq!(out, [4., 5., -1., 7.]);
        // Ties keep the first in scan order (10, not 11 or 14).
        assert_eq!(idx, [4, 2, 8, 10]);
        let mut gx = vec![9.0; 16];
        max_pool2d_backward(&g, &[1., 2., 3., 4.], &idx, &mut gx).unwrap();
        let mut expect = [0.0; 16];
        expect[4] = 1.;
        expect[2] = 2.;
        expect[8] = 3.;
        expect[10] = 4.;
        assert_eq!(gx, expect);
    }

    #[test]
    fn overlapping_max_windows_accumulate() {
        // 3-wide windows, stride 1: the middle maximum wins all three windows.
        let g = geom(
            [1, 1, 1, 5],
            PoolParams { kernel: (1, 3), stride: (1, 1), padding: (0, 1), count_include_pad: true },
        );
        let x = [0., 1., 9., 1., 0.];
        let (mut out, mut idx) = (vec![0.0; 5], vec![0; 5]);
        max_pool2d(&g, &x, &mut out, &mut idx).unwrap();
        assert_eq!(out, [1., 9., 9., 9., 1.]);
        let mut gx = vec![0.0; 5];
        max_pool2d_backward(&g, &[1.0; 5], &idx, &mut gx).unwrap();
        assert_eq!(gx, [0., 1., 3., 1., 0.]);
    }

    #[test]
    fn nan_wins_max() {
        let g = geom(
            [1, 1, 1, 2],
            PoolParams { kernel: (1, 2), stride: (1, 2), padding: (0, 0), count_include_pad: true },
        );
        let (mut out, mut idx) = (vec![0.0; 1], vec![0; 1]);
        max_pool2d(&g, &[f32::NAN, 1.0], &mut out, &mut idx).unwrap();
        assert!(out[0].is_nan());
        assert_eq!(idx, [0]);
    }

    #[test]
    fn avg_pool_padding_modes() {
        // 2x2 input of ones, 3x3 window, stride 1, padding 1: every window covers 4 real
        // ones; with padding counted the divisor is 9, otherwise 4.
        let p = PoolParams::new(3).with_stride(1).with_padding(1);
        let g = geom([1, 1, 2, 2], p);
        let mut out = vec![0.0; 4];
        avg_pool2d(&g, &[1.0; 4], &mut out).unwrap();
        assert_eq!(out, [4.0 / 9.0; 4]);
        let g2 = geom([1, 1, 2, 2], p.with_count_include_pad(false));
        avg_pool2d(&g2, &[1.0; 4], &mut out).unwrap();
        assert_eq!(out, [1.0; 4]);
        let mut gx = vec![0.0; 4];
        avg_pool2d_backward(&g, &[9.0; 4], &mut gx).unwrap();
        assert_eq!(gx, [4.0; 4]);
        avg_pool2d_backward(&g2, &[4.0; 4], &mut gx).unwrap();
        assert_eq!(gx, [4.0; 4]);
    }

    #[test]
    fn avg_pool_lenet() {
        let g = geom([1, 1, 2, 4], PoolParams::new(2));
        let mut out = vec![0.0; 2];
        avg_pool2d(&g, &[1., 2., 3., 4., 5., 6., 7., 8.], &mut out).unwrap();
        assert_eq!(out, [3.5, 5.5]);
    }

    #[test]
    fn validation() {
        let e = PoolGeometry::new("max_pool2d", [1, 1, 4, 4], PoolParams::new(0)).unwrap_err();
        assert!(e.to_string().starts_with("max_pool2d: invalid parameter: kernel"), "{e}");
        let e = PoolGeometry::new("max_pool2d", [1, 1, 4, 4], PoolParams::new(2).with_stride(0))
            .unwrap_err();
        assert!(e.to_string().contains("stride"), "{e}");
        let e = PoolGeometry::new("avg_pool2d", [1, 1, 4, 4], PoolParams::new(3).with_padding(2))
            .unwrap_err();
        assert!(e.to_string().contains("at most half the kernel (3, 3)"), "{e}");
        let e = PoolGeometry::new("avg_pool2d", [1, 1, 2, 2], PoolParams::new(5)).unwrap_err();
        assert!(e.to_string().contains("[1, 1, 2, 2]"), "{e}");
        let g = geom([1, 1, 2, 2], PoolParams::new(2));
        let e = max_pool2d_backward(&g, &[1.0], &[4], &mut [0.0; 4]).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }
}
