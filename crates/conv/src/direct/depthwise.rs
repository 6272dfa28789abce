//! The depthwise 3x3 path: whole planes per work item, one padded plane, tiles of up to 3
//! rows × 4 vectors (at AVX-512, rows of 16 columns or more run 16-lane vectors in tiles of up
//! to 6 rows × 2 vectors or 3 × 4, with the AVX2 level's bits).

use rayon::prelude::*;

use super::PARALLEL_MIN_FLOPS;
use crate::params::{Conv2dParams, ConvGeometry};
use crate::scratch::{self, Slot};
use crate::simd::{self, LANES, Lanes, Simd, SimdLevel, WithSimd, copy_interior, wide_pairs};

/// Sizes of the depthwise 3x3 path ([`Dw3Plan::new`] says when it applies).
#[derive(Clone, Copy)]
pub(super) struct Dw3Plan {
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
    pub(super) fn new(g: &ConvGeometry) -> Option<Dw3Plan> {
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

    pub(super) fn run(
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
pub(super) struct Dw3Grad {
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
pub(super) struct Dw3GradItem<'a> {
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
pub(super) struct Dw3Item<'a> {
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
        for (pi, o) in out.chunks_exact_mut(out_plane).enumerate() {
            let k = (q0 + pi) % p.c;
            let src = &input[pi * in_plane..][..in_plane];
            for r in 0..p.h {
                let dst = &mut buf[(r + p.ph) * p.wp + p.pw..][..p.w];
                copy_interior(s, dst, &src[r * p.w..][..p.w]);
            }
            let wk: &[f32; 9] = weight[k * 9..][..9].try_into().expect("nine taps");
            let b = bias.map_or(0.0, |b| b[k]);
            // At AVX-512 a row of at least 16 columns runs 16-lane vectors: every lane is one
            // output pixel, the bias plus its nine taps in order at either width, so the bits
            // are the AVX2 level's.
            if wide_pairs::<S>() && p.ow >= 2 * LANES {
                Dw3Tile::new(s.wide(), &*buf, wk, b).plane(p, o);
            } else {
                Dw3Tile::new(s, &*buf, wk, b).plane(p, o);
            }
        }
    }
}

/// What every depthwise register tile of one plane shares, at the vector width of `L`.
pub(super) struct Dw3Tile<'a, L: Lanes> {
    l: L,
    /// The padded input plane, `[hp, wp]`.
    buf: &'a [f32],
    /// The nine taps, broadcast.
    wv: [L::V; 9],
    /// The bias, broadcast.
    bv: L::V,
}

impl<'a, L: Lanes> Dw3Tile<'a, L> {
    #[inline(always)]
    fn new(l: L, buf: &'a [f32], taps: &[f32; 9], bias: f32) -> Self {
        // A loop, not `map`: a closure body is compiled without the caller's target features.
        let mut wv = [l.zero(); 9];
        for (v, &t) in wv.iter_mut().zip(taps) {
            *v = l.splat(t);
        }
        Dw3Tile { l, buf, wv, bv: l.splat(bias) }
    }

    /// The whole output plane `out` (`[oh, ow]`, `ow ≥ L::N`): tiles of up to [`Self::rows`]
    /// output rows × up to 4 vectors. Vector columns of a row are 0, N, 2N, … and a last
    /// vector that ends at `ow`, overlapping its neighbour (same values), so every store is a
    /// whole vector.
    #[inline(always)]
    fn plane(&self, p: &Dw3Plan, out: &mut [f32]) {
        let nv = p.ow.div_ceil(L::N);
        let xb_main = nv.min(4);
        let yb_main = Self::rows(xb_main);
        let mut y = 0;
        while y < p.oh {
            let yb = yb_main.min(p.oh - y);
            let mut v0 = 0;
            while v0 < nv {
                let xb = xb_main.min(nv - v0);
                self.dispatch(p, out, y, v0, yb, xb);
                v0 += xb;
            }
            y += yb;
        }
    }

    /// Output rows per tile for tiles `xb` vectors wide: 3 (up to 12 accumulators in the 16
    /// registers of AVX2); at AVX-512's 16 lanes, 6 rows when a row is one or two vectors
    /// (28 columns: 12 accumulators of the 32 registers instead of 6, enough independent
    /// chains to cover the multiply-add latency).
    #[inline(always)]
    fn rows(xb: usize) -> usize {
        if L::N > LANES && xb <= 2 { 6 } else { 3 }
    }

    /// Picks the monomorphized `yb × xb` tile.
    #[inline(always)]
    fn dispatch(&self, p: &Dw3Plan, out: &mut [f32], y: usize, v0: usize, yb: usize, xb: usize) {
        tile_table! {
            (yb, xb),
            self.tile(p, out, y, v0),
            [
                (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1),
                (1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2),
                (1, 3), (2, 3), (3, 3), (1, 4), (2, 4), (3, 4),
            ],
            // Not produced by the blocking above; single-row, single-vector tiles cover any.
            {
                for r in 0..yb {
                    for v in 0..xb {
                        self.tile::<1, 1>(p, out, y + r, v0 + v);
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
        p: &Dw3Plan,
        out: &mut [f32],
        y: usize,
        v0: usize,
    ) {
        let (l, n) = (self.l, L::N);
        let xs: [usize; XB] = std::array::from_fn(|v| ((v0 + v) * n).min(p.ow - n));
        let mut acc = [[self.bv; XB]; YB];
        // The farthest float read: row `y + YB + 1`, column `ow − N + 2 + N − 1 = wp − 1`.
        assert!(y + YB + 2 <= p.hp && p.ow + 2 == p.wp && p.hp * p.wp <= self.buf.len());
        let pin = self.buf.as_ptr();
        for i in 0..3 {
            for j in 0..3 {
                let w = self.wv[i * 3 + j];
                for (r, a) in acc.iter_mut().enumerate() {
                    let row = (y + r + i) * p.wp + j;
                    for (av, &x) in a.iter_mut().zip(&xs) {
                        // SAFETY: `row + x + N ≤ (y + YB + 1)·wp + 2 + ow − N + N =
                        // (y + YB + 2)·wp ≤ hp·wp ≤ buf.len()` (asserted above).
                        let xv = unsafe { l.load_ptr(pin.add(row + x)) };
                        *av = l.fma(xv, w, *av);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let orow = &mut out[(y + r) * p.ow..][..p.ow];
            for (&av, &x) in a.iter().zip(&xs) {
                l.store(av, &mut orow[x..]);
            }
        }
    }
}
