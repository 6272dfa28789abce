//! Helpers shared by the integration tests: fixtures, reference models, the tolerance.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use convkit_autograd::Var;
use convkit_nn::{
    AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Conv2dParams, Flatten, GlobalAvgPool2d, Linear,
    MaxPool2d, Module, ReLU, Residual, Sequential, named_buffers, named_params,
};
use convkit_tensor::testing::{Tolerance, assert_close, max_abs};
use convkit_tensor::{Rng, Tensor, load_safetensors};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn tensors(name: &str) -> BTreeMap<String, Tensor> {
    load_safetensors(fixture(name)).unwrap()
}

/// Asserts that two logit tensors have the same dims, that the logits are not so small that
/// the comparison means little, and that every logit is within `tol` (the rule of
/// [`convkit_tensor::testing`]); prints the measured figure (run the tests with
/// `--nocapture` to see them).
pub fn assert_logits_close(what: &str, got: &Tensor, want: &Tensor, tol: Tolerance) {
    assert_eq!(got.dims(), want.dims(), "{what}: dims differ");
    let scale = max_abs(want.as_slice());
    assert!(scale > 0.01, "{what}: logits {scale:e} too small for the comparison to mean much");
    let r = assert_close(what, got.as_slice(), want.as_slice(), tol);
    println!(
        "{what}: max |Δlogit| = {:.3e} (tolerance {:.0e}; logits up to {scale:.3})",
        r.max_abs_diff, tol.atol
    );
}

/// Against PyTorch and ONNX Runtime: both compute in f32 with their own summation order.
pub const PEER: Tolerance = Tolerance::absolute(1e-5);
/// Export then import in convkit: the same kernels on the same weights.
pub const ROUND_TRIP: Tolerance = Tolerance::absolute(1e-6);

pub fn run(m: &dyn Module, x: &Tensor) -> Tensor {
    m.forward(&Var::constant(x.clone())).unwrap().into_value()
}

/// Sets every parameter and buffer of `m` from `state` (names must match exactly).
pub fn load_state(m: &dyn Module, state: &BTreeMap<String, Tensor>) {
    for (name, p) in named_params(m).into_iter().chain(named_buffers(m)) {
        let t = state.get(&name).unwrap_or_else(|| panic!("missing {name}"));
        p.set_value(t.clone()).unwrap();
    }
}

/// LeNet-5 as in the paper's write-up (ReLU, average pooling), PyTorch's names.
pub fn lenet5() -> Sequential {
    let mut rng = Rng::new(0);
    let model = Sequential::new()
        .push_named("conv1", Conv2d::new(1, 6, 5, &mut rng).unwrap())
        .push_named("relu1", ReLU)
        .push_named("pool1", AvgPool2d::new(2))
        .push_named("conv2", Conv2d::new(6, 16, 5, &mut rng).unwrap())
        .push_named("relu2", ReLU)
        .push_named("pool2", AvgPool2d::new(2))
        .push_named("flatten", Flatten)
        .push_named("fc1", Linear::new(400, 120, &mut rng).unwrap())
        .push_named("relu3", ReLU)
        .push_named("fc2", Linear::new(120, 84, &mut rng).unwrap())
        .push_named("relu4", ReLU)
        .push_named("fc3", Linear::new(84, 10, &mut rng).unwrap());
    load_state(&model, &tensors("lenet_fashion_torch.safetensors"));
    model
}

fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    params: Conv2dParams,
    bias: bool,
    rng: &mut Rng,
) -> Conv2d {
    Conv2d::with_config(
        c_in,
        c_out,
        (k, k),
        Conv2dConfig { params, bias, ..Default::default() },
        rng,
    )
    .unwrap()
}

fn bn(c: usize) -> BatchNorm2d {
    BatchNorm2d::new(c).unwrap()
}

/// The conv-BN-ReLU net of `make_fixtures.py`, with its PyTorch state (eval mode).
pub fn conv_bn_net() -> Sequential {
    let mut rng = Rng::new(0);
    let same = Conv2dParams::default().with_padding(1);
    let mut model = Sequential::new()
        .push(conv(3, 8, 3, same, true, &mut rng))
        .push(bn(8))
        .push(ReLU)
        .push(MaxPool2d::new(2))
        .push(conv(8, 16, 3, same, false, &mut rng))
        .push(bn(16))
        .push(ReLU)
        .push(GlobalAvgPool2d)
        .push(Flatten)
        .push(Linear::new(16, 5, &mut rng).unwrap());
    load_state(&model, &tensors("convbn_state.safetensors"));
    model.set_training(false);
    model
}

/// A residual net built in convkit: identity and strided 1x1 shortcuts, batch norms with
/// running statistics moved by a few training batches; returned in eval mode.
pub fn residual_net(seed: u64) -> Sequential {
    let mut rng = Rng::new(seed);
    let same = Conv2dParams::default().with_padding(1);
    let block1 = Sequential::new()
        .push_named("conv1", conv(8, 8, 3, same, false, &mut rng))
        .push_named("bn1", bn(8))
        .push_named("relu", ReLU)
        .push_named("conv2", conv(8, 8, 3, same, false, &mut rng))
        .push_named("bn2", bn(8));
    let down = same.with_stride(2);
    let block2 = Sequential::new()
        .push_named("conv1", conv(8, 16, 3, down, false, &mut rng))
        .push_named("bn1", bn(16))
        .push_named("relu", ReLU)
        .push_named("conv2", conv(16, 16, 3, same, true, &mut rng))
        .push_named("bn2", bn(16));
    let shortcut = Sequential::new()
        .push_named("0", conv(8, 16, 1, Conv2dParams::default().with_stride(2), false, &mut rng))
        .push_named("1", bn(16));
    let mut model = Sequential::new()
        .push_named("stem", conv(3, 8, 3, same, true, &mut rng))
        .push_named("stem_bn", bn(8))
        .push_named("stem_relu", ReLU)
        .push_named("layer1", Residual::new(block1))
        .push_named("relu1", ReLU)
        .push_named("layer2", Residual::with_shortcut(block2, shortcut))
        .push_named("relu2", ReLU)
        .push_named("pool", GlobalAvgPool2d)
        .push_named("flatten", Flatten)
        .push_named("fc", Linear::new(16, 4, &mut rng).unwrap());
    // Training-mode batches move the running statistics away from 0 / 1.
    model.set_training(true);
    for _ in 0..3 {
        let x = Tensor::rand_uniform(&[8, 3, 12, 12], -1.0, 2.0, &mut rng).unwrap();
        model.forward(&Var::constant(x)).unwrap();
    }
    model.set_training(false);
    model
}
