//! Inference speed of LeNet-5: median batch-1 latency and batch-256 throughput.
//!
//! `cargo run --release -p convkit-models --example infer_speed -- [THREADS]` (default 2).
//! Timings only; nothing is asserted (speed depends on the machine and its load).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use convkit_models::LeNet5;
use convkit_tensor::{Rng, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut rng = Rng::new(0);
        let model = LeNet5::new(&mut rng).unwrap();
        let x1 = Tensor::rand_uniform(&[1, 1, 32, 32], -0.5, 2.5, &mut rng).unwrap();
        let x256 = Tensor::rand_uniform(&[256, 1, 32, 32], -0.5, 2.5, &mut rng).unwrap();
        for _ in 0..200 {
            model.logits(&x1).unwrap();
        }
        let lat: Vec<f64> = (0..2000)
            .map(|_| {
                let t = Instant::now();
                model.logits(&x1).unwrap();
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        for _ in 0..5 {
            model.logits(&x256).unwrap();
        }
        let per_sec: Vec<f64> = (0..50)
            .map(|_| {
                let t = Instant::now();
                model.logits(&x256).unwrap();
                256.0 / t.elapsed().as_secs_f64()
            })
            .collect();
        println!(
            "{threads} threads: batch-1 latency median {:.0} µs; batch-256 median {:.0} images/s",
            median(lat),
            median(per_sec)
        );
    });
}
