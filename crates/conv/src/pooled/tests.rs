#![allow(clippy::unwrap_used)]

use super::*;
use crate::pool::{PoolGeometry, avg_pool2d, max_pool2d};
use crate::simd::{self, SimdLevel, WithSimd};
use crate::{ConvAlgo, ConvGeometry, PooledImage, PreparedConv, conv2d_naive};
use convkit_tensor::Rng;
use convkit_tensor::testing::{Tolerance, assert_close, random_vec};

/// The definition: the naive convolution (f64 sums), the ReLU, then the pool kernel.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    xd: [usize; 4],
    w: &[f32],
    wd: [usize; 4],
    b: &[f32],
    p: Conv2dParams,
    kind: PoolKind,
    relu: bool,
) -> (Vec<f32>, Vec<f32>) {
    let g = ConvGeometry::new(xd, wd, p).unwrap();
    let mut y = vec![0.0; g.output_len()];
    conv2d_naive(&g, x, w, Some(b), &mut y).unwrap();
    let conv = y.clone();
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    let pg = PoolGeometry::new("ref", g.output_dims(), PoolParams::new(2)).unwrap();
    let mut out = vec![0.0; pg.output_len()];
    match kind {
        PoolKind::Avg => avg_pool2d(&pg, &y, &mut out).unwrap(),
        PoolKind::Max => max_pool2d(&pg, &y, &mut out, &mut vec![0; pg.output_len()]).unwrap(),
    }
    (conv, out)
}

/// The fused pass of one image at an explicit level.
struct One<'a> {
    conv: &'a PreparedConv,
    image: PooledImage<'a>,
}

impl WithSimd for One<'_> {
    type Output = Result<()>;
    fn with_simd<S: Simd>(self, s: S) -> Result<()> {
        self.conv.pooled_image_with(s, self.image, &mut Vec::new())
    }
}

/// Sums of `c_in·kh·kw` products in f32 against f64: relative to the terms' magnitude.
fn tol(terms: usize) -> Tolerance {
    Tolerance::absolute(1e-6 * terms as f64).scale_atol(4.0)
}

#[test]
fn matches_the_layers_for_random_shapes_at_every_level() {
    let mut rng = Rng::new(21);
    // (n, c_in, h, w, c_out, k, pad): both tilings, odd sizes, wide rows, tails.
    let cases = [
        (2, 1, 32, 32, 6, 5, 0),
        (3, 6, 14, 14, 16, 5, 0),
        (1, 3, 13, 11, 5, 3, 1),
        (2, 2, 9, 40, 20, 3, 1),
        (1, 4, 7, 7, 33, 2, 0),
        (1, 1, 5, 37, 1, 1, 2),
        (2, 5, 12, 10, 16, 4, 1),
        (1, 2, 7, 70, 3, 3, 1),
        (1, 3, 9, 29, 17, 3, 1),
    ];
    for (n, c_in, h, w, c_out, k, pad) in cases {
        let xd = [n, c_in, h, w];
        let wd = [c_out, c_in, k, k];
        let p = Conv2dParams::default().with_padding(pad);
        let x = random_vec(n * c_in * h * w, -1.0, 1.0, &mut rng);
        let wt = random_vec(c_out * c_in * k * k, -0.5, 0.5, &mut rng);
        let b = random_vec(c_out, -0.2, 0.2, &mut rng);
        for kind in [PoolKind::Avg, PoolKind::Max] {
            for relu in [true, false] {
                let (conv_ref, want) = reference(&x, xd, &wt, wd, &b, p, kind, relu);
                let mut layer = PreparedConv::new(&wt, wd, Some(&b), p, ConvAlgo::Direct).unwrap();
                if relu {
                    layer = layer.with_relu();
                }
                let layer = layer.with_pool(kind, PoolParams::new(2)).unwrap();
                let od = layer.output_dims(xd).unwrap();
                assert_eq!(od.iter().product::<usize>(), want.len());
                let what = format!("{xd:?} {wd:?} pad {pad} {kind:?} relu {relu}");
                let mut y = vec![0.0; want.len()];
                assert_eq!(layer.forward(&x, xd, &mut y).unwrap(), ConvAlgo::Direct);
                assert_close(&what, &y, &want, tol(c_in * k * k));
                // Image by image at every level, with the map and channels last: the same bits.
                let d = layer.pooled().dims("test", h, w).unwrap();
                let (il, ol) = layer.pooled().image_lens(&d);
                // The fused levels (AVX2 and AVX-512) add the same products in the same order.
                let mut fused_bits: Vec<Option<Vec<f32>>> = vec![None; n];
                for level in SimdLevel::ALL {
                    if !level.available() {
                        eprintln!("skipping {level}: not available on this CPU");
                        continue;
                    }
                    for i in 0..n {
                        let mut out = vec![0.0; ol];
                        let mut last = vec![0.0; ol];
                        let mut map = vec![0.0; c_out * 4 * d.ph * d.pw];
                        for (layout, dst, m) in [
                            (PooledLayout::Planes, &mut out, Some(&mut map)),
                            (PooledLayout::ChannelsLast, &mut last, None),
                        ] {
                            let image = PooledImage {
                                input: &x[i * il..][..il],
                                height: h,
                                width: w,
                                output: dst,
                                layout,
                                conv_map: m.map(|m| &mut m[..]),
                            };
                            simd::dispatch(level, One { conv: &layer, image }).unwrap().unwrap();
                        }
                        let want_i = &want[i * ol..][..ol];
                        let got_i = &y[i * ol..][..ol];
                        let at = format!("{what} image {i} at {level}");
                        assert_close(&at, &out, want_i, tol(c_in * k * k));
                        if level == simd::active() {
                            assert_eq!(out, got_i, "{at}: batch and image calls differ");
                        }
                        if level != SimdLevel::Fallback {
                            match &fused_bits[i] {
                                Some(first) => assert!(
                                    first.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                                    "{at}: differs from the other fused level"
                                ),
                                None => fused_bits[i] = Some(out.clone()),
                            }
                        }
                        let planes = d.ph * d.pw;
                        for (pixel, ch) in last.chunks_exact(c_out).enumerate() {
                            for (kk, &v) in ch.iter().enumerate() {
                                assert_eq!(v.to_bits(), out[kk * planes + pixel].to_bits(), "{at}");
                            }
                        }
                        let (oh, ow) = (h + 2 * pad - k + 1, w + 2 * pad - k + 1);
                        let conv_i = &conv_ref[i * c_out * oh * ow..][..c_out * oh * ow];
                        for kk in 0..c_out {
                            for yy in 0..2 * d.ph {
                                let got = &map[(kk * 2 * d.ph + yy) * 2 * d.pw..][..2 * d.pw];
                                let want = &conv_i[(kk * oh + yy) * ow..][..2 * d.pw];
                                assert_close(&at, got, want, tol(c_in * k * k));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn other_algorithms_pool_after_the_full_output_and_threads_do_not_change_bits() {
    let mut rng = Rng::new(5);
    let (xd, wd) = ([20, 8, 16, 16], [16, 8, 3, 3]);
    let p = Conv2dParams::default().with_padding(1);
    let x = random_vec(20 * 8 * 256, -1.0, 1.0, &mut rng);
    let w = random_vec(16 * 8 * 9, -0.5, 0.5, &mut rng);
    let b = random_vec(16, -0.2, 0.2, &mut rng);
    let (_, want) = reference(&x, xd, &w, wd, &b, p, PoolKind::Max, true);
    let g = crate::ConvGeometry::new(xd, wd, p).unwrap();
    for algo in ConvAlgo::ALL.into_iter().filter(|&a| crate::supports(a, &g)) {
        let layer = PreparedConv::new(&w, wd, Some(&b), p, algo)
            .unwrap()
            .with_relu()
            .with_pool(PoolKind::Max, PoolParams::new(2))
            .unwrap();
        let mut y = vec![0.0; want.len()];
        let ran = layer.forward(&x, xd, &mut y).unwrap();
        assert_close(&format!("{algo} ran {ran}"), &y, &want, tol(72));
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut again = vec![0.0; want.len()];
            pool.install(|| layer.forward(&x, xd, &mut again)).unwrap();
            assert_eq!(again, y, "{algo} on {threads} threads");
        }
    }
}

#[test]
fn unsupported_pools_and_small_inputs_are_errors() {
    let w = vec![0.1; 2 * 9];
    let layer = PreparedConv::new(&w, [2, 1, 3, 3], None, Conv2dParams::default(), ConvAlgo::Auto);
    let layer = layer.unwrap();
    let e = PreparedConv::new(
        &w,
        [2, 1, 3, 3],
        None,
        Conv2dParams::default().with_stride(2),
        ConvAlgo::Auto,
    )
    .unwrap()
    .with_pool(PoolKind::Avg, PoolParams::new(2))
    .unwrap_err();
    assert!(e.to_string().contains("stride 1"), "{e}");
    let e = PreparedConv::new(&w, [2, 1, 3, 3], None, Conv2dParams::default(), ConvAlgo::Auto)
        .unwrap()
        .with_pool(PoolKind::Avg, PoolParams::new(3))
        .unwrap_err();
    assert!(e.to_string().contains("2x2 pool"), "{e}");
    let e = layer.pooled_image_with(
        simd::Fallback,
        PooledImage {
            input: &[0.0; 9],
            height: 3,
            width: 3,
            output: &mut [],
            layout: PooledLayout::Planes,
            conv_map: None,
        },
        &mut Vec::new(),
    );
    assert!(e.unwrap_err().to_string().contains("no fused pool"));
    let pooled = layer.with_pool(PoolKind::Max, PoolParams::new(2)).unwrap();
    let e = pooled.output_dims([1, 1, 4, 3]).unwrap_err();
    assert!(e.to_string().contains("smaller than the 2x2 pool"), "{e}");
    assert_eq!(pooled.output_dims([1, 1, 7, 8]).unwrap(), [1, 2, 2, 3]);
}
