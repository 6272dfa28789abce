//! Models exported by PyTorch (`scripts/make_fixtures.py`) import and give PyTorch's logits.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{PEER, assert_logits_close, fixture, run, tensors};
use convkit_nn::{Layer, Module, named_buffers, named_params};

fn check(model: &str, io: &str) -> convkit_nn::Sequential {
    let m = convkit_onnx::load(fixture(model)).unwrap();
    let io = tensors(io);
    assert_logits_close(
        &format!("{model} imported vs PyTorch"),
        &run(&m, &io["input"]),
        &io["logits"],
        PEER,
    );
    m
}

fn names(m: &dyn Module) -> Vec<String> {
    named_params(m).into_iter().chain(named_buffers(m)).map(|(n, _)| n).collect()
}

#[test]
fn lenet5_from_pytorch() {
    let m = check("lenet5.onnx", "lenet5_io.safetensors");
    let want = tensors("lenet_fashion_torch.safetensors");
    // The parameter names are PyTorch's state_dict names.
    let mut got = names(&m);
    got.sort();
    assert_eq!(got, want.keys().cloned().collect::<Vec<_>>());
}

#[test]
fn conv_bn_net_from_pytorch_with_batch_norm_nodes() {
    let m = check("convbn.onnx", "convbn_io.safetensors");
    let Layer::Sequential(children) = m.describe() else { panic!() };
    assert!(children.iter().any(|(_, c)| matches!(c.describe(), Layer::BatchNorm2d { .. })));
    // Initializers carry the state_dict names: `0.weight`, `1.running_mean`, …
    let want = tensors("convbn_state.safetensors");
    let mut got = names(&m);
    got.sort();
    assert_eq!(got, want.keys().cloned().collect::<Vec<_>>());
}

#[test]
fn conv_bn_net_from_pytorch_with_folded_batch_norm() {
    check("convbn_fused.onnx", "convbn_io.safetensors");
}

#[test]
fn residual_net_from_pytorch() {
    let m = check("resnet_tiny.onnx", "resnet_tiny_io.safetensors");
    let Layer::Sequential(children) = m.describe() else { panic!() };
    let residuals = children.iter().filter(|(_, c)| c.describe().kind() == "Residual").count();
    assert_eq!(residuals, 2, "{:?}", m.describe());
    // Folded convolutions have generated initializer names; the node scopes name them.
    let got = names(&m);
    for name in [
        "stem.0.weight",
        "layer1.body.conv1.weight",
        "layer2.shortcut.downsample.0.weight",
        "fc.weight",
    ] {
        assert!(got.iter().any(|n| n == name), "no {name} in {got:?}");
    }
}
