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

use common::{PEER, assert_logits_close, run, tensors};
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
    ort_logits_with(py, tag, m, chw, x, &ExportOptions::default())
}

fn ort_logits_with(
    py: &Path,
    tag: &str,
    m: &dyn Module,
    chw: [usize; 3],
    x: &Tensor,
    opts: &ExportOptions,
) -> Tensor {
    let dir = scratch(tag);
    let (model, inputs, outputs) =
        (dir.join("model.onnx"), dir.join("in.safetensors"), dir.join("out.safetensors"));
    save(m, chw, opts, &model).unwrap();
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
    assert_logits_close("lenet5 ORT vs convkit", &ort, &run(&m, &x), PEER);
}

#[test]
fn conv_bn_export_runs_in_onnxruntime() {
    let Some(py) = python() else { return };
    let m = common::conv_bn_net();
    let x = tensors("convbn_io.safetensors")["input"].clone();
    let ort = ort_logits(&py, "convbn", &m, [3, 16, 16], &x);
    assert_logits_close("conv-bn ORT vs convkit", &ort, &run(&m, &x), PEER);
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
        assert_logits_close(
            &format!("residual (batch {n}) ORT vs convkit"),
            &ort,
            &run(&m, &x),
            PEER,
        );
    }
}

/// Every layer option export writes, checked against ONNX Runtime's reading of it: strided,
/// padded, dilated, grouped convolution without bias; padded max pooling; average pooling
/// with and without counting the padding; tanh, sigmoid, batch norm, dropout.
#[test]
fn every_layer_option_runs_in_onnxruntime() {
    use convkit_nn::{
        AvgPool2d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Conv2dParams, Dropout,
        Flatten, Linear, MaxPool2d, PoolParams, Sequential, Sigmoid, Tanh,
    };
    let Some(py) = python() else { return };
    let mut rng = Rng::new(21);
    let params = Conv2dParams { stride: (2, 1), padding: (1, 2), dilation: (2, 1), groups: 2 };
    let conv = Conv2d::with_config(
        4,
        6,
        (3, 2),
        Conv2dConfig { params, bias: false, ..Default::default() },
        &mut rng,
    )
    .unwrap();
    let mut bn = BatchNorm2d::with_config(6, BatchNormConfig { eps: 1e-3, momentum: 0.3 }).unwrap();
    bn.running_mean =
        convkit_autograd::Param::new(Tensor::rand_uniform(&[6], -0.5, 0.5, &mut rng).unwrap());
    bn.running_var =
        convkit_autograd::Param::new(Tensor::rand_uniform(&[6], 0.5, 2.0, &mut rng).unwrap());
    bn.weight =
        convkit_autograd::Param::new(Tensor::rand_uniform(&[6], 0.5, 1.5, &mut rng).unwrap());
    let mut m = Sequential::new()
        .push(conv)
        .push(Tanh)
        .push(MaxPool2d(PoolParams::new(3).with_stride(2).with_padding(1)))
        .push(AvgPool2d(
            PoolParams::new(3).with_stride(1).with_padding(1).with_count_include_pad(false),
        ))
        .push(AvgPool2d(PoolParams::new(2).with_stride(1).with_padding(1)))
        .push(Sigmoid)
        .push(bn)
        .push(Dropout::new(0.3, 4).unwrap())
        .push(Flatten);
    let x = Tensor::rand_uniform(&[3, 4, 11, 9], -2.0, 2.0, &mut rng).unwrap();
    let features = run(&m, &x).dims()[1];
    m = m.push(Linear::new(features, 7, &mut rng).unwrap());
    m.set_training(false);
    let ort = ort_logits(&py, "options", &m, [4, 11, 9], &x);
    assert_logits_close("every option ORT vs convkit", &ort, &run(&m, &x), PEER);
    // And convkit reads every option back.
    let bytes = convkit_onnx::export(&m, [4, 11, 9], &ExportOptions::default()).unwrap();
    let back = convkit_onnx::import(&bytes).unwrap();
    assert_logits_close(
        "every option export→import",
        &run(&back, &x),
        &run(&m, &x),
        common::ROUND_TRIP,
    );
}

#[test]
fn folded_batch_norm_exports_run_in_onnxruntime() {
    let Some(py) = python() else { return };
    let opts = ExportOptions { fold_batch_norm: true, ..Default::default() };
    let m = common::conv_bn_net();
    let x = tensors("convbn_io.safetensors")["input"].clone();
    let ort = ort_logits_with(&py, "convbn-folded", &m, [3, 16, 16], &x, &opts);
    assert_logits_close("conv-bn folded, ORT vs convkit", &ort, &run(&m, &x), PEER);
    let m = common::residual_net(13);
    let x = Tensor::rand_uniform(&[4, 3, 12, 12], -1.0, 1.0, &mut Rng::new(14)).unwrap();
    let ort = ort_logits_with(&py, "residual-folded", &m, [3, 12, 12], &x, &opts);
    assert_logits_close("residual folded, ORT vs convkit", &ort, &run(&m, &x), PEER);
}
