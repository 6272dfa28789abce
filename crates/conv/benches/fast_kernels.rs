//! Forward throughput of the direct and Winograd kernels on the suite shapes, with the GEMM an
//! im2col kernel would run (`sgemm_equiv`, packing excluded) as a yardstick.
//!
//! Throughput is `Elements(flops)`, so criterion's "elem/s" reads as FLOP/s (Winograd counts
//! the direct-convolution FLOPs: an *effective* rate). Set `RAYON_NUM_THREADS=1` for
//! single-thread figures; `CONVKIT_SIMD=off` for the portable path.
//!
//! `cargo bench -p convkit-conv --bench fast_kernels -- --quick [filter]`
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use convkit_conv::{
    Conv2dParams, ConvGeometry, WinogradFilter, WinogradVariant, conv2d_direct,
    conv2d_winograd_prepared, simd, winograd_supports,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// The suite: name, input dims, weight dims, parameters.
fn suite() -> Vec<(&'static str, [usize; 4], [usize; 4], Conv2dParams)> {
    let p = Conv2dParams::default();
    vec![
        ("lenet_c1", [64, 1, 32, 32], [6, 1, 5, 5], p),
        ("lenet_c2", [64, 6, 14, 14], [16, 6, 5, 5], p),
        ("res3x3_56", [1, 64, 56, 56], [64, 64, 3, 3], p.with_padding(1)),
        ("res3x3_28b8", [8, 128, 28, 28], [128, 128, 3, 3], p.with_padding(1)),
        ("vgg3x3_14", [1, 256, 14, 14], [256, 256, 3, 3], p.with_padding(1)),
        ("strided", [8, 64, 56, 56], [128, 64, 3, 3], p.with_stride(2).with_padding(1)),
        ("pointwise", [8, 256, 14, 14], [256, 256, 1, 1], p),
        ("depthwise", [8, 128, 28, 28], [128, 1, 3, 3], p.with_padding(1).with_groups(128)),
        ("dilated", [8, 64, 28, 28], [64, 64, 3, 3], p.with_padding(2).with_dilation(2)),
    ]
}

fn data(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn forward(c: &mut Criterion) {
    let level = simd::active();
    let mut group = c.benchmark_group(format!("forward_{level}"));
    group.sample_size(10);
    for (name, input, weight, params) in suite() {
        let g = ConvGeometry::new(input, weight, params).unwrap();
        let (x, w, b) = (data(g.input_len()), data(g.weight_len()), data(g.c_out));
        let mut out = vec![0.0; g.output_len()];
        group.throughput(Throughput::Elements(g.flops()));
        group.bench_function(BenchmarkId::new("direct", name), |bench| {
            bench.iter(|| conv2d_direct(&g, black_box(&x), &w, Some(&b), &mut out).unwrap())
        });
        for v in [WinogradVariant::F2x2_3x3, WinogradVariant::F4x4_3x3] {
            if !winograd_supports(&g, v) {
                continue;
            }
            let filter = WinogradFilter::new(&w, g.weight_dims(), params.groups, v).unwrap();
            group.bench_function(BenchmarkId::new(v.name(), name), |bench| {
                bench.iter(|| {
                    conv2d_winograd_prepared(&g, black_box(&x), &filter, Some(&b), &mut out)
                        .unwrap()
                })
            });
        }
        // The GEMM of im2col, one image at a time: [K/g, C/g·R·S] × [C/g·R·S, OH·OW] per group.
        let (m, k, n) = (g.c_out_per_group(), g.c_in_per_group() * g.kh * g.kw, g.oh * g.ow);
        let (a, bm) = (data(m * k), data(k * n));
        let mut cm = vec![0.0; m * n];
        group.bench_function(BenchmarkId::new("sgemm_equiv", name), |bench| {
            bench.iter(|| {
                for _ in 0..g.n * params.groups {
                    // SAFETY: a is m×k, bm is k×n, cm is m×n, all row-major and distinct.
                    unsafe {
                        matrixmultiply::sgemm(
                            m,
                            k,
                            n,
                            1.0,
                            a.as_ptr(),
                            k as isize,
                            1,
                            bm.as_ptr(),
                            n as isize,
                            1,
                            0.0,
                            cm.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    }
                }
                black_box(&cm);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
