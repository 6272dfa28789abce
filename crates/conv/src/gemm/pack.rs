//! The packed operand layouts: [`PackedA`] (6-row panels, packed once for many products),
//! its borrowed view, the packed-B layout of 16-column panels, and the packing loops.

use rayon::prelude::*;

use super::MatRef;
use super::fits;
use super::tile::{MR, NR, kblock};
use crate::simd::{LANES, Simd};

/// The left operand of a product, packed once into 6-row panels for [`super::sgemm_packed_a`].
///
/// Layout: for each depth block `k0..k0+kcb` (`kcb = min(kblock(k), k - k0)`), the `⌈m/6⌉` panels in
/// row order, each `kcb` steps of 6 consecutive floats (rows past `m` are zero). The block
/// starting at `k0` therefore begins at `k0 · ⌈m/6⌉·6`.
#[derive(Debug, Clone)]
pub struct PackedA {
    pub(super) data: Vec<f32>,
    pub(super) m: usize,
    pub(super) k: usize,
}

// Parts of the API only the tests and benches (feature `testing`) call.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
impl PackedA {
    /// Packs `a` (`m × k`, any strides).
    pub fn new(a: MatRef<'_>) -> Self {
        let mut p = PackedA::empty();
        p.repack(a);
        p
    }

    /// An empty packed matrix (0 × 0) whose buffer [`PackedA::repack`] can fill.
    pub fn empty() -> Self {
        PackedA { data: Vec::new(), m: 0, k: 0 }
    }

    /// Floats the buffer can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// An empty packed matrix that reuses `buf`'s allocation.
    pub(crate) fn from_buffer(buf: Vec<f32>) -> Self {
        PackedA { data: buf, m: 0, k: 0 }
    }

    /// The buffer, for reuse by [`PackedA::from_buffer`].
    pub(crate) fn into_buffer(self) -> Vec<f32> {
        self.data
    }

    /// Packs `a` into this buffer, reusing its allocation.
    ///
    /// # Panics
    /// When `a` reaches outside its slice (an internal bug, as for [`super::sgemm`]).
    pub fn repack(&mut self, a: MatRef<'_>) {
        assert!(
            fits(a.data.len(), a.rows, a.cols, a.row_stride, a.col_stride),
            "PackedA: A out of bounds"
        );
        let (m, k) = (a.rows, a.cols);
        let mp = m.next_multiple_of(MR);
        // `pack_a` writes every element, the zero rows of a partial panel included.
        crate::scratch::fit(&mut self.data, mp * k);
        self.m = m;
        self.k = k;
        let kb = kblock(k);
        // A large matrix (a layer's weights, packed once per call before the products) is
        // packed by both threads, a run of row panels each: packed alone it kept the other
        // thread waiting (pointwise forward at two threads: 4% of the call).
        let parallel = mp * k >= REPACK_PARALLEL_MIN && rayon::current_num_threads() > 1;
        let mut k0 = 0;
        while k0 < k {
            let kcb = kb.min(k - k0);
            let block = &mut self.data[k0 * mp..][..mp * kcb];
            if parallel {
                block.par_chunks_exact_mut(MR * kcb).enumerate().for_each(|(pi, panel)| {
                    let r0 = pi * MR;
                    pack_a(a, r0, MR.min(m - r0), k0, kcb, panel);
                });
            } else {
                pack_a(a, 0, m, k0, kcb, block);
            }
            k0 += kcb;
        }
    }

    /// Rows of the packed matrix.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Columns (the depth of the product).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// A borrowed view of the packed matrix.
    pub fn view(&self) -> PackedARef<'_> {
        PackedARef { data: &self.data, m: self.m, k: self.k }
    }
}

/// A borrowed matrix in the layout of [`PackedA`], for producers that write that layout
/// directly (the Winograd filter transform); see [`packed_a_len`] and [`packed_a_position`].
#[derive(Debug, Clone, Copy)]
pub struct PackedARef<'a> {
    pub(super) data: &'a [f32],
    pub(super) m: usize,
    pub(super) k: usize,
}

impl<'a> PackedARef<'a> {
    /// Views `data` as a packed `m × k` matrix.
    ///
    /// # Panics
    /// When `data` is shorter than [`packed_a_len`]`(m, k)`.
    pub fn new(data: &'a [f32], m: usize, k: usize) -> Self {
        let len = packed_a_len(m, k);
        assert!(data.len() >= len, "PackedARef: {} floats for a packed {m}x{k}", data.len());
        PackedARef { data: &data[..len], m, k }
    }

    /// Panels of rows `i0..` (a multiple of [`MR`]) in the depth block starting at `k0`.
    pub(super) fn panels(&self, k0: usize, i0: usize) -> &'a [f32] {
        let mp = self.m.next_multiple_of(MR);
        let kcb = kblock(self.k).min(self.k - k0);
        &self.data[k0 * mp + i0 * kcb..k0 * mp + mp * kcb]
    }
}

/// Floats in the packed layout of an `m × k` matrix (rows padded to a multiple of [`MR`]).
pub fn packed_a_len(m: usize, k: usize) -> usize {
    m.next_multiple_of(MR) * k
}

/// The `(row, column)` stored at position `q` of the packed layout of an `m × k` matrix; rows
/// `≥ m` are padding (stored as zero).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub fn packed_a_position(m: usize, k: usize, q: usize) -> (usize, usize) {
    let mp = m.next_multiple_of(MR);
    let kb = kblock(k);
    let k0 = q / (mp * kb) * kb;
    let kcb = kb.min(k - k0);
    let within = q - k0 * mp;
    let (panel, rem) = (within / (kcb * MR), within % (kcb * MR));
    (panel * MR + rem % MR, k0 + rem / MR)
}

/// Floats in the packed-B layout of a `k × n` matrix: panels of [`NR`] columns, each `k` steps
/// of `NR` floats (`index(p, j) = (j / NR)·k·NR + p·NR + j % NR`; columns past `n` unused).
pub fn packed_b_len(k: usize, n: usize) -> usize {
    n.next_multiple_of(NR) * k
}

/// [`PackedA::repack`] splits matrices of at least this many packed floats between threads.
const REPACK_PARALLEL_MIN: usize = 1 << 15;

/// Packs rows `i0..i0+mc`, columns `k0..k0+kcb` of `a` into 6-row panels (`dst` holds
/// `⌈mc/6⌉·6·kcb` floats; rows past the end are zero).
pub(super) fn pack_a(a: MatRef<'_>, i0: usize, mc: usize, k0: usize, kcb: usize, dst: &mut [f32]) {
    for (pi, panel) in dst.chunks_exact_mut(MR * kcb).take(mc.div_ceil(MR)).enumerate() {
        let r0 = i0 + pi * MR;
        let rows = MR.min(i0 + mc - r0);
        if rows < MR {
            panel.fill(0.0);
        }
        // Step-major order: the panel is written sequentially; each step reads one element of
        // each of the (up to) six rows.
        let (rs, cs) = (a.row_stride, a.col_stride);
        let base = r0 * rs + k0 * cs;
        if rs == 1 && rows == MR {
            // Each step's rows are adjacent (a transposed view): one fixed-size copy per step
            // (no call to `memcpy`).
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let at = base + p * cs;
                dst.copy_from_slice(&a.data[at..at + MR]);
            }
        } else if rs == 1 {
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let at = base + p * cs;
                dst[..rows].copy_from_slice(&a.data[at..at + rows]);
            }
        } else if cs == 1 && rows == MR {
            let src: [&[f32]; MR] = std::array::from_fn(|r| &a.data[base + r * rs..][..kcb]);
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate().take(kcb) {
                for (d, row) in dst.iter_mut().zip(&src) {
                    *d = row[p];
                }
            }
        } else {
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let at = base + p * cs;
                for (r, d) in dst.iter_mut().enumerate().take(rows) {
                    *d = a.data[at + r * rs];
                }
            }
        }
    }
}

/// Packs rows `k0..k0+kcb`, columns `j0..j0+nc` of `b` into 16-column panels (`dst` holds
/// `⌈nc/16⌉·16·kcb` floats; columns past the end are zero).
#[inline(always)]
pub(super) fn pack_b<S: Simd>(
    s: S,
    b: MatRef<'_>,
    k0: usize,
    kcb: usize,
    j0: usize,
    nc: usize,
    dst: &mut [f32],
) {
    for (pj, panel) in dst.chunks_exact_mut(NR * kcb).take(nc.div_ceil(NR)).enumerate() {
        let c0 = j0 + pj * NR;
        let cols = NR.min(j0 + nc - c0);
        if b.row_stride == 1 && cols == NR && kcb >= LANES {
            // A transposed view of a row-major matrix (each column contiguous): 8 steps × 8
            // columns at a time, 8 vector loads down the columns, one 8×8 transpose in
            // registers, 8 vector stores along the steps.
            let full = kcb / LANES * LANES;
            for p0 in (0..full).step_by(LANES) {
                for half in 0..NR / LANES {
                    let mut v = [s.zero(); LANES];
                    for (j, vj) in v.iter_mut().enumerate() {
                        let col = c0 + half * LANES + j;
                        *vj = s.load(&b.data[col * b.col_stride + k0 + p0..]);
                    }
                    for (i, t) in s.transpose8(v).into_iter().enumerate() {
                        s.store(t, &mut panel[(p0 + i) * NR + half * LANES..]);
                    }
                }
            }
            for p in full..kcb {
                let at = (k0 + p) + c0 * b.col_stride;
                for (c, d) in panel[p * NR..][..NR].iter_mut().enumerate() {
                    *d = b.data[at + c * b.col_stride];
                }
            }
            continue;
        }
        if b.col_stride == 1 && cols == NR {
            // Whole panels: fixed-size copies (two vector moves, no call to `memcpy`).
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let src = &b.data[(k0 + p) * b.row_stride + c0..][..NR];
                dst.copy_from_slice(src);
            }
        } else if b.col_stride == 1 {
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let src = &b.data[(k0 + p) * b.row_stride + c0..][..cols];
                dst[..cols].copy_from_slice(src);
                dst[cols..].fill(0.0);
            }
        } else {
            // A transposed view: each step gathers one element of each of the 16 columns.
            let base = k0 * b.row_stride + c0 * b.col_stride;
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let at = base + p * b.row_stride;
                for (c, d) in dst.iter_mut().enumerate() {
                    *d = if c < cols { b.data[at + c * b.col_stride] } else { 0.0 };
                }
            }
        }
    }
}
