//! The zoo's networks, the general path a user's own CNN takes: one Adam training step at
//! batch 64 (forward, cross-entropy, backward, update), an evaluation forward at batch 256 and
//! at batch 1, and the same two through [`PreparedModel`] (batch norm folded, ReLU fused,
//! transforms cached), on rayon's global pool, synthetic seeded 28x28 images.
//!
//! The criterion group `zoo/*` times convkit alone. With `CONVKIT_VERSUS_PYTHON=<python with
//! torch>`, `zoo_versus` also times the PyTorch twins (`scripts/zoo_twin.py --serve`, with as
//! many threads as rayon's pool) interleaved with convkit: in each of 5 rounds (2 with
//! `CONVKIT_BENCH_QUICK=1`) both sides take the fastest of a few calls after 40 ms of untimed
//! calls, one right after the other, and the median of the per-round ratios `PyTorch time ÷
//! convkit time` is printed (> 1: convkit is faster).

use std::hint::black_box;
use std::time::Duration;

use convkit_autograd::{Tape, Var};
use convkit_conv::suite::publish_markdown;
use convkit_models::zoo::ZooModel;
use convkit_nn::{Adam, AdamConfig, Module, Optimizer, PreparedModel, Sequential, loss, params};
use convkit_tensor::parallel::warm;
use convkit_tensor::{Rng, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::{TABLE_HEAD, Twin};

// As the other benches that allocate activations: glibc hands out large buffers as fresh
// mmaps whose pages fault in on first touch, a cost of the allocator, not of the kernels.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The timings of a model: (op, batch, timed calls). `prepared` is `infer` through a
/// [`PreparedModel`] (the PyTorch twin runs its `infer` for it).
const OPS: [(&str, usize, usize); 5] = [
    ("train", 64, 5),
    ("infer", 256, 5),
    ("infer", 1, 20),
    ("prepared", 256, 5),
    ("prepared", 1, 20),
];

struct Case {
    model: Sequential,
    opt: Adam,
    rng: Rng,
}

impl Case {
    fn new(which: ZooModel) -> Case {
        let mut rng = Rng::new(0);
        let model = which.build([1, 28, 28], 10, &mut rng).expect("zoo model");
        let opt = Adam::new(params(&model), AdamConfig::default()).expect("optimizer");
        Case { model, opt, rng }
    }

    fn images(&mut self, batch: usize) -> Tensor {
        Tensor::rand_uniform(&[batch, 1, 28, 28], -1.0, 2.0, &mut self.rng).expect("images")
    }

    /// A closure running `op` at `batch` on fixed operands.
    fn op(&mut self, op: &str, batch: usize) -> Box<dyn FnMut() + '_> {
        let x = self.images(batch);
        let labels: Vec<usize> = (0..batch).map(|i| (i * 7) % 10).collect();
        let train = op == "train";
        self.model.set_training(train);
        if op == "prepared" {
            let prepared = PreparedModel::new(&self.model).expect("prepare");
            return Box::new(move || {
                black_box(prepared.forward(&x).expect("forward"));
            });
        }
        // As `Trainer` and `evaluate` run them: on a pool kept awake between the kernels.
        let Case { model, opt, .. } = self;
        Box::new(move || {
            if train {
                warm(|| {
                    let tape = Tape::new();
                    let logits = model.forward(&tape.input(x.clone())).expect("forward");
                    loss::cross_entropy(&logits, &labels, 0.0)
                        .expect("loss")
                        .backward()
                        .expect("backward");
                    opt.step().expect("step");
                    opt.zero_grad();
                });
            } else {
                black_box(warm(|| {
                    model.forward(&Var::constant(x.clone())).expect("forward").into_value()
                }));
            }
        })
    }
}

fn criterion_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("zoo");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    for which in ZooModel::ALL {
        let mut case = Case::new(which);
        for (op, batch, _) in OPS {
            let mut f = case.op(op, batch);
            g.bench_function(format!("{}/{op}_b{batch}", which.name()), |b| b.iter(&mut f));
        }
    }
    g.finish();
}

/// The interleaved comparison with the PyTorch twins, printed as a table.
fn versus(_: &mut Criterion) {
    let Some(mut twin) = Twin::spawn("zoo_versus") else {
        return;
    };
    let mut md = format!(
        "The zoo (`crates/models/benches/zoo.rs`), convkit against the PyTorch {} twins \
         (`scripts/zoo_twin.py`), {} threads, {} rounds interleaved (median ratio \
         PyTorch ms / convkit ms; > 1: convkit is faster). `prepared` is convkit's \
         `PreparedModel` (batch norm folded, ReLU fused) against PyTorch's eval forward.\n\n\
         {TABLE_HEAD}",
        twin.peer.version, twin.threads, twin.rounds
    );
    for which in ZooModel::ALL {
        let mut case = Case::new(which);
        for (op, batch, calls) in OPS {
            let peer_op = if op == "prepared" { "infer" } else { op };
            let mut f = case.op(op, batch);
            match twin.row(which.name(), (op, peer_op), batch, calls, &mut f) {
                Ok(row) => md += &row,
                Err(e) => {
                    eprintln!("zoo_versus: {e}");
                    return;
                }
            }
        }
    }
    publish_markdown("zoo", &md);
}

criterion_group!(benches, criterion_benches, versus);
criterion_main!(benches);
