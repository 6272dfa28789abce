//! The filter transform `U = G g Gᵀ`, written in the packed GEMM's A-panel layout.

use rayon::prelude::*;

use super::transforms::{F2, F4, S2, Transforms};
use super::{WinogradVariant, plane_stride};
use crate::error::{ConvError, Result};
use crate::gemm::{MR, kblock, packed_a_len};
use crate::params::check_len;
use crate::scratch;
use crate::simd::{self, LANES, Simd, WithSimd};

/// Transformed 3x3 filters `U = G g Gᵀ`, ready for [`conv2d_winograd_prepared`](super::conv2d_winograd_prepared).
///
/// Build it once per weight update and reuse it across calls (and input sizes).
#[derive(Debug, Clone, PartialEq)]
pub struct WinogradFilter {
    pub(super) variant: WinogradVariant,
    pub(super) c_out: usize,
    pub(super) cpg: usize,
    pub(super) groups: usize,
    /// `[group][stored plane]` × one packed `kpg × cpg` plane, laid out by [`u_planes`] (see
    /// [`transform_filters`]).
    pub(super) u: Vec<f32>,
}

impl WinogradFilter {
    /// Transforms `weight` of dims `[c_out, c_in/groups, 3, 3]`.
    ///
    /// Errors when the dims are not 3x3, `groups` is zero or does not divide `c_out`, or the
    /// slice length does not match the dims.
    pub fn new(
        weight: &[f32],
        weight_dims: [usize; 4],
        groups: usize,
        variant: WinogradVariant,
    ) -> Result<Self> {
        const OP_F: &str = "WinogradFilter::new";
        let [c_out, cpg, kh, kw] = weight_dims;
        if (kh, kw) != (3, 3) {
            return Err(ConvError::Unsupported {
                op: OP_F,
                algo: variant.name(),
                msg: format!("weight {weight_dims:?}: a {kh}x{kw} kernel (only 3x3)"),
            });
        }
        if groups == 0 || c_out % groups != 0 || c_out == 0 || cpg == 0 {
            return Err(ConvError::ShapeMismatch {
                op: OP_F,
                msg: format!("weight {weight_dims:?} cannot be split into {groups} groups"),
            });
        }
        check_len(OP_F, "weight", &weight_dims, weight.len())?;
        let u = transform_filters(Vec::new(), weight, c_out / groups, cpg, groups, variant, false);
        Ok(WinogradFilter { variant, c_out, cpg, groups, u })
    }

    /// The variant the filter was transformed for.
    pub fn variant(&self) -> WinogradVariant {
        self.variant
    }
}

/// One depth block of the packed planes for [`transform_filters`]: input channels
/// `k0..k0+kcb` of every output channel, as `⌈kpg/6⌉` panels of 6 output channels × `kcb`.
pub(super) struct FilterChunk<'a> {
    /// The group's filters, `[k][c][9]`.
    weights: &'a [f32],
    /// Output and input channels per group (the packed plane is a `kpg × cpg` matrix).
    kpg: usize,
    cpg: usize,
    /// The block's first input channel and depth.
    k0: usize,
    kcb: usize,
    /// Index of the first row panel (of `MR` output channels) in `pieces`.
    pi0: usize,
    /// `weights` are those of the convolution whose input gradient this one is: filter `(k, c)`
    /// is `W[c][k]` rotated 180° (see [`conv2d_input_grad_winograd`]).
    ///
    /// [`conv2d_input_grad_winograd`]: super::conv2d_input_grad_winograd
    flipped: bool,
    /// One slice per stored plane `a·r + b` (`r` = [`WinogradVariant::u_rows`], `b < r`)
    /// with `a` in `a_rows`: a run of the block's panels.
    pieces: Vec<&'a mut [f32]>,
    /// The rows `a` of the planes made (`0..r`: every stored plane).
    a_rows: (usize, usize),
    variant: WinogradVariant,
}

impl WithSimd for FilterChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.variant {
            WinogradVariant::F2x2_3x3 => filter_chunk::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => filter_chunk::<S, F4, 6, 4>(s, self),
            WinogradVariant::F2x2_3x3S2 => filter_chunk::<S, S2, 5, 2>(s, self),
        }
    }
}

/// `U = G g Gᵀ` for the filters of one chunk, eight at a time: `G` on the three columns of the
/// taps, then on the `α` rows of the result, with the constant matrices of `T` unrolled.
///
/// The eight filters of a vector are the next eight positions of a packed panel (depth step
/// `p`, then row `r`): each is loaded as one 8-float vector (its taps 0–7) and the eight are
/// transposed in registers, so that vector `t` holds tap `t` of every position; tap 8 comes
/// from a second transpose of taps 1–8 (of which only the last row is computed). Copying the
/// taps one float at a time, and reloading the plane runs from the vector of pieces at every
/// store, cost more than the transform.
#[inline(always)]
pub(super) fn filter_chunk<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    chunk: FilterChunk<'_>,
) {
    // Only the distinct rows and columns are stored (see `WinogradVariant::u_rows`).
    let r = chunk.variant.u_rows();
    let FilterChunk { weights, kpg, cpg, k0, kcb, pi0, flipped, mut pieces, a_rows, .. } = chunk;
    let panel = MR * kcb;
    let (a_lo, a_hi) = a_rows;
    assert!(a_lo <= a_hi && a_hi <= r && r <= A && A * A <= 36);
    assert!(pieces.len() == (a_hi - a_lo) * r);
    assert!(pieces.iter().all(|p| p.len() == pieces[0].len()));
    let panels = pieces.first().map_or(0, |p| p.len() / panel);
    // The rows of a last panel past `kpg` are zero filters.
    const ZERO: [f32; 9] = [0.0; 9];
    for pi in 0..panels {
        // This panel's run of every plane, in a local array (its entries are not reloaded and
        // checked against the vector of pieces at every store).
        let mut runs: [&mut [f32]; 36] = std::array::from_fn(|_| &mut [][..]);
        for (run, piece) in runs.iter_mut().zip(pieces.iter_mut()) {
            *run = &mut piece[pi * panel..][..panel];
        }
        // Filter `(p, r)` of the panel (depth step `p`, row `r`) starts at
        // `base + p · p_step + r · r_step` in `weights`; rows from `rows` on are zero.
        let row0 = (pi0 + pi) * MR;
        let rows = kpg.saturating_sub(row0).min(MR);
        let (base, p_step, r_step) = if flipped {
            ((k0 * kpg + row0) * 9, kpg * 9, 9)
        } else {
            ((row0 * cpg + k0) * 9, 9, cpg * 9)
        };
        let mut i = 0;
        while i < panel {
            let n = LANES.min(panel - i);
            // Taps 0–7 of every filter, and taps 1–8, whose transpose's last row is tap 8 (the
            // other rows of that transpose are never used, so they are never computed).
            let mut lo = [s.zero(); LANES];
            let mut hi = [s.zero(); LANES];
            for l in 0..LANES {
                let (p, r) = ((i + l) / MR, (i + l) % MR);
                let f: &[f32] = if l < n && r < rows {
                    &weights[base + p * p_step + r * r_step..][..9]
                } else {
                    &ZERO
                };
                lo[l] = s.load(&f[..8]);
                hi[l] = s.load(&f[1..9]);
            }
            let t = s.transpose8(lo);
            let t8 = s.transpose8(hi)[7];
            // A flipped filter is the stored one rotated by 180°: its taps in reverse order.
            let taps = if flipped {
                [t8, t[7], t[6], t[5], t[4], t[3], t[2], t[1], t[0]]
            } else {
                [t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t8]
            };
            // cols[c] = G · (column c of the 3x3 filter), α values each.
            let mut cols = [[s.zero(); A]; 3];
            for (c, col) in cols.iter_mut().enumerate() {
                *col = T::g(s, [taps[c], taps[3 + c], taps[6 + c]]);
            }
            for a in a_lo..a_hi {
                let u = T::g(s, [cols[0][a], cols[1][a], cols[2][a]]);
                for (b, &v) in u.iter().enumerate().take(r) {
                    let run = &mut runs[(a - a_lo) * r + b][i..];
                    if n == LANES {
                        s.store(v, run);
                    } else {
                        run[..n].copy_from_slice(&s.to_array(v)[..n]);
                    }
                }
            }
            i += LANES;
        }
    }
}

/// The layout of transformed filter planes of `rows` output channels: the floats of one
/// packed `rows × cpg` plane ([`packed_a_len`]) and the distance from one plane to the next
/// ([`plane_stride`]). Every writer and reader of `U[ξ]` takes both from here.
pub(super) fn u_planes(rows: usize, cpg: usize) -> (usize, usize) {
    let plen = packed_a_len(rows, cpg);
    (plen, plane_stride(plen))
}

/// Transformed filters of at least this many floats are made in parallel (64 panels of 6
/// output channels × 256 input channels).
const PARALLEL_MIN_FLOATS: usize = 64 * MR * 256;

/// `U = G g Gᵀ` for every 3x3 filter, laid out `[group][plane]` × one `kpg × cpg` matrix per plane
/// in the packed layout of the GEMM's left operand ([`PackedARef`]), so the products read it
/// without packing.
///
/// Only the distinct planes are made: `u_rows²` of them, all `α²` but at stride 2
/// ([`WinogradVariant::u_rows`]). Each plane `ξ = (ξi, ξj)` is a fixed combination of the nine taps,
/// `U = G (G g)ᵀ` computed separably for eight filters at a time, in vector registers: `G` on
/// the three tap columns, then on the `α` rows, with the constant entries of `G` unrolled
/// (`Transforms::g`), each result stored straight into its plane. The taps of eight
/// positions, in the packed order of the planes, are transposed to `[tap][position]` in
/// registers first.
/// Chunks (a depth block × a run of row panels, so that even one depth block gives every
/// thread work) run in parallel for large layers (VGG's 256x256 filters: 65,536 of them);
/// every value is computed the same way whatever the chunking, so the result does not depend
/// on threads.
///
/// [`PackedARef`]: crate::gemm::PackedARef
pub(super) fn transform_filters(
    buf: Vec<f32>,
    weight: &[f32],
    kpg: usize,
    cpg: usize,
    groups: usize,
    variant: WinogradVariant,
    flipped: bool,
) -> Vec<f32> {
    // The distinct planes only (`WinogradVariant::u_rows`).
    let ur = variant.u_rows();
    let planes = ur * ur;
    let per_group = kpg * cpg;
    let (plen, us) = u_planes(kpg, cpg);
    // Every element of the planes is written below, so a recycled buffer needs no zeroing (the
    // floats between planes are never read).
    let mut u = buf;
    scratch::fit(&mut u, groups * planes * us);
    for (grp, ug) in u.chunks_exact_mut(planes * us).enumerate() {
        let wg = &weight[grp * per_group * 9..][..per_group * 9];
        // tasks[t]: depth block t of every plane (see `PackedARef` for the layout).
        let (kb, mp) = (kblock(cpg), kpg.next_multiple_of(MR));
        let nblocks = cpg.div_ceil(kb);
        let mut tasks: Vec<Vec<&mut [f32]>> =
            (0..nblocks).map(|_| Vec::with_capacity(planes)).collect();
        for plane in ug.chunks_exact_mut(us) {
            let mut rest = &mut plane[..plen];
            for (t, task) in tasks.iter_mut().enumerate() {
                let kcb = kb.min(cpg - t * kb);
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(mp * kcb);
                task.push(head);
                rest = tail;
            }
        }
        // Large layers: every depth block is also cut into runs of row panels, so that one
        // depth block (VGG's 256 input channels) still gives every thread work.
        let parallel = plen * planes >= PARALLEL_MIN_FLOATS && rayon::current_num_threads() > 1;
        let panels = mp / MR;
        let runs = if parallel { rayon::current_num_threads().min(panels) } else { 1 };
        let per_run = panels.div_ceil(runs);
        let mut chunks = Vec::with_capacity(nblocks * runs);
        for (t, pieces) in tasks.into_iter().enumerate() {
            let (k0, kcb) = (t * kb, kb.min(cpg - t * kb));
            let mut parts: Vec<Vec<&mut [f32]>> =
                (0..runs).map(|_| Vec::with_capacity(planes)).collect();
            for piece in pieces {
                for (part, run) in parts.iter_mut().zip(piece.chunks_mut(per_run * MR * kcb)) {
                    part.push(run);
                }
            }
            for (r, pieces) in parts.into_iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                let pi0 = r * per_run;
                let a_rows = (0, ur);
                let chunk = FilterChunk {
                    weights: wg,
                    kpg,
                    cpg,
                    k0,
                    kcb,
                    pi0,
                    pieces,
                    a_rows,
                    variant,
                    flipped,
                };
                chunks.push(chunk);
            }
        }
        if parallel {
            chunks.into_par_iter().for_each(simd::dispatch_active);
        } else {
            chunks.into_iter().for_each(simd::dispatch_active);
        }
    }
    u
}

/// Part of one group's transformed filters (of a forward convolution, not flipped), for a
/// caller that multiplies it at once (see `forward::FusedProducts`): the planes
/// `ξ = a·α + b` with `a` in `a_rows`, rows `rows` of each (`rows.start` a multiple of
/// [`MR`]), written into `out` in the layout of [`u_planes`] for `rows.len()` rows. Every
/// value is the one [`transform_filters`] computes for the same filter and plane.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn transform_rows<S: Simd>(
    s: S,
    weights: &[f32],
    kpg: usize,
    cpg: usize,
    rows: std::ops::Range<usize>,
    a_rows: (usize, usize),
    variant: WinogradVariant,
    out: &mut [f32],
) {
    assert!(rows.start.is_multiple_of(MR) && rows.end <= kpg);
    let m = rows.len();
    let (mp, (_, us)) = (m.next_multiple_of(MR), u_planes(m, cpg));
    let planes = (a_rows.1 - a_rows.0) * variant.u_rows();
    let kb = kblock(cpg);
    let mut k0 = 0;
    while k0 < cpg {
        let kcb = kb.min(cpg - k0);
        let pieces: Vec<&mut [f32]> = out[..planes * us]
            .chunks_exact_mut(us)
            .map(|plane| &mut plane[k0 * mp..][..mp * kcb])
            .collect();
        let pi0 = rows.start / MR;
        let flipped = false;
        FilterChunk { weights, kpg, cpg, k0, kcb, pi0, flipped, pieces, a_rows, variant }
            .with_simd(s);
        k0 += kcb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recycled buffer, longer or shorter and full of NaN, gives the same transformed
    /// filters as a fresh one: every float of every plane is written.
    #[test]
    fn recycled_buffers_are_fully_overwritten() {
        let (kpg, cpg, groups) = (7, 5, 2);
        let weight: Vec<f32> =
            (0..groups * kpg * cpg * 9).map(|i| (i % 13) as f32 * 0.25 - 1.5).collect();
        for variant in
            [WinogradVariant::F2x2_3x3, WinogradVariant::F4x4_3x3, WinogradVariant::F2x2_3x3S2]
        {
            for flipped in [false, true] {
                let fresh =
                    transform_filters(Vec::new(), &weight, kpg, cpg, groups, variant, flipped);
                for len in [3, fresh.len() - 1, fresh.len() + 100] {
                    let got = transform_filters(
                        vec![f32::NAN; len],
                        &weight,
                        kpg,
                        cpg,
                        groups,
                        variant,
                        flipped,
                    );
                    // The planes, not the unused floats between them.
                    let (plen, us) = u_planes(kpg, cpg);
                    let planes = |u: &[f32]| -> Vec<u32> {
                        u.chunks_exact(us)
                            .flat_map(|p| p[..plen].iter().map(|x| x.to_bits()))
                            .collect()
                    };
                    let same = planes(&got) == planes(&fresh);
                    assert!(
                        same && got.len() == fresh.len(),
                        "{variant:?} flipped {flipped} {len}"
                    );
                }
            }
        }
    }
}
