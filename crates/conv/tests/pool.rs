//! Pooling against straightforward references (signed window coordinates, every padded
//! position visited) on random shapes, and identical results for 1 and 2 threads.
#![allow(clippy::unwrap_used)]

mod common;

use convkit_conv::pool::{avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward};
use convkit_conv::testing::tolerance;
use convkit_conv::{PoolGeometry, PoolParams};
use proptest::prelude::*;

/// Reference: for each output, visit all kh·kw positions of the padded window; return
/// (max, argmax, average) where the average divides as PyTorch does.
fn reference(g: &PoolGeometry, x: &[f32]) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
    let p = g.params;
    let (mut mx, mut idx, mut avg) = (vec![], vec![], vec![]);
    for plane in x.chunks(g.h * g.w) {
        for y in 0..g.oh {
            for xo in 0..g.ow {
                let (mut best, mut best_i, mut sum, mut count) = (f32::NEG_INFINITY, None, 0f64, 0);
                for i in 0..p.kernel.0 {
                    for j in 0..p.kernel.1 {
                        let iy = (y * p.stride.0 + i) as i64 - p.padding.0 as i64;
                        let ix = (xo * p.stride.1 + j) as i64 - p.padding.1 as i64;
                        if iy < 0 || ix < 0 || iy >= g.h as i64 || ix >= g.w as i64 {
                            continue;
                        }
                        let k = iy as usize * g.w + ix as usize;
                        if best_i.is_none() || plane[k] > best {
                            best = plane[k];
                            best_i = Some(k);
                        }
                        sum += f64::from(plane[k]);
                        count += 1;
                    }
                }
                mx.push(best);
                idx.push(best_i.unwrap());
                let div = if p.count_include_pad { p.kernel.0 * p.kernel.1 } else { count };
                avg.push((sum / div as f64) as f32);
            }
        }
    }
    (mx, idx, avg)
}

fn case() -> impl Strategy<Value = (PoolGeometry, u64)> {
    (
        (1usize..=3, 1usize..=5, 1usize..=20, 1usize..=20),
        (1usize..=5, 1usize..=5, 1usize..=4, 1usize..=4),
        (0usize..=2, 0usize..=2, any::<bool>(), any::<u64>()),
    )
        .prop_filter_map(
            "invalid pooling",
            |((n, c, h, w), (kh, kw, sh, sw), (ph, pw, inc, seed))| {
                let p = PoolParams {
                    kernel: (kh, kw),
                    stride: (sh, sw),
                    padding: (ph, pw),
                    count_include_pad: inc,
                };
                Some((PoolGeometry::new("test", [n, c, h, w], p).ok()?, seed))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::cases(200), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pooling_matches_reference((g, seed) in case()) {
        let x = common::data(g.input_len(), seed);
        let dy = common::data(g.output_len(), seed ^ 1);
        let (rmax, ridx, ravg) = reference(&g, &x);
        let (mut out, mut idx) = (vec![0.0; g.output_len()], vec![0; g.output_len()]);
        max_pool2d(&g, &x, &mut out, &mut idx).unwrap();
        prop_assert_eq!(&out, &rmax);
        prop_assert_eq!(&idx, &ridx);

        let mut gx = vec![0.0; g.input_len()];
        max_pool2d_backward(&g, &dy, &idx, &mut gx).unwrap();
        let mut rgx = vec![0f64; g.input_len()];
        let plane = g.h * g.w;
        for (o, (&d, &i)) in dy.iter().zip(&idx).enumerate() {
            rgx[o / (g.oh * g.ow) * plane + i] += f64::from(d);
        }
        let tol = tolerance::for_sum(tolerance::F32_SUM, 4.0 * 25.0);
        let rgx32: Vec<f32> = rgx.iter().map(|&v| v as f32).collect();
        prop_assert!(tol.check(&gx, &rgx32).is_ok(), "{:?}", tol.check(&gx, &rgx32));

        avg_pool2d(&g, &x, &mut out).unwrap();
        prop_assert!(tol.check(&out, &ravg).is_ok(), "{:?}", tol.check(&out, &ravg));

        // Average backward is the adjoint of the forward: <avg(x), dy> == <x, avg_backward(dy)>.
        avg_pool2d_backward(&g, &dy, &mut gx).unwrap();
        let lhs: f64 = ravg.iter().zip(&dy).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let rhs: f64 = x.iter().zip(&gx).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "{} vs {}", lhs, rhs);
    }
}

/// The unrolled 2x2 / stride-2 path against the reference, on odd and even sizes (the
/// random strategy above rarely draws exactly this window).
#[test]
fn two_by_two_path_matches_reference() {
    for h in 2..=9 {
        for w in 2..=9 {
            let g = PoolGeometry::new("test", [2, 3, h, w], PoolParams::new(2)).unwrap();
            let mut x = common::data(g.input_len(), (h * 10 + w) as u64);
            if h == 5 && w == 4 {
                x[7] = f32::NAN;
            }
            let (rmax, ridx, ravg) = reference(&g, &x);
            let (mut out, mut idx) = (vec![0.0; g.output_len()], vec![0; g.output_len()]);
            max_pool2d(&g, &x, &mut out, &mut idx).unwrap();
            if h == 5 && w == 4 {
                // The reference ignores NaN; the kernel propagates it like PyTorch. Element 7
                // (row 1, column 3) lies in window (0, 1) of plane 0.
                assert!(out[1].is_nan() && idx[1] == 7, "{:?} {:?}", &out[..2], &idx[..2]);
                assert_eq!(out[2..], rmax[2..]);
            } else {
                assert_eq!(out, rmax, "{h}x{w}");
                assert_eq!(idx, ridx, "{h}x{w}");
            }
            avg_pool2d(&g, &x, &mut out).unwrap();
            if !(h == 5 && w == 4) {
                tolerance::F32_SUM.check(&out, &ravg).unwrap();
            }
            let dy = common::data(g.output_len(), 9);
            let mut gx = vec![1.0; g.input_len()];
            avg_pool2d_backward(&g, &dy, &mut gx).unwrap();
            for (i, &v) in gx.iter().enumerate() {
                let (plane, pos) = (i / (h * w), i % (h * w));
                let (iy, ix) = (pos / w, pos % w);
                let want = if iy < 2 * (h / 2) && ix < 2 * (w / 2) {
                    dy[plane * (h / 2) * (w / 2) + (iy / 2) * (w / 2) + ix / 2] / 4.0
                } else {
                    0.0
                };
                assert_eq!(v, want, "{h}x{w} element {i}");
            }
        }
    }
}

/// The vectorized 2x2 average: every width from 2 to 70 (whole vectors of 8 and 16 outputs
/// and every tail), bit for bit the scalar sums `((a + b) + (c + d)) / 4`, and the backward's
/// quarter in each covered input, zero in the rest.
#[test]
fn two_by_two_average_is_the_scalar_sum_at_every_width() {
    for h in [2, 3, 6] {
        for w in 2..=70 {
            let g = PoolGeometry::new("test", [1, 3, h, w], PoolParams::new(2)).unwrap();
            let x = common::data(g.input_len(), (h * 100 + w) as u64);
            let mut out = vec![f32::NAN; g.output_len()];
            avg_pool2d(&g, &x, &mut out).unwrap();
            let (oh, ow) = (h / 2, w / 2);
            for (o, &v) in out.iter().enumerate() {
                let (plane, y, xo) = (o / (oh * ow), o / ow % oh, o % ow);
                let at = |r: usize, c: usize| x[plane * h * w + r * w + c];
                let want = ((at(2 * y, 2 * xo) + at(2 * y, 2 * xo + 1))
                    + (at(2 * y + 1, 2 * xo) + at(2 * y + 1, 2 * xo + 1)))
                    / 4.0;
                assert_eq!(v.to_bits(), want.to_bits(), "{h}x{w} output {o}");
            }
            let dy = common::data(g.output_len(), 3);
            let mut gx = vec![f32::NAN; g.input_len()];
            avg_pool2d_backward(&g, &dy, &mut gx).unwrap();
            for (i, &v) in gx.iter().enumerate() {
                let (plane, iy, ix) = (i / (h * w), i / w % h, i % w);
                let want = if iy < 2 * oh && ix < 2 * ow {
                    dy[plane * oh * ow + (iy / 2) * ow + ix / 2] / 4.0
                } else {
                    0.0
                };
                assert_eq!(v.to_bits(), want.to_bits(), "{h}x{w} input {i}");
            }
        }
    }
}

#[test]
fn same_results_for_1_and_2_threads() {
    let p = PoolParams::new(3).with_stride(2).with_padding(1);
    let g = PoolGeometry::new("test", [8, 16, 33, 30], p).unwrap();
    let x = common::data(g.input_len(), 5);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let (mut m, mut i, mut a) =
                (vec![0.0; g.output_len()], vec![0; g.output_len()], vec![0.0; g.output_len()]);
            max_pool2d(&g, &x, &mut m, &mut i).unwrap();
            avg_pool2d(&g, &x, &mut a).unwrap();
            let mut gm = vec![0.0; g.input_len()];
            max_pool2d_backward(&g, &a, &i, &mut gm).unwrap();
            let mut ga = vec![0.0; g.input_len()];
            avg_pool2d_backward(&g, &m, &mut ga).unwrap();
            (m, i, a, gm, ga)
        })
    };
    assert_eq!(run(1), run(2));
    // The 2x2 window's vectorized path, in runs of planes over the threads.
    let g = PoolGeometry::new("test", [64, 6, 28, 30], PoolParams::new(2)).unwrap();
    let x = common::data(g.input_len(), 6);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut a = vec![0.0; g.output_len()];
            avg_pool2d(&g, &x, &mut a).unwrap();
            let mut ga = vec![f32::NAN; g.input_len()];
            avg_pool2d_backward(&g, &a, &mut ga).unwrap();
            (a, ga)
        })
    };
    assert_eq!(run(1), run(2));
}
