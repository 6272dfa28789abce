//! `lenet export --onnx`: the PyTorch-trained LeNet-5 of the fixtures, exported by the CLI and
//! run by ONNX Runtime on the 10,000 real Fashion-MNIST test images, must give convkit's logits
//! within 1e-5 and PyTorch's accuracy, 0.8943.
//!
//! Needs Debian's `dataset-fashion-mnist` (else "skipping", unless
//! `CONVKIT_REQUIRE_REAL_DATA=1`) and a Python with onnx, onnxruntime, numpy and safetensors:
//! `CONVKIT_ONNX_PYTHON`, else `python3` (else "skipping", unless
//! `CONVKIT_REQUIRE_ONNXRUNTIME=1`). `crates/onnx/scripts/ci_venv.sh` makes such a Python.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use convkit_autograd::Var;
use convkit_models::LeNet5;
use convkit_models::data::preprocess;
use convkit_models::fetch::DEBIAN_FASHION_DIR;
use convkit_models::idx::{IdxFiles, IdxSplit};
use convkit_models::zoo::ZooModel;
use convkit_nn::{Module, checkpoint};
use convkit_tensor::testing::{Tolerance, assert_close};
use convkit_tensor::{Rng, Tensor, load_safetensors, save_safetensors};

const BIN: &str = env!("CARGO_BIN_EXE_lenet");

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// A Python that can run `ort_run.py`, or `None` (after saying so) when there is none.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("CONVKIT_ONNX_PYTHON").map_or("python3".into(), PathBuf::from);
    let ok = Command::new(&candidate)
        .args(["-c", "import onnx, onnxruntime, numpy, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    assert!(
        !required("CONVKIT_REQUIRE_ONNXRUNTIME"),
        "CONVKIT_REQUIRE_ONNXRUNTIME=1 but {} lacks onnx/onnxruntime/numpy/safetensors",
        candidate.display()
    );
    eprintln!("skipping: no onnx/onnxruntime python (set CONVKIT_ONNX_PYTHON)");
    None
}

/// Runs `onnx` in ONNX Runtime on `x` (graph input `input`), returning output `logits`.
fn ort_logits(python: &Path, dir: &Path, onnx: &Path, x: &Tensor) -> Tensor {
    let (inputs, outputs) = (dir.join("inputs.safetensors"), dir.join("outputs.safetensors"));
    save_safetensors(&inputs, [("input", x)], None).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../onnx/scripts/ort_run.py");
    let run = Command::new(python).arg(&script).args([onnx, &inputs, &outputs]).output().unwrap();
    assert!(run.status.success(), "ort_run.py failed:\n{}", String::from_utf8_lossy(&run.stderr));
    eprint!("{}", String::from_utf8_lossy(&run.stdout));
    load_safetensors(&outputs).unwrap().remove("logits").unwrap()
}

/// ONNX Runtime against convkit's own forward: both f32, summed in different orders.
const VS_CONVKIT: Tolerance = Tolerance::absolute(1e-5);

#[test]
fn exported_zoo_models_run_in_onnxruntime() {
    let Some(python) = python() else { return };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures");
    let dir = std::env::temp_dir().join(format!("convkit-onnx-zoo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in ZooModel::ALL {
        let name = model.name();
        let mut m = model.build([1, 28, 28], 10, &mut Rng::new(1)).unwrap();
        checkpoint::load(fixtures.join(format!("{name}_state.safetensors")), &m, true).unwrap();
        m.set_training(false);
        let x = load_safetensors(fixtures.join(format!("{name}_io.safetensors")))
            .unwrap()
            .remove("inputs")
            .unwrap();
        let ours = m.forward(&Var::constant(x.clone())).unwrap().into_value();
        for fold in [false, true] {
            let onnx = dir.join(format!("{name}-{fold}.onnx"));
            let opts = convkit_onnx::ExportOptions { fold_batch_norm: fold, ..Default::default() };
            convkit_onnx::save(&m, [1, 28, 28], &opts, &onnx).unwrap();
            let what = format!("{name} (batch norm folded: {fold}), ONNX Runtime vs convkit");
            let theirs = ort_logits(&python, &dir, &onnx, &x);
            assert_eq!(theirs.dims(), ours.dims(), "{what}");
            let r = assert_close(&what, theirs.as_slice(), ours.as_slice(), VS_CONVKIT);
            eprintln!("{what}: max |ONNX Runtime - convkit| = {:e}", r.max_abs_diff);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exported_lenet_runs_in_onnxruntime_with_pytorchs_accuracy() {
    let files = match IdxFiles::find(DEBIAN_FASHION_DIR) {
        Ok(f) => f,
        Err(e) => {
            assert!(!required("CONVKIT_REQUIRE_REAL_DATA"), "the dataset is missing: {e}");
            eprintln!("skipping: no Fashion-MNIST ({e}); apt-get install dataset-fashion-mnist");
            return;
        }
    };
    let Some(python) = python() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let weights = root.join("../models/tests/fixtures/lenet_fashion_torch.safetensors");
    let dir = std::env::temp_dir().join(format!("convkit-onnx-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("lenet.onnx");
    let out = Command::new(BIN)
        .args(["export", "--weights", weights.to_str().unwrap(), "--onnx", onnx.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "lenet export failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("opset 17") && said.contains("[batch, 1, 32, 32]"), "{said}");

    let test = IdxSplit::read(&files.test_images, &files.test_labels, 28, 28, 10).unwrap();
    let (model, norm, _) = LeNet5::load(&weights).unwrap();
    let images: Vec<&[u8]> = (0..test.len()).map(|i| test.images.image(i).unwrap()).collect();
    let x = preprocess(&images, norm).unwrap();
    let ours = model.logits(&x).unwrap();
    let theirs = ort_logits(&python, &dir, &onnx, &x);
    assert_eq!(theirs.dims(), ours.dims());
    let max_diff =
        assert_close("ONNX Runtime vs convkit", theirs.as_slice(), ours.as_slice(), VS_CONVKIT)
            .max_abs_diff;
    let predicted = theirs.argmax_axis(1).unwrap();
    let correct =
        predicted.iter().zip(&test.labels.labels).filter(|(p, l)| **p == usize::from(**l)).count();
    eprintln!(
        "ONNX Runtime on {} test images: accuracy {:.4}, max |logit - convkit| = {max_diff:e}",
        test.len(),
        correct as f64 / test.len() as f64
    );
    assert_eq!((correct, test.len()), (8_943, 10_000), "PyTorch's accuracy is 0.8943");
    std::fs::remove_dir_all(&dir).unwrap();
}
