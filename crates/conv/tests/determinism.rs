//! Bit-identical results for any number of threads: forward output and all three gradients
//! of im2col under rayon pools of 1, 2 and 3 threads.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Operands, Results, run};
use convkit_conv::{Conv2dParams, ConvAlgo, ConvGeometry};
use rayon::ThreadPoolBuilder;

fn in_pool(threads: usize, g: &ConvGeometry, o: &Operands) -> Results {
    let pool = ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| run(g, o, ConvAlgo::Im2col))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn same_bits_for_1_2_and_3_threads() {
    let p = Conv2dParams::default();
    // Each shape is above the size where the kernels go parallel, and together they take
    // every split: batch × groups blocks (n ≥ threads), row blocks of one product (batch 1),
    // pointwise without a column matrix, uneven weight-gradient chunks (n = 11).
    let shapes = [
        ([1, 16, 20, 20], [32, 16, 3, 3], p.with_padding(1)),
        ([5, 8, 31, 31], [12, 4, 3, 3], p.with_groups(2).with_stride(2).with_padding(1)),
        ([6, 6, 40, 40], [6, 1, 5, 5], p.with_groups(6).with_padding(2).with_dilation(2)),
        ([2, 32, 14, 14], [64, 32, 1, 1], p),
        ([1, 64, 12, 12], [70, 64, 1, 1], p),
        ([11, 6, 14, 14], [16, 6, 5, 5], p),
        ([1, 3, 64, 64], [32, 3, 3, 3], p.with_stride(2)),
    ];
    for (i, (x, w, params)) in shapes.into_iter().enumerate() {
        let g = ConvGeometry::new(x, w, params).unwrap();
        assert!(g.flops() >= 1 << 20, "shape {i} too small to go parallel: {g:?}");
        let o = Operands::new(&g, 42 + i as u64, true);
        let one = in_pool(1, &g, &o);
        for threads in [2, 3] {
            let many = in_pool(threads, &g, &o);
            assert_eq!(bits(&one.out), bits(&many.out), "output, {threads} threads, {g:?}");
            assert_eq!(bits(&one.gx), bits(&many.gx), "grad_input, {threads} threads, {g:?}");
            assert_eq!(bits(&one.gw), bits(&many.gw), "grad_weight, {threads} threads, {g:?}");
            assert_eq!(bits(&one.gb), bits(&many.gb), "grad_bias, {threads} threads, {g:?}");
        }
    }
}

/// A pointwise batch whose planes end in a partial 16-column panel multiplies those last
/// columns of all its images together (forward and input gradient); every image's output and
/// input gradient keep the bits of that image convolved alone, on one thread and on two.
#[test]
fn pointwise_batch_has_the_bits_of_each_image() {
    let p = Conv2dParams::default();
    // Planes of 196 (12 panels and 4 columns), 49, 25 and 17 outputs; one of 16 (no edge).
    for (i, (n, c, h, w, k)) in [
        (3, 32, 14, 14, 64),
        (4, 16, 7, 7, 24),
        (2, 8, 5, 5, 10),
        (5, 12, 1, 17, 7),
        (3, 16, 4, 4, 40),
    ]
    .into_iter()
    .enumerate()
    {
        let g = ConvGeometry::new([n, c, h, w], [k, c, 1, 1], p).unwrap();
        let o = Operands::new(&g, 7 + i as u64, true);
        let one = ConvGeometry::new([1, c, h, w], [k, c, 1, 1], p).unwrap();
        let (mut out, mut gx) = (Vec::new(), Vec::new());
        let images = o.x.chunks_exact(one.input_len()).zip(o.dy.chunks_exact(one.output_len()));
        for (x, dy) in images {
            let single =
                Operands { x: x.to_vec(), w: o.w.clone(), b: o.b.clone(), dy: dy.to_vec() };
            let r = run(&one, &single, ConvAlgo::Im2col);
            out.extend(r.out);
            gx.extend(r.gx);
        }
        for threads in [1, 2] {
            let pool = ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let batch = pool.install(|| run(&g, &o, ConvAlgo::Im2col));
            assert_eq!(bits(&batch.out), bits(&out), "output, {threads} threads, {g:?}");
            assert_eq!(bits(&batch.gx), bits(&gx), "grad_input, {threads} threads, {g:?}");
        }
    }
}
