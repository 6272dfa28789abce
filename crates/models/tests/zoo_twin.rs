//! The zoo against its PyTorch twins (`scripts/zoo_twin.py`): the twins' `state_dict`s load
//! strictly into the convkit models, which then give the twins' evaluation-mode logits on
//! the stored inputs.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use convkit_autograd::Var;
use convkit_models::zoo::ZooModel;
use convkit_nn::{Module, checkpoint};
use convkit_tensor::testing::{Tolerance, assert_close, max_abs};
use convkit_tensor::{Rng, load_safetensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn zoo_models_give_their_pytorch_twins_logits() {
    for model in ZooModel::ALL {
        let name = model.name();
        let mut m = model.build([1, 28, 28], 10, &mut Rng::new(1)).unwrap();
        checkpoint::load(fixture(&format!("{name}_state.safetensors")), &m, true).unwrap();
        m.set_training(false);
        let io = load_safetensors(fixture(&format!("{name}_io.safetensors"))).unwrap();
        let (x, want) = (&io["inputs"], &io["logits"]);
        let got = m.forward(&Var::constant(x.clone())).unwrap().into_value();
        assert_eq!(got.dims(), want.dims());
        let largest = max_abs(want.as_slice());
        assert!(largest > 0.3, "{name}: logits too small for the comparison to mean much");
        let what = format!("{name} logits vs PyTorch");
        let r = assert_close(&what, got.as_slice(), want.as_slice(), Tolerance::absolute(1e-5));
        eprintln!("{name}: max |logit - PyTorch| = {:e} (largest logit {largest})", r.max_abs_diff);
        assert_eq!(got.argmax_axis(1).unwrap(), want.argmax_axis(1).unwrap());
    }
}

#[test]
fn prepared_zoo_models_fuse_batch_norm_and_relu_and_keep_the_logits() {
    for model in ZooModel::ALL {
        let name = model.name();
        let m = model.build([1, 28, 28], 10, &mut Rng::new(1)).unwrap();
        checkpoint::load(fixture(&format!("{name}_state.safetensors")), &m, true).unwrap();
        // Left in training mode on purpose: the prepared model is the evaluation-mode function.
        let io = load_safetensors(fixture(&format!("{name}_io.safetensors"))).unwrap();
        let (x, want) = (&io["inputs"], &io["logits"]);
        let prepared = convkit_nn::PreparedModel::new(&m).unwrap();
        let stages = prepared.stages();
        assert!(
            stages.iter().any(|s| s.matches('+').count() >= 2),
            "{name}: no conv+bn+relu stage in {stages:?}"
        );
        let got = prepared.forward(x).unwrap();
        assert_eq!(got.dims(), want.dims());
        let what = format!("{name} prepared logits vs PyTorch");
        let r = assert_close(&what, got.as_slice(), want.as_slice(), Tolerance::absolute(1e-4));
        eprintln!(
            "{name}: prepared, max |logit - PyTorch| = {:e}; stages {stages:?}",
            r.max_abs_diff
        );
        // Preparing twice gives the same bits.
        let again = convkit_nn::PreparedModel::new(&m).unwrap().forward(x).unwrap();
        assert_eq!(got.as_slice(), again.as_slice());
    }
}
