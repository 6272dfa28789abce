//! AVX2 + FMA: `__m256` vectors and `_mm256_*` intrinsics.
//!
//! Every method is `#[inline(always)]` so that it is compiled inside the caller's
//! `#[target_feature(enable = "avx2,fma")]` wrapper. Each intrinsic call is sound because a
//! value of [`Avx2Fma`] exists only after the CPU was checked to support AVX2 and FMA.

use super::{LANES, Lanes, Simd, SimdLevel};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Token for AVX2 + FMA. The private field keeps it from being built without [`Avx2Fma::new`].
#[derive(Debug, Clone, Copy)]
pub struct Avx2Fma(());

impl Avx2Fma {
    /// Returns the token when the CPU supports AVX2 and FMA, `None` otherwise (always `None`
    /// off x86-64).
    pub fn new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Some(Avx2Fma(()));
            }
        }
        None
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2Fma {
    type V = __m256;
    const N: usize = LANES;
    #[inline(always)]
    fn zero(self) -> __m256 {
        // SAFETY: the token proves AVX is available (see `Avx2Fma::new`).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m256 {
        let s = &s[..LANES];
        // SAFETY: AVX is available (token) and `s` holds 8 readable f32; `loadu` needs no
        // alignment.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, v: __m256, s: &mut [f32]) {
        let s = &mut s[..LANES];
        // SAFETY: AVX is available (token) and `s` holds 8 writable f32; `storeu` needs no
        // alignment.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> __m256 {
        // SAFETY: AVX is available (token); the caller guarantees 8 readable floats at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the token proves FMA is available.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn interleave(self, a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: the token proves AVX is available. The unpacks alternate within each
        // 128-bit half (`[a0 b0 a1 b1 | a4 b4 a5 b5]`, `[a2 b2 a3 b3 | a6 b6 a7 b7]`); the
        // permutes put the halves in order.
        unsafe {
            let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            (_mm256_permute2f128_ps::<0x20>(lo, hi), _mm256_permute2f128_ps::<0x31>(lo, hi))
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2Fma {
    const LEVEL: SimdLevel = SimdLevel::Avx2Fma;
    type Wide = Avx2Fma;
    #[inline(always)]
    fn wide(self) -> Avx2Fma {
        self
    }
    #[inline(always)]
    fn join(self, parts: &[__m256]) -> __m256 {
        parts[0]
    }
    #[inline(always)]
    fn split(self, w: __m256, parts: &mut [__m256]) {
        parts[0] = w;
    }
    #[inline(always)]
    fn transpose8(self, r: [__m256; LANES]) -> [__m256; LANES] {
        // SAFETY: the token proves AVX is available; shuffles only.
        unsafe {
            // Interleave pairs of rows, then pairs of pairs within each 128-bit half, then swap
            // the halves.
            // No closures here: a closure body is compiled without the caller's target
            // features, so the intrinsics would not be inlined.
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let u = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            [
                _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
                _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
                _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
                _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
                _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
                _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
                _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
                _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
            ]
        }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn keep_where_positive(self, z: __m256, v: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available. The ordered comparison is false for NaN,
        // so those lanes are cleared too.
        unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(z, _mm256_setzero_ps()), v) }
    }
    #[inline(always)]
    unsafe fn gather_ptr(self, base: *const f32, idx: &[i32; LANES], valid: u8) -> __m256 {
        // SAFETY: AVX2 is available (token). `idx` is 8 readable i32s; the mask's lanes are
        // all-ones exactly where `valid` has its bit set, and the gather reads only those
        // lanes, which the caller guarantees are readable.
        unsafe {
            let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            let on = _mm256_and_si256(_mm256_set1_epi32(i32::from(valid)), bits);
            let mask = _mm256_castsi256_ps(_mm256_cmpeq_epi32(on, bits));
            let offsets = _mm256_loadu_si256(idx.as_ptr().cast());
            _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), base, offsets, mask)
        }
    }
}

/// Off x86-64 the token can never be built; this impl only keeps generic code compiling.
#[cfg(not(target_arch = "x86_64"))]
impl Lanes for Avx2Fma {
    type V = [f32; LANES];
    const N: usize = LANES;
    fn zero(self) -> Self::V {
        super::Fallback.zero()
    }
    fn splat(self, x: f32) -> Self::V {
        super::Fallback.splat(x)
    }
    fn load(self, s: &[f32]) -> Self::V {
        super::Fallback.load(s)
    }
    fn store(self, v: Self::V, s: &mut [f32]) {
        super::Fallback.store(v, s)
    }
    unsafe fn load_ptr(self, p: *const f32) -> Self::V {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { super::Fallback.load_ptr(p) }
    }
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        super::Fallback.add(a, b)
    }
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        super::Fallback.sub(a, b)
    }
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        super::Fallback.mul(a, b)
    }
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        super::Fallback.fma(a, b, c)
    }
    fn interleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V) {
        super::Fallback.interleave(a, b)
    }
}

/// Off x86-64 the token can never be built; this impl only keeps generic code compiling.
#[cfg(not(target_arch = "x86_64"))]
impl Simd for Avx2Fma {
    const LEVEL: SimdLevel = SimdLevel::Avx2Fma;
    type Wide = Avx2Fma;
    fn wide(self) -> Avx2Fma {
        self
    }
    fn join(self, parts: &[Self::V]) -> Self::V {
        parts[0]
    }
    fn split(self, w: Self::V, parts: &mut [Self::V]) {
        parts[0] = w;
    }
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        super::Fallback.max(a, b)
    }
    fn keep_where_positive(self, z: Self::V, v: Self::V) -> Self::V {
        super::Fallback.keep_where_positive(z, v)
    }
    unsafe fn gather_ptr(self, base: *const f32, idx: &[i32; LANES], valid: u8) -> Self::V {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { super::Fallback.gather_ptr(base, idx, valid) }
    }
}
