//! Matmul throughput, reported by criterion as elements = flops (`2·m·n·k`), i.e. read
//! "Gelem/s" as GFLOP/s.
//!
//! * `matmul_square/N`: `Tensor` matmul of two N×N matrices (includes allocating the output).
//! * `sgemm_raw/512`: `matrixmultiply::sgemm` called directly at 512³ into a preallocated
//!   buffer — the acceptance bar "Tensor matmul 512³ within 10% of raw sgemm" compares this
//!   with `matmul_square/512` of the same run.
//! * `lenet_fc/…`: the LeNet-5 fully-connected layers at batch 64, `x·Wᵀ` with `W` stored
//!   `[out, in]` (transpose by strides).
//! * `batched/…`: a batched product, to see the rayon split.
//!
//! `cargo bench -p convkit-tensor --bench matmul -- --quick` runs in well under a minute;
//! with `CONVKIT_BENCH_QUICK=1` (set by `cargo xtask bench --quick`) each measurement is
//! capped at 0.5 s, the time at which criterion's quick mode stops.

use std::hint::black_box;
use std::time::Duration;

use convkit_tensor::testing::random_tensor;
use convkit_tensor::{Rng, gemm, matmul_t};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// A group's measurement time: `normal`, or at most 0.5 s when `CONVKIT_BENCH_QUICK=1`.
fn measurement_time(normal: Duration) -> Duration {
    if std::env::var_os("CONVKIT_BENCH_QUICK").is_some_and(|v| v == "1") {
        normal.min(Duration::from_millis(500))
    } else {
        normal
    }
}

fn flops(m: usize, k: usize, n: usize) -> Throughput {
    Throughput::Elements((2 * m * n * k) as u64)
}

fn square(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_square");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(measurement_time(Duration::from_secs(2)));
    for n in [64usize, 128, 256, 512, 1024] {
        let (a, b) = (
            random_tensor(&[n, n], -1.0, 1.0, &mut Rng::new(1)),
            random_tensor(&[n, n], -1.0, 1.0, &mut Rng::new(2)),
        );
        group.throughput(flops(n, n, n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| matmul_t(black_box(&a), false, black_box(&b), false))
        });
    }
    group.finish();
}

fn raw_sgemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("sgemm_raw");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(measurement_time(Duration::from_secs(2)));
    let n = 512usize;
    let (a, b) = (
        random_tensor(&[n, n], -1.0, 1.0, &mut Rng::new(1)),
        random_tensor(&[n, n], -1.0, 1.0, &mut Rng::new(2)),
    );
    let mut out = vec![0.0f32; n * n];
    group.throughput(flops(n, n, n));
    group.bench_function(BenchmarkId::from_parameter(n), |bench| {
        bench.iter(|| {
            // SAFETY: a, b and out are n×n row-major buffers of n·n elements, the strides
            // (n, 1) stay inside them, and out does not alias a or b.
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    n,
                    n,
                    1.0,
                    a.as_slice().as_ptr(),
                    n as isize,
                    1,
                    b.as_slice().as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            black_box(&mut out);
        })
    });
    group.finish();
}

fn lenet_fc(c: &mut Criterion) {
    let mut group = c.benchmark_group("lenet_fc");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(measurement_time(Duration::from_secs(1)));
    let batch = 64;
    for (inp, out) in [(400usize, 120usize), (120, 84), (84, 10)] {
        let x = random_tensor(&[batch, inp], -1.0, 1.0, &mut Rng::new(3));
        let w = random_tensor(&[out, inp], -1.0, 1.0, &mut Rng::new(4));
        group.throughput(flops(batch, inp, out));
        let id = format!("{batch}x{inp}·{out}x{inp}T");
        group.bench_function(id, |bench| {
            bench.iter(|| matmul_t(black_box(&x), false, black_box(&w), true))
        });
    }
    group.finish();
}

/// A linear layer at batch 1 (the dot-product path) on 1 and 2 threads: the flattened
/// 64x7x7 features of a small CNN into 128 units, and LeNet-5's fc1.
fn linear_batch1(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear_b1");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(measurement_time(Duration::from_secs(1)));
    for (inp, out) in [(3136usize, 128usize), (400, 120)] {
        let x = random_tensor(&[1, inp], -1.0, 1.0, &mut Rng::new(7));
        let w = random_tensor(&[out, inp], -1.0, 1.0, &mut Rng::new(8));
        group.throughput(flops(1, inp, out));
        for threads in [1, 2] {
            let pool = convkit_tensor::parallel::pinned_pool(threads).expect("thread pool");
            group.bench_function(format!("1x{inp}·{out}x{inp}T/t{threads}"), |bench| {
                pool.install(|| bench.iter(|| matmul_t(black_box(&x), false, black_box(&w), true)))
            });
        }
        // The same product through sgemm (what matmul_t ran before its dot-product path).
        let mut y = vec![0f32; out];
        group.bench_function(format!("1x{inp}·{out}x{inp}T/sgemm"), |bench| {
            bench.iter(|| {
                let (xs, ws) = (black_box(x.as_slice()), black_box(w.as_slice()));
                gemm(1, inp, out, 1.0, xs, inp, 1, ws, 1, inp, 0.0, &mut y, out, 1)
            })
        });
    }
    group.finish();
}

fn batched(c: &mut Criterion) {
    let mut group = c.benchmark_group("batched");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(measurement_time(Duration::from_secs(1)));
    let (bs, m, k, n) = (16usize, 128usize, 128usize, 128usize);
    let (a, b) = (
        random_tensor(&[bs, m, k], -1.0, 1.0, &mut Rng::new(5)),
        random_tensor(&[bs, k, n], -1.0, 1.0, &mut Rng::new(6)),
    );
    group.throughput(flops(bs * m, k, n));
    group.bench_function(format!("{bs}x{m}x{k}x{n}"), |bench| {
        bench.iter(|| matmul_t(black_box(&a), false, black_box(&b), false))
    });
    group.finish();
}

criterion_group!(benches, square, raw_sgemm, lenet_fc, linear_batch1, batched);
criterion_main!(benches);
