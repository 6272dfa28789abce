//! The cost of the tape: one LeNet-5 training step (forward + backward, batch 64) through
//! `Var` ops and `backward()`, against the same kernels called directly with a hand-written
//! backward pass. The difference is what recording and replaying the graph costs.
//!
//! Both run on mimalloc. Under glibc's default allocator, buffers above its mmap threshold can
//! come from fresh `mmap`s whose pages fault in on first touch: in criterion's loop the step
//! then cost ~40% more either way (5.9 ms direct, 7.0 ms tape; with
//! `MALLOC_MMAP_THRESHOLD_=1000000000` 4.2 and 4.0 ms), and the tape, which keeps a few more
//! activations alive until backward, paid more of those faults — an allocator artifact, not
//! tape work.

use std::hint::black_box;

use convkit_autograd::{Param, Tape, Var};
use convkit_conv::api::{GradsWanted, avg_pool2d, avg_pool2d_backward, conv2d, conv2d_backward};
use convkit_conv::{Conv2dParams, ConvAlgo, PoolParams};
use convkit_tensor::{Rng, Tensor, TensorError, matmul_t};
use criterion::{Criterion, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;

struct Weights {
    w: Vec<Tensor>,
    b: Vec<Tensor>,
}

fn weights(rng: &mut Rng) -> Result<Weights, TensorError> {
    let dims: [(&[usize], usize); 5] = [
        (&[6, 1, 5, 5], 25),
        (&[16, 6, 5, 5], 150),
        (&[120, 400], 400),
        (&[84, 120], 120),
        (&[10, 84], 84),
    ];
    let mut w = Vec::new();
    let mut b = Vec::new();
    for (d, fan_in) in dims {
        let bound = 1.0 / (fan_in as f32).sqrt();
        w.push(Tensor::rand_uniform(d, -bound, bound, rng)?);
        b.push(Tensor::rand_uniform(&[d[0]], -bound, bound, rng)?);
    }
    Ok(Weights { w, b })
}

fn relu_grad(g: &Tensor, pre: &Tensor) -> Result<Tensor, TensorError> {
    g.zip_map(pre, |g, x| if x > 0.0 { g } else { 0.0 })
}

/// Softmax cross-entropy gradient `(softmax − onehot) / n`.
fn ce_grad(logits: &Tensor, labels: &[usize]) -> Result<Tensor, TensorError> {
    let mut p = logits.softmax(1)?;
    let c = logits.dims()[1];
    let n = labels.len() as f32;
    let d = p.data_mut();
    for (i, &l) in labels.iter().enumerate() {
        d[i * c + l] -= 1.0;
    }
    Ok(p.mul_scalar(1.0 / n))
}

/// Forward and backward with the kernels called directly; returns the weight gradients.
fn direct_step(
    x: &Tensor,
    labels: &[usize],
    m: &Weights,
) -> Result<Vec<Tensor>, Box<dyn std::error::Error>> {
    let conv = Conv2dParams::default();
    let pool = PoolParams::new(2);
    let algo = ConvAlgo::Auto;
    let (c1, _) = conv2d(x, &m.w[0], Some(&m.b[0]), &conv, algo)?;
    let p1 = avg_pool2d(&c1.relu(), &pool)?;
    let (c2, _) = conv2d(&p1, &m.w[1], Some(&m.b[1]), &conv, algo)?;
    let p2 = avg_pool2d(&c2.relu(), &pool)?;
    let f = p2.reshape(&[BATCH, 400])?;
    let h1 = matmul_t(&f, false, &m.w[2], true)?.add(&m.b[2])?;
    let a1 = h1.relu();
    let h2 = matmul_t(&a1, false, &m.w[3], true)?.add(&m.b[3])?;
    let a2 = h2.relu();
    let out = matmul_t(&a2, false, &m.w[4], true)?.add(&m.b[4])?;

    let mut grads = Vec::new();
    let d_out = ce_grad(&out, labels)?;
    grads.push(matmul_t(&d_out, true, &a2, false)?);
    grads.push(d_out.sum_axis(0, false)?);
    let d_h2 = relu_grad(&matmul_t(&d_out, false, &m.w[4], false)?, &h2)?;
    grads.push(matmul_t(&d_h2, true, &a1, false)?);
    grads.push(d_h2.sum_axis(0, false)?);
    let d_h1 = relu_grad(&matmul_t(&d_h2, false, &m.w[3], false)?, &h1)?;
    grads.push(matmul_t(&d_h1, true, &f, false)?);
    grads.push(d_h1.sum_axis(0, false)?);
    let d_p2 = matmul_t(&d_h1, false, &m.w[2], false)?.reshape(p2.dims())?;
    let d_c2 = relu_grad(&avg_pool2d_backward(&d_p2, c2.dims(), &pool)?, &c2)?;
    let g2 = conv2d_backward(&p1, &m.w[1], &d_c2, &conv, GradsWanted::ALL, algo)?;
    let d_c1 = relu_grad(
        &avg_pool2d_backward(g2.input.as_ref().ok_or("no input grad")?, c1.dims(), &pool)?,
        &c1,
    )?;
    let wanted = GradsWanted { input: false, weight: true, bias: true };
    let g1 = conv2d_backward(x, &m.w[0], &d_c1, &conv, wanted, algo)?;
    grads.extend([g2.weight, g2.bias, g1.weight, g1.bias].into_iter().flatten());
    Ok(grads)
}

/// The same step through the tape.
fn tape_step(
    x: &Tensor,
    labels: &[usize],
    params: &[(Param, Param)],
) -> Result<(), Box<dyn std::error::Error>> {
    let conv = Conv2dParams::default();
    let pool = PoolParams::new(2);
    let tape = Tape::new();
    let p = |i: usize| (tape.param(&params[i].0), tape.param(&params[i].1));
    let h = tape.input(x.clone());
    let (w, b) = p(0);
    let h = h.conv2d(&w, Some(&b), &conv, ConvAlgo::Auto)?.relu().avg_pool2d(&pool)?;
    let (w, b) = p(1);
    let h = h.conv2d(&w, Some(&b), &conv, ConvAlgo::Auto)?.relu().avg_pool2d(&pool)?;
    let mut h: Var = h.flatten(1, 3)?;
    for i in 2..5 {
        let (w, b) = p(i);
        h = h.linear(&w, Some(&b))?;
        if i < 4 {
            h = h.relu();
        }
    }
    h.cross_entropy(labels)?.backward()?;
    for (w, b) in params {
        w.zero_grad();
        b.zero_grad();
    }
    Ok(())
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(0);
    let Ok(m) = weights(&mut rng) else { return };
    let Ok(x) = Tensor::rand_uniform(&[BATCH, 1, 32, 32], -1.0, 1.0, &mut rng) else { return };
    let labels: Vec<usize> = (0..BATCH).map(|_| rng.below(10)).collect();
    let params: Vec<(Param, Param)> =
        m.w.iter().zip(&m.b).map(|(w, b)| (Param::new(w.clone()), Param::new(b.clone()))).collect();
    let mut g = c.benchmark_group("lenet_step_b64");
    // `cargo xtask bench --quick` sets CONVKIT_BENCH_QUICK=1: criterion's quick mode then stops
    // at 0.5 s per benchmark instead of the default 5 s.
    if std::env::var_os("CONVKIT_BENCH_QUICK").is_some_and(|v| v == "1") {
        g.measurement_time(std::time::Duration::from_millis(500));
    }
    g.bench_function("direct_kernels", |bch| {
        bch.iter(|| black_box(direct_step(&x, &labels, &m).map(|v| v.len()).unwrap_or(0)))
    });
    g.bench_function("tape", |bch| bch.iter(|| black_box(tape_step(&x, &labels, &params).is_ok())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
