//! `BatchNorm2d` on its dedicated kernels: a training step of the layer (forward with batch
//! statistics, then the backward for the input, γ and β) and an evaluation forward, at the
//! shapes of a conv-BN-ReLU network on 28x28 images at batch 64.
//!
//! The criterion group `batchnorm/*` times convkit alone. With `CONVKIT_VERSUS_PYTHON=<python
//! with torch>`, the group `batchnorm_versus` also times PyTorch's `nn.BatchNorm2d` in a child
//! process (`bn_timer.py`) interleaved with convkit, as the conv `versus` bench does: in each of
//! 9 rounds (3 with `CONVKIT_BENCH_QUICK=1`) both sides take the fastest of 10 calls after
//! 40 ms of untimed calls, one right after the other, and the median of the per-round ratios
//! `PyTorch time ÷ convkit time` is printed (> 1: convkit is faster). Both sides use rayon's /
//! PyTorch's default thread count unless `RAYON_NUM_THREADS` says otherwise; rayon's global
//! pool pins each worker to a CPU of its own (`convkit_tensor::parallel::pin_global_pool`: the
//! layer's kernels are timed call by call, outside a training step's `warm`, where an unpinned
//! pool's workers can share one CPU for many calls).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use convkit_autograd::{Tape, Var};
use convkit_conv::suite::{PeerTimer, interleaved, min_ms_after_warm_up, publish_markdown};
use convkit_nn::{BatchNorm2d, Module};
use convkit_tensor::{Rng, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};

// As the other benches that allocate activations: glibc hands out large buffers as fresh
// mmaps whose pages fault in on first touch, a cost of the allocator, not of the kernels.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shapes: after the first and second conv of a VGG-style network on 28x28 at batch 64.
const SHAPES: [[usize; 4]; 2] = [[64, 16, 28, 28], [64, 32, 14, 14]];

struct Case {
    layer: BatchNorm2d,
    x: Tensor,
    dy: Tensor,
}

impl Case {
    fn new(dims: [usize; 4]) -> Case {
        let mut rng = Rng::new(1);
        let layer = BatchNorm2d::new(dims[1]).expect("valid layer");
        let x = Tensor::rand_uniform(&dims, -1.5, 2.5, &mut rng).expect("valid shape");
        let dy = Tensor::rand_uniform(&dims, -1.0, 1.0, &mut rng).expect("valid shape");
        Case { layer, x, dy }
    }

    /// Training forward and the backward for the input and the parameters.
    fn train_step(&mut self) {
        self.layer.set_training(true);
        let tape = Tape::new();
        let x = tape.var(self.x.clone());
        let y = self.layer.forward(&x).expect("forward");
        let grads = y.backward_with(self.dy.clone()).expect("backward");
        black_box(grads.wrt(&x).expect("input gradient"));
        self.layer.weight.zero_grad();
        self.layer.bias.zero_grad();
    }

    fn eval_forward(&mut self) {
        self.layer.set_training(false);
        black_box(self.layer.forward(&Var::constant(self.x.clone())).expect("forward"));
    }
}

fn id(dims: [usize; 4]) -> String {
    format!("{}x{}x{}x{}", dims[0], dims[1], dims[2], dims[3])
}

/// Pins rayon's global pool (see the module docs); the first group to run does it.
fn pin() {
    let _ = convkit_tensor::parallel::pin_global_pool(0);
}

fn criterion_benches(c: &mut Criterion) {
    pin();
    let mut g = c.benchmark_group("batchnorm");
    for dims in SHAPES {
        let mut case = Case::new(dims);
        g.bench_function(format!("train_fwd_bwd/{}", id(dims)), |b| b.iter(|| case.train_step()));
        g.bench_function(format!("eval_fwd/{}", id(dims)), |b| b.iter(|| case.eval_forward()));
    }
    g.finish();
}

/// The interleaved comparison with PyTorch, printed as a table.
fn versus(_: &mut Criterion) {
    pin();
    let Ok(python) = std::env::var("CONVKIT_VERSUS_PYTHON") else {
        return;
    };
    let rounds = if std::env::var_os("CONVKIT_BENCH_QUICK").is_some() { 3 } else { 9 };
    let threads = rayon::current_num_threads();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bn_timer.py");
    let script = script.to_string_lossy();
    let mut peer = match PeerTimer::spawn(&python, &[&script, &threads.to_string()]) {
        Ok(peer) => peer,
        Err(e) => {
            eprintln!("batchnorm_versus: {e}");
            return;
        }
    };
    let version = peer.version.clone();
    let warm = Duration::from_millis(40);
    let settle = Duration::from_millis(100);
    let mut md = format!(
        "`BatchNorm2d` (`crates/nn/benches/batchnorm.rs`), convkit against PyTorch {version}'s \
         `nn.BatchNorm2d`, {threads} threads, {rounds} rounds interleaved (median ratio \
         PyTorch ms / convkit ms; > 1: convkit is faster). `train` is the forward with batch \
         statistics and the backward for the input, γ and β; `eval` the forward with running \
         statistics.\n\n| shape | op | convkit ms | PyTorch ms | ratio |\n|---|---|---|---|---|\n"
    );
    for dims in SHAPES {
        let mut case = Case::new(dims);
        for op in ["train", "eval"] {
            let [n, c, h, w] = dims;
            let req = format!("{op} {n} {c} {h} {w} 10 40");
            let ours = || {
                if op == "train" {
                    min_ms_after_warm_up(10, warm, || case.train_step())
                } else {
                    min_ms_after_warm_up(10, warm, || case.eval_forward())
                }
            };
            match interleaved(rounds, settle, ours, || peer.time(&req)) {
                Ok(r) => {
                    md += &format!(
                        "| {} | {op} | {:.3} | {:.3} | {:.2} |\n",
                        id(dims),
                        r.ours_ms,
                        r.theirs_ms,
                        r.ratio
                    )
                }
                Err(e) => {
                    eprintln!("batchnorm_versus: {e}");
                    return;
                }
            }
        }
    }
    publish_markdown("batchnorm", &md);
}

criterion_group!(benches, criterion_benches, versus);
criterion_main!(benches);
