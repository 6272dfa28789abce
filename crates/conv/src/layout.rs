//! Layout helpers shared by kernel families: channel-last copies of NCHW planes.

use crate::simd::{self, LANES, Simd, WithSimd};

/// Where [`ChannelLast::copy`] puts `channels` planes of `h × w`: at `(y0, x0)` of an
/// `hp × wp` grid of pixels, each pixel `cv` floats (channels innermost). Also the pixel-major
/// output gradient of the direct weight gradient (`direct::backward`).
pub(crate) struct ChannelLast {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) y0: usize,
    pub(crate) x0: usize,
    pub(crate) hp: usize,
    pub(crate) wp: usize,
    pub(crate) channels: usize,
    pub(crate) cv: usize,
}

impl ChannelLast {
    /// Copies the planes `src` (`[channels][h][w]`) into `dst` (`[hp][wp][cv]`), zeroing the
    /// pixels around them; channels `channels..cv` of each pixel are left as they are.
    pub(crate) fn copy(&self, src: &[f32], dst: &mut [f32]) {
        simd::dispatch_active(ChannelLastCopy { at: self, src, dst });
    }

    /// [`ChannelLast::copy`] with the instruction set of the caller's kernel: blocks of 8
    /// channels × 8 pixels, eight row loads, one 8×8 transpose in registers, eight pixel
    /// stores.
    #[inline(always)]
    pub(crate) fn copy_with<S: Simd>(&self, s: S, src: &[f32], dst: &mut [f32]) {
        let p = self;
        let (hw, cv, wp) = (p.h * p.w, p.cv, p.wp);
        assert!(p.y0 + p.h <= p.hp && p.x0 + p.w <= wp && p.channels <= cv);
        let zero_px = |px: &mut [f32]| px[..p.channels].fill(0.0);
        // (The hot loop below uses no closure: one would be compiled without `S`'s target
        // features.)
        dst[..p.y0 * wp * cv].chunks_exact_mut(cv).for_each(zero_px);
        dst[(p.y0 + p.h) * wp * cv..p.hp * wp * cv].chunks_exact_mut(cv).for_each(zero_px);
        let full_c = p.channels / LANES * LANES;
        for y in 0..p.h {
            let line = &mut dst[(y + p.y0) * wp * cv..][..wp * cv];
            line[..p.x0 * cv].chunks_exact_mut(cv).for_each(zero_px);
            line[(p.x0 + p.w) * cv..].chunks_exact_mut(cv).for_each(zero_px);
        }
        // Bands of rows: each plane's rows of a band are one contiguous read, and the band's
        // pixels (`YB · wp · cv` floats) stay in cache while every channel block fills them.
        const YB: usize = 4;
        for yb in (0..p.h).step_by(YB) {
            let rows = YB.min(p.h - yb);
            for c0 in (0..full_c).step_by(LANES) {
                for y in yb..yb + rows {
                    let row = &mut dst[((y + p.y0) * wp + p.x0) * cv..][..p.w * cv];
                    // Blocks of 8 pixels; the last one overlaps the one before it (its pixels
                    // are written twice, with the same values) when the row is not a multiple
                    // of 8. A row shorter than 8 is one block of `w` pixels whose loads read
                    // on into the next row, lanes that are never stored.
                    let mut x = 0;
                    while x < p.w {
                        let (x0, n) = match (x + LANES <= p.w, p.w >= LANES) {
                            (true, _) => (x, LANES),
                            (false, true) => (p.w - LANES, LANES),
                            (false, false) => (0, p.w),
                        };
                        if (c0 + LANES - 1) * hw + y * p.w + x0 + LANES <= src.len() {
                            let mut v = [s.zero(); LANES];
                            for (j, vj) in v.iter_mut().enumerate() {
                                *vj = s.load(&src[(c0 + j) * hw + y * p.w + x0..]);
                            }
                            for (i, t) in s.transpose8(v).into_iter().enumerate().take(n) {
                                s.store(t, &mut row[(x0 + i) * cv + c0..]);
                            }
                        } else {
                            // The last row of the last planes: no 8 floats to read past it.
                            for xx in x0..x0 + n {
                                for j in 0..LANES {
                                    row[xx * cv + c0 + j] = src[(c0 + j) * hw + y * p.w + xx];
                                }
                            }
                        }
                        x = x0 + n;
                    }
                }
            }
            for c in full_c..p.channels {
                for y in yb..yb + rows {
                    let row = &mut dst[((y + p.y0) * wp + p.x0) * cv..][..p.w * cv];
                    for (px, &v) in row.chunks_exact_mut(cv).zip(&src[c * hw + y * p.w..][..p.w]) {
                        px[c] = v;
                    }
                }
            }
        }
    }
}

/// [`ChannelLast::copy`] for the SIMD dispatcher.
struct ChannelLastCopy<'a> {
    at: &'a ChannelLast,
    src: &'a [f32],
    dst: &'a mut [f32],
}

impl WithSimd for ChannelLastCopy<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        self.at.copy_with(s, self.src, self.dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{Avx2Fma, Avx512, Fallback};

    /// Every pixel against the definition, for rows shorter than, equal to and longer than a
    /// vector (not multiples of it), channel counts with and without a remainder, and borders.
    fn check<S: Simd>(s: S) {
        for (channels, h, w) in
            [(5, 3, 3), (8, 7, 7), (16, 2, 8), (19, 3, 13), (8, 4, 14), (9, 1, 1)]
        {
            let (y0, x0) = (1, 2);
            let cv = usize::next_multiple_of(channels, LANES);
            let at = ChannelLast { h, w, y0, x0, hp: h + 3, wp: w + 3, channels, cv };
            let src: Vec<f32> = (0..channels * h * w).map(|i| i as f32 + 0.5).collect();
            let mut dst = vec![f32::NAN; at.hp * at.wp * cv];
            at.copy_with(s, &src, &mut dst);
            for yy in 0..at.hp {
                for xx in 0..at.wp {
                    for c in 0..channels {
                        let inside = (y0..y0 + h).contains(&yy) && (x0..x0 + w).contains(&xx);
                        let want =
                            if inside { src[c * h * w + (yy - y0) * w + xx - x0] } else { 0.0 };
                        assert_eq!(dst[(yy * at.wp + xx) * cv + c], want, "{channels}x{h}x{w}");
                    }
                }
            }
        }
    }

    #[test]
    fn channel_last_copies_match_the_definition_at_every_level() {
        check(Fallback);
        match Avx2Fma::new() {
            Some(t) => check(t),
            None => eprintln!("skipping: no avx2"),
        }
        match Avx512::new() {
            Some(t) => check(t),
            None => eprintln!("skipping: no avx512f"),
        }
    }
}
