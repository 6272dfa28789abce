//! The generic trainer on a conv-BN-ReLU network: learning, bit-exact resume, thread and
//! prefetch independence, the stop on a non-finite loss, and resume errors.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use convkit_data::{Augment, Batch, DataError, Dataset, TensorDataset};
use convkit_nn::checkpoint::state_dict;
use convkit_nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, Conv2dParams, Dropout, Flatten, GlobalAvgPool2d, Linear,
    MaxPool2d, OptimizerKind, PoolParams, ReLU, ScheduleKind, Sequential,
};
use convkit_tensor::{Rng, Tensor};
use convkit_train::{TrainConfig, TrainError, Trainer, metrics_path, optimizer_path};

fn net(seed: u64) -> Sequential {
    let mut rng = Rng::new(seed);
    let conv = |c_in, c_out, rng: &mut Rng| {
        let cfg = Conv2dConfig {
            params: Conv2dParams::default().with_padding(1),
            ..Conv2dConfig::default()
        };
        Conv2d::with_config(c_in, c_out, (3, 3), cfg, rng).unwrap()
    };
    Sequential::new()
        .push(conv(1, 6, &mut rng))
        .push(BatchNorm2d::new(6).unwrap())
        .push(ReLU)
        .push(MaxPool2d(PoolParams::new(2)))
        .push(conv(6, 8, &mut rng))
        .push(BatchNorm2d::new(8).unwrap())
        .push(ReLU)
        .push(GlobalAvgPool2d)
        .push(Flatten)
        // Its masks come from the trainer's per-epoch reseeding, so resuming stays exact.
        .push(Dropout::new(0.25, 99).unwrap())
        .push(Linear::new(8, 3, &mut rng).unwrap())
}

/// Class `k` of 3: a bright bar in row band `k` of an 8x8 image, plus noise.
fn bars(n: usize, seed: u64) -> TensorDataset {
    let mut rng = Rng::new(seed);
    let mut pixels = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % 3;
        for y in 0..8 {
            for _ in 0..8 {
                let bar = if y / 3 == k { 1.0 } else { 0.0 };
                pixels.push(bar + rng.uniform(-0.3, 0.3));
            }
        }
        labels.push(k);
    }
    TensorDataset::new(Tensor::from_vec(&[n, 1, 8, 8], pixels).unwrap(), labels, 3).unwrap()
}

fn recipe() -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 16,
        optimizer: OptimizerKind::Adam,
        lr: 0.01,
        schedule: ScheduleKind::Cosine,
        augment: vec![Augment::RandomCrop { pad: 1 }, Augment::HorizontalFlip],
        seed: 42,
        ..TrainConfig::default()
    }
}

fn bits(m: &Sequential) -> BTreeMap<String, Vec<u32>> {
    state_dict(m)
        .into_iter()
        .map(|(k, t)| (k, t.as_slice().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("convkit-train-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fit(t: &mut Trainer<Sequential>, data: &dyn Dataset, ckpt: Option<&Path>) -> f64 {
    let ms = t.fit(data, Some(data), ckpt, &mut |_| {}, &mut |_| {}).unwrap();
    ms.last().unwrap().test.unwrap().accuracy
}

#[test]
fn learns_a_conv_bn_relu_network_and_resumes_bit_for_bit() {
    let data = bars(120, 1);
    let test = bars(60, 2);
    let mut straight = Trainer::new(net(7), recipe()).unwrap();
    let mut events = Vec::new();
    let ms = straight.fit(&data, Some(&test), None, &mut |e| events.push(*e), &mut |_| {}).unwrap();
    assert_eq!(events.len(), 3 * 8);
    assert_eq!((events[0].epoch, events[0].batch, events[0].batches), (1, 0, 8));
    assert!(events[23].lr < events[0].lr, "cosine schedule decays per batch");
    let acc = ms[2].test.unwrap().accuracy;
    assert!(acc >= 0.9, "test accuracy {acc}");
    assert!(ms[2].train_loss < ms[0].train_loss);

    let dir = Scratch::new("resume");
    let ckpt = dir.path("run.safetensors");
    let mut first = Trainer::new(net(7), recipe()).unwrap();
    first.train_epoch(&data, &mut |_| {}).unwrap();
    first.save(&ckpt, &Default::default()).unwrap();
    let mut resumed = Trainer::resume(net(99), &ckpt, None).unwrap();
    assert_eq!((resumed.epochs_done(), resumed.config()), (1, &recipe()));
    fit(&mut resumed, &data, Some(&ckpt));
    assert_eq!(bits(&resumed.model), bits(&straight.model), "parameters and BN running stats");
    let lines = std::fs::read_to_string(metrics_path(&ckpt)).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.lines().last().unwrap().starts_with("{\"epoch\":3,"), "{lines}");
}

#[test]
fn same_bits_on_one_and_two_threads_with_and_without_prefetch() {
    let data = bars(48, 3);
    let run = |threads: usize, prefetch: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut t =
                Trainer::new(net(5), TrainConfig { epochs: 2, prefetch, ..recipe() }).unwrap();
            fit(&mut t, &data, None);
            bits(&t.model)
        })
    };
    let reference = run(1, 0);
    assert_eq!(run(2, 0), reference, "2 threads");
    assert_eq!(run(2, 3), reference, "prefetch");
}

/// A dataset whose images turn into NaNs once `poisoned` is set (every pixel, so that no
/// random crop cuts them away).
struct Poisonable {
    inner: TensorDataset,
    poisoned: AtomicBool,
}

impl Dataset for Poisonable {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn batch(&self, indices: &[usize]) -> Result<Batch, DataError> {
        let mut b = self.inner.batch(indices)?;
        if self.poisoned.load(Ordering::SeqCst) {
            b.images.data_mut().fill(f32::NAN);
        }
        Ok(b)
    }
}

#[test]
fn a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let dir = Scratch::new("nan");
    let ckpt = dir.path("run.safetensors");
    let data = Poisonable { inner: bars(48, 4), poisoned: AtomicBool::new(false) };
    // No ReLU between the input and the loss: a NaN pixel reaches it.
    let linear =
        || Sequential::new().push(Flatten).push(Linear::new(64, 3, &mut Rng::new(3)).unwrap());
    let mut t = Trainer::new(linear(), recipe()).unwrap();
    let mut on_epoch =
        |_: &convkit_train::EpochMetrics| data.poisoned.store(true, Ordering::SeqCst);
    let err = t.fit(&data, None, Some(&ckpt), &mut |_| {}, &mut on_epoch).unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteLoss { epoch: 2, batch: 1, .. }), "{err}");
    assert!(err.to_string().contains("epoch 2, batch 1: the loss is NaN"), "{err}");
    assert_eq!(t.epochs_done(), 1);
    let saved = Trainer::resume(linear(), &ckpt, None).unwrap();
    assert_eq!(saved.epochs_done(), 1);
    assert_eq!(bits(&saved.model), bits(&t.model), "the failed step was not applied");
}

#[test]
fn resume_refuses_other_architectures_and_mismatched_files() {
    let dir = Scratch::new("errors");
    let ckpt = dir.path("run.safetensors");
    let data = bars(32, 5);
    let mut t = Trainer::new(net(1), TrainConfig { epochs: 1, ..recipe() }).unwrap();
    fit(&mut t, &data, Some(&ckpt));

    let mut rng = Rng::new(0);
    let other = Sequential::new().push(Flatten).push(Linear::new(64, 3, &mut rng).unwrap());
    let err = Trainer::resume(other, &ckpt, None).err().unwrap().to_string();
    assert!(err.contains("missing key") || err.contains("unexpected key"), "{err}");

    let err = Trainer::resume(net(1), &dir.path("absent.safetensors"), None).err().unwrap();
    assert!(err.to_string().contains("absent.safetensors"), "{err}");

    // An optimizer file from another epoch.
    let mut t2 = Trainer::resume(net(1), &ckpt, Some(2)).unwrap();
    t2.train_epoch(&data, &mut |_| {}).unwrap();
    let later = dir.path("later.safetensors");
    t2.save(&later, &Default::default()).unwrap();
    std::fs::copy(optimizer_path(&later), optimizer_path(&ckpt)).unwrap();
    let err = Trainer::resume(net(1), &ckpt, None).err().unwrap().to_string();
    assert!(err.contains("is not from the same epoch"), "{err}");

    let empty = TensorDataset::new(Tensor::zeros(&[0, 1, 8, 8]), vec![], 3).unwrap();
    let err = t.train_epoch(&empty, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("the training set is empty"), "{err}");
}
