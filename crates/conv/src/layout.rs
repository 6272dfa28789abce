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
        let (full_c, full_x) = (p.channels / LANES * LANES, p.w / LANES * LANES);
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
                    for x0 in (0..full_x).step_by(LANES) {
                        let mut v = [s.zero(); LANES];
                        for (j, vj) in v.iter_mut().enumerate() {
                            *vj = s.load(&src[(c0 + j) * hw + y * p.w + x0..]);
                        }
                        for (i, t) in s.transpose8(v).into_iter().enumerate() {
                            s.store(t, &mut row[(x0 + i) * cv + c0..]);
                        }
                    }
                    for x in full_x..p.w {
                        for j in 0..LANES {
                            row[x * cv + c0 + j] = src[(c0 + j) * hw + y * p.w + x];
                        }
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
