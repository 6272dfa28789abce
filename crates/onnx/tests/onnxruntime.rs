//! convkit's exports run in ONNX Runtime (through `scripts/ort_run.py`) and give convkit's
//! logits.
//!
//! Python: `CONVKIT_ONNX_PYTHON` (a python with onnx, onnxruntime, numpy, safetensors), else
//! `python3` if it has them. Without one the tests print "skipping: no onnx/onnxruntime
//! python" and pass, unless `CONVKIT_REQUIRE_ONNXRUNTIME=1`, which makes them fail.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{ATOL_PEER, assert_close, run, tensors};
use convkit_nn::Module;
use convkit_onnx::{ExportOptions, save};
use convkit_tensor::{Rng, Tensor, load_safetensors, save_safetensors};

/// The python to use, or `None` (after printing why) when the test should skip.
fn python() -> Option<PathBuf> {
    let required = std::env::var("CONVKIT_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1");
    let candidate = std::env::var_os("CONVKIT_ONNX_PYTHON").map_or("python3".into(), PathBuf::from);
    let ok = Command::new(&candidate)
        .args(["-c", "import onnx, onnxruntime, numpy, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    assert!(
        !required,
        "CONVKIT_REQUIRE_ONNXRUNTIME=1 but {} lacks onnx/onnxruntime/numpy/safetensors",
        candidate.display()
    );
    println!("skipping: no onnx/onnxruntime python ({} lacks them)", candidate.display());
    None
}

fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "ort-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Exports `m`, runs it in ONNX Runtime on `x`, returns ORT's logits.
fn ort_logits(py: &Path, tag: &str, m: &dyn Module, chw: [usize; 3], x: &Tensor) -> Tensor {
    let dir = scratch(tag);
    let (model, inputs, outputs) =
        (dir.join("model.onnx"), dir.join("in.safetensors"), dir.join("out.safetensors"));
    save(m, chw, &ExportOptions::default(), &model).unwrap();
    save_safetensors(&inputs, [("input", x)], None).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ort_run.py");
    let out = Command::new(py).arg(&script).args([&model, &inputs, &outputs]).output().unwrap();
    assert!(
        out.status.success(),
        "ort_run.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let mut got = load_safetensors(&outputs).unwrap();
    let logits = got.remove("logits").unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    logits
}

#[test]
fn lenet5_export_runs_in_onnxruntime() {
    let Some(py) = python() else { return };
    let m = common::lenet5();
    let x = tensors("lenet5_io.safetensors")["input"].clone();
    let ort = ort_logits(&py, "lenet", &m, [1, 32, 32], &x);
    assert_close("lenet5 ORT vs convkit", &ort, &run(&m, &x), ATOL_PEER);
}

#[test]
fn conv_bn_export_runs_in_onnxruntime() {
    let Some(py) = python() else { return };
    let m = common::conv_bn_net();
    let x = tensors("convbn_io.safetensors")["input"].clone();
    let ort = ort_logits(&py, "convbn", &m, [3, 16, 16], &x);
    assert_close("conv-bn ORT vs convkit", &ort, &run(&m, &x), ATOL_PEER);
}

#[test]
fn residual_export_runs_in_onnxruntime_with_any_batch() {
    let Some(py) = python() else { return };
    let m = common::residual_net(11);
    let mut rng = Rng::new(12);
    // The batch axis is symbolic: one model file, two batch sizes.
    for n in [1, 6] {
        let x = Tensor::rand_uniform(&[n, 3, 12, 12], -1.0, 1.0, &mut rng).unwrap();
        let ort = ort_logits(&py, "residual", &m, [3, 12, 12], &x);
        assert_close(
            &format!("residual (batch {n}) ORT vs convkit"),
            &ort,
            &run(&m, &x),
            ATOL_PEER,
        );
    }
}
