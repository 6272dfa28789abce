//! The input-gradient register tiles.

use super::Plan;
use crate::simd::{LANES, Lanes, Simd, wide_pairs};

/// Writes one image's input gradient `gx_img` (`[c_in, h, w]`) from its stuffed output
/// gradient planes `dys`; `dxf` is the flat scratch of one group's channels.
#[inline(always)]
pub(super) fn input_grad_image<S: Simd>(
    s: S,
    p: &Plan<'_>,
    dys: &[f32],
    wr: &[f32],
    dxf: &mut [f32],
    gx_img: &mut [f32],
) {
    let taps = p.taps();
    let (cb_main, xb_main) = (p.g_cb, p.g_xb);
    // Runs of vectors: each row from its start (row mode), or the whole plane as one.
    let (runs, run_pitch, run_nvec) =
        if p.g_rowwise { (p.h, p.lg, p.g_row_nvec) } else { (1, 0, p.g_nvec) };
    for grp in 0..p.groups {
        let dy_g = &dys[grp * p.kpg * p.g_plane..];
        let wr_g = &wr[grp * p.kpg * taps * p.cpg..][..p.kpg * taps * p.cpg];
        let reads = InputReads { dy: dy_g, wr: wr_g };
        let mut c0 = 0;
        while c0 < p.cpg {
            let cb = cb_main.min(p.cpg - c0);
            // At AVX-512 a tile of 4–6 channels × two 8-lane vectors is one 16-lane
            // accumulator per channel: too few independent chains to hide the multiply-add
            // latency. Such tiles take two wide vectors instead, the next pair of the run or,
            // when a row is one wide vector, the same vector of the next row.
            let doubled = wide_pairs::<S>() && xb_main == 2 && cb >= 4;
            let xb_step = if doubled { 2 * xb_main } else { xb_main };
            let row_pairs = doubled && p.g_rowwise && run_nvec == 2;
            let mut run = 0;
            while run < runs {
                if row_pairs && run + 1 < runs {
                    let ((lo0, hi0), (lo1, hi1)) = (row_taps(p, run), row_taps(p, run + 1));
                    let taps = (lo0.min(lo1), hi0.max(hi1));
                    // Two 16-lane vectors, one per row: the wide tile of `cb` × 2. A tap that
                    // only one of the rows needs reads the zero padding of the stuffed planes
                    // for the other: its products are `0·w`, which leave a sum that starts at
                    // `+0` unchanged, so each lane is the sum of a one-row tile (for finite
                    // weights).
                    let at = GiAt { c0, q0: run * run_pitch, taps, row_pitch: Some(p.lg) };
                    gi_dispatch(s, p, reads, dxf, at, cb, 2 * xb_main);
                    run += 2;
                    continue;
                }
                let taps = if p.g_rowwise { row_taps(p, run) } else { (0, taps) };
                let mut v0 = 0;
                while v0 < run_nvec {
                    let xb = xb_step.min(run_nvec - v0);
                    let at = GiAt { c0, q0: run * run_pitch + v0 * LANES, taps, row_pitch: None };
                    gi_dispatch(s, p, reads, dxf, at, cb, xb);
                    v0 += xb;
                }
                run += 1;
            }
            c0 += cb;
        }
        let gx_g = &mut gx_img[grp * p.cpg * p.h * p.w..][..p.cpg * p.h * p.w];
        for (dst, src) in gx_g.chunks_exact_mut(p.h * p.w).zip(dxf.chunks_exact(p.g_flat)) {
            for (u, row) in dst.chunks_exact_mut(p.w).enumerate() {
                row.copy_from_slice(&src[u * p.lg..][..p.w]);
            }
        }
    }
}

/// The rotated taps that input row `u` needs: rows `i'` whose stuffed gradient row
/// `u + ph + i'·dh` lies within the rows `Ah ..= Ah + (oh−1)·sh` that hold the output
/// gradient (the others are zero padding), as a range of taps `i'·kw + j'`.
pub(super) fn row_taps(p: &Plan<'_>, u: usize) -> (usize, usize) {
    let (lo, hi) = (p.g_origin / p.lg, p.g_origin / p.lg + (p.oh - 1) * p.sh());
    let r0 = u + p.ph();
    // First i' with r0 + i'·dh ≥ lo, and one past the last with r0 + i'·dh ≤ hi.
    let i_lo = lo.saturating_sub(r0).div_ceil(p.dh()).min(p.kh);
    let i_hi = if r0 > hi { 0 } else { ((hi - r0) / p.dh() + 1).min(p.kh) };
    let i_hi = i_hi.max(i_lo);
    (i_lo * p.kw, i_hi * p.kw)
}

/// Where an input-gradient tile sits: channels from `c0`, vectors from float `q0` of the flat
/// planes.
#[derive(Clone, Copy)]
pub(super) struct GiAt {
    c0: usize,
    q0: usize,
    /// Rotated taps `taps.start..taps.end` (row `i'` major) that can read a non-zero gradient.
    taps: (usize, usize),
    /// `None`: the tile's vectors follow each other from `q0`. `Some(pitch)`: vector `v`
    /// starts at `q0 + v·pitch` (one wide vector per row: the row pairs of
    /// `input_grad_image`, which only run where the wide table holds their tile).
    row_pitch: Option<usize>,
}

/// What an input-gradient register tile reads: the stuffed output-gradient planes `dy` and
/// the rotated, channel-minor weights `wr` of one group.
#[derive(Clone, Copy)]
pub(super) struct InputReads<'a> {
    dy: &'a [f32],
    wr: &'a [f32],
}

/// Picks the monomorphized input-gradient micro-kernel for `cb` channels × `xb` vectors of 8
/// lanes.
///
/// Where the level's wide vectors hold two 8-lane ones (AVX-512), a tile of an even number of
/// vectors runs as half as many 16-lane ones: the same lanes of the same flat planes, each the
/// same sum in the same order (a lane is one input pixel, summed over output channels and
/// taps), so the same bits, with half the multiply-adds. `lenet_c2`'s rows of 14 pixels are
/// two 8-lane vectors, one 16-lane one; `input_grad_image` gives tiles of 4 to 6 channels two
/// wide vectors there (or one in each of two rows, [`GiAt::row_pitch`]).
#[inline(always)]
pub(super) fn gi_dispatch<S: Simd>(
    s: S,
    p: &Plan<'_>,
    r: InputReads<'_>,
    out: &mut [f32],
    t: GiAt,
    cb: usize,
    xb: usize,
) {
    if wide_pairs::<S>() && xb.is_multiple_of(2) {
        let w = s.wide();
        tile_table! {
            (cb, xb / 2),
            gi_tile::<S::Wide>(w, p, r, out, t),
            [
                (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3),
                (3, 1), (3, 2), (4, 1), (4, 2), (5, 1), (5, 2), (6, 1), (6, 2),
            ],
            // The 8-lane table holds no other even widths.
            gi_narrow(s, p, r, out, t, cb, xb)
        }
    } else {
        gi_narrow(s, p, r, out, t, cb, xb);
    }
}

/// [`gi_dispatch`] with 8-lane vectors.
#[inline(always)]
fn gi_narrow<S: Simd>(
    s: S,
    p: &Plan<'_>,
    r: InputReads<'_>,
    out: &mut [f32],
    t: GiAt,
    cb: usize,
    xb: usize,
) {
    tile_table! {
        (cb, xb),
        gi_tile::<S>(s, p, r, out, t),
        [
            (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8),
            (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
            (3, 1), (3, 2), (3, 3), (3, 4),
            (4, 1), (4, 2), (5, 1), (5, 2), (6, 1), (6, 2),
        ],
        // Not produced by the blocking above; single-channel, single-vector tiles cover it.
        {
            assert!(t.row_pitch.is_none(), "direct backward: no narrow row-pair tile");
            for cc in 0..cb {
                for v in 0..xb {
                    let t1 = GiAt { c0: t.c0 + cc, q0: t.q0 + v * LANES, ..t };
                    gi_tile::<S, 1, 1>(s, p, r, out, t1);
                }
            }
        }
    }
}

/// Input-gradient micro-kernel: `CB` input channels from `c0` × `XB` vectors (of
/// [`Lanes::N`] floats) of the flat input-gradient plane from float `q0` (one after the other,
/// or one per row `row_pitch` apart), summed over the
/// group's output channels (stuffed planes of `dy`) and rotated taps. Stores into the flat
/// planes `out`.
#[inline(always)]
pub(super) fn gi_tile<L: Lanes, const CB: usize, const XB: usize>(
    s: L,
    p: &Plan<'_>,
    r: InputReads<'_>,
    out: &mut [f32],
    t: GiAt,
) {
    let InputReads { dy, wr } = r;
    let GiAt { c0, q0, taps: (t_lo, t_hi), row_pitch } = t;
    let taps = p.taps();
    let mut acc = [[s.zero(); XB]; CB];
    let step = row_pitch.unwrap_or(L::N);
    assert!(step >= L::N, "a tile's vectors must not overlap");
    let max_off = p.g_offs.iter().copied().max().unwrap_or(0);
    // One bounds check per tile: the farthest gradient float and the last weight read below.
    assert!((p.kpg - 1) * p.g_plane + max_off + q0 + (XB - 1) * step + L::N <= dy.len());
    assert!(c0 + CB <= p.cpg && p.kpg * taps * p.cpg <= wr.len());
    assert!(t_lo <= t_hi && t_hi <= taps);
    let (pd, pw) = (dy.as_ptr(), wr.as_ptr());
    for k in 0..p.kpg {
        let plane = k * p.g_plane + q0;
        let mut wrow = (k * taps + t_lo) * p.cpg + c0;
        for &off in &p.g_offs[t_lo..t_hi] {
            let mut xs = [s.zero(); XB];
            for (v, xv) in xs.iter_mut().enumerate() {
                // SAFETY: `plane + off + v·step + N ≤ (kpg−1)·g_plane + max_off + q0 +
                // (XB−1)·step + N ≤ dy.len()` (asserted above).
                *xv = unsafe { s.load_ptr(pd.add(plane + off + v * step)) };
            }
            for (cc, a) in acc.iter_mut().enumerate() {
                // SAFETY: `wrow = (k·taps + tap)·cpg + c0` with `tap < t_hi ≤ taps`, so
                // `wrow + cc < (kpg·taps)·cpg ≤ wr.len()` because `c0 + CB ≤ cpg` (asserted
                // above).
                let wv = s.splat(unsafe { *pw.add(wrow + cc) });
                for (av, &xv) in a.iter_mut().zip(&xs) {
                    *av = s.fma(xv, wv, *av);
                }
            }
            wrow += p.cpg;
        }
    }
    for (cc, a) in acc.iter().enumerate() {
        let dst = &mut out[(c0 + cc) * p.g_flat + q0..];
        for (v, &av) in a.iter().enumerate() {
            s.store(av, &mut dst[v * step..]);
        }
    }
}
