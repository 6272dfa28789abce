//! AVX-512 (F + VL) with AVX2 and FMA: the 8-lane [`Simd`] operations of [`Avx2Fma`], compiled
//! inside an `avx512f,avx512vl,avx2,fma` wrapper, plus the 16-lane `__m512` kernels that
//! generic bodies reach through [`Simd::avx512`].
//!
//! The 8-lane methods are the AVX2 ones: under the wider target features the compiler encodes
//! them with EVEX and has 32 vector registers instead of 16, so every kernel body written once
//! over [`Simd`] runs at this level unchanged. Where a kernel gains from 16-lane vectors and
//! masked tails (the GEMM micro-kernel), it asks `s.avx512()` for this token and calls a
//! `#[target_feature]` function written for it. Element-wise bodies written over [`Lanes`]
//! get 16 lanes through [`Simd::wide`], whose [`Avx512Wide`] token is defined here.

use super::{Avx2Fma, LANES, Lanes, Simd, SimdLevel, StepRuns};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

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

impl Lanes for Avx512 {
    type V = <Avx2Fma as Lanes>::V;
    const N: usize = LANES;
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
    fn store(self, v: Self::V, s: &mut [f32]) {
        self.0.store(v, s)
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> Self::V {
        // SAFETY: forwarded with the caller's guarantee (8 readable floats at `p`).
        unsafe { self.0.load_ptr(p) }
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
    fn interleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V) {
        self.0.interleave(a, b)
    }
}

impl Simd for Avx512 {
    const LEVEL: SimdLevel = SimdLevel::Avx512;
    #[cfg(target_arch = "x86_64")]
    type Wide = Avx512Wide;
    #[cfg(not(target_arch = "x86_64"))]
    type Wide = Avx512;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn wide(self) -> Avx512Wide {
        Avx512Wide(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn join(self, parts: &[__m256]) -> __m512 {
        let (lo, hi) = (parts[0], parts[1]);
        // SAFETY: AVX-512F is available (token); casts and one 256-bit insert.
        unsafe {
            let lo = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(hi)))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn split(self, w: __m512, parts: &mut [__m256]) {
        // SAFETY: AVX-512F is available (token); casts and one 256-bit extract.
        unsafe {
            parts[0] = _mm512_castps512_ps256(w);
            parts[1] = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(w)));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn wide(self) -> Avx512 {
        self
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn join(self, parts: &[Self::V]) -> Self::V {
        parts[0]
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn split(self, w: Self::V, parts: &mut [Self::V]) {
        parts[0] = w;
    }
    #[inline(always)]
    fn keep_where_positive(self, z: Self::V, v: Self::V) -> Self::V {
        self.0.keep_where_positive(z, v)
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

/// The 16-lane `__m512` arithmetic of the AVX-512 level ([`Simd::Wide`] of [`Avx512`]). Built
/// only from an [`Avx512`] token, so its methods are safe; like every [`Lanes`] method they are
/// `#[inline(always)]`, compiled inside the AVX-512 wrapper of [`super::dispatch`].
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Avx512Wide(Avx512);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512Wide {
    type V = __m512;
    const N: usize = 2 * LANES;
    #[inline(always)]
    fn zero(self) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m512 {
        let s = &s[..2 * LANES];
        // SAFETY: AVX-512F is available (token) and `s` holds 16 readable f32; `loadu` needs no
        // alignment.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, v: __m512, s: &mut [f32]) {
        let s = &mut s[..2 * LANES];
        // SAFETY: AVX-512F is available (token) and `s` holds 16 writable f32.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> __m512 {
        // SAFETY: AVX-512F is available (token); the caller guarantees 16 readable floats at
        // `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn interleave(self, a: __m512, b: __m512) -> (__m512, __m512) {
        // SAFETY: the token proves AVX-512F is available. Index `i` of the two-source permute
        // picks lane `i & 15` of `a` (bit 4 clear) or of `b` (bit 4 set).
        unsafe {
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            (_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b))
        }
    }
    #[inline(always)]
    fn store_window(self, a: __m512, b: __m512, start: usize, len: usize, dst: &mut [f32]) {
        assert!(len <= 2 * LANES && start + len <= 4 * LANES && dst.len() >= len);
        // SAFETY: AVX-512F is available (token). Lane `i` of the permute is lane `start + i`
        // of `a` then `b` (index bit 4 picks `b`; lanes past `len` may wrap and are masked
        // off); the masked store writes only the first `len` floats, which `dst` holds.
        unsafe {
            let step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let idx = _mm512_add_epi32(_mm512_set1_epi32(start as i32), step);
            let v = _mm512_permutex2var_ps(a, idx, b);
            _mm512_mask_storeu_ps(dst.as_mut_ptr(), ((1u32 << len) - 1) as __mmask16, v);
        }
    }
    #[inline(always)]
    fn gather_runs<const A: usize>(
        self,
        runs: &StepRuns,
        src: &[f32],
        at: usize,
        r: usize,
        out: &mut [__m512; A],
    ) {
        let step = runs.step;
        assert!(A == runs.width && at + runs.end <= src.len());
        // SAFETY: AVX-512F is available (token). Run `j`'s loads start at the span of its
        // patch row, column `x − step · l0` of plane row `row` (bit `i` of chunk `k`'s mask
        // is float `16k + i` of the span); `StepRuns::new` set only the bits of patch floats
        // in columns `0..w`, and rows outside the plane are skipped, so every float read is
        // in a plane that ends by `at + end ≤ src.len()` (asserted). Masked-off floats are
        // not read (AVX-512 masked loads suppress them), so the span's start may lie outside
        // `src`: it is only formed with wrapping arithmetic. Index `i` of a two-source
        // permute picks lane `i & 15` of its first operand (bit 4 clear) or of its second.
        unsafe {
            let mut head = [_mm512_setzero_ps(); 4];
            let mut tail = [_mm512_setzero_ps(); 4];
            for j in 0..runs.n {
                let Some(row) = runs.row(j, r) else { continue };
                let x = runs.x[j] - (step * runs.lanes[j].0) as isize;
                let p = src.as_ptr().wrapping_add(at + row).wrapping_offset(x);
                for k in 0..step {
                    let (mh, mt) = (runs.masks[j][k], runs.masks[j][4 + k]);
                    head[k] = _mm512_mask_loadu_ps(head[k], mh, p.wrapping_add(16 * k));
                    tail[k] = _mm512_mask_loadu_ps(tail[k], mt, p.wrapping_add(16 * k + step));
                }
            }
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            if step == 2 {
                // Columns 0, 1 from the head span, 2.. from the tail span.
                let (c0, c1) = split_parity(head[0], head[1], even, odd);
                let (t0, t1) = split_parity(tail[0], tail[1], even, odd);
                for (q, v) in [c0, c1, t0, t1].into_iter().enumerate().take(A) {
                    out[q] = v;
                }
            } else {
                // Halves by parity, then quarters: column `q` is lane `q` of every 4.
                let (e0, o0) = split_parity(head[0], head[1], even, odd);
                let (e1, o1) = split_parity(head[2], head[3], even, odd);
                let (c0, c2) = split_parity(e0, e1, even, odd);
                let (c1, c3) = split_parity(o0, o1, even, odd);
                let (te0, to0) = split_parity(tail[0], tail[1], even, odd);
                let (te1, to1) = split_parity(tail[2], tail[3], even, odd);
                let (t0, t2) = split_parity(te0, te1, even, odd);
                let (t1, t3) = split_parity(to0, to1, even, odd);
                // (Columns past `A` are never computed: their permutes are dead code.)
                let cols = [c0, c1, c2, c3, t0, t1, t2, t3];
                for (q, v) in cols.into_iter().enumerate().take(A) {
                    out[q] = v;
                }
            }
        }
    }
}

/// The even and the odd lanes of the 32 lanes of `a` then `b`, with the permute indices
/// `even` (0, 2, …, 30) and `odd` (1, 3, …, 31).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn split_parity(a: __m512, b: __m512, even: __m512i, odd: __m512i) -> (__m512, __m512) {
    // SAFETY: called only from `Avx512Wide` methods, whose token proves AVX-512F.
    unsafe { (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b)) }
}

/// The 16x16 transpose of `rows`: lane `j` of output `i` is lane `i` of `rows[j]`. Four rounds
/// of in-lane unpacks (pairs of floats, then pairs of pairs) and 128-bit lane shuffles, 64
/// instructions for 256 floats; the direct kernel's channel path stores its tiles with it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(_: Avx512, rows: [__m512; 16]) -> [__m512; 16] {
    // (Loops, not closures: a closure body does not inherit this function's target features.)
    let r = rows;
    let mut t = [_mm512_setzero_ps(); 16];
    // Rows 2i, 2i+1 interleaved by floats within each 128-bit lane.
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // `u[4i + m]`, 128-bit lane `L`: rows `4i..4i+4` of column `4L + m`.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        for h in 0..2 {
            let a = _mm512_castps_pd(t[4 * i + h]);
            let b = _mm512_castps_pd(t[4 * i + 2 + h]);
            u[4 * i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            u[4 * i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    }
    // `v[p][m][half]`: 128-bit lanes `2·half`, `2·half + 1` of `u[8p + m]`, then of
    // `u[8p + 4 + m]`.
    let mut v = [[[_mm512_setzero_ps(); 2]; 4]; 2];
    for (p, vp) in v.iter_mut().enumerate() {
        for (m, vm) in vp.iter_mut().enumerate() {
            let (a, b) = (u[8 * p + m], u[8 * p + 4 + m]);
            vm[0] = _mm512_shuffle_f32x4(a, b, 0x44);
            vm[1] = _mm512_shuffle_f32x4(a, b, 0xEE);
        }
    }
    // Column `4L + m`: lane `L` of `u[m]`, `u[4 + m]`, `u[8 + m]`, `u[12 + m]`.
    let mut out = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        for half in 0..2 {
            let (a, b) = (v[0][m][half], v[1][m][half]);
            out[4 * (2 * half) + m] = _mm512_shuffle_f32x4(a, b, 0x88);
            out[4 * (2 * half + 1) + m] = _mm512_shuffle_f32x4(a, b, 0xDD);
        }
    }
    out
}

/// Off x86-64 there is no 16-lane type; the name stays so that paths resolve everywhere.
#[cfg(not(target_arch = "x86_64"))]
pub type Avx512Wide = Avx512;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn transpose16_swaps_rows_and_lanes() {
        let Some(w) = Avx512::new() else {
            eprintln!("skipping: no avx512f");
            return;
        };
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut got = [0f32; 256];
        // SAFETY: the token proves AVX-512F; every load and store covers 16 floats of a
        // 256-float buffer at a multiple of 16.
        unsafe {
            let rows: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(m[16 * i..].as_ptr()));
            for (i, v) in transpose16(w, rows).into_iter().enumerate() {
                _mm512_storeu_ps(got[16 * i..].as_mut_ptr(), v);
            }
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[16 * i + j], m[16 * j + i], "({i}, {j})");
            }
        }
    }
}
