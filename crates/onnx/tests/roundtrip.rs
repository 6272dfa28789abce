//! Export then import gives back the same model: same logits, same parameter names.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{ATOL_ROUND_TRIP, assert_close, run, tensors};
use convkit_nn::{Module, Sequential, named_buffers, named_params};
use convkit_onnx::{ExportOptions, export, import};
use convkit_tensor::{Rng, Tensor};

fn round_trip(what: &str, m: &Sequential, chw: [usize; 3], x: &Tensor) -> Sequential {
    let bytes = export(m, chw, &ExportOptions::default()).unwrap();
    let back = import(&bytes).unwrap();
    assert_close(&format!("{what} export→import"), &run(&back, x), &run(m, x), ATOL_ROUND_TRIP);
    back
}

fn names(m: &dyn Module) -> Vec<String> {
    named_params(m).into_iter().chain(named_buffers(m)).map(|(n, _)| n).collect()
}

#[test]
fn lenet5_round_trips_with_its_names() {
    let m = common::lenet5();
    let x = tensors("lenet5_io.safetensors")["input"].clone();
    let back = round_trip("lenet5", &m, [1, 32, 32], &x);
    assert_eq!(names(&back), names(&m));
}

#[test]
fn conv_bn_net_round_trips() {
    let m = common::conv_bn_net();
    let x = tensors("convbn_io.safetensors")["input"].clone();
    let back = round_trip("conv-bn", &m, [3, 16, 16], &x);
    assert_eq!(names(&back), names(&m));
}

#[test]
fn residual_net_round_trips() {
    let m = common::residual_net(7);
    let x = Tensor::rand_uniform(&[5, 3, 12, 12], -1.0, 1.0, &mut Rng::new(8)).unwrap();
    let back = round_trip("residual", &m, [3, 12, 12], &x);
    // Every parameter and buffer comes back under its name (`layer2.shortcut.0.weight`).
    assert_eq!(names(&back), names(&m));
    let round_again = export(&back, [3, 12, 12], &ExportOptions::default()).unwrap();
    assert!(import(&round_again).is_ok());
}

#[test]
fn export_does_not_change_the_model() {
    let mut m = common::residual_net(9);
    m.set_training(true);
    let before: Vec<Vec<f32>> =
        named_buffers(&m).iter().map(|(_, p)| p.value().as_slice().to_vec()).collect();
    export(&m, [3, 12, 12], &ExportOptions::default()).unwrap();
    let after: Vec<Vec<f32>> =
        named_buffers(&m).iter().map(|(_, p)| p.value().as_slice().to_vec()).collect();
    assert_eq!(before, after, "running statistics moved during export");
}
