//! Elementwise operations and a reduction on a large activation tensor ([64, 32, 28, 28], 1.6 M
//! values) on 1 and 2 threads: `relu`, a same-shape `add`, `axpy` in place (the optimizer's
//! update) and `sum_to` per channel (a bias gradient). Above `PAR_MIN_ELEMENTS` they split over
//! rayon's pool; results are the same either way.

use std::hint::black_box;
use std::time::Duration;

use convkit_tensor::{Rng, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn elementwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise");
    let quick = std::env::var_os("CONVKIT_BENCH_QUICK").is_some();
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(if quick { 500 } else { 1500 }));
    let dims = [64, 32, 28, 28];
    let mut rng = Rng::new(1);
    let x = Tensor::rand_uniform(&dims, -1.0, 1.0, &mut rng).expect("tensor");
    let y = Tensor::rand_uniform(&dims, -1.0, 1.0, &mut rng).expect("tensor");
    group.throughput(Throughput::Elements(x.numel() as u64));
    for threads in [1, 2] {
        let pool = convkit_tensor::parallel::pinned_pool(threads).expect("pool");
        group.bench_function(format!("relu/t{threads}"), |b| {
            pool.install(|| b.iter(|| black_box(&x).relu()))
        });
        group.bench_function(format!("add/t{threads}"), |b| {
            pool.install(|| b.iter(|| black_box(&x).add(black_box(&y))))
        });
        // The reduction of a bias gradient: per-channel sums over the batch and the plane.
        group.bench_function(format!("sum_to_channels/t{threads}"), |b| {
            pool.install(|| b.iter(|| black_box(&x).sum_to(&[1, 32, 1, 1])))
        });
        let mut w = x.clone();
        group.bench_function(format!("axpy/t{threads}"), |b| {
            pool.install(|| b.iter(|| w.axpy(-1e-3, black_box(&y))))
        });
    }
    group.finish();
}

criterion_group!(benches, elementwise);
criterion_main!(benches);
