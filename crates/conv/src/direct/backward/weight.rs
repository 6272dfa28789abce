//! The weight-gradient register tiles.

use super::Plan;
use crate::simd::{LANES, Lanes, Simd, wide_pairs};

/// Adds one image's weight gradient to `gwt` (`[grp][c·taps + t][k]`, output channels
/// innermost) with [`wk_tile`]: a matrix product of the column matrix, read in place from the
/// padded planes by broadcasts, and the pixel-major output gradient, read in vectors of
/// output channels. No lane reduction and no padding lanes: every output pixel is one step.
#[inline(always)]
pub(super) fn weight_grad_image_kvec<S: Simd>(
    s: S,
    p: &Plan<'_>,
    xp: &[f32],
    dyt: &[f32],
    gwt: &mut [f32],
) {
    let rows = p.cpg * p.taps();
    let ohw = p.oh * p.ow;
    for grp in 0..p.groups {
        let x = &xp[grp * p.cpg * p.xp_plane..];
        let dy = &dyt[grp * ohw * p.kpg..][..ohw * p.kpg];
        let acc = &mut gwt[grp * rows * p.kpg..][..rows * p.kpg];
        let mut k0 = 0;
        while k0 < p.kpg {
            let kv = if p.kpg - k0 >= 2 * LANES { 2 } else { 1 };
            // At AVX-512 two 8-lane vectors of channels are one 16-lane one, and a tile holds
            // twice the rows (see `wk_dispatch`).
            let mb_main = if kv == 2 && wide_pairs::<S>() { 12 } else { 12 / kv };
            let mut m0 = 0;
            while m0 < rows {
                let mb = mb_main.min(rows - m0);
                wk_dispatch(s, p, WeightReads { x, dy }, acc, WkAt { m0, k0 }, mb, kv);
                m0 += mb;
            }
            k0 += kv * LANES;
        }
    }
}

/// What a weight-gradient register tile reads: the padded input planes `x` and the output
/// gradient `dy` (pixel-major for [`wk_tile`], planes for [`wg_tile`]).
#[derive(Clone, Copy)]
pub(super) struct WeightReads<'a> {
    x: &'a [f32],
    dy: &'a [f32],
}

/// A [`wk_tile`]: rows `m0..` (input channel × tap) and output channels `k0..` of one group.
#[derive(Clone, Copy)]
pub(super) struct WkAt {
    m0: usize,
    k0: usize,
}

/// Picks the monomorphized [`wk_tile`] for `mb` rows × `kv` 8-lane vectors of output
/// channels.
///
/// Where the level's wide vectors hold two 8-lane ones (AVX-512), a tile of two vectors runs
/// as one 16-lane vector, for up to 12 rows: each element is still its own sum over the pixels
/// in order, so the same bits as the 8-lane tiles, with half the multiply-adds.
#[inline(always)]
pub(super) fn wk_dispatch<S: Simd>(
    s: S,
    p: &Plan<'_>,
    r: WeightReads<'_>,
    acc: &mut [f32],
    at: WkAt,
    mb: usize,
    kv: usize,
) {
    if kv == 2 && wide_pairs::<S>() {
        let w = s.wide();
        tile_table! {
            (mb, 1),
            wk_tile::<S::Wide>(w, p, r, acc, at),
            [
                (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1),
                (7, 1), (8, 1), (9, 1), (10, 1), (11, 1), (12, 1),
            ],
            unreachable!("direct backward: no {mb}-row wide weight tile")
        }
        return;
    }
    tile_table! {
        (mb, kv),
        wk_tile::<S>(s, p, r, acc, at),
        [
            (1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2),
            (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1),
            (7, 1), (8, 1), (9, 1), (10, 1), (11, 1), (12, 1),
        ],
        // Not produced by the blocking above; one row and one vector at a time covers it.
        {
            for mm in 0..mb {
                for v in 0..kv {
                    let one = WkAt { m0: at.m0 + mm, k0: at.k0 + v * LANES };
                    wk_tile::<S, 1, 1>(s, p, r, acc, one);
                }
            }
        }
    }
}

/// Weight-gradient micro-kernel with output channels in vectors: `MB` rows `m = c·taps + t`
/// × `KV·N` output channels (`N` = [`Lanes::N`]), accumulated in `acc` (`[m][k]`) over one
/// image's output pixels. Each pixel loads `KV` gradient vectors and broadcasts `MB` input
/// floats (the column matrix's entries, read in place at `m_offs[m] + y·x_row + x`) for
/// `MB·KV` fused multiply-adds.
#[inline(always)]
pub(super) fn wk_tile<L: Lanes, const MB: usize, const KV: usize>(
    s: L,
    p: &Plan<'_>,
    r: WeightReads<'_>,
    acc: &mut [f32],
    at: WkAt,
) {
    let WeightReads { x, dy } = r;
    let WkAt { m0, k0 } = at;
    let kpg = p.kpg;
    let mut a = [[s.zero(); KV]; MB];
    for (mm, row) in a.iter_mut().enumerate() {
        for (v, av) in row.iter_mut().enumerate() {
            *av = s.load(&acc[(m0 + mm) * kpg + k0 + v * L::N..]);
        }
    }
    let mut off = [0usize; MB];
    off.copy_from_slice(&p.m_offs[m0..m0 + MB]);
    let max_off = off.iter().copied().max().unwrap_or(0);
    // One bounds check per tile: the farthest input float and gradient vector read below.
    assert!(p.oh > 0 && p.ow > 0);
    assert!(max_off + (p.oh - 1) * p.x_row + p.ow <= x.len());
    assert!(k0 + KV * L::N <= kpg && p.oh * p.ow * kpg <= dy.len());
    let (px, pd) = (x.as_ptr(), dy.as_ptr());
    for y in 0..p.oh {
        let xr = y * p.x_row;
        let dr = y * p.ow * kpg + k0;
        for xo in 0..p.ow {
            let mut d = [s.zero(); KV];
            for (v, dv) in d.iter_mut().enumerate() {
                // SAFETY: `dr + xo·kpg + (v + 1)·N ≤ (oh·ow − 1)·kpg + k0 + KV·N ≤ oh·ow·kpg ≤
                // dy.len()` (asserted above).
                *dv = unsafe { s.load_ptr(pd.add(dr + xo * kpg + v * L::N)) };
            }
            for (row, &o) in a.iter_mut().zip(&off) {
                // SAFETY: `o + xr + xo < max_off + (oh−1)·x_row + ow ≤ x.len()` (asserted
                // above).
                let xv = s.splat(unsafe { *px.add(o + xr + xo) });
                for (av, &dv) in row.iter_mut().zip(&d) {
                    *av = s.fma(dv, xv, *av);
                }
            }
        }
    }
    for (mm, row) in a.iter().enumerate() {
        for (v, &av) in row.iter().enumerate() {
            s.store(av, &mut acc[(m0 + mm) * kpg + k0 + v * L::N..]);
        }
    }
}

/// Adds one image's weight gradient to the lane-wise accumulators `gwv` (8 floats per
/// weight element).
#[inline(always)]
pub(super) fn weight_grad_image<S: Simd>(
    s: S,
    p: &Plan<'_>,
    xp: &[f32],
    dyf: &[f32],
    gwv: &mut [f32],
) {
    let taps = p.taps();
    // Channel blocks that divide the group's channels, so that no thin tail block runs.
    let kb_main = if p.kpg.is_multiple_of(3) {
        3
    } else if p.kpg.is_multiple_of(2) {
        2
    } else {
        p.kpg.min(3)
    };
    let tb_main = taps.min(12 / kb_main);
    // At AVX-512, pairs of output channels share one 16-lane accumulator per tap (the first
    // channel's 8 lanes, then the second's): every lane is the same sum in the same order as
    // in an 8-lane tile, with half the multiply-adds. Blocks of up to three pairs; the taps
    // in near-equal blocks of at most 24 accumulators (and 12 taps).
    let pairs = if wide_pairs::<S>() { p.kpg / 2 } else { 0 };
    let kp_main = match pairs {
        0 => 1,
        _ if pairs.is_multiple_of(3) => 3,
        _ if pairs.is_multiple_of(2) => 2,
        _ => pairs.min(3),
    };
    let tp_blocks = taps.div_ceil((24 / kp_main).min(12));
    for grp in 0..p.groups {
        for c in 0..p.cpg {
            let ci = grp * p.cpg + c;
            let x_plane = &xp[ci * p.xp_plane..];
            let mut k = 0;
            while k + 2 <= 2 * pairs {
                let kp = kp_main.min(pairs - k / 2);
                let ko = grp * p.kpg + k;
                let reads = WeightReads { x: x_plane, dy: &dyf[ko * p.dy_plane..] };
                for blk in 0..tp_blocks {
                    let (t0, t1) = (blk * taps / tp_blocks, (blk + 1) * taps / tp_blocks);
                    let at = WgAt { t0, tb: t1 - t0, acc0: ((ko * p.cpg + c) * taps + t0) * LANES };
                    wg_pairs_dispatch(s, p, reads, gwv, at, kp);
                }
                k += 2 * kp;
            }
            while k < p.kpg {
                let kb = kb_main.min(p.kpg - k);
                let ko = grp * p.kpg + k;
                let dy_planes = &dyf[ko * p.dy_plane..];
                let mut t0 = 0;
                while t0 < taps {
                    let tb = tb_main.min(taps - t0);
                    let at = WgAt { t0, tb, acc0: ((ko * p.cpg + c) * taps + t0) * LANES };
                    wg_dispatch(s, p, WeightReads { x: x_plane, dy: dy_planes }, gwv, at, kb);
                    t0 += tb;
                }
                k += kb;
            }
        }
    }
}

/// A weight-gradient tile: taps `t0..t0+tb` of one input channel; `acc0` is the index in the
/// lane accumulators of its first channel's first tap.
#[derive(Clone, Copy)]
pub(super) struct WgAt {
    t0: usize,
    tb: usize,
    acc0: usize,
}

/// Picks the monomorphized weight-gradient micro-kernel for `kb` channels × `at.tb` taps.
#[inline(always)]
pub(super) fn wg_dispatch<S: Simd>(
    s: S,
    p: &Plan<'_>,
    r: WeightReads<'_>,
    gwv: &mut [f32],
    at: WgAt,
    kb: usize,
) {
    tile_table! {
        (kb, at.tb),
        wg_tile::<OneChannel<S>>(OneChannel(s), p, r, gwv, at),
        [
            (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6),
            (1, 7), (1, 8), (1, 9), (1, 10), (1, 11), (1, 12),
            (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
            (3, 1), (3, 2), (3, 3), (3, 4),
        ],
        // Not produced by the blocking above; one channel and one tap at a time covers it.
        {
            let per_k = p.cpg * p.taps() * LANES;
            for kk in 0..kb {
                let r1 = WeightReads { dy: &r.dy[kk * p.dy_plane..], ..r };
                for t in 0..at.tb {
                    let one = WgAt { t0: at.t0 + t, tb: 1, acc0: at.acc0 + kk * per_k + t * LANES };
                    wg_tile::<OneChannel<S>, 1, 1>(OneChannel(s), p, r1, gwv, one);
                }
            }
        }
    }
}

/// How a [`wg_tile`] lays output channels into its vectors: [`OneChannel`] puts one channel's
/// 8 lane sums in an 8-lane vector, [`ChannelPair`] (AVX-512) two channels' in one 16-lane
/// vector, the first channel in lanes 0–7. Either way each lane gets the same multiply-adds
/// in the same order, so both give the same bits.
trait ChannelLanes: Copy {
    /// The vectors the tile computes with.
    type L: Lanes;
    /// Output channels per vector.
    const G: usize;
    /// The arithmetic token.
    fn lanes(self) -> Self::L;
    /// The `G` 8-lane runs of `v` starting at float `e`, `stride` apart, as one vector.
    fn load(self, v: &[f32], e: usize, stride: usize) -> <Self::L as Lanes>::V;
    /// Stores what [`ChannelLanes::load`] reads.
    fn store(self, w: <Self::L as Lanes>::V, v: &mut [f32], e: usize, stride: usize);
    /// [`ChannelLanes::load`] without bounds checks.
    ///
    /// # Safety
    /// The 8 floats at `p + i·stride` for `i < G` must be readable floats of one allocation.
    unsafe fn load_ptr(self, p: *const f32, stride: usize) -> <Self::L as Lanes>::V;
    /// The 8 floats at `p` in each channel's lanes.
    ///
    /// # Safety
    /// The 8 floats at `p` must be readable floats of one allocation.
    unsafe fn load_repeated(self, p: *const f32) -> <Self::L as Lanes>::V;
}

/// One output channel per 8-lane vector of level `S`.
#[derive(Clone, Copy)]
struct OneChannel<S>(S);

impl<S: Simd> ChannelLanes for OneChannel<S> {
    type L = S;
    const G: usize = 1;
    #[inline(always)]
    fn lanes(self) -> S {
        self.0
    }
    #[inline(always)]
    fn load(self, v: &[f32], e: usize, _: usize) -> S::V {
        self.0.load(&v[e..])
    }
    #[inline(always)]
    fn store(self, w: S::V, v: &mut [f32], e: usize, _: usize) {
        self.0.store(w, &mut v[e..]);
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32, _: usize) -> S::V {
        // SAFETY: forwarded with the caller's guarantee (8 readable floats at `p`).
        unsafe { self.0.load_ptr(p) }
    }
    #[inline(always)]
    unsafe fn load_repeated(self, p: *const f32) -> S::V {
        // SAFETY: forwarded with the caller's guarantee (8 readable floats at `p`).
        unsafe { self.0.load_ptr(p) }
    }
}

/// Two output channels per wide vector of level `S`: only where the wide vectors hold two
/// 8-lane ones ([`wide_pairs`]).
#[derive(Clone, Copy)]
struct ChannelPair<S>(S);

impl<S: Simd> ChannelLanes for ChannelPair<S> {
    type L = S::Wide;
    const G: usize = 2;
    #[inline(always)]
    fn lanes(self) -> S::Wide {
        self.0.wide()
    }
    #[inline(always)]
    fn load(self, v: &[f32], e: usize, stride: usize) -> <S::Wide as Lanes>::V {
        let s = self.0;
        s.join(&[s.load(&v[e..]), s.load(&v[e + stride..])])
    }
    #[inline(always)]
    fn store(self, w: <S::Wide as Lanes>::V, v: &mut [f32], e: usize, stride: usize) {
        let s = self.0;
        let mut parts = [s.zero(); 2];
        s.split(w, &mut parts);
        s.store(parts[0], &mut v[e..]);
        s.store(parts[1], &mut v[e + stride..]);
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32, stride: usize) -> <S::Wide as Lanes>::V {
        let s = self.0;
        // SAFETY: the caller guarantees 8 readable floats at `p` and at `p + stride`.
        let (a, b) = unsafe { (s.load_ptr(p), s.load_ptr(p.add(stride))) };
        s.join(&[a, b])
    }
    #[inline(always)]
    unsafe fn load_repeated(self, p: *const f32) -> <S::Wide as Lanes>::V {
        let s = self.0;
        // SAFETY: forwarded with the caller's guarantee (8 readable floats at `p`).
        let a = unsafe { s.load_ptr(p) };
        s.join(&[a, a])
    }
}

/// Weight-gradient micro-kernel: `KB` vectors of `C::G` output channels each (planes of `dy`,
/// `dy_plane` apart) × `TB` taps of one input channel (padded plane `x`) over one image, added
/// to the lane accumulators `gwv` (channel `kk`, tap `t` at `acc0 + (kk·cpg·taps + t)·8`).
#[inline(always)]
fn wg_tile<C: ChannelLanes, const KB: usize, const TB: usize>(
    c: C,
    p: &Plan<'_>,
    r: WeightReads<'_>,
    gwv: &mut [f32],
    at: WgAt,
) {
    let s = c.lanes();
    let WeightReads { x, dy } = r;
    let per_k = p.cpg * p.taps() * LANES;
    let mut acc = [[s.zero(); TB]; KB];
    for (kk, a) in acc.iter_mut().enumerate() {
        for (t, av) in a.iter_mut().enumerate() {
            *av = c.load(gwv, at.acc0 + kk * C::G * per_k + t * LANES, per_k);
        }
    }
    let mut off = [0usize; TB];
    off.copy_from_slice(&p.w_offs[at.t0..at.t0 + TB]);
    let max_off = off.iter().copied().max().unwrap_or(0);
    let span = p.w_nvec * LANES;
    // One bounds check per tile: the farthest float any load below reads.
    assert!((p.w_rows - 1) * p.x_rs + span + max_off <= x.len());
    assert!((KB * C::G - 1) * p.dy_plane + (p.w_rows - 1) * p.dy_rs + span <= dy.len());
    let (px, pd) = (x.as_ptr(), dy.as_ptr());
    for r in 0..p.w_rows {
        let (xr, dr) = (r * p.x_rs, r * p.dy_rs);
        for v in 0..p.w_nvec {
            let q = v * LANES;
            let mut dv = [s.zero(); KB];
            for (kk, d) in dv.iter_mut().enumerate() {
                // SAFETY: channel `kk·G + i` (`i < G`) reads 8 floats at
                // `(kk·G + i)·dy_plane + dr + q`, which end by `(KB·G−1)·dy_plane +
                // (rows−1)·dy_rs + span ≤ dy.len()` (asserted above).
                *d = unsafe { c.load_ptr(pd.add(kk * C::G * p.dy_plane + dr + q), p.dy_plane) };
            }
            for (t, &o) in off.iter().enumerate() {
                // SAFETY: `xr + q + o + 8 ≤ (rows−1)·x_rs + span + max_off ≤ x.len()`
                // (asserted above).
                let xv = unsafe { c.load_repeated(px.add(xr + q + o)) };
                for (a, &d) in acc.iter_mut().zip(&dv) {
                    a[t] = s.fma(d, xv, a[t]);
                }
            }
        }
    }
    for (kk, a) in acc.iter().enumerate() {
        for (t, &av) in a.iter().enumerate() {
            c.store(av, gwv, at.acc0 + kk * C::G * per_k + t * LANES, per_k);
        }
    }
}

/// Picks the monomorphized [`wg_tile`] for `kp` [`ChannelPair`]s × `at.tb` taps.
#[inline(always)]
fn wg_pairs_dispatch<S: Simd>(
    s: S,
    p: &Plan<'_>,
    r: WeightReads<'_>,
    gwv: &mut [f32],
    at: WgAt,
    kp: usize,
) {
    tile_table! {
        (kp, at.tb),
        wg_tile::<ChannelPair<S>>(ChannelPair(s), p, r, gwv, at),
        [
            (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6),
            (1, 7), (1, 8), (1, 9), (1, 10), (1, 11), (1, 12),
            (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
            (2, 7), (2, 8), (2, 9), (2, 10), (2, 11), (2, 12),
            (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (3, 6), (3, 7), (3, 8),
        ],
        unreachable!("direct backward: no {kp}-pair, {}-tap weight tile", at.tb)
    }
}
