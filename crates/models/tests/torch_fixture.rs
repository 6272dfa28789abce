//! Checks against PyTorch: the weights of a LeNet-5 trained by the PyTorch reference
//! (`lenet_torch.py`, Fashion-MNIST, SGD lr 0.01 momentum 0.9, batch 64, 10 epochs, seed 0)
//! must give PyTorch's logits on 100 stored inputs, and our preprocessing of the first 100
//! real test images must reproduce those inputs.
//!
//! The tests on the real test set are skipped (with a message) when Debian's
//! `dataset-fashion-mnist` is absent, unless `CONVKIT_REQUIRE_REAL_DATA=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use convkit_models::data::{Normalization, preprocess};
use convkit_models::idx::IdxSplit;
use convkit_models::{Dataset, LeNet5, evaluate};
use convkit_tensor::load_safetensors;
use convkit_tensor::testing::{Tolerance, assert_close};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn real_test_split() -> Option<IdxSplit> {
    let f = common::fashion_mnist()?;
    Some(IdxSplit::read(&f.test_images, &f.test_labels, 28, 28, 10).unwrap())
}

#[test]
fn pytorch_weights_give_pytorch_logits() {
    let (model, norm, _) = LeNet5::load(fixture("lenet_fashion_torch.safetensors")).unwrap();
    assert_eq!(norm, Normalization::default(), "a PyTorch state_dict has no metadata");
    let io = load_safetensors(fixture("lenet_fashion_torch_io100.safetensors")).unwrap();
    let (inputs, expected) = (&io["inputs"], &io["logits"]);
    assert_eq!(inputs.dims(), [100, 1, 32, 32]);
    let logits = model.logits(inputs).unwrap();
    assert_eq!(logits.dims(), expected.dims());
    let tol = Tolerance::absolute(1e-4);
    let r = assert_close("logits vs PyTorch", logits.as_slice(), expected.as_slice(), tol);
    eprintln!("max |logit - PyTorch logit| = {:e}", r.max_abs_diff);
    // And the predictions agree with the stored labels as often as PyTorch's do.
    let ours = logits.argmax_axis(1).unwrap();
    let theirs = expected.argmax_axis(1).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn our_preprocessing_reproduces_the_stored_inputs() {
    let Some(test) = real_test_split() else { return };
    let io = load_safetensors(fixture("lenet_fashion_torch_io100.safetensors")).unwrap();
    let images: Vec<&[u8]> = (0..100).map(|i| test.images.image(i).unwrap()).collect();
    let x = preprocess(&images, Normalization::default()).unwrap();
    assert_eq!(x.as_slice(), io["inputs"].as_slice(), "inputs differ bit for bit");
    let labels: Vec<f32> = test.labels.labels[..100].iter().map(|&l| f32::from(l)).collect();
    assert_eq!(labels, io["labels"].as_slice());
    // The batches of a Dataset are the same values.
    let d = Dataset::new(&test, Normalization::default(), Some(100)).unwrap();
    let b = d.batch(&(0..100).collect::<Vec<_>>()).unwrap();
    assert_eq!(b.images.as_slice(), io["inputs"].as_slice());
}

#[test]
fn pytorch_weights_reach_pytorch_accuracy_on_the_real_test_set() {
    let Some(test) = real_test_split() else { return };
    let (model, norm, _) = LeNet5::load(fixture("lenet_fashion_torch.safetensors")).unwrap();
    let e = evaluate(&model, &Dataset::new(&test, norm, None).unwrap()).unwrap();
    assert_eq!(e.n, 10_000);
    let correct: usize = (0..10).map(|c| e.confusion[c][c]).sum();
    assert_eq!(correct, 8_943, "PyTorch's accuracy is 0.8943");
    assert_eq!(e.confusion.iter().flatten().sum::<usize>(), 10_000);
}
