//! The portable instruction set: `[f32; 8]` arrays with element-wise loops, which the
//! compiler vectorizes for the baseline target.

use super::{LANES, Lanes, Simd, SimdLevel};

/// Portable 8-lane "vectors"; always available.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fallback;

#[inline(always)]
fn map2(a: [f32; LANES], b: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> [f32; LANES] {
    std::array::from_fn(|i| f(a[i], b[i]))
}

impl Lanes for Fallback {
    type V = [f32; LANES];
    const N: usize = LANES;
    #[inline(always)]
    fn zero(self) -> Self::V {
        [0.0; LANES]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; LANES]
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> Self::V {
        let mut v = [0.0; LANES];
        v.copy_from_slice(&s[..LANES]);
        v
    }
    #[inline(always)]
    fn store(self, v: Self::V, s: &mut [f32]) {
        s[..LANES].copy_from_slice(&v);
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 8 readable floats at `p`; `[f32; 8]` has the alignment
        // of `f32`, which `p` has as a valid `f32` pointer.
        unsafe { p.cast::<[f32; LANES]>().read() }
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |x, y| x * y)
    }
    /// Unfused `a·b + c`: `f32::mul_add` would call a slow libm routine on CPUs without FMA.
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn interleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V) {
        let pick = |i: usize| if i.is_multiple_of(2) { a[i / 2] } else { b[i / 2] };
        (std::array::from_fn(pick), std::array::from_fn(|i| pick(i + LANES)))
    }
}

impl Simd for Fallback {
    const LEVEL: SimdLevel = SimdLevel::Fallback;
    type Wide = Fallback;
    #[inline(always)]
    fn wide(self) -> Fallback {
        self
    }
    #[inline(always)]
    fn join(self, parts: &[Self::V]) -> Self::V {
        parts[0]
    }
    #[inline(always)]
    fn split(self, w: Self::V, parts: &mut [Self::V]) {
        parts[0] = w;
    }
    #[inline(always)]
    unsafe fn gather_ptr(self, base: *const f32, idx: &[i32; LANES], valid: u8) -> Self::V {
        std::array::from_fn(|l| {
            if valid & (1 << l) == 0 {
                0.0
            } else {
                // SAFETY: the caller guarantees `base + idx[l]` is readable for set bits.
                unsafe { *base.offset(idx[l] as isize) }
            }
        })
    }
    #[inline(always)]
    fn keep_where_positive(self, z: Self::V, v: Self::V) -> Self::V {
        map2(z, v, |z, v| if z > 0.0 { v } else { 0.0 })
    }
    /// `a > b ? a : b` per lane, like `maxps`: a NaN in either gives `b`.
    #[inline(always)]
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        map2(a, b, |x, y| if x > y { x } else { y })
    }
}
