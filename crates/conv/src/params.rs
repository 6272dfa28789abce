//! Convolution parameters, the output-size formula, and shape validation.
//!
//! Every algorithm and every layer computes output sizes through [`out_size`] and validates its
//! operands through [`ConvGeometry::new`], so the rules live in exactly one place.

use crate::error::{ConvError, Result};

/// Hyper-parameters of a 2-D convolution, each given per axis as `(h, w)`.
///
/// The defaults are those of PyTorch's `Conv2d`: stride 1, no padding, no dilation, one group.
///
/// ```
/// use convkit_conv::Conv2dParams;
/// let p = Conv2dParams::default().with_stride(2).with_padding(1);
/// assert_eq!(p.stride, (2, 2));
/// assert_eq!(p.padding, (1, 1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between two applications of the filter, `(sh, sw)`. Must be ≥ 1.
    pub stride: (usize, usize),
    /// Zeros added on each side of the input, `(ph, pw)`.
    pub padding: (usize, usize),
    /// Spacing between filter taps, `(dh, dw)`. Must be ≥ 1; 1 is an ordinary convolution.
    pub dilation: (usize, usize),
    /// Number of groups: input and output channels are split into `groups` independent parts.
    /// Must divide both channel counts; `groups == c_in == c_out` is a depthwise convolution.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

impl Conv2dParams {
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
    /// Sets the same dilation on both axes.
    pub fn with_dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }
    /// Sets the number of groups.
    pub fn with_groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// The output size of a convolution or pooling window along one axis:
/// `floor((input + 2*pad - dilation*(kernel-1) - 1) / stride) + 1`.
///
/// Returns `None` when the parameters are invalid (zero stride, dilation or kernel) or when
/// the dilated kernel does not fit in the padded input.
///
/// ```
/// use convkit_conv::out_size;
/// assert_eq!(out_size(32, 5, 1, 0, 1), Some(28)); // LeNet-5 conv1
/// assert_eq!(out_size(56, 3, 2, 1, 1), Some(28)); // strided 3x3
/// assert_eq!(out_size(28, 3, 1, 2, 2), Some(28)); // dilated 3x3 keeps the size with pad 2
/// assert_eq!(out_size(2, 5, 1, 0, 1), None);     // kernel larger than the input
/// ```
pub fn out_size(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return None;
    }
    let padded = input.checked_add(pad.checked_mul(2)?)?;
    let span = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
    if span > padded {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// A validated convolution problem: every size the kernels need, derived once.
///
/// Built by [`ConvGeometry::new`] from the input dims `[n, c_in, h, w]`, the weight dims
/// `[c_out, c_in / groups, kh, kw]` and the parameters; all kernels take it instead of
/// re-deriving sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// The parameters.
    pub params: Conv2dParams,
}

impl ConvGeometry {
    /// Validates the operands of a convolution and computes the output size.
    ///
    /// Errors name the shapes: a zero stride or dilation, `groups` not dividing the channel
    /// counts, a weight whose input-channel count does not match, an empty input, or a kernel
    /// larger than the padded input.
    ///
    /// ```
    /// use convkit_conv::{Conv2dParams, ConvGeometry};
    /// let g = ConvGeometry::new([64, 1, 32, 32], [6, 1, 5, 5], Conv2dParams::default()).unwrap();
    /// assert_eq!((g.oh, g.ow), (28, 28));
    /// let err = ConvGeometry::new([64, 3, 32, 32], [6, 1, 5, 5], Conv2dParams::default());
    /// assert!(err.unwrap_err().to_string().contains("[6, 1, 5, 5]"));
    /// ```
    pub fn new(input: [usize; 4], weight: [usize; 4], params: Conv2dParams) -> Result<Self> {
        const OP: &str = "conv2d";
        let [n, c_in, h, w] = input;
        let [c_out, cpg, kh, kw] = weight;
        let Conv2dParams { stride, padding, dilation, groups } = params;
        let invalid = |msg: String| Err(ConvError::InvalidParams { op: OP, msg });
        if stride.0 == 0 || stride.1 == 0 {
            return invalid(format!("stride must be at least 1, got {stride:?}"));
        }
        if dilation.0 == 0 || dilation.1 == 0 {
            return invalid(format!("dilation must be at least 1, got {dilation:?}"));
        }
        if groups == 0 {
            return invalid("groups must be at least 1, got 0".into());
        }
        if kh == 0 || kw == 0 {
            return invalid(format!("kernel size must be at least 1, weight is {weight:?}"));
        }
        let mismatch = |msg: String| Err(ConvError::ShapeMismatch { op: OP, msg });
        if n == 0 || c_in == 0 || h == 0 || w == 0 {
            return mismatch(format!("input {input:?} is empty"));
        }
        if c_out == 0 {
            return mismatch(format!("weight {weight:?} has no output channels"));
        }
        if c_in % groups != 0 || c_out % groups != 0 {
            return mismatch(format!(
                "groups = {groups} must divide input channels ({c_in}, input {input:?}) and output channels ({c_out}, weight {weight:?})"
            ));
        }
        if cpg * groups != c_in {
            let need = cpg * groups;
            return mismatch(format!(
                "weight {weight:?} with groups = {groups} needs {need} input channel{}, input has {input:?}",
                if need == 1 { "" } else { "s" }
            ));
        }
        let oh = out_size(h, kh, stride.0, padding.0, dilation.0);
        let ow = out_size(w, kw, stride.1, padding.1, dilation.1);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return mismatch(format!(
                "kernel {kh}x{kw} with dilation {dilation:?} is larger than the padded input ({}x{}) of input {input:?} with padding {padding:?}",
                h + 2 * padding.0,
                w + 2 * padding.1
            ));
        };
        // Every size the kernels compute (element counts, multiply-adds) must fit in usize.
        let macs = [n, c_out, cpg, kh, kw, oh, ow];
        for (what, dims) in [
            ("input", &input[..]),
            ("weight", &weight[..]),
            ("output", &[n, c_out, oh, ow][..]),
            ("work (multiply-adds)", &macs[..]),
        ] {
            if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
                return mismatch(format!(
                    "{what} size overflows for input {input:?} and weight {weight:?}"
                ));
            }
        }
        Ok(Self { n, c_in, h, w, c_out, kh, kw, oh, ow, params })
    }

    /// The stride-1 convolution whose output is this convolution's input gradient: `dX =
    /// conv(dY, W')` with `W'[grp·cpg + c][k][i][j] = W[grp·kpg + k][c][kh−1−i][kw−1−j]`
    /// (filters rotated 180°, input and output channels swapped per group) and padding
    /// `d·(k−1) − p`. `None` when there is no such form: a stride above 1, or a padding above
    /// `d·(k−1)`.
    pub fn input_grad_geometry(&self) -> Option<ConvGeometry> {
        let p = self.params;
        let (ah, aw) = ((self.kh - 1) * p.dilation.0, (self.kw - 1) * p.dilation.1);
        if p.stride != (1, 1) || p.padding.0 > ah || p.padding.1 > aw {
            return None;
        }
        let params = Conv2dParams {
            stride: (1, 1),
            padding: (ah - p.padding.0, aw - p.padding.1),
            dilation: p.dilation,
            groups: p.groups,
        };
        let gt = ConvGeometry::new(
            [self.n, self.c_out, self.oh, self.ow],
            [self.c_in, self.c_out_per_group(), self.kh, self.kw],
            params,
        )
        .ok()?;
        (gt.output_dims() == self.input_dims()).then_some(gt)
    }

    /// Input channels per group.
    pub fn c_in_per_group(&self) -> usize {
        self.c_in / self.params.groups
    }
    /// Output channels per group.
    pub fn c_out_per_group(&self) -> usize {
        self.c_out / self.params.groups
    }
    /// Input dims `[n, c_in, h, w]`.
    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    /// Weight dims `[c_out, c_in / groups, kh, kw]`.
    pub fn weight_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in_per_group(), self.kh, self.kw]
    }
    /// Output dims `[n, c_out, oh, ow]`.
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.oh, self.ow]
    }
    /// Number of elements of the input.
    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    /// Number of elements of the weight.
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in_per_group() * self.kh * self.kw
    }
    /// Number of elements of the output.
    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.oh * self.ow
    }
    /// Floating-point operations of the forward pass, counting a multiply-add as two:
    /// `2·N·K·(C/g)·R·S·OH·OW`.
    pub fn flops(&self) -> u64 {
        2 * (self.n * self.c_out * self.c_in_per_group() * self.kh * self.kw * self.oh * self.ow)
            as u64
    }

    /// Checks the lengths of the input, weight, optional bias and output buffers against the
    /// shapes; `op` names the caller in the error.
    pub fn check_buffers(
        &self,
        op: &'static str,
        input: usize,
        weight: usize,
        bias: Option<usize>,
        output: usize,
    ) -> Result<()> {
        check_len(op, "input", &self.input_dims(), input)?;
        check_len(op, "weight", &self.weight_dims(), weight)?;
        if let Some(b) = bias {
            check_len(op, "bias", &[self.c_out], b)?;
        }
        check_len(op, "output", &self.output_dims(), output)
    }

    /// [`check_buffers`](Self::check_buffers) on the buffers of a forward pass.
    pub(crate) fn check_forward(
        &self,
        op: &'static str,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        output: &[f32],
    ) -> Result<()> {
        self.check_buffers(op, input.len(), weight.len(), bias.map(<[f32]>::len), output.len())
    }

    /// Vertical stride.
    #[inline(always)]
    pub(crate) fn sh(&self) -> usize {
        self.params.stride.0
    }
    /// Horizontal stride.
    #[inline(always)]
    pub(crate) fn sw(&self) -> usize {
        self.params.stride.1
    }
    /// Vertical padding.
    #[inline(always)]
    pub(crate) fn ph(&self) -> usize {
        self.params.padding.0
    }
    /// Horizontal padding.
    #[inline(always)]
    pub(crate) fn pw(&self) -> usize {
        self.params.padding.1
    }
    /// Vertical dilation.
    #[inline(always)]
    pub(crate) fn dh(&self) -> usize {
        self.params.dilation.0
    }
    /// Horizontal dilation.
    #[inline(always)]
    pub(crate) fn dw(&self) -> usize {
        self.params.dilation.1
    }

    /// Checks the buffers of a backward pass (the operands and each requested gradient);
    /// `op` names the caller in the error.
    pub fn check_backward(
        &self,
        op: &'static str,
        x: &BackwardInputs<'_>,
        grads: &GradBuffers<'_>,
    ) -> Result<()> {
        self.check_buffers(op, x.input.len(), x.weight.len(), None, x.grad_output.len())?;
        if let Some(b) = grads.input.as_deref() {
            check_len(op, "grad_input", &self.input_dims(), b.len())?;
        }
        if let Some(b) = grads.weight.as_deref() {
            check_len(op, "grad_weight", &self.weight_dims(), b.len())?;
        }
        if let Some(b) = grads.bias.as_deref() {
            check_len(op, "grad_bias", &[self.c_out], b.len())?;
        }
        Ok(())
    }
}

/// What a backward convolution reads: the forward pass's `input` `[n, c_in, h, w]` and
/// `weight` `[c_out, c_in/groups, kh, kw]`, and `grad_output = ∂L/∂out` `[n, c_out, oh, ow]`.
#[derive(Debug, Clone, Copy)]
pub struct BackwardInputs<'a> {
    /// The forward pass's input.
    pub input: &'a [f32],
    /// The forward pass's weight.
    pub weight: &'a [f32],
    /// The gradient of the loss with respect to the forward pass's output.
    pub grad_output: &'a [f32],
}

/// The gradients a backward convolution writes, each overwritten; `None` skips it.
#[derive(Debug, Default)]
pub struct GradBuffers<'a> {
    /// `∂L/∂input`, the input's shape.
    pub input: Option<&'a mut [f32]>,
    /// `∂L/∂weight`, the weight's shape.
    pub weight: Option<&'a mut [f32]>,
    /// `∂L/∂bias`, `[c_out]`.
    pub bias: Option<&'a mut [f32]>,
}

/// Returns a [`ConvError::BufferLength`] when `got` differs from the product of `shape`.
pub fn check_len(op: &'static str, what: &'static str, shape: &[usize], got: usize) -> Result<()> {
    let expected = shape.iter().product();
    if expected == got {
        Ok(())
    } else {
        Err(ConvError::BufferLength { op, what, shape: shape.to_vec(), expected, got })
    }
}

/// `dims` as `[usize; N]`, or a [`ConvError::ShapeMismatch`] of `op` worded as the Tensor API
/// words it: `input must be rank 4 [n, c_in, h, w], got [3, 32, 32]`.
pub(crate) fn rank<const N: usize>(
    op: &'static str,
    what: &str,
    layout: &str,
    dims: &[usize],
) -> Result<[usize; N]> {
    ranked(op, dims, || format!("{what} must be rank {N} {layout}, got {dims:?}"))
}

/// [`rank`] worded as the prepared layers word it, shape first:
/// `input [3, 32, 32] must be rank 4 [n, c, h, w]`.
pub(crate) fn rank_shape_first<const N: usize>(
    op: &'static str,
    what: &str,
    layout: &str,
    dims: &[usize],
) -> Result<[usize; N]> {
    ranked(op, dims, || format!("{what} {dims:?} must be rank {N} {layout}"))
}

fn ranked<const N: usize>(
    op: &'static str,
    dims: &[usize],
    msg: impl FnOnce() -> String,
) -> Result<[usize; N]> {
    <[usize; N]>::try_from(dims).map_err(|_| ConvError::ShapeMismatch { op, msg: msg() })
}

/// Checks that `bias` is `[c_out]` for a convolution weight `weight` (`[c_out, …]`), in the
/// Tensor API's words: `bias [5] must be [6] for weight [6, 1, 5, 5]`.
pub(crate) fn check_bias(op: &'static str, bias: &[usize], weight: &[usize]) -> Result<()> {
    if bias == &weight[..1] {
        Ok(())
    } else {
        Err(ConvError::ShapeMismatch {
            op,
            msg: format!("bias {bias:?} must be [{}] for weight {weight:?}", weight[0]),
        })
    }
}

/// The dims of a prepared layer's `weight` (rank `N`, `layout`) after checking that its
/// `bias`, if any, is `[dims[0]]`; errors are worded shape first, as [`rank_shape_first`].
pub(crate) fn layer_dims<const N: usize>(
    op: &'static str,
    layout: &str,
    weight: &[usize],
    bias: Option<&[usize]>,
) -> Result<[usize; N]> {
    let dims = rank_shape_first::<N>(op, "weight", layout, weight)?;
    match bias {
        Some(b) if b != &dims[..1] => Err(ConvError::ShapeMismatch {
            op,
            msg: format!("bias {b:?} does not fit weight {dims:?}"),
        }),
        _ => Ok(dims),
    }
}

/// Maximum number of batch chunks of a weight gradient, hence of partial weight gradients
/// kept in memory: the chunks depend only on the batch size and are summed in a fixed order
/// ([`fill_and_sum_partials`]), which makes every backward kernel bit-identical for any number
/// of threads.
pub const WEIGHT_GRAD_PARTIALS: usize = 8;

/// Fills the partial weight gradients and sums them in a fixed pairwise order: `fill(task,
/// out)` writes partial `p` (task `p` of `tasks`) into `out`, partial 0 into `dst` itself and
/// partial `p ≥ 1` into the `p − 1`th run of `dst.len()` floats of `spare`; the partials of
/// each half of the range are summed first, then the halves (8 partials: `((P0 + P1) + (P2 +
/// P3)) + ((P4 + P5) + (P6 + P7))`), and the sum lands in `dst`. The tree depends only on the
/// number of tasks, so the bits do not depend on the threads; with `parallel` the halves run
/// as a `rayon::join`, so each thread sums the partials it made while they are in its cache,
/// and only the last sums cross between cores (an in-order sum on one thread after the tasks
/// left a 256→256 pointwise layer's backward waiting on a serial pass over 2 MiB).
///
/// # Panics
/// When `spare` holds fewer than `tasks.len() − 1` partials, or `tasks` is empty (internal
/// bugs).
pub(crate) fn fill_and_sum_partials<T: Send>(
    dst: &mut [f32],
    spare: &mut [f32],
    tasks: Vec<T>,
    parallel: bool,
    fill: &(impl Fn(T, &mut [f32]) + Sync),
) {
    let len = dst.len();
    let parts = tasks.len();
    assert!(
        parts > 0 && spare.len() >= (parts - 1) * len,
        "fill_and_sum_partials: too little room"
    );
    let mut outs: Vec<&mut [f32]> = Vec::with_capacity(parts);
    outs.push(dst);
    if len > 0 {
        outs.extend(spare.chunks_mut(len).take(parts - 1));
    } else {
        outs.resize_with(parts, Default::default);
    }
    tree(tasks, &mut outs, parallel, fill);
}

/// The recursion of [`fill_and_sum_partials`]: fills `outs` (one buffer per task) and leaves
/// their sum in `outs[0]`.
fn tree<T: Send>(
    mut tasks: Vec<T>,
    outs: &mut [&mut [f32]],
    parallel: bool,
    fill: &(impl Fn(T, &mut [f32]) + Sync),
) {
    if tasks.len() == 1 {
        if let Some(task) = tasks.pop() {
            fill(task, &mut *outs[0]);
        }
        return;
    }
    let mid = tasks.len() / 2;
    let right = tasks.split_off(mid);
    let (lo, hi) = outs.split_at_mut(mid);
    if parallel {
        rayon::join(|| tree(tasks, lo, parallel, fill), || tree(right, hi, parallel, fill));
    } else {
        tree(tasks, lo, parallel, fill);
        tree(right, hi, parallel, fill);
    }
    for (d, s) in lo[0].iter_mut().zip(hi[0].iter()) {
        *d += s;
    }
}

/// The sum [`fill_and_sum_partials`] makes, of partials already filled: partial 0 in `dst`,
/// partial `p ≥ 1` the `p − 1`th run of `dst.len()` floats of `spare`.
pub(crate) fn sum_partials(dst: &mut [f32], spare: &mut [f32], parts: usize) {
    fill_and_sum_partials(dst, spare, vec![(); parts], false, &|(), _: &mut [f32]| {});
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The partials' sum is the pairwise tree of `fill_and_sum_partials`, with the same bits
    /// on one thread, on a pool of 2 or 3, and from `sum_partials`.
    #[test]
    fn partials_sum_in_a_fixed_tree_whatever_the_threads() {
        let len = 1000;
        for parts in 1..=9 {
            let all: Vec<f32> =
                (0..parts * len).map(|i| ((i * 7919) % 1001) as f32 * 1e-3 - 0.5).collect();
            let part = |p: usize| &all[p * len..][..len];
            // The tree written out: halves of `parts / 2` and the rest, summed left + right.
            fn tree(part: &dyn Fn(usize) -> Vec<f32>, lo: usize, hi: usize) -> Vec<f32> {
                if hi - lo == 1 {
                    return part(lo);
                }
                let mid = lo + (hi - lo) / 2;
                let (l, r) = (tree(part, lo, mid), tree(part, mid, hi));
                l.iter().zip(&r).map(|(a, b)| a + b).collect()
            }
            let want = tree(&|p| part(p).to_vec(), 0, parts);
            if parts == 8 {
                // ((P0 + P1) + (P2 + P3)) + ((P4 + P5) + (P6 + P7)), element by element.
                let s = |p: usize, i: usize| part(p)[i];
                for (i, w) in want.iter().enumerate() {
                    let l = (s(0, i) + s(1, i)) + (s(2, i) + s(3, i));
                    let r = (s(4, i) + s(5, i)) + (s(6, i) + s(7, i));
                    assert_eq!(w.to_bits(), (l + r).to_bits());
                }
            }
            let fill = |p: usize, out: &mut [f32]| out.copy_from_slice(part(p));
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for parallel in [false, true] {
                    let (mut got, mut spare) = (vec![f32::NAN; len], vec![f32::NAN; parts * len]);
                    let tasks: Vec<usize> = (0..parts).collect();
                    pool.install(|| {
                        fill_and_sum_partials(&mut got, &mut spare, tasks, parallel, &fill)
                    });
                    assert_eq!(got, want, "{parts} parts, {threads} threads, {parallel}");
                }
            }
            let mut dst = part(0).to_vec();
            let mut spare = all[len..].to_vec();
            sum_partials(&mut dst, &mut spare, parts);
            assert_eq!(dst, want, "sum_partials, {parts} parts");
        }
    }

    #[test]
    fn out_size_matches_formula() {
        for input in 1..12 {
            for k in 1..6 {
                for s in 1..4 {
                    for p in 0..3 {
                        for d in 1..3 {
                            let padded = (input + 2 * p) as i64;
                            let span = (d * (k - 1) + 1) as i64;
                            let expect = if span > padded {
                                None
                            } else {
                                Some(((padded - span) / s as i64 + 1) as usize)
                            };
                            assert_eq!(
                                out_size(input, k, s, p, d),
                                expect,
                                "{input} {k} {s} {p} {d}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(out_size(5, 3, 0, 0, 1), None);
        assert_eq!(out_size(5, 3, 1, 0, 0), None);
        assert_eq!(out_size(5, 0, 1, 0, 1), None);
    }

    #[test]
    fn geometry_errors_name_shapes() {
        let p = Conv2dParams::default();
        let e = ConvGeometry::new([64, 3, 32, 32], [6, 1, 5, 5], p).unwrap_err().to_string();
        assert_eq!(
            e,
            "conv2d: weight [6, 1, 5, 5] with groups = 1 needs 1 input channel, input has [64, 3, 32, 32]"
        );
        let e = ConvGeometry::new([1, 4, 8, 8], [6, 2, 3, 3], p.with_groups(3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("groups = 3"), "{e}");
        let e = ConvGeometry::new([1, 1, 4, 4], [1, 1, 5, 5], p).unwrap_err().to_string();
        assert!(e.contains("larger than the padded input"), "{e}");
        assert!(ConvGeometry::new([1, 1, 4, 4], [1, 1, 5, 5], p.with_padding(1)).is_ok());
        let e = ConvGeometry::new([1, 1, 4, 4], [1, 1, 3, 3], p.with_stride(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stride"), "{e}");
        let e = ConvGeometry::new([1, 1, 4, 4], [1, 1, 3, 3], p.with_dilation(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dilation"), "{e}");
        let e = ConvGeometry::new([0, 1, 4, 4], [1, 1, 3, 3], p).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let huge = usize::MAX / 2;
        let e = ConvGeometry::new([huge, 1, 4, 4], [1, 1, 3, 3], p).unwrap_err().to_string();
        assert!(e.contains("input size overflows"), "{e}");
    }

    #[test]
    fn geometry_sizes() {
        let g = ConvGeometry::new(
            [8, 128, 28, 28],
            [128, 1, 3, 3],
            Conv2dParams::default().with_padding(1).with_groups(128),
        )
        .unwrap();
        assert_eq!(g.output_dims(), [8, 128, 28, 28]);
        assert_eq!(g.flops(), 2 * 8 * 128 * 9 * 28 * 28);
        assert!(
            g.check_buffers("t", g.input_len(), g.weight_len(), Some(128), g.output_len()).is_ok()
        );
        let e = g
            .check_buffers("t", g.input_len() - 1, g.weight_len(), None, g.output_len())
            .unwrap_err();
        assert!(matches!(e, ConvError::BufferLength { what: "input", .. }));
    }

    #[test]
    fn tensor_shape_checks_keep_their_two_wordings() {
        let msg = |r: Result<[usize; 4]>| r.unwrap_err().to_string();
        assert_eq!(
            msg(rank("conv2d", "input", "[n, c_in, h, w]", &[3, 32, 32])),
            "conv2d: input must be rank 4 [n, c_in, h, w], got [3, 32, 32]"
        );
        assert_eq!(
            msg(rank_shape_first("PreparedConv", "input", "[n, c, h, w]", &[3, 32, 32])),
            "PreparedConv: input [3, 32, 32] must be rank 4 [n, c, h, w]"
        );
        assert_eq!(
            check_bias("conv2d", &[5], &[6, 1, 5, 5]).unwrap_err().to_string(),
            "conv2d: bias [5] must be [6] for weight [6, 1, 5, 5]"
        );
        assert!(check_bias("conv2d", &[6], &[6, 1, 5, 5]).is_ok());
        let layer = |w: &[usize], b: Option<&[usize]>| layer_dims::<2>("linear", "[out, in]", w, b);
        assert_eq!(
            layer(&[2, 3, 4], None).unwrap_err().to_string(),
            "linear: weight [2, 3, 4] must be rank 2 [out, in]"
        );
        assert_eq!(
            layer(&[2, 3], Some(&[3])).unwrap_err().to_string(),
            "linear: bias [3] does not fit weight [2, 3]"
        );
        assert_eq!(layer(&[2, 3], Some(&[2])).unwrap(), [2, 3]);
    }
}
