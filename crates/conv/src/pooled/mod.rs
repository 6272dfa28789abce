//! Convolution, bias, optional ReLU and a 2x2 pool in one pass over each image.
//!
//! Run layer by layer, a convolution writes its whole output to memory and the pool reads it
//! back; for the small early layers of a CNN that traffic (and allocating the buffer) costs
//! more than the arithmetic. Here each image's pooled output is computed from accumulators
//! still in registers. Two register tilings cover the shapes:
//!
//! - **columns** (`parity.rs`), for fewer than 16 output channels: each input row is split by
//!   padded-column parity, so output column `2·px + b` with tap `j` reads element
//!   `px + ⌊(b+j)/2⌋` of parity `(b+j) mod 2`; a vector then holds eight *pooled* columns and
//!   the 2x2 pool is lane-wise arithmetic on two output rows × two parities.
//! - **channels** (`channels.rs`), for 16 or more: vectors run over 16 output channels at a
//!   time (two vectors, zero-padded), a tile of five output pixels per row; the pool then
//!   combines channel vectors of neighbouring pixels. At the AVX-512 level the 16 channels
//!   are one `__m512` and a tile covers up to 12 pixels (`wide.rs`), with the same bits.
//!
//! Supported: stride 1, dilation 1, one group, any padding, kernel and channel counts; the
//! pool is 2x2 with stride 2 and no padding, average or max. Every output's products are added
//! in the definition's order (bias, then input channel, kernel row, kernel column) with fused
//! multiply-adds, one image at a time, so results do not depend on the batch split or the
//! number of threads.

use crate::error::{ConvError, Result};
use crate::params::Conv2dParams;
use crate::pool::PoolParams;
use crate::simd::{LANES, Simd};

mod channels;
mod parity;
#[cfg(target_arch = "x86_64")]
mod wide;

/// How a fused 2x2 pool combines its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// The largest of the four values (PyTorch's `MaxPool2d(2)`).
    Max,
    /// The mean of the four values (PyTorch's `AvgPool2d(2)`).
    Avg,
}

/// Output channels from which the channel tiling is used.
const CHANNEL_PATH_MIN: usize = 2 * LANES;

/// Where a pooled image is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PooledLayout {
    /// `[c_out][ph][pw]`, as NCHW activations.
    Planes,
    /// `[ph][pw][c_out]`: channels last, for a dense layer that reads features in that order.
    ChannelsLast,
}

/// A convolution layer's weights repacked for the fused pass, with the pool it ends in.
#[derive(Debug, Clone)]
pub(crate) struct PooledConv {
    c_out: usize,
    c_in: usize,
    kh: usize,
    kw: usize,
    pad: (usize, usize),
    kind: PoolKind,
    relu: bool,
    /// Columns path: the weights as given, `[c_out][c_in][kh][kw]`. Channels path: tap-major
    /// groups of 16 channels, `[group][(c·kh + i)·kw + j][16]`, zero past `c_out`.
    weight: Vec<f32>,
    /// The bias, zero-padded to a multiple of 16 channels (zeros when there was none).
    bias: Vec<f32>,
}

/// The sizes of one call: padded input, convolution output and pooled output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageDims {
    pub h: usize,
    pub w: usize,
    /// Padded input.
    pub hp: usize,
    pub wp: usize,
    /// Pooled output.
    pub ph: usize,
    pub pw: usize,
}

impl PooledConv {
    /// Whether a convolution with `params` followed by a pool with `pool` can run fused.
    pub(crate) fn supports(params: &Conv2dParams, pool: &PoolParams) -> bool {
        params.stride == (1, 1)
            && params.dilation == (1, 1)
            && params.groups == 1
            && pool.kernel == (2, 2)
            && pool.stride == (2, 2)
            && pool.padding == (0, 0)
    }

    /// Repacks `weight` (`dims`) and `bias` for the fused pass; the caller checked
    /// [`PooledConv::supports`] and the buffer lengths.
    pub(crate) fn new(
        weight: &[f32],
        dims: [usize; 4],
        bias: Option<&[f32]>,
        pad: (usize, usize),
        kind: PoolKind,
        relu: bool,
    ) -> Self {
        let [c_out, c_in, kh, kw] = dims;
        let groups = c_out.div_ceil(CHANNEL_PATH_MIN);
        let mut padded_bias = vec![0f32; groups * CHANNEL_PATH_MIN];
        if let Some(b) = bias {
            padded_bias[..c_out].copy_from_slice(b);
        }
        let weight =
            if c_out >= CHANNEL_PATH_MIN { channels::pack(weight, dims) } else { weight.to_vec() };
        Self { c_out, c_in, kh, kw, pad, kind, relu, weight, bias: padded_bias }
    }

    /// The sizes of a call on `[c_in, h, w]` images, or an error when the convolution output
    /// is smaller than one pooling window.
    pub(crate) fn dims(&self, op: &'static str, h: usize, w: usize) -> Result<ImageDims> {
        let (hp, wp) = (h + 2 * self.pad.0, w + 2 * self.pad.1);
        let (oh, ow) = (hp.saturating_sub(self.kh - 1), wp.saturating_sub(self.kw - 1));
        if oh < 2 || ow < 2 {
            return Err(ConvError::ShapeMismatch {
                op,
                msg: format!(
                    "a {h}x{w} input with padding {:?} gives a {oh}x{ow} output for a {}x{} \
                     kernel, smaller than the 2x2 pool",
                    self.pad, self.kh, self.kw
                ),
            });
        }
        Ok(ImageDims { h, w, hp, wp, ph: oh / 2, pw: ow / 2 })
    }

    /// Floats of one input image and of one pooled output image.
    pub(crate) fn image_lens(&self, d: &ImageDims) -> (usize, usize) {
        (self.c_in * d.h * d.w, self.c_out * d.ph * d.pw)
    }

    /// One image `[c_in][h][w]` into `out` (`layout`), using `scratch`; `conv` (optional)
    /// receives the convolution's output before the ReLU, `[c_out][2·ph][2·pw]` (the rows and
    /// columns the pool reads). Slice lengths are the caller's contract (checked in debug).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn image<S: Simd>(
        &self,
        s: S,
        d: &ImageDims,
        input: &[f32],
        out: &mut [f32],
        layout: PooledLayout,
        conv: Option<&mut [f32]>,
        scratch: &mut Vec<f32>,
    ) {
        debug_assert_eq!((input.len(), out.len()), self.image_lens(d));
        if self.c_out >= CHANNEL_PATH_MIN {
            channels::image(s, self, d, input, out, layout, conv, scratch);
        } else {
            parity::image(s, self, d, input, out, layout, conv, scratch);
        }
    }
}

/// Lane-wise ReLU when `relu`.
#[inline(always)]
fn act<S: Simd>(s: S, relu: bool, v: S::V) -> S::V {
    if relu { s.max(v, s.zero()) } else { v }
}

/// The pool of four vectors after [`act`]: `(a + b) + (c + d)` times ¼, or
/// `max(max(a, b), max(c, d))`. (No closures in the kernels: a closure body is compiled without
/// the caller's target features, so its intrinsics would not inline.)
#[inline(always)]
fn combine<S: Simd>(s: S, kind: PoolKind, relu: bool, four: [S::V; 4]) -> S::V {
    let [a, b, c, d] = [
        act(s, relu, four[0]),
        act(s, relu, four[1]),
        act(s, relu, four[2]),
        act(s, relu, four[3]),
    ];
    match kind {
        PoolKind::Avg => s.mul(s.add(s.add(a, b), s.add(c, d)), s.splat(0.25)),
        PoolKind::Max => s.max(s.max(a, b), s.max(c, d)),
    }
}

#[cfg(test)]
mod tests;
