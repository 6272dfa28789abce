//! Convolution benchmarks over the project's shape suite ([`convkit_conv::suite::SHAPES`]).
//!
//! Throughput is reported as `Throughput::Elements(flops)`, so criterion's "Gelem/s" reads as
//! **GFLOP/s**: forward counts `2·N·K·(C/g)·R·S·OH·OW` ([`ConvGeometry::flops`]); backward
//! (input + weight + bias gradients) counts twice that — one forward's worth for the input
//! gradient and one for the weight gradient — so "fwd + bwd" totals the 3x convention of the
//! reference tables.
//!
//! `gemm/<shape>/<level>` times `sgemm` alone, at each SIMD level the CPU has, on the products
//! im2col runs (the ceiling of the im2col forward), `winograd_prepared_t1/<shape>/{f2,f4}`
//! Winograd with a filter transformed beforehand (as a layer caching it runs), and `pool/…`
//! LeNet's pooling layers.
//!
//! Every algorithm that [`supports`] a shape is measured, except `naive` on shapes above
//! 50 MFLOP (seconds per call), on 1 and on 2 threads (a rayon pool of each size, each worker
//! pinned to a CPU of its own by `convkit_tensor::parallel::pinned_pool`). Group ids are
//! `conv_fwd_t{threads}/{shape}` and `conv_bwd_t{threads}/{shape}`, one function per
//! algorithm — the names `cargo xtask bench` lays out in `docs/benchmarks.md`. Quick look:
//! `cargo bench -p convkit-conv --bench conv -- --quick conv_fwd_t1/res3x3_28b8`.
//!
//! `CONVKIT_BENCH_QUICK=1` (set by `cargo xtask bench --quick`) shortens the run for criterion's
//! `--quick` mode, which measures until the estimate settles or the measurement time is up:
//! each group's measurement time is capped at 0.5 s (instead of 2 s, 1 s for pooling), and
//! `naive`, the slow reference, is measured only below 20 MFLOP (`lenet_c1` and `depthwise`).

use std::hint::black_box;
use std::time::Duration;

use convkit_conv::suite::{SHAPES, sample_data as data};
use convkit_conv::{
    BackwardInputs, ConvAlgo, ConvGeometry, GradBuffers, conv2d_backward, conv2d_forward, supports,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Naive is only measured below this many FLOPs.
const NAIVE_MAX_FLOPS: u64 = 50_000_000;
/// The same limit when `CONVKIT_BENCH_QUICK=1`.
const NAIVE_MAX_FLOPS_QUICK: u64 = 20_000_000;

/// Whether `CONVKIT_BENCH_QUICK=1` asks for a short run (`cargo xtask bench --quick`).
fn quick() -> bool {
    std::env::var_os("CONVKIT_BENCH_QUICK").is_some_and(|v| v == "1")
}

/// The measurement time of a group: `normal`, or 0.5 s in a quick run. In criterion's quick
/// mode this is the cap on each benchmark's time.
fn measurement_time(normal: Duration) -> Duration {
    if quick() { normal.min(Duration::from_millis(500)) } else { normal }
}

fn algos(g: &ConvGeometry) -> impl Iterator<Item = ConvAlgo> + '_ {
    let naive_max = if quick() { NAIVE_MAX_FLOPS_QUICK } else { NAIVE_MAX_FLOPS };
    ConvAlgo::ALL
        .into_iter()
        .filter(move |&a| supports(a, g) && !(a == ConvAlgo::Naive && g.flops() > naive_max))
}

/// `sgemm` alone on the product im2col runs for each shape (`[K', C'RS] · [C'RS, OH·OW]` per
/// image and group): the ceiling of the im2col forward, measured beside it.
fn gemm_ceiling(c: &mut Criterion) {
    use convkit_conv::simd::SimdLevel;
    use convkit_conv::testing::{MatRef, sgemm_with};
    for shape in &SHAPES {
        let Ok(g) = shape.geometry() else { continue };
        let (m, k, n) = (g.c_out_per_group(), g.c_in_per_group() * g.kh * g.kw, g.oh * g.ow);
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let mut out = vec![0.0; m * n];
        let mut group = c.benchmark_group(format!("gemm/{}", shape.name));
        group.throughput(Throughput::Elements(g.flops()));
        group.sample_size(10).warm_up_time(Duration::from_millis(500));
        group.measurement_time(measurement_time(Duration::from_secs(2)));
        // Each SIMD level the CPU runs, so that a level's kernel is compared with its twin
        // in the same run (the active level is what `sgemm` uses).
        for level in SimdLevel::available_levels() {
            if level == SimdLevel::Fallback {
                continue;
            }
            group.bench_function(level.name(), |bench| {
                bench.iter(|| {
                    for _ in 0..g.n * g.params.groups {
                        sgemm_with(
                            level,
                            1.0,
                            MatRef::row_major(black_box(&a), m, k),
                            MatRef::row_major(&b, k, n),
                            0.0,
                            &mut out,
                            n,
                        );
                    }
                });
            });
        }
        group.finish();
    }
}

fn bench(c: &mut Criterion) {
    for threads in [1, 2] {
        let Ok(pool) = convkit_tensor::parallel::pinned_pool(threads) else {
            continue;
        };
        bench_threads(c, threads, &pool);
    }
}

/// Each timed call runs inside `pool.install` (criterion itself cannot move into the pool);
/// the hand-off costs a few microseconds, under 1% of the smallest shape's time.
fn bench_threads(c: &mut Criterion, threads: usize, pool: &rayon::ThreadPool) {
    for shape in &SHAPES {
        let Ok(g) = shape.geometry() else { continue };
        let x = data(g.input_len(), 1);
        let w = data(g.weight_len(), 2);
        let b = data(g.c_out, 3);
        let dy = data(g.output_len(), 4);
        let mut out = vec![0.0; g.output_len()];
        let (mut gx, mut gw, mut gb) =
            (vec![0.0; g.input_len()], vec![0.0; g.weight_len()], vec![0.0; g.c_out]);

        let mut group = c.benchmark_group(format!("conv_fwd_t{threads}/{}", shape.name));
        group.throughput(Throughput::Elements(g.flops()));
        group.sample_size(10).warm_up_time(Duration::from_millis(500));
        group.measurement_time(measurement_time(Duration::from_secs(2)));
        for algo in algos(&g) {
            group.bench_function(algo.name(), |bench| {
                bench.iter(|| {
                    pool.install(|| {
                        conv2d_forward(&g, black_box(&x), &w, Some(&b), &mut out, algo).ok()
                    })
                });
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("conv_bwd_t{threads}/{}", shape.name));
        group.throughput(Throughput::Elements(2 * g.flops()));
        group.sample_size(10).warm_up_time(Duration::from_millis(500));
        group.measurement_time(measurement_time(Duration::from_secs(2)));
        // Every algorithm's backward: `direct` runs its own kernel where `backward_kernel`
        // picks it; after Winograd the input gradient is a Winograd convolution, the weight
        // gradient runs in the Winograd domain where `backward_kernel` says so, and the bias
        // gradient on im2col.
        for algo in algos(&g) {
            group.bench_function(algo.name(), |bench| {
                bench.iter(|| {
                    pool.install(|| {
                        conv2d_backward(
                            &g,
                            BackwardInputs { input: black_box(&x), weight: &w, grad_output: &dy },
                            GradBuffers {
                                input: Some(&mut gx),
                                weight: Some(&mut gw),
                                bias: Some(&mut gb),
                            },
                            algo,
                        )
                        .ok()
                    })
                });
            });
        }
        group.finish();
    }
}

/// Winograd with the filter transformed once, outside the timed call — what a layer that
/// caches its `WinogradFilter` (as `convkit-nn`'s `Conv2d` does for inference) pays per call —
/// on 1 thread, beside the per-call `conv_fwd_t1/<shape>/winograd*` figures.
fn winograd_prepared(c: &mut Criterion) {
    use convkit_conv::{WinogradFilter, WinogradVariant, conv2d_winograd_prepared};
    let Ok(pool) = convkit_tensor::parallel::pinned_pool(1) else { return };
    for shape in &SHAPES {
        let Ok(g) = shape.geometry() else { continue };
        let variants = [("f2", WinogradVariant::F2x2_3x3), ("f4", WinogradVariant::F4x4_3x3)];
        let x = data(g.input_len(), 1);
        let w = data(g.weight_len(), 2);
        let b = data(g.c_out, 3);
        let mut out = vec![0.0; g.output_len()];
        let mut group = c.benchmark_group(format!("winograd_prepared_t1/{}", shape.name));
        group.throughput(Throughput::Elements(g.flops()));
        group.sample_size(10).warm_up_time(Duration::from_millis(500));
        group.measurement_time(measurement_time(Duration::from_secs(2)));
        for (name, variant) in variants {
            // Winograd's own shapes only, and not depthwise (one input channel per group).
            if g.c_in_per_group() < 2 || !convkit_conv::testing::winograd_supports(&g, variant) {
                continue;
            }
            let Ok(filter) = WinogradFilter::new(&w, g.weight_dims(), g.params.groups, variant)
            else {
                continue;
            };
            group.bench_function(name, |bench| {
                bench.iter(|| {
                    pool.install(|| {
                        conv2d_winograd_prepared(&g, black_box(&x), &filter, Some(&b), &mut out)
                            .ok()
                    })
                });
            });
        }
        group.finish();
    }
}

/// LeNet's pooling layers (2x2, stride 2) forward and backward; throughput counts input
/// elements, so "Gelem/s" reads as input elements per second.
fn pooling(c: &mut Criterion) {
    use convkit_conv::pool::{avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward};
    use convkit_conv::{PoolGeometry, PoolParams};
    for (name, dims) in [("lenet_s2", [64, 6, 28, 28]), ("lenet_s4", [64, 16, 10, 10])] {
        let Ok(g) = PoolGeometry::new("bench", dims, PoolParams::new(2)) else { continue };
        let x = data(g.input_len(), 5);
        let dy = data(g.output_len(), 6);
        let (mut out, mut idx, mut gx) =
            (vec![0.0; g.output_len()], vec![0; g.output_len()], vec![0.0; g.input_len()]);
        let mut group = c.benchmark_group(format!("pool/{name}"));
        group.throughput(Throughput::Elements(g.input_len() as u64));
        group.sample_size(10).warm_up_time(Duration::from_millis(300));
        group.measurement_time(measurement_time(Duration::from_secs(1)));
        group.bench_function("max", |b| {
            b.iter(|| max_pool2d(&g, black_box(&x), &mut out, &mut idx).ok())
        });
        group.bench_function("max_backward", |b| {
            b.iter(|| max_pool2d_backward(&g, black_box(&dy), &idx, &mut gx).ok())
        });
        group.bench_function("avg", |b| b.iter(|| avg_pool2d(&g, black_box(&x), &mut out).ok()));
        group.bench_function("avg_backward", |b| {
            b.iter(|| avg_pool2d_backward(&g, black_box(&dy), &mut gx).ok())
        });
        group.finish();
    }
}

criterion_group!(benches, bench, gemm_ceiling, winograd_prepared, pooling);
criterion_main!(benches);
