//! AVX-512 (F + VL) with AVX2 and FMA: the 8-lane [`Simd`] operations of [`Avx2Fma`], compiled
//! inside an `avx512f,avx512vl,avx2,fma` wrapper, plus the 16-lane `__m512` kernels that
//! generic bodies reach through [`Simd::avx512`].
//!
//! The 8-lane methods are the AVX2 ones: under the wider target features the compiler encodes
//! them with EVEX and has 32 vector registers instead of 16, so every kernel body written once
//! over [`Simd`] runs at this level unchanged. Where a kernel gains from 16-lane vectors and
//! masked tails (the GEMM micro-kernel), it asks `s.avx512()` for this token and calls a
//! `#[target_feature]` function written for it.

use super::{Avx2Fma, Simd, SimdLevel};

/// Token for AVX-512F + AVX-512VL (with AVX2 and FMA). Built only by [`Avx512::new`], which
/// checks the CPU, so its methods are safe to call.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(Avx2Fma);

impl Avx512 {
    /// Returns the token when the CPU supports AVX-512F, AVX-512VL, AVX2 and FMA, `None`
    /// otherwise (always `None` off x86-64).
    pub fn new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                return Avx2Fma::new().map(Avx512);
            }
        }
        None
    }
}

impl Simd for Avx512 {
    type V = <Avx2Fma as Simd>::V;
    const LEVEL: SimdLevel = SimdLevel::Avx512;
    #[inline(always)]
    fn zero(self) -> Self::V {
        self.0.zero()
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        self.0.splat(x)
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> Self::V {
        self.0.load(s)
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> Self::V {
        // SAFETY: forwarded with the caller's guarantee (8 readable floats at `p`).
        unsafe { self.0.load_ptr(p) }
    }
    #[inline(always)]
    fn store(self, v: Self::V, s: &mut [f32]) {
        self.0.store(v, s)
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        self.0.add(a, b)
    }
    #[inline(always)]
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        self.0.sub(a, b)
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        self.0.mul(a, b)
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        self.0.fma(a, b, c)
    }
    #[inline(always)]
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        self.0.max(a, b)
    }
    #[inline(always)]
    unsafe fn gather_ptr(self, base: *const f32, idx: &[i32; super::LANES], valid: u8) -> Self::V {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F+VL are available (token); `idx` is 8 readable i32s, and the gather
        // reads only the lanes whose bit of `valid` is set, which the caller guarantees are
        // readable.
        unsafe {
            use std::arch::x86_64::*;
            let offsets = _mm256_loadu_si256(idx.as_ptr().cast());
            _mm256_mmask_i32gather_ps::<4>(_mm256_setzero_ps(), valid, offsets, base)
        }
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: forwarded with the caller's guarantee.
        unsafe {
            self.0.gather_ptr(base, idx, valid)
        }
    }
    #[inline(always)]
    fn transpose8(self, rows: [Self::V; super::LANES]) -> [Self::V; super::LANES] {
        self.0.transpose8(rows)
    }
    #[inline(always)]
    fn avx512(self) -> Option<Avx512> {
        Some(self)
    }
}
