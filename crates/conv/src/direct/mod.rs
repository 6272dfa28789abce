//! Direct convolution with explicit SIMD: the loops of the definition, vectorized over the
//! output width and blocked in registers.
//!
//! # When it wins
//!
//! im2col + GEMM turns a convolution into a matrix product of depth `C/g·R·S`. When that
//! depth is small (LeNet's first layer: 1·5·5 = 25; depthwise: 1·3·3 = 9) the GEMM spends most
//! of its time packing, and im2col copies every input pixel `R·S` times. The direct kernel
//! reads each input row straight from a padded copy and needs no column buffer at all.
//!
//! # Blocking
//!
//! For one image and a chunk of output channels of one group:
//!
//! 1. **Padded planes.** The chunk's input channels are copied once into a zero-filled scratch
//!    buffer with the padding already applied, so the inner loops have no edge tests. Each
//!    padded row is stored *phase-split* by the horizontal stride `sw`: phase `p` holds padded
//!    columns `p, p+sw, p+2sw, …`. Output column `x` with tap `j` reads padded column
//!    `x·sw + j·dw`, which is element `x + ⌊j·dw/sw⌋` of phase `(j·dw) mod sw`, so eight
//!    consecutive outputs read eight *consecutive* floats for every stride and dilation. Each
//!    phase is long enough (`⌈ow/8⌉·8 + ⌊(kw−1)·dw/sw⌋`) for whole-vector loads; lanes past the
//!    row's end read zeros and are never stored. The scratch is bounded by one image's channels
//!    of one group and is reused across chunks of a rayon worker.
//! 2. **Register tiles.** Three micro-kernels, chosen per work item, each keeping at most 12
//!    accumulators in the 16 AVX2 registers:
//!    - *width × channels*: `KB` output channels (up to 6) × `XB` vectors of 8 output columns
//!      (up to 4). Per filter tap it loads `XB` input vectors and broadcasts `KB` weights, then
//!      issues `KB·XB` fused multiply-adds. LeNet conv1 (`ow = 28`, 6 channels) runs
//!      3 channels × 4 vectors.
//!    - *width × rows* when a work item has one output channel (depthwise shapes that the
//!      dedicated path below does not take: strided, dilated, other filter sizes): `YB`
//!      output rows (up to 3) × `XB` vectors, so that 12 independent accumulator chains hide
//!      the FMA latency even though every tap has a single weight.
//!    - *channels × columns* when vectorizing over output channels fills more lanes than over
//!      the width (`kc ≥ 8` and `kc/⌈kc/8⌉·8 > ow/⌈ow/8⌉·8`): 16 channels × 6 columns or
//!      8 × 8 (at the AVX-512 level, 16 channels in one vector × up to 12 columns: `wide`). LeNet conv2 (`ow = 10`, 16 channels) would waste 37% of the lanes along the
//!      width and wastes none along the channels. Each tap loads 1–2 weight vectors and
//!      broadcasts one input value per column; results are scattered lane by lane, one scalar
//!      store per output against `C/g·R·S` multiply-adds.
//!
//!    Weights are repacked once per call, tap-major (`[c][i][j][k]`, channels padded to 8 for
//!    the channel kernel) so that broadcasts and weight vectors read adjacent floats. Each tile
//!    checks its whole input footprint once, then loads without bounds checks.
//! 3. **Threads.** Work items are `(image, chunk of output channels)` pairs, each writing its own
//!    contiguous output slice (`par_chunks_mut`); the chunking depends only on the shape, so the
//!    result is bit-identical for any number of threads. Problems under ~4 MFLOP run on the
//!    calling thread. Scratch lives in a per-thread buffer reused across calls.
//!
//! # Depthwise 3x3
//!
//! A depthwise layer (one input and one output channel per group) with a 3x3 filter, stride 1
//! and no dilation (any padding, output rows of at least 8 columns) skips the blocking above:
//! a 28x28 plane is only ~900 vector multiply-adds, so per-plane overhead decides its speed.
//!
//! - **Work items** are runs of whole planes of the flattened `(image, channel)` index:
//!   `⌈n·c/32⌉` planes each (at most 32), so there are at most 32 items and the split depends
//!   on the shape only. The filters are read in place (no repacking).
//! - **One padded plane per item.** The per-thread scratch holds one `(h+2·ph) × (w+2·pw)`
//!   plane, zeroed once per item; each plane then copies only its interior rows (vector
//!   copies), because the border is the same zeros for every plane.
//! - **Tiles** of 3 output rows × up to 4 vectors (12 accumulators, the 9 taps broadcast once
//!   per plane). The last vector of a row ends at `ow` and overlaps its neighbour, which
//!   computes the same values, so every store is a whole vector and every load stays inside
//!   the padded row.
//!
//! The same path computes the input gradient of such a layer for
//! [`crate::direct_backward`] (rotated filters, padding `2 − p`); its weight gradient has a
//! dedicated kernel here too (`depthwise3_weight_grad`).
//!
//! Every stride, padding, dilation and group count is supported; bias is added by
//! initializing the accumulators with it. The instruction set is chosen by [`crate::simd`].

use rayon::prelude::*;

use crate::error::{ConvError, Result};
use crate::params::{Conv2dParams, ConvGeometry};
use crate::scratch::{self, Slot};
use crate::simd::{self, LANES, Simd, SimdLevel, WithSimd};

#[cfg(target_arch = "x86_64")]
mod wide;

const OP: &str = "conv2d_direct";

/// Below this many FLOPs the work runs on the calling thread: rayon's fork/join costs more.
const PARALLEL_MIN_FLOPS: u64 = 4_000_000;

/// Whether [`conv2d_direct`] can run `g`: always (every stride, padding, dilation and group
/// count). The function exists so an algorithm dispatcher can ask every kernel the same way.
pub fn direct_supports(_g: &ConvGeometry) -> bool {
    true
}

/// Direct convolution with the [`simd::active`] instruction set. `output` is overwritten.
///
/// Slices are NCHW input `[n, c_in, h, w]`, weight `[c_out, c_in/groups, kh, kw]`, optional
/// bias `[c_out]`, output `[n, c_out, oh, ow]`; their lengths are checked.
pub fn conv2d_direct(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    conv2d_direct_with(simd::active(), g, input, weight, bias, output)
}

/// [`conv2d_direct`] with an explicit instruction set, so tests and benchmarks can run the
/// AVX2 and portable kernels side by side. Returns [`ConvError::Unsupported`] when this CPU
/// cannot run `level`.
pub fn conv2d_direct_with(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    g.check_buffers(OP, input.len(), weight.len(), bias.map(<[f32]>::len), output.len())?;
    if !level.available() {
        return Err(ConvError::Unsupported {
            op: OP,
            algo: "direct",
            msg: format!("SIMD level {level} on this CPU"),
        });
    }
    if let Some(dw) = Dw3Plan::new(g) {
        dw.run(level, input, weight, bias, output);
        return Ok(());
    }
    let plan = Plan::new(g);
    let chunk_len = plan.kc * g.oh * g.ow;
    let chunks_per_image = g.c_out / plan.kc;
    // Tap-major weights, once per call for every channel chunk:
    // packed[chunk][(c·kh·kw + tap)·ks + k], zero for `kc ≤ k < ks`.
    let w_len = plan.cpg * g.kh * g.kw;
    let mut packed = vec![0f32; chunks_per_image * w_len * plan.ks];
    for (chunk, dst) in packed.chunks_exact_mut(w_len * plan.ks).enumerate() {
        for k in 0..plan.kc {
            let src = &weight[(chunk * plan.kc + k) * w_len..][..w_len];
            for (ct, &v) in src.iter().enumerate() {
                dst[ct * plan.ks + k] = v;
            }
        }
    }
    let run = |scratch: &mut Vec<f32>, (idx, out): (usize, &mut [f32])| {
        let (b, chunk) = (idx / chunks_per_image, idx % chunks_per_image);
        let k0 = chunk * plan.kc;
        let grp = k0 / plan.kpg;
        let img_len = plan.cpg * g.h * g.w;
        let in_start = (b * g.c_in + grp * plan.cpg) * g.h * g.w;
        let kernel = Chunk {
            plan: &plan,
            input: &input[in_start..in_start + img_len],
            wp: &packed[chunk * w_len * plan.ks..][..w_len * plan.ks],
            bias: bias.map(|b| &b[k0..k0 + plan.kc]),
            out,
            scratch,
        };
        // `level` was checked above, so dispatch cannot decline.
        let _ = simd::dispatch(level, kernel);
    };
    if g.flops() < PARALLEL_MIN_FLOPS || output.len() == chunk_len {
        let chunks = output.chunks_mut(chunk_len).enumerate();
        scratch::with(Slot::Tiles, |s| chunks.for_each(|item| run(s, item)));
    } else {
        output
            .par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|item| scratch::with(Slot::Tiles, |s| run(s, item)));
    }
    Ok(())
}

/// Sizes of the depthwise 3x3 path ([`Dw3Plan::new`] says when it applies).
#[derive(Clone, Copy)]
struct Dw3Plan {
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
    /// Padded plane: `hp` rows of `wp` floats (`h + 2·ph`, `w + 2·pw`).
    hp: usize,
    wp: usize,
    /// Channels (input = output = groups).
    c: usize,
    /// Planes (image, channel) per work item; the last item may have fewer.
    per_item: usize,
    /// Planes in the batch, `n·c`.
    planes: usize,
    parallel: bool,
}

impl Dw3Plan {
    /// The plan when `g` is a depthwise 3x3 convolution with stride 1 and no dilation (one
    /// input and one output channel per group, any padding) whose output rows hold at least
    /// one whole vector; `None` sends the shape to the general blocking.
    fn new(g: &ConvGeometry) -> Option<Dw3Plan> {
        let p = g.params;
        let depthwise = g.c_in_per_group() == 1 && g.c_out_per_group() == 1;
        let three = g.kh == 3 && g.kw == 3 && p.stride == (1, 1) && p.dilation == (1, 1);
        if !depthwise || !three || g.ow < LANES {
            return None;
        }
        let (ph, pw) = p.padding;
        let planes = g.n * g.c_out;
        Some(Dw3Plan {
            h: g.h,
            w: g.w,
            ph,
            pw,
            oh: g.oh,
            ow: g.ow,
            hp: g.h + 2 * ph,
            wp: g.w + 2 * pw,
            c: g.c_out,
            // Up to 32 work items of at most 32 planes: a plane (28x28: ~900 vector FMAs) is
            // too little work to pay for a work item and a cleared padded buffer of its own.
            // Depends on the shape only, so the result is the same for any thread count.
            per_item: planes.div_ceil(32).clamp(1, 32),
            planes,
            parallel: g.flops() >= PARALLEL_MIN_FLOPS,
        })
    }

    fn run(
        &self,
        level: SimdLevel,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        output: &mut [f32],
    ) {
        let (in_plane, out_plane) = (self.h * self.w, self.oh * self.ow);
        let item_len = self.per_item * out_plane;
        let run = |scratch: &mut Vec<f32>, (idx, out): (usize, &mut [f32])| {
            let q0 = idx * self.per_item;
            let n_planes = out.len() / out_plane;
            let kernel = Dw3Item {
                p: self,
                q0,
                input: &input[q0 * in_plane..(q0 + n_planes) * in_plane],
                weight,
                bias,
                out,
                scratch,
            };
            // The caller checked `level`, so dispatch cannot decline.
            let _ = simd::dispatch(level, kernel);
        };
        if !self.parallel || self.planes <= self.per_item {
            let chunks = output.chunks_mut(item_len).enumerate();
            scratch::with(Slot::Tiles, |s| chunks.for_each(|item| run(s, item)));
        } else {
            output
                .par_chunks_mut(item_len)
                .enumerate()
                .for_each(|item| scratch::with(Slot::Tiles, |s| run(s, item)));
        }
    }
}

/// Input gradient of a depthwise 3x3 convolution with stride 1, no dilation and padding at
/// most 2, through the forward depthwise path: `dX` is the output gradient correlated with the
/// 180°-rotated filters under padding `2 − p`. Writes `grad_input` and returns `true` when the
/// shape qualifies (input rows of at least 8 columns), else returns `false` untouched.
/// `level` must be available and the buffers checked by the caller.
pub(crate) fn depthwise3_input_grad(
    level: SimdLevel,
    g: &ConvGeometry,
    weight: &[f32],
    grad_output: &[f32],
    grad_input: &mut [f32],
) -> bool {
    let p = g.params;
    let depthwise = g.c_in_per_group() == 1 && g.c_out_per_group() == 1;
    let three = g.kh == 3 && g.kw == 3 && p.stride == (1, 1) && p.dilation == (1, 1);
    if !depthwise || !three || p.padding.0 > 2 || p.padding.1 > 2 {
        return false;
    }
    let params = Conv2dParams { padding: (2 - p.padding.0, 2 - p.padding.1), ..p };
    let Ok(gt) = ConvGeometry::new([g.n, g.c_out, g.oh, g.ow], [g.c_in, 1, 3, 3], params) else {
        return false;
    };
    let Some(plan) = Dw3Plan::new(&gt) else { return false };
    if (gt.oh, gt.ow) != (g.h, g.w) || grad_input.len() != gt.output_len() {
        return false;
    }
    // Tap `t = i·3 + j` of the rotated filter is tap `8 − t` of the original.
    let rotated: Vec<f32> = weight.chunks_exact(9).flat_map(|f| f.iter().rev().copied()).collect();
    plan.run(level, grad_output, &rotated, None, grad_input);
    true
}

/// Weight gradient of a depthwise 3x3 convolution with stride 1 and no dilation (any
/// padding): `dW[k, i, j] = Σ_b Σ_{y,x} dY[b,k,y,x] · Xp[b,k, y+i, x+j]`. Work items are runs
/// of whole channels, each summing its channels over every image in order, so the result
/// needs no partials and does not depend on the thread count. Writes `grad_weight` and returns
/// `true` when the shape qualifies, else returns `false` untouched. `level` must be available
/// and the buffers checked by the caller.
pub(crate) fn depthwise3_weight_grad(
    level: SimdLevel,
    g: &ConvGeometry,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
) -> bool {
    let p = g.params;
    let depthwise = g.c_in_per_group() == 1 && g.c_out_per_group() == 1;
    let three = g.kh == 3 && g.kw == 3 && p.stride == (1, 1) && p.dilation == (1, 1);
    if !depthwise || !three || grad_weight.len() != g.c_out * 9 {
        return false;
    }
    let (ph, pw) = p.padding;
    let nv = g.ow.div_ceil(LANES);
    let plan = Dw3Grad {
        n: g.n,
        c: g.c_out,
        h: g.h,
        w: g.w,
        ph,
        pw,
        oh: g.oh,
        ow: g.ow,
        nv,
        // Whole vectors of output columns read up to column `8·nv + 1`.
        lx: (g.w + 2 * pw).max(nv * LANES + 2),
        ldy: nv * LANES,
    };
    // At most 16 items; depends on the shape only.
    let kc = g.c_out.div_ceil(16);
    let run = |scratch: &mut Vec<f32>, (idx, gw): (usize, &mut [f32])| {
        let item = Dw3GradItem { p: &plan, k0: idx * kc, input, dy: grad_output, gw, scratch };
        // The caller checked `level`, so dispatch cannot decline.
        let _ = simd::dispatch(level, item);
    };
    if g.flops() < PARALLEL_MIN_FLOPS || g.c_out <= kc {
        let chunks = grad_weight.chunks_mut(kc * 9).enumerate();
        scratch::with(Slot::Tiles, |s| chunks.for_each(|item| run(s, item)));
    } else {
        grad_weight
            .par_chunks_mut(kc * 9)
            .enumerate()
            .for_each(|item| scratch::with(Slot::Tiles, |s| run(s, item)));
    }
    true
}

/// Sizes of the depthwise 3x3 weight gradient.
struct Dw3Grad {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
    /// Vectors per output row.
    nv: usize,
    /// Row length of the padded input plane (`oh + 2` rows).
    lx: usize,
    /// Row length of the output-gradient plane copy, `8·nv` (zeros past `ow`).
    ldy: usize,
}

/// One weight-gradient work item: the filters of channels `k0..k0 + gw.len()/9`.
struct Dw3GradItem<'a> {
    p: &'a Dw3Grad,
    k0: usize,
    /// `[n, c, h, w]`.
    input: &'a [f32],
    /// `[n, c, oh, ow]`.
    dy: &'a [f32],
    /// `[channels, 3, 3]`.
    gw: &'a mut [f32],
    scratch: &'a mut Vec<f32>,
}

impl WithSimd for Dw3GradItem<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Dw3GradItem { p, k0, input, dy, gw, scratch } = self;
        let (in_plane, out_plane) = (p.h * p.w, p.oh * p.ow);
        let (x_len, dy_len) = ((p.oh + 2) * p.lx, p.oh * p.ldy);
        // Zeroed once per item: every plane rewrites the same interior positions.
        scratch.clear();
        scratch.resize(x_len + dy_len, 0.0);
        let (xb, db) = scratch.split_at_mut(x_len);
        // The farthest float the taps read: row `oh + 1`, column `8·nv + 1`.
        assert!(xb.len() == (p.oh + 2) * p.lx && p.nv * LANES + 2 <= p.lx);
        assert!(p.oh * p.ldy <= db.len());
        // Images outer, channels inner: the item's planes of one image are contiguous in
        // memory, so they stream in order. Each channel's sums run over the images in order.
        let mut accs = vec![[s.zero(); 9]; gw.len() / 9];
        for b in 0..p.n {
            for (kk, acc_k) in accs.iter_mut().enumerate() {
                // A local copy stays in registers through the loops below.
                let mut acc = *acc_k;
                let q = b * p.c + k0 + kk;
                let src = &input[q * in_plane..][..in_plane];
                for r in 0..p.h {
                    // Rows outside the `oh + 2` read by the taps are not needed.
                    if r + p.ph < p.oh + 2 {
                        let dst = &mut xb[(r + p.ph) * p.lx + p.pw..][..p.w];
                        copy_interior(s, dst, &src[r * p.w..][..p.w]);
                    }
                }
                let dsrc = &dy[q * out_plane..][..out_plane];
                for y in 0..p.oh {
                    copy_interior(s, &mut db[y * p.ldy..][..p.ow], &dsrc[y * p.ow..][..p.ow]);
                }
                let (px, pd) = (xb.as_ptr(), db.as_ptr());
                for y in 0..p.oh {
                    for v in 0..p.nv {
                        let x0 = v * LANES;
                        // SAFETY: `y·ldy + x0 + 8 ≤ oh·ldy ≤ db.len()` (asserted above;
                        // `x0 + 8 ≤ ldy`).
                        let d = unsafe { s.load_ptr(pd.add(y * p.ldy + x0)) };
                        for (t, a) in acc.iter_mut().enumerate() {
                            let (i, j) = (t / 3, t % 3);
                            // SAFETY: `(y + i)·lx + x0 + j + 8 ≤ (oh + 1)·lx + 8·nv + 2 ≤
                            // (oh + 2)·lx = xb.len()` (asserted above).
                            let xv = unsafe { s.load_ptr(px.add((y + i) * p.lx + x0 + j)) };
                            *a = s.fma(d, xv, *a);
                        }
                    }
                }
                *acc_k = acc;
            }
        }
        for (gk, acc) in gw.chunks_exact_mut(9).zip(&accs) {
            for (g, &a) in gk.iter_mut().zip(acc) {
                *g = s.to_array(a).iter().sum();
            }
        }
    }
}

/// One depthwise work item: planes `q0..` (plane `q` is channel `q mod c` of image `q / c`).
struct Dw3Item<'a> {
    p: &'a Dw3Plan,
    q0: usize,
    /// The items' input planes, `[planes, h, w]`.
    input: &'a [f32],
    /// All filters, `[c, 1, 3, 3]`.
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    /// The items' output planes, `[planes, oh, ow]`.
    out: &'a mut [f32],
    scratch: &'a mut Vec<f32>,
}

impl WithSimd for Dw3Item<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Dw3Item { p, q0, input, weight, bias, out, scratch } = self;
        // One padded plane, zeroed once per item: every plane writes the same interior
        // (rows `ph..ph+h`, columns `pw..pw+w`), so the border stays zero for all of them.
        let len = p.hp * p.wp;
        scratch.clear();
        scratch.resize(len, 0.0);
        let buf = &mut scratch[..len];
        let (in_plane, out_plane) = (p.h * p.w, p.oh * p.ow);
        // Vector columns of an output row: 0, 8, 16, … and a last vector that ends at `ow`,
        // overlapping its neighbour (same values), so every store is a whole vector.
        let nv = p.ow.div_ceil(LANES);
        let yb_main = 3;
        for (pi, o) in out.chunks_exact_mut(out_plane).enumerate() {
            let k = (q0 + pi) % p.c;
            let src = &input[pi * in_plane..][..in_plane];
            for r in 0..p.h {
                let dst = &mut buf[(r + p.ph) * p.wp + p.pw..][..p.w];
                copy_interior(s, dst, &src[r * p.w..][..p.w]);
            }
            let wk = &weight[k * 9..][..9];
            let wv: [S::V; 9] = std::array::from_fn(|t| s.splat(wk[t]));
            let bv = s.splat(bias.map_or(0.0, |b| b[k]));
            let t = Dw3Tile { buf: &*buf, wv, bv };
            let mut y = 0;
            while y < p.oh {
                let yb = yb_main.min(p.oh - y);
                let mut v0 = 0;
                while v0 < nv {
                    let xb = (nv - v0).min(4);
                    t.dispatch(s, p, o, y, v0, yb, xb);
                    v0 += xb;
                }
                y += yb;
            }
        }
    }
}

/// `dst = src` with vector copies (the last one overlapping) when the row holds a vector.
#[inline(always)]
fn copy_interior<S: Simd>(s: S, dst: &mut [f32], src: &[f32]) {
    let n = src.len();
    if n < LANES {
        // Element by element: a slice copy of unknown length is a `memcpy` call.
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v;
        }
        return;
    }
    let mut j = 0;
    while j + LANES <= n {
        s.store(s.load(&src[j..]), &mut dst[j..]);
        j += LANES;
    }
    if j < n {
        s.store(s.load(&src[n - LANES..]), &mut dst[n - LANES..]);
    }
}

/// What every depthwise register tile of one plane shares.
struct Dw3Tile<'a, S: Simd> {
    /// The padded input plane, `[hp, wp]`.
    buf: &'a [f32],
    /// The nine taps, broadcast.
    wv: [S::V; 9],
    /// The bias, broadcast.
    bv: S::V,
}

impl<S: Simd> Dw3Tile<'_, S> {
    /// Picks the monomorphized `yb × xb` tile.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn dispatch(
        &self,
        s: S,
        p: &Dw3Plan,
        out: &mut [f32],
        y: usize,
        v0: usize,
        yb: usize,
        xb: usize,
    ) {
        match (yb, xb) {
            (1, 1) => self.tile::<1, 1>(s, p, out, y, v0),
            (2, 1) => self.tile::<2, 1>(s, p, out, y, v0),
            (3, 1) => self.tile::<3, 1>(s, p, out, y, v0),
            (1, 2) => self.tile::<1, 2>(s, p, out, y, v0),
            (2, 2) => self.tile::<2, 2>(s, p, out, y, v0),
            (3, 2) => self.tile::<3, 2>(s, p, out, y, v0),
            (1, 3) => self.tile::<1, 3>(s, p, out, y, v0),
            (2, 3) => self.tile::<2, 3>(s, p, out, y, v0),
            (3, 3) => self.tile::<3, 3>(s, p, out, y, v0),
            (1, 4) => self.tile::<1, 4>(s, p, out, y, v0),
            (2, 4) => self.tile::<2, 4>(s, p, out, y, v0),
            (3, 4) => self.tile::<3, 4>(s, p, out, y, v0),
            // Not produced by the blocking above; single-row, single-vector tiles cover any.
            _ => {
                for r in 0..yb {
                    for v in 0..xb {
                        self.tile::<1, 1>(s, p, out, y + r, v0 + v);
                    }
                }
            }
        }
    }

    /// Output rows `y..y+YB` × vectors `v0..v0+XB` of one plane: `YB·XB` accumulators,
    /// nine multiply-adds each, tap order `(i, j)` row-major like the reference.
    #[inline(always)]
    fn tile<const YB: usize, const XB: usize>(
        &self,
        s: S,
        p: &Dw3Plan,
        out: &mut [f32],
        y: usize,
        v0: usize,
    ) {
        let xs: [usize; XB] = std::array::from_fn(|v| ((v0 + v) * LANES).min(p.ow - LANES));
        let mut acc = [[self.bv; XB]; YB];
        // The farthest float read: row `y + YB + 1`, column `ow − 8 + 2 + 7 = wp − 1`.
        assert!(y + YB + 2 <= p.hp && p.ow + 2 == p.wp && p.hp * p.wp <= self.buf.len());
        let pin = self.buf.as_ptr();
        for i in 0..3 {
            for j in 0..3 {
                let w = self.wv[i * 3 + j];
                for (r, a) in acc.iter_mut().enumerate() {
                    let row = (y + r + i) * p.wp + j;
                    for (av, &x) in a.iter_mut().zip(&xs) {
                        // SAFETY: `row + x + 8 ≤ (y + YB + 1)·wp + 2 + ow − 8 + 8 =
                        // (y + YB + 2)·wp ≤ hp·wp ≤ buf.len()` (asserted above).
                        let xv = unsafe { s.load_ptr(pin.add(row + x)) };
                        *av = s.fma(xv, w, *av);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let orow = &mut out[(y + r) * p.ow..][..p.ow];
            for (&av, &x) in a.iter().zip(&xs) {
                s.store(av, &mut orow[x..]);
            }
        }
    }
}

/// Sizes derived once per call.
struct Plan {
    cpg: usize,
    kpg: usize,
    /// Output channels per work item; divides `kpg`.
    kc: usize,
    /// Whether to vectorize over output channels instead of output columns.
    kpath: bool,
    /// Row stride of the repacked weights: `kc` rounded up to 8 on the channel path, else `kc`.
    ks: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    /// Padded rows per plane.
    hp: usize,
    /// Length of one stride phase of a padded row.
    lph: usize,
    /// `sw · lph`: one padded row.
    row_len: usize,
    /// Offset inside a padded row of tap `j` for output column 0.
    tap_off: Vec<usize>,
    /// Largest entry of `tap_off`.
    max_off: usize,
    /// Vectors per output row.
    nv: usize,
}

impl Plan {
    fn new(g: &ConvGeometry) -> Plan {
        let p = g.params;
        let (sh, sw) = p.stride;
        let (ph, pw) = p.padding;
        let (dh, dw) = p.dilation;
        let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
        // Split a group's output channels until there are enough work items for the threads
        // of a typical machine; depends on the shape only, never on the thread count.
        let mut kc = kpg;
        while g.n * (g.c_out / kc) < 8 && kc % 2 == 0 && kc >= 8 {
            kc /= 2;
        }
        let nv = g.ow.div_ceil(LANES);
        // A whole number of vectors, so that a stride-1 row is zeroed by vector stores.
        let lph = (g.w + 2 * pw)
            .div_ceil(sw)
            .max(nv * LANES + (g.kw - 1) * dw / sw)
            .next_multiple_of(LANES);
        let tap_off: Vec<usize> = (0..g.kw).map(|j| (j * dw % sw) * lph + j * dw / sw).collect();
        let max_off = tap_off.iter().copied().max().unwrap_or(0);
        // Lane utilization of the two vectorizations: output columns fill `ow / (8·nv)` of the
        // lanes, output channels `kc / (8·⌈kc/8⌉)`. LeNet conv2 (ow = 10, 16 channels) wastes
        // 37% of the lanes along the width and none along the channels.
        let ks_pad = kc.next_multiple_of(LANES);
        let kpath = kc >= LANES && kc * nv * LANES > g.ow * ks_pad;
        let ks = if kpath { ks_pad } else { kc };
        Plan {
            cpg,
            kpg,
            kc,
            kpath,
            ks,
            h: g.h,
            w: g.w,
            kh: g.kh,
            kw: g.kw,
            oh: g.oh,
            ow: g.ow,
            sh,
            sw,
            ph,
            pw,
            dh,
            hp: g.h + 2 * ph,
            lph,
            row_len: sw * lph,
            tap_off,
            max_off,
            nv,
        }
    }

    /// Checks the input a tile reads against the planes, once per tile instead of once per
    /// load: its end is one past the farthest float of output row `y_last`'s footprint (last
    /// channel, last kernel row, farthest tap) up to column `x_end`.
    ///
    /// # Panics
    /// When that footprint reaches past `planes_len` or past the padded row (a kernel bug).
    #[inline]
    fn check_reads(&self, planes_len: usize, y_last: usize, x_end: usize) {
        let last_in = ((self.cpg - 1) * self.hp + y_last * self.sh + (self.kh - 1) * self.dh)
            * self.row_len
            + self.max_off
            + x_end;
        assert!(last_in <= planes_len && self.max_off + x_end <= self.row_len);
    }

    /// Largest channel block for a register tile of `xb` vectors (at most 12 accumulators).
    fn kb_max(xb: usize) -> usize {
        match xb {
            1 | 2 => 6,
            3 => 4,
            _ => 3,
        }
    }
}

/// One work item: an image's output channels `k0..k0+kc` of one group.
struct Chunk<'a> {
    plan: &'a Plan,
    /// The group's input channels of the image, `[cpg, h, w]`.
    input: &'a [f32],
    /// The chunk's filters, tap-major: `[cpg·kh·kw][ks]`.
    wp: &'a [f32],
    bias: Option<&'a [f32]>,
    /// `[kc, oh, ow]`.
    out: &'a mut [f32],
    scratch: &'a mut Vec<f32>,
}

impl WithSimd for Chunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Chunk { plan: p, input, wp, bias, out, scratch } = self;
        let plane_len = p.hp * p.row_len;
        let planes_len = p.cpg * plane_len;
        if p.sw == 1 {
            // Reused without clearing: every float outside the copied rows is zeroed below.
            if scratch.len() < planes_len {
                scratch.resize(planes_len, 0.0);
            }
        } else {
            scratch.clear();
            scratch.resize(planes_len, 0.0);
        }
        let planes = &mut scratch[..planes_len];

        // Padded, phase-split copy of the input planes.
        for c in 0..p.cpg {
            let pl = &mut planes[c * plane_len..][..plane_len];
            if p.sw == 1 {
                pl[..p.ph * p.row_len].fill(0.0);
                pl[(p.ph + p.h) * p.row_len..].fill(0.0);
            }
            for r in 0..p.h {
                let src = &input[(c * p.h + r) * p.w..][..p.w];
                let row = &mut pl[(r + p.ph) * p.row_len..][..p.row_len];
                if p.sw == 1 {
                    copy_row(s, row, src, p.pw);
                } else {
                    for (x, &v) in src.iter().enumerate() {
                        let xp = x + p.pw;
                        row[(xp % p.sw) * p.lph + xp / p.sw] = v;
                    }
                }
            }
        }
        let planes = &*planes;

        let xb_main = p.nv.min(4);
        if p.kpath {
            #[cfg(target_arch = "x86_64")]
            if let Some(w) = s.avx512() {
                // SAFETY: the token `w` proves the CPU has the features `kpath` is compiled for.
                unsafe { wide::kpath(w, p, planes, wp, bias, out) };
                return;
            }
            // Vectorized over output channels: 16 channels × 6 columns or 8 × 8.
            for y in 0..p.oh {
                let mut k0 = 0;
                while k0 < p.kc {
                    let kv = if p.kc - k0 > LANES { 2 } else { 1 };
                    let xp_main = if kv == 2 { 6 } else { 8 };
                    let mut x0 = 0;
                    while x0 < p.ow {
                        let xp = xp_main.min(p.ow - x0);
                        let t = TileAt { k0, y, xv0: x0 };
                        kpath_dispatch(s, p, planes, wp, bias, out, t, kv, xp);
                        x0 += xp;
                    }
                    k0 += kv * LANES;
                }
            }
            return;
        }
        if p.kc == 1 {
            // One output channel (depthwise other than stride-1 3x3): block over output rows
            // instead of channels.
            let yb_main = (12 / xb_main).min(3);
            let mut y = 0;
            while y < p.oh {
                let yb = yb_main.min(p.oh - y);
                let mut xv0 = 0;
                while xv0 < p.nv {
                    let xb = xb_main.min(p.nv - xv0);
                    rows_dispatch(s, p, planes, wp, bias, out, TileAt { k0: 0, y, xv0 }, yb, xb);
                    xv0 += xb;
                }
                y += yb;
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(w) = s.avx512() {
            // SAFETY: the token `w` proves the CPU has the features `width` is compiled for.
            unsafe { wide::width(w, p, planes, wp, bias, out) };
            return;
        }
        let kb_main = Plan::kb_max(xb_main);
        for y in 0..p.oh {
            let mut k0 = 0;
            while k0 < p.kc {
                let kb = kb_main.min(p.kc - k0);
                let mut xv0 = 0;
                while xv0 < p.nv {
                    let xb = xb_main.min(p.nv - xv0);
                    let t = TileAt { k0, y, xv0 };
                    tile_dispatch(s, p, planes, wp, bias, out, t, kb, xb);
                    xv0 += xb;
                }
                k0 += kb;
            }
        }
    }
}

/// `row = [0; pad] ++ src ++ [0; …]` for a row whose length is a multiple of 8, with vector
/// stores: rows are short (28 floats for a 28x28 plane), and three `memset`/`memcpy` calls per
/// row cost more than the depthwise kernel's arithmetic on it.
#[inline(always)]
fn copy_row<S: Simd>(s: S, row: &mut [f32], src: &[f32], pad: usize) {
    let z = s.zero();
    for v in row.chunks_exact_mut(LANES) {
        s.store(z, v);
    }
    copy_interior(s, &mut row[pad..pad + src.len()], src);
}

/// Where a register tile sits: output channels from `k0`, output row `y`, vectors from `xv0`.
#[derive(Clone, Copy)]
struct TileAt {
    k0: usize,
    y: usize,
    xv0: usize,
}

/// Picks the monomorphized micro-kernel for a `kb × xb` tile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_dispatch<S: Simd>(
    s: S,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    t: TileAt,
    kb: usize,
    xb: usize,
) {
    match (kb, xb) {
        (1, 1) => tile::<S, 1, 1>(s, p, planes, wp, bias, out, t),
        (2, 1) => tile::<S, 2, 1>(s, p, planes, wp, bias, out, t),
        (3, 1) => tile::<S, 3, 1>(s, p, planes, wp, bias, out, t),
        (4, 1) => tile::<S, 4, 1>(s, p, planes, wp, bias, out, t),
        (5, 1) => tile::<S, 5, 1>(s, p, planes, wp, bias, out, t),
        (6, 1) => tile::<S, 6, 1>(s, p, planes, wp, bias, out, t),
        (1, 2) => tile::<S, 1, 2>(s, p, planes, wp, bias, out, t),
        (2, 2) => tile::<S, 2, 2>(s, p, planes, wp, bias, out, t),
        (3, 2) => tile::<S, 3, 2>(s, p, planes, wp, bias, out, t),
        (4, 2) => tile::<S, 4, 2>(s, p, planes, wp, bias, out, t),
        (5, 2) => tile::<S, 5, 2>(s, p, planes, wp, bias, out, t),
        (6, 2) => tile::<S, 6, 2>(s, p, planes, wp, bias, out, t),
        (1, 3) => tile::<S, 1, 3>(s, p, planes, wp, bias, out, t),
        (2, 3) => tile::<S, 2, 3>(s, p, planes, wp, bias, out, t),
        (3, 3) => tile::<S, 3, 3>(s, p, planes, wp, bias, out, t),
        (4, 3) => tile::<S, 4, 3>(s, p, planes, wp, bias, out, t),
        (1, 4) => tile::<S, 1, 4>(s, p, planes, wp, bias, out, t),
        (2, 4) => tile::<S, 2, 4>(s, p, planes, wp, bias, out, t),
        (3, 4) => tile::<S, 3, 4>(s, p, planes, wp, bias, out, t),
        // Not produced by the blocking above; single-vector tiles cover any shape.
        _ => {
            for k in 0..kb {
                for v in 0..xb {
                    let t1 = TileAt { k0: t.k0 + k, y: t.y, xv0: t.xv0 + v };
                    tile::<S, 1, 1>(s, p, planes, wp, bias, out, t1);
                }
            }
        }
    }
}

/// Picks the monomorphized channel-vectorized micro-kernel for `kv` vectors of channels and
/// `xp` output columns (`t.xv0` is the first column here, not a vector index).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn kpath_dispatch<S: Simd>(
    s: S,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    t: TileAt,
    kv: usize,
    xp: usize,
) {
    match (kv, xp) {
        (2, 1) => tile_k::<S, 2, 1>(s, p, planes, wp, bias, out, t),
        (2, 2) => tile_k::<S, 2, 2>(s, p, planes, wp, bias, out, t),
        (2, 3) => tile_k::<S, 2, 3>(s, p, planes, wp, bias, out, t),
        (2, 4) => tile_k::<S, 2, 4>(s, p, planes, wp, bias, out, t),
        (2, 5) => tile_k::<S, 2, 5>(s, p, planes, wp, bias, out, t),
        (2, 6) => tile_k::<S, 2, 6>(s, p, planes, wp, bias, out, t),
        (1, 1) => tile_k::<S, 1, 1>(s, p, planes, wp, bias, out, t),
        (1, 2) => tile_k::<S, 1, 2>(s, p, planes, wp, bias, out, t),
        (1, 3) => tile_k::<S, 1, 3>(s, p, planes, wp, bias, out, t),
        (1, 4) => tile_k::<S, 1, 4>(s, p, planes, wp, bias, out, t),
        (1, 5) => tile_k::<S, 1, 5>(s, p, planes, wp, bias, out, t),
        (1, 6) => tile_k::<S, 1, 6>(s, p, planes, wp, bias, out, t),
        (1, 7) => tile_k::<S, 1, 7>(s, p, planes, wp, bias, out, t),
        (1, 8) => tile_k::<S, 1, 8>(s, p, planes, wp, bias, out, t),
        // Not produced by the blocking above; one column at a time covers any shape.
        _ => {
            for x in 0..xp {
                for v in 0..kv {
                    let t1 = TileAt { k0: t.k0 + v * LANES, y: t.y, xv0: t.xv0 + x };
                    tile_k::<S, 1, 1>(s, p, planes, wp, bias, out, t1);
                }
            }
        }
    }
}

/// Channel-vectorized micro-kernel: `KV·8` output channels from `k0` × `XP` output columns
/// from `t.xv0` of row `y`. Per tap it loads `KV` weight vectors and broadcasts `XP` input
/// values. The results are scattered lane by lane into the channel planes; that costs one
/// scalar store per output against `C/g·R·S` multiply-adds, so it is used where the sum is
/// long and the rows are short.
#[inline(always)]
fn tile_k<S: Simd, const KV: usize, const XP: usize>(
    s: S,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    t: TileAt,
) {
    let TileAt { k0, y, xv0: x0 } = t;
    let mut acc = [[s.zero(); KV]; XP];
    if let Some(b) = bias {
        let mut bl = [0f32; 2 * LANES];
        for (l, bv) in bl.iter_mut().enumerate().take(KV * LANES) {
            if k0 + l < p.kc {
                *bv = b[k0 + l];
            }
        }
        for a in acc.iter_mut() {
            for (v, av) in a.iter_mut().enumerate() {
                *av = s.load(&bl[v * LANES..]);
            }
        }
    }
    p.check_reads(planes.len(), y, x0 + XP);
    assert!(k0 + KV * LANES <= p.ks && (p.cpg * p.kh * p.kw - 1) * p.ks + p.ks <= wp.len());
    let (pin, pw) = (planes.as_ptr(), wp.as_ptr());
    for c in 0..p.cpg {
        for i in 0..p.kh {
            let row = (c * p.hp + y * p.sh + i * p.dh) * p.row_len + x0;
            let wrow = (c * p.kh + i) * p.kw * p.ks + k0;
            for (j, &off) in p.tap_off.iter().enumerate() {
                let mut wv = [s.zero(); KV];
                for (v, w) in wv.iter_mut().enumerate() {
                    // SAFETY: `wrow + j·ks + v·8 + 8 ≤ (cpg·kh·kw − 1)·ks + ks ≤ wp.len()`
                    // because `k0 + KV·8 ≤ ks` (asserted above).
                    *w = unsafe { s.load_ptr(pw.add(wrow + j * p.ks + v * LANES)) };
                }
                for (x, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `row + off + x` is below the end `check_reads` asserted above.
                    let xb = s.splat(unsafe { *pin.add(row + off + x) });
                    for (av, &w) in a.iter_mut().zip(&wv) {
                        *av = s.fma(xb, w, *av);
                    }
                }
            }
        }
    }
    let plane = p.oh * p.ow;
    for (x, a) in acc.iter().enumerate() {
        for (v, &av) in a.iter().enumerate() {
            let lanes = s.to_array(av);
            for (l, &val) in lanes.iter().enumerate() {
                let k = k0 + v * LANES + l;
                if k < p.kc {
                    out[k * plane + y * p.ow + x0 + x] = val;
                }
            }
        }
    }
}

/// Picks the monomorphized single-channel micro-kernel for a `yb × xb` tile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_dispatch<S: Simd>(
    s: S,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    t: TileAt,
    yb: usize,
    xb: usize,
) {
    match (yb, xb) {
        (1, 1) => tile_rows::<S, 1, 1>(s, p, planes, wp, bias, out, t),
        (2, 1) => tile_rows::<S, 2, 1>(s, p, planes, wp, bias, out, t),
        (3, 1) => tile_rows::<S, 3, 1>(s, p, planes, wp, bias, out, t),
        (1, 2) => tile_rows::<S, 1, 2>(s, p, planes, wp, bias, out, t),
        (2, 2) => tile_rows::<S, 2, 2>(s, p, planes, wp, bias, out, t),
        (3, 2) => tile_rows::<S, 3, 2>(s, p, planes, wp, bias, out, t),
        (1, 3) => tile_rows::<S, 1, 3>(s, p, planes, wp, bias, out, t),
        (2, 3) => tile_rows::<S, 2, 3>(s, p, planes, wp, bias, out, t),
        (3, 3) => tile_rows::<S, 3, 3>(s, p, planes, wp, bias, out, t),
        (1, 4) => tile_rows::<S, 1, 4>(s, p, planes, wp, bias, out, t),
        (2, 4) => tile_rows::<S, 2, 4>(s, p, planes, wp, bias, out, t),
        (3, 4) => tile_rows::<S, 3, 4>(s, p, planes, wp, bias, out, t),
        // Not produced by the blocking above; single-row tiles cover any shape.
        _ => {
            for r in 0..yb {
                let t1 = TileAt { y: t.y + r, ..t };
                tile_dispatch(s, p, planes, wp, bias, out, t1, 1, xb);
            }
        }
    }
}

/// Single-channel micro-kernel (`kc == 1`, e.g. depthwise): `YB` output rows × `XB·8` output
/// columns, so that `YB·XB` independent accumulator chains hide the FMA latency.
#[inline(always)]
fn tile_rows<S: Simd, const YB: usize, const XB: usize>(
    s: S,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    t: TileAt,
) {
    let TileAt { y, xv0, .. } = t;
    let mut acc = [[s.splat(bias.map_or(0.0, |b| b[0])); XB]; YB];
    let x0 = xv0 * LANES;
    p.check_reads(planes.len(), y + YB - 1, x0 + XB * LANES);
    assert!(p.kc == 1 && p.cpg * p.kh * p.kw <= wp.len());
    let (pin, pw) = (planes.as_ptr(), wp.as_ptr());
    for c in 0..p.cpg {
        for i in 0..p.kh {
            let wrow = (c * p.kh + i) * p.kw;
            for (j, &off) in p.tap_off.iter().enumerate() {
                // SAFETY: `wrow + j < cpg·kh·kw ≤ wp.len()` (asserted above, kc = 1).
                let wv = s.splat(unsafe { *pw.add(wrow + j) });
                for (r, a) in acc.iter_mut().enumerate() {
                    let row = (c * p.hp + (y + r) * p.sh + i * p.dh) * p.row_len + x0 + off;
                    for (v, av) in a.iter_mut().enumerate() {
                        // SAFETY: `row + v·8 + 8` is at most the end `check_reads` asserted above:
                        // every index is at most the one it was given.
                        let xv = unsafe { s.load_ptr(pin.add(row + v * LANES)) };
                        *av = s.fma(xv, wv, *av);
                    }
                }
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        store_row(s, p, out, y + r, x0, a);
    }
}

/// Stores the vectors `a` into row `y` of the output plane that starts `out`, from column
/// `x0`; the last vector may be partial.
#[inline(always)]
fn store_row<S: Simd>(s: S, p: &Plan, out: &mut [f32], y: usize, x0: usize, a: &[S::V]) {
    let orow = &mut out[y * p.ow..][..p.ow];
    for (v, &av) in a.iter().enumerate() {
        let x = x0 + v * LANES;
        if x + LANES <= p.ow {
            s.store(av, &mut orow[x..]);
        } else {
            let lanes = s.to_array(av);
            orow[x..].copy_from_slice(&lanes[..p.ow - x]);
        }
    }
}

/// The micro-kernel: `KB` output channels × `XB·8` output columns of one output row.
#[inline(always)]
fn tile<S: Simd, const KB: usize, const XB: usize>(
    s: S,
    p: &Plan,
    planes: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    t: TileAt,
) {
    let TileAt { k0, y, xv0 } = t;
    let mut acc = [[s.zero(); XB]; KB];
    if let Some(b) = bias {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = [s.splat(b[k0 + k]); XB];
        }
    }
    let x0 = xv0 * LANES;
    // One bounds check per tile instead of one per load: the farthest float any load below
    // reads (last channel, last kernel row, farthest tap, last vector) and the last weight.
    p.check_reads(planes.len(), y, x0 + XB * LANES);
    assert!((p.cpg * p.kh * p.kw - 1) * p.ks + k0 + KB <= wp.len());
    let (pin, pw) = (planes.as_ptr(), wp.as_ptr());
    for c in 0..p.cpg {
        for i in 0..p.kh {
            let row = (c * p.hp + y * p.sh + i * p.dh) * p.row_len + x0;
            let wrow = (c * p.kh + i) * p.kw * p.ks + k0;
            for (j, &off) in p.tap_off.iter().enumerate() {
                let mut xs = [s.zero(); XB];
                for (v, x) in xs.iter_mut().enumerate() {
                    // SAFETY: `row + off + v·8 + 8` is at most the end `check_reads` asserted
                    // above: `c`, `i`, `off` and `v` are at most the values it was given.
                    *x = unsafe { s.load_ptr(pin.add(row + off + v * LANES)) };
                }
                for (kk, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `wrow + j·ks + kk < (cpg·kh·kw − 1)·ks + k0 + KB ≤ wp.len()`
                    // (asserted above).
                    let wv = s.splat(unsafe { *pw.add(wrow + j * p.ks + kk) });
                    for (av, &xv) in a.iter_mut().zip(&xs) {
                        *av = s.fma(xv, wv, *av);
                    }
                }
            }
        }
    }
    for (k, a) in acc.iter().enumerate() {
        store_row(s, p, &mut out[(k0 + k) * p.oh * p.ow..], y, x0, a);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Conv2dParams, conv2d_naive};

    #[test]
    fn small_strided_dilated_grouped_matches_naive() {
        let p = Conv2dParams { stride: (2, 3), padding: (1, 2), dilation: (2, 1), groups: 2 };
        let g = ConvGeometry::new([2, 4, 11, 13], [6, 2, 3, 2], p).unwrap();
        let input: Vec<f32> = (0..g.input_len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let weight: Vec<f32> = (0..g.weight_len()).map(|i| (i % 5) as f32 - 2.0).collect();
        let bias: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut want = vec![0.0; g.output_len()];
        conv2d_naive(&g, &input, &weight, Some(&bias), &mut want).unwrap();
        for level in SimdLevel::ALL {
            if !level.available() {
                eprintln!("skipping {level}: not available on this CPU");
                continue;
            }
            let mut got = vec![f32::NAN; g.output_len()];
            conv2d_direct_with(level, &g, &input, &weight, Some(&bias), &mut got).unwrap();
            // Small integers: every sum is exact.
            assert_eq!(got, want, "{level}");
        }
    }

    /// The depthwise 3x3 path: every padding up to 3, widths around whole vectors, 1–4 rows,
    /// with and without bias, on both instruction sets; small integers, so sums are exact.
    /// The SIMD levels add each output's products in the same order, fused, so they agree bit
    /// for bit on real-valued data: the channel path (16 and 24 channels: a masked tail of
    /// 8 at AVX-512; rows of 10 and 13 columns) and the width path (rows of 28 and 67
    /// columns: 2 and 5 vectors of 16, the last masked).
    #[test]
    fn simd_levels_are_bit_identical() {
        let simd: Vec<SimdLevel> = SimdLevel::available_levels()
            .into_iter()
            .filter(|&l| l != SimdLevel::Fallback)
            .collect();
        if simd.len() < 2 {
            eprintln!("skipping: fewer than two SIMD levels on this CPU");
            return;
        }
        let p = Conv2dParams::default();
        for (input, weight) in [
            ([8, 6, 14, 14], [16, 6, 5, 5]),
            ([8, 5, 15, 15], [24, 5, 3, 3]),
            ([8, 3, 17, 15], [40, 3, 3, 3]),
            ([2, 1, 32, 32], [6, 1, 5, 5]),
            ([2, 4, 40, 69], [10, 4, 3, 3]),
        ] {
            let g = ConvGeometry::new(input, weight, p).unwrap();
            let x: Vec<f32> =
                (0..g.input_len()).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
            let w: Vec<f32> =
                (0..g.weight_len()).map(|i| ((i * 53) % 97) as f32 / 97.0 - 0.5).collect();
            let b: Vec<f32> = (0..g.c_out).map(|i| i as f32 / 7.0).collect();
            let mut want = vec![0.0; g.output_len()];
            conv2d_naive(&g, &x, &w, Some(&b), &mut want).unwrap();
            let runs: Vec<Vec<f32>> = simd
                .iter()
                .map(|&level| {
                    let mut got = vec![f32::NAN; g.output_len()];
                    conv2d_direct_with(level, &g, &x, &w, Some(&b), &mut got).unwrap();
                    got
                })
                .collect();
            for (a, e) in runs[0].iter().zip(&want) {
                assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{input:?}: {a} vs {e}");
            }
            for (level, got) in simd.iter().zip(&runs).skip(1) {
                assert_eq!(got, &runs[0], "{level} differs from {} on {input:?}", simd[0]);
            }
        }
    }

    #[test]
    fn depthwise3_matches_naive() {
        for (pad, h, w) in (0..=3).flat_map(|p| {
            [(1, 9), (2, 8), (4, 10), (7, 15), (5, 16), (3, 17), (6, 28), (9, 37)]
                .map(|(h, w)| (p, h, w))
        }) {
            let p = Conv2dParams {
                padding: (pad, pad.saturating_sub(1)),
                groups: 3,
                ..Default::default()
            };
            let Ok(g) = ConvGeometry::new([2, 3, h, w], [3, 1, 3, 3], p) else { continue };
            let input: Vec<f32> = (0..g.input_len()).map(|i| (i * 7 % 11) as f32 - 5.0).collect();
            let weight: Vec<f32> = (0..g.weight_len()).map(|i| (i % 5) as f32 - 2.0).collect();
            let bias: Vec<f32> = (0..3).map(|i| i as f32 - 1.0).collect();
            for b in [None, Some(&bias[..])] {
                let mut want = vec![0.0; g.output_len()];
                conv2d_naive(&g, &input, &weight, b, &mut want).unwrap();
                for level in SimdLevel::ALL {
                    if !level.available() {
                        continue;
                    }
                    let mut got = vec![f32::NAN; g.output_len()];
                    conv2d_direct_with(level, &g, &input, &weight, b, &mut got).unwrap();
                    assert_eq!(got, want, "{level} {g:?}");
                }
            }
        }
    }
}
