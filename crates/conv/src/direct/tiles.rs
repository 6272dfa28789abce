//! The forward register tiles and their dispatch on the tile sizes.

use super::Plan;
use crate::simd::{LANES, Simd, copy_interior};

/// `row = [0; pad] ++ src ++ [0; …]` for a row whose length is a multiple of 8, with vector
/// stores: rows are short (28 floats for a 28x28 plane), and three `memset`/`memcpy` calls per
/// row cost more than the depthwise kernel's arithmetic on it.
#[inline(always)]
pub(super) fn copy_row<S: Simd>(s: S, row: &mut [f32], src: &[f32], pad: usize) {
    let z = s.zero();
    for v in row.chunks_exact_mut(LANES) {
        s.store(z, v);
    }
    copy_interior(s, &mut row[pad..pad + src.len()], src);
}

/// What a forward register tile reads: the padded input planes of a work item, the packed
/// weights and the bias.
#[derive(Clone, Copy)]
pub(super) struct Reads<'a> {
    pub(super) planes: &'a [f32],
    pub(super) wp: &'a [f32],
    pub(super) bias: Option<&'a [f32]>,
}

/// Where a register tile sits: output channels from `k0`, output row `y`, vectors from `xv0`.
#[derive(Clone, Copy)]
pub(super) struct TileAt {
    pub(super) k0: usize,
    pub(super) y: usize,
    pub(super) xv0: usize,
}

/// Picks the monomorphized micro-kernel for a `kb × xb` tile.
#[inline(always)]
pub(super) fn tile_dispatch<S: Simd>(
    s: S,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
    kb: usize,
    xb: usize,
) {
    tile_table! {
        (kb, xb),
        tile::<S>(s, p, r, out, t),
        [
            (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1),
            (1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2),
            (1, 3), (2, 3), (3, 3), (4, 3), (1, 4), (2, 4),
            (3, 4),
        ],
        // Not produced by the blocking above; single-vector tiles cover any shape.
        {
            for k in 0..kb {
                for v in 0..xb {
                    let t1 = TileAt { k0: t.k0 + k, y: t.y, xv0: t.xv0 + v };
                    tile::<S, 1, 1>(s, p, r, out, t1);
                }
            }
        }
    }
}

/// Picks the monomorphized channel-vectorized micro-kernel for `kv` vectors of channels and
/// `xp` output columns (`t.xv0` is the first column here, not a vector index).
#[inline(always)]
pub(super) fn kpath_dispatch<S: Simd, const K: usize>(
    s: S,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
    kv: usize,
    xp: usize,
) {
    tile_table! {
        (kv, xp),
        tile_k::<S; K>(s, p, r, out, t),
        [
            (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6),
            (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6),
            (1, 7), (1, 8),
        ],
        // Not produced by the blocking above; one column at a time covers any shape.
        {
            for x in 0..xp {
                for v in 0..kv {
                    let t1 = TileAt { k0: t.k0 + v * LANES, y: t.y, xv0: t.xv0 + x };
                    tile_k::<S, 1, 1, K>(s, p, r, out, t1);
                }
            }
        }
    }
}

/// Channel-vectorized micro-kernel: `KV·8` output channels from `k0` × `XP` output columns
/// from `t.xv0` of row `y`. Per tap it loads `KV` weight vectors and broadcasts `XP` input
/// values. The tile is transposed in registers (one 8x8 transpose per channel vector) and each
/// channel's `XP` outputs are stored as one run of its output row.
#[inline(always)]
pub(super) fn tile_k<S: Simd, const KV: usize, const XP: usize, const K: usize>(
    s: S,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
) {
    let Reads { planes, wp, bias } = r;
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
    // `K > 0`: a K×K kernel whose tap `j` is at column offset `j` (`Plan::unrolled_taps`).
    let (kh, kw) = if K > 0 { (K, K) } else { (p.kh, p.kw) };
    for c in 0..p.cpg {
        for i in 0..kh {
            let row = (c * p.hp + y * p.sh() + i * p.dh()) * p.row_len + x0;
            let wrow = (c * kh + i) * kw * p.ks + k0;
            for j in 0..kw {
                let off = if K > 0 { j } else { p.tap_off[j] };
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
    // Column `x` holds channels `k0 + v·8 ..` in `acc[x][v]`; transposed, vector `l` holds
    // channel `k0 + v·8 + l` at columns `x0..x0+XP`, one run of its output row.
    assert!(XP <= LANES);
    let plane = p.oh * p.ow;
    for v in 0..KV {
        let mut rows = [s.zero(); LANES];
        for (row, a) in rows.iter_mut().zip(&acc) {
            *row = a[v];
        }
        for (l, &col) in s.transpose8(rows).iter().enumerate() {
            let k = k0 + v * LANES + l;
            if k >= p.kc {
                break;
            }
            let run = &mut out[k * plane + y * p.ow + x0..][..XP];
            if XP == LANES {
                s.store(col, run);
            } else {
                let mut buf = [0f32; LANES];
                s.store(col, &mut buf);
                run.copy_from_slice(&buf[..XP]);
            }
        }
    }
}

/// Picks the monomorphized single-channel micro-kernel for a `yb × xb` tile.
#[inline(always)]
pub(super) fn rows_dispatch<S: Simd>(
    s: S,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
    yb: usize,
    xb: usize,
) {
    tile_table! {
        (yb, xb),
        tile_rows::<S>(s, p, r, out, t),
        [
            (1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2),
            (1, 3), (2, 3), (3, 3), (1, 4), (2, 4), (3, 4),
        ],
        // Not produced by the blocking above; single-row tiles cover any shape.
        {
            for dy in 0..yb {
                let t1 = TileAt { y: t.y + dy, ..t };
                tile_dispatch(s, p, r, out, t1, 1, xb);
            }
        }
    }
}

/// Single-channel micro-kernel (`kc == 1`, e.g. depthwise): `YB` output rows × `XB·8` output
/// columns, so that `YB·XB` independent accumulator chains hide the FMA latency.
#[inline(always)]
pub(super) fn tile_rows<S: Simd, const YB: usize, const XB: usize>(
    s: S,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
) {
    let Reads { planes, wp, bias } = r;
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
                    let row = (c * p.hp + (y + r) * p.sh() + i * p.dh()) * p.row_len + x0 + off;
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
pub(super) fn store_row<S: Simd>(
    s: S,
    p: &Plan<'_>,
    out: &mut [f32],
    y: usize,
    x0: usize,
    a: &[S::V],
) {
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
pub(super) fn tile<S: Simd, const KB: usize, const XB: usize>(
    s: S,
    p: &Plan<'_>,
    r: Reads<'_>,
    out: &mut [f32],
    t: TileAt,
) {
    let Reads { planes, wp, bias } = r;
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
            let row = (c * p.hp + y * p.sh() + i * p.dh()) * p.row_len + x0;
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
