//! LeNet-5 trains through `convkit-train`'s generic trainer with the results of the plain
//! loop it replaced: the same per-epoch shuffle (a stream split off one seeded generator per
//! epoch), the same batches, the same steps, so the same weights bit for bit.
#![allow(clippy::unwrap_used)]

use convkit_autograd::Tape;
use convkit_models::train::{Recipe, TrainConfig, new_trainer, resume};
use convkit_models::{Dataset, LeNet5, Normalization};
use convkit_nn::{Module, params};
use convkit_tensor::Rng;

fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    // Class-dependent bright squares on noise, so the loss moves.
    let mut pixels = Vec::with_capacity(n * 784);
    for &l in &labels {
        for i in 0..784 {
            let (r, c) = (i / 28, i % 28);
            let on = r / 7 == usize::from(l) % 4 && c / 7 == usize::from(l) / 4;
            pixels.push(if on { 200 } else { rng.below(40) as u8 });
        }
    }
    Dataset::from_raw(pixels, labels, Normalization::default()).unwrap()
}

/// The order of epoch `epoch` as LeNet-5's own loop drew it.
fn plain_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut base = Rng::new(seed ^ 0x5348_5546_464C_4521);
    let mut r = base.split();
    for _ in 0..epoch {
        r = base.split();
    }
    let mut order: Vec<usize> = (0..len).collect();
    r.shuffle(&mut order);
    order
}

fn weights(model: &LeNet5) -> Vec<u32> {
    params(model)
        .iter()
        .flat_map(|p| p.value().as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        .collect()
}

#[test]
fn the_generic_trainer_gives_the_plain_loops_weights_bit_for_bit() {
    let data = synthetic(200, 3);
    for optimizer in ["sgd", "adam"] {
        let base = Recipe::Reference.config();
        let optimizer = optimizer.parse().unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 32,
            optimizer,
            lr: if optimizer == base.optimizer { base.lr } else { 0.002 },
            schedule: "cosine".parse().unwrap(),
            seed: 5,
            ..base
        };

        // The plain loop.
        let model = LeNet5::new(&mut Rng::new(cfg.seed)).unwrap();
        let mut opt =
            cfg.optimizer.build(params(&model), cfg.lr, cfg.momentum, cfg.weight_decay).unwrap();
        let batches = data.len().div_ceil(cfg.batch_size);
        let schedule = cfg.lr_schedule(batches);
        for epoch in 0..cfg.epochs {
            let order = plain_order(data.len(), cfg.seed, epoch);
            for (b, idx) in order.chunks(cfg.batch_size).enumerate() {
                let batch = data.batch(idx).unwrap();
                opt.set_lr(schedule.lr_at(epoch * batches + b));
                let tape = Tape::new();
                let loss = model.forward(&tape.input(batch.images)).unwrap();
                loss.cross_entropy(&batch.labels).unwrap().backward().unwrap();
                opt.step().unwrap();
                opt.zero_grad();
            }
        }

        // The generic trainer, interrupted after one epoch and resumed from its checkpoint.
        let dir =
            std::env::temp_dir().join(format!("convkit-lenet-trainer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ckpt = dir.join(format!("{optimizer}.safetensors"));
        let norm = Normalization::new(0.25, 0.5).unwrap();
        let mut trainer = new_trainer(cfg.clone(), norm).unwrap();
        trainer.fit_epoch(&data, None, Some(&ckpt), &mut |_| {}).unwrap();
        let (mut resumed, saved_norm) = resume(&ckpt, None).unwrap();
        assert_eq!(saved_norm, norm, "the normalization rides in the checkpoint");
        assert_eq!(resumed.config(), &cfg);
        let ms = resumed.fit(&data, Some(&data), None, &mut |_| {}, &mut |_| {}).unwrap();
        assert_eq!(ms.len(), 1);
        assert!(ms[0].test.unwrap().accuracy > 0.0);
        assert_eq!(weights(&resumed.model), weights(&model), "{optimizer}: weights differ");
        std::fs::remove_dir_all(&dir).ok();
    }
}
