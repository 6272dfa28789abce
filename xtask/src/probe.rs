//! A probe of this machine's f32 fused-multiply-add throughput: the "peak" that benchmark
//! reports express their GFLOP/s against.
//!
//! Each thread runs 10 independent chains of 8-lane FMAs (`acc = acc·a + b`), enough to cover
//! the FMA latency (4–5 cycles) times the number of FMA ports (2) on current x86 cores, so the
//! loop is throughput-bound. One FMA on 8 lanes counts as 16 FLOPs. Without AVX2+FMA the probe
//! measures `f32::mul_add` on scalars and says so. On a CPU with AVX-512F the probe also
//! measures 16-lane FMAs: some cores (Zen 4, client Intel) split a 512-bit FMA in two and reach
//! the same peak at either width, others (Intel server cores with two 512-bit FMA units) double it.

use std::hint::black_box;
use std::thread;
use std::time::Instant;

/// FMAs per chain per timed iteration of the inner loop.
const CHAINS: usize = 10;
const LANES: usize = 8;

/// Result of [`measure`].
pub struct Peak {
    /// GFLOP/s with one thread.
    pub one_thread: f64,
    /// GFLOP/s with `threads` threads together.
    pub all_threads: f64,
    /// Number of threads of the second measurement.
    pub threads: usize,
    /// What was measured (`"AVX2+FMA, 8 lanes"` or the scalar fallback).
    pub kind: &'static str,
    /// 1-thread and all-thread GFLOP/s of 16-lane AVX-512 FMAs, when the CPU has AVX-512F.
    pub avx512: Option<(f64, f64)>,
}

impl Peak {
    /// The machine's peak, 1-thread and all-thread: the wider of the two probes where both ran
    /// (what "% peak" in the reports divides by).
    pub fn best(&self) -> (f64, f64) {
        match self.avx512 {
            Some((one, all)) => (one.max(self.one_thread), all.max(self.all_threads)),
            None => (self.one_thread, self.all_threads),
        }
    }
}

/// Measures the peak with 1 thread and with `threads` threads (best of a few runs each).
pub fn measure(threads: usize) -> Peak {
    let kind =
        if avx2_fma() { "AVX2+FMA, 8 f32 lanes" } else { "scalar f32::mul_add (no AVX2+FMA)" };
    let threads = threads.max(1);
    let best = |n: usize, wide: bool| (0..5).map(|_| run(n, wide)).fold(0.0, f64::max);
    let avx512 = avx512f().then(|| (best(1, true), best(threads, true)));
    Peak { one_thread: best(1, false), all_threads: best(threads, false), threads, kind, avx512 }
}

fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// GFLOP/s of `n` threads each running the kernel (16-lane when `wide`) for the same number
/// of iterations.
fn run(n: usize, wide: bool) -> f64 {
    const ITERS: u64 = 20_000_000;
    let start = Instant::now();
    let flops: f64 = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(move || if wide { kernel_wide(ITERS) } else { kernel(ITERS) }))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// Runs `iters` iterations and returns the FLOPs performed.
fn kernel(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        let sink = unsafe { avx2::chains(iters) };
        black_box(sink);
        return (iters as usize * CHAINS * LANES * 2) as f64;
    }
    let iters = iters / 8; // the scalar loop is slow: keep the probe short
    let mut acc = [1.0f32; CHAINS];
    let (a, b) = (black_box(0.999_9f32), black_box(1e-4f32));
    for _ in 0..iters {
        for x in &mut acc {
            *x = x.mul_add(a, b);
        }
    }
    black_box(acc);
    (iters as usize * CHAINS * 2) as f64
}

/// Runs `iters` iterations of 16-lane FMA chains and returns the FLOPs performed (0 without
/// AVX-512F).
fn kernel_wide(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        let sink = unsafe { avx512::chains(iters) };
        black_box(sink);
        return (iters as usize * CHAINS * 2 * LANES * 2) as f64;
    }
    let _ = iters;
    0.0
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// As `avx2::chains` with 16-lane vectors.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains(iters: u64) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_9));
        let b = _mm512_set1_ps(std::hint::black_box(1e-4));
        let mut acc = [_mm512_set1_ps(std::hint::black_box(1.0)); CHAINS];
        for _ in 0..std::hint::black_box(iters) {
            for x in &mut acc {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for x in acc {
            sum = _mm512_add_ps(sum, x);
        }
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// `CHAINS` independent FMA chains for `iters` iterations; returns a value that depends on
    /// all of them so the work cannot be optimized away.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains(iters: u64) -> f32 {
        // Operands through `black_box`, so the compiler cannot fold the chains.
        let a = _mm256_set1_ps(std::hint::black_box(0.999_9));
        let b = _mm256_set1_ps(std::hint::black_box(1e-4));
        let mut acc = [_mm256_set1_ps(std::hint::black_box(1.0)); CHAINS];
        for _ in 0..std::hint::black_box(iters) {
            for x in &mut acc {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut sum = _mm256_setzero_ps();
        for x in acc {
            sum = _mm256_add_ps(sum, x);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 f32s, the width of the unaligned store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }
}
