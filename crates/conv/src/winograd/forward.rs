//! The forward pass: tile plan, work items, input transform, products, output transform.

use std::ops::Range;

use rayon::prelude::*;

use super::filter::{transform_rows, u_planes};
use super::transforms::{F2, F4, OutputTransform, S2, S2Sums, Transforms, input_2d, output_2d};
use super::{BLOCK_FLOATS, PARALLEL_MIN_FLOPS, WinogradVariant, plane_stride};
use crate::gemm::{MAX_PIECES, MR, NR, PackedARef, gemm_packed_ab, gemm_packed_ab_sum};
use crate::params::ConvGeometry;
use crate::scratch::{self, Slot};
use crate::simd::{
    self, LANES, Lanes, Simd, SimdLevel, StepRuns, WithSimd, copy_interior, wide_pairs,
};

/// The filters of a forward call.
#[derive(Clone, Copy)]
pub(super) enum Filters<'a> {
    /// Transformed beforehand: the distinct packed planes of each group (see
    /// `transform_filters`).
    Transformed(&'a [f32]),
    /// The 3x3 weights `[c_out, cpg, 3, 3]` of a forward convolution, which the split mode
    /// transforms a few rows at a time right before multiplying them (see [`Plan::fuses`]).
    Raw(&'a [f32]),
}

/// Runs the forward pass of `plan` (made for this call's geometry and variant by
/// [`Plan::new`]) on checked buffers with the `filters` of every group; `level` is an
/// available SIMD level. [`Filters::Raw`] only where [`Plan::fuses`] says so.
///
/// # Panics
/// When given raw filters for a geometry that does not fuse (an internal bug).
pub(super) fn run(
    level: SimdLevel,
    plan: &Plan<'_>,
    input: &[f32],
    filters: Filters<'_>,
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let g = plan.g;
    assert!(
        matches!(filters, Filters::Transformed(_)) || plan.fuses(),
        "winograd: raw filters for a call that does not fuse the transform"
    );
    let ohw = g.oh * g.ow;
    let chunk_len = plan.nb * plan.kc * ohw;
    // A group's chunks: all `kc` channels but the last (only one image and one group are ever
    // split unevenly, so every item's output is one contiguous `chunk_len` slice or the tail).
    let chunks_per_group = plan.kpg.div_ceil(plan.kc);
    let chunks_per_image = g.params.groups * chunks_per_group;
    // A group's stored filter planes (`WinogradVariant::u_rows`).
    let (us, u2) = (plan.us, plan.variant.u_rows().pow(2));
    // The filters of group `grp`.
    let group_filters = |grp: usize| match filters {
        Filters::Transformed(u) => Filters::Transformed(&u[grp * u2 * us..][..u2 * us]),
        Filters::Raw(weights) => {
            let len = plan.kpg * plan.cpg * 9;
            Filters::Raw(&weights[grp * len..][..len])
        }
    };
    let run = |scratch: &mut Vec<f32>, (idx, out): (usize, &mut [f32])| {
        let b = idx / chunks_per_image * plan.nb;
        let grp = idx % chunks_per_image / chunks_per_group;
        let kl = idx % chunks_per_group * plan.kc;
        let kc = out.len() / (plan.nb * ohw);
        let k0 = grp * plan.kpg + kl;
        // With `nb > 1` there is one group and one chunk per image, so the images' channels
        // are contiguous.
        let img_len = plan.nb * plan.cpg * g.h * g.w;
        let in_start = (b * g.c_in + grp * plan.cpg) * g.h * g.w;
        let item = Item {
            plan,
            input: &input[in_start..in_start + img_len],
            filters: group_filters(grp),
            kl,
            kc,
            bias: bias.map(|b| &b[k0..k0 + kc]),
            tiles: &plan.tiles,
            y0: 0,
            out: out.chunks_exact_mut(ohw).collect(),
            scratch,
        };
        // `level` was checked above, so dispatch cannot decline.
        let _ = simd::dispatch(level, item);
    };
    if let Some((top, y1)) = plan.row_split {
        // Two bands of output rows, each writing its rows of every output plane.
        let (mut top_rows, mut bottom_rows) = (Vec::new(), Vec::new());
        for plane in output.chunks_exact_mut(ohw) {
            let (t, b) = plane.split_at_mut(y1 * g.ow);
            top_rows.push(t);
            bottom_rows.push(b);
        }
        let bands = [(&plan.tiles[..top], 0, top_rows), (&plan.tiles[top..], y1, bottom_rows)];
        let band = |(tiles, y0, out): (&[Tile], usize, Vec<&mut [f32]>)| {
            scratch::with(Slot::Tiles, |scratch| {
                let item = Item {
                    plan,
                    input,
                    filters: group_filters(0),
                    kl: 0,
                    kc: plan.kpg,
                    bias,
                    tiles,
                    y0,
                    out,
                    scratch,
                };
                // `level` was checked above, so dispatch cannot decline.
                let _ = simd::dispatch(level, item);
            });
        };
        let [first, second] = bands;
        if g.flops() < PARALLEL_MIN_FLOPS {
            band(first);
            band(second);
        } else {
            rayon::join(|| band(first), || band(second));
        }
        return;
    }
    if g.flops() < PARALLEL_MIN_FLOPS || output.len() == chunk_len {
        let chunks = output.chunks_mut(chunk_len).enumerate();
        scratch::with(Slot::Tiles, |s| chunks.for_each(|it| run(s, it)));
    } else {
        output
            .par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|it| scratch::with(Slot::Tiles, |s| run(s, it)));
    }
}

/// One tile: the top-left corner of its `α×α` input patch in padded coordinates and of its
/// `m×m` output block; both advance by the dilation (the patch corner is the output corner
/// times the stride).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tile {
    /// Image within the work item.
    pub(super) img: usize,
    pub(super) py: usize,
    pub(super) px: usize,
    pub(super) oy: usize,
    pub(super) ox: usize,
}

/// Sizes and the tile list, derived once per call.
pub(super) struct Plan<'g> {
    /// The geometry's own sizes (`h`, `ow`, …) come through `Deref`.
    g: &'g ConvGeometry,
    variant: WinogradVariant,
    a: usize,
    cpg: usize,
    kpg: usize,
    kc: usize,
    /// Images per work item.
    nb: usize,
    /// Padded plane size (covers every tile's patch).
    hp: usize,
    wp: usize,
    tiles: Vec<Tile>,
    /// Tiles per block (a multiple of [`NR`], the GEMM's panel width).
    tb: usize,
    /// Floats of one transformed filter plane `U[ξ]` and from one to the next ([`u_planes`]).
    plen: usize,
    us: usize,
    /// Floats from one `V[ξ]` to the next (`cpg · tb` rounded by [`plane_stride`]).
    vs: usize,
    /// Floats from one `M[ξ]` to the next (`kc · tb` rounded by [`plane_stride`]).
    ms: usize,
    /// For one undilated image: the tiles of the top band and the band's output rows, each
    /// band one work item with every output channel.
    row_split: Option<(usize, usize)>,
    /// For one image with few tiles: its single work item splits its transform-domain products
    /// (by transform position `ξ`) and its output transform (by output channel) between two
    /// threads, so that each transformed filter plane is read by one thread only.
    xi_split: bool,
}

impl Plan<'_> {
    /// Whether the split mode runs, on several threads ([`Plan::xi_split`] at more than one
    /// thread).
    fn splits(&self) -> bool {
        self.xi_split && rayon::current_num_threads() > 1
    }

    /// Whether the call multiplies each row block of the transformed filters as soon as it
    /// is made ([`FusedProducts`]), so that the caller passes [`Filters::Raw`] instead of
    /// transforming every filter first.
    ///
    /// That is the split mode (one image with few tiles on several threads,
    /// [`Plan::xi_split`]): each transformed plane is read once, by one thread, so writing all
    /// of them first (4 MiB on a 256→256 layer with F(2x2), four times a Zen 4 core's L2) and
    /// reading them back is traffic a fused loop does not have. Needs an even `α`, so that
    /// each thread's half of the planes is whole rows `a` of the `α×α` grid, and the item's
    /// tiles in one block: each block would transform the filters again.
    pub(super) fn fuses(&self) -> bool {
        self.splits() && self.a.is_multiple_of(2) && self.tiles.len() <= self.tb
    }
}

/// The tiles of one image (`img` 0) for `g` and `variant`, phase by phase for a dilated
/// layer, and the padded plane size `(hp, wp)` that covers every tile's patch.
pub(super) fn tile_grid(g: &ConvGeometry, variant: WinogradVariant) -> (Vec<Tile>, usize, usize) {
    let (m, a, st) = (variant.m(), variant.alpha(), variant.stride());
    let (dh, dw) = g.params.dilation;
    let (ph, pw) = g.params.padding;
    let mut tiles = Vec::new();
    let (mut hp, mut wp) = (g.h + ph, g.w + pw);
    for ry in 0..dh.min(g.oh) {
        let ohr = (g.oh - ry).div_ceil(dh);
        for rx in 0..dw.min(g.ow) {
            let owr = (g.ow - rx).div_ceil(dw);
            let (th, tw) = (ohr.div_ceil(m), owr.div_ceil(m));
            hp = hp.max(ry + dh * (st * (th - 1) * m + a - 1) + 1);
            wp = wp.max(rx + dw * (st * (tw - 1) * m + a - 1) + 1);
            for ty in 0..th {
                for tx in 0..tw {
                    let (oy, ox) = (ry + dh * ty * m, rx + dw * tx * m);
                    tiles.push(Tile { img: 0, py: st * oy, px: st * ox, oy, ox });
                }
            }
        }
    }
    (tiles, hp, wp)
}

impl std::ops::Deref for Plan<'_> {
    type Target = ConvGeometry;

    fn deref(&self) -> &ConvGeometry {
        self.g
    }
}

impl<'g> Plan<'g> {
    /// The plan of a forward call of `g` with `variant`.
    pub(super) fn new(g: &'g ConvGeometry, variant: WinogradVariant) -> Plan<'g> {
        let a = variant.alpha();
        let (dh, dw) = g.params.dilation;
        let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
        let (mut tiles, hp, wp) = tile_grid(g, variant);
        let mut kc = kpg;
        let mut row_split = None;
        let mut xi_split = false;
        // One image and one group give two threads work by splitting. Undilated: the tiles, in
        // two bands of tile rows, each with every output channel (no work is repeated).
        // Dilated: the output channels, in chunks starting on panels of the packed filters
        // (multiples of `MR` rows; the last one may be shorter), each repeating the input
        // transform.
        if g.n * g.params.groups < 2 && kpg >= 32 {
            let m = variant.m();
            let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
            if (dh, dw) == (1, 1) && tiles.len() < 4 * NR {
                // Bands of fewer than two 16-tile panels would each pad their products to
                // whole panels and read every transformed filter plane again.
                xi_split = true;
            } else if (dh, dw) == (1, 1) && th >= 2 {
                let top = th.div_ceil(2);
                row_split = Some((top * tw, (top * m).min(g.oh)));
            } else {
                kc = kpg.div_ceil(2).next_multiple_of(MR);
            }
        }
        // Several images per work item when a single image has few tiles: wider products keep
        // the micro-kernel's B panels full and amortize the per-block work. And more images
        // where an image's tiles leave a last panel mostly empty (a work item's products run
        // on whole 16-tile panels): until the padding is at most 1/32 of the columns
        // (`strided`, 196 tiles an image: 208 columns for one, 400 for two; about 3% faster).
        // Always at least two work items. Only with one group and unsplit channels, where the
        // images' outputs are contiguous.
        let per_image = tiles.len();
        let mut nb = 1;
        if g.params.groups == 1 && kc == kpg {
            let fits = |d: usize| g.n.is_multiple_of(d) && g.n / d >= 2;
            let small = (1..=g.n).rev().find(|&d| fits(d) && d * per_image <= 256).unwrap_or(1);
            let padding = |d: usize| (d * per_image).next_multiple_of(NR) - d * per_image;
            nb = (small..=g.n / 2)
                .find(|&d| fits(d) && 32 * padding(d) <= d * per_image)
                .unwrap_or(small);
        }
        tiles = (0..nb).flat_map(|img| tiles.iter().map(move |t| Tile { img, ..*t })).collect();
        let a2 = a * a;
        let tb_max = (BLOCK_FLOATS / (a2 * (cpg + kc))).clamp(NR, 256) / NR * NR;
        let per_item = row_split.map_or(tiles.len(), |(top, _)| top.max(tiles.len() - top));
        let nblocks = per_item.div_ceil(tb_max);
        let tb = per_item.div_ceil(nblocks).next_multiple_of(NR);
        let (plen, us) = u_planes(kpg, cpg);
        let (vs, ms) = (plane_stride(cpg * tb), plane_stride(kc * tb));
        Plan {
            g,
            variant,
            a,
            cpg,
            kpg,
            kc,
            nb,
            hp,
            wp,
            tiles,
            tb,
            plen,
            us,
            vs,
            ms,
            row_split,
            xi_split,
        }
    }
}

/// One work item: output channels `kl..kl+kc` (within the group) of one group, for `nb`
/// consecutive images.
pub(super) struct Item<'a> {
    plan: &'a Plan<'a>,
    /// The group's input channels of the images, `[nb, cpg, h, w]`.
    input: &'a [f32],
    /// The group's filters: its distinct packed `kpg × cpg` planes, or the weights in split
    /// mode.
    filters: Filters<'a>,
    /// First output channel of the chunk within the group (a multiple of [`MR`]).
    kl: usize,
    /// Output channels in the chunk.
    kc: usize,
    bias: Option<&'a [f32]>,
    /// The tiles of the item.
    tiles: &'a [Tile],
    /// First output row written (0 except in the second band of [`Plan::row_split`]).
    y0: usize,
    /// The item's output planes (`[nb·kc]`) from row `y0`: all rows, or a band's.
    out: Vec<&'a mut [f32]>,
    scratch: &'a mut Vec<f32>,
}

impl WithSimd for Item<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.plan.variant {
            WinogradVariant::F2x2_3x3 => run_item::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => run_item::<S, F4, 6, 4>(s, self),
            WinogradVariant::F2x2_3x3S2 => run_item::<S, S2, 5, 2>(s, self),
        }
    }
}

/// Processes one work item with tile size `A = α`, output block `M = m` and the transforms of
/// `T`.
#[inline(always)]
pub(super) fn run_item<S: Simd, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: S,
    item: Item<'_>,
) {
    let Item { plan: p, input, filters, kl, kc, bias, tiles, y0, mut out, scratch, .. } = item;
    let a2 = A * A;
    let plane = p.hp * p.wp;
    let planes = p.nb * p.cpg;
    let runs = patch_runs::<S>(p, tiles, A, M);
    // With the runs of every tile group the patches are gathered from the input itself.
    let padded_len = if runs.is_some() { 0 } else { planes * plane };
    let out_planes = p.variant.out_planes();
    let (v_len, m_len) = (a2 * p.vs, out_planes * p.ms);
    // Grown once per worker, never cleared: V and M are written before they are read (stale
    // values only reach lanes that are discarded), and the padding, where there is a padded
    // copy, is zeroed below.
    // V starts on a 64-byte boundary (the products load its panels a vector at a time).
    let v_at = padded_len.next_multiple_of(scratch::LINE_FLOATS);
    let scratch = scratch::aligned(scratch, v_at + v_len + m_len);
    let (padded, rest) = scratch.split_at_mut(v_at);
    let padded = &mut padded[..padded_len];
    let (vbuf, rest) = rest.split_at_mut(v_len);
    let mbuf = &mut rest[..m_len];
    if runs.is_none() {
        let planes_in = input.chunks_exact(p.h * p.w);
        let pads = Pads { h: p.h, w: p.w, ph: p.ph(), pw: p.pw(), wp: p.wp };
        pad_planes(s, &pads, planes_in, padded.chunks_exact_mut(plane));
    }
    let padded = &*padded;
    let patches = Patches {
        padded,
        plane,
        wp: p.wp,
        dh: p.dh(),
        dw: p.dw(),
        cpg: p.cpg,
        input,
        in_plane: p.h * p.w,
    };

    let split = p.splits();
    // The tile groups' runs, a block's at a time (a block is whole groups: `tb` is a multiple
    // of `NR`, the group size where runs exist).
    let runs_per_block = p.tb / NR;
    for (bi, block) in tiles.chunks(p.tb).enumerate() {
        let nt = block.len();
        let block_runs = runs.as_deref().map(|r| &r[bi * runs_per_block..]);
        // Input transform, 8 or 16 tiles at a time: V[ξ] in panels of 16 tiles. Split mode: the
        // tiles of the first half of the panels on one thread, the rest on the other.
        let panels = nt.div_ceil(NR);
        if split && panels >= 2 {
            let cut = panels / 2 * NR;
            let (mut lo, mut hi) = (Vec::with_capacity(a2), Vec::with_capacity(a2));
            for plane in vbuf.chunks_exact_mut(p.vs) {
                let (a, b) = plane.split_at_mut(cut * p.cpg);
                lo.push(a);
                hi.push(b);
            }
            let (patches, variant) = (&patches, p.variant);
            let (tl, th) = block.split_at(cut);
            let (rl, rh) = (block_runs, block_runs.map(|r| &r[cut / NR..]));
            let job = |tiles, runs, planes| InputJob { variant, patches, tiles, runs, planes };
            rayon::join(
                || simd::dispatch(S::LEVEL, job(tl, rl, lo)),
                || simd::dispatch(S::LEVEL, job(th, rh, hi)),
            );
        } else {
            let mut planes: Vec<&mut [f32]> = vbuf.chunks_exact_mut(p.vs).collect();
            input_transform_block::<S, T, A, M>(s, &patches, block, block_runs, &mut planes);
        }
        // Transform-domain products: M[ξ] = U[ξ][kl..kl+kc] · V[ξ], both operands already in
        // panel form. Whole panels: columns past `nt` hold stale values that are never stored.
        let v = VPlanes { v: &*vbuf, vs: p.vs, cpg: p.cpg, tb: p.tb, n: nt.next_multiple_of(NR) };
        // Split mode: half of the stored planes each (one dispatch each: a closure is compiled
        // without `S`'s target features).
        let half_m = out_planes / 2 * p.ms;
        match filters {
            Filters::Transformed(u) => {
                let ks = (kl, kl + kc);
                let products = Products {
                    u,
                    variant: p.variant,
                    plen: p.plen,
                    us: p.us,
                    kpg: p.kpg,
                    ks,
                    v,
                    o0: 0,
                    ms: p.ms,
                    m: &mut [],
                };
                if split {
                    let (lo, hi) = mbuf.split_at_mut(half_m);
                    rayon::join(
                        || simd::dispatch(S::LEVEL, Products { m: lo, ..products }),
                        || {
                            simd::dispatch(
                                S::LEVEL,
                                Products { o0: out_planes / 2, m: hi, ..products },
                            )
                        },
                    );
                } else {
                    Products { m: &mut *mbuf, ..products }.with_simd(s);
                }
            }
            Filters::Raw(weights) => {
                // Only in split mode (see `Plan::fuses`); a ξ-half is whole rows `a` of the
                // grid (`α` even).
                assert!(split, "winograd: raw filters outside the split mode");
                let (lo, hi) = mbuf.split_at_mut(half_m);
                let (variant, kpg) = (p.variant, p.kpg);
                let half = |a_rows: (usize, usize), m: &mut [f32]| {
                    let ms = p.ms;
                    simd::dispatch(
                        S::LEVEL,
                        FusedProducts { weights, variant, kpg, a_rows, v, ms, m },
                    );
                };
                rayon::join(|| half((0, A / 2), lo), || half((A / 2, A), hi));
            }
        }
        // Output transform, bias, and scatter of the in-range outputs of channels `ks`.
        let outputs = OutputBlock { plan: p, block, m: &[], bias, ks: (0, kc), y0, out: &mut [] };
        if split {
            // Half of the output channels each (one image: the channels' planes are
            // contiguous).
            let kh = kc.div_ceil(2);
            let (out_lo, out_hi) = out.split_at_mut(kh);
            let (m, b) = (&*mbuf, bias);
            let lo = OutputBlock { m, ks: (0, kh), out: out_lo, ..outputs };
            let hi =
                OutputBlock { m, ks: (kh, kc), bias: b.map(|b| &b[kh..]), out: out_hi, ..outputs };
            rayon::join(|| simd::dispatch(S::LEVEL, lo), || simd::dispatch(S::LEVEL, hi));
        } else {
            OutputBlock { m: &*mbuf, out: &mut out, ..outputs }.with_simd(s);
        }
    }
}

/// [`input_transform_block`] of a run of tiles, for the SIMD dispatcher.
pub(super) struct InputJob<'a> {
    variant: WinogradVariant,
    patches: &'a Patches<'a>,
    tiles: &'a [Tile],
    /// The runs of the tiles' groups, where they are gathered from the input.
    runs: Option<&'a [StepRuns]>,
    planes: Vec<&'a mut [f32]>,
}

impl WithSimd for InputJob<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let InputJob { variant, patches, tiles, runs, mut planes } = self;
        match variant {
            WinogradVariant::F2x2_3x3 => {
                input_transform_block::<S, F2, 4, 2>(s, patches, tiles, runs, &mut planes);
            }
            WinogradVariant::F4x4_3x3 => {
                input_transform_block::<S, F4, 6, 4>(s, patches, tiles, runs, &mut planes);
            }
            WinogradVariant::F2x2_3x3S2 => {
                input_transform_block::<S, S2, 5, 2>(s, patches, tiles, runs, &mut planes);
            }
        }
    }
}

/// The input-transform planes of a block of tiles, the right operands of its transform-domain
/// products.
#[derive(Clone, Copy)]
pub(super) struct VPlanes<'a> {
    /// `V[ξ]`, `cpg · tb` floats each, in panel form, `vs` floats apart.
    v: &'a [f32],
    vs: usize,
    cpg: usize,
    /// Tiles per block: the row stride of every `M[ξ]`.
    tb: usize,
    /// Columns computed (whole panels).
    n: usize,
}

impl VPlanes<'_> {
    /// `V[ξ]`, in panel form.
    #[inline(always)]
    fn plane(&self, xi: usize) -> &[f32] {
        &self.v[xi * self.vs..][..self.cpg * self.tb]
    }

    /// `c = U[ξ][rows] · V[ξ]` (`c` holds the rows, `tb` floats each).
    #[inline(always)]
    fn product<S: Simd>(
        &self,
        s: S,
        xi: usize,
        u: PackedARef<'_>,
        rows: Range<usize>,
        c: &mut [f32],
    ) {
        gemm_packed_ab(s, u, rows, self.plane(xi), self.n, 0.0, None, c, self.tb);
    }
}

/// Transform-domain products `M[o] = Σ U[ξ][ks] · V[ξ]` for the stored planes `o = o0..` (as
/// many as `m` holds), each the sum over its positions `ξ`
/// ([`WinogradVariant::out_plane_positions`]: one, or a group at stride 2), added in order
/// into the plane (the first product overwrites it).
pub(super) struct Products<'a> {
    /// The group's stored packed filter planes, `plen` floats each, `us` apart (position `ξ`
    /// reads plane [`WinogradVariant::u_plane`]).
    u: &'a [f32],
    variant: WinogradVariant,
    plen: usize,
    us: usize,
    kpg: usize,
    /// Output channels `ks.0..ks.1` (rows of the planes) of the products.
    ks: (usize, usize),
    v: VPlanes<'a>,
    o0: usize,
    /// Floats from one `M[o]` to the next.
    ms: usize,
    /// `M[o]` for the stored planes from `o0`, `ks.len() · tb` floats each, `ms` apart.
    m: &'a mut [f32],
}

impl WithSimd for Products<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Products { u, variant, plen, us, kpg, ks, v, o0, ms, m } = self;
        let u_xi = |xi: usize| {
            let plane = variant.u_plane(xi);
            (PackedARef::new(&u[plane * us..][..plen], kpg, v.cpg), v.plane(xi))
        };
        for (i, c_o) in m.chunks_exact_mut(ms).enumerate() {
            let mut xis = variant.out_plane_positions(o0 + i);
            let Some(first) = xis.next() else { continue };
            let mut pieces = [u_xi(first); MAX_PIECES];
            let mut count = 1;
            for xi in xis {
                pieces[count] = u_xi(xi);
                count += 1;
            }
            let c = &mut c_o[..(ks.1 - ks.0) * v.tb];
            gemm_packed_ab_sum(s, &pieces[..count], ks.0..ks.1, v.n, 0.0, None, c, v.tb);
        }
    }
}

/// Floats of transformed filters a [`FusedProducts`] makes at a time (192 KiB: with its half
/// of the input-transform planes, 512 KiB on a 256-channel layer, it stays in L2).
const FUSED_BLOCK_FLOATS: usize = 48 * 1024;

/// The split mode's products for the planes `ξ = a·α + b` with `a` in `a_rows`, from the raw
/// weights: a block of output channels (rows) at a time, the block's filters are transformed
/// into a small buffer ([`transform_rows`]) and multiplied at once, so no transformed plane is
/// ever written out whole. Same values and the same sums as [`Products`] on filters
/// transformed beforehand: a product split by rows has the bits of the whole.
pub(super) struct FusedProducts<'a> {
    /// The group's 3x3 weights.
    weights: &'a [f32],
    variant: WinogradVariant,
    kpg: usize,
    a_rows: (usize, usize),
    v: VPlanes<'a>,
    /// Floats from one `M[ξ]` to the next.
    ms: usize,
    /// `M[ξ]` for the planes of `a_rows`, `kpg · tb` floats each, `ms` apart.
    m: &'a mut [f32],
}

impl WithSimd for FusedProducts<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let FusedProducts { weights, variant, kpg, a_rows, v, ms, m } = self;
        let (cpg, tb) = (v.cpg, v.tb);
        let a = variant.alpha();
        let planes = (a_rows.1 - a_rows.0) * a;
        assert!(kpg * tb <= ms && m.len() == planes * ms, "FusedProducts: M");
        let rb = (FUSED_BLOCK_FLOATS / (planes * cpg)).max(MR) / MR * MR;
        // Taken out of the thread-local, not borrowed in a closure: a closure body would be
        // compiled without `S`'s target features.
        let mut buf = scratch::take(Slot::Filters);
        let mut r0 = 0;
        while r0 < kpg {
            let r1 = (r0 + rb).min(kpg);
            let (plen, us) = u_planes(r1 - r0, cpg);
            let ub = scratch::aligned(&mut buf, planes * us);
            transform_rows(s, weights, kpg, cpg, r0..r1, a_rows, variant, ub);
            let planes_m = m.chunks_exact_mut(ms);
            for (i, (u_xi, m_xi)) in ub.chunks_exact(us).zip(planes_m).enumerate() {
                let a_xi = PackedARef::new(&u_xi[..plen], r1 - r0, cpg);
                v.product(s, a_rows.0 * a + i, a_xi, 0..r1 - r0, &mut m_xi[r0 * tb..r1 * tb]);
            }
            r0 = r1;
        }
        scratch::put(Slot::Filters, buf);
    }
}

/// The output transform of one block of tiles for output channels `ks` of an item's `kc`.
pub(super) struct OutputBlock<'a, 'o> {
    plan: &'a Plan<'a>,
    block: &'a [Tile],
    /// The stored product planes (`M[ξ]`, or the stride-2 groups' sums, see
    /// [`WinogradVariant::out_planes`]) of the item's output channels, `tb` floats per
    /// channel, planes [`Plan::ms`] apart.
    m: &'a [f32],
    /// Bias of the channels from `ks.0`.
    bias: Option<&'a [f32]>,
    /// Output channels `ks.0..ks.1` of the item's.
    ks: (usize, usize),
    y0: usize,
    /// The planes of the channels `ks` of each image (`[img][ks]`), from output row `y0`.
    out: &'a mut [&'o mut [f32]],
}

impl WithSimd for OutputBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.plan.variant {
            WinogradVariant::F2x2_3x3 => output_block::<S, F2, 4, 2>(s, self),
            WinogradVariant::F4x4_3x3 => output_block::<S, F4, 6, 4>(s, self),
            WinogradVariant::F2x2_3x3S2 => output_block::<S, S2Sums, 3, 2>(s, self),
        }
    }
}

#[inline(always)]
pub(super) fn output_block<S: Simd, T: OutputTransform<A, M>, const A: usize, const M: usize>(
    s: S,
    o: OutputBlock<'_, '_>,
) {
    if M == 2 && o.plan.dw() == 1 {
        return output_block_pairs::<S, T, A, M>(s, o);
    }
    let OutputBlock { plan: p, block, m: mbuf, bias, ks, y0, out } = o;
    let nk = ks.1 - ks.0;
    // The transforms run on the level's widest vectors, `wn` tiles at a time, each vector then
    // split into 8-tile parts for the scatter.
    let w = s.wide();
    let wn = <S::Wide as Lanes>::N;
    let parts = wn / LANES;
    // The m×m outputs of 8 tiles, tile-major: output `q = i·m + j` of tile `l` is
    // `vals[q / 8][l][q % 8]` (transposed in registers, 8 outputs at a time, so that each
    // tile's rows are runs of `m` floats). Hoisted so it is zeroed once.
    let mut vals = [[[0f32; LANES]; LANES]; 2];
    let chunks = (M * M).div_ceil(LANES);
    // `flat[part][q]`: output `q` of the part's 8 tiles. This and `M[ξ]`'s vectors are
    // declared once as well: zeroed per group, they were a `memset` call each.
    let mut flat = [[s.zero(); 2 * LANES]; 2];
    let mut mv = [[w.zero(); A]; A];
    for (kk, k) in (ks.0..ks.1).enumerate() {
        let bk = w.splat(bias.map_or(0.0, |b| b[kk]));
        for (lg, group) in block.chunks(wn).enumerate() {
            let t0 = lg * wn;
            let y = block_outputs::<S::Wide, T, A, M>(w, &mut mv, mbuf, p.ms, k * p.tb + t0);
            for (i, row) in y.iter().enumerate() {
                for (j, &val) in row.iter().enumerate() {
                    let mut halves = [s.zero(); 2];
                    s.split(w.add(val, bk), &mut halves[..parts]);
                    for (f, h) in flat.iter_mut().zip(halves) {
                        f[i * M + j] = h;
                    }
                }
            }
            for (part, tiles) in group.chunks(LANES).enumerate() {
                for (c, dst) in vals.iter_mut().enumerate().take(chunks) {
                    let rows: [S::V; LANES] = std::array::from_fn(|r| flat[part][c * LANES + r]);
                    for (d, v) in dst.iter_mut().zip(s.transpose8(rows)) {
                        *d = s.to_array(v);
                    }
                }
                for (l, t) in tiles.iter().enumerate() {
                    // In-range rows and columns of this tile's m×m block.
                    let mi = M.min((p.oh - t.oy).div_ceil(p.dh()));
                    let mj = M.min((p.ow - t.ox).div_ceil(p.dw()));
                    let plane = &mut *out[t.img * nk + kk];
                    for i in 0..mi {
                        let orow = &mut plane[(t.oy + i * p.dh() - y0) * p.ow + t.ox..];
                        let q = i * M;
                        // `m` divides 8, so a row of the tile is one run within one chunk.
                        let run = &vals[q / LANES][l][q % LANES..][..M];
                        if mj == M && p.dw() == 1 {
                            orow[..M].copy_from_slice(run);
                        } else {
                            for (j, &v) in run.iter().enumerate().take(mj) {
                                orow[j * p.dw()] = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `Aᵀ M A` for the vector of tiles at offset `at` of every `M[ξ]` (`ms` floats apart; `at`
/// is `k · tb + t0` for channel `k`, tiles from column `t0`): the `m×m` outputs of each lane's
/// tile, before the bias. `tb` is a multiple of the panel width, which the vector width
/// divides, so each load stays in the row of channel `k`; `mv` is scratch for the loaded
/// vectors.
#[inline(always)]
fn block_outputs<W: Lanes, T: OutputTransform<A, M>, const A: usize, const M: usize>(
    w: W,
    mv: &mut [[W::V; A]; A],
    mbuf: &[f32],
    ms: usize,
    at: usize,
) -> [[W::V; M]; M] {
    for (xi, mr) in mv.iter_mut().enumerate() {
        for (xj, m) in mr.iter_mut().enumerate() {
            *m = w.load(&mbuf[(xi * A + xj) * ms + at..]);
        }
    }
    output_2d::<W, T, A, M>(w, mv)
}

/// Lanes `l0..l1` of a vector group whose tiles are side by side in one tile row of one
/// image: their 2x2 output blocks make two runs of `2 (l1 − l0)` consecutive outputs.
#[derive(Clone, Copy)]
struct Run {
    l0: usize,
    l1: usize,
}

/// [`output_block`] for 2x2 output blocks without column dilation: output row `i` of a vector
/// group's tiles is the two transformed columns interleaved, so each row of a run of
/// side-by-side tiles is stored by vectors (rather than transposed and copied two floats per
/// tile).
#[inline(always)]
fn output_block_pairs<S: Simd, T: OutputTransform<A, M>, const A: usize, const M: usize>(
    s: S,
    o: OutputBlock<'_, '_>,
) {
    let OutputBlock { plan: p, block, m: mbuf, bias, ks, y0, out } = o;
    let nk = ks.1 - ks.0;
    let w = s.wide();
    let wn = <S::Wide as Lanes>::N;
    // The runs of every group (group `lg`'s are `runs[starts[lg]..starts[lg + 1]]`), found
    // once for all channels.
    let (mut runs, mut starts) = (Vec::new(), vec![0]);
    for group in block.chunks(wn) {
        let mut l0 = 0;
        for l in 1..=group.len() {
            let (a, b) = (group[l - 1], group.get(l));
            if b.is_none_or(|b| (b.img, b.oy, b.ox) != (a.img, a.oy, a.ox + 2)) {
                runs.push(Run { l0, l1: l });
                l0 = l;
            }
        }
        starts.push(runs.len());
    }
    // At AVX-512 each run's floats go from the registers to the output row (a permute and a
    // masked store per 16 floats); elsewhere through `rows`.
    let wide_store = wide_pairs::<S>();
    let mut rows = [0f32; 4 * LANES];
    let mut mv = [[w.zero(); A]; A];
    for (kk, k) in (ks.0..ks.1).enumerate() {
        let bf = bias.map_or(0.0, |b| b[kk]);
        let (bk, bw) = (s.splat(bf), w.splat(bf));
        for (lg, bounds) in starts.windows(2).enumerate() {
            let t0 = lg * wn;
            let y = block_outputs::<S::Wide, T, A, M>(w, &mut mv, mbuf, p.ms, k * p.tb + t0);
            for (i, yr) in y.iter().enumerate() {
                let (lo, hi) = w.interleave(yr[0], yr[1]);
                // The bias is one add per value after the interleave, which only moves lanes:
                // the same sums on either path.
                let (lo, hi) = if wide_store {
                    (w.add(lo, bw), w.add(hi, bw))
                } else {
                    w.store(lo, &mut rows);
                    w.store(hi, &mut rows[wn..]);
                    (lo, hi)
                };
                for r in &runs[bounds[0]..bounds[1]] {
                    let t = block[t0 + r.l0];
                    let oy = t.oy + i * p.dh();
                    if oy >= p.oh {
                        continue;
                    }
                    let len = (2 * (r.l1 - r.l0)).min(p.ow - t.ox);
                    let plane = &mut *out[t.img * nk + kk];
                    let dst = &mut plane[(oy - y0) * p.ow + t.ox..][..len];
                    if wide_store {
                        let mut done = 0;
                        while done < len {
                            let n = (len - done).min(wn);
                            w.store_window(lo, hi, 2 * r.l0 + done, n, &mut dst[done..]);
                            done += n;
                        }
                        continue;
                    }
                    let src = &rows[2 * r.l0..][..len];
                    // Whole 8-float vectors plus the bias, the last one overlapping the one
                    // before. A plain copy loop is compiled into a `memcpy` call per run, which
                    // cost more than the transform.
                    if len >= LANES {
                        for (d, v) in dst.chunks_exact_mut(LANES).zip(src.chunks_exact(LANES)) {
                            s.store(s.add(s.load(v), bk), d);
                        }
                        let last = s.add(s.load(&src[len - LANES..]), bk);
                        s.store(last, &mut dst[len - LANES..]);
                    } else {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = v + bf;
                        }
                    }
                }
            }
        }
    }
}

/// Sizes for [`pad_planes`].
pub(super) struct Pads {
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    /// Padded row length.
    wp: usize,
}

/// Copies each `h × w` plane of `src` into the matching padded plane of `dst` at offset
/// `(ph, pw)`, zeroing the rest of every padded plane: the rows above and below once per
/// plane, the columns left and right of each row, each row's floats by vectors
/// ([`copy_interior`]; a `memcpy` call per row of 56 floats had cost 8% of `strided`).
#[inline(always)]
pub(super) fn pad_planes<'a, S: Simd>(
    s: S,
    p: &Pads,
    src: impl Iterator<Item = &'a [f32]>,
    dst: impl Iterator<Item = &'a mut [f32]>,
) {
    for (input, pl) in src.zip(dst) {
        let (top, rest) = pl.split_at_mut(p.ph * p.wp);
        top.fill(0.0);
        let (body, bottom) = rest.split_at_mut(p.h * p.wp);
        bottom.fill(0.0);
        for (row, from) in body.chunks_exact_mut(p.wp).zip(input.chunks_exact(p.w)) {
            // The borders are a float or two: loops, not `fill` calls.
            for v in &mut row[..p.pw] {
                *v = 0.0;
            }
            for v in &mut row[p.pw + p.w..] {
                *v = 0.0;
            }
            copy_interior(s, &mut row[p.pw..p.pw + p.w], from);
        }
    }
}

/// The input planes of a work item and how the tiles read them: zero-padded copies
/// `[img][c][hp][wp]`, or the input itself where every tile group has [`StepRuns`] (then
/// `padded` is empty).
pub(super) struct Patches<'a> {
    padded: &'a [f32],
    /// `hp · wp`.
    plane: usize,
    wp: usize,
    dh: usize,
    dw: usize,
    /// Channels per image in `padded`.
    cpg: usize,
    /// The unpadded input planes `[img][c][h][w]` (where the tiles' runs are gathered from
    /// them, `padded` is empty) and the floats of one.
    input: &'a [f32],
    in_plane: usize,
}

/// At AVX-512 and without column dilation: the [`StepRuns`] of every 16-tile group of
/// `tiles`, the patches of tiles `α` wide and `stride · m` apart read from the unpadded input
/// with the padding masked in. `None` (pad the planes, gather from them) elsewhere, or where a
/// group's tiles make more runs than a gather takes (tile rows of fewer than 5 tiles).
///
/// A patch row of 16 side-by-side tiles is then a few masked loads and permutes instead of 16
/// loads and two transposes, and the padded copy of the input (4–8% of a forward call on
/// `strided` and the `res3x3` shapes) is not made at all.
fn patch_runs<S: Simd>(p: &Plan<'_>, tiles: &[Tile], a: usize, m: usize) -> Option<Vec<StepRuns>> {
    if !wide_pairs::<S>() || p.dw() != 1 {
        return None;
    }
    let (ph, pw) = (p.ph() as isize, p.pw() as isize);
    let step = p.variant.stride() * m;
    let mut starts = [(0usize, 0isize, 0isize); 2 * LANES];
    tiles
        .chunks(NR)
        .map(|group| {
            for (st, t) in starts.iter_mut().zip(group) {
                *st = (t.img * p.cpg * p.h * p.w, t.py as isize - ph, t.px as isize - pw);
            }
            StepRuns::new(&starts[..group.len()], step, a, (p.h, p.w), p.dh())
        })
        .collect()
}

/// The input transform `V = Bᵀ d B` of a run of tiles, as many at a time as the widest
/// vectors of `S` hold (8 or 16), into `planes[ξ]`: each plane in the packed-B layout of the
/// GEMM (panels of [`NR`] tiles, each `cpg` steps of `NR` floats), from the panel of the
/// run's first tile (which starts a panel). With `runs` (one per 16-tile group, from
/// [`patch_runs`]) the patches are gathered from the unpadded input, else from the padded
/// copy.
#[inline(always)]
pub(super) fn input_transform_block<
    S: Simd,
    T: Transforms<A, M>,
    const A: usize,
    const M: usize,
>(
    s: S,
    p: &Patches<'_>,
    block: &[Tile],
    runs: Option<&[StepRuns]>,
    planes: &mut [&mut [f32]],
) {
    // Runs exist only for 16-lane groups, one per group of the block.
    assert!(runs.is_none_or(|r| <S::Wide as Lanes>::N == NR && r.len() * NR >= block.len()));
    // The transforms run on the level's widest vectors, `wn` tiles at a time; each vector is
    // joined from 8-tile parts read as below.
    let w = s.wide();
    let wn = <S::Wide as Lanes>::N;
    let nparts = wn / LANES;
    // Declared once: every element is written below before it is read, and zeroing these
    // arrays per tile group and channel was a `memset` call each (3% of a strided forward).
    let mut parts = [[[s.zero(); A]; A]; 2];
    let mut d = [[w.zero(); A]; A];
    // Channel by channel, each channel's tile groups in order: the patch rows of one channel
    // are read in one pass down its planes (`strided` 2–3% faster than group by group where
    // the patches come from the unpadded input, the same where they come from the padded
    // copy).
    for c in 0..p.cpg {
        for (lg, group) in block.chunks(wn).enumerate() {
            let t0 = lg * wn;
            // The group's runs where they exist (then `wn` is 16, the runs' group size).
            if let Some(runs) = runs.map(|r| &r[lg]) {
                // Lanes past the block's end are zero; never stored past the panel.
                for (r, dr) in d.iter_mut().enumerate() {
                    w.gather_runs(runs, p.input, c * p.in_plane, r, dr);
                }
            } else {
                for (part, d) in parts.iter_mut().enumerate().take(nparts) {
                    // Lanes past the block's end repeat its last tile; their results are
                    // never stored past the panel and never read as outputs.
                    let lanes: [Tile; LANES] =
                        std::array::from_fn(|l| group[(part * LANES + l).min(group.len() - 1)]);
                    patch_rows::<S, A>(s, p, &lanes, c, d);
                }
                // A loop, not `from_fn`: a closure body is compiled without `S`'s target
                // features.
                for (r, dr) in d.iter_mut().enumerate() {
                    for (col, dv) in dr.iter_mut().enumerate() {
                        *dv = s.join(&[parts[0][r][col], parts[1][r][col]][..nparts]);
                    }
                }
            }
            let v = input_2d::<S::Wide, T, A, M>(w, &d);
            let at = (t0 / NR * p.cpg + c) * NR + t0 % NR;
            for (xi, row) in v.iter().enumerate() {
                for (xj, &val) in row.iter().enumerate() {
                    w.store(val, &mut planes[xi * A + xj][at..]);
                }
            }
        }
    }
}

/// The `α×α` patches of channel `c` of 8 tiles, element `(r, col)` of every lane's patch in
/// `d[r][col]`.
#[inline(always)]
fn patch_rows<S: Simd, const A: usize>(
    s: S,
    p: &Patches<'_>,
    lanes: &[Tile; LANES],
    c: usize,
    d: &mut [[S::V; A]; A],
) {
    let padded = p.padded;
    // Top-left corner of each lane's patch in `padded`.
    let mut base = [0usize; LANES];
    for (b, t) in base.iter_mut().zip(lanes) {
        *b = (t.img * p.cpg + c) * p.plane + t.py * p.wp + t.px;
    }
    // One bounds check for the whole gather: the farthest element of any patch.
    let far = base.iter().copied().max().unwrap_or(0) + (A - 1) * (p.dh * p.wp + p.dw);
    assert!(far < padded.len());
    // Where a patch row fits in one vector (`(α−1)·dw < 8`) and 8 floats can be read from
    // every row start: load each lane's patch row as a vector and transpose, so that vector
    // `q` holds element `q` of every lane's row (8 loads and a transpose instead of `α·8`
    // scalar loads per row). Where it fits in two (a dilated patch row of up to 16 floats:
    // F(4x4) at dilation 2 or 3, F(2x2) at 3 to 5), the same with two loads and two
    // transposes per lane and row. The values are the same either way.
    let span = (A - 1) * p.dw;
    let rows_fit = span < LANES && far - span + LANES <= padded.len();
    let rows_fit2 = !rows_fit && span < 2 * LANES && far - span + 2 * LANES <= padded.len();
    for (r, dr) in d.iter_mut().enumerate() {
        if rows_fit2 {
            let (mut lo, mut hi) = ([s.zero(); LANES], [s.zero(); LANES]);
            for ((l, h), &b) in lo.iter_mut().zip(&mut hi).zip(&base) {
                let at = b + r * p.dh * p.wp;
                // SAFETY: `at + 16 ≤ far − (α−1)·dw + 16 ≤ padded.len()` (checked in
                // `rows_fit2`).
                unsafe {
                    *l = s.load_ptr(padded.as_ptr().add(at));
                    *h = s.load_ptr(padded.as_ptr().add(at + LANES));
                }
            }
            let (cl, ch) = (s.transpose8(lo), s.transpose8(hi));
            for (col, dv) in dr.iter_mut().enumerate() {
                let q = col * p.dw;
                *dv = if q < LANES { cl[q] } else { ch[q - LANES] };
            }
            continue;
        }
        if rows_fit {
            let mut rows = [s.zero(); LANES];
            for (v, &b) in rows.iter_mut().zip(&base) {
                // SAFETY: `b + r·dh·wp + 8 ≤ far − (α−1)·dw + 8 ≤ padded.len()` (checked in
                // `rows_fit`).
                *v = unsafe { s.load_ptr(padded.as_ptr().add(b + r * p.dh * p.wp)) };
            }
            let cols = s.transpose8(rows);
            for (col, dv) in dr.iter_mut().enumerate() {
                *dv = cols[col * p.dw];
            }
            continue;
        }
        for (col, dv) in dr.iter_mut().enumerate() {
            let off = r * p.dh * p.wp + col * p.dw;
            let mut gathered = [0f32; LANES];
            for (g, &b) in gathered.iter_mut().zip(&base) {
                // SAFETY: `b + off ≤ far < padded.len()` (asserted above).
                *g = unsafe { *padded.get_unchecked(b + off) };
            }
            *dv = s.load(&gathered);
        }
    }
}
