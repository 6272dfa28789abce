//! The 1-D transforms of each variant on SIMD vectors, unrolled with their constants.

use crate::simd::Lanes;

/// The 1-D transforms of one variant, `α = A`, `m = M`. Static functions rather than closures:
/// a closure body would be compiled without the caller's `#[target_feature]`s.
pub(super) trait Transforms<const A: usize, const M: usize> {
    /// `Bᵀ d`.
    fn bt<L: Lanes>(s: L, d: [L::V; A]) -> [L::V; A];
    /// `G t`: the filter transform of one column (or row) of three taps.
    fn g<L: Lanes>(s: L, t: [L::V; 3]) -> [L::V; A];
    /// `A y`: the transpose of the output transform, for the weight gradient.
    fn a<L: Lanes>(s: L, y: [L::V; M]) -> [L::V; A];
}

/// The output transform of a variant: `Aᵀ m` for the `A` planes of one column (or row) of
/// the products the forward pass stores, `M` outputs.
pub(super) trait OutputTransform<const A: usize, const M: usize> {
    /// `Aᵀ m`.
    fn at<L: Lanes>(s: L, m: [L::V; A]) -> [L::V; M];
}

/// F(2x2,3x3).
pub(super) struct F2;
/// F(4x4,3x3).
pub(super) struct F4;
/// F(2x2,3x3) at stride 2.
pub(super) struct S2;

impl Transforms<4, 2> for F2 {
    #[inline(always)]
    fn g<L: Lanes>(s: L, t: [L::V; 3]) -> [L::V; 4] {
        // [t0, (t0 + t1 + t2)/2, (t0 − t1 + t2)/2, t2]
        let half = s.splat(0.5);
        let e = s.mul(half, s.add(t[0], t[2]));
        let o = s.mul(half, t[1]);
        [t[0], s.add(e, o), s.sub(e, o), t[2]]
    }
    #[inline(always)]
    fn bt<L: Lanes>(s: L, d: [L::V; 4]) -> [L::V; 4] {
        bt4(s, d)
    }
    #[inline(always)]
    fn a<L: Lanes>(s: L, y: [L::V; 2]) -> [L::V; 4] {
        [y[0], s.add(y[0], y[1]), s.sub(y[0], y[1]), s.sub(s.zero(), y[1])]
    }
}

impl Transforms<6, 4> for F4 {
    #[inline(always)]
    fn g<L: Lanes>(s: L, t: [L::V; 3]) -> [L::V; 6] {
        // [t0/4, −(t0 + t1 + t2)/6, −(t0 − t1 + t2)/6, t0/24 + t1/12 + t2/6,
        //  t0/24 − t1/12 + t2/6, t2]
        let e = s.add(t[0], t[2]);
        let m6 = s.splat(-1.0 / 6.0);
        let (a1, a2) = (s.mul(m6, s.add(e, t[1])), s.mul(m6, s.sub(e, t[1])));
        let e2 = s.fma(s.splat(1.0 / 24.0), t[0], s.mul(s.splat(1.0 / 6.0), t[2]));
        let o2 = s.mul(s.splat(1.0 / 12.0), t[1]);
        [s.mul(s.splat(0.25), t[0]), a1, a2, s.add(e2, o2), s.sub(e2, o2), t[2]]
    }
    #[inline(always)]
    fn bt<L: Lanes>(s: L, d: [L::V; 6]) -> [L::V; 6] {
        bt6(s, d)
    }
    #[inline(always)]
    fn a<L: Lanes>(s: L, y: [L::V; 4]) -> [L::V; 6] {
        // [y0, e + o, e − o, e2 + o2, e2 − o2, y3] with e = y0 + y2, o = y1 + y3,
        // e2 = y0 + 4 y2, o2 = 2 y1 + 8 y3.
        let e = s.add(y[0], y[2]);
        let o = s.add(y[1], y[3]);
        let e2 = s.fma(s.splat(4.0), y[2], y[0]);
        let o2 = s.fma(s.splat(8.0), y[3], s.mul(s.splat(2.0), y[1]));
        [y[0], s.add(e, o), s.sub(e, o), s.add(e2, o2), s.sub(e2, o2), y[3]]
    }
}

impl Transforms<5, 2> for S2 {
    #[inline(always)]
    fn g<L: Lanes>(s: L, t: [L::V; 3]) -> [L::V; 5] {
        [t[0], s.add(t[0], t[2]), t[2], t[1], t[1]]
    }
    #[inline(always)]
    fn bt<L: Lanes>(s: L, d: [L::V; 5]) -> [L::V; 5] {
        [s.sub(d[0], d[2]), d[2], s.sub(d[4], d[2]), d[1], d[3]]
    }
    #[inline(always)]
    fn a<L: Lanes>(s: L, y: [L::V; 2]) -> [L::V; 5] {
        [y[0], s.add(y[0], y[1]), y[1], y[0], y[1]]
    }
}

impl OutputTransform<4, 2> for F2 {
    #[inline(always)]
    fn at<L: Lanes>(s: L, m: [L::V; 4]) -> [L::V; 2] {
        at4(s, m)
    }
}

impl OutputTransform<6, 4> for F4 {
    #[inline(always)]
    fn at<L: Lanes>(s: L, m: [L::V; 6]) -> [L::V; 4] {
        at6(s, m)
    }
}

/// The output transform of F(2x2,3x3) at stride 2 on the products it stores, 9 planes per
/// tile rather than its 25 transform positions. Its `Aᵀ` (rows `[1 1 0 1 0]`, `[0 1 1 0 1]`)
/// has equal columns 0 and 3 and equal columns 2 and 4, so the products of positions in rows
/// (or columns) 0 and 3 only ever reach the outputs as a sum, and so do those of 2 and 4: the
/// products are summed in those three groups ({0, 3}, {1}, {2, 4}, on both axes; see
/// [`out_plane_positions`](super::WinogradVariant::out_plane_positions)) as they are made,
/// and the stored planes need only `Aᵀ = [1 1 0; 0 1 1]`.
pub(super) struct S2Sums;

impl OutputTransform<3, 2> for S2Sums {
    #[inline(always)]
    fn at<L: Lanes>(s: L, m: [L::V; 3]) -> [L::V; 2] {
        [s.add(m[0], m[1]), s.add(m[1], m[2])]
    }
}

/// `Bᵀ d B`: the 1-D transform on the columns, then on the rows.
#[inline(always)]
pub(super) fn input_2d<L: Lanes, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: L,
    d: &[[L::V; A]; A],
) -> [[L::V; A]; A] {
    let mut t = [[s.zero(); A]; A];
    for col in 0..A {
        let mut c = [s.zero(); A];
        for r in 0..A {
            c[r] = d[r][col];
        }
        let v = T::bt(s, c);
        for r in 0..A {
            t[r][col] = v[r];
        }
    }
    let mut o = [[s.zero(); A]; A];
    for r in 0..A {
        o[r] = T::bt(s, t[r]);
    }
    o
}

/// `Aᵀ m A`: the 1-D transform on the columns, then on the rows.
#[inline(always)]
pub(super) fn output_2d<L: Lanes, T: OutputTransform<A, M>, const A: usize, const M: usize>(
    s: L,
    d: &[[L::V; A]; A],
) -> [[L::V; M]; M] {
    let mut t = [[s.zero(); A]; M];
    for col in 0..A {
        let mut c = [s.zero(); A];
        for r in 0..A {
            c[r] = d[r][col];
        }
        let v = T::at(s, c);
        for r in 0..M {
            t[r][col] = v[r];
        }
    }
    let mut o = [[s.zero(); M]; M];
    for r in 0..M {
        o[r] = T::at(s, t[r]);
    }
    o
}

/// `A y Aᵀ` for an `m×m` block `y`: the 1-D transform on the columns, then on the rows.
#[inline(always)]
pub(super) fn grad_2d<L: Lanes, T: Transforms<A, M>, const A: usize, const M: usize>(
    s: L,
    y: &[[L::V; M]; M],
) -> [[L::V; A]; A] {
    let mut t = [[s.zero(); M]; A];
    for col in 0..M {
        let mut c = [s.zero(); M];
        for r in 0..M {
            c[r] = y[r][col];
        }
        let v = T::a(s, c);
        for r in 0..A {
            t[r][col] = v[r];
        }
    }
    let mut o = [[s.zero(); A]; A];
    for r in 0..A {
        o[r] = T::a(s, t[r]);
    }
    o
}

/// `Bᵀ d` for F(2x2,3x3).
#[inline(always)]
pub(super) fn bt4<L: Lanes>(s: L, d: [L::V; 4]) -> [L::V; 4] {
    [s.sub(d[0], d[2]), s.add(d[1], d[2]), s.sub(d[2], d[1]), s.sub(d[1], d[3])]
}

/// `Aᵀ m` for F(2x2,3x3).
#[inline(always)]
pub(super) fn at4<L: Lanes>(s: L, m: [L::V; 4]) -> [L::V; 2] {
    [s.add(s.add(m[0], m[1]), m[2]), s.sub(s.sub(m[1], m[2]), m[3])]
}

/// `Bᵀ d` for F(4x4,3x3), sharing the common sub-expressions.
#[inline(always)]
pub(super) fn bt6<L: Lanes>(s: L, d: [L::V; 6]) -> [L::V; 6] {
    let (four, five, two) = (s.splat(4.0), s.splat(5.0), s.splat(2.0));
    // r1, r2 = ±4(d1) − 4 d2 ± d3 + d4 ;  r3, r4 = ∓2 d1 − d2 ± 2 d3 + d4
    let a = s.sub(d[4], s.mul(four, d[2])); // d4 − 4 d2
    let b = s.sub(d[3], s.mul(four, d[1])); // d3 − 4 d1
    let c = s.sub(d[4], d[2]); // d4 − d2
    let e = s.mul(two, s.sub(d[3], d[1])); // 2 (d3 − d1)
    [
        s.sub(s.fma(four, d[0], d[4]), s.mul(five, d[2])),
        s.add(a, b),
        s.sub(a, b),
        s.add(c, e),
        s.sub(c, e),
        s.sub(s.fma(four, d[1], d[5]), s.mul(five, d[3])),
    ]
}

/// `Aᵀ m` for F(4x4,3x3).
#[inline(always)]
pub(super) fn at6<L: Lanes>(s: L, m: [L::V; 6]) -> [L::V; 4] {
    let p12 = s.add(m[1], m[2]);
    let m12 = s.sub(m[1], m[2]);
    let p34 = s.add(m[3], m[4]);
    let m34 = s.sub(m[3], m[4]);
    [
        s.add(s.add(m[0], p12), p34),
        s.fma(s.splat(2.0), m34, m12),
        s.fma(s.splat(4.0), p34, p12),
        s.add(s.fma(s.splat(8.0), m34, m12), m[5]),
    ]
}
